"""Mapping: a scene read strip by strip at the model's resolution, cells without data skipped, the rest classified.

One path for every scene, so the Scene tab, /scene and `python -m eurosat.map` give a cell the same label:
the source (a decoded image, or a raster read window by window) is brought to MODEL_MPP one strip of
cell rows at a time, each strip resampled with the margin its filter needs, so that a strip equals the
same rows of the whole image resampled at once; cells are cut by the grid rule of `scene` and go to
`Predictor.classify` as uint8 batches, so a cell's answer is the single-tile answer for its pixels.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Protocol

import numpy as np
import torch
from PIL import Image

from .config import WINDOW_ROWS
from .imaging import open_image
from .raster import Raster, open_raster, probe
from .scene import CELL, MAX_CELLS, MODEL_MPP, MPP_RANGE, Cell, Scene, SceneError, check_mpp, fraction, plan

if TYPE_CHECKING:
    from .inference import Predictor
    from .radiometry import Reading
    from .raster import Georef

CHUNK_BATCHES = 4  # batches gathered across strips before each call to the predictor: all but the last are full


class Source(Protocol):
    """What the mapper reads: a width and height in pixels, and full-width strips of true colour."""

    width: int
    height: int

    def read(self, top: int, bottom: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows [top, bottom): (h, W, 3) uint8 and the (h, W) mask of pixels with data."""
        ...


class ArraySource:
    """An image already decoded into memory, every pixel with data."""

    def __init__(self, rgb: np.ndarray):
        self.rgb = rgb
        self.height, self.width = rgb.shape[:2]

    def read(self, top: int, bottom: int) -> tuple[np.ndarray, np.ndarray]:
        strip = self.rgb[top:bottom]
        return strip, np.ones(strip.shape[:2], bool)


def map_source(source: Source, predictor: Predictor, *, mpp: tuple[float, float], uncertain_below: float = 0.5,
               batch_size: int = 64, window_rows: int = WINDOW_ROWS, max_cells: int | None = MAX_CELLS,
               keep_image: bool = True, progress: Callable[[int, int], None] | None = None,
               georef: Georef | None = None, reading: Reading | None = None) -> Scene:
    """Classify every cell of `source` taken at `mpp` metres per pixel (x, y); see the module's docstring.

    Cells whose top probability is below `uncertain_below` are flagged uncertain. `progress(done, total)`
    counts the grid's cells, skipped ones included, after each batch. With `keep_image` the scene keeps
    the image at the model's resolution, for drawing the map.
    """
    threshold = fraction(uncertain_below, "The uncertainty threshold")
    size, xs, ys = plan(source.width, source.height, mpp, max_cells)
    width, height = source.width, source.height
    image = np.zeros((size[1], size[0], 3), np.uint8) if keep_image else None
    names = tuple(predictor.label_names)
    total, skipped = len(xs) * len(ys), 0
    pending: list[tuple[np.ndarray, tuple[int, int, int, int, int, int]]] = []
    cells: list[Cell] = []

    def classify(count: int) -> None:
        base = len(cells) + skipped
        batch, pending[:] = pending[:count], pending[count:]
        tiles = torch.from_numpy(np.stack([tile for tile, _ in batch])).permute(0, 3, 1, 2)
        report = None if progress is None else (lambda done, _: progress(base + done, total))
        probs = predictor.classify(tiles, batch_size=batch_size, progress=report).double().numpy()
        for (_, (r, c, top, left, h, w)), p in zip(batch, probs):
            area = (georef.area_m2(c * CELL * width / size[0], r * CELL * height / size[1], w * width / size[0],
                                   h * height / size[1]) if georef is not None else w * h * MODEL_MPP ** 2)
            cells.append(Cell(row=r, col=c, x=round(left * width / size[0]), y=round(top * height / size[1]),
                              label=names[int(p.argmax())], probability=float(p.max()),
                              probabilities=tuple(p.tolist()), uncertain=bool(p.max() < threshold),
                              width=w, height=h, area_km2=area / 1e6))

    chunk = batch_size * CHUNK_BATCHES
    for first in range(0, len(ys), window_rows):
        rows = ys[first:first + window_rows]
        # The last strip reaches the image's bottom, so a sliver there is in the kept image too.
        y0, y1 = rows[0][0], size[1] if first + window_rows >= len(ys) else max(top for top, _ in rows) + CELL
        strip, valid, src_top = _strip(source, y0, y1, size)
        if image is not None:
            image[y0:y1] = strip
        for r, (top, h) in enumerate(rows, start=first):
            rows_with_data = valid[math.floor(top * height / size[1]) - src_top:
                                   math.ceil((top + CELL) * height / size[1]) - src_top]
            for c, (left, w) in enumerate(xs):
                window = rows_with_data[:, math.floor(left * width / size[0]):
                                        math.ceil((left + CELL) * width / size[0])]
                if not window.all():
                    skipped += 1
                    continue
                pending.append((strip[top - y0:top - y0 + CELL, left:left + CELL], (r, c, top, left, h, w)))
        while len(pending) >= chunk:
            classify(chunk)
    if pending:
        classify(len(pending))
    if progress is not None and skipped == total:
        progress(total, total)
    grid = (math.ceil(size[1] / CELL), math.ceil(size[0] / CELL))
    return Scene(image=image, source_size=(width, height), size=size, grid=grid, cells=tuple(cells),
                 label_names=names, mpp=mpp, georef=georef, reading=reading, skipped=skipped)


def _strip(source: Source, y0: int, y1: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, int]:
    """Model rows [y0, y1) at full width, the source's data mask around them, and the source row it starts at.

    The source rows read reach past the strip by the resampling filter's support (PIL's bicubic reaches 2
    target pixels, its box half a source pixel), so the strip's pixels are those of the whole image resampled.
    """
    width, height = source.width, source.height
    if size == (width, height):
        rgb, valid = source.read(y0, y1)
        return rgb, valid, y0
    scale = height / size[1]
    margin = math.ceil(2 * max(scale, 1.0)) + 2
    top, bottom = max(0, math.floor(y0 * scale) - margin), min(height, math.ceil(y1 * scale) + margin)
    rgb, valid = source.read(top, bottom)
    # Area averaging when shrinking, bicubic when enlarging, decided for the whole image.
    method = Image.Resampling.BOX if size[0] * size[1] < width * height else Image.Resampling.BICUBIC
    box = (0, y0 * height / size[1] - top, width, y1 * height / size[1] - top)
    strip = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize((size[0], y1 - y0), method, box=box))
    return strip, valid, top


def classify_scene(image: Image.Image | np.ndarray, predictor: Predictor, *, mpp: Any = MODEL_MPP,
                   **options: Any) -> Scene:
    """Classify every cell of a decoded RGB image (PIL, or uint8 (H, W, 3)) taken at `mpp` metres per pixel;
    `options` are those of `map_source`."""
    if isinstance(image, Image.Image):
        image = image if image.mode == "RGB" else image.convert("RGB")
    rgb = np.asarray(image)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise SceneError("A scene must be an 8-bit RGB image.")
    value = check_mpp(mpp)
    return map_source(ArraySource(rgb), predictor, mpp=(value, value), **options)


def map_raster(raster: Raster, predictor: Predictor, **options: Any) -> Scene:
    """Classify every cell of a georeferenced raster, at the ground resolution its georeferencing gives."""
    if raster.georef is None:
        raise SceneError("This raster carries no georeferencing (no CRS and transform), so its scale is unknown: "
                         "open it in the Scene tab and give its metres per pixel.")
    mpp = raster.georef.metres_per_pixel(raster.width, raster.height)
    low, high = MPP_RANGE
    if not all(low <= m <= high for m in mpp):
        raise SceneError(f"The file says its pixels are {mpp[0]:.3g} x {mpp[1]:.3g} m; scenes between {low:g} and "
                         f"{high:g} m per pixel can be mapped.")
    return map_source(raster, predictor, mpp=mpp, georef=raster.georef, reading=raster.reading, **options)


def map_file(path: str, predictor: Predictor, *, mpp: Any = MODEL_MPP, radiometry: Any = "auto",
             max_pixels: int, **options: Any) -> Scene:
    """A scene from a file: a georeferenced raster at its own scale, any other image at `mpp` metres per pixel.

    `options` are those of `map_source`.
    """
    if georeferenced(path):
        with open_raster(path, radiometry, max_pixels=max_pixels) as raster:
            return map_raster(raster, predictor, **options)
    image = open_image(path, max_pixels=max_pixels, radiometry=radiometry)
    return classify_scene(image, predictor, mpp=mpp, reading=image.info.get("reading"), **options)


def georeferenced(path: str) -> bool:
    """Whether a file is a raster with a CRS and a transform, which then decide its scale."""
    found = probe(path)
    return found is not None and found.georef is not None


def ground_resolution(path: str) -> tuple[tuple[float, float], Georef] | None:
    """The metres per pixel (x, y) a georeferenced raster's header gives, with its georeferencing; else None."""
    found = probe(path)
    if found is None or found.georef is None:
        return None
    return found.georef.metres_per_pixel(found.width, found.height), found.georef
