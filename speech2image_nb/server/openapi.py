"""The OpenAPI description of the image server, written from :mod:`speech2image_nb.images.protocol`.

The generate routes read their body themselves (the Playground sends JSON as ``text/plain``, which
a declared pydantic body would answer with 422), so FastAPI cannot derive the request schema: it is
added here, with the engine's own options, by overriding ``app.openapi`` (FastAPI's "extending
OpenAPI" recipe). Schemathesis tests the server against exactly this schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from ..images.protocol import (
    ERROR_STATUS,
    EVENT_NAMES,
    GENERATE_ROUTE,
    IMAGE_FORMATS,
    LEGACY_GENERATE_ROUTE,
    MAX_PROMPT_CHARS_ACCEPTED,
    SEED_MAX,
    STREAM_ROUTE,
    RequestLimits,
)
from .engines.base import Engine

__all__ = ["GENERATE_RESPONSES", "STREAM_RESPONSES", "install_openapi", "request_schema"]

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "category": {"type": "string", "description": "prompt_blocked only: the filter's category"},
            },
        }
    },
}
ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["generatedImgs", "generatedImgsFormat"],
    "properties": {
        "generatedImgs": {"type": "array", "items": {"type": "string", "format": "byte"}},
        "generatedImgsFormat": {"type": "string", "enum": list(IMAGE_FORMATS)},
        "seed": {"type": "integer"},
        "engine": {"type": "string"},
        "prompt": {"type": "string"},
        "prompt_truncated": {
            "type": ["object", "null"],
            "description": "null, or how much of a longer prompt the engine read",
            "properties": {
                "sent_chars": {"type": "integer"},
                "used_chars": {"type": "integer"},
                "limit": {"type": "string"},
            },
        },
        "timings": {"type": "object", "additionalProperties": {"type": "number"}},
        "withheld": {
            "type": "array",
            "items": {"type": "integer"},
            "description": "indexes of images the classroom filter withheld (each is a neutral placeholder)",
        },
    },
}
EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "queued {position}, progress {step, total, preview?}, image {index, data, format, "
    "withheld?}, done {seed, engine, prompt, prompt_truncated, timings}, error {code, message, category?} "
    "(a prompt the classroom filter refuses: one error event, prompt_blocked); data is JSON",
    "properties": {
        "event": {"type": "string", "enum": list(EVENT_NAMES.values())},
        "data": {"type": "string"},
    },
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    codes = {status: [c for c, s in ERROR_STATUS.items() if s == status] for status in statuses}
    return {
        status: {
            "description": ", ".join(codes[status]) or "error",
            "content": {"application/json": {"schema": ERROR_SCHEMA}},
        }
        for status in statuses
    }


GENERATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "images", "content": {"application/json": {"schema": ANSWER_SCHEMA}}},
    **_errors(400, 401, 413, 422, 500, 503, 504),
}
STREAM_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "events", "content": {"text/event-stream": {"schema": EVENT_SCHEMA}}},
    **_errors(400, 401, 413, 422, 503),
}


def request_schema(engine: Engine, limits: RequestLimits) -> dict[str, Any]:
    """JSON schema of a generate request for this engine (its options typed where it says how)."""
    option_schema: Mapping[str, Any] = getattr(engine, "option_schema", {})
    options = {name: dict(option_schema.get(name, {})) for name in sorted(engine.option_names)}
    return {
        "type": "object",
        "required": ["text"],
        "properties": {
            "text": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_PROMPT_CHARS_ACCEPTED,
                "pattern": "\\S",
                "description": "the prompt; cut to what the engine reads (the answer says so)",
            },
            "num_images": {
                "type": "integer",
                "minimum": 1,
                "maximum": limits.max_images,
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


def install_openapi(app: FastAPI, engine: Engine, limits: RequestLimits) -> None:
    """Make ``app.openapi()`` describe the generate routes' body for ``engine`` and ``limits``."""
    body = {
        "required": True,
        "description": "read as JSON whatever the content type (the Playground sends text/plain)",
        "content": {"application/json": {"schema": request_schema(engine, limits)}},
    }

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            for route in (GENERATE_ROUTE, LEGACY_GENERATE_ROUTE, STREAM_ROUTE):
                schema["paths"][route]["post"]["requestBody"] = body
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
