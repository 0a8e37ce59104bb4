"""Scenes: an image larger than a tile, cut into 640 m cells, classified in batches, mapped and exported.

The grid: the image is brought to the model's ground resolution (MODEL_MPP metres per pixel) and cut
into CELL x CELL cells from its top-left corner. At the right and bottom edges, a remainder at least
half a cell wide (or tall) is classified from the CELL-pixel window aligned with the image's edge,
which overlaps its neighbour, and stands for the remainder only: it is drawn there, and its area
counts that part alone. A narrower remainder is a sliver left unclassified: no CSV row, no colour,
no area, and no data (NO_DATA) in the GeoTIFF, whose grid of one pixel per cell covers the image.
Cells whose window holds pixels without data (a georeferenced raster's nodata) are skipped the same way.
Classifying lives in `mapping`; this module holds the grid, the results and their outputs.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .errors import UserError
from .fileio import atomic_write

if TYPE_CHECKING:
    from .radiometry import Reading
    from .raster import Georef

CELL = 64  # pixels per cell side at the model's resolution: one EuroSAT tile
MODEL_MPP = 10.0  # metres per pixel of EuroSAT tiles (Sentinel-2's 10 m bands)
MPP_RANGE = (0.1, 100.0)
MAX_CELLS = 4096
NO_DATA = 255
# The command that maps rasters of any size, named where the app's limit stops a scene.
MAP_COMMAND = "python -m eurosat.map INPUT.tif OUTPUT.tif"

# One fixed colour per EuroSAT class, read as on a land-cover map: water blue (the sea darker than the
# river), vegetation green from dark forest to pale herbaceous, crops yellow and brown, built-up red,
# purple and grey. Neighbouring hues differ in lightness too, which keeps them apart for colour-blind eyes.
CLASS_COLOURS = {
    "AnnualCrop": "#f2c14e",
    "Forest": "#1b5e20",
    "HerbaceousVegetation": "#c5e17a",
    "Highway": "#5a5a5a",
    "Industrial": "#9467bd",
    "Pasture": "#5dbb63",
    "PermanentCrop": "#a6611a",
    "Residential": "#d62728",
    "River": "#56b4e9",
    "SeaLake": "#08306b",
}
# Classes of other checkpoints, in the order they appear (Paul Tol's muted scheme).
FALLBACK_COLOURS = ("#cc6677", "#332288", "#ddcc77", "#117733", "#88ccee", "#882255", "#44aa99",
                    "#999933", "#aa4499", "#dddddd")
# Uncertain cells are hatched with white diagonal stripes; grid lines are the cell's own colour, darker.
_HATCH = np.add.outer(np.arange(CELL), np.arange(CELL)) % 8 < 2
_GRID_SHADE = 0.6


class SceneError(UserError, ValueError):
    """A scene that cannot be mapped; the message says why and what to do instead."""


@dataclass(frozen=True)
class Cell:
    """One classified cell. x, y: the top-left pixel of its window in the uploaded image. width,
    height: the pixels of its grid square that it stands for, at the model's resolution; area_km2: their
    ground area (from the file's georeferencing when it has one, else at MODEL_MPP)."""

    row: int
    col: int
    x: int
    y: int
    label: str
    probability: float
    probabilities: tuple[float, ...]  # every class, in the order of Scene.label_names
    uncertain: bool
    width: int
    height: int
    area_km2: float


@dataclass(frozen=True)
class Scene:
    """A classified scene: its grid and cells, how the file was read, and the image at the model's resolution."""

    image: np.ndarray | None  # (H, W, 3) uint8 at MODEL_MPP; None when not kept (the command)
    source_size: tuple[int, int]  # (width, height) of the uploaded image
    size: tuple[int, int]  # (width, height) at MODEL_MPP
    grid: tuple[int, int]  # (rows, cols), slivers included
    cells: tuple[Cell, ...]
    label_names: tuple[str, ...]
    mpp: tuple[float, float]  # metres per pixel of the uploaded image along x and y
    georef: Georef | None = None  # of the uploaded image's pixels
    reading: Reading | None = None  # how its values became true colour; None for a plain 8-bit image
    skipped: int = 0  # cells left out because their window holds pixels without data

    @property
    def cell_size(self) -> tuple[float, float]:
        """Uploaded-image pixels per cell side, along x and y."""
        return CELL * self.source_size[0] / self.size[0], CELL * self.source_size[1] / self.size[1]

    @property
    def cell_georef(self) -> Georef | None:
        """The georeferencing of the cell grid: one pixel per cell, from the image's top-left corner."""
        return None if self.georef is None else self.georef.scaled(*self.cell_size)


def describe(scene: Scene) -> str:
    """One line on how the scene was read: its ground resolution and where it came from, the radiometry, the
    skipped cells."""
    mx, my = scene.mpp
    resolution = f"{mx:.3g} m" if math.isclose(mx, my, rel_tol=1e-3) else f"{mx:.3g} x {my:.3g} m"
    where = (f"read from the file ({scene.georef.describe()})" if scene.georef is not None
             else "as given (the image carries no georeferencing)")
    parts = [f"Ground resolution {resolution} per pixel, {where}"]
    if scene.reading is not None:
        parts.append(scene.reading.sentence())
    if scene.skipped:
        parts.append(f"{scene.skipped:,} cell{'s' if scene.skipped != 1 else ''} without data skipped")
    return "; ".join(parts) + "."


def check_mpp(mpp: Any) -> float:
    """The ground resolution in metres per pixel as a float, or SceneError saying what is accepted."""
    low, high = MPP_RANGE
    value = number(mpp)
    if not low <= value <= high:  # NaN fails too
        raise SceneError(f"The ground resolution must be a number of metres per pixel between {low:g} and "
                         f"{high:g} (Sentinel-2 and EuroSAT: 10); got {mpp!r}.")
    return value


def axis_windows(length: int) -> list[tuple[int, int]]:
    """(start, extent) of the cells along one axis of `length` pixels, by the edge rule of this module."""
    full, rest = divmod(length, CELL)
    windows = [(i * CELL, CELL) for i in range(full)]
    if rest >= CELL // 2:
        windows.append((length - CELL, rest))
    return windows


def plan(width: int, height: int, mpp: tuple[float, float], max_cells: int | None = MAX_CELLS
         ) -> tuple[tuple[int, int], list, list]:
    """The (width, height) at the model's resolution and the x and y windows, checked before any pixel is read.

    `mpp` is the image's metres per pixel along x and y; `max_cells` None means no limit (the command).
    """
    size = (round(width * mpp[0] / MODEL_MPP), round(height * mpp[1] / MODEL_MPP))
    shown = f"{mpp[0]:g}" if mpp[0] == mpp[1] else f"{mpp[0]:g} x {mpp[1]:g}"
    if min(size) < CELL:
        raise SceneError(f"At {shown} m per pixel this {width}x{height} image covers {size[0]}x{size[1]} pixels "
                         f"of {MODEL_MPP:g} m, less than one {CELL}x{CELL} cell ({CELL * MODEL_MPP:g} m): "
                         "classify it as a single tile instead.")
    xs, ys = axis_windows(size[0]), axis_windows(size[1])
    if max_cells is not None and len(xs) * len(ys) > max_cells:
        raise SceneError(f"This scene has {len(xs) * len(ys):,} cells of {CELL * MODEL_MPP:g} m, over the limit "
                         f"of {max_cells:,}: crop it to a smaller area, check the metres per pixel, or map it "
                         f"whole from the command line with `{MAP_COMMAND}`, which reads it window by window.")
    return size, xs, ys


def number(value: Any) -> float:
    """`value` as a float, NaN when it is not a number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def fraction(value: Any, name: str) -> float:
    """A number from 0 to 1, or SceneError naming `name`."""
    result = number(value)
    if not 0.0 <= result <= 1.0:  # NaN fails too
        raise SceneError(f"{name} must be a number from 0 to 1; got {value!r}.")
    return result


def class_colours(label_names: Sequence[str]) -> dict[str, tuple[int, int, int]]:
    """RGB of each class: CLASS_COLOURS for EuroSAT's, FALLBACK_COLOURS in turn for any other."""
    others = iter(FALLBACK_COLOURS * (1 + len(label_names) // len(FALLBACK_COLOURS)))
    hexes = {name: CLASS_COLOURS.get(name) or next(others) for name in label_names}
    return {name: tuple(int(h[i:i + 2], 16) for i in (1, 3, 5)) for name, h in hexes.items()}


def legend(label_names: Sequence[str]) -> list[tuple[str, str]]:
    """(class, "#rrggbb") for each class, in label order: what the UI shows beside the map."""
    return [(name, "#%02x%02x%02x" % rgb) for name, rgb in class_colours(label_names).items()]


def draw_map(scene: Scene, opacity: float = 0.5) -> np.ndarray:
    """The land-cover map over the scene's image, (H, W, 3) uint8 at the model's resolution.

    Each cell's square is blended with its class colour at `opacity` (0: the image unchanged, 1: pure
    colours), its top and left edges a darker shade as grid lines, uncertain cells hatched white.
    Slivers stay as they are.
    """
    alpha = fraction(opacity, "The opacity")
    colours = class_colours(scene.label_names)
    out = scene.image.copy()
    for cell in scene.cells:
        top, left = cell.row * CELL, cell.col * CELL
        region = out[top:top + cell.height, left:left + cell.width]
        ink = np.empty(region.shape, np.float64)
        ink[:] = colours[cell.label]
        ink[0, :] *= _GRID_SHADE
        ink[:, 0] *= _GRID_SHADE
        if cell.uncertain:
            ink[_HATCH[:cell.height, :cell.width]] = 255
        region[:] = np.round(region * (1.0 - alpha) + ink * alpha)
    return out


def summary(scene: Scene) -> list[dict[str, Any]]:
    """Per class: cells, share of the classified area (%) and km², largest area first.

    Areas are each cell's own: (64 x 10 m)² = 0.4096 km² for a whole cell of a 10 m grid, the
    non-overlapping part for an edge cell, and the geodesic area of its footprint for a raster in degrees.
    """
    total = sum(c.area_km2 for c in scene.cells)
    areas: dict[str, float] = {}
    counts: dict[str, int] = {}
    for cell in scene.cells:
        areas[cell.label] = areas.get(cell.label, 0.0) + cell.area_km2
        counts[cell.label] = counts.get(cell.label, 0) + 1
    rows = [{"class": name, "cells": counts[name], "share_percent": round(100.0 * km2 / total, 1),
             "area_km2": round(km2, 4)} for name, km2 in areas.items()]
    return sorted(rows, key=lambda row: (-row["area_km2"], row["class"]))


def cells_csv(scene: Scene) -> str:
    """One row per classified cell: row,col,x,y,label,probability,uncertain, then each class's probability."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["row", "col", "x", "y", "label", "probability", "uncertain", *scene.label_names])
    for c in scene.cells:
        writer.writerow([c.row, c.col, c.x, c.y, c.label, f"{c.probability:.6f}", str(c.uncertain).lower(),
                         *(f"{p:.6f}" for p in c.probabilities)])
    return text.getvalue()


def class_raster(scene: Scene) -> np.ndarray:
    """(rows, cols) uint8 of class indices, one pixel per cell; NO_DATA where a sliver was left out."""
    if len(scene.label_names) >= NO_DATA:
        raise SceneError(f"A class raster holds at most {NO_DATA - 1} classes; this model has "
                         f"{len(scene.label_names)}.")
    raster = np.full(scene.grid, NO_DATA, np.uint8)
    for cell in scene.cells:
        raster[cell.row, cell.col] = scene.label_names.index(cell.label)
    return raster


def write_scene(scene: Scene, folder: str | Path, *, stem: str = "scene") -> dict[str, Path]:
    """Write the cells (CSV) and, for a georeferenced scene, the class map (a Cloud-Optimized GeoTIFF).

    Each file is written atomically as <stem>_cells.csv and <stem>_classes.tif; characters of `stem` other
    than letters, digits, '.', '-' and '_' become '_'. Returns the paths by kind.
    """
    folder, stem = Path(folder), safe_stem(stem)
    paths = {"csv": atomic_write(folder / f"{stem}_cells.csv", lambda f: f.write(cells_csv(scene)), mode="w")}
    if scene.georef is not None:
        paths["geotiff"] = write_classes(scene, folder / f"{stem}_classes.tif")
    return paths


def safe_stem(stem: str, default: str = "scene") -> str:
    """A file stem of letters, digits, '.', '-' and '_' only: any other run of characters becomes '_'."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or default


def write_classes(scene: Scene, path: str | Path) -> Path:
    """The class map as a COG: uint8 class indices on the cell grid, NO_DATA where nothing was classified, the
    image's CRS, the class colours as its colour table and the class names in its tags."""
    from .raster import write_cog

    colours = class_colours(scene.label_names)
    return write_cog(path, class_raster(scene), scene.cell_georef, nodata=NO_DATA, description="land-cover class",
                     colormap={i: (*colours[name], 255) for i, name in enumerate(scene.label_names)},
                     tags={f"CLASS_{i}": name for i, name in enumerate(scene.label_names)})


def areas_csv(scene: Scene) -> str:
    """The per-class table of `summary` as CSV: class,cells,share_percent,area_km2."""
    text = io.StringIO()
    writer = csv.DictWriter(text, ["class", "cells", "share_percent", "area_km2"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(summary(scene))
    return text.getvalue()
