"""Shared fixtures: the speech fixtures in tests/data/ and an artifacts folder for screenshots."""

from __future__ import annotations

import csv
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

DATA_DIR = Path(__file__).parent / "data"
ARTIFACTS_DIR = Path(os.environ.get("S2I_ARTIFACTS_DIR", Path(__file__).parents[1] / "artifacts"))

#: Multiply every time limit in tests by this (slow CI machines).
TIME_FACTOR = float(os.environ.get("S2I_TESTS_TIME_FACTOR", "1"))


def pytest_configure(config: pytest.Config) -> None:
    """Every server a test starts checks its pictures (the default) with a tiny classifier that
    calls every picture normal: built once per session (numpy only, milliseconds) and named in
    S2I_SAFETY_IMAGE_MODEL, so servers in subprocesses and behind browsers inherit it. A test that
    sets its own value (or passes its own checker) wins."""
    from speech2image_nb.safety.images import IMAGE_MODEL_ENV, save_random_image_classifier

    if os.environ.get(IMAGE_MODEL_ENV):
        return
    folder = Path(tempfile.mkdtemp(prefix="s2i-tests-picture-check-"))
    save_random_image_classifier(folder / "normal", verdict="normal")
    os.environ[IMAGE_MODEL_ENV] = str(folder / "normal")
    config.add_cleanup(lambda: shutil.rmtree(folder, ignore_errors=True))


@dataclass(frozen=True)
class SpeechFixture:
    """One committed recording and the text that was spoken."""

    id: str
    voice: str  # "espeak" or "piper"
    path: Path
    text: str


def load_speech_fixtures() -> list[SpeechFixture]:
    """All rows of tests/data/refs.tsv."""
    with open(DATA_DIR / "refs.tsv", newline="") as handle:
        return [
            SpeechFixture(row["id"], row["voice"], DATA_DIR / row["file"], row["text"])
            for row in csv.DictReader(handle, delimiter="\t")
        ]


@pytest.fixture(scope="session")
def speech_fixtures() -> list[SpeechFixture]:
    """Every committed speech fixture."""
    return load_speech_fixtures()


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """Where tests save screenshots and other things a person should look at."""
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS_DIR


@pytest.fixture(scope="session")
def tiny_dalle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random DALL-E mini checkpoint in min-dalle's file format (for S2I_MODEL_DIR)."""
    from speech2image_nb.server.engines.dalle_mini import save_random_checkpoint

    return Path(save_random_checkpoint(tmp_path_factory.mktemp("dalle") / "tiny", variant="tiny"))


@pytest.fixture
def one_torch_thread(monkeypatch: pytest.MonkeyPatch):
    """One torch thread for the test (and for the engines it creates, through S2I_CPU_THREADS): on
    2 shared cores, 2 threads were several times slower per op."""
    import torch

    monkeypatch.setenv("S2I_CPU_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
