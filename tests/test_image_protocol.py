"""The image API as pure data: requests, answers, events, errors and SSE, tested with literal bytes."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from speech2image_nb.errors import BadServerResponse
from speech2image_nb.images import protocol
from speech2image_nb.images.protocol import (
    ERROR_STATUS,
    EVENT_NAMES,
    DoneEvent,
    ErrorEvent,
    GenerateAnswer,
    ImageEvent,
    ProgressEvent,
    QueuedEvent,
    RequestLimits,
    RequestRejected,
    SSEParser,
    code_of,
    decode_image,
    encode_event,
    encode_image,
    error_body,
    generate_body,
    parse_error_body,
    parse_event,
    parse_generate_answer,
    parse_generate_request,
    status_of,
)

PACKAGE = Path(protocol.__file__).parents[1]


def no_options(options):
    """An engine that takes no options."""
    if options:
        raise ValueError(f"unknown field(s): {', '.join(sorted(options))}")
    return {}


def test_protocol_imports_no_web_framework_http_client_or_torch():
    """Importing the protocol loads neither FastAPI, starlette, requests, uvicorn, torch nor PIL."""
    probe = (
        "import sys, json; import speech2image_nb.images.protocol\n"
        "print(json.dumps(sorted(m for m in ('fastapi', 'starlette', 'requests', 'uvicorn', 'torch', 'PIL')"
        " if m in sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
    imported = {
        node.module or ""
        for node in ast.walk(ast.parse(Path(protocol.__file__).read_text()))
        if isinstance(node, ast.ImportFrom)
    } | {
        alias.name
        for node in ast.walk(ast.parse(Path(protocol.__file__).read_text()))
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert not {m.split(".")[0] for m in imported} & {"fastapi", "starlette", "requests", "uvicorn", "torch"}


def literal_strings(node: ast.AST) -> set[str]:
    """The string constants a dict (keys and values), list, tuple or set literal holds."""
    if isinstance(node, ast.Dict):
        items = [*node.keys, *node.values]
    elif isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        items = list(node.elts)
    else:
        return set()
    return {i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)}


def test_no_error_code_or_event_name_table_outside_the_protocol():
    """No other module of the package holds a literal table of the error codes or event names."""
    names = set(ERROR_STATUS) | set(EVENT_NAMES.values())
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "protocol.py" and path.parent.name == "images":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if len(literal_strings(node) & names) >= 2:
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert offenders == []


def test_every_error_code_has_one_status_and_statuses_map_back():
    """Each code has its status; a framework status maps to its code; unknown ones are http_<n>/500."""
    assert status_of("queue_full") == 503 and status_of("timeout") == 504 and status_of("new_code") == 500
    assert code_of(404) == "not_found" and code_of(405) == "method_not_allowed" and code_of(418) == "http_418"
    for code, status in ERROR_STATUS.items():
        assert RequestRejected(code, "m").status == status
    assert error_body("invalid_json", "bad \udc80") == {"error": {"code": "invalid_json", "message": "bad ?"}}
    assert parse_error_body(b'{"error": {"code": "queue_full", "message": "busy"}}') == ErrorEvent(
        "queue_full", "busy"
    )
    assert parse_error_body(b'{"detail": "Not Found"}') is None
    assert parse_error_body(b"<html>oops</html>") is None


def test_generate_body_leaves_unset_fields_to_the_server():
    """The client's request body names only what the caller set; engine options ride along."""
    assert generate_body("a fox", num_images=2) == {"text": "a fox", "num_images": 2}
    assert generate_body("a fox", seed=7, image_format="png", options={"steps": 2}) == {
        "text": "a fox",
        "num_images": 1,
        "seed": 7,
        "image_format": "png",
        "steps": 2,
    }


@pytest.mark.parametrize(
    ("raw", "code", "needle"),
    [
        (b"{not json", "invalid_json", "not valid JSON"),
        (b"[1]", "invalid_request", "JSON object"),
        (b'{"text": " "}', "invalid_request", '"text"'),
        (b'{"text": "a", "num_images": 4}', "invalid_request", "from 1 to 3"),
        (json.dumps({"text": "ab " * 2000}).encode(), "prompt_too_long", "5000 are accepted"),
        (b'{"text": "a", "seed": 9007199254740992}', "invalid_request", '"seed"'),
        (b'{"text": "a", "image_format": "gif"}', "invalid_request", "image_format"),
        (b'{"text": "a", "steps": 2}', "invalid_request", "steps"),
    ],
)
def test_parse_generate_request_rejects_with_code_and_message(raw, code, needle):
    """Each malformed body is refused with its code and a message naming the problem."""
    with pytest.raises(RequestRejected) as info:
        parse_generate_request(
            raw, limits=RequestLimits(max_images=3, max_prompt_chars=10), validate_options=no_options
        )
    assert info.value.code == code and needle in info.value.message


def test_parse_generate_request_reads_the_playground_shapes():
    """A double-encoded body, a float count and a surrogate all parse; seed 0 means random."""
    limits = RequestLimits()
    doubled = json.dumps(json.dumps({"text": "a cat", "num_images": 2.0, "seed": 0})).encode()
    req = parse_generate_request(doubled, limits=limits, validate_options=no_options)
    assert (req.text, req.num_images, req.seed, req.image_format) == ("a cat", 2, None, "jpeg")
    odd = parse_generate_request(b'{"text": "a \\ud800 b"}', limits=limits, validate_options=no_options)
    assert odd.text == "a ? b"


def test_answer_round_trip_and_bad_answers():
    """The server's answer reads back to the same data; an answer without images is refused."""
    answer = GenerateAnswer(["AAAA"], "png", seed=3, engine="noise", prompt="p", timings={"encode_s": 0.1})
    body = json.loads(json.dumps(answer.to_json()))
    assert body["generatedImgs"] == ["AAAA"] and body["generatedImgsFormat"] == "png"
    assert parse_generate_answer(body) == answer
    for bad in ({"images": []}, {"generatedImgs": []}, [1], None):
        with pytest.raises(BadServerResponse):
            parse_generate_answer(bad)


def test_events_encode_and_parse_back():
    """Every server event survives encode -> SSE parse -> parse_event, images included."""
    picture = Image.new("RGB", (8, 8), (200, 10, 10))
    events = [
        QueuedEvent(2),
        ProgressEvent(1, 4, picture),
        ProgressEvent(2, 4, None),
        ImageEvent(0, picture),
        DoneEvent(7, {"generate_s": 0.5}, "noise", "a fox"),
        ErrorEvent("engine_error", "it broke"),
    ]
    wire = b"".join(encode_event(e, image_format="png") for e in events)
    assert wire.startswith(b'event: queued\ndata: {"position":2}\n\n')
    parser = SSEParser()
    pairs = [pair for i in range(0, len(wire), 7) for pair in parser.feed(wire[i : i + 7])]
    assert [name for name, _ in pairs] == ["queued", "progress", "progress", "image", "done", "error"]
    decoded = [parse_event(name, data) for name, data in pairs]
    assert decoded[0] == events[0] and decoded[2] == events[2] and decoded[4:] == events[4:]
    assert decoded[1].preview.size == (8, 8) and decoded[1].preview.format == "JPEG"
    assert decoded[3].index == 0 and decoded[3].image.tobytes() == picture.tobytes()
    assert parse_event("future-kind", "{}") is None
    with pytest.raises(BadServerResponse):
        parse_event("queued", "{}")
    with pytest.raises(BadServerResponse):
        parse_event("done", "not json")


def test_images_encode_without_prefix_and_decode_strictly():
    """encode_image gives plain base64; decode_image takes a data: URL too and refuses junk."""
    picture = Image.new("RGB", (4, 4), (0, 0, 255))
    jpeg = encode_image(picture, "jpeg")
    assert not jpeg.startswith("data:") and decode_image(jpeg).format == "JPEG"
    assert decode_image("data:image/png;base64," + encode_image(picture, "png")).format == "PNG"
    for junk in ("not base64 !!", "aGVsbG8=", 42):
        with pytest.raises(BadServerResponse):
            decode_image(junk)
