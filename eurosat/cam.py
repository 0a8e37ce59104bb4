"""Class activation maps: the single-pass CAM, pytorch-grad-cam's methods, and the coloured overlay."""

from __future__ import annotations

import copy
import queue
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .model import cam_target_layer, features_and_logits, linear_head

DEFAULT_METHOD = "GradCAM"
# The methods the app offers: display name -> pytorch-grad-cam class. The library (with OpenCV and
# scikit-learn behind it) is imported only when one is used, not when the app starts. ScoreCAM and
# AblationCAM are left out on purpose: they run the network once per channel batch, which takes minutes
# per image on a 2-vCPU Space.
CAM_METHODS = {"GradCAM": "GradCAM", "GradCAM++": "GradCAMPlusPlus", "XGradCAM": "XGradCAM",
               "HiResCAM": "HiResCAM", "LayerCAM": "LayerCAM", "EigenCAM": "EigenCAM"}


def cam_methods() -> dict[str, type]:
    """The pytorch-grad-cam classes of CAM_METHODS, by display name."""
    import pytorch_grad_cam

    return {name: getattr(pytorch_grad_cam, cls) for name, cls in CAM_METHODS.items()}


def _min_max(maps: torch.Tensor) -> torch.Tensor:
    flat = maps.flatten(1)
    flat = flat - flat.min(dim=1, keepdim=True).values
    return (flat / (1e-7 + flat.max(dim=1, keepdim=True).values)).view_as(maps)


def normalise(cams: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Min-max scale each map to [0, 1], resize to `size` (H, W), then scale again: pytorch-grad-cam's steps.

    The second scaling matters: bilinear samples fall between the feature map's cells, so the
    resized peak sits a little below 1, by up to a few percent for the 2x2 or 3x3 maps of small inputs.
    """
    resized = F.interpolate(_min_max(cams.float()).unsqueeze(1), size=size, mode="bilinear", align_corners=False)
    return _min_max(resized[:, 0]).cpu().numpy()


def cam_from_features(model: nn.Module, features: torch.Tensor, class_index: torch.Tensor,
                      size: tuple[int, int]) -> np.ndarray:
    """Grad-CAM maps of the last feature maps (N, C, h, w) of a GAP + linear-head model, at `size` (H, W).

    With global average pooling and one linear layer, d logit_c / d A_k = w_ck / (h * w) at every
    position, so Grad-CAM's channel weights (the mean gradients) are the class's weight row over
    h * w, and the map is ReLU(sum_k w_ck * A_k) / (h * w). The division only scales the map, but
    keeping it makes the raw values Grad-CAM's own, so the 1e-7 guard of the normalisation acts alike.
    """
    head = linear_head(model)
    if head is None:
        raise ValueError("a single-pass CAM needs a model with global average pooling and one linear layer")
    with torch.inference_mode():
        weights = head.weight[class_index.to(features.device)].to(features.dtype)
        weights = weights / (features.shape[-2] * features.shape[-1])
        cams = torch.relu(torch.einsum("nc,nchw->nhw", weights, features))
    return normalise(cams, size)


def single_pass_cam(model: nn.Module, x: torch.Tensor,
                    class_index: torch.Tensor | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """Logits and Grad-CAM maps from one forward pass, with no backward pass (see `cam_from_features`)."""
    if linear_head(model) is None:
        raise ValueError("single_pass_cam needs a model with global average pooling and one linear layer")
    with torch.inference_mode():
        features, logits = features_and_logits(model, x)
    index = logits.argmax(dim=1) if class_index is None else class_index
    return logits.float(), cam_from_features(model, features, index, tuple(x.shape[-2:]))


def library_cam(model: nn.Module, x: torch.Tensor, method: str,
                class_index: torch.Tensor | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """Logits and maps from pytorch-grad-cam; its own forward pass provides the logits."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    methods = cam_methods()
    if method not in methods:
        raise ValueError(f"Unknown CAM method {method!r}; choose one of: {', '.join(methods)}")
    targets = None if class_index is None else [ClassifierOutputTarget(int(i)) for i in class_index]
    with methods[method](model=model, target_layers=[cam_target_layer(model)]) as cam:
        maps = cam(input_tensor=x, targets=targets)
        logits = cam.outputs.detach().float()
    return logits, maps


class HookedCopies:
    """Copies of a model for pytorch-grad-cam, lent to one request at a time.

    Its methods register forward and backward hooks on the model they are given and zero its
    gradients, so on a shared model two requests at once see each other's activations and
    gradients (and a forward pass by any other request fires the hooks too). Each copy is hooked by
    one request only, and the served model itself is never hooked, so the single-pass Grad-CAM and
    the classification stay fully concurrent. `size` copies let that many hooked requests run at once.
    """

    def __init__(self, model: nn.Module, size: int = 1):
        self._free: queue.SimpleQueue[nn.Module] = queue.SimpleQueue()
        for _ in range(max(1, size)):
            self._free.put(copy.deepcopy(model).eval())

    @contextmanager
    def borrow(self) -> Iterator[nn.Module]:
        """A copy for this request alone; waits while all are lent."""
        model = self._free.get()
        try:
            yield model
        finally:
            self._free.put(model)


def overlay(rgb: np.ndarray, heatmap: np.ndarray, opacity: float = 0.5, min_side: int = 256) -> np.ndarray:
    """Blend a jet-coloured heatmap over an RGB uint8 image; small tiles are enlarged to `min_side`.

    The tile is enlarged with nearest-neighbour so its pixels stay honest, the heatmap with
    bilinear interpolation because it is a smooth field.
    """
    import cv2

    opacity = float(np.clip(opacity, 0.0, 1.0))
    height, width = rgb.shape[:2]
    scale = max(1, -(-min_side // max(height, width)))
    size = (width * scale, height * scale)
    base = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.NEAREST), dtype=np.float32)
    heat = cv2.resize(np.float32(heatmap), size, interpolation=cv2.INTER_LINEAR)
    colours = cv2.cvtColor(cv2.applyColorMap(np.uint8(np.clip(heat, 0, 1) * 255), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    blended = (1 - opacity) * base + opacity * colours.astype(np.float32)
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)
