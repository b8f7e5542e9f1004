"""The streaming microphone recorder: an anywidget that sends 16 kHz int16 PCM chunks to the kernel.

Why our own widget: the panel transcribes *while* the person speaks, so audio must reach the
kernel during the recording, and it does, within a fraction of a second of the click
(``benchmarks/RESULTS.md`` has the figures). ipywebrtc hands over the whole file only after stop
(see ``webrtc.py``).

Protocol (front end -> kernel, ``model.send``):

- ``{"kind": "hello"}`` when a view renders, and as the answer to the kernel's ``{"kind": "ping"}``:
  proves the JavaScript is loaded (it is not, right after ``%pip install``, until a page reload).
- ``{"kind": "chunk", "seq": n}`` with one binary buffer: little-endian int16 mono PCM at
  ``sample_rate`` Hz, ``chunk_ms`` long (the last one of a take may be shorter). ``seq`` restarts
  at 0 with each take.
- ``{"kind": "stopped", "chunk_count": n, "duration_s": s, "reason": r}`` after the last chunk of a
  take; ``reason`` is ``""`` for Stop, ``"suspended"`` when the take ended by itself because the
  browser stopped its audio (a hidden tab's AudioContext suspended, Safari's "interrupted"): the
  widget then shows :data:`SUSPENDED_NOTICE`, and the take holds what was recorded until then.
- ``{"kind": "error", "code": ..., "message": ...}``: ``code`` is a :class:`RecorderError` code.

Unknown kinds are ignored. State lives in synced traits: ``recording`` (either side may flip
it), ``status``, ``error``.

Threads: on ipykernel 6 the handlers run on the main thread, only while no cell runs; on
ipykernel 7 they run on a subshell thread, also during a running cell. So the handlers only
append to a lock-protected buffer and call the registered callbacks; a callback that raises is
logged with its traceback and the next message is handled as usual.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import anywidget
import numpy as np
import numpy.typing as npt
import traitlets

from ..audio import SAMPLE_RATE_HZ
from ..errors import (
    AudioContextError,
    FrontendNotLoaded,
    InsecureContextError,
    MicrophonePermissionDenied,
    MicrophoneUnavailable,
    RecorderError,
)
from ..frontend import (
    COLAB,
    RECORDER_NOT_SHOWN,
    VSCODE,
    VSCODE_NO_MICROPHONE,
    Frontend,
    detect_frontend,
    enable_colab_widgets,
    prepare_classic_widget_loading,
    watch_classic_display,
)
from .callbacks import RecorderCallbacks

__all__ = ["ERROR_MESSAGES", "FRONTEND_MESSAGES", "SUSPENDED_NOTICE", "Recorder", "recorder_error"]

logger = logging.getLogger(__name__)

DEFAULT_CHUNK_MS = 100  # ms of audio per message: small enough for live partial transcripts
DEFAULT_FRONTEND_TIMEOUT_S = 5.0  # s after display without an answer -> FrontendNotLoaded
DEFAULT_CONSTRAINTS: dict[str, bool] = {
    # Browser voice processing clipped test speech (benchmarks/RESULTS.md, "Browser recorder").
    "echoCancellation": False,
    "noiseSuppression": False,
    "autoGainControl": False,
}

_ERROR_CLASSES: dict[str, type[RecorderError]] = {
    cls.code: cls
    for cls in (
        InsecureContextError,
        MicrophonePermissionDenied,
        MicrophoneUnavailable,
        AudioContextError,
        FrontendNotLoaded,
    )
}

#: The sentence shown for each error code (the front end has the same texts in recorder.js).
ERROR_MESSAGES: dict[str, str] = {
    "insecure-context": (
        "The browser offers no microphone on this page because it is not a secure context: "
        "open Jupyter at http://localhost:8888 (or 127.0.0.1) or over https."
    ),
    "permission-denied": (
        "The browser refused access to the microphone: allow it in the address bar's site "
        "settings, then press record again."
    ),
    "no-microphone": (
        "No microphone could be opened: plug one in (or close the program using it), then press record again."
    ),
    "audio-context": (
        "The browser could not start audio processing: reload the page and press record again, "
        "or use an up-to-date Chrome, Edge or Firefox."
    ),
    "frontend-not-loaded": (
        "The recorder's JavaScript did not answer: reload the page (usual right after %pip install)."
    ),
}

#: What the widget shows when a take ended because the browser stopped its audio (recorder.js has it too).
SUSPENDED_NOTICE = (
    "Recording stopped: the browser paused audio (the tab was hidden, or another app took the "
    "microphone). What was recorded is kept; press record to go on."
)

#: Where a front end needs another fix than :data:`ERROR_MESSAGES` gives: Colab has no "reload the
#: page" (its outputs come back by running the cell), and VS Code gives notebooks no microphone.
FRONTEND_MESSAGES: dict[Frontend, dict[str, str]] = {
    COLAB: {
        "frontend-not-loaded": (
            "The recorder's JavaScript did not answer: run this cell again (if it still does not show, "
            "choose Runtime > Restart session, then run all cells)."
        ),
        "audio-context": (
            "The browser could not start audio processing: run this cell again and press record, "
            "or use an up-to-date Chrome, Edge or Firefox."
        ),
    },
    VSCODE: {code: VSCODE_NO_MICROPHONE for code in _ERROR_CLASSES},
}

PCM = npt.NDArray[np.int16]


def recorder_error(
    code: str, message: str = "", *, detail: str = "", frontend: Frontend = "jupyter"
) -> RecorderError:
    """The :class:`RecorderError` subclass for a front-end error ``code``, with a clear message.

    ``frontend`` (see :mod:`speech2image_nb.frontend`) picks the fix that works there; elsewhere
    the browser's own ``message`` (the same texts as :data:`ERROR_MESSAGES`) is kept.
    """
    cls = _ERROR_CLASSES.get(code, RecorderError)
    specific = FRONTEND_MESSAGES.get(frontend, {}).get(code)
    text = specific or message or ERROR_MESSAGES.get(code, "The recorder failed in the browser.")
    return cls(text, detail=detail)


def _let_front_end_choose_subshell(comm: Any) -> None:
    """Undo ipykernel 7's "route replies to the sender's subshell" for this comm.

    ipykernel 7.4 remembers which subshell last *sent* on a comm and routes every later incoming
    message of that comm there (``BaseComm._reply_subshell_id``), meant for request/reply pairs.
    After ``recorder.recording = True`` in a cell that keeps running, the chunks would then queue
    behind that cell on the main shell instead of arriving on the page's own subshell thread
    (none arrived during a running cell; see ``benchmarks/RESULTS.md``). Our front-end messages
    are not replies, so they go where the front end addressed them.
    """
    if comm is None or "_reply_subshell_id" not in vars(comm):
        return
    lock = getattr(comm, "_reply_subshell_lock", None)
    with lock if lock is not None else contextlib.nullcontext():
        vars(comm).pop("_reply_subshell_id", None)


class Recorder(anywidget.AnyWidget, RecorderCallbacks):
    """Record the microphone in the browser and stream 16 kHz mono int16 PCM to the kernel.

    Display it (last expression of a cell, or ``display(recorder)``), then press its record
    button, or set ``recording = True`` from the kernel (the browser may then require one click
    on the page first: autoplay rules).

    Parameters
    ----------
    chunk_ms
        Milliseconds of audio per chunk message (default 100).
    max_seconds
        Stop automatically after this many seconds; 0 means no limit.
    constraints
        Extra ``getUserMedia`` audio constraints merged over the defaults, which turn the
        browser's echo cancellation, noise suppression and automatic gain *off* (they clipped
        speech in measurements).
    frontend_timeout_s
        Seconds after display without an answer from the JavaScript before
        :class:`~speech2image_nb.errors.FrontendNotLoaded` is reported.

    Notes
    -----
    In Google Colab the constructor enables Colab's custom widget manager first (once per
    kernel), so the widget renders wherever it is displayed; error texts there and in VS Code
    give the fix that works in that front end (:data:`FRONTEND_MESSAGES`).
    """

    _esm = Path(__file__).parent / "recorder.js"
    _css = Path(__file__).parent / "recorder.css"
    streams: bool = True  # chunks arrive while recording (RecorderLike)

    recording = traitlets.Bool(False).tag(sync=True)
    status = traitlets.Unicode("idle").tag(sync=True)  # idle | starting | recording | error
    error = traitlets.Unicode("").tag(sync=True)
    chunk_ms = traitlets.Int(DEFAULT_CHUNK_MS).tag(sync=True)
    max_seconds = traitlets.Float(0.0).tag(sync=True)
    constraints = traitlets.Dict().tag(sync=True)
    sample_rate = traitlets.Int(SAMPLE_RATE_HZ).tag(sync=True)
    # Lets the front end share one microphone capture between all views of this widget.
    _instance_id = traitlets.Unicode().tag(sync=True)

    def __init__(
        self,
        *,
        chunk_ms: int = DEFAULT_CHUNK_MS,
        max_seconds: float = 0.0,
        constraints: dict[str, Any] | None = None,
        frontend_timeout_s: float = DEFAULT_FRONTEND_TIMEOUT_S,
    ) -> None:
        if not 10 <= chunk_ms <= 2000:
            raise ValueError(f"chunk_ms must be between 10 and 2000 ms, not {chunk_ms}")
        if max_seconds < 0:
            raise ValueError(f"max_seconds must be >= 0 (0 = no limit), not {max_seconds}")
        if frontend_timeout_s <= 0:
            raise ValueError(f"frontend_timeout_s must be > 0, not {frontend_timeout_s}")
        enable_colab_widgets()  # before anything can be displayed
        prepare_classic_widget_loading()  # before this model opens: its module must be findable
        super().__init__(
            chunk_ms=chunk_ms,
            max_seconds=max_seconds,
            constraints={**DEFAULT_CONSTRAINTS, **(constraints or {})},
            _instance_id=uuid.uuid4().hex,
        )
        self.frontend_timeout_s = frontend_timeout_s
        self.frontend = detect_frontend()  # which fixes the error texts name
        self._lock = threading.Lock()
        self._chunks: list[bytes] = []
        self._sample_count = 0
        self._next_seq = 0
        self.stop_reason = ""  # why the last take ended: "" (Stop) or "suspended" (the browser's audio)
        self._init_callbacks()
        self._frontend_seen = threading.Event()
        self._frontend_timer: threading.Timer | None = None
        self.on_msg(self._handle_message)

    # --- kernel API ------------------------------------------------------------------------

    def pcm(self) -> PCM:
        """The whole current take so far as a 1-D int16 array (a copy; cleared at each start)."""
        with self._lock:
            data = b"".join(self._chunks)
        return np.frombuffer(data, dtype="<i2").astype(np.int16)

    @property
    def elapsed_s(self) -> float:
        """Seconds of audio received in the current take."""
        with self._lock:
            return self._sample_count / self.sample_rate

    @property
    def frontend_loaded(self) -> bool:
        """Whether a view of this widget has answered from the browser."""
        return self._frontend_seen.is_set()

    def start(self) -> None:
        """Start recording (same as ``recording = True``)."""
        self.recording = True

    def stop(self) -> None:
        """Stop recording; the last chunk and ``on_stop`` follow from the browser."""
        self.recording = False

    # --- display and front-end detection ---------------------------------------------------

    def _ipython_display_(self, **kwargs: Any) -> None:
        # the classic Notebook: a recorder hidden by the page's widget start-up shows again; a
        # blank cell says what to do
        watch_classic_display(".s2i-recorder", model_id=self.model_id, message=RECORDER_NOT_SHOWN)
        parent = getattr(super(), "_ipython_display_", None)
        if parent is not None:  # ipywidgets 7
            parent(**kwargs)
            return
        bundle = self._repr_mimebundle_(**kwargs)
        if bundle:
            from IPython.display import display

            # ipywidgets 8 and anywidget answer (data, metadata), a plain widget its data only
            data, metadata = bundle if isinstance(bundle, tuple) else (bundle, None)
            display(data, metadata=metadata, raw=True)  # type: ignore[no-untyped-call]

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        bundle = super()._repr_mimebundle_(**kwargs)
        self._watch_frontend()
        return bundle

    def _watch_frontend(self) -> None:
        """Ask the view to answer, and report FrontendNotLoaded if none does in time."""
        if self._frontend_seen.is_set():
            return
        if self._frontend_timer is not None:
            self._frontend_timer.cancel()
        timer = threading.Timer(self.frontend_timeout_s, self._frontend_deadline)
        timer.daemon = True
        self._frontend_timer = timer
        timer.start()
        self._send_custom({"kind": "ping"})

    def _frontend_deadline(self) -> None:
        if self._frontend_seen.is_set() or self.comm is None:
            return
        logger.warning("recorder front end did not answer within %.1f s", self.frontend_timeout_s)
        self._report_error(recorder_error("frontend-not-loaded", frontend=self.frontend))

    def _send(self, msg: Any, buffers: Any = None) -> None:
        # Every kernel -> front-end message of this widget (state updates, custom) passes here.
        super()._send(msg, buffers=buffers)
        _let_front_end_choose_subshell(self.comm)

    def _send_custom(self, content: dict[str, Any]) -> None:
        if self.comm is not None:
            self.send(content)

    # --- message handling ------------------------------------------------------------------

    def _handle_message(self, _widget: object, content: Any, buffers: Sequence[Any]) -> None:
        """Dispatch one message from the front end (main thread or a subshell thread)."""
        if not isinstance(content, dict):
            return
        kind = content.get("kind")
        if kind == "chunk":
            if buffers:
                self._handle_chunk(int(content.get("seq", -1)), bytes(buffers[0]))
        elif kind == "stopped":
            self._handle_stopped(content)
        elif kind == "error":
            code = str(content.get("code", ""))
            message, detail = str(content.get("message", "")), str(content.get("detail", ""))
            self._report_error(recorder_error(code, message, detail=detail, frontend=self.frontend))
        elif kind in ("hello", "pong"):
            self._handle_hello()
        else:
            logger.debug("recorder: ignoring message of kind %r", kind)

    def _handle_hello(self) -> None:
        first = not self._frontend_seen.is_set()
        self._frontend_seen.set()
        timer, self._frontend_timer = self._frontend_timer, None
        if timer is not None:
            timer.cancel()
        not_loaded = recorder_error("frontend-not-loaded", frontend=self.frontend)
        if first and self.status == "error" and self.error == str(not_loaded):
            # The view came after all (e.g. a slow page): the earlier report no longer holds.
            self.error = ""
            self.status = "idle"

    def _handle_chunk(self, seq: int, data: bytes) -> None:
        if len(data) % 2:
            logger.warning("recorder: dropping chunk %d with an odd byte count (%d)", seq, len(data))
            return
        with self._lock:
            if seq == 0 and self._next_seq != 0:
                # A take started in the browser before the kernel saw ``recording`` flip.
                self._clear_locked()
            if seq != self._next_seq:
                logger.warning("recorder: chunk %d arrived, expected %d", seq, self._next_seq)
            self._next_seq = seq + 1
            self._chunks.append(data)
            self._sample_count += len(data) // 2
        self._fire_audio(data)

    def _handle_stopped(self, content: dict[str, Any]) -> None:
        self.stop_reason = str(content.get("reason") or "")
        logger.debug(
            "recorder: take stopped after %s chunks (%s)", content.get("chunk_count"), self.stop_reason
        )
        self._fire_stop()

    def _report_error(self, error: RecorderError) -> None:
        self.error = str(error)
        self.status = "error"
        if self.recording:
            self.recording = False
        self._fire_error(error)

    def _clear_locked(self) -> None:
        self._chunks = []
        self._sample_count = 0
        self._next_seq = 0

    @traitlets.observe("recording")
    def _recording_changed(self, change: dict[str, Any]) -> None:
        if change["new"] and not change["old"]:
            with self._lock:
                self._clear_locked()
            self.error = ""

    def close(self) -> None:
        """Close the widget (its views stop the microphone) and cancel the front-end timer."""
        timer = getattr(self, "_frontend_timer", None)  # absent if __init__ failed validation
        self._frontend_timer = None
        if timer is not None:
            timer.cancel()
        super().close()

    def __repr__(self) -> str:
        return f"<Recorder status={self.status!r} recording={self.recording}>"
