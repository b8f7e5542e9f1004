"""decode_audio / chunk_pcm / to_wav_bytes on real recordings and on bad input."""

from __future__ import annotations

import io
import wave

import numpy as np
import pytest

from speech2image_nb.audio import SAMPLE_RATE_HZ, chunk_pcm, decode_audio, to_wav_bytes
from speech2image_nb.errors import AudioDecodeError, EmptyAudioError, Speech2ImageError

from .conftest import DATA_DIR

TOLERANCE_S = 0.025


def _wav_duration_s(path) -> float:
    with wave.open(str(path)) as wav:
        return wav.getnframes() / wav.getframerate()


TRUE_LENGTH_S = _wav_duration_s(DATA_DIR / "piper_01.wav")


@pytest.mark.parametrize("suffix", ["wav", "webm", "ogg", "mp4"])
def test_decodes_every_browser_format_to_16k_mono_int16(suffix):
    """Each container decodes to 16 kHz mono int16 within 25 ms of the true length."""
    pcm = decode_audio(DATA_DIR / f"piper_01.{suffix}")
    assert pcm.dtype == np.int16 and pcm.ndim == 1
    assert abs(pcm.size / SAMPLE_RATE_HZ - TRUE_LENGTH_S) <= TOLERANCE_S
    assert np.abs(pcm).max() > 1000  # speech, not silence


@pytest.mark.parametrize("kind", ["bytes", "path", "str", "file"])
def test_accepts_bytes_paths_and_file_objects(kind):
    """bytes, Path, str path and binary file objects all decode the same."""
    path = DATA_DIR / "piper_01.webm"
    source = {
        "bytes": lambda: path.read_bytes(),
        "path": lambda: path,
        "str": lambda: str(path),
        "file": lambda: io.BytesIO(path.read_bytes()),
    }[kind]()
    pcm = decode_audio(source)
    assert abs(pcm.size / SAMPLE_RATE_HZ - TRUE_LENGTH_S) <= TOLERANCE_S


def test_wav_decode_is_sample_exact():
    """A 16 kHz WAV comes back sample for sample."""
    with wave.open(str(DATA_DIR / "piper_01.wav")) as wav:
        expected = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    np.testing.assert_array_equal(decode_audio(DATA_DIR / "piper_01.wav"), expected)


def test_resamples_to_requested_rate():
    """sample_rate=8000 gives half the samples."""
    pcm = decode_audio(DATA_DIR / "piper_01.ogg", sample_rate=8000)
    assert abs(pcm.size / 8000 - TRUE_LENGTH_S) <= TOLERANCE_S


def _first_half(path) -> bytes:
    data = path.read_bytes()
    return data[: len(data) // 2]


BAD_INPUTS = {
    "random bytes": np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
    "text file": b"an astronaut riding a horse on the moon\n" * 20,
    "30-byte webm head": (DATA_DIR / "piper_01.webm").read_bytes()[:30],
    "truncated mp4": _first_half(DATA_DIR / "piper_01.mp4"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUTS))
def test_undecodable_input_raises_audio_decode_error(name):
    """Garbage raises AudioDecodeError with a message that says what to use instead."""
    with pytest.raises(AudioDecodeError, match="wav, webm, ogg") as info:
        decode_audio(BAD_INPUTS[name])
    assert isinstance(info.value, Speech2ImageError)


def test_empty_input_raises_empty_audio_error(tmp_path):
    """0 bytes (as bytes or as a file) is EmptyAudioError."""
    with pytest.raises(EmptyAudioError):
        decode_audio(b"")
    empty = tmp_path / "empty.webm"
    empty.write_bytes(b"")
    with pytest.raises(EmptyAudioError):
        decode_audio(empty)


def test_missing_file_raises_audio_decode_error(tmp_path):
    """A path that does not exist names the path."""
    with pytest.raises(AudioDecodeError, match=r"nothing\.wav"):
        decode_audio(tmp_path / "nothing.wav")


def test_too_short_audio_raises_empty_audio_error():
    """0.1 s of audio is less than the 0.2 s minimum."""
    with pytest.raises(EmptyAudioError, match=r"0\.10 s"):
        decode_audio(to_wav_bytes(np.ones(1600, dtype=np.int16)))


def test_half_length_webm_returns_partial_audio():
    """A webm cut in half (an interrupted upload) gives the first part, without an exception."""
    data = (DATA_DIR / "piper_01.webm").read_bytes()
    pcm = decode_audio(data[: len(data) // 2])
    assert 0.25 * TRUE_LENGTH_S < pcm.size / SAMPLE_RATE_HZ < 0.75 * TRUE_LENGTH_S
    full = decode_audio(data)
    # the part we got is the start of the recording
    n = pcm.size - 2000
    corr = np.corrcoef(pcm[:n].astype(float), full[:n].astype(float))[0, 1]
    assert corr > 0.99


def test_chunk_pcm_cuts_exact_chunks_and_keeps_the_remainder():
    """100 ms chunks are 3200 bytes; the remainder comes last; nothing is lost."""
    pcm = np.arange(16_000 + 500, dtype=np.int16)
    chunks = list(chunk_pcm(pcm, 100))
    assert [len(c) for c in chunks] == [3200] * 10 + [1000]
    assert b"".join(chunks) == pcm.astype("<i2").tobytes()
    assert list(chunk_pcm(pcm.tobytes(), 100)) == chunks


def test_to_wav_bytes_round_trips():
    """PCM -> WAV -> decode_audio gives the same samples."""
    pcm = (np.sin(np.arange(8000) / 5) * 10_000).astype(np.int16)
    np.testing.assert_array_equal(decode_audio(to_wav_bytes(pcm)), pcm)
