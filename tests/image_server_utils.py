"""Helpers for the image server tests: the real server in a thread or in its own process, and
small stand-in servers (one that answers as routed, one that accepts and never answers).

``python -m tests.image_server_utils --port N --latency-s S`` runs the real server (uvicorn,
FastAPI, the batcher) with a noise engine that takes ``S`` seconds per generation, in the
foreground, as ``python -m speech2image_nb.server`` does: :class:`ServerProcess` starts it so that
a test can kill it mid-generation and start it again on the same port. (The command-line server's
``noise`` engine takes no time at all, and a generation that is over before the kill shows nothing.)
:func:`server_process` runs one for the load tests, configured in full, and reads what the process
holds (memory, file descriptors, threads) from /proc.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
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


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """The real image server with a slow noise engine as its own process on 127.0.0.1:``port``.

    :meth:`kill` ends it with SIGKILL (no shutdown, no goodbye: its sockets close as the process
    dies), and :meth:`start` brings it back on the same port, so the same URL works again.
    """

    def __init__(self, *, latency_s: float = 0.0, steps: int = 4, port: int | None = None) -> None:
        self.port = port or free_port()
        self.latency_s = latency_s
        self.steps = steps
        self._log_path = Path(tempfile.mkdtemp(prefix="s2i-server-process-")) / "server.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, timeout_s: float = 60.0) -> ServerProcess:
        """Launch it and wait until ``GET /`` answers."""
        cmd = [sys.executable, "-m", "tests.image_server_utils", "--port", str(self.port)]
        cmd += ["--latency-s", str(self.latency_s), "--steps", str(self.steps)]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        env.pop("S2I_SERVER_TOKEN", None)
        with open(self._log_path, "ab") as log:
            self._proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"the image server exited early:\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/", timeout=2.0) as answer:
                    json.loads(answer.read())
                return self
            except (urllib.error.URLError, OSError, ValueError):
                time.sleep(0.1)
        self.kill()
        raise TimeoutError(f"the image server did not answer within {timeout_s} s:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL the server and reap it."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)

    def log(self) -> str:
        try:
            return self._log_path.read_text(errors="replace")[-8000:]
        except OSError:
            return ""

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()
        with contextlib.suppress(OSError):
            self._log_path.unlink()
            self._log_path.parent.rmdir()


class SilentListener:
    """A TCP listener on 127.0.0.1:0 that accepts every connection, reads it, and never writes.

    What a server looks like whose process hangs (or a network that takes requests in and
    drops the answers): the connection opens, the request goes out, nothing comes back.
    """

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.accepted = 0
        self._open: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="silent-listener", daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                conn, _ = self._sock.accept()
                conn.settimeout(0.1)
                self._open.append(conn)
                self.accepted += 1
            for conn in list(self._open):  # read what comes, answer nothing
                with contextlib.suppress(TimeoutError, BlockingIOError):
                    try:
                        conn.recv(65536)
                    except OSError:
                        self._open.remove(conn)

    def __enter__(self) -> SilentListener:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        for conn in self._open:
            conn.close()
        self._sock.close()


def main(argv: Sequence[str] | None = None) -> None:
    """Serve with a noise engine of the given latency until killed (see the module docstring)."""
    from speech2image_nb.server.engines.noise import NoiseEngine

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency-s", type=float, default=0.0)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args(argv)
    engine = NoiseEngine(size_px=64, base_latency_s=args.latency_s, steps=args.steps)
    server = start_background(engine, port=args.port, ready_timeout_s=30)
    print(f"ready: image server at {server.url}", flush=True)
    while not server.join(1.0):
        pass


if __name__ == "__main__":
    main()

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


def settle(read: Callable[[], int], target: int, *, timeout_s: float) -> int:
    """Read ``read()`` until it is at most ``target`` or ``timeout_s`` passes; the last value
    (for counts that fall back once work in flight ends: queue, descriptors, threads)."""
    deadline = time.monotonic() + timeout_s
    value = read()
    while value > target and time.monotonic() < deadline:
        time.sleep(0.05)
        value = read()
    return value


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
class ChildServer:
    """The real server in a child process: its URL and process id."""

    url: str
    pid: int

    def stats(self) -> ProcessStats:
        """What the server process holds now."""
        return process_stats(self.pid)


@contextlib.contextmanager
def server_process(engine: dict[str, Any], **options: Any) -> Iterator[ChildServer]:
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
        yield ChildServer(url, process.pid)
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
