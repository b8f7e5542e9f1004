"""The classroom filter in the panel: checked before sending, masked on screen, logged for the teacher."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from speech2image_nb import errors
from speech2image_nb.config import ENV_VARS, SAFETY_LEVELS, Settings
from speech2image_nb.images import service
from speech2image_nb.images.client import ImageEvent
from speech2image_nb.safety import LEVELS, Policy
from speech2image_nb.safety import policy as policy_module
from speech2image_nb.speech.base import TranscriptEvent
from speech2image_nb.ui.controller import Controller
from speech2image_nb.ui.panel import Panel, app
from speech2image_nb.ui.safety import PromptScreen, refusal_line, withheld_line
from speech2image_nb.ui.session import PanelSession, TranscriptChanged
from speech2image_nb.ui.upload import UploadedFile
from tests.conftest import DATA_DIR
from tests.ui.conftest import wait_until
from tests.ui.fakes import FakeClient, FakeImageService, FakeRecorder, ScriptedTranscriber

FOX = DATA_DIR / "piper_01.wav"
REFUSED = "a knight covered in gore"  # refused for violence by every level but off
VIOLENCE_LINE = (
    "Not drawn: the classroom filter refuses violent content. "
    "Change the prompt, or the teacher can change the filter."
)


def settings(**overrides) -> Settings:
    return Settings.resolve(environ={}, colab_secret=lambda n: None, **overrides)


def make_blocked(category: str) -> Exception:
    """What the client raises for a 422 ``prompt_blocked``: ``PromptBlocked(category, message)``."""
    return errors.PromptBlocked(category)


class BlockingClient(FakeClient):
    """A filtering server: refuses every prompt containing ``word`` (as its own filter would)."""

    def __init__(self, word: str, error: Exception) -> None:
        super().__init__()
        self.word, self.error, self.refused = word, error, []

    def generate_stream(self, text, **kwargs):
        if self.word in text:
            self.refused.append(text)
            raise self.error
        yield from super().generate_stream(text, **kwargs)


@dataclasses.dataclass(frozen=True)
class WithheldImage(ImageEvent):
    """An image event with the stream's ``withheld`` flag (the protocol's own field, once it has it)."""

    withheld: bool = False


class WithholdingClient(FakeClient):
    """A server whose picture check replaced some tiles by its placeholder and says which."""

    def __init__(self, *, flagged: tuple[int, ...]) -> None:
        super().__init__()
        self.flagged = flagged

    def generate_stream(self, text, *, num_images=1, seed=None, **options):
        for event in super().generate_stream(text, num_images=num_images, seed=seed, **options):
            if isinstance(event, ImageEvent):
                yield WithheldImage(event.index, event.image, withheld=event.index in self.flagged)
            else:
                yield event


# --- Generate ----------------------------------------------------------------------------------


def test_a_refused_prompt_never_reaches_the_server_and_stays_in_the_prompt_box(make_panel):
    """Generate (button and method) on a refused prompt: no request sent, the text kept, one line."""
    client = FakeClient()
    panel = make_panel(image_service=FakeImageService(client))
    panel.prompt_text.value = REFUSED
    panel.generate_button.click()
    assert panel.generate(REFUSED) is None
    assert panel.wait_idle(5)
    assert client.prompts == [] and panel.controller.history == []
    assert panel.prompt_text.value == REFUSED
    assert panel.error_text == VIOLENCE_LINE
    assert "gore" not in panel.error_html.value and "knight" not in panel.error_html.value
    panel.generate("a knight on a horse")  # the teacher changes the prompt: drawn, the line gone
    assert panel.wait_idle(10) and client.prompts == ["a knight on a horse"] and panel.error_text == ""


def test_the_line_names_the_category_never_the_words():
    """Each category has its neutral words; none repeats the prompt."""
    assert refusal_line("violence") == VIOLENCE_LINE
    assert "sexual content" in refusal_line("sexual") and "about self-harm" in refusal_line("self_harm")
    assert "refuses gambling content." in refusal_line("gambling")  # a category added later
    assert "a word the teacher blocked" in refusal_line("custom")
    assert "refused this prompt" in refusal_line(None)
    assert withheld_line(1) == "1 picture was not shown (classroom filter)."
    assert withheld_line(3) == "3 pictures were not shown (classroom filter)."


# --- hands-free and the transcript -------------------------------------------------------------


def test_hands_free_skips_a_refused_sentence_and_draws_the_next(make_panel):
    """Three sentences, the middle one refused while the first draws: the first and third are drawn."""
    client = FakeClient(delay_s=0.3)
    sentences = ("a red fox sitting in the snow", REFUSED, "a blue bird on a branch")
    panel = make_panel(
        hands_free=True,
        image_count=1,
        transcriber=ScriptedTranscriber(sentences),
        image_service=FakeImageService(client),
    )
    panel.recorder.play(FOX)
    assert wait_until(lambda: len(panel.controller.history) == 2) and panel.wait_idle(10)
    assert client.prompts == ["a red fox sitting in the snow", "a blue bird on a branch"]
    assert panel.controller.queued == [] and panel.controller.running is None  # nothing stuck
    assert panel.prompt_text.value == "a blue bird on a branch"  # the refused one never went there
    assert "gore" not in panel.transcript_html.value and "••••" in panel.transcript_html.value
    assert panel.error_text == VIOLENCE_LINE
    (entry,) = panel.refusals.entries
    assert (entry.where, entry.category, entry.text) == ("panel:hands-free", "violence", None)


def test_a_refused_sentence_is_left_out_of_the_prompt_box_without_hands_free(make_panel):
    """Not hands-free: the prompt is the session's other sentences; the refused one is only masked."""
    panel = make_panel(transcriber=ScriptedTranscriber(("a red fox", REFUSED)))
    panel.recorder.play(FOX)
    assert wait_until(lambda: panel.refusals.entries)
    assert wait_until(lambda: panel.prompt_text.value == "a red fox")
    assert panel.refusals.entries[0].where == "panel:speech" and panel.error_text == VIOLENCE_LINE
    assert "gore" not in panel.transcript_html.value


def test_partials_and_finals_are_masked_and_masking_can_be_turned_off():
    """Every transcript update masks refused words; mask_transcript=False shows them (still not drawn)."""
    for mask, shown in ((True, False), (False, True)):
        updates = []
        session = PanelSession(
            settings(mask_transcript=mask),
            on_update=updates.append,
            image_service=FakeImageService(),
            transcriber=ScriptedTranscriber(),
        )
        try:
            session.controller.hands_free = True
            for text in ("a knight", "a knight covered in go", "a knight covered in gore"):
                session._apply_transcript(TranscriptEvent("partial", text, 0))
            session._apply_transcript(TranscriptEvent("final", REFUSED, 0))
            htmls = [u.html for u in updates if isinstance(u, TranscriptChanged)]
            assert len(htmls) == 4 and "covered in go" in htmls[1]  # a word not finished is not masked
            assert all(("gore" in h) is shown for h in htmls[2:])
            assert session.controller.running is None and session.controller.queued == []
            assert len(session.refusals) == 1
        finally:
            session.close()


def test_an_uploaded_refused_recording_is_logged_as_an_upload():
    """An uploaded recording whose sentence is refused, hands-free: its own place in the log, not drawn."""
    client = FakeClient()
    session = PanelSession(
        settings(),
        on_update=lambda u: None,
        image_service=FakeImageService(client),
        transcriber=ScriptedTranscriber((REFUSED,)),
    )
    try:
        session.controller.hands_free = True
        session.upload(UploadedFile("knight.wav", FOX.read_bytes(), "audio/wav"))
        assert wait_until(lambda: session.refusals.entries)
        assert [(e.where, e.category) for e in session.refusals.entries] == [("panel:upload", "violence")]
        assert session.wait_idle(5) and client.prompts == []
    finally:
        session.close()


def test_the_controller_never_queues_a_refused_sentence_and_drops_one_refused_later():
    """Rules: a refused final is not queued nor the prompt; a refused later final unqueues its turn."""
    c = Controller()
    c.hands_free = True
    c.begin_recording()
    running = c.on_transcript(TranscriptEvent("final", "a red fox", 0), image_count=1, seed=None)[1]
    assert running is not None
    assert c.on_transcript(TranscriptEvent("final", REFUSED, 1), image_count=1, seed=None, refused=True) == (
        None,
        None,
    )
    c.on_transcript(TranscriptEvent("final", "a blue bird", 2), image_count=1, seed=None)
    c.on_transcript(TranscriptEvent("final", "a lark", 3), image_count=1, seed=None)
    assert [r.prompt for r in c.queued] == ["a blue bird", "a lark"]
    late = TranscriptEvent("final", "A blue bird, gore.", 2, is_formatted=True)
    assert c.on_transcript(late, image_count=1, seed=None, refused=True) == (None, None)
    assert [r.prompt for r in c.queued] == ["a lark"]
    c.hands_free = False
    assert c.transcript.session_text() == "a red fox a lark"  # refused sentences left out of the prompt
    assert "gore" not in c.transcript.to_html(lambda text: text.replace("gore", "••••"))


# --- what the server says ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        make_blocked("violence"),
        errors.ServerError(422, "prompt_blocked", "The filter refuses violence: change the prompt."),
    ],
    ids=["PromptBlocked", "ServerError"],
)
def test_a_server_refusal_shows_the_same_line_and_keeps_the_grid(make_panel, error):
    """The server refuses a prompt the panel let through: the same neutral line, logged as 'server'."""
    client = BlockingClient("dragon", error)
    panel = make_panel(image_service=FakeImageService(client), image_count=1)
    panel.generate("a red fox")
    assert panel.wait_idle(10)
    before = panel.grid_html.value
    panel.generate("a dragon")
    assert panel.wait_idle(10) and client.refused == ["a dragon"]
    expected = VIOLENCE_LINE if hasattr(error, "category") else refusal_line(None)
    assert panel.error_text == expected and "dragon" not in panel.error_html.value
    assert panel.grid_html.value == before  # the fox stays, no empty tiles
    assert [(e.where, e.text) for e in panel.refusals.entries] == [("server", None)]
    assert panel.prompt_text.value == "a dragon" and "(ready)" in panel.status_html.value
    panel.generate("a blue bird")
    assert panel.wait_idle(10) and client.prompts[-1] == "a blue bird"


@pytest.mark.parametrize("flagged", [(1,), (0, 2)])
def test_pictures_the_server_withheld_are_counted_in_one_line_and_logged(make_panel, flagged):
    """Tiles the server replaced by its placeholder: one status line counting them, and the log."""
    client = WithholdingClient(flagged=flagged)
    panel = make_panel(image_service=FakeImageService(client))
    panel.image_count_slider.value = 3
    panel.generate("a red fox")
    assert panel.wait_idle(10) and len(panel.images) == 3  # the placeholders are the server's tiles
    assert withheld_line(len(flagged)) in panel.status_html.value
    assert panel.error_text == ""
    entries = [(e.where, e.category, e.text) for e in panel.refusals.entries]
    assert entries == [("server:image", "picture", None)] * len(flagged)
    client.flagged = ()
    panel.generate("a blue bird")  # a next generation with nothing withheld: the line is gone
    assert panel.wait_idle(10) and "not shown" not in panel.status_html.value


# --- the teacher's settings and log ------------------------------------------------------------


def test_the_log_keeps_the_text_only_when_the_teacher_chose_so(make_panel):
    """Entries have time, where and category; the text only with safety_log_text."""
    quiet = make_panel()
    quiet.generate(REFUSED)
    (entry,) = quiet.refusals.entries
    assert (entry.where, entry.category, entry.text) == ("panel", "violence", None) and entry.time > 0
    verbose = make_panel(settings=settings(safety_log_text=True))
    verbose.generate(REFUSED)
    assert [e.text for e in verbose.refusals.entries] == [REFUSED]
    assert verbose.safety.log_text is True


def test_a_teachers_extra_word_blocks_and_an_allowed_word_passes(make_panel, tmp_path):
    """safety_block refuses 'kite' (category custom); safety_allow lets 'gore' through; so does a file."""
    client = FakeClient()
    panel = make_panel(
        settings=settings(safety_block="kite, balloon", safety_allow=["gore"]),
        image_service=FakeImageService(client),
    )
    assert panel.generate("a red kite") is None
    assert "a word the teacher blocked" in panel.error_text
    panel.generate(REFUSED)
    assert panel.wait_idle(10) and client.prompts == [REFUSED]
    words = tmp_path / "class-7b.txt"
    words.write_text("# class 7B\n+gore\n-kite\nballoon\n", encoding="utf-8")
    from_file = make_panel(settings=settings(safety_file=str(words)), image_service=FakeImageService())
    assert from_file.safety.blocked == ("kite", "balloon") and from_file.safety.allowed == ("gore",)
    assert from_file.generate("a balloon") is None and from_file.generate(REFUSED) is not None


def test_level_off_draws_everything_masks_nothing_and_warns_once(make_panel, monkeypatch, caplog):
    """safety='off': every prompt is drawn, nothing masked or logged, one warning for the process."""
    monkeypatch.setattr(policy_module, "_warned_off", False)
    client = FakeClient()
    with caplog.at_level(logging.WARNING, logger="speech2image_nb.safety"):
        panel = make_panel(
            settings=settings(safety="off"),
            hands_free=True,
            transcriber=ScriptedTranscriber((REFUSED,)),
            image_service=FakeImageService(client),
        )
        make_panel(settings=settings(safety="off"))
    warnings = [r for r in caplog.records if "classroom filter is off" in r.getMessage()]
    assert len(warnings) == 1
    assert panel.safety.level == "off"
    panel.recorder.play(FOX)
    assert wait_until(lambda: len(client.prompts) == 1) and panel.wait_idle(10)
    assert client.prompts == [REFUSED] and "gore" in panel.transcript_html.value
    assert len(panel.refusals) == 0


def test_strict_is_the_default_and_the_settings_read_the_environment():
    """No setting: strict, masking on, no words; S2I_SAFETY* variables and arguments are read."""
    default = settings()
    assert (default.safety, default.mask_transcript, default.safety_block) == ("strict", True, ())
    assert default.safety_policy() == Policy()
    env = {
        "S2I_SAFETY": " Standard ",
        "S2I_SAFETY_BLOCK": "kite, red balloon",
        "S2I_SAFETY_ALLOW": "gore",
        "S2I_SAFETY_LOG_TEXT": "yes",
        "S2I_MASK_TRANSCRIPT": "0",
    }
    resolved = Settings.resolve(environ=env, colab_secret=lambda n: None)
    assert resolved.safety == "standard" and resolved.mask_transcript is False
    assert resolved.safety_block == ("kite", "red balloon") and resolved.safety_allow == ("gore",)
    policy = resolved.safety_policy()
    assert (policy.level, policy.blocked, policy.allowed, policy.log_text) == (
        "standard",
        ("kite", "red balloon"),
        ("gore",),
        True,
    )
    assert Settings.resolve(environ=env, colab_secret=lambda n: None, safety="strict").safety == "strict"
    assert {
        ENV_VARS[name]
        for name in ("safety", "safety_block", "safety_allow", "safety_file", "safety_log_text")
    } == set(policy_module.ENV_VARS.values())
    assert SAFETY_LEVELS == LEVELS


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"safety": "strikt"}, r"'strikt' in safety \(S2I_SAFETY\): choose one of strict, standard, off"),
        ({"safety": 1}, r"safety \(S2I_SAFETY\) must be a level name"),
        ({"mask_transcript": "maybe"}, r"mask_transcript \(S2I_MASK_TRANSCRIPT\) must be true or false"),
        ({"safety_log_text": 2}, r"safety_log_text \(S2I_SAFETY_LOG_TEXT\) must be true or false"),
        ({"safety_block": ["kite", 3]}, r"safety_block \(S2I_SAFETY_BLOCK\) must be words or phrases"),
        ({"safety_file": 7}, r"safety_file \(S2I_SAFETY_FILE\) must be a file path"),
    ],
)
def test_bad_safety_settings_are_refused_at_once_naming_the_setting(overrides, message):
    """A misspelt level or a value of the wrong kind: one ConfigError naming the setting and its variable."""
    with pytest.raises(errors.ConfigError, match=message):
        settings(**overrides)


def test_app_refuses_a_misspelt_level_before_showing_anything(monkeypatch):
    """app(safety='strikt') raises before any panel is built; a missing word file fails the panel."""
    built = []
    monkeypatch.setattr(Panel, "__init__", lambda self, **kw: built.append(kw))
    with pytest.raises(errors.ConfigError, match="strikt"):
        app(safety="strikt", display=False)
    assert built == []
    monkeypatch.undo()
    with pytest.raises(errors.ConfigError, match="S2I_SAFETY_FILE"):
        Panel(settings=settings(safety_file="/nonexistent/words.txt"), recorder=FakeRecorder(), start=False)


def test_the_embedded_server_is_given_the_panels_filter():
    """The panel's own image service carries the panel's policy for the server it starts."""
    panel = Panel(
        settings=settings(safety="standard", safety_block=["kite"]),
        recorder=FakeRecorder(),
        transcriber=ScriptedTranscriber(),
        start=False,
    )
    try:
        images = panel.session._images
        assert isinstance(images, service.ImageService) and images.safety is panel.safety
        assert panel.safety.level == "standard" and panel.safety.blocked == ("kite",)
    finally:
        panel.close()


def test_the_embedded_server_starts_with_the_panels_filter(monkeypatch):
    """start_background is called with safety= the panel's policy."""
    import speech2image_nb.server as server_module

    calls = []

    def fake_start(engine, **kwargs):
        calls.append(kwargs)
        raise errors.EngineError("stop here: the test only looks at the arguments.")

    monkeypatch.setattr(server_module, "start_background", fake_start)
    service.disconnect()  # no connect() server left by another test: the embedded one is chosen
    policy = Policy(level="standard", blocked=("kite",))
    with pytest.raises(errors.EngineError):
        service.ImageService(settings(), safety=policy).open(timeout_s=1)
    assert calls and calls[0].get("safety") is policy


def test_the_screen_masks_only_when_asked_and_caches():
    """PromptScreen.mask: refused words become bullets; off or unmasked, the text is unchanged."""
    screen = PromptScreen(Policy())
    masked = screen.mask(REFUSED)
    assert masked.startswith("a knight") and masked.endswith("••••") and "gore" not in masked
    assert screen.mask(REFUSED) is masked  # cached: the transcript is redrawn on every word
    assert PromptScreen(Policy(), mask_transcript=False).mask(REFUSED) == REFUSED
    assert PromptScreen(Policy(level="off")).mask(REFUSED) == REFUSED
    assert screen.allows("a red fox") and not screen.allows(REFUSED) and len(screen.log) == 0


class FlagsEverything:
    """A picture check that flags every picture (finals and previews)."""

    def flags(self, images):
        return [True] * len(images)


def test_a_real_filtering_server_refusal_and_withheld_pictures_reach_the_panel(make_panel):
    """Against the real server: its 422 prompt_blocked shows the panel's line; withheld tiles are counted."""
    from speech2image_nb.server.engines.noise import NoiseEngine
    from tests.image_server_utils import running_server

    server_policy = Policy(blocked=("dragon",))  # the server's teacher blocked a word the panel allows
    with running_server(
        NoiseEngine(size_px=16), token="tok-21", safety=server_policy, image_checker=FlagsEverything()
    ) as server:
        panel = make_panel(
            settings=settings(server_url=server.url, server_token="tok-21"), image_service=None
        )
        assert panel.wait_ready(30), panel.error_text
        panel.image_count_slider.value = 2
        panel.generate("a dragon")
        assert panel.wait_idle(30)
        assert panel.error_text == refusal_line("custom") and "dragon" not in panel.error_html.value
        assert [(e.where, e.category) for e in panel.refusals.entries] == [("server", "custom")]
        panel.generate("a red fox")
        assert panel.wait_idle(30) and panel.error_text == "" and len(panel.images) == 2
        assert withheld_line(2) in panel.status_html.value
