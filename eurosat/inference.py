"""Inference: a Predictor turns PIL images into sorted class probabilities and Grad-CAM maps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .cam import DEFAULT_METHOD, compute_cam
from .hub import Checkpoint
from .imaging import to_tensor
from .transforms import eval_transform


@dataclass
class Analysis:
    """One image's probabilities for every class (sorted, highest first) and the heatmap of `target`."""

    probabilities: dict[str, float]
    target: str
    method: str
    heatmap: np.ndarray

    def top(self, k: int) -> dict[str, float]:
        return dict(list(self.probabilities.items())[:k])


def ranked(probs: torch.Tensor, label_names: Sequence[str], k: int | None = None) -> dict[str, float]:
    """{label: probability} for the k most likely classes, highest first."""
    k = len(label_names) if k is None else max(1, min(int(k), len(label_names)))
    values, indices = probs.float().topk(k)
    return {label_names[i]: float(v) for v, i in zip(values.tolist(), indices.tolist())}


class Predictor:
    """Serves one checkpoint: preprocessing and labels come from the checkpoint's config.json."""

    def __init__(self, checkpoint: Checkpoint, *, device: str | torch.device = "cpu",
                 channels_last: bool = False):
        self.device = torch.device(device)
        self.label_names = list(checkpoint.label_names)
        self.data_config = checkpoint.data_config
        self.source = checkpoint.source
        self.channels_last = channels_last
        memory_format = torch.channels_last if channels_last else torch.preserve_format
        self.model = checkpoint.model.eval().to(self.device, memory_format=memory_format)
        self._to_input = eval_transform(self.data_config)

    def inputs(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Model-ready batch from PIL images of any mode and size (each resized to the input size)."""
        size = self.data_config.input_size
        batch = torch.cat([self._to_input(to_tensor(im, size).unsqueeze(0).to(self.device)) for im in images])
        return batch.contiguous(memory_format=torch.channels_last) if self.channels_last else batch

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(x).float().softmax(dim=1)

    def predict(self, image: Image.Image, k: int = 5) -> dict[str, float]:
        """Top-k {label: probability} for one image, highest first."""
        return self.predict_batch([image], k)[0]

    def predict_batch(self, images: Sequence[Image.Image], k: int = 5) -> list[dict[str, float]]:
        """Top-k {label: probability} for each image, in one forward pass."""
        probs = self.probabilities(self.inputs(images))
        return [ranked(p, self.label_names, k) for p in probs]

    def class_index(self, label: str) -> int:
        try:
            return self.label_names.index(label)
        except ValueError:
            raise ValueError(f"Unknown class {label!r}; choose one of: {', '.join(self.label_names)}") from None

    def analyze(self, image: Image.Image, *, target: str | None = None,
                method: str = DEFAULT_METHOD) -> Analysis:
        """Probabilities and the heatmap of `target` (default: the top-1 class) from one CAM pass."""
        index = None if target is None else torch.tensor([self.class_index(target)])
        logits, maps = compute_cam(self.model, self.inputs([image]), method, index)
        probs = ranked(logits[0].softmax(dim=0), self.label_names)
        return Analysis(probabilities=probs, target=target or next(iter(probs)), method=method, heatmap=maps[0])
