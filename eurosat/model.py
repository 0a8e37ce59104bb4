"""Models: any timm classifier by name, and the layers that Grad-CAM looks at."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def build_model(name: str, num_classes: int, *, pretrained: bool = False,
                model_args: dict[str, Any] | None = None) -> nn.Module:
    """A timm model with a fresh `num_classes` head; ImageNet weights when `pretrained`."""
    import timm

    # A saved config's model_args repeat num_classes (timm records it): the head size given here wins.
    return timm.create_model(name, pretrained=pretrained, **{**(model_args or {}), "num_classes": num_classes})


def cam_target_layer(model: nn.Module) -> nn.Module:
    """The last feature stage (layer4 for ResNets): the deepest maps that still have spatial extent."""
    return model.get_submodule(model.feature_info[-1]["module"])


def linear_head(model: nn.Module) -> nn.Linear | None:
    """The classifier when the head is global average pooling followed by one linear layer, else None.

    That structure is what makes the single-pass CAM exact: the gradient of a logit with respect to
    the last feature map is then the class's weight row, spread evenly over the positions.
    """
    pool = getattr(model, "global_pool", None)
    head = model.get_classifier()
    pool_type = getattr(pool, "pool_type", None)
    if isinstance(head, nn.Linear) and pool_type == "avg" and getattr(model, "drop_rate", 0.0) == 0.0 \
            and hasattr(model, "forward_features"):
        return head
    return None


def features_and_logits(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass that keeps the last feature map as well as the logits."""
    features = model.forward_features(x)
    return features, model.forward_head(features)
