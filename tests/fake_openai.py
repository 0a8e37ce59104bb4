"""A small OpenAI-compatible HTTP server on 127.0.0.1 for tests: canned replies, recorded requests.

The real `openai` SDK is pointed at it through OPENAI_BASE_URL, so the whole path over HTTP is
exercised. Import the `fake_openai` fixture into a test module (or a conftest) to use it.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest

from loopback import LoopbackServer


@dataclass
class Reply:
    """What the server answers to every request until the next `reply(...)`."""

    status: int = 200
    body: Any = None  # a dict/list is sent as JSON, a str as text/plain
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Recorded:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any  # parsed JSON, or the raw text where it was not JSON

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")


def completion(content: str | None = None, *, refusal: str | None = None, finish_reason: str = "stop",
               model: str = "gpt-4o") -> dict[str, Any]:
    """A chat.completion body with one choice, as the OpenAI API sends it."""
    message = {"role": "assistant", "content": content, "refusal": refusal}
    return {
        "id": "chatcmpl-fake", "object": "chat.completion", "created": 1_700_000_000, "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}],
        "usage": {"prompt_tokens": 400, "completion_tokens": 40, "total_tokens": 440},
    }


def answer(label: str, confidence: float = 0.9, rationale: str = "Dense, uniform dark-green canopy.",
           **kwargs: Any) -> dict[str, Any]:
    """A completion whose content is the structured answer the app asks for."""
    content = json.dumps({"label": label, "confidence": confidence, "rationale": rationale})
    return completion(content, **kwargs)


def error(message: str, *, type: str = "invalid_request_error", code: str | None = None) -> dict[str, Any]:
    """An error body in the OpenAI format."""
    return {"error": {"message": message, "type": type, "param": None, "code": code}}


class _Handler(BaseHTTPRequestHandler):
    fake: "FakeOpenAI"  # set on the subclass each server makes
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("content-length") or 0)).decode("utf-8", "replace")
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            body = raw
        fake = self.fake
        reply = fake.record(Recorded(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        # Wait on the stop event, not time.sleep, so stop() never waits for a slow reply to finish.
        if reply.delay and fake.stopping.wait(reply.delay):
            return
        is_text = isinstance(reply.body, str)
        data = (reply.body if is_text else json.dumps(reply.body)).encode()
        try:
            self.send_response(reply.status)
            self.send_header("content-type", "text/plain" if is_text else "application/json")
            self.send_header("content-length", str(len(data)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (its timeout); nothing to answer

    do_GET = do_POST

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean; requests are recorded instead


class FakeOpenAI(LoopbackServer):
    """An OpenAI-compatible server on 127.0.0.1 (a free port) that answers `self.current` to every request."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.current = Reply(500, error("fake_openai: no reply configured for this test", type="server_error"))
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        super().__init__(type("Handler", (_Handler,), {"fake": self}))

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def reply(self, status: int = 200, body: Any = None, *, delay: float = 0.0,
              headers: dict[str, str] | None = None) -> None:
        """Set the canned reply for the following requests."""
        with self._lock:
            self.current = Reply(status, body, delay, dict(headers or {}))

    def record(self, request: Recorded) -> Reply:
        with self._lock:
            self.requests.append(request)
            return self.current

    def stop(self) -> None:
        self.stopping.set()  # first, so that a delayed reply gives up instead of holding shutdown()
        super().stop()


@pytest.fixture
def fake_openai(monkeypatch: pytest.MonkeyPatch):
    """A running FakeOpenAI with OPENAI_BASE_URL pointing at it and no OpenAI key or model in the environment."""
    server = FakeOpenAI().start()
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    for name in ("OPENAI_API_KEY", "OPENAI_MODEL", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID", "OPENAI_CUSTOM_HEADERS"):
        monkeypatch.delenv(name, raising=False)
    yield server
    server.stop()
