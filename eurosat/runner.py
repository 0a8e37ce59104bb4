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
from .calibration import calibrated_softmax, choose_threshold, fit_temperature
from .config import TrainConfig
from .data import decode_split, load_splits, subsample
from .distill import SoftTargets, teacher_logits
from .engine import (
    Runtime,
    WeightAverage,
    evaluate,
    make_optimizer,
    make_scheduler,
    predict,
    resolve_runtime,
    train_one_epoch,
)
from .errors import UserError
from .fileio import write_text
from .model import build_model
from .trainstate import STATE_FILE, load_state, save_state
from .transforms import DataConfig, eval_transform, train_transform

LOG_FILE = "log.jsonl"


class RunError(UserError, RuntimeError):
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


def fit(cfg: TrainConfig, *, log: Callable[[str], None] = print, show_progress: bool = False,
        command: str | None = None) -> dict[str, Any]:
    """Train, keep the best epoch on validation, score the test split once, write the report.

    `command` is the command line that started the run, recorded in the report and the model card.
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
    whole_tiles = train_transform(data_config, generator, translate=cfg.translate, erase=cfg.erase)
    windows = train_transform(data_config, generator, crop=cfg.train_crop, translate=cfg.translate, erase=cfg.erase)
    to_input = eval_transform(data_config)
    average = WeightAverage(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    served = average.module if average is not None else model  # what is validated and saved
    targets = _soft_targets(cfg, train_x, labels, runtime, log) if cfg.teacher else None
    extra_config = {"train_config": cfg.to_dict(), "initial_weights": hub.initial_weights(model, cfg.pretrained),
                    "command": command}

    run = {"epoch": 0, "best_accuracy": -1.0, "best_epoch": -1, "train_seconds": 0.0, "wall_seconds": 0.0,
           "history": []}
    best: dict[str, torch.Tensor] = {}
    if cfg.resume and (out / STATE_FILE).exists():
        state = load_state(out / STATE_FILE)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        if average is not None and state.get("average"):
            average.load_state_dict(state["average"])
        torch.set_rng_state(state["torch_rng"])
        run, best = state["run"], state["best"]
        log(f"Resuming {out} after epoch {run['epoch']} (best validation accuracy "
            f"{run['best_accuracy']:.4f} at epoch {run['best_epoch']}).")
    wall_before = run["wall_seconds"]  # time spent by earlier, interrupted processes of this run
    if runtime.is_main:
        out.mkdir(parents=True, exist_ok=True)

    for epoch in range(run["epoch"], cfg.epochs):
        with tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                  disable=not (show_progress and runtime.is_main)) as bar:
            whole = cfg.train_crop is None or epoch >= cfg.epochs - cfg.whole_tile_epochs
            train = train_one_epoch(
                train_model, train_x, train_y, transform=whole_tiles if whole else windows, optimizer=optimizer,
                scheduler=scheduler, batch_size=cfg.batch_size, generator=generator, runtime=runtime,
                label_smoothing=cfg.label_smoothing, average=average, mixup_alpha=cfg.mixup_alpha,
                cutmix_alpha=cfg.cutmix_alpha, targets=targets, progress=partial(_show, bar))
        val = evaluate(served, *tensors["validation"], transform=to_input, runtime=runtime)
        run["train_seconds"] += train["seconds"]
        record = {"epoch": epoch + 1, "train_loss": train["loss"], "train_accuracy": train["accuracy"],
                  "val_loss": val["loss"], "val_accuracy": val["accuracy"], "lr": scheduler.get_last_lr()[0],
                  "images": train["images"], "seconds": train["seconds"], "images_per_s": train["images_per_s"],
                  "time": time.time()}
        improved = val["accuracy"] > run["best_accuracy"]
        if improved:
            run["best_accuracy"], run["best_epoch"] = val["accuracy"], epoch + 1
            best = {k: v.detach().clone() for k, v in served.state_dict().items()}
        run["epoch"] = epoch + 1
        run["history"].append(record)
        run["wall_seconds"] = wall_before + time.perf_counter() - started
        if runtime.is_main:
            # The best weights live in the state until the run ends: the checkpoint is written once, calibrated.
            save_state(out / STATE_FILE, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(), "run": run, "best": best,
                "average": average.state_dict() if average is not None else None})
            write_log(out, run["history"])
        log(f"epoch {epoch + 1}/{cfg.epochs}: train loss {train['loss']:.4f} acc {train['accuracy']:.4f} "
            f"| val loss {val['loss']:.4f} acc {val['accuracy']:.4f} | {train['images_per_s']:.0f} img/s"
            + (" | best" if improved else ""))
        _barrier(runtime)

    served.load_state_dict(best)
    return finish(cfg, out, served, data_config, extra_config, run, tensors["validation"], tensors["test"], labels,
                  runtime, log, wall_seconds=wall_before + time.perf_counter() - started)


def _soft_targets(cfg: TrainConfig, images: torch.Tensor, labels: list[str], runtime: Runtime,
                  log: Callable[[str], None]) -> SoftTargets:
    """The teacher's 8-view answers on the training tiles, with the weight and temperature of the run."""
    start = time.perf_counter()
    try:
        teacher = hub.load(cfg.teacher, device=runtime.device)
    except hub.CheckpointError as e:
        raise RunError(f"The teacher could not be loaded: {e}") from None
    if teacher.label_names != labels:
        raise RunError(f"The teacher {cfg.teacher!r} knows the classes {teacher.label_names}, not the dataset's "
                       f"{labels}: distil from a checkpoint trained on the same classes.")
    logits = teacher_logits(teacher.model, images, transform=eval_transform(teacher.data_config), runtime=runtime)
    log(f"Teacher {cfg.teacher}: 8-view answers on {len(images):,} training tiles in "
        f"{time.perf_counter() - start:.0f} s.")
    return SoftTargets(logits, cfg.distill_weight, cfg.distill_temperature)


def _quiet(_: str) -> None:
    pass


def _show(bar: tqdm, stats: dict[str, float]) -> None:
    bar.set_postfix(loss=f"{stats['loss']:.3f}", acc=f"{stats['acc']:.3f}", img_s=f"{stats['img_s']:.0f}")
    bar.update()


def write_log(out: Path, history: list[dict]) -> None:
    """Rewrite log.jsonl from the saved history, so after a resume it lists each finished epoch once."""
    write_text(out / LOG_FILE, "".join(json.dumps(record) + "\n" for record in history))


def _barrier(runtime: Runtime) -> None:
    if runtime.distributed:
        torch.distributed.barrier()


def calibrate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, *, transform, runtime: Runtime,
              tta: bool) -> dict[str, Any]:
    """The temperature and the notice threshold of a model, fitted on a labelled (validation) set.

    Label smoothing teaches the network to hedge: one temperature undoes that without changing a
    single prediction. The threshold is chosen on the answers as served (with `tta`, the 8-view
    mean), on the calibrated probabilities.
    """
    logits = predict(model, images, transform=transform, runtime=runtime)
    temperature = fit_temperature(logits, labels)
    served = predict(model, images, transform=transform, runtime=runtime, tta=True) if tta else logits
    probs = calibrated_softmax(served, temperature)
    threshold = choose_threshold(probs.max(1).values.numpy(), (probs.argmax(1) == labels).numpy())
    return {"temperature": temperature, "notice_threshold": threshold, "tta": tta}


def finish(cfg: TrainConfig, out: Path, model: torch.nn.Module, data_config, extra_config: dict[str, Any], run: dict,
           validation: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor], labels: list[str],
           runtime: Runtime, log: Callable[[str], None], wall_seconds: float) -> dict[str, Any]:
    """Calibrate the best weights on validation, write the checkpoint once, then score it and write the report."""
    to_input = eval_transform(data_config)
    calibration = calibrate(model, *validation, transform=to_input, runtime=runtime, tta=cfg.tta)
    config = {**extra_config, **calibration}
    if runtime.is_main:
        hub.save(model, out, label_names=labels, data_config=data_config, extra_config=config,
                 pretrained=cfg.pretrained)
    _barrier(runtime)
    checkpoint = hub.Checkpoint(model=model, label_names=labels, data_config=data_config, source=str(out),
                                config={"architecture": cfg.model, **config})
    run_info = {
        "command": extra_config.get("command"), "dataset": cfg.dataset, "split": "test", "model": cfg.model,
        "model_args": cfg.model_args,
        "pretrained": cfg.pretrained, "initial_weights": extra_config.get("initial_weights"), "preset": cfg.preset,
        "epochs": cfg.epochs, "best_epoch": run["best_epoch"], "best_val_accuracy": run["best_accuracy"],
        "img_size": cfg.img_size, "train_crop": cfg.train_crop, "ema_decay": cfg.ema_decay,
        "batch_size": cfg.batch_size, "optimizer": cfg.optimizer, "lr": cfg.lr, "seed": cfg.seed,
        "device": str(runtime.device), "world_size": runtime.world_size, "train_seconds": run["train_seconds"],
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

    `top1` is the single-view accuracy; with `tta`, `top1_tta` is the accuracy of the mean logits of
    the 8 D4 views of each tile. The notice's catch and false-flag rates are measured on the answers
    as the checkpoint is served (its config's `tta`).
    """
    from . import metrics as m
    from . import report

    to_input = eval_transform(checkpoint.data_config)
    model = checkpoint.model.to(memory_format=torch.channels_last if runtime.channels_last else torch.preserve_format)
    temperature = checkpoint.temperature
    start = time.perf_counter()
    logits = predict(model, images, transform=to_input, runtime=runtime)
    seconds = time.perf_counter() - start
    probs = calibrated_softmax(logits, temperature)
    metrics = m.classification_metrics(probs.numpy(), labels.numpy(), checkpoint.label_names)
    raw = logits.softmax(dim=1)
    metrics.update(temperature=temperature, eval_seconds=seconds, eval_images_per_s=len(labels) / max(seconds, 1e-9),
                   ece_uncalibrated=m.expected_calibration_error(
                       raw.max(dim=1).values.double().numpy(), (raw.argmax(dim=1) == labels).numpy(),
                       metrics["ece_bins"]))
    served = probs
    if tta:
        tta_probs = calibrated_softmax(predict(model, images, transform=to_input, runtime=runtime, tta=True),
                                       temperature)
        metrics["top1_tta"] = (tta_probs.argmax(1) == labels).double().mean().item()
        metrics["ece_tta"] = m.expected_calibration_error(tta_probs.max(1).values.double().numpy(),
                                                          (tta_probs.argmax(1) == labels).numpy(), metrics["ece_bins"])
        served = tta_probs if checkpoint.tta else probs
    confidence, correct = served.max(1).values.numpy(), (served.argmax(1) == labels).numpy()
    metrics["served_tta"] = served is not probs
    metrics["notice"] = m.notice_rates(confidence, correct, checkpoint.notice_threshold)
    metrics["risk_coverage"] = m.risk_coverage(confidence, correct)  # of the answers as served
    if out is not None:
        report.write_report(out, metrics=metrics, run_info=run_info, label_names=checkpoint.label_names,
                            images=images, labels=labels, probs=probs, repo_id=repo_id)
    return metrics


def evaluate_checkpoint(source: str, dataset: str, output_dir: str, *, split: str = "test", device: str = "auto",
                        tta: bool | None = None) -> dict[str, Any]:
    """Score any checkpoint (local folder or Hub id) on a dataset split and write the same report.

    The split is cut as the checkpoint's own training run cut it (its stored seed and validation
    share), so `validation` scores the images it was validated on. `tta` defaults to how the
    checkpoint is served.
    """
    runtime = resolve_runtime(device)
    checkpoint = hub.load(source, device=runtime.device)
    train_config = checkpoint.config.get("train_config", {})
    data, tensors = load_tensors(dataset, seed=train_config.get("seed", 0),
                                 val_fraction=train_config.get("val_fraction", 0.2), max_train_samples=None,
                                 splits=(split,))
    if data.label_names != checkpoint.label_names:
        raise RunError(f"The checkpoint's classes {checkpoint.label_names} differ from the dataset's "
                       f"{data.label_names}; evaluate it on the dataset it was trained for.")
    run_info = {"dataset": dataset, "split": split, "model": checkpoint.architecture, "checkpoint": source,
                "preset": train_config.get("preset"), "epochs": train_config.get("epochs"),
                "device": str(runtime.device)}
    out = Path(output_dir)
    return score(checkpoint, *tensors[split], runtime=runtime, out=out if runtime.is_main else None,
                 run_info=run_info, tta=checkpoint.tta if tta is None else tta)
