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
import os
from collections.abc import Callable, Mapping
from typing import Any

from .errors import ConfigError
from .frontend import in_colab

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
}

#: Settings that are secrets: also looked up in Colab's secret store.
SECRET_FIELDS = frozenset({"assemblyai_api_key", "server_token"})

DEFAULT_ASSEMBLYAI_STREAMING_URL = "wss://streaming.assemblyai.com/v3/ws"
DEFAULT_WHISPER_MODEL = "tiny.en"
DEFAULT_IMAGE_ENGINE = "dalle-mini"


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
            Field values; ``None`` means "not given". Secrets may be given as ``str``.
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

    @property
    def speech_engine(self) -> str:
        """The speech-to-text engine these settings select: AssemblyAI with a key, else Whisper."""
        return "assemblyai" if self.assemblyai_api_key else "whisper"


def ask_secret(name: str, prompt: str | None = None) -> Secret | None:
    """Ask the user for a secret with ``getpass`` (input hidden); ``None`` if they leave it blank.

    For notebooks: the value never appears in the cell's source or output.
    """
    import getpass

    value = getpass.getpass(prompt or f"{name} (leave blank to skip): ").strip()
    return Secret(value) if value else None
