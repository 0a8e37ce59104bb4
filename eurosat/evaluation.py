"""Scoring a checkpoint: calibration and the TTA decision on validation, the test report, any checkpoint's evaluation."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from . import hub
from .calibration import calibrated_softmax, choose_threshold, fit_temperature
from .data import load_tensors
from .engine import Runtime, predict, resolve_runtime
from .errors import UserError
from .transforms import eval_transform


class EvaluationError(UserError, ValueError):
    """A checkpoint that cannot be scored on a dataset; the message says why."""


# The 8-view mean is served by default only when it raises validation top-1 by at least this much.
TTA_MIN_GAIN = 0.003


def calibrate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *, transform, runtime: Runtime,
              tta: bool | None) -> dict[str, Any]:
    """Temperature, notice threshold and the TTA decision of a model, all from a labelled (validation) set.

    Label smoothing teaches the network to hedge: one temperature undoes that without changing a
    single prediction. With `tta` None, the 8-view mean is served when it gains at least
    TTA_MIN_GAIN of top-1 here; True or False force it. The threshold is chosen on the answers as
    served, on the calibrated probabilities.
    """
    logits = predict(model, images, transform=transform, runtime=runtime)
    merged = predict(model, images, transform=transform, runtime=runtime, tta=True)
    single, eight = ((x.argmax(1) == labels).double().mean().item() for x in (logits, merged))
    serve_tta = eight - single >= TTA_MIN_GAIN if tta is None else tta
    temperature = fit_temperature(logits, labels)
    probs = calibrated_softmax(merged if serve_tta else logits, temperature)
    threshold = choose_threshold(probs.max(1).values.numpy(), (probs.argmax(1) == labels).numpy())
    return {"temperature": temperature, "notice_threshold": threshold, "tta": bool(serve_tta),
            "validation": {"top1": single, "top1_tta": eight, "tta_gain": eight - single}}


def score(checkpoint: hub.Checkpoint, images: torch.Tensor, labels: torch.Tensor, *, runtime: Runtime,
          out: Path | None, run_info: dict[str, Any], repo_id: str | None = None, tta: bool = True) -> dict[str, Any]:
    """Metrics of a checkpoint on a labelled set; with `out`, also the report files.

    `top1` is the single-view accuracy; with `tta`, `top1_tta` is the accuracy of the mean logits of
    the 8 D4 views of each tile. The notice's catch and false-flag rates are measured on the answers
    as the checkpoint is served (its config's `tta`).
    """
    from . import metrics as m
    from . import report

    to_input = eval_transform(checkpoint.data_config)
    model = checkpoint.model.to(memory_format=torch.channels_last if runtime.channels_last else torch.preserve_format)
    temperature = checkpoint.temperature
    start = time.perf_counter()
    logits = predict(model, images, transform=to_input, runtime=runtime)
    seconds = time.perf_counter() - start
    probs = calibrated_softmax(logits, temperature)
    metrics = m.classification_metrics(probs.numpy(), labels.numpy(), checkpoint.label_names)
    raw = logits.softmax(dim=1)
    metrics.update(temperature=temperature, eval_seconds=seconds, eval_images_per_s=len(labels) / max(seconds, 1e-9),
                   ece_uncalibrated=m.expected_calibration_error(
                       raw.max(dim=1).values.double().numpy(), (raw.argmax(dim=1) == labels).numpy(),
                       metrics["ece_bins"]))
    served = probs
    if tta:
        tta_probs = calibrated_softmax(predict(model, images, transform=to_input, runtime=runtime, tta=True),
                                       temperature)
        metrics["top1_tta"] = (tta_probs.argmax(1) == labels).double().mean().item()
        metrics["ece_tta"] = m.expected_calibration_error(tta_probs.max(1).values.double().numpy(),
                                                          (tta_probs.argmax(1) == labels).numpy(), metrics["ece_bins"])
        served = tta_probs if checkpoint.tta else probs
    confidence, correct = served.max(1).values.numpy(), (served.argmax(1) == labels).numpy()
    metrics["served_tta"] = served is not probs
    metrics["notice"] = m.notice_rates(confidence, correct, checkpoint.notice_threshold)
    metrics["risk_coverage"] = m.risk_coverage(confidence, correct)  # of the answers as served
    if out is not None:
        report.write_report(out, metrics=metrics, run_info=run_info, label_names=checkpoint.label_names,
                            images=images, labels=labels, probs=probs, repo_id=repo_id)
    return metrics


def evaluate_checkpoint(source: str, dataset: str, output_dir: str, *, split: str = "test", device: str = "auto",
                        tta: bool | None = None) -> dict[str, Any]:
    """Score any checkpoint (local folder or Hub id) on a dataset split and write the same report.

    The split is cut as the checkpoint's own training run cut it (its stored seed and validation
    share), so `validation` scores the images it was validated on. `tta` defaults to how the
    checkpoint is served.
    """
    runtime = resolve_runtime(device)
    checkpoint = hub.load(source, device=runtime.device)
    train_config = checkpoint.config.get("train_config", {})
    data, tensors = load_tensors(dataset, seed=train_config.get("seed", 0),
                                 val_fraction=train_config.get("val_fraction", 0.2), max_train_samples=None,
                                 splits=(split,))
    if data.label_names != checkpoint.label_names:
        raise EvaluationError(f"The checkpoint's classes {checkpoint.label_names} differ from the dataset's "
                       f"{data.label_names}; evaluate it on the dataset it was trained for.")
    run_info = {"dataset": dataset, "split": split, "model": checkpoint.architecture, "checkpoint": source,
                "preset": train_config.get("preset"), "epochs": train_config.get("epochs"),
                "device": str(runtime.device)}
    out = Path(output_dir)
    return score(checkpoint, *tensors[split], runtime=runtime, out=out if runtime.is_main else None,
                 run_info=run_info, tta=checkpoint.tta if tta is None else tta)
