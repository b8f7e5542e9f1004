"""The panel driven kernel-side: record, transcript, prompt, images, hands-free, history, errors."""

from __future__ import annotations

from PIL import Image

from speech2image_nb import errors
from speech2image_nb.config import Settings
from speech2image_nb.ui.panel import Panel
from tests.conftest import DATA_DIR
from tests.ui.conftest import grid_images, wait_until
from tests.ui.fakes import FakeClient, FakeImageService, FakeRecorder, ScriptedTranscriber

FOX = DATA_DIR / "piper_01.wav"


def test_recording_fills_transcript_and_prompt_and_generate_shows_n_images(make_panel):
    """Record -> partials then the final in the transcript, final in the prompt; Generate -> N images."""
    panel = make_panel(image_count=3)
    seen = []
    panel.transcript_html.observe(lambda c: seen.append(c["new"]), names="value")
    panel.recorder.play(FOX)
    assert wait_until(lambda: panel.prompt_text.value == "a red fox sitting in the snow")
    assert any("s2i-partial" in v for v in seen), "partials were shown while recording"
    assert "s2i-partial" not in panel.transcript_html.value and "fox" in panel.transcript_html.value
    assert panel.controller.running is None  # not hands-free: nothing generated yet
    panel.generate_button.click()
    assert panel.wait_idle(10)
    images = grid_images(panel)
    assert len(images) == 3 and all(im.size == (32, 32) for im in images)
    assert "1234" in panel.seed_label.value
    assert panel.error_text == ""


def test_hands_free_generates_each_sentence_in_order_without_cancelling(make_panel):
    """Hands-free: two sentences -> two generations, the second queued behind the first."""
    service = FakeImageService(FakeClient(delay_s=0.3))
    panel = make_panel(
        hands_free=True,
        image_count=2,
        image_service=service,
        transcriber=ScriptedTranscriber(("a red fox", "a blue bird"), formatted=True),
    )
    panel.recorder.play(FOX)
    assert wait_until(lambda: len(panel.controller.history) == 2)
    assert panel.wait_idle(10)
    assert service.client.prompts == ["a red fox", "A blue bird."]  # second was still queued: formatted
    assert len(panel.history_box.children) == 2
    assert len(grid_images(panel)) == 2


def test_history_click_restores_prompt_and_images_and_save_writes_pngs(make_panel, tmp_path):
    """Clicking a history entry restores its prompt and images; Save writes PNGs named by id."""
    panel = make_panel(image_count=2)
    panel.generate("a red fox")
    assert panel.wait_idle(10)
    first = panel.controller.history[0]
    panel.image_count_slider.value = 1
    panel.generate("a blue bird")
    assert panel.wait_idle(10)
    assert len(grid_images(panel)) == 1
    oldest_button = panel.history_box.children[-1].children[1]
    oldest_button.click()
    assert panel.prompt_text.value == "a red fox" and len(grid_images(panel)) == 2
    panel.folder_text.value = str(tmp_path / "saved")
    paths = panel.save()
    assert sorted(p.name for p in paths) == [f"{first.id}-1.png", f"{first.id}-2.png"]
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG"


def test_image_server_down_shows_the_fix_then_generate_works_once_it_is_up(make_panel):
    """Server down: one readable line in the panel; after it comes back, Generate works."""
    service = FakeImageService(down=True)
    panel = make_panel(image_service=service)
    assert "Image server:" in panel.error_text and "S2I_SERVER_URL" in panel.error_text
    panel.prompt_text.value = "a red fox"
    panel.generate_button.click()  # fails again, still no exception escapes
    assert panel.wait_idle(10)
    assert "does not answer" in panel.error_text
    service.down = False
    panel.generate_button.click()
    assert panel.wait_idle(10)
    assert panel.error_text == "" and len(grid_images(panel)) == 4


def test_speech_auth_failure_shows_message_stops_recording_and_next_take_works(make_panel):
    """An AssemblyAI key refusal is one line; recording stops; the next take transcribes."""
    bad = ScriptedTranscriber(
        error=errors.AuthError(
            "AssemblyAI refused the API key: check ASSEMBLYAI_API_KEY.", service="AssemblyAI"
        )
    )
    panel = make_panel(transcriber=bad)
    panel.recorder.recording = True
    assert wait_until(lambda: "Key refused by AssemblyAI" in panel.error_text)
    assert wait_until(lambda: panel.recorder.recording is False)
    bad.error = None
    panel.recorder.play(FOX)
    assert wait_until(lambda: "fox" in panel.prompt_text.value)
    assert panel.error_text == ""


def test_microphone_denied_shows_message_and_typing_a_prompt_still_generates(make_panel):
    """A denied microphone is one line with the fix; Generate from a typed prompt still works."""
    panel = make_panel(image_count=1)
    panel.recorder.fail(
        errors.MicrophonePermissionDenied(
            "The browser refused the microphone: allow it in the site settings and press Record again."
        )
    )
    assert panel.error_text.startswith("Microphone: The browser refused")
    panel.prompt_text.value = "a red fox"
    panel.generate_button.click()
    assert panel.wait_idle(10) and len(grid_images(panel)) == 1 and panel.error_text == ""


def test_bad_seed_and_empty_prompt_are_lines_not_tracebacks(make_panel):
    """Invalid input from the widgets shows as the error line; nothing is raised to the cell."""
    panel = make_panel()
    panel.generate_button.click()
    assert "prompt is empty" in panel.error_text
    panel.prompt_text.value = "fox"
    panel.seed_text.value = "abc"
    panel.generate_button.click()
    assert "Seed must be a whole number" in panel.error_text


def test_seed_is_sent_and_shown(make_panel):
    """A typed seed goes to the server and is shown after generating."""
    panel = make_panel(image_count=1)
    panel.seed_text.value = "77"
    panel.generate("a red fox")
    assert panel.wait_idle(10)
    assert "<b>77</b>" in panel.seed_label.value


def test_space_key_message_toggles_recording(make_panel):
    """The hotkey widget's message (Space in the browser) starts and stops the recorder."""
    panel = make_panel()
    hotkeys = panel.children[-1]
    hotkeys._handle_custom_msg({"kind": "toggle-recording"}, [])
    assert panel.recorder.recording is True
    hotkeys._handle_custom_msg({"kind": "something-else"}, [])
    assert panel.recorder.recording is True
    hotkeys._handle_custom_msg({"kind": "toggle-recording"}, [])
    assert panel.recorder.recording is False


def test_after_stop_recorder_transcribes_the_whole_take(make_panel):
    """A recorder that delivers audio after stop (ipywebrtc) gets its take transcribed once."""

    class AfterStopRecorder(FakeRecorder):
        streams = False

        def play(self, path, *, chunk_ms=100):
            from speech2image_nb.audio import decode_audio

            self.recording = True
            self.recording = False
            for cb in self._audio:
                cb(decode_audio(path).tobytes())

    panel = make_panel(recorder=AfterStopRecorder())
    panel.recorder.play(FOX)
    assert wait_until(lambda: panel.prompt_text.value == "a red fox sitting in the snow")


def test_app_displays_once_and_returns_the_panel(monkeypatch):
    """app() displays the panel itself and returns it."""
    import IPython.display

    from speech2image_nb.ui import panel as panel_module
    from speech2image_nb.ui.session import PanelSession

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj, **kw: shown.append(obj))
    monkeypatch.setattr(PanelSession, "_warm_up_images", lambda self: None)
    monkeypatch.setattr(PanelSession, "_warm_up_speech", lambda self: None)
    panel = panel_module.app(recorder=FakeRecorder(), image_count=2, server_url="http://127.0.0.1:9")
    try:
        assert shown == [panel] and isinstance(panel, Panel)
        assert panel.image_count_slider.value == 2
        assert "http://127.0.0.1:9" in panel.status_html.value
    finally:
        panel.close()


# --- with the real image server (embedded, test engine) -------------------------------------------


def real_settings(**env):
    return Settings.resolve(environ={"S2I_IMAGE_ENGINE": "noise", **env}, colab_secret=lambda n: None)


def test_embedded_server_starts_reports_ready_and_streams_images_into_the_grid(make_panel):
    """No server URL: the panel starts an embedded server, shows it ready, and fills the grid."""
    panel = make_panel(settings=real_settings(), image_service=None, image_count=3)
    assert "embedded noise" in panel.status_html.value and "(ready)" in panel.status_html.value
    grids = []
    panel.grid_html.observe(lambda c: grids.append(c["new"]), names="value")
    panel.recorder.play(FOX)
    assert wait_until(lambda: "fox" in panel.prompt_text.value)
    panel.generate_button.click()
    assert panel.wait_idle(30)
    assert panel.error_text == ""
    images = grid_images(panel)
    assert len(images) == 3 and images[0].size[0] >= 32
    assert any("s2i-placeholder" in g for g in grids), "placeholders shown before the images arrived"
    assert panel.controller.history[-1].seed is not None


def test_real_server_wrong_token_and_server_down_are_lines_and_recording_still_works(make_panel):
    """Wrong token and unreachable server each show one line; recording keeps working."""
    from speech2image_nb.server import start_background

    server = start_background("noise", token="right-token", wait=True)
    try:
        panel = make_panel(
            image_service=None,
            settings=real_settings(S2I_SERVER_URL=server.url, S2I_SERVER_TOKEN="wrong-token"),
        )
        panel.generate("a red fox")
        assert panel.wait_idle(30)
        assert panel.error_text.startswith("Key refused by"), panel.error_text
        panel.recorder.play(FOX)
        assert wait_until(lambda: panel.prompt_text.value == "a red fox sitting in the snow")
    finally:
        server.stop()
    down = make_panel(image_service=None, settings=real_settings(S2I_SERVER_URL=server.url))
    assert down.error_text.startswith("Image server:"), down.error_text
    down.recorder.play(FOX)
    assert wait_until(lambda: "fox" in down.prompt_text.value)


def test_connect_before_app_makes_the_panel_use_that_server(make_panel):
    """speech2image_nb.connect(url, token) before the panel: the panel draws with that server."""
    from speech2image_nb.images import service
    from speech2image_nb.server import start_background

    server = start_background("noise", token="colab-token", wait=True)
    try:
        service.connect(server.url, token="colab-token")
        panel = make_panel(settings=real_settings(), image_service=None, image_count=1)
        assert server.url in panel.status_html.value and "(ready)" in panel.status_html.value
        panel.generate("a red fox")
        assert panel.wait_idle(30) and panel.error_text == "" and len(grid_images(panel)) == 1
    finally:
        service.disconnect()
        server.stop()


def test_status_line_shows_embedded_server_loading_progress():
    """While the embedded server loads its engine, the status line shows the progress."""
    panel = Panel(
        settings=real_settings(), recorder=FakeRecorder(), transcriber=ScriptedTranscriber(), start=False
    )
    seen = []
    panel.status_html.observe(lambda c: seen.append(c["new"]), names="value")
    try:
        panel.start()
        assert panel.wait_ready(30)
        assert any("embedded noise loading" in v and "%" in v for v in seen), seen
        assert "Speech: scripted" in panel.status_html.value
    finally:
        panel.close()


def test_history_shows_the_engine_of_each_streamed_generation(make_panel):
    """The history strip shows the engine each streamed generation's done event named (real server)."""
    from speech2image_nb.server import start_background
    from speech2image_nb.server.engines.noise import NoiseEngine

    engine = NoiseEngine(size_px=16)
    engine.name = "noise-for-history"
    server = start_background(engine, wait=True, ready_timeout_s=30)
    try:
        panel = make_panel(
            settings=real_settings(S2I_SERVER_URL=server.url), image_service=None, image_count=1
        )
        for prompt in ("a red fox", "a blue bird"):
            panel.generate(prompt)
            assert panel.wait_idle(30) and panel.error_text == "", panel.error_text
        assert [e.engine for e in panel.controller.history] == ["noise-for-history"] * 2
        captions = [item.children[2].value for item in panel.history_box.children]
        assert captions == ['<span class="s2i-history-engine">noise-for-history</span>'] * 2
    finally:
        server.stop()
