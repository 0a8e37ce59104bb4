"""Memory under large photos: the serving process's RSS after many /predict requests of a 36-megapixel JPEG.

    python -m benchmarks.memory --requests 300 --out results     # writes memory.json

The JPEG is a smooth synthetic photo (so that it stays under the 10 MB upload limit) of 7360x4912
pixels; each request uploads it anew, as separate visitors would.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.appserver import peak_rss, running_app
from benchmarks.inference import machine
from benchmarks.results import save
from eurosat.config import BUNDLED_MODEL

REPO = Path(__file__).resolve().parents[1]


def rss(pid: int) -> int:
    """Current resident memory of a process, in bytes."""
    line = next(l for l in Path(f"/proc/{pid}/status").read_text().splitlines() if l.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def photo(path: Path, width: int = 7360, height: int = 4912) -> Path:
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([128 + 100 * np.sin(x / 300), 128 + 100 * np.cos(y / 200), 128 + 60 * np.sin((x + y) / 500)], -1)
    Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(path, quality=85)
    return path


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(REPO / BUNDLED_MODEL))
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--out", default="results")
    args = p.parse_args(argv)
    from gradio_client import Client, handle_file

    with tempfile.TemporaryDirectory(prefix="eurosat-memory-") as tmp:
        big = photo(Path(tmp) / "photo.jpg")
        with running_app("--model", args.model, log_dir=Path(tmp) / "app", env={"HF_HUB_OFFLINE": "1"}) as app:
            client = Client(app.url, verbose=False, download_files=str(Path(tmp) / "downloads"))
            client.predict(handle_file(str(big)), api_name="/predict")
            before = rss(app.process.pid)
            start = time.perf_counter()
            for _ in range(args.requests):
                client.predict(handle_file(str(big)), api_name="/predict")
            results = {"command": "python -m benchmarks.memory" + "".join(f" {a}" for a in (argv or sys.argv[1:])),
                       "machine": machine(), "jpeg_bytes": big.stat().st_size, "pixels": 7360 * 4912,
                       "requests": args.requests, "seconds": round(time.perf_counter() - start, 1),
                       "rss_after_first_bytes": before, "rss_after_all_bytes": rss(app.process.pid),
                       "peak_rss_bytes": peak_rss(app.process.pid)}
    out = Path(args.out)
    save(out / "memory.json", results)
    return results


if __name__ == "__main__":
    main()
