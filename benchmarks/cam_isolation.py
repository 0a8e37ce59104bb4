"""How concurrent Grad-CAM requests of a hooking method are kept apart: one shared hooked copy (a lock, in effect)
against one copy per concurrent slot, as the app serves them.

    python -m benchmarks.cam_isolation --out results                      # the bundled model
    python -m benchmarks.cam_isolation --arch resnet50 --size 224 --out results

`clients` threads each send `requests` analyses with a gradient method (default GradCAM++) on real tiles,
against a Predictor holding 1 hooked copy and one holding `clients` copies. The rounds alternate, so a
change of load on the machine hits both alike. Each heatmap is checked against the sequential one, so a
speed-up can never come from mixed-up maps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmarks.inference import machine, make_checkpoint
from eurosat.config import BUNDLED_MODEL

REPO = Path(__file__).resolve().parents[1]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cam_isolation", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(REPO / BUNDLED_MODEL), help="checkpoint folder (ignored with --arch)")
    p.add_argument("--arch", help="serve a randomly initialised timm model of this name instead")
    p.add_argument("--size", type=int, default=224, help="input size with --arch")
    p.add_argument("--method", default="GradCAM++", help="a pytorch-grad-cam method that hooks the model")
    p.add_argument("--clients", type=int, default=2, help="concurrent requests (the app's concurrency limit)")
    p.add_argument("--requests", type=int, default=20, help="requests per client per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default="results", help="folder for cam_isolation.json")
    return p


def burst(predictor: Any, tiles: list[Image.Image], method: str, clients: int) -> tuple[float, list[np.ndarray]]:
    """Seconds for `clients` threads to analyse all `tiles` between them, and the heatmaps in tile order."""
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        maps = list(pool.map(lambda tile: predictor.analyze(tile, method=method).heatmap, tiles))
    return time.perf_counter() - start, maps


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    from eurosat import hub
    from eurosat.inference import Predictor, cpu_threads

    torch.set_num_threads(cpu_threads(args.clients))  # as app.py sets it for this many concurrent requests
    examples = sorted((REPO / "examples").glob("*.jpg"))
    with tempfile.TemporaryDirectory() as workdir:
        folder = (make_checkpoint(Path(workdir) / "checkpoint", args.arch, args.size, [p.stem for p in examples])
                  if args.arch else Path(args.model))
        checkpoint = hub.load(str(folder))
    images = [Image.open(p).convert("RGB") for p in examples]
    tiles = [images[i % len(images)] for i in range(args.clients * args.requests)]
    one, many = "1 hooked copy", f"{args.clients} hooked copies"
    predictors = {name: Predictor(checkpoint, tta=checkpoint.tta, cam_copies=n)
                  for name, n in ((one, 1), (many, args.clients))}
    expected = [predictors[one].analyze(tile, method=args.method).heatmap for tile in tiles]
    seconds: dict[str, list[float]] = {name: [] for name in predictors}
    for r in range(args.rounds + 1):  # round 0 warms both up and is not kept
        for name in (list(predictors) if r % 2 else list(predictors)[::-1]):
            took, maps = burst(predictors[name], tiles, args.method, args.clients)
            assert all(np.array_equal(a, b) for a, b in zip(maps, expected)), f"{name}: a heatmap changed"
            if r:
                seconds[name].append(took)
    result = {
        "machine": machine(), "model": args.arch or folder.name, "method": args.method, "clients": args.clients,
        "requests_per_round": len(tiles), "rounds": args.rounds, "torch_threads": torch.get_num_threads(),
        "requests_per_s": {name: round(len(tiles) / statistics.median(s), 2) for name, s in seconds.items()},
        "speedup_of_copies": round(statistics.median(a / b for a, b in zip(seconds[one], seconds[many])), 3),
        "seconds": seconds,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"cam_isolation-{args.arch or folder.name}.json"
    (out / name).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("seconds", "machine")}, indent=2))
    return result


if __name__ == "__main__":
    main()
