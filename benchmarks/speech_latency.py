"""Speech-to-text latency: time from the last audio chunk to the final transcript event.

A 4 s utterance (two fixtures joined, speech to the end) is streamed at real time in 100 ms chunks to

- the AssemblyAI path: our client against the local fake service (tests/fakes/assemblyai.py), so
  this is protocol overhead plus the fake's own Whisper decode and its deliberate 0.5 s delay of
  the final after ``Terminate`` (the real service's delay is its own);
- the local Whisper engine (tiny.en on the CPU, in the compute type it picks: int8 or float32).

Targets: <= 0.5 s for the fake path, <= 1.5 s for Whisper tiny.en on 2 cores
(tests/test_stop_to_final.py bounds the same measurement, tests/speech_timing.py, at twice these).
Run from the repository root::

    HF_HUB_OFFLINE=1 python benchmarks/speech_latency.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from speech2image_nb.config import Settings  # noqa: E402
from speech2image_nb.speech.assemblyai import AssemblyAITranscriber  # noqa: E402
from speech2image_nb.speech.whisper import WhisperTranscriber  # noqa: E402
from tests.fakes.assemblyai import FakeAssemblyAI, whisper_model_dir  # noqa: E402
from tests.speech_timing import last_chunk_to_final, utterance  # noqa: E402

TARGET_FAKE_S = 0.5
TARGET_WHISPER_S = 1.5


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
    compute_type = whisper.load().model.compute_type
    print(
        f"whisper tiny.en (CPU {compute_type}): {statistics.median(whisper_s):.2f} s median of "
        f"{whisper_s} -> {text!r}"
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
