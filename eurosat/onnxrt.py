"""ONNX Runtime serving: a graph exported here from the loaded weights, cached by their hash, checked, then run on the CPU."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .fileio import atomic_write
from .model import features_and_logits
from .transforms import DataConfig

log = logging.getLogger(__name__)

# Bumped whenever the exported graph changes for the same weights (outputs, opset, export settings).
GRAPH_FORMAT = 1
OPSET = 17
KEY_FIELD = "eurosat.graph_key"  # the key is written into the graph's metadata, and checked on every load
# The check at load: the graph must reproduce PyTorch's outputs on a probe batch within this much.
PROBE_ATOL, PROBE_RTOL = 1e-4, 1e-4


class GraphError(RuntimeError):
    """A graph that could not be exported, loaded or checked: the app then serves with PyTorch (said in the log)."""


class _FeaturesAndLogits(nn.Module):
    """The served model with two outputs, the last feature map (what the single-pass CAM weighs) and the logits."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return features_and_logits(self.model, x)


class Graph:
    """An ONNX Runtime session of the served model: one run gives the logits, and the feature maps when asked."""

    def __init__(self, session: Any, key: str, path: Path):
        self.session = session
        self.key = key
        self.path = path

    def run(self, batch: torch.Tensor, features: bool) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(feature maps or None, logits) of a model-ready float32 batch (N, 3, H, W), as torch tensors."""
        names = ["features", "logits"] if features else ["logits"]
        # ONNX Runtime reads a plain row-major array; the torch tensor's buffer is passed without a copy when it is one.
        outputs = self.session.run(names, {"input": batch.detach().float().contiguous().cpu().numpy()})
        tensors = [torch.from_numpy(out) for out in outputs]
        return (tensors[0], tensors[1]) if features else (None, tensors[0])

    @property
    def threads(self) -> int:
        return int(self.session.get_session_options().intra_op_num_threads)


def default_cache() -> Path:
    """Where graphs are kept: the Hugging Face cache's assets folder (HF_HOME), as its libraries cache derived files."""
    from huggingface_hub import cached_assets_path

    return cached_assets_path(library_name="eurosat", namespace="onnx")


def graph_key(model: nn.Module, data_config: DataConfig, config: dict[str, Any]) -> str:
    """SHA-256 of everything the graph is made from: every weight and buffer, the model's config, the input size,
    and the exporter's versions. Another checkpoint, or one changed weight, gives another key."""
    digest = hashlib.sha256()
    recipe = {"format": GRAPH_FORMAT, "opset": OPSET, "torch": torch.__version__, "input_size": data_config.input_size,
              "architecture": config.get("architecture"), "model_args": config.get("model_args"),
              "num_classes": config.get("num_classes")}
    digest.update(json.dumps(recipe, sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        plain = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{plain.dtype}:{tuple(plain.shape)}".encode())
        digest.update(plain.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def export(model: nn.Module, input_size: tuple[int, int], key: str) -> bytes:
    """The model as an ONNX graph with a free batch axis, inputs named `input`, outputs `features` and `logits`.

    The TorchScript-based exporter (`dynamo=False`): here it exports the bundled model in under a
    second where the torch.export-based one takes four and needs onnxscript besides; its deprecation
    warning is silenced for that reason only. The key goes into the graph's metadata.
    """
    import onnx

    wrapper = _FeaturesAndLogits(model).eval()
    example = torch.zeros(2, 3, *input_size)
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(wrapper, (example,), buffer, dynamo=False, opset_version=OPSET, input_names=["input"],
                          output_names=["features", "logits"],
                          dynamic_axes={name: {0: "batch"} for name in ("input", "features", "logits")})
    proto = onnx.load_model_from_string(buffer.getvalue())
    onnx.helper.set_model_props(proto, {KEY_FIELD: key})
    return proto.SerializeToString()


def session(path: Path, threads: int) -> Any:
    """An ONNX Runtime CPU session of the graph at `path`, running each call on `threads` threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Idle pool threads would otherwise spin between operators on CPUs that other requests and Gradio need.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # warnings about initializers and shape inference are not the operator's to act on
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def check(graph: Graph, model: nn.Module, input_size: tuple[int, int]) -> None:
    """GraphError unless the graph carries the expected key and reproduces PyTorch's outputs on a probe batch."""
    stored = graph.session.get_modelmeta().custom_metadata_map.get(KEY_FIELD)
    if stored != graph.key:
        raise GraphError(f"{graph.path.name} was made from other weights or settings (key {str(stored)[:12]}...)")
    probe = torch.randn(3, 3, *input_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = features_and_logits(model, probe)
    try:
        outputs = graph.run(probe, features=True)
    except Exception as e:  # a graph with other inputs or outputs than the ones exported here
        raise GraphError(f"{graph.path.name} failed on a probe batch ({type(e).__name__})") from None
    for name, got, want in zip(("features", "logits"), outputs, expected):
        if got.shape != want.shape or not torch.allclose(got, want.float(), atol=PROBE_ATOL, rtol=PROBE_RTOL):
            raise GraphError(f"{graph.path.name} does not reproduce PyTorch's {name} on a probe batch")


def load_graph(model: nn.Module, data_config: DataConfig, config: dict[str, Any], *, cache_dir: Path | None,
               threads: int) -> Graph:
    """The checked graph of `model`: from the cache when it holds this key's graph, else exported and cached first.

    Only a file named by this key is ever opened, and it is used only when its metadata holds the key and
    it reproduces PyTorch on a probe batch; anything else there (a damaged or foreign file) is replaced by
    a fresh export. Raises ImportError without onnxruntime (or onnx, which the exporter needs), and
    GraphError when no good graph can be had.
    """
    import onnxruntime  # noqa: F401  (first: nothing is exported for a runtime that is absent)

    key = graph_key(model, data_config, config)
    path = Path(cache_dir or default_cache()) / f"{key}.onnx"
    model = model.eval()
    if path.is_file():
        try:
            return _checked(path, key, model, data_config, threads, "from the cache")
        except GraphError as e:
            log.warning("the cached ONNX graph is not used (%s); exporting it again", e)
    try:
        data = export(model, data_config.input_size, key)
        atomic_write(path, lambda f: f.write(data))
    except ImportError:  # onnx, which only the export needs (and which takes a second to import)
        raise
    except Exception as e:  # the exporter raises many types
        raise GraphError(f"the export to ONNX failed ({type(e).__name__}: {str(e)[:200]})") from None
    return _checked(path, key, model, data_config, threads, "exported")


def _checked(path: Path, key: str, model: nn.Module, data_config: DataConfig, threads: int, how: str) -> Graph:
    try:
        graph = Graph(session(path, threads), key, path)
    except Exception as e:  # onnxruntime raises its own types for a damaged file
        raise GraphError(f"ONNX Runtime could not load {path.name} ({type(e).__name__}: {str(e)[:200]})") from None
    check(graph, model, data_config.input_size)
    log.info("ONNX graph %s: %s", how, path)
    return graph


def runtime_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
