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


def random_crop(images: torch.Tensor, size: int, generator: torch.Generator, pad: int = 0) -> torch.Tensor:
    """A random `size` x `size` window of each image (N, C, H, W), one offset per image, no resampling.

    With `pad`, the window may start up to `pad` pixels outside the image, whose border is then
    mirrored (reflect, as `numpy.pad` does): a translation that invents no colours, only repeats the
    ground beside it.
    """
    n, _, height, width = images.shape
    if pad <= 0 and size >= min(height, width):
        return images
    top = torch.randint(-pad, height - size + pad + 1, (n,), generator=generator).to(images.device)
    left = torch.randint(-pad, width - size + pad + 1, (n,), generator=generator).to(images.device)
    steps = torch.arange(size, device=images.device)
    rows = _reflect(top[:, None] + steps, height)[:, None, :, None]  # (N, 1, size, 1)
    cols = _reflect(left[:, None] + steps, width)[:, None, None, :]  # (N, 1, 1, size)
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    channel = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return images[batch, channel, rows, cols]


def _reflect(index: torch.Tensor, length: int) -> torch.Tensor:
    """Indices outside 0..length-1 mirrored back inside, the edge pixel not repeated (-1 -> 1)."""
    period = 2 * (length - 1)
    index = index.remainder(period) if period > 0 else torch.zeros_like(index)
    return torch.where(index >= length, period - index, index)


def cutout(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Set a random `size` x `size` square of each normalised image to 0 (the mean colour), in place.

    The square may hang over the border, so pixels near the edges are hidden as often as central ones.
    """
    n, _, height, width = x.shape
    top = torch.randint(-(size // 2), height - size // 2, (n, 1), generator=generator)
    left = torch.randint(-(size // 2), width - size // 2, (n, 1), generator=generator)
    rows, cols = torch.arange(height)[None], torch.arange(width)[None]
    inside_rows = (rows >= top) & (rows < top + size)  # (N, H)
    inside_cols = (cols >= left) & (cols < left + size)  # (N, W)
    hidden = (inside_rows[:, :, None] & inside_cols[:, None, :]).to(x.device)
    return x.masked_fill_(hidden[:, None], 0.0)


def train_transform(cfg: DataConfig, generator: torch.Generator, dtype: torch.dtype = torch.float32,
                    crop: int | None = None, translate: int = 0, erase: int = 0) -> Transform:
    """Random D4 symmetry per tile, optionally a random `crop`-pixel window, then the eval transform.

    Overhead tiles have no 'up', so every flip and right-angle rotation keeps the label; the
    augmentation is exact (no interpolation) and runs batched on the training device. A crop keeps
    the ground resolution (10 m per pixel stays 10 m per pixel): it is resized by the same factor as a
    whole tile would be, so a 48-pixel window of a 64-pixel tile trains at 3/4 of the input size, for
    about half the compute of a whole tile. `translate` shifts the window (or the whole tile) by up to
    that many pixels, mirroring the border; `erase` blanks a random square of that many pixels (cutout).
    """
    def apply(images: torch.Tensor) -> torch.Tensor:
        codes = torch.randint(0, 8, (images.shape[0],), generator=generator)
        if images.shape[-1] != images.shape[-2]:
            codes -= codes % 2  # quarter turns would change a non-square tile's shape: keep flips and half turns
        views = dihedral(images, codes)
        side = min(views.shape[-2:])
        window = side if crop is None else min(crop, side)
        square = views.shape[-1] == views.shape[-2]
        if window < side or (translate > 0 and square):
            size = tuple(max(1, round(n * window / tile)) for n, tile in zip(cfg.input_size, views.shape[-2:]))
            x = eval_transform(cfg, dtype, size)(random_crop(views, window, generator, pad=translate))
        else:
            x = eval_transform(cfg, dtype)(views)
        return cutout(x, erase, generator) if erase > 0 else x
    return apply
