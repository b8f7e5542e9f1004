"""Settings resolution order (arguments > environment > Colab secrets) and validation."""

from __future__ import annotations

import pickle
import sys
import types

import pytest

from speech2image_nb.config import Secret, Settings, in_colab
from speech2image_nb.errors import ConfigError


def test_defaults_with_empty_environment():
    """No env, no Colab: Whisper speech engine, embedded dalle-mini server."""
    settings = Settings.resolve(environ={}, colab_secret=lambda name: None)
    assert settings.assemblyai_api_key is None
    assert settings.speech_engine == "whisper"
    assert settings.server_url is None
    assert settings.image_engine == "dalle-mini"
    assert settings.whisper_model == "tiny.en"
    assert settings.assemblyai_streaming_url == "wss://streaming.assemblyai.com/v3/ws"


def test_arguments_beat_environment_beats_colab():
    """An argument wins over the env var, which wins over the Colab secret."""
    env = {
        "ASSEMBLYAI_API_KEY": "from-env",
        "S2I_SERVER_URL": "http://env:8000",
        "S2I_WHISPER_MODEL": "base.en",
    }
    colab = {"ASSEMBLYAI_API_KEY": "from-colab", "S2I_SERVER_TOKEN": "colab-token"}
    settings = Settings.resolve(environ=env, colab_secret=colab.get, server_url="http://arg:1")
    assert settings.server_url == "http://arg:1"
    assert settings.whisper_model == "base.en"
    assert settings.assemblyai_api_key == Secret("from-env")
    assert settings.server_token == Secret("colab-token")
    assert settings.speech_engine == "assemblyai"
    only_colab = Settings.resolve(environ={}, colab_secret=colab.get)
    assert only_colab.assemblyai_api_key == Secret("from-colab")


def test_blank_values_count_as_unset():
    """An empty or whitespace env var does not count as a key."""
    settings = Settings.resolve(environ={"ASSEMBLYAI_API_KEY": "  "}, colab_secret=lambda n: None)
    assert settings.assemblyai_api_key is None


def test_unknown_setting_and_bad_url_are_config_errors():
    """Typos in argument names and non-websocket streaming URLs are refused with a clear message."""
    with pytest.raises(ConfigError, match="server_ulr"):
        Settings.resolve(environ={}, server_ulr="http://x")
    with pytest.raises(ConfigError, match="ws:// or wss://"):
        Settings.resolve(environ={"ASSEMBLYAI_STREAMING_URL": "http://x"}, colab_secret=lambda n: None)


def test_colab_secrets_are_read_through_userdata(monkeypatch):
    """In Colab (google.colab imported), secrets come from google.colab.userdata.get."""
    google = types.ModuleType("google")
    colab = types.ModuleType("google.colab")
    userdata = types.ModuleType("google.colab.userdata")

    def get(name: str) -> str:
        if name == "ASSEMBLYAI_API_KEY":
            return "colab-key"
        raise KeyError(name)  # Colab raises SecretNotFoundError

    userdata.get = get  # type: ignore[attr-defined]
    colab.userdata = userdata  # type: ignore[attr-defined]
    google.colab = colab  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setitem(sys.modules, "google.colab.userdata", userdata)
    assert in_colab()
    settings = Settings.resolve(environ={})
    assert settings.assemblyai_api_key == Secret("colab-key")
    assert settings.server_token is None


def test_secret_masks_itself_everywhere():
    """str, repr, format and pickling never give the value; reveal() does."""
    secret = Secret("sk-abc123")
    assert "abc123" not in str(secret) + repr(secret) + f"{secret}" + f"{secret!r}" + f"{secret:>20}"
    assert secret.reveal() == "sk-abc123"
    with pytest.raises(TypeError):
        pickle.dumps(secret)
