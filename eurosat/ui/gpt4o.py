"""The GPT-4o tab and /gpt4o: a second opinion from a vision LLM beside the CNN's top-1."""

from __future__ import annotations

import os
from typing import Any, Callable

import gradio as gr

from .. import llm
from ..budget import Budget
from .shared import Service, OnScreen, Tab, client_of, message_of, user_errors

INTRO = (
    "GPT-4o looks at the same tile and names one of the classes, shown beside the CNN's top-1. "
    "Each click is one paid OpenAI request; nothing is sent until you click."
)
NEEDS_KEY = "Paste an OpenAI API key to ask"
ASK = "Ask GPT-4o"


def server_has_key() -> bool:
    return bool(os.environ.get(llm.ENV_OPENAI_KEY, "").strip())


def placeholder() -> str:
    """The tab before any click: what the button does, or how to turn it on when the server has no key."""
    if server_has_key():
        return "Press **Ask GPT-4o** for a second opinion on the current image."
    return llm.no_key_message()


def button_state(api_key: str | None) -> dict[str, Any]:
    """The button is live when a key is there to use; otherwise it says what it needs."""
    ready = server_has_key() or bool((api_key or "").strip())
    return {"interactive": ready, "value": ASK if ready else NEEDS_KEY}


class Gpt4oTab(Tab):
    """The /gpt4o endpoint, the page's own Ask event, and the tab's components."""

    def __init__(self, served: Service, budget: Budget, ask: Callable[..., llm.SecondOpinion] = llm.ask):
        super().__init__(served)
        self.budget = budget
        self.ask = ask

    @user_errors
    def gpt4o(self, image: Any, api_key: str | None = "", shown: OnScreen | None = None,
              request: gr.Request | None = None) -> str:
        """A second opinion from GPT-4o on a Sentinel-2 RGB tile, beside the CNN's top-1, as Markdown.

        api_key: your own OpenAI key for this one request (never stored); empty uses the server's key,
        which is limited per client and per day.
        """
        predictor = self.served.model()
        if api_key is not None and not isinstance(api_key, str):
            raise llm.LLMError("auth", "api_key must be text: an OpenAI API key, or empty to use the server's own.")
        upload = self.served.upload(image)
        tile = self.served.open(upload)
        # The key goes to this one call and nowhere else: not into state, logs or the answer.
        client = client_of(request, self.budget.limits)
        opinion = self.ask(tile, predictor.label_names, api_key=api_key or None,
                           before_send=lambda: self.budget.take(client))
        # The page already has this image's probabilities; an API call runs the CNN once.
        probabilities = shown.analysis.probabilities if shown is not None and shown.upload.path == upload.path \
            else self.served.classify_tile(tile, 1)
        label, probability = next(iter(probabilities.items()))
        return llm.format_comparison(opinion, label, probability)

    def ask_on_page(self, image: Any, api_key: str | None, shown: OnScreen | None,
                    request: gr.Request) -> tuple[str, str]:
        """The page's Ask: the answer, or the failure in the tab itself as well as in a toast; the key field
        is emptied either way, so the key is not kept in the session."""
        try:
            return self.gpt4o(image, api_key, shown, request), ""
        except gr.Error as e:
            gr.Warning(message_of(e))
            return f"⚠️ {message_of(e)}", ""

    def render(self) -> dict[str, Any]:
        gr.Markdown(INTRO)
        api_key = gr.Textbox(type="password", value="", label="OpenAI API key (optional)",
                             placeholder="sk-...: used for this one request, never stored")
        button = gr.Button(**button_state(""), variant="primary", elem_id="ask")
        answer = gr.Markdown(placeholder(), label="GPT-4o's answer", elem_id="gpt4o")
        return {"api_key": api_key, "button": button, "answer": answer}
