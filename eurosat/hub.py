"""Checkpoints in timm's Hub format: save to a folder, load from a folder or the Hub, push a folder."""

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

from .config import CHECKPOINT_FILES
from .transforms import DataConfig


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded; the message says what happened and what to do."""


class PushError(RuntimeError):
    """An upload that failed; the local folder is untouched and the message gives the retry command."""


@dataclass
class Checkpoint:
    """A loaded model with everything needed to serve it: labels and preprocessing come from config.json."""

    model: nn.Module
    label_names: list[str]
    data_config: DataConfig
    source: str
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def architecture(self) -> str:
        return self.config.get("architecture", "")

    @property
    def temperature(self) -> float:
        """Divides the logits before the softmax; fitted on validation by train.py, 1.0 when absent."""
        return float(self.config.get("temperature", 1.0))


def save(model: nn.Module, directory: str | os.PathLike, *, label_names: list[str], data_config: DataConfig,
         extra_config: dict[str, Any] | None = None) -> Path:
    """Write `model.safetensors` and `config.json` into `directory` with timm's own helper.

    Each file is written beside its destination and renamed into place, so a crash mid-save never
    leaves a half-written file where a good one was; other files in the folder (the report) stay.
    """
    from timm.models import save_for_hf

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".checkpoint-", dir=directory))
    try:
        model_config = {"label_names": list(label_names), **(extra_config or {})}
        # safetensors stores dense row-major tensors; a channels_last model is saved from a plain copy.
        model = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
        save_for_hf(model, str(tmp), model_config=model_config, safe_serialization=True,
                    data_config=data_config.to_timm())
        for name in CHECKPOINT_FILES[::-1]:  # weights first: a config never points at missing weights
            # safetensors creates its file owner-only; a checkpoint is meant to be shared and served.
            os.chmod(tmp / name, 0o644)
            os.replace(tmp / name, directory / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def parse_source(source: str) -> tuple[str, str | None]:
    """Split `owner/name@revision` into the repo id and the revision (None when absent)."""
    repo_id, _, revision = source.partition("@")
    return repo_id, revision or None


def resolve_files(source: str, *, cache_dir: str | None = None) -> Path:
    """The local folder holding config.json and model.safetensors for a folder path or a Hub id.

    An existing folder is used as is; anything else is treated as a Hub id and fetched through
    huggingface_hub, so its cache, HF_TOKEN and HF_HUB_OFFLINE work as users expect.
    """
    path = Path(source).expanduser()
    if source.strip() and path.is_dir():  # Path("") is the working directory: an empty source is no folder
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
        GatedRepoError, HFValidationError, HfHubHTTPError, LocalEntryNotFoundError, RemoteEntryNotFoundError,
        RepositoryNotFoundError, RevisionNotFoundError)
    from huggingface_hub.utils import validate_repo_id

    repo_id, revision = parse_source(source)
    try:
        validate_repo_id(repo_id)
        if "/" not in repo_id:
            raise HFValidationError("a model id has the form owner/name")
    except HFValidationError:
        raise CheckpointError(
            f"{source!r} is neither an existing checkpoint folder nor a Hub model id. "
            "Pass a folder written by train.py, or a Hub id such as owner/name or owner/name@revision."
        ) from None
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


def read_config(folder: Path) -> dict[str, Any]:
    """config.json, checked for what serving needs: an architecture, labels matching num_classes, a data config."""
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); the checkpoint is damaged: save or download it again.") from None
    if not isinstance(config, dict) or not config.get("architecture"):
        raise CheckpointError(f"{path} names no 'architecture'; it is not a timm checkpoint config.")
    labels = config.get("label_names")
    if not isinstance(labels, list) or not labels:
        raise CheckpointError(f"{path} has no 'label_names' list; train.py writes the class names there.")
    num_classes = config.get("num_classes")
    if num_classes != len(labels):
        raise CheckpointError(
            f"{path} is inconsistent: num_classes is {num_classes} but there are {len(labels)} label_names. "
            "Re-save the checkpoint with one name per output.")
    if "input_size" not in config.get("pretrained_cfg", {}):
        raise CheckpointError(f"{path} has no pretrained_cfg.input_size, so the preprocessing is unknown.")
    temperature = config.get("temperature", 1.0)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
        raise CheckpointError(f"{path} has temperature {temperature!r}; it must be a positive number "
                              "(or absent, meaning 1.0).")
    return config


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
    import timm

    folder = resolve_files(source, cache_dir=cache_dir)
    config = read_config(folder)
    state = read_weights(folder)
    labels = config["label_names"]
    try:
        model_args = {**config.get("model_args", {}), "num_classes": len(labels)}
        model = timm.create_model(config["architecture"], pretrained=False, **model_args)
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
    return Checkpoint(model=model, label_names=list(labels), data_config=data_config, source=source, config=config)


def _head_prefix(model: nn.Module, head: nn.Module) -> str:
    return next((name for name, module in model.named_modules() if module is head), "fc")


def push(directory: str | os.PathLike, repo_id: str, *, private: bool = False, token: str | None = None,
         commit_message: str = "Upload EuroSAT checkpoint") -> str:
    """Upload a saved folder to the Hub and return the commit URL; the folder itself is never modified."""
    from huggingface_hub import HfApi, get_token

    directory = Path(directory)
    retry = f"python train.py push {directory} {repo_id}" + (" --private" if private else "")
    # Checked up front: without a token the Hub would only answer 401, which reads like a rights problem.
    token = token or get_token()
    if not token:
        raise PushError(f"Could not upload {directory} to {repo_id!r}: no Hugging Face token (set HF_TOKEN or "
                        f"run `hf auth login`). The local output is intact. Retry with: {retry}")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(directory), repo_id=repo_id, commit_message=commit_message,
                                 ignore_patterns=["train_state*", ".*"])
    except Exception as e:  # offline, no rights, bad id: all end the same way for the user
        raise PushError(
            f"Could not upload {directory} to {repo_id!r}: {_describe_push_failure(e)}. "
            f"The local output is intact. Retry with: {retry}") from None
    return str(getattr(info, "commit_url", info))


def _describe_push_failure(error: Exception) -> str:
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(error, HfHubHTTPError):
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status in (401, 403):
            return f"the Hub refused the token (HTTP {status}); check that it has write access to this repo"
        return f"the Hub answered HTTP {status}"
    name = type(error).__name__
    if "Offline" in name or "Connect" in name or "Timeout" in name or isinstance(error, OSError):
        return "the Hub could not be reached (offline?)"
    return name
