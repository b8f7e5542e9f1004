"""Throughput and p95 of 60 clients against 1, 2 and 4 Ray Serve replicas, and against one process.

The engine is the noise engine with a GPU-like latency per batch (``base + per_image * n**0.3``
seconds, slept, not computed), so a 2-core machine can show how replicas on separate GPUs would
scale: each replica sleeps in its own process while the CPUs stay nearly idle. Clients run a
closed loop (send, wait for the answer, send again) for ``--seconds`` after a warm-up.

    python benchmarks/ray_scaling.py              # prints a markdown table and the ratios

It is one run, not a test. What it cannot show: real GPU memory (two replicas on one card share
its memory and its compute), the network between nodes (here every hop is loopback), and an
engine's own CPU work (previews, JPEG encoding of large images) competing with the proxy.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import math
import subprocess
import threading
import time

import requests

from speech2image_nb.server import start_background
from speech2image_nb.server.engines.noise import NoiseEngine

CLIENTS = 60
BASE_LATENCY_S = 1.0  # per engine call, as a GPU's fixed cost of one DALL-E batch
PER_IMAGE_LATENCY_S = 0.25  # grows with batch size ** 0.3
MAX_BATCH = 8
ENGINE = functools.partial(
    NoiseEngine,
    size_px=64,
    base_latency_s=BASE_LATENCY_S,
    per_image_latency_s=PER_IMAGE_LATENCY_S,
    max_batch=MAX_BATCH,
)


def _load(url: str, *, seconds: float, warmup_s: float) -> tuple[float, float, int]:
    """Closed-loop clients for ``warmup_s + seconds``: requests/s, p95 s and failures of the answers
    that arrived in the measured part (counted by arrival, so none is lost at the window's edges)."""
    stop_at = time.monotonic() + warmup_s + seconds
    measure_from = time.monotonic() + warmup_s
    latencies: list[float] = []
    failures = 0
    lock = threading.Lock()

    def client(index: int) -> None:
        nonlocal failures
        session = requests.Session()
        while time.monotonic() < stop_at:
            started = time.monotonic()
            answer = session.post(
                f"{url}/generate", json={"text": f"a kite {index}", "num_images": 1}, timeout=(5, 300)
            )
            ended = time.monotonic()
            with lock:
                if answer.status_code != 200:
                    failures += 1
                elif measure_from <= ended <= stop_at:
                    latencies.append(ended - started)

    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(client, range(CLIENTS)))
    latencies.sort()
    p95 = latencies[math.ceil(0.95 * len(latencies)) - 1] if latencies else float("nan")
    return len(latencies) / seconds, p95, failures


def _single_process(seconds: float, warmup_s: float) -> tuple[float, float, int]:
    server = start_background(ENGINE(), ready_timeout_s=60)
    try:
        return _load(server.url, seconds=seconds, warmup_s=warmup_s)
    finally:
        server.stop()


def _ray(replica_counts: list[int], seconds: float, warmup_s: float) -> dict[int, tuple[float, float, int]]:
    import socket

    import ray
    from ray import serve

    from speech2image_nb.server.ray_serve import (
        EngineRecipe,
        IngressOptions,
        ReplicaOptions,
        ScalingOptions,
        image_app,
    )

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
    results: dict[int, tuple[float, float, int]] = {}
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for count in replica_counts:
            app = image_app(
                EngineRecipe(factory=ENGINE),
                scaling=ScalingOptions(replicas=count, cpus_per_replica=0.5, ingress_cpus=1, max_waiting=128),
                replica=ReplicaOptions(max_queue=64),
                ingress=IngressOptions(token_env=None),
            )
            serve.run(app, name="bench", route_prefix="/")
            results[count] = _load(f"http://127.0.0.1:{port}", seconds=seconds, warmup_s=warmup_s)
            print(f"ray {count} replica(s): {results[count]}", flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    return results


def _cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return f"{fields.get('Model name', '?').strip()}, {fields.get('CPU(s)', '?').strip()} CPUs"


def main() -> None:
    """Run every configuration once and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=40.0, help="measured seconds per configuration")
    parser.add_argument("--warmup", type=float, default=20.0, help="seconds of load before measuring")
    args = parser.parse_args()
    single = _single_process(args.seconds, args.warmup)
    print(f"single process: {single}", flush=True)
    ray_results = _ray([1, 2, 4], args.seconds, args.warmup)
    print(f"\nCPU: {_cpu_model()}; {CLIENTS} clients, {args.seconds:g} s measured after {args.warmup:g} s")
    print(
        f"engine: noise, {BASE_LATENCY_S} s + {PER_IMAGE_LATENCY_S} s * n**0.3 per call, "
        f"max_batch {MAX_BATCH}\n"
    )
    print("| server | requests/s | p95 s | failed | vs 1 replica |")
    print("| --- | --- | --- | --- | --- |")
    one = ray_results[1][0]
    print(
        f"| one process (no Ray) | {single[0]:.2f} | {single[1]:.2f} | {single[2]} | {single[0] / one:.2f}x |"
    )
    for count, (rate, p95, failed) in ray_results.items():
        print(f"| Ray Serve, {count} replica(s) | {rate:.2f} | {p95:.2f} | {failed} | {rate / one:.2f}x |")
    overhead = 1 - one / single[0]
    print(f"\nRay at 1 replica vs one process: {overhead:+.1%} throughput lost")


if __name__ == "__main__":
    main()
