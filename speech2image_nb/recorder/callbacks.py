"""The kernel-side interface every recorder shares: :class:`RecorderLike`, and the callbacks mixin.

Callbacks may be registered from any thread, and fire on whatever thread delivers the audio (the
kernel's main thread on ipykernel 6, a subshell thread on ipykernel 7), outside any lock. A
callback that raises is logged and does not stop the others or the recorder.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from ..errors import RecorderError

__all__ = ["RecorderCallbacks", "RecorderLike"]

logger = logging.getLogger(__name__)


@runtime_checkable
class RecorderLike(Protocol):
    """What the panel needs of a recorder; :class:`~.widget.Recorder` and ``WebRTCRecorder`` have it.

    ``streams`` says when audio arrives: ``True`` for chunks while recording (live transcripts),
    ``False`` for the whole take once, after stop (transcribed then). ``recording`` starts and stops
    a take from the kernel.
    """

    streams: bool
    recording: bool

    def on_audio(self, callback: Callable[[bytes], object]) -> None:
        """Call ``callback(pcm)`` with 16 kHz int16 mono audio."""

    def on_stop(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` once a take has ended and all its audio was delivered."""

    def on_error(self, callback: Callable[[RecorderError], object]) -> None:
        """Call ``callback(error)`` when recording fails."""


class RecorderCallbacks:
    """Mixin: callback registration and delivery. Call :meth:`_init_callbacks` in ``__init__``."""

    def _init_callbacks(self) -> None:
        self._callbacks_lock = threading.Lock()
        self._audio_callbacks: list[Callable[[bytes], object]] = []
        self._stop_callbacks: list[Callable[[], object]] = []
        self._error_callbacks: list[Callable[[RecorderError], object]] = []

    def on_audio(self, callback: Callable[[bytes], object]) -> None:
        """Call ``callback(pcm_bytes)`` with audio (int16 LE mono at 16 kHz) as it arrives.

        Runs on the thread that delivers the audio: keep it short (enqueue, don't block).
        """
        with self._callbacks_lock:
            self._audio_callbacks.append(callback)

    def on_stop(self, callback: Callable[[], object]) -> None:
        """Call ``callback()`` once a take has ended and all its audio was delivered."""
        with self._callbacks_lock:
            self._stop_callbacks.append(callback)

    def on_error(self, callback: Callable[[RecorderError], object]) -> None:
        """Call ``callback(error)`` with a :class:`RecorderError` subclass when recording fails."""
        with self._callbacks_lock:
            self._error_callbacks.append(callback)

    def _fire_audio(self, data: bytes) -> None:
        with self._callbacks_lock:
            callbacks = list(self._audio_callbacks)
        for callback in callbacks:
            _call(callback, data)

    def _fire_stop(self) -> None:
        with self._callbacks_lock:
            callbacks = list(self._stop_callbacks)
        for callback in callbacks:
            _call(callback)

    def _fire_error(self, error: RecorderError) -> None:
        with self._callbacks_lock:
            callbacks = list(self._error_callbacks)
        if not callbacks:
            logger.warning("recorder error (no on_error callback): %s", error)
        for callback in callbacks:
            _call(callback, error)


def _call(callback: Callable[..., object], *args: object) -> None:
    try:
        callback(*args)
    except Exception:
        logger.exception("recorder callback %r raised", callback)
