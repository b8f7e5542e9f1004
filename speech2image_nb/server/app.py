"""The image server's HTTP API: DALL-E Playground compatible, plus seeds, streaming and auth.

The contract is ``specs/image-server-api.md``. In short:

- ``GET /`` -> ``{"success": true, ...}`` (only ``{"success": true}`` without a valid token when
  one is set); ``POST /dalle`` and ``POST /generate`` take ``{"text", "num_images", ...}`` and
  answer ``{"generatedImgs": [base64...], "generatedImgsFormat": "jpeg", "seed", ...}``;
  ``POST /generate/stream`` answers server-sent events.
- The body is parsed as JSON whatever the content type, because the Playground web UI sends it as
  ``text/plain``; a declared pydantic body would answer that with 422.
- Every failure is a JSON body ``{"error": {"code", "message"}}``, never HTML or a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hmac
import io
import json
import logging
import secrets
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import __version__
from ..errors import EngineError
from .batcher import Batcher, Failed, ImageReady, Progress, Queued, QueueFullError, Ticket
from .engines.base import Engine, LoadProgress

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["ApiError", "GenerateRequest", "create_app", "encode_image", "parse_generate_body"]

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024  # request bodies above this are refused with 413
KEEPALIVE_S = 15.0  # an SSE comment at least this often keeps tunnels and proxies from timing out
RANDOM_SEED_MAX = 2**31 - 1  # random seeds stay small enough for any JSON number parser
SEED_MAX = 2**53 - 1  # the largest integer a JavaScript client can send exactly
IMAGE_FORMATS = ("jpeg", "png")
BASE_FIELDS = frozenset({"text", "num_images", "seed", "image_format"})
JPEG_QUALITY = 90
PREVIEW_JPEG_QUALITY = 70

#: error codes by HTTP status, for errors raised by the framework (404, 405, ...)
STATUS_CODES: dict[int, str] = {
    400: "invalid_json",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    422: "invalid_request",
    503: "queue_full",
    504: "timeout",
}


def generate_body_schema(engine: Engine, *, max_images: int, max_prompt_chars: int) -> dict[str, Any]:
    """JSON schema of a generate request for this engine (its knobs, typed when it says how)."""
    option_schema: Mapping[str, Any] = getattr(engine, "option_schema", {})
    options = {name: dict(option_schema.get(name, {})) for name in sorted(engine.option_names)}
    return {
        "type": "object",
        "required": ["text"],
        "properties": {
            "text": {
                "type": "string",
                "minLength": 1,
                "maxLength": max_prompt_chars,
                "pattern": "\\S",
                "description": "the prompt",
            },
            "num_images": {
                "type": "integer",
                "minimum": 1,
                "maximum": max_images,
                "description": "default 1",
            },
            "seed": {
                "type": ["integer", "null"],
                "minimum": 0,
                "maximum": SEED_MAX,
                "description": "0, null or absent = random",
            },
            "image_format": {"type": "string", "enum": list(IMAGE_FORMATS)},
            **options,
        },
        "additionalProperties": False,
    }


SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "queued {position}, progress {step, total, preview?}, image {index, data}, "
    "done {seed, timings}, error {code, message}; data is JSON",
    "properties": {
        "event": {"type": "string", "enum": ["queued", "progress", "image", "done", "error"]},
        "data": {"type": "string"},
    },
}
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}
GENERATED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["generatedImgs", "generatedImgsFormat"],
    "properties": {
        "generatedImgs": {"type": "array", "items": {"type": "string", "format": "byte"}},
        "generatedImgsFormat": {"type": "string", "enum": list(IMAGE_FORMATS)},
        "seed": {"type": "integer"},
        "engine": {"type": "string"},
        "prompt": {"type": "string"},
        "timings": {"type": "object", "additionalProperties": {"type": "number"}},
    },
}


def _error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {
        status: {
            "description": STATUS_CODES.get(status, "error"),
            "content": {"application/json": {"schema": ERROR_SCHEMA}},
        }
        for status in statuses
    }


class ApiError(Exception):
    """An error answer: HTTP ``status``, machine ``code`` and a one-sentence ``message``."""

    def __init__(self, status: int, code: str, message: str, *, headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The documented error body (a message echoing request text is made valid UTF-8 first)."""
    message = message.encode("utf-8", "replace").decode("utf-8")
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


@dataclasses.dataclass(frozen=True)
class GenerateRequest:
    """A validated generation request."""

    text: str
    num_images: int
    seed: int | None  # None = choose a random seed
    image_format: str
    options: Mapping[str, Any]


def as_int(value: Any) -> int | None:
    """``value`` as an int if it is a JSON integer (``2``, ``2.0``); None for ``true``, ``2.5``, ``"2"``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def parse_generate_body(
    raw: bytes, *, engine: Engine, max_images: int, max_prompt_chars: int
) -> GenerateRequest:
    """Parse and validate a request body (JSON whatever the content type); raise :class:`ApiError`.

    A body that is a JSON *string* holding a JSON object is accepted too (a fork of the Playground
    double-encodes its requests).
    """
    try:
        body = json.loads(raw.decode("utf-8"))
        if isinstance(body, str) and body.lstrip().startswith("{"):
            body = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ApiError(400, "invalid_json", "The request body is not valid JSON.") from exc
    if not isinstance(body, dict):
        raise ApiError(
            422, "invalid_request", 'The request body must be a JSON object like {"text": "a fox"}.'
        )
    text = body.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ApiError(422, "invalid_request", 'The field "text" must be a non-empty string.')
    # a lone surrogate (from a \udXXX escape) cannot be encoded anywhere later: make it "?"
    text = text.strip().encode("utf-8", "replace").decode("utf-8")
    if len(text) > max_prompt_chars:
        raise ApiError(422, "invalid_request", f"The prompt is longer than {max_prompt_chars} characters.")
    num_images = as_int(body.get("num_images", 1))
    if num_images is None or not 1 <= num_images <= max_images:
        raise ApiError(422, "invalid_request", f'"num_images" must be an integer from 1 to {max_images}.')
    seed = body.get("seed")
    if seed is not None and ((seed := as_int(seed)) is None or not 0 <= seed <= SEED_MAX):
        raise ApiError(422, "invalid_request", f'"seed" must be an integer from 0 to {SEED_MAX}.')
    image_format = body.get("image_format", "jpeg")
    if image_format not in IMAGE_FORMATS:
        raise ApiError(422, "invalid_request", '"image_format" must be "jpeg" or "png".')
    extra = {k: v for k, v in body.items() if k not in BASE_FIELDS}
    try:
        options = engine.validate_options(extra)
    except ValueError as exc:
        raise ApiError(422, "invalid_request", str(exc)[:300]) from exc
    return GenerateRequest(text, num_images, seed or None, image_format, options)


def encode_image(image: Image.Image, image_format: str, *, quality: int = JPEG_QUALITY) -> str:
    """Base64 of the image as JPEG or PNG (no ``data:`` prefix, as the Playground expects)."""
    buffer = io.BytesIO()
    if image_format == "png":
        image.save(buffer, format="PNG")
    else:
        image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# --- auth --------------------------------------------------------------------------------------


class BearerAuth:
    """ASGI middleware: every route but ``GET /`` needs ``Authorization: Bearer <token>``.

    Compared with :func:`hmac.compare_digest` so the time taken says nothing about the token.
    It sits inside the CORS middleware, so preflight requests (which never carry credentials) and
    the 401 answers both get CORS headers.
    """

    def __init__(self, app: ASGIApp, *, token: str) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()

    def authorized(self, scope: Scope) -> bool:
        """True when the request carries the right bearer token."""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                return hmac.compare_digest(value.strip(), self._expected)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        open_route = scope["path"] == "/" and scope["method"] in ("GET", "HEAD")
        ok = self.authorized(scope)
        scope.setdefault("state", {})["authorized"] = ok
        if ok or open_route:
            await self.app(scope, receive, send)
            return
        response = error_response(
            401,
            "unauthorized",
            "This image server needs a token: send the header Authorization: Bearer <token>.",
            {"WWW-Authenticate": "Bearer"},
        )
        await response(scope, receive, send)


# --- dependencies ------------------------------------------------------------------------------


def get_engine(request: Request) -> Engine:
    """The loaded engine (tests may override this dependency)."""
    engine: Engine = request.app.state.engine
    return engine


def get_batcher(request: Request) -> Batcher:
    """The running batcher."""
    batcher: Batcher = request.app.state.batcher
    return batcher


async def read_body(request: Request, *, limit_bytes: int = MAX_BODY_BYTES) -> bytes:
    """The raw body, refusing more than ``limit_bytes`` without reading it all."""
    too_large = ApiError(413, "payload_too_large", f"The request body is larger than {limit_bytes} bytes.")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit_bytes:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit_bytes:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


EngineDep = Annotated[Engine, Depends(get_engine)]
BatcherDep = Annotated[Batcher, Depends(get_batcher)]

# --- the app -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Limits:
    """The server's limits (flags with defaults, see the spec)."""

    max_images: int = 9
    max_prompt_chars: int = 500
    request_timeout_s: float = 300.0


def create_app(
    engine: Engine,
    *,
    token: str | None = None,
    max_images: int = 9,
    max_prompt_chars: int = 500,
    max_queue: int = 64,
    max_batch: int | None = None,
    request_timeout_s: float = 300.0,
    save_dir: str | Path | None = None,
    cors_origins: Sequence[str] = ("*",),
    load_progress: LoadProgress | None = None,
    batch_wait_s: float | None = None,
) -> FastAPI:
    """Build the image server around ``engine`` (loaded in the app's lifespan, not here).

    Parameters
    ----------
    engine
        The image engine; its ``load()`` runs in a worker thread when the server starts.
    token
        When set, every route but ``GET /`` needs ``Authorization: Bearer <token>``.
    max_images, max_prompt_chars, max_queue, max_batch, request_timeout_s
        Limits, as the command-line flags of the same names.
    save_dir
        Also write every image there, named by a random id (never by the prompt).
    cors_origins
        Origins the browser may call from (default any: the Playground UI runs elsewhere).
    load_progress
        Called with ``(fraction, message)`` while the engine loads.
    batch_wait_s
        Longest gathering window of the batcher (see :mod:`.batcher`).
    """
    if max_images < 1 or max_prompt_chars < 1 or request_timeout_s <= 0:
        raise ValueError("max_images, max_prompt_chars and request_timeout_s must be positive")
    limits = Limits(max_images, max_prompt_chars, request_timeout_s)
    save_path = Path(save_dir) if save_dir is not None else None
    batcher_kwargs: dict[str, Any] = {"max_batch": max_batch, "max_queue": max_queue}
    if batch_wait_s is not None:
        batcher_kwargs["batch_wait_s"] = batch_wait_s

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher = Batcher(engine, **batcher_kwargs)
        await batcher.start()
        try:
            await batcher.run_in_engine_thread(engine.load, load_progress)
        except BaseException as exc:
            app.state.load_error = exc
            await batcher.stop()
            raise
        app.state.engine = engine
        app.state.batcher = batcher
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(
        title="speech2image_nb image server",
        version=__version__,
        description="DALL-E Playground compatible image generation, with seeds, streaming and batching.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.limits = limits

    async def read_request(request: Request, engine: Engine) -> GenerateRequest:
        raw = await read_body(request)
        return parse_generate_body(
            raw, engine=engine, max_images=limits.max_images, max_prompt_chars=limits.max_prompt_chars
        )

    def submit(batcher: Batcher, req: GenerateRequest, *, stream: bool) -> tuple[Ticket, int]:
        seed = req.seed or secrets.randbelow(RANDOM_SEED_MAX) + 1
        try:
            ticket = batcher.submit(
                prompt=req.text, seed=seed, num_images=req.num_images, options=req.options, stream=stream
            )
        except QueueFullError as exc:
            raise ApiError(
                503,
                "queue_full",
                f"The image server is busy; try again in {exc.retry_after_s} s.",
                headers={"Retry-After": str(exc.retry_after_s)},
            ) from exc
        return ticket, seed

    def engine_failure(exc: BaseException) -> ApiError:
        if isinstance(exc, EngineError):
            return ApiError(500, "engine_error", str(exc)[:500] or "The image engine failed.")
        return ApiError(
            500, "engine_error", f"The image engine failed ({type(exc).__name__}); see the server log."
        )

    def save_images(encoded: Sequence[str], image_format: str) -> None:
        assert save_path is not None
        save_path.mkdir(parents=True, exist_ok=True)
        request_id = uuid.uuid4().hex
        extension = "jpg" if image_format == "jpeg" else "png"
        for index, data in enumerate(encoded):
            (save_path / f"{request_id}_{index}.{extension}").write_bytes(base64.b64decode(data))

    async def generate(request: Request, engine: EngineDep, batcher: BatcherDep) -> JSONResponse:
        req = await read_request(request, engine)
        ticket, seed = submit(batcher, req, stream=False)
        try:
            images = await asyncio.wait_for(ticket.future, limits.request_timeout_s)
        except asyncio.TimeoutError as exc:
            ticket.cancel()
            raise ApiError(
                504, "timeout", f"The images took longer than {limits.request_timeout_s:g} s."
            ) from exc
        except asyncio.CancelledError:
            ticket.cancel()
            raise
        except Exception as exc:
            raise engine_failure(exc) from exc
        loop = asyncio.get_running_loop()
        encode_started = loop.time()
        encoded = await asyncio.to_thread(lambda: [encode_image(i, req.image_format) for i in images])
        if save_path is not None:
            await asyncio.to_thread(save_images, encoded, req.image_format)
        timings = {
            "queued_s": round(ticket.queued_s, 4),
            "generate_s": round(ticket.generate_s, 4),
            "encode_s": round(loop.time() - encode_started, 4),
        }
        return JSONResponse(
            {
                "generatedImgs": encoded,
                "generatedImgsFormat": req.image_format,
                "seed": seed,
                "engine": engine.name,
                "prompt": req.text,
                "timings": timings,
            }
        )

    generate_doc: dict[str, Any] = {
        "openapi_extra": {
            "requestBody": {
                "required": True,
                "description": "read as JSON whatever the content type (the Playground sends text/plain)",
                "content": {
                    "application/json": {
                        "schema": generate_body_schema(
                            engine, max_images=max_images, max_prompt_chars=max_prompt_chars
                        )
                    }
                },
            }
        },
        "responses": {
            200: {"description": "images", "content": {"application/json": {"schema": GENERATED_SCHEMA}}},
            **_error_responses(400, 401, 413, 422, 500, 503, 504),
        },
    }
    app.add_api_route("/generate", generate, methods=["POST"], summary="Generate images", **generate_doc)
    app.add_api_route(
        "/dalle", generate, methods=["POST"], summary="Generate images (older name)", **generate_doc
    )

    @app.post(
        "/generate/stream",
        summary="Generate images, streaming progress as server-sent events",
        openapi_extra=generate_doc["openapi_extra"],
        responses={
            200: {"description": "events", "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}}},
            **_error_responses(400, 401, 413, 422, 503),
        },
    )
    async def generate_stream(request: Request, engine: EngineDep, batcher: BatcherDep) -> StreamingResponse:
        req = await read_request(request, engine)
        ticket, seed = submit(batcher, req, stream=True)
        return StreamingResponse(
            _stream_events(ticket, req, seed, engine, limits, engine_failure),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.get("/", summary="Health check", responses={200: {"description": '{"success": true, ...}'}})
    async def health(request: Request, batcher: BatcherDep) -> dict[str, Any]:
        if token is not None and not request.scope.get("state", {}).get("authorized"):
            return {"success": True}
        return {
            "success": True,
            **batcher.engine.describe(),
            "version": __version__,
            "max_images": limits.max_images,
            "max_prompt_chars": limits.max_prompt_chars,
            "max_batch": batcher.max_batch,
            "queue": batcher.queue_length,
            "stream": True,
        }

    _install_error_handlers(app)
    if token is not None:
        if not token:
            raise ValueError("token must not be empty")
        app.add_middleware(BearerAuth, token=token)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(cors_origins),
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["*"],
        expose_headers=["Retry-After"],
        max_age=600,
    )
    return app


def _sse(event: str, data: Mapping[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def _stream_events(
    ticket: Ticket,
    req: GenerateRequest,
    seed: int,
    engine: Engine,
    limits: Limits,
    engine_failure: Any,
) -> AsyncIterator[bytes]:
    """The server-sent events of one streaming request; cancels the work if the client leaves."""
    assert ticket.events is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limits.request_timeout_s
    sent = 0
    encode_s = 0.0
    try:
        while sent < req.num_images:
            remaining = deadline - loop.time()
            if remaining <= 0:
                yield _sse("error", {"code": "timeout", "message": "The images took too long."})
                return
            try:
                event = await asyncio.wait_for(ticket.events.get(), min(KEEPALIVE_S, remaining))
            except asyncio.TimeoutError:
                yield b": keepalive\n\n"
                continue
            if isinstance(event, Queued):
                yield _sse("queued", {"position": event.position})
            elif isinstance(event, Progress):
                data: dict[str, Any] = {"step": event.step, "total": event.total}
                if event.preview is not None:
                    preview = event.preview
                    data["preview"] = await asyncio.to_thread(
                        encode_image, preview, "jpeg", quality=PREVIEW_JPEG_QUALITY
                    )
                yield _sse("progress", data)
            elif isinstance(event, ImageReady):
                started = loop.time()
                image = event.image
                encoded = await asyncio.to_thread(encode_image, image, req.image_format)
                encode_s += loop.time() - started
                sent += 1
                yield _sse("image", {"index": event.index, "data": encoded, "format": req.image_format})
            elif isinstance(event, Failed):
                error = engine_failure(event.error)
                yield _sse("error", {"code": error.code, "message": error.message})
                return
        timings = {
            "queued_s": round(ticket.queued_s, 4),
            "generate_s": round(ticket.generate_s, 4),
            "encode_s": round(encode_s, 4),
        }
        yield _sse("done", {"seed": seed, "engine": engine.name, "prompt": req.text, "timings": timings})
    finally:
        if not ticket.future.done() or sent < req.num_images:
            ticket.cancel()


def _install_error_handlers(app: FastAPI) -> None:
    """Every failure answers with the documented JSON error body."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = STATUS_CODES.get(exc.status_code, f"http_{exc.status_code}")
        message = {
            404: "There is no such route on this image server; use POST /generate.",
            405: "This route does not accept that method.",
        }.get(exc.status_code, str(exc.detail)[:200])
        return error_response(exc.status_code, code, message, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_request", "The request is not valid.")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        logger.error("unexpected error on %s %s: %s", request.method, request.url.path, type(exc).__name__)
        return error_response(500, "internal_error", "The image server failed unexpectedly; see its log.")
