"""The seam between the routes and whatever makes the images: one engine here, or replicas elsewhere.

The routes are written once, over an :class:`ImageSource`: they submit a request and get back a
:class:`~.batcher.Ticket` (its future resolves with the images; a streaming one also carries the
protocol's events), and the health route reads the engine's facts, the batch size and the queue.
:class:`LocalImages` is the one process case: the engine and our batcher in this process. The Ray
Serve case (:mod:`.ray_images`) fills the same tickets from a deployment handle's stream, so the
routes, the streaming code and the error answers do not know where the engine runs.

``submit`` is a coroutine because a remote source learns whether its request was accepted (or
refused with "queue full") only from the other side; the local batcher knows at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from .batcher import Batcher, Ticket
from .engines.base import Engine, LoadProgress

__all__ = ["ImageSource", "LocalImages"]


class ImageSource(Protocol):
    """What the routes need of the thing that makes images (see the module docstring)."""

    @property
    def engine(self) -> Engine:
        """The engine's facts for the routes: name, options, prompt reading, ``describe()``."""

    @property
    def max_batch(self) -> int:
        """Images per engine call."""

    @property
    def queue_length(self) -> int:
        """Requests waiting for their first engine call."""

    async def start(self, load_progress: LoadProgress | None) -> None:
        """Get ready to serve (load the engine, or wait for replicas); raise if that fails."""

    async def stop(self) -> None:
        """Stop serving; every waiting request fails."""

    async def submit(
        self, *, prompt: str, seed: int, num_images: int, options: Mapping[str, Any], stream: bool
    ) -> Ticket:
        """Queue a request; raises :class:`~.batcher.QueueFullError` when it cannot wait."""


class LocalImages:
    """The engine and our batcher in this process: the image server as it always was.

    The engine loads on the batcher's engine thread, the thread that later calls ``generate()``
    (thread-local torch state such as the CUDA device is then the same for both).
    """

    def __init__(self, engine: Engine, batcher: Batcher) -> None:
        self._engine = engine
        self.batcher = batcher

    @property
    def engine(self) -> Engine:
        """The engine this process runs."""
        return self._engine

    @property
    def max_batch(self) -> int:
        """Images per engine call (see :attr:`.Batcher.max_batch`)."""
        return self.batcher.max_batch

    @property
    def queue_length(self) -> int:
        """Requests waiting in the batcher."""
        return self.batcher.queue_length

    async def start(self, load_progress: LoadProgress | None) -> None:
        """Start the batcher and load the engine on its thread; a failed load stops the batcher."""
        await self.batcher.start()
        try:
            await self.batcher.run_in_engine_thread(self._engine.load, load_progress)
        except BaseException:
            await self.batcher.stop()
            raise

    async def stop(self) -> None:
        """Stop the batcher (waiting requests fail)."""
        await self.batcher.stop()

    async def submit(
        self, *, prompt: str, seed: int, num_images: int, options: Mapping[str, Any], stream: bool
    ) -> Ticket:
        """Queue the request in the batcher (answered at once: accepted, or QueueFullError)."""
        return self.batcher.submit(
            prompt=prompt, seed=seed, num_images=num_images, options=options, stream=stream
        )
