"""The benchmark commands: their statistics, their verdicts, and short runs that write real results."""

import json

import pytest

from benchmarks import inference as bench, pipeline as pipebench, timing


def test_summary_uses_nearest_rank_percentiles():
    seconds = [i / 1000 for i in range(1, 21)]  # 1 .. 20 ms
    assert bench.summary(seconds) == {"n": 20, "median_ms": 10.5, "p10_ms": 2.0, "p90_ms": 18.0, "p95_ms": 19.0}


def test_paired_ratio_compares_calls_of_the_same_round():
    # The load doubles half way; per-round ratios stay at 2 where a ratio of medians would not.
    times = {"slow": [0.2, 0.2, 0.4, 0.4, 0.4], "fast": [0.1, 0.1, 0.2, 0.2, 0.2]}
    assert timing.paired_ratio(times, "slow", "fast") == 2.0


def test_interleaved_rotates_the_order_and_times_each_call():
    calls = []
    contenders = {name: (lambda r, name=name: calls.append((r, name))) for name in "abc"}
    times = timing.interleaved(contenders, 4)
    assert calls == [(0, "a"), (0, "b"), (0, "c"), (1, "b"), (1, "c"), (1, "a"),
                     (2, "c"), (2, "a"), (2, "b"), (3, "a"), (3, "b"), (3, "c")]
    assert {name: len(t) for name, t in times.items()} == {"a": 4, "b": 4, "c": 4}
    assert all(t >= 0 for ts in times.values() for t in ts)


@pytest.mark.parametrize("module", ["cam_isolation", "change", "inference", "int8", "scene", "served"])
@pytest.mark.parametrize("given", ["0", "-3", "two"])
def test_timed_rounds_refuse_a_count_under_one_before_any_work(module, given, capsys):
    import importlib

    parser = importlib.import_module(f"benchmarks.{module}").parser()
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["--rounds", given])
    assert exited.value.code == 2
    assert f"argument --rounds: expected a whole number of at least 1, got '{given}'" in capsys.readouterr().err
    assert parser.parse_args(["--rounds", "1"]).rounds == 1


def quick_results(ours: float, baseline: float) -> dict:
    return {"in_process": {"ratios": {"ours / forward": ours, "ours_with_overlay / forward": ours,
                                      "baseline / ours": baseline, "baseline / ours_with_overlay": baseline}}}


def test_verdicts_flag_each_missed_target():
    held = bench.verdicts(quick_results(1.1, 4.0))
    assert [v["holds"] for v in held] == [True] * 4
    missed = bench.verdicts(quick_results(1.4, 2.5))
    assert [v["holds"] for v in missed] == [False] * 4
    assert missed[0]["measured"] == 1.4 and missed[0]["bar"] == "<= 1.3"


def test_the_seed_app_comparison_has_its_own_verdict():
    def seed_row(ratio: float) -> dict:
        results = {**quick_results(1.1, 4.0), "seed_app": {"seed-style / ours (median of paired requests)": ratio}}
        return bench.verdicts(results)[-1]

    assert seed_row(1.9)["holds"] and seed_row(1.9)["bar"] == ">= 1.8"
    assert not seed_row(1.7)["holds"] and "seed-style" in seed_row(1.7)["target"]


def test_quick_in_process_run_writes_json_and_markdown(tmp_path):
    """A tiny served model at 32 px against the torchvision baseline: files, spans and ratios agree."""
    results = bench.main(["--quick", "--no-app", "--arch", "test_resnet", "--size", "32", "--rounds", "3",
                          "--threads", "1", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "benchmark.json").read_text())
    assert saved["verdicts"] == results["verdicts"]
    spans = saved["in_process"]["spans"]
    assert {"forward", "ours", "ours_with_overlay", "baseline", "forward_torchvision"} <= spans.keys()
    assert all(s["n"] == 3 for s in spans.values())
    assert saved["in_process"]["ratios"]["baseline / ours"] > 0
    assert saved["end_to_end_skipped"] == "--no-app"
    markdown = (tmp_path / "BENCHMARK.md").read_text()
    assert "A --quick run" in markdown and "The end-to-end part was skipped (--no-app)" in markdown
    assert markdown.count("| yes |") + markdown.count("| **no** |") == len(saved["verdicts"])


def test_pipeline_benchmark_feeds_both_pipelines_the_same_images(tmp_path, mini_source):
    out = tmp_path / "pipeline.json"
    results = pipebench.main(["--dataset", mini_source, "--limit", "64", "--model", "test_resnet", "--size", "32",
                              "--batch-size", "8", "--workers", "0", "--pipeline-batches", "2",
                              "--train-steps", "1", "--out", str(out)])
    assert json.loads(out.read_text()) == results
    assert results["images"] == 64
    assert results["settings"]["size"] == 32
    assert set(results["pipeline_images_per_s"]) == {"ours", "baseline"}
    assert results["pipeline_speedup"] == pytest.approx(
        results["pipeline_images_per_s"]["ours"] / results["pipeline_images_per_s"]["baseline"], rel=0.02)


def test_cam_isolation_compares_one_copy_with_one_per_slot(tmp_path):
    from benchmarks import cam_isolation

    results = cam_isolation.main(["--arch", "test_resnet", "--size", "32", "--requests", "2", "--rounds", "2",
                                  "--out", str(tmp_path)])
    assert set(results["requests_per_s"]) == {"1 hooked copy", "2 hooked copies"}
    assert all(len(s) == 2 for s in results["seconds"].values()) and results["speedup_of_copies"] > 0
    saved = json.loads((tmp_path / "cam_isolation-test_resnet.json").read_text())
    assert saved["method"] == "GradCAM++" and saved["requests_per_round"] == 4


def test_the_library_imports_nothing_from_the_benchmarks():
    import ast

    from conftest import REPO

    imported = set()
    for path in (REPO / "eurosat").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {(path.name, alias.name) for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add((path.name, node.module))
    assert len(imported) > 20  # the walk sees the library's real imports
    assert [pair for pair in imported if pair[1].split(".")[0] == "benchmarks"] == []


def test_backends_benchmark_times_both_libraries_on_the_same_inputs(tmp_path):
    from benchmarks import backends

    results = backends.main(["--models", "test_resnet", "--batches", "1,3", "--seconds", "0.01", "--threads", "1",
                             "--out", str(tmp_path)])
    assert json.loads((tmp_path / "backends.json").read_text()) == results
    (model,) = results["models"]
    assert [r["batch"] for r in model["rows"]] == [1, 3] and model["note"].startswith("ONNX Runtime ")
    for row in model["rows"]:
        assert row["rounds"] == 2 and row["speedup"] > 0 and row["pytorch_best"] in ("contiguous", "channels_last")
        assert row["onnxruntime_gflops"] == pytest.approx(
            row["onnxruntime_views_per_s"] * model["gflop_per_view"], rel=0.01)
    peak = results["peak"]
    assert peak["peak_gflops"] == pytest.approx(1 * 2 * peak["lanes"] * 2 * peak["ghz"], rel=1e-3)
    assert "| test_resnet, batch 3 |" in (tmp_path / "BACKENDS.md").read_text()
