"""Data: EuroSAT splits through `datasets`, label names from the ClassLabel feature, uint8 tensors."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .errors import UserError

SPLIT_ALIASES = {"validation": ("validation", "valid", "val")}


class DatasetError(UserError, ValueError):
    """A dataset source that cannot be used; the message names the source and what is wrong."""


@dataclass
class Splits:
    """The three splits of one source, with the columns that hold the image and the label."""

    train: "datasets.Dataset"  # noqa: F821 - datasets is imported lazily to keep `import eurosat` cheap
    validation: "datasets.Dataset"  # noqa: F821
    test: "datasets.Dataset"  # noqa: F821
    label_names: list[str]
    source: str
    image_column: str
    label_column: str
    validation_carved: bool = False

    def split(self, name: str) -> "datasets.Dataset":  # noqa: F821
        return {"train": self.train, "validation": self.validation, "test": self.test}[name]


def _find_columns(features, source: str) -> tuple[str, str]:
    from datasets import ClassLabel
    from datasets import Image as ImageFeature

    image_cols = [n for n, f in features.items() if isinstance(f, ImageFeature)]
    label_cols = [n for n, f in features.items() if isinstance(f, ClassLabel)]
    found = ", ".join(features) or "none"
    if not image_cols:
        raise DatasetError(f"Dataset {source!r} has no image column (a datasets.Image feature); its columns are: {found}")
    if not label_cols:
        raise DatasetError(
            f"Dataset {source!r} has no label column (a datasets.ClassLabel feature with the class names); "
            f"its columns are: {found}"
        )
    return image_cols[0], label_cols[0]


def load_splits(source: str, *, seed: int = 0, val_fraction: float = 0.2) -> Splits:
    """Load train/validation/test from a Hub dataset id or a local folder in the same layout.

    Where the source has no validation split, a stratified one is carved from train with `seed`,
    so the same seed always gives the same three splits.
    """
    import datasets

    try:
        dsd = datasets.load_dataset(source)
    except Exception as e:  # datasets raises many types (FileNotFound, DatasetNotFound, ConnectionError...)
        raise DatasetError(f"Could not load dataset {source!r}: {type(e).__name__}: {e}") from e
    if not isinstance(dsd, datasets.DatasetDict):
        raise DatasetError(f"Dataset {source!r} did not load as a set of named splits")

    for required in ("train", "test"):
        if required not in dsd:
            raise DatasetError(f"Dataset {source!r} has no {required!r} split; it has: {', '.join(dsd) or 'none'}")
    image_col, label_col = _find_columns(dsd["train"].features, source)
    label_names = list(dsd["train"].features[label_col].names)

    val_name = next((a for a in SPLIT_ALIASES["validation"] if a in dsd), None)
    train = dsd["train"]
    if val_name is None:
        try:
            parts = train.train_test_split(test_size=val_fraction, stratify_by_column=label_col, seed=seed)
        except ValueError as e:  # too few images per class, or a val_fraction that leaves a side empty
            raise DatasetError(f"Dataset {source!r} has no validation split, and none can be carved from its "
                               f"{len(train)} training images with val_fraction={val_fraction}: {e}") from None
        train, validation = parts["train"], parts["test"]
    else:
        validation = dsd[val_name]
    return Splits(
        train=train,
        validation=validation,
        test=dsd["test"],
        label_names=label_names,
        source=source,
        image_column=image_col,
        label_column=label_col,
        validation_carved=val_name is None,
    )


def subsample(ds, n: int, label_column: str, seed: int = 0):
    """A stratified subset of `n` rows (all rows if `n` is not smaller), for quick trials."""
    if n >= len(ds):
        return ds
    return ds.train_test_split(train_size=n, stratify_by_column=label_column, seed=seed)["train"]


def _decode_one(data: bytes, size: tuple[int, int] | None) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB")
        if size is not None and im.size != size:
            im = im.resize(size, Image.Resampling.BICUBIC)
        return np.asarray(im)


def decode_split(ds, image_column: str, label_column: str, *, source: str = "", split: str = "",
                 size: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode every image of a split once into a uint8 tensor (N, 3, H, W), with int64 labels.

    Images whose size differs from the first one (or from `size`) are resized, so any folder of
    mixed tiles still stacks. An unreadable image raises DatasetError naming the source, split and row.
    """
    from datasets import Image as ImageFeature

    # Undecoded bytes, fetched in one slice: per-row access to a datasets column is ~10x slower.
    raw = ds.cast_column(image_column, ImageFeature(decode=False)).select_columns([image_column])[:][image_column]
    if not raw:
        raise DatasetError(f"Dataset {source!r}: split {split!r} is empty")

    def decode(i: int, target: tuple[int, int] | None) -> np.ndarray:
        item = raw[i]
        data = item.get("bytes")
        if data is None and item.get("path"):
            with open(item["path"], "rb") as f:
                data = f.read()
        try:
            return _decode_one(data, target)
        except Exception as e:
            raise DatasetError(
                f"Dataset {source!r}: the image in row {i} of split {split!r} could not be read "
                f"({type(e).__name__}: {e})"
            ) from e

    first = decode(0, size)
    target = size or (first.shape[1], first.shape[0])
    # A plain loop: the tiles are so small that a thread pool's overhead costs more than it saves.
    rest = [decode(i, target) for i in range(1, len(raw))]
    images = torch.from_numpy(np.stack([first, *rest])).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor(ds[label_column], dtype=torch.int64)
    return images, labels


def load_tensors(source: str, *, seed: int, val_fraction: float, max_train_samples: int | None,
                 splits: tuple[str, ...] = ("train", "validation", "test")):
    """Label names and {split: (uint8 images, labels)}, each split decoded once."""
    data = load_splits(source, seed=seed, val_fraction=val_fraction)
    tensors = {}
    for name in splits:
        ds = data.split(name)
        if name == "train" and max_train_samples:
            ds = subsample(ds, max_train_samples, data.label_column, seed)
        tensors[name] = decode_split(ds, data.image_column, data.label_column, source=source, split=name)
    return data, tensors
