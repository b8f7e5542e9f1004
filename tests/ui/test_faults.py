"""Faults a classroom network makes, provoked for real against the panel (no browser).

Each test drives the real :class:`~speech2image_nb.ui.panel.Panel` over real local processes and
sockets: the AssemblyAI client against the local fake service (real Whisper inside) that drops the
TCP connection or cancels the session mid-sentence; the image client against a real image server
process that is SIGKILLed mid-generation and started again on the same port, against a listener
that accepts and never answers, and against tunnel addresses that are gone. Each asserts the one
line the panel shows, how soon it shows, and that the next action works.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import pytest

from speech2image_nb.config import Settings
from speech2image_nb.errors import TranscriptionError
from speech2image_nb.images.service import connect, disconnect
from speech2image_nb.runtime import get_runtime
from speech2image_nb.speech.assemblyai import AssemblyAITranscriber
from speech2image_nb.ui.panel import Panel
from tests.conftest import DATA_DIR, TIME_FACTOR
from tests.fakes.assemblyai import FakeAssemblyAI
from tests.image_server_utils import ServerProcess, SilentListener, StandIn, running_server, send
from tests.ui.conftest import grid_images, wait_until
from tests.ui.fakes import FakeImageService, FakeRecorder, ScriptedTranscriber

FOX = DATA_DIR / "piper_01.wav"  # "a red fox sitting in the snow", 2.6 s
KEY = "fake-key"
KEPT = "The words heard so far are kept in the prompt."


def no_env(**overrides) -> Settings:
    return Settings.resolve(environ={}, colab_secret=lambda n: None, **overrides)


@pytest.fixture
def connected():
    """Calls connect() like a notebook does; forgets the server afterwards."""
    yield connect
    disconnect()


def seconds_until(predicate, timeout_s: float, *, since: float | None = None) -> float:
    """Seconds from ``since`` (default: now) until ``predicate()`` holds, polled every 10 ms.

    Fails after ``timeout_s`` (scaled).
    """
    started = time.monotonic() if since is None else since
    deadline = time.monotonic() + timeout_s * TIME_FACTOR
    while not predicate():
        assert time.monotonic() < deadline, f"still false after {timeout_s * TIME_FACTOR:g} s"
        time.sleep(0.01)
    return time.monotonic() - started


def running_streams() -> list[asyncio.Task]:
    """The panel's live-transcription tasks still on the runtime loop."""

    async def tasks() -> list[asyncio.Task]:
        return [t for t in asyncio.all_tasks() if t.get_coro().__qualname__ == "PanelSession._stream"]

    return asyncio.run_coroutine_threadsafe(tasks(), get_runtime().loop).result(5)


# --- AssemblyAI: the connection drops mid-sentence ------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "line"),
    [
        (
            "drop_mid_turn",
            "Speech service: The connection to AssemblyAI was lost mid-session (closed without a "
            f"close frame): record again. {KEPT}",
        ),
        (
            "cancel_mid_turn",
            "Speech service: AssemblyAI cancelled the session (the service said: Session Cancelled: "
            f"An error occurred): record again. {KEPT}",
        ),
    ],
)
def test_assemblyai_fault_mid_sentence_keeps_the_words_and_the_next_take_reconnects(make_panel, fault, line):
    """TCP drop or close 3005 mid-sentence: words kept, a line at once, stray chunks dropped, next take ok."""
    # One partial goes out, then the fault (at the latest instead of the sentence's end); partials
    # every 0.3 s of audio and a 1.2 s end of turn leave a loaded machine time to decode that partial.
    with FakeAssemblyAI(
        api_key=KEY,
        fault=fault,
        fault_after_turns=1,
        faulty_sessions=1,
        partial_every_s=0.3,
        end_silence_ms=1200,
    ) as fake:
        settings = no_env(assemblyai_api_key=KEY, assemblyai_streaming_url=fake.url)
        # The fault may come only at the sentence's end, which waits for the fake's decoding: on a
        # loaded machine that can take longer than the client's default 5 s wait for Termination.
        transcriber = AssemblyAITranscriber(
            settings=settings, force_endpoint_on_stop=True, terminate_timeout_s=15 * TIME_FACTOR
        )
        panel = make_panel(settings=settings, transcriber=transcriber, image_service=FakeImageService())
        recorder: FakeRecorder = panel.recorder
        # The browser keeps sending chunks after the drop: play the take at speaking pace, with a tail.
        take = threading.Thread(target=recorder.play, args=(FOX,), kwargs={"realtime": True, "tail_s": 1.5})
        take.start()
        seconds_until(lambda: panel.error_text, 30)
        shown_at = time.monotonic()
        take.join(10 * TIME_FACTOR)  # every chunk went through the recorder's handler without raising
        assert not take.is_alive()
        first = fake.sessions[0]
        assert first.fault_at is not None and len(fake.sessions) == 1  # no session for the stray chunks
        delay_s = shown_at - first.fault_at
        turns = [m for m in first.sent if m["type"] == "Turn"]
        assert [t["end_of_turn"] for t in turns] == [False], turns  # one partial, then the fault
        heard = " ".join(w["text"] for w in turns[0]["words"])
        assert panel.error_text == line
        assert heard and heard in panel.transcript_html.value and panel.prompt_text.value == heard
        assert recorder.recording is False and delay_s < 1.0 * TIME_FACTOR
        print(f"{fault}: line {delay_s * 1000:.0f} ms after the fault; kept {heard!r}")

        recorder.play(FOX, realtime=True, tail_s=1.0)  # the next take opens a new session
        assert wait_until(lambda: "snow" in panel.prompt_text.value.lower(), 30), panel.error_text
        assert wait_until(lambda: fake.sessions[-1].close_code == 1000, 10)  # ended as normal
        assert len(fake.sessions) == 2 and panel.error_text == ""
        assert wait_until(lambda: not running_streams(), 5)  # no take left waiting


def test_a_transcription_that_breaks_after_the_take_ended_leaves_no_task_behind(make_panel):
    """The engine fails after reading the take's end: the line, the words kept, and no task left waiting."""
    lost = TranscriptionError("The connection to AssemblyAI was lost mid-session: record again.")
    panel = make_panel(transcriber=ScriptedTranscriber(error_at_end=lost))
    panel.recorder.play(FOX)  # the whole take, then stop: the engine reads to the end, then fails
    assert wait_until(lambda: panel.error_text, 5)
    assert panel.error_text == f"Speech service: {lost} {KEPT}"
    assert panel.prompt_text.value == "a red fox sitting in"  # the last partial, kept
    assert wait_until(lambda: not running_streams(), 5)


# --- the image server dies mid-generation, then comes back on the same URL ------------------------


def test_image_server_killed_mid_generation_says_so_at_once_and_generate_works_when_it_is_back(make_panel):
    """SIGKILL mid-stream: a line at once, not after a timeout; back on the same URL, Generate draws."""
    with ServerProcess(latency_s=4.0, steps=8) as server:
        panel = make_panel(settings=no_env(server_url=server.url), image_service=None, image_count=1)
        assert panel.wait_ready(10) and panel.session.status.images == f"{server.url} — noise (ready)"
        panel.generate("a red fox sitting in the snow")
        seconds_until(lambda: panel.session.status.activity.startswith("generating… "), 10)  # streaming
        killed_at = time.monotonic()
        server.kill()
        cut_s = seconds_until(lambda: panel.error_text, 5, since=killed_at)
        assert panel.error_text == (
            f"Image server: The image server at {server.url} closed the connection in the middle of a "
            "generation: check that it still runs (or start it again), then try again."
        )
        assert panel.session.status.images == f"{server.url} (not available)" and panel.wait_idle(5)
        assert cut_s < 1.0 * TIME_FACTOR  # the read timeout is 300 s: this is the closed socket, at once

        pressed_at = time.monotonic()
        panel.generate("a red fox sitting in the snow")  # still down: refused at once
        down_s = seconds_until(lambda: panel.error_text, 5, since=pressed_at)
        assert panel.error_text == (
            f"Image server: Cannot reach the image server at {server.url}; "
            "check the URL and that the server runs."
        )
        assert down_s < 1.0 * TIME_FACTOR
        server.start()  # the same URL again
        panel.generate("a red fox sitting in the snow")
        assert panel.wait_idle(20) and len(grid_images(panel)) == 1 and panel.error_text == ""
        assert panel.session.status.images == f"{server.url} — noise (ready)"
        print(
            f"killed mid-stream: line after {cut_s * 1000:.0f} ms; while down: after {down_s * 1000:.0f} ms"
        )


# --- a server that accepts the connection and never answers ------------------------------------


def test_a_server_that_never_answers_gives_up_at_the_timeout_naming_it_and_the_panel_stays_usable(connected):
    """Never answers: its URL's line at the read timeout; meanwhile Record, edit, a queued Generate work."""
    read_s = 2.0 * TIME_FACTOR
    with SilentListener() as silent:
        connected(silent.url, timeout_s=(1.0, read_s))
        panel = Panel(
            settings=no_env(),
            recorder=FakeRecorder(),
            transcriber=ScriptedTranscriber(),
            start=False,
            image_count=1,
        )
        try:
            started = time.monotonic()
            panel.start()
            panel.recorder.play(FOX)  # Record while the server is silent
            assert wait_until(lambda: panel.prompt_text.value == "a red fox sitting in the snow", 5)
            panel.prompt_text.value = "a blue bird on a branch"  # edit
            panel.generate_button.click()  # waits for the server
            assert wait_until(lambda: panel.session.status.activity == "generating 1 image…", 5)
            panel.generate_button.click()  # queued behind it
            assert panel.session.status.activity == "queued (1 waiting)" and panel.error_text == ""
            assert "(connecting…)" in panel.session.status.images
            gave_up_s = seconds_until(lambda: panel.error_text, 3 * read_s, since=started)
            line = (
                f"Image server: The image server at {silent.url} did not answer within {read_s:g} s; "
                "check that it is still running."
            )
            assert panel.error_text == line and read_s <= gave_up_s < read_s + 1.0 * TIME_FACTOR
            assert panel.wait_idle(3 * read_s) and panel.error_text == line
            assert (
                silent.accepted == 2
            )  # the start and the queued generation; the first one shared the start's answer
            panel.recorder.play(FOX)  # the next take still works
            assert wait_until(lambda: panel.controller.transcript.plain_text().count("snow") == 2, 5)
            print(f"never answers: line {gave_up_s:.2f} s after the start (read timeout {read_s:g} s)")
        finally:
            panel.close()


# --- a tunnel URL that changed ---------------------------------------------------------------------

#: A tunnel host name that cannot exist: over 253 characters, so the resolver refuses it itself,
#: without asking a DNS server (offline and always the same), with the error a tunnel name that
#: was removed gets (``Name or service not known``).
GONE_TUNNEL_HOST = ".".join(["x" * 63, "y" * 63, "z" * 63, "old-tunnel-words"]) + ".trycloudflare.com"
CLOUDFLARE_1033 = (
    b'{"type":"https://developers.cloudflare.com/support/troubleshooting/http-status-codes/'
    b'cloudflare-1xxx-errors/error-1033/","title":"Error 1033: Cloudflare Tunnel error","status":530,'
    b'"error_code":1033,"error_name":"tunnel_error","cloudflare_error":true}'
)
NGROK_3200 = (
    b"<!DOCTYPE html><html><body><p>The endpoint old-words.ngrok-free.app is offline.</p>"
    b"<p>ERR_NGROK_3200</p></body></html>"
)
PASTE = (
    "the server notebook gets a new address each time it starts: paste the new "
    "speech2image_nb.connect(...) line it prints, run it, and try again."
)


def tunnel_edge(status: int, body: bytes, content_type: str) -> StandIn:
    """A stand-in for a tunnel edge whose tunnel is gone: every route answers ``status`` with ``body``."""
    answer = lambda handler, _body: send(handler, status, body, content_type)  # noqa: E731
    routes = ("/", "/generate", "/generate/stream", "/dalle")
    return StandIn({(method, path): answer for method in ("GET", "POST") for path in routes})


@pytest.mark.parametrize("gone", ["dns", "cloudflare-1033", "ngrok-3200"])
def test_a_tunnel_that_is_gone_says_paste_the_new_connect_line_and_the_new_one_works(connected, gone):
    """A gone tunnel (no name, Cloudflare 1033, ngrok 3200): paste the new connect(...); then it draws."""
    with contextlib.ExitStack() as stack:
        if gone == "dns":
            url, why = f"https://{GONE_TUNNEL_HOST}", "its name does not resolve any more"
        elif gone == "cloudflare-1033":
            edge = stack.enter_context(tunnel_edge(530, CLOUDFLARE_1033, "application/json"))
            url, why = edge.url, "Cloudflare error 1033: the tunnel is not connected"
        else:
            edge = stack.enter_context(tunnel_edge(404, NGROK_3200, "text/html"))
            url, why = edge.url, "ngrok ERR_NGROK_3200: the endpoint is offline"
        old = connected(url)
        opened_at = time.monotonic()
        panel = Panel(
            settings=no_env(), recorder=FakeRecorder(), transcriber=ScriptedTranscriber(), image_count=1
        )
        stack.callback(panel.close)
        shown_s = seconds_until(lambda: panel.error_text, 10, since=opened_at)
        assert (
            panel.error_text == f"Image server: The tunnel address {old.url} leads nowhere ({why}): {PASTE}"
        )
        assert shown_s < 2.0 * TIME_FACTOR
        server = stack.enter_context(running_server())
        connected(server.url)  # the new line, pasted and run
        panel.generate("a red fox sitting in the snow")
        assert panel.wait_idle(20) and len(grid_images(panel)) == 1 and panel.error_text == ""
        assert panel.session.status.images == f"{server.url} — noise (ready)"
        print(f"tunnel gone ({gone}): line {shown_s * 1000:.0f} ms after the start")
