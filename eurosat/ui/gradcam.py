"""The Grad-CAM tab and /gradcam: where the network looked for a class, drawn over the image."""

from __future__ import annotations

import uuid
from typing import Any

import gradio as gr
from PIL import Image

from ..cam import DEFAULT_METHOD, overlay
from .shared import DEFAULT_OPACITY, TOP1, Served, Shown, user_errors

LEGEND = (
    "Red and yellow mark the places that raised the chosen class's score most, blue the places that mattered "
    "least; colours are scaled per image, so compare places within one heatmap, not across images."
)


def heatmap_image(shown: Shown, opacity: float) -> Image.Image:
    """The heatmap over the tile, tagged with an id of its own.

    Gradio caches an output under the hash of its bytes and rewrites that file in place, so two
    visitors getting the same heatmap at the same moment could each download the other's
    half-written file. A per-response PNG text entry gives every response its own file.
    """
    image = Image.fromarray(overlay(shown.rgb, shown.analysis.heatmap, opacity))
    image.info["response"] = uuid.uuid4().hex
    return image


class GradcamTab:
    """The /gradcam endpoint and the tab's components."""

    def __init__(self, served: Served):
        self.served = served

    @user_errors
    def gradcam(self, image: Any, class_name: Any = TOP1, method: Any = DEFAULT_METHOD,
                opacity: Any = DEFAULT_OPACITY) -> tuple[Image.Image, str]:
        """Show where the network looked: a Grad-CAM heatmap of one class over a Sentinel-2 RGB tile.

        class_name is a class name or "top-1" (any letter case); method one of GradCAM, GradCAM++, XGradCAM,
        HiResCAM, LayerCAM, EigenCAM. Returns the heatmap as a PNG and the class it was drawn for.
        """
        alpha = self.served.opacity(opacity)
        shown = self.served.analyze(image, class_name, method)
        return heatmap_image(shown, alpha), shown.analysis.target

    def render(self) -> dict[str, Any]:
        cam = gr.Image(format="png", type="pil", interactive=False, label="Heatmap", elem_id="cam")
        drawn = gr.Textbox(label="Class drawn", interactive=False, elem_id="cam-class")
        gr.Markdown(LEGEND)
        class_name = gr.Dropdown([TOP1, *self.served.label_names], value=TOP1, label="Class")
        method = gr.Dropdown(self.served.methods, value=DEFAULT_METHOD, label="Method",
                             info="EigenCAM ignores the class: it maps the features' main pattern.")
        opacity = gr.Slider(0, 1, value=DEFAULT_OPACITY, step=0.05, label="Heatmap opacity")
        return {"cam": cam, "drawn": drawn, "class_name": class_name, "method": method, "opacity": opacity}
