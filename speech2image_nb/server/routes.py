"""The image server's routes: health, generate (also at ``/dalle``) and generate with streaming.

Each route reads the engine, the batcher and the settings through the dependencies of
:mod:`.state`, and the validated request through :func:`read_generate_request`, which also
refuses a prompt the classroom filter blocks (:func:`~.screening.prompt_refusal`) before anything
is queued; what the wire looks like is :mod:`speech2image_nb.images.protocol`'s business.
Pictures the filter withheld (:func:`~.screening.is_withheld`) are reported and never saved.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import secrets
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from .. import __version__
from ..images.protocol import (
    GENERATE_ROUTE,
    HEALTH_ROUTE,
    LEGACY_GENERATE_ROUTE,
    MAX_BODY_BYTES,
    RANDOM_SEED_MAX,
    STREAM_ROUTE,
    ErrorEvent,
    GenerateAnswer,
    GenerateRequest,
    encode_event,
    encode_image,
    parse_generate_request,
)
from .auth import is_authorized
from .batcher import QueueFullError, Ticket
from .error_handlers import ApiError, engine_failure
from .image_source import ImageSource
from .openapi import GENERATE_RESPONSES, STREAM_RESPONSES
from .prompts import fit_prompt
from .screening import is_withheld, prompt_refusal
from .state import BatcherDep, ConfigDep, EngineDep, RefusalsDep
from .streaming import server_timings, stream_events

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["read_body", "read_generate_request", "router"]

router = APIRouter()


async def read_body(request: Request, *, limit_bytes: int = MAX_BODY_BYTES) -> bytes:
    """The raw body, refusing more than ``limit_bytes`` without reading it all."""
    too_large = ApiError("payload_too_large", f"The request body is larger than {limit_bytes} bytes.")
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


@dataclasses.dataclass(frozen=True)
class CheckedRequest:
    """A validated request and, when the classroom filter refused its prompt, the answer to give."""

    request: GenerateRequest
    refusal: ApiError | None


async def read_checked_request(
    request: Request, engine: EngineDep, config: ConfigDep, refusals: RefusalsDep
) -> CheckedRequest:
    """The validated request body, its prompt cut to what the engine reads, and the filter's
    refusal of the whole prompt (logged in the server's refusal log) if any."""
    raw = await read_body(request)
    req = parse_generate_request(raw, limits=config.limits, validate_options=engine.validate_options)
    where = f"server:{request.scope.get('path', '')}"  # the canonical path: never the URL token
    refusal = prompt_refusal(req.text, config.safety, refusals, where=where)
    return CheckedRequest(fit_prompt(req, engine, max_chars=config.limits.max_prompt_chars), refusal)


async def read_generate_request(
    checked: Annotated[CheckedRequest, Depends(read_checked_request)],
) -> GenerateRequest:
    """The validated request (a dependency of the generate routes); a refused prompt is answered
    ``prompt_blocked`` (422) here, before the route queues anything."""
    if checked.refusal is not None:
        raise checked.refusal
    return checked.request


GenerateDep = Annotated[GenerateRequest, Depends(read_generate_request)]
CheckedDep = Annotated[CheckedRequest, Depends(read_checked_request)]


async def submit(images: ImageSource, req: GenerateRequest, *, stream: bool) -> tuple[Ticket, int]:
    """Queue the request with its seed (a random one when it named none)."""
    seed = req.seed or secrets.randbelow(RANDOM_SEED_MAX) + 1
    try:
        ticket = await images.submit(
            prompt=req.text, seed=seed, num_images=req.num_images, options=req.options, stream=stream
        )
    except QueueFullError as exc:
        raise ApiError(
            "queue_full",
            f"The image server is busy; try again in {exc.retry_after_s} s.",
            headers={"Retry-After": str(exc.retry_after_s)},
        ) from exc
    return ticket, seed


async def wait_for_images(ticket: Ticket, timeout_s: float) -> list[Image.Image]:
    """The ticket's images; its work is cancelled when this times out or is cancelled."""
    try:
        return await asyncio.wait_for(ticket.future, timeout_s)
    except asyncio.TimeoutError as exc:
        ticket.cancel()
        raise ApiError("timeout", f"The images took longer than {timeout_s:g} s.") from exc
    except asyncio.CancelledError:
        ticket.cancel()
        raise
    except Exception as exc:
        raise engine_failure(exc) from exc


def save_images(
    encoded: Sequence[str], image_format: str, folder: Path, *, withheld: Sequence[int] = ()
) -> None:
    """Write the images into ``folder``, named by a random id (never by the prompt); the ones the
    classroom filter ``withheld`` are not written (their placeholders neither)."""
    folder.mkdir(parents=True, exist_ok=True)
    request_id = uuid.uuid4().hex
    extension = "jpg" if image_format == "jpeg" else "png"
    for index, data in enumerate(encoded):
        if index not in withheld:
            (folder / f"{request_id}_{index}.{extension}").write_bytes(base64.b64decode(data))


@router.post(GENERATE_ROUTE, summary="Generate images", responses=GENERATE_RESPONSES)
@router.post(LEGACY_GENERATE_ROUTE, summary="Generate images (older name)", responses=GENERATE_RESPONSES)
async def generate(
    req: GenerateDep, engine: EngineDep, batcher: BatcherDep, config: ConfigDep
) -> JSONResponse:
    """Answer with all images at once, in the DALL-E Playground's shape."""
    ticket, seed = await submit(batcher, req, stream=False)
    images = await wait_for_images(ticket, config.request_timeout_s)
    clock = asyncio.get_running_loop().time
    encode_started = clock()
    encoded = await asyncio.to_thread(lambda: [encode_image(i, req.image_format) for i in images])
    encode_s = clock() - encode_started
    withheld = [index for index, image in enumerate(images) if is_withheld(image)]
    if config.save_dir is not None:
        await asyncio.to_thread(save_images, encoded, req.image_format, config.save_dir, withheld=withheld)
    answer = GenerateAnswer(
        images=encoded,
        image_format=req.image_format,
        seed=seed,
        engine=engine.name,
        prompt=req.text,
        timings=server_timings(ticket, encode_s),
        prompt_truncated=req.prompt_truncated,
        withheld=withheld,
    )
    return JSONResponse(answer.to_json())


@router.post(
    STREAM_ROUTE,
    summary="Generate images, streaming progress as server-sent events",
    responses=STREAM_RESPONSES,
)
async def generate_stream(
    checked: CheckedDep, engine: EngineDep, batcher: BatcherDep, config: ConfigDep
) -> StreamingResponse:
    """Answer with server-sent events: queued, progress (with previews), each image, done.

    A prompt the classroom filter refuses is answered with a stream of one ``error`` event
    (``prompt_blocked``), where a streaming client looks for failures; nothing is queued.
    """
    if checked.refusal is not None:
        refusal = checked.refusal
        event = encode_event(ErrorEvent(refusal.code, refusal.message, refusal.category))
        return StreamingResponse(
            iter([event]), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )
    req = checked.request
    ticket, seed = await submit(batcher, req, stream=True)
    events = stream_events(
        ticket, req, seed=seed, engine_name=engine.name, timeout_s=config.request_timeout_s
    )
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get(HEALTH_ROUTE, summary="Health check", responses={200: {"description": '{"success": true, ...}'}})
async def health(request: Request, batcher: BatcherDep, config: ConfigDep) -> dict[str, Any]:
    """``{"success": true}``, and the engine, limits and queue for a caller allowed to see them."""
    if config.needs_token and not is_authorized(request):
        return {"success": True}
    return {
        "success": True,
        **batcher.engine.describe(),
        "version": __version__,
        "max_images": config.limits.max_images,
        "max_prompt_chars": config.limits.max_prompt_chars,
        "max_batch": batcher.max_batch,
        "queue": batcher.queue_length,
        "stream": True,
        "safety": {"level": config.safety.level, "pictures": config.checks_images},
    }
