"""Helpers and the panel fixture shared by the panel tests."""

from __future__ import annotations

import base64
import io
import re
import time

import pytest
from PIL import Image

from speech2image_nb.config import Settings
from speech2image_nb.ui.panel import Panel
from tests.conftest import TIME_FACTOR
from tests.ui.fakes import FakeImageService, FakeRecorder, ScriptedTranscriber


def wait_until(predicate, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s * TIME_FACTOR
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def grid_images(panel):
    """Decode every finished image the grid shows (as the browser would)."""
    sources = re.findall(r'<img class="s2i-img" data-index="\d+" src="data:image/jpeg;base64,([^"]+)"',
                         panel.grid_html.value)
    return [Image.open(io.BytesIO(base64.b64decode(s))) for s in sources]


@pytest.fixture
def make_panel():
    panels = []

    def make(**kwargs):
        kwargs.setdefault("settings", Settings.resolve(environ={}, colab_secret=lambda n: None))
        kwargs.setdefault("recorder", FakeRecorder())
        kwargs.setdefault("transcriber", ScriptedTranscriber())
        kwargs.setdefault("image_service", FakeImageService())
        panel = Panel(**kwargs)
        panels.append(panel)
        assert wait_until(lambda: "(ready)" in panel.status_html.value or panel.error_text, 10)
        return panel

    yield make
    for panel in panels:
        panel.close()
