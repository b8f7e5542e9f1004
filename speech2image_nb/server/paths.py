"""The request path every later layer sees: repeated slashes made one, the URL token taken out.

Two things browsers send that the routes should not have to know about:

- ``//generate``: the DALL-E Playground UI appends ``/generate`` to the backend URL as typed, so a
  URL typed with a trailing slash gives a doubled slash (its own Flask backend accepts that).
- ``/t/<token>/generate``: the Playground UI cannot send an ``Authorization`` header, so a server
  with a token also takes it as the first path segments (the backend URL ``https://host/t/<token>``).
  The token is compared in constant time. The right one is removed from the path (and the
  request counts as authorized, see :mod:`.auth`); a wrong one is replaced by ``redacted``, so
  the request finds no route and gets 401.

This middleware is the outermost one, and it rewrites the scope *in place*: uvicorn's access log
prints ``scope["path"]`` of that same dictionary after the answer, so the token reaches no log
line, preflight requests (answered by the CORS middleware inside this one) included.
"""

from __future__ import annotations

import hmac
import re
from urllib.parse import quote

from starlette.types import ASGIApp, Receive, Scope, Send

from ..images.protocol import URL_TOKEN_PREFIX

__all__ = ["REDACTED", "CanonicalPath", "url_token_accepted"]

REDACTED = "redacted"  # stands in the path for a wrong URL token
REPEATED_SLASHES = re.compile(r"//+")


def url_token_accepted(scope: Scope) -> bool:
    """True when :class:`CanonicalPath` took the right token out of this request's path."""
    return scope.get("state", {}).get("url_token") is True


class CanonicalPath:
    """ASGI middleware: collapse repeated slashes; with ``token``, take ``/t/<token>`` out of the path."""

    def __init__(self, app: ASGIApp, *, token: str | None = None) -> None:
        if token is not None and not token:
            raise ValueError("token must not be empty")
        self.app = app
        self._token = token.encode() if token is not None else None

    def canonical(self, scope: Scope) -> str:
        """The path the routes see; notes in ``scope["state"]`` whether a URL token was accepted."""
        path = REPEATED_SLASHES.sub("/", scope["path"])
        if self._token is None or not (path + "/").startswith(URL_TOKEN_PREFIX):
            return path
        given, _, rest = path[len(URL_TOKEN_PREFIX) :].partition("/")
        accepted = hmac.compare_digest(given.encode("utf-8", "replace"), self._token)
        scope.setdefault("state", {})["url_token"] = accepted
        return "/" + rest if accepted else f"{URL_TOKEN_PREFIX}{REDACTED}/{rest}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            path = self.canonical(scope)
            if path != scope["path"]:
                scope["path"] = path
                scope["raw_path"] = quote(path).encode("ascii")
        await self.app(scope, receive, send)
