"""The panel's session without a widget: start-up state, takes, transcription, generations, saving."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from speech2image_nb import errors
from speech2image_nb.config import Settings
from speech2image_nb.frontend import VSCODE_NO_MICROPHONE
from speech2image_nb.ui.controller import HistoryEntry
from speech2image_nb.ui.session import (
    ErrorChanged,
    Grid,
    GridChanged,
    HistoryChanged,
    PanelSession,
    PromptChanged,
    ServerState,
    StatusChanged,
    StopRecording,
    TranscriptChanged,
)
from speech2image_nb.ui.upload import UPLOAD_HINT, UploadedFile
from tests.conftest import DATA_DIR, TIME_FACTOR
from tests.ui.conftest import wait_until
from tests.ui.fakes import FakeClient, FakeImageService, ScriptedTranscriber

FOX_WAV = DATA_DIR / "piper_01.wav"
CHUNK = bytes(3200)  # 100 ms of 16 kHz int16 silence: the scripted transcriber only counts chunks


@pytest.fixture
def make_session():
    sessions = []

    def make(**kwargs):
        updates = []
        kwargs.setdefault("transcriber", ScriptedTranscriber())
        kwargs.setdefault("image_service", FakeImageService())
        session = PanelSession(
            Settings.resolve(environ={}, colab_secret=lambda n: None), on_update=updates.append, **kwargs
        )
        sessions.append(session)
        return session, updates

    yield make
    for session in sessions:
        session.close()


def of_type(updates, kind):
    return [u for u in list(updates) if isinstance(u, kind)]


def test_session_module_needs_no_widget_library():
    """Importing the session (and the controller it drives) loads neither ipywidgets nor anywidget."""
    probe = (
        "import json, sys\n"
        "import speech2image_nb.ui.session\n"
        "print(json.dumps([m for m in ('ipywidgets', 'anywidget', 'IPython') if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_start_reports_ready_as_state_and_in_the_status(make_session):
    """start(): the server state becomes READY and the status line names the server and speech engine."""
    session, updates = make_session()
    assert session.server_state is ServerState.STARTING and not session.wait_ready(0)
    session.start()
    assert session.wait_ready(10 * TIME_FACTOR) and session.server_state is ServerState.READY
    assert wait_until(lambda: session.status.speech == "scripted")
    assert session.status.images == "fake server (ready)"
    assert StatusChanged(session.status) in updates


def test_streamed_take_in_hands_free_draws_the_sentence_and_history_names_the_engine(make_session):
    """Chunks while recording -> partials, the final as prompt, a streamed generation, a history entry."""
    session, updates = make_session(hands_free_options=lambda: (2, 5))
    session.controller.hands_free = True
    session.recording_changed(True)
    for _ in range(20):
        session.audio(CHUNK)
    session.take_ended()
    session.recording_changed(False)
    assert wait_until(lambda: of_type(updates, HistoryChanged)) and session.wait_idle(10)
    transcripts = [u.html for u in of_type(updates, TranscriptChanged)]
    assert any("s2i-partial" in t for t in transcripts) and "s2i-final" in transcripts[-1]
    assert of_type(updates, PromptChanged) == [PromptChanged("a red fox sitting in the snow")]
    grids = [u.grid for u in of_type(updates, GridChanged)]
    assert grids[0].tiles == (None, None) and grids[0].entry is None  # placeholders first
    assert any(g.tiles[0] is not None and not g.final[0] for g in grids)  # then a preview
    (entry,) = of_type(updates, HistoryChanged)[-1].entries
    assert entry.engine == "fake" and entry.seed == 5 and len(entry.images) == 2
    assert grids[-1] == Grid.of(entry) and session.images == list(entry.images)


def test_queued_event_shows_the_queue_position(make_session):
    """A queued event from the server becomes the activity in the status line."""
    session, updates = make_session()
    session.generate("a red fox", image_count=1, seed=None)
    assert session.wait_idle(10)
    activities = [u.status.activity for u in of_type(updates, StatusChanged)]
    assert "waiting in the server queue (position 0)" in activities
    assert activities[-1] == ""


def test_server_down_at_start_is_unavailable_then_a_working_generation_makes_it_ready(make_session):
    """A failed start: state UNAVAILABLE and one error line; once the server answers, READY again."""
    service = FakeImageService(down=True)
    session, updates = make_session(image_service=service)
    session.start()
    assert session.wait_ready(10 * TIME_FACTOR) is False and session.server_state is ServerState.UNAVAILABLE
    assert wait_until(lambda: of_type(updates, ErrorChanged))
    assert of_type(updates, ErrorChanged)[0].line.startswith("Image server:")
    assert "(not available)" in session.status.images
    service.down = False
    session.generate("a red fox", image_count=1, seed=None)
    assert session.wait_idle(10) and session.server_state is ServerState.READY
    assert session.status.images == "fake server (ready)"
    assert of_type(updates, ErrorChanged)[-1] == ErrorChanged("")  # generate cleared the line


def test_transcription_failure_is_a_line_and_asks_the_view_to_stop_recording(make_session):
    """The speech engine fails mid-take: the error line, and a StopRecording update for the view."""
    refused = errors.AuthError(
        "AssemblyAI refused the API key: check ASSEMBLYAI_API_KEY.", service="AssemblyAI"
    )
    session, updates = make_session(transcriber=ScriptedTranscriber(error=refused))
    session.recording_changed(True)
    session.audio(CHUNK)
    assert wait_until(lambda: of_type(updates, StopRecording))
    assert of_type(updates, ErrorChanged)[-1].line.startswith("Key refused by AssemblyAI")


def test_after_stop_recorder_take_is_transcribed_once(make_session):
    """streams=False: the whole take, delivered once after stop, becomes the prompt."""
    session, updates = make_session(streams=False)
    session.recording_changed(True)
    session.recording_changed(False)
    session.audio(CHUNK * 10)
    session.take_ended()
    assert wait_until(lambda: of_type(updates, PromptChanged))
    assert of_type(updates, PromptChanged) == [PromptChanged("a red fox sitting in the snow")]
    assert session.controller.transcript.plain_text() == "a red fox sitting in the snow"


def test_an_uploaded_recording_goes_the_whole_take_way_and_hands_free_draws_it(make_session):
    """upload(): the file is decoded, transcribed whole, becomes the prompt, and hands-free draws it."""
    session, updates = make_session(hands_free_options=lambda: (1, None))
    session.controller.hands_free = True
    session.upload(UploadedFile("fox.wav", FOX_WAV.read_bytes(), "audio/wav"))
    assert wait_until(lambda: of_type(updates, HistoryChanged)) and session.wait_idle(10)
    assert of_type(updates, PromptChanged) == [PromptChanged("a red fox sitting in the snow")]
    assert "reading fox.wav…" in [u.status.activity for u in of_type(updates, StatusChanged)]
    assert of_type(updates, ErrorChanged) == [ErrorChanged("")]  # the upload cleared the line


def test_a_bad_upload_is_its_line_and_draws_nothing(make_session):
    """A text file named .wav: one Audio line naming the file; no prompt, no generation."""
    session, updates = make_session()
    session.upload(UploadedFile("notes.wav", b"not a recording\n" * 40))
    assert wait_until(lambda: len(of_type(updates, ErrorChanged)) == 2)
    line = of_type(updates, ErrorChanged)[-1].line
    assert line.startswith("Audio: notes.wav is not audio") and session.status.activity == ""
    assert of_type(updates, PromptChanged) == [] and session.controller.history == []


@pytest.mark.parametrize(
    ("frontend", "problem", "opening"),
    [
        ("jupyter", "", None),
        ("vscode", "", VSCODE_NO_MICROPHONE),
        (
            "jupyter",
            "The recorder could not be loaded (no anywidget).",
            f"The recorder could not be loaded (no anywidget). {UPLOAD_HINT}",
        ),
        (
            "vscode",
            "The recorder could not be loaded (no anywidget).",
            f"The recorder could not be loaded (no anywidget). {UPLOAD_HINT}",
        ),
    ],
)
def test_opening_line_names_the_upload_where_the_recorder_cannot_record(
    make_session, frontend, problem, opening
):
    """No recorder: why, plus the upload hint; VS Code: its no-microphone line; else no line."""
    session, updates = make_session(frontend=frontend)
    session.show_opening_line(problem)
    assert of_type(updates, ErrorChanged) == ([] if opening is None else [ErrorChanged(opening)])


@pytest.mark.parametrize(
    ("frontend", "ends_with_hint"), [("jupyter", True), ("colab", True), ("vscode", False)]
)
def test_recorder_errors_point_to_the_upload_except_where_the_line_already_does(
    make_session, frontend, ends_with_hint
):
    """A recorder error's line ends with the upload hint; VS Code's own line names the upload already."""
    from speech2image_nb.recorder.widget import recorder_error

    session, updates = make_session(frontend=frontend)
    session.recorder_failed(recorder_error("permission-denied", frontend=frontend))
    line = of_type(updates, ErrorChanged)[-1].line
    assert line.startswith("Microphone: ") and line.endswith(UPLOAD_HINT) is ends_with_hint
    assert line.lower().count("upload a recording") == 1  # named once, never doubled


def test_generations_queue_behind_each_other_and_restore_and_save_work(make_session, tmp_path):
    """Two generates: the second waits; restore shows the first again; save writes its PNGs."""
    session, updates = make_session(image_service=FakeImageService(FakeClient(delay_s=0.2)))
    first = session.generate("a red fox", image_count=2, seed=None)
    session.generate("a blue bird", image_count=1, seed=None)
    assert "queued (1 waiting)" in session.status.activity
    assert session.wait_idle(10) and len(session.images) == 1
    restored = session.restore(first.id)
    assert restored.prompt == "a red fox" and session.grid == Grid.of(restored)
    assert of_type(updates, PromptChanged)[-1] == PromptChanged("a red fox")
    paths = session.save(str(tmp_path))
    assert sorted(p.name for p in paths) == [f"{first.id}-1.png", f"{first.id}-2.png"]
    with pytest.raises(errors.ConfigError):
        session.restore("gone")


def test_grid_previews_never_replace_final_tiles():
    """A preview fills the tiles not yet final; an image index out of range changes nothing."""
    red, grey = Image.new("RGB", (4, 4), "red"), Image.new("RGB", (4, 4), "grey")
    grid = Grid.empty("g", 2).with_image(0, red).with_preview(grey)
    assert grid.tiles == (red, grey) and grid.final == (True, False)
    assert grid.with_image(5, red) == grid
    assert grid.final_images() == (red,)
    entry = HistoryEntry("g", "p", 1, (red,), "noise")
    assert Grid.of(entry).entry is entry and Grid.of(entry).final == (True,)
