"""Checkpoints: save, load back bit-exactly (folder, offline cache, a Hub over HTTP), every load failure's message."""

import json
import os
import random
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from eurosat import hub
from eurosat.hub import CheckpointError
from eurosat.model import build_model
from eurosat.transforms import DataConfig, eval_transform
from fake_hub import FakeHub, use_fake_hub

REPO_ROOT = Path(__file__).resolve().parents[1]
REV = "0123456789abcdef0123456789abcdef01234567"


def _tiny(seed: int, folder: Path, images: torch.Tensor, labels: list[str]) -> SimpleNamespace:
    """A saved random test_resnet and its logits on real tiles, for bit-exact comparisons after loading."""
    torch.manual_seed(seed)
    model = build_model("test_resnet", len(labels)).eval()
    cfg = DataConfig.for_model(model, 64)
    hub.save(model, folder, label_names=labels, data_config=cfg)
    x = eval_transform(cfg)(images)
    with torch.no_grad():
        logits = model(x)
    return SimpleNamespace(model=model, folder=folder, cfg=cfg, x=x, logits=logits, labels=labels)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, mini_tensors, label_names):
    return _tiny(0, tmp_path_factory.mktemp("hub") / "a", mini_tensors["test"][0][:6], label_names)


@pytest.fixture(scope="module")
def other(tmp_path_factory, mini_tensors, label_names):
    """A second checkpoint with different weights, to tell revisions apart."""
    return _tiny(1, tmp_path_factory.mktemp("hub") / "b", mini_tensors["test"][0][:6], label_names)


def cache_repo(cache: Path, repo_id: str, folder: Path, *, revision: str = REV, refs=("main",),
               files=("config.json", "model.safetensors")) -> Path:
    """Lay out `folder` in a cache as a download would: refs/<ref> holds the commit, snapshots/<commit>/ the files."""
    root = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = root / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    for name in files:
        shutil.copyfile(folder / name, snapshot / name)
    (root / "refs").mkdir(exist_ok=True)
    for ref in refs:
        (root / "refs" / ref).write_text(revision)
    return snapshot


def logits_of(checkpoint: hub.Checkpoint, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return checkpoint.model(x)


def copy_checkpoint(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


# --- saving ---------------------------------------------------------------------------------------------------


def test_save_writes_the_timm_config_and_safetensors(ckpt):
    config = json.loads((ckpt.folder / "config.json").read_text())
    assert sorted(p.name for p in ckpt.folder.iterdir()) == ["config.json", "model.safetensors"]
    assert config["architecture"] == "test_resnet"
    assert config["label_names"] == ckpt.labels and config["num_classes"] == len(ckpt.labels)
    pre = config["pretrained_cfg"]
    assert pre["input_size"] == [3, 64, 64]
    assert (pre["crop_pct"], pre["crop_mode"]) == (1.0, "squash")
    assert tuple(pre["mean"]) == ckpt.cfg.mean and tuple(pre["std"]) == ckpt.cfg.std
    state = load_file(str(ckpt.folder / "model.safetensors"))
    assert state.keys() == ckpt.model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in ckpt.model.state_dict().items())
    # Shared and served by others: readable by all, not the owner-only mode safetensors creates.
    assert {oct(p.stat().st_mode & 0o777) for p in ckpt.folder.iterdir()} == {"0o644"}


def test_save_again_replaces_the_weights_and_keeps_other_files(tmp_path, ckpt, other):
    folder = copy_checkpoint(ckpt.folder, tmp_path / "run")
    (folder / "report.md").write_text("# report")
    hub.save(other.model, folder, label_names=other.labels, data_config=other.cfg, extra_config={"note": "second"})
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "report.md"]
    assert (folder / "report.md").read_text() == "# report"
    assert json.loads((folder / "config.json").read_text())["note"] == "second"
    assert torch.equal(logits_of(hub.load(str(folder)), other.x), other.logits)


# --- loading: the round trip is bit-exact ----------------------------------------------------------------------


def test_round_trip_through_a_folder(ckpt):
    import timm

    timm_model = timm.create_model(f"local-dir:{ckpt.folder}", pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(timm_model(ckpt.x), ckpt.logits)
    loaded = hub.load(str(ckpt.folder))
    assert torch.equal(logits_of(loaded, ckpt.x), ckpt.logits)
    assert not loaded.model.training
    assert loaded.label_names == ckpt.labels
    assert loaded.data_config == ckpt.cfg
    assert loaded.architecture == "test_resnet"
    assert loaded.source == str(ckpt.folder)


def test_round_trip_through_the_offline_hub_cache(ckpt, other):
    """The cache under $HF_HOME/hub, laid out by hand, serves timm's hf-hub: and our Hub ids with HF_HUB_OFFLINE=1."""
    import timm
    from huggingface_hub import constants

    assert constants.is_offline_mode()
    cache = Path(os.environ["HF_HOME"]) / "hub"
    assert Path(constants.HF_HUB_CACHE) == cache  # conftest set HF_HOME before huggingface_hub was imported
    repo = "eurosat-tests/roundtrip"
    cache_repo(cache, repo, ckpt.folder, revision=REV, refs=("main",))
    old_rev = "f" * 40
    cache_repo(cache, repo, other.folder, revision=old_rev, refs=("v1",))

    timm_model = timm.create_model(f"hf-hub:{repo}", pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(timm_model(ckpt.x), ckpt.logits)
    for source in (repo, f"{repo}@{REV}", f"{repo}@main"):
        loaded = hub.load(source)
        assert torch.equal(logits_of(loaded, ckpt.x), ckpt.logits), source
        assert loaded.label_names == ckpt.labels and loaded.source == source
    for source in (f"{repo}@v1", f"{repo}@{old_rev}"):
        assert torch.equal(logits_of(hub.load(source), other.x), other.logits), source


# --- loading: each failure says what happened -----------------------------------------------------------------


@pytest.mark.parametrize("source", ["", "   ", "just-a-name", "/no/such/dir/checkpoint", "~/no-such-dir/a/b",
                                    "C:\\models\\checkpoint", "owner/name/extra", "owner/na me", "../up/and/away"])
def test_a_source_that_is_neither_a_folder_nor_a_hub_id(source):
    with pytest.raises(CheckpointError) as err:
        hub.load(source)
    assert str(err.value).startswith(f"{source!r} is neither an existing checkpoint folder nor a Hub model id.")
    assert "owner/name@revision" in str(err.value)


def test_a_file_path_is_not_a_checkpoint_folder(ckpt):
    source = str(ckpt.folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="is neither an existing checkpoint folder nor a Hub model id"):
        hub.load(source)


@pytest.mark.parametrize("present, missing", [((), "config.json, model.safetensors"),
                                              (("config.json",), "model.safetensors"),
                                              (("model.safetensors",), "config.json")])
def test_a_folder_with_files_missing(tmp_path, ckpt, present, missing):
    for name in present:
        shutil.copyfile(ckpt.folder / name, tmp_path / name)
    with pytest.raises(CheckpointError) as err:
        hub.load(str(tmp_path))
    assert str(err.value).startswith(f"Checkpoint folder {str(tmp_path)!r} is missing {missing}.")


def _not_json(folder):
    (folder / "config.json").write_text('{"architecture": "test_resnet",')


def _list(folder):
    (folder / "config.json").write_text("[1, 2]")


def _binary(folder):
    (folder / "config.json").write_bytes(b"\xff\xfe\x00garbage")


@pytest.mark.parametrize("damage, message", [
    (_not_json, "config.json is not valid JSON"),
    (_binary, "config.json is not valid JSON"),
    (_list, "config.json names no 'architecture'"),
    (lambda f: edit_config(f, architecture=""), "config.json names no 'architecture'"),
    (lambda f: edit_config(f, label_names=None), "config.json: 'label_names' must be a list of class names"),
    (lambda f: edit_config(f, label_names=[]), "config.json: 'label_names' must be a list of class names"),
    (lambda f: edit_config(f, label_names={"0": "Forest"}), "config.json: 'label_names' must be a list of class names"),
    (lambda f: edit_config(f, label_names=[1, 2]), "config.json: 'label_names' must be a list of class names"),
    (lambda f: edit_config(f, label_names=["Forest"] * 10),
     "config.json: 'label_names' must be distinct, but 'Forest' appear more than once"),
    (lambda f: edit_config(f, label_names=list("abcdefghi")),
     "config.json: 'num_classes' is 10 but there are 9 label_names"),
    (lambda f: edit_config(f, pretrained_cfg={"mean": [0.5] * 3}),
     "config.json: it has no 'pretrained_cfg.input_size'"),
    (lambda f: edit_config(f, pretrained_cfg={"input_size": [3, 4096, 4096], "mean": [0.5] * 3, "std": [0.5] * 3}),
     "config.json: 'pretrained_cfg.input_size' is [3, 4096, 4096]; it must be 3 channels and 8 to 1024 pixels"),
    (lambda f: edit_config(f, pretrained_cfg={"input_size": [3, 64, 64], "mean": [0.5] * 3, "std": [0, 1, 1]}),
     "config.json: 'pretrained_cfg.std' is [0, 1, 1]; every value must be positive"),
    (lambda f: edit_config(f, model_args={"checkpoint_path": "/etc/evil.pth"}),
     "config.json: 'model_args' may not set checkpoint_path"),
    (lambda f: edit_config(f, model_args={"pretrained_cfg_overlay": {"file": "/etc/evil.pth"}}),
     "config.json: 'model_args' may not set pretrained_cfg_overlay"),
    (lambda f: edit_config(f, model_args=["x"]), "config.json: 'model_args' must be a JSON object"),
    (lambda f: edit_config(f, temperature=0), "config.json: 'temperature' is 0; it must be a positive number"),
    (lambda f: edit_config(f, temperature="warm"), "config.json: 'temperature' is 'warm'; it must be a positive"),
    (lambda f: edit_config(f, notice_threshold=1.5), "config.json: 'notice_threshold' is 1.5; it must be a probability"),
    (lambda f: edit_config(f, tta="yes"), "config.json: 'tta' is 'yes'; it must be true or false"),
    (lambda f: edit_config(f, architecture="no_such_architecture"),
     "config.json describes a model timm cannot build"),
])
def test_a_bad_config_json(tmp_path, ckpt, damage, message):
    folder = copy_checkpoint(ckpt.folder, tmp_path / "ckpt")
    damage(folder)
    with pytest.raises(CheckpointError) as err:
        hub.load(str(folder))
    assert message in str(err.value)
    assert str(folder / "config.json") in str(err.value)


def test_label_names_that_do_not_match_the_weights(tmp_path, ckpt, label_names):
    """config.json is consistent (10 names, num_classes 10) but the weights come from a 5-class model."""
    folder = copy_checkpoint(ckpt.folder, tmp_path / "ckpt")
    torch.manual_seed(0)
    five = build_model("test_resnet", 5)
    save_file(five.state_dict(), str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        hub.load(str(folder))
    assert str(err.value) == (f"{folder / 'model.safetensors'} has 5 outputs but config.json lists 10 label_names; "
                              "the two files come from different models.")


def _drop_a_tensor(path):
    state = load_file(str(path))
    del state["layer1.0.conv1.weight"]
    save_file(state, str(path))


@pytest.mark.parametrize("damage, detail", [
    (lambda f: edit_config(f, architecture="resnet18", model_args={}), "'resnet18'"),
    (lambda f: _drop_a_tensor(f / "model.safetensors"), "Missing key(s)"),
])
def test_weights_that_do_not_fit_the_architecture(tmp_path, ckpt, damage, detail):
    folder = copy_checkpoint(ckpt.folder, tmp_path / "ckpt")
    damage(folder)
    with pytest.raises(CheckpointError) as err:
        hub.load(str(folder))
    assert f"{folder / 'model.safetensors'} does not match the architecture" in str(err.value)
    assert detail in str(err.value)


def _truncate(keep):
    return lambda data: data[:keep(len(data))]


@pytest.mark.parametrize("corrupt", [
    _truncate(lambda n: n // 2),
    _truncate(lambda n: n - 1),
    _truncate(lambda n: 8),
    _truncate(lambda n: 0),
    lambda data: struct.pack("<Q", 10**12) + data[8:],  # header length far past the end of the file
    lambda data: data[:8] + b"#" * 16 + data[24:],  # the JSON header overwritten
    lambda data: random.Random(0).randbytes(len(data)),
], ids=["half", "last-byte", "length-only", "empty", "huge-header", "bad-header", "random"])
def test_a_corrupted_safetensors_file_is_refused_before_any_model_is_built(tmp_path, ckpt, monkeypatch, corrupt):
    import timm

    folder = copy_checkpoint(ckpt.folder, tmp_path / "ckpt")
    weights = folder / "model.safetensors"
    weights.write_bytes(corrupt(weights.read_bytes()))
    built = []
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: built.append(a))
    with pytest.raises(CheckpointError) as err:
        hub.load(str(folder))
    assert str(err.value).startswith(f"{weights} is corrupted or truncated (")
    assert "Nothing was loaded" in str(err.value)
    assert built == []  # the weights are read whole and checked first, so no model is half-loaded


def test_offline_with_nothing_cached(hf_cache):
    with pytest.raises(CheckpointError) as err:
        hub.load("eurosat-tests/never-cached")
    assert str(err.value).startswith(
        "Could not download 'eurosat-tests/never-cached': the Hub cannot be reached (offline, or HF_HUB_OFFLINE=1) "
        "and config.json is not in the local Hugging Face cache.")
    assert "pass a local checkpoint folder" in str(err.value)


def test_offline_with_only_the_config_cached(hf_cache, ckpt):
    cache_repo(hf_cache, "eurosat-tests/half", ckpt.folder, files=("config.json",))
    with pytest.raises(CheckpointError, match="and model.safetensors is not in the local Hugging Face cache"):
        hub.load("eurosat-tests/half")


def test_offline_with_a_revision_that_is_not_cached(hf_cache, ckpt):
    cache_repo(hf_cache, "eurosat-tests/revs", ckpt.folder)
    assert torch.equal(logits_of(hub.load("eurosat-tests/revs"), ckpt.x), ckpt.logits)
    with pytest.raises(CheckpointError) as err:
        hub.load("eurosat-tests/revs@badrev")
    assert str(err.value).startswith("Could not download 'eurosat-tests/revs@badrev': the Hub cannot be reached")


def test_cache_dir_argument_is_used(tmp_path, ckpt):
    cache_repo(tmp_path, "eurosat-tests/elsewhere", ckpt.folder)
    loaded = hub.load("eurosat-tests/elsewhere", cache_dir=str(tmp_path))
    assert torch.equal(logits_of(loaded, ckpt.x), ckpt.logits)


# --- loading from a Hub that answers over HTTP (tests/fake_hub.py) ---------------------------------------------


@pytest.fixture
def online(hf_cache, monkeypatch, ckpt, other):
    files = {name: (ckpt.folder / name).read_bytes() for name in ("config.json", "model.safetensors")}
    old = {name: (other.folder / name).read_bytes() for name in ("config.json", "model.safetensors")}
    repos = {"owner/model": {"main": files, "v1": old},
             "owner/config-only": {"main": {"config.json": files["config.json"]}},
             "owner/gated": {"main": files}}
    with FakeHub(repos, gated={"owner/gated"}) as fake:
        use_fake_hub(monkeypatch, fake)
        yield fake


def test_download_from_the_hub_then_load_offline_from_the_cache(online, hf_cache, monkeypatch, ckpt, other):
    from huggingface_hub import constants

    loaded = hub.load("owner/model")
    assert torch.equal(logits_of(loaded, ckpt.x), ckpt.logits)
    assert loaded.label_names == ckpt.labels
    assert {"/owner/model/resolve/main/config.json", "/owner/model/resolve/main/model.safetensors"} <= set(online.paths("GET"))
    assert torch.equal(logits_of(hub.load("owner/model@v1"), other.x), other.logits)  # a tag gives its own files

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    asked = len(online.requests)
    commit = online.commit("owner/model", "main")
    for source in ("owner/model", f"owner/model@{commit}", "owner/model@v1"):
        expected = other if source.endswith("v1") else ckpt
        assert torch.equal(logits_of(hub.load(source), expected.x), expected.logits), source
    assert len(online.requests) == asked  # served from the cache the download filled
    assert (hf_cache / "models--owner--model" / "refs" / "main").read_text() == commit


@pytest.mark.parametrize("source, message", [
    ("owner/missing", "The Hub model 'owner/missing' was not found. Check the id; if it is private, set HF_TOKEN"),
    ("owner/model@badrev", "The Hub model 'owner/model' has no revision 'badrev'. Use a branch, tag or commit"),
    ("owner/config-only", "The Hub model 'owner/config-only' has no model.safetensors. It is not a checkpoint"),
    ("owner/gated", "The Hub model 'owner/gated' is gated: accept its terms on the Hub, then set HF_TOKEN."),
])
def test_what_the_hub_answers_is_explained(online, source, message):
    with pytest.raises(CheckpointError) as err:
        hub.load(source)
    assert str(err.value).startswith(message)
    assert online.requests, "the fake Hub was never asked"


# --- importing the package touches neither heavy libraries nor the network -------------------------------------


HEAVY = {"timm", "datasets", "huggingface_hub", "gradio", "openai", "pytorch_grad_cam"}


def _python(code: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.parametrize("modules", ["eurosat", "eurosat.config, eurosat.data, eurosat.transforms, eurosat.model, eurosat.hub"])
def test_importing_eurosat_loads_no_heavy_library(modules):
    """The foundation modules import timm, datasets and huggingface_hub inside the functions that need them."""
    loaded = _python(f"import sys, {modules}; print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))")
    assert loaded == "[]"


def test_importing_every_submodule_never_touches_the_network():
    code = """
import importlib, pkgutil, socket, eurosat
attempts = []
def refuse(name):
    def guard(*args, **kwargs):
        attempts.append((name, repr(args)[:80]))
        raise OSError("network access during import")
    return guard
socket.socket.connect = refuse("connect")
socket.socket.connect_ex = refuse("connect_ex")
socket.create_connection = refuse("create_connection")
socket.getaddrinfo = refuse("getaddrinfo")
names = [m.name for m in pkgutil.iter_modules(eurosat.__path__, "eurosat.")]
for name in names:
    importlib.import_module(name)
print(len(names), attempts)
"""
    # Without the offline switches the tests run under: the guard alone stands for "no network".
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "GRADIO_ANALYTICS_ENABLED")}
    count, attempts = _python(code, env).split(" ", 1)
    assert int(count) >= 8  # config, data, transforms, model, hub, imaging, inference, cam, ... all imported
    assert attempts == "[]"


@pytest.mark.parametrize("pretrained", [False, True])
def test_only_a_pretrained_model_keeps_the_weights_tag(tmp_path, pretrained):
    model = build_model("resnet18", 3)  # timm's config names its default ImageNet weights, a1_in1k
    assert model.pretrained_cfg["tag"] == "a1_in1k"
    hub.save(model, tmp_path, label_names=["a", "b", "c"], data_config=DataConfig.for_model(model, 64),
             pretrained=pretrained)
    saved = json.loads((tmp_path / "config.json").read_text())["pretrained_cfg"]
    assert ("tag" in saved, "license" in saved) == (pretrained, pretrained)


def test_the_bundled_model_claims_no_imagenet_weights():
    from conftest import REPO
    from eurosat.config import BUNDLED_MODEL

    config = json.loads((REPO / BUNDLED_MODEL / "config.json").read_text())
    assert not {"tag", "license", "hf_hub_id"} & set(config["pretrained_cfg"])
    assert config["train_config"]["pretrained"] is False and not config.get("initial_weights")
