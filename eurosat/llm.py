"""The optional GPT-4o second opinion: one vision call per request, a validated answer, specific errors."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable

from PIL import Image

from .errors import UserError
from .imaging import to_rgb

log = logging.getLogger(__name__)

ENV_OPENAI_KEY = "OPENAI_API_KEY"
ENV_OPENAI_MODEL = "OPENAI_MODEL"
DEFAULT_OPENAI_MODEL = "gpt-4o"

MAX_TIMEOUT = 30.0
# 512 px at detail "low" is one fixed-price 85-token image, and it already shows every pixel of a
# 64 px tile as an 8x8 block: "high" would cost 3x or more for no information the tile has.
IMAGE_SIZE = 512
IMAGE_DETAIL = "low"
# Room for the JSON and a short rationale; it also caps what one click can cost.
MAX_OUTPUT_TOKENS = 300



class LLMError(UserError):
    """A second opinion that could not be had. `message` is for users and never contains the key.

    `kind` is one of: no_key, auth (401 or an unusable key), rate_limit (429), server (5xx), timeout,
    connection, rejected (other 4xx), refusal, malformed, off_list. `status` is the HTTP status, if any.
    """

    def __init__(self, kind: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind, self.message, self.status = kind, message, status


@dataclass(frozen=True)
class SecondOpinion:
    """The model's answer after validation: `label` is always one of the class names."""

    label: str
    confidence: float
    rationale: str
    model: str



def no_key_message() -> str:
    """What the tab says while no key is set: how to turn the feature on."""
    return (
        "The GPT-4o second opinion is off because no OpenAI API key is set. To turn it on, the Space owner "
        f"adds an `{ENV_OPENAI_KEY}` secret in the Space settings, or you paste your own key into the key "
        "field of this tab: a pasted key is used for that one request only and is never stored."
    )


def prompt(label_names: Sequence[str]) -> str:
    """The instructions: what the tile is, the classes, and the reply format."""
    return (
        "You are a remote-sensing analyst. The image is one EuroSAT tile: a Sentinel-2 true-colour "
        "(RGB: bands B4, B3, B2) image of 64x64 pixels at 10 m per pixel, so about 640 m across, seen "
        "from straight above. Small tiles are enlarged by repeating pixels, so a blocky look is expected. "
        "Classify the dominant land cover as exactly one of these classes: "
        f"{', '.join(label_names)}.\n"
        'Reply with JSON only: {"label": one of the classes, spelled exactly as above; "confidence": your '
        'probability that the label is right, from 0 to 1; "rationale": one short sentence on the visual evidence}.'
    )


def response_format(label_names: Sequence[str]) -> dict:
    """Structured outputs: the API itself then only lets the model name one of the classes."""
    schema = {
        "type": "object",
        "properties": {
            "label": {"type": "string", "enum": list(label_names)},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "rationale": {"type": "string"},
        },
        "required": ["label", "confidence", "rationale"],
        "additionalProperties": False,
    }
    return {"type": "json_schema", "json_schema": {"name": "land_cover", "strict": True, "schema": schema}}


def image_data_url(image: Image.Image, size: int = IMAGE_SIZE) -> str:
    """A PNG data URL of the image fitted to `size` px.

    Small tiles are enlarged by a whole factor with nearest-neighbour: every pixel sent is a real
    sensor value, with no blur or ringing from interpolation for the model to read as texture.
    """
    image = to_rgb(image)
    factor = size // max(image.size)
    if factor >= 2:
        image = image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
    elif max(image.size) > size:
        image = image.copy()
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def parse_reply(content: str | None, label_names: Sequence[str], model: str) -> SecondOpinion:
    """Validate the reply text ourselves: OpenAI-compatible servers may ignore the schema."""
    def malformed(what: str) -> LLMError:
        return LLMError("malformed", f"{model}'s reply could not be used: {what}. Try again.")

    try:
        data = json.loads(content or "")
    except json.JSONDecodeError:
        raise malformed("it is not valid JSON") from None
    if not isinstance(data, dict):
        raise malformed("it is not a JSON object")
    missing = [k for k in ("label", "confidence", "rationale") if k not in data]
    if missing:
        raise malformed(f"it lacks {', '.join(missing)}")
    label, confidence, rationale = data["label"], data["confidence"], data["rationale"]
    if not isinstance(label, str) or not isinstance(rationale, str):
        raise malformed("label and rationale must be text")
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 <= confidence <= 1:
        raise malformed(f"the confidence {str(confidence)[:20]!r} is not a number from 0 to 1")
    # A different case or stray spaces still name the class; anything else is not an answer.
    canonical = {name.casefold(): name for name in label_names}.get(label.strip().casefold())
    if canonical is None:
        raise LLMError("off_list", f"{model} answered {label[:40]!r}, which is not one of the {len(label_names)} "
                                   f"classes ({', '.join(label_names)}), so the answer was discarded.")
    return SecondOpinion(canonical, float(confidence), " ".join(rationale.split())[:500], model)


def _api_error(err: Exception, model: str, timeout: float) -> LLMError:
    """Our own message for each SDK failure: SDK text can echo part of the key (401), so none is passed on."""
    import openai

    if isinstance(err, openai.APITimeoutError):
        return LLMError("timeout", f"{model} did not answer within the {timeout:g} s time limit. Try again later.")
    if isinstance(err, openai.APIConnectionError):
        return LLMError("connection", "Could not reach the OpenAI API. Check the network connection, or "
                                      "OPENAI_BASE_URL if it points at another OpenAI-compatible server.")
    if not isinstance(err, openai.APIStatusError):
        return LLMError("malformed", f"The reply from the OpenAI API could not be read ({type(err).__name__}).")
    status = err.status_code
    if status == 401:
        return LLMError("auth", "OpenAI rejected the API key (HTTP 401). Check that the key you pasted, "
                                f"or the `{ENV_OPENAI_KEY}` secret, is correct and still active.", status)
    if status == 429 and err.code == "insufficient_quota":
        return LLMError("rate_limit", "The OpenAI account of this key has no quota left (HTTP 429, "
                                      "insufficient_quota). Check its plan and billing.", status)
    if status == 429:
        return LLMError("rate_limit", "OpenAI's rate limit for this key was reached (HTTP 429), or its quota "
                                      "is used up. Wait a minute and try again; if it persists, check billing.", status)
    if status >= 500:
        return LLMError("server", f"The OpenAI API had a server error (HTTP {status}). This is on their side: "
                                  "try again in a moment.", status)
    if status == 403:
        return LLMError("rejected", f"OpenAI refused the request (HTTP 403): this key has no access to "
                                    f"{model!r}, or the region is not supported.", status)
    if status == 404:
        return LLMError("rejected", f"The model {model!r} was not found at this API (HTTP 404). "
                                    f"Check {ENV_OPENAI_MODEL}.", status)
    return LLMError("rejected", f"The OpenAI API rejected the request (HTTP {status}): {model!r} may not "
                                "accept images or JSON-schema answers.", status)


def ask(image: Image.Image, label_names: Sequence[str], *, api_key: str | None = None, model: str | None = None,
        timeout: float = MAX_TIMEOUT, before_send: Callable[[], None] | None = None) -> SecondOpinion:
    """Ask the model which of `label_names` the tile shows: one chat completion with the image.

    The key is the typed `api_key` if one was given, else OPENAI_API_KEY; it lives only in this
    call's client. Just before a request on OPENAI_API_KEY is sent, `before_send()` runs (the app
    counts it against its limits there, and a UserError it raises stops the request); a typed key is
    never counted. The endpoint is OPENAI_BASE_URL, read by the SDK. Raises LLMError on any failure.
    """
    import openai

    if not (isinstance(timeout, (int, float)) and 0 < timeout <= MAX_TIMEOUT):  # NaN fails too
        raise ValueError(f"timeout must be more than 0 and at most {MAX_TIMEOUT:g} s, got {timeout!r}")
    typed = (api_key or "").strip()
    key = typed or os.environ.get(ENV_OPENAI_KEY, "").strip()
    model = model or os.environ.get(ENV_OPENAI_MODEL) or DEFAULT_OPENAI_MODEL
    try:
        if not key:
            raise LLMError("no_key", no_key_message())
        # A pasted key with a typo'd character would fail inside the HTTP layer with its own text.
        if not (key.isascii() and key.isprintable() and " " not in key):
            raise LLMError("auth", "The API key contains spaces or characters that a key never has; paste it again.")
        messages = [
            {"role": "system", "content": prompt(label_names)},
            {"role": "user", "content": [
                {"type": "text", "text": f"Which of these classes is this tile: {', '.join(label_names)}?"},
                {"type": "image_url", "image_url": {"url": image_data_url(image), "detail": IMAGE_DETAIL}},
            ]},
        ]
        if before_send is not None and not typed:
            before_send()
        # A client per call, closed after it, so nothing keeps a typed key; no retries, so one click is
        # one billed request and the wait is bounded by the timeout.
        with openai.OpenAI(api_key=key, timeout=timeout, max_retries=0) as sdk:
            try:
                completion = sdk.chat.completions.create(
                    model=model, messages=messages, response_format=response_format(label_names),
                    max_completion_tokens=MAX_OUTPUT_TOKENS)
            except openai.OpenAIError as err:
                raise _api_error(err, model, timeout) from None
        choice = (getattr(completion, "choices", None) or [None])[0]
        message = getattr(choice, "message", None)
        if message is None:
            raise LLMError("malformed", f"{model}'s reply had no message. Try again.")
        if getattr(message, "refusal", None) or getattr(choice, "finish_reason", None) == "content_filter":
            reason = " ".join((message.refusal or "content filter").split())[:200]
            raise LLMError("refusal", f"{model} declined to classify this image: {reason}")
        opinion = parse_reply(message.content, label_names, model)
    except LLMError as err:
        err.__context__ = None  # drop the SDK error for good: its text can echo part of the key
        log.warning("second opinion failed: kind=%s status=%s model=%s", err.kind, err.status, model)
        raise
    log.info("second opinion from %s: %s (%.2f)", model, opinion.label, opinion.confidence)
    return opinion


def format_comparison(opinion: SecondOpinion, cnn_label: str, cnn_prob: float) -> str:
    """Markdown of the model's answer beside the CNN's top-1, with an agree/disagree marker."""
    agree = opinion.label == cnn_label
    verdict = (f"✅ **{opinion.model} agrees with the CNN**" if agree
               else f"⚠️ **{opinion.model} disagrees with the CNN**: check the tile yourself")
    return (
        f"{verdict}\n\n"
        "| | Label | Confidence |\n|---|---|---|\n"
        f"| CNN (top-1) | {cnn_label} | {cnn_prob:.1%} |\n"
        f"| {opinion.model} | {opinion.label} | {opinion.confidence:.0%} (self-reported) |\n\n"
        f"**Why ({opinion.model}):** {opinion.rationale}"
    )
