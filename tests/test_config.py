"""Settings resolution order (arguments > environment > Colab secrets) and validation."""

from __future__ import annotations

import pickle
import re
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


def resolve(env=None, **overrides):
    return Settings.resolve(environ=env or {}, colab_secret=lambda n: None, **overrides)


def test_assemblyai_session_options_default_to_english_and_the_services_turn_detection():
    """Without settings: universal-streaming-english, no key terms, turn detection left to the service."""
    settings = resolve()
    assert settings.assemblyai_speech_model == "universal-streaming-english"
    assert settings.assemblyai_keyterms == ()
    assert settings.assemblyai_end_of_turn_confidence_threshold is None
    assert (settings.assemblyai_min_turn_silence_ms, settings.assemblyai_max_turn_silence_ms) == (None, None)


def test_assemblyai_session_options_come_from_the_environment_or_arguments():
    """Env strings are parsed (key terms comma-separated or JSON); arguments take native types and win."""
    env = {
        "S2I_ASSEMBLYAI_SPEECH_MODEL": " U3-RT-PRO ",
        "S2I_ASSEMBLYAI_KEYTERMS": "Ada  Lovelace, Timbuktu,, Ada Lovelace",
        "S2I_ASSEMBLYAI_END_OF_TURN_CONFIDENCE_THRESHOLD": "0.7",
        "S2I_ASSEMBLYAI_MIN_TURN_SILENCE_MS": "160",
        "S2I_ASSEMBLYAI_MAX_TURN_SILENCE_MS": "400",
    }
    from_env = resolve(env)
    assert from_env.assemblyai_speech_model == "u3-rt-pro"
    assert from_env.assemblyai_keyterms == ("Ada Lovelace", "Timbuktu")
    assert from_env.assemblyai_end_of_turn_confidence_threshold == 0.7
    assert (from_env.assemblyai_min_turn_silence_ms, from_env.assemblyai_max_turn_silence_ms) == (160, 400)
    assert resolve({"S2I_ASSEMBLYAI_KEYTERMS": '["Paris, Texas", "Nyx"]'}).assemblyai_keyterms == (
        "Paris, Texas",
        "Nyx",
    )
    from_args = resolve(
        env,
        assemblyai_speech_model="universal-streaming-multilingual",
        assemblyai_keyterms=["Zanzibar"],
        assemblyai_end_of_turn_confidence_threshold=1,
        assemblyai_max_turn_silence_ms=3600.0,
    )
    assert from_args.assemblyai_speech_model == "universal-streaming-multilingual"
    assert from_args.assemblyai_keyterms == ("Zanzibar",)
    assert from_args.assemblyai_end_of_turn_confidence_threshold == 1.0
    assert (from_args.assemblyai_min_turn_silence_ms, from_args.assemblyai_max_turn_silence_ms) == (160, 3600)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"assemblyai_speech_model": "universal-english"}, "choose one of universal-streaming-english"),
        ({"assemblyai_speech_model": 3}, "must be a model name"),
        (
            {"assemblyai_keyterms": [f"term {i}" for i in range(101)]},
            "101 key terms; AssemblyAI takes at most 100",
        ),
        ({"assemblyai_keyterms": ["x" * 51]}, "has 51 characters; AssemblyAI ignores terms over 50"),
        ({"assemblyai_keyterms": '["unclosed"'}, "not a valid JSON array"),
        ({"assemblyai_keyterms": [1, 2]}, "must be a list of words or phrases"),
        ({"assemblyai_end_of_turn_confidence_threshold": "1.5"}, "between 0 and 1"),
        ({"assemblyai_end_of_turn_confidence_threshold": "high"}, "must be a number"),
        ({"assemblyai_min_turn_silence_ms": "0.5 s"}, "whole number of milliseconds"),
        ({"assemblyai_min_turn_silence_ms": 12.5}, "whole number of milliseconds"),
        ({"assemblyai_max_turn_silence_ms": True}, "whole number of milliseconds"),
        ({"assemblyai_max_turn_silence_ms": -1}, "0 or more milliseconds"),
        ({"assemblyai_min_turn_silence_ms": 900, "assemblyai_max_turn_silence_ms": 400}, "lower the minimum"),
    ],
)
def test_bad_assemblyai_session_options_are_config_errors_naming_the_setting(overrides, message):
    """Each malformed value is refused when settings resolve, naming the setting and what to do."""
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        resolve(**overrides)
    name = next(iter(overrides))
    assert name in str(info.value) or name.upper().replace("ASSEMBLYAI_", "S2I_ASSEMBLYAI_") in str(
        info.value
    )
