"""Every failure of the image server as the documented JSON error answer, never HTML or a traceback.

Routes raise :class:`ApiError` (or let :class:`~speech2image_nb.images.protocol.RequestRejected`
from the request parser through); the framework raises its own HTTP exceptions (404, 405) and
validation errors; anything else is a bug. The handlers installed by
:func:`install_error_handlers` answer each of them with ``{"error": {"code", "message"}}`` and the
status of its code, as :mod:`speech2image_nb.images.protocol` defines them.

Every 4xx answer is also logged (``INFO``) with the method, the path, the status, the code and
the message, so a server log says why a client failed. The path is the one :mod:`.paths` made,
which never holds the token; messages never quote the prompt, and the logged message is cut to
:data:`LOGGED_MESSAGE_CHARS` in case one quotes a long field value.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from ..errors import EngineError
from ..images.protocol import RequestRejected, code_of, error_body

__all__ = ["ApiError", "engine_failure", "error_response", "install_error_handlers"]

logger = logging.getLogger(__name__)

LOGGED_MESSAGE_CHARS = 120

#: what the framework's own errors say, by status
FRAMEWORK_MESSAGES = {
    404: "There is no such route on this image server; use POST /generate.",
    405: "This route does not accept that method.",
}


class ApiError(RequestRejected):
    """An error answer: a ``code`` (its HTTP ``status`` follows from it), a message, extra headers
    (and for ``prompt_blocked``, the classroom filter's ``category``)."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        category: str | None = None,
    ) -> None:
        super().__init__(code, message, category=category)
        self.headers = dict(headers or {})


def error_response(
    scope: Scope,
    code: str,
    message: str,
    *,
    status: int,
    headers: Mapping[str, str] | None = None,
    category: str | None = None,
) -> JSONResponse:
    """The documented error body with ``status``; a 4xx is logged first (see the module docstring)."""
    if 400 <= status < 500:
        shown = message if len(message) <= LOGGED_MESSAGE_CHARS else message[:LOGGED_MESSAGE_CHARS] + "..."
        method, path = scope.get("method", ""), scope.get("path", "")
        logger.info("%s %s -> %d %s: %s", method, path, status, code, shown)
    return JSONResponse(error_body(code, message, category=category), status_code=status, headers=headers)


def engine_failure(exc: BaseException) -> ApiError:
    """The answer to an engine that failed: its own message when it gave one, never a traceback."""
    if isinstance(exc, EngineError):
        return ApiError("engine_error", str(exc)[:500] or "The image engine failed.")
    return ApiError("engine_error", f"The image engine failed ({type(exc).__name__}); see the server log.")


async def _rejected(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestRejected)
    headers = getattr(exc, "headers", None)
    return error_response(
        request.scope, exc.code, exc.message, status=exc.status, headers=headers, category=exc.category
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = FRAMEWORK_MESSAGES.get(exc.status_code, str(exc.detail)[:200])
    headers = getattr(exc, "headers", None)
    return error_response(
        request.scope, code_of(exc.status_code), message, status=exc.status_code, headers=headers
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    return error_response(request.scope, "invalid_request", "The request is not valid.", status=422)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error("unexpected error on %s %s: %s", request.method, request.url.path, type(exc).__name__)
    return error_response(
        request.scope, "internal_error", "The image server failed unexpectedly; see its log.", status=500
    )


def install_error_handlers(app: FastAPI) -> None:
    """Answer every failure with the documented JSON error body."""
    app.add_exception_handler(RequestRejected, _rejected)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _internal_error)
