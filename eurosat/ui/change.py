"""The Change tab and /change: land cover at two dates, what became what, where, and how many km²."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from .. import change as changes
from .. import scene as scenes
from ..changemap import draw_change, legend_items, sankey
from ..radiometry import AUTO
from ..uploads import plain_text
from .model_panel import public_name
from .scene import display_map
from .lanes import WEIGHTS
from .shared import DEFAULT_OPACITY, RADIOMETRY_CHOICES, Tab, user_errors, with_our_example

CLASS_HEADERS = ["class", "before (km²)", "after (km²)", "gained (km²)", "lost (km²)", "net (km²)"]
WHY = ("Each map is wrong now and then, and two maps' errors add up: at 98% per map, about 4% of unchanged cells "
       "would look changed, so a cell counts as changed only when both dates are confident, and the doubtful ones "
       "are shown apart as possible changes.")
INTRO = (
    "Upload two images of the same area, before and after (two GeoTIFFs are matched by their georeferencing and "
    "classified on their common extent; plain images must have the same size). Both go through the same model and "
    "radiometry setting. " + WHY
)
MAP_LEGEND = ("Fill: the class after; frame: the class before; washed out: unchanged; black and yellow stripes: "
              "possible change (either date uncertain); untouched: not classified at both dates.")


def dates_of(before: Any, after: Any) -> tuple[str, str]:
    """The two dates' labels: the user's text (one line, at most 40 characters), else "before" and "after"."""
    def label(value: Any, default: str) -> str:
        return plain_text(str(value or "")).strip()[:40] or default

    return label(before, "before"), label(after, "after")


def matrix_rows(change: changes.Change) -> tuple[list[str], list[list[Any]]]:
    """The from→to matrix for the page: a row per class before, a column per class after, "cells · km²"."""
    count, area = changes.matrix(change)
    names = change.label_names
    used = [i for i in range(len(names)) if count[i].sum() or count[:, i].sum()]
    rows = [[f"{names[i]} →", *(f"{count[i, j]} · {area[i, j]:.2f}" if count[i, j] else "" for j in used)]
            for i in used]
    return ["before \\ after (cells · km²)", *(names[j] for j in used)], rows


def summary(change: changes.Change, dates: tuple[str, str], model: str) -> str:
    """What was compared, by which model, how each file was read, and the counts of each status."""
    def part(status: str) -> str:
        return f"{change.count(status):,} cells ({change.area(status):.2f} km²)"

    rows, cols = change.before.grid
    lines = [f"Both dates classified by **{model}**, cell by cell on one grid of {rows} x {cols} cells.",
             *(f"**{date}**: {scenes.describe(scene)}" for date, scene in zip(dates, (change.before, change.after))),
             f"**Changed**: {part('changed')}; **unchanged**: {part('unchanged')}; **possible change**: "
             f"{part('possible')}, counted in neither.",
             WHY]
    moves = legend_items(change)[:5]
    if moves:
        lines.append("Main changes: " + ", ".join(f"<span style='color:{colour}'>■</span> {a} → {b} "
                                                   f"{km2:.2f} km²" for a, b, colour, km2 in moves) + ".")
    return "\n\n".join(lines)


class ChangeTab(Tab):
    """The /change endpoint and the tab's components."""

    def admit(self, before: Any, after: Any, before_date: Any = None, after_date: Any = None, radiometry: Any = None,
              metres_per_pixel: Any = None, request: gr.Request = None) -> list[dict[str, Any]]:
        """Run when a change is submitted: the work of two scenes within this visitor's share, or refused at once."""
        return self.served.admit(6, request, WEIGHTS["change"])

    @user_errors
    def change(self, before: Any, after: Any, before_date: Any = "", after_date: Any = "", radiometry: Any = AUTO,
               metres_per_pixel: Any = scenes.MODEL_MPP, progress: gr.Progress = gr.Progress(),
               request: gr.Request = None) -> tuple:
        """Land-cover change between two images of the same area: a "before" and an "after" image.

        Both images are cut into the same 640 m cells (64x64 pixels at 10 m) and classified by the same model.
        Two GeoTIFFs are aligned by their georeferencing (only their common extent is classified); plain images
        must have the same size, at metres_per_pixel. Each cell gets a status: "changed" (both dates confident
        and the classes differ), "unchanged" (both confident, same class) or "possible" (at least one date is
        below the model's confidence threshold: the cell may or may not have changed, so treat it as unknown,
        not as a change, and check it in the images; it is counted in neither). before_date and after_date are
        labels only. Returns: the change map over the after image (PNG), the two maps side by side, the from→to
        matrix of the confident cells ("cells · km²"), a table per class (km² before, after, gained, lost,
        net), a Sankey diagram, a summary (Markdown), a CSV per cell (row,col,x,y,before,p_before,after,
        p_after,status), the matrix as CSV (from,to,cells,area_km2) and, for GeoTIFF input, a GeoTIFF of
        transition codes (before class index * 100 + after class index; 65535 where not classified).
        """
        predictor = self.served.model()
        first, second = self.served.upload(before), self.served.upload(after)
        dates = dates_of(before_date, after_date)
        progress(0, desc="Classifying both dates")
        with self.served.heavy("change map", request, progress, "cells") as report:
            result = changes.compare(first.path, second.path, predictor, radiometry=radiometry, mpp=metres_per_pixel,
                                     max_pixels=self.served.config.max_pixels,
                                     uncertain_below=predictor.checkpoint.notice_threshold,
                                     progress=report, batch_size=self.served.config.heavy_batch)
        files = changes.write_change(result, self.served.outputs.new(),
                                     stem=f"{Path(first.name).stem}_to_{Path(second.name).stem}")
        headers, rows = matrix_rows(result)
        table = [[r["class"], *(r[k] for k in ("before_km2", "after_km2", "gained_km2", "lost_km2", "net_km2"))]
                 for r in changes.class_table(result)]
        maps = [display_map(scenes.draw_map(scene, DEFAULT_OPACITY)) for scene in (result.before, result.after)]
        transitions = str(files["transitions"]) if "transitions" in files else None
        return (display_map(draw_change(result)), tuple(maps), {"headers": headers, "data": rows}, table,
                sankey(result, dates), summary(result, dates, public_name(predictor.checkpoint.source)),
                str(files["cells"]), str(files["matrix"]), transitions)

    def render(self) -> dict[str, Any]:
        gr.Markdown(INTRO)
        with gr.Row():
            kinds = ["image", ".tif", ".tiff", ".jp2"]
            before = with_our_example(gr.File(file_types=kinds, label="Before", elem_id="change-before"))
            after = with_our_example(gr.File(file_types=kinds, label="After", elem_id="change-after"))
            with gr.Column():
                before_date = gr.Textbox("", label="Date before (a label, optional)", placeholder="2018",
                                         elem_id="change-before-date")
                after_date = gr.Textbox("", label="Date after (a label, optional)", placeholder="2024",
                                        elem_id="change-after-date")
                radiometry = gr.Dropdown(RADIOMETRY_CHOICES, value=AUTO, label="Radiometry (both dates)",
                                         elem_id="change-radiometry")
                mpp = gr.Number(value=scenes.MODEL_MPP, label="Metres per pixel (plain images)",
                                minimum=scenes.MPP_RANGE[0], maximum=scenes.MPP_RANGE[1], elem_id="change-mpp")
                with gr.Row():
                    button = gr.Button("Compare", variant="primary", elem_id="change-run")
                    stop = gr.Button("Stop", variant="stop", elem_id="change-stop")
        note = gr.Markdown(label="Summary", elem_id="change-summary")
        picture = gr.Image(format="png", type="pil", interactive=False, label="Change map (over the after image)",
                           elem_id="change-map")
        gr.Markdown(MAP_LEGEND, elem_id="change-legend")
        slider = gr.ImageSlider(type="pil", format="png", interactive=False,
                                label="Before (left) and after (right), with their maps",
                                elem_id="change-slider")
        matrix = gr.Dataframe(label="From → to, confident cells (cells · km²)", interactive=False,
                              elem_id="change-matrix")
        table = gr.Dataframe(headers=CLASS_HEADERS, label="Per class, confident cells (km²)", interactive=False,
                             elem_id="change-table")
        plot = gr.Plot(label="Where each class went (Sankey)", elem_id="change-sankey")
        with gr.Row():
            cells = gr.File(label="Cells (CSV)", interactive=False, elem_id="change-cells")
            matrix_file = gr.File(label="Matrix (CSV)", interactive=False, elem_id="change-matrix-csv")
            codes = gr.File(label="Transition codes (GeoTIFF, for georeferenced input)", interactive=False,
                            elem_id="change-transitions")
        return {"before": before, "after": after, "before_date": before_date, "after_date": after_date,
                "radiometry": radiometry, "mpp": mpp, "button": button, "stop": stop, "outputs": [
                    picture, slider, matrix, table, plot, note, cells, matrix_file, codes]}

