"""A run pushed to the Hub and back: train.py --push-to-hub, the app and evaluate from the Hub, a second revision,
and every way a push fails, against the Hub stand-in (tests/fake_hub.py) through the real huggingface_hub client.

The uploads run with HF_HUB_DISABLE_XET=1 (fake_hub.hub_env and use_fake_hub set it): huggingface_hub 2.4 uploads
through Xet whenever hf_xet is installed, which it is, as a dependency; the real Hub speaks Xet, the stand-in
speaks the client's LFS path, and that variable makes the client take it. The product code never sets it.
"""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from PIL import Image

import train
from benchmarks.appserver import free_port, running_app
from conftest import REPO
from eurosat import hub
from eurosat.config import ENV_MODEL
from eurosat.publish import PushError, push
from eurosat.transforms import eval_transform
from fake_hub import FakeHub, hub_env, use_fake_hub
from test_train import read_metrics, subprocess_env, tiny_args

MODEL = "owner/eurosat-test"
TOKEN = "hf_fake_token_that_must_never_be_printed"
TILES = ("Forest", "River", "Industrial", "SeaLake")


def served_answers(server, downloads: Path) -> list:
    """What an app answers for each tile: /predict with every class, and the Grad-CAM PNG's pixels."""
    client = Client(server.url, verbose=False, download_files=str(downloads))
    answers = []
    for name in TILES:
        tile = handle_file(str(REPO / "examples" / f"{name}.jpg"))
        label = client.predict(tile, 10, api_name="/predict")
        heatmap_png, drawn = client.predict(tile, api_name="/gradcam")
        with Image.open(heatmap_png) as png:
            answers.append((label, drawn, np.asarray(png).tobytes()))
    return answers


def logits(source: str, tiles: torch.Tensor) -> torch.Tensor:
    """A checkpoint's logits on uint8 tiles: equal logits, equal weights."""
    checkpoint = hub.load(source)
    with torch.no_grad():
        return checkpoint.model(eval_transform(checkpoint.data_config)(tiles))


def test_train_push_serve_evaluate_and_push_again(tmp_path, mini_source, mini_tensors, untrained_checkpoint, hf_cache,
                                                  monkeypatch):
    with FakeHub(writable=True) as fake:
        # 1. A short train.py run that pushes when it ends, as a user runs it.
        run = tmp_path / "run"
        done = subprocess.run([sys.executable, str(REPO / "train.py"), *tiny_args(mini_source, run, epochs=1),
                               "--push-to-hub", MODEL], env={**subprocess_env(**hub_env(fake)), "HF_TOKEN": TOKEN},
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        first = re.search(rf"^pushed: {re.escape(fake.url)}/{MODEL}/commit/([0-9a-f]{{40}})$", done.stdout, re.M)[1]
        assert fake.head(MODEL) == first and TOKEN not in done.stdout + done.stderr
        # The client's LFS path, in order: every binary went to LFS storage, the commit named what it stored.
        sent = [(method, path) for method, path, _ in fake.requests]
        steps = [("POST", "/api/repos/create"), ("POST", "/api/validate-yaml"),
                 ("POST", f"/api/models/{MODEL}/preupload/main"), ("POST", f"/{MODEL}.git/info/lfs/objects/batch"),
                 ("PUT", next(p for m, p in sent if m == "PUT")), ("POST", f"/api/models/{MODEL}/commit/main")]
        assert [sent.index(step) for step in steps] == sorted(sent.index(step) for step in steps)
        [(_, _, operations)] = fake.commits
        assert sorted(op["value"]["path"] for op in operations if op["key"] == "lfsFile") == [
            "confusion_matrix.png", "errors.png", "model.safetensors", "risk_coverage.png"]
        uploaded = {p.name: p.read_bytes() for p in run.iterdir() if not p.name.startswith("train_state")}
        assert fake.files(MODEL, first) == uploaded

        # 2. The app with EUROSAT_MODEL=owner/name, online against the stand-in, answers as with the local folder.
        app_home = tmp_path / "app-hf-home"
        with running_app(log_dir=tmp_path / "hub-app", env={**hub_env(fake), "HF_HOME": str(app_home),
                                                            ENV_MODEL: MODEL}) as online:
            from_hub = served_answers(online, tmp_path / "hub-downloads")
        with running_app("--model", str(run), log_dir=tmp_path / "local-app") as local:
            from_folder = served_answers(local, tmp_path / "local-downloads")
        assert from_hub == from_folder
        assert f"/{MODEL}/resolve/main/model.safetensors" in fake.paths("GET")
        assert (app_home / "hub" / "models--owner--eurosat-test" / "refs" / "main").read_text() == first

        # 3. train.py evaluate on owner/name@<revision> reproduces the run's test top-1.
        use_fake_hub(monkeypatch, fake)
        assert train.main(["evaluate", "--model", f"{MODEL}@{first}", "--dataset", mini_source, "--output-dir",
                           str(tmp_path / "eval"), "--device", "cpu", "--no-tta"]) == 0
        assert read_metrics(tmp_path / "eval")["top1"] == read_metrics(run)["top1"]

        # 4. A second push is a new revision; the first one still serves the first weights.
        second = push(untrained_checkpoint, MODEL, token=TOKEN).rsplit("/", 1)[1]
        assert second != first and fake.head(MODEL) == second
        tiles = mini_tensors["test"][0][:8]
        assert torch.equal(logits(f"{MODEL}@{first}", tiles), logits(str(run), tiles))
        assert torch.equal(logits(MODEL, tiles), logits(str(untrained_checkpoint), tiles))
        assert not torch.equal(logits(f"{MODEL}@{first}", tiles), logits(MODEL, tiles))


def _state(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("failure, reason", [
    ("no token", "no Hugging Face token (set HF_TOKEN or run `hf auth login`)"),
    ("401", "the Hub refused the token (HTTP 401); check that it has write access to this repo"),
    ("403", "the Hub refused the token (HTTP 403); check that it has write access to this repo"),
    ("offline", "the Hub could not be reached (offline?)"),
    ("mid-upload", "uploading model.safetensors failed (the storage answered HTTP 403), so nothing was committed"),
], ids=["no-token", "401", "403", "offline", "mid-upload"])
def test_a_failed_push_says_why_keeps_the_run_folder_and_gives_the_retry(failure, reason, tmp_path, hf_cache,
                                                                          monkeypatch, untrained_checkpoint):
    folder = shutil.copytree(untrained_checkpoint, tmp_path / "run")
    (folder / "train_state.safetensors").write_bytes(b"resumable state")  # what a run folder also holds
    before = _state(folder)
    token = None if failure == "no token" else TOKEN
    with FakeHub(push_status=int(failure) if failure.isdigit() else 401, writable=failure == "mid-upload",
                 fail_upload=403) as fake:
        use_fake_hub(monkeypatch, fake)
        if failure == "offline":
            monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", f"http://127.0.0.1:{free_port()}")
        with pytest.raises(PushError) as err:
            push(folder, MODEL, token=token)
    message = str(err.value)
    assert message == (f"Could not upload {folder} to {MODEL!r}: {reason}. The local output is intact. "
                       f"Retry with: python train.py push {folder} {MODEL}")
    assert _state(folder) == before
    assert fake.commits == [] and fake.head(MODEL) is None
    if failure == "mid-upload":  # the repo was created and the weights' transfer had begun
        assert ("POST", "/api/repos/create") in [(m, p) for m, p, _ in fake.requests] and fake.paths("PUT")
    if failure in ("401", "403"):  # the token did go to the Hub, which refused it
        assert [h.get("authorization") for m, p, h in fake.requests if p == "/api/repos/create"] == [f"Bearer {TOKEN}"]


def test_the_product_never_turns_xet_off():
    """HF_HUB_DISABLE_XET is the tests' switch to the stand-in's LFS path; users upload through Xet."""
    sources = [REPO / "app.py", REPO / "train.py", *sorted((REPO / "eurosat").rglob("*.py"))]
    assert len(sources) > 20
    assert [p.name for p in sources if "HF_HUB_DISABLE_XET" in p.read_text()] == []


def test_a_model_card_is_validated_before_the_upload(tmp_path, hf_cache, monkeypatch, untrained_checkpoint):
    """upload_folder sends README.md to /api/validate-yaml first: a card the Hub refuses stops the push."""
    folder = shutil.copytree(untrained_checkpoint, tmp_path / "run")
    (folder / "README.md").write_text("---\n- not a mapping\n---\n# card\n")
    with FakeHub(writable=True) as fake:
        use_fake_hub(monkeypatch, fake)
        with pytest.raises(PushError) as err:
            push(folder, MODEL, token=TOKEN)
    assert "the Hub refused the front matter of README.md (the front matter must be a YAML mapping" in str(err.value)
    assert fake.commits == [] and not fake.paths("PUT")
    assert json.loads(fake.bodies[fake.paths().index("/api/validate-yaml")])["repoType"] == "model"
