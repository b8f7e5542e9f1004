"""The image server on Ray Serve, for real: a local Ray, the Serve HTTP proxy, two noise replicas and
one tiny DALL-E replica, driven over HTTP as the Playground, our client and a crowd would.

One Ray instance serves the whole module (starting one takes tens of seconds on 2 loaded cores):
the noise application at ``/`` (two replicas, a token) and the tiny DALL-E one at ``/tiny``. Every
wait is bounded and scaled by ``TIME_FACTOR``; nothing asserts a latency tighter than that.
"""

from __future__ import annotations

import concurrent.futures
import functools
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from speech2image_nb.images.protocol import SSEParser, parse_event
from tests.conftest import TIME_FACTOR

try:  # a core test: it fails, not skips, where Ray is missing (scripts/test.sh installs the extra)
    import ray
    from ray import serve
except ModuleNotFoundError as exc:
    raise ImportError(
        "tests/test_server_ray.py needs the ray extra: pip install 'speech2image_nb[ray]'"
    ) from exc

from speech2image_nb.server.engines.noise import NoiseEngine
from speech2image_nb.server.ray_images import REPLICA_LOST_MESSAGE
from speech2image_nb.server.ray_serve import (
    EngineRecipe,
    IngressOptions,
    ReplicaOptions,
    ScalingOptions,
    image_app,
)

pytestmark = pytest.mark.slow

TOKEN = "ray-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NOISE_APP = "noise"
TINY_APP = "tiny"
#: a call of n images sleeps 0.3 s + 0.05 s * n**0.3: a 10-image request (5 calls of 2) lasts about
#: 1.8 s, long enough to kill its replica in the middle; loading takes 1 s (a replica restarting
#: is visibly "loading" for that long)
NOISE = functools.partial(
    NoiseEngine, size_px=32, base_latency_s=0.3, per_image_latency_s=0.05, max_batch=2, load_latency_s=1.0
)
READY_TIMEOUT_S = 120 * TIME_FACTOR
REQUEST_TIMEOUT_S = 30 * TIME_FACTOR


@dataclass(frozen=True)
class RayServer:
    """The module's Ray Serve instance: the URL of its HTTP proxy."""

    url: str

    @property
    def tiny_url(self) -> str:
        """Where the tiny DALL-E application answers."""
        return f"{self.url}/{TINY_APP}"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _descendants() -> set[int]:
    import psutil

    return {child.pid for child in psutil.Process().children(recursive=True)}


def _alive(pids: set[int]) -> set[int]:
    import psutil

    alive = set()
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.add(pid)
        except psutil.NoSuchProcess:
            continue
    return alive


@pytest.fixture(scope="module")
def ray_server(tiny_dalle_dir: Path) -> Iterator[RayServer]:
    """A local Ray (4 logical CPUs, no dashboard) with both applications, shut down afterwards;
    no process it started may outlive it."""
    before = _descendants()
    root = str(Path(__file__).resolve().parents[1])
    python_path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    ray.init(
        address="local",
        num_cpus=4,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": python_path, "S2I_CPU_THREADS": "1"}},
    )
    started: set[int] = set()
    try:
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        small = ScalingOptions(replicas=2, cpus_per_replica=0.5, ingress_cpus=0.25, max_waiting=40)
        noise = image_app(
            EngineRecipe(factory=NOISE),
            scaling=small,
            replica=ReplicaOptions(max_queue=8),
            ingress=IngressOptions(token=TOKEN, request_timeout_s=REQUEST_TIMEOUT_S),
        )
        # one replica that takes one image at a time and lets one request wait: a full queue is easy to reach
        tiny = image_app(
            EngineRecipe(name="dalle-mini", model_dir=str(tiny_dalle_dir), device="cpu"),
            scaling=ScalingOptions(replicas=1, cpus_per_replica=0.5, ingress_cpus=0.25, max_waiting=1),
            replica=ReplicaOptions(max_batch=1, max_queue=1),
            ingress=IngressOptions(token=TOKEN, request_timeout_s=REQUEST_TIMEOUT_S),
        )
        serve.run(noise, name=NOISE_APP, route_prefix="/", blocking=False)
        serve.run(tiny, name=TINY_APP, route_prefix=f"/{TINY_APP}", blocking=False)
        _wait_running(NOISE_APP, replicas=2)
        _wait_running(TINY_APP, replicas=1)
        started = _descendants() - before
        yield RayServer(url=f"http://127.0.0.1:{port}")
    finally:
        started |= _descendants() - before
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
        deadline = time.monotonic() + 30 * TIME_FACTOR
        while _alive(started) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = _alive(started)
        assert not left, f"Ray processes left after shutdown: {sorted(left)}"


def _replica_states(app: str) -> dict[str, int]:
    status = serve.status().applications.get(app)
    if status is None or "ImageReplica" not in status.deployments:
        return {}
    return {str(k): int(v) for k, v in status.deployments["ImageReplica"].replica_states.items()}


def _wait_running(app: str, *, replicas: int, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Until the application is RUNNING with exactly ``replicas`` replicas, all RUNNING."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = serve.status().applications.get(app)
        states = _replica_states(app)
        if status is not None and str(status.status).endswith("RUNNING") and states == {"RUNNING": replicas}:
            return
        time.sleep(0.2)
    raise AssertionError(
        f"{app} not running with {replicas} replicas: {serve.status().applications.get(app)}"
    )


def _health(url: str) -> dict[str, Any]:
    answer = requests.get(f"{url}/", headers=AUTH, timeout=REQUEST_TIMEOUT_S)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def _generate(url: str, **body: Any) -> requests.Response:
    return requests.post(f"{url}/generate", json=body, headers=AUTH, timeout=REQUEST_TIMEOUT_S)


def _feed(parser: SSEParser, chunk: bytes) -> list[Any]:
    """The protocol's events in ``chunk`` (keepalive comments and unknown events dropped)."""
    events = (parse_event(name, data) for name, data in parser.feed(chunk))
    return [event for event in events if event is not None]


def _served(url: str) -> dict[str, int]:
    return {name: facts["served"] for name, facts in _health(url)["replicas"].items()}


def test_playground_request_with_the_token_in_the_path_and_a_doubled_slash(ray_server: RayServer) -> None:
    """The Playground UI's request: text/plain JSON to /t/<token>//generate, 10 images, its answer shape."""
    backend = f"{ray_server.url}/t/{TOKEN}/"
    health = requests.get(backend, timeout=REQUEST_TIMEOUT_S)
    assert health.status_code == 200 and health.json()["engine"] == "noise"
    answer = requests.post(
        backend + "/generate",
        data=json.dumps({"text": "a red fox in the snow", "num_images": 10}),
        headers={"Content-Type": "text/plain;charset=UTF-8", "Origin": "http://localhost:3000"},
        timeout=REQUEST_TIMEOUT_S,
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert len(body["generatedImgs"]) == 10 and body["generatedImgsFormat"] == "jpeg"
    assert body["engine"] == "noise" and body["timings"]["generate_s"] > 0
    assert answer.headers["access-control-allow-origin"] in ("*", "http://localhost:3000")


def test_bearer_token_is_required(ray_server: RayServer) -> None:
    """Without the token: 401 with the JSON error body; with it in the header: images."""
    refused = requests.post(f"{ray_server.url}/generate", json={"text": "a cat"}, timeout=REQUEST_TIMEOUT_S)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "unauthorized"
    assert refused.headers["www-authenticate"] == "Bearer"
    wrong = requests.post(
        f"{ray_server.url}/t/not-the-token/generate", json={"text": "a cat"}, timeout=REQUEST_TIMEOUT_S
    )
    assert wrong.status_code == 401
    accepted = _generate(ray_server.url, text="a cat", seed=7)
    assert accepted.status_code == 200 and accepted.json()["seed"] == 7


def test_same_seed_same_images_whichever_replica(ray_server: RayServer) -> None:
    """A seed gives the same images on every replica (each image has its own generator)."""
    answers = [_generate(ray_server.url, text="a blue whale", seed=1234, num_images=2) for _ in range(4)]
    assert all(a.status_code == 200 for a in answers)
    assert len({tuple(a.json()["generatedImgs"]) for a in answers}) == 1


def test_stream_sends_progress_then_images_in_order_then_done(ray_server: RayServer) -> None:
    """SSE through the proxy: queued, progress with previews, images 0..n-1 in order, then done."""
    with requests.post(
        f"{ray_server.url}/generate/stream",
        json={"text": "a lighthouse at night", "num_images": 3, "seed": 5},
        headers=AUTH,
        stream=True,
        timeout=REQUEST_TIMEOUT_S,
    ) as answer:
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/event-stream")
        parser = SSEParser()
        names: list[str] = []
        images: list[int] = []
        previews = 0
        for chunk in answer.iter_content(chunk_size=None):
            for event in _feed(parser, chunk):
                name = type(event).__name__
                names.append(name)
                if name == "ImageEvent":
                    images.append(event.index)
                if name == "ProgressEvent" and event.preview is not None:
                    previews += 1
    assert names[-1] == "DoneEvent", names
    assert images == [0, 1, 2]
    assert names.index("ProgressEvent") < names.index("ImageEvent")
    assert previews > 0


def test_twenty_concurrent_requests_are_all_served_by_both_replicas(ray_server: RayServer) -> None:
    """20 requests at once: every one answered with its images, and both replicas did some."""
    before = _served(ray_server.url)

    def one(index: int) -> int:
        answer = _generate(ray_server.url, text=f"a kite number {index}", num_images=1 + index % 3)
        assert answer.status_code == 200, answer.text
        return len(answer.json()["generatedImgs"])

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        counts = list(pool.map(one, range(20)))
    assert counts == [1 + i % 3 for i in range(20)]
    after = _served(ray_server.url)
    grew = [name for name in after if after[name] > before.get(name, 0)]
    assert len(grew) == 2, (before, after)


def test_tiny_dalle_replica_draws_through_the_proxy(ray_server: RayServer) -> None:
    """The tiny random DALL-E behind its own route prefix: images, engine name and prompt reading."""
    health = _health(ray_server.tiny_url)
    assert health["engine"] == "dalle-mini" and health["max_batch"] == 1
    answer = _generate(ray_server.tiny_url, text="a small green frog " * 40, num_images=2, seed=3)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert len(body["generatedImgs"]) == 2 and body["engine"] == "dalle-mini"
    assert body["prompt_truncated"]["limit"].endswith("text tokens")  # the replica's tokenizer, read here


def test_full_queue_answers_503_with_retry_after_then_serves_again(ray_server: RayServer) -> None:
    """More streams than the tiny replica and Serve may hold: 503 + Retry-After; once they close, 200."""
    url = f"{ray_server.tiny_url}/generate/stream"
    body = {"text": "a very long request", "num_images": 10}

    def open_stream(_: int) -> requests.Response:
        return requests.post(url, json=body, headers=AUTH, stream=True, timeout=REQUEST_TIMEOUT_S)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(open_stream, range(8)))
    try:
        statuses = sorted(a.status_code for a in answers)
        busy = [a for a in answers if a.status_code == 503]
        assert busy and set(statuses) <= {200, 503}, statuses
        for answer in busy:
            assert answer.json()["error"]["code"] == "queue_full"
            assert int(answer.headers["retry-after"]) >= 1
    finally:
        for answer in answers:
            answer.close()  # the replica drops what these streams still wanted
    deadline = time.monotonic() + REQUEST_TIMEOUT_S
    while True:
        again = _generate(ray_server.tiny_url, text="a frog", num_images=1)
        if again.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert again.status_code == 200, again.text


def test_killed_replica_gives_a_clear_error_then_ray_restarts_it(ray_server: RayServer) -> None:
    """Kill the replica mid-stream: an error event at once; requests keep being served by the
    live replica while the new one loads; then two replicas run again and both serve."""
    with requests.post(
        f"{ray_server.url}/generate/stream",
        json={"text": "a request that will not finish", "num_images": 10},
        headers=AUTH,
        stream=True,
        timeout=REQUEST_TIMEOUT_S,
    ) as answer:
        assert answer.status_code == 200
        parser = SSEParser()
        chunks = answer.iter_content(chunk_size=None)
        events = []
        while not any(type(e).__name__ == "ProgressEvent" for e in events):
            events += _feed(parser, next(chunks))
        replicas = _health(ray_server.url)["replicas"]
        known_before = set(replicas)
        running = {n: f for n, f in replicas.items() if f["running"] > 0}
        assert len(running) == 1, running
        ((victim, facts),) = running.items()
        os.kill(facts["pid"], signal.SIGKILL)
        killed_at = time.monotonic()
        for chunk in chunks:
            events += _feed(parser, chunk)
        waited_s = time.monotonic() - killed_at
    last = events[-1]
    assert type(last).__name__ == "ErrorEvent", events[-3:]
    assert last.code == "engine_error" and last.message == REPLICA_LOST_MESSAGE
    assert waited_s < 10 * TIME_FACTOR

    # the next requests are served (by the live replica: the new one takes none while it loads)
    deadline = time.monotonic() + READY_TIMEOUT_S
    served = 0
    while time.monotonic() < deadline:
        answer = _generate(ray_server.url, text="after the crash", num_images=1)
        assert answer.status_code == 200, answer.text
        served += 1
        if served >= 3 and _replica_states(NOISE_APP) == {"RUNNING": 2}:
            break
    _wait_running(NOISE_APP, replicas=2)
    replicas = _health(ray_server.url)["replicas"]
    assert replicas[victim]["running"] == 0

    # the restarted replica serves too
    new = set(_health(ray_server.url)["replicas"]) - known_before
    for _ in range(5):
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(lambda i: _generate(ray_server.url, text=f"kite {i}", num_images=2), range(8))
            )
        assert all(a.status_code == 200 for a in answers)
        replicas = _health(ray_server.url)["replicas"]
        new = set(replicas) - known_before
        if any(replicas[name]["served"] > 0 for name in new):
            break
    assert new and any(replicas[name]["served"] > 0 for name in new), replicas


def test_committed_serve_config_builds_the_application(monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy/ray-serve.yaml is a valid Serve config whose args build_app accepts (no Ray needed)."""
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from speech2image_nb.server.ray_serve import build_app

    config = yaml.safe_load((Path(__file__).parents[1] / "deploy" / "ray-serve.yaml").read_text())
    ServeDeploySchema.model_validate(config)
    (app_config,) = config["applications"]
    assert app_config["import_path"] == "speech2image_nb.server.ray_serve:build_app"
    assert build_app(app_config["args"]) is not None
    assert build_app({"engine": "noise", "replicas": "2", "no_auth": "true"}) is not None
    with pytest.raises(Exception, match="Unknown argument"):
        build_app({"engine": "noise", "replica": "2"})
