"""The page's handlers called directly, no server: values, one network pass per request, user-facing errors."""

import hashlib
import logging

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from conftest import FULL, REPO
from eurosat import hub, llm
from eurosat.cam import DEFAULT_METHOD, cam_methods, overlay
from eurosat.config import DEFAULT_MODEL_ID, ENV_MODEL, ENV_OPENAI_KEY, AppConfig
from eurosat.imaging import ImageError, open_image
from eurosat.inference import Predictor
from eurosat.ui import (TOP1, UNEXPECTED, Handlers, build_demo, example_tiles, gpt4o_placeholder, launch_kwargs,
                        low_confidence_notice, no_model_message)

EXAMPLES = REPO / "examples"
FOREST = str(EXAMPLES / "Forest.jpg")
KEY = "sk-test-SECRET-ui-0123456789"


@pytest.fixture(scope="module")
def predictor(trained_checkpoint) -> Predictor:
    return Predictor(hub.load(str(trained_checkpoint)))


@pytest.fixture
def config() -> AppConfig:
    return AppConfig(examples_dir=str(EXAMPLES))


@pytest.fixture
def handlers(predictor, config) -> Handlers:
    return Handlers(predictor, config=config)


@pytest.fixture
def forwards(predictor) -> list:
    """One entry per pass of the network (every route ends in its classifier, the single-pass CAM's too)."""
    calls = []
    handle = predictor.model.get_classifier().register_forward_hook(lambda *args: calls.append(1))
    yield calls
    handle.remove()


def rgb_of(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def enlarged(rgb: np.ndarray, factor: int) -> np.ndarray:
    return rgb.repeat(factor, axis=0).repeat(factor, axis=1)


def error_of(call, *args, **kwargs) -> str:
    """The message of the gr.Error a handler raises; it must carry no chained exception."""
    with pytest.raises(gr.Error) as info:
        call(*args, **kwargs)
    assert info.value.__cause__ is None
    return info.value.message


def test_examples_are_original_test_tiles_one_per_class(label_names):
    examples = example_tiles(EXAMPLES)
    assert [caption for _, caption in examples] == sorted(label_names)
    originals = {}
    for line in (FULL / "SOURCE_SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        originals[digest] = name.rsplit("/", 1)[-1].removesuffix(".jpg")
    test_ids = set((FULL / "splits" / "test.txt").read_text().split())
    for path, caption in examples:
        data = open(path, "rb").read()
        image_id = originals.get(hashlib.sha256(data).hexdigest())
        assert image_id is not None, f"{path} is not an original EuroSAT file"
        assert image_id.startswith(caption + "_") and image_id in test_ids
        with Image.open(path) as image:
            assert (image.format, image.size, image.mode) == ("JPEG", (64, 64), "RGB")
        assert image_id in (EXAMPLES / "README.md").read_text()


def test_predict_matches_the_predictor(handlers, predictor):
    for path, _ in example_tiles(EXAMPLES):
        expected = predictor.predict(open_image(path), 5)
        assert handlers.predict(path, 5) == expected
        assert handlers.predict({"path": path, "meta": {"_type": "gradio.FileData"}}, 5) == expected
    everything = handlers.predict(FOREST, 10)
    assert sorted(everything) == sorted(predictor.label_names)
    assert sum(everything.values()) == pytest.approx(1.0, abs=1e-5)
    assert list(everything.values()) == sorted(everything.values(), reverse=True)
    assert handlers.predict(FOREST, None) == handlers.predict(FOREST, 5)


def test_show_runs_the_network_once_and_the_sliders_never(handlers, predictor, forwards):
    direct = predictor.predict(open_image(FOREST), 3)
    forwards.clear()
    label, notice, heatmap, shown = handlers.show(FOREST, 3, TOP1, "GradCAM", 0.5)
    heatmap = np.asarray(heatmap)
    assert len(forwards) == 1
    assert list(label) == list(direct)
    assert list(label.values()) == pytest.approx(list(direct.values()), abs=1e-5)
    assert shown.analysis.target == next(iter(label))
    assert heatmap.shape == (256, 256, 3) and heatmap.dtype == np.uint8
    assert np.array_equal(heatmap, overlay(rgb_of(FOREST), shown.analysis.heatmap, 0.5))

    assert len(handlers.relabel(10, shown)) == 10
    assert list(handlers.relabel(2, shown)) == list(label)[:2]
    clear = np.asarray(handlers.recolour(0.0, shown))
    opaque = np.asarray(handlers.recolour(1.0, shown))
    assert np.array_equal(clear, enlarged(rgb_of(FOREST), 4))
    assert np.abs(opaque.astype(int) - clear.astype(int)).mean() > 20
    # A jet colour map always has one channel near full scale; the tile (a dark forest) does not.
    assert opaque.max(axis=2).min() > 120 and clear.max(axis=2).mean() < 120
    assert len(forwards) == 1


@pytest.mark.parametrize("method", list(cam_methods()))
def test_every_method_is_one_pass_and_matches_the_predictor(handlers, predictor, forwards, method):
    expected = overlay(rgb_of(FOREST), predictor.analyze(open_image(FOREST), target="River", method=method).heatmap,
                       0.7)
    forwards.clear()
    picture = np.asarray(handlers.gradcam(FOREST, "River", method, 0.7))
    assert len(forwards) == 1
    assert picture.shape == (256, 256, 3) and picture.dtype == np.uint8
    assert np.abs(picture.astype(int) - expected.astype(int)).max() <= 1


def test_the_class_menu_changes_the_heatmap(handlers, predictor):
    first, second = predictor.label_names[:2]
    a = np.asarray(handlers.gradcam(FOREST, first, "GradCAM", 1.0))
    b = np.asarray(handlers.gradcam(FOREST, second, "GradCAM", 1.0))
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 1
    top1 = next(iter(predictor.predict(open_image(FOREST), 1)))
    assert np.array_equal(handlers.gradcam(FOREST), handlers.gradcam(FOREST, top1, DEFAULT_METHOD, 0.5))


def test_identical_heatmaps_get_files_of_their_own(handlers):
    # Gradio names cached outputs by the hash of their PNG bytes; equal bytes would share (and race on) one file.
    from gradio.processing_utils import encode_pil_to_bytes

    a, b = handlers.gradcam(FOREST), handlers.gradcam(FOREST)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert encode_pil_to_bytes(a, "png") != encode_pil_to_bytes(b, "png")


def test_large_images_are_shown_at_a_bounded_size(handlers, tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (900, 1800, 3), dtype=np.uint8)).save(path)
    assert np.asarray(handlers.gradcam(str(path))).shape == (256, 512, 3)


def test_low_confidence_notice():
    notice = low_confidence_notice({"Forest": 0.3, "River": 0.2}, 0.5)
    assert "Forest" in notice and "30%" in notice and "guess" in notice
    assert low_confidence_notice({"Forest": 0.9, "River": 0.1}, 0.5) == ""


def test_show_gives_the_notice_below_the_threshold(predictor):
    always = Handlers(predictor, config=AppConfig(low_confidence=1.01))
    never = Handlers(predictor, config=AppConfig(low_confidence=0.0))
    top1 = next(iter(predictor.predict(open_image(FOREST), 1)))
    assert top1 in always.show(FOREST, 5, TOP1, "GradCAM", 0.5)[1]
    assert never.show(FOREST, 5, TOP1, "GradCAM", 0.5)[1] == ""


def test_clearing_the_image_clears_the_outputs(handlers, forwards):
    assert handlers.show(None, 5, TOP1, "GradCAM", 0.5) == (None, "", None, None)
    assert handlers.relabel(5, None) is None and handlers.recolour(0.5, None) is None
    assert forwards == []


def test_bad_arguments_get_specific_messages(handlers, predictor, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ImageError) as decoding:
        open_image(str(text))
    assert error_of(handlers.predict, str(text)) == str(decoding.value)
    assert "No image was given" in error_of(handlers.predict, None)
    message = error_of(handlers.gradcam, FOREST, "Bogus")
    assert "Unknown class 'Bogus'" in message and all(name in message for name in predictor.label_names)
    message = error_of(handlers.gradcam, FOREST, TOP1, "ScoreCAM")
    assert "Unknown Grad-CAM method 'ScoreCAM'" in message and "EigenCAM" in message
    for k in (0, 11, "5", True):
        assert "k must be a whole number from 1 to 10" in error_of(handlers.predict, FOREST, k)
    for opacity in (-0.1, 1.5, "half"):
        assert "opacity must be a number from 0 to 1" in error_of(handlers.gradcam, FOREST, TOP1, "GradCAM", opacity)


def test_without_a_model_every_endpoint_says_what_to_do(config):
    why = "Checkpoint folder '/srv/ckpt' is missing model.safetensors."
    handlers = Handlers(None, config=config, load_error=why)
    expected = no_model_message(why)
    assert why in expected and ENV_MODEL in expected and "train.py" in expected and DEFAULT_MODEL_ID in expected
    assert error_of(handlers.predict, FOREST) == expected
    assert error_of(handlers.gradcam, FOREST) == expected
    assert error_of(handlers.gpt4o, FOREST, KEY) == expected
    demo = build_demo(None, config=config, load_error=why)
    banners = [b.value for b in demo.blocks.values() if isinstance(b, gr.Markdown) and b.elem_id == "banner"]
    assert len(banners) == 1 and expected in banners[0]
    assert set(demo.get_api_info()["named_endpoints"]) == {"/predict", "/gradcam", "/gpt4o"}


def test_unexpected_failures_are_logged_not_shown(handlers, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("internal detail /srv/weights")

    monkeypatch.setattr(handlers.predictor, "analyze", broken)
    with caplog.at_level(logging.ERROR, logger="eurosat.ui"):
        message = error_of(handlers.gradcam, FOREST)
    assert message == UNEXPECTED and "internal detail" not in message
    assert any(r.exc_info and "internal detail" in str(r.exc_info[1]) for r in caplog.records)


class StubAsk:
    """Stands in for llm.ask: records its arguments and answers, or raises, as told."""

    def __init__(self, result):
        self.result, self.calls = result, []

    def __call__(self, image, label_names, **kwargs):
        self.calls.append((image, list(label_names), kwargs))
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def test_gpt4o_shows_the_answer_beside_the_cnn(predictor, config, forwards, caplog):
    opinion = llm.SecondOpinion("Forest", 0.8, "Dense canopy.", "gpt-4o")
    ask = StubAsk(opinion)
    handlers = Handlers(predictor, config=config, ask=ask)
    caplog.set_level(logging.DEBUG)
    answer = handlers.gpt4o(FOREST, KEY)
    (label, probability), = predictor.predict(open_image(FOREST), 1).items()
    assert answer == llm.format_comparison(opinion, label, probability)
    image, names, kwargs = ask.calls[0]
    assert names == predictor.label_names and kwargs == {"api_key": KEY} and image.size == (64, 64)
    assert len(forwards) == 2  # the CNN's top-1 (one pass), plus the direct predict above
    assert KEY not in answer and KEY not in caplog.text

    assert handlers.gpt4o(FOREST, "") == answer
    assert ask.calls[1][2] == {"api_key": None}  # an empty field means the server's own key


def test_gpt4o_reuses_what_the_page_already_computed(predictor, config, forwards):
    handlers = Handlers(predictor, config=config, ask=StubAsk(llm.SecondOpinion("River", 0.6, "Water.", "gpt-4o")))
    label, _, _, shown = handlers.show(FOREST, 5, TOP1, "GradCAM", 0.5)
    answer = handlers.gpt4o(FOREST, KEY, shown)
    assert len(forwards) == 1
    top1, probability = next(iter(label.items()))
    assert f"| CNN (top-1) | {top1} | {probability:.1%} |" in answer


def test_gpt4o_failures_carry_the_llm_message(predictor, config):
    for kind, message in (("no_key", llm.no_key_message()), ("auth", "OpenAI rejected the API key (HTTP 401).")):
        handlers = Handlers(predictor, config=config, ask=StubAsk(llm.LLMError(kind, message)))
        assert error_of(handlers.gpt4o, FOREST) == message
    ask = StubAsk(llm.SecondOpinion("River", 0.6, "Water.", "gpt-4o"))
    assert "No image was given" in error_of(Handlers(predictor, config=config, ask=ask).gpt4o, None, KEY)
    assert ask.calls == []  # nothing paid for a request that cannot be answered


def test_gpt4o_tab_says_how_to_enable_it(monkeypatch):
    monkeypatch.delenv(ENV_OPENAI_KEY, raising=False)
    assert gpt4o_placeholder() == llm.no_key_message()
    monkeypatch.setenv(ENV_OPENAI_KEY, KEY)
    assert "Ask GPT-4o" in gpt4o_placeholder() and KEY not in gpt4o_placeholder()


def test_selecting_an_example_sets_its_file(handlers):
    event = gr.SelectData(None, {"index": 3, "value": None})
    assert handlers.select_example(event) == example_tiles(EXAMPLES)[3][0]


def test_api_needs_only_the_image(predictor, config):
    demo = build_demo(predictor, config=config)
    api = demo.get_api_info()
    assert api["unnamed_endpoints"] == {}
    defaults = {name: {p["parameter_name"]: p for p in endpoint["parameters"]}
                for name, endpoint in api["named_endpoints"].items()}
    assert {name: list(params) for name, params in defaults.items()} == {
        "/predict": ["image", "k"],
        "/gradcam": ["image", "class_name", "method", "opacity"],
        "/gpt4o": ["image", "api_key"],
    }
    for params in defaults.values():
        assert not params["image"]["parameter_has_default"]
        assert all(p["parameter_has_default"] for name, p in params.items() if name != "image")
    assert defaults["/predict"]["k"]["parameter_default"] == 5
    assert defaults["/gradcam"]["class_name"]["parameter_default"] == TOP1
    assert defaults["/gradcam"]["method"]["parameter_default"] == "GradCAM"
    assert defaults["/gradcam"]["opacity"]["parameter_default"] == 0.5
    assert defaults["/gpt4o"]["api_key"]["parameter_default"] == ""
    dropdowns = {b.label: [value for _, value in b.choices] for b in demo.blocks.values()
                 if isinstance(b, gr.Dropdown)}
    assert dropdowns["Class"] == [TOP1, *predictor.label_names]
    assert {"GradCAM", "GradCAM++", "EigenCAM", "LayerCAM"} <= set(dropdowns["Method"])
    heatmaps = [b for b in demo.blocks.values() if isinstance(b, gr.Image) and b.elem_id == "cam"]
    assert [(b.format, b.type) for b in heatmaps] == [("png", "numpy")]
    keys = [b for b in demo.blocks.values() if isinstance(b, gr.Textbox)]
    assert [b.type for b in keys] == ["password"]


def test_launch_settings(config):
    kwargs = launch_kwargs(config)
    assert kwargs["max_file_size"] == config.max_file_size and kwargs["show_error"] is True
    assert kwargs["allowed_paths"] == [str(EXAMPLES.resolve())]
    assert kwargs["run_history"] is False
    assert launch_kwargs(AppConfig())["allowed_paths"] is None
