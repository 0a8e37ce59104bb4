"""The Scene tab and /scene: a land-cover map of a whole image, cell by cell, with its table and downloads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from .. import mapping, scene as scenes
from ..errors import UserError
from ..radiometry import AUTO
from .outputs import own_file
from .shared import DEFAULT_OPACITY, RADIOMETRY_CHOICES, Tab, user_errors, with_our_example

# The map shown on the page, and downloaded from its button, is at most this size.
MAX_SHOWN_SIDE = 1024
TABLE_HEADERS = ["class", "cells", "share of area (%)", "area (km²)"]
MPP_LABEL = "Metres per pixel of the image"
INTRO = (
    "Upload a larger image (a Sentinel-2 scene, an export from a GIS, a GeoTIFF or JPEG 2000 raster) to map it: "
    f"it is cut into {scenes.CELL}x{scenes.CELL}-pixel cells at {scenes.MODEL_MPP:g} m per pixel (640 m across) "
    "and each cell gets a class. A georeferenced raster gives its own scale and areas (in degrees: geodesic "
    "areas); for another image, set its metres per pixel if it is not a 10 m Sentinel-2 product. Cells holding "
    "pixels without data are skipped. A strip at the right or bottom edge at least half a cell wide is "
    "classified from the cell-sized window at the edge; a narrower one is left blank. Hatched cells are "
    f"uncertain: below the model's notice threshold. Over {scenes.MAX_CELLS:,} cells, map the file from the "
    f"command line: `{scenes.MAP_COMMAND}`."
)


def legend_html(label_names: list[str]) -> str:
    """One coloured square and name per class, in the map's fixed colours."""
    items = "".join(f'<span style="display:inline-block;margin:2px 10px 2px 0"><span style="display:inline-block;'
                    f'width:12px;height:12px;background:{colour};border:1px solid #555;vertical-align:middle">'
                    f"</span> {name}</span>" for name, colour in scenes.legend(label_names))
    return f'<div id="scene-legend-items">{items} <span>▨ uncertain</span></div>'


def table_rows(scene: scenes.Scene) -> list[list[Any]]:
    return [[row["class"], row["cells"], round(row["share_percent"], 1), round(row["area_km2"], 3)]
            for row in scenes.summary(scene)]


def display_map(picture: np.ndarray) -> Image.Image:
    """The map as displayed: shrunk to MAX_SHOWN_SIDE, tagged so that equal maps get files of their own."""
    image = Image.fromarray(picture)
    if max(image.size) > MAX_SHOWN_SIDE:
        image.thumbnail((MAX_SHOWN_SIDE, MAX_SHOWN_SIDE), Image.Resampling.BOX)
    return own_file(image)


class SceneTab(Tab):
    """The /scene endpoint, the opacity redraw, and the tab's components."""

    def admit(self, image: Any, metres_per_pixel: Any = None, opacity: Any = None, radiometry: Any = None,
              request: gr.Request = None) -> list[dict[str, Any]]:
        """Run when a scene is submitted: within this visitor's share of heavy work, or refused at once."""
        return self.served.admit(4, request)

    @user_errors
    def scene(self, image: Any, metres_per_pixel: Any = scenes.MODEL_MPP, opacity: Any = DEFAULT_OPACITY,
              radiometry: Any = AUTO, progress: gr.Progress = gr.Progress(), request: gr.Request = None,
              ) -> tuple[Image.Image, list[list[Any]], str, str | None, str, scenes.Scene]:
        """Map the land cover of a whole image: 64x64-pixel cells at 10 m per pixel, each given a class.

        A georeferenced GeoTIFF or JPEG 2000 gives its own ground resolution and areas; metres_per_pixel (10 for
        Sentinel-2) is the resolution of any other image. radiometry says how the values become true colour:
        auto (decided from the file), eurosat-l1c (DN / 2750), baseline-04 (DN - 1000 first: Sentinel-2
        processing baseline 04.00 and later), reflectance (fractions 0 to 1) or 8bit. Returns the map over the
        image (PNG), a table per class (cells, share of area, km²), a CSV with one row per cell (row, col, x, y,
        label, probability, ...), for a georeferenced input a Cloud-Optimized GeoTIFF of class indices (255: no
        data) with its CRS, and one line on how the file was read.
        """
        predictor = self.served.model()
        alpha = self.served.opacity(opacity)
        upload = self.served.upload(image)
        progress(0, desc="Classifying cells")
        with self.served.heavy("scene map", request, progress, "cells") as report:
            scene = mapping.map_file(upload.path, predictor, mpp=metres_per_pixel, radiometry=radiometry,
                                     max_pixels=self.served.config.max_pixels,
                                     uncertain_below=predictor.checkpoint.notice_threshold,
                                     progress=report, batch_size=self.served.config.heavy_batch)
        files = scenes.write_scene(scene, self.served.outputs.new(), stem=Path(upload.name).stem)
        geotiff = str(files["geotiff"]) if "geotiff" in files else None
        return (display_map(scenes.draw_map(scene, alpha)), table_rows(scene), str(files["csv"]), geotiff,
                scenes.describe(scene), scene)

    def resolution(self, image: Any) -> dict[str, Any]:
        """The metres-per-pixel field for a chosen file: fixed at what a georeferenced raster says, else free."""
        free = gr.update(interactive=True, label=MPP_LABEL)
        if not image:
            return free
        try:
            found = mapping.ground_resolution(self.served.upload(image).path)
        except UserError:  # the map button gives the message
            return free
        if found is None:
            return free
        (mx, my), georef = found
        return gr.update(value=round((mx + my) / 2, 3), interactive=False,
                         label=f"{MPP_LABEL}: read from the file ({georef.describe()})")

    @user_errors
    def redraw(self, opacity: Any, scene: scenes.Scene | None) -> Image.Image | None:
        """The current map at another opacity, from the kept cells."""
        return None if scene is None else display_map(scenes.draw_map(scene, self.served.opacity(opacity)))

    def render(self) -> dict[str, Any]:
        gr.Markdown(INTRO)
        with gr.Row():
            # A file input, not an image one: browsers cannot preview the GeoTIFFs a scene often comes as.
            image = with_our_example(gr.File(
                file_types=["image", ".tif", ".tiff", ".jp2"], elem_id="scene-input",
                label=f"Scene (PNG, JPEG, GeoTIFF or JPEG 2000, up to {self.served.config.max_pixels / 1e6:g} "
                      "megapixels)"))
            with gr.Column():
                mpp = gr.Number(value=scenes.MODEL_MPP, label=MPP_LABEL, minimum=scenes.MPP_RANGE[0],
                                maximum=scenes.MPP_RANGE[1], elem_id="scene-mpp")
                radiometry = gr.Dropdown(RADIOMETRY_CHOICES, value=AUTO, label="Radiometry",
                                         info="How the file's values become true colour; auto decides from the file.",
                                         elem_id="scene-radiometry")
                opacity = gr.Slider(0, 1, value=DEFAULT_OPACITY, step=0.05, label="Map opacity")
                with gr.Row():
                    button = gr.Button("Map this scene", variant="primary", elem_id="scene-run")
                    stop = gr.Button("Stop", variant="stop", elem_id="scene-stop")
        note = gr.Markdown(label="How the file was read", elem_id="scene-note")
        picture = gr.Image(format="png", type="pil", interactive=False, label="Land-cover map", elem_id="scene-map")
        gr.HTML(legend_html(self.served.label_names), elem_id="scene-legend")
        table = gr.Dataframe(headers=TABLE_HEADERS, label="Land cover by class", interactive=False,
                             elem_id="scene-table")
        with gr.Row():
            csv = gr.File(label="Cells (CSV)", interactive=False, elem_id="scene-csv")
            geotiff = gr.File(label="Class map (Cloud-Optimized GeoTIFF, when the input is georeferenced)",
                              interactive=False, elem_id="scene-geotiff")
        return {"image": image, "mpp": mpp, "radiometry": radiometry, "opacity": opacity, "button": button,
                "stop": stop, "map": picture, "note": note, "table": table, "csv": csv, "geotiff": geotiff}
