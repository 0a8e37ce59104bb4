"""The evaluation report: metrics.json, the pictures and the model card, written into a run folder."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .card import model_card
from .fileio import write_text
from .metrics import as_numpy
from .plots import save_confusion_matrix, save_error_grid, save_risk_coverage

# Keys every metrics.json has (null when the run did not record them), so its readers see one schema.
RUN_KEYS = ("dataset", "split", "model", "preset", "epochs", "wall_time_s", "images_per_s")


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
    detail = ("per_class", "most_confused", "confusion_matrix", "risk_coverage")
    record = {k: v for k, v in metrics.items() if k not in detail}
    record.update({k: run_info.get(k) for k in RUN_KEYS if k not in record})
    record.update({k: v for k, v in run_info.items() if k not in record})
    record.update({k: metrics[k] for k in detail if k in metrics})
    record["label_names"] = list(label_names)
    return record


def write_report(output_dir: str | os.PathLike, *, metrics: dict, run_info: dict, label_names: Sequence[str],
                 images: Any, labels: Any, probs: Any, repo_id: str | None = None) -> dict[str, Path]:
    """Write metrics.json, confusion_matrix.png, errors.png, risk_coverage.png and README.md, each atomically.

    `images` are the scored uint8 tiles, `labels` their classes and `probs` (N, C) the probabilities the
    metrics came from. Returns {"metrics": ..., "confusion_matrix": ..., "errors": ..., "model_card": ...}.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    probs = as_numpy(probs)
    text = json.dumps(report_record(metrics, run_info, label_names), indent=2, allow_nan=False,
                      default=_json_default) + "\n"
    card = model_card(repo_id=repo_id, metrics=metrics, run_info=run_info, label_names=label_names)
    return {
        "metrics": write_text(out / "metrics.json", text),
        "confusion_matrix": save_confusion_matrix(metrics["confusion_matrix"], label_names,
                                                  out / "confusion_matrix.png"),
        "errors": save_error_grid(images, labels, probs.argmax(axis=1), probs.max(axis=1), label_names,
                                  out / "errors.png"),
        "risk_coverage": save_risk_coverage(metrics["risk_coverage"], metrics.get("notice"), out / "risk_coverage.png"),
        "model_card": write_text(out / "README.md", card),
    }
