"""Serve the EuroSAT demo page, its API and its MCP tools (Hugging Face Spaces run this file).

    python app.py                          # $EUROSAT_MODEL, else the bundled model in models/
    python app.py --model runs/cpu         # a local checkpoint folder written by train.py
    python app.py --model owner/name@v1    # a Hub model at a revision
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eurosat.config import BUNDLED_MODEL, ENV_MODEL, AppConfig, add_flags, from_environment, from_flags

if TYPE_CHECKING:  # torch and gradio load when the app starts, not when this file is imported
    import gradio as gr

    from eurosat.budget import Limits
    from eurosat.inference import Predictor

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE / "examples"
BUNDLED = HERE / BUNDLED_MODEL

log = logging.getLogger("app")


def parser() -> argparse.ArgumentParser:
    from eurosat.budget import ENV_CLIENT_LIMIT, ENV_DAILY_LIMIT, ENV_TRUSTED_PROXIES
    from eurosat.llm import ENV_OPENAI_KEY, ENV_OPENAI_MODEL

    p = argparse.ArgumentParser(
        prog="app.py", description="Serve the EuroSAT land-cover page, its API and its MCP tools.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "environment:\n"
            f"  {ENV_MODEL}          the model when --model is not given\n"
            "  GRADIO_SERVER_NAME     the address to listen on (default 127.0.0.1; Spaces set 0.0.0.0)\n"
            "  GRADIO_SERVER_PORT     the port (default 7860, or the next free one)\n"
            f"  {ENV_OPENAI_KEY}         turns on the GPT-4o tab for every visitor (a Space secret)\n"
            f"  {ENV_OPENAI_MODEL}           the OpenAI model of that tab (default gpt-4o)\n"
            "  OPENAI_BASE_URL        another OpenAI-compatible server\n"
            f"  {ENV_CLIENT_LIMIT}, {ENV_DAILY_LIMIT}\n"
            "                         calls on the server's OpenAI key per client per hour, and per day in all\n"
            f"  {ENV_TRUSTED_PROXIES}  proxies in front of the app that append to X-Forwarded-For\n"
            "  HF_TOKEN, HF_HUB_OFFLINE  private Hub models; use only the local Hugging Face cache"))
    add_flags(p, AppConfig)
    return p


def parse_config(argv: list[str] | None = None) -> AppConfig:
    """The AppConfig of a command line, then of EUROSAT_* variables; the environment is read here, at call time."""
    return from_flags(AppConfig, parser().parse_args(argv),
                      **{"model": str(BUNDLED), "examples_dir": str(EXAMPLES), **from_environment(AppConfig, os.environ)})


def load_predictor(config: AppConfig) -> tuple[Predictor | None, str | None]:
    """(Predictor, None), or (None, why) when no model can be loaded: the page then starts with a banner."""
    from eurosat.hub import CheckpointError, load
    from eurosat.inference import Predictor

    start = time.perf_counter()
    try:
        checkpoint = load(config.model, device=config.device)
    except CheckpointError as e:
        log.error("no model: %s", e)
        return None, str(e)
    except Exception as e:  # a failure nobody foresaw must still leave a page that says what happened
        log.exception("loading %s failed", config.model)
        return None, f"Loading {config.model!r} failed unexpectedly ({type(e).__name__}); see the server log."
    predictor = Predictor(checkpoint, device=config.device, tta=checkpoint.tta if config.tta is None else config.tta,
                          cell_tta=checkpoint.tta if config.cell_tta is None else config.cell_tta,
                          cell_parts=cell_parts(config), cam_copies=config.concurrency_limit)
    if config.backend == "onnxruntime":
        predictor.use_onnxruntime(config.graph_cache, threads=request_threads(config))
    loaded = time.perf_counter()
    predictor.warmup()
    # A flag that asks for TTA is obeyed whatever it costs; the checkpoint's own choice is kept within budget.
    views = predictor.fit_views(math.inf if config.tta else config.tta_budget_ms / 1000,
                                math.inf if config.cell_tta else config.cell_tta_budget_ms / 1000)
    log.info("loaded %s (%s, %d classes) on %s in %.1f s; warm-up %.0f ms, %s layout; forward passes: %s, "
             "%d at once for scenes and batches; %s", config.model, checkpoint.architecture,
             len(predictor.label_names), config.device, loaded - start, (time.perf_counter() - loaded) * 1000,
             "channels_last" if predictor.channels_last else "contiguous", predictor.backend_note,
             predictor.cell_parts, views)
    return predictor, None


def request_threads(config: AppConfig) -> int:
    """CPU threads of one request's forward pass, for PyTorch and ONNX Runtime alike (`inference.cpu_threads`)."""
    from eurosat.inference import cpu_threads

    return config.threads or cpu_threads(config.concurrency_limit)


def cell_parts(config: AppConfig) -> int:
    """Slices worked on at once in each batch of a heavy job: the heavy lane's CPUs over a request's threads.

    Heavy jobs step aside while tiles are served, so between tiles one heavy job may use every CPU
    that the lane's `heavy_concurrency` jobs share, not only the threads of one tile's request.
    """
    from eurosat.inference import cpu_threads

    return max(1, cpu_threads(config.heavy_concurrency) // request_threads(config))


def build(config: AppConfig, limits: Limits | None = None) -> gr.Blocks:
    """The demo for `config`, its queue sized for it: the model is loaded here, once."""
    import torch

    from eurosat.budget import Budget, Limits
    from eurosat.engine import resolve_device
    from eurosat.ui import build_demo

    config = dataclasses.replace(config, device=resolve_device(config.device))
    torch.set_num_threads(request_threads(config))
    predictor, error = load_predictor(config)
    budget = Budget(limits or Limits.from_env())
    demo = build_demo(predictor, config=config, load_error=error, budget=budget)
    return demo.queue(default_concurrency_limit=config.concurrency_limit, max_size=config.max_queue_size)


def main(argv: list[str] | None = None) -> None:
    """Parse the flags, load the model, serve until stopped."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP request drowns the log
    from eurosat.budget import Limits
    from eurosat.engine import resolve_device
    from eurosat.errors import SettingError
    from eurosat.ui import launch_kwargs

    try:
        config = parse_config(argv)
        config = dataclasses.replace(config, device=resolve_device(config.device))
        limits = Limits.from_env()  # a typo in a limit stops the app here, not at the first visitor
    except SettingError as e:
        parser().error(str(e))
    demo = build(config, limits)
    # `gradio app.py` (reload mode) looks for the launched demo under the name `demo`.
    globals()["demo"] = demo
    demo.launch(**launch_kwargs(config))


def __getattr__(name: str) -> Any:
    """`from app import demo` builds the demo from the environment on first use, never at import."""
    if name != "demo":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    demo = globals()["demo"] = build(parse_config([]))
    return demo


if __name__ == "__main__":
    main()
