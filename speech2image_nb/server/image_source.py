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
from typing import TYPE_CHECKING, Any, Protocol

from .batcher import DEFAULT_BATCH_WAIT_S, Batcher, Ticket
from .engines.base import Engine, LoadProgress
from .screening import ScreenedEngine
from .settings import DEFAULT_MAX_QUEUE

if TYPE_CHECKING:
    from ..safety import RefusalLog
    from ..safety.images import ImageChecker

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

    def __init__(
        self,
        engine: Engine,
        batcher: Batcher,
        *,
        screened: ScreenedEngine | None = None,
        checker_model: str | None = None,
    ) -> None:
        self._engine = engine
        self.batcher = batcher
        # the classroom filter's picture check around the engine (the batcher runs ``screened``);
        # its classifier, when not given, loads after the engine, on the engine's thread
        self.screened = screened
        self.checker_model = checker_model

    @classmethod
    def build(
        cls,
        engine: Engine,
        *,
        max_batch: int | None = None,
        max_queue: int = DEFAULT_MAX_QUEUE,
        batch_wait_s: float = DEFAULT_BATCH_WAIT_S,
        check_images: bool = True,
        image_checker: ImageChecker | str | None = None,
        refusals: RefusalLog | None = None,
    ) -> LocalImages:
        """The engine, its picture check (``check_images``; a checker, or the model to load) and
        a batcher over both."""
        screened: ScreenedEngine | None = None
        if check_images:
            given = None if isinstance(image_checker, str) else image_checker
            screened = ScreenedEngine(engine, given, refusals=refusals)
        batcher = Batcher(
            screened or engine, max_batch=max_batch, max_queue=max_queue, batch_wait_s=batch_wait_s
        )
        model = image_checker if isinstance(image_checker, str) else None
        return cls(engine, batcher, screened=screened, checker_model=model)

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
        """Start the batcher and load the engine, then the picture check, on the engine's thread;
        a failed load stops the batcher."""
        load_checker = self.screened is not None and self.screened.checker is None
        engine_share = ENGINE_LOAD_SHARE if load_checker else 1.0
        await self.batcher.start()
        try:
            await self.batcher.run_in_engine_thread(
                self._engine.load, _scaled(load_progress, 0.0, engine_share)
            )
            if load_checker:
                assert self.screened is not None
                device = str(getattr(self._engine, "device", "cpu") or "cpu")
                self.screened.checker = await self.batcher.run_in_engine_thread(
                    _load_checker,
                    self.checker_model,
                    device,
                    _scaled(load_progress, engine_share, 1.0 - engine_share),
                )
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


#: share of the load progress the engine reports in, when the picture check loads after it
ENGINE_LOAD_SHARE = 0.9


def _scaled(progress: LoadProgress | None, start: float, share: float) -> LoadProgress | None:
    if progress is None:
        return None
    report = progress
    return lambda fraction, message: report(start + share * min(max(fraction, 0.0), 1.0), message)


def _load_checker(model: str | None, device: str, progress: LoadProgress | None) -> ImageChecker:
    from ..safety.images import load_image_checker

    return load_image_checker(model, device=device, progress=progress)
