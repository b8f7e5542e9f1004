"""Front-end detection (Colab, VS Code, Jupyter), the Colab widget-manager call, the error texts each gets."""

from __future__ import annotations

import sys
import types

import pytest

from speech2image_nb import frontend
from speech2image_nb.frontend import VSCODE_NO_MICROPHONE, detect_frontend, enable_colab_widgets
from speech2image_nb.recorder.widget import ERROR_MESSAGES, recorder_error


def test_detect_frontend_reads_the_signs_each_front_end_leaves():
    """google.colab imported -> colab; VS Code's notebook variable or its launcher's env -> vscode."""
    none: dict[str, str] = {}
    assert detect_frontend(modules={"google.colab": object()}, environ=none, user_ns=none) == "colab"
    vsc_ns = {"__vsc_ipynb_file__": "/home/t/lesson.ipynb"}
    assert detect_frontend(modules=none, environ=none, user_ns=vsc_ns) == "vscode"
    vsc_env = {"VSCODE_PID": "4242", "PYDEVD_IPYTHON_COMPATIBLE_DEBUGGING": "1"}
    assert detect_frontend(modules=none, environ=vsc_env, user_ns=none) == "vscode"
    # Signs every Jupyter kernel has, or only half of VS Code's, are not VS Code.
    jupyter_env = {"JPY_PARENT_PID": "77", "JPY_SESSION_NAME": "/n.ipynb", "VSCODE_PID": "4242"}
    assert detect_frontend(modules=none, environ=jupyter_env, user_ns=none) == "jupyter"
    assert detect_frontend(modules={"google": object()}, environ=none, user_ns=none) == "jupyter"


class ColabOutputStub(types.ModuleType):
    """``google.colab.output`` as far as the call goes: counts enable calls (optionally failing)."""

    def __init__(self, *, fail: bool = False) -> None:
        super().__init__("google.colab.output")
        self.calls: list[str] = []
        self.fail = fail
        self._widgets = types.SimpleNamespace(_installed_url=None)  # read by anywidget

    def enable_custom_widget_manager(self) -> None:
        self.calls.append(sys._getframe(1).f_globals.get("__name__", ""))
        if self.fail:
            raise ValueError("Unknown widgets version")
        self._widgets._installed_url = "https://example.invalid/manager.min.js"


@pytest.fixture
def colab(monkeypatch):
    """This process looks like a Colab kernel (stub modules); the once-per-kernel memory is reset."""
    output = ColabOutputStub()
    colab_pkg = types.ModuleType("google.colab")
    colab_pkg.output = output
    monkeypatch.setitem(sys.modules, "google.colab", colab_pkg)
    monkeypatch.setitem(sys.modules, "google.colab.output", output)
    frontend._enable_custom_widget_manager.cache_clear()
    yield output
    frontend._enable_custom_widget_manager.cache_clear()


def test_outside_colab_nothing_is_called_or_imported(monkeypatch):
    """Not in Colab: enable_colab_widgets() does nothing and imports no google.colab."""
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    frontend._enable_custom_widget_manager.cache_clear()
    assert enable_colab_widgets() is False
    assert "google.colab" not in sys.modules and "google.colab.output" not in sys.modules


def test_in_colab_the_manager_is_enabled_once_per_kernel(colab):
    """Three calls, one enable; a runtime that refuses is logged, not raised, and retried."""
    assert [enable_colab_widgets() for _ in range(3)] == [True, True, True]
    assert colab.calls == ["speech2image_nb.frontend"]
    frontend._enable_custom_widget_manager.cache_clear()
    colab.fail = True
    assert enable_colab_widgets() is False
    colab.fail = False
    assert enable_colab_widgets() is True and len(colab.calls) == 3


def test_recorder_enables_colab_widgets_before_its_own_construction(colab):
    """Recorder() in Colab calls the manager switch first, before anywidget builds the widget."""
    from speech2image_nb.recorder.widget import Recorder

    recorder = Recorder()
    try:
        assert colab.calls[0] == "speech2image_nb.frontend"
        assert colab.calls[1:] in ([], ["anywidget._util"])  # anywidget's own call, if any, comes after
        assert recorder.frontend == "colab"
    finally:
        recorder.close()


def test_panel_enables_colab_widgets_before_building_any_widget(colab, monkeypatch):
    """Panel() in Colab enables the manager before its first widget (the recorder) exists."""
    from speech2image_nb.config import Settings
    from speech2image_nb.ui.panel import Panel
    from tests.ui.fakes import FakeImageService, ScriptedTranscriber

    created = []
    import ipywidgets

    original = ipywidgets.Widget.open

    def open_and_note(self):
        created.append((type(self).__name__, len(colab.calls)))
        original(self)

    monkeypatch.setattr(ipywidgets.Widget, "open", open_and_note)
    panel = Panel(
        settings=Settings.resolve(environ={}, colab_secret=lambda n: None),
        transcriber=ScriptedTranscriber(),
        image_service=FakeImageService(),
        start=False,
    )
    try:
        assert created and all(calls >= 1 for _name, calls in created), created
        assert colab.calls[0] == "speech2image_nb.frontend" and panel.frontend == "colab"
    finally:
        panel.close()


@pytest.mark.parametrize("code", list(ERROR_MESSAGES))
def test_each_front_end_gets_a_fix_that_works_there(code):
    """Jupyter keeps the browser's text; Colab never says "reload the page"; VS Code says it has no mic."""
    assert str(recorder_error(code, ERROR_MESSAGES[code])) == ERROR_MESSAGES[code]
    colab_text = str(recorder_error(code, ERROR_MESSAGES[code], frontend="colab"))
    assert "reload the page" not in colab_text
    if code == "frontend-not-loaded":
        assert "run this cell again" in colab_text
    assert str(recorder_error(code, ERROR_MESSAGES[code], frontend="vscode")) == VSCODE_NO_MICROPHONE


def test_in_colab_a_browser_error_shows_colabs_fix_in_the_widget(colab, monkeypatch):
    """The browser reports audio-context with Jupyter's "reload the page": the widget shows Colab's fix."""
    import comm

    from speech2image_nb.recorder.widget import FRONTEND_MESSAGES, Recorder
    from tests.recorder.relay import CommRelay

    relay = CommRelay()
    monkeypatch.setattr(comm, "create_comm", relay.create_comm)
    recorder = Recorder()
    errors = []
    recorder.on_error(errors.append)
    try:
        relay.front_end_sends(
            recorder, {"kind": "error", "code": "audio-context", "message": ERROR_MESSAGES["audio-context"]}
        )
        expected = FRONTEND_MESSAGES["colab"]["audio-context"]
        assert recorder.error == expected and str(errors[0]) == expected
        # ... and the kernel sends that text to the widget's view, which shows ``error``
        assert any(update.get("error") == expected for update in relay.updates(recorder))
    finally:
        recorder.close()
