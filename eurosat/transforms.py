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


def eval_transform(cfg: DataConfig, dtype: torch.dtype = torch.float32) -> Transform:
    """uint8 (N, 3, H, W) on any device -> normalised float batch at the model's input size."""
    def apply(images: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(cfg.mean, device=images.device, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(cfg.std, device=images.device, dtype=torch.float32).view(1, 3, 1, 1)
        x = resize(images.float().div_(255), cfg.input_size, cfg.interpolation)
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


def train_transform(cfg: DataConfig, generator: torch.Generator, dtype: torch.dtype = torch.float32) -> Transform:
    """Random D4 symmetry per tile, then the eval transform.

    Overhead tiles have no 'up', so every flip and right-angle rotation keeps the label; the
    augmentation is exact (no interpolation) and runs batched on the training device.
    """
    to_input = eval_transform(cfg, dtype)

    def apply(images: torch.Tensor) -> torch.Tensor:
        codes = torch.randint(0, 8, (images.shape[0],), generator=generator)
        if images.shape[-1] != images.shape[-2]:
            codes -= codes % 2  # quarter turns would change a non-square tile's shape: keep flips and half turns
        return to_input(dihedral(images, codes))
    return apply
