"""Pictures of a change: the change map over the after image, and a Sankey diagram of the from→to areas."""

from __future__ import annotations

from typing import Any

import numpy as np

from .change import Change, matrix
from .scene import CELL, class_colours

# Changed cells: filled with the class after, framed in the class before; unchanged ones washed out towards
# grey; possible changes striped black and yellow, unlike the Scene map's white hatching of uncertain cells.
FILL = 0.7
FRAME = 5  # pixels of the frame in the class before
FAINT = 0.6  # share of grey mixed into an unchanged cell
_GREY = np.array([200, 200, 200], np.float64)
_STRIPES = np.add.outer(np.arange(CELL), np.arange(CELL)) % 12
_YELLOW = np.array([255, 214, 0], np.float64)


def draw_change(change: Change) -> np.ndarray:
    """The change map: (H, W, 3) uint8 over the after image at the model's resolution (see the module's notes)."""
    colours = {name: np.array(rgb, np.float64) for name, rgb in class_colours(change.label_names).items()}
    out = change.after.image.astype(np.float64)
    for cell in change.cells:
        top, left = cell.row * CELL, cell.col * CELL
        region = out[top:top + CELL, left:left + CELL]
        h, w = region.shape[:2]
        if cell.status == "unchanged":
            region[:] = region * (1 - FAINT) + _GREY * FAINT
        elif cell.status == "changed":
            region[:] = region * (1 - FILL) + colours[cell.after] * FILL
            frame = np.ones((h, w), bool)
            frame[FRAME:h - FRAME, FRAME:w - FRAME] = False
            region[frame] = colours[cell.before]
        else:
            stripes = _STRIPES[:h, :w]
            region[stripes < 3] = 0
            region[(stripes >= 6) & (stripes < 9)] = _YELLOW
    return np.round(out).astype(np.uint8)


def legend_items(change: Change) -> list[tuple[str, str, str, float]]:
    """The transitions the map shows, largest first: (before, after, "#rrggbb" of the class after, km²)."""
    count, area = matrix(change)
    names = change.label_names
    hexes = {name: "#%02x%02x%02x" % rgb for name, rgb in class_colours(names).items()}
    pairs = [(names[i], names[j], hexes[names[j]], float(area[i, j])) for i in range(len(names))
             for j in range(len(names)) if i != j and count[i, j]]
    return sorted(pairs, key=lambda item: -item[3])


def sankey(change: Change, dates: tuple[str, str] = ("before", "after")) -> Any:
    """A plotly Sankey diagram of where each class's confident area went (km²), classes before on the left.

    Flows that stayed in their class are pale, changes strong; hovering shows km² and cells.
    """
    import plotly.graph_objects as go

    count, area = matrix(change)
    names = change.label_names
    colours = class_colours(names)
    left = [i for i in range(len(names)) if count[i].sum()]
    right = [j for j in range(len(names)) if count[:, j].sum()]
    node = {("before", i): k for k, i in enumerate(left)} | {("after", j): len(left) + k for k, j in enumerate(right)}
    sources, targets, values, cells, links = [], [], [], [], []
    for i in left:
        for j in right:
            if count[i, j]:
                sources.append(node["before", i])
                targets.append(node["after", j])
                values.append(round(float(area[i, j]), 4))
                cells.append(int(count[i, j]))
                links.append("rgba(%d,%d,%d,%.2f)" % (*colours[names[i]], 0.25 if i == j else 0.75))
    labels = [f"{names[i]} ({dates[0]})" for i in left] + [f"{names[j]} ({dates[1]})" for j in right]
    nodes = ["rgb(%d,%d,%d)" % colours[names[i]] for i in left] + ["rgb(%d,%d,%d)" % colours[names[j]] for j in right]
    figure = go.Figure(go.Sankey(
        arrangement="snap",
        node=dict(label=labels, color=nodes, pad=12, thickness=16,
                  hovertemplate="%{label}: %{value:.2f} km²<extra></extra>"),
        link=dict(source=sources, target=targets, value=values, color=links, customdata=cells,
                  hovertemplate="%{source.label} → %{target.label}: %{value:.2f} km², %{customdata} cells"
                                "<extra></extra>")))
    figure.update_layout(title_text=f"Where each class went, {dates[0]} → {dates[1]} (km², confident cells only)",
                         font_size=12, height=480, margin=dict(l=10, r=10, t=40, b=10))
    return figure
