"""Images from users: files decoded safely into 8-bit RGB (multispectral GeoTIFFs included), then tensors."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import MAX_PIXELS
from .errors import UserError

# The multispectral EuroSAT release: 13 Sentinel-2 bands in the order B01, B02, B03, B04, B05, B06, B07,
# B08, B08A, B09, B10, B11, B12. True colour is B04 (red), B03 (green), B02 (blue).
SENTINEL2_BANDS = 13
SENTINEL2_RGB = (3, 2, 1)
# EuroSAT's own map from L1C digital numbers (reflectance x 10000) to the grey levels of its RGB release:
# `gdal_translate -scale 0 2750 1 255`, the same for every tile. See `reflectance_to_rgb` for the evidence.
EUROSAT_DN_WHITE = 2750.0
# The georeferencing tags a GeoTIFF scene keeps: ModelPixelScale, ModelTiepoint, ModelTransformation and
# the GeoKey directory with its double and ASCII parameters.
GEO_TAGS = (33550, 33922, 34264, 34735, 34736, 34737)

_ORIENTATION = 274  # the EXIF and TIFF tag of a picture's stored rotation
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_FORMATS = "PNG, JPEG, WebP, GIF, BMP or TIFF"


class ImageError(UserError, ValueError):
    """An input that cannot be used as an image; the message tells the user what to upload instead."""


def open_image(path: str | os.PathLike | None, *, max_pixels: int = MAX_PIXELS,
               reduce_to: tuple[int, int] | None = None) -> Image.Image:
    """Decode a user's file into an 8-bit RGB image, or raise ImageError with a message for the user.

    The size is read from the header and checked before any pixel is decoded. The first frame of
    animations is used and EXIF orientation is applied. A TIFF with more than 8 bits per band and
    several bands, or more than 4 bands, is read with tifffile: 13 bands are taken as Sentinel-2
    (B04, B03, B02 as RGB), 3 bands as RGB, each scaled as EuroSAT's RGB release (`reflectance_to_rgb`).

    `reduce_to`, a model's input size (H, W), asks for no more pixels than `to_tensor` keeps for it:
    a JPEG is decoded at the smallest DCT scale (1/2, 1/4 or 1/8) whose sides stay at least twice
    the larger input side, so a large photo never exists at full size in memory, and any image is then
    box-reduced on both axes alike (`shrink_keeping_shape`), keeping its shape for display. A scene
    needs every pixel, so it leaves this unset. The image's `info["source_size"]` is the (width,
    height) of the picture in the file, upright, whatever size was decoded.
    """
    if not path:
        raise ImageError("No image was given: upload a satellite tile (PNG or JPEG).")
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        raise ImageError("The uploaded file could not be read: upload it again.") from None
    if not head:
        raise ImageError("The file is empty (0 bytes): upload a PNG or JPEG image.")
    if head.startswith(_TIFF_MAGIC):
        multiband = _read_multiband_tiff(path, max_pixels)
        if multiband is not None:
            small = multiband if reduce_to is None else shrink_keeping_shape(multiband, reduce_to)
            return _with_source_size(small, multiband.size)
    return _read_with_pillow(path, head, max_pixels, reduce_to)


def open_georeferenced(path: str | os.PathLike | None, *,
                       max_pixels: int = MAX_PIXELS) -> tuple[Image.Image, dict[int, Any] | None]:
    """The full-size RGB image of a file (as `open_image`) and its GeoTIFF georeferencing tags.

    The tags are {tag code: value} for the codes in GEO_TAGS that the first page holds, or None when
    the file is not a TIFF, holds no pixel-to-map transform (a tiepoint with a pixel scale, or a
    transformation matrix), or is stored rotated (an EXIF orientation other than 1). Tags that cannot
    be read count as absent: the pixels are still usable.
    """
    image = open_image(path, max_pixels=max_pixels)
    return image, read_geotags(path)


def read_geotags(path: str | os.PathLike) -> dict[int, Any] | None:
    """The GEO_TAGS of a TIFF's first page, values as tuples of numbers (ASCII as str), or None (see above)."""
    import tifffile

    try:
        with open(path, "rb") as f:
            if not f.read(4).startswith(_TIFF_MAGIC):
                return None
        with tifffile.TiffFile(path) as tif:
            page_tags = tif.pages.first.tags
            # An EXIF rotation turns the decoded pixels, and the georeferencing would no longer match them.
            if page_tags.valueof(_ORIENTATION, 1) != 1:
                return None
            geo = {code: _tag_value(code, page_tags[code].value) for code in GEO_TAGS if code in page_tags}
    except Exception:  # damaged tags: tifffile and numpy raise many types
        return None
    tiepoints = geo.get(33922, ())
    located = (len(geo.get(33550, ())) == 3 and len(tiepoints) >= 6 and len(tiepoints) % 6 == 0) \
        or len(geo.get(34264, ())) == 16
    return geo if located else None


def _tag_value(code: int, value: Any) -> str | tuple:
    if code == 34737:
        if not isinstance(value, str):
            raise ValueError("GeoAsciiParams is not text")
        return value
    kind = np.int64 if code == 34735 else np.float64
    return tuple(np.asarray(value, dtype=kind).ravel().tolist())


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


def _read_multiband_tiff(path: str | os.PathLike, max_pixels: int) -> Image.Image | None:
    """The RGB view of a TIFF that Pillow cannot show faithfully, or None to let Pillow read it.

    Pillow reads 8-bit grey, RGB, RGBA and palette TIFFs (with their photometric and compression
    variants) and 16-bit grey, but not 13-band or 16-bit multi-band ones. Only the first page is read.
    """
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            # int(): damaged tags can hold several values, which tifffile passes on as tuples.
            shape, axes, dtype = tuple(int(n) for n in page.shape), str(page.axes), page.dtype
            compression = getattr(page.compression, "name", str(page.compression))
    except Exception:  # not a TIFF tifffile understands: Pillow tries it and words its own error
        return None
    if len(shape) == 2:
        return None
    if len(shape) != 3 or axes not in ("YXS", "SYX"):
        raise ImageError(f"This TIFF holds a {'x'.join(map(str, shape))} ({axes}) array, not one image: "
                         "upload a single RGB tile or a 13-band Sentinel-2 GeoTIFF.")
    bands = shape[axes.index("S")]
    height, width = (shape[0], shape[1]) if axes == "YXS" else (shape[1], shape[2])
    if height < 1 or width < 1:
        raise ImageError(f"The TIFF is {width}x{height} pixels: it has no pixels to classify.")
    if bands <= 4 and dtype == np.uint8:
        return None
    if dtype is None or dtype.kind not in "uif":
        raise ImageError("This TIFF's samples are not integers or real numbers: upload an RGB image instead.")
    if bands not in (3, SENTINEL2_BANDS):
        raise ImageError(
            f"This TIFF has {bands} bands of {dtype.name}; the model needs RGB. Upload a PNG or JPEG, a 3-band "
            f"RGB TIFF, or a 13-band Sentinel-2 GeoTIFF from EuroSAT's multispectral release (B01 to B12 "
            f"with B08A, in that order).")
    if height * width > max_pixels or height * width * bands * dtype.itemsize > 4 * max_pixels:
        raise ImageError(f"The TIFF is {width}x{height} pixels with {bands} bands of {dtype.name}, too large "
                         "to decode safely: a EuroSAT tile is 64x64, so crop it first.")
    try:
        with tifffile.TiffFile(path) as tif:
            data = tif.pages.first.asarray(maxworkers=1)
        if data.shape != shape:
            raise ValueError(f"decoded {data.shape}, header says {shape}")
    except Exception:
        raise ImageError(f"This TIFF could not be decoded ({compression} compression): it is damaged or uses "
                         "a compression this app cannot read. Save it uncompressed or with Deflate.") from None
    cube = np.moveaxis(data, -1, 0) if axes == "YXS" else data
    picked = cube[list(SENTINEL2_RGB)] if bands == SENTINEL2_BANDS else cube
    if dtype.kind == "f" and picked[np.isfinite(picked)].max(initial=0.0) <= 2.0:
        picked = picked * 10000.0  # reflectance stored as a fraction, not as digital numbers
    return Image.fromarray(np.ascontiguousarray(np.moveaxis(reflectance_to_rgb(picked), 0, -1)))


def reflectance_to_rgb(bands: np.ndarray) -> np.ndarray:
    """Sentinel-2 L1C digital numbers (C, H, W) of any numeric type -> uint8, as EuroSAT's RGB release made them.

    One fixed linear map for every image, so a dark, even forest stays dark and a lake stays a lake:
    grey = round(1 + 254 * DN / 2750), clipped to 1..255; DN <= 0 (Sentinel-2's no-data) and
    non-finite samples become 0, the black of no-data elsewhere in this module.

    Where the constant comes from: the EuroSAT paper does not give it. The maintainer's description,
    relayed in jensleitloff/CNN-Sentinel issue #1 (2019), is to clip the digital numbers from 0..2750
    to 1..255, leaving 0 for no-data: `gdal_translate -ot Byte -a_nodata 0 -scale 0 2750 1 255
    -b 4 -b 3 -b 2`; in phelber/EuroSAT issue #6 (2023) the maintainer answered that the README now
    documents it. It was checked against the data, as no multispectral tiles are at hand:
    applied to the per-band means of the multispectral release (torchgeo's EuroSATDataModule: B04
    947.6, B03 1042.9, B02 1118.2), it predicts RGB channel means of 88.5, 97.3 and 104.3; the 27,000
    JPEGs of the RGB release measure 87.8, 97.0 and 104.0, slightly lower as expected where the map
    clips digital numbers above 2750. The gains implied by the means lie within 1% of 254/2750.
    Remaining uncertainty: GDAL's rounding (half a grey level), the JPEG coding of the release (about
    one level), and L1C products of processing baseline 04.00 and later (from 2022), whose digital
    numbers carry a +1000 offset that must be subtracted before this map applies.
    """
    values = bands.astype(np.float64)
    valid = np.isfinite(values) & (values > 0)
    grey = np.clip(np.round(1.0 + values * (254.0 / EUROSAT_DN_WHITE)), 1, 255)
    return np.where(valid, grey, 0).astype(np.uint8)


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
