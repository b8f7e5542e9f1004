"""Each rule of the AssemblyAI v3 service, provoked by hand and answered by the fake as the service would.

A plain ``websockets`` client speaks the protocol byte by byte here (no SDK, not our client), so a
rule is tested on its own: a 20 ms and a 1200 ms audio message, audio faster than real time, no
``speech_model``, a reused and an expired temporary token, a session past its maximum duration, an
idle session. Which answers the service documents and which the fake assumes is written in
tests/fakes/assemblyai.py. Long service durations (3 h, token lifetimes, ``inactivity_timeout``)
are shrunk with the fake's ``duration_scale``; their limits are not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import urlencode

import pytest
import requests
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import TIME_FACTOR
from tests.fakes.assemblyai import FakeAssemblyAI

KEY = "rules-key"
REQUIRED = {"sample_rate": "16000", "speech_model": "universal-streaming-english"}
TERMINATE = json.dumps({"type": "Terminate"})
KEEP_ALIVE = json.dumps({"type": "KeepAlive"})


def silence(ms: int) -> bytes:
    """``ms`` of 16 kHz int16 silence: one audio message."""
    return b"\x00\x00" * (16 * ms)


@dataclass
class Outcome:
    """What a raw session received, how it was closed, and when (seconds after the upgrade)."""

    messages: list[dict] = field(default_factory=list)
    code: int | None = None
    reason: str = ""
    closed_after_s: float = 0.0

    def types(self) -> list[str]:
        return [m.get("type", "") for m in self.messages]


async def _session(
    url: str, headers: dict[str, str], script: Callable[[ClientConnection], Awaitable[None]], timeout_s: float
) -> Outcome:
    outcome = Outcome()
    async with connect(url, additional_headers=headers, open_timeout=10) as ws:
        started = time.monotonic()

        async def read() -> None:
            with contextlib.suppress(ConnectionClosed):
                async for message in ws:
                    outcome.messages.append(json.loads(message))

        reader = asyncio.create_task(read())
        with contextlib.suppress(ConnectionClosed):
            await script(ws)
        await asyncio.wait_for(reader, timeout_s * TIME_FACTOR)
        outcome.closed_after_s = time.monotonic() - started
        outcome.code, outcome.reason = ws.close_code, ws.close_reason or ""
    return outcome


async def _nothing(ws: ClientConnection) -> None:
    return None


def session(
    fake: FakeAssemblyAI,
    script: Callable[[ClientConnection], Awaitable[None]] = _nothing,
    *,
    timeout_s: float = 10.0,
    key: str | None = KEY,
    **query: str | None,
) -> Outcome:
    """Open ``fake.url`` with the required parameters (override or drop one with ``name=None``),
    run ``script`` on the socket, and read everything until the server closes it."""
    params = {k: v for k, v in {**REQUIRED, **query}.items() if v is not None}
    headers = {"Authorization": key} if key is not None else {}
    url = f"{fake.url}?{urlencode(params)}"
    return asyncio.run(_session(url, headers, script, timeout_s))


def send(*messages: bytes | str, gap_s: float = 0.0) -> Callable[[ClientConnection], Awaitable[None]]:
    """A script that sends ``messages`` in order (``gap_s`` apart)."""

    async def script(ws: ClientConnection) -> None:
        for message in messages:
            await ws.send(message)
            if gap_s:
                await asyncio.sleep(gap_s)

    return script


def paced(*frames: bytes) -> Callable[[ClientConnection], Awaitable[None]]:
    """Send ``frames`` at real time (each after the previous one's duration), then Terminate."""

    async def script(ws: ClientConnection) -> None:
        for frame in frames:
            await ws.send(frame)
            await asyncio.sleep(len(frame) / 32_000)
        await ws.send(TERMINATE)

    return script


def mint(fake: FakeAssemblyAI, **query: int) -> requests.Response:
    """``GET /v3/token`` with the API key."""
    return requests.get(
        f"http://127.0.0.1:{fake.port}/v3/token",
        params=query,
        headers={"Authorization": KEY},
        timeout=(5, 10),
    )


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAssemblyAI]:
    """One fake at the service's own durations for the rules that need no shrinking."""
    with FakeAssemblyAI(api_key=KEY) as server:
        yield server


# --- audio message length: 50-1000 ms ----------------------------------------------------------------


def test_a_20_ms_audio_message_closes_3007(fake):
    """20 ms of audio in one message: close 3007 "Input duration violation", with the length."""
    outcome = session(fake, send(silence(20)))
    assert outcome.types() == ["Begin"]
    assert (outcome.code, outcome.reason) == (
        3007,
        "Input duration violation: 20 ms. Expected between 50 and 1000 ms",
    )


def test_a_1200_ms_audio_message_closes_3007(fake):
    """1200 ms of audio in one message: the same close, naming 1200 ms."""
    outcome = session(fake, send(silence(1200)))
    assert (outcome.code, outcome.reason) == (
        3007,
        "Input duration violation: 1200 ms. Expected between 50 and 1000 ms",
    )


def test_50_and_1000_ms_messages_are_accepted(fake):
    """The limits themselves are legal: 50 ms then 1000 ms (real-time paced), then a clean end."""
    outcome = session(fake, paced(silence(50), silence(1000)))
    assert outcome.types()[0] == "Begin" and outcome.types()[-1] == "Termination"
    assert outcome.code == 1000 and fake.sessions[-1].frame_ms == [50.0, 1000.0]


# --- real-time pacing --------------------------------------------------------------------------


def test_audio_faster_than_real_time_closes_3007_after_a_second_ahead(fake):
    """3 s of audio sent at once: closed 3007 once more than 1 s of it ran ahead of the clock."""
    outcome = session(fake, send(*[silence(100)] * 30))
    assert outcome.code == 3007
    match = re.fullmatch(
        r"Audio Transmission Rate Exceeded: Received ([\d.]+) sec\. audio in ([\d.]+) sec", outcome.reason
    )
    assert match, outcome.reason
    received, elapsed = float(match[1]), float(match[2])
    assert received - elapsed > 1.0 and 12 <= len(fake.sessions[-1].frame_ms) < 30


def test_a_burst_of_one_second_is_tolerated(fake):
    """1.1 s sent at once (the audio before the last message is 1 s ahead): accepted, as is real time."""
    outcome = session(fake, send(*[silence(100)] * 11, TERMINATE))
    assert outcome.code == 1000 and outcome.types()[-1] == "Termination"
    assert len(fake.sessions[-1].frame_ms) == 11


# --- connection parameters ---------------------------------------------------------------------


def test_no_speech_model_is_refused_before_begin(fake):
    """Without speech_model there is no Begin and the session closes 3006 saying what is missing."""
    outcome = session(fake, speech_model=None)
    assert outcome.messages == []
    assert (outcome.code, outcome.reason) == (3006, "Invalid Message: speech_model is required")


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        (
            {"speech_model": "universal-streaming-klingon"},
            "unknown speech_model 'universal-streaming-klingon'",
        ),
        ({"sample_rate": None}, "sample_rate must be a positive integer, got ''"),
        ({"encoding": "mp3"}, "unknown encoding 'mp3'"),
        ({"inactivity_timeout": "4"}, "inactivity_timeout must be an integer from 5 to 3600 seconds"),
        ({"inactivity_timeout": "3601"}, "inactivity_timeout must be an integer from 5 to 3600 seconds"),
        ({"keyterms_prompt": "fox, snow"}, "keyterms_prompt must be a JSON array of strings"),
    ],
)
def test_bad_connection_parameters_are_refused_before_begin(fake, query, reason):
    """A bad value of a documented parameter: no Begin, close 3006 with the parameter named."""
    outcome = session(fake, **query)
    assert outcome.messages == [] and (outcome.code, outcome.reason) == (3006, f"Invalid Message: {reason}")


def test_unknown_parameters_are_ignored(fake):
    """A misspelt parameter is ignored (as the service documents), not refused."""
    outcome = session(fake, send(TERMINATE), speechModel="u3-rt-pro")
    assert outcome.types() == ["Begin", "Termination"] and outcome.code == 1000


# --- credentials -----------------------------------------------------------------------------------


def test_missing_and_wrong_credentials_close_1008(fake):
    """No key: "Missing Authorization header"; a wrong one: "Invalid API key"; both before Begin."""
    missing = session(fake, key=None)
    wrong = session(fake, key="not-the-key")
    assert (missing.code, missing.reason) == (1008, "Unauthorized Connection: Missing Authorization header")
    assert (wrong.code, wrong.reason) == (1008, "Unauthorized Connection: Invalid API key")
    assert missing.messages == wrong.messages == []


def test_a_temporary_token_opens_one_session_only(fake):
    """A token works once in ?token= (no key sent); the second session with it closes 1008."""
    token = mint(fake, expires_in_seconds=60).json()["token"]
    first = session(fake, send(TERMINATE), key=None, token=token)
    again = session(fake, send(TERMINATE), key=None, token=token)
    assert first.types() == ["Begin", "Termination"] and first.code == 1000
    assert again.messages == [] and (again.code, again.reason) == (
        1008,
        "Unauthorized Connection: Token already used",
    )


def test_an_expired_temporary_token_is_refused():
    """A token unused past its expires_in_seconds closes 1008 "Token expired"; a fresh one still works."""
    with FakeAssemblyAI(api_key=KEY, duration_scale=0.05) as fake:  # expires_in_seconds=1 -> 0.05 s
        stale = mint(fake, expires_in_seconds=1).json()["token"]
        time.sleep(0.3)
        fresh = mint(fake, expires_in_seconds=600).json()["token"]  # 30 s here
        ok = session(fake, send(TERMINATE), key=None, token=fresh)
        expired = session(fake, key=None, token=stale)
    assert ok.code == 1000
    assert expired.messages == [] and (expired.code, expired.reason) == (
        1008,
        "Unauthorized Connection: Token expired",
    )


def test_token_parameters_outside_the_documented_ranges_are_http_400(fake):
    """expires_in_seconds 1-600 and max_session_duration_seconds 60-10800, else HTTP 400 with an error."""
    assert mint(fake, expires_in_seconds=600, max_session_duration_seconds=60).status_code == 200
    for query in (
        {"expires_in_seconds": 0},
        {"expires_in_seconds": 601},
        {"expires_in_seconds": 60, "max_session_duration_seconds": 59},
        {"expires_in_seconds": 60, "max_session_duration_seconds": 10801},
    ):
        response = mint(fake, **query)
        assert response.status_code == 400 and "error" in response.json(), query


# --- session duration ------------------------------------------------------------------------


def test_begin_expires_at_is_three_hours_or_the_tokens_maximum(fake):
    """Begin.expires_at is now + 3 h with a key, now + max_session_duration_seconds with a token."""
    token = mint(fake, expires_in_seconds=60, max_session_duration_seconds=600).json()["token"]
    before = time.time()
    with_key = session(fake, send(TERMINATE))
    with_token = session(fake, send(TERMINATE), key=None, token=token)
    after = time.time()
    assert before + 10_800 - 1 <= with_key.messages[0]["expires_at"] <= after + 10_800
    assert before + 600 - 1 <= with_token.messages[0]["expires_at"] <= after + 600


def test_a_session_past_its_maximum_duration_closes_3008_at_expires_at():
    """A token's 60 s maximum (shrunk to 0.6 s) ends a session that keeps streaming, with close 3008."""
    with FakeAssemblyAI(api_key=KEY, duration_scale=0.01) as fake:
        token = mint(fake, expires_in_seconds=60, max_session_duration_seconds=60).json()["token"]
        outcome = session(fake, paced(*[silence(100)] * 30), key=None, token=token)
        sent_audio_s = fake.sessions[-1].audio_s
    assert (outcome.code, outcome.reason) == (3008, "Session Expired: Maximum session duration exceeded")
    assert 0.5 < outcome.closed_after_s < 0.6 + 1.0 * TIME_FACTOR and sent_audio_s < 2.9
    assert outcome.messages[0]["expires_at"] <= time.time()


def test_the_three_hour_limit_applies_to_key_sessions_too():
    """With the API key the limit is 3 h (shrunk 10^4 times to 1.08 s), also closed 3008."""
    with FakeAssemblyAI(api_key=KEY, duration_scale=1e-4) as fake:
        outcome = session(fake, paced(*[silence(100)] * 30))
    assert outcome.code == 3008 and 1.0 < outcome.closed_after_s < 1.08 + 1.0 * TIME_FACTOR


# --- inactivity_timeout ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fast_fake() -> Iterator[FakeAssemblyAI]:
    """Durations 20 times shorter: inactivity_timeout=5 closes after 0.25 s."""
    with FakeAssemblyAI(api_key=KEY, duration_scale=0.05) as server:
        yield server


def test_an_idle_session_closes_after_inactivity_timeout(fast_fake):
    """inactivity_timeout=5 (0.25 s here) and nothing sent: closed 3005 after that long."""
    outcome = session(fast_fake, inactivity_timeout="5")
    assert outcome.types() == ["Begin"]
    assert (outcome.code, outcome.reason) == (3005, "Session Cancelled: Inactivity timeout")
    assert 0.2 < outcome.closed_after_s < 0.25 + 1.0 * TIME_FACTOR


def test_keep_alive_resets_the_inactivity_timer(fast_fake):
    """KeepAlive every 0.1 s for 1 s keeps the session open past 0.25 s; it closes 0.25 s after the last."""
    outcome = session(fast_fake, send(*[KEEP_ALIVE] * 10, gap_s=0.1), inactivity_timeout="5")
    assert outcome.code == 3005 and outcome.closed_after_s > 1.0
    assert fast_fake.sessions[-1].received == ["KeepAlive"] * 10


def test_without_inactivity_timeout_a_quiet_session_stays_open(fast_fake):
    """No inactivity_timeout: a second of silence (4 timeouts' worth) and the session still ends cleanly."""

    async def wait_then_terminate(ws: ClientConnection) -> None:
        await asyncio.sleep(1.0)
        await ws.send(TERMINATE)

    outcome = session(fast_fake, wait_then_terminate)
    assert outcome.types() == ["Begin", "Termination"] and outcome.code == 1000


# --- client messages ----------------------------------------------------------------------------


def test_bad_json_and_unknown_message_types_close_3006(fake):
    """Text that is not JSON, and a type the service does not know, both close 3006 with their reason."""
    bad_json = session(fake, send("{not json"))
    unknown = session(fake, send(json.dumps({"type": "Foo"})))
    assert bad_json.code == 3006 and bad_json.reason.startswith("Invalid JSON: ")
    assert (unknown.code, unknown.reason) == (3006, "Invalid Message Type: Foo")
