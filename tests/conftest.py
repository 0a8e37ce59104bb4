"""Shared fixtures: offline Hugging Face settings, the real mini dataset, and tiny checkpoints."""

import os
import tempfile
from pathlib import Path

# Set before anything imports huggingface_hub: its constants are read at import time.
_HF_HOME = tempfile.mkdtemp(prefix="eurosat-test-hf-")
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.pop("OPENAI_API_KEY", None)
os.environ.pop("HF_TOKEN", None)

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
MINI = SHARED / "eurosat-rgb-mini"
FULL = SHARED / "eurosat-rgb"


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
