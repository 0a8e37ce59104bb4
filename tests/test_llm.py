"""The GPT-4o second opinion, through the real openai SDK over HTTP to a local OpenAI-compatible server."""

import base64
import concurrent.futures
import io
import json
import logging
import threading
import traceback

import numpy as np
import pytest
from PIL import Image

from benchmarks.appserver import free_port
from eurosat.budget import Budget, LimitReached, Limits
from eurosat.llm import IMAGE_SIZE, LLMError, SecondOpinion, ask, format_comparison, image_data_url
from fake_openai import answer, completion, error, fake_openai  # noqa: F401  (fake_openai is a fixture)
from test_budget import Clock

KEY = "sk-test-SECRET-1234567890"


@pytest.fixture
def logs(caplog):
    """Every log record at DEBUG, the SDK's and the HTTP stack's included."""
    caplog.set_level(logging.DEBUG)
    for name in ("openai", "httpx", "httpx2", "httpcore", "httpcore2", "eurosat"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


@pytest.fixture(scope="module")
def forest_tile(mini_splits, label_names) -> Image.Image:
    labels = mini_splits.test[mini_splits.label_column]
    return mini_splits.test[labels.index(label_names.index("Forest"))][mini_splits.image_column]


@pytest.fixture
def server(fake_openai, monkeypatch):  # noqa: F811
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    return fake_openai


def assert_key_absent(logs, *texts: str) -> None:
    assert logs.records, "nothing was logged, so the log check would prove nothing"
    logged = "\n".join(f"{r.name} {r.getMessage()} {r.args!r}" for r in logs.records) + logs.text
    for text in (logged, *texts):
        assert KEY not in text
        assert "SECRET" not in text  # not even a fragment of it


def fail(tile, label_names, **kwargs) -> LLMError:
    with pytest.raises(LLMError) as info:
        ask(tile, label_names, **kwargs)
    err = info.value
    assert str(err) == err.message
    assert err.__cause__ is None and err.__context__ is None
    return err


def error_texts(err: Exception) -> tuple[str, ...]:
    return str(err), repr(err), "".join(traceback.format_exception(err))


def test_good_answer_and_the_request_sent(server, forest_tile, label_names, logs):
    server.reply(200, answer("Forest", 0.93, "Uniform dark-green canopy with no fields or roads."))

    opinion = ask(forest_tile, label_names)

    assert opinion == SecondOpinion("Forest", 0.93, "Uniform dark-green canopy with no fields or roads.", "gpt-4o")
    [request] = server.requests  # one click, one request: no retries
    assert request.method == "POST" and request.path == "/v1/chat/completions"
    assert request.authorization == f"Bearer {KEY}"  # the key was really sent, so its absence below means something
    body = request.body
    assert body["model"] == "gpt-4o"
    schema = body["response_format"]["json_schema"]["schema"]
    assert body["response_format"]["type"] == "json_schema"
    assert schema["properties"]["label"]["enum"] == label_names
    assert schema["required"] == ["label", "confidence", "rationale"]

    texts = [m["content"] for m in body["messages"] if isinstance(m["content"], str)]
    texts += [p["text"] for m in body["messages"] if isinstance(m["content"], list) for p in m["content"]
              if p["type"] == "text"]
    prompt = "\n".join(texts)
    assert len(label_names) == 10
    assert all(name in prompt for name in label_names)
    assert "Sentinel-2" in prompt and "10 m" in prompt

    [image_part] = [p for m in body["messages"] if isinstance(m["content"], list) for p in m["content"]
                    if p["type"] == "image_url"]
    url = image_part["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert image_part["image_url"]["detail"] == "low"  # one fixed-price image per click
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.format == "PNG" and sent.size == (IMAGE_SIZE, IMAGE_SIZE)
    # Enlarged by pixel repetition: every 8th pixel is the original tile, exactly.
    factor = IMAGE_SIZE // 64
    np.testing.assert_array_equal(np.asarray(sent.convert("RGB"))[::factor, ::factor], np.asarray(forest_tile))
    assert_key_absent(logs, repr(opinion), format_comparison(opinion, "Forest", 0.99), json.dumps(body))


def test_model_comes_from_openai_model_and_argument_beats_it(server, forest_tile, label_names, monkeypatch):
    monkeypatch.setenv("OPENAI_MODEL", "gpt-4o-mini")
    server.reply(200, answer("Forest", model="gpt-4o-mini"))
    assert ask(forest_tile, label_names).model == "gpt-4o-mini"
    assert ask(forest_tile, label_names, model="my-local-vlm").model == "my-local-vlm"
    assert [r.body["model"] for r in server.requests] == ["gpt-4o-mini", "my-local-vlm"]


def test_typed_key_beats_the_environment_key(server, forest_tile, label_names, logs):
    server.reply(200, answer("Forest"))
    typed = KEY.replace("test", "typed")
    ask(forest_tile, label_names, api_key=f"  {typed}\n")
    ask(forest_tile, label_names, api_key="   ")  # blank field: the Space secret is used
    assert [r.authorization for r in server.requests] == [f"Bearer {typed}", f"Bearer {KEY}"]


@pytest.mark.parametrize("typed", [None, "", "   "])
def test_no_key_explains_how_to_enable_it(fake_openai, forest_tile, label_names, typed, logs):  # noqa: F811
    err = fail(forest_tile, label_names, api_key=typed)
    assert err.kind == "no_key" and err.status is None
    assert "OPENAI_API_KEY" in err.message and "secret" in err.message
    assert "paste" in err.message and "that one request only" in err.message
    assert fake_openai.requests == []


def test_a_key_with_impossible_characters_is_refused_before_sending(server, forest_tile, label_names, logs):
    err = fail(forest_tile, label_names, api_key=KEY[:6] + "\u2019" + KEY[6:])
    assert err.kind == "auth" and "paste it again" in err.message
    assert server.requests == []
    assert_key_absent(logs, *error_texts(err))


# OpenAI's own 401 text echoes the key (masked); this one echoes all of it, so a pass-through would be caught.
FAILURES = [
    (401, error(f"Incorrect API key provided: {KEY}. Find your key at ...", code="invalid_api_key"),
     "auth", "rejected the API key (HTTP 401)"),
    (429, error(f"Rate limit reached for gpt-4o on key {KEY}", type="requests", code="rate_limit_exceeded"),
     "rate_limit", "rate limit for this key was reached (HTTP 429)"),
    (429, error("You exceeded your current quota.", type="insufficient_quota", code="insufficient_quota"),
     "rate_limit", "no quota left (HTTP 429, insufficient_quota). Check its plan and billing"),
    (500, error(f"The server had an error processing your request ({KEY})", type="server_error"),
     "server", "server error (HTTP 500)"),
    (503, "upstream connect error", "server", "server error (HTTP 503)"),
    (403, error("Project does not have access to model gpt-4o"), "rejected", "refused the request (HTTP 403)"),
    (404, error("The model `gpt-4o` does not exist", code="model_not_found"), "rejected",
     "'gpt-4o' was not found at this API (HTTP 404). Check OPENAI_MODEL"),
    (400, error("Invalid image"), "rejected", "rejected the request (HTTP 400)"),
]


@pytest.mark.parametrize("status, body, kind, phrase", FAILURES, ids=[f"{f[0]}-{f[2]}" for f in FAILURES])
def test_http_errors_get_specific_messages(server, forest_tile, label_names, logs, status, body, kind, phrase):
    server.reply(status, body)
    err = fail(forest_tile, label_names)
    assert (err.kind, err.status) == (kind, status)
    assert phrase in err.message
    assert len(server.requests) == 1  # no retries: one click is one billed request
    assert any(f"kind={kind} status={status}" in r.getMessage() for r in logs.records if r.name == "eurosat.llm")
    assert_key_absent(logs, *error_texts(err))


def test_a_reply_slower_than_the_timeout(server, forest_tile, label_names, logs):
    server.reply(200, answer("Forest"), delay=5.0)
    err = fail(forest_tile, label_names, timeout=0.5)
    assert err.kind == "timeout" and err.status is None
    assert err.message == "gpt-4o did not answer within the 0.5 s time limit. Try again later."
    assert_key_absent(logs, *error_texts(err))


@pytest.mark.parametrize("timeout", [0, -1, 30.5, 120, float("nan")])
def test_the_timeout_is_set_and_at_most_30_s(server, forest_tile, label_names, timeout):
    with pytest.raises(ValueError, match="at most 30 s"):
        ask(forest_tile, label_names, timeout=timeout)
    assert server.requests == []


def test_no_connection(forest_tile, label_names, monkeypatch, logs):
    port = free_port()  # a port that was free a moment ago: nothing listens there
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{port}/v1")
    err = fail(forest_tile, label_names, api_key=KEY)
    assert err.kind == "connection" and "OPENAI_BASE_URL" in err.message
    assert_key_absent(logs, *error_texts(err))


def test_a_refusal(server, forest_tile, label_names, logs):
    server.reply(200, completion(None, refusal="I'm sorry, I can't help with that request."))
    err = fail(forest_tile, label_names)
    assert err.kind == "refusal"
    assert err.message == "gpt-4o declined to classify this image: I'm sorry, I can't help with that request."
    assert_key_absent(logs, *error_texts(err))


def test_a_content_filter_stop_is_a_refusal(server, forest_tile, label_names):
    server.reply(200, completion(None, finish_reason="content_filter"))
    assert fail(forest_tile, label_names).kind == "refusal"


MALFORMED = [
    (completion('{"label": "Forest", "confidence": 0.9, "rationale": "green'), "it is not valid JSON"),
    (completion("Forest, I am fairly sure."), "it is not valid JSON"),
    (completion(None), "it is not valid JSON"),
    (completion('["Forest", 0.9]'), "it is not a JSON object"),
    (completion('{"label": "Forest", "confidence": 0.9}'), "it lacks rationale"),
    (completion('{"label": 3, "confidence": 0.9, "rationale": "x"}'), "label and rationale must be text"),
    (answer("Forest", confidence=87), "the confidence '87' is not a number from 0 to 1"),
    (answer("Forest", confidence="high"), "the confidence 'high' is not a number from 0 to 1"),
    (completion('{"label": "Forest", "confidence": true, "rationale": "x"}'), "the confidence 'True' is not"),
    ({"id": "x", "object": "chat.completion", "choices": []}, "reply had no message"),
    ({}, "reply had no message"),
    ("<html>Bad gateway</html>", "reply had no message"),
]


@pytest.mark.parametrize("body, phrase", MALFORMED, ids=[p for _, p in MALFORMED])
def test_malformed_replies(server, forest_tile, label_names, logs, body, phrase):
    server.reply(200, body)
    err = fail(forest_tile, label_names)
    assert err.kind == "malformed"
    assert phrase in err.message
    assert_key_absent(logs, *error_texts(err))


def test_a_label_outside_the_list_is_an_error(server, forest_tile, label_names, logs):
    server.reply(200, answer("Desert", 0.8))
    err = fail(forest_tile, label_names)
    assert err.kind == "off_list"
    assert "'Desert'" in err.message and "not one of the 10 classes" in err.message
    assert all(name in err.message for name in label_names)
    assert_key_absent(logs, *error_texts(err))


def test_case_and_spaces_do_not_make_a_label_off_list(server, forest_tile, label_names):
    server.reply(200, answer(" sealake ", 1))
    assert ask(forest_tile, label_names).label == "SeaLake"


def test_large_images_are_shrunk_to_fit():
    url = image_data_url(Image.new("RGBA", (1000, 600), (10, 200, 30, 255)))
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.size == (512, 307) and sent.mode == "RGB"
    assert sent.getpixel((100, 100)) == (10, 200, 30)


def test_format_comparison_agree_and_disagree():
    opinion = SecondOpinion("Forest", 0.9, "Dense canopy.", "gpt-4o")
    agree = format_comparison(opinion, "Forest", 0.973)
    assert agree.startswith("✅ **gpt-4o agrees with the CNN**")
    assert "| CNN (top-1) | Forest | 97.3% |" in agree and "| gpt-4o | Forest | 90%" in agree
    assert "Dense canopy." in agree and "⚠️" not in agree

    disagree = format_comparison(opinion, "Pasture", 0.61)
    assert disagree.startswith("⚠️ **gpt-4o disagrees with the CNN**")
    assert "| CNN (top-1) | Pasture | 61.0% |" in disagree and "| gpt-4o | Forest | 90%" in disagree
    assert "✅" not in disagree


def test_the_server_key_is_counted_before_sending_and_a_pasted_key_never(server, forest_tile, label_names, logs):
    server.reply(200, answer("Forest"))
    budget = Budget(Limits(per_client_per_hour=2, per_day=100), Clock())

    def counted(client: str):
        return lambda: budget.take(client)

    for _ in range(2):
        ask(forest_tile, label_names, before_send=counted("203.0.113.7"))
    with pytest.raises(LimitReached) as info:
        ask(forest_tile, label_names, before_send=counted("203.0.113.7"))
    assert "limit of 2 GPT-4o requests per hour" in str(info.value)
    assert len(server.requests) == 2  # the refused request was never sent

    typed = KEY.replace("test", "typed")
    for _ in range(3):  # a visitor's own key: past the server's limit, and not counted
        ask(forest_tile, label_names, api_key=typed, before_send=counted("203.0.113.7"))
    assert [r.authorization for r in server.requests] == [f"Bearer {KEY}"] * 2 + [f"Bearer {typed}"] * 3
    with pytest.raises(LimitReached):
        ask(forest_tile, label_names, before_send=counted("203.0.113.7"))
    ask(forest_tile, label_names, before_send=counted("198.51.100.2"))
    assert any("refused: per-client limit" in r.getMessage() for r in logs.records if r.name == "eurosat.budget")
    assert_key_absent(logs, *error_texts(info.value))


@pytest.mark.parametrize("limits, clients", [
    (Limits(per_client_per_hour=5, per_day=100), ["203.0.113.7"] * 16),
    (Limits(per_client_per_hour=5, per_day=7), [f"203.0.113.{i}" for i in range(16)]),
], ids=["per client", "per day"])
def test_concurrent_requests_never_overshoot(server, forest_tile, label_names, limits, clients):
    server.reply(200, answer("Forest"))
    budget = Budget(limits, Clock())
    start = threading.Barrier(len(clients))

    def one(client: str) -> str:
        start.wait()
        try:
            return ask(forest_tile, label_names, before_send=lambda: budget.take(client)).label
        except LimitReached:
            return "limit"

    with concurrent.futures.ThreadPoolExecutor(len(clients)) as pool:
        results = list(pool.map(one, clients))
    allowed = min(limits.per_day, limits.per_client_per_hour * len(set(clients)))
    assert sorted(results) == ["Forest"] * allowed + ["limit"] * (len(clients) - allowed)
    assert len(server.requests) == allowed
