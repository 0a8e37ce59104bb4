"""Train on EuroSAT RGB, write the evaluation report, optionally push to the Hub.

    python train.py --preset cpu --dataset ../shared/eurosat-rgb --output-dir runs/cpu
    python train.py evaluate --model runs/cpu --dataset ../shared/eurosat-rgb
    python train.py push runs/cpu owner/name
    torchrun --nproc_per_node=2 train.py --preset gpu ...
"""

from __future__ import annotations

import argparse
import logging
import sys

from eurosat.config import DEFAULT_DATASET, PRESETS, TrainConfig, add_flags, make_train_config

COMMANDS = ("fit", "evaluate", "push")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train.py", description="Train on EuroSAT RGB, score checkpoints, upload them. Without a command, "
        "`fit` is meant.")
    commands = p.add_subparsers(dest="command", required=True)
    fit = commands.add_parser("fit", help="train a model and write its report (flags override the preset)")
    add_flags(fit, TrainConfig, preset=sorted(PRESETS))
    ev = commands.add_parser("evaluate", help="score a checkpoint on a split and write the report")
    ev.add_argument("--model", required=True, help="checkpoint folder or Hub id (owner/name[@revision])")
    ev.add_argument("--dataset", default=DEFAULT_DATASET, help="Hub dataset id or local folder")
    ev.add_argument("--split", default="test", choices=["train", "validation", "test"],
                    help="the split to score; train and validation are the ones the checkpoint was trained with")
    ev.add_argument("--output-dir", default="runs/evaluate")
    ev.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ev.add_argument("--tta", action=argparse.BooleanOptionalAction, default=None,
                    help="also score the 8-view mean (default: as the checkpoint is served)")
    push = commands.add_parser("push", help="upload a run folder to the Hugging Face Hub")
    push.add_argument("output_dir", help="the run folder written by train.py")
    push.add_argument("repo_id", help="owner/name")
    push.add_argument("--private", action="store_true")
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv = ["fit", *argv]
    return parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    args.command_line = " ".join(["python train.py", *argv])
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from eurosat.errors import UserError

    try:
        return {"fit": run_fit, "evaluate": run_evaluate, "push": run_push}[args.command](args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def run_fit(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from eurosat.engine import resolve_runtime
    from eurosat.publish import push
    from eurosat.runner import fit

    overrides = {k: v for k, v in vars(args).items() if k not in ("preset", "command", "command_line")}
    cfg = make_train_config(args.preset, **overrides)
    fit(cfg, log=tqdm.write, show_progress=True, command=args.command_line)
    if cfg.push_to_hub and resolve_runtime(cfg.device).is_main:
        print(f"pushed: {push(cfg.output_dir, cfg.push_to_hub, private=cfg.private)}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from eurosat.evaluation import evaluate_checkpoint

    metrics = evaluate_checkpoint(args.model, args.dataset, args.output_dir, split=args.split,
                                  device=args.device, tta=args.tta)
    print(f"{args.split} top-1 {metrics['top1']:.4f} on {metrics['num_images']} images; "
          f"report in {args.output_dir}")
    return 0


def run_push(args: argparse.Namespace) -> int:
    from eurosat.publish import push

    print(f"pushed: {push(args.output_dir, args.repo_id, private=args.private)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
