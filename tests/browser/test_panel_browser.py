"""End to end in a real browser: the tutorial notebook, the fake microphone, transcript, images.

JupyterLab 4 and Notebook 7 open ``notebooks/speech2image.ipynb`` unchanged, configured only by
the environment (AssemblyAI protocol against the local fake service whose transcripts come from a
real Whisper, embedded image server with the test engine). Chromium's fake microphone plays
piper_01.wav ("a red fox sitting in the snow").
"""

from __future__ import annotations

import base64
import io
import shutil
import time

import pytest
from PIL import Image

from tests.conftest import DATA_DIR, TIME_FACTOR
from tests.fakes.assemblyai import FakeAssemblyAI

from .harness import JupyterServer, KernelClient, launch_chromium, open_notebook, wait_for_widget

pytestmark = pytest.mark.browser

NOTEBOOK = DATA_DIR.parents[1] / "notebooks" / "speech2image.ipynb"
FAKE_MIC_WAV = DATA_DIR / "piper_01.wav"
TAKE_S = 2.4  # speech ends 2.1 s into the 2.5 s clip; the fake microphone then loops it (from 2.85 s)
IMAGE_COUNT = 3
MS = 1000 * TIME_FACTOR

IMAGES_JS = """() => Array.from(document.querySelectorAll('.s2i-grid img.s2i-img:not(.s2i-preview)'))
    .map(img => ({src: img.getAttribute('src'), width: img.naturalWidth}))"""


def decoded_images(page):
    """Every finished image element in the grid, decoded from its data URL (and as the browser sees it)."""
    images = []
    for item in page.evaluate(IMAGES_JS):
        assert item["width"] > 0, "the browser could not decode an image"
        header, data = item["src"].split(",", 1)
        assert header.startswith("data:image/")
        images.append(Image.open(io.BytesIO(base64.b64decode(data))))
    return images


def record_once(page, kernel):
    """Click Record, let the fake microphone speak, click Stop; wait for the final transcript."""
    takes = kernel.json("len(panel.controller.transcript._turns)")
    page.locator(".s2i-recorder-button").click()
    page.wait_for_selector(".s2i-recorder[data-state=recording]", timeout=5 * MS)
    time.sleep(TAKE_S)
    page.locator(".s2i-recorder-button").click()
    assert kernel.wait_until(
        f"len(panel.controller.transcript._turns) > {takes} and "
        "'snow' in panel.controller.transcript.session_text().lower()",
        timeout_s=40 * TIME_FACTOR,
    ), kernel.json("panel.error_text")


@pytest.fixture
def configured_env(monkeypatch, browser_tmp, tiny_dalle_dir):
    """The environment the Jupyter server (and so the kernel) starts with."""
    with FakeAssemblyAI(api_key="fake-browser-key", end_silence_ms=500) as fake:
        monkeypatch.setenv("ASSEMBLYAI_API_KEY", "fake-browser-key")
        monkeypatch.setenv("ASSEMBLYAI_STREAMING_URL", fake.url)
        monkeypatch.setenv("S2I_IMAGE_ENGINE", "dalle-mini")  # tiny random weights
        monkeypatch.setenv("S2I_MODEL_DIR", str(tiny_dalle_dir))
        monkeypatch.setenv("S2I_NO_PROMPT", "1")
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.delenv("S2I_SERVER_URL", raising=False)
        yield fake


@pytest.mark.parametrize("stack", ["lab", "notebook"])
def test_tutorial_notebook_speech_to_images(
    stack, configured_env, playwright_instance, browser_tmp, artifacts_dir
):
    """Record -> transcript and prompt in the DOM -> Generate -> N decodable images; then hands-free."""
    root = browser_tmp / f"panel-{stack}"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    server = JupyterServer(stack, root_dir=root).start()
    browser = launch_chromium(playwright_instance, fake_audio=FAKE_MIC_WAV)
    try:
        page = browser.new_page(viewport={"width": 1100, "height": 1000})
        open_notebook(page, server, NOTEBOOK.name)
        panel = page.locator(".s2i-panel")
        wait_for_widget(
            page,
            page.locator(".s2i-recorder-button"),
            artifacts_dir / "panel_browser_no_widget.png",
            timeout_ms=60 * MS,
        )
        with KernelClient(server, server.kernel_id(NOTEBOOK.name)) as kernel:
            assert kernel.wait_until("panel.wait_ready(0)", timeout_s=60 * TIME_FACTOR), kernel.json(
                "panel.error_text"
            )
            kernel.execute(f"panel.image_count_slider.value = {IMAGE_COUNT}")
            panel.scroll_into_view_if_needed()
            panel.screenshot(path=artifacts_dir / f"panel_ready_{stack}.png")

            # --- record, stop, then Generate ---------------------------------------------------
            record_once(page, kernel)
            transcript = page.locator(".s2i-transcript").inner_text()
            assert "snow" in transcript.lower()
            prompt = page.locator(".s2i-prompt textarea").input_value()
            assert "snow" in prompt.lower(), prompt
            page.locator(".s2i-generate").click()
            page.wait_for_function(
                f"() => document.querySelectorAll('.s2i-grid img.s2i-img:not(.s2i-preview)').length"
                f" === {IMAGE_COUNT}",
                timeout=30 * MS,
            )
            images = decoded_images(page)
            assert len(images) == IMAGE_COUNT and all(im.size[0] >= 64 for im in images)
            assert "seed" in page.locator(".s2i-seed").inner_text()
            assert page.locator(".s2i-error").count() == 0 or not page.locator(".s2i-error-line").inner_text()
            panel.screenshot(path=artifacts_dir / f"panel_images_{stack}.png")

            # --- hands-free: the next sentence draws itself -----------------------------------------
            page.locator(".s2i-hands-free").click()
            assert kernel.wait_until("panel.controller.hands_free", timeout_s=5 * TIME_FACTOR)
            record_once(page, kernel)
            assert kernel.wait_until(
                "len(panel.controller.history) >= 2 and panel.wait_idle(0)", timeout_s=30 * TIME_FACTOR
            ), kernel.json("panel.error_text")
            page.wait_for_function(
                "() => document.querySelectorAll('.s2i-history-item').length >= 2", timeout=10 * MS
            )
            page.wait_for_function(
                f"() => document.querySelectorAll('.s2i-grid img.s2i-img:not(.s2i-preview)').length"
                f" === {IMAGE_COUNT}",
                timeout=30 * MS,
            )
            assert len(decoded_images(page)) == IMAGE_COUNT
            assert kernel.json("panel.error_text") == ""
            panel.screenshot(path=artifacts_dir / f"panel_hands_free_{stack}.png")

            # --- click to enlarge ---------------------------------------------------------------
            page.locator(".s2i-grid img.s2i-img").first.click()
            assert page.locator(".s2i-grid img.s2i-big").count() == 1
            page.screenshot(path=artifacts_dir / f"panel_enlarged_{stack}.png")
            page.locator(".s2i-grid img.s2i-big").click()
            assert page.locator(".s2i-grid img.s2i-big").count() == 0

            # --- Space starts and stops recording while the panel has focus ---------------------
            page.locator(".s2i-status-box").click()
            page.keyboard.press("Space")
            page.wait_for_selector(".s2i-recorder[data-state=recording]", timeout=5 * MS)
            assert kernel.wait_until("panel.recorder.recording", timeout_s=5 * TIME_FACTOR)
            page.keyboard.press("Space")
            assert kernel.wait_until("not panel.recorder.recording", timeout_s=5 * TIME_FACTOR)
    finally:
        browser.close()
        server.stop()


def test_microphone_denied_shows_one_line_and_typed_prompt_still_draws(
    configured_env, playwright_instance, browser_tmp, artifacts_dir
):
    """Chromium refuses the microphone: the panel says how to fix it; Generate still works."""
    root = browser_tmp / "panel-denied"
    root.mkdir()
    shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
    server = JupyterServer("lab", root_dir=root).start()
    browser = launch_chromium(playwright_instance, fake_audio=FAKE_MIC_WAV, fake_ui=False)
    try:
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        open_notebook(page, server, NOTEBOOK.name)
        wait_for_widget(
            page,
            page.locator(".s2i-recorder-button"),
            artifacts_dir / "panel_browser_no_widget.png",
            timeout_ms=60 * MS,
        )
        with KernelClient(server, server.kernel_id(NOTEBOOK.name)) as kernel:
            assert kernel.wait_until("panel.wait_ready(0)", timeout_s=60 * TIME_FACTOR)
            page.locator(".s2i-recorder-button").click()
            page.wait_for_function(
                "() => (document.querySelector('.s2i-error-line') || {}).innerText"
                "?.includes('Microphone: The browser refused')",
                timeout=10 * MS,
            )
            line = page.locator(".s2i-error-line").inner_text()
            assert "allow it" in line and "Traceback" not in page.locator(".s2i-panel").inner_text()
            page.locator(".s2i-panel").screenshot(path=artifacts_dir / "panel_mic_denied_lab.png")
            page.locator(".s2i-prompt textarea").fill("a red fox sitting in the snow")
            page.locator(".s2i-generate").click()
            page.wait_for_function(
                "() => document.querySelectorAll('.s2i-grid img.s2i-img:not(.s2i-preview)').length > 0",
                timeout=30 * MS,
            )
            assert decoded_images(page) and kernel.json("panel.error_text") == ""
    finally:
        browser.close()
        server.stop()
