"""The panel's session without widgets: start-up, recording takes, transcription, generations.

Why apart from the view: the threads, queues and workers behind the panel can then be driven and
checked without a kernel, a browser or a single widget, as :mod:`~speech2image_nb.ui.controller`
is for the rules. :mod:`speech2image_nb.ui.panel` feeds the recorder's and the buttons' input in
(:meth:`PanelSession.recording_changed`, :meth:`~PanelSession.audio`, :meth:`~PanelSession.generate`,
...) and draws each :data:`Update` the session sends out.

A recording can also come as a file (:meth:`PanelSession.upload`, for where no microphone can be
opened): it takes the whole-take path, so transcript, prompt and hands-free work as after a take;
and wherever the recorder cannot record, the error line points to the upload.

Faults (a classroom network): a transcription that breaks mid-take (the speech service's
connection drops, or the service cancels the session) keeps the words heard so far as the prompt,
says so in the error line, stops the recorder, and drops the chunks the browser still sends for
that take; the next take opens a new session (why not resume the same one: see
:meth:`~speech2image_nb.speech.assemblyai.AssemblyAITranscriber.stream`). An image server that
cannot be reached (down, gone mid-generation, silent past its timeout, a tunnel that moved) marks
the server "not available" with its line; each later Generate tries again, and the first that
works marks it ready, with no restart of the panel. A Generate pressed while the start-up is still
connecting waits for that attempt and shares its outcome, instead of waiting a second time.

The classroom filter (:mod:`speech2image_nb.ui.safety`): every prompt is checked before it is
sent (Generate, hands-free sentences, uploads), also to a server that may not filter. A refused
prompt is not drawn; one neutral line names the category (never the words), and the teacher's log
(:attr:`PanelSession.refusals`) records it. Hands-free skips a refused sentence and draws the next;
a refused spoken sentence never goes into the prompt box by itself (the box is on the projector
as much as the transcript, whose refused words are masked), while typed text stays in the box for
the teacher to change. A server that refuses the prompt itself is shown the same way, and
pictures it withheld are counted in the status line.

Threads: recorder callbacks and widget handlers run on the kernel's main thread or, on ipykernel
7, on a subshell thread, and only enqueue. Live transcription runs on the runtime loop
(:mod:`speech2image_nb.runtime`); generations run one after another on a worker thread; start-up
(connecting to or starting the image server, loading the speech engine) runs on another. Updates
are sent from whichever of these threads made them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import enum
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BadServerResponse, ConfigError, ServerUnreachable
from ..frontend import VSCODE, VSCODE_NO_MICROPHONE, Frontend, detect_frontend
from ..images.protocol import DoneEvent, ImageEvent, ProgressEvent, QueuedEvent
from .controller import Controller, GenerationRequest, HistoryEntry, describe_error, seed_of
from .safety import (
    PICTURE_CATEGORY,
    WHERE_HANDS_FREE,
    WHERE_PANEL,
    WHERE_SERVER,
    WHERE_SERVER_IMAGE,
    WHERE_SPEECH,
    WHERE_UPLOAD,
    PromptScreen,
    blocked_category,
    is_prompt_blocked,
    refusal_line,
    withheld_line,
)
from .upload import UPLOAD_HINT, UploadedFile, read_upload

if TYPE_CHECKING:
    from PIL.Image import Image

    from ..config import Settings
    from ..images.client import ImageClient
    from ..images.service import ImageService
    from ..runtime import ThreadSafeQueue
    from ..safety import Policy, RefusalLog
    from ..speech.base import Transcriber, TranscriptEvent

__all__ = [
    "ErrorChanged",
    "Grid",
    "GridChanged",
    "HistoryChanged",
    "PanelSession",
    "PromptChanged",
    "ServerState",
    "Status",
    "StatusChanged",
    "StopRecording",
    "TranscriptChanged",
    "Update",
]

logger = logging.getLogger(__name__)

STOP_GRACE_S = 2.0  # after the recorder says "not recording", wait this long for its stop message
START_WAIT_S = 660.0  # a Generate waits at most this long for the start-up's attempt (an embedded start)
KEPT_HINT = "The words heard so far are kept in the prompt."


class ServerState(enum.Enum):
    """Where the image server stands for this session."""

    STARTING = "starting"  # not asked yet, or connecting / loading
    READY = "ready"  # answered its health check
    UNAVAILABLE = "not available"  # the last attempt failed (a later generation may still work)


@dataclasses.dataclass(frozen=True)
class Status:
    """The status line's parts: the speech engine, the image server, what happens now."""

    speech: str
    images: str
    activity: str = ""


@dataclasses.dataclass(frozen=True)
class Grid:
    """What the image grid shows: one tile per image, each empty, a preview or final.

    ``entry`` is the finished generation the grid shows (what Save writes), ``None`` while one runs.
    """

    id: str
    tiles: tuple[Image | None, ...] = ()
    final: tuple[bool, ...] = ()
    entry: HistoryEntry | None = None

    @classmethod
    def empty(cls, generation_id: str, count: int) -> Grid:
        """``count`` placeholders for the generation ``generation_id``."""
        return cls(generation_id, (None,) * count, (False,) * count)

    @classmethod
    def of(cls, entry: HistoryEntry) -> Grid:
        """A finished generation's images."""
        return cls(entry.id, entry.images, (True,) * len(entry.images), entry)

    def with_preview(self, preview: Image) -> Grid:
        """Every tile not final yet shows ``preview``."""
        tiles = tuple(tile if final else preview for tile, final in zip(self.tiles, self.final, strict=True))
        return dataclasses.replace(self, tiles=tiles)

    def with_image(self, index: int, image: Image) -> Grid:
        """Tile ``index`` is final (an index out of range changes nothing)."""
        if not 0 <= index < len(self.tiles):
            return self
        tiles = (*self.tiles[:index], image, *self.tiles[index + 1 :])
        final = (*self.final[:index], True, *self.final[index + 1 :])
        return dataclasses.replace(self, tiles=tiles, final=final)

    def final_images(self) -> tuple[Image, ...]:
        """The tiles that are final, in order."""
        return tuple(t for t, f in zip(self.tiles, self.final, strict=True) if f and t is not None)


# --- what the session tells its view ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class StatusChanged:
    """Show this status line."""

    status: Status


@dataclasses.dataclass(frozen=True)
class ErrorChanged:
    """Show this error line (already readable: what went wrong and what to do); "" clears it."""

    line: str


@dataclasses.dataclass(frozen=True)
class TranscriptChanged:
    """Show this transcript (escaped HTML from :meth:`Transcript.to_html`; "" when empty)."""

    html: str


@dataclasses.dataclass(frozen=True)
class PromptChanged:
    """Put this text in the prompt field."""

    text: str


@dataclasses.dataclass(frozen=True)
class GridChanged:
    """Show this grid."""

    grid: Grid


@dataclasses.dataclass(frozen=True)
class HistoryChanged:
    """The history strip holds these generations, oldest first."""

    entries: tuple[HistoryEntry, ...]


@dataclasses.dataclass(frozen=True)
class StopRecording:
    """Transcription failed: stop the recorder so that the person sees the take ended."""


Update = (
    StatusChanged
    | ErrorChanged
    | TranscriptChanged
    | PromptChanged
    | GridChanged
    | HistoryChanged
    | StopRecording
)


class PanelSession:
    """Everything the panel does that needs no widget.

    Parameters
    ----------
    settings
        Resolved settings (speech engine, image server).
    on_update
        Called with every :data:`Update`, from the thread that made it; keep it to drawing.
    image_service
        Where images come from (an object with ``describe``, ``open``, ``engine_name``, ``close``,
        like :class:`~speech2image_nb.images.service.ImageService`); the default is built from
        ``settings``.
    transcriber
        The speech engine; by default the one ``settings`` select, loaded at :meth:`start`.
    streams
        The recorder streams while recording (else it delivers each whole take after stop).
    hands_free_options
        ``(image_count, seed)`` for a generation that a finished sentence starts in hands-free mode.
    frontend
        The notebook front end (:func:`~speech2image_nb.frontend.detect_frontend` by default): in
        VS Code, which gives notebooks no microphone, the lines say so instead of pointing on.
    safety
        The classroom filter; by default the one ``settings`` describe (strict unless changed).
        The default image service's embedded server gets the same.
    refusals
        The teacher's log to add refusals to (a new one by default).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        on_update: Callable[[Update], None],
        image_service: ImageService | None = None,
        transcriber: Transcriber | None = None,
        streams: bool = True,
        hands_free_options: Callable[[], tuple[int, int | None]] = lambda: (4, None),
        frontend: Frontend | None = None,
        safety: Policy | None = None,
        refusals: RefusalLog | None = None,
    ) -> None:
        from ..images.service import ImageService

        self.settings = settings
        self._screen = PromptScreen(
            safety if safety is not None else settings.safety_policy(),
            log=refusals,
            mask_transcript=settings.mask_transcript,
        )
        self.frontend = frontend if frontend is not None else detect_frontend()
        self.controller = Controller()
        self.streams = streams
        self._emit = on_update
        self._hands_free_options = hands_free_options
        self._transcriber = transcriber
        self._transcriber_lock = threading.Lock()
        self._images = (
            image_service
            if image_service is not None
            else ImageService(settings, on_progress=self._on_server_progress, safety=self._screen.policy)
        )
        self._status = Status(self._speech_label(), self._images.describe())
        self._status_lock = threading.Lock()  # the start-up and generation threads all set parts
        self._server_state = ServerState.STARTING
        self._server_settled = threading.Event()  # set once the state is READY or UNAVAILABLE
        self._start_failure: BaseException | None = None  # why the start-up could not connect
        self._grid = Grid("")
        self._audio_queue: ThreadSafeQueue[bytes] | None = None
        self._queue_lock = threading.Lock()
        self._take_failed = False  # the take's transcription broke: drop its chunks until the next take
        self._idle = threading.Event()
        self._idle.set()
        self._closed = False
        self._started = False
        self._gen_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="s2i-generate")
        self._bg_pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="s2i-panel")

    # --- state ----------------------------------------------------------------------------------

    @property
    def status(self) -> Status:
        """The status line's parts now."""
        return self._status

    @property
    def safety(self) -> Policy:
        """The classroom filter this session checks prompts with."""
        return self._screen.policy

    @property
    def refusals(self) -> RefusalLog:
        """The teacher's log of refused prompts (never shown in a widget)."""
        return self._screen.log

    @property
    def server_state(self) -> ServerState:
        """Whether the image server is ready."""
        return self._server_state

    @property
    def grid(self) -> Grid:
        """What the image grid shows now."""
        return self._grid

    @property
    def images(self) -> list[Image]:
        """The images of the finished generation shown now."""
        return list(self._grid.entry.images) if self._grid.entry is not None else []

    def _set_status(self, **parts: str) -> None:
        with self._status_lock:  # held while drawing, so that the line never goes back to an older one
            self._status = dataclasses.replace(self._status, **parts)
            self._emit(StatusChanged(self._status))

    def _settle_server(self, state: ServerState) -> None:
        self._server_state = state
        self._server_settled.set()

    def _show_grid(self, grid: Grid) -> None:
        self._grid = grid
        self._emit(GridChanged(grid))

    def report(self, exc: BaseException, *, hint: str = "") -> str:
        """Show ``exc`` as the error line (the traceback goes to the DEBUG log); returns the line.

        ``hint`` (another way to go on) is appended to the line.
        """
        line = describe_error(exc)
        if hint:
            line = f"{line} {hint}"
        logger.debug("panel error: %s", line, exc_info=exc)
        self._emit(ErrorChanged(line))
        return line

    def clear_error(self) -> None:
        """Remove the error line."""
        self._emit(ErrorChanged(""))

    def show_opening_line(self, recorder_problem: str = "") -> None:
        """Show the error line a panel opens with: why it has no recorder, else VS Code's, else none.

        ``recorder_problem`` is the sentence saying why the recorder could not be loaded; the
        upload hint is added to it.
        """
        if recorder_problem:
            self._emit(ErrorChanged(f"{recorder_problem} {UPLOAD_HINT}"))
        elif self.frontend == VSCODE:
            self._emit(ErrorChanged(VSCODE_NO_MICROPHONE))

    def background(self, func: Callable[..., object], *args: Any) -> concurrent.futures.Future[object]:
        """Run ``func(*args)`` on the session's background thread (slow work off a handler)."""
        return self._bg_pool.submit(func, *args)

    # --- start-up ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect to (or start) the image server and load the speech engine, in the background.

        Later calls do nothing.
        """
        if self._started:
            return
        self._started = True
        self._bg_pool.submit(self._warm_up_images)
        self._bg_pool.submit(self._warm_up_speech)

    def _warm_up_images(self) -> None:
        self._set_status(images=f"{self._images.describe()} (connecting…)")
        try:
            self._images.open()
        except Exception as exc:
            self._start_failure = exc
            self.report(exc)
            self._mark_unavailable()
        else:
            self._mark_ready()

    def _ready_label(self) -> str:
        label, engine = self._images.describe(), self._images.engine_name()
        suffix = f" — {engine}" if engine and engine not in label else ""
        return f"{label}{suffix} (ready)"

    def _mark_ready(self) -> None:
        self._set_status(images=self._ready_label())
        self._settle_server(ServerState.READY)

    def _mark_unavailable(self) -> None:
        self._set_status(images=f"{self._images.describe()} (not available)")
        self._settle_server(ServerState.UNAVAILABLE)

    def _warm_up_speech(self) -> None:
        label = self._speech_label()
        self._set_status(speech=f"{label} (loading…)")
        try:
            self._get_transcriber()
        except Exception as exc:
            self._set_status(speech=f"{label} (not available)")
            self.report(exc)
        else:
            self._set_status(speech=label)

    def _on_server_progress(self, fraction: float, message: str) -> None:
        percent = max(0, min(100, round(fraction * 100)))
        self._set_status(images=f"{self._images.describe()} loading {percent}% {message}".rstrip())

    def _speech_label(self) -> str:
        if self._transcriber is not None:
            return str(getattr(self._transcriber, "name", type(self._transcriber).__name__))
        if self.settings.speech_engine == "assemblyai":
            return "AssemblyAI streaming"
        model = Path(self.settings.whisper_model).name or self.settings.whisper_model
        return f"local Whisper ({model})"

    def _get_transcriber(self) -> Transcriber:
        with self._transcriber_lock:
            if self._transcriber is None:
                from ..speech.base import get_transcriber

                options: dict[str, Any] = {}
                if self.settings.speech_engine == "assemblyai":
                    # Stop means the sentence is over: close the turn at once instead of waiting
                    # for the service to hear enough silence (or to flush after Terminate).
                    options["force_endpoint_on_stop"] = True
                self._transcriber = get_transcriber(settings=self.settings, **options)
            load = getattr(self._transcriber, "load", None)
            if callable(load):  # local Whisper: load the model now, not on the first take
                load()
            return self._transcriber

    def wait_ready(self, timeout_s: float = 60.0) -> bool:
        """Block until the image server is ready (True), failed or ``timeout_s`` passed (False)."""
        self._server_settled.wait(timeout_s)
        return self._server_state is ServerState.READY

    # --- recording and transcription ------------------------------------------------------------

    def recording_changed(self, recording: bool) -> None:
        """The recorder started (``True``) or stopped a take."""
        if recording:
            self._take_failed = False
            self.clear_error()
            self._set_status(activity="listening…")
            if self.streams:
                self._begin_stream()
        elif self.streams:
            self._set_status(activity="")
            queue = self._audio_queue
            if queue is not None:  # take_ended normally closes it; make sure it ends anyway
                from ..runtime import get_runtime

                loop = get_runtime().loop
                loop.call_soon_threadsafe(loop.call_later, STOP_GRACE_S, queue.close)

    def _begin_stream(self) -> ThreadSafeQueue[bytes]:
        from ..runtime import ThreadSafeQueue, get_runtime

        with self._queue_lock:
            if self._audio_queue is not None:
                self._audio_queue.close()
            self.controller.begin_recording()
            queue: ThreadSafeQueue[bytes] = ThreadSafeQueue()
            self._audio_queue = queue
            get_runtime().submit(self._stream(queue))
        return queue

    def audio(self, pcm: bytes) -> None:
        """Audio from the recorder: a chunk of the take (streaming), or the whole take."""
        if not self.streams:
            from ..runtime import get_runtime

            get_runtime().submit(self._transcribe_take(bytes(pcm), source=WHERE_HANDS_FREE))
            return
        queue = self._audio_queue
        if queue is None:
            if self._take_failed:  # the rest of a take whose transcription broke off
                return
            queue = self._begin_stream()  # audio before the "recording" change arrived
        queue.put(bytes(pcm))

    def take_ended(self) -> None:
        """The recorder delivered the last audio of a take."""
        with self._queue_lock:
            queue, self._audio_queue = self._audio_queue, None
        if queue is not None:
            queue.close()
        if self.streams:
            self._set_status(activity="")

    def recorder_failed(self, exc: BaseException) -> None:
        """The recorder reported an error: show it with the upload hint, and end the take.

        In VS Code the line itself already names the upload, so no hint doubles it.
        """
        self.report(exc, hint="" if self.frontend == VSCODE else UPLOAD_HINT)
        self.take_ended()

    def upload(self, upload: UploadedFile) -> None:
        """A recording came as a file: check and decode it, then on as a whole take (runtime loop)."""
        from ..runtime import get_runtime

        self.clear_error()
        self._set_status(activity=f"reading {upload.name}…")
        get_runtime().submit(self._transcribe_upload(upload))

    async def _transcribe_upload(self, upload: UploadedFile) -> None:
        """A bad file gets its one line; a good one goes through the whole-take path."""
        try:
            pcm = await asyncio.get_running_loop().run_in_executor(None, read_upload, upload)
        except Exception as exc:
            self.report(exc)
            self._set_status(activity="")
            return
        await self._transcribe_take(pcm.astype("<i2").tobytes(), source=WHERE_UPLOAD)

    async def _stream(self, queue: ThreadSafeQueue[bytes]) -> None:
        """Feed the recorder's chunks to the transcriber and apply its events (runtime loop)."""
        try:
            transcriber = await asyncio.get_running_loop().run_in_executor(None, self._get_transcriber)
            async for event in transcriber.stream(queue):
                self._apply_transcript(event)
        except Exception as exc:
            with self._queue_lock:  # before the recorder stops: the take's last chunks are dropped
                if self._audio_queue in (queue, None):  # (not if the next take began meanwhile)
                    self._take_failed = True
            queue.close()
            kept = self.controller.keep_unfinished()
            if kept is not None and not self._screen.allows(kept):
                kept = None  # refused words never go into the prompt box by themselves
            if kept is not None:
                self._emit(TranscriptChanged(self._transcript_html()))
                self._emit(PromptChanged(kept))
            self.report(exc, hint=KEPT_HINT if kept is not None else "")
            self._emit(StopRecording())
            # No draining: a closed queue drops what the recorder still sends, and its end marker
            # may be gone already (the engine read it when the take ended before the failure).

    async def _transcribe_take(self, pcm: bytes, *, source: str) -> None:
        """Transcribe a whole take (recorders that deliver audio only after stop, uploads).

        ``source`` is where the teacher's log puts a refused sentence of it (an upload, a take).
        """
        from ..audio import to_wav_bytes
        from ..speech.base import TranscriptEvent

        try:
            transcriber = await asyncio.get_running_loop().run_in_executor(None, self._get_transcriber)
            self._set_status(activity="transcribing…")
            text = await transcriber.transcribe(to_wav_bytes(pcm))
            self.controller.begin_recording()  # one take = one session, after the earlier ones
            self._apply_transcript(TranscriptEvent("final", text, 0), source=source)
        except Exception as exc:
            self.report(exc)
        finally:
            self._set_status(activity="")

    def _apply_transcript(self, event: TranscriptEvent, *, source: str = WHERE_HANDS_FREE) -> None:
        """Apply a transcript event: the transcript (masked), the prompt box, hands-free drawing.

        A final is checked first: refused, it is shown masked, left out of the prompt box, not
        drawn, logged, and its line shown; the next sentence goes on as usual.
        """
        image_count, seed = self._hands_free_options()
        line = None
        if event.kind == "final" and event.text.strip():
            where = source if self.controller.hands_free or source == WHERE_UPLOAD else WHERE_SPEECH
            line = self._screen.refuse(event.text, where)
        prompt, request = self.controller.on_transcript(
            event, image_count=image_count, seed=seed, refused=line is not None
        )
        self._emit(TranscriptChanged(self._transcript_html()))
        if line is not None:
            self._emit(ErrorChanged(line))
        if prompt is not None:
            self._emit(PromptChanged(prompt))
        if request is not None:
            self._launch(request)
        elif event.kind == "final" and self.controller.hands_free and self.controller.queued:
            self._set_status(activity=f"{len(self.controller.queued)} sentence(s) waiting")

    def _transcript_html(self) -> str:
        return self.controller.transcript.to_html(self._screen.mask)

    # --- generation -------------------------------------------------------------------------------

    def generate(self, prompt: str, *, image_count: int, seed: int | None) -> GenerationRequest | None:
        """Generate images for ``prompt``, now or after the running generation.

        Returns the request, or ``None`` when the classroom filter refused the prompt: nothing is
        sent, and the line says why (a refusal is an answer, not an error).

        Raises
        ------
        ConfigError
            Empty prompt, or image count out of range.
        """
        request = self.controller.make_request(prompt, image_count=image_count, seed=seed)
        line = self._screen.refuse(request.prompt, WHERE_PANEL)
        if line is not None:
            self._emit(ErrorChanged(line))
            return None
        self.clear_error()
        started = self.controller.submit(request)
        if started is not None:
            self._launch(started)
        else:
            self._set_status(activity=f"queued ({len(self.controller.queued)} waiting)")
        return request

    def _launch(self, request: GenerationRequest) -> None:
        self._idle.clear()
        self._gen_pool.submit(self._generation_worker, request)

    def _generation_worker(self, request: GenerationRequest | None) -> None:
        while request is not None and not self._closed:
            entry = None
            before = self._grid
            try:
                entry = self._run_generation(request)
            except Exception as exc:
                if is_prompt_blocked(exc):
                    self._server_refused(request, exc, before)
                else:
                    self.report(exc)
                if isinstance(exc, ServerUnreachable):
                    self._mark_unavailable()
                self._set_status(activity="")
            request = self.controller.finish(entry)
            if entry is not None:
                self._emit(HistoryChanged(tuple(self.controller.history)))
        self._idle.set()

    def _server_refused(self, request: GenerationRequest, exc: BaseException, before: Grid) -> None:
        """The server's filter refused the prompt: the same line as the panel's, the grid as it was."""
        category = blocked_category(exc)
        self._screen.record(WHERE_SERVER, category, request.prompt)
        self._show_grid(before)
        self._emit(ErrorChanged(refusal_line(category)))

    def _run_generation(self, request: GenerationRequest) -> HistoryEntry | None:
        # Checked again here, where it is sent: every prompt entering the queue was checked, but a
        # request must never leave without the filter's word even if a path forgot to ask.
        where = WHERE_PANEL if request.turn is None else WHERE_HANDS_FREE
        line = self._screen.refuse(request.prompt, where)
        if line is not None:
            self._emit(ErrorChanged(line))
            self._set_status(activity="")
            return None
        count = request.image_count
        self._set_status(activity=f"generating {count} image{'s' if count > 1 else ''}…")
        self._show_grid(Grid.empty(request.id, count))
        client = self._open_images()
        if self._server_state is not ServerState.READY or self._status.images != self._ready_label():
            self._mark_ready()  # it came up after a failure, or connect() named another server
        seed, engine = request.seed, ""
        withheld: set[int] = set()  # tiles the server's picture check replaced by its placeholder
        for event in client.generate_stream(request.prompt, num_images=count, seed=request.seed):
            match event:
                case QueuedEvent(position=position):
                    self._set_status(activity=f"waiting in the server queue (position {position})")
                case ProgressEvent(step=step, total=total, preview=preview):
                    self._set_status(activity=f"generating… {round(100 * step / max(total, 1))}%")
                    if preview is not None:
                        self._show_grid(self._grid.with_preview(preview))
                case ImageEvent(index=index, image=image):
                    self._show_grid(self._grid.with_image(index, image))
                    if getattr(event, "withheld", False) is True:  # the tile is the server's placeholder
                        withheld.add(index)
                case DoneEvent(seed=done_seed, engine=done_engine):
                    seed, engine = seed_of(done_seed), done_engine or ""
        images = self._grid.final_images()
        if not images:
            raise BadServerResponse("The image server finished without sending an image: try again.")
        entry = HistoryEntry(request.id, request.prompt, seed, images, engine)
        self._show_grid(dataclasses.replace(self._grid, entry=entry))
        for _index in sorted(withheld):  # the teacher's log has them too, whichever server it was
            self._screen.record(WHERE_SERVER_IMAGE, PICTURE_CATEGORY, request.prompt)
        self._set_status(activity=withheld_line(len(withheld)) if withheld else "")
        return entry

    def _open_images(self) -> ImageClient:
        """The image client; while the start-up still connects, wait for it and share its outcome.

        Without this, a Generate pressed during a start-up that hangs would wait for the lock and
        then for a second attempt of its own: twice the timeout before its line.
        """
        starting = self._started and not self._server_settled.is_set()
        if starting and self._server_settled.wait(START_WAIT_S) and self._start_failure is not None:
            raise self._start_failure
        return self._images.open()

    def wait_idle(self, timeout_s: float = 60.0) -> bool:
        """Block until no generation runs or waits; True when idle, False on timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self._idle.is_set() and self.controller.running is None and not self.controller.queued:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    # --- history and saving -----------------------------------------------------------------------

    def restore(self, entry_id: str) -> HistoryEntry:
        """Show an earlier generation again: its prompt, seed and images.

        Raises
        ------
        ConfigError
            When the generation has left the history.
        """
        entry = self.controller.find(entry_id)
        if entry is None:
            raise ConfigError("That generation is no longer in the history.")
        self._emit(PromptChanged(entry.prompt))
        self._show_grid(Grid.of(entry))
        return entry

    def save(self, folder: str) -> list[Path]:
        """Save the images shown now as PNG files named by their id; returns the paths.

        Raises
        ------
        ConfigError
            When nothing is shown yet, or the folder cannot be written.
        """
        from ..images.files import save_images

        entry = self._grid.entry
        if entry is None:
            raise ConfigError("No images to save yet: generate some first.")
        paths = save_images(entry.images, folder, entry.id)
        where = paths[0].parent.resolve() if paths else ""
        self._set_status(activity=f"saved {len(paths)} PNG file(s) to {where}")
        return paths

    # --- lifecycle --------------------------------------------------------------------------------

    def close(self) -> None:
        """End the take, stop the workers and the embedded server (idempotent)."""
        if self._closed:
            return
        self._closed = True
        queue = self._audio_queue
        if queue is not None:
            queue.close()
        self._gen_pool.shutdown(wait=False, cancel_futures=True)
        self._bg_pool.shutdown(wait=False, cancel_futures=True)
        try:
            self._images.close()
        except Exception:
            logger.debug("closing the image service failed", exc_info=True)
