"""Uploading a recording: the checks and decoding (no widgets), the FileUpload wrapper, the panel path."""

from __future__ import annotations

import io
import wave

import numpy as np
import pytest

from speech2image_nb.audio import SAMPLE_RATE_HZ, decode_audio
from speech2image_nb.errors import AudioDecodeError, EmptyAudioError
from speech2image_nb.frontend import VSCODE_NO_MICROPHONE
from speech2image_nb.ui.upload import (
    MAX_UPLOAD_BYTES,
    UPLOAD_HINT,
    UploadControl,
    UploadedFile,
    UploadRejected,
    read_upload,
    uploaded_files,
)
from tests.audio_encode import encode_with_pyav
from tests.browser.audio_match import best_envelope_match, read_wav_mono, rms_envelope
from tests.conftest import DATA_DIR
from tests.ui.conftest import grid_images, wait_until
from tests.ui.fakes import FakeRecorder, ScriptedTranscriber

FOX_WAV = DATA_DIR / "piper_01.wav"


def fixture_bytes(name: str) -> bytes:
    """Every format the control offers, from the committed clip of "a red fox sitting in the snow"."""
    made = {"mp3": ("mp3", "mp3"), "flac": ("flac", "flac")}
    suffix = name.rsplit(".", 1)[1].lower()
    if suffix in made:
        return encode_with_pyav(FOX_WAV, *made[suffix])
    if suffix == "m4a":  # an m4a is an mp4 holding only audio
        return (DATA_DIR / "piper_01.mp4").read_bytes()
    return (DATA_DIR / f"piper_01.{suffix}").read_bytes()


@pytest.mark.parametrize(
    "name", ["fox.wav", "fox.webm", "fox.ogg", "fox.mp4", "fox.m4a", "fox.mp3", "fox.FLAC"]
)
def test_every_offered_format_decodes_to_the_spoken_clip(name):
    """wav, webm, ogg, mp4, m4a, mp3 and flac uploads decode to 16 kHz PCM that matches the clip."""
    pcm = read_upload(UploadedFile(name, fixture_bytes(name)))
    reference, rate = read_wav_mono(FOX_WAV)
    assert pcm.dtype == np.int16 and abs(pcm.size / SAMPLE_RATE_HZ - len(reference) / rate) < 0.1
    corr, _lag = best_envelope_match(
        rms_envelope(pcm / 32768.0, SAMPLE_RATE_HZ), rms_envelope(reference, rate)
    )
    assert corr > 0.9, f"{name}: envelope correlation {corr:.3f}"


BAD_UPLOADS = {
    # name: (content, options, error class, words the line must hold)
    "notes.wav": (
        b"Shopping list: eggs, milk, bread.\n" * 40,
        {},
        AudioDecodeError,
        "notes.wav is not audio",
    ),
    "silence.wav": (b"", {}, EmptyAudioError, "empty (0 bytes)"),
    "huge.wav": (None, {"max_bytes": 50_000}, UploadRejected, "too large (78 kB; uploads take up to 49 kB)"),
    "long.wav": (None, {"max_seconds": 1.0}, UploadRejected, "too long (2 s; uploads take up to 1 s)"),
    "fox.txt": (None, {}, UploadRejected, "fox.txt is not a recording"),
    "click.wav": ("click", {}, EmptyAudioError, "less than 0.2 s of sound"),
}


@pytest.mark.parametrize("name", list(BAD_UPLOADS))
def test_a_bad_upload_is_refused_with_one_sentence_naming_the_file(name):
    """Not audio, empty, too large, too long, wrong type, too short: each is one line naming the file."""
    content, options, error, words = BAD_UPLOADS[name]
    if content is None:
        content = FOX_WAV.read_bytes()
    elif content == "click":  # a real WAV holding 50 ms
        buffer = io.BytesIO()
        with wave.open(buffer, "wb") as out:
            out.setnchannels(1), out.setsampwidth(2), out.setframerate(16000)
            out.writeframes(np.full(800, 3000, dtype="<i2").tobytes())
        content = buffer.getvalue()
    with pytest.raises(error) as caught:
        read_upload(UploadedFile(name, content), **options)
    message = str(caught.value)
    assert words in message and name in message and "\n" not in message
    assert message.endswith(".") and ": " in message  # what happened: what to do


def test_size_limit_is_stated_and_under_one_jupyter_websocket_message():
    """8 MB fits in one Jupyter websocket message (tornado's 10 MiB); one byte more is refused."""
    assert MAX_UPLOAD_BYTES < 10 * 1024 * 1024
    with pytest.raises(UploadRejected, match=r"too large \(8\.0 MB; uploads take up to 8 MB\)"):
        read_upload(UploadedFile("big.wav", b"\0" * (MAX_UPLOAD_BYTES + 1)))


def test_uploaded_files_reads_both_ipywidgets_value_shapes():
    """ipywidgets 7's dict-by-name and ipywidgets 8's tuple give the same UploadedFile."""
    v7 = {"a.wav": {"metadata": {"name": "a.wav", "type": "audio/wav", "size": 3}, "content": b"abc"}}
    v8 = ({"name": "a.wav", "type": "audio/wav", "size": 3, "content": memoryview(b"abc")},)
    expected = [UploadedFile("a.wav", b"abc", "audio/wav")]
    assert uploaded_files(v7) == expected and uploaded_files(v8) == expected
    assert uploaded_files(()) == [] and uploaded_files({}) == []


def browser_uploads(button, name: str, content: bytes, mime: str = "audio/wav") -> None:
    """What ipywidgets 8's FileUpload view sends: the file in ``value``, its bytes as a binary buffer."""
    state = {
        "value": [{"name": name, "type": mime, "size": len(content), "last_modified": 1_700_000_000_000}]
    }
    data = {"method": "update", "state": state, "buffer_paths": [["value", 0, "content"]]}
    button.comm.handle_msg(
        {"content": {"comm_id": button.comm.comm_id, "data": data}, "buffers": [memoryview(content)]}
    )


def test_upload_control_passes_each_file_once_and_clears_for_the_next():
    """A file from the browser reaches on_file as bytes; the control clears, so the same file works again."""
    received = []
    control = UploadControl(received.append)
    try:
        assert control.button.accept.split(",") == [
            ".wav",
            ".webm",
            ".ogg",
            ".oga",
            ".opus",
            ".mp3",
            ".m4a",
            ".mp4",
            ".flac",
        ]
        assert "8 MB" in control.note.value and "2 minutes" in control.note.value
        content = FOX_WAV.read_bytes()
        browser_uploads(control.button, "fox.wav", content)
        browser_uploads(control.button, "fox.wav", content)
        assert received == [UploadedFile("fox.wav", content, "audio/wav")] * 2
        assert control.button.value == ()
    finally:
        for widget in (control.view, control.button, control.note):
            widget.close()


class HearingTranscriber(ScriptedTranscriber):
    """Decodes each whole recording it is given (and notes its length) before 'hearing' the fox."""

    def __init__(self):
        super().__init__()
        self.durations_s: list[float] = []

    async def transcribe(self, audio) -> str:
        self.durations_s.append(decode_audio(audio).size / SAMPLE_RATE_HZ)
        return await super().transcribe(audio)


def test_uploading_through_the_panel_fills_transcript_and_prompt_then_draws_hands_free(make_panel):
    """Upload (mp3) -> the whole take is transcribed -> prompt; hands-free draws it with no click."""
    transcriber = HearingTranscriber()
    panel = make_panel(transcriber=transcriber, hands_free=True, image_count=2)
    browser_uploads(panel.upload.button, "fox.mp3", fixture_bytes("fox.mp3"), "audio/mpeg")
    assert wait_until(lambda: len(panel.controller.history) == 1), panel.error_text
    assert panel.wait_idle(10) and len(grid_images(panel)) == 2
    assert "sitting in the snow" in panel.transcript_html.value and "fox" in panel.prompt_text.value
    assert transcriber.durations_s and abs(transcriber.durations_s[0] - 2.48) < 0.1
    assert panel.error_text == "" and panel.upload.view in panel.children


def test_bad_uploads_each_give_their_line_and_the_next_good_one_works(make_panel):
    """Text renamed .wav, 0 bytes, over the size limit: a line each; then a good upload reaches the prompt."""
    panel = make_panel(transcriber=HearingTranscriber())
    bad = {
        "notes.wav": (b"not a recording at all\n" * 30, "notes.wav is not audio"),
        "empty.wav": (b"", "empty (0 bytes)"),
        "huge.wav": (b"\0" * (MAX_UPLOAD_BYTES + 1), "too large (8.0 MB; uploads take up to 8 MB)"),
    }
    for name, (content, words) in bad.items():
        browser_uploads(panel.upload.button, name, content)
        assert wait_until(lambda w=words: w in panel.error_text), (name, panel.error_text)
        assert panel.error_text.startswith("Audio: ") and "Traceback" not in panel.error_html.value
    assert panel.prompt_text.value == ""
    browser_uploads(panel.upload.button, "fox.wav", FOX_WAV.read_bytes())
    assert wait_until(lambda: "fox" in panel.prompt_text.value), panel.error_text
    assert panel.error_text == ""


def test_recorder_errors_point_to_the_upload(make_panel):
    """Whatever stops the recorder (denied, no device, not loaded), the line names the upload."""
    from speech2image_nb.recorder.widget import recorder_error

    panel = make_panel()
    for code in ("permission-denied", "no-microphone", "insecure-context", "frontend-not-loaded"):
        panel.recorder.fail(recorder_error(code))
        assert panel.error_text.startswith("Microphone: ") and panel.error_text.endswith(UPLOAD_HINT)


def test_vs_code_says_it_gives_no_microphone_once_and_offers_the_upload(make_panel, monkeypatch):
    """A VS Code kernel: the panel starts with VS Code's one line; a recorder error keeps it, undoubled."""
    from speech2image_nb.recorder.widget import recorder_error

    monkeypatch.setenv("VSCODE_PID", "4242")
    monkeypatch.setenv("PYDEVD_IPYTHON_COMPATIBLE_DEBUGGING", "1")
    panel = make_panel(recorder=FakeRecorder())
    assert wait_until(lambda: panel.error_text == VSCODE_NO_MICROPHONE), panel.error_text
    panel.recorder.fail(recorder_error("permission-denied", frontend="vscode"))
    assert panel.error_text == f"Microphone: {VSCODE_NO_MICROPHONE}"
    assert panel.error_text.count("upload") == 1
