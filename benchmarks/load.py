"""The load benchmark: a visitor's single tile beside others' heavy maps, as a busy public Space would see it.

    python -m benchmarks.load --out results          # about 6 minutes on 2 CPUs; writes load.json

In one run, against `python app.py` with the bundled model: /predict p50 and p95 with the app idle;
the same beside 3 visitors hammering /scene with 2048x2048 scenes; the same beside 1 visitor sending
10 scenes at once. Visitors are told apart by X-Forwarded-For behind one trusted proxy, as on Spaces.
Tiles and scenes are real EuroSAT test tiles (the mini set in tests/data). `--variant` runs the app
with other lane settings (threads, heavy concurrency, heavy batch) to compare them in the same run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.appserver import running_app
from benchmarks.inference import machine
from benchmarks.scene import real_tiles
from eurosat.config import BUNDLED_MODEL

REPO = Path(__file__).resolve().parents[1]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(REPO / BUNDLED_MODEL), help="checkpoint folder")
    p.add_argument("--side", type=int, default=2048, help="the heavy visitors' scene side in pixels")
    p.add_argument("--seconds", type=float, default=40.0, help="how long each phase measures the light visitor")
    p.add_argument("--variant", action="append", default=[], metavar="FLAGS",
                   help="app flags of another configuration to measure as well, e.g. '--threads 2 "
                        "--concurrency-limit 1' (repeatable); the defaults are always measured")
    p.add_argument("--out", default="results", help="folder for load.json")
    return p


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def client(url: str, visitor: str, folder: Path):
    from gradio_client import Client

    return Client(url, verbose=False, download_files=str(folder), headers={"X-Forwarded-For": visitor})


def light_visitor(url: str, tiles: list[str], seconds: float, folder: Path) -> dict[str, Any]:
    """One visitor's /predict calls, one after another, for `seconds`: latencies and errors."""
    from gradio_client import handle_file

    me = client(url, "198.51.100.1", folder)
    latencies, errors = [], []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        start = time.perf_counter()
        try:
            me.predict(handle_file(tiles[len(latencies) % len(tiles)]), 3, api_name="/predict")
            latencies.append(time.perf_counter() - start)
        except Exception as e:  # every failure of the light visitor is a result here
            errors.append(str(e)[:200])
    return {"requests": len(latencies), "errors": errors, "p50_ms": 1000 * percentile(latencies, 0.5),
            "p95_ms": 1000 * percentile(latencies, 0.95), "mean_ms": 1000 * statistics.fmean(latencies)}


def hammer(url: str, visitor: str, scene: str, stop: threading.Event, folder: Path, log: list) -> None:
    """A heavy visitor: /scene after /scene until told to stop."""
    from gradio_client import handle_file

    me = client(url, visitor, folder)
    while not stop.is_set():
        start = time.perf_counter()
        try:
            me.predict(handle_file(scene), api_name="/scene")
            log.append(("done", time.perf_counter() - start))
        except Exception as e:
            log.append(("refused" if "limit per visitor" in str(e) else "error", str(e)[:200]))


def burst(url: str, scene: str, stop: threading.Event, folder: Path, log: list) -> None:
    """A visitor sending 10 scenes at once, again as each round ends."""
    from gradio_client import handle_file

    me = client(url, "203.0.113.99", folder)
    while not stop.is_set():
        jobs = [me.submit(handle_file(scene), api_name="/scene") for _ in range(10)]
        for job in jobs:
            try:
                job.result()
                log.append(("done", None))
            except Exception as e:
                log.append(("refused" if "limit per visitor" in str(e) else "error", str(e)[:200]))


def phase(url: str, tiles: list[str], seconds: float, folder: Path, heavy) -> dict[str, Any]:
    stop, log = threading.Event(), []
    workers = [threading.Thread(target=fn, args=(url, *args, stop, folder, log), daemon=True) for fn, args in heavy]
    for worker in workers:
        worker.start()
    time.sleep(3 if workers else 0)  # let the heavy work start first
    light = light_visitor(url, tiles, seconds, folder)
    stop.set()
    for worker in workers:
        worker.join(timeout=600)
    kinds = [kind for kind, _ in log]
    light["heavy"] = {k: kinds.count(k) for k in ("done", "refused", "error")}
    return light


def measure(flags: list[str], tiles: list[str], scene: str, args: argparse.Namespace, folder: Path) -> dict:
    env = {"EUROSAT_TRUSTED_PROXIES": "1"}
    with running_app("--model", args.model, *flags, log_dir=folder, env=env) as server:
        result = {"flags": flags, "idle": phase(server.url, tiles, args.seconds, folder, [])}
        result["beside 3 visitors mapping"] = phase(
            server.url, tiles, args.seconds, folder, [(hammer, (f"203.0.113.{i}", scene)) for i in range(3)])
        result["beside 1 visitor sending 10 maps"] = phase(server.url, tiles, args.seconds, folder,
                                                           [(burst, (scene,))])
        result["traceback_in_log"] = "Traceback" in server.output()
    idle = result["idle"]["p95_ms"]
    for name in ("beside 3 visitors mapping", "beside 1 visitor sending 10 maps"):
        result[name]["p95_ratio_to_idle"] = result[name]["p95_ms"] / idle
    return result


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="eurosat-load-"))
    tiles = []
    for i, tile in enumerate(real_tiles(20)):
        tiles.append(str(folder / f"tile-{i}.png"))
        Image.fromarray(tile).save(tiles[-1])
    cells = real_tiles((args.side // 64) ** 2)
    rows = [np.concatenate(cells[r * (args.side // 64):(r + 1) * (args.side // 64)], axis=1)
            for r in range(args.side // 64)]
    scene = str(folder / "scene.jpg")
    Image.fromarray(np.concatenate(rows, axis=0)).save(scene, quality=90)
    runs = [measure([], tiles, scene, args, folder)]
    runs += [measure(variant.split(), tiles, scene, args, folder) for variant in args.variant]
    report = {"machine": machine(), "side": args.side, "seconds_per_phase": args.seconds, "runs": runs}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "load.json").write_text(json.dumps(report, indent=2) + "\n")
    for run in runs:
        print(" ".join(run["flags"]) or "defaults")
        for name in ("idle", "beside 3 visitors mapping", "beside 1 visitor sending 10 maps"):
            r = run[name]
            print(f"  {name:34s} p50 {r['p50_ms']:7.0f} ms  p95 {r['p95_ms']:7.0f} ms  "
                  f"x{r.get('p95_ratio_to_idle', 1.0):.2f}  {r['requests']} requests, {len(r['errors'])} errors"
                  + (f"; heavy {r['heavy']}" if name != "idle" else ""))


if __name__ == "__main__":
    main()
