"""The pure AssemblyAI v3 protocol layer, tested with literal messages."""

from __future__ import annotations

import pytest

from speech2image_nb.errors import (
    AudioRateError,
    AuthError,
    SessionCancelled,
    SessionExpired,
    TooManySessions,
    TranscriptionError,
)
from speech2image_nb.speech import assemblyai_protocol as proto


def test_url_has_the_documented_query_and_no_key():
    """The URL carries sample_rate, encoding, speech_model, format_turns=true and the turn knobs."""
    params = proto.StreamingParams(min_turn_silence_ms=300, keyterms_prompt=("fox", "tulips"))
    url = proto.build_streaming_url("wss://streaming.assemblyai.com/v3/ws", params)
    assert url == (
        "wss://streaming.assemblyai.com/v3/ws?sample_rate=16000&encoding=pcm_s16le"
        "&speech_model=universal-streaming-english&format_turns=true&min_turn_silence=300"
        "&keyterms_prompt=%5B%22fox%22%2C+%22tulips%22%5D"
    )
    with_token = proto.build_streaming_url("ws://127.0.0.1:1/v3/ws", params, token="tok")
    assert with_token.endswith("&token=tok")


def test_params_are_validated():
    """Out-of-range options fail when the transcriber is built, not mid-session."""
    with pytest.raises(ValueError):
        proto.StreamingParams(end_of_turn_confidence_threshold=1.5)
    with pytest.raises(ValueError):
        proto.StreamingParams(sample_rate_hz=0)


def test_token_url_follows_the_streaming_host():
    """wss://host/v3/ws mints tokens at https://host/v3/token."""
    assert (
        proto.token_url("wss://streaming.eu.assemblyai.com/v3/ws")
        == "https://streaming.eu.assemblyai.com/v3/token"
    )
    assert proto.token_url("ws://127.0.0.1:9/v3/ws") == "http://127.0.0.1:9/v3/token"


def test_parse_begin_turn_termination_error_and_unknown():
    """Each documented message type parses to its dataclass; unknown types are kept, not fatal."""
    begin = proto.parse_message('{"type": "Begin", "id": "0b1c", "expires_at": 1767225600}')
    assert begin == proto.BeginMessage("0b1c", 1767225600)
    turn = proto.parse_message(
        '{"type": "Turn", "turn_order": 2, "turn_is_formatted": false, "end_of_turn": false,'
        ' "transcript": "book a table", "end_of_turn_confidence": 0.03, "utterance": "",'
        ' "words": [{"text": "book", "start": 4210, "end": 4400, "confidence": 0.97, "word_is_final": true},'
        ' {"text": "fo", "start": 4820, "end": 4900, "confidence": 0.41, "word_is_final": false}]}'
    )
    assert isinstance(turn, proto.TurnMessage)
    assert (turn.turn_order, turn.transcript, turn.end_of_turn) == (2, "book a table", False)
    assert turn.words[0].start_s == pytest.approx(4.21) and turn.words[1].is_final is False
    end = proto.parse_message(
        '{"type": "Termination", "audio_duration_seconds": 42, "session_duration_seconds": 45}'
    )
    assert end == proto.TerminationMessage(42, 45)
    error = proto.parse_message('{"type": "Error", "error_code": 4001, "error": "Not authorized"}')
    assert error == proto.ErrorMessage("Not authorized", 4001)
    assert proto.parse_message('{"error": "Model deprecated"}') == proto.ErrorMessage("Model deprecated")
    other = proto.parse_message('{"type": "Heartbeat", "realtime_factor": 1.0}')
    assert isinstance(other, proto.OtherMessage) and other.type == "Heartbeat"
    with pytest.raises(ValueError):
        proto.parse_message("[]")


def _turn(
    order: int, transcript: str, *, end: bool = False, formatted: bool = False, pending: str = ""
) -> proto.TurnMessage:
    words = [proto.Word(w, 0, 0) for w in transcript.split()] + [
        proto.Word(w, 0, 0, is_final=False) for w in pending.split()
    ]
    return proto.TurnMessage(order, transcript, end, formatted, tuple(words))


def test_turn_tracker_replaces_by_turn_and_commits_on_end_of_turn():
    """Partials replace their turn (with unfinished words), end_of_turn commits, formatted replaces."""
    tracker = proto.TurnTracker()
    first = tracker.update(_turn(0, "a red", pending="fo"))
    assert first is not None and (first.kind, first.text, first.turn) == ("partial", "a red fo", 0)
    assert tracker.update(_turn(0, "a red", pending="fo")) is None  # same text: nothing to redraw
    final = tracker.update(_turn(0, "a red fox", end=True))
    assert final is not None and (final.kind, final.text, final.is_formatted) == ("final", "a red fox", False)
    assert tracker.update(_turn(0, "a red fox", pending="x")) is None  # late partial of a committed turn
    formatted = tracker.update(_turn(0, "A red fox.", end=True, formatted=True))
    assert formatted is not None and (formatted.kind, formatted.text, formatted.is_formatted) == (
        "final",
        "A red fox.",
        True,
    )
    assert tracker.update(_turn(0, "a red fox", end=True)) is None
    nxt = tracker.update(_turn(1, "in the snow", end=True))
    assert nxt is not None and nxt.turn == 1
    assert tracker.final_text() == "A red fox. in the snow"


def test_close_codes_map_to_actionable_errors():
    """1008/3005/3007/3008/3009 get their own classes; others keep the server's reason."""
    auth = proto.error_for_close(1008, "Unauthorized Connection: Invalid API key")
    assert isinstance(auth, AuthError) and auth.service == "AssemblyAI"
    assert "check your AssemblyAI key / balance" in str(auth)
    rate = proto.error_for_close(3007, "Input duration violation: 20 ms. Expected between 50 and 1000 ms")
    assert isinstance(rate, AudioRateError) and rate.code == 3007 and "20 ms" in str(rate)
    assert isinstance(proto.error_for_close(3008, "Session Expired"), SessionExpired)
    assert isinstance(proto.error_for_close(3009, "Too many concurrent sessions"), TooManySessions)
    cancelled = proto.error_for_close(3005, "Session Cancelled: An error occurred")
    assert isinstance(cancelled, SessionCancelled) and cancelled.code == 3005
    assert str(cancelled) == (
        "AssemblyAI cancelled the session (the service said: Session Cancelled: An error occurred): "
        "record again."
    )
    other = proto.error_for_close(3006, "Invalid Message Type: Foo")
    assert type(other) is TranscriptionError and other.reason == "Invalid Message Type: Foo"
    assert "3006" in str(other) and "Invalid Message Type: Foo" in str(other)


def test_rechunker_makes_fixed_frames_and_pads_the_tail():
    """Any input sizes become 100 ms frames; the tail is padded to 50 ms; bad sizes are refused."""
    chunker = proto.Rechunker(frame_ms=100)
    frames = chunker.feed(b"\x01\x00" * 1000) + chunker.feed(b"\x01\x00" * 2300)
    assert [len(f) for f in frames] == [3200, 3200]
    tail = chunker.flush()
    assert tail is not None and len(tail) == 1600 and tail[:200] == b"\x01\x00" * 100
    assert chunker.flush() is None
    with pytest.raises(ValueError):
        proto.Rechunker(frame_ms=20)
