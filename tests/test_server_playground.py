"""DALL-E Playground's web UI against our server: its exact requests, long prompts, the URL token, logs."""

from __future__ import annotations

import json
import logging
import re

import pytest
import requests

from speech2image_nb.server.engines.noise import NoiseEngine
from speech2image_nb.server.prompts import cut_to_chars, cut_to_tokens
from speech2image_nb.server.tunnel import playground_url

from .image_server_utils import running_server

TOKEN = "playground-token-5b7e0c9a1d"
PLAYGROUND_ORIGIN = "https://saharmor.github.io"
#: what the Playground UI (interface/src/backend_api.js) sends with every call
PLAYGROUND_HEADERS = {
    "Origin": PLAYGROUND_ORIGIN,
    "Bypass-Tunnel-Reminder": "go",
    "Content-Type": "text/plain;charset=UTF-8",
}
LONG_PROMPT = " ".join(["a red fox sitting in the snow under a violet evening sky"] * 11)[:599] + "!"


def playground_generate(url: str, text: str, num_images: int) -> requests.Response:
    """The Playground UI's generate call: a preflight, then the POST of a JSON string as text/plain."""
    preflight = requests.options(
        url,
        headers={
            "Origin": PLAYGROUND_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "bypass-tunnel-reminder,content-type",
        },
        timeout=10,
    )
    assert preflight.status_code == 200, preflight.text
    body = json.dumps({"text": text, "num_images": num_images})
    return requests.post(url, data=body.encode(), headers=PLAYGROUND_HEADERS, timeout=30)


@pytest.fixture
def server_logs(caplog):
    """Every log record at DEBUG, uvicorn's access log included."""
    logging.getLogger("uvicorn.access").propagate = True  # an access_log=False server turns it off
    caplog.set_level(logging.DEBUG)
    return caplog


def logged(caplog) -> str:
    """What the server logged (uvicorn and the package; the test's own HTTP client is left out)."""
    return "\n".join(
        record.getMessage()
        for record in caplog.records
        if record.name.startswith(("uvicorn", "speech2image_nb"))
    )


@pytest.fixture(scope="module")
def open_server():
    """A server without a token, access log on."""
    with running_server(NoiseEngine(size_px=32), access_log=True) as srv:
        yield srv


def test_playground_asks_for_ten_images_and_gets_them(open_server):
    """The Playground menu's largest choice, 10 images, is served by default."""
    answer = playground_generate(open_server.url + "/generate", "a lighthouse at dusk", 10)
    assert answer.status_code == 200, answer.text
    assert answer.headers["access-control-allow-origin"] in ("*", PLAYGROUND_ORIGIN)
    body = answer.json()
    assert len(body["generatedImgs"]) == 10 and body["generatedImgsFormat"] == "jpeg"
    assert requests.get(open_server.url + "/", timeout=5).json()["max_images"] == 10


def test_backend_url_with_trailing_slash_posts_to_double_slash_and_works(open_server):
    """A backend URL typed with a trailing slash makes the UI post to //generate; that works too."""
    answer = playground_generate(open_server.url + "//generate", "a boat", 2)
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["generatedImgs"]) == 2
    assert requests.get(open_server.url + "//", timeout=5).json()["success"] is True


def test_long_prompt_is_cut_to_what_the_engine_reads_and_the_answer_says_so(open_server, server_logs):
    """A 600-character prompt is served: cut at a word to the 500 characters read, reported as such."""
    assert len(LONG_PROMPT) == 600
    answer = playground_generate(open_server.url + "/generate", LONG_PROMPT, 1)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    used = body["prompt"]
    assert LONG_PROMPT.startswith(used) and 450 < len(used) <= 500 and LONG_PROMPT[len(used)] == " "
    assert body["prompt_truncated"] == {"sent_chars": 600, "used_chars": len(used), "limit": "500 characters"}
    assert "prompt cut from 600 to" in logged(server_logs)
    short = playground_generate(open_server.url + "/generate", "a fox", 1).json()
    assert short["prompt"] == "a fox" and short["prompt_truncated"] is None


def test_every_4xx_is_logged_with_code_and_message_but_no_long_prompt(open_server, server_logs):
    """422, 413, 404 and 400 each leave a log line with status, code and message; no prompt over 80 chars."""
    url = open_server.url
    answers = [
        requests.post(url + "/generate", json={"text": LONG_PROMPT, "num_images": 0}, timeout=10),
        requests.post(url + "/generate", json={"text": LONG_PROMPT * 9}, timeout=10),
        requests.post(url + "/generate", json={"text": LONG_PROMPT, "colour": LONG_PROMPT}, timeout=10),
        requests.get(url + "/nothing", timeout=10),
        requests.post(url + "/dalle", data=b"{oops", timeout=10),
    ]
    assert [a.status_code for a in answers] == [422, 413, 422, 404, 400]
    text = logged(server_logs)
    for answer in answers:
        error = answer.json()["error"]
        line = f"{answer.status_code} {error['code']}: {error['message'][:60]}"
        assert line in text, (line, text[-2000:])
    assert "POST /generate -> 413 prompt_too_long" in text and "GET /nothing -> 404 not_found" in text
    assert not any(LONG_PROMPT[i : i + 81] in text for i in range(len(LONG_PROMPT) - 80))


def test_url_token_serves_the_playground_with_auth_on_and_never_leaks(server_logs):
    """With a token, /t/<token> serves as the backend URL, a wrong one is 401, no log or answer shows it."""
    with running_server(NoiseEngine(size_px=32), token=TOKEN, access_log=True) as srv:
        backend = playground_url(srv.url, TOKEN)
        assert backend == f"{srv.url}/t/{TOKEN}"
        answers = [
            requests.get(backend, headers={"Bypass-Tunnel-Reminder": "go"}, timeout=10),
            playground_generate(backend + "/generate", "a red fox", 3),
            playground_generate(backend + "//generate", LONG_PROMPT, 1),
            requests.post(backend + "/generate/stream", data=json.dumps({"text": "a kite"}), timeout=30),
        ]
        wrong = [
            playground_generate(f"{srv.url}/t/{TOKEN[:-1]}x/generate", "a red fox", 1),
            playground_generate(f"{srv.url}/t//generate", "a red fox", 1),
            playground_generate(srv.url + "/generate", "a red fox", 1),
            requests.get(f"{srv.url}/t/{TOKEN[::-1]}/", timeout=10),
        ]
    assert [a.status_code for a in answers] == [200, 200, 200, 200]
    assert answers[0].json()["engine"] == "noise"  # the full health answer: the token was accepted
    assert len(answers[1].json()["generatedImgs"]) == 3
    assert answers[2].json()["prompt_truncated"]["sent_chars"] == 600
    assert "event: done" in answers[3].text
    assert [a.status_code for a in wrong] == [401, 401, 401, 401]
    assert all(a.json()["error"]["code"] == "unauthorized" for a in wrong)
    everything = logged(server_logs) + "".join(a.text + repr(dict(a.headers)) for a in answers + wrong)
    assert '"POST /generate HTTP/1.1" 200' in everything and '"OPTIONS /generate HTTP/1.1" 200' in everything
    assert "/t/redacted/generate -> 401 unauthorized" in everything
    for part in (TOKEN, TOKEN[:-1], TOKEN[::-1], TOKEN[4:-4]):
        assert part not in everything


def test_cut_to_chars_ends_at_a_word():
    """The character cut keeps whole words; a single over-long word is cut inside."""
    assert cut_to_chars("a fox", 10) == "a fox"
    assert cut_to_chars("a red fox sits", 10) == "a red fox"
    assert cut_to_chars("a red fox sits", 9) == "a red fox"
    assert cut_to_chars("abcdefghijkl", 5) == "abcde"


def test_cut_to_tokens_keeps_the_words_the_engine_reads_in_full():
    """The token cut keeps the longest run of whole words within the budget (2 special tokens aside)."""

    def tokenize(text: str) -> list[int]:  # one token per letter, <s> and </s> around
        return [0, *(1 for c in text.lower() if c.isalpha()), 2]

    assert cut_to_tokens("ab cd", tokenize, 6) == "ab cd"
    assert cut_to_tokens("ab cd ef", tokenize, 7) == "ab cd"
    assert cut_to_tokens("ab  cd ef", tokenize, 8) == "ab  cd ef"
    assert cut_to_tokens("ab  cd ef", tokenize, 7) == "ab  cd"
    assert cut_to_tokens("abcdefgh ij", tokenize, 5) == "abc"


def test_tiny_dalle_engine_reads_its_first_64_text_tokens(tiny_dalle_dir, one_torch_thread):
    """With the DALL-E engine a 600-character prompt is cut to the words of its 64 text tokens."""
    from speech2image_nb.server import start_background
    from speech2image_nb.server.engines.dalle_mini.tokenizer import TextTokenizer

    server = start_background("dalle-mini", model_dir=str(tiny_dalle_dir), ready_timeout_s=300)
    try:
        answer = playground_generate(server.url + "/generate", LONG_PROMPT, 1)
    finally:
        server.stop()
    assert answer.status_code == 200, answer.text
    body = answer.json()
    used = body["prompt"]
    assert body["engine"] == "dalle-mini"
    assert body["prompt_truncated"] == {"sent_chars": 600, "used_chars": len(used), "limit": "64 text tokens"}
    vocab, merges = (next(tiny_dalle_dir.rglob(f"{name}*")) for name in ("vocab", "merges"))
    tokenizer = TextTokenizer.from_files(vocab, merges)
    next_word = re.match(r" *[^ ]+", LONG_PROMPT[len(used) :]).group()
    assert len(tokenizer.tokenize(used)) <= 64 < len(tokenizer.tokenize(used + next_word))
