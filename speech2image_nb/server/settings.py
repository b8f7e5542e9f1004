"""The settings of one image server app and their defaults (the command-line flags' defaults too).

Kept free of FastAPI so that the command line and :func:`~speech2image_nb.server.start_background`
read the same defaults without importing the web framework. What a single request may ask for
(images, prompt length) is part of the wire contract and lives in
:mod:`speech2image_nb.images.protocol`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..images.protocol import RequestLimits
from ..safety import Policy

__all__ = ["DEFAULT_MAX_QUEUE", "DEFAULT_REQUEST_TIMEOUT_S", "ServerConfig"]

DEFAULT_MAX_QUEUE = 64  # waiting requests; the next one is answered 503 queue_full
DEFAULT_REQUEST_TIMEOUT_S = 300.0  # a request still waiting after this is answered 504 timeout


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """The settings the routes read (the command-line flags of the same names)."""

    limits: RequestLimits = dataclasses.field(default_factory=RequestLimits)
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    save_dir: Path | None = None  # also write every image there, named by a random id
    needs_token: bool = False  # GET / reveals details only to a caller with the token
    #: the classroom filter: the prompt check's words and level, whether pictures are checked
    safety: Policy = dataclasses.field(default_factory=Policy)

    @property
    def checks_images(self) -> bool:
        """Whether every image and preview goes through the picture check."""
        return self.safety.enabled and self.safety.check_images

    def __post_init__(self) -> None:
        if not self.request_timeout_s > 0:
            raise ValueError("request_timeout_s must be positive")
