"""Metrics of predicted probabilities against labels: accuracy, F1, calibration, confusion; numpy only."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

ECE_BINS = 15
NLL_FLOOR = 1e-12  # a probability that rounded to 0 would make the NLL infinite


def as_numpy(x: Any) -> np.ndarray:
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
    probs = as_numpy(probs).astype(np.float64)
    labels = as_numpy(labels)
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
        "most_confused": most_confused(cm, label_names),
        "risk_coverage": risk_coverage(confidences, correct),
    })
    return metrics


def row_normalise(cm: Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
    """Each row as fractions of that true class; a class with no images gets a row of zeros, not NaN."""
    cm = np.asarray(cm, dtype=np.float64)
    totals = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)


def notice_rates(confidences: np.ndarray, correct: np.ndarray, threshold: float) -> dict[str, float]:
    """What a notice below `threshold` does: the share of wrong answers it catches and of right ones it flags."""
    confidences, correct = np.asarray(confidences, dtype=np.float64), np.asarray(correct, dtype=bool)
    flagged = confidences < threshold
    wrong = ~correct
    return {"threshold": float(threshold),
            "catch": float(flagged[wrong].mean()) if wrong.any() else 0.0,
            "false_flag": float(flagged[correct].mean()) if correct.any() else 0.0,
            "flagged": float(flagged.mean()), "errors": int(wrong.sum()), "right": int(correct.sum())}


def risk_coverage(confidences: np.ndarray, correct: np.ndarray, points: int = 101) -> dict[str, list[float]]:
    """The risk-coverage curve: answering only above a threshold, the share answered and their error rate.

    Thresholds are the answers' own probabilities, thinned to about `points` evenly spaced in coverage.
    """
    order = np.argsort(-np.asarray(confidences, dtype=np.float64), kind="stable")
    sorted_conf = np.asarray(confidences, dtype=np.float64)[order]
    errors = np.cumsum(~np.asarray(correct, dtype=bool)[order])
    answered = np.arange(1, len(order) + 1)
    keep = np.unique(np.linspace(0, len(order) - 1, min(points, len(order))).round().astype(int))
    return {"threshold": sorted_conf[keep].round(6).tolist(), "coverage": (answered[keep] / len(order)).round(6).tolist(),
            "risk": (errors[keep] / answered[keep]).round(6).tolist()}


def most_confused(cm: Sequence[Sequence[int]] | np.ndarray, label_names: Sequence[str], k: int = 3) -> list[dict]:
    """The k largest off-diagonal counts of a confusion matrix: true class, predicted class, images."""
    cm = np.asarray(cm, dtype=np.int64)
    pairs = [(int(cm[i, j]), i, j) for i in range(len(cm)) for j in range(len(cm)) if i != j and cm[i, j] > 0]
    pairs.sort(key=lambda p: (-p[0], p[1], p[2]))
    return [{"true": label_names[i], "predicted": label_names[j], "images": n} for n, i, j in pairs[:k]]
