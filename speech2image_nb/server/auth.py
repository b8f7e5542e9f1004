"""Who may use the image server: with a token set, every route but ``GET /`` needs it.

The token travels as ``Authorization: Bearer <token>``, or in the path as ``/t/<token>/...`` for
clients that cannot send headers (taken out of the path by :mod:`.paths`); it is compared with
:func:`hmac.compare_digest`, so the time taken says nothing about it. The check is an ASGI
middleware rather than a route dependency so that it also covers the framework's own answers
(404, 405, the OpenAPI schema): a caller without the token learns nothing, not even which routes
exist.
"""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from .error_handlers import error_response
from .paths import url_token_accepted

__all__ = ["BearerAuth", "is_authorized"]

UNAUTHORIZED_MESSAGE = (
    "This image server needs its token: send the header Authorization: Bearer <token>, "
    "or put it in the URL as https://<server>/t/<token>."
)


def is_authorized(request: Request) -> bool:
    """True when :class:`BearerAuth` found the right token on this request."""
    return bool(request.scope.get("state", {}).get("authorized"))


class BearerAuth:
    """ASGI middleware: every route but ``GET /`` needs the token, in the header or the path.

    It sits inside the CORS middleware, so preflight requests (which never carry credentials) and
    the 401 answers both get CORS headers.
    """

    def __init__(self, app: ASGIApp, *, token: str) -> None:
        if not token:
            raise ValueError("token must not be empty")
        self.app = app
        self._expected = f"Bearer {token}".encode()

    def authorized(self, scope: Scope) -> bool:
        """True when the request carries the right token (in the path, or as a bearer token)."""
        if url_token_accepted(scope):
            return True
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
            scope, "unauthorized", UNAUTHORIZED_MESSAGE, status=401, headers={"WWW-Authenticate": "Bearer"}
        )
        await response(scope, receive, send)
