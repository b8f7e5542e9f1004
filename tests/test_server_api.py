"""The image server's HTTP contract: Playground compatibility, extensions, errors, auth, files."""

from __future__ import annotations

import base64
import io
import json
import time

import pytest
import requests
from PIL import Image

from speech2image_nb.errors import ConfigError, EngineError
from speech2image_nb.images.protocol import RequestLimits, RequestRejected, parse_generate_request
from speech2image_nb.server.engines import DEFAULT_ENGINE, create_engine
from speech2image_nb.server.engines.noise import NoiseEngine

from .conftest import TIME_FACTOR
from .image_server_utils import running_server

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PLAYGROUND_ORIGIN = "https://saharmor.github.io"


def decode(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64, validate=True)))
    image.load()
    return image


def assert_error_body(response: requests.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    assert "Traceback" not in response.text and "<html" not in response.text.lower()


@pytest.fixture(scope="module")
def server():
    """One open server (no token) for the module."""
    with running_server(NoiseEngine(size_px=64, fail_on=frozenset({"explode"}))) as srv:
        yield srv


@pytest.fixture(scope="module")
def secured():
    """One server that needs TOKEN."""
    with running_server(NoiseEngine(size_px=64), token=TOKEN) as srv:
        yield srv


def test_playground_ui_request_shape_gets_playground_response(server):
    """Playground UI shapes (text/plain, Bypass-Tunnel-Reminder, preflight) get the Playground answer."""
    preflight = requests.options(
        server.url + "/generate",
        headers={
            "Origin": PLAYGROUND_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "bypass-tunnel-reminder",
        },
        timeout=5,
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] in ("*", PLAYGROUND_ORIGIN)
    assert "bypass-tunnel-reminder" in preflight.headers["access-control-allow-headers"].lower()
    headers = {"Origin": PLAYGROUND_ORIGIN, "Bypass-Tunnel-Reminder": "go"}
    health = requests.get(server.url + "/", headers=headers, timeout=5)
    assert health.status_code == 200 and health.json()["success"] is True
    for route in ("/generate", "/dalle"):
        answer = requests.post(
            server.url + route,
            data=json.dumps({"text": "a red fox sitting in the snow", "num_images": 3}),
            headers={**headers, "Content-Type": "text/plain;charset=UTF-8"},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        assert answer.headers["access-control-allow-origin"] in ("*", PLAYGROUND_ORIGIN)
        body = answer.json()
        assert body["generatedImgsFormat"] == "jpeg"
        assert len(body["generatedImgs"]) == 3
        for item in body["generatedImgs"]:
            assert not item.startswith("data:")
            assert decode(item).format == "JPEG"


def test_body_without_content_type_and_double_encoded_body_are_accepted(server):
    """A body with no content type, and a JSON string holding the object, both work."""
    raw = requests.Request(
        "POST", server.url + "/dalle", data=b'{"text": "a cat", "num_images": 1}'
    ).prepare()
    raw.headers.pop("Content-Type", None)
    with requests.Session() as session:
        assert session.send(raw, timeout=10).status_code == 200
    doubled = json.dumps(json.dumps({"text": "a cat"}))
    assert requests.post(server.url + "/generate", data=doubled, timeout=10).status_code == 200


def test_extensions_seed_format_options_and_timings(server):
    """seed, image_format=png and engine knobs are honoured; seed, engine, prompt, timings reported."""
    body = {"text": "  a lighthouse  ", "num_images": 2, "seed": 42, "image_format": "png", "steps": 2}
    first = requests.post(server.url + "/generate", json=body, timeout=10).json()
    second = requests.post(server.url + "/generate", json=body, timeout=10).json()
    assert first["generatedImgsFormat"] == "png" and decode(first["generatedImgs"][0]).format == "PNG"
    assert first["seed"] == 42 and first["engine"] == "noise" and first["prompt"] == "a lighthouse"
    assert set(first["timings"]) == {"queued_s", "generate_s", "encode_s"}
    assert first["generatedImgs"] == second["generatedImgs"]
    assert first["generatedImgs"][0] != first["generatedImgs"][1]
    odd = requests.post(
        server.url + "/generate", data=b'{"text": "a \\ud800 b", "num_images": 2.0}', timeout=10
    )
    assert (
        odd.status_code == 200 and odd.json()["prompt"] == "a ? b" and len(odd.json()["generatedImgs"]) == 2
    )
    random_a = requests.post(server.url + "/generate", json={"text": "x", "seed": 0}, timeout=10).json()
    random_b = requests.post(server.url + "/generate", json={"text": "x"}, timeout=10).json()
    assert random_a["seed"] > 0 and random_b["seed"] > 0 and random_a["seed"] != random_b["seed"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"\xff\xfe", 400, "invalid_json"),
        (b"[1, 2]", 422, "invalid_request"),
        (b'{"num_images": 1}', 422, "invalid_request"),
        (b'{"text": "   "}', 422, "invalid_request"),
        (b'{"text": "a", "num_images": 0}', 422, "invalid_request"),
        (b'{"text": "a", "num_images": 11}', 422, "invalid_request"),
        (b'{"text": "a", "num_images": "3"}', 422, "invalid_request"),
        (b'{"text": "a", "num_images": 2.5}', 422, "invalid_request"),
        (b'{"text": "a", "num_images": true}', 422, "invalid_request"),
        (b'{"text": "a", "seed": -1}', 422, "invalid_request"),
        (b'{"text": "a", "image_format": "gif"}', 422, "invalid_request"),
        (b'{"text": "a", "temprature": 1.0}', 422, "invalid_request"),
        (b'{"text": "a", "steps": 0}', 422, "invalid_request"),
        (json.dumps({"text": "a " * 2501}).encode(), 413, "prompt_too_long"),
        (b'{"text": "a", "\\udfff": 1}', 422, "invalid_request"),
        (json.dumps({"text": "a", "pad": "x" * 70_000}).encode(), 413, "payload_too_large"),
    ],
)
def test_bad_requests_get_documented_json_errors(server, body, status, code):
    """Every malformed request gets its documented status and JSON error body."""
    answer = requests.post(server.url + "/generate", data=body, timeout=10)
    assert_error_body(answer, status, code)


def test_unknown_route_wrong_method_and_engine_failure_are_json(server):
    """404, 405 and an engine failure (500) answer with the JSON error body, never HTML."""
    assert_error_body(requests.get(server.url + "/nothing-here", timeout=5), 404, "not_found")
    assert_error_body(requests.get(server.url + "/generate", timeout=5), 405, "method_not_allowed")
    assert_error_body(requests.put(server.url + "/", timeout=5), 405, "method_not_allowed")
    failed = requests.post(server.url + "/generate", json={"text": "explode"}, timeout=10)
    assert_error_body(failed, 500, "engine_error")
    assert "fail" in failed.json()["error"]["message"]


def test_streaming_route_sends_queued_progress_images_done(server):
    """POST /generate/stream: queued, progress with previews, one image per index, then done."""
    answer = requests.post(
        server.url + "/generate/stream",
        json={"text": "a boat", "num_images": 2, "seed": 9},
        stream=True,
        timeout=10,
    )
    assert answer.headers["content-type"].startswith("text/event-stream")
    events = []
    kind = None
    for line in answer.iter_lines(decode_unicode=True):
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            events.append((kind, json.loads(line[6:])))
    kinds = [k for k, _ in events]
    assert kinds[0] == "queued" and kinds[-1] == "done"
    assert any(k == "progress" and "preview" in d for k, d in events)
    assert sorted(d["index"] for k, d in events if k == "image") == [0, 1]
    plain = requests.post(
        server.url + "/generate", json={"text": "a boat", "num_images": 2, "seed": 9}, timeout=10
    ).json()
    streamed = {d["index"]: d["data"] for k, d in events if k == "image"}
    assert [streamed[0], streamed[1]] == plain["generatedImgs"]
    assert events[-1][1]["seed"] == 9


def test_stream_client_disconnect_cancels_its_work():
    """A streaming client that goes away cancels its queued images (the engine never makes them)."""
    engine = NoiseEngine(size_px=32, base_latency_s=0.3, max_batch=1, steps=2)
    with running_server(engine) as srv:
        answer = requests.post(
            srv.url + "/generate/stream", json={"text": "slow", "num_images": 6}, stream=True, timeout=10
        )
        lines = answer.iter_lines()
        while next(lines) != b"event: progress":
            pass
        answer.close()
        time.sleep(1.2 * TIME_FACTOR)
        made = len(engine.calls)
        time.sleep(0.8 * TIME_FACTOR)
        assert len(engine.calls) == made <= 3


def test_auth_no_token_or_wrong_token_is_401_everywhere_but_health(secured):
    """With a token: 401 without/with a wrong token on every route but GET /; 200 with the right one."""
    routes = [
        ("POST", "/generate"),
        ("POST", "/dalle"),
        ("POST", "/generate/stream"),
        ("GET", "/openapi.json"),
        ("GET", "/missing"),
        ("POST", "/"),
    ]
    body = json.dumps({"text": "a fox"})
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        for method, path in routes:
            answer = requests.request(method, secured.url + path, data=body, headers=headers, timeout=5)
            assert_error_body(answer, 401, "unauthorized")
        health = requests.get(secured.url + "/", headers=headers, timeout=5)
        assert health.status_code == 200 and health.json() == {"success": True}
    for path in ("/generate", "/dalle"):
        assert requests.post(secured.url + path, data=body, headers=AUTH, timeout=10).status_code == 200
    stream = requests.post(secured.url + "/generate/stream", data=body, headers=AUTH, timeout=10)
    assert stream.status_code == 200 and "event: done" in stream.text
    assert requests.get(secured.url + "/openapi.json", headers=AUTH, timeout=5).status_code == 200
    full = requests.get(secured.url + "/", headers=AUTH, timeout=5).json()
    assert full["engine"] == "noise"
    preflight = requests.options(
        secured.url + "/generate",
        headers={
            "Origin": PLAYGROUND_ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
        timeout=5,
    )
    assert preflight.status_code == 200


def test_openapi_documents_every_route(server):
    """The OpenAPI schema lists the routes with their request body and error shapes."""
    schema = requests.get(server.url + "/openapi.json", timeout=5).json()
    assert {"/", "/generate", "/dalle", "/generate/stream"} <= set(schema["paths"])
    post = schema["paths"]["/generate"]["post"]
    body_schema = post["requestBody"]["content"]["application/json"]["schema"]
    assert body_schema["required"] == ["text"] and body_schema["additionalProperties"] is False
    assert {"200", "400", "422", "503"} <= set(post["responses"])


def test_path_traversal_prompt_never_reaches_a_path(tmp_path):
    """Without --save-dir nothing is written; with it, files are named by id only, inside save_dir."""
    prompt = "../../etc/x"
    save_dir = tmp_path / "out"
    with running_server(save_dir=save_dir) as srv:
        answer = requests.post(srv.url + "/generate", json={"text": prompt, "num_images": 2}, timeout=10)
        assert answer.status_code == 200
    files = sorted(save_dir.iterdir())
    assert len(files) == 2
    for path in files:
        assert path.parent == save_dir and path.suffix == ".jpg"
        assert "etc" not in path.name and ".." not in path.name and "x" not in path.stem.split("_")[1]
        assert Image.open(path).size == (64, 64)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()) == [
        p.relative_to(tmp_path) for p in files
    ]
    assert not (tmp_path / "etc").exists()
    with running_server() as srv:
        before = set(tmp_path.rglob("*"))
        requests.post(srv.url + "/generate", json={"text": prompt}, timeout=10)
        assert set(tmp_path.rglob("*")) == before


def test_parse_generate_request_is_pure_and_strict():
    """parse_generate_request validates without a server: trimmed text, defaults, typed errors."""
    engine = NoiseEngine()
    limits = RequestLimits(max_images=9, max_prompt_chars=10)
    req = parse_generate_request(
        b'{"text": " a ", "temperature": 2}', limits=limits, validate_options=engine.validate_options
    )
    assert (req.text, req.num_images, req.seed, req.image_format) == ("a", 1, None, "jpeg")
    assert req.options == {"temperature": 2.0}
    with pytest.raises(RequestRejected) as info:
        parse_generate_request(
            b'{"text": "a", "x": 1}', limits=limits, validate_options=engine.validate_options
        )
    assert (info.value.status, info.value.code) == (422, "invalid_request")


def test_engine_registry_names_and_errors(monkeypatch):
    """create_engine builds (never loads) each named engine; unknown names and missing modules are clear."""
    from speech2image_nb.server import engines
    from speech2image_nb.server.engines.dalle_mini import DalleMiniEngine
    from speech2image_nb.server.engines.diffusers import DiffusersEngine

    assert DEFAULT_ENGINE == "dalle-mini"
    assert isinstance(create_engine("noise"), NoiseEngine)
    with pytest.raises(ConfigError):
        create_engine("dall-e-9")
    with pytest.raises(ConfigError):
        create_engine("diffusers:")
    for name, is_mega in (("dalle-mini", False), ("dalle-mega", True)):
        dalle = create_engine(name, model_dir="/nonexistent")
        assert isinstance(dalle, DalleMiniEngine) and dalle.name == name and dalle.is_mega is is_mega
        assert str(dalle.model_dir) == "/nonexistent" and dalle.model is None  # built, not loaded
    for name, model_id in (
        ("sd-turbo", "stabilityai/sd-turbo"),
        ("diffusers:someone/model", "someone/model"),
    ):
        diffusion = create_engine(name)
        assert isinstance(diffusion, DiffusersEngine) and diffusion.model_id == model_id
        assert diffusion.pipeline is None  # built, not loaded
        assert create_engine(name, model_dir="/nonexistent").model_id == "/nonexistent"
    monkeypatch.setitem(engines.ENGINES, "sd-turbo", "speech2image_nb.server.engines.not_here:Engine")
    with pytest.raises(EngineError, match="'sd-turbo' is not part of this installation"):
        create_engine("sd-turbo")
    monkeypatch.setitem(engines.ENGINES, "sd-turbo", "speech2image_nb.server.engines.noise:NotAnEngine")
    with pytest.raises(EngineError, match="could not be found"):
        create_engine("sd-turbo")


def test_noise_engine_is_deterministic_per_image_seed():
    """Same prompt and image seed -> same pixels; other seed or prompt -> other pixels."""
    from speech2image_nb.server.engines.base import ImageJob

    engine = NoiseEngine(size_px=32)
    engine.load()
    a, b, c, d = engine.generate(
        [ImageJob("p", 1, 0), ImageJob("p", 1, 1), ImageJob("q", 1, 0), ImageJob("p", 1, 0)]
    )
    assert a.tobytes() == d.tobytes()
    assert a.tobytes() != b.tobytes() and a.tobytes() != c.tobytes()
    assert engine.latency_s(1) == 0  # the default engine does not sleep
    timed = NoiseEngine(size_px=32, per_image_latency_s=0.05)  # no base: the per-image part alone
    assert timed.latency_s(1) < timed.latency_s(16) < 16 * timed.latency_s(1)  # grows, sub-linearly


def test_engine_load_failure_surfaces_from_start_background():
    """An engine whose load() fails makes start_background raise EngineError, not hang."""

    class Broken(NoiseEngine):
        def load(self, progress=None):
            raise EngineError("weights missing: put them in the model directory")

    start = time.monotonic()
    with pytest.raises(EngineError, match="weights missing"), running_server(Broken()):
        pass
    assert time.monotonic() - start < 10 * TIME_FACTOR


def test_real_dalle_mini_engine_serves_through_the_server(tmp_path):
    """The dalle-mini engine (tiny random checkpoint) loads in the server and answers the client."""
    from speech2image_nb.images import ImageClient
    from speech2image_nb.server import start_background
    from speech2image_nb.server.engines.dalle_mini import save_random_checkpoint

    model_dir = save_random_checkpoint(tmp_path, "tiny", seed=1)
    server = start_background("dalle-mini", model_dir=str(model_dir), ready_timeout_s=60)
    try:
        client = ImageClient(server.url)
        assert client.health()["engine"] == "dalle-mini"
        first = client.generate("a red fox", seed=3, temperature=2.0)
        again = client.generate("a red fox", seed=3, temperature=2.0)
        assert first.images[0].size == (256, 256) and first.engine == "dalle-mini"
        assert first.images[0].tobytes() == again.images[0].tobytes()
        rejected = requests.post(server.url + "/generate", json={"text": "x", "steps": 2}, timeout=10)
        assert_error_body(rejected, 422, "invalid_request")
    finally:
        server.stop()
