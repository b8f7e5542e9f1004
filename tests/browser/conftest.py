"""Browser fixtures: one Jupyter server per stack per test module, one Playwright per session.

Browser tests of other parts (the panel) can live in this folder and get them for free, or
import them into their own conftest::

    from tests.browser.conftest import browser_tmp, jupyter_server, lab_server, notebook_server  # noqa: F401
    from tests.browser.conftest import playwright_instance  # noqa: F401

(``pytest_plugins`` is only honoured in the top-level conftest.)
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TIME_FACTOR

from .harness import ImageServerProcess, JupyterServer


@pytest.fixture(scope="module")
def playwright_instance() -> Iterator[Any]:
    """The synchronous Playwright driver (Debian Chromium is launched per test or module).

    Module scope, not session: while the sync driver is open, the main thread counts as running
    an event loop, so ``asyncio.run`` in any later test module would fail.
    """
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        yield playwright


@pytest.fixture(scope="module")
def browser_tmp() -> Iterator[Path]:
    """A temp dir for notebooks and profiles of one test module, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="s2i-browser-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _server(stack: str, root: Path) -> Iterator[JupyterServer]:
    server = JupyterServer(stack, root_dir=root / stack)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def lab_server(browser_tmp: Path) -> Iterator[JupyterServer]:
    """A JupyterLab 4 server on 127.0.0.1 whose kernels import this checkout."""
    yield from _server("lab", browser_tmp)


@pytest.fixture(scope="module")
def notebook_server(browser_tmp: Path) -> Iterator[JupyterServer]:
    """A Notebook 7 server on 127.0.0.1 whose kernels import this checkout."""
    yield from _server("notebook", browser_tmp)


@pytest.fixture(scope="module")
def jupyter_server(request: pytest.FixtureRequest) -> JupyterServer:
    """The server of the stack named by indirect parametrization: ``"lab"`` or ``"notebook"``."""
    stack = getattr(request, "param", "lab")
    name = {"lab": "lab_server", "notebook": "notebook_server"}[stack]
    server: JupyterServer = request.getfixturevalue(name)
    return server


@pytest.fixture(scope="session")
def image_server_process(tiny_dalle_dir: Path) -> Iterator[ImageServerProcess]:
    """One image server process (tiny random DALL-E, no token) for every test that asks for it.

    Loading the engine is the slow part (previews are timed at start-up), so it happens once.
    """
    server = ImageServerProcess(model_dir=tiny_dalle_dir).start(timeout_s=120 * TIME_FACTOR)
    try:
        yield server
    finally:
        server.stop()
