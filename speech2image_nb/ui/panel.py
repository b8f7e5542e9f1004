"""The panel: record, watch the words, see the pictures (ipywidgets 7.7 and 8).

This module is the view: it builds the widgets, feeds their input and the recorder's to a
:class:`~speech2image_nb.ui.session.PanelSession` (start-up, takes, transcription, generations:
everything that needs threads, and no widget), and draws each update the session sends. The
rules (turns, queueing, history, error lines) live in :mod:`speech2image_nb.ui.controller`; the
image server is the one :mod:`speech2image_nb.images.service` picks. Besides the recorder, an
Upload control (:mod:`speech2image_nb.ui.upload`) takes a recording as a file, for wherever no
microphone can be opened. The classroom filter (:mod:`speech2image_nb.ui.safety`, strict by
default) checks every prompt before it is sent and masks refused words in the live transcript;
its teacher-only log is :attr:`Panel.refusals`. In Colab, the custom widget manager is enabled
before anything shows (:func:`speech2image_nb.frontend.enable_colab_widgets`).

Threads: updates arrive on the session's threads, so drawing them only assigns traits.
"""

from __future__ import annotations

import html
import logging
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from ..errors import ConfigError
from ..frontend import detect_frontend, enable_colab_widgets, watch_classic_display
from ..recorder import make_recorder
from ..recorder.callbacks import RecorderLike
from .controller import MAX_IMAGE_COUNT, GenerationRequest, HistoryEntry, parse_seed
from .hotkeys import make_hotkeys
from .markup import (
    DataUrls,
    error_markup,
    grid_markup,
    jpeg_bytes,
    seed_markup,
    status_markup,
    transcript_markup,
)
from .session import (
    ErrorChanged,
    Grid,
    GridChanged,
    HistoryChanged,
    PanelSession,
    PromptChanged,
    StatusChanged,
    StopRecording,
    TranscriptChanged,
    Update,
)
from .upload import UploadControl

if TYPE_CHECKING:
    from PIL.Image import Image

    from ..config import Settings
    from ..images.service import ImageService
    from ..safety import Policy, RefusalLog
    from ..speech.base import Transcriber

__all__ = ["Panel", "app"]

logger = logging.getLogger(__name__)

_DEFAULT_SAVE_DIR = "speech2image_images"
_THUMB_PX = 84  # history thumbnails


def app(
    *,
    recorder: str | RecorderLike = "anywidget",
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
        transcribes after stop), or a :class:`~speech2image_nb.recorder.RecorderLike` widget.
    hands_free
        Start with hands-free on: every finished sentence generates images.
    image_count
        Images per generation (1 to the image server's limit, ``MAX_IMAGE_COUNT``).
    display
        Display the panel in the current cell (the default).
    **settings
        Overrides for :class:`speech2image_nb.config.Settings` (``assemblyai_api_key``,
        ``server_url``, ``server_token``, ``whisper_model``, ``image_engine``, ``model_dir``, ...);
        anything not given comes from the environment or Colab secrets. The classroom filter:
        ``safety`` (``"strict"``, the default, ``"standard"`` or ``"off"``), ``safety_block`` and
        ``safety_allow`` (a teacher's words or phrases), ``safety_file`` (a word file),
        ``safety_log_text`` (keep refused text in :attr:`Panel.refusals`) and ``mask_transcript``
        (default ``True``).
    """
    from ..config import Settings

    enable_colab_widgets()  # in Colab: before anything is displayed
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
    an ``ImageClient``, like :class:`~speech2image_nb.images.service.ImageService`) and
    ``recorder`` (a :class:`~speech2image_nb.recorder.callbacks.RecorderLike` widget).

    Parameters
    ----------
    settings
        Resolved settings; default ``Settings.resolve()``.
    start
        Begin connecting to the image server and loading the speech engine right away.
    safety
        The classroom filter; by default the one ``settings`` describe. The embedded server the
        panel starts gets the same.
    """

    def __init__(
        self,
        *,
        settings: Settings | None = None,
        recorder: str | RecorderLike = "anywidget",
        transcriber: Transcriber | None = None,
        image_service: ImageService | None = None,
        hands_free: bool = False,
        image_count: int = 4,
        start: bool = True,
        safety: Policy | None = None,
    ) -> None:
        from ..config import Settings

        enable_colab_widgets()  # in Colab: before any widget exists, so every display is tagged
        self.frontend = detect_frontend()
        self.settings = settings if settings is not None else Settings.resolve()
        # First, so that an unreadable word file stops the panel before it makes anything.
        safety = safety if safety is not None else self.settings.safety_policy()
        self.recorder, self._recorder_view, recorder_problem = _make_recorder(recorder)
        self.session = PanelSession(
            self.settings,
            on_update=self._draw,
            image_service=image_service,
            transcriber=transcriber,
            streams=self.recorder.streams if self.recorder is not None else True,
            hands_free_options=self._hands_free_options,
            frontend=self.frontend,
            safety=safety,
        )
        self.controller = self.session.controller
        self.controller.hands_free = hands_free
        self._data_urls = DataUrls()
        self._history_items: dict[str, Any] = {}
        self._repr_suppressed_at: int | None = None
        self._build_widgets(hands_free=hands_free, image_count=image_count)
        super().__init__(children=self._layout_children())
        self.add_class("s2i-panel")
        if self.recorder is not None:
            self._wire_recorder(self.recorder)
        self.session.show_opening_line(recorder_problem)
        if start:
            self.start()

    @property
    def safety(self) -> Policy:
        """The classroom filter this panel checks every prompt with (level, a teacher's words)."""
        return self.session.safety

    @property
    def refusals(self) -> RefusalLog:
        """The teacher's log of refused prompts: time, where, category (the text only if chosen).

        Read it in a cell the class does not see (``panel.refusals.entries``); no widget shows it.
        """
        return self.session.refusals

    def start(self) -> None:
        """Connect to (or start) the image server and load the speech engine, in the background.

        Called by the constructor unless ``start=False``; later calls do nothing.
        """
        self.session.start()

    # --- widgets --------------------------------------------------------------------------------

    def _build_widgets(self, *, hands_free: bool, image_count: int) -> None:
        css = resources.files(__package__).joinpath("panel.css").read_text(encoding="utf-8")
        self._style = widgets.HTML(f"<style>{css}</style>")
        self.transcript_html = widgets.HTML(transcript_markup(""), layout=widgets.Layout(width="100%"))
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
        self.status_html = widgets.HTML(status_markup(self.session.status))
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
        self._hotkeys = make_hotkeys(self.toggle_recording)
        self.upload = UploadControl(self.session.upload)

        self.generate_button.on_click(lambda _b: self._safely(self.generate))
        self.save_button.on_click(lambda _b: self.session.background(self._safely, self.save))
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
            self.upload.view,
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

    def _wire_recorder(self, recorder: RecorderLike) -> None:
        recorder.on_audio(self.session.audio)
        recorder.on_stop(self.session.take_ended)
        recorder.on_error(self.session.recorder_failed)
        self._recorder_view.observe(
            lambda change: self.session.recording_changed(bool(change["new"])), names="recording"
        )

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
        # the classic Notebook: a panel hidden by the page's widget start-up shows again; a blank
        # cell says what to do
        watch_classic_display(".s2i-panel", model_id=self.model_id)
        parent = getattr(super(), "_ipython_display_", None)
        if parent is not None:  # ipywidgets 7
            parent(**kwargs)
        else:
            from IPython.display import display

            display(super()._repr_mimebundle_(), raw=True)  # type: ignore[no-untyped-call]

    # --- drawing the session's updates -----------------------------------------------------------

    def _draw(self, update: Update) -> None:
        match update:
            case StatusChanged(status=status):
                self.status_html.value = status_markup(status)
            case ErrorChanged(line=line):
                self.error_html.value = error_markup(line)
            case TranscriptChanged(html=inner):
                self.transcript_html.value = transcript_markup(inner)
            case PromptChanged(text=text):
                self.prompt_text.value = text
            case GridChanged(grid=grid):
                self._draw_grid(grid)
            case HistoryChanged(entries=entries):
                self._draw_history(entries)
            case StopRecording():
                if self.recorder is not None and self.recorder.recording:
                    self.recorder.recording = False

    def _draw_grid(self, grid: Grid) -> None:
        self.grid_html.value = grid_markup(grid, self._data_urls)
        self.save_button.disabled = grid.entry is None
        if grid.entry is not None:
            self.seed_label.value = seed_markup(grid.entry.seed)

    def _draw_history(self, entries: tuple[HistoryEntry, ...]) -> None:
        items = {e.id: self._history_items.get(e.id) or self._history_item(e) for e in reversed(entries)}
        self._history_items = items
        self.history_box.children = tuple(items.values())

    def _history_item(self, entry: HistoryEntry) -> Any:
        thumb = entry.images[0].copy()
        thumb.thumbnail((_THUMB_PX, _THUMB_PX))
        jpeg = jpeg_bytes(thumb, quality=80)
        image = widgets.Image(value=jpeg, format="jpeg", width=_THUMB_PX, height=_THUMB_PX)
        label = entry.prompt if len(entry.prompt) <= 14 else entry.prompt[:13] + "…"
        button = widgets.Button(
            description=label, tooltip=entry.prompt, layout=widgets.Layout(width=f"{_THUMB_PX + 8}px")
        )
        button.on_click(lambda _b, entry_id=entry.id: self._safely(self.restore, entry_id))
        engine = widgets.HTML(f'<span class="s2i-history-engine">{html.escape(entry.engine)}</span>')
        item = widgets.VBox([image, button, engine])
        item.add_class("s2i-history-item")
        return item

    # --- errors ----------------------------------------------------------------------------------

    def show_error(self, exc: BaseException, *, hint: str = "") -> str:
        """Show ``exc`` as one readable line in the panel, ``hint`` appended (traceback at DEBUG)."""
        return self.session.report(exc, hint=hint)

    def clear_error(self) -> None:
        """Remove the error line."""
        self.session.clear_error()

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

    # --- recording, generating, history ----------------------------------------------------------

    def toggle_recording(self) -> None:
        """Start recording when stopped, stop when recording (what Space does)."""
        if self.recorder is not None:
            self.recorder.recording = not self.recorder.recording

    def _on_hands_free(self, change: dict[str, Any]) -> None:
        self.controller.hands_free = bool(change["new"])

    def _hands_free_options(self) -> tuple[int, int | None]:
        try:
            seed = parse_seed(self.seed_text.value)
        except ConfigError:
            seed = None
        return self.image_count_slider.value, seed

    def generate(self, prompt: str | None = None) -> GenerationRequest | None:
        """Generate images for ``prompt`` (default: the prompt field); queued if one is running.

        Returns ``None`` when the classroom filter refuses the prompt: nothing is sent, the prompt
        stays in its field, and the line under the buttons says why.

        Raises
        ------
        ConfigError
            Empty prompt, bad seed, or image count out of range.
        """
        if prompt is not None:
            self.prompt_text.value = prompt
        return self.session.generate(
            self.prompt_text.value,
            image_count=self.image_count_slider.value,
            seed=parse_seed(self.seed_text.value),
        )

    @property
    def images(self) -> list[Image]:
        """The images of the generation shown now (finished ones only)."""
        return self.session.images

    def wait_ready(self, timeout_s: float = 60.0) -> bool:
        """Block until the image server is connected (True), failed or ``timeout_s`` passed (False)."""
        return self.session.wait_ready(timeout_s)

    def wait_idle(self, timeout_s: float = 60.0) -> bool:
        """Block until no generation runs or waits; True when idle, False on timeout."""
        return self.session.wait_idle(timeout_s)

    def restore(self, entry_id: str) -> HistoryEntry:
        """Show an earlier generation again: its prompt, seed and images."""
        return self.session.restore(entry_id)

    def save(self, folder: str | None = None) -> list[Path]:
        """Save the images shown now as PNG files named by their id; returns the paths."""
        return self.session.save(folder or self.folder_text.value or _DEFAULT_SAVE_DIR)

    def close(self) -> None:
        """Stop recording, stop the embedded server, close the widgets."""
        session = getattr(self, "session", None)  # None: the constructor failed (a bad setting)
        if session is not None:
            session.close()
        super().close()


def _make_recorder(recorder: str | RecorderLike) -> tuple[RecorderLike | None, Any, str]:
    """``(recorder, the widget to display, why it could not be loaded)``; a note in its place then."""
    try:
        made = make_recorder(recorder)
    except ImportError as exc:
        logger.debug("recorder unavailable", exc_info=True)
        note = widgets.HTML("<span class='s2i-error'>No recorder: type a prompt instead.</span>")
        return None, note, f"The recorder could not be loaded ({exc}): reinstall speech2image_nb."
    return made, _view_of(made), ""


def _view_of(recorder: RecorderLike) -> Any:
    """What the panel shows: the recorder itself, or the widget a wrapper holds (ipywebrtc)."""
    return recorder if isinstance(recorder, widgets.Widget) else getattr(recorder, "widget")  # noqa: B009
