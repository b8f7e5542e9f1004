"""No secret ever reaches the output: run real flows with known fake secrets, capture everything
printed and logged (DEBUG, every logger), and search it for the secret values.

Each part of the product adds its flows here: the settings, the speech clients, the image client
and the server. A flow is a function that uses SECRETS, asserts that it reached what it exercises
(the secret was sent and refused, the right token was served, the panel showed the refusal), and
returns the Speech2ImageErrors it provoked on purpose, whose message, repr and traceback are
searched too. Any exception a flow does not catch fails the test: an error on the way is not a
flow that reached its target.
"""

from __future__ import annotations

import logging
import os
import traceback
from collections.abc import Callable

import pytest

from speech2image_nb.config import Settings
from speech2image_nb.errors import AuthError, Speech2ImageError
from tests.conftest import TIME_FACTOR

FAKE_KEY = "fake-assemblyai-key-3f9c2b7e51d04a"
FAKE_TOKEN = "fake-server-token-8d1e6a0c42f7b9"
SECRETS = (FAKE_KEY, FAKE_TOKEN)
ENV = {"ASSEMBLYAI_API_KEY": FAKE_KEY, "S2I_SERVER_TOKEN": FAKE_TOKEN}


Flow = Callable[[], list[Speech2ImageError]]


def flow_settings() -> list[Speech2ImageError]:
    """Resolve settings from the environment, then print and log them every way a user might."""
    settings = Settings.resolve(environ=ENV, colab_secret=lambda n: None)
    assert settings.assemblyai_api_key is not None and settings.server_token is not None
    assert (settings.assemblyai_api_key.reveal(), settings.server_token.reveal()) == SECRETS
    print(settings, repr(settings), f"{settings.assemblyai_api_key}", vars(settings))
    logging.getLogger("speech2image_nb").debug("settings: %r %s", settings, settings.server_token)
    try:
        raise Speech2ImageError(f"example failure with {settings}")
    except Speech2ImageError as exc:
        return [exc]


def flow_image_server() -> list[Speech2ImageError]:
    """A token-protected server (access log on) and the client: wrong token refused, right token served."""
    from speech2image_nb.errors import AuthError
    from speech2image_nb.images import service
    from speech2image_nb.images.client import ImageClient
    from speech2image_nb.server import start_background
    from speech2image_nb.server.engines.noise import NoiseEngine

    # an earlier server with access_log=False turns propagation off process-wide (uvicorn's config)
    logging.getLogger("uvicorn.access").propagate = True
    server = start_background(NoiseEngine(size_px=16), token=FAKE_TOKEN, access_log=True, ready_timeout_s=30)
    log = logging.getLogger("speech2image_nb")
    refusals: list[Speech2ImageError] = []
    try:
        wrong = ImageClient(server.url, token=FAKE_TOKEN[::-1])
        with pytest.raises(AuthError) as refused:
            wrong.generate("a fox")
        assert refused.value.service == "image server"
        log.debug("refused: %s %r", refused.value, refused.value)
        refusals.append(refused.value)
        right = ImageClient(server.url, token=FAKE_TOKEN)
        result = right.generate("a fox", seed=1)
        assert len(result.images) == 1
        events = list(right.generate_stream("a fox", seed=1))
        print(right, repr(right), vars(right), server, right.health(), events[-1])
        os.environ["S2I_SERVER_URL"] = server.url
        try:
            service.disconnect()
            settings_client = service.default_client()  # S2I_SERVER_TOKEN from the environment
            print(settings_client, vars(settings_client))
            assert settings_client.generate("a fox", seed=1).seed == 1
        finally:
            service.disconnect()
            del os.environ["S2I_SERVER_URL"]
        with pytest.raises(AuthError) as again:
            wrong.generate("again")
        refusals.append(again.value)
    finally:
        server.stop()
    return refusals


FLOWS: list[Flow] = [flow_settings, flow_image_server]


def flow_panel() -> list[Speech2ImageError]:
    """The panel with a refused key and a refused token: its widgets, logs and errors stay clean."""
    import time

    from speech2image_nb.server import start_background
    from speech2image_nb.ui.panel import Panel
    from tests.fakes.assemblyai import FakeAssemblyAI
    from tests.ui.fakes import FakeRecorder

    server = start_background("noise", token="another-token", wait=True)
    try:
        with FakeAssemblyAI(api_key="another-key") as fake:
            env = {**ENV, "S2I_SERVER_URL": server.url, "ASSEMBLYAI_STREAMING_URL": fake.url}
            panel = Panel(
                settings=Settings.resolve(environ=env, colab_secret=lambda n: None), recorder=FakeRecorder()
            )
            try:
                assert panel.wait_ready(30 * TIME_FACTOR), panel.error_text
                panel.recorder.play("tests/data/piper_01.wav")
                deadline = time.monotonic() + 20 * TIME_FACTOR
                while "AssemblyAI" not in panel.error_text and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert "AssemblyAI" in panel.error_text, panel.error_text  # the key was refused
                assert fake.sessions and fake.sessions[-1].authorization == FAKE_KEY
                print(panel.error_html.value, panel.status_html.value, repr(panel), panel.settings)
                panel.generate("a red fox")
                assert panel.wait_idle(30 * TIME_FACTOR)
                assert "token" in panel.error_text.lower(), panel.error_text  # the token was refused
                assert panel.controller.history == []  # nothing was drawn with the wrong token
                print(panel.error_html.value, panel.status_html.value, panel.transcript_html.value)
            finally:
                panel.close()
    finally:
        server.stop()
    return []


FLOWS.append(flow_panel)


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, "a secret leaked into the output"
        assert secret[8:-4] not in text, "part of a secret leaked into the output"


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.__name__)
def test_no_secret_in_output_logs_or_errors(flow, capfd, caplog, monkeypatch):
    """Everything printed, logged (DEBUG) or raised during the flow is free of the secrets."""
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    caplog.set_level(logging.DEBUG)
    errors = flow()
    error_text = "".join(
        "".join(traceback.format_exception(exc)) + repr(exc) + str(vars(exc)) for exc in errors
    )
    out, err = capfd.readouterr()
    logged = "\n".join(r.getMessage() + repr(r.args) for r in caplog.records)
    assert_no_secret(out + err + logged + error_text)


def flow_assemblyai() -> list[Speech2ImageError]:
    """Stream to a (fake) AssemblyAI that refuses the key: the key is sent, refused, and never shown."""
    import asyncio

    from speech2image_nb.audio import chunk_pcm, decode_audio
    from speech2image_nb.speech.assemblyai import AssemblyAITranscriber
    from tests.conftest import DATA_DIR
    from tests.fakes.assemblyai import FakeAssemblyAI

    pcm = decode_audio(DATA_DIR / "piper_01.wav")[:8000]

    async def chunks():
        for chunk in chunk_pcm(pcm, 100):
            yield chunk

    async def run(transcriber: AssemblyAITranscriber) -> None:
        async for event in transcriber.stream(chunks()):
            logging.getLogger("speech2image_nb").debug("event %r", event)

    with FakeAssemblyAI(api_key="the-only-key-the-fake-takes") as fake:
        settings = Settings.resolve(assemblyai_streaming_url=fake.url)  # key from the environment
        transcriber = AssemblyAITranscriber(settings=settings)
        print(transcriber, vars(transcriber))
        with pytest.raises(AuthError) as refused:
            asyncio.run(run(transcriber))
        assert fake.sessions[-1].authorization == FAKE_KEY  # it was sent, in the header
        assert fake.sessions[-1].close_code == 1008
    return [refused.value]


FLOWS.append(flow_assemblyai)
