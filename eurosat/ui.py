"""The Gradio page and its API: one tile in; prediction, Grad-CAM and the GPT-4o second opinion out."""

from __future__ import annotations

import functools
import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gradio as gr
import numpy as np
from PIL import Image

from . import llm
from .cam import DEFAULT_METHOD, cam_methods, overlay
from .config import DEFAULT_MODEL_ID, ENV_MODEL, ENV_OPENAI_KEY, AppConfig
from .imaging import ImageError, open_image, to_rgb
from .inference import Analysis, Predictor

log = logging.getLogger(__name__)

TOP1 = "top-1"
DEFAULT_OPACITY = 0.5
# Heatmaps of big photos are drawn over a copy this size: the map itself only has the model's input
# resolution, and a full-size PNG would be megabytes to send back for no extra detail.
MAX_DISPLAY_SIDE = 512
EXAMPLE_SUFFIXES = (".jpg", ".jpeg", ".png")

UNEXPECTED = ("Something went wrong while handling this request. The details were logged on the server; "
              "try another image, or try again later.")
INTRO = (
    "# EuroSAT land cover\n"
    "Upload a Sentinel-2 RGB tile, or click an example, to see its land-cover class, the places the network "
    "looked at (Grad-CAM), and a second opinion from GPT-4o."
)
CAM_LEGEND = (
    "Red and yellow mark the places that raised the chosen class's score most, blue the places that mattered "
    "least; colours are scaled per image, so compare places within one heatmap, not across images."
)
GPT_INTRO = (
    "GPT-4o looks at the same tile and names one of the classes, shown beside the CNN's top-1. "
    "Each click is one paid OpenAI request; nothing is sent until you click."
)
# Gradio shows small images at their own size (scale-down) and browsers smooth enlarged ones: a
# 64-pixel tile is enlarged to fit, pixel for pixel. The gallery's 450 px minimum height goes too.
CSS = """
#tile img, #cam img, #examples img { image-rendering: pixelated; }
#tile .image-frame img, #cam .image-frame img { object-fit: contain; }
#examples .fixed-height { min-height: 0; }
"""


@dataclass
class Shown:
    """The current image's analysis, kept per session so the k and opacity sliders redraw without the network."""

    path: str
    rgb: np.ndarray  # the tile as displayed under the heatmap (uint8, H x W x 3)
    analysis: Analysis


def heatmap_image(shown: Shown, opacity: float) -> Image.Image:
    """The heatmap over the tile, tagged with an id of its own.

    Gradio caches an output under the hash of its bytes and rewrites that file in place, so two
    visitors getting the same heatmap at the same moment could each download the other's
    half-written file. A per-response PNG text entry gives every response its own file.
    """
    image = Image.fromarray(overlay(shown.rgb, shown.analysis.heatmap, opacity))
    image.info["response"] = uuid.uuid4().hex
    return image


def no_model_message(error: str | None) -> str:
    """What failed and what to do, shown in the banner and returned by every API call while no model is loaded."""
    return (
        f"No model is loaded, so nothing can be analysed. {error or ''} To fix it, set {ENV_MODEL} (or pass "
        "--model) to a checkpoint folder or a Hub id such as owner/name; train a checkpoint with "
        f"`python train.py --preset cpu-quick --output-dir runs/quick`; or go online so the default model "
        f"{DEFAULT_MODEL_ID} can be downloaded. Then restart the app."
    )


def low_confidence_notice(probabilities: dict[str, float], threshold: float) -> str:
    """A plain-words warning when the top class is unlikely, empty otherwise."""
    label, probability = next(iter(probabilities.items()))
    if probability >= threshold:
        return ""
    return (
        f"**Not sure.** The best guess, {label}, has only {probability:.0%}. The model knows ten land-cover "
        "classes in 64x64-pixel Sentinel-2 RGB tiles (about 640 m across, seen from straight above); for a "
        "photo, a map or another sensor's image its answer is a guess, not a finding."
    )


def example_tiles(folder: str | os.PathLike | None) -> list[tuple[str, str]]:
    """(path, caption) of each example image in `folder`, by name; the caption is the file's stem."""
    if folder is None or not Path(folder).is_dir():
        return []
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in EXAMPLE_SUFFIXES)
    return [(str(p.resolve()), p.stem) for p in files]


def display_rgb(image: Any) -> np.ndarray:
    """The image as RGB uint8, shrunk to MAX_DISPLAY_SIDE when larger: the base the heatmap is drawn over."""
    rgb = to_rgb(image)
    if max(rgb.size) > MAX_DISPLAY_SIDE:
        rgb = rgb.copy()
        rgb.thumbnail((MAX_DISPLAY_SIDE, MAX_DISPLAY_SIDE))
    return np.asarray(rgb, dtype=np.uint8)


def file_path(image: str | dict[str, Any] | None) -> str | None:
    """The uploaded file's path.

    Events run with preprocess=False because gr.Image opens every upload with PIL before a handler
    runs, so an unreadable file would fail inside Gradio with its own message. Gradio still checks
    that the path is one of its uploads; the handler decodes the file with `imaging.open_image`.
    """
    path = image.get("path") if isinstance(image, dict) else image
    return path if isinstance(path, str) and path else None


def _error(message: str) -> gr.Error:
    # print_exception=False: an expected failure is the user's to fix; it needs no stack trace in the log.
    return gr.Error(message, print_exception=False)


def user_errors(handler: Callable) -> Callable:
    """Expected failures become gr.Error with their own message; anything else is logged and gets a short one.

    Only gr.Error text reaches API clients (other exceptions arrive as an opaque error), and no stack
    trace ever leaves the server.
    """
    @functools.wraps(handler)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return handler(*args, **kwargs)
        except gr.Error:
            raise
        except (ImageError, llm.LLMError) as e:
            raise _error(str(e)) from None
        except Exception:
            log.exception("%s failed", handler.__name__)
            raise _error(UNEXPECTED) from None
    return wrapper


class Handlers:
    """The page's event handlers for one predictor, or for none when no model could be loaded.

    Each returns plain data for its output components or raises gr.Error with a message for the
    user. Values arrive unprocessed (see `file_path`), so each checks its own arguments.
    """

    def __init__(self, predictor: Predictor | None, *, config: AppConfig, load_error: str | None = None,
                 ask: Callable[..., llm.SecondOpinion] = llm.ask):
        self.predictor = predictor
        self.config = config
        self.unavailable = no_model_message(load_error) if predictor is None else None
        self.ask = ask
        self.methods = list(cam_methods())
        self.examples = example_tiles(config.examples_dir)
        self.label_names = predictor.label_names if predictor is not None else []

    # The API endpoints: their parameter names and docstrings are what clients see.

    @user_errors
    def predict(self, image: str | dict[str, Any] | None, k: float = 5) -> dict[str, float]:
        """The k most likely land-cover classes of the image, with their probabilities."""
        predictor = self._model()
        count = self._k(k)
        return predictor.predict(self._open(image), count)

    @user_errors
    def gradcam(self, image: str | dict[str, Any] | None, class_name: str | None = TOP1,
                method: str | None = DEFAULT_METHOD, opacity: float | None = DEFAULT_OPACITY) -> Image.Image:
        """The heatmap of a class (default: the top-1) over the image, as a PNG."""
        alpha = self._opacity(opacity)
        shown = self._analyze(image, class_name, method)
        return heatmap_image(shown, alpha)

    @user_errors
    def gpt4o(self, image: str | dict[str, Any] | None, api_key: str | None = "", shown: Shown | None = None) -> str:
        """GPT-4o's class for the image beside the CNN's top-1, as Markdown. The key is used for this request only."""
        predictor = self._model()
        if api_key is not None and not isinstance(api_key, str):
            raise _error("api_key must be text: an OpenAI API key, or empty to use the server's own.")
        path = file_path(image)
        tile = self._open(image)
        # The key goes to this one call and nowhere else: not into state, logs or the answer.
        opinion = self.ask(tile, predictor.label_names, api_key=api_key or None)
        # The page already has this image's probabilities; an API call runs the CNN once.
        probabilities = shown.analysis.probabilities if shown is not None and shown.path == path \
            else predictor.predict(tile, 1)
        label, probability = next(iter(probabilities.items()))
        return llm.format_comparison(opinion, label, probability)

    # The page's own events.

    @user_errors
    def show(self, image: str | dict[str, Any] | None, k: float, class_name: str | None, method: str | None,
             opacity: float | None) -> tuple[dict[str, float] | None, str, Image.Image | None, Shown | None]:
        """Label, notice, heatmap and state for a new image, class or method: one pass of the network."""
        if not file_path(image):
            return None, "", None, None
        count, alpha = self._k(k), self._opacity(opacity)
        shown = self._analyze(image, class_name, method)
        probabilities = shown.analysis.probabilities
        return (shown.analysis.top(count), low_confidence_notice(probabilities, self.config.low_confidence),
                heatmap_image(shown, alpha), shown)

    @user_errors
    def relabel(self, k: float, shown: Shown | None) -> dict[str, float] | None:
        """The top-k of the current image again, from the kept probabilities."""
        return None if shown is None else shown.analysis.top(self._k(k))

    @user_errors
    def recolour(self, opacity: float, shown: Shown | None) -> Image.Image | None:
        """The current heatmap at another opacity, from the kept map."""
        return None if shown is None else heatmap_image(shown, self._opacity(opacity))

    def select_example(self, event: gr.SelectData) -> str:
        """The clicked example's file, which becomes the input image (and so runs the analysis)."""
        return self.examples[event.index][0]

    # Argument checks: API clients can send anything, and the components' own checks are skipped.

    def _model(self) -> Predictor:
        if self.predictor is None:
            raise _error(self.unavailable)
        return self.predictor

    def _open(self, image: str | dict[str, Any] | None) -> Any:
        return open_image(file_path(image), max_pixels=self.config.max_pixels)

    def _analyze(self, image: str | dict[str, Any] | None, class_name: str | None, method: str | None) -> Shown:
        predictor = self._model()
        target, method = self._class(class_name), self._method(method)
        tile = self._open(image)
        return Shown(file_path(image), display_rgb(tile), predictor.analyze(tile, target=target, method=method))

    def _k(self, k: Any) -> int:
        count = len(self.label_names)
        if k is None:
            return min(self.config.top_k, count)
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not 1 <= k <= count:
            raise _error(f"k must be a whole number from 1 to {count}, got {str(k)[:20]!r}.")
        return int(round(k))

    def _opacity(self, opacity: Any) -> float:
        if opacity is None:
            return DEFAULT_OPACITY
        if isinstance(opacity, bool) or not isinstance(opacity, (int, float)) or not 0 <= opacity <= 1:
            raise _error(f"opacity must be a number from 0 to 1, got {str(opacity)[:20]!r}.")
        return float(opacity)

    def _class(self, class_name: Any) -> str | None:
        if class_name in (None, "", TOP1):
            return None
        if class_name not in self.label_names:
            raise _error(f"Unknown class {str(class_name)[:40]!r}: choose {TOP1} or one of "
                         f"{', '.join(self.label_names)}.")
        return class_name

    def _method(self, method: Any) -> str:
        if method in (None, ""):
            return DEFAULT_METHOD
        if method not in self.methods:
            raise _error(f"Unknown Grad-CAM method {str(method)[:40]!r}: choose one of {', '.join(self.methods)}.")
        return method


def gpt4o_placeholder() -> str:
    """The GPT-4o tab before any click: how to turn it on when the server has no key."""
    if os.environ.get(ENV_OPENAI_KEY, "").strip():
        return "Press **Ask GPT-4o** for a second opinion on the current image."
    return llm.no_key_message()


def model_summary(predictor: Predictor | None) -> str:
    """One line on the served model, for the page's footer."""
    if predictor is None:
        return "No model loaded."
    height, width = predictor.data_config.input_size
    return f"Model: `{predictor.source}`, {len(predictor.label_names)} classes, input {height}x{width} px."


def build_demo(predictor: Predictor | None, *, config: AppConfig, load_error: str | None = None,
               ask: Callable[..., llm.SecondOpinion] = llm.ask) -> gr.Blocks:
    """The page and its three API endpoints (/predict, /gradcam, /gpt4o) for `predictor` (None: banner only)."""
    h = Handlers(predictor, config=config, load_error=load_error, ask=ask)
    # Without a model the slider only has to be valid: the page then says that nothing can be analysed.
    num_classes = len(h.label_names) or max(config.top_k, 2)
    # Every response leaves files in Gradio's cache; delete_cache removes those older than an hour, hourly.
    with gr.Blocks(title="EuroSAT land cover", delete_cache=(3600, 3600)) as demo:
        gr.Markdown(INTRO)
        if h.unavailable:
            gr.Markdown(f"⚠️ **{h.unavailable}**", elem_id="banner")
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="filepath", image_mode=None, sources=["upload", "clipboard"], height=360,
                                 label="Sentinel-2 RGB tile", elem_id="tile")
                gallery = gr.Gallery(h.examples, label="Examples: one EuroSAT test tile per class (click to analyse)",
                                     columns=5, height="auto", allow_preview=False, object_fit="contain",
                                     buttons=[], interactive=False, visible=bool(h.examples), elem_id="examples")
            with gr.Column():
                with gr.Tabs():
                    with gr.Tab("Prediction"):
                        label = gr.Label(label="Most likely classes", elem_id="prediction")
                        notice = gr.Markdown(elem_id="notice")
                        k = gr.Slider(1, num_classes, value=min(config.top_k, num_classes), step=1,
                                      label="Classes shown (k)")
                    with gr.Tab("Grad-CAM"):
                        cam = gr.Image(format="png", type="numpy", interactive=False, label="Heatmap",
                                       elem_id="cam")
                        gr.Markdown(CAM_LEGEND)
                        class_name = gr.Dropdown([TOP1, *h.label_names], value=TOP1, label="Class")
                        method = gr.Dropdown(h.methods, value=DEFAULT_METHOD, label="Method",
                                             info="EigenCAM ignores the class: it maps the features' main pattern.")
                        opacity = gr.Slider(0, 1, value=DEFAULT_OPACITY, step=0.05, label="Heatmap opacity")
                    with gr.Tab("GPT-4o"):
                        gr.Markdown(GPT_INTRO)
                        api_key = gr.Textbox(type="password", value="", label="OpenAI API key (optional)",
                                             placeholder="sk-...: used for this one request, never stored")
                        ask_button = gr.Button("Ask GPT-4o", variant="primary")
                        answer = gr.Markdown(gpt4o_placeholder(), elem_id="gpt4o")
        gr.Markdown(f"{model_summary(predictor)} Example tiles: EuroSAT (Helber et al., 2019), MIT licence.")
        shown = gr.State(None)

        # The network runs in one concurrency group, sized for the CPUs; the cheap redraws stay out of it.
        model_events = dict(preprocess=False, concurrency_id="model")
        # The API first: no triggers on the page, the same components for what clients send and receive.
        # (/predict must be event 0: Gradio's frontend checks event 0's arguments against /predict.)
        gr.on([], h.predict, inputs=[image, k], outputs=label, api_name="predict", **model_events)
        gr.on([], h.gradcam, inputs=[image, class_name, method, opacity], outputs=cam, api_name="gradcam",
              **model_events)
        ask_button.click(h.gpt4o, inputs=[image, api_key, shown], outputs=answer, api_name="gpt4o",
                         preprocess=False)
        gr.on([image.change, class_name.change, method.change], h.show,
              inputs=[image, k, class_name, method, opacity], outputs=[label, notice, cam, shown],
              api_visibility="private", **model_events)
        k.change(h.relabel, [k, shown], label, api_visibility="private", show_progress="hidden")
        opacity.change(h.recolour, [opacity, shown], cam, api_visibility="private", show_progress="hidden")
        gallery.select(h.select_example, None, image, api_visibility="private")
    return demo


def launch_kwargs(config: AppConfig) -> dict[str, Any]:
    """The arguments of `demo.launch` that the app needs; host and port come from GRADIO_SERVER_NAME/PORT."""
    allowed = [str(Path(config.examples_dir).resolve())] if config.examples_dir else None
    # run_history=False: Gradio would otherwise keep every request's inputs, the pasted key included,
    # in the visitor's browser storage.
    return dict(max_file_size=config.max_file_size, show_error=True, css=CSS, allowed_paths=allowed,
                run_history=False)
