"""ONNX Runtime serving: PyTorch's answers and heatmaps on real tiles, the fallback to PyTorch, and the graph cache."""

import logging
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO
from eurosat import hub, onnxrt
from eurosat.config import BUNDLED_MODEL, AppConfig
from eurosat.inference import Predictor
from eurosat.model import build_model
from eurosat.onnxrt import Graph
from eurosat.transforms import DataConfig

PROBABILITY_ATOL = HEATMAP_ATOL = 1e-4  # the bars of the issue; the two libraries agree to about 1e-6 here


@pytest.fixture(scope="module")
def resnet224(tmp_path_factory, label_names):
    """A random-init ResNet-18 served at 224 px: the input size and depth of the hosted Space's models."""
    torch.manual_seed(0)
    model = build_model("resnet18", len(label_names)).eval()
    folder = tmp_path_factory.mktemp("resnet224")
    return hub.save(model, folder, label_names=label_names, data_config=DataConfig.for_model(model, 224))


def served_pair(folder, cache, tta):
    """The same checkpoint served twice: by PyTorch, and by ONNX Runtime (which must have taken over)."""
    pytorch = Predictor(hub.load(str(folder)), tta=tta)
    runtime = Predictor(hub.load(str(folder)), tta=tta)
    note = runtime.use_onnxruntime(cache, threads=1)
    assert isinstance(runtime.engine, Graph) and note.startswith("ONNX Runtime "), note
    return pytorch, runtime


def pil(tile: torch.Tensor) -> Image.Image:
    return Image.fromarray(tile.permute(1, 2, 0).numpy())


@pytest.mark.parametrize("tta", [True, False], ids=["8 views", "one view"])
def test_the_bundled_model_gives_pytorchs_answers_on_every_mini_test_tile(mini_tensors, tmp_path, tta):
    images, labels = mini_tensors["test"]
    pytorch, runtime = served_pair(REPO / BUNDLED_MODEL, tmp_path, tta)
    expected, got = pytorch.classify(images, batch_size=32), runtime.classify(images, batch_size=32)
    assert got.shape == expected.shape == (len(images), 10)
    assert torch.equal(got.argmax(1), expected.argmax(1))
    assert (got - expected).abs().max() <= PROBABILITY_ATOL
    # Real tiles the model gets wrong are among them, and they get the same wrong answer.
    assert (expected.argmax(1) != labels).any()


def test_a_resnet_at_224_gives_pytorchs_answers_and_heatmaps(resnet224, class_tiles, tmp_path):
    pytorch, runtime = served_pair(resnet224, tmp_path, tta=True)
    tiles = class_tiles[:4]
    expected, got = pytorch.classify(tiles), runtime.classify(tiles)
    assert torch.equal(got.argmax(1), expected.argmax(1)) and (got - expected).abs().max() <= PROBABILITY_ATOL
    for tile in tiles[:2]:
        want, have = pytorch.analyze(pil(tile)), runtime.analyze(pil(tile))
        assert have.heatmap.shape == (224, 224) and list(have.probabilities) == list(want.probabilities)
        assert np.abs(have.heatmap - want.heatmap).max() <= HEATMAP_ATOL


@pytest.mark.parametrize("tta", [True, False], ids=["8 views", "one view"])
def test_single_pass_heatmaps_equal_pytorchs_for_the_top1_and_a_chosen_class(class_tiles, tmp_path, tta):
    pytorch, runtime = served_pair(REPO / BUNDLED_MODEL, tmp_path, tta)
    differ = 0
    for tile in class_tiles[::3]:  # four classes
        image = pil(tile)
        for target in (None, pytorch.label_names[3]):
            want, have = pytorch.analyze(image, target=target), runtime.analyze(image, target=target)
            assert have.target == want.target and list(have.probabilities) == list(want.probabilities)
            assert max(abs(have.probabilities[k] - want.probabilities[k]) for k in want.probabilities) <= 1e-4
            assert np.abs(have.heatmap - want.heatmap).max() <= HEATMAP_ATOL
        differ += np.abs(runtime.analyze(image).heatmap - runtime.analyze(image, target="River").heatmap).max() > 0.1
    assert differ, "the class drawn changes the map, so a map of the wrong class would fail above"


def test_the_gradient_methods_stay_on_pytorch(class_tiles, tmp_path):
    pytorch, runtime = served_pair(REPO / BUNDLED_MODEL, tmp_path, tta=False)
    want = pytorch.analyze(pil(class_tiles[2]), method="GradCAM++")
    have = runtime.analyze(pil(class_tiles[2]), method="GradCAM++")
    np.testing.assert_allclose(have.heatmap, want.heatmap, atol=1e-5)
    assert list(have.probabilities) == list(want.probabilities)


def expect_pytorch(predictor: Predictor, class_tiles, note: str, reason: str) -> None:
    assert note == predictor.backend_note == f"PyTorch (cpu): {reason}"
    assert predictor.engine is predictor.model
    plain = Predictor(hub.load(str(REPO / BUNDLED_MODEL)), tta=False)
    torch.testing.assert_close(predictor.classify(class_tiles), plain.classify(class_tiles), rtol=0, atol=1e-6)


def test_without_onnxruntime_the_app_serves_with_pytorch_and_says_so(monkeypatch, class_tiles, tmp_path, caplog):
    from app import load_predictor
    from eurosat.ui import model_panel

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what an install without it gives: ImportError
    with caplog.at_level(logging.WARNING):
        predictor, error = load_predictor(AppConfig(model=str(REPO / BUNDLED_MODEL), graph_cache=str(tmp_path),
                                                    tta=False, cell_tta=False))
    assert error is None
    reason = "ONNX Runtime is not available (import of onnxruntime halted; None in sys.modules)"
    expect_pytorch(predictor, class_tiles, predictor.backend_note, reason)
    assert f"serving with PyTorch (cpu): {reason}" in caplog.text
    facts = model_panel.facts(predictor.checkpoint, REPO, predictor.views_note, predictor.backend_note)
    assert f"| Forward passes here | PyTorch (cpu): {reason} |" in model_panel.panel_markdown(facts, False)
    assert list(tmp_path.iterdir()) == []  # nothing was exported for a runtime that is absent


def test_a_failed_export_serves_with_pytorch_and_says_why(monkeypatch, class_tiles, tmp_path):
    def refuse(*args, **kwargs):
        raise RuntimeError("Exporting the operator 'aten::magic' to ONNX opset version 17 is not supported")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    predictor = Predictor(hub.load(str(REPO / BUNDLED_MODEL)))
    note = predictor.use_onnxruntime(tmp_path, threads=1)
    expect_pytorch(predictor, class_tiles, note, "the export to ONNX failed (RuntimeError: Exporting the operator "
                                                 "'aten::magic' to ONNX opset version 17 is not supported)")
    assert list(tmp_path.iterdir()) == []


def test_the_app_uses_its_thread_rule_and_its_backend_flag(tmp_path):
    from app import load_predictor, request_threads
    from eurosat.inference import cpu_threads

    given = dict(model=str(REPO / BUNDLED_MODEL), graph_cache=str(tmp_path), tta=False, cell_tta=False)
    for config in (AppConfig(**given, threads=3), AppConfig(**given, concurrency_limit=2)):
        predictor, _ = load_predictor(config)
        assert predictor.engine.threads == request_threads(config) == (config.threads or cpu_threads(2))
        assert predictor.engine.path.parent == tmp_path
    predictor, _ = load_predictor(AppConfig(**given, backend="pytorch"))
    assert predictor.engine is predictor.model and predictor.backend_note == "PyTorch (cpu)"


@pytest.fixture
def exports(monkeypatch) -> list[str]:
    """The keys of every export made during the test."""
    made = []
    real = onnxrt.export

    def counting(model, input_size, key):
        made.append(key)
        return real(model, input_size, key)

    monkeypatch.setattr(onnxrt, "export", counting)
    return made


def test_the_cache_is_keyed_by_the_weights(untrained_checkpoint, class_tiles, tmp_path, exports):
    first, second = (Predictor(hub.load(str(untrained_checkpoint))) for _ in range(2))
    first.use_onnxruntime(tmp_path, threads=1)
    second.use_onnxruntime(tmp_path, threads=1)
    assert len(exports) == 1 and [p.name for p in tmp_path.iterdir()] == [f"{exports[0]}.onnx"]
    assert second.engine.path == first.engine.path  # the same weights: the cached graph, no second export
    changed = Predictor(hub.load(str(untrained_checkpoint)))
    with torch.no_grad():
        changed.model.get_classifier().weight[0, 0] += 1.0  # one weight
    changed.use_onnxruntime(tmp_path, threads=1)
    assert len(exports) == 2 and exports[1] != exports[0] and len(list(tmp_path.iterdir())) == 2
    plain = Predictor(hub.load(str(untrained_checkpoint)))
    plain.model.get_classifier().weight.data[0, 0] += 1.0
    torch.testing.assert_close(changed.classify(class_tiles), plain.classify(class_tiles), rtol=0, atol=1e-5)
    assert not torch.allclose(changed.classify(class_tiles), first.classify(class_tiles), atol=1e-5)


def other_graph(label_names, key: str) -> bytes:
    """A graph of other weights (another random init), carrying `key` in its metadata."""
    torch.manual_seed(1)
    return onnxrt.export(build_model("test_resnet", len(label_names)).eval(), (64, 64), key)


@pytest.mark.parametrize("planted", ["other weights, their own key", "other weights, this key forged",
                                     "not a graph"])
def test_a_planted_graph_is_never_used(untrained_checkpoint, class_tiles, label_names, tmp_path, planted, exports):
    predictor = Predictor(hub.load(str(untrained_checkpoint)))
    key = onnxrt.graph_key(predictor.model, predictor.data_config, predictor.checkpoint.config)
    stray = tmp_path / f"{'0' * 64}.onnx"  # a file under another key is never even opened
    stray.write_bytes(other_graph(label_names, "0" * 64))
    content = {"other weights, their own key": lambda: other_graph(label_names, "1" * 64),
               "other weights, this key forged": lambda: other_graph(label_names, key),
               "not a graph": lambda: b"\x08\x07 planted"}[planted]()
    (tmp_path / f"{key}.onnx").write_bytes(content)
    exports.clear()
    note = predictor.use_onnxruntime(tmp_path, threads=1)
    assert note.startswith("ONNX Runtime ") and exports == [key]  # refused, and exported again from the weights
    assert (tmp_path / f"{key}.onnx").read_bytes() != content
    plain = Predictor(hub.load(str(untrained_checkpoint)))
    torch.testing.assert_close(predictor.classify(class_tiles), plain.classify(class_tiles), rtol=0, atol=1e-5)
