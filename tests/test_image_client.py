"""The image client against every DALL-E Playground era, our server, and servers that misbehave."""

from __future__ import annotations

import base64
import json
import socket
import time

import pytest

from speech2image_nb.errors import AuthError, BadServerResponse, ServerError, ServerUnreachable
from speech2image_nb.images.client import (
    DoneEvent,
    ImageClient,
    ImageEvent,
    ProgressEvent,
    QueuedEvent,
    SSEParser,
    normalize_url,
)
from speech2image_nb.server.engines.noise import NoiseEngine

from .conftest import TIME_FACTOR
from .image_server_utils import StandIn, jpeg_b64, never_answers, running_server, send, send_json

HEALTH = {("GET", "/"): lambda h, b: send_json(h, 200, {"success": True})}


def answer(value, status=200):
    """A route answering ``value`` as JSON."""
    return lambda h, b: send_json(h, status, value)


@pytest.mark.parametrize(
    ("era", "routes"),
    [
        ("2021 bare list at /dalle", {("POST", "/dalle"): answer([jpeg_b64(), jpeg_b64((0, 0, 255))])}),
        (
            "2022-06 object at /dalle",
            {
                ("POST", "/dalle"): answer(
                    {"generatedImgs": [jpeg_b64(), jpeg_b64()], "generatedImgsFormat": "jpeg"}
                )
            },
        ),
        (
            "2022-11 object at /generate",
            {
                ("POST", "/generate"): answer(
                    {"generatedImgs": [jpeg_b64(), jpeg_b64()], "generatedImgsFormat": "png"}
                )
            },
        ),
    ],
)
def test_client_speaks_every_playground_era(era, routes):
    """generate() and generate_stream() work against each era's backend, sending its request shape."""
    with StandIn({**HEALTH, **routes}) as server:
        client = ImageClient(server.url.removeprefix("http://"))
        assert client.health() == {"success": True}
        result = client.generate("a red fox", num_images=2)
        assert len(result.images) == 2 and result.images[0].size == (16, 16)
        assert result.seed is None and result.engine is None and result.prompt == "a red fox"
        events = list(client.generate_stream("a red fox", num_images=2))
        assert [type(e) for e in events] == [ImageEvent, ImageEvent, DoneEvent]
        posts = [r for r in server.requests if r[0] == "POST" and r[1] != "/generate/stream"]
        _, path, headers, body = posts[-1]
        assert json.loads(body) == {"text": "a red fox", "num_images": 2}
        assert headers["Bypass-Tunnel-Reminder"] == "go"
        # the working route is remembered: the last call went straight to it
        assert path == next(iter(routes))[1]


def test_405_also_moves_to_the_other_route():
    """A 405 on /generate makes the client try /dalle."""
    routes = {
        ("POST", "/generate"): answer({"detail": "Method Not Allowed"}, 405),
        ("POST", "/dalle"): answer([jpeg_b64()]),
    }
    with StandIn(routes) as server:
        assert len(ImageClient(server.url).generate("x").images) == 1


def test_client_against_our_server_generate_and_stream():
    """Against the real server: seeds, engine, timings, and the full event sequence with previews."""
    with running_server(NoiseEngine(size_px=32, steps=3), token="tok") as srv:
        client = ImageClient(srv.url, token="tok")
        result = client.generate("a boat", num_images=2, seed=3, image_format="png", steps=3)
        assert result.seed == 3 and result.engine == "noise" and len(result.images) == 2
        assert result.images[0].format == "PNG"
        assert {"queued_s", "generate_s", "encode_s", "total_s"} <= set(result.timings)
        events = list(client.generate_stream("a boat", num_images=2, seed=3, image_format="png"))
        assert isinstance(events[0], QueuedEvent) and isinstance(events[-1], DoneEvent)
        assert any(isinstance(e, ProgressEvent) and e.preview is not None for e in events)
        images = {e.index: e.image for e in events if isinstance(e, ImageEvent)}
        assert [images[0].tobytes(), images[1].tobytes()] == [i.tobytes() for i in result.images]
        assert events[-1].seed == 3 and events[-1].engine == "noise"
        with pytest.raises(ServerError) as info:
            client.generate("a boat", bogus_knob=1)
        assert (info.value.status, info.value.code) == (422, "invalid_request")
        with pytest.raises(AuthError) as auth:
            ImageClient(srv.url, token="wrong").generate("x")
        assert auth.value.service == "image server"


def cut_short(h, b):
    send(h, 200, b'{"generatedImgs": ["abc', length=5000)
    h.wfile.flush()
    h.close_connection = True


def huge_with_length(h, b):
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(50 * 2**20))
    h.end_headers()
    h.wfile.write(b"[" + b" " * 65536)


def huge_streamed(h, b):
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.send_header("Connection", "close")
    h.end_headers()
    h.close_connection = True
    chunk = b" " * (1 << 20)
    try:
        h.wfile.write(b"[")
        for _ in range(50):
            h.wfile.write(chunk)
    except OSError:
        pass


CHAINED = {"truncated json", "connection cut mid-body", "invalid base64", "not an image", "never answers"}


@pytest.mark.parametrize(
    ("name", "route", "error"),
    [
        (
            "html 500 page",
            lambda h, b: send(h, 500, b"<html><h1>Internal Server Error</h1></html>", "text/html"),
            ServerError,
        ),
        ("truncated json", lambda h, b: send(h, 200, b'{"generatedImgs": ["abc'), BadServerResponse),
        ("connection cut mid-body", cut_short, ServerUnreachable),  # the server went away
        ("invalid base64", answer({"generatedImgs": ["not base64 !!"]}), BadServerResponse),
        (
            "not an image",
            answer({"generatedImgs": [base64.b64encode(b"hello world").decode()]}),
            BadServerResponse,
        ),
        ("wrong shape", answer({"images": [jpeg_b64()]}), BadServerResponse),
        ("no images", answer({"generatedImgs": []}), BadServerResponse),
        ("number instead of image", answer([42]), BadServerResponse),
        ("50 MB body with length", huge_with_length, BadServerResponse),
        ("50 MB body streamed", huge_streamed, BadServerResponse),
        ("401", answer({"detail": "no"}, 401), AuthError),
        ("never answers", never_answers(5), ServerUnreachable),
    ],
)
def test_bad_server_answers_raise_the_documented_error(name, route, error):
    """Each kind of bad answer raises its documented error, chained, within the timeout."""
    with StandIn({("POST", "/generate"): route}) as server:
        client = ImageClient(server.url, timeout_s=(1.0, 1.0), max_response_bytes=8 * 2**20)
        start = time.monotonic()
        with pytest.raises(error) as info:
            client.generate("x")
        elapsed = time.monotonic() - start
    assert elapsed < 3 * TIME_FACTOR, elapsed
    assert str(info.value).endswith(".") and "<html" not in str(info.value)
    if name in CHAINED:
        assert info.value.__cause__ is not None
    if error is ServerError:
        assert info.value.status == 500 and info.value.code == "http_500"
        assert "HTML" in info.value.message


def test_unreachable_server_raises_server_unreachable():
    """A closed port -> ServerUnreachable naming the URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ServerUnreachable) as info:
        ImageClient(f"127.0.0.1:{port}", timeout_s=(1, 1)).health()
    assert info.value.url == f"http://127.0.0.1:{port}"
    assert info.value.__cause__ is not None


def test_normalize_url_adds_scheme_and_strips_slash():
    """URLs without a scheme work: http for local hosts, https for public ones."""
    assert normalize_url("localhost:8000/") == "http://localhost:8000"
    assert normalize_url("127.0.0.1:9") == "http://127.0.0.1:9"
    assert normalize_url("abc-def.trycloudflare.com") == "https://abc-def.trycloudflare.com"
    assert normalize_url(" https://x.ngrok-free.app/ ") == "https://x.ngrok-free.app"
    with pytest.raises(ValueError):
        normalize_url("ftp://x")
    with pytest.raises(ServerUnreachable):
        ImageClient("   ")


def test_sse_parser_handles_split_chunks_comments_and_crlf():
    """The SSE parser joins split chunks, ignores comments and accepts CRLF line ends."""
    parser = SSEParser()
    assert parser.feed(b": keepalive\n\nevent: que") == []
    assert parser.feed(b'ued\r\ndata: {"position": 2}\r\n\r\nevent: done\ndata: {}\n') == [
        ("queued", '{"position": 2}')
    ]
    assert parser.feed(b"\n") == [("done", "{}")]


def test_stream_error_event_raises_server_error():
    """An ``error`` event from the server becomes a ServerError with its code."""
    engine = NoiseEngine(size_px=16, fail_on=frozenset({"boom"}))
    with running_server(engine) as srv, pytest.raises(ServerError) as info:
        list(ImageClient(srv.url).generate_stream("boom"))
    assert info.value.code == "engine_error"
