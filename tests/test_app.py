"""The app as people run it: `python app.py` and its flags, and the three endpoints through gradio_client."""

import csv
import dataclasses
import json
import os
import shutil
from pathlib import Path
import subprocess
import sys
import urllib.request

import gradio as gr
import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

import app
from conftest import REPO
from eurosat import hub, llm
from eurosat.cam import overlay
from eurosat.config import BUNDLED_MODEL, ENV_MODEL, AppConfig
from eurosat.imaging import ImageError, open_image
from eurosat.ui.shared import no_model_message
from fake_openai import answer
from benchmarks.appserver import running_app

FOREST = str(REPO / "examples" / "Forest.jpg")
KEY = "sk-test-SECRET-app-0123456789"


@pytest.fixture(scope="module")
def server(trained_run, fake_llm, tmp_path_factory):
    with running_app("--model", str(trained_run), log_dir=tmp_path_factory.mktemp("app"),
                     env={"OPENAI_BASE_URL": fake_llm.base_url}) as running:
        yield running


@pytest.fixture(scope="module")
def client(server, tmp_path_factory) -> Client:
    return Client(server.url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))


@pytest.fixture
def broken_checkpoint(tmp_path, untrained_checkpoint):
    """A folder with a config.json but no weights: what a half-finished copy looks like."""
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text((untrained_checkpoint / "config.json").read_text())
    return folder


def app_error(call, *args, **kwargs) -> str:
    """The text of the error a client call raises: it must be a message, never a stack trace."""
    with pytest.raises(Exception) as info:
        call(*args, **kwargs)
    text = str(info.value)
    assert "Traceback" not in text and "upstream Gradio app has raised an exception" not in text
    return text


def test_help_documents_every_setting():
    """Every AppConfig field has its flag and its own help text in --help, and the environment is listed."""
    wide = {**os.environ, "COLUMNS": "300"}  # no line breaks inside the names looked for
    done = subprocess.run([sys.executable, "app.py", "--help"], cwd=REPO, env=wide, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    for field in dataclasses.fields(AppConfig):
        flag = "--" + field.metadata.get("flag", field.name).replace("_", "-")
        assert f"{flag} " in text, flag
        if field.type in ("bool", "bool | None"):
            assert f"--no-{flag[2:]}" in text, flag
        assert " ".join(field.metadata["help"].split()[:6]) in text, flag
    for name in [ENV_MODEL, "GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT", "OPENAI_API_KEY", BUNDLED_MODEL,
                 "EUROSAT_GPT4O_CLIENT_LIMIT", "EUROSAT_GPT4O_DAILY_LIMIT", "EUROSAT_TRUSTED_PROXIES", "HF_TOKEN"]:
        assert name in text, name


def test_importing_the_app_loads_nothing():
    code = "import sys, app; print(sorted({'torch', 'gradio', 'timm'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_model_comes_from_the_flag_then_the_environment(monkeypatch):
    monkeypatch.delenv(ENV_MODEL, raising=False)
    assert app.parse_config([]).model == str(REPO / BUNDLED_MODEL)
    monkeypatch.setenv(ENV_MODEL, "owner/from-env@v2")
    assert app.parse_config([]).model == "owner/from-env@v2"
    config = app.parse_config(["--model", "runs/quick", "--threads", "2", "--device", "auto", "--concurrency-limit",
                               "1", "--max-queue-size", "8", "--max-file-size", "2mb"])
    assert config == AppConfig(model="runs/quick", threads=2, device="auto", concurrency_limit=1, max_queue_size=8,
                               max_file_size="2mb", examples_dir=str(REPO / "examples"))


@pytest.fixture
def launches(monkeypatch):
    """gr.Blocks.launch replaced by a recorder: main() then returns instead of serving."""
    calls = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda demo, **kwargs: calls.append((demo, kwargs)))
    monkeypatch.delattr(app, "demo", raising=False)
    yield calls
    monkeypatch.delattr(app, "demo", raising=False)


def test_main_loads_once_and_launches_with_limits(monkeypatch, launches, trained_run):
    loads = []
    real_load = hub.load
    monkeypatch.setattr(hub, "load", lambda *args, **kwargs: loads.append(args) or real_load(*args, **kwargs))
    monkeypatch.setenv(ENV_MODEL, str(trained_run))
    app.main([])
    assert loads == [(str(trained_run),)]
    (demo, kwargs), = launches
    assert app.demo is demo
    assert kwargs["max_file_size"] == AppConfig().max_file_size and kwargs["show_error"] is True
    assert demo._queue.default_concurrency_limit == AppConfig().concurrency_limit
    assert demo._queue.max_size == AppConfig().max_queue_size
    assert not [b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "banner"]


def test_main_without_a_model_still_starts(launches, broken_checkpoint):
    app.main(["--model", str(broken_checkpoint)])
    (demo, _), = launches
    banners = [b.value for b in demo.blocks.values() if getattr(b, "elem_id", None) == "banner"]
    assert len(banners) == 1 and "missing model.safetensors" in banners[0] and ENV_MODEL in banners[0]


def test_readme_snippets(client, predictor, fake_llm, tmp_path, monkeypatch):
    """The README's gradio_client calls, as written there (only the URL and the key differ)."""
    import zipfile

    monkeypatch.chdir(tmp_path)
    shutil.copytree(REPO / "examples", "examples")
    tiles = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(Path("examples").glob("*.jpg"))]
    Image.fromarray(np.concatenate([np.concatenate(tiles[i:i + 5], axis=1) for i in (0, 5)])).save("scene.tif")
    Image.open("scene.tif").save("2018.tif")
    Image.fromarray(np.concatenate([np.concatenate(tiles[i:i + 5][::-1], axis=1) for i in (0, 5)])).save("2024.tif")
    shutil.copy("examples/River.jpg", "a.png")
    with zipfile.ZipFile("tiles.zip", "w") as archive:
        archive.write("examples/Forest.jpg", "tiles/forest.jpg")
        archive.write("examples/SeaLake.jpg", "tiles/more/sealake.jpg")
    tile = handle_file("examples/Forest.jpg")

    result = client.predict(tile, api_name="/predict")
    expected = predictor.predict(open_image(FOREST), 5)
    assert result["label"] == next(iter(expected))
    assert [c["label"] for c in result["confidences"]] == list(expected)
    assert [c["confidence"] for c in result["confidences"]] == pytest.approx(list(expected.values()), abs=1e-5)

    heatmap_png, drawn = client.predict(tile, api_name="/gradcam")
    assert drawn == next(iter(expected))
    with Image.open(heatmap_png) as png:
        assert (png.format, png.mode, png.size) == ("PNG", "RGB", (256, 256))
        pixels = np.asarray(png)
    rgb = np.asarray(Image.open(FOREST).convert("RGB"))
    expected_png = overlay(rgb, predictor.analyze(open_image(FOREST)).heatmap, 0.5)
    assert np.abs(pixels.astype(int) - expected_png.astype(int)).max() <= 2

    heatmap_png, drawn = client.predict(tile, class_name="River", method="GradCAM++", opacity=0.6, api_name="/gradcam")
    assert drawn == "River"
    with Image.open(heatmap_png) as png:
        river = np.asarray(png)
    expected_river = overlay(rgb, predictor.analyze(open_image(FOREST), target="River", method="GradCAM++").heatmap, 0.6)
    assert np.abs(river.astype(int) - expected_river.astype(int)).max() <= 2

    fake_llm.reply(200, answer("Forest", 0.8, "Dense canopy."))
    markdown = client.predict(tile, api_key=KEY, api_name="/gpt4o")
    label, probability = next(iter(expected.items()))
    opinion = llm.SecondOpinion("Forest", 0.8, "Dense canopy.", "gpt-4o")
    assert markdown == llm.format_comparison(opinion, label, probability)

    scene_map, table, cells_csv, geotiff, how = client.predict(handle_file("scene.tif"), api_name="/scene")
    assert Image.open(scene_map).size == (320, 128) and geotiff is None and "carries no georeferencing" in how
    assert sum(row[1] for row in table["data"]) == 10 and len(open(cells_csv).read().splitlines()) == 11

    change_map, maps, matrix, table, sankey, summary, cells_csv, matrix_csv, codes = client.predict(
        handle_file("2018.tif"), handle_file("2024.tif"), api_name="/change")
    assert Image.open(change_map).size == (320, 128) and len(maps) == 2 and codes is None
    rows = list(csv.DictReader(open(cells_csv)))
    assert len(rows) == 10 and {r["status"] for r in rows} <= {"unchanged", "changed", "possible"}
    # Each row of tiles reversed: the middle tile stays, so it can never count as changed.
    assert all(r["before"] != r["after"] for r in rows if r["status"] == "changed")
    assert all(r["status"] != "changed" and r["before"] == r["after"] for r in rows if r["col"] == "2")
    assert "possible change" in summary
    assert sum(int(r["cells"]) for r in csv.DictReader(open(matrix_csv))) == sum(r["status"] != "possible"
                                                                                   for r in rows)

    table, results_csv = client.predict([handle_file("a.png"), handle_file("tiles.zip")], api_name="/batch")
    assert sorted(row[0] for row in table["data"]) == ["a.png", "tiles/forest.jpg", "tiles/more/sealake.jpg"]
    assert open(results_csv).readline().startswith("file,label,probability")


def test_predict_top_k(client):
    result = client.predict(handle_file(FOREST), 10, api_name="/predict")
    confidences = [c["confidence"] for c in result["confidences"]]
    assert len(confidences) == 10 and sum(confidences) == pytest.approx(1.0, abs=1e-4)
    assert confidences == sorted(confidences, reverse=True)
    assert len(client.predict(handle_file(FOREST), k=2, api_name="/predict")["confidences"]) == 2


def test_opacity_zero_is_the_tile_and_one_is_the_map(client):
    def heatmap(opacity):
        path, _ = client.predict(handle_file(FOREST), class_name="River", method="EigenCAM", opacity=opacity,
                                 api_name="/gradcam")
        return np.asarray(Image.open(path)).astype(int)

    tile = np.asarray(Image.open(FOREST).convert("RGB")).repeat(4, axis=0).repeat(4, axis=1)
    clear, opaque = heatmap(0.0), heatmap(1.0)
    assert np.array_equal(clear, tile)
    assert np.abs(opaque - clear).mean() > 20


def test_bad_input_gets_a_message(client, tmp_path):
    text = tmp_path / "tile.png"
    text.write_text("this is not an image")
    with pytest.raises(ImageError) as decoding:
        open_image(str(text))
    for endpoint in ("/predict", "/gradcam", "/gpt4o"):
        assert str(decoding.value) in app_error(client.predict, handle_file(str(text)), api_name=endpoint)
    assert "Unknown class 'Bogus'" in app_error(client.predict, handle_file(FOREST), class_name="Bogus",
                                                 api_name="/gradcam")
    assert "Unknown Grad-CAM method" in app_error(client.predict, handle_file(FOREST), method="ScoreCAM",
                                                  api_name="/gradcam")


def test_uploads_over_the_limit_are_refused(client, tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + bytes(11 * 1024 * 1024))  # just over the default 10 MB
    assert "maximum file size" in app_error(client.predict, handle_file(str(big)), api_name="/predict")


def test_gpt4o_without_a_key_says_how_to_enable_it(client, fake_llm):
    fake_llm.requests.clear()
    assert llm.no_key_message() in app_error(client.predict, handle_file(FOREST), api_name="/gpt4o")
    assert fake_llm.requests == []


def test_gpt4o_key_is_used_once_and_never_echoed(client, fake_llm, server, predictor):
    fake_llm.requests.clear()
    fake_llm.reply(200, answer("River", 0.55, "A band of water."))
    markdown = client.predict(handle_file(FOREST), api_key=KEY, api_name="/gpt4o")
    label, probability = next(iter(predictor.predict(open_image(FOREST), 1).items()))
    opinion = llm.SecondOpinion("River", 0.55, "A band of water.", "gpt-4o")
    assert markdown == llm.format_comparison(opinion, label, probability)
    assert len(fake_llm.requests) == 1 and fake_llm.requests[0].authorization == f"Bearer {KEY}"
    fake_llm.reply(401, {"error": {"message": f"Incorrect API key provided: {KEY}", "type": "invalid_request_error",
                                   "code": "invalid_api_key"}})
    message = app_error(client.predict, handle_file(FOREST), api_key=KEY, api_name="/gpt4o")
    assert "rejected the API key" in message
    assert KEY not in markdown and KEY not in message and KEY not in server.output()


def test_server_log_has_no_stack_trace(client, server, tmp_path):
    # Failures a visitor can cause, sent by this test itself: a text file, a wrong k, a missing argument.
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    for call in (lambda: client.predict(handle_file(str(text)), api_name="/predict"),
                 lambda: client.predict(handle_file(FOREST), 99, api_name="/predict"),
                 lambda: client.predict(handle_file(FOREST), "no-such-class", api_name="/gradcam")):
        with pytest.raises(Exception) as failure:
            call()
        assert "upstream Gradio app has raised an exception" not in str(failure.value)
    client.predict(handle_file(FOREST), api_name="/predict")
    assert "Traceback" not in server.output() and server.process.poll() is None


def test_without_a_model_the_app_starts_and_every_endpoint_says_why(broken_checkpoint, tmp_path):
    with pytest.raises(hub.CheckpointError) as failure:
        hub.load(str(broken_checkpoint))
    expected = no_model_message(str(failure.value))
    with running_app("--model", str(broken_checkpoint), log_dir=tmp_path / "logs") as broken:
        client = Client(broken.url, verbose=False, download_files=str(tmp_path / "downloads"))
        for endpoint in ("/predict", "/gradcam", "/gpt4o"):
            assert expected in app_error(client.predict, handle_file(FOREST), api_name=endpoint)
        with urllib.request.urlopen(broken.url + "/config", timeout=30) as response:
            config = json.load(response)
        banners = [c["props"]["value"] for c in config["components"] if c["props"].get("elem_id") == "banner"]
        assert len(banners) == 1 and expected in banners[0]


def test_a_fresh_start_serves_the_bundled_model_and_labels_every_example(tmp_path, monkeypatch):
    """`python app.py` with no flag and no EUROSAT_MODEL: the bundled checkpoint, offline, right on all ten."""
    bundled = REPO / BUNDLED_MODEL
    assert sorted(p.name for p in bundled.iterdir()) == [
        "README.md", "config.json", "confusion_matrix.png", "errors.png", "metrics.json", "model.safetensors",
        "risk_coverage.png"]
    assert sum(p.stat().st_size for p in bundled.iterdir()) <= 10 * 1024 * 1024
    monkeypatch.delenv(ENV_MODEL, raising=False)
    with running_app(log_dir=tmp_path / "logs") as fresh:
        client = Client(fresh.url, verbose=False, download_files=str(tmp_path / "downloads"))
        for tile in sorted((REPO / "examples").glob("*.jpg")):
            assert client.predict(handle_file(str(tile)), api_name="/predict")["label"] == tile.stem
        assert "Traceback" not in fresh.output() and "huggingface.co" not in fresh.output()


def mosaic(tiles: list[np.ndarray], columns: int) -> np.ndarray:
    rows = [np.concatenate(tiles[i:i + columns], axis=1) for i in range(0, len(tiles), columns)]
    return np.concatenate(rows, axis=0)


def test_scene_needs_only_the_image_and_matches_predict_cell_by_cell(client, predictor, tmp_path):

    tiles = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((REPO / "examples").glob("*.jpg"))[:6]]
    path = tmp_path / "mosaic.png"
    Image.fromarray(mosaic(tiles, 3)).save(path)
    picture, table, cells_csv, geotiff, _ = client.predict(handle_file(str(path)), api_name="/scene")
    assert Image.open(picture).size == (192, 128) and geotiff is None
    rows = list(csv.DictReader(open(cells_csv)))
    assert [(int(r["x"]), int(r["y"])) for r in rows] == [(64 * (i % 3), 64 * (i // 3)) for i in range(6)]
    for row, tile in zip(rows, tiles):
        expected = predictor.predict(Image.fromarray(tile), 1)
        assert row["label"] == next(iter(expected))
        assert float(row["probability"]) == pytest.approx(next(iter(expected.values())), abs=1e-4)
    assert sum(r[1] for r in table["data"]) == 6


def test_batch_labels_every_file_by_its_own_name(client, predictor, tmp_path):

    files = sorted((REPO / "examples").glob("*.jpg"))[:4]
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    table, results = client.predict([handle_file(str(f)) for f in [*files, text]], api_name="/batch")
    rows = {r["file"]: r for r in csv.DictReader(open(results))}
    assert set(rows) == {f.name for f in files} | {"notes.png"}
    assert "holds text" in rows["notes.png"]["error"] and table["data"][0][0] == "notes.png"
    for f in files:
        assert rows[f.name]["label"] == next(iter(predictor.predict(open_image(f), 1)))


def test_every_setting_can_come_from_the_environment_as_a_space_sets_it(monkeypatch):
    monkeypatch.setenv("EUROSAT_HEAVY_SHARE", "3")
    monkeypatch.setenv("EUROSAT_TTA", "false")
    monkeypatch.setenv("EUROSAT_TTA_BUDGET_MS", "250.5")
    config = app.parse_config([])
    assert (config.heavy_share, config.tta, config.tta_budget_ms) == (3, False, 250.5)
    assert app.parse_config(["--heavy-share", "1", "--tta"]).heavy_share == 1  # a flag wins
    assert app.parse_config(["--tta"]).tta is True


@pytest.mark.parametrize("name, value, says", [
    ("EUROSAT_HEAVY_SHARE", "two", "EUROSAT_HEAVY_SHARE is 'two'; it must be a whole number."),
    ("EUROSAT_TTA", "maybe", "EUROSAT_TTA is 'maybe'; it must be true or false."),
    ("EUROSAT_DEVICE", "tpu", "EUROSAT_DEVICE is 'tpu'; choose one of: auto, cpu, cuda."),
])
def test_an_unreadable_setting_stops_the_app_with_its_name(name, value, says):
    done = subprocess.run([sys.executable, "app.py"], cwd=REPO, env={**os.environ, name: value}, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and says in done.stderr and "Traceback" not in done.stderr
