"""AssemblyAI real-time speech-to-text (streaming API v3) over ``websockets``.

A session is one WebSocket: audio goes out as binary frames from a producer task while the
caller's ``async for`` reads Turn messages; when the audio ends we send ``Terminate`` and keep
reading until ``Termination`` (at most ``terminate_timeout_s``), because the service sends the
last sentence *after* ``Terminate`` and a client that closes early loses it.

Whole recordings (:meth:`AssemblyAITranscriber.transcribe`) also go through streaming, at real
time. Why not the pre-recorded API (upload, create, poll): the recordings here are spoken image
prompts of a few seconds, where streaming takes about as long as the upload-and-poll round trips
(the SDK polls every 3 s); it needs no second API whose model names change (``speech_models`` is
now required and its values churn), works with the same key or temporary token, keeps the user's
recording out of AssemblyAI's upload storage, and is covered by the same local fake in tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import AuthError, ConfigError, ServiceUnreachable, TranscriptionError
from . import assemblyai_protocol as proto
from .base import TranscriptEvent

if TYPE_CHECKING:
    import requests

    from ..audio import AudioSource
    from ..config import Settings

__all__ = ["AssemblyAITranscriber", "RedactingLogger", "create_temporary_token"]

_LOG = logging.getLogger(__name__)

_POLL_S = 0.25  # how often the reader checks the shutdown deadline while waiting for a message


class RedactingLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger for ``websockets`` that masks credentials in its DEBUG handshake lines.

    ``websockets`` logs every request header at DEBUG, ``Authorization`` included, and the request
    line with its query (where a temporary token travels): both are masked here.
    """

    def __init__(self, logger: logging.Logger, secrets: tuple[str, ...] = ()) -> None:
        super().__init__(logger, {})
        self._secrets = tuple(s for s in secrets if s)

    def _mask(self, value: object) -> object:
        if isinstance(value, str):
            for secret in self._secrets:
                value = value.replace(secret, "**********")
        return value

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if len(args) == 2 and isinstance(args[0], str) and args[0].lower() == "authorization":
            args = (args[0], "**********")
        super().log(level, self._mask(msg), *(self._mask(a) for a in args), **kwargs)


def _mask_url(url: str) -> str:
    """The URL without its query string (a temporary token may be in it)."""
    return url.split("?", 1)[0]


class AssemblyAITranscriber:
    """Live transcription with AssemblyAI's Universal-Streaming (v3).

    Parameters
    ----------
    settings
        Where the key and the streaming URL come from (default: :meth:`Settings.resolve`).
    token
        A temporary token (see :func:`create_temporary_token`) to use instead of the API key;
        it is sent in the URL, as the service documents.
    speech_model, keyterms
        The streaming model and the words to expect (names, places); ``None`` takes them from
        ``settings`` (``S2I_ASSEMBLYAI_SPEECH_MODEL``, ``S2I_ASSEMBLYAI_KEYTERMS``).
    end_of_turn_confidence_threshold, min_turn_silence_ms, max_turn_silence_ms
        Turn detection (see :class:`~.assemblyai_protocol.StreamingParams`); ``None`` takes them
        from ``settings``, whose ``None`` leaves them to the service.
    format_turns
        Ask for a punctuated, cased copy of every finished turn.
    frame_ms
        Audio frame length sent per WebSocket message (50-200 ms).
    pace
        Never send audio ahead of real time (the service closes with 3007 otherwise). Leave on.
    force_endpoint_on_stop
        Send ``ForceEndpoint`` before ``Terminate`` so an unfinished sentence is closed at once.
    open_timeout_s, terminate_timeout_s, close_timeout_s
        Handshake (per attempt), wait for ``Termination`` after ``Terminate``, closing handshake.
    connect_retries, retry_backoff_s
        Failed handshakes (network, timeout) are retried this often, waiting ``retry_backoff_s``
        then twice that; then :class:`ServiceUnreachable`. A refused key is never retried.
    connect
        The WebSocket connect factory (default ``websockets.asyncio.client.connect``).
    """

    name = "assemblyai"

    def __init__(
        self,
        *,
        settings: Settings | None = None,
        token: str | None = None,
        speech_model: str | None = None,
        format_turns: bool = True,
        end_of_turn_confidence_threshold: float | None = None,
        min_turn_silence_ms: int | None = None,
        max_turn_silence_ms: int | None = None,
        keyterms: Sequence[str] | None = None,
        frame_ms: int = 100,
        pace: bool = True,
        force_endpoint_on_stop: bool = False,
        open_timeout_s: float = 10.0,
        terminate_timeout_s: float = 5.0,
        close_timeout_s: float = 5.0,
        connect_retries: int = 2,
        retry_backoff_s: float = 0.5,
        connect: Callable[..., Any] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        if settings is None:
            from ..config import Settings

            settings = Settings.resolve()
        self.settings = settings

        def given(value: Any, setting: Any) -> Any:
            return setting if value is None else value

        self.params = proto.StreamingParams(
            speech_model=given(speech_model, settings.assemblyai_speech_model),
            format_turns=format_turns,
            end_of_turn_confidence_threshold=given(
                end_of_turn_confidence_threshold, settings.assemblyai_end_of_turn_confidence_threshold
            ),
            min_turn_silence_ms=given(min_turn_silence_ms, settings.assemblyai_min_turn_silence_ms),
            max_turn_silence_ms=given(max_turn_silence_ms, settings.assemblyai_max_turn_silence_ms),
            keyterms_prompt=tuple(given(keyterms, settings.assemblyai_keyterms)),
        )
        proto.Rechunker(frame_ms=frame_ms)  # validates frame_ms now, not mid-session
        self.frame_ms = frame_ms
        self.pace = pace
        self.force_endpoint_on_stop = force_endpoint_on_stop
        self.open_timeout_s = open_timeout_s
        self.terminate_timeout_s = terminate_timeout_s
        self.close_timeout_s = close_timeout_s
        self.connect_retries = connect_retries
        self.retry_backoff_s = retry_backoff_s
        self._token = token
        self._connect = connect
        self._log = logger or _LOG
        self._active: tuple[asyncio.AbstractEventLoop, Any] | None = None

    # --- connection -----------------------------------------------------------------------------

    def _url(self) -> str:
        return proto.build_streaming_url(
            self.settings.assemblyai_streaming_url, self.params, token=self._token
        )

    def _headers(self) -> dict[str, str]:
        if self._token is not None:
            return {}
        key = self.settings.assemblyai_api_key
        if not key:
            raise ConfigError(
                "No AssemblyAI key: set ASSEMBLYAI_API_KEY (or a Colab secret of that name), "
                "or use engine='whisper'."
            )
        return {"Authorization": key.reveal()}

    async def _open(self) -> Any:
        """Open the WebSocket, retrying failed handshakes; a refused key is an AuthError at once."""
        from websockets.asyncio.client import connect as default_connect
        from websockets.exceptions import InvalidHandshake, InvalidStatus

        connect: Callable[..., Any] = self._connect or default_connect

        url, headers = self._url(), self._headers()
        shown = _mask_url(url)
        last: BaseException | None = None
        for attempt in range(self.connect_retries + 1):
            if attempt:
                delay = self.retry_backoff_s * 2 ** (attempt - 1) * (1 + 0.1 * random.random())
                self._log.info("retrying AssemblyAI handshake in %.1f s (%s)", delay, type(last).__name__)
                await asyncio.sleep(delay)
            try:
                return await connect(
                    url,
                    additional_headers=headers,
                    logger=RedactingLogger(
                        logging.getLogger("websockets.client"),
                        (*headers.values(), *([self._token] if self._token else [])),
                    ),
                    open_timeout=self.open_timeout_s,
                    close_timeout=self.close_timeout_s,
                    max_size=2**20,
                )
            except InvalidStatus as exc:
                status = exc.response.status_code
                if status in (401, 403):
                    raise AuthError(
                        f"AssemblyAI refused the key (HTTP {status}): check your AssemblyAI key / "
                        "balance (ASSEMBLYAI_API_KEY).",
                        service=proto.SERVICE,
                    ) from None
                raise ServiceUnreachable(
                    f"AssemblyAI's streaming endpoint {shown} answered HTTP {status}: check "
                    "ASSEMBLYAI_STREAMING_URL.",
                    url=shown,
                ) from None
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                last = exc
        raise ServiceUnreachable(
            f"Could not reach AssemblyAI at {shown} after {self.connect_retries + 1} attempts "
            f"({type(last).__name__}: {last}): check the internet connection, or use engine='whisper'.",
            url=shown,
        ) from last

    # --- streaming ------------------------------------------------------------------------------

    def force_endpoint(self) -> None:
        """End the current turn now (the user stopped mid-sentence). Thread-safe; no-op when idle."""
        active = self._active
        if active is None:
            return
        loop, ws = active

        def send() -> None:
            task = loop.create_task(ws.send(proto.FORCE_ENDPOINT))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

        loop.call_soon_threadsafe(send)

    async def _produce(self, ws: Any, chunks: AsyncIterable[bytes], terminated: asyncio.Event) -> None:
        """Send ``chunks`` as paced frames, then (ForceEndpoint and) Terminate."""
        loop = asyncio.get_running_loop()
        rechunker = proto.Rechunker(frame_ms=self.frame_ms)
        started: float | None = None
        sent_s = 0.0

        async def send(frame: bytes) -> None:
            nonlocal started, sent_s
            now = loop.time()
            if started is None:
                started = now
            elif self.pace and started + sent_s > now:
                await asyncio.sleep(started + sent_s - now)
            await ws.send(frame)
            sent_s += len(frame) / 2 / self.params.sample_rate_hz

        async for chunk in chunks:
            for frame in rechunker.feed(bytes(chunk)):
                await send(frame)
        last = rechunker.flush()
        if last is not None:
            await send(last)
        if self.force_endpoint_on_stop:
            await ws.send(proto.FORCE_ENDPOINT)
        await ws.send(proto.TERMINATE)
        terminated.set()
        self._log.debug("sent Terminate after %.2f s of audio", sent_s)

    async def stream(self, chunks: AsyncIterable[bytes]) -> AsyncIterator[TranscriptEvent]:
        """Stream 16 kHz int16 PCM ``chunks`` and yield partial and final transcript events.

        Ends after the service confirms the end of the session (so the last sentence is never
        lost), or ``terminate_timeout_s`` after ``Terminate`` at the latest.

        A session that breaks mid-take (the connection drops without a close frame, or the
        service cancels it with 3005) raises at once and is not resumed: the events already
        yielded stand, and the next call opens a new session. Why not reconnect and re-send the
        unfinished turn's audio: the service refuses audio faster than real time (3007), so
        every re-sent second would stay as a second of delay for the rest of the take; a network
        that just dropped one connection often drops the next handshake too (retried for
        ``open_timeout_s`` several times, while the person goes on speaking into nothing); the
        re-sent turn would come back under new turn numbers, to be merged with the words
        already shown; and 3005 is the service's own failure, which a retry may meet again. A
        spoken prompt is a sentence or two: the caller keeps the words it has and the person
        says the rest in a new take (what the panel does).

        Raises
        ------
        AuthError, ServiceUnreachable, TranscriptionError (and subclasses)
            See :func:`~.assemblyai_protocol.error_for_close`.
        """
        from websockets.exceptions import ConnectionClosed

        loop = asyncio.get_running_loop()
        ws = await self._open()
        tracker = proto.TurnTracker()
        terminated = asyncio.Event()
        producer: asyncio.Task[None] | None = None
        deadline: float | None = None
        begin_deadline = loop.time() + self.open_timeout_s
        try:
            while True:
                if producer is None and loop.time() > begin_deadline:
                    raise ServiceUnreachable(
                        f"AssemblyAI did not start the session within {self.open_timeout_s} s: try again.",
                        url=_mask_url(self._url()),
                    )
                if producer is not None and producer.done() and not producer.cancelled():
                    failure = producer.exception()
                    if failure is not None and not isinstance(failure, ConnectionClosed):
                        raise failure  # the audio source failed: the caller's error, unchanged
                if terminated.is_set() and deadline is None:
                    deadline = loop.time() + self.terminate_timeout_s
                wait_s = _POLL_S if deadline is None else min(_POLL_S, deadline - loop.time())
                if wait_s <= 0:
                    self._log.warning(
                        "AssemblyAI sent no Termination within %.1f s of Terminate", self.terminate_timeout_s
                    )
                    return
                try:
                    raw = await asyncio.wait_for(ws.recv(), wait_s)
                except asyncio.TimeoutError:
                    # Nothing queued. A close frame may be in while the closing handshake is still
                    # pending (recv() raises only when it completes): act on it now.
                    rcvd = getattr(getattr(ws, "protocol", None), "close_rcvd", None)
                    if rcvd is None:
                        continue
                    if rcvd.code == 1000:
                        return
                    raise proto.error_for_close(rcvd.code, rcvd.reason) from None
                except ConnectionClosed as exc:
                    frame = exc.rcvd
                    if frame is not None and frame.code == 1000:
                        return
                    if frame is None:
                        raise TranscriptionError(
                            "The connection to AssemblyAI was lost mid-session (closed without a "
                            "close frame): record again.",
                            code=None,
                            reason="connection lost",
                        ) from exc
                    raise proto.error_for_close(frame.code, frame.reason) from exc
                if isinstance(raw, bytes):
                    self._log.debug("ignoring a binary frame from the server")
                    continue
                try:
                    message = proto.parse_message(raw)
                except (ValueError, KeyError, TypeError):
                    self._log.warning("ignoring a malformed message from AssemblyAI")
                    continue
                if isinstance(message, proto.BeginMessage):
                    self._log.debug("AssemblyAI session %s began", message.session_id)
                    if producer is None:
                        self._active = (loop, ws)
                        producer = asyncio.create_task(self._produce(ws, chunks, terminated))
                elif isinstance(message, proto.TurnMessage):
                    event = tracker.update(message)
                    if event is not None:
                        yield event
                elif isinstance(message, proto.TerminationMessage):
                    self._log.debug("AssemblyAI session ended (%.0f s of audio)", message.audio_duration_s)
                    return
                elif isinstance(message, proto.ErrorMessage):
                    raise proto.error_for_close(message.error_code, message.error)
                else:
                    self._log.debug("ignoring AssemblyAI message of type %s", message.type)
        finally:
            self._active = None
            if producer is not None:
                if not producer.done():
                    producer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await producer  # also collects a failure already reported via the close code
            await ws.close()

    async def transcribe(self, audio: AudioSource | bytes) -> str:
        """Transcribe a whole recording by streaming it at real time (see the module docstring).

        Takes about as long as the recording. Returns the formatted text of all turns.
        """
        from ..audio import chunk_pcm, decode_audio

        pcm = await asyncio.to_thread(decode_audio, audio)

        async def chunks() -> AsyncIterator[bytes]:
            for chunk in chunk_pcm(pcm, self.frame_ms):
                yield chunk

        tracker_text: dict[int, str] = {}
        async for event in self.stream(chunks()):
            if event.kind == "final":
                tracker_text[event.turn] = event.text
        return " ".join(text for _, text in sorted(tracker_text.items()) if text)


def create_temporary_token(
    *,
    settings: Settings | None = None,
    expires_in_s: int = 60,
    max_session_duration_s: int | None = None,
    timeout_s: tuple[float, float] = (5.0, 10.0),
    session: requests.Session | None = None,
) -> str:
    """Mint a single-use streaming token (``GET /v3/token``) for code that must not hold the key.

    A browser cannot send the ``Authorization`` header on a WebSocket, so JavaScript in the
    notebook page gets a token minted here by the kernel instead of the key.

    Parameters
    ----------
    expires_in_s
        How long the token may wait before its session starts (1-600 s).
    max_session_duration_s
        Cap on the session it opens (60-10800 s; service default 3 h).
    timeout_s
        ``(connect, read)`` timeout of the HTTP request.
    """
    import requests

    if not 1 <= expires_in_s <= 600:
        raise ValueError(f"expires_in_s must be between 1 and 600, got {expires_in_s}")
    if settings is None:
        from ..config import Settings

        settings = Settings.resolve()
    key = settings.assemblyai_api_key
    if not key:
        raise ConfigError("No AssemblyAI key: set ASSEMBLYAI_API_KEY to mint a temporary token.")
    url = proto.token_url(settings.assemblyai_streaming_url)
    query: dict[str, int] = {"expires_in_seconds": expires_in_s}
    if max_session_duration_s is not None:
        query["max_session_duration_seconds"] = max_session_duration_s
    http = session or requests.Session()
    try:
        response = http.get(url, params=query, headers={"Authorization": key.reveal()}, timeout=timeout_s)
    except requests.RequestException as exc:
        raise ServiceUnreachable(
            f"Could not reach AssemblyAI at {url} ({type(exc).__name__}).", url=url
        ) from exc
    finally:
        if session is None:
            http.close()
    if response.status_code in (401, 403):
        raise AuthError(
            f"AssemblyAI refused to mint a token (HTTP {response.status_code}): check your AssemblyAI "
            "key / balance (ASSEMBLYAI_API_KEY).",
            service=proto.SERVICE,
        )
    try:
        body = response.json()
    except ValueError:
        body = {}
    token = body.get("token") if isinstance(body, dict) else None
    if response.status_code != 200 or not isinstance(token, str):
        reason = body.get("error", "") if isinstance(body, dict) else ""
        raise TranscriptionError(
            f"AssemblyAI did not mint a token (HTTP {response.status_code}"
            f"{': ' + reason if reason else ''}).",
            code=response.status_code,
            reason=str(reason),
        )
    return token
