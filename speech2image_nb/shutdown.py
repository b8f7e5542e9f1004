"""Whether this Python process has begun to exit, for work that must not start (or complain) then.

Why it is needed: a kernel stopped while the panel's embedded image server is still starting
exits with that start half done. Python first refuses new work to every thread pool
(``concurrent.futures``), then waits for the pools' threads; a server start on one of them then
fails inside its web framework, which prints a traceback and "Application startup failed" into
a process that is going away. Work that starts servers asks :func:`process_exiting` first, and
the server's own logger drops what it says once the process is exiting.

Python's thread pools learn of the exit from a hook that :mod:`threading` runs before it joins
threads (``threading._register_atexit``, private but the one place that runs early enough;
:mod:`atexit` runs after the joins). :func:`watch_exit` adds ours there, on first use (nothing
happens at import); hooks run last-registered first, so ours runs before the pools refuse work.
"""

from __future__ import annotations

import atexit
import logging
import threading

__all__ = ["DropWhileExiting", "process_exiting", "watch_exit"]

_exiting = threading.Event()
_watching = False
_watch_lock = threading.Lock()


def _mark_exiting() -> None:
    _exiting.set()


def watch_exit() -> None:
    """Start noticing the process's exit (idempotent; cheap)."""
    global _watching
    with _watch_lock:
        if _watching:
            return
        _watching = True
        # Thread pools register their hook when their module is first imported: import it now, so
        # that ours is registered after theirs and so runs before it.
        import concurrent.futures.thread  # noqa: F401

        register = getattr(threading, "_register_atexit", None)
        if register is None:  # another Python: notice the exit later, at atexit time
            atexit.register(_mark_exiting)
            return
        try:
            register(_mark_exiting)
        except RuntimeError:  # "can't register atexit after shutdown": the exit has begun
            _exiting.set()


def process_exiting() -> bool:
    """True once the interpreter has begun to exit (after :func:`watch_exit` was called)."""
    return _exiting.is_set() or not threading.main_thread().is_alive()


class DropWhileExiting(logging.Filter):
    """A log filter that lets nothing through once the process is exiting."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not process_exiting()
