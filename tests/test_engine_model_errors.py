"""A missing model fails at once with one message that names the setting to set (S2I_MODEL_DIR for
the image engines, S2I_WHISPER_MODEL for Whisper): offline, with a model folder that lacks the files,
and with the network unreachable (the hub endpoint a closed local port, or one that accepts and never
answers, with HF_HUB_OFFLINE unset), never a hang."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from speech2image_nb.errors import ModelNotAvailable
from speech2image_nb.hub import PROBE_TIMEOUT_S
from speech2image_nb.server.engines import create_engine
from tests.conftest import TIME_FACTOR

ROOT = Path(__file__).parents[1]

#: Loads the engine named in argv[1] twice against HF_ENDPOINT and prints what happened, as JSON.
LOAD_PROBE = r"""
import json, sys, time
from speech2image_nb.config import Settings
from speech2image_nb.server.engines import create_engine
from speech2image_nb.speech.whisper import WhisperTranscriber
if sys.argv[1] == "whisper":
    settings = Settings.resolve(environ={}, colab_secret=lambda name: None)
    engine = WhisperTranscriber(settings=settings, model="base.en")
else:
    engine = create_engine(sys.argv[1], device="cpu")
outcomes = []
for _ in range(2):  # the second load is timed: the first one also imports torch and the engine's modules
    started = time.monotonic()
    try:
        engine.load()
        outcome = {"error": None, "message": ""}
    except Exception as exc:
        outcome = {"error": type(exc).__name__, "message": str(exc)}
    outcome["load_s"] = time.monotonic() - started
    outcomes.append(outcome)
print(json.dumps(outcomes))
"""


@contextmanager
def closed_port() -> Iterator[int]:
    """A local port that nothing listens on (bound, then released: connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    yield port


@contextmanager
def silent_port() -> Iterator[int]:
    """A local port that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def load_against(engine: str, port: int, home: Path) -> list[dict[str, object]]:
    """Run LOAD_PROBE in a fresh interpreter with the hub at 127.0.0.1:port and an empty cache."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HOME=str(home), PYTHONPATH=str(ROOT))
    env.pop("S2I_MODEL_DIR", None)
    result = subprocess.run(
        [sys.executable, "-c", LOAD_PROBE, engine],
        env=env,
        capture_output=True,
        text=True,
        timeout=180 * TIME_FACTOR,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("engine", "endpoint", "setting"),
    [
        ("dalle-mini", closed_port, "S2I_MODEL_DIR"),
        ("sd-turbo", closed_port, "S2I_MODEL_DIR"),
        ("whisper", closed_port, "S2I_WHISPER_MODEL"),
        ("dalle-mini", silent_port, "S2I_MODEL_DIR"),
    ],
    ids=["dalle-mini-refused", "sd-turbo-refused", "whisper-refused", "dalle-mini-silent"],
)
def test_unreachable_hub_fails_fast_naming_the_setting(engine, endpoint, setting, tmp_path):
    """No cache and a hub that refuses or never answers: ModelNotAvailable naming the endpoint and
    the setting to set within seconds (huggingface_hub alone retries for about 25 s, or minutes)."""
    with endpoint() as port:
        first, second = load_against(engine, port, tmp_path / "hf-home")
    print(
        f"{engine} against a {endpoint.__name__}: {first['load_s']:.2f} s cold, {second['load_s']:.2f} s warm"
    )
    for outcome in (first, second):
        assert outcome["error"] == "ModelNotAvailable", outcome
        message = str(outcome["message"])
        assert f"127.0.0.1:{port} cannot be reached" in message and setting in message, message
    # one probe of at most its timeout, plus local work; measured warm: 0.00 s refused, 3.0 s silent
    assert float(second["load_s"]) < sum(PROBE_TIMEOUT_S) + 2 * TIME_FACTOR


def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.mark.parametrize("engine", ["dalle-mini", "dalle-mega", "sd-turbo", "diffusers:someone/model"])
def test_offline_without_cache_names_s2i_model_dir(engine, tmp_path, monkeypatch):
    """HF_HUB_OFFLINE and an empty cache: every image engine's error says to set S2I_MODEL_DIR."""
    offline(monkeypatch)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ModelNotAvailable) as info:
        create_engine(engine, device="cpu").load()
    assert "S2I_MODEL_DIR" in str(info.value) and "HF_HUB_OFFLINE" in str(info.value), info.value


def test_model_folder_without_the_files_names_s2i_model_dir(tmp_path, tiny_dalle_dir, monkeypatch):
    """S2I_MODEL_DIR pointing at a folder that lacks a file, or at no folder: the error names it."""
    offline(monkeypatch)
    shutil.copytree(tiny_dalle_dir, tmp_path / "dalle")
    (tmp_path / "dalle" / "detoker.pt").unlink()
    with pytest.raises(ModelNotAvailable, match=r"S2I_MODEL_DIR\) lacks detoker\.pt"):
        create_engine("dalle-mini", model_dir=str(tmp_path / "dalle"), device="cpu").load()
    for engine in ("sd-turbo", "diffusers:someone/model"):
        with pytest.raises(ModelNotAvailable, match=r"S2I_MODEL_DIR\) does not exist"):
            create_engine(engine, model_dir=str(tmp_path / "nothing-here"), device="cpu").load()
