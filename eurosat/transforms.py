"""Preprocessing, defined once: the data config stored with a checkpoint, and the batched tensor transforms."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F

Transform = Callable[[torch.Tensor], torch.Tensor]

_MODES = {"bilinear", "bicubic", "nearest"}


@dataclass(frozen=True)
class DataConfig:
    """How pixels become model input: resize the whole tile to `input_size`, then normalise."""

    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"

    @classmethod
    def from_pretrained_cfg(cls, cfg: dict[str, Any]) -> "DataConfig":
        """Read timm's `pretrained_cfg` (as stored in a checkpoint's config.json)."""
        _, h, w = cfg["input_size"]
        interpolation = cfg.get("interpolation", "bicubic")
        if interpolation not in _MODES:
            interpolation = "bicubic"
        return cls((int(h), int(w)), tuple(cfg["mean"]), tuple(cfg["std"]), interpolation)

    @classmethod
    def for_model(cls, model: torch.nn.Module, img_size: int) -> "DataConfig":
        """The model's own normalisation (ImageNet for timm models) at the size we train at."""
        return cls.from_pretrained_cfg({**model.pretrained_cfg, "input_size": (3, img_size, img_size)})

    def to_timm(self) -> dict[str, Any]:
        """The keys timm's `save_for_hf(data_config=...)` records.

        Whole tiles are resized, never cropped: crop_pct 1.0 and crop_mode "squash" make timm's own
        `create_transform` do exactly what `eval_transform` does, for images of any aspect ratio.
        """
        return {
            "input_size": (3, *self.input_size),
            "mean": self.mean,
            "std": self.std,
            "interpolation": self.interpolation,
            "crop_pct": 1.0,
            "crop_mode": "squash",
        }


def resize(images: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize a float batch; antialias when shrinking, so large photos don't alias into noise."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    shrinking = images.shape[-2] > size[0] or images.shape[-1] > size[1]
    antialias = shrinking and mode != "nearest"
    return F.interpolate(images, size=size, mode=mode, antialias=antialias,
                         **({} if mode == "nearest" else {"align_corners": False}))


def eval_transform(cfg: DataConfig, dtype: torch.dtype = torch.float32,
                   size: tuple[int, int] | None = None) -> Transform:
    """uint8 (N, 3, H, W) on any device -> normalised float batch at the model's input size (or `size`)."""
    size = cfg.input_size if size is None else size

    def apply(images: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(cfg.mean, device=images.device, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(cfg.std, device=images.device, dtype=torch.float32).view(1, 3, 1, 1)
        x = resize(images.float().div_(255), size, cfg.interpolation)
        return x.sub_(mean).div_(std).to(dtype)
    return apply


def dihedral(images: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Apply one of the 8 symmetries of the square (D4) to each image: code = 4 * flip + quarter turns."""
    codes = codes.cpu()
    out = images.clone()
    for code in range(1, 8):
        idx = (codes == code).nonzero().flatten().to(images.device)
        if idx.numel() == 0:
            continue
        sel = images[idx]
        if code >= 4:
            sel = sel.flip(-1)
        out[idx] = torch.rot90(sel, code % 4, dims=(-2, -1))
    return out


def random_crop(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """A random `size` x `size` window of each image (N, C, H, W), one offset per image, no resampling."""
    n, _, height, width = images.shape
    if size >= min(height, width):
        return images
    top = torch.randint(0, height - size + 1, (n,), generator=generator).to(images.device)
    left = torch.randint(0, width - size + 1, (n,), generator=generator).to(images.device)
    steps = torch.arange(size, device=images.device)
    rows = (top[:, None] + steps)[:, None, :, None]  # (N, 1, size, 1)
    cols = (left[:, None] + steps)[:, None, None, :]  # (N, 1, 1, size)
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    channel = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return images[batch, channel, rows, cols]


def train_transform(cfg: DataConfig, generator: torch.Generator, dtype: torch.dtype = torch.float32,
                    crop: int | None = None) -> Transform:
    """Random D4 symmetry per tile, optionally a random `crop`-pixel window, then the eval transform.

    Overhead tiles have no 'up', so every flip and right-angle rotation keeps the label; the
    augmentation is exact (no interpolation) and runs batched on the training device. A crop keeps
    the ground resolution (10 m per pixel stays 10 m per pixel): it is resized by the same factor as a
    whole tile would be, so a 48-pixel window of a 64-pixel tile trains at 3/4 of the input size, for
    about half the compute of a whole tile.
    """
    def apply(images: torch.Tensor) -> torch.Tensor:
        codes = torch.randint(0, 8, (images.shape[0],), generator=generator)
        if images.shape[-1] != images.shape[-2]:
            codes -= codes % 2  # quarter turns would change a non-square tile's shape: keep flips and half turns
        views = dihedral(images, codes)
        if crop is None or crop >= min(views.shape[-2:]):
            return eval_transform(cfg, dtype)(views)
        size = tuple(max(1, round(side * crop / tile)) for side, tile in zip(cfg.input_size, views.shape[-2:]))
        return eval_transform(cfg, dtype, size)(random_crop(views, crop, generator))
    return apply
