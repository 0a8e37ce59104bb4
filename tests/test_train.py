"""train.py end to end on the mini data: report files, evaluate agreement, reproducibility, resume, DDP, push."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from benchmarks.appserver import free_port
import train
from conftest import REPO, TINY_RECIPE

REPORT_FILES = ["config.json", "model.safetensors", "metrics.json", "confusion_matrix.png", "errors.png",
                "README.md", "log.jsonl", "train_state.safetensors"]
METRIC_KEYS = ["top1", "macro_f1", "ece", "per_class", "confusion_matrix", "num_images"]


def tiny_args(dataset: str, out: Path, **overrides) -> list[str]:
    recipe = {**TINY_RECIPE, **overrides}
    args = ["--dataset", dataset, "--output-dir", str(out), "--model", recipe["model"],
            "--img-size", str(recipe["img_size"]), "--epochs", str(recipe["epochs"]),
            "--batch-size", str(recipe["batch_size"]), "--lr", str(recipe["lr"]),
            "--weight-decay", str(recipe["weight_decay"]), "--seed", str(recipe["seed"]), "--device", "cpu"]
    return args + ["--no-pretrained", "--no-tta"]


def read_metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def subprocess_env(**extra) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **extra}
    return env


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory, mini_source) -> Path:
    out = tmp_path_factory.mktemp("one-epoch") / "run"
    assert train.main(tiny_args(mini_source, out, epochs=1)) == 0
    return out


def test_one_epoch_run_writes_every_report_file(one_epoch_run):
    for name in REPORT_FILES:
        assert (one_epoch_run / name).is_file(), name
    metrics = read_metrics(one_epoch_run)
    assert metrics["num_images"] == 100
    assert metrics["dataset"].endswith("eurosat-rgb-mini") and metrics["split"] == "test"
    assert metrics["model"] == "test_resnet" and metrics["epochs"] == 1
    assert len(metrics["per_class"]) == 10
    assert [json.loads(line)["epoch"] for line in (one_epoch_run / "log.jsonl").read_text().splitlines()] == [1]
    config = json.loads((one_epoch_run / "config.json").read_text())
    assert config["train_config"]["epochs"] == 1 and config["architecture"] == "test_resnet"
    # Calibrated on validation: the served temperature is the one the report was scored with.
    assert 0.05 < config["temperature"] == metrics["temperature"] < 20
    assert 0 <= metrics["ece"] <= 1 and 0 <= metrics["ece_uncalibrated"] <= 1
    card = (one_epoch_run / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: timm" in card


def test_evaluate_agrees_with_the_training_report(one_epoch_run, mini_source, tmp_path):
    assert train.main(["evaluate", "--model", str(one_epoch_run), "--dataset", mini_source,
                       "--output-dir", str(tmp_path), "--device", "cpu", "--no-tta"]) == 0
    trained, evaluated = read_metrics(one_epoch_run), read_metrics(tmp_path)
    for key in METRIC_KEYS:
        assert evaluated[key] == trained[key], key
    assert (tmp_path / "confusion_matrix.png").is_file() and (tmp_path / "errors.png").is_file()


def test_same_seed_same_metrics_on_cpu(one_epoch_run, mini_source, tmp_path):
    assert train.main(tiny_args(mini_source, tmp_path / "again", epochs=1)) == 0
    first, second = read_metrics(one_epoch_run), read_metrics(tmp_path / "again")
    for key in METRIC_KEYS:
        assert second[key] == first[key], key


def test_an_existing_run_is_not_overwritten_without_resume(one_epoch_run, mini_source, capsys):
    before = (one_epoch_run / "model.safetensors").read_bytes()
    assert train.main(tiny_args(mini_source, one_epoch_run, epochs=1)) == 1
    assert "already holds a run" in capsys.readouterr().err
    assert (one_epoch_run / "model.safetensors").read_bytes() == before


@pytest.fixture(params=["plain", "every lever"])
def recipe(request, trained_run) -> list[str]:
    """Extra flags: none, or the averaged weights, windows then whole tiles, mixup, translation, cutout, a teacher
    and the whitening stem, each of which keeps state or draws random numbers that a resumed run must continue
    exactly."""
    if request.param == "plain":
        return []
    return ["--ema-decay", "0.99", "--train-crop", "48", "--whole-tile-epochs", "2", "--mixup-alpha", "0.2",
            "--translate", "4", "--erase", "8", "--teacher", str(trained_run), "--distill-weight", "0.5",
            "--whiten-stem"]


def test_kill_9_then_resume_finishes_and_matches_an_uninterrupted_run(mini_source, tmp_path, recipe):
    epochs = 6
    killed = tmp_path / "killed"
    command = [sys.executable, str(REPO / "train.py"), *tiny_args(mini_source, killed, epochs=epochs), *recipe]
    proc = subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = killed / "log.jsonl"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()[-500:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = len(log.read_text().splitlines())
    assert 2 <= finished < epochs and not (killed / "metrics.json").exists()

    resumed = subprocess.run([*command, "--resume"], env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"Resuming {killed} after epoch {finished}" in resumed.stderr + resumed.stdout
    if "--teacher" in recipe:  # the teacher's answers are computed again, and the log says so
        assert "Teacher " in resumed.stderr + resumed.stdout
    assert [json.loads(line)["epoch"] for line in log.read_text().splitlines()] == list(range(1, epochs + 1))

    straight = tmp_path / "straight"  # same process setup (thread count) as the killed run: same float sums
    command = [sys.executable, str(REPO / "train.py"), *tiny_args(mini_source, straight, epochs=epochs), *recipe]
    subprocess.run(command, env=subprocess_env(), capture_output=True, timeout=300, check=True)
    for key in METRIC_KEYS:
        assert read_metrics(killed)[key] == read_metrics(straight)[key], key
    # Epoch by epoch, not only at the end: the same losses and the same validation of the served weights.
    epochs_of = {run: [(r["train_loss"], r["val_loss"]) for r in map(json.loads, (run / "log.jsonl").read_text().splitlines())]
                 for run in (killed, straight)}
    assert epochs_of[killed] == epochs_of[straight]


def test_a_run_with_the_whitening_stem_saves_the_fitted_filters(mini_source, tmp_path):
    out = tmp_path / "whiten"
    assert train.main(["fit", *tiny_args(mini_source, out, epochs=1), "--whiten-stem"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["train_config"]["whiten_stem"] is True
    weights = load_file(out / "model.safetensors")
    stem = next(v for k, v in weights.items() if v.ndim == 4 and v.shape[1] == 3)
    half = stem.shape[0] // 2
    assert torch.equal(stem[half:], -stem[:half])  # still the fitted pairs after an epoch of training


def test_torchrun_two_cpu_processes_gloo(mini_source, tmp_path):
    out = tmp_path / "ddp"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(free_port()),
         str(REPO / "train.py"), *tiny_args(mini_source, out, epochs=2, batch_size=16)],
        env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_metrics(out)
    assert metrics["world_size"] == 2 and metrics["num_images"] == 100
    # Both ranks trained, only rank 0 wrote: one log line per epoch, with both shards counted.
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert [r["images"] for r in records] == [192, 192]  # 2 ranks x 6 steps x batch 16
    evaluated = tmp_path / "eval"
    assert train.main(["evaluate", "--model", str(out), "--dataset", mini_source, "--output-dir", str(evaluated),
                       "--device", "cpu", "--no-tta"]) == 0
    assert read_metrics(evaluated)["top1"] == metrics["top1"]


def test_push_to_an_unreachable_hub_fails_cleanly_and_keeps_the_output(one_epoch_run):
    before = {p.name: p.read_bytes() for p in one_epoch_run.iterdir() if p.is_file()}
    token = "hf_SECRETtoken1234567890"
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "push", str(one_epoch_run), "someone/eurosat-test"],
        env=subprocess_env(HF_ENDPOINT=f"http://127.0.0.1:{free_port()}", HF_HUB_OFFLINE="0", HF_TOKEN=token),
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "could not be reached" in result.stderr
    assert f"Retry with: python train.py push {one_epoch_run} someone/eurosat-test" in result.stderr
    assert token not in result.stderr + result.stdout
    assert {p.name: p.read_bytes() for p in one_epoch_run.iterdir() if p.is_file()} == before


def test_push_without_a_token_says_so(one_epoch_run, tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "push", str(one_epoch_run), "someone/eurosat-test"],
        env={k: v for k, v in subprocess_env(HF_ENDPOINT=f"http://127.0.0.1:{free_port()}", HF_HUB_OFFLINE="0",
                                              HF_HOME=str(tmp_path)).items() if k != "HF_TOKEN"},
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "no Hugging Face token (set HF_TOKEN or run `hf auth login`)" in result.stderr
    assert "Retry with:" in result.stderr and "Traceback" not in result.stderr
    assert "could not be reached" not in result.stderr  # refused before any request was made


class ViewAveraged(torch.nn.Module):
    """A model that already averages the 8 views itself: test-time augmentation can add nothing to it."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from eurosat.views import d4_views, merge

        return merge(self.model(d4_views(x)), len(x))


def test_tta_is_served_only_where_it_pays_on_validation(trained_run, mini_tensors):
    from eurosat import hub
    from eurosat.engine import Runtime, predict
    from eurosat.evaluation import TTA_MIN_GAIN, calibrate
    from eurosat.transforms import eval_transform

    checkpoint = hub.load(str(trained_run))
    images, labels = mini_tensors["validation"]
    kwargs = dict(transform=eval_transform(checkpoint.data_config), runtime=Runtime(torch.device("cpu")))
    decided = calibrate(checkpoint.model, images, labels, tta=None, **kwargs)
    single, eight = ((predict(checkpoint.model, images, tta=tta, **kwargs).argmax(1) == labels).double().mean().item()
                     for tta in (False, True))
    assert decided["validation"] == pytest.approx({"top1": single, "top1_tta": eight, "tta_gain": eight - single})
    assert decided["tta"] is (eight - single >= TTA_MIN_GAIN)
    assert calibrate(checkpoint.model, images, labels, tta=True, **kwargs)["tta"] is True  # a flag still wins
    invariant = calibrate(ViewAveraged(checkpoint.model), images, labels, tta=None, **kwargs)
    assert invariant["validation"]["tta_gain"] == pytest.approx(0.0, abs=1e-9) and invariant["tta"] is False
