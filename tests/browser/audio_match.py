"""Compare a recording with the WAV the fake microphone played: 10 ms RMS envelopes, lag search."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

FRAME_MS = 10  # envelope resolution
MAX_SLIP_FRAMES = 8  # how far from the file's length one pass of the fake microphone may come out


def read_wav_mono(path: Path) -> tuple[np.ndarray, int]:
    """A 16-bit PCM WAV as float samples in [-1, 1) (channels averaged) and its rate in Hz."""
    with wave.open(str(path)) as wav:
        if wav.getsampwidth() != 2:
            raise ValueError(f"{path} is not 16-bit PCM")
        rate, channels = wav.getframerate(), wav.getnchannels()
        data = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").astype(np.float64)
    return data.reshape(-1, channels).mean(axis=1) / 32768.0, rate


def rms_envelope(samples: np.ndarray, rate: int, *, frame_ms: int = FRAME_MS) -> np.ndarray:
    """Root-mean-square level of consecutive ``frame_ms`` frames."""
    size = rate * frame_ms // 1000
    count = len(samples) // size
    frames = np.asarray(samples[: count * size], dtype=np.float64).reshape(count, size)
    return np.sqrt((frames**2).mean(axis=1))


def best_envelope_match(
    recorded: np.ndarray, reference: np.ndarray, *, max_slip_frames: int = MAX_SLIP_FRAMES
) -> tuple[float, int]:
    """Highest normalised cross-correlation of ``recorded`` against the looping ``reference``.

    Both are envelopes. The fake microphone loops its file, so the reference is tiled to cover
    every lag. Chromium does not loop it seamlessly: each pass comes out a few frames shorter or
    longer than the file (30-40 ms short for ``piper_01.wav``, measured), so a take that spans a
    loop point slips by that much there. The tiling tries every period within ``max_slip_frames``
    of the file's length, padding with the file's last (quiet) level or trimming its end.
    Returns (correlation, lag in frames).
    """
    n = len(recorded)
    rec = recorded - recorded.mean()
    rec_norm = np.linalg.norm(rec)
    if rec_norm == 0:
        return 0.0, 0
    best, best_lag = -1.0, 0
    for slip in range(-max_slip_frames, max_slip_frames + 1):
        if slip <= 0:
            period = reference[: len(reference) + slip]
        else:
            period = np.concatenate([reference, np.full(slip, reference[-1])])
        loops = int(np.ceil((n + len(period)) / len(period))) + 1
        tiled = np.tile(period, loops)
        for lag in range(len(period)):
            seg = tiled[lag : lag + n]
            seg = seg - seg.mean()
            denom = rec_norm * np.linalg.norm(seg)
            if denom == 0:
                continue
            value = float(rec @ seg / denom)
            if value > best:
                best, best_lag = value, lag
    return best, best_lag
