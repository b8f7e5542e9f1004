"""What every speech-to-text engine promises: events, the Transcriber protocol, and the registry.

Input audio is always 16 kHz mono int16 little-endian PCM (``speech2image_nb.audio``). A live
stream yields :class:`TranscriptEvent`: a ``partial`` replaces the displayed text of its turn, a
``final`` commits it (and a later ``final`` of the same turn with ``is_formatted=True`` replaces
that, e.g. with punctuation and casing).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import AsyncIterable, AsyncIterator
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..audio import AudioSource
    from ..config import Settings

__all__ = ["ENGINES", "Transcriber", "TranscriptEvent", "Word", "get_transcriber"]


@dataclasses.dataclass(frozen=True)
class Word:
    """One recognised word with its time span in seconds from the start of the stream."""

    text: str
    start_s: float
    end_s: float
    confidence: float = 1.0
    is_final: bool = True


@dataclasses.dataclass(frozen=True)
class TranscriptEvent:
    """A piece of live transcript.

    ``kind`` is ``"partial"`` (may still change) or ``"final"`` (committed); ``turn`` numbers the
    sentences (turns) from 0; ``words`` may be empty for engines without word timing.
    """

    kind: Literal["partial", "final"]
    text: str
    turn: int
    words: tuple[Word, ...] = ()
    is_formatted: bool = False


@runtime_checkable
class Transcriber(Protocol):
    """A speech-to-text engine.

    Constructors only store settings; connections and model loads happen in the methods.
    """

    name: str

    def stream(self, chunks: AsyncIterable[bytes]) -> AsyncIterator[TranscriptEvent]:
        """Transcribe PCM chunks as they arrive; ends after the last final once ``chunks`` ends."""
        ...

    async def transcribe(self, audio: AudioSource | bytes) -> str:
        """Transcribe a whole recording (any format ``decode_audio`` takes) to text."""
        ...


#: engine name -> "module:Class" (imported only when chosen)
ENGINES: dict[str, str] = {
    "assemblyai": "speech2image_nb.speech.assemblyai:AssemblyAITranscriber",
    "whisper": "speech2image_nb.speech.whisper:WhisperTranscriber",
}


def get_transcriber(
    engine: str | None = None, *, settings: Settings | None = None, **options: Any
) -> Transcriber:
    """Build the engine named ``engine`` (default: AssemblyAI when a key is configured, else Whisper).

    ``options`` go to the engine's constructor (e.g. ``model=`` for Whisper).
    """
    from ..config import Settings

    settings = settings if settings is not None else Settings.resolve()
    name = engine or settings.speech_engine
    target = ENGINES.get(name)
    if target is None:
        raise ConfigError(f"Unknown speech engine {name!r}: choose one of {', '.join(sorted(ENGINES))}.")
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(settings=settings, **options)  # type: ignore[no-any-return]
