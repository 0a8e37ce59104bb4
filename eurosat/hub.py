"""Checkpoints in timm's Hub format: save to a folder, load from a folder or the Hub, with its config checked."""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import UserError
from .fileio import commit
from .model import build_model
from .transforms import DataConfig

CHECKPOINT_FILES = ("config.json", "model.safetensors")
# For checkpoints saved before the threshold was fitted: the notice then means "less likely than not".
DEFAULT_NOTICE_THRESHOLD = 0.5


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be loaded; the message says what happened and what to do."""


@dataclass
class Checkpoint:
    """A loaded model with everything needed to serve it: labels and preprocessing come from config.json."""

    model: nn.Module
    label_names: list[str]
    data_config: DataConfig
    source: str
    config: dict[str, Any] = field(default_factory=dict)
    folder: Path | None = None  # where config.json lives locally (a Hub download's cache folder), with the report

    @property
    def architecture(self) -> str:
        return self.config.get("architecture", "")

    @property
    def temperature(self) -> float:
        """Divides the logits before the softmax; fitted on validation by train.py, 1.0 when absent."""
        return float(self.config.get("temperature", 1.0))

    @property
    def notice_threshold(self) -> float:
        """Top-1 probabilities below this get the uncertainty notice; chosen on validation by train.py."""
        return float(self.config.get("notice_threshold", DEFAULT_NOTICE_THRESHOLD))

    @property
    def tta(self) -> bool:
        """Whether the checkpoint is meant to be served with 8-view test-time augmentation."""
        return bool(self.config.get("tta", False))


# What timm's pretrained_cfg says about the ImageNet weights a model was created for; a model trained
# from random initialisation must not claim them.
_WEIGHTS_KEYS = ("tag", "license", "paper_ids", "paper_name", "origin_url", "notes")


def initial_weights(model: nn.Module, pretrained: bool) -> str | None:
    """The Hub id of the weights a model started from (e.g. timm/resnet50.a1_in1k), None for random init."""
    if not pretrained:
        return None
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    return cfg.get("hf_hub_id") or f"{cfg.get('architecture', '?')}.{cfg.get('tag', '?')}"


def save(model: nn.Module, directory: str | os.PathLike, *, label_names: list[str], data_config: DataConfig,
         extra_config: dict[str, Any] | None = None, pretrained: bool = True) -> Path:
    """Write `model.safetensors` and `config.json` into `directory` with timm's own helper.

    Each file is written beside its destination and renamed into place, so a crash mid-save never
    leaves a half-written file where a good one was; other files in the folder (the report) stay.
    Without `pretrained`, the ImageNet weights' tag and licence are left out of `pretrained_cfg`.
    """
    from timm.models import save_for_hf

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".checkpoint-", dir=directory))
    try:
        model_config = {"label_names": list(label_names), **(extra_config or {})}
        # safetensors stores dense row-major tensors; a channels_last model is saved from a plain copy.
        model = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
        if not pretrained:
            model.pretrained_cfg = {k: v for k, v in model.pretrained_cfg.items() if k not in _WEIGHTS_KEYS}
        save_for_hf(model, str(tmp), model_config=model_config, safe_serialization=True,
                    data_config=data_config.to_timm())
        for name in CHECKPOINT_FILES[::-1]:  # weights first: a config never points at missing weights
            # safetensors creates its file owner-only; a checkpoint is meant to be shared and served.
            os.chmod(tmp / name, 0o644)
            commit(tmp / name, directory / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def parse_source(source: str) -> tuple[str, str | None]:
    """Split `owner/name@revision` into the repo id and the revision (None when absent)."""
    repo_id, _, revision = source.partition("@")
    return repo_id, revision or None


def is_local(source: str) -> bool:
    """The one rule for any source (a model or a dataset): an existing folder is local, anything else a Hub id."""
    return bool(source.strip()) and Path(source).expanduser().is_dir()  # Path("") would be the working folder


def hub_repo(source: str) -> str | None:
    """The repo id (owner/name) of a source that is not local, when it is a valid one; None otherwise."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if is_local(source):
        return None
    repo_id, _ = parse_source(source)
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return None
    return repo_id if repo_id.count("/") == 1 else None


def public_name(source: str) -> str:
    """How a source is named in public (model cards, the page): a Hub id as is, a folder by its name only."""
    return source if hub_repo(source) else Path(source).expanduser().name


def resolve_files(source: str, *, cache_dir: str | None = None) -> Path:
    """The local folder holding config.json and model.safetensors for a folder path or a Hub id.

    An existing folder is used as is; anything else is treated as a Hub id and fetched through
    huggingface_hub, so its cache, HF_TOKEN and HF_HUB_OFFLINE work as users expect.
    """
    path = Path(source).expanduser()
    if is_local(source):
        missing = [name for name in CHECKPOINT_FILES if not (path / name).is_file()]
        if missing:
            raise CheckpointError(
                f"Checkpoint folder {str(path)!r} is missing {', '.join(missing)}. "
                "A checkpoint folder holds config.json and model.safetensors, as written by train.py."
            )
        return path
    return _download(source, cache_dir)


def _download(source: str, cache_dir: str | None) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id, revision = parse_source(source)
    if hub_repo(source) is None:
        raise CheckpointError(
            f"{source!r} is neither an existing checkpoint folder nor a Hub model id. "
            "Pass a folder written by train.py, or a Hub id such as owner/name or owner/name@revision.")
    at = f"{repo_id}@{revision}" if revision else repo_id
    folder = None
    for filename in CHECKPOINT_FILES:
        try:
            folder = Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir)).parent
        except GatedRepoError:
            raise CheckpointError(
                f"The Hub model {at!r} is gated: accept its terms on the Hub, then set HF_TOKEN.") from None
        except RepositoryNotFoundError:
            raise CheckpointError(
                f"The Hub model {repo_id!r} was not found. Check the id; if it is private, set HF_TOKEN "
                "to a token that can read it.") from None
        except RevisionNotFoundError:
            raise CheckpointError(
                f"The Hub model {repo_id!r} has no revision {revision!r}. Use a branch, tag or commit "
                "that exists, or drop '@...' to use main.") from None
        except LocalEntryNotFoundError:
            raise CheckpointError(
                f"Could not download {at!r}: the Hub cannot be reached (offline, or HF_HUB_OFFLINE=1) and "
                f"{filename} is not in the local Hugging Face cache. Go online once to cache it, or pass a "
                "local checkpoint folder (train one with `python train.py`).") from None
        except RemoteEntryNotFoundError:
            raise CheckpointError(
                f"The Hub model {at!r} has no {filename}. It is not a checkpoint written by train.py "
                "(which uploads config.json and model.safetensors).") from None
        except HfHubHTTPError as e:
            status = getattr(getattr(e, "response", None), "status_code", "?")
            raise CheckpointError(f"The Hub answered HTTP {status} for {at!r}; try again later.") from None
    return folder


# config.json is data from whoever made the checkpoint: these model_args would make timm read files
# (torch.load of a checkpoint, pretrained weights from a path or URL) or override what the project sets.
_REFUSED_MODEL_ARGS = {"checkpoint_path", "pretrained", "pretrained_cfg", "pretrained_cfg_overlay",
                       "pretrained_strict", "cache_dir", "features_only", "scriptable", "exportable"}
_FILE_LIKE_SUFFIXES = ("_path", "_file", "_dir", "_url", "_overlay")
MAX_INPUT_SIDE = 1024  # far above any tile model; bounds start-up time and memory for a hostile config


def read_config(folder: Path) -> dict[str, Any]:
    """config.json, validated before any model is built; any violation is a CheckpointError naming the field."""
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); the checkpoint is damaged: save or download it again.") from None
    if not isinstance(config, dict) or not isinstance(config.get("architecture"), str) or not config["architecture"]:
        raise CheckpointError(f"{path} names no 'architecture'; it is not a timm checkpoint config.")
    for problem in config_problems(config):
        raise CheckpointError(f"{path}: {problem}")
    return config


def config_problems(config: dict[str, Any]) -> list[str]:
    """What is wrong with a checkpoint config, one sentence per field; empty when it can be served."""
    problems = []
    labels = config.get("label_names")
    if not isinstance(labels, list) or not labels or not all(isinstance(n, str) and n.strip() for n in labels):
        problems.append("'label_names' must be a list of class names (non-empty strings); train.py writes "
                        "them there.")
    elif len(set(labels)) != len(labels):
        twice = sorted({n for n in labels if labels.count(n) > 1})
        problems.append(f"'label_names' must be distinct, but {', '.join(map(repr, twice))} appear more than once.")
    elif config.get("num_classes") != len(labels):
        problems.append(f"'num_classes' is {config.get('num_classes')!r} but there are {len(labels)} label_names; "
                        "re-save the checkpoint with one name per output.")
    problems += _model_args_problems(config.get("model_args", {}))
    problems += _preprocessing_problems(config.get("pretrained_cfg"))
    temperature = config.get("temperature", 1.0)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
        problems.append(f"'temperature' is {temperature!r}; it must be a positive number (or absent, meaning 1.0).")
    threshold = config.get("notice_threshold", DEFAULT_NOTICE_THRESHOLD)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        problems.append(f"'notice_threshold' is {threshold!r}; it must be a probability from 0 to 1.")
    if not isinstance(config.get("tta", False), bool):
        problems.append(f"'tta' is {config['tta']!r}; it must be true or false.")
    return problems


def _model_args_problems(model_args: Any) -> list[str]:
    if not isinstance(model_args, dict):
        return ["'model_args' must be a JSON object of timm create_model arguments."]
    refused = sorted(k for k in model_args if k in _REFUSED_MODEL_ARGS or str(k).endswith(_FILE_LIKE_SUFFIXES))
    if refused:
        return [f"'model_args' may not set {', '.join(refused)}: arguments that load files or weights are "
                "refused; a checkpoint's weights come only from its model.safetensors."]
    return []


def _preprocessing_problems(cfg: Any) -> list[str]:
    if not isinstance(cfg, dict) or "input_size" not in cfg:
        return ["it has no 'pretrained_cfg.input_size', so the preprocessing is unknown."]
    size = cfg["input_size"]
    if not (isinstance(size, list) and len(size) == 3 and all(isinstance(v, int) and not isinstance(v, bool)
                                                              for v in size)):
        return [f"'pretrained_cfg.input_size' is {size!r}; it must be [3, height, width]."]
    if size[0] != 3 or not all(8 <= side <= MAX_INPUT_SIDE for side in size[1:]):
        return [f"'pretrained_cfg.input_size' is {size!r}; it must be 3 channels and 8 to {MAX_INPUT_SIDE} "
                "pixels per side."]
    for key in ("mean", "std"):
        values = cfg.get(key)
        if not (isinstance(values, list) and len(values) == 3
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)):
            return [f"'pretrained_cfg.{key}' is {values!r}; it must be three numbers."]
    if not all(v > 0 for v in cfg["std"]):
        return [f"'pretrained_cfg.std' is {cfg['std']!r}; every value must be positive."]
    return []


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """model.safetensors, read whole before anything is built, so a damaged file never half-loads."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = folder / "model.safetensors"
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{path} is corrupted or truncated ({e}). Nothing was loaded; save or download the checkpoint again."
        ) from None


def load(source: str, *, device: str | torch.device = "cpu", cache_dir: str | None = None) -> Checkpoint:
    """Load a checkpoint for inference from a local folder, `owner/name` or `owner/name@revision`."""
    folder = resolve_files(source, cache_dir=cache_dir)
    config = read_config(folder)
    state = read_weights(folder)
    labels = config["label_names"]
    try:
        model = build_model(config["architecture"], len(labels), model_args=config.get("model_args"))
    except (RuntimeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{folder / 'config.json'} describes a model timm cannot build: {e}") from None
    head = model.get_classifier()
    head_weight = state.get(f"{_head_prefix(model, head)}.weight")
    if head_weight is not None and head_weight.shape[0] != len(labels):
        raise CheckpointError(
            f"{folder / 'model.safetensors'} has {head_weight.shape[0]} outputs but config.json lists "
            f"{len(labels)} label_names; the two files come from different models.")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        # torch's first line only says "Error(s) in loading state_dict"; the next names the keys, which can be many.
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else lines[0]
        detail = detail if len(detail) <= 300 else detail[:300] + "..."
        raise CheckpointError(
            f"{folder / 'model.safetensors'} does not match the architecture {config['architecture']!r} "
            f"in config.json ({detail}).") from None
    model.eval().to(device)
    data_config = DataConfig.from_pretrained_cfg(config["pretrained_cfg"])
    return Checkpoint(model=model, label_names=list(labels), data_config=data_config, source=source, config=config,
                      folder=folder)


def _head_prefix(model: nn.Module, head: nn.Module) -> str:
    return next((name for name, module in model.named_modules() if module is head), "fc")
