"""Telling that an image server's public tunnel address is gone, from what the network says.

The server notebook on Colab reaches the outside through a quick tunnel (``server/tunnel.py``):
a cloudflared ``https://<words>.trycloudflare.com`` address, or an ngrok one. Each start of the
notebook makes a new address, so yesterday's ``speech2image_nb.connect(...)`` line leads nowhere
today. What "nowhere" looks like, and what this module takes as proof (nothing else):

- The name no longer resolves: the resolver answers that it does not exist (``EAI_NONAME``), for a
  host under a tunnel service's domain. A resolver that cannot be reached at all (``EAI_AGAIN``:
  no network) proves nothing about the tunnel and is not taken.
- Cloudflare's edge answers for a tunnel that is not connected: HTTP 530 with error 1033
  ("Cloudflare Tunnel error"), as an HTML page or as JSON (``"error_code": 1033``), whatever the
  host name.
- ngrok's edge answers for an endpoint that is offline: ``ERR_NGROK_3200`` in its error page (HTTP
  404), whatever the host name.

Pure functions only: the client (:mod:`speech2image_nb.images.client`) does the I/O.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from urllib.parse import urlsplit

__all__ = [
    "TUNNEL_DOMAINS",
    "edge_says_tunnel_gone",
    "is_tunnel_host",
    "name_does_not_exist",
    "tunnel_gone_message",
]

#: Domains whose subdomains are quick-tunnel addresses (cloudflared, ngrok's current and older ones).
TUNNEL_DOMAINS = (
    "trycloudflare.com",
    "ngrok-free.app",
    "ngrok-free.dev",
    "ngrok.app",
    "ngrok.dev",
    "ngrok.io",
)

CLOUDFLARE_TUNNEL_STATUS = 530  # Cloudflare's "origin unreachable" status; error 1033 names the tunnel
_NAME_MISSING = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


def is_tunnel_host(url: str) -> bool:
    """True when ``url``'s host is an address under one of :data:`TUNNEL_DOMAINS`."""
    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    return any(host.endswith("." + domain) for domain in TUNNEL_DOMAINS)


def name_does_not_exist(exc: BaseException) -> bool:
    """True when ``exc`` (or an error it wraps) is the resolver saying the host name does not exist.

    Walks ``requests``' and ``urllib3``'s wrapping (``args``, ``reason``, causes) down to the
    :class:`socket.gaierror`; a temporary failure (no DNS server reachable) is not "does not exist".
    """
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        error = pending.pop()
        if id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, socket.gaierror):
            return error.errno in _NAME_MISSING
        wrapped = (error.__cause__, error.__context__, getattr(error, "reason", None), *error.args)
        pending.extend(item for item in wrapped if isinstance(item, BaseException))
    return False


def edge_says_tunnel_gone(status: int, headers: Mapping[str, str], body: bytes) -> str:
    """Why a tunnel edge's answer means the tunnel is gone (a short phrase), or "" when it does not."""
    if status == CLOUDFLARE_TUNNEL_STATUS and b"1033" in body:
        return "Cloudflare error 1033: the tunnel is not connected"
    ngrok_code = headers.get("ngrok-error-code", "")
    if ngrok_code == "ERR_NGROK_3200" or (status == 404 and b"ERR_NGROK_3200" in body):
        return "ngrok ERR_NGROK_3200: the endpoint is offline"
    return ""


def tunnel_gone_message(url: str, reason: str) -> str:
    """The sentence for a gone tunnel: what was seen, and the fix (the server notebook's new line)."""
    return (
        f"The tunnel address {url} leads nowhere ({reason}): the server notebook gets a new address "
        "each time it starts: paste the new speech2image_nb.connect(...) line it prints, run it, "
        "and try again."
    )
