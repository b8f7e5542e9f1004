"""A class on one server, scaled down: every stream served or refused with Retry-After, clients that
leave take their descriptors, threads and batch rows with them, memory stays flat.

The full-size figures (30 clients, 1,000 requests, latency percentiles) are a benchmark:
``benchmarks/server_load.py``.
"""

from __future__ import annotations

import json
import time

import pytest
import requests

from speech2image_nb.images import ImageClient
from speech2image_nb.server.engines.dalle_mini import DalleMiniEngine

from .conftest import TIME_FACTOR
from .image_server_utils import EventStream, running_server, server_process, settle, stream_request
from .test_server_batching import run_concurrently

CLIENTS = 12
#: one generation call with simulated accelerator latency, for the noise engine
ENGINE = {"size_px": 64, "base_latency_s": 0.2, "per_image_latency_s": 0.02, "steps": 4, "max_batch": 4}


def test_concurrent_streams_are_served_or_refused_with_retry_after():
    """12 streams of 1-4 images at once against a 4-deep queue: each gets all its images and done,
    or 503 with Retry-After; none is cut off, none gets another status."""
    with server_process(ENGINE, max_queue=4) as srv:
        outcomes = run_concurrently(
            CLIENTS,
            lambda i: stream_request(srv.url, {"text": f"fox {i}", "num_images": i % 4 + 1, "seed": i + 1}),
        )
    served = [i for i, o in enumerate(outcomes) if getattr(o, "status", None) == 200]
    refused = [i for i, o in enumerate(outcomes) if getattr(o, "status", None) == 503]
    assert sorted(served + refused) == list(range(CLIENTS)), outcomes
    for i in served:
        assert outcomes[i].image_count == i % 4 + 1 and outcomes[i].kinds[-1] == "done", outcomes[i]
    for i in refused:
        assert int(outcomes[i].retry_after) >= 1, outcomes[i]
    assert served and refused, outcomes  # both answers really happened


def test_clients_that_leave_mid_stream_leave_no_descriptor_or_thread_behind():
    """After a round of 10 clients that close their streams mid-generation, a second such round
    leaves the server with no more file descriptors or threads than the first did, and it serves."""
    with server_process(ENGINE) as srv:

        def leave(i):
            return stream_request(srv.url, {"text": f"gone {i}", "num_images": 3}, leave_after="progress")

        def round_of_leavers():
            outcomes = run_concurrently(10, leave)
            assert all(o.status == 200 and o.kinds[-1] == "progress" for o in outcomes), outcomes
            return settle(lambda: requests.get(srv.url + "/", timeout=5).json()["queue"], 0, timeout_s=10)

        run_concurrently(10, lambda i: stream_request(srv.url, {"text": "warm", "num_images": 2}))
        round_of_leavers()
        time.sleep(1.0 * TIME_FACTOR)  # the first round's cancelled engine calls end
        before = srv.stats()
        assert round_of_leavers() == 0
        fds = settle(lambda: srv.stats().fd_count, before.fd_count, timeout_s=10 * TIME_FACTOR)
        threads = settle(lambda: srv.stats().thread_count, before.thread_count, timeout_s=10 * TIME_FACTOR)
        print(f"before {before}, after: {fds} descriptors, {threads} threads")
        assert fds <= before.fd_count and threads <= before.thread_count
        assert stream_request(srv.url, {"text": "still here"}).image_count == 1


def test_memory_stays_flat_over_300_requests():
    """300 streamed requests after 100 of warm-up grow the server's memory by under 15 MB (the
    benchmark's 50 MB per 1,000 requests, pro rata)."""
    with server_process({"size_px": 256, "steps": 2}) as srv:
        client = ImageClient(srv.url)

        def requests_in_a_row(count):
            for i in range(count):
                assert len(list(client.generate_stream(f"a fox {i % 7}", seed=i + 1))) >= 2

        requests_in_a_row(100)
        before = srv.stats().rss_bytes
        requests_in_a_row(300)
        grown_mb = (srv.stats().rss_bytes - before) / 2**20
    print(f"memory grew {grown_mb:.1f} MB over 300 requests")
    assert grown_mb < 15


@pytest.mark.usefixtures("one_torch_thread")
def test_a_stream_that_leaves_mid_sampling_frees_its_rows_in_the_batch(tiny_dalle_dir):
    """DALL-E: a 3-image stream that leaves after its first progress event stops being sampled there
    (its rows leave the batch); the 1-image request beside it finishes with exactly its picture."""
    engine = DalleMiniEngine(model_dir=tiny_dalle_dir, device="cpu")
    with running_server(engine) as srv:
        blocker = EventStream(srv.url, {"text": "first in the queue"})
        assert blocker.read_until("progress")  # the engine samples it: the next two queue together
        stay = EventStream(srv.url, {"text": "a red fox", "num_images": 1, "seed": 3})
        leave = EventStream(srv.url, {"text": "a cat", "num_images": 3, "seed": 4})
        assert leave.read_until("progress")
        leave.close()
        stay.read_until(None)
        blocker.read_until(None)
        report = engine.last_sampling
        alone = requests.post(srv.url + "/generate", json={"text": "a red fox", "seed": 3}, timeout=60)
        for stream in (blocker, stay):
            stream.close()
    assert report.steps_by_image[0] == 256
    left_at = report.steps_by_image[1:]
    print(f"the leaving request's 3 images stopped after {left_at} of 256 tokens")
    assert len(set(left_at)) == 1 and 32 <= left_at[0] < 256
    assert stay.outcome().kinds[-1] == "done"
    streamed = [json.loads(data)["data"] for name, data in stay.events if name == "image"]
    assert streamed == alone.json()["generatedImgs"]
