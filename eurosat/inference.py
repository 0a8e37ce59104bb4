"""Inference: a Predictor turns PIL images into sorted class probabilities and Grad-CAM maps."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from .calibration import calibrated_softmax
from .cam import DEFAULT_METHOD, compute_cam
from .hub import Checkpoint
from .imaging import to_tensor
from .transforms import eval_transform


def cpu_threads(concurrent_requests: int = 1, *, cgroup: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """Threads per request such that `concurrent_requests` requests together use each usable CPU once.

    Usable CPUs are the affinity mask capped by the cgroup v2 quota in `cgroup`: a 2-vCPU container
    often sees every core of its host, and PyTorch's default counts those. More threads than CPUs is
    not a little slower but many times slower: every parallel region of the forward waits for its
    slowest thread, so each descheduled thread costs a time slice (measured here while another
    2-thread job ran: 2.6 s per ResNet-50 forward with 2 threads, 0.15 s with 1).
    """
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = cgroup.read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cpus // max(1, concurrent_requests))


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
        self.temperature = checkpoint.temperature
        self.model = checkpoint.model.eval().to(self.device)
        self.use_channels_last(channels_last)
        self._to_input = eval_transform(self.data_config)

    def use_channels_last(self, on: bool) -> None:
        """Hold the weights, and make the inputs, in channels_last (True) or contiguous (False) layout."""
        self.channels_last = on
        self.model.to(memory_format=torch.channels_last if on else torch.contiguous_format)

    def inputs(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Model-ready batch from PIL images of any mode and size (each resized to the input size)."""
        size = self.data_config.input_size
        batch = torch.cat([self._to_input(to_tensor(im, size).unsqueeze(0).to(self.device)) for im in images])
        return batch.contiguous(memory_format=torch.channels_last) if self.channels_last else batch

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return calibrated_softmax(self.model(x), self.temperature, dim=1)

    def predict(self, image: Image.Image, k: int = 5) -> dict[str, float]:
        """Top-k {label: probability} for one image, highest first."""
        return self.predict_batch([image], k)[0]

    def predict_batch(self, images: Sequence[Image.Image], k: int = 5) -> list[dict[str, float]]:
        """Top-k {label: probability} for each image, in one forward pass."""
        probs = self.probabilities(self.inputs(images))
        return [ranked(p, self.label_names, k) for p in probs]

    def warmup(self, rounds: int = 3, *, clock: Callable[[], float] = time.perf_counter) -> dict[bool, float]:
        """Pay PyTorch's lazy set-up now, and keep the memory layout that runs this model faster here.

        channels_last measured 8% faster for ResNet-50 at 224 px on a 2-vCPU AVX2 CPU, and 8% slower
        on a 2-vCPU AVX-512 one (`python -m eurosat.bench`), so the serving machine decides. Both
        layouts give the same results. The tile is half the input size so that the resize runs too,
        as it does for real uploads. Returns the seconds each layout took, keyed by channels_last.
        """
        height, width = self.data_config.input_size
        tile = Image.new("RGB", (max(1, width // 2), max(1, height // 2)))
        seconds = {False: 0.0, True: 0.0}
        for layout in seconds:  # the first call in each layout pays one-off set-up, so it is not timed
            self.use_channels_last(layout)
            self.analyze(tile)
        for _ in range(rounds):  # alternating, so a change of load on the machine hits both alike
            for layout in seconds:
                self.use_channels_last(layout)
                start = clock()
                self.analyze(tile)
                seconds[layout] += clock() - start
        self.use_channels_last(min(seconds, key=seconds.get))
        return seconds

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
        probs = ranked(calibrated_softmax(logits[0], self.temperature), self.label_names)
        return Analysis(probabilities=probs, target=target or next(iter(probs)), method=method, heatmap=maps[0])
