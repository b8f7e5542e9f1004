"""AssemblyAI streaming v3, without sockets: URLs, messages, turn bookkeeping and close codes.

Everything here is a plain function or a small class over plain data, so it is tested with literal
strings; :mod:`speech2image_nb.speech.assemblyai` does the network I/O around it. The protocol
facts come from the v3 documentation and the official SDK (see the project's
``specs/assemblyai-streaming.md``):

- every session names its ``speech_model`` (the service has no default and refuses a session
  without one) and its ``sample_rate``;
- audio goes as binary frames of raw PCM, 50-1000 ms each (the SDK keeps to 50-200 ms, and so do
  we), sent no faster than real time;
- the server answers with JSON text frames discriminated by ``type``: ``Begin`` first, then
  ``Turn`` updates (same ``turn_order`` while a turn grows; ``end_of_turn`` closes it; with
  ``format_turns`` a second, formatted copy follows), ``Termination`` after our ``Terminate``;
- errors arrive as WebSocket close codes (1008, 3005-3009) or an ``Error`` frame.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Union
from urllib.parse import urlencode

from ..config import (
    DEFAULT_ASSEMBLYAI_SPEECH_MODEL,
    MAX_ASSEMBLYAI_KEYTERM_CHARS,
    MAX_ASSEMBLYAI_KEYTERMS,
)
from ..errors import (
    AudioRateError,
    AuthError,
    SessionCancelled,
    SessionExpired,
    Speech2ImageError,
    TooManySessions,
    TranscriptionError,
)
from .base import TranscriptEvent, Word

__all__ = [
    "DEFAULT_SPEECH_MODEL",
    "FORCE_ENDPOINT",
    "KEEP_ALIVE",
    "MAX_FRAME_MS",
    "MIN_FRAME_MS",
    "TERMINATE",
    "BeginMessage",
    "ErrorMessage",
    "OtherMessage",
    "Rechunker",
    "ServerMessage",
    "StreamingParams",
    "TerminationMessage",
    "TurnMessage",
    "TurnTracker",
    "Word",
    "build_streaming_url",
    "error_for_close",
    "parse_message",
    "token_url",
]

#: English Universal-Streaming (the service requires a model; this is ours when none is chosen).
DEFAULT_SPEECH_MODEL = DEFAULT_ASSEMBLYAI_SPEECH_MODEL

MIN_FRAME_MS = 50  # the server closes with 3007 below this
MAX_FRAME_MS = 200  # the documented ceiling is 1000 ms; the official SDK keeps to 200 ms

TERMINATE = json.dumps({"type": "Terminate"})
FORCE_ENDPOINT = json.dumps({"type": "ForceEndpoint"})
KEEP_ALIVE = json.dumps({"type": "KeepAlive"})

SERVICE = "AssemblyAI"


# --- connection parameters ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StreamingParams:
    """Query parameters of a v3 streaming session (``None`` = leave to the server's default).

    ``sample_rate_hz``, ``encoding`` and ``speech_model`` are always sent. Turn detection: a turn
    ends when the model is at least ``end_of_turn_confidence_threshold`` sure and
    ``min_turn_silence_ms`` of silence passed, or after ``max_turn_silence_ms`` of silence in any
    case. ``keyterms_prompt``: words to expect (at most 100, of at most 50 characters each).
    """

    sample_rate_hz: int = 16_000
    encoding: str = "pcm_s16le"
    speech_model: str = DEFAULT_SPEECH_MODEL
    format_turns: bool = True
    end_of_turn_confidence_threshold: float | None = None
    min_turn_silence_ms: int | None = None
    max_turn_silence_ms: int | None = None
    vad_threshold: float | None = None
    keyterms_prompt: tuple[str, ...] = ()
    inactivity_timeout_s: int | None = None

    def __post_init__(self) -> None:
        if self.sample_rate_hz <= 0:
            raise ValueError(f"sample_rate_hz must be positive, got {self.sample_rate_hz}")
        threshold = self.end_of_turn_confidence_threshold
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ValueError(f"end_of_turn_confidence_threshold must be in [0, 1], got {threshold}")
        if self.inactivity_timeout_s is not None and not 5 <= self.inactivity_timeout_s <= 3600:
            raise ValueError("inactivity_timeout_s must be between 5 and 3600 s")
        if not self.speech_model:
            raise ValueError("speech_model is required by the service")
        for name in ("min_turn_silence_ms", "max_turn_silence_ms"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be 0 or more, got {value}")
        if len(self.keyterms_prompt) > MAX_ASSEMBLYAI_KEYTERMS or any(
            len(term) > MAX_ASSEMBLYAI_KEYTERM_CHARS for term in self.keyterms_prompt
        ):
            raise ValueError(
                f"keyterms_prompt takes at most {MAX_ASSEMBLYAI_KEYTERMS} terms of at most "
                f"{MAX_ASSEMBLYAI_KEYTERM_CHARS} characters"
            )

    def query(self) -> dict[str, str]:
        """The query string items, as the service spells them (booleans as ``true``/``false``)."""
        items: dict[str, Any] = {
            "sample_rate": self.sample_rate_hz,
            "encoding": self.encoding,
            "speech_model": self.speech_model,
            "format_turns": self.format_turns,
            "end_of_turn_confidence_threshold": self.end_of_turn_confidence_threshold,
            "min_turn_silence": self.min_turn_silence_ms,
            "max_turn_silence": self.max_turn_silence_ms,
            "vad_threshold": self.vad_threshold,
            "keyterms_prompt": list(self.keyterms_prompt) or None,
            "inactivity_timeout": self.inactivity_timeout_s,
        }
        out: dict[str, str] = {}
        for key, value in items.items():
            if value is None:
                continue
            if isinstance(value, bool):
                out[key] = "true" if value else "false"
            elif isinstance(value, list):
                out[key] = json.dumps(value)
            else:
                out[key] = str(value)
        return out


def build_streaming_url(base_url: str, params: StreamingParams, *, token: str | None = None) -> str:
    """The WebSocket URL of a session: ``base_url`` (``.../v3/ws``) plus the query string.

    A temporary ``token`` goes in the query (that is how the service documents it); an API key
    never does, it travels in the ``Authorization`` header.
    """
    query = params.query()
    if token is not None:
        query["token"] = token
    separator = "&" if "?" in base_url else "?"
    return f"{base_url}{separator}{urlencode(query)}"


def token_url(streaming_url: str) -> str:
    """``wss://host/v3/ws`` -> ``https://host/v3/token`` (``ws://`` -> ``http://``)."""
    scheme, _, rest = streaming_url.partition("://")
    host = rest.split("/", 1)[0]
    http_scheme = {"wss": "https", "ws": "http"}.get(scheme)
    if http_scheme is None:
        raise ValueError(f"not a WebSocket URL: {streaming_url!r}")
    return f"{http_scheme}://{host}/v3/token"


# --- server messages ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BeginMessage:
    """The session started: ``session_id`` and when it expires (Unix seconds)."""

    session_id: str
    expires_at: int


@dataclasses.dataclass(frozen=True)
class TurnMessage:
    """One update of a turn (see the module docstring)."""

    turn_order: int
    transcript: str
    end_of_turn: bool
    is_formatted: bool
    words: tuple[Word, ...] = ()
    end_of_turn_confidence: float = 0.0


@dataclasses.dataclass(frozen=True)
class TerminationMessage:
    """The server finished the session after our ``Terminate``."""

    audio_duration_s: float = 0.0
    session_duration_s: float = 0.0


@dataclasses.dataclass(frozen=True)
class ErrorMessage:
    """An ``Error`` frame (or a bare ``{"error": ...}``); a close usually follows."""

    error: str
    error_code: int | None = None


@dataclasses.dataclass(frozen=True)
class OtherMessage:
    """Anything else (``SpeechStarted``, ``Warning``, ``Heartbeat``, new types): ignored by clients."""

    type: str
    data: dict[str, Any]


ServerMessage = Union[  # noqa: UP007 (a runtime alias; `|` needs Python 3.10 objects)
    BeginMessage, TurnMessage, TerminationMessage, ErrorMessage, OtherMessage
]


def _word(data: dict[str, Any]) -> Word:
    return Word(
        text=str(data.get("text", "")),
        start_s=float(data.get("start", 0)) / 1000.0,
        end_s=float(data.get("end", 0)) / 1000.0,
        confidence=float(data.get("confidence", 1.0)),
        is_final=bool(data.get("word_is_final", True)),
    )


def parse_message(text: str | bytes) -> ServerMessage:
    """Parse one server text frame.

    Raises
    ------
    ValueError, KeyError, TypeError
        The frame is not a JSON object, or a field is missing or of the wrong type (a protocol
        violation the caller logs and skips).
    """
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    kind = data.get("type")
    if kind == "Begin":
        return BeginMessage(session_id=str(data.get("id", "")), expires_at=int(data.get("expires_at", 0)))
    if kind == "Turn":
        return TurnMessage(
            turn_order=int(data["turn_order"]),
            transcript=str(data.get("transcript", "")),
            end_of_turn=bool(data.get("end_of_turn", False)),
            is_formatted=bool(data.get("turn_is_formatted", False)),
            words=tuple(_word(w) for w in data.get("words") or () if isinstance(w, dict)),
            end_of_turn_confidence=float(data.get("end_of_turn_confidence") or 0.0),
        )
    if kind == "Termination":
        return TerminationMessage(
            audio_duration_s=float(data.get("audio_duration_seconds") or 0),
            session_duration_s=float(data.get("session_duration_seconds") or 0),
        )
    if kind == "Error" or (kind is None and "error" in data):
        code = data.get("error_code")
        return ErrorMessage(
            error=str(data.get("error", "")), error_code=int(code) if code is not None else None
        )
    return OtherMessage(type=str(kind), data=data)


class TurnTracker:
    """Turns :class:`TurnMessage` updates into :class:`TranscriptEvent`, keyed by ``turn_order``.

    Every update replaces its turn's text (never appends). A partial shows the finalized
    ``transcript`` plus the trailing words that are not final yet; ``end_of_turn`` commits the
    turn (a ``final``); a formatted copy of a committed turn is a second ``final`` with
    ``is_formatted=True`` that replaces the first. Stale updates (a partial for a committed turn,
    a repeat of the same text) give no event.
    """

    def __init__(self) -> None:
        self._text_from_turn: dict[int, str] = {}
        self._final_turns: set[int] = set()
        self._formatted_turns: set[int] = set()

    def update(self, message: TurnMessage) -> TranscriptEvent | None:
        """The event this update means for the display, or ``None`` when it changes nothing."""
        turn = message.turn_order
        if not message.end_of_turn:
            if turn in self._final_turns:
                return None
            pending = [w.text for w in message.words if not w.is_final]
            text = " ".join(part for part in [message.transcript.strip(), *pending] if part)
            if not text or self._text_from_turn.get(turn) == text:
                return None
            self._text_from_turn[turn] = text
            return TranscriptEvent("partial", text, turn, message.words, False)
        if turn in self._formatted_turns or (turn in self._final_turns and not message.is_formatted):
            return None
        text = message.transcript.strip()
        self._text_from_turn[turn] = text
        self._final_turns.add(turn)
        if message.is_formatted:
            self._formatted_turns.add(turn)
        return TranscriptEvent("final", text, turn, message.words, message.is_formatted)

    def final_text(self) -> str:
        """All committed turns in order, joined with spaces (empty turns left out)."""
        return " ".join(self._text_from_turn[t] for t in sorted(self._final_turns) if self._text_from_turn[t])


# --- close codes -------------------------------------------------------------------------------


def error_for_close(code: int | None, reason: str = "") -> Speech2ImageError:
    """The error a user can act on for a close code (or ``Error`` frame code) and the server's reason."""
    said = f" (the service said: {reason})" if reason else ""
    if code == 1008:
        return AuthError(
            f"AssemblyAI refused the connection{said}: check your AssemblyAI key / balance "
            "(ASSEMBLYAI_API_KEY).",
            service=SERVICE,
        )
    if code == 3005:
        return SessionCancelled(
            f"AssemblyAI cancelled the session{said}: record again.",
            code=code,
            reason=reason,
        )
    if code == 3007:
        return AudioRateError(
            f"AssemblyAI rejected the audio timing{said}: audio must come in 50-1000 ms pieces at "
            "no more than real-time speed.",
            code=code,
            reason=reason,
        )
    if code == 3008:
        return SessionExpired(
            f"The AssemblyAI session reached its maximum duration{said}: start recording again.",
            code=code,
            reason=reason,
        )
    if code == 3009:
        return TooManySessions(
            f"AssemblyAI refused a new session: too many sessions at once{said}. Close other "
            "recordings or wait a minute.",
            code=code,
            reason=reason,
        )
    return TranscriptionError(
        f"AssemblyAI ended the session with code {code}{said or ' (no reason given)'}.",
        code=code,
        reason=reason,
    )


# --- audio framing -----------------------------------------------------------------------------


class Rechunker:
    """Cut a byte stream of int16 PCM into frames of exactly ``frame_ms``.

    The service closes the session for frames under 50 ms (or over 1000 ms), and a recorder may
    deliver any size; :meth:`flush` pads the last remainder with silence to at least 50 ms.
    """

    def __init__(self, *, frame_ms: int = 100, sample_rate_hz: int = 16_000) -> None:
        if not MIN_FRAME_MS <= frame_ms <= MAX_FRAME_MS:
            raise ValueError(f"frame_ms must be between {MIN_FRAME_MS} and {MAX_FRAME_MS}, got {frame_ms}")
        self.frame_bytes = sample_rate_hz * frame_ms // 1000 * 2
        self.min_bytes = sample_rate_hz * MIN_FRAME_MS // 1000 * 2
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Add ``data``; return the complete frames now available."""
        self._buffer += data
        frames = []
        while len(self._buffer) >= self.frame_bytes:
            frames.append(bytes(self._buffer[: self.frame_bytes]))
            del self._buffer[: self.frame_bytes]
        return frames

    def flush(self) -> bytes | None:
        """The remainder padded with zeros to at least 50 ms, or ``None`` when nothing is left."""
        if not self._buffer:
            return None
        if len(self._buffer) % 2:
            self._buffer += b"\x00"
        data = bytes(self._buffer) + b"\x00" * max(0, self.min_bytes - len(self._buffer))
        self._buffer.clear()
        return data
