"""The tab hidden while recording, in Chromium: the take ends cleanly when the audio stops under it.

What a phone browser does to a hidden tab (and Safari to a page whose microphone another app
took) is to suspend its AudioContext. Desktop Chromium keeps a capturing tab's audio running, so
the test does by hand what those browsers do: it reports the page hidden (``document.hidden`` and
``visibilityState`` overridden, ``visibilitychange`` dispatched), suspends the recorder's
AudioContext (found through a wrapper an init script puts around ``AudioContext``; the product's
code is unchanged), and, once the take has ended, freezes the page through the DevTools protocol
(``Page.setWebLifecycleState``) for the rest of the hidden time, as Chromium does to a tab left
in the background.

The minute is :data:`HIDDEN_S` (3 s, times the time factor): nothing in the recorder or the kernel
counts time while a tab is hidden (the take ends when the audio stops, not after a delay), so a
longer wait would test nothing more; what the wait does check is that nothing arrives, fails or
restarts meanwhile.
"""

from __future__ import annotations

import time

import pytest

from speech2image_nb.recorder.widget import SUSPENDED_NOTICE
from tests.conftest import TIME_FACTOR

from .harness import KernelClient, launch_chromium, open_notebook, run_cell, wait_for_widget, write_notebook
from .test_recorder_browser import FAKE_MIC_WAV, SETUP, assert_matches_fake_mic, kernel_pcm

pytestmark = pytest.mark.browser

HIDDEN_S = 3.0 * TIME_FACTOR  # "a minute" hidden (see the module docstring)
RECORD_S = 1.5  # speech recorded before the tab is hidden

KEEP_CONTEXTS = """\
(() => {
  const Native = window.AudioContext;
  window.__s2iContexts = [];
  window.AudioContext = class extends Native {
    constructor(...args) { super(...args); window.__s2iContexts.push(this); }
  };
})();
"""

HIDE = """\
async () => {
  Object.defineProperty(document, "hidden", { configurable: true, get: () => true });
  Object.defineProperty(document, "visibilityState", { configurable: true, get: () => "hidden" });
  document.dispatchEvent(new Event("visibilitychange"));
  await window.__s2iContexts[window.__s2iContexts.length - 1].suspend();
}
"""

SHOW = """\
() => {
  delete document.hidden;
  delete document.visibilityState;
  document.dispatchEvent(new Event("visibilitychange"));
  return document.visibilityState;
}
"""


def test_hidden_tab_ends_the_take_with_what_was_recorded_and_the_next_take_works(
    lab_server, playwright_instance, artifacts_dir
):
    """Tab hidden mid-take (audio suspended, page frozen): the take ends with its audio; the next records."""
    name = "hidden_tab.ipynb"
    write_notebook(lab_server.root_dir, name, [SETUP])
    browser = launch_chromium(playwright_instance, fake_audio=FAKE_MIC_WAV)
    try:
        context = browser.new_context(viewport={"width": 1000, "height": 700})
        context.add_init_script(KEEP_CONTEXTS)
        page = context.new_page()
        open_notebook(page, lab_server, name, run_all=False)
        run_cell(page, 0)
        button = page.locator(".s2i-recorder-button")
        wait_for_widget(
            page, button, artifacts_dir / "hidden_tab_browser_no_widget.png", timeout_ms=30_000 * TIME_FACTOR
        )
        cdp = context.new_cdp_session(page)
        with KernelClient(lab_server, lab_server.kernel_id(name)) as kernel:
            assert kernel.wait_until("rec.frontend_loaded", timeout_s=10 * TIME_FACTOR)

            # --- a take, then the tab hidden ------------------------------------------------
            button.click()
            page.wait_for_selector(".s2i-recorder[data-state=recording]", timeout=5_000 * TIME_FACTOR)
            time.sleep(RECORD_S)
            hidden_at = time.time()
            page.evaluate(HIDE)
            kernel.wait_until("len(stops) == 1", timeout_s=5 * TIME_FACTOR)
            stopped_s = kernel.json("stops[0]") - hidden_at
            chunks_then = kernel.json("len(arrivals)")
            cdp.send("Page.setWebLifecycleState", {"state": "frozen"})
            time.sleep(HIDDEN_S)
            assert kernel.json("[len(arrivals), len(stops), errors]") == [chunks_then, 1, []]
            assert kernel.json("[rec.recording, rec.stop_reason]") == [False, "suspended"]
            recorded_s = kernel.json("rec.elapsed_s")
            assert RECORD_S - 0.4 <= recorded_s <= RECORD_S + 1.0 * TIME_FACTOR, recorded_s
            assert_matches_fake_mic(kernel_pcm(kernel), min_s=RECORD_S - 0.4)

            # --- back: the widget says why, and the next take records -----------------------
            cdp.send("Page.setWebLifecycleState", {"state": "active"})
            assert page.evaluate(SHOW) == "visible"
            message = page.locator(".s2i-recorder-error")
            assert message.inner_text() == SUSPENDED_NOTICE
            page.locator(".s2i-recorder").screenshot(path=artifacts_dir / "recorder_hidden_tab_ended.png")
            button.click()
            page.wait_for_selector(".s2i-recorder[data-state=recording]", timeout=5_000 * TIME_FACTOR)
            assert message.is_hidden()
            time.sleep(2.0)
            button.click()
            kernel.wait_until("len(stops) == 2", timeout_s=5 * TIME_FACTOR)
            assert kernel.json("[rec.recording, rec.stop_reason, errors]") == [False, "", []]
            corr = assert_matches_fake_mic(kernel_pcm(kernel), min_s=1.6)
            print(
                f"hidden tab: take ended {stopped_s * 1000:.0f} ms after hiding, {recorded_s:.2f} s kept; "
                f"next take envelope corr {corr:.3f}"
            )
    finally:
        browser.close()
