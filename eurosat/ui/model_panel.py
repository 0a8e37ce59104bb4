"""The Model panel: what is served, read from the checkpoint folder: architecture, training, quality, calibration."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gradio as gr

from ..hub import Checkpoint, hub_repo, public_name
from ..metrics import most_confused


def card_link(checkpoint: Checkpoint, app_dir: Path) -> str:
    """Where a reader finds the model card: the Hub page, or the card's path in this repository."""
    repo = hub_repo(checkpoint.source)
    if repo:
        return f"[model card on the Hub](https://huggingface.co/{repo})"
    folder = Path(checkpoint.source).resolve()
    where = folder.relative_to(app_dir) if folder.is_relative_to(app_dir) else Path(folder.name)
    return f"model card: `{where / 'README.md'}`"


def read_metrics(checkpoint: Checkpoint) -> dict[str, Any]:
    """The checkpoint's metrics.json (written by train.py beside the weights), or {} when it has none."""
    path = (checkpoint.folder or Path(checkpoint.source)) / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return metrics if isinstance(metrics, dict) else {}


def facts(checkpoint: Checkpoint, app_dir: Path, views: str, backend: str) -> dict[str, Any]:
    """Plain data about the served model: what it is, how it was trained, how good it is (read once, at start),
    `views`, how many test-time views this app serves (`Predictor.views_note`), and `backend`, what runs its
    forward passes (`Predictor.backend_note`)."""
    train = checkpoint.config.get("train_config") or {}
    metrics = read_metrics(checkpoint)
    per_class = metrics.get("per_class") or {}
    return {
        "name": public_name(checkpoint.source),
        "architecture": checkpoint.architecture,
        "parameters": sum(p.numel() for p in checkpoint.model.parameters()),
        "initialisation": (f"fine-tuned from {checkpoint.config['initial_weights']}"
                           if checkpoint.config.get("initial_weights") else
                           "trained from scratch (random initialisation)" if train.get("pretrained") is False
                           else "not recorded"),
        "dataset": public_name(train["dataset"]) if train.get("dataset") else None,
        "split": metrics.get("split"),
        "test_images": metrics.get("num_images"),
        "top1": metrics.get("top1"),
        "top1_tta": metrics.get("top1_tta"),
        "macro_f1": metrics.get("macro_f1"),
        "ece": metrics.get("ece"),
        "f1": {name: scores.get("f1") for name, scores in per_class.items()},
        "confused": most_confused(metrics["confusion_matrix"], checkpoint.label_names)
        if metrics.get("confusion_matrix") else [],
        "temperature": checkpoint.temperature,
        "notice_threshold": checkpoint.notice_threshold,
        "tta": checkpoint.tta,
        "confusion_matrix": str((checkpoint.folder or Path(checkpoint.source)) / "confusion_matrix.png"),
        "card": card_link(checkpoint, app_dir),
        "views": views,
        "backend": backend,
    }


def _pct(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.2%}"


def summary_line(f: dict[str, Any] | None, served_tta: bool) -> str:
    """The line under the title (from `facts`): the model's name, size, origin, test accuracy and its card."""
    if f is None:
        return "No model loaded."
    accuracy = f["top1_tta"] if served_tta and f["top1_tta"] is not None else f["top1"]
    measured = f"test top-1 {_pct(accuracy)}" + (" with 8-view TTA" if served_tta and f["top1_tta"] else "")
    return (f"Model: **{f['name']}**, a {f['architecture']} with {f['parameters'] / 1e6:.2f} M parameters, "
            f"{f['initialisation']}; {measured}; {f['card']}. Serving here: {f['views']}.")


def panel_markdown(f: dict[str, Any], served_tta: bool) -> str:
    """The Model panel's text, from `facts`."""
    rows = [("Architecture", f"`{f['architecture']}`, {f['parameters']:,} parameters"),
            ("Weights", f["initialisation"]),
            ("Training data", f"EuroSAT RGB ({f['dataset'] or 'source not recorded'}), standard train/validation/"
                              "test split"),
            ("Test top-1", f"{_pct(f['top1'])} single view" + (f", {_pct(f['top1_tta'])} with the 8-view TTA "
                                                                 "the app serves" if f["top1_tta"] and served_tta else "")),
            ("Test-time views here", f["views"]),
            ("Forward passes here", f["backend"]),
            ("Macro-F1", "not measured" if f["macro_f1"] is None else f"{f['macro_f1']:.4f}"),
            ("Calibration error (ECE)", "not measured" if f["ece"] is None else f"{f['ece']:.4f}"),
            ("Temperature (fitted on validation)", f"{f['temperature']:g}"),
            ("Notice below", f"{f['notice_threshold']:.0%} top-1 probability (chosen on validation)")]
    text = "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
    if f["f1"]:
        text += "\n\n**F1 per class**\n\n| Class | F1 |\n|---|---|\n" + "\n".join(
            f"| {name} | {score:.3f} |" for name, score in sorted(f["f1"].items(), key=lambda kv: kv[1]))
    if f["confused"]:
        text += "\n\n**Most often confused** (true → predicted, test images): " + "; ".join(
            f"{c['true']} → {c['predicted']} ({c['images']})" for c in f["confused"])
    return text


def render(f: dict[str, Any] | None, served_tta: bool) -> None:
    """The accordion's content (from `facts`); nothing when no model is loaded."""
    if f is None:
        gr.Markdown("No model is loaded.")
        return
    gr.Markdown(panel_markdown(f, served_tta), elem_id="model-facts")
    matrix = Path(f["confusion_matrix"])
    if matrix.is_file():
        gr.Image(str(matrix), label="Confusion matrix on the test split", interactive=False, buttons=[],
                 height=480, elem_id="confusion-matrix")
