"""Client side of the image server: :class:`ImageClient`, :func:`connect`, :func:`generate`."""

from __future__ import annotations

from .client import (
    DoneEvent,
    Generation,
    ImageClient,
    ImageEvent,
    ProgressEvent,
    QueuedEvent,
    connect,
    generate,
)

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
