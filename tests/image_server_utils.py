"""Helpers for the image server tests: the real server in a thread, and small stand-in servers."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

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
