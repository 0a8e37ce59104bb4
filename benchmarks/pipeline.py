"""The training input-pipeline benchmark: tiles decoded once and augmented in batches, against per-image PIL.

    python -m benchmarks.pipeline --dataset ../shared/eurosat-rgb     # writes pipeline.json

Both pipelines feed the same model the same number of images at the same size:
- ours: the split decoded once into a uint8 tensor (timed apart, as a one-off cost), then per batch
  `transforms.train_transform` (a random D4 view, resize, normalise) as batched tensor operations;
- baseline: a torch DataLoader with `--workers` workers, each decoding the JPEG with PIL and applying
  torchvision Resize((size, size)), ToTensor and Normalize to one image at a time.

Two figures for each: the pipeline alone (batches produced per second, nothing else running), and
training steps of `--model` fed by it. The contenders alternate batch by batch in the second part,
so a change of load on the machine hits both alike.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from PIL import Image

from eurosat.config import DEFAULT_DATASET


class _JpegTiles(torch.utils.data.Dataset):
    """The baseline's dataset: encoded tiles, decoded and transformed one at a time in the workers."""

    def __init__(self, encoded: list[bytes], labels: torch.Tensor, transform):
        self.encoded, self.labels, self.transform = encoded, labels, transform

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        with Image.open(io.BytesIO(self.encoded[i])) as im:
            return self.transform(im.convert("RGB")), self.labels[i]


def jpeg_bytes(ds, image_column: str) -> list[bytes]:
    """The split's JPEG bytes as stored, for the baseline to decode itself."""
    from datasets import Image as ImageFeature

    raw = ds.cast_column(image_column, ImageFeature(decode=False))[image_column]
    return [item["bytes"] if item.get("bytes") else Path(item["path"]).read_bytes() for item in raw]


def baseline_batches(encoded: list[bytes], labels: torch.Tensor, size: int, batch_size: int, workers: int,
                     mean, std) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless shuffled batches from the per-image pipeline."""
    from benchmarks.baseline import seed_transform

    loader = torch.utils.data.DataLoader(_JpegTiles(encoded, labels, seed_transform(size, mean, std)),
                                         batch_size=batch_size, shuffle=True, num_workers=workers,
                                         drop_last=True, persistent_workers=workers > 0)
    while True:
        yield from loader


def our_batches(images: torch.Tensor, labels: torch.Tensor, transform, batch_size: int,
                generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless shuffled batches from the decoded tensor, augmented and resized in one go per batch."""
    while True:
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[start:start + batch_size]
            yield transform(images[idx]), labels[idx]


def time_batches(batches: Iterator, count: int) -> float:
    """Images per second over `count` batches, after one untimed batch (worker start-up, lazy set-up)."""
    next(batches)
    start, seen = time.perf_counter(), 0
    for _ in range(count):
        x, _ = next(batches)
        seen += len(x)
    return seen / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m benchmarks.pipeline", description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default=DEFAULT_DATASET, help="Hub dataset id or local folder")
    p.add_argument("--split", default="train")
    p.add_argument("--limit", type=int, help="use only the first N images of the split")
    p.add_argument("--model", default="resnet50", help="timm model trained in the second part")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of the baseline")
    p.add_argument("--pipeline-batches", type=int, default=60, help="batches timed for the pipelines alone")
    p.add_argument("--train-steps", type=int, default=6, help="training steps timed per contender")
    p.add_argument("--out", default="pipeline.json")
    args = p.parse_args(argv)

    from eurosat.data import decode_split, load_splits
    from eurosat.engine import make_optimizer
    from eurosat.model import build_model
    from eurosat.transforms import DataConfig, train_transform
    from eurosat.views import in_layout

    splits = load_splits(args.dataset)
    ds = splits.split(args.split)
    if args.limit:
        ds = ds.select(range(min(args.limit, len(ds))))
    model = build_model(args.model, len(splits.label_names)).to(memory_format=torch.channels_last)
    cfg = DataConfig.for_model(model, args.size)

    start = time.perf_counter()
    images, labels = decode_split(ds, splits.image_column, splits.label_column, source=args.dataset,
                                  split=args.split)
    decode_seconds = time.perf_counter() - start

    ours = our_batches(images, labels, train_transform(cfg, torch.Generator().manual_seed(0)), args.batch_size,
                       torch.Generator().manual_seed(1))
    theirs = baseline_batches(jpeg_bytes(ds, splits.image_column), labels, args.size, args.batch_size,
                              args.workers, cfg.mean, cfg.std)
    pipeline = {"ours": time_batches(ours, args.pipeline_batches),
                "baseline": time_batches(theirs, args.pipeline_batches)}

    optimizer = make_optimizer(model, "adamw", 1e-3, 0.05)
    model.train()

    def step(batches: Iterator) -> float:
        begin = time.perf_counter()
        x, y = next(batches)
        loss = F.cross_entropy(model(in_layout(model, x)), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - begin

    step(ours), step(theirs)
    seconds = {"ours": 0.0, "baseline": 0.0}
    for _ in range(args.train_steps):
        seconds["ours"] += step(ours)
        seconds["baseline"] += step(theirs)
    training = {k: args.train_steps * args.batch_size / v for k, v in seconds.items()}

    results = {
        "command": "python -m benchmarks.pipeline " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} usable CPUs, "
                   f"torch {torch.__version__} ({torch.get_num_threads()} threads)",
        "settings": vars(args),
        "images": len(labels),
        "decode_once_seconds": round(decode_seconds, 2),
        "pipeline_images_per_s": {k: round(v, 1) for k, v in pipeline.items()},
        "pipeline_speedup": round(pipeline["ours"] / pipeline["baseline"], 2),
        "training_images_per_s": {k: round(v, 2) for k, v in training.items()},
        "training_speedup": round(training["ours"] / training["baseline"], 2),
    }
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
