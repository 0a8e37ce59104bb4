"""Rasters through rasterio: opened with a few drivers only, read by windows, their scale and areas, COG outputs."""

from __future__ import annotations

import copy
import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from .errors import UserError
from .fileio import atomic_write
from .radiometry import Reading, decide, to_rgb8

# What a user uploads as a raster: GeoTIFFs (COGs included) and JPEG 2000 files, each opened by its own driver,
# chosen from its first bytes. No other GDAL driver is tried, so a VRT or an HDF file that names other files on
# the server is never opened.
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_JP2_MAGIC = (b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")
# No directory listing next to the file (uploads sit alone), no .aux.xml sidecars read or written, and a block
# cache of 64 MB: strips are read once, top to bottom, and GDAL's default (5% of the machine's memory) would
# otherwise grow with a granule.
GDAL_OPTIONS = dict(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR", GDAL_PAM_ENABLED="NO", GDAL_NUM_THREADS="1",
                    GDAL_CACHEMAX=64)
SENTINEL2_BANDS = 13
SENTINEL2_RGB = (4, 3, 2)  # B04, B03, B02 of EuroSAT's multispectral order (rasterio counts from 1)
# The auto radiometry looks at up to 8 x 8 windows of 64 x 64 pixels spread over the raster: a decimated read
# of a compressed, tiled GeoTIFF decodes each tile again for every sampled row (gigabytes for a granule).
SAMPLE_WINDOWS, SAMPLE_SIDE = 8, 64
_NAMES = {"TIFF": "TIFF", "GTiff": "TIFF", "JP2OpenJPEG": "JPEG 2000 file"}
_BAND_NAMES = (("B04", "B03", "B02"), ("B4", "B3", "B2"), ("RED", "GREEN", "BLUE"))


class RasterError(UserError, ValueError):
    """A raster that cannot be read or mapped; the message says why and what to upload instead."""


def is_raster(head: bytes) -> bool:
    """Whether a file's first bytes are those of a TIFF or a JPEG 2000 file."""
    return driver_of(head) is not None


def driver_of(head: bytes) -> str | None:
    """The one GDAL driver that may open a file with these first bytes, or None."""
    return "GTiff" if head.startswith(_TIFF_MAGIC) else "JP2OpenJPEG" if head.startswith(_JP2_MAGIC) else None


def _open(path: str | Path) -> Any:
    import rasterio

    with open(path, "rb") as f:
        driver = driver_of(f.read(16))
    if driver is None:
        raise OSError("not a TIFF or JPEG 2000 file")
    return rasterio.open(path, driver=driver)


@dataclass(frozen=True)
class Georef:
    """Where a raster's pixels lie: its CRS (rasterio's) and the affine transform of pixel to map coordinates."""

    crs: Any
    transform: Any

    def scaled(self, fx: float, fy: float) -> Georef:
        """The georeferencing of a grid whose pixel spans fx x fy of these pixels, from the same corner."""
        from rasterio.transform import Affine

        return Georef(self.crs, self.transform @ Affine.scale(fx, fy))

    def _geod(self):
        import pyproj

        return pyproj.CRS.from_user_input(self.crs.to_wkt()).get_geod()

    def metres_per_pixel(self, width: int, height: int) -> tuple[float, float]:
        """Ground size of a pixel along x and y: from the transform, or geodesic at the centre for degrees."""
        t = self.transform
        if not self.crs.is_geographic:
            factor = self.crs.linear_units_factor[1]
            return math.hypot(t.a, t.d) * factor, math.hypot(t.b, t.e) * factor
        geod = self._geod()
        (x0, y0), (x1, y1), (x2, y2) = (t @ (width / 2, height / 2), t @ (width / 2 + 1, height / 2),
                                        t @ (width / 2, height / 2 + 1))
        return geod.inv(x0, y0, x1, y1)[2], geod.inv(x0, y0, x2, y2)[2]

    def area_m2(self, col: float, row: float, width: float, height: float) -> float:
        """Ground area of a rectangle of pixels: from the transform, or geodesic on the CRS's ellipsoid for degrees."""
        t = self.transform
        if not self.crs.is_geographic:
            return abs(t.determinant) * self.crs.linear_units_factor[1] ** 2 * width * height
        corners = [t @ xy for xy in ((col, row), (col + width, row), (col + width, row + height), (col, row + height))]
        area, _ = self._geod().polygon_area_perimeter([x for x, _ in corners], [y for _, y in corners])
        return abs(area)

    def describe(self) -> str:
        epsg = self.crs.to_epsg()
        return f"EPSG:{epsg}" if epsg else (self.crs.to_string()[:60] or "a custom CRS")


@dataclass(frozen=True)
class Probe:
    """What a raster's header says: its kind, size, bands, their type, and its georeferencing (None without)."""

    kind: str
    width: int
    height: int
    count: int
    dtype: str
    georef: Georef | None


def _georef(dataset: Any) -> Georef | None:
    crs = dataset.crs
    located = crs is not None and not dataset.transform.is_identity and (crs.is_geographic or crs.is_projected)
    return Georef(crs, dataset.transform) if located else None


def probe(path: str | Path) -> Probe | None:
    """The header of a TIFF or JPEG 2000 file, or None for any other file and one GDAL cannot open (Pillow then
    tries, and words its own error)."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with rasterio.Env(**GDAL_OPTIONS), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            with _open(path) as dataset:
                return Probe(_NAMES.get(dataset.driver, dataset.driver), dataset.width, dataset.height,
                             dataset.count, dataset.dtypes[0], _georef(dataset))
        except Exception:  # anything GDAL cannot parse, whatever it raises
            return None


class Raster:
    """An open raster, read as true colour: its chosen bands, the radiometry decided for it, its georeferencing."""

    def __init__(self, dataset: Any, radiometry: Any = "auto"):
        self.dataset = dataset
        self.width, self.height = dataset.width, dataset.height
        self.kind = _NAMES.get(dataset.driver, dataset.driver)
        self.bands, self.alpha = _rgb_bands(dataset, self.kind)
        nodata = dataset.nodatavals[self.bands[0] - 1]
        self.nodata = None if nodata is None or (isinstance(nodata, float) and math.isnan(nodata)) else nodata
        tags: dict[str, str] = dict(dataset.tags())
        for band in self.bands:
            tags.update(dataset.tags(band))
        self.reading: Reading = decide(radiometry, np.dtype(dataset.dtypes[self.bands[0] - 1]), self._sample(), tags)
        self.georef = _georef(dataset)
        self.col_off = self.row_off = 0

    def crop(self, col: int, row: int, width: int, height: int) -> Raster:
        """The same raster, read and georeferenced as its window of `width` x `height` pixels from (col, row)."""
        from rasterio.transform import Affine

        cropped = copy.copy(self)
        cropped.col_off, cropped.row_off = self.col_off + col, self.row_off + row
        cropped.width, cropped.height = width, height
        if self.georef is not None:
            cropped.georef = Georef(self.georef.crs, self.georef.transform @ Affine.translation(col, row))
        return cropped

    def _sample(self) -> np.ndarray:
        """(bands, values) from windows spread evenly over the raster, the whole of a small one."""
        from rasterio.windows import Window

        def spans(length: int) -> list[tuple[int, int]]:  # (start, size) along one axis
            if length <= SAMPLE_WINDOWS * SAMPLE_SIDE:
                return [(0, length)]
            step = (length - SAMPLE_SIDE) / (SAMPLE_WINDOWS - 1)
            return [(round(i * step), SAMPLE_SIDE) for i in range(SAMPLE_WINDOWS)]

        windows = [Window(col, row, width, height)
                   for row, height in spans(self.height) for col, width in spans(self.width)]
        return np.concatenate([self._decoded(lambda w=w: self.dataset.read(list(self.bands), window=w))
                               .reshape(len(self.bands), -1) for w in windows], axis=1)

    def read(self, top: int, bottom: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows [top, bottom) at full width: (h, W, 3) uint8 true colour and the (h, W) mask of valid pixels."""
        from rasterio.windows import Window

        window = Window(self.col_off, self.row_off + top, self.width, bottom - top)
        values = self._decoded(lambda: self.dataset.read(list(self.bands), window=window))
        rgb, valid = to_rgb8(values, self.reading, self.nodata)
        if self.alpha is not None:
            valid &= self._decoded(lambda: self.dataset.read(self.alpha, window=window)) > 0
            rgb[~valid] = 0
        return rgb, valid

    def _decoded(self, read) -> np.ndarray:
        try:
            return read()
        except Exception:  # GDAL reports damaged blocks and unknown codecs as several error types
            raise RasterError(f"This {self.kind} could not be decoded: it is damaged or uses a compression this "
                              "app cannot read. Save it uncompressed or with Deflate.") from None


def _rgb_bands(dataset: Any, kind: str) -> tuple[tuple[int, int, int], int | None]:
    """The band indexes of red, green and blue (by their names when the file names them), and of an alpha band."""
    from rasterio.enums import ColorInterp

    count, dtype = dataset.count, dataset.dtypes[0]
    names = [str(d or "").upper() for d in dataset.descriptions]
    for wanted in _BAND_NAMES:
        if all(name in names for name in wanted):
            return tuple(names.index(name) + 1 for name in wanted), None
    if count == SENTINEL2_BANDS:
        return SENTINEL2_RGB, None
    if count == 3:
        return (1, 2, 3), None
    if count == 4 and dataset.colorinterp[3] == ColorInterp.alpha:
        return (1, 2, 3), 4
    raise RasterError(
        f"This {kind} has {count} band{'s' if count != 1 else ''} of {dtype}; the model needs RGB. Upload a PNG or "
        f"JPEG, a 3-band RGB {kind} (red, green, blue), one whose bands are named B04, B03 and B02, or a 13-band "
        f"Sentinel-2 GeoTIFF from EuroSAT's multispectral release (B01 to B12 with B08A, in that order).")


@contextmanager
def open_raster(path: str | Path, radiometry: Any = "auto", *, max_pixels: int | None = None) -> Iterator[Raster]:
    """A Raster of a TIFF or JPEG 2000 file, closed afterwards; RasterError when it cannot be used.

    `max_pixels` refuses a larger raster from its header, before any pixel is decoded.
    """
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with rasterio.Env(**GDAL_OPTIONS), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            dataset = _open(path)
        except Exception:  # GDAL's refusals, and a file that is not a raster at all
            raise RasterError("This file could not be opened as a GeoTIFF or JPEG 2000 raster: it is damaged, or "
                              "not a raster. Upload a GeoTIFF, a PNG or a JPEG.") from None
        with dataset:
            kind = _NAMES.get(dataset.driver, dataset.driver)
            if dataset.width < 1 or dataset.height < 1 or dataset.count < 1:
                raise RasterError(f"The {kind} is {dataset.width}x{dataset.height} pixels: it has no pixels to "
                                  "classify.")
            if max_pixels is not None and dataset.width * dataset.height > max_pixels:
                raise RasterError(f"The {kind} is {dataset.width}x{dataset.height} pixels, over the limit of "
                                  f"{max_pixels:,}: crop it first, or map it whole with `python -m eurosat.map "
                                  "INPUT.tif OUTPUT.tif`.")
            yield Raster(dataset, radiometry)


def read_image(path: str | Path, radiometry: Any = "auto", *, max_pixels: int) -> tuple[np.ndarray, Reading]:
    """The whole raster as (H, W, 3) uint8 true colour, and how it was read: for a single tile."""
    with open_raster(path, radiometry, max_pixels=max_pixels) as raster:
        itemsize = np.dtype(raster.dataset.dtypes[0]).itemsize
        if raster.width * raster.height * len(raster.bands) * itemsize > 4 * max_pixels:
            raise RasterError(f"The {raster.kind} is {raster.width}x{raster.height} pixels of "
                              f"{raster.dataset.dtypes[0]}, too large to decode safely: a EuroSAT tile is 64x64, "
                              "so crop it first.")
        rgb, _ = raster.read(0, raster.height)
        return rgb, raster.reading


def write_cog(path: str | Path, array: np.ndarray, georef: Georef | None, *, nodata: float,
              description: str | Sequence[str], colormap: Mapping[int, Sequence[int]] | None = None,
              tags: Mapping[str, str] | None = None) -> Path:
    """A Cloud-Optimized GeoTIFF of `array` ((rows, cols), or (bands, rows, cols)), written atomically.

    It carries the CRS and transform of `georef`, `nodata`, the bands' descriptions and, on the first band, a
    colour table and tags.
    """
    import rasterio
    from rasterio.io import MemoryFile
    from rasterio.shutil import copy

    bands = array if array.ndim == 3 else array[np.newaxis]
    descriptions = [description] if isinstance(description, str) else list(description)
    located = {"crs": georef.crs, "transform": georef.transform} if georef else {}
    profile = dict(driver="GTiff", width=bands.shape[2], height=bands.shape[1], count=len(bands),
                   dtype=bands.dtype.name, nodata=nodata, **located)
    with rasterio.Env(**GDAL_OPTIONS), MemoryFile() as plain, MemoryFile() as cog:
        with plain.open(**profile) as dataset:
            dataset.write(bands)
            for band, text in enumerate(descriptions, start=1):
                dataset.set_band_description(band, text)
            if colormap:
                dataset.write_colormap(1, {k: tuple(v) for k, v in colormap.items()})
            if tags:
                dataset.update_tags(1, **tags)
        with plain.open() as dataset:
            # Overviews by the most common value: a class map must not average its codes.
            copy(dataset, cog.name, driver="COG", COMPRESS="DEFLATE", RESAMPLING="MODE")
        data = cog.read()
    return atomic_write(path, lambda f: f.write(data))

