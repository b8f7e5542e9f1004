"""A kernel stopped, or a panel closed, at any moment of the embedded server's start-up ends quietly.

The process (a kernel) exits while a thread is still starting the image server: nothing is printed
(no traceback, no "Application startup failed"), the process exits by itself, and no server is
left. A panel's image service closed while its server starts returns at once and leaves nothing
running once the engine's load has returned.
"""

from __future__ import annotations

import gc
import logging
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from speech2image_nb.config import Settings
from speech2image_nb.errors import EngineError
from speech2image_nb.images.service import ImageService
from speech2image_nb.server.engines import noise
from tests.conftest import TIME_FACTOR

LOAD_S = 1.0  # the noise engine's load time in these tests: a start-up long enough to exit in

# The panel's start-up path (ImageService.open -> start_background) on a worker thread, as the
# panel runs it, with the process exiting DELAY seconds after the worker began.
EXIT_DURING_START = textwrap.dedent(
    """
    import concurrent.futures, functools, logging, sys, time
    logging.basicConfig(level=logging.INFO)
    from speech2image_nb.config import Settings
    from speech2image_nb.images.service import ImageService
    from speech2image_nb.server.engines import noise
    noise.NoiseEngine.__init__ = functools.partialmethod(noise.NoiseEngine.__init__, load_latency_s={load_s})
    service = ImageService(Settings.resolve(image_engine="noise", server_url=None, environ={{}}))
    pool = concurrent.futures.ThreadPoolExecutor(1)
    def start():
        try:
            service.open()
        except Exception as exc:
            logging.getLogger("test").debug("open ended: %s", exc)
    pool.submit(start)
    time.sleep({delay})
    print("exiting", flush=True)
    """
)


@pytest.mark.parametrize("delay_s", [0.0, 0.05, 0.3, 0.8, 1.6])
def test_a_process_that_exits_while_the_embedded_server_starts_says_nothing(delay_s):
    """Exit before, during and after the engine's load: exit code 0, nothing on stderr, in bounded time."""
    script = EXIT_DURING_START.format(load_s=LOAD_S, delay=delay_s)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60 * TIME_FACTOR,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": ":".join(sys.path)},
    )
    took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert "exiting" in done.stdout
    for noise_line in ("Traceback", "Application startup failed", "RuntimeError", "ERROR", "destroyed"):
        assert noise_line not in done.stderr, done.stderr
    # it waits at most for the engine's load to return, never for a timeout
    assert took < (LOAD_S + 20) * TIME_FACTOR


def _server_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(("s2i-image-server", "s2i-engine"))]


def test_closing_the_image_service_while_its_server_starts_returns_at_once(monkeypatch, caplog):
    """close() mid-start: open() raises at once, nothing is logged as an error, no thread is left."""
    monkeypatch.setattr(noise.NoiseEngine, "__init__", _with_load_latency(noise.NoiseEngine.__init__, LOAD_S))
    service = ImageService(Settings.resolve(image_engine="noise", environ={}))
    outcome: list[BaseException | str] = []

    def open_it() -> None:
        try:
            service.open()
            outcome.append("opened")
        except BaseException as exc:
            outcome.append(exc)

    caplog.set_level(logging.WARNING)
    opener = threading.Thread(target=open_it)
    opener.start()
    deadline = time.monotonic() + 10 * TIME_FACTOR
    while service._starting is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert service._starting is not None, "the server never started"
    closed_at = time.monotonic()
    service.close()
    opener.join(10 * TIME_FACTOR)
    assert not opener.is_alive()
    assert time.monotonic() - closed_at < 2 * TIME_FACTOR  # not the load time plus stop timeouts
    assert len(outcome) == 1 and isinstance(outcome[0], EngineError), outcome
    outcome.clear()  # its traceback holds the server, and so the engine
    # once the engine's load has returned, the server and its engine thread end by themselves
    deadline = time.monotonic() + (LOAD_S + 10) * TIME_FACTOR
    while _server_threads() and time.monotonic() < deadline:
        gc.collect()  # the engine's own thread ends when the engine, nobody's now, is collected
        time.sleep(0.05)
    assert _server_threads() == []
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


def _with_load_latency(init, load_s):
    def patched(self, *args, **kwargs):
        kwargs.setdefault("load_latency_s", load_s)
        init(self, *args, **kwargs)

    return patched
