"""The server side of the page: the request gate before Gradio's own processing, and two ASGI middlewares."""

from __future__ import annotations

import asyncio
import inspect
import json
import re

import gradio as gr

from ..uploads import UploadError
from .shared import Service, user_error

# What a visitor reads when the queue is full, instead of "Queue is full. Max size is 64 and size is 64.".
BUSY = ("This Space is busy: its queue of waiting requests is full. Nothing was queued for you; try again in a "
        "minute or two.")


class CheckedBlocks(gr.Blocks):
    """Blocks that check each request's arguments before Gradio's own processing, which would fail with its own
    text (a Python repr, a pydantic message) and a logged traceback: too few values, and file arguments that
    are not this app's uploads, get our messages."""

    served: Service

    def validate_inputs(self, block_fn, inputs):
        if getattr(block_fn.fn, "__name__", "") == "admit":
            return  # a heavy endpoint's share check at submission: it opens no file, the run's own gate does
        names = [n for n in inspect.signature(block_fn.fn).parameters if n not in ("request", "progress")]
        if len(inputs) < len(block_fn.inputs):
            wanted = [n for n, b in zip(names, block_fn.inputs) if not isinstance(b, gr.State)]
            raise user_error(f"This endpoint takes {len(wanted)} values ({', '.join(wanted)}) and the request had "
                             f"{len(inputs)}: send all of them, in this order.")
        files = [item for block, value in zip(block_fn.inputs, inputs)
                 if isinstance(block, (gr.Image, gr.File)) and value is not None
                 for item in (value if isinstance(value, list) else [value])]
        try:
            self.served.check_request(files)
        except UploadError as e:
            raise user_error(str(e)) from None
        super().validate_inputs(block_fn, inputs)


class NoDeepLinks:
    """ASGI middleware refusing Gradio's deep-link writer, which copies a session's inputs (a pasted key
    included) into a file under the temp folder that Gradio then serves."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].rstrip("/").endswith("/gradio_api/deep_link"):
            from starlette.responses import PlainTextResponse

            return await PlainTextResponse("Not Found", status_code=404)(scope, receive, send)
        await self.app(scope, receive, send)


# The requests that put an event in Gradio's queue: the page's and gradio_client's join, and the REST API's call.
_JOINS = re.compile(r"/gradio_api/(queue/join|call/[^/]+)/?$")


class JoinsInTurn:
    """ASGI middleware letting one request at a time join the queue.

    A heavy endpoint's validator counts the visitor's jobs in the queue; two submissions checked at
    once would both see the share free and both get in. Joining takes milliseconds (the work itself
    waits in the queue), so taking turns costs nothing a visitor notices.
    """

    def __init__(self, app):
        self.app = app
        self.turn = asyncio.Lock()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST" and _JOINS.search(scope["path"]):
            async with self.turn:
                return await self.app(scope, receive, send)
        await self.app(scope, receive, send)


class BusyMessage:
    """ASGI middleware giving a full queue's refusal (HTTP 503 on joining it, from the page, gradio_client or the
    REST API) a sentence a visitor can act on."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not _JOINS.search(scope["path"]):
            return await self.app(scope, receive, send)
        refused = False

        async def reword(message):
            nonlocal refused
            if message["type"] == "http.response.start" and message["status"] == 503:
                refused = True
                body = json.dumps({"detail": BUSY}).encode()
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"content-length"]
                await send({**message, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
            elif not refused:
                await send(message)

        await self.app(scope, receive, reword)
