"""`python -m eurosat.space` against the Hub stand-in, then the published Space booted from its own snapshot.

The uploads run with HF_HUB_DISABLE_XET=1 (fake_hub.hub_env and use_fake_hub set it): huggingface_hub 2.4 uploads
through Xet whenever hf_xet is installed, which it is; the stand-in speaks the client's LFS path instead, and that
variable makes the client take it. The product code never sets it (test_publish.py checks).
"""

import json
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
from gradio_client import Client, handle_file

from benchmarks.appserver import running_app
from conftest import REPO
from eurosat import hub, space
from eurosat.config import BUNDLED_MODEL, ENV_MODEL, SpaceConfig
from eurosat.imaging import open_image
from eurosat.inference import Predictor
from eurosat.publish import PushError, push
from fake_hub import FakeHub, hub_env, use_fake_hub
from space_config import front_matter
from test_readme import check_space_card
from test_train import subprocess_env

SPACE = "owner/eurosat-space"
MODEL = "owner/eurosat-model"
TOKEN = "hf_fake_token_that_must_never_be_printed"
KEY = "sk-test-SECRET-space-0123456789"
CALL = ("python -c 'from gradio_client import Client, handle_file; print(Client(\"owner/eurosat-space\")"
        ".predict(handle_file(\"examples/Forest.jpg\"), api_name=\"/predict\"))'")


def expected_files() -> dict[str, Path]:
    """What the Space needs, listed from the tree: the app, the package, requirements, README, examples, model."""
    package = [p for p in (REPO / "eurosat").rglob("*.py") if "__pycache__" not in p.parts]
    files = [REPO / "app.py", REPO / "requirements.txt", REPO / "README.md", *package,
             *(REPO / "examples").iterdir(), *(REPO / BUNDLED_MODEL).iterdir()]
    return {p.relative_to(REPO).as_posix(): p for p in files}


@pytest.fixture(scope="module")
def published(untrained_checkpoint):
    """A checkpoint pushed, then the Space published with it and the OpenAI secret by the command a user runs."""
    with FakeHub(writable=True) as fake:
        with pytest.MonkeyPatch.context() as patch:
            use_fake_hub(patch, fake)
            push(untrained_checkpoint, MODEL, token=TOKEN)
        first = len(fake.requests)
        done = subprocess.run(
            [sys.executable, "-m", "eurosat.space", SPACE, "--model", MODEL, "--secret-openai-key"], cwd=REPO,
            env={**subprocess_env(), **hub_env(fake), "HF_TOKEN": TOKEN, "OPENAI_API_KEY": KEY},
            capture_output=True, text=True, timeout=300)
        yield SimpleNamespace(hub=fake, done=done, requests=fake.requests[first:], bodies=fake.bodies[first:])


def test_publish_uploads_exactly_the_space_files_and_sets_its_variable_and_secret(published):
    fake, done = published.hub, published.done
    assert done.returncode == 0, done.stderr[-3000:]
    head = fake.head(SPACE, repo_type="space")
    lines = done.stdout.splitlines()
    assert lines[0] == f"Published {fake.url}/spaces/{SPACE} ({fake.url}/spaces/{SPACE}/commit/{head})"
    assert lines[-1] == CALL == space.call_line(SPACE)
    assert fake.created[f"spaces/{SPACE}"]["sdk"] == "gradio"

    files = fake.files(SPACE, repo_type="space")
    expected = expected_files()
    assert sorted(files) == sorted(expected)
    assert not [name for name in files if name.startswith(("tests/", "results/", "benchmarks/", "."))]
    assert all(files[name] == path.read_bytes() for name, path in expected.items() if name != "README.md")
    # No binary through git: every file sent as a regular file is text, every image and the weights went to LFS.
    [(_, _, operations)] = [c for c in fake.commits if c[0] == f"spaces/{SPACE}"]
    regular = {op["value"]["path"] for op in operations if op["key"] == "file"}
    lfs = {op["value"]["path"] for op in operations if op["key"] == "lfsFile"}
    assert lfs == {name for name in files if name.endswith((".jpg", ".png", ".safetensors"))}
    assert all(files[name].decode("utf-8") for name in regular) and regular | lfs == set(files)

    sent = [(m, p) for m, p, _ in published.requests]
    steps = [("POST", "/api/repos/create"), ("POST", f"/api/spaces/{SPACE}/variables"),
             ("POST", f"/api/spaces/{SPACE}/secrets"), ("POST", "/api/validate-yaml"),
             ("POST", f"/api/spaces/{SPACE}/preupload/main"), ("POST", f"/spaces/{SPACE}.git/info/lfs/objects/batch"),
             ("PUT", next(p for m, p in sent if m == "PUT")), ("POST", f"/api/spaces/{SPACE}/commit/main")]
    assert [sent.index(step) for step in steps] == sorted(sent.index(step) for step in steps)

    assert {k: v["value"] for k, v in fake.variables[SPACE].items()} == {ENV_MODEL: MODEL}
    assert fake.secrets[SPACE] == {"OPENAI_API_KEY": KEY}
    # The key went to the secrets endpoint and nowhere else: not printed, not uploaded, in no other request.
    assert KEY not in done.stdout + done.stderr and TOKEN not in done.stdout + done.stderr
    assert not [name for name, data in files.items() if KEY.encode() in data]
    carrying = [published.requests[i][:2] for i, body in enumerate(published.bodies) if KEY.encode() in body]
    assert carrying == [("POST", f"/api/spaces/{SPACE}/secrets")]


def test_the_published_readme_passes_the_space_checks_and_preloads_the_model(published):
    readme = published.hub.files(SPACE, repo_type="space")["README.md"].decode()
    meta = check_space_card(readme)
    assert meta["models"] == [MODEL]
    assert meta["preload_from_hub"] == [f"{MODEL} config.json,model.safetensors"]
    ours = front_matter((REPO / "README.md").read_text())
    assert {k: v for k, v in meta.items() if k not in ("models", "preload_from_hub")} == ours
    assert readme.split("\n---\n", 1)[1] == (REPO / "README.md").read_text().split("\n---\n", 1)[1]


def test_the_published_space_boots_from_its_snapshot(published, tmp_path, untrained_checkpoint, capsys):
    """What the Hub runs: the Space's files in an empty folder, its variables as the environment, the
    preload_from_hub files in the default cache, then `python app.py` there."""
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    folder, home = tmp_path / "space", tmp_path / "hf-home"
    folder.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        use_fake_hub(patch, published.hub)
        snapshot_download(SPACE, repo_type="space", local_dir=folder)
        variables = {k: v.value for k, v in HfApi().get_space_variables(SPACE).items()}
        for item in front_matter((folder / "README.md").read_text())["preload_from_hub"]:
            repo_id, names, *commit = item.split()
            for name in names.split(","):
                hf_hub_download(repo_id, name, revision=commit[0] if commit else None, cache_dir=home / "hub")
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                  if p.is_file() and ".cache" not in p.parts) == sorted(expected_files())
    assert variables == {ENV_MODEL: MODEL}

    forest = folder / "examples" / "Forest.jpg"
    with running_app(app=folder / "app.py", log_dir=tmp_path / "logs",
                     env={**variables, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}) as server:
        result = Client(server.url, verbose=False, download_files=str(tmp_path / "downloads")).predict(
            handle_file(str(forest)), api_name="/predict")
        cold_start = time.monotonic() - server.spawned_at
        with urllib.request.urlopen(server.url + "/", timeout=30) as response:
            page = (response.status, response.headers.get_content_type(), response.read().decode())
        with urllib.request.urlopen(server.url + "/config", timeout=30) as response:
            config = json.loads(response.read())
        log = server.output()
    expected = Predictor(hub.load(str(untrained_checkpoint))).predict(open_image(str(forest)), 5)
    assert [c["label"] for c in result["confidences"]] == list(expected)
    assert [c["confidence"] for c in result["confidences"]] == pytest.approx(list(expected.values()), abs=1e-5)
    # The page renders: Gradio's HTML shell with this app's title and config, and the components it lists.
    assert page[:2] == (200, "text/html") and "<gradio-app" in page[2]
    assert '<meta property="og:title" content="EuroSAT land cover" />' in page[2] and f"**{MODEL}**" in page[2]
    assert config["title"] == "EuroSAT land cover" and len(config["components"]) > 50
    model_line = [c["props"]["value"] for c in config["components"] if c.get("props", {}).get("elem_id") == "model-line"]
    assert len(model_line) == 1 and model_line[0].startswith(f"Model: **{MODEL}**, a test_resnet")
    assert "Traceback" not in log
    with capsys.disabled():
        print(f"\nSpace cold start from its snapshot, process start to first /predict answer: {cold_start:.1f} s")


def _copy_project(root: Path) -> Path:
    for name in ("app.py", "requirements.txt", "README.md"):
        shutil.copy(REPO / name, root / name)
    for name in ("eurosat", "examples", BUNDLED_MODEL):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_a_front_matter_the_hub_refuses_stops_the_publish_with_its_reason(tmp_path, hf_cache, monkeypatch):
    root = _copy_project(tmp_path)
    readme = (root / "README.md").read_text()
    (root / "README.md").write_text(readme.replace(
        front_matter(readme)["short_description"], "Land cover of Sentinel-2 tiles and scenes, with Grad-CAM maps"))
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    with FakeHub(writable=True) as fake:
        use_fake_hub(monkeypatch, fake)
        with pytest.raises(PushError) as err:
            space.publish(SpaceConfig(space=SPACE), root=root, token=TOKEN)
    assert str(err.value) == (
        f"Could not publish the Space {SPACE!r}: the Hub refused the front matter of README.md (\"short_description\" "
        "length must be less than or equal to 60 characters long (it is 61)). Nothing local was changed. "
        f"Retry with: python -m eurosat.space {SPACE}")
    assert fake.head(SPACE, repo_type="space") is None and not fake.paths("PUT")
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("argv, environ, message", [
    (["owner/space/extra"], {}, "'owner/space/extra' is not a Space id: give owner/name"),
    ([SPACE, "--model", str(REPO / BUNDLED_MODEL)], {}, "is a local folder, which the Space cannot read: push it first"),
    ([SPACE, "--model", "not a model"], {}, "--model 'not a model' is not a Hub model id"),
    ([SPACE, "--secret-openai-key"], {}, "--secret-openai-key stores this environment's OPENAI_API_KEY as the Space "
                                         "secret, but it is not set"),
    ([SPACE], {"HF_TOKEN": ""}, f"Could not publish the Space {SPACE!r}: no Hugging Face token (set HF_TOKEN"),
    ([SPACE, "--model", "owner/missing"], {}, "the Hub model 'owner/missing' was not found; push a run first"),
    ([SPACE, "--model", f"{MODEL}@v9"], {}, f"the Hub model {MODEL!r} has no revision 'v9'"),
], ids=["space-id", "local-model", "bad-model", "no-openai-key", "no-token", "missing-model", "missing-revision"])
def test_bad_input_is_refused_before_anything_is_written(argv, environ, message, hf_cache, monkeypatch, capsys,
                                                          untrained_checkpoint):
    with FakeHub({MODEL: {"main": {n: (untrained_checkpoint / n).read_bytes() for n in hub.CHECKPOINT_FILES}}},
                 writable=True) as fake:
        use_fake_hub(monkeypatch, fake)
        monkeypatch.setenv("HF_TOKEN", environ.get("HF_TOKEN", TOKEN))
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        assert space.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err and TOKEN not in err
    assert [m for m, _, _ in fake.requests if m not in ("GET", "HEAD")] == []
