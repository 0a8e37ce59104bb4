"""The page: the tabs laid out, the events between them, and the launch settings."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import gradio as gr

from .. import llm
from ..budget import Budget, Limits
from ..config import AppConfig
from ..inference import Predictor
from ..radiometry import AUTO
from . import model_panel
from .batch import BatchTab
from .change import ChangeTab
from .gpt4o import Gpt4oTab, button_state, placeholder
from .gradcam import GradcamTab, heatmap_image
from .predict import PredictTab, describe, download, notice
from .scene import SceneTab
from .lanes import HEAVY, LIGHT
from .server import BusyMessage, CheckedBlocks, JoinsInTurn, NoDeepLinks
from .shared import RADIOMETRY_CHOICES, OnScreen, Service, message_of, user_errors, with_our_example

APP_DIR = Path(__file__).resolve().parents[2]
EXAMPLE_SUFFIXES = (".jpg", ".jpeg", ".png")
INTRO = (
    "# EuroSAT land cover\n"
    "Upload a Sentinel-2 RGB tile, or click an example, to see its land-cover class, the places the network "
    "looked at (Grad-CAM), and a second opinion from GPT-4o."
)
# Gradio shows small images at their own size (scale-down) and browsers smooth enlarged ones: a
# 64-pixel tile is enlarged to fit, pixel for pixel. Captions wrap instead of being cut off, and on a
# phone the answer comes straight after the image, before the gallery.
CSS = """
#tile img, #cam img, #examples img { image-rendering: pixelated; }
#tile .image-frame img, #cam .image-frame img { object-fit: contain; }
#examples .fixed-height { min-height: 0; }
#examples .caption-label { white-space: normal; overflow-wrap: anywhere; overflow: visible; text-overflow: clip;
                            max-width: 100%; font-size: 0.7rem; }
@media (max-width: 700px) { #tile { height: 240px !important; } }
"""


CACHE_SECONDS = 900
SHOW_ANSWER = ("() => { if (window.innerWidth < 700) "
               "document.getElementById('prediction')?.scrollIntoView({block: 'start'}); }")
# Gradio's label rounds each probability to a whole percent, so a runner-up at 0.3% would read "0%". It reads
# "<1%" instead. The text is changed in its own node, so the label's later updates still land there.
SMALL_SHARES = """() => {
  const fix = () => document.querySelectorAll('#prediction dd.confidence').forEach(dd => {
    if (dd.textContent.trim() !== '0%') return;
    const walker = document.createTreeWalker(dd, NodeFilter.SHOW_TEXT);
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      if (/^\\s*0%?\\s*$/.test(node.data)) { node.data = node.data.replace('0', '<1'); break; }
    }
  });
  new MutationObserver(fix).observe(document.body, {subtree: true, childList: true, characterData: true});
  fix();
}"""


def example_tiles(folder: str | os.PathLike | None) -> list[tuple[str, str]]:
    """(path, caption) of each example image in `folder`, by name; the caption is the file's stem."""
    if folder is None or not Path(folder).is_dir():
        return []
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in EXAMPLE_SUFFIXES)
    return [(str(p.resolve()), p.stem) for p in files]


class Page:
    """The events that span the tabs: a new image analysed once for all of them, and the cheap redraws."""

    def __init__(self, served: Service, budget: Budget | None = None,
                 ask: Callable[..., llm.SecondOpinion] = llm.ask):
        self.served = served
        self.predict = PredictTab(served)
        self.gradcam = GradcamTab(served)
        self.gpt4o = Gpt4oTab(served, budget or Budget(Limits()), ask)
        self.scene = SceneTab(served)
        self.change = ChangeTab(served)
        self.batch = BatchTab(served)
        self.examples = example_tiles(served.config.examples_dir)

    def show(self, image: Any, k: Any, class_name: Any, method: Any, opacity: Any, radiometry: Any = AUTO) -> tuple:
        """Every tab's output for a new image, class, method or radiometry, from one pass of the network.

        The GPT-4o answer is cleared: it belonged to the previous image. A failure is shown in the
        Prediction panel and in a toast, and the other outputs are cleared.
        """
        cleared = placeholder()
        if not image:
            return None, "", "", None, "", None, gr.update(visible=False, value=None), cleared
        try:
            self.served.model()
            count, alpha = self.served.k(k), self.served.opacity(opacity)
            shown = self.served.analyze(image, class_name, method, radiometry)
        except Exception as e:
            message = message_of(e, "show")
            gr.Warning(message)
            return None, f"⚠️ {message}", "", None, "", None, gr.update(visible=False, value=None), cleared
        probabilities = shown.analysis.probabilities
        predictor = self.served.model()
        text = notice(probabilities, predictor.checkpoint.notice_threshold, shown.source_size,
                      max(predictor.data_config.input_size))
        meaning = describe(probabilities) + (f" The file was {shown.reading.sentence()}." if shown.reading else "")
        return (shown.analysis.top(count), text, meaning,
                heatmap_image(shown, alpha), shown.analysis.target, shown,
                gr.update(visible=True, value=download(probabilities, shown.upload.name, self.served.outputs.new())),
                cleared)

    @user_errors
    def relabel(self, k: float, shown: OnScreen | None) -> dict[str, float] | None:
        """The top-k of the current image again, from the kept probabilities."""
        return None if shown is None else shown.analysis.top(self.served.k(k))

    @user_errors
    def recolour(self, opacity: float, shown: OnScreen | None):
        """The current heatmap at another opacity, from the kept map."""
        return None if shown is None else heatmap_image(shown, self.served.opacity(opacity))

    def select_example(self, event: gr.SelectData) -> str:
        """The clicked example's file, which becomes the input image (and so runs the analysis)."""
        return self.examples[event.index][0]


def build_demo(predictor: Predictor | None, *, config: AppConfig, load_error: str | None = None,
               ask: Callable[..., llm.SecondOpinion] = llm.ask, budget: Budget | None = None) -> gr.Blocks:
    """The page and its API endpoints (/predict, /gradcam, /gpt4o, /scene, /change, /batch) for `predictor` (None:
    banner only).

    `budget` limits the calls made with the server's OpenAI key (default: the limits in the environment).
    """
    budget = budget or Budget(Limits.from_env())
    served = Service(predictor, config=config, load_error=load_error, trusted_proxies=budget.limits.trusted_proxies)
    page = Page(served, budget, ask)
    model_facts = None if predictor is None else model_panel.facts(predictor.checkpoint, APP_DIR, predictor.views_note,
                                                                   predictor.backend_note)
    served_tta = bool(predictor and predictor.tta)
    # Every upload and response leaves files in Gradio's cache: they are kept for CACHE_SECONDS, checked as often,
    # so a file lives at most twice that; an expired upload gets "upload it again".
    with CheckedBlocks(title="EuroSAT land cover", delete_cache=(CACHE_SECONDS, CACHE_SECONDS)) as demo:
        demo.served, served.blocks = served, demo
        gr.Markdown(INTRO)
        gr.Markdown(model_panel.summary_line(model_facts, served_tta), elem_id="model-line")
        if served.unavailable:
            gr.Markdown(f"⚠️ **{served.unavailable}**", elem_id="banner")
        with gr.Tabs():
            with gr.Tab("One tile", elem_id="tab-tile"):
                with gr.Row():
                    with gr.Column():
                        image = with_our_example(gr.Image(
                            type="filepath", image_mode=None, sources=["upload", "clipboard"], height=360,
                            label="Sentinel-2 RGB tile", elem_id="tile"))
                        radiometry = gr.Dropdown(RADIOMETRY_CHOICES, value=AUTO, elem_id="tile-radiometry",
                                                 label="Radiometry (GeoTIFF, JPEG 2000)")
                    with gr.Column():
                        with gr.Tabs():
                            with gr.Tab("Prediction"):
                                prediction = page.predict.render()
                            with gr.Tab("Grad-CAM"):
                                cam = page.gradcam.render()
                            with gr.Tab("GPT-4o"):
                                gpt = page.gpt4o.render()
                gallery = gr.Gallery(page.examples, label="Examples: one EuroSAT test tile per class (click to "
                                     "analyse)", columns=10, height="auto", allow_preview=False, object_fit="contain",
                                     buttons=[], interactive=False, visible=bool(page.examples), elem_id="examples")
            with gr.Tab("Scene map", elem_id="tab-scene"):
                mapping = page.scene.render()
            with gr.Tab("Change", elem_id="tab-change"):
                compared = page.change.render()
            with gr.Tab("Batch", elem_id="tab-batch"):
                many = page.batch.render()
        with gr.Accordion("Model: what is served and how good it is", open=False, elem_id="model-panel"):
            model_panel.render(model_facts, served_tta)
        gr.Markdown("Example tiles: EuroSAT (Helber et al., 2019), MIT licence.")
        shown = gr.State(None)
        mapped = gr.State(None)

        # Two lanes for the network: tiles (light) and scenes and batches (heavy), so a tile never waits behind a map;
        # a heavy job also steps aside between its batches while a tile runs. The cheap redraws stay out of both, and
        # GPT-4o calls, which wait on the network, have a group of their own so they never hold up the model.
        light = dict(preprocess=False, concurrency_id=LIGHT, concurrency_limit=config.concurrency_limit)
        heavy = dict(preprocess=False, concurrency_id=HEAVY, concurrency_limit=config.heavy_concurrency)
        # The API first: no triggers on the page, the same components for what clients send and receive.
        # (/predict must be event 0: Gradio's frontend checks event 0's arguments against /predict.)
        gr.on([], page.predict.predict, inputs=[image, prediction["k"]], outputs=prediction["label"],
              api_name="predict", **light)
        gr.on([], page.gradcam.gradcam, inputs=[image, cam["class_name"], cam["method"], cam["opacity"]],
              outputs=[cam["cam"], cam["drawn"]], api_name="gradcam", **light)
        gr.on([], page.gpt4o.gpt4o, inputs=[image, gpt["api_key"]], outputs=gpt["answer"], api_name="gpt4o",
              preprocess=False, concurrency_id="gpt4o", concurrency_limit=config.concurrency_limit)
        gpt["button"].click(page.gpt4o.ask_on_page, inputs=[image, gpt["api_key"], shown],
                            outputs=[gpt["answer"], gpt["api_key"]], api_visibility="private", preprocess=False,
                            concurrency_id="gpt4o", concurrency_limit=config.concurrency_limit)
        gpt["api_key"].change(lambda key: gr.update(**button_state(key)), gpt["api_key"], gpt["button"],
                              api_visibility="private", show_progress="hidden", queue=False)
        gr.on([image.change, cam["class_name"].change, cam["method"].change, radiometry.change], page.show,
              inputs=[image, prediction["k"], cam["class_name"], cam["method"], cam["opacity"], radiometry],
              outputs=[prediction["label"], prediction["notice"], prediction["meaning"], cam["cam"], cam["drawn"],
                       shown, prediction["download"], gpt["answer"]],
              api_visibility="private", **light)
        prediction["k"].change(page.relabel, [prediction["k"], shown], prediction["label"], api_visibility="private",
                               show_progress="hidden")
        cam["opacity"].change(page.recolour, [cam["opacity"], shown], cam["cam"], api_visibility="private",
                              show_progress="hidden")
        gallery.select(page.select_example, None, image, api_visibility="private")
        # On a phone the answer sits above the gallery: bring it into view when an image arrives.
        image.change(None, js=SHOW_ANSWER)
        mapped_event = mapping["button"].click(
            page.scene.scene, inputs=[mapping["image"], mapping["mpp"], mapping["opacity"], mapping["radiometry"]],
            outputs=[mapping["map"], mapping["table"], mapping["csv"], mapping["geotiff"], mapping["note"], mapped],
            api_name="scene", validator=page.scene.admit, **heavy)
        mapping["stop"].click(None, cancels=[mapped_event], api_visibility="private")
        mapping["image"].change(page.scene.resolution, mapping["image"], mapping["mpp"], api_visibility="private",
                                preprocess=False, show_progress="hidden", queue=False)
        compared_event = compared["button"].click(
            page.change.change, inputs=[compared["before"], compared["after"], compared["before_date"],
                                        compared["after_date"], compared["radiometry"], compared["mpp"]],
            outputs=compared["outputs"], api_name="change", validator=page.change.admit, **heavy)
        compared["stop"].click(None, cancels=[compared_event], api_visibility="private")
        mapping["opacity"].change(page.scene.redraw, [mapping["opacity"], mapped], mapping["map"],
                                  api_visibility="private", show_progress="hidden")
        batch_event = many["button"].click(page.batch.batch, inputs=many["files"], outputs=[many["table"], many["csv"]],
                                           api_name="batch", validator=page.batch.admit, **heavy)
        many["stop"].click(None, cancels=[batch_event], api_visibility="private")
    return demo


def launch_kwargs(config: AppConfig) -> dict[str, Any]:
    """The arguments of `demo.launch` that the app needs; host and port come from GRADIO_SERVER_NAME/PORT."""
    allowed = [str(Path(config.examples_dir).resolve())] if config.examples_dir else None
    # run_history=False: Gradio would otherwise keep every request's inputs, the pasted key included,
    # in the visitor's browser storage.
    from starlette.middleware import Middleware

    return dict(max_file_size=config.max_file_size, show_error=True, css=CSS, js=SMALL_SHARES,
                allowed_paths=allowed, run_history=False, mcp_server=config.mcp,
                app_kwargs={"middleware": [Middleware(NoDeepLinks), Middleware(BusyMessage),
                                           Middleware(JoinsInTurn)]})
