"""The image server's app: DALL-E Playground compatible, plus seeds, streaming, batching and auth.

:func:`create_app` assembles the parts, each in its own module: the wire contract
(:mod:`speech2image_nb.images.protocol`, described in ``docs/image-server-api.md``), the routes
(:mod:`.routes`), what they read from ``app.state`` (:mod:`.settings`, :mod:`.state`), the path
clean-up and URL token (:mod:`.paths`), the token check (:mod:`.auth`), how much of a prompt the
engine reads (:mod:`.prompts`), the error answers (:mod:`.error_handlers`), the OpenAPI description
(:mod:`.openapi`), the batcher that runs the engine (:mod:`.batcher`), behind the seam of
:mod:`.image_source`, and the classroom filter (:mod:`.screening`: the prompt check before the
engine, the picture check inside the engine's call). The engine, then the picture check's
classifier, load in the app's lifespan, on the engine's thread, never at construction.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from .. import __version__
from ..images.protocol import (
    DEFAULT_MAX_IMAGES,
    DEFAULT_MAX_PROMPT_CHARS,
    GenerateRequest,
    RequestLimits,
    encode_image,
)
from ..safety import Policy, RefusalLog
from ..safety.images import ImageChecker
from ..safety.policy import warn_off_once
from .auth import BearerAuth
from .batcher import DEFAULT_BATCH_WAIT_S
from .engines.base import Engine, LoadProgress
from .error_handlers import ApiError, install_error_handlers
from .image_source import ImageSource, LocalImages
from .openapi import install_openapi
from .paths import CanonicalPath
from .routes import router
from .settings import DEFAULT_MAX_QUEUE, DEFAULT_REQUEST_TIMEOUT_S, ServerConfig

__all__ = ["ApiError", "GenerateRequest", "create_app", "encode_image"]


def _lifespan(
    source: ImageSource, load_progress: LoadProgress | None
) -> Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]:
    """Start the image source at start-up (the local one loads the engine, then the picture
    check); stop it at shutdown."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            await source.start(load_progress)
        except BaseException as exc:
            app.state.load_error = exc
            raise
        app.state.engine = source.engine
        app.state.batcher = source
        try:
            yield
        finally:
            await source.stop()

    return lifespan


def create_app(
    engine: Engine,
    *,
    token: str | None = None,
    max_images: int = DEFAULT_MAX_IMAGES,
    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS,
    max_queue: int = DEFAULT_MAX_QUEUE,
    max_batch: int | None = None,
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
    save_dir: str | Path | None = None,
    cors_origins: Sequence[str] = ("*",),
    load_progress: LoadProgress | None = None,
    batch_wait_s: float = DEFAULT_BATCH_WAIT_S,
    safety: Policy | None = None,
    image_checker: ImageChecker | str | None = None,
    image_source: ImageSource | None = None,
) -> FastAPI:
    """Build the image server around ``engine`` (loaded in the app's lifespan, not here).

    Parameters
    ----------
    engine
        The image engine; its ``load()`` runs in the engine's worker thread when the server starts.
    token
        When set, every route but ``GET /`` needs it: ``Authorization: Bearer <token>``, or the
        path prefix ``/t/<token>`` (for clients that cannot send headers).
    max_images, max_prompt_chars, max_queue, max_batch, request_timeout_s
        Limits, as the command-line flags of the same names (``max_prompt_chars``: how much of a
        prompt is read when the engine does not say; a longer one is cut, not refused).
    save_dir
        Also write every image there, named by a random id (never by the prompt).
    cors_origins
        Origins the browser may call from (default any: the Playground UI runs elsewhere).
    load_progress
        Called with ``(fraction, message)`` while the engine loads.
    batch_wait_s
        Longest gathering window of the batcher (see :mod:`.batcher`).
    safety
        The classroom filter (default :meth:`Policy.resolve() <speech2image_nb.safety.Policy.resolve>`:
        ``strict`` unless the environment says otherwise). Refused prompts are answered
        ``prompt_blocked`` before any engine work; with pictures checked (any level but ``off``,
        unless ``check_images`` is False) every image and preview is checked before it is sent.
    image_checker
        The picture check: an :class:`~speech2image_nb.safety.images.ImageChecker`, or the model
        to load (hub repo id or folder); default ``$S2I_SAFETY_IMAGE_MODEL`` or the default model,
        loaded after the engine at start-up, on the engine's device. Not loaded when pictures are
        not checked.
    image_source
        What makes the images (see :mod:`.image_source`); default: ``engine`` and our batcher in
        this process (with ``max_batch``, ``max_queue``, ``batch_wait_s`` and the picture check).
        Ray Serve passes its replicas here (each checks its own pictures); ``engine`` then only
        describes the options (OpenAPI) and is not loaded.
    """
    policy = Policy.resolve() if safety is None else safety
    if not policy.enabled:
        warn_off_once()  # also for a Policy built without resolve()
    config = ServerConfig(
        limits=RequestLimits(max_images=max_images, max_prompt_chars=max_prompt_chars),
        request_timeout_s=request_timeout_s,
        save_dir=Path(save_dir) if save_dir is not None else None,
        needs_token=token is not None,
        safety=policy,
    )
    refusals = RefusalLog()
    if image_source is None:
        image_source = LocalImages.build(
            engine,
            max_batch=max_batch,
            max_queue=max_queue,
            batch_wait_s=batch_wait_s,
            image_checker=image_checker if config.checks_images else None,
            check_images=config.checks_images,
            refusals=refusals,
        )
    app = FastAPI(
        title="speech2image_nb image server",
        version=__version__,
        description="DALL-E Playground compatible image generation, with seeds, streaming and batching.",
        lifespan=_lifespan(image_source, load_progress),
        docs_url=None,
        redoc_url=None,
    )
    app.state.config = config
    app.state.refusals = refusals
    app.include_router(router)
    install_openapi(app, engine, config.limits)
    install_error_handlers(app)
    _add_middleware(app, token=token, cors_origins=cors_origins)
    return app


def _add_middleware(app: FastAPI, *, token: str | None, cors_origins: Sequence[str]) -> None:
    """From the outside in: the canonical path (before anything sees or logs it), CORS, auth.

    Auth sits inside CORS, so that preflights pass and 401 answers carry CORS headers too.
    """
    if token is not None:
        app.add_middleware(BearerAuth, token=token)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(cors_origins),
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["*"],
        expose_headers=["Retry-After"],
        max_age=600,
    )
    app.add_middleware(CanonicalPath, token=token)
