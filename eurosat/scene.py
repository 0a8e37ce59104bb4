"""Scenes: an image larger than a tile, cut into 640 m cells, classified in batches, mapped and exported.

The grid: the image is brought to the model's ground resolution (MODEL_MPP metres per pixel) and cut
into CELL x CELL cells from its top-left corner. At the right and bottom edges, a remainder at least
half a cell wide (or tall) is classified from the CELL-pixel window aligned with the image's edge,
which overlaps its neighbour, and stands for the remainder only: it is drawn there, and its area
counts that part alone. A narrower remainder is a sliver left unclassified: no CSV row, no colour,
no area, and no data (NO_DATA) in the GeoTIFF, whose grid of one pixel per cell covers the image.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from .errors import UserError
from .fileio import atomic_write

if TYPE_CHECKING:
    from .inference import Predictor

CELL = 64  # pixels per cell side at the model's resolution: one EuroSAT tile
MODEL_MPP = 10.0  # metres per pixel of EuroSAT tiles (Sentinel-2's 10 m bands)
MPP_RANGE = (0.1, 100.0)
MAX_CELLS = 4096
NO_DATA = 255

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
_TAG_TYPES = {33550: "d", 33922: "d", 34264: "d", 34735: "H", 34736: "d", 34737: "s"}


class SceneError(UserError, ValueError):
    """A scene that cannot be mapped; the message says why and what to do instead."""


@dataclass(frozen=True)
class Cell:
    """One classified cell. x, y: the top-left pixel of its window in the uploaded image. width,
    height: the pixels of its grid square that it stands for, at the model's resolution."""

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


@dataclass(frozen=True)
class Scene:
    """A classified scene: the image at the model's resolution, its grid, and the georeferencing it came with."""

    image: np.ndarray  # (H, W, 3) uint8 at MODEL_MPP
    source_size: tuple[int, int]  # (width, height) of the uploaded image
    grid: tuple[int, int]  # (rows, cols), slivers included
    cells: tuple[Cell, ...]
    label_names: tuple[str, ...]
    geo: dict[int, Any] | None = None

    @property
    def cell_size(self) -> tuple[float, float]:
        """Uploaded-image pixels per cell side, along x and y."""
        return (CELL * self.source_size[0] / self.image.shape[1], CELL * self.source_size[1] / self.image.shape[0])


def check_mpp(mpp: Any) -> float:
    """The ground resolution in metres per pixel as a float, or SceneError saying what is accepted."""
    low, high = MPP_RANGE
    value = _number(mpp)
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


def plan(width: int, height: int, mpp: float) -> tuple[tuple[int, int], list, list]:
    """The (width, height) at the model's resolution and the x and y windows, checked before any resampling."""
    size = (round(width * mpp / MODEL_MPP), round(height * mpp / MODEL_MPP))
    if min(size) < CELL:
        raise SceneError(f"At {mpp:g} m per pixel this {width}x{height} image covers {size[0]}x{size[1]} pixels "
                         f"of {MODEL_MPP:g} m, less than one {CELL}x{CELL} cell ({CELL * MODEL_MPP:g} m): "
                         "classify it as a single tile instead.")
    xs, ys = axis_windows(size[0]), axis_windows(size[1])
    if len(xs) * len(ys) > MAX_CELLS:
        raise SceneError(f"This scene has {len(xs) * len(ys):,} cells of {CELL * MODEL_MPP:g} m, over the limit "
                         f"of {MAX_CELLS:,}: crop it to a smaller area, or check the metres per pixel.")
    return size, xs, ys


def classify_scene(image: Image.Image | np.ndarray, predictor: Predictor, *, mpp: Any = MODEL_MPP,
                   uncertain_below: float = 0.5, batch_size: int = 64,
                   progress: Callable[[int, int], None] | None = None, geo: dict[int, Any] | None = None) -> Scene:
    """Classify every cell of an RGB image (PIL, or uint8 (H, W, 3)) taken at `mpp` metres per pixel.

    The image is resampled to MODEL_MPP first (area averaging when shrinking, bicubic when
    enlarging), then cut by the edge rule of this module. All cells go to `predictor.classify` as
    one uint8 batch, so a cell's answer equals the single-tile answer for its 64x64 pixels.
    Cells whose top probability is below `uncertain_below` are flagged uncertain. `geo` (from
    `imaging.open_georeferenced`) is kept for `write_scene`.
    """
    if isinstance(image, Image.Image):
        image = image if image.mode == "RGB" else image.convert("RGB")
    rgb = np.asarray(image)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise SceneError("A scene must be an 8-bit RGB image.")
    threshold = _fraction(uncertain_below, "The uncertainty threshold")
    height, width = rgb.shape[:2]
    size, xs, ys = plan(width, height, check_mpp(mpp))
    scaled = _resample(rgb, size)
    windows = [(r, c, top, left, h, w) for r, (top, h) in enumerate(ys) for c, (left, w) in enumerate(xs)]
    tiles = np.stack([scaled[top:top + CELL, left:left + CELL] for _, _, top, left, _, _ in windows])
    probs = predictor.classify(torch.from_numpy(tiles).permute(0, 3, 1, 2), batch_size=batch_size,
                               progress=progress).double().numpy()
    names = tuple(predictor.label_names)
    fx, fy = width / size[0], height / size[1]
    cells = tuple(
        Cell(row=r, col=c, x=round(left * fx), y=round(top * fy), label=names[int(p.argmax())],
             probability=float(p.max()), probabilities=tuple(p.tolist()), uncertain=bool(p.max() < threshold),
             width=w, height=h)
        for (r, c, top, left, h, w), p in zip(windows, probs))
    grid = (math.ceil(size[1] / CELL), math.ceil(size[0] / CELL))
    return Scene(image=scaled, source_size=(width, height), grid=grid, cells=cells, label_names=names, geo=geo)


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _fraction(value: Any, name: str) -> float:
    number = _number(value)
    if not 0.0 <= number <= 1.0:  # NaN fails too
        raise SceneError(f"{name} must be a number from 0 to 1; got {value!r}.")
    return number


def _resample(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if size == (rgb.shape[1], rgb.shape[0]):
        return rgb
    shrinking = size[0] * size[1] < rgb.shape[0] * rgb.shape[1]
    method = Image.Resampling.BOX if shrinking else Image.Resampling.BICUBIC
    return np.asarray(Image.fromarray(rgb).resize(size, method))


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
    alpha = _fraction(opacity, "The opacity")
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

    Areas count the pixels each cell stands for at MODEL_MPP: (64 x 10 m)² = 0.4096 km² for a whole
    cell, the non-overlapping part for an edge cell.
    """
    total = sum(c.width * c.height for c in scene.cells)
    pixels: dict[str, int] = {}
    counts: dict[str, int] = {}
    for cell in scene.cells:
        pixels[cell.label] = pixels.get(cell.label, 0) + cell.width * cell.height
        counts[cell.label] = counts.get(cell.label, 0) + 1
    rows = [{"class": name, "cells": counts[name], "share_percent": round(100.0 * px / total, 1),
             "area_km2": round(px * MODEL_MPP ** 2 / 1e6, 4)} for name, px in pixels.items()]
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


def raster_geotags(geo: dict[int, Any], cell_size: tuple[float, float]) -> dict[int, Any]:
    """The georeferencing of a raster with one pixel per `cell_size` input pixels, from the input's tags.

    The CRS tags are copied as they are; the pixel scale grows by the cell size, and the tiepoint (or
    the transformation matrix) keeps the image's top-left corner in place. With PixelIsPoint the
    raster's pixel centres are the cells' centres.
    """
    cx, cy = cell_size
    keys = geo.get(34735, ())
    point = any(keys[i:i + 4] == (1025, 0, 1, 2) for i in range(4, len(keys) - 3, 4))
    dx, dy = ((cx - 1) / 2, (cy - 1) / 2) if point else (0.0, 0.0)  # input pixel under the new (0, 0)
    tags = {code: value for code, value in geo.items() if code in (34735, 34736, 34737)}
    if 34264 in geo:
        m = np.array(geo[34264], dtype=np.float64).reshape(4, 4)
        m[:, 3] += m[:, 0] * dx + m[:, 1] * dy
        m[:, 0] *= cx
        m[:, 1] *= cy
        tags[34264] = tuple(m.ravel().tolist())
    else:
        sx, sy, sz = geo[33550]
        i, j, k, x, y, z = geo[33922][:6]
        tags[33550] = (sx * cx, sy * cy, sz)
        tags[33922] = (0.0, 0.0, k, x + (dx - i) * sx, y - (dy - j) * sy, z)
    return tags


def write_scene(scene: Scene, folder: str | Path, *, stem: str = "scene") -> dict[str, Path]:
    """Write the cells (CSV) and, for a georeferenced scene, the class raster (GeoTIFF).

    Each file is written atomically as <stem>_cells.csv and <stem>_classes.tif;
    characters of `stem` other than letters, digits, '.', '-' and '_' become '_'. The GeoTIFF is
    uint8 class indices (label order, NO_DATA for slivers) on the cell grid. Returns the paths by kind.
    """
    import tifffile

    folder = Path(folder)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "scene"
    paths = {"csv": atomic_write(folder / f"{stem}_cells.csv", lambda f: f.write(cells_csv(scene)), mode="w")}
    if scene.geo:
        raster = class_raster(scene)
        tags = raster_geotags(scene.geo, scene.cell_size)
        extratags = [(code, _TAG_TYPES[code], 0 if code == 34737 else len(value),
                      value.encode("utf-8") if code == 34737 else value, True)
                     for code, value in sorted(tags.items())]
        paths["geotiff"] = atomic_write(folder / f"{stem}_classes.tif", lambda f: tifffile.imwrite(
            f, raster, photometric="minisblack", extratags=extratags))
    return paths
