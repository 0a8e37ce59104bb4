"""The app end to end, ONNX Runtime against PyTorch: /predict, /batch and /scene beside a plain forward, and cold starts.

    python -m benchmarks.served --out results/served                       # the bundled model (about 6 minutes)
    python -m benchmarks.served --before-app /tmp/before/app.py ...        # also an older checkout, side by side
    python -m benchmarks.served --arch resnet50 --files 64 --side 512 ...  # ResNet-50 at 224 px, random weights

Servers of the same checkpoint (`--backend onnxruntime`, `--backend pytorch`, and an older app.py when
given) run at once with the app's default settings; requests alternate between them, round by round,
and between the rounds this process times a plain PyTorch forward of the same tiles and the same views
(made before timing; the faster of 1 and 2 threads), so every ratio compares figures taken moments apart.
/batch gets real EuroSAT test tiles (their JPEG bytes) in one ZIP; /scene a PNG mosaic of them.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from benchmarks.appserver import start_app
from benchmarks.inference import machine, make_checkpoint, summary
from benchmarks.results import save
from benchmarks.timing import at_least_one
from eurosat.config import BUNDLED_MODEL

REPO = Path(__file__).resolve().parents[1]
FULL = REPO.parent / "shared" / "eurosat-rgb"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.served", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(REPO / BUNDLED_MODEL), help="checkpoint folder (unless --arch)")
    p.add_argument("--arch", help="serve a random-weight timm model of this architecture at 224 px instead")
    p.add_argument("--dataset", default=str(FULL), help="EuroSAT RGB folder with data/test-*.parquet")
    p.add_argument("--files", type=int, default=500, help="test tiles in the /batch ZIP")
    p.add_argument("--side", type=int, default=2048, help="side of the /scene mosaic in pixels")
    p.add_argument("--rounds", type=at_least_one, default=3, help="alternating rounds of /batch and /scene")
    p.add_argument("--requests", type=at_least_one, default=30, help="sequential /predict requests per server")
    p.add_argument("--before-app", help="an older checkout's app.py, served beside the two backends")
    p.add_argument("--out", default="results/served", help="folder for served.json and SERVED.md")
    return p


def test_tiles(dataset: str, count: int) -> list[bytes]:
    """The encoded bytes of the first `count` test tiles, as the dataset stores them (JPEG)."""
    import pyarrow.parquet as pq

    table = pq.read_table(sorted(Path(dataset, "data").glob("test-*.parquet"))[0], columns=["image"])
    return [row["bytes"] for row in table.column("image").to_pylist()[:count]]


def inputs(tiles: list[bytes], side: int, folder: Path) -> tuple[Path, Path, Path, np.ndarray]:
    """A ZIP of the tiles, one tile alone, and a side x side PNG mosaic of them (cycled); also the decoded tiles."""
    decoded = np.stack([np.asarray(Image.open(io.BytesIO(data)).convert("RGB")) for data in tiles])
    archive = folder / "tiles.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for i, data in enumerate(tiles):
            z.writestr(f"tiles/{i:04d}.jpg", data)
    single = folder / "tile.jpg"
    single.write_bytes(tiles[0])
    per_row = side // 64
    cells = [decoded[i % len(decoded)] for i in range(per_row * per_row)]
    mosaic = np.concatenate([np.concatenate(cells[r * per_row:(r + 1) * per_row], axis=1) for r in range(per_row)])
    scene = folder / "scene.png"
    Image.fromarray(mosaic).save(scene)
    return archive, single, scene, decoded


def plain_forward(checkpoint: str, tiles: np.ndarray, batch_tiles: int = 64) -> Callable[[], float]:
    """A timer of PyTorch's bare forward over the tiles' served views, batch by batch; returns tiles per second."""
    from eurosat import hub
    from eurosat.inference import Predictor
    from eurosat.views import d4_views

    loaded = hub.load(checkpoint)
    predictor = Predictor(loaded, tta=loaded.tta)
    predictor.warmup()
    ready = predictor.prepare(torch.from_numpy(tiles).permute(0, 3, 1, 2))
    chunks = [ready[i:i + batch_tiles] for i in range(0, len(ready), batch_tiles)]
    batches = [d4_views(c) if predictor.tta else c for c in chunks]
    batches = [b.contiguous(memory_format=torch.channels_last) if predictor.channels_last else b for b in batches]

    def timed() -> float:
        best = 0.0
        for threads in (1, 2):
            torch.set_num_threads(threads)
            start = time.perf_counter()
            with torch.inference_mode():
                for batch in batches:
                    predictor.model(batch)
            best = max(best, len(tiles) / (time.perf_counter() - start))
        return best
    return timed


def cold_start(args: list[str], single: Path, folder: Path, env: dict[str, str], app: Path) -> float:
    """Seconds from the spawn of app.py to its first answered /predict."""
    from gradio_client import Client, handle_file

    server = start_app(*args, log_dir=folder, env=env, app=app)
    try:
        Client(server.url, verbose=False, download_files=str(folder)).predict(handle_file(str(single)),
                                                                            api_name="/predict")
        return round(time.monotonic() - server.spawned_at, 2)
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    from gradio_client import Client, handle_file

    t0 = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - t0:6.1f} s] {message}", flush=True)

    env = {"HF_HUB_OFFLINE": "1"}
    results: dict[str, Any] = {
        "command": "python -m benchmarks.served" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:])),
        "machine": machine()}
    with tempfile.TemporaryDirectory(prefix="eurosat-served-") as tmp:
        work = Path(tmp)
        model = str(make_checkpoint(work / "checkpoint", args.arch, 224, [f"c{i}" for i in range(10)])) \
            if args.arch else args.model
        archive, single, scene, decoded = inputs(test_tiles(args.dataset, args.files), args.side, work)
        cells = (args.side // 64) ** 2
        graphs = work / "graphs"
        ours = Path(REPO / "app.py")
        flags = {"onnxruntime": ["--backend", "onnxruntime", "--graph-cache", str(graphs)],
                 "pytorch": ["--backend", "pytorch"]}
        apps = {name: ours for name in flags}
        if args.before_app:
            flags["before"], apps["before"] = [], Path(args.before_app)
        log("cold starts")
        results["cold_start_s"] = {
            "onnxruntime, empty graph cache (export)": cold_start(["--model", model, *flags["onnxruntime"]], single,
                                                                  work / "cold1", env, ours),
            "onnxruntime, graph cached": cold_start(["--model", model, *flags["onnxruntime"]], single,
                                                    work / "cold2", env, ours),
            "pytorch": cold_start(["--model", model, *flags["pytorch"]], single, work / "cold3", env, ours)}
        log(f"  {results['cold_start_s']}")
        plain = plain_forward(model, decoded)
        servers = {name: start_app("--model", model, *flag, log_dir=work / name, env=env, app=apps[name])
                   for name, flag in flags.items()}
        try:
            clients = {name: Client(s.url, verbose=False, download_files=str(work / "downloads"))
                       for name, s in servers.items()}
            for client in clients.values():  # lazy set-up, untimed
                client.predict(handle_file(str(single)), api_name="/predict")
            names = list(clients)

            def timed(name: str, call: Callable[[Any], Any]) -> float:
                start = time.perf_counter()
                try:
                    call(clients[name])
                except Exception:  # the client only says that something failed: the server's log says what
                    print(f"the {name} server failed; the end of its log:\n{servers[name].output()[-4000:]}")
                    raise
                return time.perf_counter() - start

            log(f"/predict: {args.requests} requests per server, alternating")
            latency: dict[str, list[float]] = {name: [] for name in names}
            for i in range(args.requests):
                for name in names[i % len(names):] + names[:i % len(names)]:
                    latency[name].append(timed(name, lambda c: c.predict(handle_file(str(single)), api_name="/predict")))
            per_s: dict[str, list[float]] = {f"{kind} {name}": [] for kind in ("batch", "scene") for name in names}
            per_s["plain forward"] = []
            for r in range(args.rounds):
                per_s["plain forward"].append(plain())
                for name in names[r % len(names):] + names[:r % len(names)]:
                    per_s[f"batch {name}"].append(args.files / timed(
                        name, lambda c: c.predict([handle_file(str(archive))], api_name="/batch")))
                    per_s[f"scene {name}"].append(cells / timed(
                        name, lambda c: c.predict(handle_file(str(scene)), api_name="/scene")))
                log(f"  round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in per_s.items()))
        finally:
            for server in servers.values():
                server.stop()
    plain_rate = per_s["plain forward"]
    forward_ms = 1000 / statistics.median(plain_rate)
    results.update({
        "model": args.arch or Path(args.model).name, "files": args.files, "cells": cells, "rounds": args.rounds,
        "predict": {name: summary(t) for name, t in latency.items()},
        "plain_forward_ms_per_tile": round(forward_ms, 3),
        "per_s": {k: round(statistics.median(v), 1) for k, v in per_s.items()},
        # served rate over the plain forward's rate of the same round: the median of those per-round ratios
        "over_plain_forward": {k: round(statistics.median(s / p for s, p in zip(v, plain_rate)), 3)
                               for k, v in per_s.items() if k != "plain forward"},
        "predict_p50_over_plain_forward": {name: round(summary(t)["median_ms"] / forward_ms, 1)
                                           for name, t in latency.items()}})
    out = Path(args.out)
    save(out / "served.json", results, markdown(results))
    return results


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = ["# The app end to end: ONNX Runtime against PyTorch", "", f"Written by `{r['command']}` on {m['date']}.",
             "", f"- Machine: {m['cpu']} ({m['cpu_capability']}), {m['usable_cpus']} usable CPUs.",
             f"- Model: `{r['model']}`; /batch: {r['files']} test tiles in one ZIP; /scene: {r['cells']} cells; "
             f"{r['rounds']} alternating rounds; the plain forward: PyTorch alone on the same tiles and views, "
             f"{r['plain_forward_ms_per_tile']} ms a tile.", "",
             "| server | /predict p50 / p95 ms (p50 / plain forward of a tile) | /batch tiles/s (/ plain forward) "
             "| /scene cells/s (/ plain forward) |", "|---|---|---|---|"]
    for name, p in r["predict"].items():
        lines.append(f"| {name} | {p['median_ms']} / {p['p95_ms']} (x{r['predict_p50_over_plain_forward'][name]}) | "
                     f"{r['per_s'][f'batch {name}']} (x{r['over_plain_forward'][f'batch {name}']}) | "
                     f"{r['per_s'][f'scene {name}']} (x{r['over_plain_forward'][f'scene {name}']}) |")
    lines += [f"| plain PyTorch forward | | {r['per_s']['plain forward']} | {r['per_s']['plain forward']} |", "",
              "Cold start, spawn of `python app.py` to the first answered /predict: " +
              "; ".join(f"{k} **{v} s**" for k, v in r["cold_start_s"].items()) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
