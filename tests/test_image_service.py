"""Which image server is used: one decision for the panel, speech2image_nb.generate() and the CLI."""

from __future__ import annotations

import atexit

import pytest

import speech2image_nb
from speech2image_nb.config import Settings
from speech2image_nb.images import service
from speech2image_nb.server.engines.noise import NoiseEngine
from speech2image_nb.ui.panel import Panel
from tests.image_server_utils import running_server
from tests.ui.conftest import wait_until
from tests.ui.fakes import FakeRecorder, ScriptedTranscriber


@pytest.fixture(autouse=True)
def no_connected_server():
    """Every test starts and ends with no connect() server and no default embedded server."""
    service.disconnect()
    yield
    service.disconnect()


def named_noise(name: str) -> NoiseEngine:
    """A noise engine that reports ``name``, so that a test can tell two servers apart."""
    engine = NoiseEngine(size_px=16)
    engine.name = name
    return engine


def settings(**env: str) -> Settings:
    return Settings.resolve(environ={"S2I_IMAGE_ENGINE": "noise", **env}, colab_secret=lambda n: None)


def panel_engine(panel_settings: Settings) -> str:
    """Open a panel, draw one image and return the engine its history names."""
    panel = Panel(settings=panel_settings, recorder=FakeRecorder(), transcriber=ScriptedTranscriber())
    try:
        assert panel.wait_ready(30), panel.error_text
        panel.image_count_slider.value = 1
        panel.generate("a red fox")
        assert panel.wait_idle(30) and panel.error_text == "", panel.error_text
        return panel.controller.history[-1].engine
    finally:
        panel.close()


def test_precedence_is_connect_then_settings_argument_then_environment_then_embedded():
    """connect() first, then a server_url argument, then S2I_SERVER_URL, else an embedded server."""
    from_env = settings(S2I_SERVER_URL="http://127.0.0.1:1111")
    from_argument = Settings.resolve(
        environ={"S2I_SERVER_URL": "http://127.0.0.1:1111"},
        colab_secret=lambda n: None,
        server_url="127.0.0.1:2222",
    )
    assert service.choose_server(settings()).label == "embedded noise"
    assert service.ImageService(settings()).is_embedded
    assert not any(service.ImageService(each).is_embedded for each in (from_env, from_argument))
    assert service.choose_server(from_env) == service.ServerChoice("settings", "http://127.0.0.1:1111")
    assert service.choose_server(from_argument).label == "127.0.0.1:2222"
    client = service.connect("127.0.0.1:3333", token="t")
    for each in (settings(), from_env, from_argument):
        assert service.choose_server(each) == service.ServerChoice("connect", "http://127.0.0.1:3333", client)
    assert not service.ImageService(settings()).is_embedded  # connect() beats the embedded server
    service.disconnect()
    assert service.choose_server(from_env).source == "settings"


def test_connect_beats_s2i_server_url_for_the_panel_and_generate_alike(monkeypatch):
    """Two real servers, S2I_SERVER_URL names one and connect() the other: panel and generate() agree."""
    with (
        running_server(named_noise("env-server"), token="env-token") as env_server,
        running_server(named_noise("connected-server"), token="connect-token") as connected_server,
    ):
        monkeypatch.setenv("S2I_SERVER_URL", env_server.url)
        monkeypatch.setenv("S2I_SERVER_TOKEN", "env-token")
        env_settings = Settings.resolve(colab_secret=lambda n: None)
        assert speech2image_nb.generate("a kite", seed=8).engine == "env-server"
        assert panel_engine(env_settings) == "env-server"

        client = speech2image_nb.connect(connected_server.url, token="connect-token")
        assert service.default_client() is client
        result = speech2image_nb.generate("a kite", seed=8, options={"steps": 2})
        assert result.engine == "connected-server" and result.seed == 8
        assert panel_engine(env_settings) == "connected-server"  # the environment still names the other


def test_module_generate_reads_s2i_server_url_and_token(monkeypatch):
    """Without connect(), generate() uses S2I_SERVER_URL with S2I_SERVER_TOKEN; both import paths work."""
    assert speech2image_nb.images.generate is speech2image_nb.generate is service.generate
    assert speech2image_nb.images.connect is speech2image_nb.connect is service.connect
    with running_server(NoiseEngine(size_px=16), token="tok-123") as srv:
        monkeypatch.setenv("S2I_SERVER_URL", srv.url)
        monkeypatch.setenv("S2I_SERVER_TOKEN", "tok-123")
        result = speech2image_nb.generate("a kite", seed=8)
        assert result.seed == 8 and len(result.images) == 1
        again = speech2image_nb.images.generate("a kite", seed=8)
        assert again.images[0].tobytes() == result.images[0].tobytes()


def test_embedded_server_is_stopped_by_close_and_registered_for_interpreter_exit(monkeypatch):
    """An embedded server is registered to stop at interpreter exit, and close() stops it."""
    registered, unregistered = [], []
    monkeypatch.setattr(atexit, "register", registered.append)
    monkeypatch.setattr(atexit, "unregister", unregistered.append)
    embedded = service.ImageService(settings())
    client = embedded.open(timeout_s=30)
    assert client.health()["engine"] == "noise" and embedded.engine_name() == "noise"
    assert embedded.close in registered
    server = embedded._server
    assert server is not None and server.ready
    embedded.close()
    assert not server.ready and server.join(0)
    assert embedded.close in unregistered
    embedded.close()  # idempotent


def test_generate_embedded_server_stops_when_connect_names_another(monkeypatch):
    """generate() without a URL starts an embedded server; connect() stops it and draws elsewhere."""
    monkeypatch.delenv("S2I_SERVER_URL", raising=False)
    monkeypatch.setenv("S2I_IMAGE_ENGINE", "noise")
    assert speech2image_nb.generate("a kite").engine == "noise"
    default = service._default
    assert default is not None and default._server is not None
    embedded = default._server
    with running_server(named_noise("remote")) as remote:
        speech2image_nb.connect(remote.url)
        assert wait_until(lambda: not embedded.ready, 10)
        assert speech2image_nb.generate("a kite").engine == "remote"


def test_an_open_service_switches_to_a_server_connect_names_later():
    """connect() after a service opened (a new tunnel line): next open() uses it; its embedded one stops."""
    embedded = service.ImageService(settings())
    try:
        assert embedded.open(timeout_s=30).health()["engine"] == "noise"
        started = embedded._server
        assert started is not None and started.ready
        with running_server(named_noise("new-tunnel")) as remote:
            client = service.connect(remote.url)
            assert embedded.open() is client and embedded.engine_name() == "new-tunnel"
            assert embedded.describe() == remote.url and not started.ready
            service.connect(remote.url)  # the same server again: one more switch, still drawing
            assert embedded.open().health()["engine"] == "new-tunnel"
    finally:
        embedded.close()
