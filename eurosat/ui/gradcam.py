"""The Grad-CAM tab and /gradcam: where the network looked for a class, drawn over the image."""

from __future__ import annotations

from typing import Any

import gradio as gr
from PIL import Image

from ..cam import DEFAULT_METHOD, overlay
from .shared import DEFAULT_OPACITY, TOP1, Shown, Tab, own_file, user_errors

LEGEND = (
    "Red and yellow mark the places that raised the chosen class's score most, blue the places that mattered "
    "least; colours are scaled per image, so compare places within one heatmap, not across images."
)


def heatmap_image(shown: Shown, opacity: float) -> Image.Image:
    """The heatmap over the tile, as a file of its own."""
    return own_file(Image.fromarray(overlay(shown.rgb, shown.analysis.heatmap, opacity)))


class GradcamTab(Tab):
    """The /gradcam endpoint and the tab's components."""

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
