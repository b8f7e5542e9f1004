"""The parts the panel and the ``speech2image`` command share: where images come from, and saving.

Images come from the server named by the settings (``S2I_SERVER_URL`` + ``S2I_SERVER_TOKEN``), or,
when none is named, from an embedded server started in this process with the configured engine
(``S2I_IMAGE_ENGINE``, weights from ``S2I_MODEL_DIR`` or the Hugging Face cache). Both end as one
:class:`~speech2image_nb.images.client.ImageClient`, so the rest of the product never cares which.
"""

from __future__ import annotations

import datetime
import logging
import os
import secrets
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from PIL.Image import Image

    from .config import Settings

__all__ = ["DEFAULT_START_TIMEOUT_S", "ImageService", "new_id", "save_images"]

logger = logging.getLogger(__name__)

#: How long to wait for an embedded server to load its engine (real DALL-E mini weights on CPU).
DEFAULT_START_TIMEOUT_S = 600.0

ProgressCallback = Callable[[float, str], None]


class ImageService:
    """The image server this session talks to, remote or embedded.

    The constructor only stores; :meth:`open` connects (and starts the embedded server when no
    URL is configured), which may take minutes for real weights: call it off the main thread.

    Parameters
    ----------
    settings
        Resolved settings (server URL/token, engine, model directory).
    on_progress
        Called with ``(fraction 0..1, message)`` while an embedded server loads.
    """

    def __init__(self, settings: Settings, *, on_progress: ProgressCallback | None = None) -> None:
        self.settings = settings
        self._on_progress = on_progress
        self._server: Any = None
        self._client: Any = None
        self._lock = threading.Lock()

    @property
    def is_embedded(self) -> bool:
        """True when no server URL is configured (an embedded server is or will be used)."""
        return not self.settings.server_url

    def describe(self) -> str:
        """A short name for the status line: the URL, or "embedded <engine>"."""
        if self._client is not None and self._server is None:
            return str(getattr(self._client, "url", "") or self.settings.server_url)
        if self.settings.server_url:
            return self.settings.server_url
        return f"embedded {self.settings.image_engine}"

    def open(self, *, timeout_s: float = DEFAULT_START_TIMEOUT_S) -> Any:
        """Return a connected ``ImageClient``, starting the embedded server first if needed.

        Raises
        ------
        ServerUnreachable, AuthError, EngineError, ModelNotAvailable
            From the client's health check or the embedded server's start.
        """
        with self._lock:
            if self._client is not None:
                return self._client
            from .images import client as client_module

            connected = None if self.settings.server_url else client_module.connected_client()
            if connected is not None:  # the user called speech2image_nb.connect(url, token) before
                client = connected
            elif self.settings.server_url:
                client = client_module.ImageClient(self.settings.server_url, token=self.settings.server_token)
            else:
                from .server import start_background

                self._server = start_background(
                    self.settings.image_engine,
                    model_dir=self.settings.model_dir,
                    on_progress=self._on_progress,
                    wait=False,
                )
                try:
                    self._server.wait_ready(timeout_s)
                except BaseException:
                    server, self._server = self._server, None
                    server.stop()
                    raise
                client = client_module.ImageClient(self._server.url, token=self._server.token)
            info = client.health()
            logger.info("image server ready: %s", _engine_name(info) or self.describe())
            self._client = client
            return client

    def engine_name(self) -> str:
        """The engine the server reported, or the configured one for an embedded server."""
        if self._client is not None:
            try:
                return _engine_name(self._client.health()) or ""
            except Exception:  # status only: never fail on it
                return ""
        return "" if self.settings.server_url else self.settings.image_engine

    def close(self) -> None:
        """Stop the embedded server, if one was started (idempotent)."""
        with self._lock:
            server, self._server, self._client = self._server, None, None
        if server is not None:
            server.stop()


def _engine_name(info: Any) -> str:
    if isinstance(info, dict):
        value = info.get("engine") or info.get("model") or ""
        return str(value)
    return ""


def new_id() -> str:
    """A short unique id for a generation, used in file names (never the prompt)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"s2i-{stamp}-{secrets.token_hex(3)}"


def save_images(images: Iterable[Image], out_dir: str | os.PathLike[str], entry_id: str) -> list[Path]:
    """Write ``images`` as PNG files ``<entry_id>-<n>.png`` into ``out_dir`` (created if needed).

    File names come from the id only, never from the prompt (a prompt is user text and may hold
    path separators). Returns the paths written.

    Raises
    ------
    ConfigError
        When the folder cannot be created or written.
    """
    if not entry_id or any(c in entry_id for c in "/\\\0") or entry_id in {".", ".."}:
        raise ValueError(f"invalid image id {entry_id!r}")
    folder = Path(out_dir).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for index, image in enumerate(images, start=1):
            path = folder / f"{entry_id}-{index}.png"
            image.save(path, format="PNG")
            paths.append(path)
    except OSError as exc:
        raise ConfigError(
            f"Cannot write images to {str(folder)!r} ({exc.strerror}): choose another folder."
        ) from exc
    return paths
