"""Serve the EuroSAT demo page and its API (Hugging Face Spaces run this file).

    python app.py                          # the default Hub model, or $EUROSAT_MODEL
    python app.py --model runs/quick       # a local checkpoint folder written by train.py
    python app.py --model owner/name@v1    # a Hub model at a revision
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eurosat.config import DEFAULT_MODEL_ID, ENV_MODEL, ENV_OPENAI_KEY, ENV_OPENAI_MODEL, AppConfig

if TYPE_CHECKING:  # torch and gradio load when the app starts, not when this file is imported
    import gradio as gr

    from eurosat.inference import Predictor

EXAMPLES = Path(__file__).resolve().with_name("examples")

log = logging.getLogger("app")


def parser() -> argparse.ArgumentParser:
    defaults = AppConfig()
    p = argparse.ArgumentParser(
        prog="app.py", description="Serve the EuroSAT land-cover page and its API (/predict, /gradcam, /gpt4o).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "environment:\n"
            f"  {ENV_MODEL}          the model when --model is not given\n"
            "  GRADIO_SERVER_NAME     the address to listen on (default 127.0.0.1; Spaces set 0.0.0.0)\n"
            "  GRADIO_SERVER_PORT     the port (default 7860, or the next free one)\n"
            f"  {ENV_OPENAI_KEY}         turns on the GPT-4o tab for every visitor (a Space secret)\n"
            f"  {ENV_OPENAI_MODEL}           the OpenAI model of that tab (default gpt-4o)\n"
            "  OPENAI_BASE_URL        another OpenAI-compatible server\n"
            "  HF_TOKEN, HF_HUB_OFFLINE  private Hub models; use only the local Hugging Face cache"))
    p.add_argument("--model", help=f"checkpoint folder, or Hub id owner/name[@revision] "
                                   f"(default: ${ENV_MODEL}, else {DEFAULT_MODEL_ID})")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=defaults.device,
                   help=f"where the model runs; auto picks cuda when there is a GPU (default {defaults.device})")
    p.add_argument("--threads", type=int,
                   help="CPU threads per request (default: the usable CPUs shared by the concurrent requests)")
    p.add_argument("--concurrency-limit", type=int, default=defaults.concurrency_limit,
                   help=f"requests that run the model at the same time (default {defaults.concurrency_limit})")
    p.add_argument("--max-queue-size", type=int, default=defaults.max_queue_size,
                   help=f"waiting requests before new ones are refused (default {defaults.max_queue_size})")
    p.add_argument("--max-file-size", default=defaults.max_file_size,
                   help=f"largest upload, e.g. 5mb (default {defaults.max_file_size})")
    p.add_argument("--examples", default=str(EXAMPLES),
                   help="folder of example tiles for the gallery (default: examples/ beside app.py)")
    return p


def parse_config(argv: list[str] | None = None) -> AppConfig:
    """The AppConfig of a command line; the environment is read here, at call time."""
    args = parser().parse_args(argv)
    return AppConfig(
        model=args.model or os.environ.get(ENV_MODEL, "").strip() or DEFAULT_MODEL_ID,
        device=args.device, threads=args.threads, concurrency_limit=args.concurrency_limit,
        max_queue_size=args.max_queue_size, max_file_size=args.max_file_size, examples_dir=args.examples)


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
    predictor = Predictor(checkpoint, device=config.device)
    loaded = time.perf_counter()
    predictor.warmup()
    log.info("loaded %s (%s, %d classes) on %s in %.1f s; warm-up %.0f ms, serving in %s layout", config.model,
             checkpoint.architecture, len(predictor.label_names), config.device, loaded - start,
             (time.perf_counter() - loaded) * 1000, "channels_last" if predictor.channels_last else "contiguous")
    return predictor, None


def build(config: AppConfig) -> gr.Blocks:
    """The demo for `config`, its queue sized for it: the model is loaded here, once."""
    import torch

    from eurosat.engine import resolve_device
    from eurosat.inference import cpu_threads
    from eurosat.ui import build_demo

    config = dataclasses.replace(config, device=resolve_device(config.device))
    torch.set_num_threads(config.threads or cpu_threads(config.concurrency_limit))
    predictor, error = load_predictor(config)
    demo = build_demo(predictor, config=config, load_error=error)
    return demo.queue(default_concurrency_limit=config.concurrency_limit, max_size=config.max_queue_size)


def main(argv: list[str] | None = None) -> None:
    """Parse the flags, load the model, serve until stopped."""
    config = parse_config(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per HTTP request drowns the log
    from eurosat.engine import resolve_device
    from eurosat.ui import launch_kwargs

    try:
        config = dataclasses.replace(config, device=resolve_device(config.device))
    except ValueError as e:
        parser().error(str(e))
    demo = build(config)
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
