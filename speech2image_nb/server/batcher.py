"""Queue and dynamic batching: many concurrent requests, one engine call at a time.

Requests wait in a FIFO queue. A single worker takes the head request and every later one with
the same engine options, up to ``max_batch`` images, and runs them as one :meth:`Engine.generate`
call on the engine's own thread (so the event loop keeps answering). A request larger than ``max_batch``
runs over several calls. Every image carries its own seed (:func:`image_seed`), so an image is the
same alone or batched.

Why a short gathering window: requests that arrive together (a burst of clients) should share a
call, but a lone request should not wait. After the first request of an idle period the worker
waits while new requests keep arriving at least every ``batch_gap_s``, at most ``batch_wait_s``.
Requests that queued while the engine was busy start at once.

A request that goes away (its client left, or its time ran out) is cancelled: its queued images
are dropped, and its running ones are no longer wanted (:attr:`ImageJob.is_wanted`), which an engine
with many steps reads between them to stop making them (DALL-E frees their rows in the batch).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import EngineError
from ..images.protocol import ImageEvent, ProgressEvent, QueuedEvent
from .engines.base import Engine, ImageJob
from .settings import DEFAULT_MAX_QUEUE

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["Batcher", "Failed", "ImageReady", "Progress", "QueueFullError", "Queued", "Ticket"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_BATCH_WAIT_S = 0.05  # longest gathering window after an idle period
DEFAULT_BATCH_GAP_S = 0.005  # the window closes when no request arrived for this long


class QueueFullError(Exception):
    """The queue holds ``max_queue`` requests; retry after ``retry_after_s`` seconds."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"queue full, retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


#: the batcher reports with the wire's own events (the names are kept for the server's readers)
Queued = QueuedEvent
Progress = ProgressEvent
ImageReady = ImageEvent


@dataclasses.dataclass(frozen=True)
class Failed:
    """The request failed; no more events follow."""

    error: BaseException


Event = QueuedEvent | ProgressEvent | ImageEvent | Failed


class Ticket:
    """One request in the batcher: its jobs, its results and (for streaming) its events."""

    def __init__(
        self,
        *,
        prompt: str,
        seed: int,
        num_images: int,
        options: Mapping[str, Any],
        loop: asyncio.AbstractEventLoop,
        stream: bool,
    ) -> None:
        self.prompt = prompt
        self.seed = seed
        self.num_images = num_images
        self.options = dict(options)
        self.option_key = tuple(sorted((k, repr(v)) for k, v in self.options.items()))
        self.pending: collections.deque[int] = collections.deque(range(num_images))
        self.images: list[Image.Image | None] = [None] * num_images
        self.future: asyncio.Future[list[Image.Image]] = loop.create_future()
        self.events: asyncio.Queue[Event] | None = asyncio.Queue() if stream else None
        self.submitted_at = time.perf_counter()
        self.started_at: float | None = None
        self.generate_s = 0.0
        self.cancelled = False
        self._last_position: int | None = None

    @property
    def queued_s(self) -> float:
        """Seconds from submission to the start of its first engine call."""
        end = self.started_at if self.started_at is not None else time.perf_counter()
        return end - self.submitted_at

    def job(self, index: int) -> ImageJob:
        """The engine job for image ``index``."""
        return ImageJob(
            prompt=self.prompt, seed=self.seed, index=index, options=self.options, is_wanted=self.is_wanted
        )

    def is_wanted(self) -> bool:
        """False once the request was cancelled (read by the engine's thread between steps)."""
        return not self.cancelled

    def push(self, event: Event) -> None:
        """Hand an event to a streaming consumer (on the event loop)."""
        if self.events is not None and not self.cancelled:
            if isinstance(event, QueuedEvent):
                if event.position == self._last_position:
                    return
                self._last_position = event.position
            self.events.put_nowait(event)

    def deliver(self, index: int, image: Image.Image) -> None:
        """Store a finished image; resolve the future when all are there."""
        if self.cancelled or self.future.done():
            return
        self.images[index] = image
        self.push(ImageEvent(index, image))
        if all(img is not None for img in self.images):
            self.future.set_result([img for img in self.images if img is not None])

    def fail(self, exc: BaseException) -> None:
        """Resolve the future with an error."""
        if not self.future.done():
            self.future.set_exception(exc)
            self.future.exception()  # marks it retrieved: a streaming request reads its events instead
            if self.events is not None:
                self.events.put_nowait(Failed(exc))

    def cancel(self) -> None:
        """Give up on this request: its queued images are dropped, running ones no longer wanted."""
        self.cancelled = True
        self.pending.clear()
        if not self.future.done():
            self.future.cancel()


class Batcher:
    """Runs an engine for many requests; see the module docstring.

    Parameters
    ----------
    engine
        A loaded engine.
    max_batch
        Most images per engine call (default and upper bound: ``engine.max_batch``).
    max_queue
        Most requests waiting; more are refused with :class:`QueueFullError`.
    batch_wait_s, batch_gap_s
        The gathering window after an idle period (see the module docstring).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        max_batch: int | None = None,
        max_queue: int = DEFAULT_MAX_QUEUE,
        batch_wait_s: float = DEFAULT_BATCH_WAIT_S,
        batch_gap_s: float = DEFAULT_BATCH_GAP_S,
    ) -> None:
        if max_batch is not None and max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if max_queue < 1:
            raise ValueError("max_queue must be >= 1")
        self.engine = engine
        self._max_batch_limit = max_batch
        self.max_queue = max_queue
        self.batch_wait_s = batch_wait_s
        self.batch_gap_s = batch_gap_s
        self._queue: collections.deque[Ticket] = collections.deque()
        self._wakeup: asyncio.Event | None = None
        self._arrivals = 0
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._batch_s_avg = 1.0  # running mean of engine call time, for Retry-After
        self.running = False

    @property
    def max_batch(self) -> int:
        """Images per engine call: the configured limit, never above the engine's own."""
        engine_max = max(self.engine.max_batch, 1)
        return min(self._max_batch_limit or engine_max, engine_max)

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the worker on the running loop."""
        self._loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._task = asyncio.create_task(self._work(), name="s2i-batcher")

    async def run_in_engine_thread(self, function: Callable[..., T], *args: Any) -> T:
        """Run ``function(*args)`` on the engine's own thread (:attr:`Engine.engine_thread`).

        Load, generations and previews all run there: thread-local torch state (the CUDA device,
        the OpenMP thread team of the CPU kernels) is then the same for all of them, and a CPU
        engine runs as fast served as called directly (see :mod:`.engines.engine_thread`).
        """
        if self._loop is None:
            raise RuntimeError("Batcher.start() was not awaited")
        return await asyncio.wrap_future(self.engine.engine_thread.submit(function, *args))

    async def stop(self) -> None:
        """Stop the worker and fail every waiting request."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        while self._queue:
            self._queue.popleft().fail(EngineError("The image server is shutting down."))

    # --- requests ----------------------------------------------------------------------------

    @property
    def queue_length(self) -> int:
        """Requests waiting for their first (or next) engine call."""
        return len(self._queue)

    def submit(
        self, *, prompt: str, seed: int, num_images: int, options: Mapping[str, Any], stream: bool = False
    ) -> Ticket:
        """Queue a request; raises :class:`QueueFullError` when ``max_queue`` requests wait."""
        if self._loop is None or self._wakeup is None:
            raise RuntimeError("Batcher.start() was not awaited")
        self._queue = collections.deque(t for t in self._queue if not t.cancelled)
        if len(self._queue) >= self.max_queue:
            raise QueueFullError(self.retry_after_s())
        ticket = Ticket(
            prompt=prompt, seed=seed, num_images=num_images, options=options, loop=self._loop, stream=stream
        )
        ticket.push(QueuedEvent(len(self._queue)))
        self._queue.append(ticket)
        self._arrivals += 1
        self._wakeup.set()
        return ticket

    def retry_after_s(self) -> int:
        """Whole seconds until the queue has probably moved enough to take a new request."""
        images = sum(len(t.pending) for t in self._queue)
        calls = math.ceil(images / self.max_batch) + 1
        return max(1, math.ceil(calls * self._batch_s_avg))

    # --- the worker --------------------------------------------------------------------------

    async def _work(self) -> None:
        assert self._wakeup is not None
        while True:
            await self._wakeup.wait()
            self._queue = collections.deque(t for t in self._queue if not t.cancelled)
            if not self._queue:
                self._wakeup.clear()
                continue
            await self._gather()
            batch = self._take_batch()
            if batch:
                await self._run_batch(batch)

    async def _gather(self) -> None:
        """Wait briefly for companions of a request that arrived while the engine was idle."""
        head = self._queue[0]
        deadline = head.submitted_at + self.batch_wait_s
        while time.perf_counter() < deadline and self._pending_images() < self.max_batch:
            seen = self._arrivals
            await asyncio.sleep(self.batch_gap_s)
            if self._arrivals == seen:
                break

    def _pending_images(self) -> int:
        return sum(len(t.pending) for t in self._queue)

    def _take_batch(self) -> list[tuple[Ticket, int]]:
        """Take images from the head request and same-option followers, up to ``max_batch``."""
        self._queue = collections.deque(t for t in self._queue if not t.cancelled)
        if not self._queue:
            return []
        key = self._queue[0].option_key
        batch: list[tuple[Ticket, int]] = []
        for ticket in self._queue:
            if ticket.option_key != key:
                continue
            while ticket.pending and len(batch) < self.max_batch:
                batch.append((ticket, ticket.pending.popleft()))
            if len(batch) >= self.max_batch:
                break
        self._queue = collections.deque(t for t in self._queue if t.pending)
        for position, ticket in enumerate(self._queue):
            ticket.push(QueuedEvent(position))
        return batch

    async def _run_batch(self, batch: Sequence[tuple[Ticket, int]]) -> None:
        assert self._loop is not None
        loop = self._loop
        tickets = list(dict.fromkeys(t for t, _ in batch))
        started = time.perf_counter()
        for ticket in tickets:
            if ticket.started_at is None:
                ticket.started_at = started
        jobs = [ticket.job(index) for ticket, index in batch]
        first_slot: dict[Ticket, int] = {}
        for slot, (ticket, _) in enumerate(batch):
            first_slot.setdefault(ticket, slot)
        streaming = [t for t in tickets if t.events is not None]

        def on_progress(step: int, total: int, previews: Sequence[Image.Image | None] | None) -> None:
            for ticket in streaming:
                if ticket.cancelled:
                    continue  # reading a preview decodes it: none for a request that went away
                preview = previews[first_slot[ticket]] if previews else None
                loop.call_soon_threadsafe(ticket.push, ProgressEvent(step, total, preview))

        def call() -> Sequence[Image.Image | None]:
            return self.engine.generate(jobs, on_progress=on_progress if streaming else None)

        try:
            images = await self.run_in_engine_thread(call)
            if len(images) != len(jobs):
                raise EngineError(f"The engine returned {len(images)} images for {len(jobs)} requested.")
        except Exception as exc:
            if not isinstance(exc, EngineError):
                logger.exception("engine %s failed", self.engine.name)
            for ticket in tickets:
                ticket.fail(exc)
            return
        finally:
            elapsed = time.perf_counter() - started
            self._batch_s_avg = 0.7 * self._batch_s_avg + 0.3 * elapsed
        for ticket in tickets:
            ticket.generate_s += elapsed
        for (ticket, index), image in zip(batch, images, strict=True):
            if image is not None:
                ticket.deliver(index, image)
            elif not ticket.cancelled:
                ticket.fail(EngineError(f"The engine {self.engine.name} left out an image still asked for."))
