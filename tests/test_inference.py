"""The Predictor: every PIL mode and size, top-k, batches, analyze's target, and preprocessing from config.json."""

import json
import os
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from eurosat import hub
from eurosat.cam import single_pass_cam
from eurosat.config import AppConfig
from eurosat.inference import Predictor, cpu_threads
from eurosat.model import build_model
from eurosat.transforms import DataConfig
from eurosat.views import in_layout


@pytest.fixture(scope="module")
def predictor(untrained_checkpoint) -> Predictor:
    return Predictor(hub.load(str(untrained_checkpoint)))


@pytest.fixture(scope="module")
def tiles(class_tiles) -> list[Image.Image]:
    """Four real test tiles of different classes, as RGB PIL images."""
    return [Image.fromarray(tile.permute(1, 2, 0).numpy()) for tile in class_tiles[:4]]


def modes(tile: Image.Image) -> dict[str, Image.Image]:
    """The tile in every mode a user's file can decode to."""
    grey = tile.convert("L")
    alpha = Image.linear_gradient("L").resize(tile.size)
    palette = tile.quantize(16)
    transparent = palette.copy()
    transparent.info["transparency"] = 0
    return {
        "RGB": tile, "RGBA": Image.merge("RGBA", (*tile.split(), alpha)), "L": grey, "P": palette,
        "P+transparency": transparent, "I;16": Image.fromarray(np.asarray(grey, np.uint16) * 257),
        "I": Image.fromarray(np.asarray(grey, np.int32) * 257),
        "F": Image.fromarray(np.asarray(grey, np.float32) / 255), "CMYK": tile.convert("CMYK"),
        "LA": Image.merge("LA", (grey, alpha)),
    }


def assert_ranking(top: dict[str, float], k: int, label_names: list[str]) -> None:
    values = list(top.values())
    assert len(top) == k and set(top) <= set(label_names)
    assert values == sorted(values, reverse=True)
    assert all(0 <= v <= 1 for v in values) and sum(values) <= 1 + 1e-6


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P", "P+transparency", "I;16", "I", "F", "CMYK", "LA"])
def test_every_mode_gets_a_sorted_top_k(predictor, tiles, mode, label_names):
    image = modes(tiles[0])[mode]
    assert image.mode == mode.split("+")[0]
    assert_ranking(predictor.predict(image, 3), 3, label_names)


def test_modes_keep_the_meaning_of_their_pixels(predictor, tiles):
    images = modes(tiles[0])
    grey = predictor.inputs([images["L"]])
    # 16- and 32-bit grey scale down (65535 -> 255): Pillow's own convert would clip them to white.
    for mode in ("I;16", "I", "F"):
        torch.testing.assert_close(predictor.inputs([images[mode]]), grey, rtol=0, atol=0)
    white = predictor.inputs([Image.new("L", (64, 64), 255)])
    torch.testing.assert_close(predictor.inputs([Image.new("I;16", (64, 64), 65535)]), white, rtol=0, atol=0)
    # Transparent pixels become black, as Sentinel-2 no-data is.
    rgba = np.asarray(tiles[0].convert("RGBA")).copy()
    rgba[:, :32, 3] = 0
    over_black = np.asarray(tiles[0]).copy()
    over_black[:, :32] = 0
    torch.testing.assert_close(predictor.inputs([Image.fromarray(rgba)]),
                               predictor.inputs([Image.fromarray(over_black)]), rtol=0, atol=0)
    transparent = images["P+transparency"]
    expected = np.asarray(transparent.convert("RGB")).copy()
    expected[np.asarray(transparent) == 0] = 0
    assert (np.asarray(transparent) == 0).any()
    torch.testing.assert_close(predictor.inputs([transparent]), predictor.inputs([Image.fromarray(expected)]),
                               rtol=0, atol=0)


@pytest.mark.parametrize("size", [(1, 1), (64, 64), (4000, 3000), (37, 100)], ids=str)
def test_any_size_is_resized_to_the_input_size(predictor, size, label_names):
    colour = (10, 200, 30)
    x = predictor.inputs([Image.new("RGB", size, colour)])
    assert x.shape == (1, 3, 64, 64)
    # A flat colour stays that flat colour through every shrink and resize.
    torch.testing.assert_close(x, predictor.inputs([Image.new("RGB", (64, 64), colour)]), rtol=0, atol=1e-5)
    assert_ranking(predictor.predict(Image.new("RGB", size, colour), 4), 4, label_names)


def test_k_is_clipped_to_the_classes(predictor, tiles, label_names):
    assert len(predictor.predict(tiles[0], 0)) == 1
    assert len(predictor.predict(tiles[0], -5)) == 1
    everything = predictor.predict(tiles[0], 100)
    assert set(everything) == set(label_names) and len(everything) == 10
    assert sum(everything.values()) == pytest.approx(1, abs=1e-5)
    assert list(predictor.predict(tiles[0], 3)) == list(everything)[:3]


def test_labels_come_from_the_checkpoint(predictor, untrained_checkpoint, label_names):
    saved = json.loads((untrained_checkpoint / "config.json").read_text())["label_names"]
    assert predictor.label_names == saved == label_names


def test_a_batch_equals_one_image_at_a_time(predictor, tiles):
    images = [tiles[0], modes(tiles[1])["LA"], Image.new("RGB", (1, 1), (9, 99, 199)), tiles[2].resize((300, 120))]
    batch = predictor.predict_batch(images, 5)
    assert len(batch) == len(images)
    for image, together in zip(images, batch):
        alone = predictor.predict(image, 5)
        assert list(together) == list(alone)
        assert list(together.values()) == pytest.approx(list(alone.values()), abs=1e-5)
    assert len({tuple(b) for b in batch}) > 1, "different tiles get different rankings"


def test_analyze_draws_the_top1_class_by_default(predictor, tiles):
    differ = 0
    for tile in tiles:
        analysis = predictor.analyze(tile)
        ranking = predictor.predict(tile, 10)
        assert analysis.target == next(iter(ranking)) and analysis.method == "GradCAM"
        assert list(analysis.probabilities) == list(ranking)
        assert list(analysis.probabilities.values()) == pytest.approx(list(ranking.values()), abs=1e-5)
        assert analysis.top(2) == dict(list(analysis.probabilities.items())[:2])
        first, second = (torch.tensor([predictor.label_names.index(name)]) for name in list(ranking)[:2])
        x = predictor.inputs([tile])
        top1_map, second_map = (single_pass_cam(predictor.model, x, i)[1][0] for i in (first, second))
        assert analysis.heatmap.shape == (64, 64)
        np.testing.assert_allclose(analysis.heatmap, top1_map, atol=1e-6)
        differ += np.abs(top1_map - second_map).max() > 0.1
    assert differ, "on some tile the two best classes' maps differ, so the comparison above can fail"


def test_analyze_honours_a_chosen_class(predictor, tiles):
    default = predictor.analyze(tiles[1])
    x = predictor.inputs([tiles[1]])
    maps = set()
    for index, name in enumerate(predictor.label_names):
        chosen = predictor.analyze(tiles[1], target=name)
        assert chosen.target == name and chosen.probabilities == pytest.approx(default.probabilities, abs=1e-6)
        _, expected = single_pass_cam(predictor.model, x, torch.tensor([index]))
        np.testing.assert_allclose(chosen.heatmap, expected[0], atol=1e-6)
        maps.add(chosen.heatmap.tobytes())
    assert len(maps) >= 2, "the chosen class really changes the map"


def test_an_unknown_class_is_named_with_the_choices(predictor, tiles, label_names):
    with pytest.raises(ValueError) as error:
        predictor.analyze(tiles[0], target="Moon")
    assert str(error.value) == f"Unknown class 'Moon'; choose one of: {', '.join(label_names)}"


def test_preprocessing_comes_from_config_json(tmp_path, label_names):
    torch.manual_seed(0)
    model = build_model("test_resnet", len(label_names)).eval()
    config = DataConfig((32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), interpolation="bilinear")
    served = Predictor(hub.load(str(hub.save(model, tmp_path / "small", label_names=label_names,
                                              data_config=config))))
    assert served.data_config == config
    x = served.inputs([Image.new("RGB", (64, 64), (51, 102, 204))])
    assert x.shape == (1, 3, 32, 32)
    expected = (torch.tensor([51, 102, 204]) / 255 - 0.5) / 0.25
    torch.testing.assert_close(x[0, :, 5, 7], expected, rtol=0, atol=1e-6)
    assert served.analyze(Image.new("RGB", (64, 64), (51, 102, 204))).heatmap.shape == (32, 32)


def test_the_temperature_in_config_json_softens_every_probability(tmp_path, label_names, tiles):
    torch.manual_seed(0)
    model = build_model("test_resnet", len(label_names)).eval()
    config = DataConfig((32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    plain = Predictor(hub.load(str(hub.save(model, tmp_path / "plain", label_names=label_names, data_config=config))))
    warm = Predictor(hub.load(str(hub.save(model, tmp_path / "warm", label_names=label_names, data_config=config,
                                           extra_config={"temperature": 2.5}))))
    assert (plain.temperature, warm.temperature) == (1.0, 2.5)
    x = plain.inputs(tiles)
    with torch.inference_mode():
        logits = model(x)
    torch.testing.assert_close(warm.probabilities(x), (logits / 2.5).softmax(dim=1))
    # The order, and so every label, stays; only the confidence changes.
    for image in tiles:
        hot, cool = plain.analyze(image), warm.analyze(image)
        assert list(cool.probabilities) == list(hot.probabilities)
        assert max(cool.probabilities.values()) < max(hot.probabilities.values())
        np.testing.assert_allclose(cool.heatmap, hot.heatmap)


def test_memory_format_and_warmup_change_no_result(untrained_checkpoint, tiles):
    contiguous = Predictor(hub.load(str(untrained_checkpoint)), channels_last=False)
    channels_last = Predictor(hub.load(str(untrained_checkpoint)), channels_last=True)
    before = contiguous.analyze(tiles[1], target=contiguous.label_names[3])
    channels_last.warmup()
    after = channels_last.analyze(tiles[1], target=contiguous.label_names[3])
    assert list(after.probabilities) == list(before.probabilities)
    assert list(after.probabilities.values()) == pytest.approx(list(before.probabilities.values()), abs=1e-5)
    np.testing.assert_allclose(after.heatmap, before.heatmap, atol=1e-4)
    assert not channels_last.model.training


@pytest.mark.parametrize("slow_layout", [True, False])
def test_warmup_keeps_the_faster_memory_layout(untrained_checkpoint, tiles, slow_layout):
    predictor = Predictor(hub.load(str(untrained_checkpoint)), channels_last=slow_layout)
    ticks = iter(range(1000))

    def clock() -> float:
        """Each timed call of the slow layout seems to take 10 s; of the other, 1 s."""
        return 0.0 if next(ticks) % 2 == 0 else (10.0 if predictor.channels_last == slow_layout else 1.0)

    assert predictor.warmup(rounds=2, clock=clock) == {slow_layout: 20.0, not slow_layout: 2.0}
    assert predictor.channels_last is (not slow_layout)
    conv = next(p for p in predictor.model.parameters() if p.dim() == 4)  # the stem's 3x3 or 7x7 kernel
    layout = torch.channels_last if predictor.channels_last else torch.contiguous_format
    assert conv.is_contiguous(memory_format=layout)
    assert in_layout(predictor.model, predictor.inputs(tiles[:1])).is_contiguous(memory_format=layout)


def test_cpu_threads_share_the_quota_between_concurrent_requests(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))  # a host's cores, all visible
    quota = tmp_path / "cpu.max"
    quota.write_text("200000 100000\n")  # a 2-vCPU container
    assert [cpu_threads(n, cgroup=quota) for n in (1, 2, 4)] == [2, 1, 1]
    quota.write_text("max 100000\n")
    assert [cpu_threads(n, cgroup=quota) for n in (1, 2, 3)] == [16, 8, 5]
    assert cpu_threads(cgroup=tmp_path / "absent") == 16


def test_the_views_are_kept_only_within_budget(untrained_checkpoint):
    predictor = Predictor(hub.load(str(untrained_checkpoint)), tta=True)
    ticks = iter(range(10_000))

    def clock() -> float:
        """Each timed call seems to take 2 s: 2 s a tile, 2 s / 64 a cell."""
        return 2.0 * next(ticks)

    note = predictor.fit_views(0.5, 1.0, clock=clock)
    assert (predictor.tta, predictor.cell_tta) == (False, True)
    assert note == ("one view per tile: 8 views would take 2.0 s a tile here (budget 500 ms); "
                    "8 views per scene or batch cell (31 ms a cell here)") == predictor.views_note
    assert predictor.fit_views(0.5, 0.01, clock=clock).endswith(
        "one view per scene or batch cell: 8 views would take 31 ms a cell here (budget 10 ms)")
    assert predictor.cell_tta is False
    untouched = Predictor(hub.load(str(untrained_checkpoint)), tta=False)
    assert untouched.fit_views(0.0, 0.0) == "one view per tile; one view per scene or batch cell"


class _TwoAtOnce:
    """An engine (the `onnxrt.Graph` interface) that answers only when two passes are inside it at once, and
    records each pass's size and thread; its logits are a function of each view's pixels alone."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.together = threading.Barrier(2, timeout=10)
        self.passes: list[tuple[int, str]] = []

    def run(self, batch: torch.Tensor, features: bool):
        self.together.wait()  # a sequential caller never gets past this: the barrier breaks after 10 s
        self.passes.append((len(batch), threading.current_thread().name))
        with torch.inference_mode():
            return None, self.model(batch)


def test_cell_parts_run_the_slices_of_a_batch_at_once_in_order(untrained_checkpoint, class_tiles):
    tiles = class_tiles.repeat(4, 1, 1, 1)[:36]  # 36 tiles: batches of 16, 16 and 4
    alone = Predictor(hub.load(str(untrained_checkpoint)), tta=True)
    expected = alone.classify(tiles, batch_size=16)
    parted = Predictor(hub.load(str(untrained_checkpoint)), tta=True, cell_parts=2)
    parted.engine = _TwoAtOnce(parted.model)
    got = parted.classify(tiles, batch_size=16)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    assert got.argmax(1).tolist() == expected.argmax(1).tolist()
    assert sorted(size for size, _ in parted.engine.passes) == sorted([8 * 8] * 4 + [8 * 2] * 2)  # 8 views of each slice
    assert len({thread for _, thread in parted.engine.passes}) == 2


def test_the_app_gives_heavy_jobs_the_cpus_of_the_heavy_lane(monkeypatch):
    import app
    from eurosat import inference

    monkeypatch.setattr(inference, "cpu_threads", lambda concurrent=1: max(1, 4 // concurrent))  # a 4-CPU machine
    assert app.cell_parts(AppConfig(concurrency_limit=2, heavy_concurrency=1)) == 2  # 2 threads a tile, 4 for maps
    assert app.cell_parts(AppConfig(concurrency_limit=4, heavy_concurrency=1)) == 4
    assert app.cell_parts(AppConfig(concurrency_limit=4, heavy_concurrency=2)) == 2
    assert app.cell_parts(AppConfig(threads=4, heavy_concurrency=1)) == 1
