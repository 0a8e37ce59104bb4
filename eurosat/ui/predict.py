"""The Prediction tab and /predict: the most likely classes, the notice when the answer is doubtful, a download."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gradio as gr

from ..fileio import atomic_write
from .shared import Tab, user_errors

# One line per EuroSAT class, to help a reader judge an answer against the picture.
CLASS_NOTES = {
    "AnnualCrop": "fields ploughed and sown every year: regular strips, often bare soil in some of them",
    "Forest": "closed tree cover: dark, even green with a fine texture",
    "HerbaceousVegetation": "natural grass, heath or scrub: green with irregular patches, no field pattern",
    "Highway": "a major road crossing the tile: a straight or gently curved grey line",
    "Industrial": "large flat roofs, warehouses and yards: big bright blocks",
    "Pasture": "grazed meadow: smooth, even green fields, often with hedges",
    "PermanentCrop": "orchards and vineyards: rows of trees or vines in a fine regular grid",
    "Residential": "houses and gardens: a dense pattern of small roofs and streets",
    "River": "a river through the tile: a winding band of water with banks",
    "SeaLake": "open water over most of the tile: dark, smooth blue or black",
}
# A runner-up counts as close when it has at least this share of the top class's probability.
CLOSE_RATIO = 0.25
# An image this many times a tile's side is a scene or a photo, not a tile.
LARGE = 4
# A spread this close to uniform means the input looks like none of the classes.
NEAR_UNIFORM = 2.0  # top-1 below this many times 1/C


def notice(probabilities: dict[str, float], threshold: float, size: tuple[int, int] | None = None,
           tile: int = 64) -> str:
    """Markdown for a doubtful answer (top-1 below `threshold`) or a far-from-EuroSAT input, empty otherwise.

    It names the runner-up when it is close and says what to look at. Only inputs that really are far
    from a tile are called so: a near-uniform spread, or an image (`size`, width x height) many times
    larger than a `tile`-pixel tile. A real tile can be hard without being a strange input.
    """
    if size is not None and max(size) >= LARGE * tile:
        return (f"**This image is {size[0]}x{size[1]} pixels, far larger than a {tile}x{tile} tile.** It was shrunk "
                "to one tile, so the answer describes the whole picture at a much coarser scale than the model "
                "knows. For a land-cover map of its parts, use the **Scene map** tab.")
    ranked = list(probabilities.items())
    (label, p), others = ranked[0], ranked[1:]
    if p >= threshold:
        return ""
    if p < NEAR_UNIFORM / len(ranked):
        return (f"**No class fits.** The probabilities are spread almost evenly (best: {label}, {p:.0%}). The model "
                "knows ten land-cover classes in 64x64-pixel Sentinel-2 RGB tiles (about 640 m across, seen from "
                "straight above); this image does not look like any of them.")
    runner, q = others[0] if others else (None, 0.0)
    if runner is not None and q >= CLOSE_RATIO * p:
        look = (f" Compare the picture with {label} ({CLASS_NOTES[label]}) and {runner} ({CLASS_NOTES[runner]})."
                if label in CLASS_NOTES and runner in CLASS_NOTES else "")
        return f"**Not sure: {label} or {runner}** ({p:.0%} / {q:.0%}).{look}"
    look = f" Check it against the picture: {CLASS_NOTES[label]}." if label in CLASS_NOTES else ""
    return (f"**Not sure: {label}** at {p:.0%}, below the {threshold:.0%} under which this model's answers were "
            f"wrong more often than usual on validation tiles.{look}")


def describe(probabilities: dict[str, float] | None) -> str:
    """One line on what the top class means."""
    if not probabilities:
        return ""
    label = next(iter(probabilities))
    return f"**{label}**: {CLASS_NOTES[label]}." if label in CLASS_NOTES else ""


def download(probabilities: dict[str, float], name: str, folder: Path) -> str:
    """A JSON file of every class's probability for the image on screen (`name`), for the download button."""
    text = json.dumps({"image": name, "probabilities": probabilities}, indent=2) + "\n"
    return str(atomic_write(folder / "prediction.json", lambda f: f.write(text), mode="w"))


class PredictTab(Tab):
    """The /predict endpoint and the tab's components."""

    @user_errors
    def predict(self, image: Any, k: Any = 5) -> dict[str, float]:
        """Classify one Sentinel-2 RGB tile (64x64 px at 10 m/px is ideal; larger images are resized).

        Returns the k most likely land-cover classes with their probabilities (calibrated on validation).
        """
        predictor = self.served.model()
        count = self.served.k(k)
        return predictor.predict(self.served.open(self.served.upload(image)), count)

    def render(self) -> dict[str, Any]:
        count = len(self.served.label_names) or max(self.served.config.top_k, 2)
        label = gr.Label(label="Most likely classes", elem_id="prediction")
        notice_box = gr.Markdown(elem_id="notice")
        meaning = gr.Markdown(elem_id="meaning")
        k = gr.Slider(1, count, value=min(self.served.config.top_k, count), step=1, label="Classes shown (k)")
        saved = gr.DownloadButton("Download all probabilities (JSON)", visible=False, size="sm", elem_id="download")
        return {"label": label, "notice": notice_box, "meaning": meaning, "k": k, "download": saved}
