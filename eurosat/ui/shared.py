"""What every tab shares: the served model, the image on screen, argument checks, and errors as messages."""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable

import gradio as gr
import numpy as np
from PIL import Image

from ..budget import Limits, client_id
from ..cam import CAM_METHODS, DEFAULT_METHOD
from ..config import BUNDLED_MODEL, ENV_MODEL, AppConfig
from ..errors import UserError
from ..imaging import open_image, to_rgb
from ..inference import Analysis, Predictor
from ..radiometry import AUTO, LABELS, Reading
from ..uploads import Upload, uploaded_file
from .lanes import HeavyLane, current_event_alive, queued_heavy_jobs
from .outputs import Outputs

log = logging.getLogger(__name__)

# The uploads the request gate checked, for the handler of the same request. Gradio runs the gate and the
# handler in one task, and the handler's worker thread runs in a copy of that task's context.
_CHECKED: ContextVar[dict[str, Upload]] = ContextVar("checked_uploads", default={})

TOP1 = "top-1"
RADIOMETRY_CHOICES = [(label, value) for value, label in LABELS.items()]  # (shown, sent) for the menus
DEFAULT_OPACITY = 0.5
# Heatmaps of big photos are drawn over a copy this size: the map itself only has the model's input
# resolution, and a full-size PNG would be megabytes to send back for no extra detail.
MAX_DISPLAY_SIDE = 512
UNEXPECTED = ("Something went wrong while handling this request. The details were logged on the server; "
              "try another image, or try again later.")


# What the "Use via API" page and the MCP schema show as an example file: one of the repository's tiles.
EXAMPLE_TILE = "examples/Forest.jpg"


def with_our_example(component: gr.Image | gr.File) -> gr.Image | gr.File:
    """The component, with one of our tiles as the example that the "Use via API" page and MCP schema show.

    Gradio's own are a photo of a bus and a PDF. Set on the instance: a subclass of a component would
    make Gradio write a .pyi stub into this package at import time.
    """
    single = getattr(component, "file_count", "single") == "single"
    payload = {"path": EXAMPLE_TILE, "meta": {"_type": "gradio.FileData"}}
    component.example_value = lambda: EXAMPLE_TILE if single else [EXAMPLE_TILE]
    component.example_payload = lambda: payload if single else [payload]
    return component


@dataclass
class OnScreen:
    """The current image's analysis, kept per session so the k and opacity sliders redraw without the network."""

    upload: Upload
    source_size: tuple[int, int]  # the file's own (width, height) in pixels
    rgb: np.ndarray  # the tile as displayed under the heatmap (uint8, H x W x 3)
    analysis: Analysis
    reading: Reading | None = None  # how a raster's values became true colour; None for an 8-bit image


def user_error(message: str) -> gr.Error:
    # print_exception=False: an expected failure is the user's to fix; it needs no stack trace in the log.
    return gr.Error(message, print_exception=False)


def message_of(error: Exception, where: str = "a request") -> str:
    """The user's message of a failure: its own text when it was written for users (a UserError, or a
    gr.Error raised here), else a short apology, with the failure and its stack trace logged for the operator."""
    if isinstance(error, gr.Error):
        return str(error.message)
    if isinstance(error, UserError):
        return str(error)
    log.error("%s failed", where, exc_info=error)
    return UNEXPECTED


def user_errors(handler: Callable) -> Callable:
    """Every failure of `handler` becomes a gr.Error with its `message_of`.

    Only gr.Error text reaches API clients (other exceptions arrive as an opaque error), and no stack
    trace ever leaves the server.
    """
    @functools.wraps(handler)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return handler(*args, **kwargs)
        except Exception as e:
            raise user_error(message_of(e, handler.__name__)) from None
    return wrapper


def no_model_message(error: str | None) -> str:
    """What failed and what to do, shown in the banner and returned by every API call while no model is loaded."""
    return (
        f"No model is loaded, so nothing can be analysed. {error or ''} To fix it, set {ENV_MODEL} (or pass "
        f"--model) to a checkpoint folder or a Hub id such as owner/name, or restore the bundled model in "
        f"{BUNDLED_MODEL}; train one with `python train.py --preset cpu --output-dir runs/cpu`. Then restart the app."
    )


def display_rgb(image: Any) -> np.ndarray:
    """The image as RGB uint8, shrunk to MAX_DISPLAY_SIDE when larger: the base the heatmap is drawn over."""
    rgb = to_rgb(image)
    if max(rgb.size) > MAX_DISPLAY_SIDE:
        rgb = rgb.copy()
        rgb.thumbnail((MAX_DISPLAY_SIDE, MAX_DISPLAY_SIDE))
    return np.asarray(rgb, dtype=np.uint8)


def upload_roots(config: AppConfig) -> list[str]:
    """Where Gradio keeps this app's uploads (and MCP's decoded data URLs), and the examples folder it serves."""
    from gradio.utils import get_upload_folder

    return [get_upload_folder()] + ([config.examples_dir] if config.examples_dir else [])


def client_of(request: gr.Request | None, limits: Limits) -> str:
    """Who a request comes from, for the limits on the server's OpenAI key: an address the visitor cannot choose."""
    if request is None:
        return "unknown"
    host = request.client.host if request.client else None
    return client_id(host, request.headers.get("x-forwarded-for"), limits.trusted_proxies)


def max_upload_bytes(config: AppConfig) -> int:
    from gradio.utils import _parse_file_size

    return int(_parse_file_size(config.max_file_size))


class Service:
    """The model being served, or why none is, and the checks every handler applies to what clients send.

    Handlers run with preprocess=False (gr.Image would open every upload with PIL first, so an
    unreadable file would fail inside Gradio with its own message), so each value arrives as the
    client sent it and is checked here.
    """

    def __init__(self, predictor: Predictor | None, *, config: AppConfig, load_error: str | None = None,
                 trusted_proxies: int = 0):
        self.predictor = predictor
        self.config = config
        self.unavailable = no_model_message(load_error) if predictor is None else None
        self.label_names = predictor.label_names if predictor is not None else []
        self.methods = list(CAM_METHODS)
        self.roots = upload_roots(config)
        self.max_bytes = max_upload_bytes(config)
        self.outputs = Outputs()
        self.lane = HeavyLane(share=config.heavy_share, trusted_proxies=trusted_proxies)
        self.blocks: gr.Blocks | None = None  # the page, once built: its queue holds the heavy jobs waiting

    def model(self) -> Predictor:
        if self.predictor is None:
            raise user_error(self.unavailable)
        return self.predictor

    def upload(self, value: Any) -> Upload:
        """The upload a request's file argument names: only Gradio's own uploads (or the examples) are opened.

        Each file is checked once per request: the request gate (`CheckedBlocks.validate_inputs`)
        checks it before Gradio processes the request, and the handler reuses that result.
        """
        path = value.get("path") if isinstance(value, dict) else None
        checked = _CHECKED.get().get(os.path.abspath(path)) if isinstance(path, str) and path else None
        return checked or uploaded_file(value, roots=self.roots, max_bytes=self.max_bytes)

    def check_request(self, values: list[Any]) -> None:
        """The gate's check of a request's file arguments, kept for its handler (see `upload`)."""
        uploads = [self.upload(value) for value in values]
        _CHECKED.set({upload.path: upload for upload in uploads})

    def open(self, upload: Upload, *, radiometry: Any = AUTO) -> Image.Image:
        """The uploaded image, decoded safely into a tile-sized copy, a raster's values read as `radiometry`.

        Its `info["source_size"]` is the file's own (width, height), whatever was decoded.
        """
        size = self.predictor.data_config.input_size if self.predictor is not None else (64, 64)
        return open_image(upload.path, max_pixels=self.config.max_pixels, reduce_to=size, radiometry=radiometry)

    def k(self, k: Any) -> int:
        """k as a whole number of classes: 3 and "3" are accepted, 2.5 and "three" are not."""
        count = len(self.label_names)
        if k is None or k == "":
            return min(self.config.top_k, count)
        value = k
        if isinstance(k, str):
            value = int(k.strip()) if k.strip().lstrip("+-").isdigit() else None
        elif isinstance(k, float) and k.is_integer():
            value = int(k)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= count:
            raise user_error(f"k must be a whole number from 1 to {count}, got {str(k)[:20]!r}.")
        return value

    def opacity(self, opacity: Any) -> float:
        if opacity is None:
            return DEFAULT_OPACITY
        if isinstance(opacity, bool) or not isinstance(opacity, (int, float)) or not 0 <= opacity <= 1:
            raise user_error(f"opacity must be a number from 0 to 1, got {str(opacity)[:20]!r}.")
        return float(opacity)

    def class_name(self, name: Any) -> str | None:
        """A class by name in any letter case; None for the top-1 class."""
        if name is None or (isinstance(name, str) and name.strip().casefold() in ("", TOP1)):
            return None
        found = _by_name(name, self.label_names)
        if found is None:
            raise user_error(f"Unknown class {str(name)[:40]!r}: choose {TOP1} or one of "
                             f"{', '.join(self.label_names)}.")
        return found

    def method(self, method: Any) -> str:
        """A Grad-CAM method by name in any letter case."""
        if method is None or method == "":
            return DEFAULT_METHOD
        found = _by_name(method, self.methods)
        if found is None:
            raise user_error(f"Unknown Grad-CAM method {str(method)[:40]!r}: choose one of {', '.join(self.methods)}.")
        return found

    def analyze(self, image: Any, class_name: Any = None, method: Any = None, radiometry: Any = AUTO) -> OnScreen:
        """One pass of the network over an uploaded image: probabilities and the heatmap, kept for redraws."""
        predictor = self.model()
        target, method = self.class_name(class_name), self.method(method)
        upload = self.upload(image)
        tile = self.open(upload, radiometry=radiometry)
        with self.lane.tile():
            analysis = predictor.analyze(tile, target=target, method=method)
        return OnScreen(upload, tile.info["source_size"], display_rgb(tile), analysis, tile.info.get("reading"))

    def classify_tile(self, tile: Image.Image, k: int) -> dict[str, float]:
        """The top-k of one decoded tile, as light work: heavy jobs step aside for it."""
        with self.lane.tile():
            return self.model().predict(tile, k)

    def admit(self, inputs: int, request: gr.Request | None, weight: int = 1) -> list[dict[str, Any]]:
        """The validator of a heavy endpoint, run when a job of `weight` (`lanes.WEIGHTS`) is submitted: a visitor
        past the share is refused with a sentence saying why (on the first input), and nothing of it is queued."""
        visitor = self.lane.visitor(request)
        refusal = self.lane.refusal(visitor, queued_heavy_jobs(self.blocks, self.lane, visitor), weight)
        return [gr.validate(refusal is None, refusal or "")] + [gr.validate(True, "")] * (inputs - 1)

    @contextmanager
    def heavy(self, kind: str, request: gr.Request | None, progress: Any, unit: str) -> Iterator[Callable]:
        """Around a heavy job: the progress callback for its work, which also steps aside for tiles between
        batches and stops the job when its client has gone (Stop, a closed page, a dropped connection)."""
        with self.lane.job(self.lane.visitor(request), kind) as job:
            def report(done: int, total: int) -> None:
                self.lane.step(job, done, total, current_event_alive)
                left = job.seconds_left()
                progress((done, total), unit=unit, desc=f"{kind}: {done:,} of {total:,} {unit}" + (
                    f", about {max(1, round(left))} s left" if left is not None else ""))
            yield report
            log.info("%s of %s: %d %s in %.1f s", kind, job.visitor, job.total, unit, time.monotonic() - job.started)


class Tab:
    """One tab of the page: its endpoint handlers and components, over the served model."""

    def __init__(self, served: Service):
        self.served = served


def _by_name(name: Any, names: list[str]) -> str | None:
    if not isinstance(name, str):
        return None
    return {n.casefold(): n for n in names}.get(name.strip().casefold())
