"""The panel's rules without widgets: transcript turns, hands-free queueing, history, error lines."""

from __future__ import annotations

import pytest
from PIL import Image

from speech2image_nb import errors
from speech2image_nb.images.files import save_images
from speech2image_nb.images.protocol import DEFAULT_MAX_IMAGES
from speech2image_nb.speech.base import TranscriptEvent
from speech2image_nb.ui.controller import (
    MAX_IMAGE_COUNT,
    Controller,
    HistoryEntry,
    Transcript,
    describe_error,
    new_id,
    parse_seed,
)


def partial(text, turn=0):
    return TranscriptEvent("partial", text, turn)


def final(text, turn=0, formatted=False):
    return TranscriptEvent("final", text, turn, is_formatted=formatted)


def test_partial_replaces_its_turn_and_final_commits_it():
    """A partial replaces the text of its turn; a final commits it and shows unstyled."""
    t = Transcript()
    t.apply(partial("a red"))
    t.apply(partial("a red fox"))
    assert t.plain_text() == "a red fox"
    assert "s2i-partial" in t.to_html()
    t.apply(final("a red fox sitting"))
    assert t.plain_text() == "a red fox sitting"
    assert "s2i-partial" not in t.to_html() and "s2i-final" in t.to_html()


def test_late_partial_never_overwrites_a_final():
    """A partial arriving after its turn's final is ignored."""
    t = Transcript()
    t.apply(final("the snow"))
    t.apply(partial("the sn"))
    assert t.plain_text() == "the snow"


def test_formatted_final_replaces_the_unformatted_one():
    """A later formatted final of the same turn replaces the first final."""
    t = Transcript()
    assert t.apply(final("a red fox"))[1] is True
    assert t.apply(final("A red fox.", formatted=True))[1] is False
    assert t.plain_text() == "A red fox."


def test_each_recording_session_continues_after_the_turns_shown():
    """Turn 0 of a second recording does not overwrite turn 0 of the first."""
    t = Transcript()
    t.apply(final("first take"))
    t.begin_session()
    t.apply(final("second take"))
    assert t.plain_text() == "first take second take"
    assert t.session_text() == "second take"


def test_transcript_html_is_escaped():
    """User speech is shown as text, never as markup."""
    t = Transcript()
    t.apply(final("<img src=x onerror=alert(1)>"))
    assert "<img" not in t.to_html() and "&lt;img" in t.to_html()


def test_without_hands_free_finals_fill_the_prompt_and_nothing_generates():
    """Finals of one session join into the prompt; no generation starts by itself."""
    c = Controller()
    c.begin_recording()
    assert c.on_transcript(final("a red fox", 0), image_count=2, seed=None) == ("a red fox", None)
    prompt, request = c.on_transcript(final("in the snow", 1), image_count=2, seed=None)
    assert prompt == "a red fox in the snow" and request is None


def test_hands_free_generates_once_per_sentence_and_queues_while_busy():
    """Each final sentence becomes one request; while one runs the others wait, none is cancelled."""
    c = Controller()
    c.hands_free = True
    c.begin_recording()
    _, first = c.on_transcript(final("a red fox", 0), image_count=3, seed=7)
    assert first is not None and first.prompt == "a red fox" and first.image_count == 3 and first.seed == 7
    assert c.on_transcript(final("A red fox.", 0, True), image_count=3, seed=7)[1] is None  # same turn
    _, second = c.on_transcript(final("a blue bird", 1), image_count=3, seed=7)
    _, third = c.on_transcript(final("a green tree", 2), image_count=3, seed=7)
    assert second is None and third is None
    assert [r.prompt for r in c.queued] == ["a blue bird", "a green tree"]
    assert c.running == first
    nxt = c.finish(HistoryEntry(first.id, first.prompt, 7, (Image.new("RGB", (4, 4)),)))
    assert nxt is not None and nxt.prompt == "a blue bird"
    assert c.finish(None).prompt == "a green tree"
    assert c.finish(None) is None and c.running is None
    assert [e.prompt for e in c.history] == ["a red fox"]


def test_formatted_final_updates_a_queued_sentence():
    """A formatted final for a sentence still waiting changes the prompt that will be sent."""
    c = Controller()
    c.hands_free = True
    c.submit(c.make_request("busy", image_count=1, seed=None))
    c.on_transcript(final("a red fox", 0), image_count=1, seed=None)
    c.on_transcript(final("A red fox.", 0, True), image_count=1, seed=None)
    assert [r.prompt for r in c.queued] == ["A red fox."]


def test_make_request_validates_prompt_and_count():
    """Empty prompts and counts outside 1 to the server's image limit are a readable ConfigError."""
    c = Controller()
    assert MAX_IMAGE_COUNT == DEFAULT_MAX_IMAGES == 10  # the panel offers what the server takes
    with pytest.raises(errors.ConfigError, match="prompt is empty"):
        c.make_request("   ", image_count=1, seed=None)
    with pytest.raises(errors.ConfigError, match="between 1 and 10"):
        c.make_request("fox", image_count=11, seed=None)
    with pytest.raises(errors.ConfigError, match="between 1 and 10"):
        c.make_request("fox", image_count=0, seed=None)
    assert c.make_request("  a   fox ", image_count=10, seed=3).prompt == "a fox"


def test_parse_seed():
    """Blank seed means random; numbers >= 0 are taken; anything else is a readable error."""
    assert parse_seed("  ") is None
    assert parse_seed("42") == 42
    for bad in ("x", "-1", "1.5"):
        with pytest.raises(errors.ConfigError, match="Seed"):
            parse_seed(bad)


def test_history_keeps_the_newest_entries_and_finds_them():
    """History is bounded and entries are found by id."""
    c = Controller(history_limit=2)
    img = (Image.new("RGB", (2, 2)),)
    for name in ("a", "b", "c"):
        c.submit(c.make_request(name, image_count=1, seed=None))
        c.finish(HistoryEntry(f"id-{name}", name, 1, img))
    assert [e.prompt for e in c.history] == ["b", "c"]
    assert c.find("id-c").prompt == "c" and c.find("id-a") is None


@pytest.mark.parametrize(
    ("exc", "starts"),
    [
        (errors.MicrophonePermissionDenied("Allow the microphone in the site settings."), "Microphone:"),
        (
            errors.AuthError("The key was refused: check ASSEMBLYAI_API_KEY.", service="AssemblyAI"),
            "Key refused by AssemblyAI:",
        ),
        (errors.ServerUnreachable("No answer: start the server.", url="http://x"), "Image server:"),
        (errors.ServerError(500, "engine_error", "out of memory"), "Image server:"),
        (errors.TranscriptionError("Session ended.", code=3005), "Speech service:"),
        (errors.ConfigError("Seed must be a number."), "Seed must"),
        (ValueError("boom\nline two"), "Unexpected error (ValueError: boom line two)"),
    ],
)
def test_every_error_becomes_one_line_naming_the_part(exc, starts):
    """describe_error gives one line, prefixed with the failing part, without a traceback."""
    line = describe_error(exc)
    assert line.startswith(starts)
    assert "\n" not in line and "Traceback" not in line


def test_ids_and_saved_file_names_never_hold_the_prompt(tmp_path):
    """Saved PNG names come from the generation id; a prompt with path characters cannot escape."""
    entry_id = new_id()
    assert entry_id.startswith("s2i-") and "/" not in entry_id
    paths = save_images([Image.new("RGB", (8, 8))] * 2, tmp_path / "out", entry_id)
    assert [p.name for p in paths] == [f"{entry_id}-1.png", f"{entry_id}-2.png"]
    with Image.open(paths[1]) as image:
        assert image.format == "PNG"
    with pytest.raises(ValueError):
        save_images([Image.new("RGB", (8, 8))], tmp_path, "../evil")
