"""HTTP client of the image server, and of every DALL-E Playground backend.

Speaks our server (``/generate``, ``/generate/stream``, seeds, timings, JSON errors) and every
DALL-E Playground era: a bare JSON list of base64 images (before 2022-06), the object
``{"generatedImgs", "generatedImgsFormat"}`` (after), at ``/dalle`` (before 2022-11) or
``/generate`` (after). The route that answers is remembered; a 404 or 405 moves on to the other.

Every call has a finite ``(connect, read)`` timeout, answers are read with a size cap, and every
failure is one of :class:`~speech2image_nb.errors.ServerUnreachable` (no answer),
:class:`~speech2image_nb.errors.AuthError` (token refused), :class:`~speech2image_nb.errors.ServerError`
(an error status with the server's code and message) or
:class:`~speech2image_nb.errors.BadServerResponse` (not JSON, not base64, not an image, wrong shape,
too large), always raised ``from`` the original exception.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import json
import logging
import time
import warnings
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from ..config import Secret
from ..errors import AuthError, BadServerResponse, ServerError, ServerUnreachable

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
    "normalize_url",
    "parse_images_body",
]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = (5.0, 300.0)  # (connect, read): the read part covers a slow generation
DEFAULT_MAX_RESPONSE_BYTES = 64 * 2**20  # 9 PNGs of 1024 px in base64 fit well below this
READ_CHUNK_BYTES = 64 * 1024
ROUTES = ("/generate", "/dalle")
STREAM_ROUTE = "/generate/stream"
SERVICE = "image server"
ERROR_STATUS_BY_CODE = {"timeout": 504, "queue_full": 503}


# --- results and events ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Generation:
    """The images of one request and what the server said about them."""

    images: list[Image.Image]
    seed: int | None  # None: the server does not report seeds (a DALL-E Playground backend)
    engine: str | None
    prompt: str
    timings: dict[str, float]  # queued_s, generate_s, encode_s (server side), total_s (client side)


@dataclasses.dataclass(frozen=True)
class QueuedEvent:
    """The request waits; ``position`` requests are ahead of it."""

    position: int


@dataclasses.dataclass(frozen=True)
class ProgressEvent:
    """The engine reached ``step`` of ``total``; ``preview`` is a rough image so far, if any."""

    step: int
    total: int
    preview: Image.Image | None


@dataclasses.dataclass(frozen=True)
class ImageEvent:
    """Image ``index`` is finished."""

    index: int
    image: Image.Image


@dataclasses.dataclass(frozen=True)
class DoneEvent:
    """All images were sent; ``engine`` names the engine that drew them, when the server says."""

    seed: int | None
    timings: dict[str, float]
    engine: str | None = None


StreamEvent = QueuedEvent | ProgressEvent | ImageEvent | DoneEvent


# --- the pure protocol layer ---------------------------------------------------------------------


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


def decode_image(data: Any) -> Image.Image:
    """A base64 string (``data:`` prefix allowed) -> a loaded PIL image; BadServerResponse if not."""
    from PIL import Image

    if not isinstance(data, str):
        raise BadServerResponse(f"The image server sent a {type(data).__name__} where an image was expected.")
    if data.startswith("data:"):
        data = data.partition(",")[2]
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise BadServerResponse("The image server sent an image that is not valid base64.") from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
            image.load()
    except Exception as exc:  # PIL raises many types for broken data
        raise BadServerResponse("The image server sent data that is not a readable image.") from exc
    return image


def parse_images_body(body: Any) -> tuple[list[str], dict[str, Any]]:
    """The base64 images and the extras (seed, engine, prompt, timings) of a generate answer.

    Accepts a bare list (DALL-E Playground before 2022-06) and the object shape.
    """
    if isinstance(body, list):
        images, extras = body, {}
    elif isinstance(body, dict) and isinstance(body.get("generatedImgs"), list):
        images, extras = body["generatedImgs"], body
    else:
        raise BadServerResponse("The image server's answer has no images (expected generatedImgs).")
    if not images:
        raise BadServerResponse("The image server answered with no images.")
    return images, extras


def _number_dict(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        return {}
    return {
        str(k): float(v) for k, v in value.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_error_body(status: int, raw: bytes) -> tuple[str, str]:
    """``(code, message)`` from an error answer: ours, FastAPI's ``detail``, or anything else."""
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("code"), str):
            return error["code"][:100], str(error.get("message", ""))[:500]
        if "detail" in body:
            return f"http_{status}", str(body["detail"])[:500]
    kind = "an HTML page" if raw.lstrip()[:1] == b"<" else "no JSON error"
    return f"http_{status}", f"the server answered HTTP {status} with {kind}."


class SSEParser:
    """Incremental server-sent-events parser: :meth:`feed` bytes, get ``(event, data)`` pairs."""

    def __init__(self) -> None:
        self._buffer = b""
        self._event = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[tuple[str, str]]:
        """Parse what is complete so far."""
        self._buffer += chunk
        events: list[tuple[str, str]] = []
        while True:
            line, sep, rest = self._buffer.partition(b"\n")
            if not sep:
                return events
            self._buffer = rest
            text = line.rstrip(b"\r").decode("utf-8", errors="replace")
            if not text:
                if self._data or self._event:
                    events.append((self._event or "message", "\n".join(self._data)))
                self._event, self._data = "", []
            elif text.startswith(":"):
                continue
            else:
                field, _, value = text.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "event":
                    self._event = value
                elif field == "data":
                    self._data.append(value)


def stream_event(event: str, data: str) -> StreamEvent | None:
    """One SSE message -> an event (``None`` for unknown kinds); raises ServerError on ``error``."""
    try:
        payload = json.loads(data)
    except ValueError as exc:
        raise BadServerResponse(f"The image server sent a {event!r} event that is not JSON.") from exc
    if not isinstance(payload, dict):
        raise BadServerResponse(f"The image server sent a {event!r} event of the wrong shape.")
    try:
        if event == "queued":
            return QueuedEvent(int(payload["position"]))
        if event == "progress":
            preview = payload.get("preview")
            return ProgressEvent(
                int(payload["step"]), int(payload["total"]), decode_image(preview) if preview else None
            )
        if event == "image":
            return ImageEvent(int(payload["index"]), decode_image(payload["data"]))
        if event == "done":
            engine = payload.get("engine")
            return DoneEvent(
                _int_or_none(payload.get("seed")),
                _number_dict(payload.get("timings")),
                engine if isinstance(engine, str) else None,
            )
    except (KeyError, TypeError, ValueError) as exc:
        raise BadServerResponse(f"The image server sent a {event!r} event of the wrong shape.") from exc
    if event == "error":
        code = str(payload.get("code", "error"))
        raise ServerError(ERROR_STATUS_BY_CODE.get(code, 500), code, str(payload.get("message", ""))[:500])
    return None


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
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | Secret | None = None,
        timeout_s: tuple[float, float] = DEFAULT_TIMEOUT_S,
        session: requests.Session | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
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

    def _headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = {"Bypass-Tunnel-Reminder": "go", "ngrok-skip-browser-warning": "1", **(extra or {})}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token.reveal()}"
        return headers

    def _send(self, method: str, path: str, *, body: Any = None, stream: bool = False) -> requests.Response:
        import requests

        url = self.url + path
        try:
            return self.session.request(
                method,
                url,
                data=None if body is None else json.dumps(body),
                headers=self._headers(
                    {
                        "Content-Type": "application/json",
                        "Accept": "text/event-stream" if stream else "application/json",
                    }
                ),
                timeout=self.timeout_s,
                stream=True,
            )
        except requests.Timeout as exc:
            raise ServerUnreachable(
                f"The image server at {self.url} did not answer within {self.timeout_s[1]:g} s; "
                "check that it is still running.",
                url=self.url,
            ) from exc
        except requests.RequestException as exc:
            raise ServerUnreachable(
                f"Cannot reach the image server at {self.url}; check the URL and that the server runs.",
                url=self.url,
            ) from exc

    def _read(self, response: requests.Response) -> bytes:
        """The whole body, at most ``max_response_bytes`` and within the read timeout overall."""
        import requests

        length = response.headers.get("Content-Length", "")
        if length.isdigit() and int(length) > self.max_response_bytes:
            response.close()
            raise BadServerResponse(
                f"The image server's answer is too large ({int(length)} bytes; "
                f"limit {self.max_response_bytes})."
            )
        deadline = time.monotonic() + self.timeout_s[1]
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in response.iter_content(READ_CHUNK_BYTES):
                size += len(chunk)
                if size > self.max_response_bytes:
                    raise BadServerResponse(
                        f"The image server's answer is larger than {self.max_response_bytes} bytes."
                    )
                if time.monotonic() > deadline:
                    raise ServerUnreachable(
                        f"The image server at {self.url} did not finish its answer within "
                        f"{self.timeout_s[1]:g} s.",
                        url=self.url,
                    )
                chunks.append(chunk)
        except requests.Timeout as exc:
            raise ServerUnreachable(
                f"The image server at {self.url} stopped answering for {self.timeout_s[1]:g} s.", url=self.url
            ) from exc
        except requests.RequestException as exc:
            raise BadServerResponse("The image server's answer was cut off.") from exc
        finally:
            response.close()
        return b"".join(chunks)

    def _raise_for_status(self, response: requests.Response, raw: bytes) -> None:
        status = response.status_code
        if status < 400:
            return
        code, message = parse_error_body(status, raw)
        if status in (401, 403):
            raise AuthError(
                "The image server refused the token: pass the token it printed, e.g. "
                'speech2image_nb.connect(url, token="...").',
                service=SERVICE,
            )
        error = ServerError(status, code, message)
        retry_after = response.headers.get("Retry-After", "")
        error.retry_after_s = int(retry_after) if retry_after.isdigit() else None  # type: ignore[attr-defined]
        raise error

    def _json(self, raw: bytes) -> Any:
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise BadServerResponse("The image server's answer is not JSON.") from exc

    # --- API ---------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``GET /``: the server's status (``{"success": true, ...}``)."""
        response = self._send("GET", "/")
        raw = self._read(response)
        self._raise_for_status(response, raw)
        body = self._json(raw)
        if not isinstance(body, dict):
            raise BadServerResponse("The image server's status answer is not a JSON object.")
        return body

    @staticmethod
    def _body(
        text: str, num_images: int, seed: int | None, image_format: str | None, options: Mapping[str, Any]
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"text": text, "num_images": num_images}
        if seed is not None:
            body["seed"] = seed
        if image_format is not None:
            body["image_format"] = image_format
        body.update(options)
        return body

    def _post_generate(self, body: Mapping[str, Any]) -> tuple[requests.Response, bytes]:
        routes = [self._route] if self._route else list(ROUTES)
        if self._route:
            routes += [r for r in ROUTES if r != self._route]
        for position, route in enumerate(routes):
            response = self._send("POST", route, body=body)
            raw = self._read(response)
            if response.status_code in (404, 405) and position < len(routes) - 1:
                continue
            self._raise_for_status(response, raw)
            self._route = route
            return response, raw
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
        body = self._body(text, num_images, seed, image_format, options)
        _, raw = self._post_generate(body)
        encoded, extras = parse_images_body(self._json(raw))
        images = [decode_image(item) for item in encoded]
        timings = _number_dict(extras.get("timings"))
        timings["total_s"] = time.perf_counter() - started
        prompt = extras.get("prompt")
        engine = extras.get("engine")
        return Generation(
            images=images,
            seed=_int_or_none(extras.get("seed")) or seed,
            engine=engine if isinstance(engine, str) else None,
            prompt=prompt if isinstance(prompt, str) else text,
            timings=timings,
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
            body = self._body(text, num_images, seed, image_format, options)
            response = self._send("POST", STREAM_ROUTE, body=body, stream=True)
            if response.status_code in (404, 405):
                self._read(response)
                self._has_stream = False
            else:
                self._has_stream = True
                yield from self._events(response)
                return
        result = self.generate(text, num_images=num_images, seed=seed, image_format=image_format, **options)
        for index, image in enumerate(result.images):
            yield ImageEvent(index, image)
        yield DoneEvent(result.seed, result.timings)

    def _events(self, response: requests.Response) -> Iterator[StreamEvent]:
        import requests

        try:
            if response.status_code >= 400:
                self._raise_for_status(response, self._read(response))
            if not response.headers.get("Content-Type", "").startswith("text/event-stream"):
                raise BadServerResponse("The image server's stream answer is not an event stream.")
            parser = SSEParser()
            size = 0
            try:
                for chunk in response.iter_content(chunk_size=None):
                    size += len(chunk)
                    if size > self.max_response_bytes:
                        raise BadServerResponse(
                            f"The image server's stream is larger than {self.max_response_bytes} bytes."
                        )
                    for kind, data in parser.feed(chunk):
                        event = stream_event(kind, data)
                        if event is not None:
                            yield event
                        if isinstance(event, DoneEvent):
                            return
            except requests.Timeout as exc:
                raise ServerUnreachable(
                    f"The image server at {self.url} sent nothing for {self.timeout_s[1]:g} s.", url=self.url
                ) from exc
            except requests.RequestException as exc:
                raise BadServerResponse("The image server's stream was cut off.") from exc
            raise BadServerResponse("The image server's stream ended before all images were sent.")
        finally:
            response.close()
