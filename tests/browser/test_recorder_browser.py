"""The streaming Recorder in JupyterLab 4 and Notebook 7 with Chromium's fake microphone."""

from __future__ import annotations

import base64
import time

import numpy as np
import pytest

from tests.conftest import DATA_DIR, TIME_FACTOR

from .audio_match import best_envelope_match, read_wav_mono, rms_envelope
from .harness import KernelClient, launch_chromium, open_notebook, write_notebook

pytestmark = pytest.mark.browser

FAKE_MIC_WAV = DATA_DIR / "piper_01.wav"
TAKE_S = 3.0
SETUP = """\
import time
from speech2image_nb.recorder import Recorder
rec = Recorder(chunk_ms=100)
arrivals, stops, errors = [], [], []
rec.on_audio(lambda b: arrivals.append((time.time(), len(b))))
rec.on_stop(lambda: stops.append(time.time()))
rec.on_error(lambda e: errors.append((type(e).__name__, str(e))))
rec"""


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
    write_notebook(jupyter_server.root_dir, name, [SETUP])
    browser = launch_chromium(playwright_instance, fake_audio=FAKE_MIC_WAV)
    try:
        page = browser.new_page(viewport={"width": 1000, "height": 700})
        open_notebook(page, jupyter_server, name)
        widget = page.locator(".s2i-recorder")
        button = page.locator(".s2i-recorder-button")
        button.wait_for(timeout=30_000 * TIME_FACTOR)
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
            on_time = sum(1 for t, _ in arrivals if t < stop_clicked)
            assert len(arrivals) >= 25, f"{len(arrivals)} chunks for a {TAKE_S} s take"
            assert on_time / len(arrivals) >= 0.8, f"{on_time}/{len(arrivals)} chunks before the stop"
            corr = assert_matches_fake_mic(kernel_pcm(kernel), min_s=TAKE_S - 0.3)
            print(f"{stack}: {len(arrivals)} chunks, {on_time} before stop, envelope corr {corr:.3f}")

            # --- a take started and stopped from the kernel -----------------------------------
            kernel.execute("rec.recording = True")
            kernel.wait_until("rec.status == 'recording'", timeout_s=5 * TIME_FACTOR)
            time.sleep(2.0)
            kernel.execute("arrivals.clear(); t_stop = time.time(); rec.recording = False")
            kernel.wait_until("len(stops) == 2", timeout_s=5 * TIME_FACTOR)
            stop_delay_s = kernel.json("stops[-1] - t_stop")
            last_chunk_s = kernel.json("arrivals[-1][0] - t_stop")
            assert kernel.json("errors") == []
            assert 0 <= stop_delay_s <= 0.5, f"on_stop {stop_delay_s:.3f} s after the kernel's stop"
            assert last_chunk_s <= stop_delay_s
            assert kernel.json("rec.recording") is False
            corr2 = assert_matches_fake_mic(kernel_pcm(kernel), min_s=1.5)
            print(f"{stack}: kernel stop -> on_stop {stop_delay_s * 1000:.0f} ms, corr {corr2:.3f}")
    finally:
        browser.close()
