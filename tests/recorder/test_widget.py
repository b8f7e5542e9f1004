"""Kernel side of the Recorder, driven through a comm relay (no browser): messages, threads, errors."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest

from speech2image_nb import errors
from speech2image_nb.recorder.widget import (
    DEFAULT_CONSTRAINTS,
    ERROR_MESSAGES,
    SUSPENDED_NOTICE,
    Recorder,
    recorder_error,
)
from tests.conftest import TIME_FACTOR

from .relay import CommRelay


def chunk(values: list[int] | np.ndarray) -> bytes:
    return np.asarray(values, dtype="<i2").tobytes()


def test_chunks_build_the_take_and_reach_on_audio(relay: CommRelay):
    """Chunks in order become pcm(), elapsed_s and on_audio calls with the raw bytes."""
    rec = Recorder()
    got: list[bytes] = []
    rec.on_audio(got.append)
    relay.front_end_sets(rec, recording=True)
    for seq in range(3):
        relay.front_end_sends(rec, {"kind": "chunk", "seq": seq}, [chunk([seq] * 1600)])
    assert got == [chunk([seq] * 1600) for seq in range(3)]
    pcm = rec.pcm()
    assert pcm.dtype == np.int16 and pcm.shape == (4800,)
    assert pcm[0] == 0 and pcm[-1] == 2
    assert rec.elapsed_s == pytest.approx(0.3)


def test_new_take_clears_the_buffer(relay: CommRelay):
    """Starting again (from either side) empties pcm(); seq 0 after a take does too."""
    rec = Recorder()
    relay.front_end_sets(rec, recording=True)
    relay.front_end_sends(rec, {"kind": "chunk", "seq": 0}, [chunk([1] * 160)])
    relay.front_end_sets(rec, recording=False)
    rec.recording = True  # kernel-driven start
    assert rec.pcm().size == 0
    relay.front_end_sends(rec, {"kind": "chunk", "seq": 0}, [chunk([2] * 160)])
    relay.front_end_sends(rec, {"kind": "chunk", "seq": 1}, [chunk([3] * 160)])
    relay.front_end_sends(rec, {"kind": "chunk", "seq": 0}, [chunk([4] * 160)])  # a new take
    assert rec.pcm().tolist() == [4] * 160


def test_kernel_start_and_stop_reach_the_front_end(relay: CommRelay):
    """Setting recording in the kernel sends the state update to the front end."""
    rec = Recorder()
    rec.start()
    assert relay.updates(rec)[-1] == {"recording": True}
    rec.stop()
    assert relay.updates(rec)[-1] == {"recording": False}


def test_stopped_message_calls_on_stop(relay: CommRelay):
    """The front end's 'stopped' message calls every on_stop callback once."""
    rec = Recorder()
    calls: list[str] = []
    rec.on_stop(lambda: calls.append("a"))
    rec.on_stop(lambda: calls.append("b"))
    relay.front_end_sends(rec, {"kind": "stopped", "chunk_count": 3, "duration_s": 0.3})
    assert calls == ["a", "b"] and rec.stop_reason == ""
    relay.front_end_sends(
        rec, {"kind": "stopped", "chunk_count": 2, "duration_s": 0.2, "reason": "suspended"}
    )
    assert calls == ["a", "b", "a", "b"] and rec.stop_reason == "suspended"


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        ("insecure-context", errors.InsecureContextError),
        ("permission-denied", errors.MicrophonePermissionDenied),
        ("no-microphone", errors.MicrophoneUnavailable),
        ("audio-context", errors.AudioContextError),
        ("frontend-not-loaded", errors.FrontendNotLoaded),
    ],
)
def test_error_messages_map_to_recorder_error_subclasses(relay: CommRelay, code, cls):
    """An error message from the front end becomes its RecorderError subclass, error and status."""
    rec = Recorder()
    got: list[errors.RecorderError] = []
    rec.on_error(got.append)
    relay.front_end_sets(rec, recording=True)
    relay.front_end_sends(
        rec, {"kind": "error", "code": code, "message": ERROR_MESSAGES[code], "detail": "X"}
    )
    assert len(got) == 1 and type(got[0]) is cls and got[0].code == code
    assert str(got[0]) == ERROR_MESSAGES[code] and got[0].detail == "X"
    assert (rec.status, rec.error, rec.recording) == ("error", ERROR_MESSAGES[code], False)


def test_error_messages_say_what_to_do():
    """Each error sentence names the fix, and unknown codes still give a RecorderError."""
    assert "localhost" in ERROR_MESSAGES["insecure-context"] and "https" in ERROR_MESSAGES["insecure-context"]
    assert "reload the page" in ERROR_MESSAGES["frontend-not-loaded"]
    assert "allow" in ERROR_MESSAGES["permission-denied"]
    unknown = recorder_error("something-new")
    assert type(unknown) is errors.RecorderError and str(unknown)


def test_callback_exceptions_are_logged_and_do_not_stop_handling(relay: CommRelay, caplog):
    """A raising callback is logged with its traceback; later callbacks and messages still run."""
    rec = Recorder()
    got: list[bytes] = []

    def broken(_data: bytes) -> None:
        raise RuntimeError("boom in user code")

    rec.on_audio(broken)
    rec.on_audio(got.append)
    with caplog.at_level(logging.ERROR, logger="speech2image_nb.recorder.widget"):
        relay.front_end_sends(rec, {"kind": "chunk", "seq": 0}, [chunk([1, 2])])
        relay.front_end_sends(rec, {"kind": "chunk", "seq": 1}, [chunk([3, 4])])
    assert got == [chunk([1, 2]), chunk([3, 4])]
    assert sum("boom in user code" in (r.exc_text or "") for r in caplog.records) == 2
    assert rec.pcm().tolist() == [1, 2, 3, 4]


def test_unknown_and_malformed_messages_are_ignored(relay: CommRelay):
    """Unknown kinds, non-dict content, chunks without buffers or with odd sizes change nothing."""
    rec = Recorder()
    relay.front_end_sends(rec, {"kind": "future-thing", "x": 1})
    relay.front_end_sends(rec, ["not", "a", "dict"])  # type: ignore[arg-type]
    relay.front_end_sends(rec, {"kind": "chunk", "seq": 0})
    relay.front_end_sends(rec, {"kind": "chunk", "seq": 0}, [b"\x01\x02\x03"])
    assert rec.pcm().size == 0 and rec.error == "" and rec.status == "idle"


def test_concurrent_chunks_and_reads_are_thread_safe(relay: CommRelay):
    """Chunks from several threads while others read pcm(): nothing lost, no exception."""
    rec = Recorder()
    counted: list[int] = []
    count_lock = threading.Lock()

    def count(data: bytes) -> None:
        with count_lock:
            counted.append(len(data))

    rec.on_audio(count)
    failures: list[BaseException] = []
    per_thread, threads_count = 200, 4

    def send(offset: int) -> None:
        try:
            for i in range(per_thread):
                relay.front_end_sends(rec, {"kind": "chunk", "seq": offset + i + 1}, [chunk([offset] * 160)])
        except BaseException as exc:  # collected and asserted below
            failures.append(exc)

    def read() -> None:
        try:
            for _ in range(200):
                assert rec.pcm().size % 160 == 0
        except BaseException as exc:
            failures.append(exc)

    logging.getLogger("speech2image_nb.recorder.widget").setLevel(logging.ERROR)  # seq warnings
    try:
        workers = [threading.Thread(target=send, args=(k * 1000,)) for k in range(threads_count)]
        workers += [threading.Thread(target=read) for _ in range(2)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=30)
    finally:
        logging.getLogger("speech2image_nb.recorder.widget").setLevel(logging.NOTSET)
    assert failures == []
    assert rec.pcm().size == per_thread * threads_count * 160
    assert len(counted) == per_thread * threads_count


def test_frontend_not_loaded_when_no_view_answers(relay: CommRelay):
    """Displayed, pinged, no answer within the timeout: FrontendNotLoaded with 'reload the page'."""
    rec = Recorder(frontend_timeout_s=0.2)
    got: list[errors.RecorderError] = []
    rec.on_error(got.append)
    rec._repr_mimebundle_()
    assert relay.customs(rec) == [{"kind": "ping"}]
    deadline = time.monotonic() + 5 * TIME_FACTOR
    while not got and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [type(e) for e in got] == [errors.FrontendNotLoaded]
    assert "reload the page" in rec.error and rec.status == "error" and not rec.frontend_loaded
    relay.front_end_sends(rec, {"kind": "hello"})  # a late view: the report no longer holds
    assert rec.frontend_loaded and rec.error == "" and rec.status == "idle"


def test_a_view_that_answers_prevents_the_error(relay: CommRelay):
    """A hello before the timeout cancels the FrontendNotLoaded report."""
    rec = Recorder(frontend_timeout_s=0.2)
    got: list[errors.RecorderError] = []
    rec.on_error(got.append)
    rec._repr_mimebundle_()
    relay.front_end_sends(rec, {"kind": "hello"})
    time.sleep(0.4)
    assert got == [] and rec.error == "" and rec.frontend_loaded


def test_constraints_default_voice_processing_off_and_options_are_validated(relay: CommRelay):
    """Echo cancellation, noise suppression and gain control are off unless asked; bad options fail."""
    assert Recorder().constraints == DEFAULT_CONSTRAINTS
    assert set(DEFAULT_CONSTRAINTS.values()) == {False}
    rec = Recorder(constraints={"echoCancellation": True, "deviceId": "x"}, chunk_ms=250, max_seconds=30)
    assert rec.constraints == {**DEFAULT_CONSTRAINTS, "echoCancellation": True, "deviceId": "x"}
    assert (rec.chunk_ms, rec.max_seconds, rec.sample_rate) == (250, 30, 16000)
    for bad in ({"chunk_ms": 0}, {"max_seconds": -1}, {"frontend_timeout_s": 0}):
        with pytest.raises(ValueError):
            Recorder(**bad)


def test_widget_loads_its_javascript_and_css_from_package_files():
    """_esm and _css come from recorder.js / recorder.css next to widget.py."""
    rec = Recorder()
    assert "s2i-pcm-chunker" in rec._esm and "export default" in rec._esm
    assert ".s2i-recorder" in rec._css


def test_front_end_messages_are_not_pinned_to_the_kernels_sending_subshell(relay: CommRelay):
    """After the kernel sends on the comm, its reply-routing memory is cleared (ipykernel 7)."""
    rec = Recorder()
    rec.comm._reply_subshell_id = None  # what ipykernel 7.4 records when a main-shell cell sends
    rec.recording = True
    assert "_reply_subshell_id" not in vars(rec.comm)
    assert relay.updates(rec)[-1] == {"recording": True}


def test_colab_custom_widget_manager_is_enabled_at_construction(relay: CommRelay, monkeypatch):
    """In Colab (google.colab.output present) building a Recorder enables the custom widget manager."""
    import sys
    import types

    from anywidget import _util

    calls: list[str] = []
    fake = types.ModuleType("google.colab.output")
    fake.enable_custom_widget_manager = lambda: calls.append("enabled")  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "google.colab.output", fake)
    _util.enable_custom_widget_manager_once.cache_clear()
    try:
        Recorder()
        Recorder()
    finally:
        _util.enable_custom_widget_manager_once.cache_clear()
    assert calls == ["enabled"]


def test_front_end_shows_the_same_sentences_as_the_kernel():
    """recorder.js carries the same error sentence for each code as ERROR_MESSAGES."""
    import re
    from pathlib import Path

    import speech2image_nb.recorder.widget as widget_module

    js = (Path(widget_module.__file__).parent / "recorder.js").read_text()
    block = js[js.index("const MESSAGES = {") : js.index("};", js.index("const MESSAGES = {"))]
    for code, message in ERROR_MESSAGES.items():
        if code == "frontend-not-loaded":  # the kernel's own finding: no view exists to show it
            continue
        entry = re.search(rf'"{code}":((?:\s*"[^"]*"\s*\+?)+),', block)
        assert entry, code
        assert "".join(re.findall(r'"([^"]*)"', entry.group(1))) == message


def test_front_end_shows_the_kernels_suspended_notice():
    """recorder.js's notice for a take the browser's audio ended is SUSPENDED_NOTICE, word for word."""
    import re
    from pathlib import Path

    import speech2image_nb.recorder.widget as widget_module

    js = (Path(widget_module.__file__).parent / "recorder.js").read_text()
    entry = re.search(r"const SUSPENDED_NOTICE =[^\n]*\n((?:\s*\"[^\"]*\"\s*\+?)+);", js)
    assert entry
    assert "".join(re.findall(r'"([^"]*)"', entry.group(1))) == SUSPENDED_NOTICE


def test_recorder_is_recorder_like_and_streams(relay: CommRelay):
    """Recorder meets the RecorderLike protocol and says it streams while recording."""
    from speech2image_nb.recorder import RecorderLike

    rec = Recorder()
    assert isinstance(rec, RecorderLike) and rec.streams is True
    assert not isinstance(object(), RecorderLike)
