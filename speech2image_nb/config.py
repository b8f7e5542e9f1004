"""Where keys, URLs and engine choices come from.

Resolution order, per setting: the argument passed to :meth:`Settings.resolve`, then the
environment, then (when running in Google Colab) the notebook's secrets. Nothing is read at import
time: settings are resolved when a feature needs them.

Secrets (the AssemblyAI key, the image server token) are held as :class:`Secret`, whose ``str``
and ``repr`` are masked, so a secret cannot reach a log line, an exception message or a notebook
output by accident. Code that must send the value calls :meth:`Secret.reveal` at the last moment.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .frontend import in_colab

if TYPE_CHECKING:
    from .safety import Policy

__all__ = ["ENV_VARS", "Secret", "Settings", "ask_secret", "in_colab"]

#: Environment variable that feeds each :class:`Settings` field.
ENV_VARS: dict[str, str] = {
    "assemblyai_api_key": "ASSEMBLYAI_API_KEY",
    "assemblyai_streaming_url": "ASSEMBLYAI_STREAMING_URL",
    "server_url": "S2I_SERVER_URL",
    "server_token": "S2I_SERVER_TOKEN",
    "whisper_model": "S2I_WHISPER_MODEL",
    "image_engine": "S2I_IMAGE_ENGINE",
    "model_dir": "S2I_MODEL_DIR",
    "assemblyai_speech_model": "S2I_ASSEMBLYAI_SPEECH_MODEL",
    "assemblyai_keyterms": "S2I_ASSEMBLYAI_KEYTERMS",
    "assemblyai_end_of_turn_confidence_threshold": "S2I_ASSEMBLYAI_END_OF_TURN_CONFIDENCE_THRESHOLD",
    "assemblyai_min_turn_silence_ms": "S2I_ASSEMBLYAI_MIN_TURN_SILENCE_MS",
    "assemblyai_max_turn_silence_ms": "S2I_ASSEMBLYAI_MAX_TURN_SILENCE_MS",
    # the classroom filter (speech2image_nb.safety reads the first four names too, for the server)
    "safety": "S2I_SAFETY",
    "safety_block": "S2I_SAFETY_BLOCK",
    "safety_allow": "S2I_SAFETY_ALLOW",
    "safety_file": "S2I_SAFETY_FILE",
    "safety_log_text": "S2I_SAFETY_LOG_TEXT",
    "mask_transcript": "S2I_MASK_TRANSCRIPT",
}

#: Settings that are secrets: also looked up in Colab's secret store.
SECRET_FIELDS = frozenset({"assemblyai_api_key", "server_token"})

DEFAULT_ASSEMBLYAI_STREAMING_URL = "wss://streaming.assemblyai.com/v3/ws"
DEFAULT_WHISPER_MODEL = "tiny.en"
DEFAULT_IMAGE_ENGINE = "dalle-mini"

#: AssemblyAI streaming models a user can choose; the service requires one on every session.
ASSEMBLYAI_SPEECH_MODELS = ("universal-streaming-english", "universal-streaming-multilingual", "u3-rt-pro")
DEFAULT_ASSEMBLYAI_SPEECH_MODEL = "universal-streaming-english"
#: The service's limits on ``keyterms_prompt``: longer terms are silently ignored, so we refuse them.
MAX_ASSEMBLYAI_KEYTERMS = 100
MAX_ASSEMBLYAI_KEYTERM_CHARS = 50

#: Levels of the classroom filter (``speech2image_nb.safety.LEVELS``, repeated so that reading the
#: settings imports nothing more); ``strict`` is the default everywhere.
SAFETY_LEVELS = ("strict", "standard", "off")
DEFAULT_SAFETY = "strict"


class Secret:
    """A string that will not show itself.

    ``str()``, ``repr()`` and f-strings give ``'**********'``; :meth:`reveal` gives the value. Two
    secrets compare equal when their values do (so settings can be compared in tests).
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("Secret value must be a str")
        self._value = value

    def reveal(self) -> str:
        """Return the secret value; call this only where it is sent over the wire."""
        return self._value

    def __str__(self) -> str:
        return "**********"

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> Any:  # pickling would write the value out: refuse
        raise TypeError("a Secret cannot be pickled")


def _colab_secret(name: str) -> str | None:
    """Read a Colab notebook secret, or None when not in Colab, not granted, or not set."""
    if not in_colab():
        return None
    try:
        from google.colab import userdata

        value = userdata.get(name)
    except Exception:  # not found, not granted to this notebook, or an old Colab
        return None
    return value or None


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the product needs to know about its surroundings.

    Build it with :meth:`resolve`, not directly, so that the environment and Colab secrets are
    consulted. Fields that hold secrets are :class:`Secret` or ``None``.
    """

    #: AssemblyAI API key; ``None`` means use the local Whisper engine.
    assemblyai_api_key: Secret | None = None
    #: WebSocket URL of AssemblyAI's v3 streaming endpoint (tests point it at a local fake).
    assemblyai_streaming_url: str = DEFAULT_ASSEMBLYAI_STREAMING_URL
    #: Image server to use; ``None`` means start an embedded server in this kernel.
    server_url: str | None = None
    #: Bearer token for the image server.
    server_token: Secret | None = None
    #: Whisper model: a size name (``tiny.en``, ``base.en``, ...) or a local CTranslate2 directory.
    whisper_model: str = DEFAULT_WHISPER_MODEL
    #: Engine of the embedded image server (``dalle-mini``, ``dalle-mega``, ``sd-turbo``, ...).
    image_engine: str = DEFAULT_IMAGE_ENGINE
    #: Local directory with the embedded engine's weights; ``None`` means the Hugging Face cache.
    model_dir: str | None = None
    #: AssemblyAI streaming model (one of :data:`ASSEMBLYAI_SPEECH_MODELS`).
    assemblyai_speech_model: str = DEFAULT_ASSEMBLYAI_SPEECH_MODEL
    #: Words AssemblyAI should expect (a class's names and places); at most 100 of 50 characters.
    assemblyai_keyterms: tuple[str, ...] = ()
    #: End-of-turn detection (``None``: the service's default). A turn ends after
    #: ``min_turn_silence_ms`` of silence once the model is ``end_of_turn_confidence_threshold``
    #: sure (0-1), and after ``max_turn_silence_ms`` of silence in any case.
    assemblyai_end_of_turn_confidence_threshold: float | None = None
    assemblyai_min_turn_silence_ms: int | None = None
    assemblyai_max_turn_silence_ms: int | None = None
    #: The classroom filter's level (one of :data:`SAFETY_LEVELS`): ``strict``, ``standard`` or ``off``.
    safety: str = DEFAULT_SAFETY
    #: A teacher's own words or phrases to refuse as well, and ones never to refuse.
    safety_block: tuple[str, ...] = ()
    safety_allow: tuple[str, ...] = ()
    #: A plain text file of such words: one a line, ``+`` allowed, ``-`` (or nothing) blocked, ``#`` comments.
    safety_file: str | None = None
    #: Keep the refused prompt's text in the teacher's log (``panel.refusals``); by default only
    #: the time, the place and the category are kept.
    safety_log_text: bool = False
    #: Show the words the filter refuses as ``•••`` in the live transcript (the projector's view).
    mask_transcript: bool = True

    @classmethod
    def resolve(
        cls,
        *,
        environ: Mapping[str, str] | None = None,
        colab_secret: Callable[[str], str | None] | None = None,
        **overrides: Any,
    ) -> Settings:
        """Resolve every field: explicit ``overrides`` first, then ``environ``, then Colab secrets.

        Parameters
        ----------
        environ
            The environment to read (default ``os.environ``, read now, not at import).
        colab_secret
            Lookup for Colab secrets (default: ``google.colab.userdata`` when in Colab).
        **overrides
            Field values; ``None`` means "not given". Secrets may be given as ``str``, key terms as
            a list of strings, the turn settings as numbers; every value may also be given as the
            string its environment variable would hold (key terms: comma-separated or a JSON array).
        """
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(
                f"Unknown setting(s): {', '.join(sorted(unknown))}. Known settings: {', '.join(ENV_VARS)}."
            )
        env = os.environ if environ is None else environ
        lookup_secret = _colab_secret if colab_secret is None else colab_secret
        values: dict[str, Any] = {}
        for name, var in ENV_VARS.items():
            value = overrides.get(name)
            if value is None:
                value = env.get(var) or None
            if value is None and name in SECRET_FIELDS:
                value = lookup_secret(var)
            if value is None:
                continue
            if isinstance(value, Secret):
                values[name] = value if value else None
                continue
            parse = _PARSERS.get(name)
            if parse is not None:
                values[name] = parse(value, f"{name} ({var})")
                continue
            if not isinstance(value, str):
                raise ConfigError(f"Setting {name} ({var}) must be a string, not {type(value).__name__}.")
            value = value.strip()
            if not value:
                continue
            values[name] = Secret(value) if name in SECRET_FIELDS else value
        settings = cls(**{k: v for k, v in values.items() if v is not None})
        settings._validate()
        return settings

    def _validate(self) -> None:
        url = self.assemblyai_streaming_url
        if not url.startswith(("ws://", "wss://")):
            raise ConfigError(f"ASSEMBLYAI_STREAMING_URL must start with ws:// or wss://, got {url!r}.")
        low, high = self.assemblyai_min_turn_silence_ms, self.assemblyai_max_turn_silence_ms
        if low is not None and high is not None and low > high:
            raise ConfigError(
                f"The AssemblyAI minimum turn silence ({low} ms, S2I_ASSEMBLYAI_MIN_TURN_SILENCE_MS) is "
                f"longer than the maximum ({high} ms, S2I_ASSEMBLYAI_MAX_TURN_SILENCE_MS): lower the "
                "minimum or raise the maximum."
            )

    def safety_policy(self) -> Policy:
        """The classroom filter these settings describe (reads :attr:`safety_file` now).

        The environment was read already by :meth:`resolve`, so it is not read again here.

        Raises
        ------
        ConfigError
            When the word file cannot be read.
        """
        from .safety import Policy

        return Policy.resolve(
            self.safety,
            blocked=self.safety_block,
            allowed=self.safety_allow,
            word_file=self.safety_file,
            log_text=self.safety_log_text,
            environ={},
        )

    @property
    def speech_engine(self) -> str:
        """The speech-to-text engine these settings select: AssemblyAI with a key, else Whisper."""
        return "assemblyai" if self.assemblyai_api_key else "whisper"


# --- parsers for the settings that are not plain strings ------------------------------------------
# Each takes the given value (a string from the environment, or the argument's own type) and the
# setting's name for the message, and returns the value or None (blank means "not given").


def _parse_speech_model(value: Any, name: str) -> str | None:
    if not isinstance(value, str):
        raise ConfigError(f"Setting {name} must be a model name, not {type(value).__name__}.")
    model = value.strip().lower()
    if not model:
        return None
    if model not in ASSEMBLYAI_SPEECH_MODELS:
        raise ConfigError(
            f"Unknown AssemblyAI speech model {value.strip()!r} in {name}: choose one of "
            f"{', '.join(ASSEMBLYAI_SPEECH_MODELS)}."
        )
    return model


def _parse_keyterms(value: Any, name: str) -> tuple[str, ...] | None:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except ValueError:
                raise ConfigError(
                    f"Setting {name} is not a valid JSON array: write the terms as "
                    '["Ada Lovelace", "Timbuktu"] or as Ada Lovelace, Timbuktu.'
                ) from None
        else:
            value = text.split(",")
    if not isinstance(value, (list, tuple)) or not all(isinstance(term, str) for term in value):
        raise ConfigError(f"Setting {name} must be a list of words or phrases (strings).")
    terms = tuple(dict.fromkeys(" ".join(term.split()) for term in value if term.strip()))
    if not terms:
        return None
    if len(terms) > MAX_ASSEMBLYAI_KEYTERMS:
        raise ConfigError(
            f"Setting {name} has {len(terms)} key terms; AssemblyAI takes at most "
            f"{MAX_ASSEMBLYAI_KEYTERMS}: keep the ones that matter most."
        )
    for term in terms:
        if len(term) > MAX_ASSEMBLYAI_KEYTERM_CHARS:
            raise ConfigError(
                f"The key term {term[:20]!r}... in {name} has {len(term)} characters; AssemblyAI "
                f"ignores terms over {MAX_ASSEMBLYAI_KEYTERM_CHARS}: shorten or split it."
            )
    return terms


def _number(value: Any, name: str, kind: type[int] | type[float]) -> int | float | None:
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            return kind(text)
        except ValueError:
            pass
    elif (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and (kind is float or float(value).is_integer())
    ):
        return kind(value)
    what = "a whole number of milliseconds" if kind is int else "a number"
    raise ConfigError(f"Setting {name} must be {what}, got {value!r}.")


def _parse_confidence(value: Any, name: str) -> float | None:
    number = _number(value, name, float)
    if number is not None and not 0.0 <= number <= 1.0:
        raise ConfigError(f"Setting {name} must be between 0 and 1 (a confidence), got {number}.")
    return number


def _parse_ms(value: Any, name: str) -> int | None:
    number = _number(value, name, int)
    if number is not None and number < 0:
        raise ConfigError(f"Setting {name} must be 0 or more milliseconds, got {number}.")
    return None if number is None else int(number)


def _parse_safety_level(value: Any, name: str) -> str | None:
    if not isinstance(value, str):
        raise ConfigError(f"Setting {name} must be a level name, not {type(value).__name__}.")
    level = value.strip().lower()
    if not level:
        return None
    if level not in SAFETY_LEVELS:
        raise ConfigError(
            f"Unknown classroom filter level {value.strip()!r} in {name}: choose one of "
            f"{', '.join(SAFETY_LEVELS)}."
        )
    return level


def _parse_words(value: Any, name: str) -> tuple[str, ...] | None:
    """Words or phrases: a list of strings, or one string of them separated by commas."""
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, (list, tuple, set, frozenset)) or not all(isinstance(w, str) for w in value):
        raise ConfigError(
            f"Setting {name} must be words or phrases: a list of strings, or one string separated by commas."
        )
    words = tuple(dict.fromkeys(" ".join(word.split()) for word in value if word.strip()))
    return words or None


def _parse_path(value: Any, name: str) -> str | None:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise ConfigError(f"Setting {name} must be a file path, not {type(value).__name__}.")
    return value.strip() or None


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _parse_bool(value: Any, name: str) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if not text:
            return None
        if text in _TRUE | _FALSE:
            return text in _TRUE
    raise ConfigError(f"Setting {name} must be true or false (1/0, yes/no, on/off), got {value!r}.")


_PARSERS: dict[str, Callable[[Any, str], Any]] = {
    "assemblyai_speech_model": _parse_speech_model,
    "assemblyai_keyterms": _parse_keyterms,
    "assemblyai_end_of_turn_confidence_threshold": _parse_confidence,
    "assemblyai_min_turn_silence_ms": _parse_ms,
    "assemblyai_max_turn_silence_ms": _parse_ms,
    "safety": _parse_safety_level,
    "safety_block": _parse_words,
    "safety_allow": _parse_words,
    "safety_file": _parse_path,
    "safety_log_text": _parse_bool,
    "mask_transcript": _parse_bool,
}


def ask_secret(name: str, prompt: str | None = None) -> Secret | None:
    """Ask the user for a secret with ``getpass`` (input hidden); ``None`` if they leave it blank.

    For notebooks: the value never appears in the cell's source or output.
    """
    import getpass

    value = getpass.getpass(prompt or f"{name} (leave blank to skip): ").strip()
    return Secret(value) if value else None
