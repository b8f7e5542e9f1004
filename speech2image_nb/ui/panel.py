"""The panel: record, watch the words, see the pictures (ipywidgets 7.7 and 8).

This module only wires widgets to the parts; it holds no protocol logic. The rules (turns,
queueing, history, error lines) live in :mod:`speech2image_nb.ui.controller`; speech comes from
:func:`speech2image_nb.speech.base.get_transcriber`, images from an ``ImageClient`` obtained by
:class:`speech2image_nb.images.service.ImageService`.

Threads (DESIGN.md §3): widget handlers run on the kernel's main thread or, on ipykernel 7, on a
subshell thread, and they only enqueue. Live transcription runs on the runtime loop
(:mod:`speech2image_nb.runtime`); generations run one after another on a worker thread; start-up
(connecting to or starting the image server, loading the speech engine) runs on another. Those
threads touch widgets only by assigning traits.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import functools
import html
import io
import logging
import threading
import time
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from ..errors import ConfigError
from .controller import (
    MAX_IMAGE_COUNT,
    Controller,
    GenerationRequest,
    HistoryEntry,
    describe_error,
    parse_seed,
    seed_of,
)

if TYPE_CHECKING:
    from PIL.Image import Image

    from ..config import Settings
    from ..images.service import ImageService
    from ..speech.base import Transcriber, TranscriptEvent

__all__ = ["Panel", "app"]

logger = logging.getLogger(__name__)

_DEFAULT_SAVE_DIR = "speech2image_images"
_STOP_GRACE_S = 2.0  # after the recorder says "not recording", wait this long for its stop message
_THUMB_PX = 84  # history thumbnails
_PREVIEW_QUALITY = 85  # JPEG quality of what the grid shows (files are saved as PNG)


def app(
    *,
    recorder: str | Any = "anywidget",
    hands_free: bool = False,
    image_count: int = 4,
    display: bool = True,
    **settings: Any,
) -> Panel:
    """Show the speech-to-image panel and return it.

    Parameters
    ----------
    recorder
        ``"anywidget"`` (default: streams audio while you speak), ``"ipywebrtc"`` (records, then
        transcribes after stop), or a recorder widget with the same interface.
    hands_free
        Start with hands-free on: every finished sentence generates images.
    image_count
        Images per generation (1-9).
    display
        Display the panel in the current cell (the default).
    **settings
        Overrides for :class:`speech2image_nb.config.Settings` (``assemblyai_api_key``,
        ``server_url``, ``server_token``, ``whisper_model``, ``image_engine``, ``model_dir``, ...);
        anything not given comes from the environment or Colab secrets.
    """
    from ..config import Settings

    panel = Panel(
        settings=Settings.resolve(**settings),
        recorder=recorder,
        hands_free=hands_free,
        image_count=image_count,
    )
    if display:
        from IPython.display import display as ipy_display

        ipy_display(panel)  # type: ignore[no-untyped-call]
        panel._suppress_repr_once()
    return panel


class Panel(widgets.VBox):  # type: ignore[misc]
    """The speech-to-image panel.

    Build it with :func:`app`. The parts can be injected (tests, other front ends): ``transcriber``
    (anything with ``stream``/``transcribe``), ``image_service`` (an object whose ``open()`` returns
    an ``ImageClient``) and ``recorder`` (a widget with ``recording``, ``on_audio``, ``on_stop``,
    ``on_error``).

    Parameters
    ----------
    settings
        Resolved settings; default ``Settings.resolve()``.
    start
        Begin connecting to the image server and loading the speech engine right away.
    """

    def __init__(
        self,
        *,
        settings: Settings | None = None,
        recorder: str | Any = "anywidget",
        transcriber: Transcriber | None = None,
        image_service: ImageService | Any = None,
        hands_free: bool = False,
        image_count: int = 4,
        start: bool = True,
    ) -> None:
        from ..config import Settings
        from ..images.service import ImageService

        self.settings = settings if settings is not None else Settings.resolve()
        self.controller = Controller()
        self._transcriber = transcriber
        self._transcriber_lock = threading.Lock()
        self._images = (
            image_service
            if image_service is not None
            else ImageService(self.settings, on_progress=self._on_server_progress)
        )
        self._status: dict[str, str] = {"speech": self._speech_label(), "images": self._images.describe()}
        self._shown: HistoryEntry | None = None
        self._tiles: list[Image | None] = []
        self._tile_final: list[bool] = []
        self._grid_id = ""  # id of the generation the grid shows
        self._data_urls: dict[int, tuple[Image, str]] = {}
        self._audio_queue: Any = None
        self._session_future: concurrent.futures.Future[None] | None = None
        self._session_lock = threading.Lock()
        self._idle = threading.Event()
        self._idle.set()
        self._closed = False
        self._repr_suppressed_at: int | None = None
        self._gen_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="s2i-generate")
        self._bg_pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="s2i-panel")

        self._startup_error = ""
        self.recorder, self._streaming = self._make_recorder(recorder)
        # what is displayed: the recorder itself, or the widget a wrapper holds (ipywebrtc)
        is_widget = isinstance(self.recorder, widgets.Widget)
        self._recorder_view = self.recorder if is_widget else self.recorder.widget
        self._build_widgets(hands_free=hands_free, image_count=image_count)
        super().__init__(children=self._layout_children())
        self.add_class("s2i-panel")
        self._started = False
        if start:
            self.start()

    def start(self) -> None:
        """Connect to (or start) the image server and load the speech engine, in the background.

        Called by the constructor unless ``start=False``; later calls do nothing.
        """
        if self._started:
            return
        self._started = True
        self._bg_pool.submit(self._warm_up_images)
        self._bg_pool.submit(self._warm_up_speech)

    # --- widgets --------------------------------------------------------------------------------

    def _build_widgets(self, *, hands_free: bool, image_count: int) -> None:
        css = resources.files(__package__).joinpath("panel.css").read_text(encoding="utf-8")
        self._style = widgets.HTML(f"<style>{css}</style>")
        self.transcript_html = widgets.HTML(self._transcript_markup(), layout=widgets.Layout(width="100%"))
        self.transcript_html.add_class("s2i-transcript-box")
        self.prompt_text = widgets.Textarea(
            placeholder="Speak, or type what to draw…", layout=widgets.Layout(width="100%", height="3.4em")
        )
        self.prompt_text.add_class("s2i-prompt")
        self.image_count_slider = widgets.IntSlider(
            value=min(max(image_count, 1), MAX_IMAGE_COUNT),
            min=1,
            max=MAX_IMAGE_COUNT,
            description="Images",
            layout=widgets.Layout(width="230px"),
        )
        self.seed_text = widgets.Text(
            placeholder="random", description="Seed", layout=widgets.Layout(width="170px")
        )
        self.seed_label = widgets.HTML("")
        self.seed_label.add_class("s2i-seed-box")
        self.generate_button = widgets.Button(description="Generate", button_style="primary", icon="image")
        self.generate_button.add_class("s2i-generate")
        self.hands_free_toggle = widgets.ToggleButton(
            value=hands_free, description="Hands-free", icon="magic", layout=widgets.Layout(width="120px")
        )
        self.hands_free_toggle.add_class("s2i-hands-free")
        self.controller.hands_free = hands_free
        self.status_html = widgets.HTML(self._status_markup())
        self.status_html.add_class("s2i-status-box")
        self.error_html = widgets.HTML("")
        self.error_html.add_class("s2i-error-line")
        self.grid_html = widgets.HTML('<div class="s2i-grid"></div>', layout=widgets.Layout(width="100%"))
        self.grid_html.add_class("s2i-grid-box")
        self.folder_text = widgets.Text(
            value=_DEFAULT_SAVE_DIR, description="Folder", layout=widgets.Layout(width="300px")
        )
        self.save_button = widgets.Button(description="Save PNGs", icon="save", disabled=True)
        self.save_button.add_class("s2i-save")
        self.history_box = widgets.HBox(layout=widgets.Layout(overflow="auto", width="100%"))
        self.history_box.add_class("s2i-history")
        self._hotkeys = _make_hotkeys(self.toggle_recording)

        self.generate_button.on_click(lambda _b: self._safely(self.generate))
        self.save_button.on_click(lambda _b: self._bg_pool.submit(self._safely, self.save))
        self.hands_free_toggle.observe(self._on_hands_free, names="value")

    def _layout_children(self) -> list[Any]:
        controls = widgets.HBox(
            [self.image_count_slider, self.seed_text, self.generate_button, self.hands_free_toggle],
            layout=widgets.Layout(flex_flow="row wrap", align_items="center"),
        )
        top = widgets.HBox(
            [self._recorder_view, self.transcript_html],
            layout=widgets.Layout(align_items="center", width="100%"),
        )
        save_row = widgets.HBox(
            [self.folder_text, self.save_button, self.seed_label],
            layout=widgets.Layout(align_items="center", flex_flow="row wrap"),
        )
        children = [
            self._style,
            top,
            self.prompt_text,
            controls,
            self.status_html,
            self.error_html,
            self.grid_html,
            save_row,
            self.history_box,
        ]
        if self._hotkeys is not None:
            children.append(self._hotkeys)
        return children

    def _make_recorder(self, recorder: str | Any) -> tuple[Any, bool]:
        """Build the recorder widget; returns ``(widget, streams_while_recording)``."""
        if not isinstance(recorder, str):
            streaming = type(recorder).__name__ != "WebRTCRecorder"
            self._wire_recorder(recorder)
            return recorder, streaming
        try:
            if recorder == "ipywebrtc":
                from ..recorder.webrtc import WebRTCRecorder

                widget, streaming = WebRTCRecorder(), False
            elif recorder == "anywidget":
                from ..recorder.widget import Recorder

                widget, streaming = Recorder(), True
            else:
                raise ConfigError(f"Unknown recorder {recorder!r}: use 'anywidget' or 'ipywebrtc'.")
        except ImportError as exc:
            logger.debug("recorder unavailable", exc_info=True)
            note = widgets.HTML(
                "<span class='s2i-error'>No recorder: type a prompt instead.</span>",
            )
            self._startup_error = f"The recorder could not be loaded ({exc}): reinstall speech2image_nb."
            return note, True
        self._wire_recorder(widget)
        return widget, streaming

    def _wire_recorder(self, recorder: Any) -> None:
        recorder.on_audio(self._on_audio)
        recorder.on_stop(self._on_stop)
        recorder.on_error(self._on_recorder_error)
        view = recorder if isinstance(recorder, widgets.Widget) else recorder.widget
        view.observe(self._on_recording_change, names="recording")

    # --- display ---------------------------------------------------------------------------------

    def _suppress_repr_once(self) -> None:
        """app() displayed the panel: don't display it again as the cell's return value."""
        try:
            from IPython import get_ipython

            shell = get_ipython()
            self._repr_suppressed_at = shell.execution_count if shell is not None else None
        except Exception:  # no IPython: nothing to suppress
            self._repr_suppressed_at = None

    def _is_repr_suppressed(self) -> bool:
        if self._repr_suppressed_at is None:
            return False
        from IPython import get_ipython

        shell = get_ipython()
        same_cell = shell is not None and shell.execution_count == self._repr_suppressed_at
        self._repr_suppressed_at = None
        return same_cell

    def _ipython_display_(self, **kwargs: Any) -> None:
        if self._is_repr_suppressed():
            return
        parent = getattr(super(), "_ipython_display_", None)
        if parent is not None:  # ipywidgets 7
            parent(**kwargs)
        else:
            from IPython.display import display

            display(super()._repr_mimebundle_(), raw=True)  # type: ignore[no-untyped-call]

    # --- status and errors ---------------------------------------------------------------------

    def _speech_label(self) -> str:
        if self._transcriber is not None:
            return str(getattr(self._transcriber, "name", type(self._transcriber).__name__))
        if self.settings.speech_engine == "assemblyai":
            return "AssemblyAI streaming"
        model = Path(self.settings.whisper_model).name or self.settings.whisper_model
        return f"local Whisper ({model})"

    def _set_status(self, **parts: str) -> None:
        self._status.update(parts)
        self.status_html.value = self._status_markup()

    def _status_markup(self) -> str:
        speech = html.escape(self._status.get("speech", ""))
        images = html.escape(self._status.get("images", ""))
        activity = html.escape(self._status.get("activity", ""))
        text = f"Speech: {speech} · Images: {images}"
        if activity:
            text += f" · {activity}"
        return f'<span class="s2i-status">{text}</span>'

    def show_error(self, exc: BaseException) -> str:
        """Show ``exc`` as one readable line in the panel (and log the traceback at DEBUG)."""
        line = describe_error(exc)
        logger.debug("panel error: %s", line, exc_info=exc)
        self.error_html.value = f'<span class="s2i-error">⚠ {html.escape(line)}</span>'
        return line

    def clear_error(self) -> None:
        """Remove the error line."""
        self.error_html.value = ""

    @property
    def error_text(self) -> str:
        """The error line as plain text ("" when there is none)."""
        value = self.error_html.value
        if not value:
            return ""
        start = value.find("⚠ ")
        return html.unescape(value[start + 2 : value.rfind("</span>")]) if start >= 0 else value

    def _safely(self, func: Any, *args: Any) -> Any:
        """Call ``func``; any exception becomes the error line (never a traceback in the output)."""
        try:
            return func(*args)
        except Exception as exc:
            self.show_error(exc)
            return None

    # --- start-up ------------------------------------------------------------------------------

    def _warm_up_images(self) -> None:
        """Connect to (or start) the image server, in the background; the status line follows it."""
        if self._startup_error:
            self.error_html.value = f'<span class="s2i-error">⚠ {html.escape(self._startup_error)}</span>'
        self._set_status(images=f"{self._images.describe()} (connecting…)")
        try:
            self._images.open()
        except Exception as exc:
            self._set_status(images=f"{self._images.describe()} (not available)")
            self.show_error(exc)
        else:
            engine = self._images.engine_name()
            suffix = f" — {engine}" if engine and engine not in self._images.describe() else ""
            self._set_status(images=f"{self._images.describe()}{suffix} (ready)")

    def _warm_up_speech(self) -> None:
        """Prepare the speech engine (loads a local Whisper model), in the background."""
        label = self._speech_label()
        self._set_status(speech=f"{label} (loading…)")
        try:
            self._get_transcriber()
        except Exception as exc:
            self._set_status(speech=f"{label} (not available)")
            self.show_error(exc)
        else:
            self._set_status(speech=label)

    def _on_server_progress(self, fraction: float, message: str) -> None:
        percent = max(0, min(100, round(fraction * 100)))
        self._set_status(images=f"{self._images.describe()} loading {percent}% {message}".rstrip())

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
        """Block until the image server is connected (True) or ``timeout_s`` passes (False)."""
        deadline = time.monotonic() + timeout_s
        while True:
            images = self._status.get("images", "")
            if "(ready)" in images:
                return True
            if "(not available)" in images or time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    # --- recording and transcription -----------------------------------------------------------

    def toggle_recording(self) -> None:
        """Start recording when stopped, stop when recording (what Space does)."""
        if hasattr(self.recorder, "recording"):
            self.recorder.recording = not self.recorder.recording

    def _on_recording_change(self, change: dict[str, Any]) -> None:
        if change["new"]:
            self.clear_error()
            self._set_status(activity="listening…")
            if self._streaming:
                self._begin_session()
        elif self._streaming:
            self._set_status(activity="")
            queue = self._audio_queue
            if queue is not None:  # on_stop normally closes it; make sure it ends anyway
                from ..runtime import get_runtime

                get_runtime().loop.call_soon_threadsafe(
                    get_runtime().loop.call_later, _STOP_GRACE_S, queue.close
                )

    def _begin_session(self) -> None:
        from ..runtime import ThreadSafeQueue, get_runtime

        with self._session_lock:
            old = self._audio_queue
            if old is not None:
                old.close()
            self.controller.begin_recording()
            queue: ThreadSafeQueue[bytes] = ThreadSafeQueue()
            self._audio_queue = queue
            self._session_future = get_runtime().submit(self._stream_session(queue))

    def _on_audio(self, pcm: bytes) -> None:
        if self._streaming:
            queue = self._audio_queue
            if queue is None:  # audio before the "recording" trait arrived
                self._begin_session()
                queue = self._audio_queue
            queue.put(bytes(pcm))
        else:
            from ..runtime import get_runtime

            get_runtime().submit(self._transcribe_take(bytes(pcm)))

    def _on_stop(self) -> None:
        with self._session_lock:
            queue, self._audio_queue = self._audio_queue, None
        if queue is not None:
            queue.close()
        if self._streaming:
            self._set_status(activity="")

    def _on_recorder_error(self, exc: BaseException) -> None:
        self.show_error(exc)
        self._on_stop()

    async def _stream_session(self, queue: Any) -> None:
        """Feed the recorder's chunks to the transcriber and apply its events (runtime loop)."""
        try:
            loop = asyncio.get_running_loop()
            transcriber = await loop.run_in_executor(None, self._get_transcriber)
            async for event in transcriber.stream(queue):
                self._apply_transcript(event)
        except Exception as exc:
            self.show_error(exc)
            if getattr(self.recorder, "recording", False):
                self.recorder.recording = False
            queue.close()
            async for _ in queue:  # drain what the recorder still sends
                pass

    async def _transcribe_take(self, pcm: bytes) -> None:
        """Transcribe a whole take (recorders that deliver audio only after stop)."""
        from ..audio import to_wav_bytes
        from ..speech.base import TranscriptEvent

        try:
            loop = asyncio.get_running_loop()
            transcriber = await loop.run_in_executor(None, self._get_transcriber)
            self._set_status(activity="transcribing…")
            text = await transcriber.transcribe(to_wav_bytes(pcm))
            self.controller.begin_recording()  # one take = one session, after the earlier ones
            self._apply_transcript(TranscriptEvent("final", text, 0))
        except Exception as exc:
            self.show_error(exc)
        finally:
            self._set_status(activity="")

    def _apply_transcript(self, event: TranscriptEvent) -> None:
        try:
            seed = parse_seed(self.seed_text.value)
        except ConfigError:
            seed = None
        prompt, request = self.controller.on_transcript(
            event, image_count=self.image_count_slider.value, seed=seed
        )
        self.transcript_html.value = self._transcript_markup()
        if prompt is not None:
            self.prompt_text.value = prompt
        if request is not None:
            self._launch(request)
        elif event.kind == "final" and self.controller.hands_free and self.controller.queued:
            self._set_status(activity=f"{len(self.controller.queued)} sentence(s) waiting")

    def _transcript_markup(self) -> str:
        inner = self.controller.transcript.to_html()
        if not inner:
            inner = '<span class="s2i-empty">Press Record (or Space) and speak…</span>'
        return f'<div class="s2i-transcript">{inner}</div>'

    # --- generation ----------------------------------------------------------------------------

    def _on_hands_free(self, change: dict[str, Any]) -> None:
        self.controller.hands_free = bool(change["new"])

    def generate(self, prompt: str | None = None) -> GenerationRequest:
        """Generate images for ``prompt`` (default: the prompt field); queued if one is running.

        Raises
        ------
        ConfigError
            Empty prompt, bad seed, or image count out of range.
        """
        if prompt is not None:
            self.prompt_text.value = prompt
        request = self.controller.make_request(
            self.prompt_text.value,
            image_count=self.image_count_slider.value,
            seed=parse_seed(self.seed_text.value),
        )
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
            try:
                entry = self._run_generation(request)
            except Exception as exc:
                self.show_error(exc)
                self._set_status(activity="")
            request = self.controller.finish(entry)
            if entry is not None:
                self._add_history(entry)
        self._idle.set()

    def _run_generation(self, request: GenerationRequest) -> HistoryEntry:
        count = request.image_count
        self._set_status(activity=f"generating {count} image{'s' if count > 1 else ''}…")
        self._tiles = [None] * count
        self._tile_final = [False] * count
        self._shown = None
        self._grid_id = request.id
        self.save_button.disabled = True
        self._render_grid()
        client = self._images.open()
        seed = request.seed
        engine = ""
        options: dict[str, Any] = {"num_images": count}
        if request.seed is not None:
            options["seed"] = request.seed
        for event in client.generate_stream(request.prompt, **options):
            kind = type(event).__name__
            if kind == "QueuedEvent":
                self._set_status(activity=f"waiting in the server queue (position {event.position})")
            elif kind == "ProgressEvent":
                total = max(int(event.total or 1), 1)
                self._set_status(activity=f"generating… {round(100 * event.step / total)}%")
                if event.preview is not None:
                    for index in range(count):
                        if not self._tile_final[index]:
                            self._tiles[index] = event.preview
                    self._render_grid()
            elif kind == "ImageEvent":
                if 0 <= event.index < count:
                    self._tiles[event.index] = event.image
                    self._tile_final[event.index] = True
                    self._render_grid()
            elif kind == "DoneEvent":
                seed = seed_of(event.seed)
                engine = str(getattr(event, "engine", "") or "")
        pairs = zip(self._tiles, self._tile_final, strict=False)
        images = tuple(tile for tile, final in pairs if final and tile is not None)
        if not images:
            from ..errors import BadServerResponse

            raise BadServerResponse("The image server finished without sending an image: try again.")
        entry = HistoryEntry(request.id, request.prompt, seed, images, engine)
        self._shown = entry
        self.save_button.disabled = False
        self.seed_label.value = _seed_markup(seed)
        self._set_status(activity="")
        return entry

    def _render_grid(self) -> None:
        cells = []
        for index, (tile, final) in enumerate(zip(self._tiles, self._tile_final, strict=False)):
            if tile is None:
                cells.append(f'<div class="s2i-placeholder" data-index="{index}"></div>')
                continue
            css = "s2i-img" if final else "s2i-img s2i-preview"
            cells.append(
                f'<img class="{css}" data-index="{index}" src="{self._data_url(tile)}" '
                f'alt="image {index + 1}" title="click to enlarge" '
                f"onclick=\"this.classList.toggle('s2i-big')\"/>"
            )
        self.grid_html.value = f'<div class="s2i-grid" data-id="{self._grid_id}">{"".join(cells)}</div>'

    def _data_url(self, image: Image) -> str:
        key = id(image)
        cached = self._data_urls.get(key)
        if cached is not None and cached[0] is image:
            return cached[1]
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=_PREVIEW_QUALITY)
        url = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
        if len(self._data_urls) > 64:
            self._data_urls.clear()
        self._data_urls[key] = (image, url)
        return url

    @property
    def images(self) -> list[Image]:
        """The images of the generation shown now (finished ones only)."""
        return list(self._shown.images) if self._shown is not None else []

    def wait_idle(self, timeout_s: float = 60.0) -> bool:
        """Block until no generation runs or waits; True when idle, False on timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self._idle.is_set() and self.controller.running is None and not self.controller.queued:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    # --- history and saving --------------------------------------------------------------------

    def _add_history(self, entry: HistoryEntry) -> None:
        thumb = entry.images[0].copy()
        thumb.thumbnail((_THUMB_PX, _THUMB_PX))
        buffer = io.BytesIO()
        thumb.convert("RGB").save(buffer, format="JPEG", quality=80)
        image = widgets.Image(value=buffer.getvalue(), format="jpeg", width=_THUMB_PX, height=_THUMB_PX)
        label = entry.prompt if len(entry.prompt) <= 14 else entry.prompt[:13] + "…"
        button = widgets.Button(description=label, layout=widgets.Layout(width=f"{_THUMB_PX + 8}px"))
        button.on_click(lambda _b, entry_id=entry.id: self._safely(self.restore, entry_id))
        item = widgets.VBox([image, button])
        item.add_class("s2i-history-item")
        known = {e.id for e in self.controller.history}
        kept = [c for c in self.history_box.children if getattr(c, "_s2i_id", None) in known]
        item._s2i_id = entry.id
        self.history_box.children = (item, *kept)

    def restore(self, entry_id: str) -> HistoryEntry:
        """Show an earlier generation again: its prompt, seed and images."""
        entry = self.controller.find(entry_id)
        if entry is None:
            raise ConfigError("That generation is no longer in the history.")
        self.prompt_text.value = entry.prompt
        self._tiles = list(entry.images)
        self._tile_final = [True] * len(entry.images)
        self._shown = entry
        self._grid_id = entry.id
        self._render_grid()
        self.seed_label.value = _seed_markup(entry.seed)
        self.save_button.disabled = False
        return entry

    def save(self, folder: str | None = None) -> list[Path]:
        """Save the images shown now as PNG files named by their id; returns the paths."""
        from ..images.files import save_images

        entry = self._shown
        if entry is None:
            raise ConfigError("No images to save yet: generate some first.")
        paths = save_images(entry.images, folder or self.folder_text.value or _DEFAULT_SAVE_DIR, entry.id)
        where = paths[0].parent.resolve() if paths else ""
        self._set_status(activity=f"saved {len(paths)} PNG file(s) to {where}")
        return paths

    # --- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop recording, stop the embedded server, close the widgets."""
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
        super().close()


def _seed_markup(seed: int | None) -> str:
    return f'<span class="s2i-seed">seed <b>{seed}</b></span>' if seed is not None else ""


@functools.lru_cache(maxsize=1)
def _hotkeys_class() -> Any:
    import anywidget

    class Hotkeys(anywidget.AnyWidget):
        """Invisible: listens for Space on the enclosing panel and tells the kernel."""

        _esm = resources.files(__package__).joinpath("hotkeys.js").read_text(encoding="utf-8")

    return Hotkeys


def _make_hotkeys(on_toggle: Any) -> Any:
    """A tiny invisible anywidget that turns Space inside the panel into a recording toggle."""
    try:
        cls = _hotkeys_class()
    except ImportError:
        return None
    widget = cls(layout=widgets.Layout(width="0px", height="0px"))

    def on_msg(_widget: Any, content: Any, _buffers: Any) -> None:
        if isinstance(content, dict) and content.get("kind") == "toggle-recording":
            on_toggle()

    widget.on_msg(on_msg)
    return widget
