"""app() keywords choose the AssemblyAI session: model, key terms and turn settings reach the service."""

from __future__ import annotations

import pytest

from speech2image_nb.errors import ConfigError
from tests.conftest import DATA_DIR
from tests.fakes.assemblyai import FakeAssemblyAI
from tests.ui.conftest import wait_until
from tests.ui.fakes import FakeRecorder

FOX = DATA_DIR / "piper_01.wav"


@pytest.fixture
def quiet_app(monkeypatch):
    """speech2image_nb.app with no image server warm-up and no environment settings of its own."""
    from speech2image_nb.config import ENV_VARS
    from speech2image_nb.ui import panel as panel_module
    from speech2image_nb.ui.session import PanelSession

    for var in ENV_VARS.values():
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(PanelSession, "_warm_up_images", lambda self: None)
    return panel_module.app


def test_app_keywords_set_the_assemblyai_session(quiet_app):
    """app(assemblyai_speech_model=..., assemblyai_keyterms=[...], turn settings) opens that session."""
    with FakeAssemblyAI(api_key="app-key") as fake:
        panel = quiet_app(
            display=False,
            recorder=FakeRecorder(),
            server_url="http://127.0.0.1:9",
            assemblyai_api_key="app-key",
            assemblyai_streaming_url=fake.url,
            assemblyai_speech_model="u3-rt-pro",
            assemblyai_keyterms=["Ada Lovelace", "Timbuktu"],
            assemblyai_end_of_turn_confidence_threshold=0.6,
            assemblyai_min_turn_silence_ms=300,
            assemblyai_max_turn_silence_ms=1500,
        )
        try:
            panel.recorder.play(FOX, realtime=True, tail_s=0.5)
            assert wait_until(lambda: "snow" in panel.controller.transcript.plain_text().lower(), 60), (
                panel.error_text,
                [vars(s) for s in fake.sessions],
            )
        finally:
            panel.close()
    query = fake.sessions[-1].query
    assert query["speech_model"] == "u3-rt-pro" and query["sample_rate"] == "16000"
    assert query["keyterms_prompt"] == '["Ada Lovelace", "Timbuktu"]'
    assert (
        query["end_of_turn_confidence_threshold"],
        query["min_turn_silence"],
        query["max_turn_silence"],
    ) == (
        "0.6",
        "300",
        "1500",
    )


def test_app_refuses_a_misspelt_speech_model_before_showing_anything(quiet_app):
    """A bad assemblyai_speech_model is a ConfigError from app() itself, listing the choices."""
    with pytest.raises(ConfigError, match="choose one of universal-streaming-english"):
        quiet_app(display=False, recorder=FakeRecorder(), assemblyai_speech_model="u3-pro-rt")
