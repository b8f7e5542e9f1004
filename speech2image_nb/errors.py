"""Errors raised by speech2image_nb, one tree under :class:`Speech2ImageError`.

Every class names a situation the user can fix, and its message says how, in one or two
sentences a teacher understands. Secrets never appear in a message.

::

    Speech2ImageError
    ├── ConfigError                  a setting is missing or malformed
    ├── AudioError
    │   ├── AudioDecodeError         the recording cannot be decoded
    │   └── EmptyAudioError          no audio, or less than 0.2 s of it
    ├── RecorderError                the browser recorder failed
    │   ├── InsecureContextError     page not served from localhost/https
    │   ├── MicrophonePermissionDenied
    │   ├── MicrophoneUnavailable    no microphone found
    │   ├── AudioContextError        the browser could not start audio processing
    │   └── FrontendNotLoaded        the widget's JavaScript did not answer (reload the page)
    ├── AuthError                    a key or token was refused (speech service or image server)
    ├── ServiceUnreachable           a service could not be reached at all
    │   └── ServerUnreachable        ... the image server in particular
    │       └── TunnelGone           its public tunnel address leads nowhere any more
    ├── TranscriptionError           the speech service ended the session with an error
    │   ├── SessionCancelled         the service cancelled the session (close 3005)
    │   ├── AudioRateError           audio sent too fast or in bad chunk sizes (close 3007)
    │   ├── SessionExpired           the session hit its maximum duration (close 3008)
    │   └── TooManySessions          too many concurrent sessions (close 3009)
    ├── ModelNotAvailable            model weights are missing and cannot be fetched
    ├── PromptBlocked                the classroom filter refused the prompt (nothing was drawn)
    ├── ImageServerError             the image server answered, but not with images
    │   ├── ServerError              an HTTP error status with the server's code and message
    │   └── BadServerResponse        the answer is not what the API promises
    └── EngineError                  an image engine failed inside the server

A normal end of a stream (user pressed stop, server closed cleanly) is never an error.
"""

from __future__ import annotations

__all__ = [
    "AudioContextError",
    "AudioDecodeError",
    "AudioError",
    "AudioRateError",
    "AuthError",
    "BadServerResponse",
    "ConfigError",
    "EmptyAudioError",
    "EngineError",
    "FrontendNotLoaded",
    "ImageServerError",
    "InsecureContextError",
    "MicrophonePermissionDenied",
    "MicrophoneUnavailable",
    "ModelNotAvailable",
    "PromptBlocked",
    "RecorderError",
    "ServerError",
    "ServerUnreachable",
    "ServiceUnreachable",
    "SessionCancelled",
    "SessionExpired",
    "Speech2ImageError",
    "TooManySessions",
    "TranscriptionError",
    "TunnelGone",
]


class Speech2ImageError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(Speech2ImageError):
    """A setting is missing or malformed (an environment variable, an argument)."""


# --- audio -------------------------------------------------------------------------------------


class AudioError(Speech2ImageError):
    """A recording could not be turned into speech samples."""


class AudioDecodeError(AudioError):
    """The input is not a recording this package can decode (wav, webm, ogg, mp4, flac)."""


class EmptyAudioError(AudioError):
    """The recording holds no sound, or less than the minimum length."""


# --- recorder ----------------------------------------------------------------------------------


class RecorderError(Speech2ImageError):
    """The browser recorder could not record.

    ``code`` is the short machine-readable name the widget reports (``"insecure-context"``,
    ``"permission-denied"``, ``"no-microphone"``, ``"audio-context"``, ``"frontend-not-loaded"``).
    """

    code = "recorder"

    def __init__(self, message: str, *, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


class InsecureContextError(RecorderError):
    """The page is not a secure context, so the browser offers no microphone."""

    code = "insecure-context"


class MicrophonePermissionDenied(RecorderError):
    """The user or the browser refused access to the microphone."""

    code = "permission-denied"


class MicrophoneUnavailable(RecorderError):
    """No microphone was found, or it is in use by another program."""

    code = "no-microphone"


class AudioContextError(RecorderError):
    """The browser could not start its audio processing (AudioContext / AudioWorklet)."""

    code = "audio-context"


class FrontendNotLoaded(RecorderError):
    """The widget's JavaScript never answered: usually the page must be reloaded after install."""

    code = "frontend-not-loaded"


# --- services ----------------------------------------------------------------------------------


class AuthError(Speech2ImageError):
    """A service refused the key or token.

    ``service`` names which one (``"AssemblyAI"``, ``"image server"``).
    """

    def __init__(self, message: str, *, service: str = "") -> None:
        super().__init__(message)
        self.service = service


class ServiceUnreachable(Speech2ImageError):
    """A service could not be reached (DNS, refused connection, timeout, failed handshake)."""

    def __init__(self, message: str, *, url: str = "") -> None:
        super().__init__(message)
        self.url = url


class ServerUnreachable(ServiceUnreachable):
    """The image server could not be reached."""


class TunnelGone(ServerUnreachable):
    """The image server's public tunnel address leads nowhere any more.

    A quick tunnel (``*.trycloudflare.com``, ngrok) gets a new address each time the server
    notebook starts; the old one stops resolving, or the tunnel's edge answers that the tunnel is
    not connected. ``reason`` says which of these was seen.
    """

    def __init__(self, message: str, *, url: str = "", reason: str = "") -> None:
        super().__init__(message, url=url)
        self.reason = reason


class TranscriptionError(Speech2ImageError):
    """The speech service ended the session with an error.

    ``code`` is the WebSocket close code (or ``None``), ``reason`` the server's own words.
    """

    def __init__(self, message: str, *, code: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


class SessionCancelled(TranscriptionError):
    """The service cancelled the session on its side (close 3005, its catch-all for server errors)."""


class AudioRateError(TranscriptionError):
    """Audio was sent faster than real time or in chunks of the wrong duration (close 3007)."""


class SessionExpired(TranscriptionError):
    """The streaming session reached its maximum duration (close 3008)."""


class TooManySessions(TranscriptionError):
    """The account has too many concurrent streaming sessions (close 3009)."""


class ModelNotAvailable(Speech2ImageError):
    """Model weights are not on this machine and cannot be downloaded (offline, or missing files)."""


# --- image server ------------------------------------------------------------------------------

#: how a refusal names each category of the classroom filter (what follows "refuses")
BLOCKED_CATEGORY_WORDS = {
    "sexual": "sexual content",
    "violence": "violent content",
    "self_harm": "content about self-harm",
    "drugs": "content about drugs",
    "hate": "hateful content",
    "weapons": "content about weapons",
    "profanity": "rude words",
    "custom": "a word the teacher blocked",
}


class PromptBlocked(Speech2ImageError):
    """The classroom filter refused the prompt: nothing was drawn.

    ``category`` is the filter's category (``"sexual"``, ``"violence"``, ``"self_harm"``,
    ``"drugs"``, ``"hate"``, ``"custom"`` for a teacher's own word, ...; ``None`` when the server
    did not say). The message names the category and never repeats the prompt; with no message
    given, it is :meth:`describe` of the category.
    """

    def __init__(self, category: str | None, message: str | None = None) -> None:
        super().__init__(message or self.describe(category))
        self.category = category

    @staticmethod
    def describe(category: str | None) -> str:
        """The neutral sentence a refusal of ``category`` shows (the server answers with it too)."""
        if category is None:
            return "This prompt was not drawn: the classroom filter refused it."
        words = BLOCKED_CATEGORY_WORDS.get(category, f"{category.replace('_', ' ')} content")
        return f"This prompt was not drawn: the classroom filter refuses {words}."


class ImageServerError(Speech2ImageError):
    """The image server answered, but not with images."""


class ServerError(ImageServerError):
    """The image server answered with an HTTP error status.

    Carries ``status`` (HTTP status), ``code`` (the server's error code, e.g. ``"queue_full"``),
    ``message`` (the server's explanation) and ``retry_after_s`` (whole seconds the server asked
    to wait before trying again, from its ``Retry-After`` header; ``None`` when it named none).
    """

    def __init__(self, status: int, code: str, message: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(f"The image server answered {status} ({code}): {message}")
        self.status = status
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s


class BadServerResponse(ImageServerError):
    """The image server's answer is not what the API promises (not JSON, not an image, too large)."""


class EngineError(Speech2ImageError):
    """An image engine failed to load or to generate (inside the server)."""
