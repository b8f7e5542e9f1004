"""The kernel-side event loop: one background thread that runs all network and streaming work.

Why a thread of our own: in Jupyter the kernel's own asyncio loop belongs to the kernel, and on
ipykernel 6 widget messages are only handled while no cell runs. Blocking work or long-lived
streams must therefore live elsewhere. Comm handlers only *enqueue* (:class:`ThreadSafeQueue`);
coroutines run on the runtime loop (:func:`submit`); synchronous convenience functions wait for
their coroutine there (:func:`run_sync`), which works the same in a plain script and inside a
running kernel, without patching the kernel's loop.

Nothing starts at import: the thread is created on first use.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncIterator, Coroutine
from typing import Any, Generic, TypeVar

__all__ = ["Runtime", "ThreadSafeQueue", "get_runtime", "run_sync", "submit"]

T = TypeVar("T")

_STOP_TIMEOUT_S = 5.0


class Runtime:
    """An asyncio loop running forever in a daemon thread."""

    def __init__(self, name: str = "speech2image-runtime") -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The running loop, started on first access."""
        with self._lock:
            if self._loop is None or self._thread is None or not self._thread.is_alive():
                self._start()
            assert self._loop is not None
            return self._loop

    @property
    def is_running(self) -> bool:
        """True once the thread has started and not been stopped."""
        return self._thread is not None and self._thread.is_alive()

    def _start(self) -> None:
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()
            # drain what is left so that no coroutine is destroyed while pending
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        thread = threading.Thread(target=run, name=self._name, daemon=True)
        thread.start()
        ready.wait()
        self._loop, self._thread = loop, thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the runtime loop; returns a thread-safe future."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run_sync(self, coro: Coroutine[Any, Any, T], *, timeout_s: float | None = None) -> T:
        """Run ``coro`` on the runtime loop and wait for its result in the calling thread.

        Raises
        ------
        RuntimeError
            When called from the runtime thread itself (that would deadlock).
        TimeoutError
            When ``timeout_s`` passes first; the coroutine is cancelled.
        """
        if self._thread is not None and threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("run_sync() called from the runtime thread; await the coroutine instead")
        future = self.submit(coro)
        try:
            return future.result(timeout=timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"operation did not finish within {timeout_s} s") from None
        except KeyboardInterrupt:
            future.cancel()
            raise

    def stop(self) -> None:
        """Stop the loop and join the thread (cancels what still runs)."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(_STOP_TIMEOUT_S)


_default: Runtime | None = None
_default_lock = threading.Lock()


def get_runtime() -> Runtime:
    """The process-wide runtime (created, not started, on first call)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Runtime()
        return _default


def submit(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Schedule ``coro`` on the process-wide runtime loop."""
    return get_runtime().submit(coro)


def run_sync(coro: Coroutine[Any, Any, T], *, timeout_s: float | None = None) -> T:
    """Run ``coro`` to completion from synchronous code (script or notebook cell)."""
    return get_runtime().run_sync(coro, timeout_s=timeout_s)


_CLOSED = object()


class ThreadSafeQueue(Generic[T]):
    """A queue filled from any thread and consumed with ``async for`` on one loop.

    Comm handlers (main thread on ipykernel 6, a subshell thread on ipykernel 7) call
    :meth:`put`; the consumer on the runtime loop iterates until :meth:`close` is called.
    Items put after close are dropped.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop if loop is not None else get_runtime().loop
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._closed = False
        self._lock = threading.Lock()

    def put(self, item: T) -> None:
        """Add ``item`` (thread-safe, never blocks)."""
        with self._lock:
            if self._closed:
                return
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def close(self) -> None:
        """End the stream after the items already put (thread-safe, idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._loop.call_soon_threadsafe(self._queue.put_nowait, _CLOSED)

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def __aiter__(self) -> AsyncIterator[T]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[T]:
        while True:
            item = await self._queue.get()
            if item is _CLOSED:
                return
            yield item
