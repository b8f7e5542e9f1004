"""HTTP client of the image server, and of every DALL-E Playground backend.

Speaks our server (``/generate``, ``/generate/stream``, seeds, timings, JSON errors; the contract
is :mod:`speech2image_nb.images.protocol`) and every DALL-E Playground era: a bare JSON list of
base64 images (before 2022-06), the object ``{"generatedImgs", "generatedImgsFormat"}`` (after),
at ``/dalle`` (before 2022-11) or ``/generate`` (after). The route that answers is remembered; a
404 or 405 moves on to the other. Those older shapes are handled here, not in the protocol.

Every call has a finite ``(connect, read)`` timeout, answers are read with a size cap, and every
failure is one of :class:`~speech2image_nb.errors.ServerUnreachable` (no answer, or the connection
closed mid-answer; :class:`~speech2image_nb.errors.TunnelGone` when the address was a tunnel that
is gone, see :mod:`~speech2image_nb.images.tunnels`),
:class:`~speech2image_nb.errors.AuthError` (token refused),
:class:`~speech2image_nb.errors.PromptBlocked` (the server's classroom filter refused the prompt:
``prompt_blocked``, as an answer or as a stream's error event),
:class:`~speech2image_nb.errors.ServerError` (an error status with the server's code and message) or
:class:`~speech2image_nb.errors.BadServerResponse` (not JSON, not base64, not an image, wrong shape,
too large), always raised ``from`` the original exception.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ..config import Secret
from ..errors import AuthError, BadServerResponse, PromptBlocked, ServerError, ServerUnreachable, TunnelGone
from .protocol import (
    GENERATE_ROUTE,
    HEALTH_ROUTE,
    LEGACY_GENERATE_ROUTE,
    STREAM_ROUTE,
    DoneEvent,
    ErrorEvent,
    GenerateAnswer,
    ImageEvent,
    ProgressEvent,
    PromptTruncation,
    QueuedEvent,
    SSEParser,
    StreamEvent,
    decode_image,
    generate_body,
    parse_error_body,
    parse_event,
    parse_generate_answer,
    status_of,
)
from .tunnels import edge_says_tunnel_gone, is_tunnel_host, name_does_not_exist, tunnel_gone_message

if TYPE_CHECKING:
    import requests
    from PIL import Image

__all__ = [
    "DoneEvent",
    "Generation",
    "ImageClient",
    "ImageEvent",
    "ProgressEvent",
    "QueuedEvent",
    "SSEParser",
    "decode_image",
    "map_exceptions",
    "normalize_url",
    "parse_images_body",
]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = (5.0, 300.0)  # (connect, read): the read part covers a slow generation
DEFAULT_HEALTH_TIMEOUT_S = 15.0  # read timeout of the status check: it answers at once when alive
DEFAULT_MAX_RESPONSE_BYTES = 64 * 2**20  # 10 PNGs of 1024 px in base64 fit well below this
READ_CHUNK_BYTES = 64 * 1024
ROUTES = (GENERATE_ROUTE, LEGACY_GENERATE_ROUTE)
SERVICE = "image server"


@dataclasses.dataclass(frozen=True)
class Generation:
    """The images of one request and what the server said about them."""

    images: list[Image.Image]
    seed: int | None  # None: the server does not report seeds (a DALL-E Playground backend)
    engine: str | None
    prompt: str  # as the engine read it
    timings: dict[str, float]  # queued_s, generate_s, encode_s (server side), total_s (client side)
    prompt_truncated: PromptTruncation | None = None  # set when the engine read only part of the prompt
    #: indexes of the images the server's classroom filter withheld (each is a neutral placeholder)
    withheld: tuple[int, ...] = ()


# --- what only older servers do ------------------------------------------------------------------


def normalize_url(url: str) -> str:
    """``host:port`` or ``https://host/`` -> a base URL without a trailing slash.

    Without a scheme, local hosts get ``http://`` and public ones ``https://`` (tunnels serve https).
    """
    from urllib.parse import urlsplit

    text = url.strip()
    if not text:
        raise ValueError("the image server URL is empty")
    if "://" not in text:
        host = text.split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
        local = host in ("localhost", "0.0.0.0", "::1") or host.startswith(("127.", "10.", "192.168."))
        text = ("http://" if local else "https://") + text
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not an http(s) URL: {url!r}")
    return text.rstrip("/")


def parse_images_body(body: Any) -> GenerateAnswer:
    """A generate answer of any era: the object shape, or a bare list (DALL-E Playground before 2022-06)."""
    if isinstance(body, list):
        if not body:
            raise BadServerResponse("The image server answered with no images.")
        return GenerateAnswer(images=body, image_format="jpeg")
    return parse_generate_answer(body)


def _raise_if_blocked(error: ErrorEvent) -> None:
    """A ``prompt_blocked`` error as :class:`PromptBlocked` (its category, the server's sentence)."""
    if error.code == "prompt_blocked":
        raise PromptBlocked(error.category, error.message or None)


def _foreign_error(status: int, raw: bytes) -> ErrorEvent:
    """``(code, message)`` of an error answer that is not ours: FastAPI's ``detail``, an HTML page."""
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        body = None
    if isinstance(body, dict) and "detail" in body:
        return ErrorEvent(f"http_{status}", str(body["detail"])[:500])
    kind = "an HTML page" if raw.lstrip()[:1] == b"<" else "no JSON error"
    return ErrorEvent(f"http_{status}", f"the server answered HTTP {status} with {kind}.")


# --- transport errors ----------------------------------------------------------------------------


@contextlib.contextmanager
def map_exceptions(mapping: Mapping[type[Exception], Callable[[], Exception]]) -> Iterator[None]:
    """Re-raise an exception of a mapped type as the error its factory makes, chained with ``from``.

    The first matching type wins, so list subclasses before their bases. Anything else (our own
    errors raised inside the block included) passes through unchanged.
    """
    try:
        yield
    except Exception as exc:
        for source, make in mapping.items():
            if isinstance(exc, source):
                raise make() from exc
        raise


# --- the client --------------------------------------------------------------------------------


class ImageClient:
    """Talks to one image server.

    Parameters
    ----------
    url
        Base URL; a missing scheme is added (``localhost:8000``, ``xyz.trycloudflare.com``).
    token
        Bearer token (``str`` or :class:`~speech2image_nb.config.Secret`), if the server needs one.
    timeout_s
        ``(connect, read)`` seconds; the read part must cover the slowest generation.
    session
        A ``requests.Session`` to use (tests may mount adapters); a new one by default.
    max_response_bytes
        Answers larger than this are refused with BadServerResponse.
    health_timeout_s
        Read timeout of :meth:`health` (at most ``timeout_s``'s read part): a live server answers
        its status at once, so a server that hangs is reported in seconds, not after the minutes a
        generation may take.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | Secret | None = None,
        timeout_s: tuple[float, float] = DEFAULT_TIMEOUT_S,
        session: requests.Session | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        health_timeout_s: float = DEFAULT_HEALTH_TIMEOUT_S,
    ) -> None:
        try:
            self.url = normalize_url(url)
        except ValueError as exc:
            raise ServerUnreachable(f"The image server address is not usable: {exc}.", url=str(url)) from exc
        if isinstance(token, str):
            token = Secret(token.strip()) if token.strip() else None
        self._token = token
        connect_s, read_s = timeout_s
        if not (connect_s > 0 and read_s > 0):
            raise ValueError("timeouts must be positive")
        self.timeout_s = (float(connect_s), float(read_s))
        if not health_timeout_s > 0:
            raise ValueError("health_timeout_s must be positive")
        self.health_timeout_s = min(float(health_timeout_s), self.timeout_s[1])
        self.max_response_bytes = max_response_bytes
        self._session = session
        self._route: str | None = None  # the generate route that answered last time
        self._has_stream: bool | None = None

    def __repr__(self) -> str:
        return f"ImageClient({self.url!r}, token={'set' if self._token else None})"

    @property
    def session(self) -> requests.Session:
        """The HTTP session (created on first use)."""
        if self._session is None:
            import requests

            self._session = requests.Session()
        return self._session

    def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            self._session.close()

    def __enter__(self) -> ImageClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- transport ---------------------------------------------------------------------------

    def _transport_errors(
        self, *, timeout: str, failure: Callable[[], Exception]
    ) -> contextlib.AbstractContextManager[None]:
        """``requests``' exceptions as ours: a timeout is ServerUnreachable saying ``timeout``,
        any other failure the error ``failure`` makes."""
        import requests

        return map_exceptions(
            {
                requests.Timeout: lambda: ServerUnreachable(timeout, url=self.url),
                requests.RequestException: failure,
            }
        )

    def _headers(self, *, stream: bool) -> dict[str, str]:
        headers = {
            "Bypass-Tunnel-Reminder": "go",
            "ngrok-skip-browser-warning": "1",
            "Content-Type": "application/json",
            "Accept": "text/event-stream" if stream else "application/json",
        }
        if self._token:
            headers["Authorization"] = f"Bearer {self._token.reveal()}"
        return headers

    def _send(
        self, method: str, path: str, *, body: Any = None, stream: bool = False, read_s: float | None = None
    ) -> requests.Response:
        import requests

        read_s = self.timeout_s[1] if read_s is None else read_s
        try:
            return self.session.request(
                method,
                self.url + path,
                data=None if body is None else json.dumps(body),
                headers=self._headers(stream=stream),
                timeout=(self.timeout_s[0], read_s),
                stream=True,
            )
        except requests.Timeout as exc:
            raise ServerUnreachable(
                f"The image server at {self.url} did not answer within {read_s:g} s; "
                "check that it is still running.",
                url=self.url,
            ) from exc
        except requests.RequestException as exc:
            if is_tunnel_host(self.url) and name_does_not_exist(exc):
                reason = "its name does not resolve any more"
                raise TunnelGone(tunnel_gone_message(self.url, reason), url=self.url, reason=reason) from exc
            raise ServerUnreachable(
                f"Cannot reach the image server at {self.url}; check the URL and that the server runs.",
                url=self.url,
            ) from exc

    def _raise_if_tunnel_gone(self, response: requests.Response, raw: bytes) -> None:
        reason = edge_says_tunnel_gone(response.status_code, response.headers, raw)
        if reason:
            raise TunnelGone(tunnel_gone_message(self.url, reason), url=self.url, reason=reason)

    def _read(self, response: requests.Response, *, read_s: float | None = None) -> bytes:
        """The whole body, at most ``max_response_bytes`` and within the read timeout overall."""
        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.max_response_bytes:
            response.close()
            raise BadServerResponse(
                f"The image server's answer is too large ({int(length)} bytes; "
                f"limit {self.max_response_bytes})."
            )
        read_s = self.timeout_s[1] if read_s is None else read_s
        deadline = time.monotonic() + read_s
        chunks: list[bytes] = []
        size = 0
        try:
            with self._transport_errors(
                timeout=f"The image server at {self.url} stopped answering for {read_s:g} s.",
                failure=lambda: ServerUnreachable(
                    f"The image server at {self.url} closed the connection in the middle of its answer: "
                    "check that it still runs, then try again.",
                    url=self.url,
                ),
            ):
                for chunk in response.iter_content(READ_CHUNK_BYTES):
                    size += len(chunk)
                    if size > self.max_response_bytes:
                        raise BadServerResponse(
                            f"The image server's answer is larger than {self.max_response_bytes} bytes."
                        )
                    if time.monotonic() > deadline:
                        raise ServerUnreachable(
                            f"The image server at {self.url} did not finish its answer within {read_s:g} s.",
                            url=self.url,
                        )
                    chunks.append(chunk)
        finally:
            response.close()
        return b"".join(chunks)

    def _raise_for_status(self, response: requests.Response, raw: bytes) -> None:
        status = response.status_code
        if status < 400:
            return
        self._raise_if_tunnel_gone(response, raw)
        if status in (401, 403):
            raise AuthError(
                "The image server refused the token: pass the token it printed, e.g. "
                'speech2image_nb.connect(url, token="...").',
                service=SERVICE,
            )
        error = parse_error_body(raw) or _foreign_error(status, raw)
        _raise_if_blocked(error)
        retry_after = response.headers.get("Retry-After", "")
        raise ServerError(
            status,
            error.code,
            error.message,
            retry_after_s=int(retry_after) if retry_after.isdigit() else None,
        )

    def _json(self, raw: bytes) -> Any:
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise BadServerResponse("The image server's answer is not JSON.") from exc

    # --- API ---------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``GET /``: the server's status (``{"success": true, ...}``)."""
        response = self._send("GET", HEALTH_ROUTE, read_s=self.health_timeout_s)
        raw = self._read(response, read_s=self.health_timeout_s)
        self._raise_for_status(response, raw)
        body = self._json(raw)
        if not isinstance(body, dict):
            raise BadServerResponse("The image server's status answer is not a JSON object.")
        return body

    def _post_generate(self, body: Mapping[str, Any]) -> bytes:
        routes = [self._route] if self._route else list(ROUTES)
        if self._route:
            routes += [r for r in ROUTES if r != self._route]
        for position, route in enumerate(routes):
            response = self._send("POST", route, body=body)
            raw = self._read(response)
            if response.status_code in (404, 405) and position < len(routes) - 1:
                self._raise_if_tunnel_gone(response, raw)  # ngrok's offline page is a 404 too
                continue
            self._raise_for_status(response, raw)
            self._route = route
            return raw
        raise AssertionError("unreachable")

    def generate(
        self,
        text: str,
        *,
        num_images: int = 1,
        seed: int | None = None,
        image_format: str | None = None,
        **options: Any,
    ) -> Generation:
        """Make ``num_images`` images of ``text``; extra keywords are engine knobs (``steps`` ...)."""
        started = time.perf_counter()
        body = generate_body(
            text, num_images=num_images, seed=seed, image_format=image_format, options=options
        )
        answer = parse_images_body(self._json(self._post_generate(body)))
        images = [decode_image(item) for item in answer.images]
        timings = {**answer.timings, "total_s": time.perf_counter() - started}
        return Generation(
            images=images,
            seed=answer.seed or seed,
            engine=answer.engine,
            prompt=answer.prompt if answer.prompt is not None else text,
            timings=timings,
            prompt_truncated=answer.prompt_truncated,
            withheld=tuple(answer.withheld),
        )

    def generate_stream(
        self,
        text: str,
        *,
        num_images: int = 1,
        seed: int | None = None,
        image_format: str | None = None,
        **options: Any,
    ) -> Iterator[StreamEvent]:
        """Like :meth:`generate`, but yield queue, progress, image and done events as they come.

        Servers without the streaming route (DALL-E Playground) are served by a plain generate,
        yielding one :class:`ImageEvent` per image and a :class:`DoneEvent`. Closing the iterator
        early closes the connection, which cancels the work on our server.
        """
        if self._has_stream is not False:
            body = generate_body(
                text, num_images=num_images, seed=seed, image_format=image_format, options=options
            )
            response = self._send("POST", STREAM_ROUTE, body=body, stream=True)
            if response.status_code in (404, 405):
                self._raise_if_tunnel_gone(response, self._read(response))
                self._has_stream = False
            else:
                self._has_stream = True
                yield from self._events(response)
                return
        result = self.generate(text, num_images=num_images, seed=seed, image_format=image_format, **options)
        for index, image in enumerate(result.images):
            yield ImageEvent(index, image, index in result.withheld)
        yield DoneEvent(result.seed, result.timings, result.engine, result.prompt, result.prompt_truncated)

    def _events(self, response: requests.Response) -> Iterator[StreamEvent]:
        try:
            if response.status_code >= 400:
                self._raise_for_status(response, self._read(response))
            if not response.headers.get("Content-Type", "").startswith("text/event-stream"):
                raise BadServerResponse("The image server's stream answer is not an event stream.")
            yield from self._parse_stream(response)
        finally:
            response.close()

    def _parse_stream(self, response: requests.Response) -> Iterator[StreamEvent]:
        parser = SSEParser()
        size = 0
        with self._transport_errors(
            timeout=f"The image server at {self.url} sent nothing for {self.timeout_s[1]:g} s.",
            failure=lambda: ServerUnreachable(
                f"The image server at {self.url} closed the connection in the middle of a generation: "
                "check that it still runs (or start it again), then try again.",
                url=self.url,
            ),
        ):
            for chunk in response.iter_content(chunk_size=None):
                size += len(chunk)
                if size > self.max_response_bytes:
                    raise BadServerResponse(
                        f"The image server's stream is larger than {self.max_response_bytes} bytes."
                    )
                for name, data in parser.feed(chunk):
                    event = parse_event(name, data)
                    if isinstance(event, ErrorEvent):
                        _raise_if_blocked(event)
                        raise ServerError(status_of(event.code), event.code, event.message)
                    if event is not None:
                        yield event
                    if isinstance(event, DoneEvent):
                        return
        raise BadServerResponse("The image server's stream ended before all images were sent.")
