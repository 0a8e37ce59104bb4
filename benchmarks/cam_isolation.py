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
import statistics
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmarks.inference import machine, make_checkpoint
from benchmarks.results import save
from benchmarks.timing import at_least_one, interleaved, paired_ratio
from eurosat.config import BUNDLED_MODEL

REPO = Path(__file__).resolve().parents[1]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cam_isolation", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(REPO / BUNDLED_MODEL), help="checkpoint folder (ignored with --arch)")
    p.add_argument("--arch", help="serve a randomly initialised timm model of this name instead")
    p.add_argument("--size", type=int, default=224, help="input size with --arch")
    p.add_argument("--method", default="GradCAM++", help="a pytorch-grad-cam method that hooks the model")
    p.add_argument("--clients", type=int, default=2, help="concurrent requests (the app's concurrency limit)")
    p.add_argument("--requests", type=at_least_one, default=20, help="requests per client per round")
    p.add_argument("--rounds", type=at_least_one, default=5)
    p.add_argument("--out", default="results", help="folder for cam_isolation.json")
    return p


def burst(predictor: Any, tiles: list[Image.Image], method: str, clients: int) -> list[np.ndarray]:
    """The heatmaps of all `tiles` in tile order, analysed by `clients` threads between them."""
    with ThreadPoolExecutor(clients) as pool:
        return list(pool.map(lambda tile: predictor.analyze(tile, method=method).heatmap, tiles))


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
    burst(predictors[many], tiles, args.method, args.clients)  # warms the copies up, as `expected` did `one`
    produced: list[tuple[str, list[np.ndarray]]] = []
    seconds = interleaved({name: (lambda _, name=name: produced.append(
        (name, burst(predictors[name], tiles, args.method, args.clients)))) for name in predictors}, args.rounds)
    for name, maps in produced:  # checked outside the timings
        assert all(np.array_equal(a, b) for a, b in zip(maps, expected)), f"{name}: a heatmap changed"
    result = {
        "machine": machine(), "model": args.arch or folder.name, "method": args.method, "clients": args.clients,
        "requests_per_round": len(tiles), "rounds": args.rounds, "torch_threads": torch.get_num_threads(),
        "requests_per_s": {name: round(len(tiles) / statistics.median(s), 2) for name, s in seconds.items()},
        "speedup_of_copies": paired_ratio(seconds, one, many),
        "seconds": seconds,
    }
    save(Path(args.out) / f"cam_isolation-{args.arch or folder.name}.json", result, hidden=("seconds", "machine"))
    return result


if __name__ == "__main__":
    main()
