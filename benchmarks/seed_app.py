"""A seed-style app to measure ours against: one Gradio endpoint running the seed's pipeline (`Baseline`).

    python benchmarks/seed_app.py --classes 10 --size 224     # serves /gradcam on $GRADIO_SERVER_PORT

Each request does what the seed's app did: per-image torchvision preprocessing, a forward pass for the
label, then a separate GradCAM pass with its backward, and the heatmap drawn over the tile. Random
weights (they do not change speed). `benchmarks.inference` starts it beside `python app.py`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script: the repository's packages

import gradio as gr  # noqa: E402
import torch  # noqa: E402

from benchmarks.baseline import Baseline  # noqa: E402
from eurosat.cam import overlay  # noqa: E402


def build(classes: int, size: int) -> gr.Blocks:
    """The app: /gradcam takes a tile and returns the top-5 labels and the heatmap over the tile."""
    baseline = Baseline(classes, size, torch.device("cpu"))
    names = [f"class {i}" for i in range(classes)]

    def gradcam(image):
        probs, heatmap = baseline(image)
        rgb = np.asarray(image.convert("RGB").resize(heatmap.shape[::-1]))
        return {n: float(p) for n, p in zip(names, probs)}, overlay(rgb, heatmap, 0.5)

    with gr.Blocks() as demo:
        tile = gr.Image(type="pil")
        label, picture = gr.Label(num_top_classes=5), gr.Image(format="png")
        gr.Button().click(gradcam, tile, [label, picture], api_name="gradcam")
    return demo


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python benchmarks/seed_app.py", description=__doc__.splitlines()[0])
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    build(args.classes, args.size).launch()


if __name__ == "__main__":
    main()
