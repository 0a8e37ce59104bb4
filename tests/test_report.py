"""The evaluation report: hand-checked metrics, images with the right content, a model card the Hub parses."""

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from eurosat import card as cards, fileio, metrics as scoring, plots, report

NAMES3 = ["a", "b", "c"]

# Six images, three classes; class "c" is never predicted. Worked out by hand:
#   predictions   0    0    1    0    0→1  1        labels 0 1 1 2 0 1, predictions 0 0 1 0 1 1
#   confidence   .9   .7   .7   .5   .5   .9       correct: yes no yes no no yes
HAND_PROBS = np.array([
    [0.9, 0.05, 0.05],
    [0.7, 0.2, 0.1],
    [0.1, 0.7, 0.2],
    [0.5, 0.3, 0.2],
    [0.3, 0.5, 0.2],
    [0.1, 0.9, 0.0],
])
HAND_LABELS = np.array([0, 1, 1, 2, 0, 1])


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_hand_computed_three_class_example():
    m = scoring.classification_metrics(HAND_PROBS, HAND_LABELS, NAMES3, n_bins=5)
    assert m["confusion_matrix"] == [[1, 1, 0], [1, 2, 0], [1, 0, 0]]
    assert m["top1"] == pytest.approx(0.5)
    a, b, c = (m["per_class"][n] for n in NAMES3)
    assert (a["precision"], a["recall"], a["f1"], a["support"]) == pytest.approx((1 / 3, 1 / 2, 2 / 5, 2))
    assert (b["precision"], b["recall"], b["f1"], b["support"]) == pytest.approx((2 / 3, 2 / 3, 2 / 3, 3))
    assert c == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}  # never predicted: 0, not NaN
    assert m["macro_f1"] == pytest.approx((2 / 5 + 2 / 3 + 0) / 3)
    # Bins of width 0.2: (0.8, 1] holds two correct at 0.9, (0.6, 0.8] one of two at 0.7, (0.4, 0.6] none of two at 0.5.
    assert m["ece"] == pytest.approx((2 * 0.1 + 2 * 0.2 + 2 * 0.5) / 6)
    assert m["nll"] == pytest.approx(-(2 * math.log(0.9) + 2 * math.log(0.2) + math.log(0.7) + math.log(0.3)) / 6)
    assert m["num_images"] == 6 and m["ece_bins"] == 5
    assert "top5" not in m  # meaningless with three classes


def test_metrics_are_plain_json_types():
    m = scoring.classification_metrics(HAND_PROBS.astype(np.float32), HAND_LABELS.astype(np.int32), NAMES3)
    assert json.loads(json.dumps(m, allow_nan=False)) == m
    assert type(m["top1"]) is float and type(m["num_images"]) is int
    assert all(type(v) is int for row in m["confusion_matrix"] for v in row)


def test_all_correct_ece_is_one_minus_mean_confidence():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, 300)
    logits = rng.normal(size=(300, 10))
    logits[np.arange(300), labels] += 4 + 3 * rng.random(300)  # the true class always wins, by varying margins
    probs = softmax(logits)
    m = scoring.classification_metrics(probs, labels, [str(i) for i in range(10)])
    assert m["top1"] == 1.0 and m["top5"] == 1.0 and m["macro_f1"] == 1.0
    assert m["ece"] == pytest.approx(1 - probs.max(axis=1).mean(), abs=1e-12)
    assert 0.01 < m["ece"] < 0.3


def test_class_without_images_and_class_never_predicted():
    probs = np.array([[0.8, 0.1, 0.1], [0.3, 0.1, 0.6]])
    m = scoring.classification_metrics(probs, np.array([0, 0]), NAMES3)
    assert m["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert m["per_class"]["a"]["f1"] == pytest.approx(2 / 3)
    # "b" is neither in the labels nor predicted, so it is left out of the macro average; "c" was predicted.
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0) / 2)


def test_agrees_with_scikit_learn_on_random_predictions():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(2)
    labels = rng.choice(10, size=400, p=np.linspace(1, 3, 10) / np.linspace(1, 3, 10).sum())
    logits = rng.normal(size=(400, 10)) * 2
    logits[np.arange(400), labels] += rng.normal(1.5, 1.5, 400)
    probs = softmax(logits)
    m = scoring.classification_metrics(probs, labels, [str(i) for i in range(10)])
    preds = probs.argmax(1)
    p, r, f, s = sk.precision_recall_fscore_support(labels, preds, labels=range(10), zero_division=0)
    assert [m["per_class"][str(i)]["precision"] for i in range(10)] == pytest.approx(p)
    assert [m["per_class"][str(i)]["recall"] for i in range(10)] == pytest.approx(r)
    assert [m["per_class"][str(i)]["f1"] for i in range(10)] == pytest.approx(f)
    assert [m["per_class"][str(i)]["support"] for i in range(10)] == s.tolist()
    assert m["macro_f1"] == pytest.approx(sk.f1_score(labels, preds, average="macro"))
    assert m["top1"] == pytest.approx(sk.accuracy_score(labels, preds))
    assert m["top5"] == pytest.approx(sk.top_k_accuracy_score(labels, probs, k=5, labels=range(10)))
    assert m["nll"] == pytest.approx(sk.log_loss(labels, probs, labels=range(10)))
    assert m["confusion_matrix"] == sk.confusion_matrix(labels, preds, labels=range(10)).tolist()


def test_torch_tensors_give_the_same_metrics():
    expected = scoring.classification_metrics(HAND_PROBS, HAND_LABELS, NAMES3)
    assert scoring.classification_metrics(torch.tensor(HAND_PROBS), torch.tensor(HAND_LABELS), NAMES3) == expected


@pytest.mark.parametrize("probs, labels, message", [
    (np.log(HAND_PROBS + 0.01), HAND_LABELS, "apply softmax"),
    (HAND_PROBS, HAND_LABELS[:4], "one entry per row"),
    (HAND_PROBS, np.array([0, 1, 1, 3, 0, 1]), "0..2"),
    (HAND_PROBS[:, :2] / HAND_PROBS[:, :2].sum(1, keepdims=True), HAND_LABELS, "2 columns but there are 3"),
    (np.zeros((0, 3)), np.zeros(0, dtype=int), "no images"),
    (HAND_PROBS, HAND_LABELS.astype(float), "integer class indices"),
])
def test_bad_inputs_get_specific_messages(probs, labels, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        scoring.classification_metrics(probs, labels, NAMES3)


def test_row_normalise_gives_fractions_and_zero_rows_for_empty_classes():
    out = scoring.row_normalise([[3, 1], [0, 0]])
    assert out.tolist() == [[0.75, 0.25], [0.0, 0.0]]


def _dark_blue_pixels(path) -> int:
    """Pixels near the top of matplotlib's "Blues" map (8, 48, 107): the cells of a 100% entry."""
    a = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int(((a[..., 0] < 40) & (a[..., 1] < 80) & (a[..., 2] > 90)).sum())


def test_confusion_matrix_image_shows_the_matrix(tmp_path, label_names):
    perfect = plots.save_confusion_matrix(np.eye(10, dtype=int) * 10, label_names, tmp_path / "perfect.png")
    uniform = plots.save_confusion_matrix(np.ones((10, 10), dtype=int), label_names, tmp_path / "uniform.png")
    image = Image.open(perfect)
    assert image.format == "PNG" and image.width >= 800 and image.height >= 700
    assert np.asarray(image.convert("L")).std() > 20
    # Ten solid 100% cells of about 85x85 pixels on the diagonal; a 10%-everywhere matrix has none, and
    # only the top of its colour bar is that dark.
    assert _dark_blue_pixels(perfect) > 10 * 60 * 60
    assert _dark_blue_pixels(uniform) < 8000


def test_confusion_matrix_refuses_a_matrix_that_does_not_match_the_names(tmp_path):
    with pytest.raises(ValueError, match=r"\(2, 2\), but there are 3 label names"):
        plots.save_confusion_matrix([[1, 0], [0, 1]], NAMES3, tmp_path / "cm.png")
    assert not (tmp_path / "cm.png").exists()


def test_pick_errors_most_confident_first_ties_in_index_order():
    labels = np.array([0, 1, 2, 0, 1, 2])
    preds = np.array([1, 1, 0, 2, 0, 2])
    conf = np.array([0.6, 0.99, 0.9, 0.6, 0.95, 0.5])
    assert plots.pick_errors(labels, preds, conf, 10).tolist() == [4, 2, 0, 3]
    assert plots.pick_errors(labels, preds, conf, 2).tolist() == [4, 2]


def _mistakes(labels: torch.Tensor, wrong: list[int], confidences: list[float]):
    """Predictions equal to the labels except at `wrong`, where they are the next class, at `confidences`."""
    preds = labels.clone()
    conf = torch.full((len(labels),), 0.9)
    for i, p in zip(wrong, confidences):
        preds[i] = (labels[i] + 1) % 10
        conf[i] = p
    return preds, conf


def test_error_grid_holds_the_real_tiles_most_confident_first(tmp_path, mini_tensors, label_names):
    images, labels = mini_tensors["test"]
    wrong, confidences = [3, 17, 40, 41, 58, 77, 99], [0.55, 0.97, 0.61, 0.88, 0.42, 0.99, 0.70]
    preds, conf = _mistakes(labels, wrong, confidences)
    path = plots.save_error_grid(images, labels, preds, conf, label_names, tmp_path / "errors.png", max_tiles=5)

    grid = Image.open(path)
    assert grid.info["Description"].startswith("7 of 100 images misclassified (the 5 most confident shown)")
    # Five tiles: one row of five cells.
    assert grid.size == (5 * plots.CELL_W, plots.HEADER_PX + plots.CELL_H)
    pixels = np.asarray(grid.convert("RGB"))
    scale = plots.TILE_PX // 64
    for k, i in enumerate([77, 17, 41, 99, 40]):
        x, y = plots.tile_origin(k)
        tile = images[i].permute(1, 2, 0).numpy().repeat(scale, 0).repeat(scale, 1)
        assert np.array_equal(pixels[y:y + plots.TILE_PX, x:x + plots.TILE_PX], tile), f"tile {k} is not image {i}"
    # Below each tile, the caption is drawn (dark pixels), and it is not drawn over the tile.
    x, y = plots.tile_origin(0)
    caption = pixels[y + plots.TILE_PX + 4:y + plots.TILE_PX + 4 + 2 * plots.CAPTION_LINE_PX, x:x + plots.TILE_PX]
    assert (caption.min(axis=2) < 100).sum() > 100


def test_error_grid_wraps_rows_and_accepts_channels_last(tmp_path, mini_tensors, label_names):
    images, labels = mini_tensors["test"]
    preds, conf = _mistakes(labels, list(range(8)), [0.9 - 0.01 * k for k in range(8)])
    chw = plots.save_error_grid(images, labels, preds, conf, label_names, tmp_path / "chw.png")
    hwc = plots.save_error_grid(images.permute(0, 2, 3, 1).numpy(), labels.numpy(), preds.numpy(), conf.numpy(),
                                 label_names, tmp_path / "hwc.png")
    assert Image.open(chw).size == (6 * plots.CELL_W, plots.HEADER_PX + 2 * plots.CELL_H)
    assert np.array_equal(np.asarray(Image.open(chw)), np.asarray(Image.open(hwc)))


def test_error_grid_without_mistakes_still_writes_a_file_that_says_so(tmp_path, mini_tensors, label_names):
    images, labels = mini_tensors["test"]
    path = plots.save_error_grid(images, labels, labels, torch.full((100,), 0.9), label_names, tmp_path / "e.png")
    image = Image.open(path)
    assert image.info["Description"] == "No misclassified images: all 100 predictions are correct."
    assert image.size == (plots.GRID_MIN_COLUMNS * plots.CELL_W, plots.HEADER_PX)
    assert np.asarray(image.convert("L")).min() < 100  # the sentence is drawn, not just a white strip


def test_error_grid_rejects_float_images(tmp_path, mini_tensors, label_names):
    images, labels = mini_tensors["test"]
    with pytest.raises(ValueError, match="uint8 batch"):
        plots.save_error_grid(images.float(), labels, labels, torch.ones(100), label_names, tmp_path / "e.png")


RUN_INFO = {
    "dataset": "timm/eurosat-rgb", "split": "test", "model": "resnet50", "pretrained": True, "preset": "gpu",
    "epochs": 12, "best_epoch": 11, "best_val_accuracy": 0.991, "img_size": 224, "batch_size": 128,
    "optimizer": "adamw", "lr": 1e-3, "seed": 0, "device": "cuda:0", "world_size": 1, "wall_time_s": 812.4,
    "images_per_s": 2450.0,
}


def _metrics(label_names, seed=3):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(label_names), 100)
    logits = rng.normal(size=(100, len(label_names)))
    logits[np.arange(100), labels] += 2.5
    return scoring.classification_metrics(softmax(logits), labels, label_names)


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_model_card_metadata_parses_and_holds_the_results(label_names):
    metrics = {**_metrics(label_names), "top1_tta": 0.905}
    card = cards.model_card(repo_id="someone/eurosat-resnet50", metrics=metrics, run_info=RUN_INFO,
                             label_names=label_names)
    meta = _front_matter(card)
    assert meta["library_name"] == "timm" and meta["license"] == "mit"
    assert meta["pipeline_tag"] == "image-classification" and meta["datasets"] == ["timm/eurosat-rgb"]
    assert {"image-classification", "timm", "eurosat", "remote-sensing", "sentinel-2"} <= set(meta["tags"])
    index = meta["model-index"][0]
    assert index["name"] == "eurosat-resnet50"
    result = index["results"][0]
    assert result["task"]["type"] == "image-classification"
    assert result["dataset"]["type"] == "timm/eurosat-rgb" and result["dataset"]["split"] == "test"
    values = {m["name"]: (m["type"], m["value"]) for m in result["metrics"]}
    assert values["Top-1 accuracy"] == ("accuracy", metrics["top1"])
    assert values["Macro F1"] == ("f1", metrics["macro_f1"])
    assert values["Top-1 accuracy (8-view flip/rotation TTA)"] == ("accuracy", 0.905)

    from huggingface_hub import ModelCard

    data = ModelCard(card).data  # the Hub's own parser: raises on a model-index it cannot read
    assert data.model_name == "eurosat-resnet50"
    assert data.eval_results[0].metric_value == metrics["top1"]


def test_model_card_body_reports_training_and_per_class_results(label_names):
    metrics = _metrics(label_names)
    card = cards.model_card(repo_id="someone/eurosat-resnet50", metrics=metrics, run_info=RUN_INFO,
                             label_names=label_names)
    assert f"| Top-1 accuracy | {100 * metrics['top1']:.2f}% |" in card
    assert f"| Expected calibration error (15 bins) | {metrics['ece']:.4f} |" in card
    pasture = metrics["per_class"]["Pasture"]
    assert f"| Pasture | {pasture['precision']:.3f} | {pasture['recall']:.3f} | {pasture['f1']:.3f} |" in card
    for row in ("| Training time | 13 min 32 s |", "| Training throughput | 2450 images/s |", "| Device | `cuda:0` |",
                "| Epochs | 12 (best on validation: epoch 11) |", "| Seed | 0 |", "| Preset | `gpu` |"):
        assert row in card, row
    assert "Helber" in card and "10.1109/JSTARS.2019.2918242" in card
    assert "out of\n  distribution" in card and "64x64" in card


def test_model_card_snippets_name_the_repo_or_a_placeholder(label_names):
    metrics = _metrics(label_names)
    named = cards.model_card(repo_id="someone/eurosat-r50", metrics=metrics, run_info=RUN_INFO,
                              label_names=label_names)
    assert 'timm.create_model("hf-hub:someone/eurosat-r50", pretrained=True)' in named
    assert "python app.py --model someone/eurosat-r50" in named
    assert "EUROSAT_MODEL=someone/eurosat-r50 python app.py" in named
    unnamed = cards.model_card(repo_id=None, metrics=metrics, run_info=RUN_INFO, label_names=label_names)
    assert '"hf-hub:<owner>/<name>"' in unnamed and "--model <owner>/<name>" in unnamed
    assert _front_matter(unnamed)["model-index"][0]["name"] == "resnet50-eurosat-rgb"


def test_model_card_for_a_local_dataset_links_the_hub_dataset_and_hides_the_path(label_names, mini_source):
    info = {**RUN_INFO, "dataset": mini_source, "checkpoint": "/home/someone/runs/quick"}
    card = cards.model_card(repo_id=None, metrics=_metrics(label_names), run_info=info, label_names=label_names)
    meta = _front_matter(card)
    assert meta["datasets"] == ["timm/eurosat-rgb"]
    assert meta["model-index"][0]["results"][0]["dataset"]["name"] == "EuroSAT RGB (local copy: eurosat-rgb-mini)"
    assert mini_source not in card and "/home/someone" not in card
    assert "checkpoint `quick`" in card


def _hub_cache_copy(checkpoint_dir, repo_id: str) -> None:
    """Lay a checkpoint out in the offline Hugging Face cache, as a download would have."""
    from huggingface_hub import constants

    owner, name = repo_id.split("/")
    root = Path(constants.HF_HUB_CACHE) / f"models--{owner}--{name}"
    revision = "0123456789abcdef0123456789abcdef01234567"
    snapshot = root / "snapshots" / revision
    snapshot.mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(revision)
    for filename in ("config.json", "model.safetensors"):
        shutil.copy(checkpoint_dir / filename, snapshot / filename)


def test_model_card_timm_snippet_runs_and_preprocesses_like_the_project(
        untrained_checkpoint, mini_tensors, label_names, tmp_path, monkeypatch, capsys):
    from eurosat import hub
    from eurosat.transforms import eval_transform

    repo_id = "eurosat-tests/report-card-snippet"
    _hub_cache_copy(untrained_checkpoint, repo_id)
    card = cards.model_card(repo_id=repo_id, metrics={**_metrics(label_names), "temperature": 1.5},
                             run_info=RUN_INFO, label_names=label_names)
    snippet = re.search(r"```python\n(.*?)```", card, re.S).group(1)
    images, _ = mini_tensors["test"]
    tile = images[5]
    Image.fromarray(tile.permute(1, 2, 0).numpy()).save(tmp_path / "tile.png")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(snippet, "model card snippet", "exec"), scope)

    checkpoint = hub.load(str(untrained_checkpoint))
    to_input = eval_transform(checkpoint.data_config)
    with torch.inference_mode():
        expected = (checkpoint.model(to_input(tile[None])) / 1.5).softmax(-1)[0]
    assert scope["labels"] == label_names
    assert torch.allclose(scope["probs"], expected, atol=1e-5)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"{label_names[int(expected.argmax())]}: {float(expected.max()):.1%}"

    # A tile that is not square is resized whole, as the project does: the crop mode stored in config.json
    # makes timm do that. The control shows the comparison would catch a centre crop.
    import timm

    wide = tile[:, :40, :]
    ours = to_input(wide[None])[0]
    theirs = scope["transform"](Image.fromarray(wide.permute(1, 2, 0).numpy()))
    assert theirs.shape == ours.shape
    assert (theirs - ours).abs().max() < 0.02
    cropping = timm.data.create_transform(
        **timm.data.resolve_model_data_config(scope["model"], args={"crop_mode": "center"}))
    assert (cropping(Image.fromarray(wide.permute(1, 2, 0).numpy())) - ours).abs().max() > 0.1


def test_write_report_writes_every_file_and_metrics_round_trip(tmp_path, mini_tensors, label_names):
    images, labels = mini_tensors["test"]
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(100, 10))
    logits[np.arange(100), labels.numpy()] += 2.0
    probs = torch.tensor(softmax(logits), dtype=torch.float32)
    metrics = scoring.classification_metrics(probs.numpy(), labels.numpy(), label_names)
    metrics["top1_tta"] = 0.93
    info = {k: v for k, v in RUN_INFO.items() if k not in ("preset", "wall_time_s", "images_per_s")}
    out = tmp_path / "run"
    paths = report.write_report(out, metrics=metrics, run_info=info, label_names=label_names,
                                images=images, labels=labels, probs=probs, repo_id="someone/eurosat-r50")

    assert paths == {"metrics": out / "metrics.json", "confusion_matrix": out / "confusion_matrix.png",
                     "errors": out / "errors.png", "risk_coverage": out / "risk_coverage.png",
                     "model_card": out / "README.md"}
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "confusion_matrix.png", "errors.png", "metrics.json",
                                                     "risk_coverage.png"]
    saved = json.loads(paths["metrics"].read_text())
    for key, value in metrics.items():
        assert saved[key] == value, key
    for key, value in info.items():
        assert saved[key] == value, key
    assert saved["preset"] is None and saved["wall_time_s"] is None and saved["images_per_s"] is None
    assert saved["label_names"] == label_names and saved["num_images"] == 100
    assert list(saved)[:3] == ["top1", "top5", "macro_f1"]

    wrong = int((probs.argmax(1) != labels).sum())
    assert Image.open(paths["errors"]).info["Description"].startswith(f"{wrong} of 100 images misclassified")
    meta = _front_matter(paths["model_card"].read_text())
    assert meta["model-index"][0]["results"][0]["metrics"][0]["value"] == saved["top1"]
    assert Image.open(paths["confusion_matrix"]).format == "PNG"


def test_write_report_refuses_values_json_cannot_hold(tmp_path, label_names):
    metrics = _metrics(label_names)
    with pytest.raises(ValueError):
        report.write_report(tmp_path, metrics={**metrics, "ece": float("nan")}, run_info=RUN_INFO,
                            label_names=label_names, images=np.zeros((1, 3, 8, 8), np.uint8),
                            labels=np.zeros(1, int), probs=np.full((1, 10), 0.1))
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("previous")

    def half_write(f):
        f.write("{\"top1\": 0.")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        fileio.atomic_write(target, half_write, mode="w")
    assert target.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    fileio.atomic_write(target, lambda f: f.write("new"), mode="w")
    assert target.read_text() == "new"
    reference = tmp_path / "reference"
    reference.write_text("written the ordinary way")
    assert target.stat().st_mode == reference.stat().st_mode  # the umask's permissions, not mkstemp's 0600
