"""A class on one server: 30 concurrent streaming clients of 1-4 images, measured from outside.

The real server runs in a child process on 127.0.0.1 (so that its memory, file descriptors and
threads are its own, read from /proc); clients are threads of this process speaking plain HTTP and
server-sent events (no image decoding, so that on a small machine the clients take little of the
CPU the server needs). For each engine configuration it prints:

- one request alone (1 image and 4 images; median of a few) and a burst of ``--clients`` clients
  released together, of 1-4 images each (``--bursts`` times): p50/p95 from the release to each
  client's ``done``, their ratio to one alone, and how every request ended: served (all its images,
  then ``done``), refused with 503 and a ``Retry-After``, or anything else (dropped, 5xx: a failure);
- the queueing bound: a FIFO server that batches ``max_batch`` images per engine call finishes the
  image at position ``k`` of the burst after ``ceil(k / max_batch)`` calls, so the request at the
  95th percentile waits for the calls ahead of it and then its own; with ``T`` the measured time
  of one full call alone, its bound is ``ceil(0.95 * images / max_batch) * T``;
- after ``--clients`` clients leave mid-stream (they close the connection at their first progress
  event): file descriptors and threads of the server against before (after an identical warm-up
  round, so that pools the server keeps are already grown), and how long the next request then
  takes against one alone (the work of those who left must not delay it);
- for the noise engine at zero latency, the server's memory over ``--requests`` requests (the same
  clients, streaming, one after another).

Configurations: the noise engine with no latency (the server's own cost: on 2 cores 30 clients are
CPU-bound, and the ratio to one alone measures throughput, not batching), the noise engine with a
simulated accelerator latency (the engine sleeps as a GPU would compute, so batching shows), and the
tiny random DALL-E mini engine on the CPU (real sampling in batches of 4, previews on).

    python benchmarks/server_load.py [--clients 30] [--bursts 3] [--requests 1000] [--skip-dalle]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from speech2image_nb.images.protocol import SSEParser  # noqa: E402
from tests.image_server_utils import ProcessStats, process_stats, settle  # noqa: E402

#: the noise engine made to sleep like DALL-E mini on a datacentre GPU (the targets of
#: benchmarks/RESULTS.md: 1 image 0.4 s, 16 images 0.8 s): base + per_image * n**0.3
GPU_LIKE = {"base_latency_s": 0.09, "per_image_latency_s": 0.31, "steps": 8}
MB = 2**20


# --- the server, in a child process ------------------------------------------------------------


def serve(spec: dict[str, Any]) -> None:
    """The child: start the server described by ``spec``, print its URL, serve until stdin closes."""
    from speech2image_nb.server import start_background

    engine: Any
    if spec["engine"] == "noise":
        from speech2image_nb.server.engines.noise import NoiseEngine

        engine = NoiseEngine(**spec["engine_options"])
    else:
        from speech2image_nb.server.engines.dalle_mini import DalleMiniEngine

        engine = DalleMiniEngine(**spec["engine_options"])
    server = start_background(engine, ready_timeout_s=300, **spec["server_options"])
    print(server.url, flush=True)
    sys.stdin.read()
    server.stop()


class ServerProcess:
    """A server started by :func:`serve` in a child process."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()
        if not self.url.startswith("http://"):
            self.close()
            raise SystemExit(f"the server did not start: {self.url!r}")

    def stats(self) -> ProcessStats:
        """Memory, descriptors and threads of the server process now (Linux /proc)."""
        return process_stats(self.process.pid)

    def queue(self) -> int:
        """Requests waiting in the server's queue."""
        return int(requests.get(self.url + "/", timeout=10).json()["queue"])

    def close(self) -> None:
        """Stop the server (it stops when its stdin closes)."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


# --- the clients -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How one streaming request ended."""

    kind: str  # "served", "refused" (503 with Retry-After), "left" (closed on purpose), "failed: ..."
    seconds: float  # from the release to the last byte read
    images: int


def stream(
    url: str, body: dict[str, Any], *, leave_at_progress: bool = False, started: float = 0.0
) -> Outcome:
    """One ``POST /generate/stream`` on its own connection; what became of it."""
    started = started or time.perf_counter()
    kinds: list[str] = []
    parser = SSEParser()
    try:
        with (
            requests.Session() as session,
            session.post(url + "/generate/stream", json=body, stream=True, timeout=(10, 600)) as answer,
        ):
            if answer.status_code == 503 and int(answer.headers.get("Retry-After", "0")) >= 1:
                return Outcome("refused", time.perf_counter() - started, 0)
            if answer.status_code != 200:
                return Outcome(f"failed: HTTP {answer.status_code}", time.perf_counter() - started, 0)
            for chunk in answer.iter_content(chunk_size=None):
                kinds.extend(name for name, _ in parser.feed(chunk))
                if leave_at_progress and "progress" in kinds:
                    return Outcome("left", time.perf_counter() - started, 0)
    except requests.RequestException as exc:
        return Outcome(f"failed: {type(exc).__name__}", time.perf_counter() - started, kinds.count("image"))
    images = kinds.count("image")
    served = kinds[-1:] == ["done"] and images == body["num_images"]
    return Outcome(
        "served" if served else f"failed: ended after {kinds[-1:]}", time.perf_counter() - started, images
    )


def together(count: int, call: Callable[[int, float], Outcome]) -> list[Outcome]:
    """``call(i, release_time)`` in ``count`` threads released at once."""
    barrier = threading.Barrier(count + 1)
    release = [0.0]
    outcomes: list[Outcome] = [Outcome("failed: no answer", 0.0, 0)] * count

    def worker(i: int) -> None:
        barrier.wait(60)
        outcomes[i] = call(i, release[0])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    release[0] = time.perf_counter()
    barrier.wait(60)
    for thread in threads:
        thread.join(1200)
    return outcomes


def burst_body(i: int) -> dict[str, Any]:
    """Client ``i`` of a burst: 1-4 images, its own prompt and seed."""
    return {"text": f"a red fox number {i}", "num_images": i % 4 + 1, "seed": i + 1}


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


# --- one configuration -------------------------------------------------------------------------


def alone_s(url: str, num_images: int, repeats: int) -> float:
    """Median seconds of one request of ``num_images`` with the server otherwise idle."""
    times = []
    for i in range(repeats):
        outcome = stream(url, {"text": "alone", "num_images": num_images, "seed": 1000 + i})
        assert outcome.kind == "served", outcome
        times.append(outcome.seconds)
    return statistics.median(times)


def measure(name: str, spec: dict[str, Any], args: argparse.Namespace, *, bursts: int, repeats: int) -> None:
    """Print the figures of one server configuration."""
    server = ServerProcess(spec)
    try:
        max_batch = int(requests.get(server.url + "/", timeout=10).json()["max_batch"])
        alone_s(server.url, 1, 1)  # warm-up
        one, four = alone_s(server.url, 1, repeats), alone_s(server.url, 4, repeats)
        full = alone_s(server.url, max_batch, repeats) if max_batch != 4 else four
        outcomes: list[Outcome] = []
        for _ in range(bursts):
            outcomes += together(
                args.clients, lambda i, release: stream(server.url, burst_body(i), started=release)
            )
            settle(server.queue, 0, timeout_s=30)
        served = [o.seconds for o in outcomes if o.kind == "served"]
        kinds = {kind: sum(o.kind == kind for o in outcomes) for kind in sorted({o.kind for o in outcomes})}
        images = sum(burst_body(i)["num_images"] for i in range(args.clients))
        calls = 1 + math.ceil(max(0.0, 0.95 * images - 1) / max_batch)
        bound = calls * full
        p50, p95 = percentile(served, 0.5), percentile(served, 0.95)
        print(f"\n## {name}")
        print(f"server: {json.dumps(spec['engine_options'])}, max_batch {max_batch}")
        print(
            f"one alone: 1 image {one:.3f} s, 4 images {four:.3f} s, "
            f"{max_batch} images (a full call) {full:.3f} s"
        )
        print(
            f"{args.clients} clients x {bursts} bursts ({images} images a burst): "
            f"p50 {p50:.3f} s, p95 {p95:.3f} s, max {max(served):.3f} s; "
            f"p95 / 4 images alone {p95 / four:.2f}x, p95 / 1 image alone {p95 / one:.2f}x"
        )
        print(
            f"batched time + queueing for the 95th percentile: {calls} calls of {max_batch} images "
            f"(1 + ceil((0.95 x {images} - 1) / {max_batch})) x {full:.3f} s = {bound:.3f} s; "
            f"p95 / that bound {p95 / bound:.2f}"
        )
        print(f"outcomes: {kinds}")

        def leave(i: int, release: float) -> Outcome:
            return stream(server.url, burst_body(i), leave_at_progress=True)

        together(args.clients, leave)  # warm-up round: pools grow to what this load needs
        settle(server.queue, 0, timeout_s=30)
        time.sleep(2 * full)  # the engine finishes what it was doing
        before = server.stats()
        left = together(args.clients, leave)
        next_one = stream(server.url, {"text": "after the leavers", "num_images": 1, "seed": 7})
        next_s = next_one.seconds
        queue = settle(server.queue, 0, timeout_s=30)
        after_fds = settle(lambda: server.stats().fd_count, before.fd_count, timeout_s=30)
        after_threads = settle(lambda: server.stats().thread_count, before.thread_count, timeout_s=30)
        print(
            f"{args.clients} clients left mid-stream ({sum(o.kind == 'left' for o in left)} at their first "
            f"progress event): queue {queue}; file descriptors {before.fd_count} -> {after_fds}, "
            f"threads {before.thread_count} -> {after_threads}; the next request {next_one.kind} in "
            f"{next_s:.3f} s ({next_s / one:.2f}x one alone)"
        )
        if args.requests and spec["engine"] == "noise" and not spec["engine_options"].get("base_latency_s"):
            memory_over_requests(server, args)
    finally:
        server.close()


def memory_over_requests(server: ServerProcess, args: argparse.Namespace) -> None:
    """Server memory over ``args.requests`` streamed requests from ``args.clients`` clients."""
    for i in range(100):  # warm-up: caches and allocator arenas
        stream(server.url, burst_body(i))
    start = server.stats().rss_bytes / MB
    peak = [start]
    per_client = math.ceil(args.requests / args.clients)
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            peak[0] = max(peak[0], server.stats().rss_bytes / MB)

    sampler = threading.Thread(target=sample)
    sampler.start()

    def client(i: int, release: float) -> Outcome:
        for n in range(per_client):
            outcome = stream(server.url, burst_body(i * per_client + n))
            if outcome.kind != "served":
                return outcome
        return outcome

    outcomes = together(args.clients, client)
    done.set()
    sampler.join()
    end = server.stats().rss_bytes / MB
    print(
        f"memory over {per_client * args.clients} requests ({args.clients} clients streaming one after "
        f"another): {start:.1f} -> {end:.1f} MB ({end - start:+.1f} MB, peak {max(peak):.1f} MB; "
        f"target within 50 MB); clients {sorted({o.kind for o in outcomes})}"
    )


def configurations(
    args: argparse.Namespace, model_dir: Path | None
) -> Iterator[tuple[str, dict[str, Any], int]]:
    """(name, server spec, bursts) of each configuration."""
    quiet = {"max_queue": 64, "max_images": 80}  # a full call of the noise engine alone is measured
    yield (
        "noise engine, no latency (the server's own cost)",
        {
            "engine": "noise",
            "engine_options": {"size_px": 256},
            "server_options": quiet,
        },
        args.bursts,
    )
    for max_batch in (16, 80):  # DALL-E's CUDA default; a whole burst in one call
        yield (
            f"noise engine, GPU-like latency, max_batch {max_batch}",
            {
                "engine": "noise",
                "engine_options": {"size_px": 256, "max_batch": max_batch, **GPU_LIKE},
                "server_options": {
                    **quiet,
                    "max_images": max(10, max_batch),
                },  # a full call alone is measured
            },
            args.bursts,
        )
    if model_dir is not None:
        yield (
            "DALL-E mini, tiny random weights, CPU (int8, previews on)",
            {
                "engine": "dalle-mini",
                "engine_options": {"model_dir": str(model_dir), "device": "cpu", "threads": args.threads},
                "server_options": quiet,
            },
            1,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=30)
    parser.add_argument("--bursts", type=int, default=3, help="bursts per noise configuration (DALL-E: 1)")
    parser.add_argument("--requests", type=int, default=1000, help="requests of the memory check (0: skip)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the DALL-E engine")
    parser.add_argument("--skip-dalle", action="store_true")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(json.loads(args.serve))
        return
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start")
    with tempfile.TemporaryDirectory() as folder:
        model_dir = None
        if not args.skip_dalle:
            from speech2image_nb.server.engines.dalle_mini import save_random_checkpoint

            model_dir = save_random_checkpoint(Path(folder) / "tiny", "tiny", seed=0)
        for name, spec, bursts in configurations(args, model_dir):
            measure(name, spec, args, bursts=bursts, repeats=3 if spec["engine"] == "noise" else 2)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
