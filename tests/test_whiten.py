"""The whitening stem: decorrelated unit-variance responses, filters in pairs, left alone by the optimiser."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eurosat.errors import SettingError
from eurosat.whiten import first_conv, whiten_stem, whitening_filters


def correlated_images(n: int = 64, size: int = 16) -> torch.Tensor:
    """Images whose channels and neighbouring pixels are strongly correlated, as real tiles are."""
    g = torch.Generator().manual_seed(0)
    base = F.avg_pool2d(torch.randn(n, 1, size + 2, size + 2, generator=g), 3, stride=1)
    mix = torch.tensor([[1.0], [0.8], [0.5]])
    return (mix.view(1, 3, 1, 1) * base + 0.1 * torch.randn(n, 3, size, size, generator=g)) * 3 + 1


def test_filters_whiten_the_patches_they_were_fitted_on():
    images = correlated_images()
    filters = whitening_filters(images, (3, 3), out_channels=16)
    assert filters.shape == (16, 3, 3, 3)
    responses = F.conv2d(images, filters).permute(1, 0, 2, 3).reshape(16, -1)
    cov = torch.cov(responses[:8])
    # Unit variance along the 8 strongest directions, and no correlation between them (eps adds a little slack).
    assert torch.allclose(cov, torch.eye(8), atol=0.02), cov.diagonal()
    assert torch.equal(filters[8:], -filters[:8])  # each filter with its negative, so a ReLU keeps both signs
    raw = torch.cov(F.conv2d(images, torch.eye(27).view(27, 3, 3, 3)).permute(1, 0, 2, 3).reshape(27, -1))
    assert raw[0, 1] > 0.5 * raw[0, 0]  # the input itself is far from white: the test has something to undo


def test_odd_or_too_many_filters_are_refused_with_the_reason():
    with pytest.raises(SettingError, match="odd number"):
        whitening_filters(correlated_images(4), (3, 3), out_channels=15)
    with pytest.raises(SettingError, match="has 12"):
        whitening_filters(correlated_images(4), (2, 2), out_channels=32)
    with pytest.raises(SettingError, match="3 RGB channels"):
        first_conv(nn.Sequential(nn.Linear(3, 3)))


def test_the_stem_is_set_and_then_left_alone_by_the_optimiser():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                          nn.LazyLinear(2))
    images = correlated_images(8)
    whiten_stem(model, images)
    fitted = model[0].weight.detach().clone()
    assert torch.equal(fitted, whitening_filters(images, (3, 3), 8)) and not model[0].weight.requires_grad
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, weight_decay=0.1)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(images), torch.arange(8) % 2).backward()
        opt.step()
    assert torch.equal(model[0].weight, fitted) and not torch.equal(model[4].weight, torch.zeros_like(model[4].weight))

