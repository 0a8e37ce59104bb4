"""Calibration fitted on validation: the temperature that makes confidences honest, and the notice threshold."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

# Searched on the inverse temperature; beyond these bounds a model is broken, not miscalibrated.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0
_GOLDEN = (math.sqrt(5) - 1) / 2


def calibrated_softmax(logits: torch.Tensor, temperature: float, dim: int = -1) -> torch.Tensor:
    """softmax(logits / T) in float32: the probabilities that evaluation, the report and the app show."""
    return (logits.float() / temperature).softmax(dim=dim)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, *, iterations: int = 60) -> float:
    """The T minimising the cross-entropy of softmax(logits / T) on a labelled set.

    The loss is convex in 1/T, so a golden-section search finds the one minimum deterministically
    (no optimiser state, no learning rate). Accuracy never changes: T > 0 keeps every row's order.
    """
    x = logits.double()

    def loss(beta: float) -> float:
        return F.cross_entropy(x * beta, labels).item()

    lo, hi = 1 / MAX_TEMPERATURE, 1 / MIN_TEMPERATURE
    a, b = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(iterations):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - _GOLDEN * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + _GOLDEN * (hi - lo)
            fb = loss(b)
    return round(2 / (lo + hi), 4)


# The notice's goal on validation: flag at most this share of the right answers, and so catch as many
# of the wrong ones as that allows.
MAX_FALSE_FLAG = 0.05


def choose_threshold(confidences: np.ndarray, correct: np.ndarray, max_false_flag: float = MAX_FALSE_FLAG) -> float:
    """The highest top-1 probability below which answers are flagged, flagging at most `max_false_flag` right ones.

    An answer is flagged when its probability is below the threshold. With n right answers, the
    threshold is the (k+1)-th lowest of their probabilities, k = floor(max_false_flag * n): at most k
    of them lie below it. Rounded down to 4 decimals, which can only flag fewer.
    """
    right = np.sort(np.asarray(confidences, dtype=np.float64)[np.asarray(correct, dtype=bool)])
    if len(right) == 0:
        return 1.0
    k = min(int(np.floor(max_false_flag * len(right))), len(right) - 1)
    return float(np.floor(right[k] * 1e4) / 1e4)
