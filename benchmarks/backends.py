"""PyTorch against ONNX Runtime: the forward pass at batch 1 to 512, and what share of the CPU's fp32 peak each reaches.

    python -m benchmarks.backends --out results/backends                 # the bundled model and ResNet-50 at 224

Both run the same weights on the same inputs with the same thread count: PyTorch in both memory layouts
(the faster is the one compared, as `Predictor.warmup` would keep it), ONNX Runtime on the graph that
`Predictor.use_onnxruntime` exports. The three run interleaved, in rotating order, and each ratio is the
median of per-round ratios: the CPUs are shared, and only side-by-side figures survive that. ResNet-50
has random weights (they do not change speed).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.inference import machine, make_checkpoint
from benchmarks.results import save
from benchmarks.timing import interleaved, paired_ratio
from eurosat.config import BUNDLED_MODEL

REPO = Path(__file__).resolve().parents[1]
LABELS = [f"class{i}" for i in range(10)]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.backends", description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="threads of both libraries")
    p.add_argument("--batches", default="1,8,64,512", help="batch sizes, comma-separated")
    p.add_argument("--seconds", type=float, default=6.0,
                   help="about this long per contender and batch: rounds = seconds / one call (at least 2, at most 30)")
    p.add_argument("--models", default="bundled,resnet50", help="bundled and/or resnet50 (random weights, 224 px)")
    p.add_argument("--out", default="results/backends", help="folder for backends.json and BACKENDS.md")
    return p


def fp32_peak(threads: int) -> dict[str, Any]:
    """The fp32 peak of `threads` cores from the CPU's own report, and what a large matrix product reaches here.

    Peak = cores x FMA units per core x fp32 lanes per vector x 2 FLOP per FMA x clock. The lanes follow
    from the widest vector unit PyTorch found (AVX-512: 16, AVX2: 8); the clock is /proc/cpuinfo's; two FMA
    units per core is what server cores of both vendors have, but a virtual machine cannot show it, so the
    measured matrix product (PyTorch's sgemm, 2048 x 2048) stands beside it as the reachable ceiling.
    """
    capability = torch.backends.cpu.get_cpu_capability()
    lanes = 16 if "512" in capability else 8
    mhz = next(float(line.split(":")[1]) for line in Path("/proc/cpuinfo").read_text().splitlines()
               if line.startswith("cpu MHz"))
    peak = threads * 2 * lanes * 2 * mhz / 1000
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.mm(a, b)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return {"capability": capability, "lanes": lanes, "fma_units_per_core": 2, "ghz": round(mhz / 1000, 3),
            "cores": threads, "peak_gflops": round(peak, 1),
            "sgemm_gflops": round(2 * 2048 ** 3 / min(times) / 1e9, 1),
            "formula": f"{threads} cores x 2 FMA units x {lanes} lanes x 2 FLOP x {mhz / 1000:.2f} GHz"}


def flops_per_view(model: torch.nn.Module, size: tuple[int, int]) -> float:
    """FLOP of one view's forward pass (a multiply-add counts two), as PyTorch's own counter sees it."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(torch.zeros(1, 3, *size))
    return float(counter.get_total_flops())


def sweep(name: str, checkpoint: Path, batches: list[int], seconds: float, threads: int, cache: Path,
          peak: float, log: Any) -> dict[str, Any]:
    """Each batch size: PyTorch in both layouts and ONNX Runtime, interleaved; ms per call, views/s, GFLOP/s."""
    from eurosat import hub
    from eurosat.inference import Predictor

    predictor = Predictor(hub.load(str(checkpoint)))
    note = predictor.use_onnxruntime(cache, threads=threads)
    if predictor.engine is predictor.model:
        raise SystemExit(f"ONNX Runtime is not serving {name}: {note}")
    graph, model = predictor.engine, predictor.model
    other = hub.load(str(checkpoint)).model.eval().to(memory_format=torch.channels_last)
    size = predictor.data_config.input_size
    flops = flops_per_view(model, size)
    rows = []
    for batch in batches:
        x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(batch))
        x_cl = x.contiguous(memory_format=torch.channels_last)
        contenders = {"pytorch_contiguous": lambda: model(x), "pytorch_channels_last": lambda: other(x_cl),
                      "onnxruntime": lambda: graph.run(x, features=False)}
        with torch.inference_mode():
            once = {}
            for key, run in contenders.items():  # once each untimed, then once timed to size the rounds
                run()
                start = time.perf_counter()
                run()
                once[key] = time.perf_counter() - start
            rounds = max(2, min(30, int(seconds / max(once.values()))))
            times = interleaved({key: (lambda _, run=run: run()) for key, run in contenders.items()}, rounds)
        ms = {key: statistics.median(t) * 1000 for key, t in times.items()}
        best = min(("pytorch_contiguous", "pytorch_channels_last"), key=ms.get)
        row = {"batch": batch, "rounds": rounds, "pytorch_best": best.removeprefix("pytorch_"),
               **{f"{key}_ms": round(value, 2) for key, value in ms.items()},
               "pytorch_views_per_s": round(batch / ms[best] * 1000, 1),
               "onnxruntime_views_per_s": round(batch / ms["onnxruntime"] * 1000, 1),
               "speedup": paired_ratio(times, best, "onnxruntime")}
        for key, per_s in (("pytorch", row["pytorch_views_per_s"]), ("onnxruntime", row["onnxruntime_views_per_s"])):
            row[f"{key}_gflops"] = round(per_s * flops / 1e9, 1)
            row[f"{key}_peak_pct"] = round(100 * per_s * flops / 1e9 / peak, 1)
        log(f"  {name} batch {batch}: PyTorch ({row['pytorch_best']}) {ms[best]:.2f} ms, ONNX Runtime "
            f"{ms['onnxruntime']:.2f} ms, x{row['speedup']} ({rounds} rounds)")
        rows.append(row)
    return {"model": name, "input_size": list(size), "gflop_per_view": round(flops / 1e9, 4), "note": note,
            "rows": rows}


def markdown(results: dict[str, Any]) -> str:
    m, peak = results["machine"], results["peak"]
    lines = ["# PyTorch against ONNX Runtime", "", f"Written by `{results['command']}` on {m['date']}.", "",
             f"- Machine: {m['cpu']} ({m['cpu_capability']}), {m['usable_cpus']} usable CPUs, {results['threads']} "
             f"threads for each library; torch {m['versions']['torch']}, onnxruntime {results['onnxruntime']}.",
             f"- fp32 peak: {peak['formula']} = **{peak['peak_gflops']} GFLOP/s**; a 2048x2048 sgemm reached "
             f"{peak['sgemm_gflops']} GFLOP/s here.", "",
             "| model, batch | PyTorch ms (best layout) | ONNX Runtime ms | ratio | PyTorch views/s (GFLOP/s, % peak) "
             "| ONNX Runtime views/s (GFLOP/s, % peak) |", "|---|---|---|---|---|---|"]
    for model in results["models"]:
        for r in model["rows"]:
            lines.append(
                f"| {model['model']}, batch {r['batch']} | {r['pytorch_' + r['pytorch_best'] + '_ms']} "
                f"({r['pytorch_best']}) | {r['onnxruntime_ms']} | x{r['speedup']} | {r['pytorch_views_per_s']:,} "
                f"({r['pytorch_gflops']}, {r['pytorch_peak_pct']}%) | {r['onnxruntime_views_per_s']:,} "
                f"({r['onnxruntime_gflops']}, {r['onnxruntime_peak_pct']}%) |")
    lines += ["", "GFLOP per view: " + ", ".join(f"{m['model']} {m['gflop_per_view']}" for m in results["models"])
              + " (PyTorch's FlopCounterMode; a multiply-add counts two). Ratios are medians of per-round ratios."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.monotonic()

    def log(message: str) -> None:
        print(f"[{time.monotonic() - t0:6.1f} s] {message}", flush=True)

    from eurosat.onnxrt import runtime_version

    batches = [int(b) for b in args.batches.split(",")]
    peak = fp32_peak(args.threads)
    log(f"fp32 peak {peak['peak_gflops']} GFLOP/s ({peak['formula']}); sgemm {peak['sgemm_gflops']} GFLOP/s")
    results: dict[str, Any] = {
        "command": "python -m benchmarks.backends" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:])),
        "machine": machine(), "onnxruntime": runtime_version(), "threads": args.threads, "peak": peak, "models": []}
    with tempfile.TemporaryDirectory(prefix="eurosat-backends-") as tmp:
        for name in args.models.split(","):
            checkpoint = REPO / BUNDLED_MODEL if name == "bundled" else \
                make_checkpoint(Path(tmp) / name, name, 224, LABELS)
            results["models"].append(sweep(name, checkpoint, batches, args.seconds, args.threads, Path(tmp) / "graphs",
                                           peak["peak_gflops"], log))
    out = Path(args.out)
    save(out / "backends.json", results, markdown(results))
    return results


if __name__ == "__main__":
    main()
