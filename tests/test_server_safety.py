"""The classroom filter in the image server: prompts refused before the engine, pictures withheld."""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import requests

from speech2image_nb.errors import EngineError, PromptBlocked
from speech2image_nb.images.client import ImageClient
from speech2image_nb.images.protocol import SSEParser, encode_image
from speech2image_nb.safety import Policy
from speech2image_nb.safety import policy as policy_module
from speech2image_nb.safety.images import IMAGE_MODEL_ENV, placeholder_image, save_random_image_classifier
from speech2image_nb.server.engines.base import ImageJob
from speech2image_nb.server.engines.noise import NoiseEngine

from .conftest import TIME_FACTOR
from .image_server_utils import free_port, running_server

SIZE_PX = 64
TOKEN = "safety-token-4f1c9e2b7a"
REFUSED = "a nude fox in the snow"  # "nude": refused as sexual by every word list
PLAYGROUND_HEADERS = {
    "Origin": "https://saharmor.github.io",
    "Bypass-Tunnel-Reminder": "go",
    "Content-Type": "text/plain;charset=UTF-8",
}


def noise_picture(prompt: str, seed: int, index: int, size_px: int):
    """The picture the noise engine draws for image ``index`` of ``(prompt, seed)``."""
    job = ImageJob(prompt, seed, index)
    return NoiseEngine._render(NoiseEngine._grid(job, 1.0), size_px=size_px)


class StandInChecker:
    """Flags exactly the pictures whose pixels are those of the chosen images (by prompt, seed and
    index; finals and previews alike), and records every batch it was shown."""

    def __init__(self, prompt: str, seed: int, indexes: tuple[int, ...], *, preview_px: int = 32) -> None:
        self.bad = {
            noise_picture(prompt, seed, i, size).tobytes() for i in indexes for size in (SIZE_PX, preview_px)
        }
        self.batches: list[int] = []

    def flags(self, images):
        self.batches.append(len(images))
        return [image.tobytes() in self.bad for image in images]


class Raising:
    def flags(self, images):
        raise RuntimeError("the classifier broke")


def placeholder_b64(image_format: str = "jpeg") -> str:
    return encode_image(placeholder_image((SIZE_PX, SIZE_PX)), image_format)


def sse_events(response: requests.Response) -> list[tuple[str, dict]]:
    parser = SSEParser()
    return [(name, json.loads(data)) for name, data in parser.feed(response.content)]


def assert_refused(response: requests.Response, category: str = "sexual") -> None:
    """A 422 prompt_blocked answer that names the category and repeats no word of the prompt."""
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == "prompt_blocked" and error["category"] == category
    assert error["message"] == PromptBlocked.describe(category)
    assert "nude" not in response.text and "fox" not in response.text


@pytest.fixture
def server_logs(caplog):
    """Every log record of the server and the package, at DEBUG."""
    logging.getLogger("uvicorn.access").propagate = True
    caplog.set_level(logging.DEBUG)
    return caplog


def logged(caplog) -> str:
    return "\n".join(
        r.getMessage() for r in caplog.records if r.name.startswith(("uvicorn", "speech2image_nb"))
    )


# --- prompts ------------------------------------------------------------------------------------


def test_a_refused_prompt_is_answered_422_before_any_engine_work():
    """/generate and /dalle answer prompt_blocked, and the engine is never called."""
    engine = NoiseEngine(size_px=SIZE_PX)
    with running_server(engine) as server:
        for route in ("/generate", "/dalle"):
            assert_refused(
                requests.post(server.url + route, json={"text": REFUSED, "num_images": 2}, timeout=10)
            )
        assert engine.calls == []
        allowed = requests.post(server.url + "/generate", json={"text": "a fox in the snow"}, timeout=10)
        assert allowed.status_code == 200 and engine.calls == [1]
        assert [(r.where, r.category, r.text) for r in server.refusals.entries] == [
            ("server:/generate", "sexual", None),
            ("server:/dalle", "sexual", None),
        ]


def test_the_stream_says_the_same_as_one_error_event():
    """/generate/stream answers a stream of one error event with the same code, category and message."""
    engine = NoiseEngine(size_px=SIZE_PX)
    with running_server(engine) as server:
        answer = requests.post(server.url + "/generate/stream", json={"text": REFUSED}, timeout=10)
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
        events = sse_events(answer)
        assert events == [
            (
                "error",
                {"code": "prompt_blocked", "message": PromptBlocked.describe("sexual"), "category": "sexual"},
            )
        ]
        assert engine.calls == []


def test_the_playground_with_the_token_in_the_path_is_refused_the_same_way():
    """The Playground's call (text/plain, /t/<token>/generate) gets prompt_blocked; the log keeps no token."""
    engine = NoiseEngine(size_px=SIZE_PX)
    with running_server(engine, token=TOKEN) as server:
        for route in ("/generate", "/dalle"):
            body = json.dumps({"text": REFUSED, "num_images": 4}).encode()
            answer = requests.post(
                f"{server.url}/t/{TOKEN}{route}", data=body, headers=PLAYGROUND_HEADERS, timeout=10
            )
            assert_refused(answer)
            assert answer.headers["access-control-allow-origin"] in ("*", PLAYGROUND_HEADERS["Origin"])
        assert engine.calls == []
        assert [r.where for r in server.refusals.entries] == ["server:/generate", "server:/dalle"]


def test_the_client_raises_prompt_blocked_with_its_category():
    """ImageClient turns prompt_blocked (answer and stream event) into PromptBlocked, category included."""
    with running_server(NoiseEngine(size_px=SIZE_PX)) as server, ImageClient(server.url) as client:
        with pytest.raises(PromptBlocked) as plain:
            client.generate(REFUSED)
        with pytest.raises(PromptBlocked) as streamed:
            list(client.generate_stream(REFUSED))
    for raised in (plain.value, streamed.value):
        assert raised.category == "sexual"
        assert str(raised) == "This prompt was not drawn: the classroom filter refuses sexual content."


def test_a_teachers_word_blocks_and_an_allowed_word_passes():
    """A teacher's extra word is refused as custom; a word they allow is drawn although a list has it."""
    policy = Policy.resolve("strict", blocked="broccoli", allowed="gore")
    engine = NoiseEngine(size_px=SIZE_PX)
    with running_server(engine, safety=policy) as server:
        refused = requests.post(
            server.url + "/generate", json={"text": "Broccoli trees on a hill"}, timeout=10
        )
        assert refused.status_code == 422 and refused.json()["error"]["category"] == "custom"
        assert "broccoli" not in refused.text.lower()
        drawn = requests.post(server.url + "/generate", json={"text": "al gore gives a speech"}, timeout=10)
        assert drawn.status_code == 200 and engine.calls == [1]


def test_refusals_are_logged_without_the_text_unless_the_teacher_chose(server_logs):
    """The server log says route and category of a refusal, never the prompt; with log_text it keeps it."""
    with running_server(NoiseEngine(size_px=SIZE_PX)) as server:
        requests.post(server.url + "/generate", json={"text": REFUSED}, timeout=10)
    text = logged(server_logs)
    assert "refused (server:/generate): category sexual" in text
    assert "nude" not in text and "fox" not in text
    server_logs.clear()
    with running_server(NoiseEngine(size_px=SIZE_PX), safety=Policy.resolve(log_text=True)) as server:
        requests.post(server.url + "/generate", json={"text": REFUSED}, timeout=10)
        assert server.refusals.entries[0].text == REFUSED
    assert REFUSED in logged(server_logs)


def test_off_logs_its_warning_once_and_checks_nothing(server_logs, monkeypatch):
    """Level off: one warning, the prompt is drawn, no picture check is loaded (even a broken one)."""
    monkeypatch.setattr(policy_module, "_warned_off", False)
    engine = NoiseEngine(size_px=SIZE_PX)
    with running_server(engine, safety=Policy(level="off"), image_checker="/no/such/model") as server:
        answer = requests.post(server.url + "/generate", json={"text": REFUSED}, timeout=10)
        assert answer.status_code == 200 and answer.json()["withheld"] == []
        assert requests.get(server.url + "/", timeout=5).json()["safety"] == {
            "level": "off",
            "pictures": False,
        }
    with running_server(NoiseEngine(size_px=SIZE_PX), safety=Policy.resolve("off")):
        pass
    warnings = [
        r for r in server_logs.records if r.levelno == logging.WARNING and "filter is off" in r.getMessage()
    ]
    assert len(warnings) == 1


def test_pictures_unchecked_when_the_policy_says_so():
    """check_images=False: prompts are still checked, no picture check is loaded (even a broken one)."""
    engine = NoiseEngine(size_px=SIZE_PX)
    policy = Policy(check_images=False)
    with running_server(engine, safety=policy, image_checker="/no/such/model") as server:
        assert_refused(requests.post(server.url + "/generate", json={"text": REFUSED}, timeout=10))
        answer = requests.post(server.url + "/generate", json={"text": "a fox", "num_images": 2}, timeout=10)
        assert answer.status_code == 200 and answer.json()["withheld"] == []
        assert requests.get(server.url + "/", timeout=5).json()["safety"] == {
            "level": "strict",
            "pictures": False,
        }


# --- pictures -----------------------------------------------------------------------------------


def test_flagged_images_are_replaced_by_the_placeholder_and_the_others_still_come(tmp_path):
    """Images 1 and 3 flagged: the placeholder goes out in their place, withheld says so, the rest come."""
    prompt, seed = "a red fox in the snow", 7
    checker = StandInChecker(prompt, seed, (1, 3))
    with running_server(NoiseEngine(size_px=SIZE_PX), image_checker=checker, save_dir=tmp_path) as server:
        body = {"text": prompt, "num_images": 4, "seed": seed, "image_format": "png"}
        answer = requests.post(server.url + "/generate", json=body, timeout=10).json()
        with ImageClient(server.url) as client:
            generation = client.generate(prompt, num_images=4, seed=seed)
        assert [(r.where, r.category) for r in server.refusals.entries] == [("server:image", "picture")] * 4
    images = answer["generatedImgs"]
    assert answer["withheld"] == [1, 3]
    assert images[1] == images[3] == placeholder_b64("png")
    for index in (0, 2):
        assert images[index] == encode_image(noise_picture(prompt, seed, index, SIZE_PX), "png")
    assert generation.withheld == (1, 3)
    assert generation.images[1].tobytes() != generation.images[0].tobytes()
    saved = sorted(tmp_path.iterdir())  # --save-dir: the two pictures shown, never a flagged one
    assert len(saved) == 2 + 2  # the JSON request and the client's request
    placeholder_png = base64.b64decode(placeholder_b64("png"))
    assert all(path.read_bytes() != placeholder_png for path in saved)
    assert {path.name.rsplit("_", 1)[1] for path in saved} == {"0.png", "2.png", "0.jpg", "2.jpg"}


def test_streamed_previews_and_images_never_show_a_flagged_picture():
    """Streaming: image 0's previews are dropped, images 1 and 3 go out as placeholders marked withheld."""
    prompt, seed = "a red fox in the snow", 11
    checker = StandInChecker(prompt, seed, (0, 1, 3))
    with running_server(NoiseEngine(size_px=SIZE_PX, steps=4), image_checker=checker) as server:
        body = {"text": prompt, "num_images": 4, "seed": seed}
        events = sse_events(requests.post(server.url + "/generate/stream", json=body, timeout=10))
    progress = [data for name, data in events if name == "progress"]
    assert len(progress) == 4 and all("preview" not in data for data in progress)
    images = {data["index"]: data for name, data in events if name == "image"}
    assert sorted(images) == [0, 1, 2, 3]
    for index in (0, 1, 3):
        assert images[index]["withheld"] is True and images[index]["data"] == placeholder_b64()
    assert "withheld" not in images[2] and images[2]["data"] == encode_image(
        noise_picture(prompt, seed, 2, SIZE_PX), "jpeg"
    )


def test_unflagged_previews_still_come():
    """The same stream with nothing flagged carries its previews (so the test above can see them go)."""
    prompt, seed = "a red fox in the snow", 11
    checker = StandInChecker(prompt, seed, ())
    with running_server(NoiseEngine(size_px=SIZE_PX, steps=4), image_checker=checker) as server:
        events = sse_events(
            requests.post(server.url + "/generate/stream", json={"text": prompt, "seed": seed}, timeout=10)
        )
    assert [("preview" in data) for name, data in events if name == "progress"] == [True, True, True, False]
    assert checker.batches == [1, 1, 1, 1]  # three previews, then the image


def test_a_failing_check_withholds_every_image_of_its_batch():
    """A classifier that raises: every image is the placeholder, and the request still succeeds."""
    with running_server(NoiseEngine(size_px=SIZE_PX), image_checker=Raising()) as server:
        answer = requests.post(server.url + "/generate", json={"text": "a fox", "num_images": 3}, timeout=10)
    assert answer.status_code == 200
    assert answer.json()["withheld"] == [0, 1, 2]
    assert set(answer.json()["generatedImgs"]) == {placeholder_b64()}


def test_the_real_classifier_in_the_server(tmp_path):
    """The default loading path (a folder in S2I_SAFETY_IMAGE_MODEL's place) with a classifier that
    calls everything nsfw withholds every picture; the session's normal one withholds none."""
    nsfw = save_random_image_classifier(tmp_path / "nsfw", verdict="nsfw")
    with running_server(NoiseEngine(size_px=SIZE_PX), image_checker=str(nsfw)) as server:
        answer = requests.post(server.url + "/generate", json={"text": "a fox", "num_images": 2}, timeout=10)
        assert answer.json()["withheld"] == [0, 1]
    with running_server(NoiseEngine(size_px=SIZE_PX)) as server:  # the session's S2I_SAFETY_IMAGE_MODEL
        answer = requests.post(server.url + "/generate", json={"text": "a fox", "num_images": 2}, timeout=10)
        assert answer.json()["withheld"] == []


def test_a_missing_picture_model_stops_the_start_with_the_setting_to_fix(tmp_path):
    """No picture check, no server: the start fails and says which setting to fix."""
    missing = str(tmp_path / "missing")
    with pytest.raises(EngineError, match=IMAGE_MODEL_ENV), running_server(image_checker=missing):
        pass


# --- the command line ----------------------------------------------------------------------------


def test_serve_options_block_allow_and_log_without_text(tmp_path):
    """serve --safety-block/--safety-file/--safety-allow: the words act, the log keeps no text."""
    words = tmp_path / "words.txt"
    words.write_text("# our class\nspinach\n+cocaine\n")
    port = free_port()
    log_path = tmp_path / "server.log"
    command = [sys.executable, "-m", "speech2image_nb.server", "--engine", "noise", "--port", str(port)]
    command += ["--safety-block", "broccoli, kale", "--safety-file", str(words), "--safety-allow", "gore"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(3)]
        assert lines[1].startswith("ready: image server at"), (lines, log_path.read_text())
        assert lines[2].strip() == "classroom filter: strict (prompts checked, pictures checked)"
        url = f"http://127.0.0.1:{port}"
        for text, status in [
            ("kale soup", 422),
            ("a spinach pie", 422),
            ("al gore on stage", 200),
            ("cocaine the word", 200),
            (REFUSED, 422),
        ]:
            answer = requests.post(url + "/generate", json={"text": text}, timeout=30 * TIME_FACTOR)
            assert answer.status_code == status, (text, answer.text)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(30)
    log = log_path.read_text()
    assert "refused (server:/generate): category custom" in log
    assert "refused (server:/generate): category sexual" in log
    for word in ("kale", "spinach", "nude", "fox"):
        assert word not in log


def test_importing_the_package_and_the_filter_loads_no_model_and_opens_no_socket():
    """import speech2image_nb, speech2image_nb.safety (and its picture check module): no torch, no
    transformers, no model, no socket."""
    probe = r"""
import json, socket, sys
opened = []
class Spy(socket.socket):
    def __init__(self, *a, **k):
        opened.append(repr(a))
        super().__init__(*a, **k)
socket.socket = Spy
import speech2image_nb, speech2image_nb.safety, speech2image_nb.safety.images
speech2image_nb.safety.check_prompt("a nude fox", speech2image_nb.safety.Policy())
print(json.dumps({"sockets": opened, "heavy": sorted(m for m in ("torch", "transformers", "huggingface_hub",
    "safetensors", "fastapi") if m in sys.modules)}))
"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run(
        [sys.executable, "-c", probe],
        check=True,
        capture_output=True,
        text=True,
        env=env,
        cwd=tempfile.gettempdir(),
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == {"sockets": [], "heavy": []}
