"""The Gradio page: one module per tab, the shared session and checks in `shared`, the wiring in `page`."""

from .page import build_demo, launch_kwargs

__all__ = ["build_demo", "launch_kwargs"]
