"""The streaming Recorder in JupyterLab 4 and Notebook 7 with Chromium's fake microphone."""

from __future__ import annotations

import base64
import time

import numpy as np
import pytest

from speech2image_nb.recorder.widget import ERROR_MESSAGES
from tests.conftest import DATA_DIR, TIME_FACTOR

from .audio_match import best_envelope_match, read_wav_mono, rms_envelope
from .harness import (
    INSECURE_HOST,
    KernelClient,
    launch_chromium,
    open_notebook,
    run_cell,
    wait_for_widget,
    write_notebook,
)

pytestmark = pytest.mark.browser

FAKE_MIC_WAV = DATA_DIR / "piper_01.wav"
TAKE_S = 3.0
SETUP = """\
import threading, time
from speech2image_nb.recorder import Recorder, WebRTCRecorder
rec = Recorder(chunk_ms=100)
arrivals, stops, errors = [], [], []
rec.on_audio(lambda b: arrivals.append((time.time(), len(b), threading.current_thread().name)))
rec.on_stop(lambda: stops.append(time.time()))
rec.on_error(lambda e: errors.append((type(e).__name__, str(e))))
rec"""

BUSY_CELL = """\
arrivals.clear()
rec.recording = True
time.sleep(2.5)
during = [a for a in arrivals] or [(0, 0, "none")]"""


def kernel_pcm(kernel: KernelClient) -> np.ndarray:
    """The recorder's whole take, read from the kernel."""
    encoded = kernel.json("__import__('base64').b64encode(rec.pcm().tobytes()).decode()")
    return np.frombuffer(base64.b64decode(encoded), dtype="<i2")


def assert_matches_fake_mic(pcm: np.ndarray, *, min_s: float) -> float:
    """Not silent, long enough, and the 10 ms RMS envelope matches the fake-mic WAV (>= 0.9)."""
    samples = pcm.astype(np.float64) / 32768.0
    assert len(samples) / 16000 >= min_s, f"only {len(samples) / 16000:.2f} s of audio"
    assert np.sqrt((samples**2).mean()) > 0.01, "the recording is silent"
    reference, rate = read_wav_mono(FAKE_MIC_WAV)
    assert rate == 16000
    corr, _lag = best_envelope_match(rms_envelope(samples, 16000), rms_envelope(reference, rate))
    assert corr >= 0.9, f"envelope correlation {corr:.3f} < 0.9"
    return corr


@pytest.mark.parametrize("jupyter_server", ["lab", "notebook"], indirect=True)
def test_click_to_record_streams_and_kernel_can_start_and_stop(
    jupyter_server, playwright_instance, artifacts_dir
):
    """Click record: chunks stream during the take and match the mic; kernel start/stop works too."""
    stack = jupyter_server.stack
    name = f"record_{stack}.ipynb"
    write_notebook(jupyter_server.root_dir, name, [SETUP, BUSY_CELL])
    browser = launch_chromium(playwright_instance, fake_audio=FAKE_MIC_WAV)
    try:
        page = browser.new_page(viewport={"width": 1000, "height": 700})
        open_notebook(page, jupyter_server, name, run_all=False)
        run_cell(page, 0)
        widget = page.locator(".s2i-recorder")
        button = page.locator(".s2i-recorder-button")
        wait_for_widget(
            page, button, artifacts_dir / "recorder_browser_no_widget.png", timeout_ms=30_000 * TIME_FACTOR
        )
        with KernelClient(jupyter_server, jupyter_server.kernel_id(name)) as kernel:
            assert kernel.wait_until("rec.frontend_loaded", timeout_s=10 * TIME_FACTOR)
            widget.screenshot(path=artifacts_dir / f"recorder_idle_{stack}.png")

            # --- a 3 s take started and stopped by clicks ---------------------------------
            button.click()
            page.wait_for_selector(".s2i-recorder[data-state=recording]", timeout=5_000 * TIME_FACTOR)
            time.sleep(TAKE_S / 2)
            level = page.locator(".s2i-recorder-level").evaluate("el => parseFloat(el.style.width)")
            widget.screenshot(path=artifacts_dir / f"recorder_recording_{stack}.png")
            assert level > 5, f"level meter at {level}% while the fake mic plays speech"
            time.sleep(TAKE_S / 2)
            stop_clicked = time.time()
            button.click()
            kernel.wait_until("len(stops) == 1", timeout_s=5 * TIME_FACTOR)
            arrivals = kernel.json("arrivals")
            assert kernel.json("errors") == []
            on_time = sum(1 for t, *_ in arrivals if t < stop_clicked)
            assert len(arrivals) >= 25, f"{len(arrivals)} chunks for a {TAKE_S} s take"
            assert on_time / len(arrivals) >= 0.8, f"{on_time}/{len(arrivals)} chunks before the stop"
            corr = assert_matches_fake_mic(kernel_pcm(kernel), min_s=TAKE_S - 0.3)
            print(f"{stack}: {len(arrivals)} chunks, {on_time} before stop, envelope corr {corr:.3f}")

            # --- a take started and stopped from the kernel -----------------------------------
            # Started inside a cell that keeps running: on ipykernel 7 the chunks arrive during the
            # cell (on the page's subshell thread); on ipykernel 6 they wait until it ends.
            run_cell(page, 1)
            during = kernel.wait_until("'during' in dir() and during", timeout_s=10 * TIME_FACTOR)
            if kernel.json("int(__import__('ipykernel').__version__.split('.')[0])") >= 7:
                assert len(during) >= 15, f"only {len(during)} chunks during a running cell"
                assert "MainThread" not in {thread for *_, thread in during}
            kernel.execute("arrivals.clear(); t_stop = time.time(); rec.recording = False")
            kernel.wait_until("len(stops) == 2", timeout_s=5 * TIME_FACTOR)
            stop_delay_s = kernel.json("stops[-1] - t_stop")
            last_chunk_s = kernel.json("arrivals[-1][0] - t_stop")
            assert kernel.json("errors") == []
            assert 0 <= stop_delay_s <= 0.5 * TIME_FACTOR, (
                f"on_stop {stop_delay_s:.3f} s after the kernel's stop"
            )
            assert last_chunk_s <= stop_delay_s
            assert kernel.json("rec.recording") is False
            corr2 = assert_matches_fake_mic(kernel_pcm(kernel), min_s=1.5)

            # --- max_seconds stops a take on its own ---------------------------------------------
            kernel.execute("rec.max_seconds = 1.0; rec.recording = True")
            kernel.wait_until("len(stops) == 3", timeout_s=5 * TIME_FACTOR)
            assert kernel.json("rec.recording") is False
            assert 0.8 <= kernel.json("rec.elapsed_s") <= 1.0 + 0.5 * TIME_FACTOR
            print(
                f"{stack}: {len(during)} chunks during a running cell on {sorted({t[2] for t in during})}, "
                f"kernel stop -> on_stop {stop_delay_s * 1000:.0f} ms, corr {corr2:.3f}"
            )
    finally:
        browser.close()


def test_webrtc_recorder_delivers_the_take_after_stop(lab_server, playwright_instance, artifacts_dir):
    """WebRTCRecorder: click record, 3 s, click stop; on_audio once with PCM matching the mic."""
    name = "webrtc.ipynb"
    setup = SETUP.replace("Recorder(chunk_ms=100)", "WebRTCRecorder()")
    write_notebook(lab_server.root_dir, name, [setup])
    browser = launch_chromium(playwright_instance, fake_audio=FAKE_MIC_WAV)
    try:
        page = browser.new_page(viewport={"width": 1000, "height": 700})
        open_notebook(page, lab_server, name)
        button = page.locator(".widget-play .jupyter-button").first
        wait_for_widget(
            page, button, artifacts_dir / "recorder_browser_no_widget.png", timeout_ms=30_000 * TIME_FACTOR
        )
        with KernelClient(lab_server, lab_server.kernel_id(name)) as kernel:
            button.click()  # ipywebrtc's own button does not sync ``recording`` to the kernel
            page.wait_for_function(
                "() => document.querySelector('.widget-play .jupyter-button i').style.color === 'darkred'",
                timeout=5_000 * TIME_FACTOR,
            )
            time.sleep(TAKE_S)
            stop_clicked = time.time()
            button.click()
            kernel.wait_until("len(stops) == 1", timeout_s=10 * TIME_FACTOR)
            arrivals = kernel.json("arrivals")
            assert kernel.json("errors") == []
            assert len(arrivals) == 1, "ipywebrtc delivers one recording per take"
            assert arrivals[0][0] > stop_clicked, "nothing can arrive before the stop"
            corr = assert_matches_fake_mic(kernel_pcm(kernel), min_s=TAKE_S - 0.5)
            page.locator(".jp-OutputArea-output").first.screenshot(
                path=artifacts_dir / "webrtc_after_stop.png"
            )
            print(f"webrtc: after stop {arrivals[0][0] - stop_clicked:.2f} s, envelope corr {corr:.3f}")
    finally:
        browser.close()


def test_frontend_not_loaded_when_the_widget_javascript_is_missing(lab_server, playwright_instance):
    """A page without the widget's JavaScript (as after %pip install): FrontendNotLoaded in the kernel."""
    name = "no_frontend.ipynb"
    write_notebook(
        lab_server.root_dir, name, [SETUP.replace("Recorder(chunk_ms=100)", "Recorder(frontend_timeout_s=2)")]
    )
    browser = launch_chromium(playwright_instance, fake_audio=FAKE_MIC_WAV)
    try:
        page = browser.new_page()
        with lab_server.disabled_extensions("anywidget"):
            open_notebook(page, lab_server, name)
        with KernelClient(lab_server, lab_server.kernel_id(name)) as kernel:
            errors = kernel.wait_until("errors", timeout_s=10 * TIME_FACTOR)
            assert errors == [["FrontendNotLoaded", ERROR_MESSAGES["frontend-not-loaded"]]]
            assert "reload the page" in kernel.json("rec.error")
            assert kernel.json("rec.frontend_loaded") is False
        assert page.locator(".s2i-recorder").count() == 0
    finally:
        browser.close()


ERROR_CASES = {
    # code: (RecorderError subclass, browser kind, context options, host, init script)
    "permission-denied": ("MicrophonePermissionDenied", "no-fake-ui", {}, "127.0.0.1", None),
    "insecure-context": (
        "InsecureContextError",
        "no-fake-ui",
        {"permissions": ["microphone"]},
        INSECURE_HOST,
        None,
    ),
    "no-microphone": ("MicrophoneUnavailable", "no-device", {}, "127.0.0.1", None),
    # No browser switch breaks Web Audio, so this one stands in for a browser whose AudioContext fails.
    "audio-context": (
        "AudioContextError",
        "no-fake-ui",
        {"permissions": ["microphone"]},
        "127.0.0.1",
        "window.AudioContext = class { constructor() {"
        " throw new DOMException('no audio device', 'NotSupportedError'); } };",
    ),
}


@pytest.fixture(scope="module")
def error_browsers(playwright_instance):
    """Chromium without the fake-UI switch (mic refused unless granted) and one without a mic."""
    browsers = {
        "no-fake-ui": launch_chromium(
            playwright_instance, fake_audio=FAKE_MIC_WAV, fake_ui=False, host_rules=True
        ),
        "no-device": launch_chromium(playwright_instance, fake_device=False),
    }
    yield browsers
    for browser in browsers.values():
        browser.close()


@pytest.mark.parametrize("code", list(ERROR_CASES))
def test_error_shows_in_widget_and_reaches_kernel(code, lab_server, error_browsers, artifacts_dir):
    """Each error, provoked in the browser, shows its sentence in the widget and its class in the kernel."""
    class_name, browser_kind, context_options, host, init_script = ERROR_CASES[code]
    name = f"error_{code}.ipynb"
    write_notebook(lab_server.root_dir, name, [SETUP])
    context = error_browsers[browser_kind].new_context(
        viewport={"width": 1000, "height": 700}, **context_options
    )
    try:
        if init_script:
            context.add_init_script(init_script)
        page = context.new_page()
        open_notebook(page, lab_server, name, host=host)
        button = page.locator(".s2i-recorder-button")
        wait_for_widget(
            page, button, artifacts_dir / "recorder_browser_no_widget.png", timeout_ms=30_000 * TIME_FACTOR
        )
        with KernelClient(lab_server, lab_server.kernel_id(name)) as kernel:
            kernel.wait_until("rec.frontend_loaded", timeout_s=10 * TIME_FACTOR)
            button.click()
            message = page.locator(".s2i-recorder-error")
            message.wait_for(timeout=5_000 * TIME_FACTOR)
            assert message.inner_text() == ERROR_MESSAGES[code]
            errors = kernel.wait_until("errors", timeout_s=5 * TIME_FACTOR)
            assert errors == [[class_name, ERROR_MESSAGES[code]]]
            assert kernel.json("[rec.status, rec.error, rec.recording]") == [
                "error",
                ERROR_MESSAGES[code],
                False,
            ]
        page.locator(".s2i-recorder").screenshot(path=artifacts_dir / f"recorder_error_{code}.png")
    finally:
        context.close()
