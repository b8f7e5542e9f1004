"""Decode any recording to 16 kHz mono int16 PCM, and cut PCM into chunks.

Decoding uses PyAV (``av``), whose wheels carry FFmpeg with libopus, so no system ffmpeg is
needed. Facts about real inputs that shape this module:

- A live (MediaRecorder) webm has no duration in its header: length comes from the decoded
  samples, never from container metadata.
- A truncated or partly zeroed webm/ogg decodes *without* an exception and yields partial audio:
  that is returned as is (better some words than none).
- Empty input, random bytes and a truncated mp4 raise ``av.error.FFmpegError`` subclasses:
  those become :class:`~speech2image_nb.errors.AudioDecodeError`.
"""

from __future__ import annotations

import io
import os
import wave
from collections.abc import Iterator
from typing import IO, Union

import numpy as np
import numpy.typing as npt

from .errors import AudioDecodeError, EmptyAudioError

__all__ = [
    "MIN_DURATION_S",
    "SAMPLE_RATE_HZ",
    "AudioSource",
    "chunk_pcm",
    "decode_audio",
    "pcm_duration_s",
    "to_wav_bytes",
]

SAMPLE_RATE_HZ = 16_000  # what every speech engine here takes
SAMPLE_WIDTH_BYTES = 2  # int16
MIN_DURATION_S = 0.2  # shorter than this holds no word

AudioSource = Union[bytes, bytearray, memoryview, str, "os.PathLike[str]", IO[bytes]]

PCM = npt.NDArray[np.int16]


def _open_input(source: AudioSource) -> tuple[IO[bytes] | str, str]:
    """Return something ``av.open`` takes, and a name for messages."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise EmptyAudioError("The recording is empty (0 bytes): record again, a little longer.")
        return io.BytesIO(data), f"{len(data)} bytes of audio"
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise AudioDecodeError(f"No audio file at {path!r}: check the path.")
        if os.path.getsize(path) == 0:
            raise EmptyAudioError(f"The audio file {path!r} is empty (0 bytes).")
        return path, repr(path)
    if hasattr(source, "read"):
        return source, "the audio stream"
    raise TypeError(
        f"decode_audio() takes bytes, a path or a binary file object, not {type(source).__name__}"
    )


def decode_audio(source: AudioSource, sample_rate: int = SAMPLE_RATE_HZ) -> PCM:
    """Decode a recording to mono int16 PCM at ``sample_rate`` Hz.

    Parameters
    ----------
    source
        Encoded audio (wav, webm, ogg, mp4/m4a, flac, ...) as bytes, a file path or a binary file
        object.
    sample_rate
        Output rate in Hz (16000 for every speech engine here).

    Returns
    -------
    numpy.ndarray
        1-D ``int16`` samples. Length comes from the decoded audio, not the header.

    Raises
    ------
    AudioDecodeError
        The input is not decodable audio (empty container, random bytes, a text file, a
        truncated mp4).
    EmptyAudioError
        It decodes, but holds no samples or less than :data:`MIN_DURATION_S`.
    """
    import av  # imported here: PyAV loads FFmpeg's libraries, which takes time

    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    handle, name = _open_input(source)
    pieces: list[PCM] = []
    try:
        with av.open(handle, mode="r") as container:
            if not container.streams.audio:
                raise AudioDecodeError(f"{name} contains no audio track.")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate)
            try:
                for frame in container.decode(stream):
                    for out in resampler.resample(frame):
                        pieces.append(out.to_ndarray().reshape(-1).astype(np.int16, copy=False))
            except av.error.FFmpegError:
                # A damaged tail (truncated upload, zeroed bytes): keep what decoded so far.
                if not pieces:
                    raise
            for out in resampler.resample(None):
                pieces.append(out.to_ndarray().reshape(-1).astype(np.int16, copy=False))
    except av.error.FFmpegError as exc:
        raise AudioDecodeError(
            f"Could not decode {name} as audio ({exc.__class__.__name__}): "
            "use a wav, webm, ogg, mp4 or flac recording."
        ) from exc
    pcm = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int16)
    if pcm.size < MIN_DURATION_S * sample_rate:
        raise EmptyAudioError(
            f"{name} holds {pcm.size / sample_rate:.2f} s of audio; at least {MIN_DURATION_S} s is "
            "needed: record again, a little longer."
        )
    return pcm


def as_pcm(pcm: PCM | bytes | bytearray | memoryview) -> PCM:
    """View raw little-endian int16 bytes (or an int16 array) as a 1-D int16 array."""
    if isinstance(pcm, np.ndarray):
        if pcm.dtype != np.int16:
            raise TypeError(f"PCM must be int16, got {pcm.dtype}")
        return pcm.reshape(-1)
    data = bytes(pcm)
    if len(data) % SAMPLE_WIDTH_BYTES:
        raise ValueError(f"PCM byte count must be even (int16), got {len(data)}")
    return np.frombuffer(data, dtype="<i2").astype(np.int16, copy=False)


def chunk_pcm(
    pcm: PCM | bytes | bytearray | memoryview, ms: float, sample_rate: int = SAMPLE_RATE_HZ
) -> Iterator[bytes]:
    """Cut PCM into consecutive ``ms``-millisecond chunks of little-endian int16 bytes.

    The last chunk holds the remainder and may be shorter; callers that need a minimum duration
    (AssemblyAI wants >= 50 ms) pad it themselves.
    """
    samples = as_pcm(pcm)
    step = round(sample_rate * ms / 1000)
    if step <= 0:
        raise ValueError(f"chunk length must be at least one sample, got {ms} ms at {sample_rate} Hz")
    data = samples.astype("<i2", copy=False).tobytes()
    step_bytes = step * SAMPLE_WIDTH_BYTES
    for start in range(0, len(data), step_bytes):
        yield data[start : start + step_bytes]


def pcm_duration_s(pcm: PCM | bytes, sample_rate: int = SAMPLE_RATE_HZ) -> float:
    """Duration in seconds of int16 mono PCM."""
    count = pcm.size if isinstance(pcm, np.ndarray) else len(pcm) // SAMPLE_WIDTH_BYTES
    return count / sample_rate


def to_wav_bytes(pcm: PCM | bytes, sample_rate: int = SAMPLE_RATE_HZ) -> bytes:
    """Wrap int16 mono PCM in a WAV container (for saving, or for APIs that take files)."""
    samples = as_pcm(pcm)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(SAMPLE_WIDTH_BYTES)
        out.setframerate(sample_rate)
        out.writeframes(samples.astype("<i2", copy=False).tobytes())
    return buffer.getvalue()
