"""A frozen first convolution that whitens the training tiles' pixel patches (a fast-training lever)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .errors import SettingError


def first_conv(model: nn.Module) -> nn.Conv2d:
    """The convolution that sees the RGB input: the first Conv2d with 3 input channels.

    Searched for, because timm's `pretrained_cfg["first_conv"]` still names `conv1`, a Sequential, once
    `model_args` ask for a deep stem.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            return module
    raise SettingError("--whiten-stem needs a model whose first layer is a convolution of the 3 RGB channels.")


def whitening_filters(images: torch.Tensor, kernel: tuple[int, int], out_channels: int,
                      eps: float = 5e-4) -> torch.Tensor:
    """Filters (out_channels, C, kh, kw) whose responses to the patches of `images` are decorrelated, unit-variance.

    The patches' covariance is eigendecomposed; the `out_channels // 2` directions of largest variance, each divided
    by the square root of its variance, are used with both signs, so a ReLU after the stem loses neither half.
    """
    if out_channels % 2:
        raise SettingError(f"--whiten-stem pairs each filter with its negative: the first convolution has "
                           f"{out_channels} output channels, an odd number.")
    patches = F.unfold(images.float(), kernel).transpose(1, 2).reshape(-1, images.shape[1] * kernel[0] * kernel[1])
    if out_channels // 2 > patches.shape[1]:
        raise SettingError(f"--whiten-stem: {out_channels} filters need {out_channels // 2} patch directions; "
                           f"a {kernel[0]}x{kernel[1]} patch of {images.shape[1]} channels has {patches.shape[1]}.")
    eigenvalues, eigenvectors = torch.linalg.eigh(torch.cov(patches.T).double())
    top = eigenvalues.argsort(descending=True)[: out_channels // 2]
    half = (eigenvectors[:, top] / (eigenvalues[top].clamp_min(0) + eps).sqrt()).T
    return torch.cat([half, -half]).reshape(out_channels, images.shape[1], *kernel).float()


@torch.no_grad()
def whiten_stem(model: nn.Module, images: torch.Tensor) -> None:
    """Set the first convolution to whitening filters of `images` (normalised model input) and freeze it."""
    conv = first_conv(model)
    conv.weight.copy_(whitening_filters(images, conv.kernel_size, conv.out_channels))
    conv.weight.requires_grad_(False)
