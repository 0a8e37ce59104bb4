"""Images from users: any PIL mode to 8-bit RGB, and oversized images shrunk before they become tensors."""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 40_000_000


class ImageError(ValueError):
    """An input that cannot be used as an image; the message tells the user what to upload instead."""


def open_image(path: str | os.PathLike | None, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode a user's file: size checked before pixels are decoded, first frame, EXIF orientation applied."""
    if not path:
        raise ImageError("No image was given: upload a satellite tile (PNG or JPEG).")
    if os.path.getsize(path) == 0:
        raise ImageError("The file is empty (0 bytes): upload a PNG or JPEG image.")
    try:
        image = Image.open(path)
    except UnidentifiedImageError:
        raise ImageError("This file is not an image that can be read: upload a PNG, JPEG, TIFF, GIF or WebP.") from None
    except Image.DecompressionBombError:
        raise ImageError(f"The image is too large to decode safely (limit {max_pixels:,} pixels).") from None
    if image.width * image.height > max_pixels:
        raise ImageError(
            f"The image is {image.width}x{image.height} pixels, over the limit of {max_pixels:,}: "
            "a EuroSAT tile is 64x64, so crop or downscale it first.")
    try:
        image.seek(0)
        image = ImageOps.exif_transpose(image)
        image.load()
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"The image file is damaged or truncated and could not be decoded ({e}).") from None
    return image

_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
_WITH_ALPHA = {"RGBA", "LA", "PA", "RGBa", "La"}


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB with the meaning of its pixels kept.

    - 16/32-bit integer images are scaled (65535 -> 255); Pillow's own convert clips them to white.
    - float images are read as 0..1 when they fit, else as 0..255.
    - transparent pixels become black: Sentinel-2 marks no-data with 0, so that is what a tile's
      empty area looks like to the model in training.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT:
        values = np.asarray(image, dtype=np.float64)
        return _gray_to_rgb(np.clip(values, 0, 65535) / 257.0)
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
        return _gray_to_rgb(np.clip(values * scale, 0, 255))
    if mode == "P" and "transparency" in image.info or mode in _WITH_ALPHA:
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return image.convert("RGB")


def _gray_to_rgb(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.round(values).astype(np.uint8), mode="L").convert("RGB")


def shrink(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Shrink by an integer box filter while the image stays at least twice `size` (H, W).

    A 4000x3000 photo would otherwise become a 144 MB float tensor just to be resized to 224 px;
    the box filter is exact averaging, and the final antialiased resize happens in the transform.
    """
    factor = min(image.width // (2 * size[1]), image.height // (2 * size[0]))
    return image.reduce(factor) if factor >= 2 else image


def to_tensor(image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """An RGB uint8 tensor (3, H, W) of a PIL image of any mode, ready for `transforms.eval_transform`."""
    rgb = np.asarray(shrink(to_rgb(image), size), dtype=np.uint8)
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1)
