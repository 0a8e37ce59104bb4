"""Static int8 quantization with ONNX Runtime, calibrated on training tiles: test top-1 and speed against the fp32 graph.

    python -m benchmarks.int8 --dataset ../shared/eurosat-rgb --out results/int8.json

The bar of the issue: int8 would be served only if test top-1 (as served: 8 views when the checkpoint
says so) drops by at most 0.1 point and it is faster here. The fp32 graph is the one the app exports;
the int8 one is ONNX Runtime's `quantize_static` of it (QDQ, per-channel int8 weights, calibrated on
`--calibration` training tiles). Speed: batch 512, both interleaved, the median of per-round ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from benchmarks.inference import machine
from benchmarks.results import save
from benchmarks.timing import at_least_one, interleaved, paired_ratio
from eurosat.config import BUNDLED_MODEL

REPO = Path(__file__).resolve().parents[1]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.int8", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(REPO / BUNDLED_MODEL))
    p.add_argument("--dataset", default=str(REPO.parent / "shared" / "eurosat-rgb"))
    p.add_argument("--calibration", type=int, default=512, help="training tiles the activations are calibrated on")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=at_least_one, default=10)
    p.add_argument("--out", default="results/int8.json")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from eurosat import hub
    from eurosat.data import decode_split, load_splits
    from eurosat.inference import Predictor
    from eurosat.onnxrt import Graph, session

    torch.set_num_threads(args.threads)
    splits = load_splits(args.dataset)
    test, labels = decode_split(splits.test, splits.image_column, splits.label_column)
    train, _ = decode_split(splits.train, splits.image_column, splits.label_column)
    predictor = Predictor(hub.load(args.model), tta=True)
    served_tta = predictor.checkpoint.tta
    picked = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:args.calibration]]

    class Tiles(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(predictor.prepare(picked[i:i + 64]).numpy() for i in range(0, len(picked), 64))

        def get_next(self) -> dict | None:
            batch = next(self.batches, None)
            return None if batch is None else {"input": batch}

    with tempfile.TemporaryDirectory() as tmp:
        predictor.use_onnxruntime(tmp, threads=args.threads)
        fp32: Graph = predictor.engine
        int8_path = Path(tmp) / "int8.onnx"
        quantize_static(str(fp32.path), str(int8_path), Tiles(), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8)
        graphs = {"fp32": fp32, "int8": Graph(session(int8_path, args.threads), fp32.key, int8_path)}
        top1 = {}
        for name, graph in graphs.items():
            predictor.engine = graph
            top1[name] = {tta: float((torch.cat([predictor.probabilities(predictor.prepare(test[i:i + 64]), tta)
                                                  for i in range(0, len(test), 64)]).argmax(1) == labels)
                                     .float().mean()) for tta in (False, True)}
        x = torch.randn(512, 3, *predictor.data_config.input_size)
        for graph in graphs.values():
            graph.run(x, features=False)
        times = interleaved({name: (lambda _, g=graph: g.run(x, features=False)) for name, graph in graphs.items()},
                            args.rounds)
    speedup = paired_ratio(times, "fp32", "int8")
    drop = 100 * (top1["fp32"][served_tta] - top1["int8"][served_tta])
    results = {
        "command": "python -m benchmarks.int8" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:])),
        "machine": machine(), "model": Path(args.model).name, "calibration_tiles": args.calibration,
        "test_tiles": len(test), "served_tta": served_tta,
        "top1": {name: {"one view": v[False], "8 views": v[True]} for name, v in top1.items()},
        "top1_drop_points_as_served": round(drop, 2),
        "views_per_s_batch_512": {name: round(512 / statistics.median(t), 1) for name, t in times.items()},
        "int8_speedup": speedup}
    results["keep_int8"] = drop <= 0.1 and speedup > 1.0
    out = Path(args.out)
    save(out, results)
    return results


if __name__ == "__main__":
    main()
