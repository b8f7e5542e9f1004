"""Kernel side of WebRTCRecorder: the take arrives once after stop and is decoded to 16 kHz PCM."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from speech2image_nb.audio import decode_audio
from speech2image_nb.errors import RecorderError
from speech2image_nb.recorder import WebRTCRecorder
from speech2image_nb.recorder.widget import DEFAULT_CONSTRAINTS
from tests.conftest import DATA_DIR, TIME_FACTOR

from .relay import CommRelay


def test_recording_arrives_once_after_stop_as_pcm(relay: CommRelay):
    """The webm ipywebrtc hands over after stop is decoded; on_audio then on_stop run once."""
    rec = WebRTCRecorder()
    events: list[tuple[str, int]] = []
    rec.on_audio(lambda data: events.append(("audio", len(data))))
    rec.on_stop(lambda: events.append(("stop", 0)))
    rec.recording = True
    assert rec.widget.recording is True
    rec.recording = False
    webm = (DATA_DIR / "piper_01.webm").read_bytes()
    rec.widget.audio.value = webm  # what the front end sets 0.06-0.39 s after stop
    expected = decode_audio(webm)
    assert events == [("audio", expected.size * 2), ("stop", 0)]
    np.testing.assert_array_equal(rec.pcm(), expected)
    assert rec.elapsed_s == pytest.approx(expected.size / 16000)
    time.sleep(0.05)
    rec.close()


def test_no_recording_after_stop_is_reported(relay: CommRelay):
    """ipywebrtc stays silent on failures: no take within the timeout becomes a RecorderError."""
    rec = WebRTCRecorder(result_timeout_s=0.2)
    got: list[RecorderError] = []
    rec.on_error(got.append)
    rec.recording = True
    rec.recording = False
    deadline = time.monotonic() + 5 * TIME_FACTOR
    while not got and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(got) == 1 and type(got[0]) is RecorderError
    assert "localhost" in str(got[0]) and "https" in str(got[0])


def test_undecodable_recording_is_reported(relay: CommRelay):
    """Bytes that are not audio give a RecorderError carrying the decoder's reason."""
    rec = WebRTCRecorder(result_timeout_s=30)
    got: list[RecorderError] = []
    rec.on_error(got.append)
    rec.recording = True
    rec.recording = False
    rec.widget.audio.value = b"\x00not audio at all" * 10
    assert len(got) == 1 and got[0].detail
    assert rec.pcm().size == 0
    rec.close()


def test_audio_only_stream_with_voice_processing_off(relay: CommRelay):
    """The CameraStream asks for audio only, with the same constraint defaults as Recorder."""
    rec = WebRTCRecorder(constraints={"noiseSuppression": True})
    assert rec.stream.constraints == {
        "audio": {**DEFAULT_CONSTRAINTS, "noiseSuppression": True},
        "video": False,
    }
    assert rec.widget.format == "webm"
    assert (
        rec._repr_mimebundle_()["application/vnd.jupyter.widget-view+json"]["model_id"] == rec.widget.model_id
    )


def test_recorder_package_imports_ipywebrtc_only_for_webrtc_recorder():
    """Importing Recorder does not import ipywebrtc (an optional extra)."""
    code = "import sys; from speech2image_nb.recorder import Recorder; print('ipywebrtc' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "False"


def test_webrtc_recorder_is_recorder_like_and_does_not_stream(relay: CommRelay):
    """WebRTCRecorder meets the RecorderLike protocol and says its take arrives after stop."""
    from speech2image_nb.recorder import RecorderLike

    rec = WebRTCRecorder()
    assert isinstance(rec, RecorderLike) and rec.streams is False
    rec.close()
