"""The Colab stack in a real browser: classic Notebook 6.5 with Colab's pinned kernel and widgets.

The Jupyter server and its kernel run from ``.venv-colab`` (tests/requirements-colab.txt:
notebook 6.5.7, ipywidgets 7.7.1, ipykernel 6.17.1, jupyter_client 7.4.9, IPython 7.34.0,
anywidget 0.9.21; this package installed without torch). What needs torch or Whisper runs from
this environment as separate servers on 127.0.0.1, reached from the kernel as it would reach them
from Colab: the image server with the tiny random DALL-E engine (``S2I_SERVER_URL``) and the fake
AssemblyAI service, whose transcripts come from a real Whisper (``ASSEMBLYAI_STREAMING_URL``).

Without ``.venv-colab`` these tests fail and say how to make it (``scripts/make_colab_venv.sh``).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from tests.audio_encode import encode_with_pyav
from tests.conftest import DATA_DIR, TIME_FACTOR
from tests.fakes.assemblyai import FakeAssemblyAI

from .harness import (
    JupyterServer,
    KernelClient,
    choose_file,
    colab_venv,
    launch_chromium,
    open_notebook,
    run_cell,
    wait_for_widget,
    write_notebook,
)
from .test_panel_browser import IMAGE_COUNT, NOTEBOOK, decoded_images, record_once
from .test_recorder_browser import BUSY_CELL, FAKE_MIC_WAV, SETUP, TAKE_S, assert_matches_fake_mic, kernel_pcm

# The hang guard scales like every other limit: the first test here may start the image server.
pytestmark = [pytest.mark.browser, pytest.mark.timeout(int(300 * TIME_FACTOR))]

MS = 1000 * TIME_FACTOR
COLAB_VERSIONS = {"ipywidgets": "7.7.1", "ipykernel": "6.17.1", "IPython": "7.34.0", "anywidget": "0.9.21"}


def images_shown_js(count: int) -> str:
    """A page condition: the grid shows ``count`` finished images."""
    return f"() => document.querySelectorAll('.s2i-grid img.s2i-img:not(.s2i-preview)').length === {count}"


PANEL_STATE_JS = """() => ['.s2i-status', '.s2i-error-line', '.s2i-recorder-error', '.s2i-transcript']
  .map((sel) => `${sel}: ${Array.from(document.querySelectorAll(sel))
    .map((e) => e.innerText.trim()).join(' | ')}`)
  .concat([`prompt: ${(document.querySelector('.s2i-prompt textarea') || {}).value}`,
           `recorder: ${(document.querySelector('.s2i-recorder') || {dataset: {}}).dataset.state}`,
           `images: ${document.querySelectorAll('.s2i-grid img.s2i-img:not(.s2i-preview)').length}`,
           `grid html: ${(document.querySelector('.s2i-grid-box') || {innerHTML: ''}).innerHTML.length}`,
           `panels in the page: ${document.querySelectorAll('.s2i-panel').length}`])
  .join('\\n')"""
PANEL_STATE_PY = (
    "{'error_text': panel.error_text, 'takes': len(panel.controller.transcript._turns), "
    "'heard': panel.controller.transcript.session_text(), 'history': len(panel.controller.history), "
    "'idle': panel.wait_idle(0), 'grid_html_chars': len(panel.grid_html.value), "
    "'save_disabled': panel.save_button.disabled, 'seed': panel.seed_label.value}"
)


@contextlib.contextmanager
def panel_state_on_failure(page, kernel, screenshot):
    """A failed step says where the panel was: a screenshot, what the page shows, what the kernel holds."""
    try:
        yield
    except (AssertionError, PlaywrightTimeoutError) as error:
        page.screenshot(path=str(screenshot))
        shown = page.evaluate(PANEL_STATE_JS)
        try:
            held = kernel.json(PANEL_STATE_PY)
        except Exception as exc:  # a kernel that does not answer is part of the story
            held = f"(no answer: {type(exc).__name__}: {exc})"
        pytest.fail(f"{error}\n({screenshot.name}) the page shows:\n{shown}\nthe kernel holds: {held}")


@pytest.fixture(scope="module")
def colab_stack(browser_tmp, image_server_process):
    """The classic Notebook server from .venv-colab, configured to reach the image and speech servers."""
    venv = colab_venv()  # fails with the fix when the environment is missing
    with contextlib.ExitStack() as stack:
        fake = stack.enter_context(FakeAssemblyAI(api_key="fake-colab-key", end_silence_ms=500))
        env = stack.enter_context(pytest.MonkeyPatch.context())
        env.setenv("ASSEMBLYAI_API_KEY", "fake-colab-key")
        env.setenv("ASSEMBLYAI_STREAMING_URL", fake.url)
        env.setenv("S2I_SERVER_URL", image_server_process.url)
        env.setenv("S2I_NO_PROMPT", "1")
        env.setenv("HF_HUB_OFFLINE", "1")
        env.delenv("S2I_SERVER_TOKEN", raising=False)
        root = browser_tmp / "classic"
        root.mkdir()
        shutil.copy(NOTEBOOK, root / NOTEBOOK.name)
        server = stack.enter_context(JupyterServer("classic", root_dir=root, venv=venv))
        yield server


def test_recorder_records_from_its_button_and_chunks_wait_for_the_running_cell(
    colab_stack, playwright_instance, artifacts_dir
):
    """Classic NB 6.5, ipykernel 6: the button records the mic; chunks sent during a cell wait for its end."""
    name = "record_classic.ipynb"
    write_notebook(colab_stack.root_dir, name, [SETUP, BUSY_CELL])
    browser = launch_chromium(playwright_instance, fake_audio=FAKE_MIC_WAV)
    try:
        page = browser.new_page(viewport={"width": 1000, "height": 700})
        open_notebook(page, colab_stack, name, run_all=False)
        run_cell(page, 0)
        widget = page.locator(".s2i-recorder")
        button = page.locator(".s2i-recorder-button")
        wait_for_widget(page, button, artifacts_dir / "colab_record_no_button.png", timeout_ms=30 * MS)
        with KernelClient(colab_stack, colab_stack.kernel_id(name)) as kernel:
            versions = kernel.json(
                "{m: __import__(m).__version__ for m in ('ipywidgets', 'ipykernel', 'IPython', 'anywidget')}"
            )
            assert versions == COLAB_VERSIONS
            assert kernel.json("__import__('importlib.util').util.find_spec('torch') is None")
            assert kernel.wait_until("rec.frontend_loaded", timeout_s=10 * TIME_FACTOR)
            widget.screenshot(path=artifacts_dir / "recorder_idle_classic.png")

            # --- a take started and stopped with the widget's own button --------------------------
            button.click()
            page.wait_for_selector(".s2i-recorder[data-state=recording]", timeout=5 * MS)
            time.sleep(TAKE_S / 2)
            widget.screenshot(path=artifacts_dir / "recorder_recording_classic.png")
            time.sleep(TAKE_S / 2)
            stop_clicked = time.time()
            button.click()
            kernel.wait_until("len(stops) == 1", timeout_s=10 * TIME_FACTOR)
            arrivals = kernel.json("arrivals")
            assert kernel.json("errors") == []
            on_time = sum(1 for t, *_ in arrivals if t < stop_clicked)
            assert len(arrivals) >= 25, f"{len(arrivals)} chunks for a {TAKE_S} s take"
            assert on_time / len(arrivals) >= 0.8, f"{on_time}/{len(arrivals)} chunks before the stop"
            corr = assert_matches_fake_mic(kernel_pcm(kernel), min_s=TAKE_S - 0.3)

            # --- started by a cell that keeps running: ipykernel 6 holds the chunks until it ends ---
            run_cell(page, 1)
            during = kernel.wait_until("'during' in dir() and during", timeout_s=15 * TIME_FACTOR)
            assert during == [[0, 0, "none"]], f"{len(during)} chunks arrived while the cell ran"
            after = kernel.wait_until("len(arrivals) >= 15 and len(arrivals)", timeout_s=10 * TIME_FACTOR)
            kernel.execute("rec.recording = False")
            kernel.wait_until("len(stops) == 2", timeout_s=10 * TIME_FACTOR)
            assert kernel.json("errors") == [] and kernel.json("rec.recording") is False
            corr2 = assert_matches_fake_mic(kernel_pcm(kernel), min_s=1.5)
            print(
                f"classic: {len(arrivals)} chunks ({on_time} before stop), corr {corr:.3f}; busy cell: "
                f"0 chunks during it, {after} once it ended, corr {corr2:.3f}"
            )
    finally:
        browser.close()


def test_tutorial_panel_speech_to_images_then_an_upload_hands_free(
    colab_stack, playwright_instance, browser_tmp, artifacts_dir
):
    """Classic NB 6.5: record -> transcript -> Generate -> images; then an m4a upload draws hands-free."""
    browser = launch_chromium(playwright_instance, fake_audio=FAKE_MIC_WAV)
    try:
        page = browser.new_page(viewport={"width": 1100, "height": 1000})
        open_notebook(page, colab_stack, NOTEBOOK.name)
        panel = page.locator(".s2i-panel")
        wait_for_widget(
            page,
            page.locator(".s2i-recorder-button"),
            artifacts_dir / "colab_panel_no_button.png",
            timeout_ms=60 * MS,
        )
        with KernelClient(colab_stack, colab_stack.kernel_id(NOTEBOOK.name)) as kernel:
            assert kernel.wait_until("panel.wait_ready(0)", timeout_s=60 * TIME_FACTOR), kernel.json(
                "panel.error_text"
            )
            # the image server runs in its own process
            assert kernel.json("panel.session._images.is_embedded") is False
            kernel.execute(f"panel.image_count_slider.value = {IMAGE_COUNT}")
            panel.scroll_into_view_if_needed()
            panel.screenshot(path=artifacts_dir / "panel_ready_classic.png")
            with panel_state_on_failure(page, kernel, artifacts_dir / "colab_panel_failed.png"):
                # --- speech -> transcript -> prompt -> Generate -> images ---------------------------------
                record_once(page, kernel)
                assert "snow" in page.locator(".s2i-transcript").inner_text().lower()
                assert "snow" in page.locator(".s2i-prompt textarea").input_value().lower()
                page.locator(".s2i-generate").click()
                page.wait_for_function(images_shown_js(IMAGE_COUNT), timeout=60 * MS)
                images = decoded_images(page)
                assert len(images) == IMAGE_COUNT and all(im.size[0] >= 64 for im in images)
                assert kernel.json("panel.error_text") == ""
                panel.screenshot(path=artifacts_dir / "panel_images_classic.png")

                # --- an upload (ipywidgets 7's FileUpload), hands-free: it draws itself -----------------
                page.locator(".s2i-hands-free").click()
                assert kernel.wait_until("panel.controller.hands_free", timeout_s=5 * TIME_FACTOR)
                m4a = browser_tmp / "astronaut.m4a"
                m4a.write_bytes(encode_with_pyav(DATA_DIR / "piper_02.wav", "ipod", "aac"))
                choose_file(page, ".s2i-upload", m4a, timeout_s=10 * TIME_FACTOR)
                assert kernel.wait_until(
                    "len(panel.controller.history) >= 2 and panel.wait_idle(0)", timeout_s=60 * TIME_FACTOR
                ), kernel.json("panel.error_text")
                page.wait_for_function(images_shown_js(IMAGE_COUNT), timeout=30 * MS)
                transcript = page.locator(".s2i-transcript").inner_text().lower()
                assert "astronaut" in transcript and "moon" in transcript, transcript
                assert "moon" in page.locator(".s2i-prompt textarea").input_value().lower()
                assert kernel.json("panel.error_text") == ""
                panel.screenshot(path=artifacts_dir / "panel_upload_classic.png")
    finally:
        browser.close()


#: A panel alone, as the panel notebook's last code cell makes it.
PANEL_CELL = "from speech2image_nb import app\npanel = app()"
#: anywidget's nbextension as a page has it before that extension has run (or when it never does):
#: the page's module loader does not know where ``anywidget`` lives.
EXTENSION_NOT_RUN = "define(function () { return {load_ipython_extension: function () {}}; });"


@contextlib.contextmanager
def panel_notebook_page(colab_stack, playwright_instance, name, *, routes=(), socket_routes=()):
    """A page of a new notebook whose one cell shows a panel, with ``routes`` and ``socket_routes``
    ((pattern, handler) for requests and WebSockets) set before it loads; the browser closes after."""
    write_notebook(colab_stack.root_dir, name, [PANEL_CELL])
    browser = launch_chromium(playwright_instance)
    try:
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        for pattern, handler in routes:
            page.route(pattern, handler)
        for pattern, handler in socket_routes:
            page.route_web_socket(pattern, handler)
        yield page
    finally:
        browser.close()


def assert_the_panel_shows(page, screenshot):
    """The panel's recorder button shows, and no "did not appear" line."""
    wait_for_widget(page, page.locator(".s2i-panel .s2i-recorder-button"), screenshot, timeout_ms=60 * MS)
    assert page.locator(".s2i-not-shown").count() == 0


def test_the_panel_shows_when_anywidgets_extension_has_not_run_yet(
    colab_stack, playwright_instance, artifacts_dir
):
    """Classic NB 6.5: the panel shows even when its cell runs before anywidget's extension has run."""
    not_run = (
        "**/nbextensions/anywidget/extension.js*",
        lambda route: route.fulfill(status=200, content_type="text/javascript", body=EXTENSION_NOT_RUN),
    )
    name = "extension_not_run.ipynb"
    with panel_notebook_page(colab_stack, playwright_instance, name, routes=[not_run]) as page:
        open_notebook(page, colab_stack, name)
        assert_the_panel_shows(page, artifacts_dir / "colab_extension_not_run.png")


def test_a_panel_that_cannot_show_says_what_to_do_in_its_cell(
    colab_stack, playwright_instance, artifacts_dir
):
    """Classic NB 6.5: when the recorder's front end cannot load, the blank cell says: reload, run again."""
    from speech2image_nb.frontend import PANEL_NOT_SHOWN

    missing = ("**/nbextensions/anywidget/index.js*", lambda route: route.fulfill(status=404, body=""))
    name = "front_end_missing.ipynb"
    with panel_notebook_page(colab_stack, playwright_instance, name, routes=[missing]) as page:
        open_notebook(page, colab_stack, name)
        line = page.locator(".s2i-not-shown")
        wait_for_widget(page, line, artifacts_dir / "colab_not_shown_line.png", timeout_ms=60 * MS)
        page.screenshot(path=str(artifacts_dir / "colab_not_shown_line.png"))
        assert line.inner_text().strip() == PANEL_NOT_SHOWN
        assert page.locator(".s2i-panel").count() == 0


def run_all_once_the_widget_manager_exists(colab_stack, page, name):
    """Open the notebook and run every cell the moment its widget manager exists (as *Restart & Run
    All* does): the manager's start-up question to the kernel then waits behind the cells."""
    page.goto(colab_stack.notebook_url(name), timeout=60 * MS)
    page.wait_for_function(
        "() => !!(window.Jupyter && Jupyter.notebook && Jupyter.notebook.kernel"
        " && Jupyter.notebook.kernel.widget_manager)",
        timeout=60 * MS,
        polling=20,
    )
    page.evaluate("() => window.Jupyter.notebook.execute_all_cells()")


def test_run_all_as_soon_as_the_page_has_a_widget_manager_shows_the_panel(
    colab_stack, playwright_instance, artifacts_dir
):
    """Classic NB 6.5: cells run the moment the widget manager exists (Restart & Run All) show the panel.

    The manager, once it has asked the kernel for the widgets that already exist, re-renders every
    widget output and hides one displayed in between; the panel's cell shows it again.
    """
    name = "run_all_early.ipynb"
    with panel_notebook_page(colab_stack, playwright_instance, name) as page:
        run_all_once_the_widget_manager_exists(colab_stack, page, name)
        assert_the_panel_shows(page, artifacts_dir / "colab_run_all_early.png")


def answer_overtakes_the_widgets(ws):
    """A kernel channel on which the answer to the widget manager's start-up question ("which
    widgets exist?") overtakes the messages that create them. The page's question waits until the
    kernel has opened its first widget (so the answer lists the panel's widgets); from that
    comm_open on, the kernel's iopub messages wait until the answer has reached the page, then
    follow in order. A kernel whose IOPub thread lags behind its shell reply does this by itself."""
    server = ws.connect_to_server()
    held_question: list = []
    held: list = []
    state = {"opened": False, "holding": False}

    def kind_of(message):
        if not isinstance(message, str):  # a binary frame carries buffers: iopub, never a shell reply
            return "iopub", "", {}
        msg = json.loads(message)
        return msg.get("channel"), msg["header"].get("msg_type"), msg.get("content", {})

    def from_page(message):
        if kind_of(message)[1] == "comm_info_request" and not state["opened"]:
            held_question.append(message)
        else:
            server.send(message)

    def from_kernel(message):
        channel, kind, content = kind_of(message)
        if kind == "comm_open" and content.get("target_name") == "jupyter.widget" and not state["opened"]:
            state["opened"] = state["holding"] = True
            for question in held_question:
                server.send(question)
            held_question.clear()
        if state["holding"] and channel == "iopub":
            held.append(message)
            return
        ws.send(message)
        if kind == "comm_info_reply" and state["holding"]:
            state["holding"] = False
            for message in held:
                ws.send(message)
            held.clear()

    ws.on_message(from_page)
    server.on_message(from_kernel)


#: Gives every text the panel shows (HTML, labels, text boxes, button captions, the recorder's
#: error line) a token ``s2iprobe<n>x`` from the kernel; returns how many.
PROBE_DEF = """
def _s2i_probe(panel):
    import ipywidgets as w
    seen, todo, count = set(), [panel], 0
    while todo:
        widget = todo.pop()
        if id(widget) in seen:
            continue
        seen.add(id(widget))
        todo.extend(getattr(widget, "children", ()))
        token = f"s2iprobe{count}x"
        if isinstance(widget, (w.HTML, w.Label, w.Text, w.Textarea)):
            widget.value = token
        elif isinstance(widget, w.Button):
            widget.description = token
        elif widget is panel.recorder:
            widget.error = token
        else:
            continue
        count += 1
    return count
"""
PROBES_SHOWN_JS = """(count) => {
  const panel = document.querySelector('.s2i-panel');
  if (!panel) return false;
  const text = panel.innerText + ' ' + Array.from(panel.querySelectorAll('input, textarea'))
    .map((e) => e.value).join(' ');
  return Array.from({length: count}, (_, i) => `s2iprobe${i}x`).every((token) => text.includes(token));
}"""
#: Widget models whose kernel messages the page delivers to another model of the same id (by name).
MISROUTED_JS = """async () => {
  const kernel = Jupyter.notebook.kernel, wm = kernel.widget_manager, cm = kernel.comm_manager;
  const misrouted = [];
  for (const id of Object.keys(wm._models)) {
    const model = await wm._models[id];
    if ((await cm.comms[id]) !== model.comm) misrouted.push(`${model.name} ${id}`);
  }
  return misrouted;
}"""


def test_every_widget_follows_the_kernel_when_the_managers_start_up_answer_overtakes_them(
    colab_stack, playwright_instance, artifacts_dir
):
    """Classic NB 6.5: when the widget manager's start-up answer arrives before the panel's widgets,
    it opens a second channel for some of them; the panel's widgets still show the kernel's changes.

    Without the panel's repair the recorder (and, with other timings, the image grid and the Save
    button) keeps receiving nothing: an empty grid after Generate, a Save button that stays grey.
    """
    name = "answer_overtakes.ipynb"
    overtake = ("**/api/kernels/*/channels*", answer_overtakes_the_widgets)
    with panel_notebook_page(colab_stack, playwright_instance, name, socket_routes=[overtake]) as page:
        run_all_once_the_widget_manager_exists(colab_stack, page, name)
        assert_the_panel_shows(page, artifacts_dir / "colab_answer_overtakes.png")
        with KernelClient(colab_stack, colab_stack.kernel_id(name)) as kernel:
            assert kernel.wait_until("panel.wait_ready(0)", timeout_s=60 * TIME_FACTOR)
            kernel.execute(PROBE_DEF)
            count = kernel.json("_s2i_probe(panel)")
            assert count >= 10, f"{count} texts in the panel"
            try:
                page.wait_for_function(PROBES_SHOWN_JS, arg=count, timeout=10 * MS)
            except PlaywrightTimeoutError:
                page.screenshot(path=str(artifacts_dir / "colab_answer_overtakes_stale.png"))
                raise
            wait_until_none_is_misrouted(page, timeout_s=2 * TIME_FACTOR)


#: Has the page's widget manager hand out a second model for widget ``id``, while the kernel's
#: messages still reach the model the panel draws: one state the manager's start-up answer can
#: leave when it overtakes the panel's widgets, and the one the panel's repair used to leave in
#: place (it looked only at where messages go). Resolves to true when the copy is in place.
REGISTER_A_COPY_JS = """async (id) => {
  const wm = Jupyter.notebook.kernel.widget_manager;
  const drawn = await wm._models[id];
  const Comm = await new Promise((resolve) => requirejs(['services/kernels/comm'], (m) => resolve(m.Comm)));
  const copy = await wm.new_model({model_name: drawn.name, model_module: drawn.module,
      model_module_version: drawn.get('_model_module_version'), model_id: id,
      comm: new Comm('jupyter.widget', id)}, drawn.serialize(drawn.get_state(false)));
  return copy !== drawn && (await wm._models[id]) === copy;
}"""
BUTTONS_WITH_JS = """(text) => Array.from(document.querySelectorAll('.s2i-panel button'))
  .filter((b) => b.innerText.trim() === text).length"""


def wait_until_none_is_misrouted(page, *, timeout_s):
    """Poll :data:`MISROUTED_JS` (``page.wait_for_function`` does not wait for an async function's
    promise: it counts the promise itself as true)."""
    deadline = time.monotonic() + timeout_s
    while misrouted := page.evaluate(MISROUTED_JS):
        assert time.monotonic() < deadline, f"still routed to another model: {misrouted}"
        time.sleep(0.1)


def test_a_widget_the_kernel_places_again_shows_the_model_that_follows_the_kernel(
    colab_stack, playwright_instance, artifacts_dir
):
    """Classic NB 6.5: when the widget manager holds a second model of one of the panel's widgets,
    the panel makes the model it draws the manager's again, so a box the kernel adds later shows that
    widget as it is (not a copy that never changes), and both places follow the kernel."""
    name = "copy_of_a_model.ipynb"
    with panel_notebook_page(colab_stack, playwright_instance, name) as page:
        open_notebook(page, colab_stack, name)
        assert_the_panel_shows(page, artifacts_dir / "colab_copy_of_a_model.png")
        with KernelClient(colab_stack, colab_stack.kernel_id(name)) as kernel:
            assert kernel.wait_until("panel.wait_ready(0)", timeout_s=60 * TIME_FACTOR)
            assert page.evaluate(MISROUTED_JS) == []
            assert page.evaluate(REGISTER_A_COPY_JS, kernel.json("panel.save_button.model_id"))
            wait_until_none_is_misrouted(page, timeout_s=5 * TIME_FACTOR)
            kernel.execute(
                "import ipywidgets as _w\n"
                "panel.children = (*panel.children, _w.HBox([panel.save_button]))\n"
                "panel.save_button.description = 's2imoved'"
            )
            try:
                page.wait_for_function(f"() => ({BUTTONS_WITH_JS})('s2imoved') === 2", timeout=10 * MS)
            except PlaywrightTimeoutError:
                page.screenshot(path=str(artifacts_dir / "colab_copy_of_a_model_stale.png"))
                raise
