"""The image source of the Ray Serve ingress: tickets filled from the replicas' streams.

Each request becomes one streaming call to the replica deployment
(``handle.options(stream=True)``). :meth:`RayImages.submit` waits for the first item, so that a
full queue is a 503 before any answer starts, whether the replica refused it (its own batcher is
full) or Serve did (every replica busy and ``max_queued_requests`` waiting: ``BackPressureError``).
Then a task copies the stream into an ordinary :class:`~.batcher.Ticket`, so the routes and the
SSE code are the very ones of the single process server. A ticket that is cancelled (the client
left, or its time ran out) cancels the call, and the replica then frees its rows.

A replica that dies mid-request ends its stream with a Ray error: the ticket fails at once with
:data:`REPLICA_LOST_MESSAGE`, and Serve starts a new replica (which takes requests only once its
engine is loaded: the replica's constructor loads it).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from ..errors import EngineError
from ..images.protocol import ImageEvent, ProgressEvent, QueuedEvent
from .batcher import QueueFullError, Ticket
from .engines.base import Engine, ImageJob, LoadProgress, PromptReader, StepProgress
from .replica_messages import Accepted, Failure, Refused, ReplicaRequest, Timings

if TYPE_CHECKING:
    from collections.abc import Sequence

    from PIL import Image
    from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

__all__ = ["REPLICA_LOST_MESSAGE", "EngineFacts", "RayImages", "RemoteEngine"]

logger = logging.getLogger(__name__)

REPLICA_LOST_MESSAGE = "The image replica making these images stopped; send the request again."
RETRY_AFTER_MIN_S = 1


@dataclasses.dataclass(frozen=True)
class EngineFacts:
    """What a loaded replica says about its engine (fetched once, when the ingress starts)."""

    describe: Mapping[str, Any]
    max_batch: int
    prompt_reader: PromptReader | None


class RemoteEngine(Engine):
    """The engine as the ingress routes see it: facts from a replica, options checked here.

    ``local`` is the same engine built in the ingress but never loaded (constructors do no
    work): it validates options and describes them. ``describe()`` adds ``replicas``, what this
    ingress saw of each replica (pid, requests running and served), for ``GET /`` with the token.
    """

    def __init__(self, local: Engine, facts: EngineFacts, replicas: Mapping[str, Mapping[str, int]]) -> None:
        self.local = local
        self.facts = facts
        self.name = str(facts.describe.get("engine", local.name))
        self.device = str(facts.describe.get("device", local.device))
        self.max_batch = facts.max_batch
        self.option_names = local.option_names
        self._replicas = replicas

    def load(self, progress: LoadProgress | None = None) -> None:
        """Nothing to load here: the replicas hold the weights."""

    def generate(
        self, jobs: Sequence[ImageJob], *, on_progress: StepProgress | None = None
    ) -> Sequence[Image.Image | None]:
        """Never called: the replicas make the images."""
        raise EngineError("The ingress makes no images; its replicas do.")

    def validate_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The engine's own option check, run in the ingress."""
        return self.local.validate_options(options)

    def prompt_reader(self) -> PromptReader | None:
        """The loaded replica's tokenizer and token count (or ``None``)."""
        return self.facts.prompt_reader

    def describe(self) -> dict[str, Any]:
        """The replica's facts, plus what this ingress saw of each replica."""
        return {**self.facts.describe, "replicas": {k: dict(v) for k, v in self._replicas.items()}}


class RayImages:
    """An :class:`~.image_source.ImageSource` over a Ray Serve deployment of image replicas.

    Parameters
    ----------
    handle
        The replica deployment's handle (its ``generate`` streams, ``facts`` answers once).
    local_engine
        The engine built here but not loaded: it checks request options.
    """

    def __init__(self, handle: DeploymentHandle[Any], local_engine: Engine) -> None:
        self._handle = handle
        self._local = local_engine
        self._engine: RemoteEngine | None = None
        self._waiting: set[Ticket] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._replicas: dict[str, collections.Counter[str]] = {}
        self._request_s_avg = 1.0  # running mean of a request's time in a replica, for Retry-After

    @property
    def engine(self) -> Engine:
        """The replicas' engine, as the routes see it (after :meth:`start`)."""
        if self._engine is None:
            raise RuntimeError("RayImages.start() was not awaited")
        return self._engine

    @property
    def max_batch(self) -> int:
        """Images per engine call in each replica."""
        return self.engine.max_batch

    @property
    def queue_length(self) -> int:
        """Requests of this ingress not yet started by a replica."""
        return len(self._waiting)

    async def start(self, load_progress: LoadProgress | None) -> None:
        """Wait for a loaded replica and read its engine's facts."""
        if load_progress is not None:
            load_progress(0.0, "waiting for a loaded image replica")
        facts: EngineFacts = await self._handle.facts.remote()
        self._engine = RemoteEngine(self._local, facts, self._replicas)
        if load_progress is not None:
            load_progress(1.0, "image replicas ready")

    async def stop(self) -> None:
        """Cancel the calls still running (their tickets fail)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def retry_after_s(self) -> int:
        """Whole seconds a refused client should wait: about one request's time in a replica."""
        return max(RETRY_AFTER_MIN_S, math.ceil(self._request_s_avg))

    async def submit(
        self, *, prompt: str, seed: int, num_images: int, options: Mapping[str, Any], stream: bool
    ) -> Ticket:
        """Send the request to a replica; raise QueueFullError when it (or Serve) refuses it."""
        from ray.serve.exceptions import BackPressureError

        ticket = Ticket(
            prompt=prompt,
            seed=seed,
            num_images=num_images,
            options=options,
            loop=asyncio.get_running_loop(),
            stream=stream,
        )
        request = ReplicaRequest(prompt, seed, num_images, dict(options), stream)
        responses = cast(
            "DeploymentResponseGenerator[Any]", self._handle.options(stream=True).generate.remote(request)
        )
        self._waiting.add(ticket)
        try:
            first = await responses.__anext__()
        except BackPressureError as exc:
            self._waiting.discard(ticket)
            raise QueueFullError(self.retry_after_s()) from exc
        except asyncio.CancelledError:
            self._waiting.discard(ticket)
            _cancel(responses)
            raise
        except Exception as exc:
            self._waiting.discard(ticket)
            ticket.fail(_replica_error(exc))
            return ticket
        if not isinstance(first, Accepted):
            self._waiting.discard(ticket)
            _cancel(responses)
            if isinstance(first, Refused):
                raise QueueFullError(first.retry_after_s)
            ticket.fail(EngineError(f"The image replica answered {type(first).__name__} first; see its log."))
            return ticket
        task = asyncio.create_task(self._follow(responses, ticket, first), name="s2i-ray-request")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        ticket.future.add_done_callback(lambda future: task.cancel() if future.cancelled() else None)
        return ticket

    async def _follow(
        self, responses: DeploymentResponseGenerator[Any], ticket: Ticket, accepted: Accepted
    ) -> None:
        """Copy the replica's stream into ``ticket`` until its last image, a failure or a cancel."""
        counts = self._replicas.setdefault(accepted.replica, collections.Counter())
        counts["pid"] = accepted.pid
        counts["running"] += 1
        started = time.perf_counter()
        try:
            async for item in responses:
                if isinstance(item, (QueuedEvent, ProgressEvent)):
                    if isinstance(item, ProgressEvent):
                        self._waiting.discard(ticket)
                    ticket.push(item)
                elif isinstance(item, ImageEvent):
                    self._waiting.discard(ticket)
                    ticket.deliver(item.index, item.image)
                elif isinstance(item, Timings):
                    ticket.started_at = ticket.submitted_at + item.queued_s
                    ticket.generate_s = item.generate_s
                elif isinstance(item, Failure):
                    ticket.fail(EngineError(item.message))
            if not ticket.future.done():
                ticket.fail(EngineError("The image replica ended its answer early; see its log."))
            else:
                counts["served"] += 1
                elapsed = time.perf_counter() - started
                self._request_s_avg = 0.7 * self._request_s_avg + 0.3 * elapsed
        except asyncio.CancelledError:
            _cancel(responses)
            ticket.fail(EngineError("The image server is shutting down."))
            raise
        except Exception as exc:
            ticket.fail(_replica_error(exc))
        finally:
            self._waiting.discard(ticket)
            counts["running"] -= 1


def _cancel(responses: Any) -> None:
    """Cancel a call (Ray's ``cancel`` is untyped): the replica's generator gets CancelledError."""
    responses.cancel()


def _replica_error(exc: Exception) -> EngineError:
    """The client's error for a call that Ray could not finish (a dead replica, above all)."""
    from ray.exceptions import RayActorError, WorkerCrashedError

    if isinstance(exc, (RayActorError, WorkerCrashedError)):
        logger.warning("an image replica stopped during a request: %s", type(exc).__name__)
        return EngineError(REPLICA_LOST_MESSAGE)
    logger.error("an image replica call failed: %r", exc)
    return EngineError(f"The image replicas could not answer ({type(exc).__name__}); see the server log.")
