"""A training run end to end: data, model, epochs with resume, the best checkpoint, the report; and evaluation."""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from . import hub
from .calibration import fit_temperature
from .config import TrainConfig
from .data import decode_split, load_splits, subsample
from .engine import (Runtime, evaluate, make_optimizer, make_scheduler, predict, resolve_runtime,
                     train_one_epoch)
from .model import build_model
from .trainstate import STATE_FILE, load_state, save_state
from .transforms import DataConfig, eval_transform, train_transform

LOG_FILE = "log.jsonl"


class RunError(RuntimeError):
    """A run that cannot start or continue; the message says why and what to do."""


def load_tensors(source: str, *, seed: int, val_fraction: float, max_train_samples: int | None,
                 splits: tuple[str, ...] = ("train", "validation", "test")):
    """Label names and {split: (uint8 images, labels)}, each split decoded once."""
    data = load_splits(source, seed=seed, val_fraction=val_fraction)
    tensors = {}
    for name in splits:
        ds = data.split(name)
        if name == "train" and max_train_samples:
            ds = subsample(ds, max_train_samples, data.label_column, seed)
        tensors[name] = decode_split(ds, data.image_column, data.label_column, source=source, split=name)
    return data, tensors


def _build(cfg: TrainConfig, num_classes: int) -> torch.nn.Module:
    try:
        return build_model(cfg.model, num_classes, pretrained=cfg.pretrained, model_args=cfg.model_args)
    except (OSError, RuntimeError) as e:
        if not cfg.pretrained:
            raise
        raise RunError(
            f"The ImageNet weights for {cfg.model!r} could not be fetched ({type(e).__name__}). "
            "Go online once so they are cached, or train from scratch with --no-pretrained.") from None


def _check_output_dir(out: Path, resume: bool) -> None:
    if not resume and (out / STATE_FILE).exists():
        raise RunError(
            f"{out} already holds a run. Pass --resume to continue it, or choose another --output-dir "
            "(nothing was overwritten).")


def fit(cfg: TrainConfig, *, log: Callable[[str], None] = print, show_progress: bool = False) -> dict[str, Any]:
    """Train, keep the best epoch on validation, score the test split once, write the report.

    Returns the metrics dict that was written to metrics.json (on every rank).
    """
    started = time.perf_counter()
    runtime = resolve_runtime(cfg.device)
    if not runtime.is_main:
        log = _quiet  # one voice under torchrun: rank 0 speaks for all
    out = Path(cfg.output_dir)
    _check_output_dir(out, cfg.resume)
    torch.manual_seed(cfg.seed)
    data, tensors = load_tensors(cfg.dataset, seed=cfg.seed, val_fraction=cfg.val_fraction,
                                 max_train_samples=cfg.max_train_samples)
    labels = data.label_names
    model = _build(cfg, len(labels))
    data_config = DataConfig.for_model(model, cfg.img_size)
    model.to(runtime.device, memory_format=torch.channels_last if runtime.channels_last else torch.preserve_format)
    train_model = model
    if runtime.distributed:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model, device_ids=[runtime.device.index] if runtime.device.index is not None else None)

    train_x, train_y = tensors["train"]
    steps_per_epoch = len(train_y) // runtime.world_size // cfg.batch_size
    if steps_per_epoch == 0:
        raise RunError(f"The training split has {len(train_y)} images, fewer than one batch of "
                       f"{cfg.batch_size} per process: lower --batch-size.")
    optimizer = make_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay)
    scheduler = make_scheduler(optimizer, steps_per_epoch * cfg.epochs, round(steps_per_epoch * cfg.warmup_epochs))
    generator = torch.Generator().manual_seed(cfg.seed)  # drives shuffling and augmentation, so it is resumed too
    augment = train_transform(data_config, generator)
    to_input = eval_transform(data_config)

    run = {"epoch": 0, "best_accuracy": -1.0, "best_epoch": -1, "train_seconds": 0.0, "wall_seconds": 0.0,
           "history": []}
    if cfg.resume and (out / STATE_FILE).exists():
        state = load_state(out / STATE_FILE)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        run = state["run"]
        log(f"Resuming {out} after epoch {run['epoch']} (best validation accuracy "
            f"{run['best_accuracy']:.4f} at epoch {run['best_epoch']}).")
    wall_before = run["wall_seconds"]  # time spent by earlier, interrupted processes of this run
    if runtime.is_main:
        out.mkdir(parents=True, exist_ok=True)

    for epoch in range(run["epoch"], cfg.epochs):
        with tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                  disable=not (show_progress and runtime.is_main)) as bar:
            train = train_one_epoch(
                train_model, train_x, train_y, transform=augment, optimizer=optimizer, scheduler=scheduler,
                batch_size=cfg.batch_size, generator=generator, runtime=runtime,
                label_smoothing=cfg.label_smoothing, progress=partial(_show, bar))
        val = evaluate(model, *tensors["validation"], transform=to_input, runtime=runtime)
        run["train_seconds"] += train["seconds"]
        record = {"epoch": epoch + 1, "train_loss": train["loss"], "train_accuracy": train["accuracy"],
                  "val_loss": val["loss"], "val_accuracy": val["accuracy"], "lr": scheduler.get_last_lr()[0],
                  "images": train["images"], "seconds": train["seconds"], "images_per_s": train["images_per_s"],
                  "time": time.time()}
        improved = val["accuracy"] > run["best_accuracy"]
        if improved:
            run["best_accuracy"], run["best_epoch"] = val["accuracy"], epoch + 1
        run["epoch"] = epoch + 1
        run["history"].append(record)
        run["wall_seconds"] = wall_before + time.perf_counter() - started
        if runtime.is_main:
            if improved:
                hub.save(model, out, label_names=labels, data_config=data_config,
                         extra_config={"train_config": cfg.to_dict()})
            save_state(out / STATE_FILE, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(), "run": run})
            write_log(out, run["history"])
        log(f"epoch {epoch + 1}/{cfg.epochs}: train loss {train['loss']:.4f} acc {train['accuracy']:.4f} "
            f"| val loss {val['loss']:.4f} acc {val['accuracy']:.4f} | {train['images_per_s']:.0f} img/s"
            + (" | best" if improved else ""))
        _barrier(runtime)

    return finish(cfg, out, run, tensors["validation"], tensors["test"], labels, runtime, log,
                  wall_seconds=wall_before + time.perf_counter() - started)


def _quiet(_: str) -> None:
    pass


def _show(bar: tqdm, stats: dict[str, float]) -> None:
    bar.set_postfix(loss=f"{stats['loss']:.3f}", acc=f"{stats['acc']:.3f}", img_s=f"{stats['img_s']:.0f}")
    bar.update()


def write_log(out: Path, history: list[dict]) -> None:
    """Rewrite log.jsonl from the saved history, so after a resume it lists each finished epoch once."""
    tmp = out / f".{LOG_FILE}.tmp"
    tmp.write_text("".join(json.dumps(record) + "\n" for record in history))
    tmp.replace(out / LOG_FILE)


def _barrier(runtime: Runtime) -> None:
    if runtime.distributed:
        torch.distributed.barrier()


def finish(cfg: TrainConfig, out: Path, run: dict, validation: tuple[torch.Tensor, torch.Tensor],
           test: tuple[torch.Tensor, torch.Tensor], labels: list[str], runtime: Runtime, log: Callable[[str], None],
           wall_seconds: float) -> dict[str, Any]:
    """Calibrate the best checkpoint on validation, then score it and write the report.

    The checkpoint is read back from disk, exactly as `evaluate` would read it.
    """
    checkpoint = hub.load(str(out), device=runtime.device)
    # Label smoothing teaches the network to hedge: one temperature fitted on validation undoes that
    # without changing a single prediction, so the probabilities the app shows mean what they say.
    val_probs = predict(checkpoint.model, validation[0], transform=eval_transform(checkpoint.data_config),
                        runtime=runtime)
    checkpoint.config["temperature"] = fit_temperature(val_probs.clamp_min(1e-30).log(), validation[1])
    if runtime.is_main:
        hub.save(checkpoint.model, out, label_names=labels, data_config=checkpoint.data_config,
                 extra_config={"train_config": cfg.to_dict(), "temperature": checkpoint.temperature})
    _barrier(runtime)
    run_info = {
        "dataset": cfg.dataset, "split": "test", "model": cfg.model, "model_args": cfg.model_args,
        "pretrained": cfg.pretrained, "preset": cfg.preset, "epochs": cfg.epochs, "best_epoch": run["best_epoch"],
        "best_val_accuracy": run["best_accuracy"], "img_size": cfg.img_size, "batch_size": cfg.batch_size,
        "optimizer": cfg.optimizer, "lr": cfg.lr, "seed": cfg.seed, "device": str(runtime.device),
        "world_size": runtime.world_size, "train_seconds": run["train_seconds"],
        "wall_time_s": wall_seconds,  # the whole run so far: decoding, training, validation, not the test pass
        "images_per_s": sum(r["images_per_s"] for r in run["history"]) / max(1, len(run["history"])),
    }
    metrics = score(checkpoint, *test, runtime=runtime, out=out if runtime.is_main else None,
                    run_info=run_info, repo_id=cfg.push_to_hub, tta=cfg.tta)
    log(f"test top-1 {metrics['top1']:.4f} on {metrics['num_images']} images (best epoch {run['best_epoch']})")
    return metrics


def score(checkpoint: hub.Checkpoint, images: torch.Tensor, labels: torch.Tensor, *, runtime: Runtime,
          out: Path | None, run_info: dict[str, Any], repo_id: str | None = None, tta: bool = True) -> dict[str, Any]:
    """Metrics of a checkpoint on a labelled set; with `out`, also the report files.

    `top1` is the single-view accuracy the app serves; with `tta`, `top1_tta` adds the accuracy
    of averaging the 8 D4 views of each tile.
    """
    from . import report

    to_input = eval_transform(checkpoint.data_config)
    model = checkpoint.model.to(memory_format=torch.channels_last if runtime.channels_last else torch.preserve_format)
    start = time.perf_counter()
    temperature = checkpoint.temperature
    probs = predict(model, images, transform=to_input, runtime=runtime, temperature=temperature)
    seconds = time.perf_counter() - start
    metrics = report.classification_metrics(probs.numpy(), labels.numpy(), checkpoint.label_names)
    # softmax(T * log p_T) is the softmax of the raw logits: the calibration's gain, without a second pass.
    uncalibrated = (probs.clamp_min(1e-30).log() * temperature).softmax(dim=1)
    ece_uncalibrated = report.expected_calibration_error(
        uncalibrated.max(dim=1).values.double().numpy(), (uncalibrated.argmax(dim=1) == labels).numpy(),
        metrics["ece_bins"])
    metrics.update(temperature=temperature, ece_uncalibrated=ece_uncalibrated, eval_seconds=seconds,
                   eval_images_per_s=len(labels) / max(seconds, 1e-9))
    if tta:
        tta_probs = predict(model, images, transform=to_input, runtime=runtime, tta=True, temperature=temperature)
        metrics["top1_tta"] = (tta_probs.argmax(1) == labels).double().mean().item()
    if out is not None:
        report.write_report(out, metrics=metrics, run_info=run_info, label_names=checkpoint.label_names,
                            images=images, labels=labels, probs=probs, repo_id=repo_id)
    return metrics


def evaluate_checkpoint(source: str, dataset: str, output_dir: str, *, split: str = "test", device: str = "auto",
                        seed: int = 0, val_fraction: float = 0.2, tta: bool = True) -> dict[str, Any]:
    """Score any checkpoint (local folder or Hub id) on a dataset split and write the same report."""
    runtime = resolve_runtime(device)
    checkpoint = hub.load(source, device=runtime.device)
    data, tensors = load_tensors(dataset, seed=seed, val_fraction=val_fraction, max_train_samples=None,
                                 splits=(split,))
    if data.label_names != checkpoint.label_names:
        raise RunError(f"The checkpoint's classes {checkpoint.label_names} differ from the dataset's "
                       f"{data.label_names}; evaluate it on the dataset it was trained for.")
    train_config = checkpoint.config.get("train_config", {})
    run_info = {"dataset": dataset, "split": split, "model": checkpoint.architecture, "checkpoint": source,
                "preset": train_config.get("preset"), "epochs": train_config.get("epochs"),
                "device": str(runtime.device)}
    out = Path(output_dir)
    return score(checkpoint, *tensors[split], runtime=runtime, out=out if runtime.is_main else None,
                 run_info=run_info, tta=tta)
