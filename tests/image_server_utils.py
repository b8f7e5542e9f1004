"""Helpers for the image server tests: the real server in a thread, and small stand-in servers."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

from speech2image_nb.images.protocol import SSEParser
from speech2image_nb.server import BackgroundServer, start_background
from speech2image_nb.server.engines.noise import NoiseEngine


@contextlib.contextmanager
def running_server(engine: NoiseEngine | None = None, **kwargs: Any) -> Iterator[BackgroundServer]:
    """The real server (uvicorn, 127.0.0.1, port 0) with a noise engine, stopped afterwards."""
    server = start_background(engine or NoiseEngine(size_px=64), ready_timeout_s=30, **kwargs)
    try:
        yield server
    finally:
        server.stop()


def jpeg_b64(color: tuple[int, int, int] = (200, 30, 30), size_px: int = 16) -> str:
    """A small JPEG as base64."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size_px, size_px), color).save(buffer, format="JPEG")
    return base64.b64encode(buffer.getvalue()).decode()


#: a route handler: (handler, body bytes) -> None; it writes the whole answer itself
Route = Callable[[BaseHTTPRequestHandler, bytes], None]


def send(
    handler: BaseHTTPRequestHandler,
    status: int,
    body: bytes,
    content_type: str = "application/json",
    *,
    length: int | None = None,
) -> None:
    """Write a complete answer (``length`` may lie, to cut a body short)."""
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body) if length is None else length))
    handler.end_headers()
    handler.wfile.write(body)


def send_json(handler: BaseHTTPRequestHandler, status: int, value: Any) -> None:
    """Write a JSON answer."""
    send(handler, status, json.dumps(value).encode())


class StandIn:
    """A tiny HTTP server on 127.0.0.1:0 answering ``(method, path)`` with the given routes.

    Requests it has no route for get 404 with an HTML page, as Flask would. ``requests`` records
    ``(method, path, headers, body)`` of every request.
    """

    def __init__(self, routes: dict[tuple[str, str], Route]) -> None:
        self.routes = routes
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                stand_in.requests.append((self.command, self.path, dict(self.headers), body))
                route = stand_in.routes.get((self.command, self.path))
                if route is None:
                    send(self, 404, b"<html><body>Not Found</body></html>", "text/html")
                    return
                route(self, body)

            do_GET = do_POST = do_OPTIONS = _handle  # noqa: N815 - http.server's names

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> StandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def never_answers(seconds: float) -> Route:
    """A route that keeps the connection open and says nothing for ``seconds``."""

    def route(handler: BaseHTTPRequestHandler, body: bytes) -> None:
        time.sleep(seconds)

    return route


#: the child of :func:`server_process`: a noise-engine server that serves until its stdin closes
SERVE_NOISE = """
import json, sys
from speech2image_nb.server import start_background
from speech2image_nb.server.engines.noise import NoiseEngine
options = json.loads(sys.argv[1])
server = start_background(NoiseEngine(**options.pop("engine")), ready_timeout_s=60, **options)
print(server.url, flush=True)
sys.stdin.read()
server.stop()
"""


@dataclasses.dataclass(frozen=True)
class ProcessStats:
    """What a process holds, read from /proc: resident memory, open file descriptors, threads."""

    rss_bytes: int
    fd_count: int
    thread_count: int


def process_stats(pid: int) -> ProcessStats:
    """The :class:`ProcessStats` of process ``pid`` now (Linux)."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return ProcessStats(
        rss_bytes=int(fields["VmRSS"].split()[0]) * 1024,
        fd_count=len(os.listdir(f"/proc/{pid}/fd")),
        thread_count=int(fields["Threads"]),
    )


@dataclasses.dataclass
class ServerProcess:
    """The real server in a child process: its URL and process id."""

    url: str
    pid: int

    def stats(self) -> ProcessStats:
        """What the server process holds now."""
        return process_stats(self.pid)


@contextlib.contextmanager
def server_process(engine: dict[str, Any], **options: Any) -> Iterator[ServerProcess]:
    """The real server with ``NoiseEngine(**engine)`` in its own process on 127.0.0.1 (so that its
    memory, descriptors and threads are only its own), stopped afterwards. ``options`` go to
    ``start_background``."""
    process = subprocess.Popen(
        [sys.executable, "-c", SERVE_NOISE, json.dumps({"engine": engine, **options})],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), f"the server process did not start: {url!r}"
        yield ServerProcess(url, process.pid)
    finally:
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@dataclasses.dataclass(frozen=True)
class StreamOutcome:
    """How one ``POST /generate/stream`` ended, seen by the client."""

    status: int
    retry_after: str | None
    kinds: tuple[str, ...]  # event names received, in order
    image_count: int  # image events received


class EventStream:
    """One ``POST /generate/stream`` on a connection of its own, read event by event.

    The request is queued on the server once the constructor returns (the server sends its
    headers after queueing it).
    """

    def __init__(self, url: str, body: dict[str, Any], *, timeout_s: float = 60) -> None:
        self._session = requests.Session()
        self.answer = self._session.post(url + "/generate/stream", json=body, stream=True, timeout=timeout_s)
        #: ``(event name, data)`` received so far
        self.events: list[tuple[str, str]] = []
        self._parser = SSEParser()
        ok = self.answer.status_code == 200
        self._chunks = self.answer.iter_content(chunk_size=None) if ok else iter(())

    def read_until(self, name: str | None) -> bool:
        """Read until an event called ``name`` arrives (``None``: to the end); True if it did."""
        for chunk in self._chunks:
            new = self._parser.feed(chunk)
            self.events.extend(new)
            if name is not None and any(event == name for event, _ in new):
                return True
        return False

    def close(self) -> None:
        """Close the connection (mid-stream, a client that leaves)."""
        self.answer.close()
        self._session.close()

    def outcome(self) -> StreamOutcome:
        """What this stream got."""
        kinds = tuple(name for name, _ in self.events)
        return StreamOutcome(
            self.answer.status_code, self.answer.headers.get("Retry-After"), kinds, kinds.count("image")
        )


def stream_request(url: str, body: dict[str, Any], *, leave_after: str | None = None) -> StreamOutcome:
    """Stream ``body`` to the end, or close the connection as soon as an event called
    ``leave_after`` arrives; what the client got."""
    stream = EventStream(url, body)
    try:
        stream.read_until(leave_after)
        return stream.outcome()
    finally:
        stream.close()
