"""The model card: README.md with Hub metadata, results, usage, training facts and limitations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from .config import DEFAULT_DATASET, ENV_MODEL
from .hub import is_local, public_name
from .metrics import ECE_BINS

# The Hub's image-classification tags; `remote-sensing` and `sentinel-2` make the model findable by domain.
CARD_TAGS = ["image-classification", "timm", "eurosat", "remote-sensing", "sentinel-2"]
# The weights are released under MIT, the licence of the EuroSAT data they were trained on, so the model
# carries no terms beyond those of its training data.
CARD_LICENSE = "mit"

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
    local = is_local(source)
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
    source = public_name(run_info.get("dataset")) or DEFAULT_DATASET
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
    if "ece_tta" in metrics:
        rows.append(("Expected calibration error of the 8-view mean", f"{metrics['ece_tta']:.4f}"))
    if "nll" in metrics:
        rows.append(("Negative log-likelihood", f"{metrics['nll']:.4f}"))
    rows.append(("Images scored", f"{metrics['num_images']:,}"))
    per_class = "\n".join(
        f"| {name} | {s['precision']:.3f} | {s['recall']:.3f} | {s['f1']:.3f} | {s['support']} |"
        for name, s in ((name, metrics["per_class"][name]) for name in label_names))
    tta = (" The app serves the mean of the 8 views by default, so the TTA figure is what to expect from it."
           if metrics.get("served_tta") else " The app serves single-view predictions, so plain top-1 is what to "
           "expect from it." if "top1_tta" in metrics else "")
    notice = metrics.get("notice")
    if notice:
        rows.append((f"Answers below {notice['threshold']:.0%} get a notice in the app (threshold chosen on "
                     "validation): errors caught / right answers flagged",
                     f"{notice['catch']:.0%} / {notice['false_flag']:.1%}"))
    table = "\n".join(f"| {name} | {value} |" for name, value in rows)
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

How the error rate falls as the least confident answers are set aside, and where the notice sits:

![Risk-coverage curve](risk_coverage.png)
"""


def _training_section(run_info: dict) -> str:
    epochs = run_info.get("epochs")
    if epochs is not None and run_info.get("best_epoch"):
        epochs = f"{epochs} (best on validation: epoch {run_info['best_epoch']})"
    pretrained, wall = run_info.get("pretrained"), run_info.get("wall_time_s")
    facts = [
        ("Command", run_info.get("command"), "`{}`"),
        ("Architecture (timm)", run_info.get("model"), "`{}`"),
        ("Model arguments", json.dumps(run_info["model_args"]) if run_info.get("model_args") else None, "`{}`"),
        ("Initialisation", None if pretrained is None else
         f"fine-tuned from `{run_info.get('initial_weights') or 'ImageNet weights from timm'}`" if pretrained
         else "random (trained from scratch, no pretrained weights)", "{}"),
        ("Base model", run_info.get("base_model"), "`{}`"),
        ("Preset", run_info.get("preset"), "`{}`"),
        ("Input size", run_info.get("img_size"), "{0} x {0} (the whole tile resized)"),
        ("Training windows", run_info.get("train_crop"), "random {0} x {0} px windows of the tiles, whole tiles "
                                                        "in the last epochs"),
        ("Weight average (EMA) decay per step", run_info.get("ema_decay") or None, "{:g}"),
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
                 f"`{public_name(run_info['checkpoint'])}`; see its own card for how it was trained.")
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
