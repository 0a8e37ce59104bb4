"""Evaluation report: metrics from probabilities, the confusion-matrix and error-grid images, the model card."""

from __future__ import annotations

import json
import math
import os
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .config import DEFAULT_DATASET, ENV_MODEL

ECE_BINS = 15
NLL_FLOOR = 1e-12  # the same floor engine.evaluate uses, so the report's NLL matches the training log's loss

# Error grid layout, in pixels: a 64x64 tile is enlarged 3x (nearest) so single fields stay visible.
GRID_COLUMNS = 6
GRID_MIN_COLUMNS = 3  # the canvas is never narrower than this many cells, so the header line fits
TILE_PX = 192
CELL_PAD = 8
CAPTION_LINE_PX = 18
HEADER_PX = 48
CELL_W = TILE_PX + 2 * CELL_PAD
CELL_H = CELL_PAD + TILE_PX + 4 + 2 * CAPTION_LINE_PX + CELL_PAD

# The Hub's image-classification tags; `remote-sensing` and `sentinel-2` make the model findable by domain.
CARD_TAGS = ["image-classification", "timm", "eurosat", "remote-sensing", "sentinel-2"]
# The weights are released under MIT, the licence of the EuroSAT data they were trained on, so the model
# carries no terms beyond those of its training data.
CARD_LICENSE = "mit"

# Keys every metrics.json has (null when the run did not record them), so its readers see one schema.
RUN_KEYS = ("dataset", "split", "model", "preset", "epochs", "wall_time_s", "images_per_s")

EUROSAT_CITATION = """\
@article{helber2019eurosat,
  title   = {EuroSAT: A Novel Dataset and Deep Learning Benchmark for Land Use and Land Cover Classification},
  author  = {Helber, Patrick and Bischke, Benjamin and Dengel, Andreas and Borth, Damian},
  journal = {IEEE Journal of Selected Topics in Applied Earth Observations and Remote Sensing},
  volume  = {12},
  number  = {7},
  pages   = {2217--2226},
  year    = {2019},
  doi     = {10.1109/JSTARS.2019.2918242}
}"""


# ----------------------------------------------------------------------------------------------------------
# Metrics


def _as_numpy(x: Any) -> np.ndarray:
    """numpy view of a numpy array, list or torch tensor (on any device), without importing torch."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check_inputs(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> None:
    if probs.ndim != 2:
        raise ValueError(f"probs must be a 2-D array (images, classes); got shape {probs.shape}")
    if labels.ndim != 1 or len(labels) != len(probs):
        raise ValueError(
            f"labels must be 1-D with one entry per row of probs; got {labels.shape} for probs {probs.shape}")
    if len(probs) == 0:
        raise ValueError("there are no images to score: probs and labels are empty")
    if probs.shape[1] != num_classes:
        raise ValueError(f"probs has {probs.shape[1]} columns but there are {num_classes} label names")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices; got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in 0..{num_classes - 1}; found {labels.min()}..{labels.max()}")
    # Logits passed by mistake would give a meaningless ECE and NLL, so refuse them rather than report them.
    sums = probs.sum(axis=1)
    if not np.all(np.isfinite(probs)) or probs.min() < 0 or np.abs(sums - 1).max() > 1e-3:
        raise ValueError("each row of probs must be a probability distribution (non-negative, summing to 1): "
                         "apply softmax to the logits first")


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts (num_classes, num_classes): rows are the true class, columns the predicted class."""
    return np.bincount(labels * num_classes + predictions, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes)


def expected_calibration_error(confidences: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE over equal-width confidence bins ((0, 1/M], ..., ((M-1)/M, 1]): the support-weighted mean of
    |accuracy - mean confidence| per bin (Guo et al. 2017)."""
    bins = np.clip(np.ceil(confidences * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    conf_sum = np.bincount(bins, weights=confidences, minlength=n_bins)
    correct_sum = np.bincount(bins, weights=correct.astype(np.float64), minlength=n_bins)
    return float(np.abs(correct_sum - conf_sum).sum() / len(confidences))


def classification_metrics(probs: np.ndarray, labels: np.ndarray, label_names: Sequence[str],
                           n_bins: int = ECE_BINS) -> dict[str, Any]:
    """Accuracy, calibration and per-class scores of predicted probabilities, as JSON-ready plain data.

    Precision of a class never predicted, and recall of a class with no images, are 0 (never NaN).
    `macro_f1` averages F1 over the classes that occur in the labels or the predictions, the
    definition of scikit-learn's `f1_score(average="macro")`, so a class absent from a small
    evaluation set does not count as a failure.
    """
    probs = _as_numpy(probs).astype(np.float64)
    labels = _as_numpy(labels)
    num_classes = len(label_names)
    _check_inputs(probs, labels, num_classes)
    labels = labels.astype(np.int64)

    predictions = probs.argmax(axis=1)
    confidences = probs.max(axis=1)
    correct = predictions == labels
    cm = confusion_matrix(labels, predictions, num_classes)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros(num_classes), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(num_classes), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(num_classes),
                   where=precision + recall > 0)
    seen = (support > 0) | (predicted > 0)

    metrics: dict[str, Any] = {"top1": float(correct.mean())}
    if num_classes > 5:
        top5 = np.argsort(-probs, axis=1, kind="stable")[:, :5]
        metrics["top5"] = float((top5 == labels[:, None]).any(axis=1).mean())
    metrics.update({
        "macro_f1": float(f1[seen].mean()),
        "ece": expected_calibration_error(confidences, correct, n_bins),
        "ece_bins": int(n_bins),
        "nll": float(-np.log(np.maximum(probs[np.arange(len(labels)), labels], NLL_FLOOR)).mean()),
        "mean_confidence": float(confidences.mean()),
        "num_images": int(len(labels)),
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                   "support": int(support[i])}
            for i, name in enumerate(label_names)},
        "confusion_matrix": cm.tolist(),
    })
    return metrics


def row_normalise(cm: Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
    """Each row as fractions of that true class; a class with no images gets a row of zeros, not NaN."""
    cm = np.asarray(cm, dtype=np.float64)
    totals = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)


# ----------------------------------------------------------------------------------------------------------
# Files


def _atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Run `write(file)` on a temporary file beside `path`, then rename it into place.

    A crash or a failed write leaves the previous file (or none), never a truncated one that a
    reader (the Hub, the app) could mistake for a finished report.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not mkstemp: its files are private (0600); an exclusive open keeps the umask's permissions.
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(tmp, mode.replace("w", "x"), **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_confusion_matrix(cm: Sequence[Sequence[int]] | np.ndarray, label_names: Sequence[str],
                          path: str | os.PathLike) -> Path:
    """A PNG heat map of the row-normalised confusion matrix, with the percentage written in each cell.

    Rows are true classes (labelled with their image count), columns the predictions; empty cells
    are left blank so the mistakes stand out.
    """
    # The object-oriented API renders through Agg without pyplot: no global backend switch, no GUI,
    # and safe to call from a server thread.
    from matplotlib.figure import Figure

    counts = np.asarray(cm, dtype=np.int64)
    n = len(label_names)
    if counts.shape != (n, n):
        raise ValueError(f"the confusion matrix is {counts.shape}, but there are {n} label names")
    percent = row_normalise(counts) * 100
    side = max(6.0, 0.55 * n + 3.5)
    fig = Figure(figsize=(side + 1.0, side), dpi=120)
    ax = fig.add_subplot()
    image = ax.imshow(percent, cmap="Blues", vmin=0, vmax=100)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="% of the true class")
    ax.set_xticks(range(n), labels=list(label_names), rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n), labels=[f"{name} ({total})" for name, total in zip(label_names, counts.sum(axis=1))])
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class (images)")
    ax.set_title(f"Confusion matrix, row-normalised (%), {int(counts.sum())} images")
    fontsize = 9 if n <= 12 else 6
    for i in range(n):
        for j in range(n):
            if counts[i, j] == 0:
                continue
            value = percent[i, j]
            text = "<1" if value < 1 else f"{value:.0f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=fontsize,
                    color="white" if value > 55 else "black")
    fig.tight_layout()
    return _atomic_write(path, lambda f: fig.savefig(f, format="png"))


def pick_errors(labels: np.ndarray, predictions: np.ndarray, probs_of_predicted: np.ndarray,
                max_tiles: int) -> np.ndarray:
    """Indices of the misclassified images, most confident mistakes first (ties in index order)."""
    labels, predictions, probs_of_predicted = (_as_numpy(a) for a in (labels, predictions, probs_of_predicted))
    wrong = np.flatnonzero(labels != predictions)
    order = np.argsort(-probs_of_predicted[wrong], kind="stable")
    return wrong[order][:max_tiles]


def grid_size(num_tiles: int) -> tuple[int, int]:
    """(width, height) in pixels of the error grid image for `num_tiles` tiles: a header, then rows of cells."""
    columns = max(min(num_tiles, GRID_COLUMNS), GRID_MIN_COLUMNS)
    return columns * CELL_W, HEADER_PX + math.ceil(num_tiles / GRID_COLUMNS) * CELL_H


def tile_origin(index: int) -> tuple[int, int]:
    """Top-left pixel (x, y) of the `index`-th tile's box in the error grid."""
    row, col = divmod(index, GRID_COLUMNS)
    return col * CELL_W + CELL_PAD, HEADER_PX + row * CELL_H + CELL_PAD


def _to_hwc(images: Any) -> np.ndarray:
    images = _as_numpy(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images must be a uint8 batch (N, 3, H, W) or (N, H, W, 3); got {images.dtype} "
                         f"{images.shape}")
    if images.shape[1] == 3:  # the project's layout wins when a tile is 3 pixels wide
        return images.transpose(0, 2, 3, 1)
    if images.shape[3] == 3:
        return images
    raise ValueError(f"images must have 3 channels, first or last; got shape {images.shape}")


def _enlarge(tile: np.ndarray):
    """A PIL image of the tile fitted to TILE_PX: integer nearest-neighbour enlargement keeps fields crisp."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(tile))
    longest = max(image.size)
    if longest <= TILE_PX:
        scale = TILE_PX // longest
        return image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    size = (max(1, round(image.width * TILE_PX / longest)), max(1, round(image.height * TILE_PX / longest)))
    return image.resize(size, Image.Resampling.BOX)


def _font(size: int):
    """DejaVu Sans from matplotlib's own data: always installed with it, and it has the → glyph."""
    import matplotlib
    from PIL import ImageFont

    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"), size)


def _fit(draw, text: str, font, width: int) -> str:
    """`text`, shortened with an ellipsis until it fits in `width` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def save_error_grid(images: Any, labels: Any, predictions: Any, probs_of_predicted: Any,
                    label_names: Sequence[str], path: str | os.PathLike, max_tiles: int = 36) -> Path:
    """A PNG grid of misclassified tiles, most confident mistakes first, captioned "true → predicted (p=0.83)".

    The file is always written: when nothing is misclassified it says so, so a report folder is
    always complete. The PNG's "Description" text chunk repeats the header line for scripts.
    """
    from PIL import Image, ImageDraw
    from PIL.PngImagePlugin import PngInfo

    if max_tiles < 1:
        raise ValueError(f"max_tiles must be at least 1; got {max_tiles}")
    tiles = _to_hwc(images)
    labels, predictions, probs_of_predicted = (_as_numpy(a) for a in (labels, predictions, probs_of_predicted))
    if not len(tiles) == len(labels) == len(predictions) == len(probs_of_predicted):
        raise ValueError(f"images, labels, predictions and probabilities differ in length: {len(tiles)}, "
                         f"{len(labels)}, {len(predictions)}, {len(probs_of_predicted)}")
    for name, values in (("labels", labels), ("predictions", predictions)):
        if len(values) and (values.min() < 0 or values.max() >= len(label_names)):
            raise ValueError(f"{name} must lie in 0..{len(label_names) - 1}")

    chosen = pick_errors(labels, predictions, probs_of_predicted, max_tiles)
    wrong = int((labels != predictions).sum())
    if wrong == 0:
        header = f"No misclassified images: all {len(labels)} predictions are correct."
    else:
        shown = "all shown" if len(chosen) == wrong else f"the {len(chosen)} most confident shown"
        header = f"{wrong} of {len(labels)} images misclassified ({shown}); caption: true → predicted (p)"
    width, height = grid_size(len(chosen))
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    header_font, caption_font = _font(14), _font(12)
    draw.text((CELL_PAD, HEADER_PX // 2), _fit(draw, header, header_font, width - 2 * CELL_PAD),
              font=header_font, fill="black", anchor="lm")
    for k, i in enumerate(chosen):
        x, y = tile_origin(k)
        tile = _enlarge(tiles[i])
        canvas.paste(tile, (x + (TILE_PX - tile.width) // 2, y + (TILE_PX - tile.height) // 2))
        lines = (f"{label_names[labels[i]]} →",
                 f"{label_names[predictions[i]]} (p={float(probs_of_predicted[i]):.2f})")
        for line_no, line in enumerate(lines):
            draw.text((x, y + TILE_PX + 4 + line_no * CAPTION_LINE_PX), _fit(draw, line, caption_font, TILE_PX),
                      font=caption_font, fill="black" if line_no == 0 else (180, 0, 0))
    info = PngInfo()
    info.add_text("Description", header)
    return _atomic_write(path, lambda f: canvas.save(f, format="PNG", pnginfo=info))


# ----------------------------------------------------------------------------------------------------------
# Model card


def _is_local(source: str) -> bool:
    """True for a folder path, False for a Hub id (owner/name)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if Path(source).expanduser().exists():
        return True
    try:
        validate_repo_id(source)
    except HFValidationError:
        return True
    return source.count("/") != 1


def _public_name(source: str | None) -> str | None:
    """A Hub id as is; a local folder by its name only, so no private path ends up in a public card."""
    if not source:
        return None
    return Path(source).name if _is_local(source) else source


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {secs} s" if minutes else f"{secs} s"


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def _card_metadata(model_name: str, metrics: dict, run_info: dict) -> str:
    """The YAML front matter, built by huggingface_hub so `model-index` is exactly what the Hub parses."""
    from huggingface_hub import EvalResult, ModelCardData

    source = run_info.get("dataset") or DEFAULT_DATASET
    local = _is_local(source)
    # A local folder is a copy of the Hub dataset: link the Hub id, but name the copy actually scored.
    dataset_id = DEFAULT_DATASET if local else source
    dataset_name = f"EuroSAT RGB (local copy: {Path(source).name})" if local else f"EuroSAT RGB ({source})"
    common = dict(task_type="image-classification", task_name="Image Classification", dataset_type=dataset_id,
                  dataset_name=dataset_name, dataset_split=run_info.get("split") or "test")
    # Fractions, as the Hub's own Trainer-written cards record accuracy, so values equal metrics.json's.
    results = [EvalResult(metric_type="accuracy", metric_name="Top-1 accuracy", metric_value=float(metrics["top1"]),
                          **common)]
    if "top1_tta" in metrics:
        results.append(EvalResult(metric_type="accuracy", metric_name="Top-1 accuracy (8-view flip/rotation TTA)",
                                  metric_value=float(metrics["top1_tta"]), **common))
    results.append(EvalResult(metric_type="f1", metric_name="Macro F1", metric_config="macro",
                              metric_value=float(metrics["macro_f1"]), **common))
    data = ModelCardData(
        library_name="timm", license=CARD_LICENSE, datasets=[dataset_id], tags=list(CARD_TAGS),
        pipeline_tag="image-classification", metrics=["accuracy", "f1"], base_model=run_info.get("base_model"),
        model_name=model_name, eval_results=results)
    return data.to_yaml()


def _results_section(metrics: dict, run_info: dict, label_names: Sequence[str]) -> str:
    split = run_info.get("split") or "test"
    source = _public_name(run_info.get("dataset")) or DEFAULT_DATASET
    rows = [("Top-1 accuracy", _pct(metrics["top1"]))]
    if "top1_tta" in metrics:
        rows.append(("Top-1 accuracy, 8 flips/rotations averaged", _pct(metrics["top1_tta"])))
    if "top5" in metrics:
        rows.append(("Top-5 accuracy", _pct(metrics["top5"])))
    rows.append(("Macro F1", f"{metrics['macro_f1']:.4f}"))
    rows.append((f"Expected calibration error ({metrics.get('ece_bins', ECE_BINS)} bins)", f"{metrics['ece']:.4f}"))
    if "ece_uncalibrated" in metrics:
        rows.append((f"The same before temperature scaling (T = {metrics['temperature']:g}, fitted on validation)",
                     f"{metrics['ece_uncalibrated']:.4f}"))
    if "nll" in metrics:
        rows.append(("Negative log-likelihood", f"{metrics['nll']:.4f}"))
    rows.append(("Images scored", f"{metrics['num_images']:,}"))
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
    per_class = "\n".join(
        f"| {name} | {s['precision']:.3f} | {s['recall']:.3f} | {s['f1']:.3f} | {s['support']} |"
        for name, s in ((name, metrics["per_class"][name]) for name in label_names))
    tta = " The app serves single-view predictions, so plain top-1 is what to expect from it." \
        if "top1_tta" in metrics else ""
    return f"""## Results

On the `{split}` split of `{source}`.{tta}

| Metric | Value |
|---|---|
{table}

| Class | Precision | Recall | F1 | Images |
|---|---|---|---|---|
{per_class}

![Confusion matrix, row-normalised](confusion_matrix.png)

The most confident mistakes on this split ([errors.png](errors.png)):

![Misclassified tiles](errors.png)
"""


def _training_section(run_info: dict) -> str:
    epochs = run_info.get("epochs")
    if epochs is not None and run_info.get("best_epoch"):
        epochs = f"{epochs} (best on validation: epoch {run_info['best_epoch']})"
    pretrained, wall = run_info.get("pretrained"), run_info.get("wall_time_s")
    facts = [
        ("Architecture (timm)", run_info.get("model"), "`{}`"),
        ("Model arguments", json.dumps(run_info["model_args"]) if run_info.get("model_args") else None, "`{}`"),
        ("Initialisation", None if pretrained is None else
         "ImageNet weights from timm" if pretrained else "random (trained from scratch)", "{}"),
        ("Base model", run_info.get("base_model"), "`{}`"),
        ("Preset", run_info.get("preset"), "`{}`"),
        ("Input size", run_info.get("img_size"), "{0} x {0} (the whole tile resized)"),
        ("Epochs", epochs, "{}"),
        ("Best validation accuracy", run_info.get("best_val_accuracy"), "{:.2%}"),
        ("Optimizer", run_info.get("optimizer"), "{}"),
        ("Peak learning rate", run_info.get("lr"), "{:g}"),
        ("Batch size (per process)", run_info.get("batch_size"), "{}"),
        ("Processes", run_info.get("world_size"), "{}"),
        ("Seed", run_info.get("seed"), "{}"),
        ("Device", run_info.get("device"), "`{}`"),
        ("Training time", None if wall is None else _duration(wall), "{}"),
        ("Training throughput", run_info.get("images_per_s"), "{:.0f} images/s"),
    ]
    table = "\n".join(f"| {name} | {fmt.format(value)} |" for name, value, fmt in facts if value not in (None, ""))
    if "checkpoint" in run_info:
        intro = (f"These figures come from `python train.py evaluate` on the checkpoint "
                 f"`{_public_name(run_info['checkpoint'])}`; see its own card for how it was trained.")
    else:
        intro = ("Trained with this project's `train.py`: random flips and right-angle rotations of each tile "
                 "(an overhead view has no 'up'), linear warm-up then cosine learning-rate decay, label "
                 "smoothing; the epoch with the best validation accuracy was kept and scored once on the test split.")
    return f"## Training\n\n{intro}\n\n| Setting | Value |\n|---|---|\n{table}\n"


def _usage_section(repo: str, temperature: float) -> str:
    return f"""## How to use

With timm (the weights are `model.safetensors`; the class names and preprocessing come from `config.json`):

```python
import timm
import torch
from PIL import Image

model = timm.create_model("hf-hub:{repo}", pretrained=True).eval()
# config.json stores crop_mode "squash" and crop_pct 1.0: the whole tile is resized, as in training.
transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
labels = model.pretrained_cfg["label_names"]

image = Image.open("tile.png").convert("RGB")  # a 64x64 Sentinel-2 RGB tile
temperature = {temperature:g}  # config.json's "temperature", fitted on validation: calibrated probabilities
with torch.inference_mode():
    probs = (model(transform(image).unsqueeze(0)) / temperature).softmax(dim=-1)[0]
for p, i in zip(*probs.topk(3)):
    print(f"{{labels[i]}}: {{p:.1%}}")
```

With this project's Gradio app (probabilities, Grad-CAM and an optional GPT-4o second opinion):

```bash
python app.py --model {repo}
# or
{ENV_MODEL}={repo} python app.py
```
"""


def model_card(*, repo_id: str | None, metrics: dict, run_info: dict, label_names: Sequence[str]) -> str:
    """README.md for the Hub: YAML metadata with a `model-index`, results, usage, training, limitations.

    Without `repo_id` the snippets use the placeholder `<owner>/<name>`; push with
    `train.py --push-to-hub owner/name` to get a card that names the real repo.
    """
    repo = repo_id or "<owner>/<name>"
    arch = run_info.get("model") or "timm"
    model_name = repo_id.split("/")[-1] if repo_id else f"{arch}-eurosat-rgb"
    metadata = _card_metadata(model_name, metrics, run_info)
    classes = ", ".join(f"`{name}`" for name in label_names)
    return f"""---
{metadata}
---

# EuroSAT land-cover classifier: `{arch}`

A [timm](https://github.com/huggingface/pytorch-image-models) `{arch}` that labels a Sentinel-2 RGB tile
with one of {len(label_names)} EuroSAT land-cover classes: {classes}.
Top-1 accuracy {_pct(metrics['top1'])} and macro F1 {metrics['macro_f1']:.4f} on the {metrics['num_images']:,}
images of the `{run_info.get('split') or 'test'}` split.

{_results_section(metrics, run_info, label_names)}
{_usage_section(repo, metrics.get('temperature', 1.0))}
{_training_section(run_info)}
## Limitations

- Trained on EuroSAT: 64x64 RGB tiles at 10 m per pixel from Sentinel-2 over Europe. Other resolutions,
  other sensors (aerial photos, Landsat, drones), other regions and ordinary photos are out of
  distribution: the model still answers with one of its {len(label_names)} classes, often confidently.
- A tile holds one label; mixed tiles (a river through a forest) get the dominant or an arbitrary class.
- The probabilities are calibrated only as far as the ECE above shows, and only on EuroSAT-like tiles.
- Not for decisions about land rights, insurance or enforcement without human review.

## Dataset and citation

EuroSAT (RGB version), 27,000 labelled Sentinel-2 tiles, distributed on the Hub as
[`{DEFAULT_DATASET}`](https://huggingface.co/datasets/{DEFAULT_DATASET}) under the MIT licence.

```bibtex
{EUROSAT_CITATION}
```

## License

MIT, the licence of the EuroSAT data these weights were trained on.
"""


# ----------------------------------------------------------------------------------------------------------
# The whole report


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"metrics.json cannot hold a {type(value).__name__}: {value!r}")


def report_record(metrics: dict, run_info: dict, label_names: Sequence[str]) -> dict[str, Any]:
    """The content of metrics.json: headline numbers, then the run, then the per-class detail.

    Measured values win over run_info on a name clash: the file reports what was measured.
    """
    detail = ("per_class", "confusion_matrix")
    record = {k: v for k, v in metrics.items() if k not in detail}
    record.update({k: run_info.get(k) for k in RUN_KEYS if k not in record})
    record.update({k: v for k, v in run_info.items() if k not in record})
    record.update({k: metrics[k] for k in detail if k in metrics})
    record["label_names"] = list(label_names)
    return record


def write_report(output_dir: str | os.PathLike, *, metrics: dict, run_info: dict, label_names: Sequence[str],
                 images: Any, labels: Any, probs: Any, repo_id: str | None = None) -> dict[str, Path]:
    """Write metrics.json, confusion_matrix.png, errors.png and README.md into `output_dir`, each atomically.

    `images` are the scored uint8 tiles, `labels` their classes and `probs` (N, C) the probabilities the
    metrics came from. Returns {"metrics": ..., "confusion_matrix": ..., "errors": ..., "model_card": ...}.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    probs = _as_numpy(probs)
    text = json.dumps(report_record(metrics, run_info, label_names), indent=2, allow_nan=False,
                      default=_json_default) + "\n"
    card = model_card(repo_id=repo_id, metrics=metrics, run_info=run_info, label_names=label_names)
    return {
        "metrics": _atomic_write(out / "metrics.json", lambda f: f.write(text), mode="w"),
        "confusion_matrix": save_confusion_matrix(metrics["confusion_matrix"], label_names,
                                                  out / "confusion_matrix.png"),
        "errors": save_error_grid(images, labels, probs.argmax(axis=1), probs.max(axis=1), label_names,
                                  out / "errors.png"),
        "model_card": _atomic_write(out / "README.md", lambda f: f.write(card), mode="w"),
    }
