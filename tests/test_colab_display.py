"""Colab's display path in a real kernel: the widget manager is on before the panel shows, and says so.

A kernel (nbclient) imports a stand-in of ``google.colab`` (``tests/fakes/colab_stub``) as Colab's
kernel does at start-up. Its ``enable_custom_widget_manager`` records each call, and its display
hook tags widget displays exactly as Colab's own hook does; a second hook logs every display, so
the order of calls and displays is known. The same stub on the path but *not* imported stands for
"not Colab": then nothing may call it, import it, or tag a display.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from tests.conftest import TIME_FACTOR

ROOT = Path(__file__).parents[1]
STUB_DIR = Path(__file__).parent / "fakes" / "colab_stub"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
MARKER = "@@S2I-COLAB@@"

# Two panels (app() and Panel shown as a cell's value) whose parts fail fast and quietly: no
# server answers at port 9, and the Whisper model folder does not exist.
PANELS = """\
from speech2image_nb import Panel, app
from speech2image_nb.config import Settings
options = dict(server_url="http://127.0.0.1:9", whisper_model="/nonexistent-whisper-model")
first = app(**options)
"""
SECOND = """\
second = Panel(settings=Settings.resolve(**options), start=False)
second"""
REPORT = f"""\
import json, sys
stub = sys.modules.get("google.colab.output")
print({MARKER!r} + json.dumps({{
    "events": stub.events if stub else None,
    "imported": sorted(m for m in sys.modules if m.startswith("google.colab")),
}}))"""


def run_kernel(cells, monkeypatch):
    """Run ``cells`` in a fresh kernel with the stub on its path; return (outputs, report)."""
    path = os.pathsep.join([str(ROOT), str(STUB_DIR), os.environ.get("PYTHONPATH", "")])
    monkeypatch.setenv("PYTHONPATH", path)
    monkeypatch.delenv("ASSEMBLYAI_API_KEY", raising=False)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in [*cells, REPORT]]
    NotebookClient(nb, timeout=int(90 * TIME_FACTOR), kernel_name="python3").execute()
    outputs = [out for cell in nb.cells for out in cell.outputs]
    errors = [out for out in outputs if out.output_type == "error"]
    assert not errors, errors
    for out in outputs:
        for line in out.get("text", "").splitlines():
            if line.startswith(MARKER):
                return outputs, json.loads(line[len(MARKER) :])
    raise AssertionError(f"no report in {outputs}")


def widget_displays(outputs):
    """The outputs that show a widget (display_data and execute_result)."""
    return [out for out in outputs if WIDGET_MIME in out.get("data", {})]


def manager_url(output):
    return output.get("metadata", {}).get(WIDGET_MIME, {}).get("colab", {}).get("custom_widget_manager", {})


def test_in_colab_the_manager_is_enabled_once_before_the_first_panel_shows(monkeypatch):
    """Stub imported: one enable from the package, before any display; every panel display has the URL."""
    outputs, report = run_kernel(["import google.colab", PANELS, SECOND], monkeypatch)
    events = report["events"]
    enables = [e for e in events if e["event"] == "enable"]
    ours = [e for e in enables if e["caller"].startswith("speech2image_nb")]
    assert ours == [{"event": "enable", "caller": "speech2image_nb.frontend"}], events
    assert events[0] == ours[0], "the package's call comes before anything else"
    first_display = next(i for i, e in enumerate(events) if e["event"] == "display")
    assert all(events.index(e) < first_display for e in enables), events
    shown = widget_displays(outputs)
    assert [out.output_type for out in shown] == ["display_data", "display_data"]  # both panels
    urls = [manager_url(out).get("url", "") for out in shown]
    assert all(url.endswith("/colab-cdn-widget-manager/stub/manager.min.js") for url in urls), urls


def test_outside_colab_nothing_is_called_imported_or_tagged(monkeypatch):
    """Stub on the path but not imported (not Colab): no call, no google.colab import, no URL."""
    outputs, report = run_kernel([PANELS, SECOND], monkeypatch)
    assert report == {"events": None, "imported": []}
    shown = widget_displays(outputs)
    assert len(shown) == 2 and not any(manager_url(out) for out in shown)
