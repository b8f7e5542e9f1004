"""The image server's HTTP API without sockets: requests, limits, answers, events, errors, SSE, images.

Both sides use this one module: :mod:`speech2image_nb.server` parses requests and writes answers
and events with it; :class:`~speech2image_nb.images.client.ImageClient` builds requests and reads
answers and events with it. Everything here is a plain function or a frozen dataclass over plain
data, so the contract is tested with literal bytes; nothing imports FastAPI, requests or torch
(PIL is imported inside the image functions). The prose version is ``docs/image-server-api.md``.

In short:

- ``POST /generate`` (and ``/dalle``, its older name) reads ``{"text", "num_images", "seed",
  "image_format", <engine options>}`` as JSON *whatever the content type*, because the DALL-E
  Playground web UI sends it as ``text/plain``; it answers ``{"generatedImgs": [base64, ...],
  "generatedImgsFormat", "seed", "engine", "prompt", "prompt_truncated", "timings"}``. A prompt
  longer than the engine reads is cut to what it reads and the answer says so; only a prompt far
  past any real one is refused.
- With a token, a request carries it as ``Authorization: Bearer <token>`` or, for clients that
  cannot send headers (the Playground UI), as the first path segments ``/t/<token>``.
- ``POST /generate/stream`` reads the same body and answers server-sent events: ``queued``,
  ``progress``, ``image`` per picture, then ``done`` (or ``error``), each with a JSON ``data``.
- Every failure is ``{"error": {"code", "message"}}`` with the HTTP status of its code
  (:data:`ERROR_STATUS`). A prompt the classroom filter refuses is ``prompt_blocked`` (422, with
  the filter's ``category``), answered before any engine work; on the streaming route it is the
  stream's one ``error`` event.
- A picture (or preview) the classroom filter flags never leaves the server: an image is replaced
  by a neutral placeholder of the same size and reported in the answer's ``withheld`` list (a
  streamed image event says ``"withheld": true``); a flagged preview is dropped.

What only older DALL-E Playground backends do (a bare list as the answer, HTML error pages) is
the client's business, not part of this contract.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import json
import types
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import BadServerResponse

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "DEFAULT_IMAGE_FORMAT",
    "DEFAULT_MAX_IMAGES",
    "DEFAULT_MAX_PROMPT_CHARS",
    "ERROR_STATUS",
    "EVENT_NAMES",
    "GENERATE_ROUTE",
    "HEALTH_ROUTE",
    "IMAGE_FORMATS",
    "KEEPALIVE",
    "LEGACY_GENERATE_ROUTE",
    "MAX_BODY_BYTES",
    "MAX_PROMPT_CHARS_ACCEPTED",
    "RANDOM_SEED_MAX",
    "REQUEST_FIELDS",
    "SEED_MAX",
    "STREAM_ROUTE",
    "URL_TOKEN_PREFIX",
    "DoneEvent",
    "ErrorEvent",
    "GenerateAnswer",
    "GenerateRequest",
    "ImageEvent",
    "ProgressEvent",
    "PromptTruncation",
    "QueuedEvent",
    "RequestLimits",
    "RequestRejected",
    "SSEParser",
    "ServerEvent",
    "StreamEvent",
    "code_of",
    "decode_image",
    "encode_event",
    "encode_image",
    "encode_sse",
    "error_body",
    "generate_body",
    "parse_error_body",
    "parse_event",
    "parse_generate_answer",
    "parse_generate_request",
    "status_of",
]

# --- routes and limits -------------------------------------------------------------------------

HEALTH_ROUTE = "/"
GENERATE_ROUTE = "/generate"
LEGACY_GENERATE_ROUTE = "/dalle"  # the DALL-E Playground's route until 2022-11
STREAM_ROUTE = "/generate/stream"

URL_TOKEN_PREFIX = "/t/"  # /t/<token>/generate: the token in the path, for clients without headers

DEFAULT_MAX_IMAGES = 10  # images per request unless the server is told otherwise (the Playground offers 1-10)
#: characters read from a prompt by an engine that does not say how much it reads (DALL-E says:
#: its first 64 text tokens); the rest is cut off and the answer reports it
DEFAULT_MAX_PROMPT_CHARS = 500
#: a longer prompt is refused (413): far past any real prompt, and still within MAX_BODY_BYTES
#: when every character is sent as a 12-byte JSON escape
MAX_PROMPT_CHARS_ACCEPTED = 5000
MAX_BODY_BYTES = 64 * 1024  # a request body above this is refused with 413 before it is read
SEED_MAX = 2**53 - 1  # the largest integer a JavaScript client can send exactly
RANDOM_SEED_MAX = 2**31 - 1  # seeds the server picks stay small enough for any JSON number parser
IMAGE_FORMATS = ("jpeg", "png")
DEFAULT_IMAGE_FORMAT = "jpeg"  # what every DALL-E Playground client expects
JPEG_QUALITY = 90
PREVIEW_JPEG_QUALITY = 70  # previews are replaced moments later: smaller beats sharper
#: the request fields every engine reads; any other field is an engine option
REQUEST_FIELDS = frozenset({"text", "num_images", "seed", "image_format"})


@dataclasses.dataclass(frozen=True)
class RequestLimits:
    """What one generate request may ask for (the server's ``--max-images`` / ``--max-prompt-chars``).

    ``max_prompt_chars`` is how much of a prompt is read when the engine does not say how much
    it reads; a longer prompt is cut, not refused.
    """

    max_images: int = DEFAULT_MAX_IMAGES
    max_prompt_chars: int = DEFAULT_MAX_PROMPT_CHARS

    def __post_init__(self) -> None:
        if self.max_images < 1 or self.max_prompt_chars < 1:
            raise ValueError("max_images and max_prompt_chars must be at least 1")


# --- errors ------------------------------------------------------------------------------------

#: every error code of the API and the HTTP status it is answered with
ERROR_STATUS: Mapping[str, int] = types.MappingProxyType(
    {
        "invalid_json": 400,
        "unauthorized": 401,
        "not_found": 404,
        "method_not_allowed": 405,
        "payload_too_large": 413,
        "prompt_too_long": 413,
        "invalid_request": 422,
        "prompt_blocked": 422,  # the classroom filter refused the prompt; nothing was drawn
        "engine_error": 500,
        "internal_error": 500,
        "queue_full": 503,
        "timeout": 504,
    }
)


def status_of(code: str) -> int:
    """The HTTP status of an error ``code`` (500 for a code this version does not know)."""
    return ERROR_STATUS.get(code, 500)


def code_of(status: int) -> str:
    """The error code of an HTTP ``status`` the framework answered by itself (404, 405, ...)."""
    return next((code for code, known in ERROR_STATUS.items() if known == status), f"http_{status}")


class RequestRejected(Exception):
    """A request the server refuses: ``code`` (a key of :data:`ERROR_STATUS`) and a one-sentence ``message``.

    The server answers it as :func:`error_body` with ``status``; it never reaches a user of the
    package as an exception. ``category`` is set for ``prompt_blocked`` only (the filter's category).
    """

    def __init__(self, code: str, message: str, *, category: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status_of(code)
        self.category = category


def error_body(code: str, message: str, *, category: str | None = None) -> dict[str, Any]:
    """The JSON error answer (a message that echoes request text is made valid UTF-8 first);
    ``category`` (``prompt_blocked`` only) is added to the error object when given."""
    error: dict[str, Any] = {"code": code, "message": message.encode("utf-8", "replace").decode("utf-8")}
    if category is not None:
        error["category"] = category
    return {"error": error}


# --- requests ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GenerateRequest:
    """A validated generate request, as the server reads it."""

    text: str  # trimmed, valid UTF-8
    num_images: int
    seed: int | None  # None: the server picks a random seed
    image_format: str  # one of IMAGE_FORMATS
    options: Mapping[str, Any]  # engine options, as the engine validated them
    prompt_truncated: PromptTruncation | None = None  # set by the server when it cut ``text``


@dataclasses.dataclass(frozen=True)
class PromptTruncation:
    """The prompt was longer than the engine reads: the first ``used_chars`` of ``sent_chars`` were used."""

    sent_chars: int
    used_chars: int
    limit: str  # what the engine reads, e.g. "64 text tokens" or "500 characters"

    def to_json(self) -> dict[str, Any]:
        """The answer's ``prompt_truncated`` object."""
        return {"sent_chars": self.sent_chars, "used_chars": self.used_chars, "limit": self.limit}


def _truncation(value: Any) -> PromptTruncation | None:
    if not isinstance(value, dict):
        return None
    sent, used = _int_or_none(value.get("sent_chars")), _int_or_none(value.get("used_chars"))
    if sent is None or used is None:
        return None
    return PromptTruncation(sent, used, str(value.get("limit", "")))


def generate_body(
    text: str,
    *,
    num_images: int = 1,
    seed: int | None = None,
    image_format: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON body of a generate request; fields left ``None`` are left to the server's default."""
    body: dict[str, Any] = {"text": text, "num_images": num_images}
    if seed is not None:
        body["seed"] = seed
    if image_format is not None:
        body["image_format"] = image_format
    body.update(options or {})
    return body


def _json_int(value: Any) -> int | None:
    """``value`` as an int if it is a JSON integer (``2``, ``2.0``); None for ``true``, ``2.5``, ``"2"``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _json_object(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object; a JSON string holding an object is unwrapped once
    (a fork of the Playground double-encodes its requests)."""
    try:
        body = json.loads(raw.decode("utf-8"))
        if isinstance(body, str) and body.lstrip().startswith("{"):
            body = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise RequestRejected("invalid_json", "The request body is not valid JSON.") from exc
    if not isinstance(body, dict):
        raise RequestRejected(
            "invalid_request", 'The request body must be a JSON object like {"text": "a fox"}.'
        )
    return body


def _prompt(body: Mapping[str, Any]) -> str:
    text = body.get("text")
    if not isinstance(text, str) or not text.strip():
        raise RequestRejected("invalid_request", 'The field "text" must be a non-empty string.')
    # a lone surrogate (from a \udXXX escape) cannot be encoded anywhere later: make it "?"
    text = text.strip().encode("utf-8", "replace").decode("utf-8")
    if len(text) > MAX_PROMPT_CHARS_ACCEPTED:
        raise RequestRejected(
            "prompt_too_long",
            f"The prompt is {len(text)} characters long; at most {MAX_PROMPT_CHARS_ACCEPTED} are "
            "accepted, and the engine reads far fewer: send a shorter one.",
        )
    return text


def parse_generate_request(
    raw: bytes,
    *,
    limits: RequestLimits,
    validate_options: Callable[[Mapping[str, Any]], Mapping[str, Any]],
) -> GenerateRequest:
    """Read and check a generate request body (JSON whatever the content type).

    ``validate_options`` is the engine's check of the remaining fields; it raises ValueError
    naming the field. Raises :class:`RequestRejected` with the code and message to answer.
    """
    body = _json_object(raw)
    text = _prompt(body)
    num_images = _json_int(body.get("num_images", 1))
    if num_images is None or not 1 <= num_images <= limits.max_images:
        raise RequestRejected(
            "invalid_request", f'"num_images" must be an integer from 1 to {limits.max_images}.'
        )
    seed = body.get("seed")
    if seed is not None and ((seed := _json_int(seed)) is None or not 0 <= seed <= SEED_MAX):
        raise RequestRejected("invalid_request", f'"seed" must be an integer from 0 to {SEED_MAX}.')
    image_format = body.get("image_format", DEFAULT_IMAGE_FORMAT)
    if image_format not in IMAGE_FORMATS:
        raise RequestRejected("invalid_request", '"image_format" must be "jpeg" or "png".')
    try:
        options = validate_options({k: v for k, v in body.items() if k not in REQUEST_FIELDS})
    except ValueError as exc:
        raise RequestRejected("invalid_request", str(exc)[:300]) from exc
    return GenerateRequest(text, num_images, seed or None, image_format, options)


# --- answers -----------------------------------------------------------------------------------


def _number_dict(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        return {}
    return {
        str(k): float(v) for k, v in value.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


@dataclasses.dataclass(frozen=True)
class GenerateAnswer:
    """The answer of ``POST /generate``: base64 images and what the server says about them."""

    images: Sequence[str]  # base64, no data: prefix (as the Playground UI expects)
    image_format: str
    seed: int | None = None
    engine: str | None = None
    prompt: str | None = None  # the prompt as the engine read it
    timings: Mapping[str, float] = dataclasses.field(default_factory=dict)  # queued_s, generate_s, encode_s
    prompt_truncated: PromptTruncation | None = None  # None: the engine read the whole prompt
    #: indexes of the images the classroom filter withheld (each is the neutral placeholder)
    withheld: Sequence[int] = ()

    def to_json(self) -> dict[str, Any]:
        """The JSON object the server sends."""
        return {
            "generatedImgs": list(self.images),
            "generatedImgsFormat": self.image_format,
            "seed": self.seed,
            "engine": self.engine,
            "prompt": self.prompt,
            "prompt_truncated": self.prompt_truncated.to_json() if self.prompt_truncated else None,
            "timings": dict(self.timings),
            "withheld": list(self.withheld),
        }


def parse_generate_answer(body: Any) -> GenerateAnswer:
    """Read a generate answer of the object shape; raise BadServerResponse when it has no images."""
    images = body.get("generatedImgs") if isinstance(body, dict) else None
    if not isinstance(images, list):
        raise BadServerResponse("The image server's answer has no images (expected generatedImgs).")
    if not images:
        raise BadServerResponse("The image server answered with no images.")
    return GenerateAnswer(
        images=images,
        image_format=str(body.get("generatedImgsFormat") or DEFAULT_IMAGE_FORMAT),
        seed=_int_or_none(body.get("seed")),
        engine=_str_or_none(body.get("engine")),
        prompt=_str_or_none(body.get("prompt")),
        timings=_number_dict(body.get("timings")),
        prompt_truncated=_truncation(body.get("prompt_truncated")),
        withheld=_indexes(body.get("withheld"), len(images)),
    )


def _indexes(value: Any, count: int) -> tuple[int, ...]:
    """The valid image indexes in ``value`` (a JSON list), sorted and without repeats."""
    if not isinstance(value, list):
        return ()
    return tuple(
        sorted({i for i in value if isinstance(i, int) and not isinstance(i, bool) and 0 <= i < count})
    )


def _category(value: Any) -> str | None:
    return value[:50] if isinstance(value, str) and value else None


def parse_error_body(raw: bytes) -> ErrorEvent | None:
    """``{"error": {"code", "message"}}`` from an error answer, or ``None`` when it is not ours."""
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        return ErrorEvent(
            error["code"][:100], str(error.get("message", ""))[:500], _category(error.get("category"))
        )
    return None


# --- images ------------------------------------------------------------------------------------


def encode_image(image: Image.Image, image_format: str, *, quality: int = JPEG_QUALITY) -> str:
    """Base64 of the image as JPEG or PNG (no ``data:`` prefix, as the Playground expects)."""
    buffer = io.BytesIO()
    if image_format == "png":
        image.save(buffer, format="PNG")
    else:
        image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


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


# --- streaming events --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class QueuedEvent:
    """The request waits; ``position`` requests are ahead of it (0 = next)."""

    position: int


@dataclasses.dataclass(frozen=True)
class ProgressEvent:
    """The engine reached ``step`` of ``total``; ``preview`` is a rough first image so far, if any."""

    step: int
    total: int
    preview: Image.Image | None


@dataclasses.dataclass(frozen=True)
class ImageEvent:
    """Image ``index`` is finished; ``withheld``: the classroom filter flagged it, and ``image`` is
    the neutral placeholder in its place."""

    index: int
    image: Image.Image
    withheld: bool = False


@dataclasses.dataclass(frozen=True)
class DoneEvent:
    """All images were sent: the seed used, the server's timings, the engine and the prompt it read."""

    seed: int | None
    timings: dict[str, float]
    engine: str | None = None
    prompt: str | None = None
    prompt_truncated: PromptTruncation | None = None  # None: the engine read the whole prompt


@dataclasses.dataclass(frozen=True)
class ErrorEvent:
    """The request failed: an error ``code`` (see :data:`ERROR_STATUS`) and the server's message
    (and for ``prompt_blocked``, the classroom filter's ``category``)."""

    code: str
    message: str
    category: str | None = None


#: what a client's stream yields (an ``error`` event is raised as ServerError instead)
StreamEvent = QueuedEvent | ProgressEvent | ImageEvent | DoneEvent
#: what the server sends
ServerEvent = QueuedEvent | ProgressEvent | ImageEvent | DoneEvent | ErrorEvent

#: the SSE event name of each event type
EVENT_NAMES: Mapping[type, str] = types.MappingProxyType(
    {
        QueuedEvent: "queued",
        ProgressEvent: "progress",
        ImageEvent: "image",
        DoneEvent: "done",
        ErrorEvent: "error",
    }
)

#: an SSE comment: sent at least every few seconds so that tunnels and proxies keep the stream open
KEEPALIVE = b": keepalive\n\n"


def encode_sse(name: str, data: Mapping[str, Any]) -> bytes:
    """One server-sent event: ``event: <name>`` and its compact JSON ``data``."""
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _event_data(event: ServerEvent, image_format: str) -> dict[str, Any]:
    if isinstance(event, QueuedEvent):
        return {"position": event.position}
    if isinstance(event, ProgressEvent):
        data: dict[str, Any] = {"step": event.step, "total": event.total}
        if event.preview is not None:
            data["preview"] = encode_image(event.preview, "jpeg", quality=PREVIEW_JPEG_QUALITY)
        return data
    if isinstance(event, ImageEvent):
        data = {"index": event.index, "data": encode_image(event.image, image_format), "format": image_format}
        if event.withheld:
            data["withheld"] = True
        return data
    if isinstance(event, DoneEvent):
        truncated = event.prompt_truncated.to_json() if event.prompt_truncated else None
        return {
            "seed": event.seed,
            "engine": event.engine,
            "prompt": event.prompt,
            "prompt_truncated": truncated,
            "timings": event.timings,
        }
    error: dict[str, Any] = error_body(event.code, event.message, category=event.category)["error"]
    return error


def encode_event(event: ServerEvent, *, image_format: str = DEFAULT_IMAGE_FORMAT) -> bytes:
    """The server-sent event for ``event`` (images are encoded here: CPU work, run it off the loop)."""
    return encode_sse(EVENT_NAMES[type(event)], _event_data(event, image_format))


def _decode_event(name: str, payload: dict[str, Any]) -> ServerEvent | None:
    if name == "queued":
        return QueuedEvent(int(payload["position"]))
    if name == "progress":
        preview = payload.get("preview")
        return ProgressEvent(
            int(payload["step"]), int(payload["total"]), decode_image(preview) if preview else None
        )
    if name == "image":
        return ImageEvent(
            int(payload["index"]), decode_image(payload["data"]), payload.get("withheld") is True
        )
    if name == "done":
        return DoneEvent(
            _int_or_none(payload.get("seed")),
            _number_dict(payload.get("timings")),
            _str_or_none(payload.get("engine")),
            _str_or_none(payload.get("prompt")),
            _truncation(payload.get("prompt_truncated")),
        )
    if name == "error":
        return ErrorEvent(
            str(payload.get("code", "error"))[:100],
            str(payload.get("message", ""))[:500],
            _category(payload.get("category")),
        )
    return None


def parse_event(name: str, data: str) -> ServerEvent | None:
    """One server-sent event -> its dataclass (``None`` for a name this version does not know).

    Raises BadServerResponse when the data is not JSON or lacks a field its event needs.
    """
    try:
        payload = json.loads(data)
    except ValueError as exc:
        raise BadServerResponse(f"The image server sent a {name!r} event that is not JSON.") from exc
    if not isinstance(payload, dict):
        raise BadServerResponse(f"The image server sent a {name!r} event of the wrong shape.")
    try:
        return _decode_event(name, payload)
    except (KeyError, TypeError, ValueError) as exc:
        raise BadServerResponse(f"The image server sent a {name!r} event of the wrong shape.") from exc


class SSEParser:
    """Incremental server-sent-events parser: :meth:`feed` bytes, get ``(event, data)`` pairs.

    Follows the WHATWG rules that matter here: lines end in LF or CRLF, a blank line ends an
    event, ``:`` starts a comment, one space after the field's colon is dropped, several
    ``data`` lines join with newlines, and an event without a name is a ``message``.
    """

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
            elif not text.startswith(":"):
                field, _, value = text.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "event":
                    self._event = value
                elif field == "data":
                    self._data.append(value)
