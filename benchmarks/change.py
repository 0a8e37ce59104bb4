"""The change benchmark: /change of a 2048x2048 pair end to end, against two /scene calls of the same images.

    python -m benchmarks.change --out results        # about 5 minutes on 2 CPUs; writes change.json

The pair is a mosaic of real EuroSAT test tiles (the mini set, cycled to 1,024 cells) and the same mosaic with
every seventh cell replaced by another tile. The app runs in its own process with the bundled model, and the
two requests alternate round by round (/change, then the two /scene calls, then the other way round), so a
change of load on the machine hits both alike; the ratio is the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from PIL import Image

from benchmarks.appserver import running_app
from benchmarks.inference import machine
from benchmarks.results import save
from benchmarks.scene import mosaic, real_tiles
from benchmarks.timing import at_least_one, interleaved, paired_ratio
from eurosat.config import BUNDLED_MODEL

REPO = Path(__file__).resolve().parents[1]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.change", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(REPO / BUNDLED_MODEL), help="checkpoint folder")
    p.add_argument("--side", type=int, default=2048, help="each image's side in pixels")
    p.add_argument("--rounds", type=at_least_one, default=3, help="alternating rounds")
    p.add_argument("--out", default="results", help="folder for change.json")
    return p


def pair(side: int, folder: Path) -> tuple[Path, Path]:
    """The before and after PNGs: real tiles, and the same with every seventh cell replaced."""
    cells = (side // 64) ** 2
    tiles = real_tiles(cells + cells // 7 + 1)
    after = list(tiles[:cells])
    for k, i in enumerate(range(0, cells, 7)):
        after[i] = tiles[cells + k]
    paths = folder / "before.png", folder / "after.png"
    Image.fromarray(mosaic(tiles[:cells], side)).save(paths[0])
    Image.fromarray(mosaic(after, side)).save(paths[1])
    return paths


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    from gradio_client import Client, handle_file

    with tempfile.TemporaryDirectory(prefix="eurosat-change-bench-") as tmp:
        before, after = pair(args.side, Path(tmp))
        with running_app("--model", args.model, log_dir=Path(tmp) / "app", env={"HF_HUB_OFFLINE": "1"}) as app:
            client = Client(app.url, verbose=False, download_files=str(Path(tmp) / "downloads"))

            answers = []

            def change() -> None:
                answers.append(client.predict(handle_file(str(before)), handle_file(str(after)), api_name="/change"))

            def scenes() -> None:
                client.predict(handle_file(str(before)), api_name="/scene")
                client.predict(handle_file(str(after)), api_name="/scene")

            scenes()  # lazy set-up of both paths, untimed
            change()
            times = interleaved({"change": lambda _: change(), "two scenes": lambda _: scenes()}, args.rounds)
            statuses = [line.rsplit(",", 1)[1] for line in Path(answers[-1][6]).read_text().splitlines()[1:]]
    results = {
        "command": "python -m benchmarks.change" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:])),
        "machine": machine(), "model": Path(args.model).name, "side": args.side, "cells": (args.side // 64) ** 2,
        "seconds": {name: [round(t, 2) for t in ts] for name, ts in times.items()},
        "median_s": {name: round(statistics.median(ts), 2) for name, ts in times.items()},
        "change / two scenes": paired_ratio(times, "change", "two scenes"),
        "statuses": {s: statuses.count(s) for s in ("unchanged", "changed", "possible")}}
    out = Path(args.out)
    save(out / "change.json", results)
    return results


if __name__ == "__main__":
    main()
