"""The image server on Ray Serve: one ingress with the very same app, replicas that each hold an engine.

Two deployments:

- :class:`ImageReplica`: one engine and our own batcher (Ray Serve batches within a replica only,
  so seeds, previews and "a client that leaves frees its rows" work as in one process). Its
  constructor loads the engine, so Serve sends it no request before the weights are in; each
  takes ``num_gpus`` (1, or a fraction to put two on one card) through ``ray_actor_options``.
- :class:`ImageIngress`: the FastAPI app of :func:`~.app.create_app` (routes, auth, CORS, error
  bodies, SSE, the Playground forms) over :class:`~.ray_images.RayImages`, which streams each
  request from a replica through the deployment handle.

Start it with ``serve run speech2image_nb.server.ray_serve:build_app engine=dalle-mini replicas=2``,
with the Serve config ``deploy/ray-serve.yaml``, or on one machine with
``python -m speech2image_nb.server --ray-replicas N`` (:mod:`.ray_local`). Only these modules
import Ray: it is the optional extra ``speech2image_nb[ray]``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

from ray import serve
from ray.serve import Application, Deployment
from ray.serve.handle import DeploymentHandle

from ..errors import ConfigError
from ..images.protocol import DEFAULT_MAX_IMAGES, DEFAULT_MAX_PROMPT_CHARS, ImageEvent
from ..safety import Policy
from .batcher import DEFAULT_BATCH_WAIT_S, Failed, QueueFullError
from .engines.base import Engine
from .image_source import LocalImages
from .ray_images import EngineFacts, RayImages
from .replica_messages import Accepted, Failure, Refused, ReplicaItem, ReplicaRequest, Timings
from .settings import DEFAULT_MAX_QUEUE, DEFAULT_REQUEST_TIMEOUT_S

__all__ = [
    "INGRESS_DEPLOYMENT",
    "REPLICA_DEPLOYMENT",
    "TOKEN_ENV",
    "EngineRecipe",
    "ImageIngress",
    "ImageReplica",
    "IngressOptions",
    "ReplicaOptions",
    "ScalingOptions",
    "build_app",
    "image_app",
]

logger = logging.getLogger(__name__)

TOKEN_ENV = "S2I_SERVER_TOKEN"  # the ingress reads the bearer token from this variable by default
INGRESS_MAX_ONGOING = 1000  # the ingress only awaits replicas: it is never the bottleneck


@dataclasses.dataclass(frozen=True)
class EngineRecipe:
    """How a replica builds its engine: by name (:func:`~.engines.create_engine`), or ``factory``.

    ``factory`` is any picklable callable returning an engine (a configured noise engine in
    tests and benchmarks). The ingress builds the same engine on the CPU without loading it, to
    check request options.
    """

    name: str = "dalle-mini"
    model_dir: str | None = None
    device: str | None = None
    dtype: str | None = None
    vae: str | None = None
    factory: Callable[[], Engine] | None = None

    def build(self, *, for_ingress: bool = False) -> Engine:
        """The engine, not loaded (``for_ingress``: on the CPU, where only its options matter)."""
        if self.factory is not None:
            return self.factory()
        from .engines import create_engine

        device = "cpu" if for_ingress else self.device
        dtype = None if for_ingress else self.dtype
        return create_engine(self.name, model_dir=self.model_dir, device=device, dtype=dtype, vae=self.vae)


@dataclasses.dataclass(frozen=True)
class ReplicaOptions:
    """One replica's batcher: images per call, requests waiting, gathering window."""

    max_batch: int | None = None
    max_queue: int = DEFAULT_MAX_QUEUE
    batch_wait_s: float = DEFAULT_BATCH_WAIT_S
    #: the classroom filter's picture check (``False`` only with the filter off); ``image_checker``:
    #: its model (hub id or folder; default ``$S2I_SAFETY_IMAGE_MODEL`` or the default model)
    check_images: bool = True
    image_checker: str | None = None


@dataclasses.dataclass(frozen=True)
class IngressOptions:
    """The ingress app's settings (as :func:`~.app.create_app`'s of the same names).

    The token is ``token`` when given, else the environment variable ``token_env`` of the
    ingress process; ``token_env=None`` and no ``token`` serve without auth.
    """

    token: str | None = dataclasses.field(default=None, repr=False)
    token_env: str | None = TOKEN_ENV
    max_images: int = DEFAULT_MAX_IMAGES
    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    cors_origins: Sequence[str] = ("*",)
    #: the classroom filter's prompt check (default: ``Policy.resolve()`` in the ingress's process:
    #: strict unless its environment says otherwise)
    safety: Policy | None = None

    def resolve_token(self) -> str | None:
        """The token to require; raises ConfigError when ``token_env`` names an unset variable."""
        if self.token is not None:
            return self.token
        if self.token_env is None:
            return None
        token = os.environ.get(self.token_env, "").strip()
        if not token:
            raise ConfigError(
                f"The image server needs a token: set {self.token_env} for the Ray processes, "
                "or start it with no_auth=true."
            )
        return token


@dataclasses.dataclass(frozen=True)
class ScalingOptions:
    """How many replicas, and what each takes: fixed ``replicas``, or autoscaling between
    ``min_replicas`` and ``max_replicas`` aiming at ``target_ongoing_requests`` per replica."""

    replicas: int = 1
    gpus_per_replica: float = 0.0
    cpus_per_replica: float = 1.0
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing_requests: float | None = None
    max_waiting: int | None = None  # requests Serve holds while every replica is full (then 503)
    ingress_cpus: float = 1.0  # the ingress encodes images and streams events: about one core

    def deployment_options(self, replica: ReplicaOptions) -> dict[str, Any]:
        """The replica deployment's Serve options.

        A replica holds at most ``max_queue`` requests, running or waiting (its batcher then never
        has to refuse one); Serve holds ``max_waiting`` more while every replica is full, and
        answers any further one with ``BackPressureError``, which the ingress turns into 503.
        """
        options: dict[str, Any] = {
            "ray_actor_options": {"num_gpus": self.gpus_per_replica, "num_cpus": self.cpus_per_replica},
            "max_ongoing_requests": replica.max_queue,
            "max_queued_requests": self.max_waiting if self.max_waiting is not None else replica.max_queue,
        }
        if self.max_replicas is not None:
            options["autoscaling_config"] = {
                "min_replicas": self.min_replicas if self.min_replicas is not None else 1,
                "max_replicas": self.max_replicas,
                "target_ongoing_requests": self.target_ongoing_requests or replica.max_queue / 2,
            }
        else:
            options["num_replicas"] = self.replicas
        return options


class ImageReplica:
    """One engine and its batcher; ``generate`` streams one request's answer (see
    :mod:`.replica_messages`)."""

    # Serve awaits an async constructor and routes nothing to the replica before it returns
    async def __init__(self, recipe: EngineRecipe, options: ReplicaOptions) -> None:  # type: ignore[misc]
        engine = recipe.build()
        # each replica checks its own pictures and previews (the classroom filter), as one process does
        self._images = LocalImages.build(
            engine,
            max_batch=options.max_batch,
            max_queue=options.max_queue,
            batch_wait_s=options.batch_wait_s,
            check_images=options.check_images,
            image_checker=options.image_checker,
        )
        self._replica = serve.get_replica_context().replica_tag
        await self._images.start(_log_progress)  # Serve routes nothing here before this returns
        logger.info("image replica %s ready (engine %s)", self._replica, engine.name)

    async def facts(self) -> EngineFacts:
        """The loaded engine's facts, for the ingress's routes."""
        engine = self._images.engine
        return EngineFacts(
            describe=engine.describe(), max_batch=self._images.max_batch, prompt_reader=engine.prompt_reader()
        )

    async def generate(self, request: ReplicaRequest) -> AsyncIterator[ReplicaItem]:
        """Accepted (or Refused), then the request's events; cancelling it frees its rows."""
        from .error_handlers import engine_failure

        try:
            ticket = await self._images.submit(
                prompt=request.prompt,
                seed=request.seed,
                num_images=request.num_images,
                options=request.options,
                stream=request.stream,
            )
        except QueueFullError as exc:
            yield Refused(exc.retry_after_s)
            return
        yield Accepted(self._replica, os.getpid())
        finished = False
        try:
            if ticket.events is None:
                try:
                    images = await ticket.future
                except Exception as exc:
                    finished = True
                    yield Failure(engine_failure(exc).message)
                    return
                yield Timings(ticket.queued_s, ticket.generate_s)
                for index, image in enumerate(images):
                    yield ImageEvent(index, image)
            else:
                sent = 0
                while sent < request.num_images:
                    event = await ticket.events.get()
                    if isinstance(event, Failed):
                        finished = True
                        yield Failure(engine_failure(event.error).message)
                        return
                    if isinstance(event, ImageEvent):
                        sent += 1
                        if sent == request.num_images:
                            yield Timings(ticket.queued_s, ticket.generate_s)
                    yield event
            finished = True
        finally:
            if not finished:
                ticket.cancel()  # the caller went away: images not started are never made

    async def check_health(self) -> None:
        """Serve's health check: a replica that answers is healthy (it exists only once loaded)."""

    async def __del__(self) -> None:
        await self._images.stop()


class ImageIngress:
    """The image server's HTTP app, its images made by the :class:`ImageReplica` deployment."""

    def __init__(
        self, replicas: DeploymentHandle[Any], recipe: EngineRecipe, options: IngressOptions
    ) -> None:
        self._replicas = replicas
        self._recipe = recipe
        self._options = options
        self._token = options.resolve_token()  # fails the deployment at once when the token is missing

    def __serve_build_asgi_app__(self) -> Any:
        """The same app as one process serves, over the replicas (built when the replica starts)."""
        from .app import create_app

        local_engine = self._recipe.build(for_ingress=True)
        options = self._options
        return create_app(
            local_engine,
            token=self._token,
            max_images=options.max_images,
            max_prompt_chars=options.max_prompt_chars,
            request_timeout_s=options.request_timeout_s,
            cors_origins=options.cors_origins,
            safety=options.safety,
            image_source=RayImages(self._replicas, local_engine),
        )


#: the Serve deployments of the two classes (made here, not by class decorators, which type checkers skip)
REPLICA_DEPLOYMENT: Deployment = serve.deployment(
    name="ImageReplica", health_check_period_s=5, graceful_shutdown_timeout_s=5
)(ImageReplica)
INGRESS_DEPLOYMENT: Deployment = serve.deployment(
    name="ImageIngress", max_ongoing_requests=INGRESS_MAX_ONGOING
)(serve.ingress()(ImageIngress))


def _log_progress(fraction: float, message: str) -> None:
    logger.info("loading: %d%% %s", round(fraction * 100), message)


def image_app(
    recipe: EngineRecipe,
    *,
    scaling: ScalingOptions | None = None,
    replica: ReplicaOptions | None = None,
    ingress: IngressOptions | None = None,
) -> Application:
    """The Serve application: the ingress bound to the replica deployment."""
    scaling = scaling or ScalingOptions()
    replica = replica or ReplicaOptions()
    model = REPLICA_DEPLOYMENT.options(**scaling.deployment_options(replica)).bind(recipe, replica)
    ingress_deployment = INGRESS_DEPLOYMENT.options(ray_actor_options={"num_cpus": scaling.ingress_cpus})
    application: Application = ingress_deployment.bind(model, recipe, ingress or IngressOptions())
    return application


#: ``build_app`` arguments: name -> (type, where it goes)
_ARG_TYPES: dict[str, type] = {
    "engine": str,
    "model_dir": str,
    "device": str,
    "dtype": str,
    "vae": str,
    "replicas": int,
    "gpus_per_replica": float,
    "cpus_per_replica": float,
    "min_replicas": int,
    "max_replicas": int,
    "target_ongoing_requests": float,
    "max_waiting": int,
    "max_batch": int,
    "max_queue": int,
    "batch_wait_s": float,
    "max_images": int,
    "max_prompt_chars": int,
    "request_timeout_s": float,
    "token_env": str,
    "no_auth": bool,
}


def _typed(name: str, value: Any) -> Any:
    kind = _ARG_TYPES[name]
    if kind is bool and isinstance(value, str):
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ConfigError(f"{name} must be true or false, not {value!r}.")
        return value.lower() in ("true", "1", "yes")
    try:
        return kind(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} must be a {kind.__name__}, not {value!r}.") from exc


def build_app(args: Mapping[str, Any]) -> Application:
    """The application for ``serve run`` / a Serve config file: ``engine=... replicas=...``.

    Arguments (strings from the command line, typed values from YAML): ``engine``, ``model_dir``,
    ``device``, ``dtype``, ``vae``; ``replicas``, ``gpus_per_replica`` (1 for a GPU each, 0.5 for
    two on a card), ``cpus_per_replica``, or autoscaling with ``min_replicas``, ``max_replicas``,
    ``target_ongoing_requests``; ``max_waiting``, ``max_batch``, ``max_queue``, ``batch_wait_s``,
    ``max_images``, ``max_prompt_chars``, ``request_timeout_s``; ``token_env`` (the variable that
    holds the token, default ``S2I_SERVER_TOKEN``) or ``no_auth=true``.
    """
    unknown = sorted(set(args) - set(_ARG_TYPES))
    if unknown:
        raise ConfigError(
            f"Unknown argument(s) {', '.join(unknown)}; the known ones: {', '.join(_ARG_TYPES)}."
        )
    given = {name: _typed(name, value) for name, value in args.items() if value is not None}
    recipe = EngineRecipe(
        name=given.get("engine", "dalle-mini"),
        model_dir=given.get("model_dir"),
        device=given.get("device"),
        dtype=given.get("dtype"),
        vae=given.get("vae"),
    )
    scaling = ScalingOptions(
        replicas=given.get("replicas", 1),
        gpus_per_replica=given.get("gpus_per_replica", 0.0),
        cpus_per_replica=given.get("cpus_per_replica", 1.0),
        min_replicas=given.get("min_replicas"),
        max_replicas=given.get("max_replicas"),
        target_ongoing_requests=given.get("target_ongoing_requests"),
        max_waiting=given.get("max_waiting"),
    )
    replica = ReplicaOptions(
        max_batch=given.get("max_batch"),
        max_queue=given.get("max_queue", DEFAULT_MAX_QUEUE),
        batch_wait_s=given.get("batch_wait_s", DEFAULT_BATCH_WAIT_S),
    )
    ingress = IngressOptions(
        token_env=None if given.get("no_auth", False) else given.get("token_env", TOKEN_ENV),
        max_images=given.get("max_images", DEFAULT_MAX_IMAGES),
        max_prompt_chars=given.get("max_prompt_chars", DEFAULT_MAX_PROMPT_CHARS),
        request_timeout_s=given.get("request_timeout_s", DEFAULT_REQUEST_TIMEOUT_S),
    )
    return image_app(recipe, scaling=scaling, replica=replica, ingress=ingress)
