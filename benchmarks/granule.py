"""The granule benchmark: `python -m eurosat.map` on a 10,980 x 10,980 uint16 3-band GeoTIFF, against a bare forward.

    python -m benchmarks.granule --out results      # about 10 minutes on 2 CPUs, 1 GB of temporary disk

The GeoTIFF is a Sentinel-2 granule's size at 10 m in UTM zone 32N, made in a temporary folder from the
27,000 real EuroSAT tiles (the full dataset, cycled to fill 172 x 172 cells), scaled back to the L1C digital
numbers that EuroSAT's scaling turns into them, plus the +1000 offset of processing baseline 04.00, tiled
and Deflate-compressed as a GIS would export it. The command runs in its own process, as a user runs it;
its wall time, cells per second and peak RSS (the kernel's high-water mark, VmHWM, read while it runs) are
measured. A
bare batched forward of real cells (the model alone on model-ready batches, the same batch size, threads and
TTA setting) runs in this process just before and just after it, and its mean is the comparison.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.appserver import peak_rss
from benchmarks.inference import machine
from benchmarks.results import save
from eurosat.config import BUNDLED_MODEL

REPO = Path(__file__).resolve().parents[1]
FULL = REPO.parent / "shared" / "eurosat-rgb"
SIDE = 10_980  # a Sentinel-2 granule at 10 m: 109.8 km
CELLS_PER_SIDE = 172  # 171 whole cells and an edge cell of 36 px, classified from the window at the edge


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.granule", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(REPO / BUNDLED_MODEL), help="checkpoint folder")
    p.add_argument("--dataset", default=str(FULL), help="the EuroSAT RGB folder whose tiles fill the granule")
    p.add_argument("--side", type=int, default=SIDE, help="the raster's side in pixels")
    p.add_argument("--batch-size", type=int, default=64, help="cells per forward pass (the command's default)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--backend", choices=["onnxruntime", "pytorch"], default="onnxruntime",
                   help="what runs the forward passes, in the command and in the bare forward alike")
    p.add_argument("--forward-cells", type=int, default=2048, help="cells in each bare-forward measurement")
    p.add_argument("--out", default="results", help="folder for granule.json")
    return p


def all_tiles(dataset: str) -> np.ndarray:
    """Every tile of the dataset's three splits, (N, 64, 64, 3) uint8."""
    from eurosat.data import decode_split, load_splits

    splits = load_splits(dataset)
    return np.concatenate([decode_split(splits.split(name), splits.image_column, splits.label_column)[0]
                           .permute(0, 2, 3, 1).numpy() for name in ("train", "validation", "test")])


def digital_numbers(rgb: np.ndarray) -> np.ndarray:
    """EuroSAT's `-scale 0 2750 1 255` undone, plus baseline 04.00's offset: grey g -> round((g - 1) * 2750 / 254)
    + 1000, at least 1001 for a valid pixel; (3, H, W) uint16."""
    dn = np.maximum(np.round((rgb.astype(np.float32) - 1) * (2750 / 254)), 1) + 1000
    return np.moveaxis(dn, -1, 0).astype(np.uint16)


def write_granule(path: Path, tiles: np.ndarray, side: int) -> int:
    """The granule, written one row of cells at a time; returns its size in bytes."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    per_side = -(-side // 64)
    profile = dict(driver="GTiff", width=side, height=side, count=3, dtype="uint16", crs="EPSG:32632",
                   transform=from_origin(399960.0, 5800020.0, 10.0, 10.0), nodata=0, tiled=True,
                   blockxsize=512, blockysize=512, compress="deflate", predictor=2)
    with rasterio.open(path, "w", **profile) as granule:
        for row in range(per_side):
            picked = tiles[(row * per_side + np.arange(per_side)) % len(tiles)]
            strip = np.concatenate(list(picked), axis=1)[:, :side]
            height = min(64, side - row * 64)  # the last row of tiles is cut where the granule ends
            granule.write(digital_numbers(strip[:height]), window=Window(0, row * 64, side, height))
    return path.stat().st_size


def bare_forward(model: str, tiles: np.ndarray, batch_size: int, threads: int, backend: str) -> float:
    """Cells per second of the model alone on model-ready batches, on the command's backend (TTA as the
    checkpoint's config says, as the command serves it)."""
    from eurosat import hub
    from eurosat.inference import Predictor
    from eurosat.views import forward

    torch.set_num_threads(threads)
    checkpoint = hub.load(model)
    predictor = Predictor(checkpoint, tta=checkpoint.tta)
    if backend == "onnxruntime":
        predictor.use_onnxruntime(threads=threads)
    ready = predictor.prepare(torch.from_numpy(tiles).permute(0, 3, 1, 2).contiguous())
    forward(predictor.engine, ready[:batch_size], tta=predictor.tta)  # lazy set-up, untimed
    start = time.perf_counter()
    for first in range(0, len(ready), batch_size):
        forward(predictor.engine, ready[first:first + batch_size], tta=predictor.tta)
    return len(ready) / (time.perf_counter() - start)


def run_command(args: argparse.Namespace, granule: Path, workdir: Path) -> dict[str, Any]:
    """`python -m eurosat.map` in a process of its own: its wall time and what it printed."""
    command = [sys.executable, "-m", "eurosat.map", str(granule), str(workdir / "landcover.tif"),
               "--csv", str(workdir / "cells.csv"), "--model", args.model, "--threads", str(args.threads),
               "--batch-size", str(args.batch_size), "--backend", args.backend]
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # The child's own high-water mark, read while it runs: getrusage's figure for children would count the
    # moment after fork, when the child still shares this process's pages (the 27,000 decoded tiles).
    peak = [0]
    watcher = threading.Thread(target=_watch, args=(process, peak), daemon=True)
    watcher.start()
    stdout, stderr = process.communicate()
    wall = time.perf_counter() - start
    watcher.join()
    if process.returncode != 0:
        raise RuntimeError(f"the command failed:\n{stdout}\n{stderr}")
    return {"argv": ["python", "-m", "eurosat.map", *command[3:]], "wall_s": wall, "stdout": stdout, "peak": peak[0],
            "progress": stderr.strip().splitlines()[-1] if stderr.strip() else ""}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="eurosat-granule-") as tmp:
        workdir = Path(tmp)
        tiles = all_tiles(args.dataset)
        granule = workdir / "granule.tif"
        start = time.perf_counter()
        size = write_granule(granule, tiles, args.side)
        built = time.perf_counter() - start
        sample = tiles[:args.forward_cells]
        del tiles  # the command runs in its own process; this one keeps only the forward's sample
        before = bare_forward(args.model, sample, args.batch_size, args.threads, args.backend)
        result = run_command(args, granule, workdir)
        after = bare_forward(args.model, sample, args.batch_size, args.threads, args.backend)
        cells = sum(1 for _ in open(workdir / "cells.csv")) - 1
    forward = statistics.mean([before, after])
    results = {
        "command": "python -m benchmarks.granule" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:])),
        "machine": machine(), "model": Path(args.model).name, "backend": args.backend, "side": args.side, "file_bytes": size,
        "build_s": round(built, 1), "cells": cells, "granule_command": " ".join(result["argv"]),
        "wall_s": round(result["wall_s"], 1), "cells_per_s": round(cells / result["wall_s"], 1),
        "forward_cells_per_s": {"before": round(before, 1), "after": round(after, 1)},
        "command / forward": round(cells / result["wall_s"] / forward, 3),
        "peak_rss_gb": round(result["peak"] / 1e9, 3),
        "printed": result["stdout"], "progress_bar": result["progress"]}
    out = Path(args.out)
    save(out / "granule.json", results, hidden=("printed", "machine"))
    return results


def _watch(process: subprocess.Popen, peak: list[int]) -> None:
    """Keep the highest VmHWM (bytes) of a running process in peak[0] until it exits."""
    while process.poll() is None:
        peak[0] = max(peak[0], peak_rss(process.pid))
        time.sleep(0.5)


if __name__ == "__main__":
    main()
