"""Client side of the image server: :class:`ImageClient`, and :func:`connect` / :func:`generate`,
which draw with the server :mod:`speech2image_nb.images.service` picks."""

from __future__ import annotations

from .client import (
    DoneEvent,
    Generation,
    ImageClient,
    ImageEvent,
    ProgressEvent,
    QueuedEvent,
)
from .service import connect, generate

__all__ = [
    "DoneEvent",
    "Generation",
    "ImageClient",
    "ImageEvent",
    "ProgressEvent",
    "QueuedEvent",
    "connect",
    "generate",
]
