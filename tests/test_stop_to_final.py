"""Stop -> final text is bounded: the last audio chunk to the final transcript, for local Whisper and
for the AssemblyAI client (against the fake service), measured as benchmarks/speech_latency.py does.

The bounds are generous multiples of the benchmark's targets, scaled by S2I_TESTS_TIME_FACTOR: four
times Whisper tiny.en's 1.5 s on 2 cores (measured 1.25 s median on an idle 2-core VM, 6-9 s while
other jobs kept its load above 3), and twice the AssemblyAI path's 0.5 s, the fake's own delay of the
final after Terminate (measured 0.50-0.51 s).
"""

from __future__ import annotations

import asyncio

from speech2image_nb.config import Settings
from speech2image_nb.speech.assemblyai import AssemblyAITranscriber
from speech2image_nb.speech.whisper import WhisperTranscriber
from tests.conftest import TIME_FACTOR
from tests.fakes.assemblyai import FakeAssemblyAI, whisper_model_dir
from tests.speech_timing import UTTERANCE_TEXT, last_chunk_to_final, utterance
from tests.wer import wer

NO_ENV = {"environ": {}, "colab_secret": lambda name: None}


def test_whisper_final_text_comes_within_twice_the_target_after_stop():
    """Whisper tiny.en (warm): the final text of a 4 s utterance within 6 s of the last chunk."""
    whisper = WhisperTranscriber(settings=Settings.resolve(**NO_ENV), model=str(whisper_model_dir()))
    pcm = utterance()
    asyncio.run(last_chunk_to_final(whisper, pcm[: 16_000 * 3 // 2]))  # warm-up: the first stream is slow
    seconds, text = asyncio.run(last_chunk_to_final(whisper, pcm))
    print(f"whisper tiny.en: Stop -> final {seconds:.2f} s: {text!r}")
    assert wer(UTTERANCE_TEXT, text) <= 0.15, text
    assert 0 <= seconds < 4 * 1.5 * TIME_FACTOR


def test_assemblyai_final_text_comes_within_twice_the_target_after_stop():
    """The AssemblyAI client against the fake (decode cached, its 0.5 s final delay): final within 1 s."""
    with FakeAssemblyAI(api_key="stop-test", partial_every_s=60, final_delay_s=0.5) as fake:
        settings = Settings.resolve(
            **NO_ENV, assemblyai_api_key="stop-test", assemblyai_streaming_url=fake.url
        )
        client = AssemblyAITranscriber(settings=settings)
        asyncio.run(last_chunk_to_final(client, utterance()))  # warm-up: fills the fake's decode cache
        seconds, text = asyncio.run(last_chunk_to_final(client, utterance()))
    print(f"AssemblyAI client (fake): Stop -> final {seconds:.2f} s: {text!r}")
    assert wer(UTTERANCE_TEXT, text) <= 0.15, text
    assert 0.5 <= seconds < 2 * 0.5 * TIME_FACTOR  # the fake waits 0.5 s before it sends the final
