"""Uploading a recording in JupyterLab 4 when the browser refuses the microphone (as VS Code does).

The tutorial notebook, unchanged, in a page whose ``getUserMedia`` rejects with ``NotAllowedError``
(an init script): Record fails with a line that names the upload; files chosen in the panel's file
control go through transcript, prompt and images; bad files get one line each and the panel goes on.
Speech: the fake AssemblyAI service (real Whisper inside); images: the tiny random DALL-E engine in
its own server process.
"""

from __future__ import annotations

import contextlib
import shutil

import pytest

from speech2image_nb.ui.upload import MAX_UPLOAD_BYTES, UPLOAD_HINT
from tests.audio_encode import encode_with_pyav
from tests.conftest import DATA_DIR, TIME_FACTOR
from tests.fakes.assemblyai import FakeAssemblyAI

from .harness import (
    JupyterServer,
    KernelClient,
    choose_file,
    launch_chromium,
    open_notebook,
    wait_for_widget,
)
from .test_colab_stack import images_shown_js
from .test_panel_browser import NOTEBOOK, decoded_images

# The hang guard scales like every other limit: the first test here may start the image server.
pytestmark = [pytest.mark.browser, pytest.mark.timeout(int(300 * TIME_FACTOR))]

MS = 1000 * TIME_FACTOR
REFUSE_MICROPHONE = """
navigator.mediaDevices.getUserMedia = () =>
  Promise.reject(new DOMException("Permission denied", "NotAllowedError"));
"""
ERROR_LINE_JS = "(w) => ((document.querySelector('.s2i-error-line') || {}).innerText || '').includes(w)"


@pytest.fixture(scope="module")
def lab_with_servers(browser_tmp, image_server_process):
    """JupyterLab 4 whose kernels reach the fake AssemblyAI service and an image server process."""
    with contextlib.ExitStack() as stack:
        fake = stack.enter_context(FakeAssemblyAI(api_key="fake-upload-key", end_silence_ms=500))
        env = stack.enter_context(pytest.MonkeyPatch.context())
        env.setenv("ASSEMBLYAI_API_KEY", "fake-upload-key")
        env.setenv("ASSEMBLYAI_STREAMING_URL", fake.url)
        env.setenv("S2I_SERVER_URL", image_server_process.url)
        env.setenv("S2I_NO_PROMPT", "1")
        env.delenv("S2I_SERVER_TOKEN", raising=False)
        root = browser_tmp / "upload-lab"
        root.mkdir()
        shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
        yield stack.enter_context(JupyterServer("lab", root_dir=root))


def test_without_a_microphone_uploads_draw_and_bad_files_get_one_line_each(
    lab_with_servers, playwright_instance, browser_tmp, artifacts_dir
):
    """Mic refused: the line names the upload; an upload draws; bad files get a line; the next one works."""
    server = lab_with_servers
    browser = launch_chromium(playwright_instance, fake_ui=False)
    context = browser.new_context(viewport={"width": 1100, "height": 1000}, permissions=["microphone"])
    try:
        context.add_init_script(REFUSE_MICROPHONE)
        page = context.new_page()
        open_notebook(page, server, NOTEBOOK.name)
        panel = page.locator(".s2i-panel")
        wait_for_widget(
            page,
            page.locator(".s2i-recorder-button"),
            artifacts_dir / "upload_browser_no_widget.png",
            timeout_ms=60 * MS,
        )
        with KernelClient(server, server.kernel_id(NOTEBOOK.name)) as kernel:
            assert kernel.wait_until("panel.wait_ready(0)", timeout_s=60 * TIME_FACTOR), kernel.json(
                "panel.error_text"
            )
            # --- the microphone is refused: the line says so and names the upload ----------------
            page.locator(".s2i-recorder-button").click()
            page.wait_for_function(ERROR_LINE_JS, arg="Microphone: The browser refused", timeout=10 * MS)
            line = page.locator(".s2i-error-line").inner_text()
            assert line.endswith(UPLOAD_HINT) and "Upload button" in line, line
            panel.screenshot(path=artifacts_dir / "panel_mic_refused_upload_hint_lab.png")

            # --- an upload goes through transcript -> prompt -> Generate -> images ------------------
            choose_file(page, ".s2i-upload", DATA_DIR / "piper_01.wav", timeout_s=10 * TIME_FACTOR)
            page.wait_for_function(
                "() => document.querySelector('.s2i-transcript').innerText.toLowerCase().includes('snow')",
                timeout=60 * MS,
            )
            assert "snow" in page.locator(".s2i-prompt textarea").input_value().lower()
            assert kernel.json("panel.error_text") == ""  # the upload cleared the microphone's line
            page.locator(".s2i-generate").click()
            page.wait_for_function(images_shown_js(4), timeout=60 * MS)
            assert decoded_images(page) and kernel.json("panel.error_text") == ""
            panel.screenshot(path=artifacts_dir / "panel_upload_lab.png")

            # --- bad files: one line each, nothing else changes ---------------------------------------
            notes = browser_tmp / "notes.wav"
            notes.write_text("Shopping list: eggs, milk, bread.\n" * 20)
            empty = browser_tmp / "empty.wav"
            empty.write_bytes(b"")
            big = browser_tmp / "big.wav"
            big.write_bytes(b"\0" * (MAX_UPLOAD_BYTES + 1))
            prompt = page.locator(".s2i-prompt textarea").input_value()
            for path, words in (
                (notes, "Audio: notes.wav is not audio the panel can read"),
                (empty, "Audio: empty.wav is empty (0 bytes)"),
                (big, "Audio: big.wav is too large (8.0 MB; uploads take up to 8 MB)"),
            ):
                choose_file(page, ".s2i-upload", path, timeout_s=10 * TIME_FACTOR)
                page.wait_for_function(ERROR_LINE_JS, arg=words, timeout=30 * MS)
                assert "Traceback" not in panel.inner_text()
            panel.screenshot(path=artifacts_dir / "panel_bad_upload_lab.png")
            assert page.locator(".s2i-prompt textarea").input_value() == prompt

            # --- the next good upload (flac this time) still works ------------------------------------
            flac = browser_tmp / "astronaut.flac"
            flac.write_bytes(encode_with_pyav(DATA_DIR / "piper_02.wav", "flac", "flac"))
            history = kernel.json("len(panel.controller.history)")
            choose_file(page, ".s2i-upload", flac, timeout_s=10 * TIME_FACTOR)
            page.wait_for_function(
                "() => document.querySelector('.s2i-prompt textarea').value.toLowerCase().includes('moon')",
                timeout=60 * MS,
            )
            assert kernel.json("panel.error_text") == ""
            page.locator(".s2i-generate").click()
            drawn = f"len(panel.controller.history) > {history} and panel.wait_idle(0)"
            assert kernel.wait_until(drawn, timeout_s=60 * TIME_FACTOR), kernel.json("panel.error_text")
            page.wait_for_function(images_shown_js(4), timeout=30 * MS)
    finally:
        context.close()
        browser.close()
