"""Test-time views, one path for evaluation, calibration and serving: the 8 D4 views in one batch, merged by mean logits."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from .model import features_and_logits

if TYPE_CHECKING:
    from .onnxrt import Graph

VIEWS = 8  # the flips and right-angle rotations of a square: an overhead tile has no 'up'


def is_channels_last(model: nn.Module) -> bool:
    """Whether the model's weights are held in channels_last: the one place that layout is decided.

    A conv weight with more than one input channel and a kernel wider than one pixel has distinct
    strides in the two layouts, so its strides tell.
    """
    for weight in model.parameters():
        if weight.ndim == 4 and weight.shape[1] > 1 and weight.shape[2] * weight.shape[3] > 1:
            return not weight.is_contiguous() and weight.is_contiguous(memory_format=torch.channels_last)
    return False


def in_layout(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`x` in the memory layout of the model's weights: mixed layouts make every conv convert first."""
    return x.contiguous(memory_format=torch.channels_last) if is_channels_last(model) else x


def d4_views(x: torch.Tensor) -> torch.Tensor:
    """The 8 D4 views of a model-ready square batch (N, C, H, W), view-major: all upright first, then view 1, ...

    View `code` is `transforms.dihedral`'s (4 * flip + quarter turns), made for the whole batch at once
    and written straight into its place: a third of the time of indexing a repeated batch.
    """
    n = len(x)
    views = x.new_empty((VIEWS * n, *x.shape[1:]))
    mirrored = x.flip(-1)
    for code in range(VIEWS):
        views[code * n:(code + 1) * n] = torch.rot90(x if code < 4 else mirrored, code % 4, dims=(-2, -1))
    return views


def merge(logits: torch.Tensor, n: int) -> torch.Tensor:
    """The mean over views of view-major logits (V * n, C) -> (n, C); a no-op for one view."""
    return logits.view(-1, n, logits.shape[-1]).mean(dim=0)


def forward(model: nn.Module | Graph, x: torch.Tensor, *, tta: bool,
            features: bool = False) -> tuple[torch.Tensor | None, torch.Tensor]:
    """One forward pass of a model-ready batch: (the upright views' last feature maps, or None, and logits).

    `model` is the PyTorch model or its ONNX Runtime graph (`onnxrt.Graph`): the views and their
    merging are the same for both, only the pass itself differs. With `tta` the 8 views go through
    the network as one batch and the logits are their mean (float32); the feature maps, which a
    single-pass CAM weighs, are those of the upright views only.
    """
    batch = d4_views(x) if tta else x
    if isinstance(model, nn.Module):
        batch = in_layout(model, batch)
        with torch.inference_mode():
            maps, logits = features_and_logits(model, batch) if features else (None, model(batch))
    else:
        maps, logits = model.run(batch, features)
    return None if maps is None else maps[:len(x)], merge(logits.float(), len(x))
