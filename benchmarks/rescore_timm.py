"""An independent re-score of a checkpoint with timm and datasets alone: none of this project's code.

    python -m benchmarks.rescore_timm models/eurosat-rgb-resnet18-cpu --dataset ../shared/eurosat-rgb

The checkpoint loads with `timm.create_model("local-dir:DIR", pretrained=True)`, each test image goes
through timm's own eval transform built from the checkpoint's config (`resolve_model_data_config`,
`create_transform`), and the top-1 is compared with the dataset's label: single view, one image at a time.
"""

from __future__ import annotations

import argparse
import json
import sys

import timm
import torch
from datasets import load_dataset


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.rescore_timm", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a checkpoint folder in timm's Hub format")
    p.add_argument("--dataset", default="timm/eurosat-rgb", help="Hub dataset id or local folder")
    p.add_argument("--split", default="test")
    args = p.parse_args(argv)

    model = timm.create_model(f"local-dir:{args.checkpoint}", pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
    names = model.pretrained_cfg["label_names"]
    split = load_dataset(args.dataset, split=args.split)
    dataset_names = split.features["label"].names
    correct = 0
    with torch.inference_mode():
        for row in split:
            logits = model(transform(row["image"].convert("RGB")).unsqueeze(0))[0]
            correct += names[int(logits.argmax())] == dataset_names[row["label"]]
    result = {"checkpoint": args.checkpoint, "split": args.split, "images": len(split), "correct": correct,
              "top1": correct / len(split)}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
