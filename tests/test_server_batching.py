"""The batcher: concurrent requests share engine calls, seeds stay exact, a full queue says 503."""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests

from speech2image_nb.errors import ServerError
from speech2image_nb.images import ImageClient
from speech2image_nb.server.engines.noise import NoiseEngine

from .conftest import TIME_FACTOR
from .image_server_utils import running_server

CONCURRENT = 16


def run_concurrently(count, call):
    """Run call(i) in ``count`` threads released together; returns results (or exceptions) by i."""
    barrier = threading.Barrier(count)
    results: list = [None] * count

    def worker(i):
        barrier.wait(10)
        try:
            results[i] = call(i)
        except Exception as exc:  # collected and asserted on by the test
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30 * TIME_FACTOR)
    return results


def test_sixteen_concurrent_requests_take_at_most_1_5x_one_request():
    """16 single-image requests at once finish within 1.5x one request (serial would be ~16x)."""
    engine = NoiseEngine(size_px=64, base_latency_s=0.4, per_image_latency_s=0.02, max_batch=16)
    with running_server(engine) as srv:
        clients = [ImageClient(srv.url) for _ in range(CONCURRENT)]
        for client in clients:
            client.health()  # open the keep-alive connection before timing
        clients[0].generate("warm up")
        start = time.perf_counter()
        clients[0].generate("one fox", seed=1)
        one_s = time.perf_counter() - start
        engine.calls.clear()
        start = time.perf_counter()
        results = run_concurrently(CONCURRENT, lambda i: clients[i].generate(f"fox {i}", seed=i + 1))
        many_s = time.perf_counter() - start
    assert all(len(r.images) == 1 for r in results), results
    assert sum(engine.calls) == CONCURRENT and len(engine.calls) <= 2, engine.calls
    serial_s = CONCURRENT * engine.latency_s(1)
    print(
        f"one request {one_s:.3f} s, {CONCURRENT} concurrent {many_s:.3f} s "
        f"(ratio {many_s / one_s:.2f}; serial would take {serial_s:.1f} s), calls {engine.calls}"
    )
    assert many_s <= 1.5 * one_s * TIME_FACTOR


def test_same_seed_gives_same_images_alone_and_batched():
    """A request's images are identical whether it ran alone or inside a batch with others."""
    engine = NoiseEngine(size_px=64, base_latency_s=0.2, max_batch=16)
    body = {"text": "a lighthouse at dusk", "num_images": 3, "seed": 1234}
    with running_server(engine) as srv:
        alone = requests.post(srv.url + "/generate", json=body, timeout=10).json()["generatedImgs"]
        engine.calls.clear()

        def call(i):
            payload = body if i == 3 else {"text": f"other {i}", "num_images": 2, "seed": 99 + i}
            return requests.post(srv.url + "/generate", json=payload, timeout=10).json()

        results = run_concurrently(6, call)
    assert max(engine.calls) > 3, engine.calls  # it really shared a call
    assert results[3]["generatedImgs"] == alone


def test_large_request_is_split_into_batches_with_the_same_images():
    """num_images above max_batch runs in several engine calls and gives the same images."""
    body = {"text": "a tall tree", "num_images": 9, "seed": 5}
    small = NoiseEngine(size_px=32)
    with running_server(small, max_batch=4) as srv:
        split = requests.post(srv.url + "/generate", json=body, timeout=10).json()["generatedImgs"]
    with running_server(NoiseEngine(size_px=32)) as srv:
        whole = requests.post(srv.url + "/generate", json=body, timeout=10).json()["generatedImgs"]
    assert small.calls == [4, 4, 1]
    assert split == whole


def test_requests_with_different_engine_options_are_not_mixed():
    """Requests only share an engine call when their engine options are equal."""
    engine = NoiseEngine(size_px=32, base_latency_s=0.2)
    with running_server(engine) as srv:
        run_concurrently(
            4,
            lambda i: requests.post(
                srv.url + "/generate", json={"text": "x", "steps": 2 + i % 2}, timeout=10
            ).json(),
        )
    assert sorted(engine.calls) == [2, 2], engine.calls


def test_full_queue_answers_503_with_retry_after():
    """With max_queue waiting requests, the next one gets 503 queue_full and a Retry-After."""
    engine = NoiseEngine(size_px=32, base_latency_s=1.0, max_batch=1, steps=1)
    with running_server(engine, max_queue=2) as srv:
        body = json.dumps({"text": "wait"})
        threads = []
        for delay in (0.0, 0.3, 0.3):
            thread = threading.Thread(
                target=requests.post, args=(srv.url + "/generate",), kwargs={"data": body, "timeout": 20}
            )
            thread.start()
            threads.append(thread)
            time.sleep(delay)
        time.sleep(0.2)
        refused = requests.post(srv.url + "/generate", data=body, timeout=10)
        with pytest.raises(ServerError) as info:
            ImageClient(srv.url).generate("one more")
        for thread in threads:
            thread.join(20)
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "queue_full"
    assert int(refused.headers["Retry-After"]) >= 1
    assert (info.value.status, info.value.code) == (503, "queue_full")
    assert info.value.retry_after_s >= 1
