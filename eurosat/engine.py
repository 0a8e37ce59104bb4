"""Training and evaluation loops over uint8 tensors: batched on-device augmentation, AMP and DDP passed in."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .errors import SettingError
from .transforms import Transform
from .views import VIEWS, forward, in_layout

if TYPE_CHECKING:
    from .distill import SoftTargets


@dataclass(frozen=True)
class Runtime:
    """Where and how the maths runs; decided once in `resolve_runtime` and passed everywhere."""

    device: torch.device
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self):
        enabled = self.amp_dtype is not None
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32, enabled=enabled)


def resolve_device(name: str) -> str:
    """`auto` becomes cuda when there is a GPU, else cpu; asking for a GPU that is not there is an error."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SettingError("--device cuda was asked for, but no CUDA GPU is available; use --device cpu or auto")
    return name


def resolve_runtime(device: str = "auto") -> Runtime:
    """Pick the device; bf16 autocast on CUDA only (this CPU has no fast bf16), channels_last everywhere.

    Under torchrun (WORLD_SIZE > 1) this also joins the process group: NCCL on GPUs, gloo on CPU.
    """
    device = resolve_device(device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
    if device == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        torch.backends.cudnn.benchmark = True
        return Runtime(torch.device("cuda", local_rank), torch.bfloat16, True, rank, world_size)
    # channels_last pays off in CPU training too (RESULTS.md, "What pays on 2 CPU cores"). Serving is another
    # matter: see Predictor.warmup.
    return Runtime(torch.device(device), None, True, rank, world_size)


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """LR multiplier: linear warm-up over `warmup` steps, then cosine decay to zero at `total`."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def make_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW or SGD with Nesterov momentum; no weight decay on norms and biases, which it only shrinks."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    raise SettingError(f"Unknown optimizer {name!r}; choose adamw or sgd")


def make_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(warmup_cosine, total=total_steps, warmup=max(1, warmup_steps)))


def mix_batch(x: torch.Tensor, *, mixup_alpha: float, cutmix_alpha: float,
              generator: torch.Generator) -> tuple[torch.Tensor, float]:
    """Mixup or CutMix (one, chosen at random when both are on) of a batch with its reversed order.

    Returns the mixed inputs and the share `lam` of the original order in them: the loss is then
    lam * loss(labels) + (1 - lam) * loss(reversed labels). The random draws come from `generator`,
    so a resumed run mixes as the original would.
    """
    import numpy as np

    rng = np.random.default_rng(int(torch.randint(2**31 - 1, (1,), generator=generator)))
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or rng.random() < 0.5)
    lam = float(rng.beta(cutmix_alpha, cutmix_alpha) if use_cutmix else rng.beta(mixup_alpha, mixup_alpha))
    flipped = x.flip(0)
    if not use_cutmix:
        return x * lam + flipped * (1 - lam), lam
    height, width = x.shape[-2:]
    cut_h, cut_w = round(height * math.sqrt(1 - lam)), round(width * math.sqrt(1 - lam))
    top, left = int(rng.integers(0, height - cut_h + 1)), int(rng.integers(0, width - cut_w + 1))
    x = x.clone()
    x[..., top:top + cut_h, left:left + cut_w] = flipped[..., top:top + cut_h, left:left + cut_w]
    return x, 1 - cut_h * cut_w / (height * width)  # the share the box really left, after rounding


def shard(indices: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """This rank's share of an index order; every rank gets the same count so DDP steps stay in lockstep."""
    per_rank = len(indices) // runtime.world_size
    return indices[runtime.rank * per_rank:(runtime.rank + 1) * per_rank]


def reduce_sum(values: list[float], runtime: Runtime) -> list[float]:
    if not runtime.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=runtime.device)
    dist.all_reduce(t)
    return t.tolist()


def train_one_epoch(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, transform: Transform,
                    optimizer: torch.optim.Optimizer, scheduler, batch_size: int, generator: torch.Generator,
                    runtime: Runtime, label_smoothing: float = 0.0, average: nn.Module | None = None,
                    mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, targets: SoftTargets | None = None,
                    progress: Callable[[dict], None] | None = None) -> dict[str, float]:
    """One pass over a shuffled training set; returns loss, accuracy and images/s (summed over ranks).

    With mixup or CutMix, accuracy counts the label with the larger share of each mixed input. With
    `targets`, the loss mixes the labels' cross-entropy with the teacher's soft targets (mixed as
    the inputs are).
    """
    model.train()
    order = shard(torch.randperm(len(labels), generator=generator), runtime)
    steps = len(order) // batch_size  # drop the ragged tail: a tiny last batch makes BatchNorm noisy
    loss_sum = correct = seen = 0.0
    start = time.perf_counter()
    for step in range(steps):
        idx = order[step * batch_size:(step + 1) * batch_size]
        x = in_layout(model, transform(images[idx].to(runtime.device, non_blocking=True)))
        y = labels[idx].to(runtime.device, non_blocking=True)
        lam = 1.0
        if mixup_alpha > 0 or cutmix_alpha > 0:
            x, lam = mix_batch(x, mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, generator=generator)
        with runtime.autocast():
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
            if lam < 1.0:
                loss = lam * loss + (1 - lam) * F.cross_entropy(logits, y.flip(0), label_smoothing=label_smoothing)
            if targets is not None:
                loss = (1 - targets.weight) * loss + targets.weight * targets.loss(logits, idx, lam)
            y = y if lam >= 0.5 else y.flip(0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if average is not None:  # timm's ModelEmaV3 of the bare model (not its DDP wrapper); steps count from 1
            average.update(getattr(model, "module", model), step=scheduler.last_epoch)
        loss_sum += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
        if progress is not None:
            elapsed = time.perf_counter() - start
            progress({"loss": loss_sum / seen, "acc": correct / seen, "img_s": seen * runtime.world_size / elapsed})
    seconds = time.perf_counter() - start
    loss_sum, correct, seen = reduce_sum([loss_sum, correct, seen], runtime)
    return {"loss": loss_sum / max(seen, 1), "accuracy": correct / max(seen, 1), "images": int(seen),
            "seconds": seconds, "images_per_s": seen / max(seconds, 1e-9)}


def predict(model: nn.Module, images: torch.Tensor, *, transform: Transform, runtime: Runtime,
            batch_size: int = 256, tta: bool = False) -> torch.Tensor:
    """Logits (N, C) in float32 on the CPU for uint8 images; with `tta`, the mean over the 8 D4 views.

    The views are made and merged by `views.forward`, the path the app serves with, so a tile's
    logits here are the ones the app gives it. `batch_size` counts forward inputs: with `tta`, an
    eighth as many tiles go in each pass. Under DDP each rank scores a strided share and the shares
    are gathered, so every rank returns the logits of all N images in their original order.
    """
    model.eval()
    n = len(images)
    mine = torch.arange(runtime.rank, n, runtime.world_size)
    step = max(1, batch_size // VIEWS) if tta else batch_size
    chunks = []
    for start in range(0, len(mine), step):
        batch = transform(images[mine[start:start + step]].to(runtime.device, non_blocking=True))
        with runtime.autocast():
            chunks.append(forward(model, batch, tta=tta)[1])
    local = torch.cat(chunks) if chunks else torch.empty(0, device=runtime.device)
    if not runtime.distributed:
        return local.cpu()
    return _gather_strided(local, n, runtime).cpu()


def _gather_strided(local: torch.Tensor, n: int, runtime: Runtime) -> torch.Tensor:
    per_rank = math.ceil(n / runtime.world_size)
    padded = torch.zeros(per_rank, local.shape[1], device=local.device, dtype=local.dtype)
    padded[:len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(runtime.world_size)]
    dist.all_gather(parts, padded)
    out = torch.empty(n, local.shape[1], device=local.device, dtype=local.dtype)
    for rank, part in enumerate(parts):
        count = len(range(rank, n, runtime.world_size))
        out[rank::runtime.world_size] = part[:count]
    return out


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, transform: Transform,
             runtime: Runtime, batch_size: int = 256, tta: bool = False) -> dict[str, float]:
    """Accuracy and mean cross-entropy of `model` on a labelled uint8 set."""
    logits = predict(model, images, transform=transform, runtime=runtime, batch_size=batch_size, tta=tta)
    return {"accuracy": (logits.argmax(1) == labels).float().mean().item(),
            "loss": F.cross_entropy(logits, labels).item()}
