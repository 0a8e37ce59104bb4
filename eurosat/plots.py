"""The report's pictures: the confusion matrix and the grid of the most confident mistakes."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .fileio import atomic_write
from .metrics import as_numpy, row_normalise

# Error grid layout, in pixels: a 64x64 tile is enlarged 3x (nearest) so single fields stay visible.
GRID_COLUMNS = 6
GRID_MIN_COLUMNS = 3  # the canvas is never narrower than this many cells, so the header line fits
TILE_PX = 192
CELL_PAD = 8
CAPTION_LINE_PX = 18
HEADER_PX = 48
CELL_W = TILE_PX + 2 * CELL_PAD
CELL_H = CELL_PAD + TILE_PX + 4 + 2 * CAPTION_LINE_PX + CELL_PAD


def save_confusion_matrix(cm: Sequence[Sequence[int]] | np.ndarray, label_names: Sequence[str],
                          path: str | os.PathLike) -> Path:
    """A PNG heat map of the row-normalised confusion matrix, with the percentage written in each cell.

    Rows are true classes (labelled with their image count), columns the predictions; empty cells
    are left blank so the mistakes stand out.
    """
    # The object-oriented API renders through Agg without pyplot: no global backend switch, no GUI,
    # and safe to call from a server thread.
    from matplotlib.figure import Figure

    counts = np.asarray(cm, dtype=np.int64)
    n = len(label_names)
    if counts.shape != (n, n):
        raise ValueError(f"the confusion matrix is {counts.shape}, but there are {n} label names")
    percent = row_normalise(counts) * 100
    side = max(6.0, 0.55 * n + 3.5)
    fig = Figure(figsize=(side + 1.0, side), dpi=120)
    ax = fig.add_subplot()
    image = ax.imshow(percent, cmap="Blues", vmin=0, vmax=100)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="% of the true class")
    ax.set_xticks(range(n), labels=list(label_names), rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n), labels=[f"{name} ({total})" for name, total in zip(label_names, counts.sum(axis=1))])
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class (images)")
    ax.set_title(f"Confusion matrix, row-normalised (%), {int(counts.sum())} images")
    fontsize = 9 if n <= 12 else 6
    for i in range(n):
        for j in range(n):
            if counts[i, j] == 0:
                continue
            value = percent[i, j]
            text = "<1" if value < 1 else f"{value:.0f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=fontsize,
                    color="white" if value > 55 else "black")
    fig.tight_layout()
    return atomic_write(path, lambda f: fig.savefig(f, format="png"))


def pick_errors(labels: np.ndarray, predictions: np.ndarray, probs_of_predicted: np.ndarray,
                max_tiles: int) -> np.ndarray:
    """Indices of the misclassified images, most confident mistakes first (ties in index order)."""
    labels, predictions, probs_of_predicted = (as_numpy(a) for a in (labels, predictions, probs_of_predicted))
    wrong = np.flatnonzero(labels != predictions)
    order = np.argsort(-probs_of_predicted[wrong], kind="stable")
    return wrong[order][:max_tiles]


def grid_size(num_tiles: int) -> tuple[int, int]:
    """(width, height) in pixels of the error grid image for `num_tiles` tiles: a header, then rows of cells."""
    columns = max(min(num_tiles, GRID_COLUMNS), GRID_MIN_COLUMNS)
    return columns * CELL_W, HEADER_PX + math.ceil(num_tiles / GRID_COLUMNS) * CELL_H


def tile_origin(index: int) -> tuple[int, int]:
    """Top-left pixel (x, y) of the `index`-th tile's box in the error grid."""
    row, col = divmod(index, GRID_COLUMNS)
    return col * CELL_W + CELL_PAD, HEADER_PX + row * CELL_H + CELL_PAD


def _to_hwc(images: Any) -> np.ndarray:
    images = as_numpy(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images must be a uint8 batch (N, 3, H, W) or (N, H, W, 3); got {images.dtype} "
                         f"{images.shape}")
    if images.shape[1] == 3:  # the project's layout wins when a tile is 3 pixels wide
        return images.transpose(0, 2, 3, 1)
    if images.shape[3] == 3:
        return images
    raise ValueError(f"images must have 3 channels, first or last; got shape {images.shape}")


def _enlarge(tile: np.ndarray):
    """A PIL image of the tile fitted to TILE_PX: integer nearest-neighbour enlargement keeps fields crisp."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(tile))
    longest = max(image.size)
    if longest <= TILE_PX:
        scale = TILE_PX // longest
        return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    size = (max(1, round(image.width * TILE_PX / longest)), max(1, round(image.height * TILE_PX / longest)))
    return image.resize(size, Image.Resampling.BOX)


def _font(size: int):
    """DejaVu Sans from matplotlib's own data: always installed with it, and it has the → glyph."""
    import matplotlib
    from PIL import ImageFont

    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), size)


def _fit(draw, text: str, font, width: int) -> str:
    """`text`, shortened with an ellipsis until it fits in `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def save_error_grid(images: Any, labels: Any, predictions: Any, probs_of_predicted: Any,
                    label_names: Sequence[str], path: str | os.PathLike, max_tiles: int = 36) -> Path:
    """A PNG grid of misclassified tiles, most confident mistakes first, captioned "true → predicted (p=0.83)".

    The file is always written: when nothing is misclassified it says so, so a report folder is
    always complete. The PNG's "Description" text chunk repeats the header line for scripts.
    """
    from PIL import Image, ImageDraw
    from PIL.PngImagePlugin import PngInfo

    if max_tiles < 1:
        raise ValueError(f"max_tiles must be at least 1; got {max_tiles}")
    tiles = _to_hwc(images)
    labels, predictions, probs_of_predicted = (as_numpy(a) for a in (labels, predictions, probs_of_predicted))
    if not len(tiles) == len(labels) == len(predictions) == len(probs_of_predicted):
        raise ValueError(f"images, labels, predictions and probabilities differ in length: {len(tiles)}, "
                         f"{len(labels)}, {len(predictions)}, {len(probs_of_predicted)}")
    for name, values in (("labels", labels), ("predictions", predictions)):
        if len(values) and (values.min() < 0 or values.max() >= len(label_names)):
            raise ValueError(f"{name} must lie in 0..{len(label_names) - 1}")

    chosen = pick_errors(labels, predictions, probs_of_predicted, max_tiles)
    wrong = int((labels != predictions).sum())
    if wrong == 0:
        header = f"No misclassified images: all {len(labels)} predictions are correct."
    else:
        shown = "all shown" if len(chosen) == wrong else f"the {len(chosen)} most confident shown"
        header = f"{wrong} of {len(labels)} images misclassified ({shown}); caption: true → predicted (p)"
    width, height = grid_size(len(chosen))
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    header_font, caption_font = _font(14), _font(12)
    draw.text((CELL_PAD, HEADER_PX // 2), _fit(draw, header, header_font, width - 2 * CELL_PAD),
              font=header_font, fill="black", anchor="lm")
    for k, i in enumerate(chosen):
        x, y = tile_origin(k)
        tile = _enlarge(tiles[i])
        canvas.paste(tile, (x + (TILE_PX - tile.width) // 2, y + (TILE_PX - tile.height) // 2))
        lines = (f"{label_names[labels[i]]} →",
                 f"{label_names[predictions[i]]} (p={float(probs_of_predicted[i]):.2f})")
        for line_no, line in enumerate(lines):
            draw.text((x, y + TILE_PX + 4 + line_no * CAPTION_LINE_PX), _fit(draw, line, caption_font, TILE_PX),
                      font=caption_font, fill="black" if line_no == 0 else (180, 0, 0))
    info = PngInfo()
    info.add_text("Description", header)
    return atomic_write(path, lambda f: canvas.save(f, format="PNG", pnginfo=info))


def save_risk_coverage(curve: dict[str, list[float]], notice: dict[str, float] | None,
                       path: str | os.PathLike) -> Path:
    """A PNG of the risk-coverage curve, with the notice threshold's point marked when there is one.

    Coverage is the share of answers given without the notice, risk the error rate among them.
    """
    from matplotlib.figure import Figure

    coverage, risk = np.asarray(curve["coverage"]), np.asarray(curve["risk"])
    answered = np.asarray(curve["threshold"]) >= (notice["threshold"] if notice else np.inf)
    fig = Figure(figsize=(5.5, 4), dpi=120)
    ax = fig.add_subplot()
    ax.plot(coverage * 100, risk * 100, color="tab:blue", label="answers above a threshold")
    if answered.any():
        last = np.flatnonzero(answered)[-1]
        ax.plot([coverage[last] * 100], [risk[last] * 100], "o", color="tab:red",
                label=f"notice below {notice['threshold']:.0%}: catches {notice['catch']:.0%} of errors, "
                      f"flags {notice['false_flag']:.1%} of right answers")
    ax.set_xlabel("Coverage: answers without the notice (%)")
    ax.set_ylabel("Error rate among them (%)")
    ax.set_xlim(0, 100)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("Risk-coverage of the top-1 probability")
    fig.tight_layout()
    return atomic_write(path, lambda f: fig.savefig(f, format="png"))
