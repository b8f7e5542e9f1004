"""Stop -> final text: the utterance and the measurement that benchmarks/speech_latency.py reports and
tests/test_stop_to_final.py bounds, defined once so that both measure the same thing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from speech2image_nb.audio import chunk_pcm, decode_audio
from tests.conftest import DATA_DIR

#: what utterance() says (piper_08 then piper_01)
UTTERANCE_TEXT = "a green dragon reading a book in a library a red fox sitting in the snow"


def utterance() -> np.ndarray:
    """About 4 s of speech that runs to the end (no pause that would end the turn early).

    Two fixtures cut to their speech (0.3 s lead-in trimmed, short tails) with a 0.15 s gap, so
    the final can only come from the end of the stream.
    """
    first = decode_audio(DATA_DIR / "piper_08.wav")[int(0.30 * 16_000) : int(2.62 * 16_000)]
    second = decode_audio(DATA_DIR / "piper_01.wav")[int(0.30 * 16_000) : int(2.12 * 16_000)]
    return np.concatenate([first, np.zeros(int(0.15 * 16_000), np.int16), second])


async def last_chunk_to_final(transcriber: Any, pcm: np.ndarray) -> tuple[float, str]:
    """Seconds from the last chunk leaving the source (Stop) to the last final event, and its text.

    The chunks go at real time, 100 ms each, as the recorder sends them.
    """
    last_chunk_at = 0.0
    final_at, text = 0.0, ""

    async def live() -> AsyncIterator[bytes]:
        nonlocal last_chunk_at
        start = time.monotonic()
        for i, chunk in enumerate(chunk_pcm(pcm, 100)):
            await asyncio.sleep(max(0.0, start + i * 0.1 - time.monotonic()))
            yield chunk
        last_chunk_at = time.monotonic()

    async for event in transcriber.stream(live()):
        if event.kind == "final":
            final_at, text = time.monotonic(), event.text
    return final_at - last_chunk_at, text
