"""Property-based fuzzing of the real server over HTTP: no 5xx, every error body in the documented shape."""

from __future__ import annotations

import json
import re
import string
import subprocess
import sys

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from speech2image_nb.server.engines.noise import NoiseEngine

from .image_server_utils import running_server

EXAMPLES = 1100
FIELDS = [
    "text",
    "num_images",
    "seed",
    "image_format",
    "steps",
    "temperature",
    "top_k",
    "guidance_scale",
    "tex",
]
PATHS = ["/", "/generate", "/dalle", "/generate/stream", "/openapi.json", "/generate/", "/docs", "/dalle/x"]
METHODS = ["POST"] * 12 + ["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]
CONTENT_TYPES = [
    None,
    "application/json",
    "text/plain;charset=UTF-8",
    "application/x-www-form-urlencoded",
    "multipart/form-data",
    "application/json; charset=latin-1",
]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=30)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
field_values = (
    st.integers(-3, 12)
    | st.text(max_size=40)
    | st.sampled_from(["jpeg", "png", "gif", ""])
    | st.floats(-2, 20, allow_nan=False)
    | json_values
)
near_valid = st.fixed_dictionaries(
    {"text": st.text(min_size=0, max_size=60) | json_scalars},
    optional={name: field_values for name in FIELDS[1:]},
)
valid = st.fixed_dictionaries(
    {"text": st.text(min_size=1, max_size=80).filter(str.strip), "num_images": st.integers(1, 9)},
    optional={
        "seed": st.integers(0, 2**63 - 1),
        "image_format": st.sampled_from(["jpeg", "png"]),
        "steps": st.integers(1, 5),
        "temperature": st.floats(0.01, 10),
    },
)
surrogate_text = st.text(st.characters(categories=["Cs", "Lu"]), min_size=1, max_size=5)
bodies = st.one_of(
    valid.map(lambda d: json.dumps(d).encode()),
    st.dictionaries(st.sampled_from(["text"]) | surrogate_text, surrogate_text, min_size=1, max_size=2).map(
        lambda d: json.dumps(d).encode()
    ),
    near_valid.map(lambda d: json.dumps(d).encode()),
    near_valid.map(lambda d: json.dumps(d).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=200),
    st.text(max_size=80).map(lambda s: s.encode("utf-8", "replace")),
    st.just(json.dumps({"text": "x" * 600}).encode()),
)
ROUTES = ["/generate", "/dalle", "/generate/stream"]
paths = st.one_of(
    st.sampled_from(ROUTES),
    st.sampled_from(ROUTES),
    st.sampled_from(ROUTES),
    st.sampled_from(PATHS),
    st.text(string.ascii_letters + string.digits + "/-_.~", max_size=20).map(lambda s: "/" + s),
)


def check_answer(answer: requests.Response) -> None:
    assert answer.status_code < 500, (answer.status_code, answer.text[:300])
    if answer.status_code >= 400 and answer.request.method != "HEAD":
        assert answer.headers["content-type"].startswith("application/json"), answer.text[:200]
        body = answer.json()
        assert set(body) == {"error"}, body
        assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str)
        assert set(body["error"]) == {"code", "message"}
    if (
        answer.status_code == 200
        and answer.request.method == "POST"
        and answer.request.path_url in ("/generate", "/dalle")
    ):
        assert len(answer.json()["generatedImgs"]) >= 1
    if answer.headers.get("content-type", "").startswith("text/event-stream"):
        assert "event: done" in answer.text or "event: error" in answer.text


@pytest.fixture(scope="module")
def fuzz_server():
    """A server with a tiny fast engine."""
    with running_server(NoiseEngine(size_px=16, steps=2)) as srv:
        yield srv


def test_fuzzed_requests_never_get_5xx_and_errors_are_json(fuzz_server):
    """>= 1000 generated requests: zero 5xx, every error body {"error": {"code", "message"}}."""
    session = requests.Session()
    sent = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        method=st.sampled_from(METHODS),
        path=paths,
        body=bodies,
        content_type=st.sampled_from(CONTENT_TYPES),
        origin=st.sampled_from([None, "https://saharmor.github.io", "null"]),
    )
    def fuzz(method, path, body, content_type, origin):
        headers = {"Bypass-Tunnel-Reminder": "go"}
        if content_type:
            headers["Content-Type"] = content_type
        if origin:
            headers["Origin"] = origin
        answer = session.request(method, fuzz_server.url + path, data=body, headers=headers, timeout=10)
        sent.append(answer.status_code)
        check_answer(answer)

    fuzz()
    print(f"fuzzed {len(sent)} requests: " + ", ".join(f"{s}x{sent.count(s)}" for s in sorted(set(sent))))
    assert len(sent) >= 1000
    assert 200 in sent and 422 in sent and 400 in sent and 404 in sent


#: schemathesis's own list of statuses that reject invalid data, plus 413: the contract answers a
#: prompt over its maxLength with 413 prompt_too_long (docs/image-server-api.md)
SCHEMATHESIS_CONFIG = """\
[checks.negative_data_rejection]
expected-statuses = [
    "400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx",
]
"""


def test_schemathesis_from_the_openapi_schema_finds_no_issue(fuzz_server, tmp_path):
    """Schemathesis, driven by the server's own OpenAPI schema with every check, reports no issue."""
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config),
        "run", fuzz_server.url + "/openapi.json",
        "--checks", "all", "--max-examples", "40", "--seed", "1", "--phases", "examples,coverage,fuzzing",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "No issues found" in result.stdout
    generated = re.search(r"(\d+) generated, (\d+) passed", result.stdout)
    assert generated and generated.group(1) == generated.group(2) and int(generated.group(1)) >= 100
