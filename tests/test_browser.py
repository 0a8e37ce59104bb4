"""The real page in Debian's Chromium through Playwright: an example, its label, its heatmap, the GPT-4o tab."""

import importlib.util
import io
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from eurosat import hub
from eurosat.cam import overlay
from eurosat.imaging import open_image
from eurosat.inference import Predictor
from eurosat.llm import no_key_message
from servers import running_app

CHROMIUM = Path("/usr/bin/chromium")
# Playwright cannot download its own browser here; Debian's runs headless with these flags, and the
# background-networking ones keep it from filling the console with refused connections.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
EXAMPLE = "Forest"
TIMEOUT_MS = 60_000  # two shared CPUs: a first request can wait behind other work


def require_browser():
    """Skip without Chromium or Playwright, unless EUROSAT_REQUIRE_BROWSER=1 (CI), where that is a failure."""
    missing = None
    if not CHROMIUM.is_file():
        missing = f"{CHROMIUM} is missing (apt-get install chromium)"
    elif importlib.util.find_spec("playwright") is None:
        missing = "playwright is not installed (pip install -r requirements-dev.txt)"
    if missing and os.environ.get("EUROSAT_REQUIRE_BROWSER") == "1":
        pytest.fail(f"the browser test must run (EUROSAT_REQUIRE_BROWSER=1), but {missing}")
    if missing:
        pytest.skip(f"browser test skipped: {missing}")


@pytest.fixture
def screenshots(tmp_path):
    """Where screenshots go; copied to $EUROSAT_SCREENSHOT_DIR afterwards when that is set, even on failure."""
    folder = tmp_path / "screenshots"
    folder.mkdir()
    yield folder
    target = os.environ.get("EUROSAT_SCREENSHOT_DIR")
    if target:
        shutil.copytree(folder, target, dirs_exist_ok=True)


def test_page_end_to_end(trained_checkpoint, tmp_path, screenshots):
    require_browser()
    from playwright.sync_api import expect, sync_playwright

    path = str(REPO / "examples" / f"{EXAMPLE}.jpg")
    predictor = Predictor(hub.load(str(trained_checkpoint)))
    expected = predictor.predict(open_image(path), 5)
    top1 = next(iter(expected))
    expected_png = overlay(np.asarray(Image.open(path).convert("RGB")), predictor.analyze(open_image(path)).heatmap,
                           0.5)

    console_errors = []
    with running_app("--model", str(trained_checkpoint), log_dir=tmp_path / "logs") as server, \
            sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(TIMEOUT_MS)
            page.on("console", lambda message: message.type == "error" and console_errors.append(message.text))
            page.on("pageerror", lambda error: console_errors.append(f"uncaught: {error}"))
            page.goto(server.url)

            # 1. The gallery shows one enlarged tile per class.
            thumbnails = page.locator("#examples img")
            expect(thumbnails).to_have_count(10)
            expect(page.locator(f"#examples img[alt='{EXAMPLE}']")).to_be_visible()
            page.screenshot(path=screenshots / "1-start.png", full_page=True)

            # 2. Clicking an example runs the analysis at once: the label is the model's top-1.
            page.locator(f"#examples img[alt='{EXAMPLE}']").click()
            expect(page.locator("#prediction [data-testid='label-output-value']")).to_have_text(top1)
            expect(page.locator("#prediction dt")).to_have_text(list(expected))
            shown = page.locator("#prediction meter").evaluate_all("meters => meters.map(m => m.value)")
            assert shown == pytest.approx(list(expected.values()), abs=1e-4)
            tile = page.locator("#tile img")
            assert tile.evaluate("img => img.getBoundingClientRect().width") > 4 * 64  # enlarged, not 64 px
            page.screenshot(path=screenshots / "2-prediction.png", full_page=True)

            # 3. The Grad-CAM tab shows the heatmap, a PNG equal to the one computed here.
            page.get_by_role("tab", name="Grad-CAM").click()
            heatmap = page.locator("#cam img")
            expect(heatmap).to_be_visible()
            page.wait_for_function("() => document.querySelector('#cam img')?.naturalWidth > 0")
            response = page.request.get(heatmap.get_attribute("src"))
            assert response.ok
            with Image.open(io.BytesIO(response.body())) as png:
                assert (png.format, png.size) == ("PNG", (256, 256))
                pixels = np.asarray(png.convert("RGB")).astype(int)
            assert np.abs(pixels - expected_png.astype(int)).max() <= 2
            page.screenshot(path=screenshots / "3-gradcam.png", full_page=True)

            # 4. With no key, the GPT-4o tab says how to turn it on; asking anyway says the same, in a toast.
            page.get_by_role("tab", name="GPT-4o").click()
            expect(page.locator("#gpt4o")).to_contain_text("no OpenAI API key is set")
            page.get_by_role("button", name="Ask GPT-4o").click()
            expect(page.get_by_text(no_key_message()).first).to_be_visible()
            page.screenshot(path=screenshots / "4-gpt4o.png", full_page=True)
        finally:
            browser.close()

    assert sorted(p.name for p in screenshots.iterdir()) == ["1-start.png", "2-prediction.png", "3-gradcam.png",
                                                              "4-gpt4o.png"]
    assert console_errors == []


def test_without_chromium_it_skips_unless_required(monkeypatch, tmp_path):
    monkeypatch.setattr(sys.modules[__name__], "CHROMIUM", tmp_path / "no-chromium")
    monkeypatch.delenv("EUROSAT_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-chromium is missing"):
        require_browser()
    monkeypatch.setenv("EUROSAT_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match="must run"):
        require_browser()
