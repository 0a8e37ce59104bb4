"""Hostile input against the running app: every bad file through /predict, /gradcam and the page's handler,
the upload cap, 50 concurrent mixed requests, and the rules that keep user files from running code."""

import ast
import concurrent.futures
import pickle
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image, ImageFile

import hostile_files as hf
from conftest import REPO
from benchmarks.appserver import running_app

CASES = hf.CASES
RSS_TOLERANCE = 0.20
LOAD_REQUESTS = 50


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("uploads")
    return {case.name: hf.write(case, folder) for case in CASES}


@pytest.fixture(scope="module")
def server(trained_run, tmp_path_factory):
    with running_app("--model", str(trained_run), "--threads", "1",
                     log_dir=tmp_path_factory.mktemp("hostile-app")) as running:
        yield running


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    client = Client(server.url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")),
                    analytics_enabled=False)
    yield client
    client.close()


def expected_message(path: Path) -> str:
    """What the library itself says about the file: the API must relay exactly that."""
    from eurosat.imaging import ImageError, open_image

    with pytest.raises(ImageError) as error:
        open_image(path)
    return str(error.value)


def expected_overlay(predictor, path: Path) -> np.ndarray:
    from eurosat.cam import overlay
    from eurosat.imaging import open_image
    from eurosat.ui.shared import display_rgb

    image = open_image(path)
    return overlay(display_rgb(image), predictor.analyze(image).heatmap, 0.5)


def confidences(result: dict) -> dict[str, float]:
    return {c["label"]: c["confidence"] for c in result["confidences"]}


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_predict(case, client, files, predictor):
    path = files[case.name]
    if case.error:
        with pytest.raises(AppError) as error:
            client.predict(handle_file(str(path)), 10, api_name="/predict")
        message = str(error.value)
        print(f"observed /predict {case.name}: error {message!r}")
        assert case.error in message and message == expected_message(path)
        return
    from eurosat.imaging import open_image

    result = client.predict(handle_file(str(path)), 10, api_name="/predict")
    expected = predictor.predict(open_image(path), 10)
    got = confidences(result)
    print(f"observed /predict {case.name}: {result['label']} {got[result['label']]:.3f}")
    assert result["label"] == next(iter(expected))
    assert got.keys() == expected.keys()
    assert all(abs(got[k] - expected[k]) < 1e-4 for k in expected)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_gradcam(case, client, files, predictor):
    path = files[case.name]
    if case.error:
        with pytest.raises(AppError) as error:
            client.predict(handle_file(str(path)), api_name="/gradcam")
        message = str(error.value)
        print(f"observed /gradcam {case.name}: error {message!r}")
        assert case.error in message and message == expected_message(path)
        return
    heatmap, _ = client.predict(handle_file(str(path)), api_name="/gradcam")
    with Image.open(heatmap) as png:
        got = np.asarray(png.convert("RGB"), dtype=np.int16)
    expected = expected_overlay(predictor, path)
    print(f"observed /gradcam {case.name}: {got.shape[1]}x{got.shape[0]} heatmap")
    assert got.shape == expected.shape
    assert np.abs(got - expected).mean() < 1.0
    assert got.std() > 5  # a real heatmap, not a blank image


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_page_handler(case, files, predictor):
    """The page's own event (upload -> label, notice, heatmap) gives the same messages as the API."""
    from conftest import upload
    from eurosat.config import AppConfig
    from eurosat.ui.page import Page
    from eurosat.ui.shared import TOP1, Service

    page = Page(Service(predictor, config=AppConfig(examples_dir=None)))
    sent = upload(files[case.name])
    label, notice, _, heatmap, _, shown, _, _ = page.show(sent, 5, TOP1, "GradCAM", 0.5)
    if case.error:
        assert notice == f"⚠️ {expected_message(files[case.name])}" and label is None
        return
    assert len(label) == 5 and abs(sum(shown.analysis.probabilities.values()) - 1) < 1e-4
    got = np.asarray(heatmap.convert("RGB"), dtype=np.int16)
    expected = expected_overlay(predictor, files[case.name])
    assert got.shape == expected.shape
    assert np.abs(got - expected).mean() < 1.0


def test_upload_over_the_limit_is_refused_by_client_and_server(client, server, tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(hf.oversized_png())
    # gradio_client reads the cap from the app's config and refuses before sending anything.
    with pytest.raises(ValueError) as error:
        client.predict(handle_file(str(path)), api_name="/predict")
    print(f"observed gradio_client, {path.stat().st_size:,} bytes: {error.value}")
    assert "exceeds the maximum file size of 10485760 bytes" in str(error.value)
    # A client that ignores the cap is stopped by the server itself.
    response = httpx.post(f"{server.url}/gradio_api/upload", timeout=60,
                          files={"files": ("huge.png", path.read_bytes(), "image/png")})
    print(f"observed raw upload: HTTP {response.status_code} {response.text}")
    assert response.status_code == 413
    assert "File size exceeded maximum allowed size of 10485760 bytes" in response.text


def test_the_server_kept_serving_and_logged_no_traceback(client, server, files):
    # Its own hostile requests first, so that it proves something when run alone; with the whole file, the cases
    # above have run against the same server too (pytest keeps file order).
    for case in [c for c in CASES if c.error][:6]:
        with pytest.raises(AppError):
            client.predict(handle_file(str(files[case.name])), api_name="/predict")
    result = client.predict(handle_file(str(hf.EXAMPLES / "Forest.jpg")), 3, api_name="/predict")
    assert len(result["confidences"]) == 3 and server.process.poll() is None
    log = server.output()
    assert "Traceback" not in log
    assert "could be decompression bomb" not in log  # Pillow's warning never fired: our cap is lower


# Load: 50 concurrent requests, good and bad mixed.

def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")


@pytest.fixture(scope="module")
def good_tiles(mini_tensors, tmp_path_factory) -> list[Path]:
    """Real tiles of the mini test split, each a different image (see `burst` for why that matters)."""
    folder = tmp_path_factory.mktemp("good")
    images, _ = mini_tensors["test"]
    paths = []
    for i, tile in enumerate(images[:40]):
        paths.append(folder / f"tile{i}.png")
        Image.fromarray(tile.permute(1, 2, 0).numpy()).save(paths[-1])
    return paths


def mixed_requests(good: list[Path], files: dict[str, Path], count: int) -> list[tuple[Path, str, str | None]]:
    """(file, endpoint, expected error phrase or None): 3 good tiles for every 2 bad files, both endpoints."""
    bad = [(files[c.name], c.error) for c in CASES if c.error]
    good_left = iter(good)
    out = []
    for i in range(count):
        api = "/predict" if i % 2 == 0 else "/gradcam"
        if i % 5 < 3:
            out.append((next(good_left), api, None))
        else:
            path, error = bad[i % len(bad)]
            out.append((path, api, error))
    return out


def burst(url: str, requests: list[tuple[Path, str, str | None]], downloads: Path, timeout: float) -> list:
    """Send every request at once, each from its own thread and gradio_client Client (a visitor each).

    One Client shares a single event stream between its jobs, and under 50 simultaneous submits
    it cancels some of them itself (CancelledError) - a client-side race, not a server failure.
    Every good image is a different tile: Gradio writes identical outputs to the same cache file
    without an atomic rename, so two identical /gradcam results at once can truncate each other's
    download (reported, not exercised here).
    """
    def call(path: Path, api: str) -> object:
        client = Client(url, verbose=False, download_files=str(downloads), analytics_enabled=False)
        try:
            return client.predict(handle_file(str(path)), api_name=api)
        except AppError as e:
            return e
        finally:
            client.close()

    deadline = time.monotonic() + timeout
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(requests)) as pool:
        futures = [pool.submit(call, path, api) for path, api, _ in requests]
        outcomes = []
        for future in futures:
            try:
                outcomes.append(future.result(timeout=max(1.0, deadline - time.monotonic())))
            except Exception as e:  # a failed good request is recorded and reported by the test
                outcomes.append(e)
    return outcomes


def test_fifty_concurrent_mixed_requests(server, files, good_tiles, predictor, tmp_path):
    from eurosat.imaging import open_image

    pid = server.process.pid
    # Warm-up with the same mix, so the baseline includes Gradio's and PyTorch's lazy allocations.
    burst(server.url, mixed_requests(good_tiles[30:], files, 10), tmp_path, timeout=60)
    before = rss_kib(pid)

    requests = mixed_requests(good_tiles, files, LOAD_REQUESTS)
    outcomes = burst(server.url, requests, tmp_path, timeout=120)

    failed_good, wrong_bad = [], []
    for (path, api, error), outcome in zip(requests, outcomes):
        if error is None:
            if isinstance(outcome, Exception):
                failed_good.append((path.name, api, repr(outcome)))
            elif api == "/predict" and outcome["label"] != next(iter(predictor.predict(open_image(path), 1))):
                failed_good.append((path.name, api, outcome["label"]))
            elif api == "/gradcam" and not Path(outcome[0]).is_file():
                failed_good.append((path.name, api, outcome))
        elif not (isinstance(outcome, AppError) and error in str(outcome)):
            wrong_bad.append((path.name, api, repr(outcome)))
    good = sum(error is None for _, _, error in requests)
    print(f"observed load: {good} good, {len(requests) - good} bad; failed good {len(failed_good)}, "
          f"bad without their message {len(wrong_bad)}")
    assert failed_good == [] and wrong_bad == []

    # The server still answers, and its memory comes back to where it was (allocators may hold a little).
    after = burst(server.url, [(good_tiles[0], "/predict", None)], tmp_path, timeout=30)[0]
    assert after["label"] == next(iter(predictor.predict(open_image(good_tiles[0]), 1)))
    rss = rss_kib(pid)
    deadline = time.monotonic() + 20
    while abs(rss - before) > RSS_TOLERANCE * before and time.monotonic() < deadline:
        time.sleep(0.5)
        rss = rss_kib(pid)
    print(f"observed RSS: {before / 1024:.0f} MiB before, {rss / 1024:.0f} MiB after ({(rss - before) / before:+.1%})")
    assert abs(rss - before) <= RSS_TOLERANCE * before
    assert server.process.poll() is None and "Traceback" not in server.output()


# Security: user files never run code, and only safetensors weights are read.

SOURCES = sorted([*(REPO / "eurosat").rglob("*.py"), REPO / "app.py", REPO / "train.py"])
UNSAFE_MODULES = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "joblib", "shelve", "marshal"}
UNSAFE_NAMES = {"trust_remote_code", "allow_pickle", "weights_only", "pytorch_model.bin"}


def unsafe_uses(source: str) -> list[str]:
    """Imports of pickle-like modules, torch.load / torch.hub.load, and remote-code or pickle switches (code only)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in UNSAFE_MODULES]
        elif isinstance(node, ast.ImportFrom):
            root = (node.module or "").split(".")[0]
            if root in UNSAFE_MODULES or root == "torch" and any(a.name == "load" for a in node.names):
                found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Attribute) and node.attr == "load" and ast.unparse(node.value) in ("torch", "torch.hub"):
            found.append(ast.unparse(node))
        elif isinstance(node, ast.keyword) and node.arg in UNSAFE_NAMES:
            found.append(f"{node.arg}=")
        elif isinstance(node, ast.Constant) and node.value in UNSAFE_NAMES:
            found.append(repr(node.value))
    return found


def test_the_checker_finds_what_it_looks_for(tmp_path):
    code = ("import pickle\nfrom torch import load\nimport torch\ntorch.load('x')\ntorch.hub.load('a', 'b')\n"
            "f(trust_remote_code=True)\nkw = {'trust_remote_code': True}\n")
    assert sorted(unsafe_uses(code)) == sorted(["pickle", "from torch import ...", "torch.load", "torch.hub.load",
                                                "trust_remote_code=", "'trust_remote_code'"])
    assert unsafe_uses('"""No pickle here; torch.load is never called."""\n') == []
    # The bait used below is armed: unpickling it does create its marker file.
    marker = tmp_path / "armed.txt"
    pickle.loads(pickle.dumps(WritesMarker(marker)))
    assert marker.read_text() == "unpickled"


def test_the_scan_covers_every_module_of_the_package():
    scanned = {p.relative_to(REPO).as_posix() for p in SOURCES}
    assert {"eurosat/hub.py", "eurosat/ui/page.py", "eurosat/ui/shared.py", "app.py", "train.py"} <= scanned
    assert len(scanned) == len({p for p in REPO.glob("eurosat/**/*.py")}) + 2


@pytest.mark.parametrize("path", SOURCES, ids=[p.relative_to(REPO).as_posix() for p in SOURCES])
def test_no_pickle_no_torch_load_no_remote_code(path):
    assert unsafe_uses(path.read_text()) == []


class WritesMarker:
    """A pickle that creates a file when it is unpickled: proof of code execution if it ever appears."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled"))


def pickle_checkpoint(folder: Path, marker: Path, *, with_config: bool) -> Path:
    folder.mkdir(parents=True)
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(WritesMarker(marker)))
    if with_config:
        (folder / "config.json").write_text('{"architecture": "test_resnet", "num_classes": 10, "label_names": '
                                            '["a","b","c","d","e","f","g","h","i","j"], '
                                            '"pretrained_cfg": {"input_size": [3, 64, 64], "mean": [0, 0, 0], '
                                            '"std": [1, 1, 1]}}')
    return folder


@pytest.mark.parametrize("with_config", [False, True])
def test_a_pickle_checkpoint_is_refused_and_never_unpickled(tmp_path, with_config):
    from app import load_predictor
    from eurosat.config import AppConfig
    from eurosat.hub import CheckpointError, load

    marker = tmp_path / "pwned.txt"
    folder = pickle_checkpoint(tmp_path / "pickled", marker, with_config=with_config)
    with pytest.raises(CheckpointError) as error:
        load(str(folder))
    missing = "model.safetensors" if with_config else "config.json, model.safetensors"
    assert str(error.value).startswith(f"Checkpoint folder {str(folder)!r} is missing {missing}.")
    predictor, why = load_predictor(AppConfig(model=str(folder)))
    assert predictor is None and f"is missing {missing}" in why
    assert not marker.exists()


def test_a_pickle_in_the_hub_cache_is_not_loaded(tmp_path):
    from eurosat.hub import CheckpointError, load

    marker = tmp_path / "pwned.txt"
    snapshot = tmp_path / "hub" / "models--someone--pickled" / "snapshots" / ("0" * 40)
    pickle_checkpoint(snapshot, marker, with_config=True)
    (tmp_path / "hub" / "models--someone--pickled" / "refs").mkdir()
    (tmp_path / "hub" / "models--someone--pickled" / "refs" / "main").write_text("0" * 40)
    with pytest.raises(CheckpointError) as error:
        load("someone/pickled", cache_dir=str(tmp_path / "hub"))
    assert "model.safetensors is not in the local Hugging Face cache" in str(error.value)
    assert not marker.exists()


def test_a_model_path_that_is_a_file_is_treated_as_a_hub_id(trained_run):
    from app import load_predictor
    from eurosat.config import AppConfig
    from eurosat.hub import CheckpointError, load

    weights = trained_run / "model.safetensors"
    with pytest.raises(CheckpointError) as error:
        load(str(weights))
    assert str(error.value).startswith(f"{str(weights)!r} is neither an existing checkpoint folder nor a Hub model id.")
    predictor, why = load_predictor(AppConfig(model=str(weights)))
    assert predictor is None and "is neither an existing checkpoint folder nor a Hub model id" in why


def test_uploads_are_capped_and_decoded_with_pillow_bomb_protection():
    from eurosat.config import AppConfig
    from eurosat.ui import launch_kwargs

    assert launch_kwargs(AppConfig())["max_file_size"] == AppConfig().max_file_size == "10mb"
    # Importing the whole app (Gradio, timm, grad-cam, OpenCV) left Pillow's protections as they ship.
    assert Image.MAX_IMAGE_PIXELS == 89_478_485 and ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert AppConfig().max_pixels <= Image.MAX_IMAGE_PIXELS
