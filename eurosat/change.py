"""Land-cover change: two dates classified on one grid, each cell unchanged, changed or possible, the from→to matrix.

Alignment follows the scene's rules. Georeferenced rasters are classified on their common extent, on the
grid of the "before" raster: the "after" raster is read through the same window when its grid is the same,
else warped onto that grid (rasterio's WarpedVRT, bilinear). Plain images must have the same pixel size.
A cell is compared when both dates classified it (no slivers, no pixels without data); it is "changed" when
both dates are confident (at or above the model's notice threshold) and their labels differ, "unchanged"
when both are confident and agree, and "possible" when either date is uncertain: two maps each right 98% of
the time disagree on about 4% of unchanged cells, and the doubtful cells are where they do.
"""

from __future__ import annotations

import csv
import io
import math
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from .errors import UserError
from .fileio import write_text
from .imaging import open_image
from .mapping import ArraySource, georeferenced, map_raster, map_source
from .raster import Georef, Raster, open_raster, write_cog
from .scene import MAX_CELLS, MODEL_MPP, Scene, check_mpp, safe_stem

if TYPE_CHECKING:
    from .inference import Predictor

STATUSES = ("unchanged", "changed", "possible")
CODE_NODATA = 65535  # transition codes are before * 100 + after, at most 9999
STATUS_CODES = {"unchanged": 1, "changed": 2, "possible": 3}  # 0: not compared


class ChangeError(UserError, ValueError):
    """A pair of images that cannot be compared; the message says why and what came."""


@dataclass(frozen=True)
class CellChange:
    """One cell at both dates: its place (x, y: the top-left pixel of its window on the common grid), both
    answers, its status and its ground area."""

    row: int
    col: int
    x: int
    y: int
    before: str
    p_before: float
    after: str
    p_after: float
    status: str
    area_km2: float


@dataclass(frozen=True)
class Change:
    """Two scenes of the same ground on one grid, and their cells compared."""

    before: Scene
    after: Scene
    cells: tuple[CellChange, ...]
    label_names: tuple[str, ...]
    threshold: float

    def count(self, status: str) -> int:
        return sum(c.status == status for c in self.cells)

    def area(self, status: str) -> float:
        return sum(c.area_km2 for c in self.cells if c.status == status)


def compare(before: str, after: str, predictor: Predictor, *, radiometry: Any = "auto", mpp: Any = MODEL_MPP,
            max_pixels: int, uncertain_below: float, max_cells: int | None = MAX_CELLS,
            progress: Callable[[int, int], None] | None = None, **options: Any) -> Change:
    """Classify two files of the same ground on one grid and compare them cell by cell (see the module's docstring).

    Both go through the same predictor and radiometry setting (auto decides for each file on its own).
    `progress(done, total)` counts the cells of both dates.
    """
    located = georeferenced(before), georeferenced(after)
    if located[0] != located[1]:
        which = "before" if located[0] else "after"
        raise ChangeError(f"Only the {which} image is georeferenced: compare two GeoTIFFs (or JPEG 2000 rasters) of "
                          "the same area, or two plain images of the same pixel size.")
    reported = [0, 0]

    def report(date: int) -> Callable[[int, int], None] | None:
        def seen(done: int, total: int) -> None:
            reported[date] = done
            progress(sum(reported), 2 * total)
        return None if progress is None else seen

    common = dict(uncertain_below=uncertain_below, max_cells=max_cells, **options)
    with ExitStack() as stack:
        if located[0]:
            first = stack.enter_context(open_raster(before, radiometry, max_pixels=max_pixels))
            second = stack.enter_context(open_raster(after, radiometry, max_pixels=max_pixels))
            aligned = common_grid(first, second, stack)
            scenes = [map_raster(raster, predictor, progress=report(date), **common)
                      for date, raster in enumerate(aligned)]
        else:
            images = [open_image(path, max_pixels=max_pixels, radiometry=radiometry) for path in (before, after)]
            if images[0].size != images[1].size:
                raise ChangeError(f"The two images differ in size: before is {images[0].width}x{images[0].height} "
                                  f"pixels, after {images[1].width}x{images[1].height}. Plain images are compared "
                                  "pixel for pixel, so they must show the same area at the same size; a GeoTIFF "
                                  "pair is aligned by its georeferencing instead.")
            value = check_mpp(mpp)
            scenes = [map_source(ArraySource(np.asarray(image)), predictor, mpp=(value, value),
                                 reading=image.info.get("reading"), progress=report(date), **common)
                      for date, image in enumerate(images)]
    return pair(*scenes, threshold=uncertain_below)


def common_grid(before: Raster, after: Raster, stack: ExitStack) -> tuple[Raster, Raster]:
    """Both rasters on the before raster's grid, cropped to their common extent; ChangeError when there is none."""
    from rasterio.errors import CRSError
    from rasterio.warp import transform_bounds
    from rasterio.windows import Window, from_bounds

    grid = before.georef
    try:
        bounds = transform_bounds(after.georef.crs, grid.crs, *_bounds(after), densify_pts=21)
    except (CRSError, ValueError, RuntimeError):
        bounds = None
    mine = _bounds(before)
    overlap = None if bounds is None else (max(mine[0], bounds[0]), max(mine[1], bounds[1]),
                                           min(mine[2], bounds[2]), min(mine[3], bounds[3]))
    if overlap is None or overlap[0] >= overlap[2] or overlap[1] >= overlap[3]:
        why = "do not overlap" if bounds is not None else "are in coordinate systems that cannot be matched"
        raise ChangeError(f"The two rasters {why}: before covers {_extent(before)}, after covers {_extent(after)}. "
                          "Compare two images of the same area.")
    window = from_bounds(*overlap, transform=grid.transform).round_offsets(op="ceil").round_lengths(op="floor")
    window = window.intersection(Window(0, 0, before.width, before.height))
    first = before.crop(int(window.col_off), int(window.row_off), int(window.width), int(window.height))
    if _same_grid(first.georef, after.georef):
        offset = ~after.georef.transform @ (first.georef.transform.c, first.georef.transform.f)
        return first, after.crop(round(offset[0]), round(offset[1]), first.width, first.height)
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT

    warped = stack.enter_context(WarpedVRT(after.dataset, crs=grid.crs, transform=first.georef.transform,
                                           width=first.width, height=first.height, resampling=Resampling.bilinear))
    second = Raster(warped, after.reading.kind)
    second.reading = after.reading  # decided on the file itself, and said so
    return first, second


def _bounds(raster: Raster) -> tuple[float, float, float, float]:
    """(west, south, east, north) of a raster in its own CRS."""
    from rasterio.transform import array_bounds

    return array_bounds(raster.height, raster.width, raster.georef.transform)


def _extent(raster: Raster) -> str:
    west, south, east, north = _bounds(raster)
    return f"x {west:.10g} to {east:.10g}, y {south:.10g} to {north:.10g} ({raster.georef.describe()})"


def _same_grid(a: Georef, b: Georef) -> bool:
    """The same CRS and pixel size, and corners a whole number of pixels apart: a window reads it, no warping."""
    pixel = lambda t: (t.a, t.b, t.d, t.e)  # noqa: E731 - the transform without its corner
    if a.crs != b.crs or not all(math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12)
                                 for x, y in zip(pixel(a.transform), pixel(b.transform))):
        return False
    col, row = ~b.transform @ (a.transform.c, a.transform.f)
    return abs(col - round(col)) < 1e-6 and abs(row - round(row)) < 1e-6


def pair(before: Scene, after: Scene, *, threshold: float) -> Change:
    """The cells both scenes classified, compared (see the module's docstring)."""
    theirs = {(c.row, c.col): c for c in after.cells}
    cells = []
    for cell in before.cells:
        other = theirs.get((cell.row, cell.col))
        if other is None:
            continue
        confident = cell.probability >= threshold and other.probability >= threshold
        status = ("unchanged" if cell.label == other.label else "changed") if confident else "possible"
        cells.append(CellChange(cell.row, cell.col, cell.x, cell.y, cell.label, cell.probability, other.label,
                                other.probability, status, cell.area_km2))
    return Change(before, after, tuple(cells), before.label_names, threshold)


def matrix(change: Change) -> tuple[np.ndarray, np.ndarray]:
    """The from→to cross-tabulation of the confident cells: (cells, km²), rows the before class, columns the after."""
    index = {name: i for i, name in enumerate(change.label_names)}
    count = np.zeros((len(index), len(index)), np.int64)
    area = np.zeros((len(index), len(index)))
    for cell in change.cells:
        if cell.status != "possible":
            count[index[cell.before], index[cell.after]] += 1
            area[index[cell.before], index[cell.after]] += cell.area_km2
    return count, area


def class_table(change: Change) -> list[dict[str, Any]]:
    """Per class, over the confident cells: km² before and after, gained, lost and net, largest change first."""
    _, area = matrix(change)
    stay = np.diag(area)
    rows = [{"class": name, "before_km2": area[i].sum(), "after_km2": area[:, i].sum(),
             "gained_km2": area[:, i].sum() - stay[i], "lost_km2": area[i].sum() - stay[i],
             "net_km2": area[:, i].sum() - area[i].sum()} for i, name in enumerate(change.label_names)]
    rows = [{k: v if k == "class" else round(float(v), 4) for k, v in row.items()} for row in rows
            if row["before_km2"] or row["after_km2"]]
    return sorted(rows, key=lambda row: (-abs(row["net_km2"]), -row["gained_km2"] - row["lost_km2"], row["class"]))


def cells_csv(change: Change) -> str:
    """One row per compared cell: row,col,x,y,before,p_before,after,p_after,status."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["row", "col", "x", "y", "before", "p_before", "after", "p_after", "status"])
    for c in change.cells:
        writer.writerow([c.row, c.col, c.x, c.y, c.before, f"{c.p_before:.6f}", c.after, f"{c.p_after:.6f}",
                         c.status])
    return text.getvalue()


def matrix_csv(change: Change) -> str:
    """The from→to matrix of the confident cells as CSV, one row per pair of classes: from,to,cells,area_km2."""
    count, area = matrix(change)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["from", "to", "cells", "area_km2"])
    for i, source in enumerate(change.label_names):
        for j, target in enumerate(change.label_names):
            writer.writerow([source, target, int(count[i, j]), f"{area[i, j]:.4f}"])
    return text.getvalue()


def transitions(change: Change) -> np.ndarray:
    """(2, rows, cols) uint16 on the cell grid: before * 100 + after where both dates classified the cell
    (CODE_NODATA elsewhere), and its status code (STATUS_CODES; 0 where not compared)."""
    index = {name: i for i, name in enumerate(change.label_names)}
    out = np.zeros((2, *change.before.grid), np.uint16)
    out[0] = CODE_NODATA
    for c in change.cells:
        out[:, c.row, c.col] = index[c.before] * 100 + index[c.after], STATUS_CODES[c.status]
    return out


def write_change(change: Change, folder: str | Path, *, stem: str = "change") -> dict[str, Path]:
    """The cells CSV, the matrix CSV and, for georeferenced input, the transitions COG: paths by kind."""
    folder, stem = Path(folder), safe_stem(stem, "change")
    paths = {"cells": write_text(folder / f"{stem}_cells.csv", cells_csv(change)),
             "matrix": write_text(folder / f"{stem}_matrix.csv", matrix_csv(change))}
    if change.before.cell_georef is not None:
        names = {f"CLASS_{i}": name for i, name in enumerate(change.label_names)}
        paths["transitions"] = write_cog(
            folder / f"{stem}_transitions.tif", transitions(change), change.before.cell_georef, nodata=CODE_NODATA,
            description=["transition: before class * 100 + after class",
                         "status: 1 unchanged, 2 changed, 3 possible, 0 not compared"], tags=names)
    return paths
