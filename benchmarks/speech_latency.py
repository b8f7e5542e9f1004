"""Speech-to-text latency: time from the last audio chunk to the final transcript event.

A 4 s utterance (two fixtures joined, speech to the end) is streamed at real time in 100 ms chunks to

- the AssemblyAI path: our client against the local fake service (tests/fakes/assemblyai.py), so
  this is protocol overhead plus the fake's own Whisper decode and its deliberate 0.5 s delay of
  the final after ``Terminate`` (the real service's delay is its own);
- the local Whisper engine (tiny.en, CPU int8).

Targets: <= 0.5 s for the fake path, <= 1.5 s for Whisper tiny.en on 2 cores. Run from the
repository root::

    HF_HUB_OFFLINE=1 python benchmarks/speech_latency.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from speech2image_nb.audio import chunk_pcm, decode_audio  # noqa: E402
from speech2image_nb.config import Settings  # noqa: E402
from speech2image_nb.speech.assemblyai import AssemblyAITranscriber  # noqa: E402
from speech2image_nb.speech.whisper import WhisperTranscriber  # noqa: E402
from tests.fakes.assemblyai import FakeAssemblyAI, whisper_model_dir  # noqa: E402

TARGET_FAKE_S = 0.5
TARGET_WHISPER_S = 1.5
UTTERANCE_S = 4.0


def utterance() -> np.ndarray:
    """About 4 s of speech that runs to the end (no pause that would end the turn early).

    Two fixtures cut to their speech (0.3 s lead-in trimmed, short tails) with a 0.15 s gap, so
    the final can only come from the end of the stream.
    """
    data = ROOT / "tests" / "data"
    first = decode_audio(data / "piper_08.wav")[int(0.30 * 16_000) : int(2.62 * 16_000)]
    second = decode_audio(data / "piper_01.wav")[int(0.30 * 16_000) : int(2.12 * 16_000)]
    return np.concatenate([first, np.zeros(int(0.15 * 16_000), np.int16), second])


async def last_chunk_to_final(transcriber, pcm: np.ndarray) -> tuple[float, str]:
    """Seconds from the last chunk leaving the source to the last final event, and its text."""
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    pcm = utterance()
    print(f"utterance: {pcm.size / 16_000:.2f} s of speech, streamed at real time in 100 ms chunks")
    settings = Settings.resolve(environ={}, colab_secret=lambda name: None)

    whisper = WhisperTranscriber(settings=settings, model=str(whisper_model_dir()), device="cpu")
    whisper.load()
    whisper_s = []
    for _ in range(args.repeat):
        seconds, text = asyncio.run(last_chunk_to_final(whisper, pcm))
        whisper_s.append(round(seconds, 3))
    print(
        f"whisper tiny.en (CPU int8): {statistics.median(whisper_s):.2f} s median of {whisper_s} -> {text!r}"
    )

    # (label, fake options, warm-up run first): "protocol only" pre-fills the fake's decode cache
    # and turns its partials off, so what remains is the client's and the protocol's own time.
    configs = [
        ("fake AssemblyAI as in the tests (live partials, Whisper decode, 0.5 s final delay)", {}, False),
        (
            "protocol only (decode cached, no partials, no final delay)",
            {"partial_every_s": 60, "final_delay_s": 0},
            True,
        ),
        ("protocol only + the fake's 0.5 s final delay", {"partial_every_s": 60, "final_delay_s": 0.5}, True),
    ]
    medians = {}
    for label, options, warm_up in configs:
        with FakeAssemblyAI(api_key="bench", **options) as fake:
            client_settings = Settings.resolve(
                environ={},
                colab_secret=lambda name: None,
                assemblyai_api_key="bench",
                assemblyai_streaming_url=fake.url,
            )
            client = AssemblyAITranscriber(settings=client_settings)
            if warm_up:
                asyncio.run(last_chunk_to_final(client, pcm))
            runs = []
            for _ in range(args.repeat):
                seconds, text = asyncio.run(last_chunk_to_final(client, pcm))
                runs.append(round(seconds, 3))
        medians[label] = statistics.median(runs)
        print(f"{label}: {medians[label]:.2f} s median of {runs} -> {text!r}")
    protocol = medians[configs[1][0]]
    print(
        f"ratios to target: whisper {statistics.median(whisper_s) / TARGET_WHISPER_S:.2f}x of "
        f"{TARGET_WHISPER_S} s; protocol path {protocol / TARGET_FAKE_S:.2f}x of {TARGET_FAKE_S} s"
    )


if __name__ == "__main__":
    main()
