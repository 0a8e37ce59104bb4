"""The same answers on the whole test split: ONNX Runtime against PyTorch, top-1, probabilities and single-pass heatmaps.

    python -m benchmarks.equality --dataset ../shared/eurosat-rgb --out results/equality.json

Every test tile goes through both backends of the served model as /batch and /scene classify it
(`Predictor.classify`, 8 views when the checkpoint says so), and through `Predictor.analyze` for the
single-pass heatmap of its top-1 class, as /gradcam draws it. Run by hand: it needs the full data.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.inference import machine
from benchmarks.results import save
from eurosat.config import BUNDLED_MODEL

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.equality", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(REPO / BUNDLED_MODEL))
    p.add_argument("--dataset", default=str(REPO.parent / "shared" / "eurosat-rgb"))
    p.add_argument("--limit", type=int, help="only the first N test tiles")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="results/equality.json")
    args = p.parse_args(argv)
    from eurosat import hub
    from eurosat.data import decode_split, load_splits
    from eurosat.inference import Predictor

    torch.set_num_threads(args.threads)
    start = time.monotonic()
    splits = load_splits(args.dataset)
    images, labels = decode_split(splits.test, splits.image_column, splits.label_column)
    images, labels = images[:args.limit], labels[:args.limit]
    loaded = hub.load(args.model)
    pytorch = Predictor(hub.load(args.model), tta=loaded.tta, cell_tta=loaded.tta)
    runtime = Predictor(loaded, tta=loaded.tta, cell_tta=loaded.tta)
    with tempfile.TemporaryDirectory() as cache:
        note = runtime.use_onnxruntime(cache, threads=args.threads)
        if runtime.engine is runtime.model:
            raise SystemExit(f"ONNX Runtime is not serving: {note}")
        expected, got = pytorch.classify(images), runtime.classify(images)
        heat = 0.0
        for tile in images:
            image = Image.fromarray(tile.permute(1, 2, 0).numpy())
            heat = max(heat, float(np.abs(runtime.analyze(image).heatmap - pytorch.analyze(image).heatmap).max()))
    top1 = got.argmax(1)
    results = {
        "command": "python -m benchmarks.equality" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:])),
        "machine": machine(), "model": Path(args.model).name, "tiles": len(images), "tta": runtime.cell_tta,
        "backend": note,
        "top1_differing": int((top1 != expected.argmax(1)).sum()),
        "max_probability_difference": float((got - expected).abs().max()),
        "max_heatmap_difference": heat,
        "top1_accuracy": {"pytorch": float((expected.argmax(1) == labels).float().mean()),
                          "onnxruntime": float((top1 == labels).float().mean())},
        "seconds": round(time.monotonic() - start, 1)}
    results["holds"] = (results["top1_differing"] == 0 and results["max_probability_difference"] <= 1e-4
                        and heat <= 1e-4)
    out = Path(args.out)
    save(out, results)
    return results


if __name__ == "__main__":
    main()
