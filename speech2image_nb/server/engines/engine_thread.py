"""One long-lived thread per engine, on which all of the engine's torch work runs.

Why: torch's CPU kernels run in OpenMP parallel regions, and libgomp (the OpenMP runtime of the
Linux torch wheels) keeps a separate team of worker threads for every thread that starts a region.
Once a second team exists, the process manages more OpenMP threads than there are CPUs, and libgomp
cuts the time its idle workers spin, waiting for the next region, from about 300000 iterations
to 100 (its "throttled" spin count): from then on every parallel region wakes its workers through
the kernel (futex calls). A decoder step has hundreds of regions. Measured with full-size random
DALL-E mini int8 weights on 2 cores (Xeon, Sapphire Rapids), 16-step runs, alternating: loaded and
called on the main thread, 53-75 ms per step (under 1 ms of system time); once the same engine
had been called on a worker thread, 78-115 ms per step on the worker and on the main thread alike,
with up to 24 ms of system time per step; back to 52-67 ms as soon as the worker thread ended. With
every call on the engine's thread: 47-67 ms, about 1 ms of system time, from either caller
(``benchmarks/RESULTS.md``, "CPU engines: one thread per engine"). The server's worker, the panel's start-up
thread and a notebook's main thread each used to start their own team.

So an engine runs its load, warm-up, generations and previews here, whoever calls it: one team,
whatever the calling thread. The thread starts on first use (nothing happens at import or at
construction) and ends when :meth:`EngineThread.close` is called or its engine is collected.

The team is the process's, not the engine's: torch work with a parallel region on any other
long-lived thread starts a second one. An engine that wraps another (the server's picture check,
:class:`~speech2image_nb.server.screening.ScreenedEngine`) must therefore hand out the wrapped
engine's thread, not one of its own; with its own, the check's forward pass made every decoder
step of the served engine 1.7x slower (43 against 25 ms, full-size mini, 2 cores). The same holds
for a notebook's own torch work on its main thread: one large parallel op there had the same
effect for the rest of the process.
"""

from __future__ import annotations

import concurrent.futures
import functools
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

__all__ = ["EngineThread", "engine_thread_of", "on_engine_thread"]

T = TypeVar("T")
P = ParamSpec("P")

_Work = tuple[concurrent.futures.Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]


class EngineThread:
    """A daemon thread that runs the functions given to it, one at a time, in order."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._queue: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False

    @property
    def is_current(self) -> bool:
        """True when called from this thread (its functions then call each other directly)."""
        return self._thread is not None and threading.current_thread() is self._thread

    def submit(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> concurrent.futures.Future[T]:
        """Queue ``function(*args, **kwargs)``; its future resolves when it has run on the thread."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        if self.is_current:  # a function already on the thread: run it now (queueing would deadlock)
            _run(future, function, args, kwargs)
            return future
        with self._lock:
            if self._closed:
                raise RuntimeError(f"the engine thread {self.name} is closed")
            if self._thread is None:
                self._thread = threading.Thread(
                    target=_serve, args=(self._queue,), name=self.name, daemon=True
                )
                self._thread.start()
            self._queue.put((future, function, args, kwargs))
        return future

    def run(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``function(*args, **kwargs)`` run on the thread; waits for it and returns its result."""
        return self.submit(function, *args, **kwargs).result()

    def close(self) -> None:
        """End the thread once the queued functions have run (it is not waited for)."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(None)


def _run(
    future: concurrent.futures.Future[Any],
    function: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = function(*args, **kwargs)
    except BaseException as exc:
        future.set_exception(exc)
    else:
        future.set_result(result)


def _serve(work: queue.SimpleQueue[_Work | None]) -> None:
    """The thread's loop: it holds the queue only, never the engine, so the engine can be collected."""
    while (item := work.get()) is not None:
        _run(*item)
        del item  # drop the function (a bound method of the engine) before waiting again


_creation_lock = threading.Lock()


def engine_thread_of(owner: Any) -> EngineThread:
    """The :class:`EngineThread` of ``owner`` (an engine), made on first use; it closes with ``owner``."""
    thread: EngineThread | None = owner.__dict__.get("_engine_thread")
    if thread is None:
        with _creation_lock:
            thread = owner.__dict__.get("_engine_thread")
            if thread is None:
                thread = EngineThread(f"s2i-engine-{getattr(owner, 'name', type(owner).__name__)}")
                owner.__dict__["_engine_thread"] = thread
                weakref.finalize(owner, thread.close)
    return thread


def on_engine_thread(method: Callable[P, T]) -> Callable[P, T]:
    """Decorate an engine method so that it always runs on the engine's own thread."""

    @functools.wraps(method)
    def run_there(*args: P.args, **kwargs: P.kwargs) -> T:
        thread = engine_thread_of(args[0])
        if thread.is_current:
            return method(*args, **kwargs)
        return thread.run(method, *args, **kwargs)

    return run_there
