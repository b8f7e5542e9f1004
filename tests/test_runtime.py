"""The background runtime: run_sync from scripts and from inside a running loop, thread-safe queues."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from speech2image_nb.runtime import Runtime, ThreadSafeQueue
from tests.conftest import TIME_FACTOR


@pytest.fixture
def runtime():
    rt = Runtime(name="test-runtime")
    yield rt
    rt.stop()


async def _double(x: int) -> int:
    await asyncio.sleep(0.01)
    return 2 * x


def test_runtime_starts_lazily_and_stops(runtime):
    """No thread before first use; one after; none after stop."""
    assert not runtime.is_running
    assert runtime.run_sync(_double(4)) == 8
    assert runtime.is_running
    runtime.stop()
    assert not runtime.is_running


def test_run_sync_works_inside_a_running_event_loop(runtime):
    """Called from a coroutine (as in a Jupyter cell, where the kernel's loop runs), it still works."""

    async def cell() -> int:
        return runtime.run_sync(_double(21))

    assert asyncio.run(cell()) == 42


def test_run_sync_propagates_exceptions_and_times_out(runtime):
    """Errors come back as themselves; a slow coroutine raises TimeoutError and is cancelled."""

    async def boom() -> None:
        raise ValueError("nope")

    with pytest.raises(ValueError, match="nope"):
        runtime.run_sync(boom())

    cancelled = threading.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    start = time.monotonic()
    with pytest.raises(TimeoutError):
        runtime.run_sync(slow(), timeout_s=0.1)
    assert time.monotonic() - start < 2 * TIME_FACTOR
    assert cancelled.wait(2 * TIME_FACTOR)


def test_run_sync_from_the_runtime_thread_is_refused(runtime):
    """A nested run_sync on the runtime thread would deadlock: it raises instead."""

    async def nested() -> None:
        runtime.run_sync(_double(1))

    with pytest.raises(RuntimeError, match="runtime thread"):
        runtime.run_sync(nested())


def test_thread_safe_queue_delivers_items_from_many_threads_in_order(runtime):
    """Items put from 4 threads all arrive; each thread's items keep their order; close ends it."""
    queue: ThreadSafeQueue[tuple[int, int]] = ThreadSafeQueue(runtime.loop)

    def producer(tid: int) -> None:
        for i in range(250):
            queue.put((tid, i))

    threads = [threading.Thread(target=producer, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    queue.close()
    queue.put((99, 0))  # after close: dropped

    async def consume() -> list[tuple[int, int]]:
        return [item async for item in queue]

    items = runtime.run_sync(consume(), timeout_s=5)
    assert len(items) == 1000
    for tid in range(4):
        assert [i for t, i in items if t == tid] == list(range(250))
