"""Local speech-to-text with Whisper (faster-whisper / CTranslate2); needs no key and no network.

Whisper decodes whole windows, not a stream, so live transcription works by re-decoding: about
once a second the audio of the current turn is decoded again and shown as a partial; when
faster-whisper's bundled Silero VAD (an ONNX file inside the wheel, works offline) sees the
speaker pause, the turn is decoded once more and committed as a final, and a new turn starts.
The model runs in a worker thread (``asyncio.to_thread``) so the event loop stays responsive.

Models: a size name (``tiny.en``, ``base.en``, ...) is fetched once through the Hugging Face
cache (with a progress bar) and reused offline afterwards; a local CTranslate2 directory
(``S2I_WHISPER_MODEL=/path/to/model``) is used as it is. Loaded models are cached per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import threading
import weakref
from collections.abc import AsyncIterable, AsyncIterator
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ..errors import ModelNotAvailable
from .base import TranscriptEvent

if TYPE_CHECKING:
    from ..audio import AudioSource
    from ..config import Settings

__all__ = ["WhisperTranscriber", "default_cpu_compute_type", "load_model", "resolve_model_path"]

_LOG = logging.getLogger(__name__)

SAMPLE_RATE_HZ = 16_000
_MODEL_FILES = ["config.json", "preprocessor_config.json", "model.bin", "tokenizer.json", "vocabulary.*"]
_PAD_MS = 100  # padding the VAD puts around each speech region
_load_lock = threading.Lock()
_use_locks: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()

Audio = npt.NDArray[np.float32]


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def resolve_model_path(model: str, *, download_root: str | None = None) -> str:
    """A local CTranslate2 directory for ``model`` (a directory, a size name or a hub repo id).

    Size names are downloaded on first use through the Hugging Face cache, with a progress bar.

    Raises
    ------
    ModelNotAvailable
        The directory lacks ``model.bin``, or the model is not cached and cannot be downloaded
        (offline, no network).
    """
    how = (
        "Connect to the internet once so it can be downloaded, or point S2I_WHISPER_MODEL at a "
        "local CTranslate2 Whisper directory (with model.bin and tokenizer.json)."
    )
    if os.path.isdir(model):
        if not os.path.isfile(os.path.join(model, "model.bin")):
            raise ModelNotAvailable(f"{model!r} is not a CTranslate2 Whisper model directory (no model.bin).")
        return model
    if model.startswith(("/", ".", "~")) or (os.sep != "/" and os.sep in model):
        raise ModelNotAvailable(f"No Whisper model directory at {model!r}: check S2I_WHISPER_MODEL.")
    from faster_whisper.utils import _MODELS

    repo_id = model if "/" in model else _MODELS.get(model)
    if repo_id is None:
        raise ModelNotAvailable(
            f"Unknown Whisper model {model!r}: use one of {', '.join(sorted(_MODELS))}, a hub repo id, "
            "or a local CTranslate2 directory."
        )
    import huggingface_hub

    from ..hub import hub_unavailable

    unavailable = "HF_HUB_OFFLINE is set" if _offline() else hub_unavailable()  # never wait on a dead network
    try:
        return str(
            huggingface_hub.snapshot_download(
                repo_id,
                allow_patterns=_MODEL_FILES,
                local_files_only=unavailable is not None,
                cache_dir=download_root,
            )
        )
    except Exception as exc:  # offline, not cached, network down, repo missing: all the same fix
        reason = f"offline: {unavailable}" if unavailable else type(exc).__name__
        raise ModelNotAvailable(
            f"The Whisper model {model!r} ({repo_id}) is not on this machine and could not be "
            f"downloaded ({reason}). {how}"
        ) from exc


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, device: str, compute_type: str, cpu_threads: int) -> Any:
    from faster_whisper import WhisperModel

    _LOG.info("loading Whisper model from %s on %s (%s)", path, device, compute_type)
    return WhisperModel(path, device=device, compute_type=compute_type, cpu_threads=cpu_threads)


def model_lock(model: Any) -> threading.Lock:
    """The lock that serialises decoding on one loaded model.

    Models are cached and shared per process (the panel's engine and anything else that loads the
    same weights), and faster-whisper does not promise that one ``WhisperModel`` decodes safely
    from two threads at once; its ``transcribe`` is lazy, so hold the lock while consuming it.
    """
    with _load_lock:
        lock = _use_locks.get(model)
        if lock is None:
            lock = _use_locks[model] = threading.Lock()
        return lock


def _cuda_available() -> bool:
    try:
        import ctranslate2

        return int(ctranslate2.get_cuda_device_count()) > 0
    except Exception:  # no CUDA runtime at all
        return False


def default_cpu_compute_type() -> str:
    """``int8`` where the CPU multiplies int8 without saturating (VNNI, ARM), else ``float32``.

    On AVX2-only CPUs CTranslate2's int8 products saturate, and tiny.en hears measurably worse
    (the word error rates are in ``benchmarks/RESULTS.md``); float32 costs about a third more
    time there, which a tiny or base model can afford.
    """
    from ..cpu import has_int8_dot_product

    return "int8" if has_int8_dot_product() else "float32"


def load_model(
    model: str,
    *,
    device: str = "auto",
    compute_type: str | None = None,
    cpu_threads: int = 0,
    download_root: str | None = None,
) -> Any:
    """Load (once per process) a ``faster_whisper.WhisperModel``.

    ``device="auto"`` picks CUDA when a GPU is visible, else CPU; ``compute_type`` defaults to
    ``float16`` on CUDA and, on a CPU, to :func:`default_cpu_compute_type`.
    """
    if device == "auto":
        device = "cuda" if _cuda_available() else "cpu"
    if compute_type is None:
        compute_type = "float16" if device == "cuda" else default_cpu_compute_type()
    with _load_lock:  # one load at a time: two threads asking together share the result
        path = resolve_model_path(model, download_root=download_root)
        return _load_cached(os.path.abspath(path), device, compute_type, cpu_threads)


def _to_float(pcm: bytes | bytearray | npt.NDArray[np.int16]) -> Audio:
    samples = np.frombuffer(bytes(pcm), dtype="<i2") if not isinstance(pcm, np.ndarray) else pcm
    return (samples.astype(np.float32) / 32768.0).astype(np.float32)


class WhisperTranscriber:
    """Speech-to-text on this machine with faster-whisper.

    Parameters
    ----------
    settings
        Supplies the default model (``S2I_WHISPER_MODEL``, default ``tiny.en``).
    model
        Size name, hub repo id, or local CTranslate2 directory; overrides the settings.
    device, compute_type, cpu_threads
        Where and how the model runs (``auto`` = CUDA when present; on a CPU
        :func:`default_cpu_compute_type`).
    beam_size
        Beam search width for finals (partials always use greedy decoding, for speed).
    partial_interval_s
        Audio between two live re-decodes of the growing turn.
    min_silence_ms
        A pause this long ends a turn (a final).
    language
        Spoken language (``en`` for the ``.en`` models).
    """

    name = "whisper"

    def __init__(
        self,
        *,
        settings: Settings | None = None,
        model: str | None = None,
        device: str = "auto",
        compute_type: str | None = None,
        cpu_threads: int = 0,
        beam_size: int = 5,
        partial_interval_s: float = 1.0,
        min_silence_ms: int = 500,
        silence_rms: float = 0.01,
        language: str | None = "en",
        download_root: str | None = None,
    ) -> None:
        if settings is None:
            from ..config import Settings

            settings = Settings.resolve()
        if partial_interval_s <= 0:
            raise ValueError("partial_interval_s must be positive")
        self.model = model or settings.whisper_model
        self.device = device
        self.compute_type = compute_type
        self.cpu_threads = cpu_threads
        self.beam_size = beam_size
        self.partial_interval_s = partial_interval_s
        self.min_silence_ms = min_silence_ms
        self.silence_rms = silence_rms
        self.language = language
        self.download_root = download_root

    def load(self) -> Any:
        """Load the model now (blocking; cached per process). Later calls return the same object."""
        return load_model(
            self.model,
            device=self.device,
            compute_type=self.compute_type,
            cpu_threads=self.cpu_threads,
            download_root=self.download_root,
        )

    def decode(self, audio: Audio, *, beam_size: int | None = None) -> str:
        """Transcribe float32 16 kHz audio to text (blocking)."""
        model = self.load()
        with model_lock(model):
            segments, _info = model.transcribe(
                audio,
                language=self.language,
                beam_size=beam_size or self.beam_size,
                without_timestamps=True,
                condition_on_previous_text=False,
                vad_filter=False,
            )
            return " ".join(segment.text.strip() for segment in segments).strip()

    async def transcribe(self, audio: AudioSource | bytes) -> str:
        """Transcribe a whole recording (any format ``decode_audio`` takes)."""
        from ..audio import decode_audio

        pcm = await asyncio.to_thread(decode_audio, audio)
        return await asyncio.to_thread(self.decode, _to_float(pcm))

    def _speech_spans(self, audio: Audio) -> list[tuple[int, int]]:
        """Speech regions (sample offsets) by faster-whisper's Silero VAD, each padded by ``_PAD_MS``."""
        from faster_whisper.vad import VadOptions, get_speech_timestamps

        options = VadOptions(min_silence_duration_ms=self.min_silence_ms // 2, speech_pad_ms=_PAD_MS)
        return [(s["start"], s["end"]) for s in get_speech_timestamps(audio, options)]

    def _turn_end(self, spans: list[tuple[int, int]], size: int) -> int | None:
        """Where the first finished turn ends: after the first pause of ``min_silence_ms`` or more."""
        pad = _PAD_MS * SAMPLE_RATE_HZ // 1000
        silence = self.min_silence_ms * SAMPLE_RATE_HZ // 1000
        for i, (_, end) in enumerate(spans):
            gap = spans[i + 1][0] - end + 2 * pad if i + 1 < len(spans) else size - end + pad
            if gap >= silence:
                return end
        return None

    async def stream(self, chunks: AsyncIterable[bytes]) -> AsyncIterator[TranscriptEvent]:
        """Live transcript of 16 kHz int16 PCM ``chunks``: partials about once a second, finals at pauses.

        Every ``partial_interval_s`` of new audio the VAD looks at the open turn: a pause of
        ``min_silence_ms`` closes it (a final, decoded with beam search); otherwise, unless the
        last second was silent, the turn is re-decoded greedily as a partial. When ``chunks``
        ends, what is left is finalized.
        """
        await asyncio.to_thread(self.load)
        buffer = bytearray()
        arrived = asyncio.Event()
        ended = asyncio.Event()

        async def pump() -> None:
            try:
                async for chunk in chunks:
                    buffer.extend(chunk)
                    arrived.set()
            finally:
                ended.set()
                arrived.set()

        pump_task = asyncio.create_task(pump())
        interval = int(self.partial_interval_s * SAMPLE_RATE_HZ) * 2  # bytes
        turn, turn_start, checked = 0, 0, 0  # turn_start / checked: byte offsets into buffer
        last_partial = ""
        try:
            while True:
                await arrived.wait()
                arrived.clear()
                if pump_task.done() and not pump_task.cancelled() and pump_task.exception() is not None:
                    raise pump_task.exception()  # type: ignore[misc]
                finished = ended.is_set()
                if not finished and len(buffer) - checked < interval:
                    continue
                checked = len(buffer) - len(buffer) % 2
                audio = _to_float(buffer[turn_start:checked])
                spans = await asyncio.to_thread(self._speech_spans, audio) if audio.size else []
                if not spans:
                    if finished:
                        return
                    # nothing said yet: drop old silence so the buffer does not grow forever
                    turn_start = max(turn_start, checked - interval)
                    continue
                end = self._turn_end(spans, audio.size)
                if end is None and finished:
                    end = audio.size
                if end is not None:
                    text = await asyncio.to_thread(self.decode, audio[:end])
                    turn_start += end * 2
                    last_partial = ""
                    if text:
                        yield TranscriptEvent("final", text, turn, (), True)
                        turn += 1
                    checked = turn_start  # look at the rest at once: it may hold another turn
                    arrived.set()
                    continue
                recent = audio[-int(self.partial_interval_s * SAMPLE_RATE_HZ) :]
                if float(np.sqrt(np.mean(recent**2))) < self.silence_rms:
                    continue  # silent second: the partial would not change
                text = await asyncio.to_thread(self.decode, audio, beam_size=1)
                if text and text != last_partial:
                    last_partial = text
                    yield TranscriptEvent("partial", text, turn, (), True)
        finally:
            if not pump_task.done():
                pump_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pump_task
