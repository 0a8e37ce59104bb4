"""Temperature scaling: the fitted T is the one that generated the labels, and it never changes a prediction."""

import pytest
import torch

import torch.nn.functional as F

from eurosat.calibration import MAX_TEMPERATURE, MIN_TEMPERATURE, calibrated_softmax, fit_temperature


def sampled(true_temperature: float, n: int = 20000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits, and labels drawn from softmax(logits / T): a model whose honest temperature is T."""
    generator = torch.Generator().manual_seed(seed)
    logits = 4 * torch.randn(n, 10, generator=generator, dtype=torch.float64)
    labels = torch.multinomial((logits / true_temperature).softmax(dim=1), 1, generator=generator)[:, 0]
    return logits, labels


@pytest.mark.parametrize("true_temperature", [0.5, 1.0, 2.0, 3.5])
def test_the_fitted_temperature_is_the_true_one(true_temperature):
    logits, labels = sampled(true_temperature)
    assert fit_temperature(logits, labels) == pytest.approx(true_temperature, rel=0.05)


def test_log_probabilities_give_the_same_temperature_as_logits():
    logits, labels = sampled(2.0)
    assert fit_temperature(logits.log_softmax(dim=1), labels) == fit_temperature(logits, labels)
    shifted = logits + 100 * torch.randn(len(logits), 1, dtype=torch.float64)  # a constant per row
    assert fit_temperature(shifted, labels) == pytest.approx(fit_temperature(logits, labels), abs=1e-3)


def test_zero_probabilities_do_not_break_the_fit():
    logits, labels = sampled(2.0)
    log_probs = logits.log_softmax(dim=1)
    log_probs[:, 0] = -torch.inf  # a class the float32 softmax rounded to 0 everywhere, and never the label
    labels = labels.clamp_min(1)
    temperature = fit_temperature(log_probs, labels)
    assert MIN_TEMPERATURE < temperature < MAX_TEMPERATURE
    assert temperature == pytest.approx(fit_temperature(logits[:, 1:], labels - 1), rel=0.02)


def test_a_model_right_every_time_hits_the_lower_bound_and_grows_sure():
    logits, _ = sampled(1.0, n=500)
    labels = logits.argmax(dim=1)
    temperature = fit_temperature(logits, labels)
    assert temperature == pytest.approx(MIN_TEMPERATURE, rel=1e-3)
    # Always right, so sharper is better: the fitted temperature lowers the loss well below that of T = 1.
    fitted, plain = (F.cross_entropy(logits / t, labels).item() for t in (temperature, 1.0))
    assert fitted < 0.1 * plain
    assert calibrated_softmax(logits, temperature).max(dim=1).values.median() > 0.99
