"""Shared fixtures: offline Hugging Face settings, an empty cache, the real mini dataset, and tiny checkpoints."""

import os
import shutil
import tempfile
from pathlib import Path

# Everything the session writes (pytest's tmp_path, gradio_client's uploads and downloads, the Hugging Face
# cache) goes under one folder that is removed at the end: TMPDIR for subprocesses, tempfile.tempdir here.
_SESSION_TMP = tempfile.mkdtemp(prefix="eurosat-tests-")
os.environ["TMPDIR"] = tempfile.tempdir = _SESSION_TMP
# Set before anything imports huggingface_hub: its constants are read at import time.
os.environ["HF_HOME"] = os.path.join(_SESSION_TMP, "hf-home")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
# Gradio's upload folder for the handlers called in this process; a launched app gets its own (appserver.py).
os.environ["GRADIO_TEMP_DIR"] = os.path.join(_SESSION_TMP, "gradio")
os.environ.pop("OPENAI_API_KEY", None)
os.environ.pop("HF_TOKEN", None)

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# The 400-tile mini set travels with the repository; the full dataset is optional (EUROSAT_FULL_DATA,
# else a folder beside the clone), and the checks that need it skip, saying why, when it is absent.
MINI = REPO / "tests" / "data" / "eurosat-rgb-mini"
FULL = Path(os.environ.get("EUROSAT_FULL_DATA", REPO.parent / "shared" / "eurosat-rgb"))
NO_FULL_DATA = f"needs the full EuroSAT RGB dataset at {FULL} (set EUROSAT_FULL_DATA to its folder)"


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache of this test's own (huggingface_hub reads HF_HUB_CACHE at call time)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def mini_source() -> str:
    assert MINI.is_dir(), f"the test data {MINI} is missing"
    return str(MINI)


@pytest.fixture(scope="session")
def mini_splits(mini_source):
    from eurosat.data import load_splits

    return load_splits(mini_source)


@pytest.fixture(scope="session")
def mini_tensors(mini_splits):
    """{split: (uint8 images, labels)} of the mini dataset, decoded once per session."""
    from eurosat.data import decode_split

    s = mini_splits
    return {name: decode_split(s.split(name), s.image_column, s.label_column, source=s.source, split=name)
            for name in ("train", "validation", "test")}


@pytest.fixture(scope="session")
def label_names(mini_splits) -> list[str]:
    return mini_splits.label_names


@pytest.fixture(scope="session")
def untrained_checkpoint(tmp_path_factory, label_names) -> Path:
    """A randomly initialised tiny model saved in the Hub format (fast; for I/O and plumbing tests)."""
    import torch

    from eurosat import hub
    from eurosat.model import build_model
    from eurosat.transforms import DataConfig

    torch.manual_seed(0)
    model = build_model("test_resnet", len(label_names)).eval()
    folder = tmp_path_factory.mktemp("untrained") / "checkpoint"
    hub.save(model, folder, label_names=label_names, data_config=DataConfig.for_model(model, 64))
    return folder


TINY_RECIPE = dict(model="test_resnet", pretrained=False, img_size=64, epochs=8, batch_size=32, lr=3e-3,
                   weight_decay=0.01, device="cpu", seed=0, tta=False)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, mini_source) -> Path:
    """A run folder from train.py's own code: a tiny model trained briefly on the mini train split, and so a
    checkpoint folder (config.json + model.safetensors) as train.py writes it."""
    from eurosat.config import make_train_config
    from eurosat.runner import fit

    out = tmp_path_factory.mktemp("trained") / "run"
    fit(make_train_config(None, dataset=mini_source, output_dir=str(out), **TINY_RECIPE), log=lambda _: None)
    return out




@pytest.fixture(scope="module")
def predictor(trained_run):
    """The trained checkpoint served in this process: what a server answers must equal what it computes."""
    from eurosat.hub import load
    from eurosat.inference import Predictor

    return Predictor(load(str(trained_run)))


@pytest.fixture(scope="session")
def class_tiles(mini_tensors):
    """The first test tile of each class, in class order (uint8, 10 x 3 x 64 x 64): real pixels, one per label."""
    images, labels = mini_tensors["test"]
    return images[[int((labels == c).nonzero()[0]) for c in range(int(labels.max()) + 1)]]


@pytest.fixture(scope="module")
def fake_llm():
    """A local OpenAI-compatible server for a module's app, answering Forest until a test says otherwise."""
    from fake_openai import FakeOpenAI, answer

    server = FakeOpenAI().start()
    server.reply(200, answer("Forest", 0.8, "Dense canopy."))
    yield server
    server.stop()


def upload(path: str | os.PathLike) -> dict:
    """What a handler receives for an uploaded file: Gradio's FileData for a copy in its upload folder."""
    import hashlib
    import uuid

    data = Path(path).read_bytes()
    folder = Path(os.environ["GRADIO_TEMP_DIR"]) / hashlib.sha256(data + uuid.uuid4().bytes).hexdigest()[:20]
    folder.mkdir(parents=True)
    copy = folder / Path(path).name
    copy.write_bytes(data)
    return {"path": str(copy), "orig_name": Path(path).name, "meta": {"_type": "gradio.FileData"}}
