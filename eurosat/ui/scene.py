"""The Scene tab and /scene: a land-cover map of a whole image, cell by cell, with its table and downloads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from .. import scene as scenes
from ..imaging import open_georeferenced
from .outputs import own_file
from .shared import DEFAULT_OPACITY, Tab, user_errors, with_our_example

# The map shown on the page, and downloaded from its button, is at most this size.
MAX_SHOWN_SIDE = 1024
TABLE_HEADERS = ["class", "cells", "share of area (%)", "area (km²)"]
INTRO = (
    "Upload a larger image (a Sentinel-2 scene, an export from a GIS, a 13-band GeoTIFF) to map it: it is cut "
    f"into {scenes.CELL}x{scenes.CELL}-pixel cells at {scenes.MODEL_MPP:g} m per pixel (640 m across) and each "
    "cell gets a class. Set the metres per pixel of your image if it is not a 10 m Sentinel-2 product. A strip "
    "at the right or bottom edge at least half a cell wide is classified from the cell-sized window at the edge; "
    "a narrower one is left blank. Hatched cells are uncertain: below the model's notice threshold."
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

    def admit(self, image: Any, metres_per_pixel: Any = None, opacity: Any = None,
              request: gr.Request = None) -> list[dict[str, Any]]:
        """Run when a scene is submitted: within this visitor's share of heavy work, or refused at once."""
        return self.served.admit(3, request)

    @user_errors
    def scene(self, image: Any, metres_per_pixel: Any = scenes.MODEL_MPP, opacity: Any = DEFAULT_OPACITY,
              progress: gr.Progress = gr.Progress(), request: gr.Request = None,
              ) -> tuple[Image.Image, list[list[Any]], str, str | None, scenes.Scene]:
        """Map the land cover of a whole image: 64x64-pixel cells at 10 m per pixel, each given a class.

        metres_per_pixel is the image's ground resolution (10 for Sentinel-2); the image is rescaled to 10 m
        first. Returns the map over the image (PNG), a table per class (cells, share of area, km²), a CSV with
        one row per cell (row, col, x, y, label, probability, ...) and, for a georeferenced GeoTIFF, a GeoTIFF
        of class indices with the same georeferencing.
        """
        predictor = self.served.model()
        alpha = self.served.opacity(opacity)
        upload = self.served.upload(image)
        picture, geo = open_georeferenced(upload.path, max_pixels=self.served.config.max_pixels)
        progress(0, desc="Classifying cells")
        with self.served.heavy("scene map", request, progress, "cells") as report:
            scene = scenes.classify_scene(picture, predictor, mpp=metres_per_pixel,
                                          uncertain_below=predictor.checkpoint.notice_threshold, geo=geo,
                                          progress=report, batch_size=self.served.config.heavy_batch)
        files = scenes.write_scene(scene, self.served.outputs.new(), stem=Path(upload.name).stem)
        geotiff = str(files["geotiff"]) if "geotiff" in files else None
        return display_map(scenes.draw_map(scene, alpha)), table_rows(scene), str(files["csv"]), geotiff, scene

    @user_errors
    def redraw(self, opacity: Any, scene: scenes.Scene | None) -> Image.Image | None:
        """The current map at another opacity, from the kept cells."""
        return None if scene is None else display_map(scenes.draw_map(scene, self.served.opacity(opacity)))

    def render(self) -> dict[str, Any]:
        gr.Markdown(INTRO)
        with gr.Row():
            # A file input, not an image one: browsers cannot preview the GeoTIFFs a scene often comes as.
            image = with_our_example(gr.File(
                file_types=["image", ".tif", ".tiff"], elem_id="scene-input",
                label=f"Scene (PNG, JPEG or GeoTIFF, up to {self.served.config.max_pixels / 1e6:g} megapixels)"))
            with gr.Column():
                mpp = gr.Number(value=scenes.MODEL_MPP, label="Metres per pixel of the image",
                                minimum=scenes.MPP_RANGE[0], maximum=scenes.MPP_RANGE[1], elem_id="scene-mpp")
                opacity = gr.Slider(0, 1, value=DEFAULT_OPACITY, step=0.05, label="Map opacity")
                with gr.Row():
                    button = gr.Button("Map this scene", variant="primary", elem_id="scene-run")
                    stop = gr.Button("Stop", variant="stop", elem_id="scene-stop")
        picture = gr.Image(format="png", type="pil", interactive=False, label="Land-cover map", elem_id="scene-map")
        gr.HTML(legend_html(self.served.label_names), elem_id="scene-legend")
        table = gr.Dataframe(headers=TABLE_HEADERS, label="Land cover by class", interactive=False,
                             elem_id="scene-table")
        with gr.Row():
            csv = gr.File(label="Cells (CSV)", interactive=False, elem_id="scene-csv")
            geotiff = gr.File(label="Class raster (GeoTIFF, when the input is georeferenced)", interactive=False,
                              elem_id="scene-geotiff")
        return {"image": image, "mpp": mpp, "opacity": opacity, "button": button, "stop": stop, "map": picture,
                "table": table, "csv": csv, "geotiff": geotiff}
