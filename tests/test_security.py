"""The app as an attacker meets it: concurrent Grad-CAM of every method, raw payloads naming server files, the
owner's OpenAI key under load, keys left behind, bad checkpoint configs, and the MCP tools."""

import asyncio
import base64
import concurrent.futures
import json
import os
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from benchmarks.appserver import running_app
from conftest import REPO
from eurosat import hub
from eurosat.cam import cam_methods
from eurosat.imaging import open_image
from eurosat.inference import Predictor
from eurosat.uploads import NOT_AN_UPLOAD, PLAIN_STRING
from fake_openai import FakeOpenAI, answer

EXAMPLES = REPO / "examples"
KEY = "sk-test-SECRET-security-0123456789"
SERVER_KEY = "sk-test-SECRET-server-9876543210"
FILEDATA = {"_type": "gradio.FileData"}


@pytest.fixture(scope="module")
def server(trained_run, fake_llm, tmp_path_factory):
    """The app with the owner's key set and small limits on it, as a hosted Space would run."""
    env = {"OPENAI_BASE_URL": fake_llm.base_url, "OPENAI_API_KEY": SERVER_KEY,
           "EUROSAT_GPT4O_CLIENT_LIMIT": "3", "EUROSAT_GPT4O_DAILY_LIMIT": "100"}
    with running_app("--model", str(trained_run), log_dir=tmp_path_factory.mktemp("secure"), env=env) as app:
        yield app


@pytest.fixture(scope="module")
def temp_dir(server) -> Path:
    return Path(server.log_path.parent) / f"gradio-{server.url.rsplit(':', 1)[1]}"


def client_for(server, tmp_path) -> Client:
    return Client(server.url, verbose=False, download_files=str(tmp_path))


def raw_call(server, api: str, data: list, headers: dict | None = None, timeout: float = 60) -> str:
    """A request as any HTTP client can send it, without gradio_client; the text of the event stream."""
    posted = httpx.post(f"{server.url}/gradio_api/call/{api}", json={"data": data}, headers=headers or {},
                        timeout=timeout)
    if posted.status_code != 200:
        return f"HTTP {posted.status_code} {posted.text}"
    event = posted.json()["event_id"]
    # The stream sends heartbeats while a call waits, so a read timeout alone would wait for ever.
    deadline, lines = time.monotonic() + timeout, []
    with httpx.stream("GET", f"{server.url}/gradio_api/call/{api}/{event}", timeout=timeout) as response:
        for line in response.iter_lines():
            lines.append(line)
            if time.monotonic() > deadline:
                raise TimeoutError(f"/{api} gave no answer in {timeout} s")
    return "\n".join(lines)


def error_text(stream: str) -> str:
    """The message of an `event: error` in a call's event stream ('' if the call succeeded)."""
    lines = stream.splitlines()
    if "event: error" not in lines:
        return ""
    data = json.loads(lines[lines.index("event: error") + 1].removeprefix("data: "))
    return data["error"] if isinstance(data, dict) else str(data)


# 1. Isolation between requests.

def tiles_by_class() -> list[str]:
    return sorted(str(p) for p in EXAMPLES.glob("*.jpg"))


def heatmap(client: Client, tile: str, method: str) -> np.ndarray:
    path, _ = client.predict(handle_file(tile), method=method, api_name="/gradcam")
    return np.asarray(Image.open(path))


def assert_alive_and_clean(server) -> None:
    assert server.process.poll() is None
    assert "corrupted" not in server.output() and "Traceback" not in server.output()


@pytest.mark.parametrize("method", list(cam_methods()))
def test_concurrent_gradcam_of_each_method_equals_its_sequential_result(server, method, tmp_path):
    tiles = tiles_by_class()[:6]
    client = client_for(server, tmp_path / "seq")
    sequential = {tile: heatmap(client, tile, method) for tile in tiles}

    def one(tile: str) -> np.ndarray:
        return heatmap(client_for(server, tmp_path / Path(tile).stem), tile, method)

    with concurrent.futures.ThreadPoolExecutor(len(tiles) * 2) as pool:
        results = list(pool.map(one, tiles * 2))  # every tile twice, all at once
    for tile, got in zip(tiles * 2, results):
        assert np.array_equal(got, sequential[tile]), f"{method}: {Path(tile).name} got another request's map"
    assert_alive_and_clean(server)


def test_two_hooking_methods_in_pairs_keep_the_server_up(server, tmp_path):
    """The probe's crash: GradCAM++ and LayerCAM requests arriving in pairs, at once."""
    tiles = tiles_by_class()
    client = client_for(server, tmp_path / "seq")
    requests = [(tiles[i % len(tiles)], method) for i in range(30) for method in ("GradCAM++", "LayerCAM")]
    sequential = {request: heatmap(client, *request) for request in set(requests)}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda i: heatmap(client_for(server, tmp_path / str(i)), *requests[i]),
                                range(len(requests))))
    mixed = [request for request, got in zip(requests, results) if not np.array_equal(got, sequential[request])]
    assert mixed == []
    assert_alive_and_clean(server)


# 2. Only uploaded files are opened.

@pytest.mark.parametrize("value", [
    {"path": "/etc/passwd", "meta": FILEDATA}, {"path": "/etc/passwd"}, {"path": "/no/such/file.png", "meta": FILEDATA},
    {"path": "/no/such/file.png"}, {"path": "/dev/console", "meta": FILEDATA}, {"path": "/dev/zero"},
    {"path": str(EXAMPLES / ".." / "tests" / "data" / "eurosat-rgb-mini" / "README.md"), "meta": FILEDATA},
    {"path": "/proc/self/environ", "meta": FILEDATA},
])
def test_server_files_are_never_opened_and_exist_or_not_alike(server, value):
    for api in ("predict", "gradcam", "gpt4o"):
        data = [value, 3] if api == "predict" else [value]
        message = error_text(raw_call(server, api, data + ([] if api == "predict" else [None] * (
            3 if api == "gradcam" else 1))))
        assert message == NOT_AN_UPLOAD, (api, value, message)


def test_another_png_on_the_server_is_not_served_back(server, tmp_path):
    png = tmp_path / "secret.png"
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(png)
    for meta in (FILEDATA, None):
        value = {"path": str(png), **({"meta": meta} if meta else {})}
        assert error_text(raw_call(server, "gradcam", [value, None, None, None])) == NOT_AN_UPLOAD


def test_a_link_in_the_upload_folder_to_a_server_file_is_refused(server, temp_dir, tmp_path):
    folder = temp_dir / "planted"
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "tile.png"
    link.unlink(missing_ok=True)
    link.symlink_to(EXAMPLES / "Forest.jpg")
    assert error_text(raw_call(server, "predict", [{"path": str(link), "meta": FILEDATA}, 3])) == NOT_AN_UPLOAD
    shutil.rmtree(folder)


def test_plain_strings_and_missing_arguments_get_our_messages(server):
    assert error_text(raw_call(server, "predict", ["/etc/passwd", 3])) == PLAIN_STRING
    assert error_text(raw_call(server, "predict", ["examples/Forest.jpg", 3])) == PLAIN_STRING
    missing = error_text(raw_call(server, "predict", []))
    assert "takes 2 values (image, k)" in missing and "object at 0x" not in missing
    assert "Traceback" not in server.output()


def test_devices_and_fifos_cannot_block_the_workers(server, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening it for reading waits for a writer that never comes
    # More calls than the concurrency limit: blocking opens would take every worker.
    for value in [{"path": str(fifo)}, {"path": "/dev/console"}, {"path": str(fifo), "meta": FILEDATA}]:
        assert error_text(raw_call(server, "predict", [value, 3], timeout=30)) == NOT_AN_UPLOAD
    job = client_for(server, tmp_path).submit(handle_file(str(EXAMPLES / "Forest.jpg")), api_name="/predict")
    assert job.result(timeout=60)["label"]


# 3. The owner's OpenAI key has limits; a pasted key is never kept.

def test_the_owners_key_is_limited_per_client_and_a_pasted_key_is_not(server, fake_llm, tmp_path):
    client = client_for(server, tmp_path)
    tile = handle_file(str(EXAMPLES / "Forest.jpg"))
    fake_llm.requests.clear()
    for _ in range(3):
        assert "| gpt-4o | Forest | 80% (self-reported) |" in client.predict(tile, api_name="/gpt4o")
    with pytest.raises(Exception) as refused:
        client.predict(tile, api_name="/gpt4o")
    message = str(refused.value)
    assert "limit of 3 GPT-4o requests per hour" in message and "own OpenAI API key still works" in message
    assert len(fake_llm.requests) == 3 and all(r.authorization == f"Bearer {SERVER_KEY}" for r in fake_llm.requests)
    client.predict(tile, api_key=KEY, api_name="/gpt4o")  # a visitor's own key: not counted, not refused
    assert fake_llm.requests[-1].authorization == f"Bearer {KEY}"


def test_many_threads_on_the_owners_key_never_pass_the_limit_nor_hold_up_the_model(trained_run, tmp_path):
    llm = FakeOpenAI().start()
    llm.reply(200, answer("Forest", 0.8, "Dense canopy."), delay=1.0)
    env = {"OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": SERVER_KEY, "EUROSAT_GPT4O_CLIENT_LIMIT": "5"}
    try:
        with running_app("--model", str(trained_run), log_dir=tmp_path / "app", env=env) as app:
            tile = str(EXAMPLES / "Forest.jpg")
            finished = []

            def one(i: int) -> bool:
                try:
                    Client(app.url, verbose=False, download_files=str(tmp_path / str(i))).predict(
                        handle_file(tile), api_name="/gpt4o")
                    return True
                except Exception as e:
                    assert "limit" in str(e)
                    return False
                finally:
                    finished.append(i)

            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                outcomes = [pool.submit(one, i) for i in range(16)]
                for _ in range(1200):  # until GPT-4o calls are waiting on the slow upstream
                    if llm.requests:
                        break
                    time.sleep(0.05)
                assert llm.requests
                # The model's own endpoints have a queue of their own: /predict is answered while they wait.
                label = Client(app.url, verbose=False).predict(handle_file(tile), api_name="/predict")["label"]
                assert label and len(finished) < 16
                outcomes = [o.result() for o in outcomes]
            assert sum(outcomes) == 5 and len(llm.requests) == 5
    finally:
        llm.stop()


def test_a_pasted_key_is_never_written_anywhere(server, temp_dir, tmp_path):
    client = client_for(server, tmp_path)
    client.predict(handle_file(str(EXAMPLES / "River.jpg")), api_key=KEY, api_name="/gpt4o")
    deep = httpx.get(f"{server.url}/gradio_api/deep_link", params={"session_hash": client.session_hash}, timeout=30)
    assert deep.status_code == 404
    files = [p for p in temp_dir.rglob("*") if p.is_file()]
    assert files, "the test must see the uploads it made"
    assert [p for p in files if KEY.encode() in p.read_bytes()] == []
    assert KEY not in server.output() and SERVER_KEY not in server.output()


# 4. Bounded resources.

def test_the_cache_is_cleaned_on_a_schedule(trained_run):
    from eurosat.config import AppConfig
    from eurosat.ui import build_demo

    demo = build_demo(Predictor(hub.load(str(trained_run))), config=AppConfig())
    assert demo.delete_cache == (900, 900)


def test_a_big_jpeg_is_decoded_at_the_size_it_is_needed(tmp_path):
    big = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (3000, 4000, 3), dtype=np.uint8)).save(big, quality=80)
    small = open_image(big, reduce_to=(64, 64))
    assert max(small.size) <= 4 * 64 * 2 and min(small.size) >= 64 * 2 // 2


# 5. Checkpoint configs are checked before anything is built.

@pytest.mark.parametrize("edit, field", [
    (lambda c: {"label_names": {"0": "Forest"}}, "label_names"),
    (lambda c: {"label_names": None}, "label_names"),
    (lambda c: {"label_names": [None] + c["label_names"][1:]}, "label_names"),
    (lambda c: {"label_names": [{"name": name} for name in c["label_names"]]}, "label_names"),
    (lambda c: {"label_names": [c["label_names"][0]] * len(c["label_names"])}, "label_names"),
    (lambda c: {"model_args": {"checkpoint_path": "/etc/passwd"}}, "checkpoint_path"),
    (lambda c: {"pretrained_cfg": {"input_size": [3, 4096, 4096], "mean": [0.5] * 3, "std": [0.5] * 3}},
     "input_size"),
], ids=["labels-dict", "labels-null", "a-null-label", "dict-labels", "same-labels", "checkpoint_path", "input_size"])
def test_a_hostile_config_gets_the_banner_not_a_dead_process(untrained_checkpoint, tmp_path, edit, field):
    folder = tmp_path / "ckpt"
    shutil.copytree(untrained_checkpoint, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **edit(config)}))
    with running_app("--model", str(folder), log_dir=tmp_path / "logs") as app:
        page = httpx.get(f"{app.url}/config", timeout=30).json()
        banners = [c["props"]["value"] for c in page["components"] if c["props"].get("elem_id") == "banner"]
        assert len(banners) == 1 and field in banners[0]
        assert app.process.poll() is None


# 6. MCP.

def mcp_session(url: str, calls: list[tuple[str, dict]]):
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async def run():
        async with streamable_http_client(f"{url}/gradio_api/mcp/") as (read, write, _):
            async with ClientSession(read, write) as session:
                await session.initialize()
                tools = (await session.list_tools()).tools
                return tools, [await session.call_tool(name, args) for name, args in calls]
    return asyncio.run(run())


def test_mcp_tools_classify_a_tile_and_word_bad_input(server, trained_run):
    tile = (EXAMPLES / "Forest.jpg").read_bytes()
    data_url = "data:image/jpeg;base64," + base64.b64encode(tile).decode()
    bad_url = "data:image/png;base64," + base64.b64encode(b"this is not an image at all").decode()
    tools, (good, bad) = mcp_session(server.url, [("predict", {"image": data_url, "k": 3}),
                                                  ("predict", {"image": bad_url})])
    names = {t.name for t in tools}
    assert {"predict", "gradcam", "scene", "change"} <= names
    described = {t.name: t.description for t in tools}
    assert "possible" in described["change"] and "treat it as unknown" in described["change"]
    assert "Sentinel-2" in described["predict"] and "64x64" in described["predict"]
    expected = next(iter(Predictor(hub.load(str(trained_run))).predict(open_image(EXAMPLES / "Forest.jpg"), 1)))
    assert not good.isError and expected in good.content[0].text
    assert bad.isError and "not an image" in bad.content[0].text


def test_mcp_is_off_with_the_flag(trained_run, tmp_path):
    with running_app("--model", str(trained_run), "--no-mcp", log_dir=tmp_path / "logs") as app:
        assert httpx.get(f"{app.url}/gradio_api/mcp/schema", timeout=30).status_code == 404
