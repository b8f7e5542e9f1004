"""Per-request overhead of the image server + client: total time minus engine time.

Runs the real server (uvicorn in a thread, 127.0.0.1) with the noise engine at zero latency and
asks for one 256 px JPEG per request through :class:`ImageClient`. The baseline is the engine
call plus JPEG encoding done in-process, with no HTTP at all. Target: <= 30 ms overhead.

This benchmark is why the server creates its listening socket with ``IPPROTO_TCP``: asyncio turns
on ``TCP_NODELAY`` only for sockets that name it, and without it every answer waited about 40 ms
more (Nagle's algorithm meeting the client's delayed ACK).

    python benchmarks/server_overhead.py [--requests 200]
"""

from __future__ import annotations

import argparse
import statistics
import time

from speech2image_nb.images import ImageClient
from speech2image_nb.images.protocol import encode_image
from speech2image_nb.server import start_background
from speech2image_nb.server.engines.base import ImageJob
from speech2image_nb.server.engines.noise import NoiseEngine

TARGET_MS = 30.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--batch-wait", type=float, default=0.05, help="batch gathering window, s")
    args = parser.parse_args()

    engine = NoiseEngine(size_px=256)
    engine.load()
    baseline = []
    for i in range(args.requests):
        start = time.perf_counter()
        image = engine.generate([ImageJob("a red fox", i + 1, 0)])[0]
        encode_image(image, "jpeg")
        baseline.append(time.perf_counter() - start)

    server = start_background(NoiseEngine(size_px=256), ready_timeout_s=30, batch_wait_s=args.batch_wait)
    try:
        client = ImageClient(server.url)
        client.generate("warm up")
        totals, engine_times = [], []
        for i in range(args.requests):
            start = time.perf_counter()
            result = client.generate("a red fox", seed=i + 1)
            totals.append(time.perf_counter() - start)
            engine_times.append(result.timings["generate_s"])
    finally:
        server.stop()
    overhead = [t - e for t, e in zip(totals, engine_times, strict=True)]
    base_ms = statistics.median(baseline) * 1000
    total_ms = statistics.median(totals) * 1000
    over_ms = statistics.median(overhead) * 1000
    p90_ms = sorted(overhead)[int(0.9 * len(overhead))] * 1000
    print(f"requests: {args.requests}, one 256 px JPEG each, noise engine at zero latency")
    print(f"baseline (engine + JPEG encode in-process, no HTTP): median {base_ms:.2f} ms")
    print(f"through server + client: median total {total_ms:.2f} ms")
    print(
        f"overhead (total - engine time): median {over_ms:.2f} ms, p90 {p90_ms:.2f} ms "
        f"(target <= {TARGET_MS:.0f} ms: {'met' if over_ms <= TARGET_MS else 'MISSED'})"
    )
    print(f"total / baseline: {total_ms / base_ms:.1f}x")


if __name__ == "__main__":
    main()
