"""Which image server this process draws with, decided in one place.

The panel, :func:`generate` and the ``speech2image`` command all ask :class:`ImageService`, so
they agree. The first of these that applies wins:

1. the server named by :func:`connect` (``speech2image_nb.connect(url, token=...)``, the line the
   Colab server notebook prints): a call made on purpose in this process;
2. the settings' ``server_url`` with ``server_token``: an argument (``app(server_url=...)``,
   ``Settings.resolve(server_url=...)``), else the environment (``S2I_SERVER_URL`` with
   ``S2I_SERVER_TOKEN``, the token also from a Colab secret), as :meth:`Settings.resolve` orders them;
3. an embedded server started in this process with ``S2I_IMAGE_ENGINE`` (weights from
   ``S2I_MODEL_DIR`` or the Hugging Face cache).

An embedded server belongs to the :class:`ImageService` that started it: :meth:`ImageService.close`
stops it, and so does the end of the interpreter if nobody closed it before. Each way ends as one
:class:`~speech2image_nb.images.client.ImageClient`, so the rest of the product never cares which.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from ..config import Secret, Settings
from ..errors import EngineError
from ..shutdown import watch_exit
from .client import DEFAULT_TIMEOUT_S, Generation, ImageClient

if TYPE_CHECKING:
    from ..safety import Policy
    from ..server import BackgroundServer

__all__ = [
    "DEFAULT_START_TIMEOUT_S",
    "ImageService",
    "ServerChoice",
    "choose_server",
    "connect",
    "connected_client",
    "default_client",
    "disconnect",
    "generate",
]

logger = logging.getLogger(__name__)

#: How long to wait for an embedded server to load its engine (real DALL-E mini weights on CPU).
DEFAULT_START_TIMEOUT_S = 600.0

ProgressCallback = Callable[[float, str], None]

_connected: ImageClient | None = None  # set by connect()
_default: ImageService | None = None  # what generate() uses, built on first use
_lock = threading.Lock()
_STOP_STARTING_S = 0.5  # close() waits this long for a starting server; it ends by itself after


@dataclasses.dataclass(frozen=True)
class ServerChoice:
    """The image server to use and why (see the module docstring for the order)."""

    source: Literal["connect", "settings", "embedded"]
    label: str  # what the status line names: the URL, or "embedded <engine>"
    client: ImageClient | None = None  # the client connect() made (source "connect" only)


def choose_server(settings: Settings) -> ServerChoice:
    """Decide which server ``settings`` lead to, by the precedence of the module docstring.

    Starts and connects nothing: :meth:`ImageService.open` acts on the choice.
    """
    connected = connected_client()
    if connected is not None:
        return ServerChoice("connect", connected.url, connected)
    if settings.server_url:
        return ServerChoice("settings", settings.server_url)
    return ServerChoice("embedded", f"embedded {settings.image_engine}")


class ImageService:
    """The image server one panel, command or :func:`generate` talks to, remote or embedded.

    The constructor only stores; :meth:`open` decides (:func:`choose_server`) and connects, starting
    the embedded server when that is the choice, which may take minutes for real weights: call it
    off the main thread. The decision holds until :meth:`close`, or until :func:`connect` names
    another server: that comes first in the precedence, so the next :meth:`open` switches to it
    (what pasting the server notebook's new ``connect(...)`` line after its tunnel changed needs).

    Parameters
    ----------
    settings
        Resolved settings (server URL/token, engine, model directory).
    on_progress
        Called with ``(fraction 0..1, message)`` while an embedded server loads.
    safety
        The classroom filter an embedded server applies; by default the one ``settings``
        describe (strict unless changed), built when the server starts. A remote server applies
        its own.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        on_progress: ProgressCallback | None = None,
        safety: Policy | None = None,
    ) -> None:
        watch_exit()  # a kernel stopped while the embedded server starts must not complain
        self.settings = settings
        self.safety = safety
        self._on_progress = on_progress
        self._choice: ServerChoice | None = None
        self._server: BackgroundServer | None = None
        self._client: ImageClient | None = None
        self._engine = ""
        self._lock = threading.Lock()
        # An embedded server still starting, so that close() can stop it without waiting for open()
        self._starting: BackgroundServer | None = None
        self._closing = False

    @property
    def is_embedded(self) -> bool:
        """True when this service draws with a server it starts in this process (the third way)."""
        return (self._choice or choose_server(self.settings)).source == "embedded"

    def describe(self) -> str:
        """A short name for the status line: the URL, or "embedded <engine>"."""
        choice = self._choice or choose_server(self.settings)
        return choice.label

    def open(self, *, timeout_s: float = DEFAULT_START_TIMEOUT_S) -> ImageClient:
        """Return a connected ``ImageClient``, starting the embedded server first if needed.

        Raises
        ------
        ServerUnreachable, AuthError, EngineError, ModelNotAvailable
            From the client's health check or the embedded server's start.
        """
        with self._lock:
            self._closing = False
            connected = connected_client()
            if self._client is not None and connected in (None, self._client):
                return self._client
            if self._client is not None:  # connect() named another server since
                logger.info("switching to the image server connect() named: %s", connected)
                self._release(self._server, self._client, self._choice)
                self._server = self._client = self._choice = None
            choice = self._choice = choose_server(self.settings)
            if choice.client is not None:
                client = choice.client
            elif choice.source == "settings":
                assert self.settings.server_url is not None
                client = ImageClient(self.settings.server_url, token=self.settings.server_token)
            else:
                client = self._start_embedded(timeout_s)
            info = client.health()
            value = info.get("engine") or info.get("model") or ""
            self._engine = str(value)
            logger.info("image server ready: %s", self._engine or choice.label)
            self._client = client
            return client

    def _start_embedded(self, timeout_s: float) -> ImageClient:
        from ..server import start_background

        safety = self.safety if self.safety is not None else self.settings.safety_policy()
        logger.debug("embedded server: classroom filter level %s", safety.level)
        server = start_background(
            self.settings.image_engine,
            model_dir=self.settings.model_dir,
            on_progress=self._on_progress,
            wait=False,
            safety=safety,
        )
        self._starting = server
        try:
            if self._closing:  # close() came while the engine was being made
                raise EngineError("The image server was closed while it was starting.")
            server.wait_ready(timeout_s)
        except BaseException:
            server.stop()
            raise
        finally:
            self._starting = None
        self._server = server
        atexit.register(self.close)  # a server nobody closed stops with the interpreter
        return ImageClient(server.url, token=server.token)

    def engine_name(self) -> str:
        """The engine the server reported when opened, or the configured one before that."""
        if self._client is not None:
            return self._engine
        return self.settings.image_engine if choose_server(self.settings).source == "embedded" else ""

    def close(self) -> None:
        """Stop the embedded server, if this service started one, and forget the choice (idempotent).

        A server still starting is stopped at once: :meth:`open` then raises instead of waiting
        for its engine to load.
        """
        self._closing = True
        starting = self._starting
        if starting is not None:
            starting.stop(timeout_s=_STOP_STARTING_S)
        with self._lock:
            server, self._server = self._server, None
            client, self._client = self._client, None
            choice, self._choice = self._choice, None
        self._release(server, client, choice)

    def _release(
        self, server: BackgroundServer | None, client: ImageClient | None, choice: ServerChoice | None
    ) -> None:
        atexit.unregister(self.close)
        if client is not None and (choice is None or choice.client is not client):
            client.close()  # a client connect() made belongs to the caller of connect()
        if server is not None:
            server.stop()


# --- the module-level API: speech2image_nb.connect() and speech2image_nb.generate() --------------


def connect(
    url: str, token: str | Secret | None = None, *, timeout_s: tuple[float, float] = DEFAULT_TIMEOUT_S
) -> ImageClient:
    """Use the image server at ``url`` from now on, for :func:`generate` and every panel.

    It comes first in the precedence (module docstring). An embedded server that :func:`generate`
    started before is stopped; a panel already open switches at its next generation (stopping
    its own embedded server, if it had started one).

    Parameters
    ----------
    url
        The server's base URL (``https://xyz.trycloudflare.com``, ``localhost:8000``).
    token
        Its bearer token, if it needs one.
    timeout_s
        ``(connect, read)`` seconds for every request; the read part must cover a generation.
    """
    global _connected, _default
    client = ImageClient(url, token=token, timeout_s=timeout_s)
    with _lock:
        _connected, previous = client, _default
        _default = None
    if previous is not None:
        previous.close()
    return client


def connected_client() -> ImageClient | None:
    """The client :func:`connect` made, or ``None``: never starts anything."""
    with _lock:
        return _connected


def disconnect() -> None:
    """Forget the server :func:`connect` named and stop the embedded server :func:`generate` started.

    The next :func:`generate` decides again from the settings.
    """
    global _connected, _default
    with _lock:
        previous, _default, _connected = _default, None, None
    if previous is not None:
        previous.close()


def default_client() -> ImageClient:
    """The client :func:`generate` uses: this process's :class:`ImageService`, opened on first use."""
    global _default
    with _lock:
        if _default is None:
            _default = ImageService(Settings.resolve())
        service = _default
    return service.open()


def generate(
    prompt: str,
    *,
    num_images: int = 1,
    seed: int | None = None,
    image_format: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> Generation:
    """Make images of ``prompt`` with the image server the module docstring's precedence picks.

    Parameters
    ----------
    prompt
        What to draw.
    num_images
        How many images (the server's limit applies: ``DEFAULT_MAX_IMAGES`` of
        :mod:`~speech2image_nb.images.protocol` unless it was started with another).
    seed
        Same seed and prompt, same images; ``None`` lets the server pick (and report) one.
    image_format
        ``"png"`` or ``"jpeg"`` on the wire; ``None`` lets the server choose.
    options
        Engine knobs by name (``{"steps": 2}`` for SD-Turbo, ``{"temperature": 1.0}`` for DALL-E).
    """
    return default_client().generate(
        prompt, num_images=num_images, seed=seed, image_format=image_format, **dict(options or {})
    )
