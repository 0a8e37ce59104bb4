"""A training run end to end: data, model, epochs with resume, the best checkpoint written once, its report."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from . import hub
from .config import TrainConfig
from .data import load_tensors
from .distill import SoftTargets
from .evaluation import calibrate, score
from .engine import Runtime, evaluate, make_optimizer, make_scheduler, predict, resolve_runtime, train_one_epoch
from .errors import UserError
from .fileio import write_text
from .model import build_model
from .trainstate import STATE_FILE, load_state, save_state
from .transforms import DataConfig, eval_transform, train_transform
from .whiten import whiten_stem

LOG_FILE = "log.jsonl"


class RunError(UserError, RuntimeError):
    """A run that cannot start or continue; the message says why and what to do."""


def _build(cfg: TrainConfig, num_classes: int) -> torch.nn.Module:
    import timm

    if not timm.is_model(cfg.model):
        raise RunError(f"timm has no model named {cfg.model!r}: pick one of `timm.list_models()`, e.g. resnet18.")
    try:
        return build_model(cfg.model, num_classes, pretrained=cfg.pretrained, model_args=cfg.model_args)
    except (OSError, RuntimeError) as e:
        if not cfg.pretrained:
            raise
        raise RunError(
            f"The ImageNet weights for {cfg.model!r} could not be fetched ({type(e).__name__}). "
            "Go online once so they are cached, or train from scratch with --no-pretrained.") from None


@dataclass
class RunState:
    """How far a run has come: saved after every epoch, and all a resumed run needs besides the weights."""

    epoch: int = 0
    best_accuracy: float = -1.0
    best_epoch: int = -1
    train_seconds: float = 0.0
    wall_seconds: float = 0.0  # of every process of this run so far, the interrupted ones included
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Session:
    """Everything one process of a run holds: the data, the model and its optimiser, and the run's state."""

    cfg: TrainConfig
    runtime: Runtime
    out: Path
    labels: list[str]
    tensors: dict[str, tuple[torch.Tensor, torch.Tensor]]
    model: torch.nn.Module  # the bare model; `train_model` wraps it under DDP
    train_model: torch.nn.Module
    data_config: DataConfig
    optimizer: torch.optim.Optimizer
    scheduler: Any
    generator: torch.Generator  # drives shuffling and augmentation, so it is resumed too
    average: Any  # timm's ModelEmaV3 of the weights, or None
    targets: SoftTargets | None
    extra_config: dict[str, Any]
    state: RunState = field(default_factory=RunState)
    best: dict[str, torch.Tensor] = field(default_factory=dict)  # the best epoch's weights of `served`
    started: float = field(default_factory=time.perf_counter)
    wall_before: float = 0.0

    @property
    def served(self) -> torch.nn.Module:
        """What is validated and saved: the average of the weights when there is one."""
        return self.average.module if self.average is not None else self.model

    def wall_seconds(self) -> float:
        return self.wall_before + time.perf_counter() - self.started


def _check_output_dir(out: Path, resume: bool) -> None:
    if not resume and (out / STATE_FILE).exists():
        raise RunError(
            f"{out} already holds a run. Pass --resume to continue it, or choose another --output-dir "
            "(nothing was overwritten).")


def start(cfg: TrainConfig, log: Callable[[str], None], command: str | None = None) -> Session:
    """Data, model, optimiser and schedule for `cfg`, resumed from the run folder's state when asked."""
    runtime = resolve_runtime(cfg.device)
    out = Path(cfg.output_dir)
    _check_output_dir(out, cfg.resume)
    torch.manual_seed(cfg.seed)
    data, tensors = load_tensors(cfg.dataset, seed=cfg.seed, val_fraction=cfg.val_fraction,
                                 max_train_samples=cfg.max_train_samples)
    model = _build(cfg, len(data.label_names))
    data_config = DataConfig.for_model(model, cfg.img_size)
    if cfg.whiten_stem:  # before the optimiser and the weight average take the stem; about 256 tiles, evenly spread
        images = tensors["train"][0]
        whiten_stem(model, eval_transform(data_config)(images[:: max(1, len(images) // 256)]))
    model.to(runtime.device, memory_format=torch.channels_last if runtime.channels_last else torch.preserve_format)
    train_model = model
    if runtime.distributed:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model, device_ids=[runtime.device.index] if runtime.device.index is not None else None)
    steps_per_epoch = len(tensors["train"][1]) // runtime.world_size // cfg.batch_size
    if steps_per_epoch == 0:
        raise RunError(f"The training split has {len(tensors['train'][1])} images, fewer than one batch of "
                       f"{cfg.batch_size} per process: lower --batch-size.")
    optimizer = make_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay)
    scheduler = make_scheduler(optimizer, steps_per_epoch * cfg.epochs, round(steps_per_epoch * cfg.warmup_epochs))
    average = None
    if cfg.ema_decay > 0:
        from timm.utils import ModelEmaV3

        # Warmed up with decay t / (t + 10), below ema_decay until then, so the first steps' random weights are
        # soon forgotten (the schedule of TensorFlow's ExponentialMovingAverage with num_updates).
        average = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=True, warmup_gamma=10.0, warmup_power=1.0)
    session = Session(
        cfg=cfg, runtime=runtime, out=out, labels=data.label_names, tensors=tensors, model=model,
        train_model=train_model, data_config=data_config, optimizer=optimizer, scheduler=scheduler,
        generator=torch.Generator().manual_seed(cfg.seed), average=average,
        targets=_soft_targets(cfg, tensors["train"][0], data.label_names, runtime, log) if cfg.teacher else None,
        extra_config={"train_config": cfg.to_dict(), "initial_weights": hub.initial_weights(model, cfg.pretrained),
                      "command": command})
    if cfg.resume and (out / STATE_FILE).exists():
        _resume(session, load_state(out / STATE_FILE), log)
    if runtime.is_main:
        out.mkdir(parents=True, exist_ok=True)
    return session


def _resume(session: Session, saved: dict[str, Any], log: Callable[[str], None]) -> None:
    session.model.load_state_dict(saved["model"])
    session.optimizer.load_state_dict(saved["optimizer"])
    session.scheduler.load_state_dict(saved["scheduler"])
    session.generator.set_state(saved["generator"])
    if session.average is not None and saved.get("average"):
        session.average.load_state_dict(saved["average"])
    torch.set_rng_state(saved["torch_rng"])
    session.state, session.best = RunState(**saved["run"]), saved["best"]
    session.wall_before = session.state.wall_seconds
    log(f"Resuming {session.out} after epoch {session.state.epoch} (best validation accuracy "
        f"{session.state.best_accuracy:.4f} at epoch {session.state.best_epoch}).")


def train_epoch(session: Session, epoch: int, *, show_progress: bool = False) -> dict[str, Any]:
    """One epoch of training, then validation of the served weights; returns the epoch's record."""
    cfg, runtime = session.cfg, session.runtime
    whole = cfg.train_crop is None or epoch >= cfg.epochs - cfg.whole_tile_epochs
    transform = train_transform(session.data_config, session.generator, crop=None if whole else cfg.train_crop,
                                translate=cfg.translate, erase=cfg.erase)
    with tqdm(total=len(session.tensors["train"][1]) // runtime.world_size // cfg.batch_size,
              desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
              disable=not (show_progress and runtime.is_main)) as bar:
        train = train_one_epoch(
            session.train_model, *session.tensors["train"], transform=transform, optimizer=session.optimizer,
            scheduler=session.scheduler, batch_size=cfg.batch_size, generator=session.generator, runtime=runtime,
            label_smoothing=cfg.label_smoothing, average=session.average, mixup_alpha=cfg.mixup_alpha,
            cutmix_alpha=cfg.cutmix_alpha, targets=session.targets, progress=partial(_show, bar))
    val = evaluate(session.served, *session.tensors["validation"], transform=eval_transform(session.data_config),
                   runtime=runtime)
    return {"epoch": epoch + 1, "train_loss": train["loss"], "train_accuracy": train["accuracy"],
            "val_loss": val["loss"], "val_accuracy": val["accuracy"], "lr": session.scheduler.get_last_lr()[0],
            "images": train["images"], "seconds": train["seconds"], "images_per_s": train["images_per_s"],
            "time": time.time()}


def record(session: Session, entry: dict[str, Any]) -> bool:
    """Add an epoch's record to the run state, keep its weights if they are the best on validation, and save
    the state (the best weights live in it until the run ends). Returns whether the epoch was the best."""
    state = session.state
    improved = entry["val_accuracy"] > state.best_accuracy
    if improved:
        state.best_accuracy, state.best_epoch = entry["val_accuracy"], entry["epoch"]
        session.best = {k: v.detach().clone() for k, v in session.served.state_dict().items()}
    state.epoch = entry["epoch"]
    state.train_seconds += entry["seconds"]
    state.history.append(entry)
    state.wall_seconds = session.wall_seconds()
    if session.runtime.is_main:
        save_state(session.out / STATE_FILE, {
            "model": session.model.state_dict(), "optimizer": session.optimizer.state_dict(),
            "scheduler": session.scheduler.state_dict(), "generator": session.generator.get_state(),
            "torch_rng": torch.get_rng_state(), "run": dataclasses.asdict(state), "best": session.best,
            "average": session.average.state_dict() if session.average is not None else None})
        write_log(session.out, state.history)
    return improved


def fit(cfg: TrainConfig, *, log: Callable[[str], None] = print, show_progress: bool = False,
        command: str | None = None) -> dict[str, Any]:
    """Train, keep the best epoch on validation, score the test split once, write the report.

    `command` is the command line that started the run, recorded in the report and the model card.
    Returns the metrics dict that was written to metrics.json (on every rank).
    """
    if not resolve_runtime(cfg.device).is_main:
        log = _quiet  # one voice under torchrun: rank 0 speaks for all
    session = start(cfg, log, command)
    for epoch in range(session.state.epoch, cfg.epochs):
        entry = train_epoch(session, epoch, show_progress=show_progress)
        improved = record(session, entry)
        log(f"epoch {epoch + 1}/{cfg.epochs}: train loss {entry['train_loss']:.4f} acc {entry['train_accuracy']:.4f} "
            f"| val loss {entry['val_loss']:.4f} acc {entry['val_accuracy']:.4f} | {entry['images_per_s']:.0f} img/s"
            + (" | best" if improved else ""))
        _barrier(session.runtime)
    session.served.load_state_dict(session.best)
    return finish(session, log)


def _soft_targets(cfg: TrainConfig, images: torch.Tensor, labels: list[str], runtime: Runtime,
                  log: Callable[[str], None]) -> SoftTargets:
    """The teacher's 8-view answers on the training tiles, with the weight and temperature of the run.

    Computed at the start of every process of the run, a resumed one included (the answers are the
    same each time), and said so in the log.
    """
    start_time = time.perf_counter()
    try:
        teacher = hub.load(cfg.teacher, device=runtime.device)
    except hub.CheckpointError as e:
        raise RunError(f"The teacher could not be loaded: {e}") from None
    if teacher.label_names != labels:
        raise RunError(f"The teacher {cfg.teacher!r} knows the classes {teacher.label_names}, not the dataset's "
                       f"{labels}: distil from a checkpoint trained on the same classes.")
    # The 8-view mean of each whole tile, which no D4 view changes: one target for any view of it.
    logits = predict(teacher.model, images, transform=eval_transform(teacher.data_config), runtime=runtime, tta=True)
    log(f"Teacher {cfg.teacher}: 8-view answers on {len(images):,} training tiles in "
        f"{time.perf_counter() - start_time:.0f} s.")
    return SoftTargets(logits, cfg.distill_weight, cfg.distill_temperature)


def _quiet(_: str) -> None:
    pass


def _show(bar: tqdm, stats: dict[str, float]) -> None:
    bar.set_postfix(loss=f"{stats['loss']:.3f}", acc=f"{stats['acc']:.3f}", img_s=f"{stats['img_s']:.0f}")
    bar.update()


def write_log(out: Path, history: list[dict]) -> None:
    """Rewrite log.jsonl from the saved history, so after a resume it lists each finished epoch once."""
    write_text(out / LOG_FILE, "".join(json.dumps(entry) + "\n" for entry in history))


def _barrier(runtime: Runtime) -> None:
    if runtime.distributed:
        torch.distributed.barrier()


def finish(session: Session, log: Callable[[str], None]) -> dict[str, Any]:
    """Calibrate the best weights on validation, write the checkpoint once, then score it and write the report."""
    cfg, runtime, model = session.cfg, session.runtime, session.served
    calibration = calibrate(model, *session.tensors["validation"], transform=eval_transform(session.data_config),
                            runtime=runtime, tta=cfg.tta)
    config = {**session.extra_config, **calibration}
    if runtime.is_main:
        hub.save(model, session.out, label_names=session.labels, data_config=session.data_config,
                 extra_config=config, pretrained=cfg.pretrained)
    _barrier(runtime)
    checkpoint = hub.Checkpoint(model=model, label_names=session.labels, data_config=session.data_config,
                                source=str(session.out), config={"architecture": cfg.model, **config})
    state = session.state
    run_info = {
        "command": session.extra_config.get("command"), "dataset": cfg.dataset, "split": "test", "model": cfg.model,
        "model_args": cfg.model_args, "pretrained": cfg.pretrained,
        "initial_weights": session.extra_config.get("initial_weights"), "preset": cfg.preset,
        "epochs": cfg.epochs, "best_epoch": state.best_epoch, "best_val_accuracy": state.best_accuracy,
        "validation": calibration["validation"], "img_size": cfg.img_size, "train_crop": cfg.train_crop,
        "ema_decay": cfg.ema_decay, "teacher": cfg.teacher, "batch_size": cfg.batch_size, "optimizer": cfg.optimizer,
        "lr": cfg.lr, "seed": cfg.seed, "device": str(runtime.device), "world_size": runtime.world_size,
        "train_seconds": state.train_seconds,
        "wall_time_s": session.wall_seconds(),  # the whole run so far: decoding, training, validation, not the test
        "images_per_s": sum(r["images_per_s"] for r in state.history) / max(1, len(state.history)),
    }
    metrics = score(checkpoint, *session.tensors["test"], runtime=runtime,
                    out=session.out if runtime.is_main else None, run_info=run_info, repo_id=cfg.push_to_hub)
    log(f"test top-1 {metrics['top1']:.4f} on {metrics['num_images']} images (best epoch {state.best_epoch}); "
        f"served {'with' if checkpoint.tta else 'without'} the 8-view mean (validation gain "
        f"{100 * calibration['validation']['tta_gain']:+.2f} points)")
    return metrics
