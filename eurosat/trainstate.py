"""Resumable training state (model, optimizer, scheduler, RNG, history) in one safetensors file, written atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from .errors import UserError
from .fileio import atomic_write

STATE_FILE = "train_state.safetensors"


class StateError(UserError, RuntimeError):
    """A training-state file that cannot be resumed from; nothing has been loaded when it is raised."""


def flatten(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "t") -> Any:
    """Replace every tensor in a nested dict/list by a reference, collecting the tensors by key.

    Optimizer and scheduler state dicts are nested Python structures around tensors; splitting
    them this way stores the tensors in safetensors and the rest as JSON, so no pickle is needed.
    """
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}.{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        # JSON keys are strings; remember which were ints (optimizer state is keyed by param index).
        return {"__dict__": [[k, flatten(v, tensors, prefix)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [flatten(v, tensors, prefix) for v in obj]
    return obj


def unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `flatten`."""
    if isinstance(obj, dict) and "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if isinstance(obj, dict) and "__dict__" in obj:
        return {k: unflatten(v, tensors) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [unflatten(v, tensors) for v in obj]
    return obj


def save_state(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write `state` (nested dicts of tensors and JSON values) to `path` via a temp file and a rename.

    A `kill -9` at any moment leaves either the previous complete file or the new complete file.
    """
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    meta = json.dumps(flatten(state, tensors))
    return atomic_write(path, lambda f: f.write(save(tensors, metadata={"state": meta})))


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a state written by `save_state`; a damaged file raises StateError naming it."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
        return unflatten(json.loads(meta["state"]), tensors)
    except (SafetensorError, OSError, KeyError, ValueError) as e:
        raise StateError(
            f"Cannot resume from {path}: the file is corrupted or truncated ({type(e).__name__}: {e}). "
            "Delete it to start the run again, or restore it from a copy.") from None
