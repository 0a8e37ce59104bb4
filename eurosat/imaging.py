"""Images from users: files decoded safely into 8-bit RGB (rasters of digital numbers by rasterio), then tensors."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import MAX_PIXELS
from .errors import UserError
from .radiometry import AUTO, check_choice
from .raster import is_raster, probe, read_image

_ORIENTATION = 274  # the EXIF and TIFF tag of a picture's stored rotation
_FORMATS = "PNG, JPEG, WebP, GIF, BMP or TIFF"


class ImageError(UserError, ValueError):
    """An input that cannot be used as an image; the message tells the user what to upload instead."""


def open_image(path: str | os.PathLike | None, *, max_pixels: int = MAX_PIXELS,
               reduce_to: tuple[int, int] | None = None, radiometry: Any = AUTO) -> Image.Image:
    """Decode a user's file into an 8-bit RGB image, or raise ImageError with a message for the user.

    The size is read from the header and checked before any pixel is decoded. The first frame of
    animations is used and EXIF orientation is applied. A TIFF with several bands of more than 8 bits,
    or more than 4 bands, and any JPEG 2000 file are read with rasterio (`raster.read_image`): 13 bands
    are taken as Sentinel-2 (B04, B03, B02), 3 bands as RGB, and their values become true colour by
    `radiometry` (`radiometry.decide`); how they were read is in `info["reading"]`.

    `reduce_to`, a model's input size (H, W), asks for no more pixels than `to_tensor` keeps for it:
    a JPEG is decoded at the smallest DCT scale (1/2, 1/4 or 1/8) whose sides stay at least twice
    the larger input side, so a large photo never exists at full size in memory, and any image is then
    box-reduced on both axes alike (`shrink_keeping_shape`), keeping its shape for display. A scene
    needs every pixel, so it leaves this unset. The image's `info["source_size"]` is the (width,
    height) of the picture in the file, upright, whatever size was decoded.
    """
    if not path:
        raise ImageError("No image was given: upload a satellite tile (PNG or JPEG).")
    choice = check_choice(radiometry)
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        raise ImageError("The uploaded file could not be read: upload it again.") from None
    if not head:
        raise ImageError("The file is empty (0 bytes): upload a PNG or JPEG image.")
    if is_raster(head):
        found = probe(path)
        # Pillow reads 8-bit grey, RGB, RGBA and palette TIFFs (with their photometric and compression variants)
        # and 16-bit grey faithfully; it cannot show 13-band or 16-bit multi-band ones, nor JPEG 2000 here.
        if found is not None and (found.kind != "TIFF" or not (found.count == 1 or (found.dtype == "uint8"
                                                                                  and found.count <= 4))):
            try:
                rgb, reading = read_image(path, choice, max_pixels=max_pixels)
            except UserError as e:  # the raster's own words, as the one error type of this module
                raise ImageError(str(e)) from None
            image = Image.fromarray(rgb)
            small = image if reduce_to is None else shrink_keeping_shape(image, reduce_to)
            small.info["reading"] = reading
            return _with_source_size(small, image.size)
    if choice not in (AUTO, "8bit"):
        raise ImageError("This image is read as 8-bit true colour: the radiometry choices other than auto and "
                              "8-bit apply to GeoTIFF and JPEG 2000 rasters of digital numbers or reflectance.")
    return _read_with_pillow(path, head, max_pixels, reduce_to)


def _read_with_pillow(path: str | os.PathLike, head: bytes, max_pixels: int,
                      reduce_to: tuple[int, int] | None) -> Image.Image:
    # Never above Pillow's own threshold: its DecompressionBombWarning then cannot fire for an image we go
    # on to decode, and its DecompressionBombError (at twice the threshold) is raised by Image.open itself.
    limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
    try:
        source = Image.open(path)
    except Image.DecompressionBombError:
        raise ImageError(f"The image has more than {limit:,} pixels, too large to decode safely: "
                         "a EuroSAT tile is 64x64, so crop or downscale it first.") from None
    except UnidentifiedImageError:
        raise ImageError(_unreadable_message(head)) from None
    except Exception as e:  # a header that parses but is invalid: decoders raise many exception types
        raise ImageError(f"The image file is damaged and could not be read ({_reason(e)}).") from None
    with source:
        width, height = source.size
        if width * height > limit:
            raise ImageError(f"The image is {width}x{height} pixels, over the limit of {limit:,}: "
                             "a EuroSAT tile is 64x64, so crop or downscale it first.")
        if width < 1 or height < 1:
            raise ImageError(f"The image is {width}x{height} pixels: it has no pixels to classify.")
        try:
            source.seek(0)
            if reduce_to is not None:
                side = 2 * max(reduce_to)  # the larger side: EXIF may still swap width and height
                source.draft(None, (side, side))  # only JPEG decodes at a reduced scale; others ignore it
            # Orientations 5 to 8 turn the picture a quarter, so its upright width is the stored height.
            upright = (height, width) if source.getexif().get(_ORIENTATION, 1) in (5, 6, 7, 8) else (width, height)
            rgb = to_rgb(ImageOps.exif_transpose(source))  # exif_transpose returns a decoded copy
            return _with_source_size(rgb if reduce_to is None else shrink_keeping_shape(rgb, reduce_to), upright)
        except Exception as e:  # truncated or corrupt pixel data; the file is closed on the way out
            raise ImageError(f"The image file is damaged or truncated and could not be decoded ({_reason(e)}).") \
                from None


# Files people upload by mistake, named so the message says what the file is.
_NOT_IMAGES = {b"%PDF": "a PDF document", b"PK\x03\x04": "a ZIP archive (or an Office document)"}
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1")


def _unreadable_message(head: bytes) -> str:
    kind = next((name for magic, name in _NOT_IMAGES.items() if head.startswith(magic)), None)
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        kind = "a HEIC/HEIF photo (the iPhone's format)"
    if kind:
        return f"This file is {kind}, not an image this app can read: upload a {_FORMATS} image."
    text = head.decode("utf-8", errors="replace")
    # A multi-byte character cut at the end of `head` decodes as one replacement character.
    if b"\x00" not in head and text.count("\ufffd") <= 1 and all(c.isprintable() or c.isspace() or c == "\ufffd"
                                                                 for c in text):
        return f"This file holds text, not an image, whatever its name says: upload a {_FORMATS} image."
    return f"This file is not in an image format that can be read: upload a {_FORMATS} image."


def _reason(error: Exception) -> str:
    first_line = str(error).splitlines()[0] if str(error) else ""
    return first_line[:200] or type(error).__name__


_SIXTEEN_BIT = {"I;16", "I;16B", "I;16L", "I;16N", "I"}
_WITH_ALPHA = {"RGBA", "LA", "PA"}
_PREMULTIPLIED = {"RGBa", "La"}


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB with the meaning of its pixels kept.

    - 16/32-bit integer images are scaled (65535 -> 255); Pillow's own convert clips them to white.
    - float images are read as 0..1 when they fit, else as 0..255; NaN and infinities become 0.
    - transparent pixels become black: Sentinel-2 marks no-data with 0, so that is what a tile's
      empty area looks like to the model in training. Premultiplied colours already are that.
    """
    mode = image.mode
    if mode in _SIXTEEN_BIT:
        values = np.asarray(image, dtype=np.float64)
        return _gray_to_rgb(np.clip(values, 0, 65535) / 257.0)
    if mode == "F":
        with np.errstate(invalid="ignore"):  # corrupt data can hold signalling NaNs, which warn when cast
            values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        scale = 255.0 if values.size and values.max() <= 1.0 else 1.0
        return _gray_to_rgb(np.clip(values * scale, 0, 255))
    if mode in _PREMULTIPLIED:
        colour = np.asarray(image)[..., :-1]
        return _gray_to_rgb(colour[..., 0]) if mode == "La" else Image.fromarray(np.ascontiguousarray(colour))
    if mode in _WITH_ALPHA or "transparency" in image.info:
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return image if mode == "RGB" else image.convert("RGB")


def _gray_to_rgb(values: np.ndarray) -> Image.Image:
    return Image.fromarray(np.round(values).astype(np.uint8)).convert("RGB")


def _with_source_size(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    image.info["source_size"] = size
    return image


def shrink_keeping_shape(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """The image shrunk by one integer box filter on both axes while both stay at least twice `size` (H, W).

    What a single tile needs of a large upload: its aspect ratio is kept, for the picture the heatmap
    is drawn over; `shrink_per_axis` then squashes it for the model.
    """
    factor = max(1, min(image.width // (2 * size[1]), image.height // (2 * size[0])))
    return image.reduce(factor) if factor > 1 else image


def shrink_per_axis(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Shrink each axis by an integer box filter while it stays at least twice `size` (H, W).

    A 4000x3000 photo would otherwise become a 144 MB float tensor just to be resized to 224 px;
    the box filter is exact averaging, and the final antialiased resize happens in the transform.
    The axes are reduced separately because the transform squashes the whole image to `size`
    anyway, and so that a long thin strip cannot stay huge along one axis.
    """
    factors = (max(1, image.width // (2 * size[1])), max(1, image.height // (2 * size[0])))
    return image.reduce(factors) if factors != (1, 1) else image


def to_tensor(image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """An RGB uint8 tensor (3, H, W) of a PIL image of any mode, ready for `transforms.eval_transform`."""
    rgb = np.array(shrink_per_axis(to_rgb(image), size), dtype=np.uint8)
    return torch.from_numpy(rgb).permute(2, 0, 1)
