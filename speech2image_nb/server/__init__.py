"""The image server: DALL-E Playground compatible, batched, streamed, secured.

Run it with ``python -m speech2image_nb.server --engine dalle-mini`` or, from Python (the panel's
embedded server, tests), with :func:`start_background`. Nothing here imports FastAPI, uvicorn or
torch until a server is created.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import EngineError, ServerUnreachable
from ..images.protocol import DEFAULT_MAX_IMAGES, DEFAULT_MAX_PROMPT_CHARS
from .batcher import DEFAULT_BATCH_WAIT_S
from .settings import DEFAULT_MAX_QUEUE, DEFAULT_REQUEST_TIMEOUT_S

if TYPE_CHECKING:
    from fastapi import FastAPI

    from ..safety import Policy, RefusalLog
    from ..safety.images import ImageChecker
    from .app import create_app
    from .engines.base import Engine, LoadProgress

__all__ = ["BackgroundServer", "create_app", "start_background"]

logger = logging.getLogger(__name__)

DEFAULT_READY_TIMEOUT_S = 600.0  # a first download of DALL-E mega weights can take minutes
STOP_TIMEOUT_S = 10.0


def __getattr__(name: str) -> Any:
    """``create_app`` is served from :mod:`.app` on first use, so importing this package loads no FastAPI."""
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _quiet_while_exiting() -> None:
    """A server thread still starting when the process exits fails in uvicorn's lifespan; say nothing then."""
    from ..shutdown import DropWhileExiting, watch_exit

    watch_exit()
    uvicorn_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, DropWhileExiting) for f in uvicorn_log.filters):
        uvicorn_log.addFilter(DropWhileExiting())


class BackgroundServer:
    """A uvicorn server running in a daemon thread of this process.

    Attributes
    ----------
    url
        ``http://host:port`` (known as soon as the socket is bound, before the engine is loaded).
    token
        The bearer token clients must send, or ``None``.
    ready
        True once the engine is loaded and requests are served.
    error
        The exception that stopped the server from starting, or ``None``.
    """

    def __init__(
        self, app: FastAPI, *, host: str, port: int, token: str | None, access_log: bool = False
    ) -> None:
        import uvicorn

        self.token = token
        self.error: BaseException | None = None
        self._socket = socket.socket(
            socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP
        )  # IPPROTO_TCP: asyncio sets TCP_NODELAY only on sockets that name it (else Nagle delays answers)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((host, port))
        except OSError as exc:
            self._socket.close()
            raise ServerUnreachable(
                f"Cannot listen on {host}:{port}: {exc.strerror}.", url=f"{host}:{port}"
            ) from exc
        bound_port = self._socket.getsockname()[1]
        shown_host = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown_host}:{bound_port}"
        config = uvicorn.Config(
            app, log_config=None, access_log=access_log, lifespan="on", timeout_graceful_shutdown=2
        )
        self._server = uvicorn.Server(config)
        _quiet_while_exiting()
        self._app = app
        self._thread = threading.Thread(target=self._run, name="s2i-image-server", daemon=True)
        self._done = threading.Event()
        self._stop_requested = threading.Event()

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._socket])
        except BaseException as exc:
            self.error = exc
        finally:
            load_error = getattr(self._app.state, "load_error", None)
            if load_error is not None:
                self.error = load_error
            elif not self._server.started or isinstance(self.error, SystemExit):
                self.error = EngineError("The image server did not start (see the log above).")
            self._socket.close()
            self._done.set()

    @property
    def app(self) -> FastAPI:
        """The app being served (``app.state.config`` holds its settings, the classroom filter's too)."""
        return self._app

    @property
    def refusals(self) -> RefusalLog:
        """The log of refused prompts and withheld pictures (the teacher's; never sent to clients)."""
        refusals: RefusalLog = self._app.state.refusals
        return refusals

    def start(self) -> BackgroundServer:
        """Start the thread (engine loading begins)."""
        self._thread.start()
        return self

    @property
    def ready(self) -> bool:
        """True once requests are being served."""
        return bool(self._server.started) and not self._done.is_set()

    def wait_ready(self, timeout_s: float = DEFAULT_READY_TIMEOUT_S) -> BackgroundServer:
        """Block until the server serves; raise the start-up error, or EngineError on timeout."""
        deadline = time.monotonic() + timeout_s
        while not self.ready:
            if self._stop_requested.is_set():
                raise EngineError("The image server was stopped while it was starting.")
            if self._done.is_set():
                error = self.error or EngineError("The image server stopped while starting.")
                if isinstance(error, Exception) and not isinstance(error, EngineError):
                    raise EngineError(f"The image server failed to start: {error}") from error
                raise error
            if time.monotonic() > deadline:
                raise EngineError(f"The image server was not ready within {timeout_s:g} s.")
            self._done.wait(0.02)
        return self

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop serving and wait for the thread to end (``timeout_s`` twice at most).

        A server still loading its engine cannot be interrupted: it stops as soon as the load
        returns, and closes its socket then.
        """
        self._stop_requested.set()
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        if self._thread.is_alive() and self._server.started:
            # (still loading: no force, so that it shuts down in order once the load returns)
            self._server.force_exit = True
            self._thread.join(timeout_s)
        if not self._thread.is_alive() or not self._thread.ident:
            self._socket.close()

    def join(self, timeout_s: float | None = None) -> bool:
        """Wait until the server thread ends (``timeout_s`` at most); True when it has ended."""
        return self._done.wait(timeout_s)

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "ready" if self.ready else ("failed" if self.error else "starting")
        return f"BackgroundServer(url={self.url!r}, {state})"


def start_background(
    engine: str | Engine = "dalle-mini",
    *,
    model_dir: str | None = None,
    dtype: str | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    token: str | None = None,
    on_progress: LoadProgress | None = None,
    wait: bool = True,
    ready_timeout_s: float = DEFAULT_READY_TIMEOUT_S,
    access_log: bool = False,
    max_images: int = DEFAULT_MAX_IMAGES,
    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS,
    max_queue: int = DEFAULT_MAX_QUEUE,
    max_batch: int | None = None,
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
    save_dir: str | Path | None = None,
    cors_origins: Sequence[str] = ("*",),
    batch_wait_s: float = DEFAULT_BATCH_WAIT_S,
    safety: Policy | None = None,
    image_checker: ImageChecker | str | None = None,
) -> BackgroundServer:
    """Start an image server in a background thread of this process.

    Parameters
    ----------
    engine
        An engine name (``"dalle-mini"``, ``"sd-turbo"``, ...) or an :class:`Engine` instance.
    model_dir
        Local weights directory for a named engine.
    dtype
        Precision of a named engine (``int8``, ``fp32``, ``fp16``, ``bf16``; default: the engine's,
        int8 for DALL-E on a CPU; see :func:`~speech2image_nb.server.engines.create_engine`).
    host, port
        Where to listen; port 0 picks a free port (see ``.url``).
    token
        Bearer token the server requires (``None``: no auth; fine on 127.0.0.1).
    on_progress
        ``(fraction, message)`` while the engine loads.
    wait
        Block until the engine is loaded (``ready_timeout_s`` at most).
    access_log
        Log every request (uvicorn's access log).
    max_images, max_prompt_chars, max_queue, max_batch, request_timeout_s
        Limits, as for :func:`~speech2image_nb.server.app.create_app`.
    save_dir, cors_origins, batch_wait_s
        As for :func:`~speech2image_nb.server.app.create_app`.
    safety, image_checker
        The classroom filter, as for :func:`~speech2image_nb.server.app.create_app`: default
        ``Policy.resolve()`` (strict unless ``S2I_SAFETY`` says otherwise) and the default picture
        check, loaded after the engine (its progress reported through ``on_progress``).
    """
    from ..shutdown import process_exiting, watch_exit

    watch_exit()
    from .app import create_app
    from .engines import create_engine

    if process_exiting():  # a kernel stopped mid-start-up: start nothing, say nothing
        raise EngineError("The image server was not started: this Python process is exiting.")
    if isinstance(engine, str):
        engine = create_engine(engine, model_dir=model_dir, dtype=dtype)
    app = create_app(
        engine,
        token=token,
        max_images=max_images,
        max_prompt_chars=max_prompt_chars,
        max_queue=max_queue,
        max_batch=max_batch,
        request_timeout_s=request_timeout_s,
        save_dir=save_dir,
        cors_origins=cors_origins,
        load_progress=on_progress,
        batch_wait_s=batch_wait_s,
        safety=safety,
        image_checker=image_checker,
    )
    server = BackgroundServer(app, host=host, port=port, token=token, access_log=access_log).start()
    if wait:
        try:
            server.wait_ready(ready_timeout_s)
        except BaseException:
            server.stop()
            raise
    return server
