"""Fair serving under load, against a running app: tiles beside maps, each visitor's share, Stop, a full queue."""

import concurrent.futures
import threading
import time

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from benchmarks.appserver import running_app
from conftest import REPO
from eurosat.ui.lanes import HeavyLane, Stopped
from eurosat.ui.server import BUSY

FOREST = str(REPO / "examples" / "Forest.jpg")
SHARE_REFUSED = "this server's limit per visitor"


@pytest.fixture(scope="module")
def scene_file(class_tiles, tmp_path_factory) -> str:
    """A 4096 x 4096 mosaic of real tiles (4,096 cells): a map that takes a while, as a JPEG under the upload cap."""
    tiles = [t.permute(1, 2, 0).numpy() for t in class_tiles]
    rows = [np.concatenate([tiles[(r + c) % len(tiles)] for c in range(64)], axis=1) for r in range(64)]
    path = tmp_path_factory.mktemp("scenes") / "mosaic.jpg"
    Image.fromarray(np.concatenate(rows, axis=0)).save(path, quality=85)
    return str(path)


@pytest.fixture(scope="module")
def server(trained_run, tmp_path_factory):
    # One torch thread per request and a small queue, so that a full queue can be reached in a test.
    with running_app("--model", str(trained_run), "--threads", "1", "--max-queue-size", "6",
                     log_dir=tmp_path_factory.mktemp("lanes")) as running:
        yield running


def client_of(server, tmp_path) -> Client:
    return Client(server.url, verbose=False, download_files=str(tmp_path))


def finished_maps(server) -> int:
    return server.output().count("scene map of ")


def wait_for(condition, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_tiles_are_answered_while_a_map_runs(server, scene_file, tmp_path):
    heavy, light = client_of(server, tmp_path / "a"), client_of(server, tmp_path / "b")
    job = heavy.submit(handle_file(scene_file), api_name="/scene")
    wait_for(lambda: job.status().progress_data)  # the map is running, cell by cell
    answered = []
    for _ in range(5):
        result = light.predict(handle_file(FOREST), 3, api_name="/predict")
        answered.append((len(result["confidences"]), job.done()))
    assert answered == [(3, False)] * 5  # every tile answered, each before the map was done
    table = job.result(timeout=300)[1]
    assert sum(row[1] for row in table["data"]) == 4096


def test_a_third_map_of_one_visitor_is_refused_at_once_and_never_runs(server, scene_file, tmp_path):
    client = client_of(server, tmp_path)
    before = finished_maps(server)
    first = client.submit(handle_file(scene_file), api_name="/scene")
    wait_for(lambda: first.status().progress_data)
    second = client.submit(handle_file(scene_file), api_name="/scene")
    wait_for(lambda: second.status().code.name == "IN_QUEUE")
    started = time.monotonic()
    with pytest.raises(Exception) as refused:
        client.predict(handle_file(scene_file), api_name="/scene")
    assert time.monotonic() - started < 10  # refused when it was sent, not after the others
    assert "You already have a scene map running" in str(refused.value) and SHARE_REFUSED in str(refused.value)
    first.result(timeout=300), second.result(timeout=300)
    time.sleep(1)
    assert finished_maps(server) == before + 2  # the third never ran


def test_a_change_counts_as_two_scenes_in_the_share(server, scene_file, tmp_path):
    client = client_of(server, tmp_path)
    job = client.submit(handle_file(scene_file), handle_file(scene_file), api_name="/change")
    wait_for(lambda: job.status().progress_data)
    with pytest.raises(Exception) as refused:
        client.predict(handle_file(scene_file), api_name="/scene")
    assert "You already have a change map running" in str(refused.value) and SHARE_REFUSED in str(refused.value)
    summary = job.result(timeout=300)[5]
    assert "**Changed**: 0 cells" in summary  # the same mosaic twice: nothing confidently changed
    wait_for(lambda: "change map of " in server.output())


def test_a_stopped_map_ends_early_and_the_next_one_runs(server, scene_file, tmp_path):
    client = client_of(server, tmp_path)
    job = client.submit(handle_file(scene_file), api_name="/scene")
    wait_for(lambda: job.status().progress_data)
    job.cancel()
    wait_for(lambda: "stopped after" in server.output())
    assert "scene map of" in server.output().split("stopped after")[0].rsplit("\n", 1)[-1]
    small = str(tmp_path / "small.png")
    Image.open(FOREST).resize((128, 128)).save(small)
    table = client.predict(handle_file(small), api_name="/scene")[1]
    assert sum(row[1] for row in table["data"]) == 4


def test_a_burst_of_raw_submissions_past_the_share_gets_the_sentence(server, scene_file):
    uploaded = httpx.post(f"{server.url}/gradio_api/upload", files={"files": open(scene_file, "rb")}, timeout=60)
    path = uploaded.json()[0]
    payload = {"data": [{"path": path, "meta": {"_type": "gradio.FileData"}}, 10, 0.5, "auto"]}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: httpx.post(f"{server.url}/gradio_api/call/scene", json=payload, timeout=60),
                                range(4)))
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200, 200, 422, 422]
    for answer in answers:
        if answer.status_code == 422:
            assert SHARE_REFUSED in answer.text
    wait_for(lambda: server.output().count("scene map of ") >= 2, timeout=300)
    assert "Traceback" not in server.output()


def test_a_full_queue_says_so_in_a_sentence(server, scene_file):
    # 40 tiles at once against a queue of 6 (the light lane runs 2): some are refused, with our words.
    path = httpx.post(f"{server.url}/gradio_api/upload", files={"files": open(scene_file, "rb")},
                      timeout=60).json()[0]
    payload = {"data": [{"path": path, "meta": {"_type": "gradio.FileData"}}, 3]}

    def one(i: int) -> int:
        answer = httpx.post(f"{server.url}/gradio_api/call/predict", json=payload, timeout=60)
        if answer.status_code == 503:
            assert answer.json()["detail"] == BUSY
        return answer.status_code

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(one, range(40)))
    assert set(statuses) <= {200, 503} and 503 in statuses and 200 in statuses


def test_a_heavy_step_waits_for_tiles_and_stops_for_a_gone_client():
    lane = HeavyLane()
    with lane.job("203.0.113.7", "scene map") as job:
        events = []
        tile_done = threading.Event()

        def tile():
            with lane.tile():
                time.sleep(0.3)
                events.append("tile")
            tile_done.set()

        worker = threading.Thread(target=tile)
        worker.start()
        time.sleep(0.05)
        lane.step(job, 16, 64)
        events.append("step")
        worker.join()
        assert events == ["tile", "step"]  # the batch waited for the tile
        assert lane.refusal("203.0.113.7", queued=2).startswith("You already have a scene map running (16 of 64")
        assert lane.refusal("203.0.113.7", queued=1) is None
        with pytest.raises(Stopped):
            lane.step(job, 32, 64, alive=lambda: False)
    assert lane.refusal("203.0.113.7", queued=2).startswith("You already have 2 heavy jobs starting or waiting")
