"""The server-sent events of one streaming request, from the batcher's events to the wire's bytes.

The stream ends after the last image with ``done``, or with one ``error`` event; an image the
classroom filter withheld goes out as its placeholder with ``"withheld": true``; a keepalive
comment goes out whenever nothing else did for :data:`KEEPALIVE_S`. If the client goes away the
response generator is closed, and closing it cancels the request's remaining work.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

from ..images.protocol import (
    KEEPALIVE,
    DoneEvent,
    ErrorEvent,
    GenerateRequest,
    ImageEvent,
    ProgressEvent,
    encode_event,
)
from .batcher import Failed, Ticket
from .error_handlers import engine_failure
from .screening import is_withheld

__all__ = ["KEEPALIVE_S", "server_timings", "stream_events"]

KEEPALIVE_S = 15.0  # an SSE comment at least this often keeps tunnels and proxies from timing out


def server_timings(ticket: Ticket, encode_s: float) -> dict[str, float]:
    """The ``timings`` of an answer: seconds queued, generating and encoding, rounded to 0.1 ms."""
    return {
        "queued_s": round(ticket.queued_s, 4),
        "generate_s": round(ticket.generate_s, 4),
        "encode_s": round(encode_s, 4),
    }


async def stream_events(
    ticket: Ticket, req: GenerateRequest, *, seed: int, engine_name: str, timeout_s: float
) -> AsyncIterator[bytes]:
    """The SSE bytes of ``ticket`` until its images are all sent, it fails, or ``timeout_s`` passes."""
    assert ticket.events is not None
    clock = asyncio.get_running_loop().time
    deadline = clock() + timeout_s
    sent = 0
    encode_s = 0.0
    try:
        while sent < req.num_images:
            remaining = deadline - clock()
            if remaining <= 0:
                yield encode_event(ErrorEvent("timeout", "The images took too long."))
                return
            try:
                event = await asyncio.wait_for(ticket.events.get(), min(KEEPALIVE_S, remaining))
            except asyncio.TimeoutError:
                yield KEEPALIVE
                continue
            if isinstance(event, Failed):
                error = engine_failure(event.error)
                yield encode_event(ErrorEvent(error.code, error.message))
                return
            if not isinstance(event, (ImageEvent, ProgressEvent)):
                yield encode_event(event)
                continue
            if isinstance(event, ImageEvent) and is_withheld(event.image):
                event = dataclasses.replace(event, withheld=True)  # the placeholder, said as such
            started = clock()
            data = await asyncio.to_thread(encode_event, event, image_format=req.image_format)
            if isinstance(event, ImageEvent):
                encode_s += clock() - started
                sent += 1
            yield data
        done = DoneEvent(seed, server_timings(ticket, encode_s), engine_name, req.text, req.prompt_truncated)
        yield encode_event(done)
    finally:
        if not ticket.future.done() or sent < req.num_images:
            ticket.cancel()
