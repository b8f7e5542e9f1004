"""Re-encode the committed WAV fixtures (mp3, flac, ... are made in the test rather than committed)."""

from __future__ import annotations

import io
import wave
from pathlib import Path

import numpy as np


def encode_with_pyav(wav_path: Path, container: str, codec: str) -> bytes:
    """The 16-bit mono WAV at ``wav_path`` encoded with PyAV as ``codec`` in ``container``.

    For example ``("mp3", "mp3")``, ``("flac", "flac")`` or ``("ipod", "aac")`` (an m4a).
    """
    import av

    with wave.open(str(wav_path)) as wav:
        rate = wav.getframerate()
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(1, -1).copy()
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return buffer.getvalue()
