"""The scene and batch benchmark: cells per second against the model's own batched forward, and the app's /scene
and /batch against calling /predict once per tile.

    python -m benchmarks.scene --out results        # about 5 minutes on 2 CPUs; writes scene.json and SCENE.md

Tiles are real EuroSAT test tiles (the mini set in tests/data), cycled to fill a 2048x2048 mosaic
(1,024 cells) and a batch of 100 files. In process, the scene path (cutting, one uint8 batch through
`Predictor.classify`, probabilities) and a bare batched forward of the same cells at the same batch
size run interleaved, so a change of load hits both alike. End to end, the app runs in its own
process and each figure is measured in the same run as the one it is compared with.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmarks.appserver import running_app
from benchmarks.inference import machine
from benchmarks.results import save
from benchmarks.timing import at_least_one, interleaved, paired_ratio
from eurosat.config import BUNDLED_MODEL

REPO = Path(__file__).resolve().parents[1]
MINI = REPO / "tests" / "data" / "eurosat-rgb-mini"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scene", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(REPO / BUNDLED_MODEL), help="checkpoint folder")
    p.add_argument("--side", type=int, default=2048, help="the scene's side in pixels")
    p.add_argument("--batch-files", type=int, default=100, help="tiles in the batch upload")
    p.add_argument("--batch-size", type=int, default=64, help="cells per forward pass (the scene's own default)")
    p.add_argument("--rounds", type=at_least_one, default=5, help="interleaved in-process rounds")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="serve with TTA or not (default: as the checkpoint says)")
    p.add_argument("--no-app", action="store_true", help="skip the end-to-end part")
    p.add_argument("--out", default="results", help="folder for scene.json and SCENE.md")
    return p


def real_tiles(count: int) -> list[np.ndarray]:
    """`count` RGB test tiles (64x64 uint8), cycling through the mini set's test split."""
    from eurosat.data import decode_split, load_splits

    splits = load_splits(str(MINI))
    images, _ = decode_split(splits.test, splits.image_column, splits.label_column)
    tiles = images.permute(0, 2, 3, 1).numpy()
    return [tiles[i % len(tiles)] for i in range(count)]


def mosaic(tiles: list[np.ndarray], side: int) -> np.ndarray:
    per_row = side // 64
    rows = [np.concatenate(tiles[r * per_row:(r + 1) * per_row], axis=1) for r in range(per_row)]
    return np.concatenate(rows, axis=0)


def in_process(args: argparse.Namespace, picture: np.ndarray) -> dict[str, Any]:
    """Cells per second of the scene path and of a bare batched forward of the same cells, interleaved."""
    from eurosat import hub, mapping
    from eurosat.inference import Predictor
    from eurosat.views import d4_views, in_layout

    checkpoint = hub.load(args.model)
    predictor = Predictor(checkpoint, tta=checkpoint.tta if args.tta is None else args.tta)
    predictor.warmup()
    cells = torch.from_numpy(np.stack([picture[y:y + 64, x:x + 64] for y in range(0, picture.shape[0], 64)
                                       for x in range(0, picture.shape[1], 64)])).permute(0, 3, 1, 2).contiguous()
    ready = predictor.prepare(cells)  # what the model sees, prepared before timing

    def forward() -> None:
        with torch.inference_mode():
            for start in range(0, len(ready), args.batch_size):
                batch = ready[start:start + args.batch_size]
                predictor.model(in_layout(predictor.model, d4_views(batch) if predictor.tta else batch))

    def mapped() -> None:
        mapping.classify_scene(picture, predictor, batch_size=args.batch_size)

    forward()  # lazy set-up, untimed
    mapped()
    times = interleaved({"scene": lambda _: mapped(), "forward": lambda _: forward()}, args.rounds)
    cells_per_s = {name: len(cells) / statistics.median(t) for name, t in times.items()}
    return {"cells": len(cells), "batch_size": args.batch_size, "tta": predictor.tta,
            "cells_per_s": {k: round(v, 1) for k, v in cells_per_s.items()},
            # throughput of the scene path over that of the bare forward: the median of per-round time ratios
            "scene / forward": paired_ratio(times, "forward", "scene")}


def end_to_end(args: argparse.Namespace, picture: np.ndarray, tiles: list[np.ndarray], workdir: Path) -> dict:
    """/scene of the whole picture and /batch of the tiles, each beside /predict once per tile."""
    from gradio_client import Client, handle_file

    scene_path = workdir / "scene.png"
    Image.fromarray(picture).save(scene_path)
    tile_paths = []
    for i, tile in enumerate(tiles):
        tile_paths.append(workdir / f"tile{i:03d}.png")
        Image.fromarray(tile).save(tile_paths[-1])
    archive = workdir / "tiles.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for path in tile_paths:
            z.write(path, f"tiles/{path.name}")
    flags = [] if args.tta is None else ["--tta" if args.tta else "--no-tta"]
    with running_app("--model", args.model, *flags, log_dir=workdir / "app", env={"HF_HUB_OFFLINE": "1"}) as app:
        client = Client(app.url, verbose=False, download_files=str(workdir / "downloads"))
        client.predict(handle_file(str(tile_paths[0])), api_name="/predict")  # lazy set-up, untimed

        def timed(call) -> float:
            start = time.perf_counter()
            call()
            return time.perf_counter() - start

        per_tile = [timed(lambda p=p: client.predict(handle_file(str(p)), api_name="/predict")) for p in tile_paths]
        batch_files = timed(lambda: client.predict([handle_file(str(p)) for p in tile_paths], api_name="/batch"))
        batch_zip = timed(lambda: client.predict([handle_file(str(archive))], api_name="/batch"))
        scene_s = timed(lambda: client.predict(handle_file(str(scene_path)), api_name="/scene"))
    cells = (picture.shape[0] // 64) * (picture.shape[1] // 64)
    predict_total = sum(per_tile)
    return {
        "predict_per_tile_ms": {"median": round(1000 * statistics.median(per_tile), 1), "n": len(per_tile)},
        "batch": {"files": len(tiles), "seconds_files": round(batch_files, 2), "seconds_zip": round(batch_zip, 2),
                  "seconds_predict_each": round(predict_total, 2),
                  "speedup_files": round(predict_total / batch_files, 2)},
        "scene": {"side": picture.shape[0], "cells": cells, "seconds": round(scene_s, 2),
                  # /predict for every cell, at the per-tile rate measured above on real tiles in this run
                  "seconds_predict_each_estimated": round(cells * predict_total / len(per_tile), 1),
                  "speedup_estimated": round(cells * predict_total / len(per_tile) / scene_s, 1)},
    }


def markdown(results: dict[str, Any]) -> str:
    ip, e2e, m = results["in_process"], results.get("end_to_end"), results["machine"]
    lines = ["# Scene and batch benchmark", "", f"Written by `{results['command']}` on {m['date']}.", "",
             f"- Machine: {m['cpu']} ({m['cpu_capability']}), {m['usable_cpus']} usable CPUs; GPU: "
             f"{m['gpu'] or 'none'}.", f"- Model: `{results['model']}`, TTA {'on' if ip['tta'] else 'off'}.", "",
             "## In process", "",
             f"{ip['cells']} cells of a {results['side']}x{results['side']} mosaic of real test tiles, batch "
             f"{ip['batch_size']}, {results['rounds']} interleaved rounds (medians).", "",
             "| Path | cells/s |", "|---|---|",
             f"| scene (cut, preprocess, forward, probabilities) | {ip['cells_per_s']['scene']} |",
             f"| bare batched forward of the same cells | {ip['cells_per_s']['forward']} |", "",
             f"Scene throughput / bare forward throughput (median of per-round ratios): **{ip['scene / forward']}** "
             "(goal: at least 0.7)."]
    if e2e:
        b, s = e2e["batch"], e2e["scene"]
        lines += ["", "## End to end through gradio_client", "",
                  "| Request | seconds | the same by /predict per tile | speed-up |", "|---|---|---|---|",
                  f"| /batch, {b['files']} files | {b['seconds_files']} | {b['seconds_predict_each']} "
                  f"({b['files']} calls, measured) | {b['speedup_files']}x |",
                  f"| /batch, the same {b['files']} tiles in one ZIP | {b['seconds_zip']} | | |",
                  f"| /scene, {s['side']}x{s['side']} ({s['cells']} cells) | {s['seconds']} | "
                  f"{s['seconds_predict_each_estimated']} (estimated from the measured per-tile rate) | "
                  f"{s['speedup_estimated']}x |", "",
                  f"/predict per tile: median {e2e['predict_per_tile_ms']['median']} ms over "
                  f"{e2e['predict_per_tile_ms']['n']} calls."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    per_side = args.side // 64
    tiles = real_tiles(per_side * per_side)
    picture = mosaic(tiles, args.side)
    results: dict[str, Any] = {
        "command": "python -m benchmarks.scene" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:])),
        "machine": machine(), "model": Path(args.model).name, "side": args.side, "rounds": args.rounds}
    results["in_process"] = in_process(args, picture)
    if not args.no_app:
        with tempfile.TemporaryDirectory(prefix="eurosat-scene-bench-") as tmp:
            results["end_to_end"] = end_to_end(args, picture, tiles[:args.batch_files], Path(tmp))
    out = Path(args.out)
    save(out / "scene.json", results, markdown(results))
    return results


if __name__ == "__main__":
    main()
