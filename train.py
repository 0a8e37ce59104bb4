"""Fine-tune a timm model on EuroSAT RGB, write the evaluation report, optionally push to the Hub.

    python train.py --preset cpu-quick --dataset ../shared/eurosat-rgb --output-dir runs/quick
    python train.py evaluate --model runs/quick --dataset ../shared/eurosat-rgb
    python train.py push runs/quick owner/name
    torchrun --nproc_per_node=2 train.py --preset gpu ...
"""

from __future__ import annotations

import argparse
import logging
import sys

from eurosat.config import DEFAULT_DATASET, PRESETS, TrainConfig, make_train_config


def train_parser() -> argparse.ArgumentParser:
    defaults = TrainConfig()
    p = argparse.ArgumentParser(
        prog="train.py", description="Train on EuroSAT RGB. Subcommands: `evaluate` (score a checkpoint), "
        "`push` (upload a run folder). Flags given here override the preset's values.")
    p.add_argument("--preset", choices=sorted(PRESETS), help="a recipe from eurosat/config.py")
    p.add_argument("--dataset", help=f"Hub dataset id or local folder (default {defaults.dataset})")
    p.add_argument("--model", help=f"timm model name (default {defaults.model})")
    p.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None,
                   help="start from ImageNet weights (default: yes, except in cpu-quick)")
    p.add_argument("--img-size", type=int, help="input size the tiles are resized to")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="per process")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--optimizer", choices=["adamw", "sgd"])
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--output-dir", help=f"run folder: checkpoint + report (default {defaults.output_dir})")
    p.add_argument("--resume", action="store_true", default=None, help="continue the run in --output-dir")
    p.add_argument("--push-to-hub", metavar="OWNER/NAME", help="upload the run folder when training ends")
    p.add_argument("--private", action="store_true", default=None, help="create the Hub repo as private")
    p.add_argument("--max-train-samples", type=int, help="stratified subset of train, for quick trials")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                   help="also report test accuracy with the 8 flips/rotations averaged")
    return p


def evaluate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train.py evaluate", description="Score a checkpoint and write the report.")
    p.add_argument("--model", required=True, help="checkpoint folder or Hub id (owner/name[@revision])")
    p.add_argument("--dataset", default=DEFAULT_DATASET, help="Hub dataset id or local folder")
    p.add_argument("--split", default="test", choices=["train", "validation", "test"])
    p.add_argument("--output-dir", default="runs/evaluate")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True)
    return p


def push_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train.py push", description="Upload a run folder to the Hugging Face Hub.")
    p.add_argument("output_dir", help="the run folder written by train.py")
    p.add_argument("repo_id", help="owner/name")
    p.add_argument("--private", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from eurosat.data import DatasetError
    from eurosat.hub import CheckpointError, PushError
    from eurosat.runner import RunError
    from eurosat.trainstate import StateError

    try:
        if argv[:1] == ["evaluate"]:
            return run_evaluate(evaluate_parser().parse_args(argv[1:]))
        if argv[:1] == ["push"]:
            return run_push(push_parser().parse_args(argv[1:]))
        return run_train(train_parser().parse_args(argv))
    except (DatasetError, CheckpointError, PushError, RunError, StateError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def run_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from eurosat.engine import resolve_runtime
    from eurosat.hub import push
    from eurosat.runner import fit

    overrides = {k: v for k, v in vars(args).items() if k != "preset"}
    cfg = make_train_config(args.preset, **overrides)
    fit(cfg, log=tqdm.write, show_progress=True)
    if cfg.push_to_hub and resolve_runtime(cfg.device).is_main:
        print(f"pushed: {push(cfg.output_dir, cfg.push_to_hub, private=cfg.private)}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from eurosat.runner import evaluate_checkpoint

    metrics = evaluate_checkpoint(args.model, args.dataset, args.output_dir, split=args.split,
                                  device=args.device, tta=args.tta)
    print(f"{args.split} top-1 {metrics['top1']:.4f} on {metrics['num_images']} images; "
          f"report in {args.output_dir}")
    return 0


def run_push(args: argparse.Namespace) -> int:
    from eurosat.hub import push

    print(f"pushed: {push(args.output_dir, args.repo_id, private=args.private)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
