"""The page's handlers called directly, no server: values, one network pass per request, user-facing errors."""

import hashlib
import json
import logging

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from conftest import FULL, NO_FULL_DATA, REPO, upload
from eurosat import hub, llm
from eurosat.cam import DEFAULT_METHOD, cam_methods, overlay
from eurosat.config import BUNDLED_MODEL, ENV_MODEL, AppConfig
from eurosat.llm import ENV_OPENAI_KEY
from eurosat.imaging import ImageError, open_image
from eurosat.inference import Predictor
from eurosat.ui import build_demo, launch_kwargs
from eurosat.ui.gpt4o import NEEDS_KEY, button_state, placeholder
from eurosat.ui.page import Page, example_tiles
from eurosat.ui.predict import notice
from eurosat.ui.shared import TOP1, UNEXPECTED, Service, no_model_message

EXAMPLES = REPO / "examples"
FOREST = str(EXAMPLES / "Forest.jpg")
KEY = "sk-test-SECRET-ui-0123456789"


@pytest.fixture
def config() -> AppConfig:
    return AppConfig(examples_dir=str(EXAMPLES))


def make_page(predictor, config, ask=llm.ask, load_error=None) -> Page:
    return Page(Service(predictor, config=config, load_error=load_error), ask=ask)


@pytest.fixture
def page(predictor, config) -> Page:
    return make_page(predictor, config)


@pytest.fixture
def forest() -> dict:
    return upload(FOREST)


@pytest.fixture
def forwards(predictor) -> list:
    """One entry per pass of the network, of the served model or of a copy that a Grad-CAM method hooks
    (every route ends in a classifier of the served shape, the single-pass CAM's too)."""
    import torch

    head = predictor.model.get_classifier()
    calls = []

    def count(module, args, output):
        if isinstance(module, torch.nn.Linear) and module.weight.shape == head.weight.shape:
            calls.append(1)

    handle = torch.nn.modules.module.register_module_forward_hook(count)
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


@pytest.mark.skipif(not FULL.is_dir(), reason=NO_FULL_DATA)
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


def test_predict_matches_the_predictor(page, predictor):
    for path, _ in example_tiles(EXAMPLES):
        expected = predictor.predict(open_image(path), 5)
        assert page.predict.predict(upload(path), 5) == expected
        assert page.predict.predict({"path": path, "meta": {"_type": "gradio.FileData"}}, 5) == expected
    everything = page.predict.predict(upload(FOREST), 10)
    assert sorted(everything) == sorted(predictor.label_names)
    assert sum(everything.values()) == pytest.approx(1.0, abs=1e-5)


def test_show_runs_the_network_once_and_the_sliders_never(page, predictor, forwards, forest):
    direct = predictor.predict(open_image(FOREST), 3)
    forwards.clear()
    label, _, meaning, heatmap, drawn, shown, saved, answer = page.show(forest, 3, TOP1, "GradCAM", 0.5)
    heatmap = np.asarray(heatmap)
    assert len(forwards) == 1
    assert list(label) == list(direct)
    assert list(label.values()) == pytest.approx(list(direct.values()), abs=1e-5)
    assert shown.analysis.target == next(iter(label)) == drawn
    assert meaning.startswith(f"**{drawn}**")
    assert heatmap.shape == (256, 256, 3) and heatmap.dtype == np.uint8
    assert np.array_equal(heatmap, overlay(rgb_of(FOREST), shown.analysis.heatmap, 0.5))
    download = json.loads(open(saved["value"]).read())
    assert download["image"] == "Forest.jpg" and sorted(download["probabilities"]) == sorted(predictor.label_names)
    assert answer == placeholder()  # a new image clears the previous GPT-4o answer

    assert len(page.relabel(10, shown)) == 10
    assert list(page.relabel(2, shown)) == list(label)[:2]
    clear = np.asarray(page.recolour(0.0, shown))
    opaque = np.asarray(page.recolour(1.0, shown))
    assert np.array_equal(clear, enlarged(rgb_of(FOREST), 4))
    assert np.abs(opaque.astype(int) - clear.astype(int)).mean() > 20
    # A jet colour map always has one channel near full scale; the tile (a dark forest) does not.
    assert opaque.max(axis=2).min() > 120 and clear.max(axis=2).mean() < 120
    assert len(forwards) == 1


@pytest.mark.parametrize("method", list(cam_methods()))
def test_every_method_is_one_pass_and_matches_the_predictor(page, predictor, forwards, method, forest):
    expected = overlay(rgb_of(FOREST), predictor.analyze(open_image(FOREST), target="River", method=method).heatmap,
                       0.7)
    forwards.clear()
    picture, drawn = page.gradcam.gradcam(forest, "River", method, 0.7)
    picture = np.asarray(picture)
    assert len(forwards) == 1 and drawn == "River"
    assert picture.shape == (256, 256, 3) and picture.dtype == np.uint8
    assert np.abs(picture.astype(int) - expected.astype(int)).max() <= 1


def test_the_class_menu_changes_the_heatmap(page, predictor, forest):
    first, second = predictor.label_names[:2]
    a = np.asarray(page.gradcam.gradcam(forest, first, "GradCAM", 1.0)[0])
    b = np.asarray(page.gradcam.gradcam(forest, second, "GradCAM", 1.0)[0])
    assert np.abs(a.astype(int) - b.astype(int)).mean() > 1
    top1 = next(iter(predictor.predict(open_image(FOREST), 1)))
    default, drawn = page.gradcam.gradcam(forest)
    assert drawn == top1
    assert np.array_equal(default, page.gradcam.gradcam(forest, top1, DEFAULT_METHOD, 0.5)[0])


def test_names_match_in_any_letter_case(page, predictor, forest):
    name = predictor.label_names[1]
    upper = page.gradcam.gradcam(forest, name.upper(), "gradcam++", 0.5)
    exact = page.gradcam.gradcam(forest, name, "GradCAM++", 0.5)
    assert upper[1] == exact[1] == name and np.array_equal(upper[0], exact[0])
    assert page.gradcam.gradcam(forest, " Top-1 ")[1] == page.gradcam.gradcam(forest)[1]


def test_k_is_a_whole_number_given_as_a_number_or_text(page, forest):
    assert len(page.predict.predict(forest, "3")) == 3
    assert len(page.predict.predict(forest, 4.0)) == 4
    for k in (0, 11, 2.5, "2.5", "three", True):
        assert "k must be a whole number from 1 to 10" in error_of(page.predict.predict, forest, k)


def test_identical_heatmaps_get_files_of_their_own(page, forest):
    # Gradio names cached outputs by the hash of their PNG bytes; equal bytes would share (and race on) one file.
    from gradio.processing_utils import encode_pil_to_bytes

    a, b = page.gradcam.gradcam(forest)[0], page.gradcam.gradcam(forest)[0]
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert encode_pil_to_bytes(a, "png") != encode_pil_to_bytes(b, "png")


def ten(**top: float) -> dict[str, float]:
    """All ten classes' probabilities, highest first: the given ones, the rest sharing what is left."""
    rest = [n for n in ("AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
                        "PermanentCrop", "Residential", "River", "SeaLake") if n not in top]
    share = (1 - sum(top.values())) / len(rest)
    return {**top, **{n: share for n in rest}}


def test_notice_names_the_runner_up_and_blames_no_input():
    close = notice(ten(River=0.55, Highway=0.38), 0.8)
    assert "River or Highway" in close and "55% / 38%" in close and "guess" not in close and "photo" not in close
    assert "winding band of water" in close and "grey line" in close  # what to look at, for both
    alone = notice(ten(Pasture=0.6, Forest=0.1), 0.8)
    assert "Pasture" in alone and "60%" in alone and " or " not in alone and "80%" in alone
    flat = notice(ten(Forest=0.12), 0.8)
    assert "No class fits" in flat and "Forest" in flat
    assert notice(ten(Forest=0.9, River=0.1), 0.8) == ""
    large = notice(ten(Forest=0.99), 0.8, size=(1800, 900), tile=64)
    assert "1800x900 pixels, far larger than a 64x64 tile" in large and "Scene map" in large
    assert notice(ten(Forest=0.99), 0.8, size=(128, 128), tile=64) == ""


def test_show_gives_the_notice_below_the_checkpoints_threshold(predictor, config, forest, monkeypatch):
    page = make_page(predictor, config)
    top1 = next(iter(predictor.predict(open_image(FOREST), 1)))
    monkeypatch.setitem(predictor.checkpoint.config, "notice_threshold", 1.0)
    assert top1 in page.show(forest, 5, TOP1, "GradCAM", 0.5)[1]
    monkeypatch.setitem(predictor.checkpoint.config, "notice_threshold", 0.0)
    assert page.show(forest, 5, TOP1, "GradCAM", 0.5)[1] == ""


def test_clearing_the_image_clears_the_outputs(page, forwards):
    label, notice_text, meaning, cam, drawn, shown, saved, answer = page.show(None, 5, TOP1, "GradCAM", 0.5)
    assert (label, notice_text, meaning, cam, drawn, shown) == (None, "", "", None, "", None)
    assert saved["visible"] is False and answer == placeholder()
    assert page.relabel(5, None) is None and page.recolour(0.5, None) is None
    assert forwards == []


def test_a_failed_analysis_shows_its_message_in_the_panel(page, tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ImageError) as decoding:
        open_image(str(text))
    outputs = page.show(upload(text), 5, TOP1, "GradCAM", 0.5)
    assert outputs[1] == f"⚠️ {decoding.value}"
    assert outputs[0] is None and outputs[3] is None and outputs[5] is None


def test_bad_arguments_get_specific_messages(page, predictor, tmp_path, forest):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ImageError) as decoding:
        open_image(str(text))
    assert error_of(page.predict.predict, upload(text)) == str(decoding.value)
    assert "No image was given" in error_of(page.predict.predict, None)
    assert "handle_file" in error_of(page.predict.predict, FOREST)  # a plain path string is never opened
    message = error_of(page.gradcam.gradcam, forest, "Bogus")
    assert "Unknown class 'Bogus'" in message and all(name in message for name in predictor.label_names)
    message = error_of(page.gradcam.gradcam, forest, TOP1, "ScoreCAM")
    assert "Unknown Grad-CAM method 'ScoreCAM'" in message and "EigenCAM" in message
    for opacity in (-0.1, 1.5, "half"):
        assert "opacity must be a number from 0 to 1" in error_of(page.gradcam.gradcam, forest, TOP1, "GradCAM",
                                                                  opacity)


def test_without_a_model_every_endpoint_says_what_to_do(config, forest):
    why = "Checkpoint folder '/srv/ckpt' is missing model.safetensors."
    page = make_page(None, config, load_error=why)
    expected = no_model_message(why)
    assert why in expected and ENV_MODEL in expected and "train.py" in expected and BUNDLED_MODEL in expected
    assert error_of(page.predict.predict, forest) == expected
    assert error_of(page.gradcam.gradcam, forest) == expected
    assert error_of(page.gpt4o.gpt4o, forest, KEY) == expected
    assert error_of(page.scene.scene, forest) == expected
    assert error_of(page.change.change, forest, forest) == expected
    assert error_of(page.batch.batch, [forest]) == expected
    # An example clicked without a model says there is no model, not something about k.
    assert page.show(forest, 5, TOP1, "GradCAM", 0.5)[1] == f"⚠️ {expected}"
    demo = build_demo(None, config=config, load_error=why)
    banners = [b.value for b in demo.blocks.values() if isinstance(b, gr.Markdown) and b.elem_id == "banner"]
    assert len(banners) == 1 and expected in banners[0]
    assert set(demo.get_api_info()["named_endpoints"]) == {"/predict", "/gradcam", "/gpt4o", "/scene", "/change",
                                                           "/batch"}


def test_unexpected_failures_are_logged_not_shown(page, monkeypatch, caplog, forest):
    def broken(*args, **kwargs):
        raise RuntimeError("internal detail /srv/weights")

    monkeypatch.setattr(page.served.predictor, "analyze", broken)
    with caplog.at_level(logging.ERROR, logger="eurosat.ui"):
        message = error_of(page.gradcam.gradcam, forest)
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


def test_gpt4o_shows_the_answer_beside_the_cnn(predictor, config, forwards, caplog, forest):
    opinion = llm.SecondOpinion("Forest", 0.8, "Dense canopy.", "gpt-4o")
    ask = StubAsk(opinion)
    page = make_page(predictor, config, ask)
    caplog.set_level(logging.DEBUG)
    answer = page.gpt4o.gpt4o(forest, KEY)
    (label, probability), = predictor.predict(open_image(FOREST), 1).items()
    assert answer == llm.format_comparison(opinion, label, probability)
    image, names, kwargs = ask.calls[0]
    assert names == predictor.label_names and kwargs["api_key"] == KEY and image.size == (64, 64)
    assert len(forwards) == 2  # the CNN's top-1 (one pass), plus the direct predict above
    assert KEY not in answer and KEY not in caplog.text

    assert page.gpt4o.gpt4o(forest, "") == answer
    assert ask.calls[1][2]["api_key"] is None  # an empty field means the server's own key


def test_gpt4o_reuses_what_the_page_already_computed(predictor, config, forwards, forest):
    page = make_page(predictor, config, StubAsk(llm.SecondOpinion("River", 0.6, "Water.", "gpt-4o")))
    label, *_, shown, _, _ = page.show(forest, 5, TOP1, "GradCAM", 0.5)
    answer = page.gpt4o.gpt4o(forest, KEY, shown)
    assert len(forwards) == 1
    top1, probability = next(iter(label.items()))
    assert f"| CNN (top-1) | {top1} | {probability:.1%} |" in answer


def test_gpt4o_failures_carry_the_llm_message(predictor, config, forest):
    for kind, message in (("no_key", llm.no_key_message()), ("auth", "OpenAI rejected the API key (HTTP 401).")):
        page = make_page(predictor, config, StubAsk(llm.LLMError(kind, message)))
        assert error_of(page.gpt4o.gpt4o, forest) == message
    ask = StubAsk(llm.SecondOpinion("River", 0.6, "Water.", "gpt-4o"))
    assert "No image was given" in error_of(make_page(predictor, config, ask).gpt4o.gpt4o, None, KEY)
    assert ask.calls == []  # nothing paid for a request that cannot be answered


def test_gpt4o_tab_says_how_to_enable_it(monkeypatch):
    monkeypatch.delenv(ENV_OPENAI_KEY, raising=False)
    assert placeholder() == llm.no_key_message()
    assert button_state("") == {"interactive": False, "value": NEEDS_KEY}
    assert button_state(KEY)["interactive"] is True
    monkeypatch.setenv(ENV_OPENAI_KEY, KEY)
    assert "Ask GPT-4o" in placeholder() and KEY not in placeholder()
    assert button_state("")["interactive"] is True


def test_selecting_an_example_sets_its_file(page):
    event = gr.SelectData(None, {"index": 3, "value": None})
    assert page.select_example(event) == example_tiles(EXAMPLES)[3][0]


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
        "/scene": ["image", "metres_per_pixel", "opacity", "radiometry"],
        "/change": ["before", "after", "before_date", "after_date", "radiometry", "metres_per_pixel"],
        "/batch": ["files"],
    }
    for endpoint, params in defaults.items():
        required = ["before", "after"] if endpoint == "/change" else [next(iter(params))]
        assert all(not params[name]["parameter_has_default"] for name in required)
        assert all(p["parameter_has_default"] for name, p in params.items() if name not in required)
    assert defaults["/predict"]["k"]["parameter_default"] == 5
    assert defaults["/gradcam"]["class_name"]["parameter_default"] == TOP1
    assert defaults["/gradcam"]["method"]["parameter_default"] == "GradCAM"
    assert defaults["/gradcam"]["opacity"]["parameter_default"] == 0.5
    assert defaults["/gpt4o"]["api_key"]["parameter_default"] == ""
    assert defaults["/scene"]["radiometry"]["parameter_default"] == defaults["/change"]["radiometry"][
        "parameter_default"] == "auto"
    assert defaults["/change"]["before_date"]["parameter_default"] == ""
    returns = {name: [r["label"] for r in endpoint["returns"]] for name, endpoint in api["named_endpoints"].items()}
    assert returns == {"/predict": ["Most likely classes"], "/gradcam": ["Heatmap", "Class drawn"],
                       "/gpt4o": ["GPT-4o's answer"],
                       "/scene": ["Land-cover map", "Land cover by class", "Cells (CSV)",
                                  "Class map (Cloud-Optimized GeoTIFF, when the input is georeferenced)",
                                  "How the file was read"],
                       "/change": ["Change map (over the after image)",
                                   "Before (left) and after (right), with their maps",
                                   "From → to, confident cells (cells · km²)", "Per class, confident cells (km²)",
                                   "Where each class went (Sankey)", "Summary", "Cells (CSV)", "Matrix (CSV)",
                                   "Transition codes (GeoTIFF, for georeferenced input)"],
                       "/batch": ["Results, least confident first", "Results (CSV)"]}
    examples = {name: endpoint["parameters"][0]["example_input"] for name, endpoint in api["named_endpoints"].items()}
    assert all("examples/Forest.jpg" in json.dumps(example) for example in examples.values()), examples
    dropdowns = {b.label: [value for _, value in b.choices] for b in demo.blocks.values()
                 if isinstance(b, gr.Dropdown)}
    assert dropdowns["Class"] == [TOP1, *predictor.label_names]
    assert {"GradCAM", "GradCAM++", "EigenCAM", "LayerCAM"} <= set(dropdowns["Method"])
    assert dropdowns["Radiometry"] == dropdowns["Radiometry (GeoTIFF, JPEG 2000)"] == [
        "auto", "eurosat-l1c", "baseline-04", "reflectance", "8bit"]
    keys = [b for b in demo.blocks.values() if isinstance(b, gr.Textbox) and b.type == "password"]
    assert len(keys) == 1


def test_launch_settings(config):
    kwargs = launch_kwargs(config)
    assert kwargs["max_file_size"] == config.max_file_size and kwargs["show_error"] is True
    assert kwargs["allowed_paths"] == [str(EXAMPLES.resolve())]
    assert kwargs["run_history"] is False and kwargs["mcp_server"] is True
    assert launch_kwargs(AppConfig(mcp=False))["mcp_server"] is False
    assert launch_kwargs(AppConfig())["allowed_paths"] is None


def test_each_upload_is_checked_once_per_request(predictor, monkeypatch, tmp_path):
    """Through a running app (in this process): the request gate checks each file, and the handler uses that."""
    import shutil

    from gradio_client import Client, handle_file

    from eurosat import uploads

    checked = []
    real = uploads._checked_size
    monkeypatch.setattr(uploads, "_checked_size", lambda root, parts: checked.append(parts[-1]) or real(root, parts))
    tiles = [shutil.copy(FOREST, tmp_path / f"once-{i}.jpg") for i in range(2)]
    demo = build_demo(predictor, config=AppConfig(examples_dir=str(EXAMPLES), mcp=False)).queue()
    demo.launch(server_name="127.0.0.1", prevent_thread_lock=True, quiet=True)
    try:
        client = Client(demo.local_url, verbose=False, analytics_enabled=False, download_files=str(tmp_path))
        calls = {"/predict": (handle_file(tiles[0]), 3), "/gradcam": (handle_file(tiles[0]), TOP1, DEFAULT_METHOD, 0.5),
                 "/scene": (handle_file(tiles[0]), 10, 0.5), "/batch": ([handle_file(t) for t in tiles],),
                 "/change": (handle_file(tiles[0]), handle_file(tiles[1]))}
        for api_name, args in calls.items():
            checked.clear()
            client.predict(*args, api_name=api_name)
            files = len(args[0]) if api_name == "/batch" else 2 if api_name == "/change" else 1
            assert sorted(checked) == sorted(f"once-{i}.jpg" for i in range(files)), api_name
    finally:
        demo.close()


def test_a_model_too_slow_for_eight_views_here_is_served_with_one_and_the_page_says_so(config):
    predictor = Predictor(hub.load(str(REPO / BUNDLED_MODEL)), tta=True)
    predictor.warmup()
    predictor.fit_views(1e-6, 1e-6)  # no machine answers a tile in a microsecond
    assert (predictor.tta, predictor.cell_tta) == (False, False)
    demo = build_demo(predictor, config=config)
    line = next(c["props"]["value"] for c in demo.config["components"] if c["props"].get("elem_id") == "model-line")
    assert "Serving here: one view per tile: 8 views would take " in line and "a tile here (budget 0 ms)" in line
    assert "one view per scene or batch cell: 8 views would take" in line
    single = json.loads((REPO / BUNDLED_MODEL / "metrics.json").read_text())["top1"]
    assert f"test top-1 {single:.2%};" in line  # the single-view figure, now that one view is served
