"""The panel's state, without widgets: transcript turns, the generation queue, the history.

Why apart from the widgets: every rule the panel follows (a partial replaces its turn, a final
commits it, hands-free generates once per sentence and queues while busy, history restores a
prompt with its images, every error becomes one readable line) is plain data manipulation that a
test can check without a browser, a kernel or a thread. :mod:`speech2image_nb.ui.panel` only
turns this state into widgets and calls these methods from its handlers.

The controller is used from several threads (comm handlers, the runtime loop, the generation
worker), so every method that changes state holds one lock.
"""

from __future__ import annotations

import dataclasses
import html
import itertools
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import (
    AudioError,
    AuthError,
    ConfigError,
    ImageServerError,
    ModelNotAvailable,
    RecorderError,
    ServerUnreachable,
    ServiceUnreachable,
    Speech2ImageError,
    TranscriptionError,
)
from ..images.files import new_id
from ..images.protocol import DEFAULT_MAX_IMAGES

if TYPE_CHECKING:
    from PIL.Image import Image

    from ..speech.base import TranscriptEvent

__all__ = [
    "MAX_IMAGE_COUNT",
    "Controller",
    "GenerationRequest",
    "HistoryEntry",
    "Transcript",
    "describe_error",
    "new_id",
    "parse_seed",
    "seed_of",
]

MAX_IMAGE_COUNT = DEFAULT_MAX_IMAGES  # what the image server accepts per request (its default limit)
_MAX_QUEUED = 20  # hands-free sentences waiting; older ones are dropped beyond this


@dataclasses.dataclass(frozen=True)
class GenerationRequest:
    """One generation to run: the prompt as it will be sent, how many images, and the seed."""

    id: str
    prompt: str
    image_count: int
    seed: int | None = None  # None = the server picks a random seed
    turn: int | None = None  # the transcript turn it came from (hands-free), else None


@dataclasses.dataclass(frozen=True)
class HistoryEntry:
    """A finished generation, kept for the history strip and for saving."""

    id: str
    prompt: str
    seed: int | None
    images: tuple[Image, ...]
    engine: str = ""


class Transcript:
    """The live transcript: one text per turn, each partial (may change) or final (committed).

    Turn numbers restart at 0 in every recording session (that is what the engines send), so
    :meth:`begin_session` moves an offset past the turns already shown.
    """

    def __init__(self) -> None:
        self._turns: dict[int, tuple[str, bool]] = {}
        self._offset = 0
        self._session_turns: list[int] = []
        self._refused: set[int] = set()  # turns whose final the classroom filter refused

    def begin_session(self) -> None:
        """Start a new recording: its turn 0 comes after every turn shown so far."""
        self._offset = max(self._turns, default=-1) + 1
        self._session_turns = []

    def apply(self, event: TranscriptEvent) -> tuple[int, bool]:
        """Apply a partial or final event; returns ``(global turn, is_first_final_of_turn)``.

        A partial never overwrites a committed final of the same turn (late partials happen when
        a final and a partial cross on the wire).
        """
        turn = self._offset + event.turn
        text = event.text.strip()
        previous = self._turns.get(turn)
        if event.kind == "final":
            first = previous is None or not previous[1]
            self._turns[turn] = (text, True)
        else:
            first = False
            if previous is not None and previous[1]:
                return turn, False
            self._turns[turn] = (text, False)
        if turn not in self._session_turns:
            self._session_turns.append(turn)
        return turn, first

    def commit_partials(self) -> list[str]:
        """Commit the current session's partial turns as they stand; returns their texts.

        For a take that broke off mid-sentence: no final will come for them, and the words
        heard so far are worth keeping.
        """
        kept = []
        for turn in self._session_turns:
            text, final = self._turns[turn]
            if text and not final:
                self._turns[turn] = (text, True)
                kept.append(text)
        return kept

    def set_refused(self, turn: int, refused: bool) -> None:
        """Mark ``turn``'s final as refused by the classroom filter (left out of :meth:`session_text`)."""
        if refused:
            self._refused.add(turn)
        else:
            self._refused.discard(turn)

    def text_of(self, turn: int) -> str:
        """The current text of ``turn`` (empty when unknown)."""
        return self._turns.get(turn, ("", False))[0]

    def session_text(self) -> str:
        """The committed (final) text of the current recording session, sentences joined.

        Sentences the classroom filter refused are left out: this text goes into the prompt box.
        """
        return " ".join(
            t
            for turn in self._session_turns
            for t, final in [self._turns[turn]]
            if final and t and turn not in self._refused
        )

    def clear(self) -> None:
        """Forget every turn."""
        self._turns.clear()
        self._offset = 0
        self._session_turns = []
        self._refused.clear()

    def to_html(self, mask: Callable[[str], str] | None = None) -> str:
        """Finals as plain text, partials in a lighter ``s2i-partial`` span, all escaped.

        ``mask`` turns each turn's text into what the screen may show (the classroom filter's
        ``•••`` for refused words) before it is escaped.
        """
        parts = []
        for turn in sorted(self._turns):
            text, final = self._turns[turn]
            if not text:
                continue
            if mask is not None:
                text = mask(text)
            css = "s2i-final" if final else "s2i-partial"
            parts.append(f'<span class="{css}" data-turn="{turn}">{html.escape(text)}</span>')
        return " ".join(parts)

    def plain_text(self) -> str:
        """Every turn's text in order (finals and partials)."""
        return " ".join(t for _, (t, _f) in sorted(self._turns.items()) if t)


class Controller:
    """Everything the panel remembers and decides, with no widget in sight.

    Parameters
    ----------
    history_limit
        How many finished generations the history strip keeps (oldest dropped first).
    """

    def __init__(self, *, history_limit: int = 24) -> None:
        self.transcript = Transcript()
        self.history: list[HistoryEntry] = []
        self.hands_free = False
        self._queue: deque[GenerationRequest] = deque()
        self._running: GenerationRequest | None = None
        self._history_limit = history_limit
        self._lock = threading.RLock()
        self._ids = itertools.count()

    # --- transcript ----------------------------------------------------------------------------

    def begin_recording(self) -> None:
        """A new recording session starts."""
        with self._lock:
            self.transcript.begin_session()

    def on_transcript(
        self, event: TranscriptEvent, *, image_count: int, seed: int | None, refused: bool = False
    ) -> tuple[str | None, GenerationRequest | None]:
        """Apply a transcript event.

        Returns ``(new prompt text or None, request to start now or None)``. The prompt text is
        set on every final: the whole session's committed text, or in hands-free mode just this
        sentence. In hands-free mode the first final of each turn is queued for generation; a
        later (formatted) final of the same turn updates the queued prompt if it has not started.

        ``refused``: the classroom filter refused this final. It is never queued (a later final
        of the same turn that is refused takes its turn's request out of the queue), and never
        put in the prompt box: hands-free leaves the prompt as it was, otherwise the session's
        text leaves the sentence out.
        """
        with self._lock:
            turn, first_final = self.transcript.apply(event)
            if event.kind != "final":
                return None, None
            self.transcript.set_refused(turn, refused)
            sentence = self.transcript.text_of(turn)
            if not self.hands_free:
                return self.transcript.session_text() or None, None
            if refused:
                self._queue = deque(r for r in self._queue if r.turn != turn)
                return None, None
            if not sentence:
                return None, None
            if not first_final:
                self._queue = deque(
                    dataclasses.replace(r, prompt=sentence) if r.turn == turn else r for r in self._queue
                )
                return sentence, None
            request = GenerationRequest(new_id(), sentence, image_count, seed, turn)
            return sentence, self.submit(request)

    def keep_unfinished(self) -> str | None:
        """The take broke off: keep its unfinished sentence; returns the new prompt, or None.

        The partial words become committed text (no final will replace them). The prompt is the
        session's text, or in hands-free mode the kept words; hands-free does not draw them by
        itself (the sentence was cut), Generate does. None when there was nothing unfinished.
        """
        with self._lock:
            kept = self.transcript.commit_partials()
            if not kept:
                return None
            return " ".join(kept) if self.hands_free else self.transcript.session_text() or None

    # --- generation queue ----------------------------------------------------------------------

    def make_request(self, prompt: str, *, image_count: int, seed: int | None) -> GenerationRequest:
        """Validate and build a request from the widgets' values.

        Raises
        ------
        ConfigError
            When the prompt is empty or the image count is out of range.
        """
        prompt = " ".join(prompt.split())
        if not prompt:
            raise ConfigError("The prompt is empty: say or type what to draw, then press Generate.")
        if not 1 <= image_count <= MAX_IMAGE_COUNT:
            raise ConfigError(f"Number of images must be between 1 and {MAX_IMAGE_COUNT}.")
        return GenerationRequest(new_id(), prompt, image_count, seed)

    def submit(self, request: GenerationRequest) -> GenerationRequest | None:
        """Queue ``request``; returns it when it may start now (nothing else running), else None.

        Never cancels the running generation: new requests wait their turn.
        """
        with self._lock:
            if self._running is None:
                self._running = request
                return request
            self._queue.append(request)
            while len(self._queue) > _MAX_QUEUED:
                self._queue.popleft()
            return None

    def finish(self, entry: HistoryEntry | None) -> GenerationRequest | None:
        """The running generation ended (``entry`` None on failure); returns the next to start."""
        with self._lock:
            if entry is not None and entry.images:
                self.history.append(entry)
                del self.history[: -self._history_limit]
            self._running = self._queue.popleft() if self._queue else None
            return self._running

    @property
    def running(self) -> GenerationRequest | None:
        """The generation in progress, if any."""
        return self._running

    @property
    def queued(self) -> list[GenerationRequest]:
        """Requests waiting, oldest first."""
        with self._lock:
            return list(self._queue)

    def find(self, entry_id: str) -> HistoryEntry | None:
        """The history entry with ``entry_id``."""
        with self._lock:
            return next((e for e in self.history if e.id == entry_id), None)


def parse_seed(text: str) -> int | None:
    """Read the seed field: blank means random (None), else a non-negative integer.

    Raises
    ------
    ConfigError
        When the text is not a whole number >= 0.
    """
    text = text.strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"Seed must be a whole number (or blank for random), not {text!r}.") from None
    if value < 0:
        raise ConfigError("Seed must be 0 or more (or blank for random).")
    return value


def describe_error(exc: BaseException) -> str:
    """One readable line for the panel: what went wrong and what to do, never a traceback.

    The package's own errors already carry that sentence; this adds which part failed. Anything
    else (a bug) is named by type with a pointer to the log.
    """
    message = " ".join(str(exc).split())
    if isinstance(exc, RecorderError):
        return f"Microphone: {message}"
    if isinstance(exc, AuthError):
        service = exc.service or "a service"
        return f"Key refused by {service}: {message}"
    if isinstance(exc, ServerUnreachable):
        return f"Image server: {message}"
    if isinstance(exc, ServiceUnreachable):
        return f"Speech service: {message}"
    if isinstance(exc, TranscriptionError):
        return f"Speech service: {message}"
    if isinstance(exc, ImageServerError):
        return f"Image server: {message}"
    if isinstance(exc, AudioError):
        return f"Audio: {message}"
    if isinstance(exc, (ConfigError, ModelNotAvailable)):
        return message
    if isinstance(exc, Speech2ImageError):
        return message
    if isinstance(exc, TimeoutError):
        return "The operation timed out: check the network and the image server, then try again."
    return (
        f"Unexpected error ({type(exc).__name__}: {message[:200]}). "
        "The panel still works; the kernel log has the details."
    )


def seed_of(value: Any) -> int | None:
    """A seed reported by the server as an int, or None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None
