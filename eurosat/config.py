"""Configuration: the typed configs of the entry points, their command-line flags, presets and default ids."""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import SettingError
from .radiometry import CHOICES as RADIOMETRIES

DEFAULT_DATASET = "timm/eurosat-rgb"
DEFAULT_ARCH = "resnet50"
# The folder of the bundled default checkpoint, beside app.py; served when no model is named.
BUNDLED_MODEL = "models/eurosat-rgb-resnet18-cpu"

# The environment variable that names the served model (the hosted Space sets it to the pushed ResNet-50).
ENV_MODEL = "EUROSAT_MODEL"

# Cell rows a scene is read at once: a 10 m Sentinel-2 granule's strip is then 512 rows, about 34 MB of uint16 RGB.
WINDOW_ROWS = 8

# Uploads with more pixels are refused from their header, before any pixel is decoded (bomb protection).
MAX_PIXELS = 40_000_000


def _arg(default: Any, help: str, **extra: Any) -> Any:
    """A config field with the help text its command-line flag shows."""
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **extra})
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved beside the checkpoint so a run can be reproduced.

    train.py's flags are generated from these fields and their help texts.
    """

    dataset: str = _arg(DEFAULT_DATASET, "Hub dataset id or local folder in the same layout")
    model: str = _arg(DEFAULT_ARCH, "timm model name")
    model_args: dict[str, Any] = _arg({}, "extra timm create_model arguments, as JSON")
    pretrained: bool = _arg(True, "start from ImageNet weights")
    img_size: int = _arg(224, "input size the tiles are resized to")
    epochs: int = _arg(10, "training epochs")
    batch_size: int = _arg(64, "batch size per process")
    lr: float = _arg(1e-3, "peak learning rate")
    weight_decay: float = _arg(0.05, "weight decay (not on norms and biases)")
    optimizer: Literal["adamw", "sgd"] = _arg("adamw", "optimizer")
    warmup_epochs: float = _arg(1.0, "linear warm-up before the cosine decay, in epochs")
    label_smoothing: float = _arg(0.1, "label smoothing of the cross-entropy")
    train_crop: int | None = _arg(None, "train on random windows of this many pixels of each tile, at the "
                                        "tile's own ground resolution (default: whole tiles)")
    whole_tile_epochs: int = _arg(0, "with --train-crop, the last epochs train on whole tiles again")
    ema_decay: float = _arg(0.0, "keep an exponential moving average of the weights with this decay per "
                                 "step, and validate and save it (0: off)")
    translate: int = _arg(0, "shift each training tile or window by up to this many pixels, mirroring the border")
    erase: int = _arg(0, "blank a random square of this many pixels in each training input (cutout; 0: off)")
    teacher: str | None = _arg(None, "distil from this checkpoint (folder or Hub id): its 8-view answers on the "
                                     "training tiles become soft targets", metavar="CHECKPOINT")
    distill_weight: float = _arg(0.5, "with --teacher, the share of the loss given to the teacher's soft targets")
    distill_temperature: float = _arg(1.0, "with --teacher, the temperature that softens both answers")
    mixup_alpha: float = _arg(0.0, "mixup's Beta parameter (0: off)")
    cutmix_alpha: float = _arg(0.0, "CutMix's Beta parameter (0: off)")
    whiten_stem: bool = _arg(False, "fit the first convolution to whiten the training tiles' pixel patches, and "
                                    "freeze it")
    seed: int = _arg(0, "seed of the split, the initialisation, shuffling and augmentation")
    device: str = _arg("auto", "where to train", choices=["auto", "cpu", "cuda"])
    output_dir: str = _arg("runs/eurosat", "run folder: checkpoint and report")
    resume: bool = _arg(False, "continue the run in --output-dir")
    push_to_hub: str | None = _arg(None, "upload the run folder to this Hub repo (owner/name) when training ends",
                                   metavar="OWNER/NAME")
    private: bool = _arg(False, "create the Hub repo as private")
    max_train_samples: int | None = _arg(None, "stratified subset of train, for quick trials")
    val_fraction: float = _arg(0.2, "share of train held out for validation when the dataset has no "
                                    "validation split")
    tta: bool | None = _arg(None, "serve the mean of the 8 flips and right-angle rotations (config.json says so, "
                                  "and the notice threshold is fitted on it); default: only when it raises "
                                  "validation top-1 by at least 0.3 points")
    preset: str | None = _arg(None, "a recipe from PRESETS; flags given with it win")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# A quarter-width ResNet-18 with a deep 3x3 stem and output stride 16: on 2 CPU cores, more epochs of a narrow
# net beat fewer of a wide one, and a 64 px tile keeps a 4x4 map in the last stage instead of 2x2 (RESULTS.md
# compares it with the plain 7x7 stem and stride 32).
_SMALL_RESNET = dict(
    model="resnet18",
    model_args=dict(channels=[16, 32, 64, 128], stem_width=16, stem_type="deep", output_stride=16),
    pretrained=False,
    img_size=64,
    batch_size=128,
    lr=3e-3,
    weight_decay=0.05,
    optimizer="adamw",
)

# Presets name the recipes whose figures are recorded in RESULTS.md; any flag given on the command line wins.
PRESETS: dict[str, dict[str, Any]] = {
    # The `cpu` schedule cut to 24 epochs (16 on windows, 8 on whole tiles), with Nesterov SGD and stronger label
    # smoothing, which beat AdamW on validation at this length: the accuracy of 28 whole-tile epochs in less time.
    "cpu-quick": dict(_SMALL_RESNET, epochs=24, train_crop=48, whole_tile_epochs=8, ema_decay=0.998,
                      optimizer="sgd", lr=0.1, weight_decay=5e-4, label_smoothing=0.2),
    # The bundled model's recipe: 90 epochs, mostly on 48-pixel windows of the tiles: a window keeps the 10 m
    # ground resolution and costs about half the compute of a whole tile, so the same hour holds more epochs; the
    # last epochs see whole tiles again, as served. An average of the weights is what gets validated and saved.
    "cpu": dict(_SMALL_RESNET, epochs=90, train_crop=48, whole_tile_epochs=30, ema_decay=0.998),
    "gpu": dict(
        model=DEFAULT_ARCH,
        pretrained=True,
        img_size=224,
        epochs=12,
        batch_size=128,
        lr=1e-3,
        weight_decay=0.05,
        optimizer="adamw",
    ),
}


def make_train_config(preset: str | None = None, **overrides: Any) -> TrainConfig:
    """A TrainConfig from a preset, then explicit overrides (None means 'not given')."""
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise SettingError(f"Unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
        values.update(PRESETS[preset])
        values["preset"] = preset
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**values)


@dataclass
class AppConfig:
    """How the demo is served: which model, and the limits that keep a 2-vCPU Space responsive.

    app.py's flags are generated from these fields and their help texts.
    """

    model: str | None = _arg(None, f"checkpoint folder, or Hub id owner/name[@revision] (default: ${ENV_MODEL}, "
                                   f"else the bundled {BUNDLED_MODEL})")
    device: str = _arg("cpu", "where the model runs; auto picks cuda when there is a GPU",
                       choices=["auto", "cpu", "cuda"])
    threads: int | None = _arg(None, "CPU threads per request (default: the usable CPUs shared by the concurrent "
                                     "requests)")
    tta: bool | None = _arg(None, "average the 8 flips and right-angle rotations of each tile (default: as the "
                                  "checkpoint's config.json says, while a tile takes at most --tta-budget-ms)")
    tta_budget_ms: float = _arg(400.0, "with TTA by default, serve one view instead when 8 views make a tile (answer "
                                       "and heatmap) take longer than this here, as measured at start")
    cell_tta: bool | None = _arg(None, "the same for the cells of scenes and batches (default: as the checkpoint's "
                                       "config.json says, while a cell takes at most --cell-tta-budget-ms)")
    cell_tta_budget_ms: float = _arg(20.0, "with cell TTA by default, serve one view per cell when 8 views take "
                                           "longer than this per cell here")
    backend: Literal["onnxruntime", "pytorch"] = _arg(
        "onnxruntime", "what runs the forward passes: ONNX Runtime on a graph exported here from the weights (PyTorch "
                       "when that cannot be had, as the log and the Model panel then say), or PyTorch")
    graph_cache: str | None = _arg(None, "folder for the exported ONNX graphs (default: the Hugging Face cache, "
                                         "under HF_HOME)", metavar="DIR")
    top_k: int = _arg(5, "classes listed by default")
    concurrency_limit: int = _arg(2, "tile requests (/predict, /gradcam, the page's tile) that run at the same time")
    heavy_concurrency: int = _arg(1, "heavy jobs (scene maps, batches) that run at the same time; tiles go first")
    heavy_batch: int = _arg(16, "cells or files per forward pass of a heavy job: a tile arriving meanwhile waits at "
                                "most for one such batch")
    heavy_share: int = _arg(2, "heavy jobs one visitor may have running or waiting (with one heavy job at a time: "
                               "one running, one waiting); a further one is refused at once")
    # Requests beyond this many waiting are refused at once ("queue full") rather than left to time out.
    max_queue_size: int = _arg(64, "waiting requests before new ones are refused")
    max_file_size: str = _arg("10mb", "largest upload, e.g. 5mb")
    max_pixels: int = _arg(MAX_PIXELS, "largest image accepted, in pixels, checked before decoding")
    examples_dir: str | None = _arg(None, "folder of example tiles for the gallery (app.py passes examples/ "
                                          "beside it)", flag="examples")
    mcp: bool = _arg(True, "also serve the tools to AI agents over MCP at /gradio_api/mcp/")


@dataclass
class SpaceConfig:
    """What `python -m eurosat.space` publishes: the Space, the model it serves, its secret, its visibility.

    Its arguments are generated from these fields and their help texts.
    """

    space: str = _arg("", "the Space to create or update", positional=True, metavar="OWNER/SPACE")
    model: str | None = _arg(None, f"the Hub model the Space serves, owner/name[@revision]: sets the Space variable "
                                   f"{ENV_MODEL} and preloads the weights when the Space is built (default: the "
                                   f"bundled {BUNDLED_MODEL})", metavar="OWNER/NAME")
    secret_openai_key: bool = _arg(False, "also store this environment's OPENAI_API_KEY as the Space secret of that "
                                          "name, which turns on the GPT-4o tab for every visitor")
    private: bool = _arg(False, "create the Space as private")


@dataclass
class MapConfig:
    """What `python -m eurosat.map` maps: a whole raster, window by window, with the app's model and settings.

    Its arguments are generated from these fields and their help texts.
    """

    input: str = _arg("", "the raster to map: a georeferenced GeoTIFF or JPEG 2000 (3 bands, or 13 in EuroSAT's "
                          "multispectral order), of any size", positional=True, metavar="INPUT")
    output: str = _arg("", "the class map to write: a Cloud-Optimized GeoTIFF, one pixel per 640 m cell",
                       positional=True, metavar="OUTPUT")
    csv: str | None = _arg(None, "also write one row per cell to this CSV", metavar="CELLS.csv")
    areas: str | None = _arg(None, "the per-class area table (CSV; default: OUTPUT's name with _areas.csv)",
                             metavar="AREAS.csv")
    model: str | None = _arg(None, f"checkpoint folder, or Hub id owner/name[@revision] (default: ${ENV_MODEL}, "
                                   f"else the bundled {BUNDLED_MODEL})")
    radiometry: str = _arg("auto", "how the values become true colour: decided from the file (auto), Sentinel-2 "
                                   "L1C digital numbers (DN / 2750), DN with the +1000 offset of processing "
                                   "baseline 04.00 and later, reflectance fractions, or 8-bit true colour",
                           choices=list(RADIOMETRIES))
    tta: bool | None = _arg(None, "average the 8 flips and right-angle rotations of each cell (default: as the "
                                  "checkpoint's config.json says, as the app does)")
    batch_size: int = _arg(64, "cells per forward pass")
    backend: Literal["onnxruntime", "pytorch"] = _arg(
        "onnxruntime", "what runs the forward passes, as in the app: ONNX Runtime on a graph exported here from the "
                       "weights (PyTorch when that cannot be had, as the output then says), or PyTorch")
    graph_cache: str | None = _arg(None, "folder for the exported ONNX graphs (default: the Hugging Face cache)",
                                   metavar="DIR")
    window_rows: int = _arg(WINDOW_ROWS, "cell rows read from the raster at once (8: strips of 512 rows of 10 m "
                                         "pixels)")
    device: str = _arg("cpu", "where the model runs; auto picks cuda when there is a GPU",
                       choices=["auto", "cpu", "cuda"])
    threads: int | None = _arg(None, "CPU threads (default: the usable CPUs)")
    progress: bool = _arg(True, "show a progress bar with cells per second")


def _flag_type(hint: Any) -> dict[str, Any]:
    """argparse keywords for a field's type: Optional[X] is X, Literal is its choices, dicts are JSON."""
    if typing.get_origin(hint) is Literal:
        return {"choices": list(typing.get_args(hint))}
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if args and typing.get_origin(hint) is not dict:  # X | None
        return _flag_type(args[0])
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if hint is dict or typing.get_origin(hint) is dict:
        return {"type": json.loads, "metavar": "JSON"}
    return {"type": hint}


def add_flags(parser: argparse.ArgumentParser, config: type, **choices: list[str]) -> None:
    """One flag per field of a config dataclass, with its help text; an absent flag parses as None.

    A field's metadata may rename its flag (`flag`), make it a required positional argument (`positional`)
    or add argparse keywords; `choices` adds choices known only at run time.
    """
    hints = typing.get_type_hints(config)
    for f in dataclasses.fields(config):
        meta = dict(f.metadata)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        name = meta.pop("flag", f.name).replace("_", "-")
        help_text = meta.pop("help")
        positional = meta.pop("positional", False)
        if default is not None and "default:" not in help_text and not positional:
            help_text += f" (default: {json.dumps(default) if isinstance(default, (dict, list)) else default})"
        kwargs = {**_flag_type(hints[f.name]), **meta, **({"choices": choices[f.name]} if f.name in choices else {})}
        if positional:
            parser.add_argument(f.name, help=help_text, **kwargs)
        else:
            parser.add_argument(f"--{name}", dest=f.name, default=None, help=help_text, **kwargs)


def from_environment(config: type, environ: dict[str, str], prefix: str = "EUROSAT_") -> dict[str, Any]:
    """The fields of a config set in the environment as PREFIX + FIELD (EUROSAT_HEAVY_SHARE=3, EUROSAT_TTA=false).

    A Space is configured by its variables, not by flags, so every flag has such a twin; a value that
    cannot be read raises SettingError naming the variable, rather than being ignored.
    """
    hints = typing.get_type_hints(config)
    values = {}
    for f in dataclasses.fields(config):
        name = prefix + f.name.upper()
        text = environ.get(name, "").strip()
        if not text:
            continue
        kind = _flag_type(hints[f.name])
        try:
            if kind.get("action") is argparse.BooleanOptionalAction:
                value = {"1": True, "true": True, "yes": True, "on": True,
                         "0": False, "false": False, "no": False, "off": False}[text.lower()]
            else:
                value = kind.get("type", str)(text)
        except (KeyError, ValueError, TypeError):
            wanted = "true or false" if "action" in kind else {int: "a whole number", float: "a number"}.get(
                kind.get("type"), "valid JSON")
            raise SettingError(f"{name} is {text[:40]!r}; it must be {wanted}.") from None
        choices = f.metadata.get("choices") or kind.get("choices")
        if choices and value not in choices:
            raise SettingError(f"{name} is {text[:40]!r}; choose one of: {', '.join(map(str, choices))}.")
        values[f.name] = value
    return values


def from_flags(config: type, args: argparse.Namespace, **values: Any) -> Any:
    """A config from parsed flags: given flags, then `values` where a flag was not given, then the defaults."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(config) if getattr(args, f.name, None) is not None}
    return config(**{**{k: v for k, v in values.items() if v is not None}, **given})
