"""What crosses the wire between the Ray Serve ingress and an image replica, in both directions.

A request goes over as one :class:`ReplicaRequest`. The answer is a stream: first
:class:`Accepted` (or :class:`Refused`, the replica's queue being full), then the protocol's own
events (``QueuedEvent``, ``ProgressEvent`` with previews, ``ImageEvent`` with the picture), with
:class:`Timings` just before the last image, or :class:`Failure` instead of the rest. Plain frozen
dataclasses (pickled by Ray), free of Ray and FastAPI, so both sides and the tests import them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ..images.protocol import ImageEvent, ProgressEvent, QueuedEvent

__all__ = ["Accepted", "Failure", "Refused", "ReplicaItem", "ReplicaRequest", "Timings"]


@dataclasses.dataclass(frozen=True)
class ReplicaRequest:
    """One generate request, its seed already chosen and its options already validated."""

    prompt: str
    seed: int
    num_images: int
    options: Mapping[str, Any]
    stream: bool


@dataclasses.dataclass(frozen=True)
class Accepted:
    """The replica queued the request; ``replica`` and ``pid`` say which one (health, tests)."""

    replica: str
    pid: int


@dataclasses.dataclass(frozen=True)
class Refused:
    """The replica's queue is full: try again after ``retry_after_s`` seconds."""

    retry_after_s: int


@dataclasses.dataclass(frozen=True)
class Timings:
    """Seconds the request waited in the replica's queue and spent in engine calls."""

    queued_s: float
    generate_s: float


@dataclasses.dataclass(frozen=True)
class Failure:
    """The engine failed; ``message`` is what the client is told (never a traceback)."""

    message: str


ReplicaItem = Accepted | Refused | Timings | Failure | QueuedEvent | ProgressEvent | ImageEvent
