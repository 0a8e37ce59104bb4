"""Temperature scaling: one scalar, fitted on validation, that makes the softmax's confidence honest."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Searched on the inverse temperature; beyond these bounds a model is broken, not miscalibrated.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0
_GOLDEN = (math.sqrt(5) - 1) / 2


def calibrated_softmax(logits: torch.Tensor, temperature: float, dim: int = -1) -> torch.Tensor:
    """softmax(logits / T) in float32: the probabilities that evaluation, the report and the app show."""
    return (logits.float() / temperature).softmax(dim=dim)


def fit_temperature(log_probs: torch.Tensor, labels: torch.Tensor, *, iterations: int = 60) -> float:
    """The T minimising the cross-entropy of softmax(log_probs / T) on a labelled set.

    `log_probs` may be logits or log-probabilities: they differ by a constant per row, which the
    softmax ignores at any T. The loss is convex in 1/T, so a golden-section search finds the one
    minimum deterministically (no optimiser state, no learning rate). Accuracy never changes: T > 0
    keeps every row's order.
    """
    x = log_probs.double().clamp_min(-1e4)  # log(0) = -inf would turn 0 * inf into nan at the ends

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
