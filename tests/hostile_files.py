"""Hostile and awkward uploads, generated in memory from a real EuroSAT tile so nothing binary lives in the repo."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
OVER_UPLOAD_LIMIT = 12 * 1024 * 1024  # above the app's 10 MB cap however "mb" is counted
BOMB_SIDE = 20_000


@lru_cache(maxsize=None)
def tile() -> Image.Image:
    """A real 64x64 EuroSAT RGB tile (River, from the test split) that the cases below are made from."""
    return example("River")


def encode(image: Image.Image, format: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **params)
    return buffer.getvalue()


def text_named_jpg() -> bytes:
    return b"Hello! This is a note about my field trip, saved with the wrong extension.\n" * 20


def truncated_jpeg() -> bytes:
    data = encode(tile().resize((256, 256)), "JPEG", quality=95)
    return data[: len(data) // 2]


def one_pixel() -> Image.Image:
    return Image.new("RGB", (1, 1), (40, 90, 160))


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


@lru_cache(maxsize=None)
def bomb_png(side: int = BOMB_SIDE) -> bytes:
    """A valid side x side 8-bit grey PNG of zeros: about 400 KB on disk, 400 MB once decoded.

    Built row by row through a streaming compressor, so making it never holds the decoded image.
    """
    compressor = zlib.compressobj(9)
    row = bytes(side + 1)  # filter byte 0, then `side` zero pixels
    idat = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def gray16() -> np.ndarray:
    """Full-range 16-bit luminance of the tile, with distinct low bytes so 8-bit truncation would show."""
    gray = np.asarray(tile().convert("L"), dtype=np.uint32)
    return np.minimum(gray * 257 + np.arange(gray.size).reshape(gray.shape) % 200, 65535).astype(np.uint16)


def gray16_png() -> bytes:
    return encode(Image.fromarray(gray16()), "PNG")


def cmyk_jpeg() -> bytes:
    return encode(tile().convert("CMYK"), "JPEG", quality=95)


def palette_with_transparency() -> tuple[Image.Image, np.ndarray]:
    """A palette image of the tile in which palette entry 0 is transparent, and the mask of those pixels."""
    palette = tile().quantize(colors=16)
    indices = np.asarray(palette).copy()
    indices[:16, :16] = 0  # a transparent corner, whatever the quantiser put there
    image = Image.fromarray(indices, mode="P")
    image.putpalette(palette.getpalette())
    image.info["transparency"] = 0
    return image, indices == 0


def palette_png() -> bytes:
    image, _ = palette_with_transparency()
    return encode(image, "PNG", transparency=0)


def gif_frames() -> tuple[Image.Image, Image.Image]:
    """Two frames with few colours (so GIF stores them exactly) and opposite layouts."""
    first = np.zeros((64, 64, 3), np.uint8)
    first[:32, :, 0] = 255          # red top half
    first[32:, :, 2] = 255          # blue bottom half
    second = np.full((64, 64, 3), 255, np.uint8)
    second[:, :32] = (0, 200, 0)    # green left half, white right half
    return Image.fromarray(first), Image.fromarray(second)


def animated_gif() -> bytes:
    first, second = gif_frames()
    return encode(first, "GIF", save_all=True, append_images=[second], duration=200, loop=0)


def upright_marker() -> Image.Image:
    """A dark 48x32 (W x H) image with a bright 8x8 block in its top-left corner: its orientation is visible."""
    pixels = np.full((32, 48, 3), 30, np.uint8)
    pixels[:8, :8] = 250
    return Image.fromarray(pixels)


def exif_rotated_jpeg(orientation: int) -> bytes:
    """The upright marker stored rotated, with the EXIF orientation (6 or 8) that tells viewers to undo it."""
    stored = upright_marker().transpose({6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(stored, "JPEG", quality=95, exif=exif.tobytes())


def oversized_png(size: int = OVER_UPLOAD_LIMIT) -> bytes:
    """A valid PNG of incompressible noise larger than `size` bytes: only its size is wrong."""
    side = int((size / 3) ** 0.5) + 16
    noise = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), "PNG", compress_level=0)
    assert len(data) > size
    return data


def example(name: str) -> Image.Image:
    """The real EuroSAT tile examples/<name>.jpg (one per class), as RGB."""
    with Image.open(EXAMPLES / f"{name}.jpg") as im:
        return im.convert("RGB")


# EuroSAT's RGB release maps L1C digital numbers to grey levels with `gdal_translate -scale 0 2750 1 255`.
DN_WHITE, GREY_SPAN = 2750, 254


def digital_numbers(rgb: np.ndarray) -> np.ndarray:
    """The inverse of that scaling: the digital numbers whose EuroSAT RGB is `rgb`. Grey 0 becomes no-data 0;
    every other grey level a valid number, at least 1, as in a real product."""
    dn = np.maximum(np.round((rgb.astype(np.float64) - 1) * DN_WHITE / GREY_SPAN), 1)
    return np.where(rgb > 0, dn, 0)


def sentinel2_cube(rgb: np.ndarray | None = None, *, cloud: bool = True, seed: int = 0) -> np.ndarray:
    """A realistic (13, H, W) uint16 Sentinel-2 L1C cube in EuroSAT MS band order whose true colour is `rgb`.

    Reflectance x 10000 as in the release: B04, B03 and B02 are the digital numbers of the red, green
    and blue of `rgb` (H, W, 3; default the River tile), the other bands are smooth plausible levels,
    and with `cloud` a 4x4 corner is saturated cloud in every band.
    """
    rng = np.random.default_rng(seed)
    rgb = np.asarray(tile()) if rgb is None else rgb
    height, width = rgb.shape[:2]
    base = [1300, 0, 0, 0, 1500, 2100, 2400, 2600, 2800, 900, 20, 1900, 1200]  # B01 .. B12
    cube = np.empty((13, height, width))
    for band, level in enumerate(base):
        cube[band] = level + rng.normal(0, 25, (height, width))
    for band, channel in zip((3, 2, 1), range(3)):  # B04 red, B03 green, B02 blue
        cube[band] = digital_numbers(rgb[..., channel])
    if cloud:
        cube[:, -4:, -4:] = 9000
    return np.clip(np.round(cube), 0, 65535).astype(np.uint16)


def tiff(cube: np.ndarray, *, crs: str | None = None, transform=None, interleave: str = "pixel",
         compress: str | None = None, nodata: float | None = None, tags: dict | None = None,
         descriptions: list[str] | None = None) -> bytes:
    """A one-page (Geo)TIFF of a (C, H, W) cube written by rasterio: georeferenced when `crs` and `transform`
    are given, 3-band uint8 as RGB."""
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.io import MemoryFile

    count, height, width = cube.shape
    profile = dict(driver="GTiff", width=width, height=height, count=count, dtype=cube.dtype.name,
                   interleave=interleave, **({"crs": crs, "transform": transform} if crs else {}),
                   **({"compress": compress} if compress else {}), **({"nodata": nodata} if nodata is not None else {}),
                   **({"photometric": "RGB"} if count == 3 and cube.dtype == np.uint8 else {}))
    with warnings.catch_warnings(), rasterio.Env(GDAL_PAM_ENABLED="NO"), MemoryFile() as memory:
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with memory.open(**profile) as dataset:
            dataset.write(cube)
            if tags:
                dataset.update_tags(**tags)
            for band, name in enumerate(descriptions or [], start=1):
                dataset.set_band_description(band, name)
        return memory.read()


def sentinel2_tiff(layout: str = "interleaved", compression: str | None = None,
                   cube: np.ndarray | None = None) -> bytes:
    """A cube (default `sentinel2_cube()`) as a one-page TIFF, pixel-interleaved like the release, or planar."""
    cube = sentinel2_cube() if cube is None else cube
    return tiff(cube, interleave="pixel" if layout == "interleaved" else "band", compress=compression)


UTM32N = "EPSG:32632"
ORIGIN = (500000.0, 5700000.0)  # a corner in UTM zone 32N, in Germany


def geotiff(pixels: np.ndarray, *, scale: tuple[float, float] = (10.0, 10.0),
            origin: tuple[float, float] = ORIGIN, crs: str = UTM32N, **options) -> bytes:
    """A GeoTIFF of `pixels` ((H, W, 3) uint8 RGB, or a (C, H, W) cube) with its top-left corner at `origin` and
    pixels of `scale` CRS units."""
    from rasterio.transform import from_origin

    cube = np.moveaxis(pixels, -1, 0) if pixels.ndim == 3 and pixels.shape[-1] == 3 else pixels
    return tiff(np.ascontiguousarray(cube), crs=crs, transform=from_origin(*origin, *scale), **options)


def multiband_tiff(bands: int, dtype=np.uint16) -> bytes:
    rng = np.random.default_rng(bands)
    return tiff(rng.integers(100, 4000, (bands, 32, 32)).astype(dtype))


@dataclass(frozen=True)
class Case:
    """One upload of the issue's list: its file name, how to make its bytes, and what the user must see.

    `error` is a phrase the message must contain; None means the upload must be classified.
    """

    name: str
    filename: str
    make: Callable[[], bytes]
    error: str | None = None


# Every bad image of the issue that reaches the handlers (the over-the-limit upload is refused before them).
CASES = [
    Case("text bytes named .jpg", "holiday.jpg", text_named_jpg, "holds text, not an image"),
    Case("zero-byte file", "empty.png", lambda: b"", "empty (0 bytes)"),
    Case("truncated JPEG", "truncated.jpg", truncated_jpeg, "damaged or truncated"),
    Case("1x1 image", "pixel.png", lambda: encode(one_pixel(), "PNG")),
    Case("20000x20000 PNG (decompression bomb)", "bomb.png", bomb_png, "too large to decode safely"),
    Case("16-bit grayscale PNG", "gray16.png", gray16_png),
    Case("CMYK JPEG", "cmyk.jpg", cmyk_jpeg),
    Case("palette PNG with transparency", "palette.png", palette_png),
    Case("animated GIF", "animated.gif", animated_gif),
    Case("JPEG with EXIF rotation (6)", "rotated.jpg", lambda: exif_rotated_jpeg(6)),
    Case("13-band Sentinel-2 GeoTIFF", "EuroSAT_MS_River.tif", sentinel2_tiff),
]


def write(case: Case, folder: Path) -> Path:
    path = folder / case.filename
    path.write_bytes(case.make())
    return path
