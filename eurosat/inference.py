"""Inference: a Predictor turns PIL images into sorted class probabilities and Grad-CAM maps."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from .calibration import calibrated_softmax
from .cam import DEFAULT_METHOD, HookedCopies, cam_from_features, library_cam
from .hub import Checkpoint
from .imaging import to_tensor
from .model import linear_head
from .transforms import eval_transform
from .views import forward, in_layout, is_channels_last

if TYPE_CHECKING:
    from .onnxrt import Graph

log = logging.getLogger(__name__)
PYTORCH = "PyTorch"


# The threads of scene and batch cells yield the CPU to any thread at normal priority, a tile's request above all:
# a tile arriving in the middle of a batch gets a core at once instead of sharing it.
CELL_NICENESS = 10


def lower_priority(niceness: int = CELL_NICENESS) -> None:
    """Lower the CPU priority of the calling thread (Linux, where niceness is per thread); elsewhere do nothing."""
    if sys.platform.startswith("linux"):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)
        except OSError:  # a sandbox that forbids it: the cells run at normal priority
            pass


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
    """Serves one checkpoint: preprocessing, labels and temperature come from the checkpoint's config.json.

    With `tta`, every answer for a tile averages the logits of the 8 flips and right-angle rotations
    of the input (an overhead tile has no 'up'), computed as one batch of 8 in one forward pass;
    `cell_tta` (default: `tta`) does the same for the cells of scenes and batches (`classify`), whose
    batches are each cut into `cell_parts` slices worked on at once.
    Every forward pass runs on `engine`: the PyTorch model, or after `use_onnxruntime` its ONNX
    Runtime graph; the gradient CAM methods always run on copies of the PyTorch model.
    """

    def __init__(self, checkpoint: Checkpoint, *, device: str | torch.device = "cpu",
                 channels_last: bool = False, tta: bool = False, cell_tta: bool | None = None, cell_parts: int = 1,
                 cam_copies: int = 1):
        self.device = torch.device(device)
        self.checkpoint = checkpoint
        self.label_names = list(checkpoint.label_names)
        self.data_config = checkpoint.data_config
        self.source = checkpoint.source
        self.temperature = checkpoint.temperature
        self.tta = tta
        self.cell_tta = tta if cell_tta is None else cell_tta
        self.cell_parts = cell_parts
        # What is served, in words for the page and the log; `fit_views` adds what it measured.
        self.views_note = "; ".join([f"{'8 views' if self.tta else 'one view'} per tile",
                                     f"{'8 views' if self.cell_tta else 'one view'} per scene or batch cell"])
        self.model = checkpoint.model.eval().to(self.device)
        self.engine: nn.Module | Graph = self.model
        # Which library runs the forward passes, in words for the page and the log (`use_onnxruntime` sets it).
        self.backend_note = f"{PYTORCH} ({self.device.type})"
        self.use_channels_last(channels_last)
        self._to_input = eval_transform(self.data_config)
        self._cam_copies = cam_copies
        self._hooked: HookedCopies | None = None
        self._hooked_lock = threading.Lock()

    def hooked(self) -> HookedCopies:
        """The copies of the model that pytorch-grad-cam may hook, made at first use (after `warmup`)."""
        with self._hooked_lock:
            if self._hooked is None:
                self._hooked = HookedCopies(self.model, self._cam_copies)
            return self._hooked

    def use_onnxruntime(self, cache_dir: str | Path | None = None, threads: int | None = None) -> str:
        """Run every forward pass with ONNX Runtime from here on, or say why PyTorch still does; returns `backend_note`.

        The graph is exported from the loaded weights (never downloaded) and cached in `cache_dir`
        (default: the Hugging Face cache), keyed by a hash of the weights and config; `threads` (default:
        PyTorch's) is the intra-op thread count of each run. Without onnxruntime, on a GPU, or when the
        export or its check fails, the model keeps running on PyTorch and the note and the log say why.
        """
        from . import onnxrt

        threads = threads or torch.get_num_threads()
        if self.device.type != "cpu":
            reason = f"the model runs on {self.device.type}, and the ONNX Runtime build here is for the CPU"
        else:
            try:
                self.engine = onnxrt.load_graph(self.model, self.data_config, self.checkpoint.config,
                                                cache_dir=None if cache_dir is None else Path(cache_dir),
                                                threads=threads)
            except ImportError as e:
                reason = f"ONNX Runtime is not available ({e})"
            except onnxrt.GraphError as e:
                reason = str(e)
            else:
                self.backend_note = (f"ONNX Runtime {onnxrt.runtime_version()} on the CPU, {threads} thread"
                                     f"{'s' if threads > 1 else ''} a request, from a graph exported here from "
                                     f"these weights; the gradient CAM methods on {PYTORCH}")
                return self.backend_note
        self.engine = self.model
        self.backend_note = f"{PYTORCH} ({self.device.type}): {reason}"
        log.warning("serving with %s", self.backend_note)
        return self.backend_note

    def use_channels_last(self, on: bool) -> None:
        """Hold the weights in channels_last (True) or contiguous (False) layout; inputs follow the weights."""
        self.model.to(memory_format=torch.channels_last if on else torch.contiguous_format)

    @property
    def channels_last(self) -> bool:
        return is_channels_last(self.model)

    def inputs(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Model-ready batch from PIL images of any mode and size (each resized to the input size)."""
        size = self.data_config.input_size
        return torch.cat([self._to_input(to_tensor(im, size).unsqueeze(0).to(self.device)) for im in images])

    def prepare(self, tiles: torch.Tensor) -> torch.Tensor:
        """Model-ready batch from uint8 tiles (N, 3, H, W): resized to the input size and normalised."""
        return self._to_input(tiles.to(self.device))

    def logits(self, x: torch.Tensor, tta: bool | None = None) -> torch.Tensor:
        """Logits of a model-ready batch; with TTA (default: the tiles' setting), the mean over the 8 views."""
        return forward(self.engine, x, tta=self.tta if tta is None else tta)[1]

    def probabilities(self, x: torch.Tensor, tta: bool | None = None) -> torch.Tensor:
        """Calibrated class probabilities (N, C) of a model-ready batch."""
        return calibrated_softmax(self.logits(x, tta), self.temperature, dim=1)

    def classify(self, tiles: torch.Tensor, *, batch_size: int = 64,
                 progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
        """Calibrated probabilities (N, C) of uint8 tiles (N, 3, H, W), `batch_size` tiles per forward pass.

        Each tile is preprocessed exactly as an uploaded image of the same pixels (`inputs`), so a
        tile's answer here equals /predict's for it when `cell_tta` equals `tta`. Each batch is cut into
        `cell_parts` slices, each prepared, passed and merged on a thread of its own: both libraries
        release the GIL, and independent single-threaded passes keep every core busy without the waits
        of one pass spread over threads. `progress(done, total)` is called after each batch; an
        exception it raises stops the work there.
        """
        chunks = []
        with ThreadPoolExecutor(self.cell_parts, thread_name_prefix="cells", initializer=lower_priority) as pool:
            for start in range(0, len(tiles), batch_size):
                batch = tiles[start:start + batch_size]
                chunks.extend(pool.map(self._cell_probabilities, batch.tensor_split(min(self.cell_parts, len(batch)))))
                if progress is not None:
                    progress(min(start + batch_size, len(tiles)), len(tiles))
        return torch.cat(chunks) if chunks else torch.empty(0, len(self.label_names))

    def _cell_probabilities(self, tiles: torch.Tensor) -> torch.Tensor:
        return self.probabilities(self.prepare(tiles), self.cell_tta).cpu()

    def predict(self, image: Image.Image, k: int = 5) -> dict[str, float]:
        """Top-k {label: probability} for one image, highest first."""
        return self.predict_batch([image], k)[0]

    def predict_batch(self, images: Sequence[Image.Image], k: int = 5) -> list[dict[str, float]]:
        """Top-k {label: probability} for each image, in one forward pass."""
        probs = self.probabilities(self.inputs(images))
        return [ranked(p, self.label_names, k) for p in probs]

    def warmup(self, rounds: int = 3, *, clock: Callable[[], float] = time.perf_counter) -> dict[bool, float]:
        """Pay the lazy set-up now, and keep the memory layout that runs the PyTorch model faster here.

        Which layout wins depends on the model and the CPU (`benchmarks/inference.py` measures both),
        so the serving machine decides; it matters wherever PyTorch runs the model (all passes without
        ONNX Runtime, the gradient CAM methods with it). Both layouts give the same results. The tile is
        half the input size so that the resize runs too, as it does for real uploads. Returns the
        seconds each layout's PyTorch pass took, keyed by channels_last.
        """
        height, width = self.data_config.input_size
        tile = Image.new("RGB", (max(1, width // 2), max(1, height // 2)))
        x = self.inputs([tile])
        seconds = {False: 0.0, True: 0.0}
        for layout in seconds:  # the first call in each layout pays one-off set-up, so it is not timed
            self.use_channels_last(layout)
            forward(self.model, x, tta=self.tta)
        for _ in range(rounds):  # alternating, so a change of load on the machine hits both alike
            for layout in seconds:
                self.use_channels_last(layout)
                start = clock()
                forward(self.model, x, tta=self.tta)
                seconds[layout] += clock() - start
        self.use_channels_last(min(seconds, key=seconds.get))
        self.analyze(tile)  # the serving path once, engine and all
        return seconds

    def fit_views(self, tile_budget: float, cell_budget: float, *, rounds: int = 3, cells: int = 64,
                  clock: Callable[[], float] = time.perf_counter) -> str:
        """Keep the 8-view mean only where this machine serves it within budget; say what was chosen, and why.

        A tile (one /predict with its heatmap) must take at most `tile_budget` seconds with 8 views, a
        scene or batch cell at most `cell_budget` seconds (measured on a batch of `cells`); each is
        timed only when its TTA is on, after `warmup`, as the median of `rounds`.
        """
        height, width = self.data_config.input_size
        tile = Image.new("RGB", (width, height))
        batch = torch.zeros(cells, 3, height, width, dtype=torch.uint8)

        def median(run: Callable[[], object]) -> float:
            times = []
            for _ in range(rounds):
                start = clock()
                run()
                times.append(clock() - start)
            return sorted(times)[len(times) // 2]

        def within(on: bool, seconds: Callable[[], float], budget: float, what: str, unit: str) -> tuple[bool, str]:
            if not on:
                return False, f"one view per {what}"
            taken = seconds()
            if taken <= budget:
                return True, f"8 views per {what} ({_duration(taken)} a {unit} here)"
            return False, (f"one view per {what}: 8 views would take {_duration(taken)} a {unit} here (budget "
                           f"{_duration(budget)})")

        self.tta, tiles = within(self.tta, lambda: median(lambda: self.analyze(tile)), tile_budget, "tile", "tile")
        self.cell_tta, cells_note = within(self.cell_tta, lambda: median(lambda: self.classify(batch, batch_size=cells))
                                           / cells, cell_budget, "scene or batch cell", "cell")
        self.views_note = f"{tiles}; {cells_note}"
        return self.views_note

    def class_index(self, label: str) -> int:
        try:
            return self.label_names.index(label)
        except ValueError:
            raise ValueError(f"Unknown class {label!r}; choose one of: {', '.join(self.label_names)}") from None

    def analyze(self, image: Image.Image, *, target: str | None = None,
                method: str = DEFAULT_METHOD) -> Analysis:
        """Probabilities and the heatmap of `target` (default: the top-1 class).

        The single-pass Grad-CAM takes both from one forward pass (of the 8 views with TTA: the
        heatmap comes from the upright view's features). Other methods run the library on the
        upright view, on a copy of the model of their own (`hooked`), and with TTA the probabilities
        come from a pass of their own.
        """
        index = None if target is None else self.class_index(target)
        x = self.inputs([image])
        if method == DEFAULT_METHOD and linear_head(self.model) is not None:
            features, logits = forward(self.engine, x, tta=self.tta, features=True)
            index = int(logits[0].argmax()) if index is None else index
            heatmap = cam_from_features(self.model, features, torch.tensor([index]), tuple(x.shape[-2:]))[0]
        else:
            tta_logits = self.logits(x) if self.tta else None
            if index is None and tta_logits is not None:
                index = int(tta_logits[0].argmax())  # the class the answer names, not the upright view's
            with self.hooked().borrow() as model:
                logits, maps = library_cam(model, in_layout(model, x), method, None if index is None else torch.tensor([index]))
            logits = logits if tta_logits is None else tta_logits
            heatmap = maps[0]
        probs = ranked(calibrated_softmax(logits[0], self.temperature), self.label_names)
        return Analysis(probabilities=probs, target=target or next(iter(probs)), method=method, heatmap=heatmap)


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds >= 1 else f"{seconds * 1000:.0f} ms"
