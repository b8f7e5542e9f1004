"""Speech-to-text engines behind one interface (see base.py).

``transcribe("recording.webm")`` is the one-line way in; live streaming goes through
:func:`get_transcriber` and :meth:`Transcriber.stream`. Engines are imported only when chosen,
so importing this package loads neither ``websockets`` nor ``faster_whisper``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import ENGINES, Transcriber, TranscriptEvent, Word, get_transcriber

if TYPE_CHECKING:
    from ..audio import AudioSource
    from ..config import Settings

__all__ = ["ENGINES", "Transcriber", "TranscriptEvent", "Word", "get_transcriber", "transcribe"]


def transcribe(
    audio: AudioSource | bytes,
    engine: str | None = None,
    *,
    settings: Settings | None = None,
    timeout_s: float | None = 600.0,
    **options: Any,
) -> str:
    """Transcribe a whole recording to text (blocking).

    Works the same in a script and in a notebook cell: the work runs on the package's background
    event loop (:mod:`speech2image_nb.runtime`), never on the kernel's own loop.

    Parameters
    ----------
    audio
        A path, bytes or binary file of any format :func:`~speech2image_nb.audio.decode_audio` takes.
    engine
        ``"assemblyai"`` or ``"whisper"``; default AssemblyAI when a key is configured, else Whisper.
    timeout_s
        Give up after this long (AssemblyAI streams at real time, so allow the recording's length).
    **options
        Passed to the engine's constructor (e.g. ``model="base.en"`` for Whisper).
    """
    from ..runtime import run_sync

    transcriber = get_transcriber(engine, settings=settings, **options)
    return run_sync(transcriber.transcribe(audio), timeout_s=timeout_s)
