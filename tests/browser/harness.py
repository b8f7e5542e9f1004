"""Real-browser harness: a Jupyter server, Debian Chromium with a fake microphone, a second kernel client.

Widget tests here drive the product the way a person does: a real ``jupyter lab`` (or Notebook 7)
server on 127.0.0.1, a real Chromium page that runs the notebook's cells, and a second kernel
client that reads the kernel's state while the page is open. Nothing is mocked.

API (import from ``tests.browser.harness``; the fixtures are re-exported by ``tests/browser/conftest.py``)
-------------------------------------------------------------------------------------------------------
``JupyterServer(stack, *, root_dir, repo_root=REPO_ROOT, venv=None)``
    ``stack`` is ``"lab"`` (JupyterLab 4), ``"notebook"`` (Notebook 7) or ``"classic"`` (the
    classic Notebook 6.5, from ``venv``: the Colab-pinned ``.venv-colab``, see
    :func:`colab_venv`). The server and its kernels run from ``venv`` (default: this
    interpreter's environment). ``start(timeout_s=)``
    launches it on a free port with an empty token, temp HOME / JUPYTER_CONFIG_DIR /
    JUPYTER_RUNTIME_DIR, ``PYTHONPATH`` = repo root (the kernel imports this checkout), and waits
    for ``/api/status``; ``stop()`` ends it. Attributes: ``url`` (``http://127.0.0.1:PORT``),
    ``port``, ``root_dir``, ``notebook_url(name, host=...)``, ``kernel_id(name)``, ``log()``;
    ``with server.disabled_extensions("anywidget"):`` pages opened inside load without those
    front-end extensions (the state right after ``%pip install`` without a page reload).
    Non-local host names are allowed (``allow_remote_access``) so an insecure-context test can
    reach it as ``http://jupyter.test:PORT`` (see ``HOST_RULES``).
``write_notebook(root_dir, name, cells)``
    Writes code cells (strings) as a notebook with the ``python3`` kernelspec.
``chromium_args(*, fake_audio=None, fake_ui=True, fake_device=True, host_rules=False)``
    The measured Chromium flags. ``fake_audio`` is a WAV played as the microphone (it loops).
    ``fake_ui=False`` -> getUserMedia is refused (``NotAllowedError``) unless the context is
    granted ``permissions=["microphone"]``; ``fake_device=False`` -> no microphone
    (``NotFoundError``); ``host_rules=True`` maps ``jupyter.test`` to 127.0.0.1.
``launch_chromium(playwright, **chromium_args_kwargs)`` -> Playwright ``Browser``.
``open_notebook(page, server, name, *, host="127.0.0.1", run_all=True, timeout_s=60)``
    Navigates, waits until the kernel is connected and idle (classic: and its widget manager is
    there), runs all cells or none. Works for Lab 4, Notebook 7 and classic Notebook 6.5.
``run_cell(page, index)`` -- run one cell on the page's own session (Shift+Enter).
``wait_for_widget(page, locator, screenshot, *, timeout_ms)`` -- wait for a widget to show; if it
    does not, fail with a screenshot and every cell's prompt and output (what a person would see).
``choose_file(page, selector, path)`` -- click the file control at ``selector`` and pick ``path``
    in the browser's file chooser (ipywidgets' FileUpload keeps its ``<input>`` out of the DOM).
``wait_kernel_idle(page, *, name='', timeout_s=)`` -- the page's (current) notebook kernel is idle.
``colab_venv()`` -- the Colab-pinned virtual environment, or an error saying how to make it.
``ImageServerProcess(*, model_dir, engine="dalle-mini")``
    The real image server as its own process from this environment (torch stays out of a
    kernel that has none, such as the Colab stack's): ``start()``, ``url``, ``stop()``, ``log()``.
``KernelClient(server, kernel_id)``
    A second client on the same kernel over ``/api/kernels/<id>/channels``.
    ``execute(code, timeout_s=30) -> str`` returns stdout and raises ``KernelExecuteError`` with
    the traceback when the code fails; ``json(expr)`` evaluates an expression in the kernel and
    returns it decoded from JSON; ``wait_until(expr, timeout_s=)`` polls until it is truthy.
    ``close()``.

Fixtures (``tests/browser/conftest.py``): ``playwright_instance`` (session), ``lab_server`` and
``notebook_server`` (module scope: one server per stack per test module), ``jupyter_server``
(indirect-parametrized by ``"lab"``/``"notebook"``), ``browser_tmp`` (a temp dir), and
``artifacts_dir`` (from ``tests/conftest.py``) for screenshots. Tests elsewhere import these
fixtures into their conftest (see ``tests/browser/conftest.py``).

Typical use::

    @pytest.mark.browser
    @pytest.mark.parametrize("jupyter_server", ["lab", "notebook"], indirect=True)
    def test_panel(jupyter_server, playwright_instance, artifacts_dir):
        write_notebook(jupyter_server.root_dir, "p.ipynb", ["import speech2image_nb as s", "s.app()"])
        browser = launch_chromium(playwright_instance, fake_audio=DATA_DIR / "piper_01.wav")
        try:
            page = browser.new_page()
            open_notebook(page, jupyter_server, "p.ipynb")
            with KernelClient(jupyter_server, jupyter_server.kernel_id("p.ipynb")) as kernel:
                kernel.wait_until("'s' in dir()")
        finally:
            browser.close()

Every wait is bounded; servers, browsers and temp dirs are always cleaned up.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
INSECURE_HOST = "jupyter.test"
HOST_RULES = f"MAP {INSECURE_HOST} 127.0.0.1"
COLAB_VENV = REPO_ROOT / ".venv-colab"  # made by scripts/make_colab_venv.sh (run by scripts/test.sh)
STACKS = ("lab", "notebook", "classic")

__all__ = [
    "CHROMIUM",
    "COLAB_VENV",
    "HOST_RULES",
    "INSECURE_HOST",
    "REPO_ROOT",
    "ImageServerProcess",
    "JupyterServer",
    "KernelClient",
    "KernelExecuteError",
    "choose_file",
    "chromium_args",
    "colab_venv",
    "free_port",
    "launch_chromium",
    "open_notebook",
    "run_cell",
    "wait_for_widget",
    "wait_kernel_idle",
    "write_notebook",
]


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1 (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def colab_venv(path: Path = COLAB_VENV) -> Path:
    """The Colab-pinned environment for the classic Notebook tests; a clear error when it is missing."""
    if not (path / "bin" / "jupyter-notebook").exists() or not (path / "bin" / "python").exists():
        raise RuntimeError(
            f"The Colab-pinned environment {path} is missing: run `bash scripts/make_colab_venv.sh` "
            "(scripts/test.sh does this) to create it from tests/requirements-colab.txt."
        )
    return path


def _get_json(url: str, *, timeout_s: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return json.loads(response.read().decode())


def _spawn(cmd: list[str], *, env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in its own session (so that :meth:`stop` can end its whole group), its output
    appended to ``log_path``."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _answers(
    proc: subprocess.Popen[bytes], url: str, *, timeout_s: float, what: str, log: Callable[[], str]
) -> bool:
    """Poll ``GET url`` until it answers JSON (True) or ``timeout_s`` passes (False); RuntimeError
    with ``log()`` at once if the process (``what``) exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited early:\n{log()}")
        try:
            _get_json(url, timeout_s=2.0)
            return True
        except (urllib.error.URLError, ConnectionError, OSError, json.JSONDecodeError):
            time.sleep(0.2)
    return False


class JupyterServer:
    """A ``jupyter lab``, ``jupyter notebook`` (7) or classic Notebook 6.5 server for one test module."""

    def __init__(
        self, stack: str, *, root_dir: Path, repo_root: Path = REPO_ROOT, venv: Path | None = None
    ) -> None:
        if stack not in STACKS:
            raise ValueError(f"stack must be one of {STACKS}, not {stack!r}")
        self.stack = stack
        self.bin_dir = Path(venv) / "bin" if venv is not None else Path(sys.executable).parent
        self.root_dir = Path(root_dir)
        self.repo_root = Path(repo_root)
        self.port = 0
        self._home = Path(tempfile.mkdtemp(prefix="s2i-jupyter-home-"))
        self._log_path = self._home / "server.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def notebook_url(self, name: str, *, host: str = "127.0.0.1") -> str:
        """The page URL of notebook ``name`` (relative to root_dir) in this stack."""
        # Lab: a fresh workspace per page; the default one is kept on the server and would reopen
        # (and make current) the notebooks of earlier pages.
        path = f"lab/workspaces/w{uuid.uuid4().hex[:12]}/tree" if self.stack == "lab" else "notebooks"
        # (Notebook 7 and the classic Notebook both serve a notebook at /notebooks/<path>)
        return f"http://{host}:{self.port}/{path}/{name}"

    def start(self, *, timeout_s: float = 60.0) -> JupyterServer:
        """Launch the server and wait until ``/api/status`` answers."""
        self.root_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        env = dict(os.environ)
        env.update(
            HOME=str(self._home),
            JUPYTER_CONFIG_DIR=str(self._home / "config"),
            JUPYTER_RUNTIME_DIR=str(self._home / "runtime"),
            JUPYTER_DATA_DIR=str(self._home / "data"),
            IPYTHONDIR=str(self._home / "ipython"),
            PYTHONPATH=os.pathsep.join(filter(None, [str(self.repo_root), env.get("PYTHONPATH", "")])),
            PYTHONUNBUFFERED="1",
        )
        env.pop("JUPYTER_PATH", None)
        env["PATH"] = os.pathsep.join([str(self.bin_dir), env.get("PATH", "")])
        # The classic Notebook's own server (NotebookApp) takes the same settings under its name.
        app = "NotebookApp" if self.stack == "classic" else "ServerApp"
        root = "notebook_dir" if self.stack == "classic" else "root_dir"
        cmd = [
            str(self.bin_dir / ("jupyter-lab" if self.stack == "lab" else "jupyter-notebook")),
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={self.port}",
            f"--{app}.port_retries=0",
            f"--{app}.token=",
            f"--{app}.password=",
            f"--{app}.disable_check_xsrf=True",
            f"--{app}.allow_remote_access=True",
            f"--{app}.{root}={self.root_dir}",
            "--allow-root",
        ]
        if self.stack != "classic":
            cmd.append("--expose-app-in-browser")
        self._proc = _spawn(cmd, env=env, log_path=self._log_path)
        if not _answers(
            self._proc,
            f"{self.url}/api/status",
            timeout_s=timeout_s,
            what=f"jupyter {self.stack}",
            log=self.log,
        ):
            self.stop()
            raise TimeoutError(f"jupyter {self.stack} did not answer in {timeout_s} s:\n{self.log()}")
        return self

    @contextlib.contextmanager
    def disabled_extensions(self, *names: str) -> Iterator[None]:
        """Pages opened inside this block load without these front-end extensions.

        Reproduces "the package was installed after the page loaded" (its JavaScript is not in
        the page) for real: ``labconfig/page_config.json`` is read at each page load.
        """
        config = self._home / "config" / "labconfig" / "page_config.json"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(json.dumps({"disabledExtensions": {name: True for name in names}}))
        try:
            yield
        finally:
            config.unlink(missing_ok=True)

    def log(self) -> str:
        """The server's output so far (for failure messages)."""
        try:
            return self._log_path.read_text(errors="replace")[-8000:]
        except OSError:
            return ""

    def kernel_id(self, name: str, *, timeout_s: float = 30.0) -> str:
        """The id of the kernel of the session that has notebook ``name`` open."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for session in _get_json(f"{self.url}/api/sessions"):
                if session.get("path", "").endswith(name) and session.get("kernel"):
                    return str(session["kernel"]["id"])
            time.sleep(0.2)
        raise TimeoutError(f"no kernel session for {name} within {timeout_s} s")

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """Stop the server and its kernels, then remove the temp home."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=timeout_s)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=timeout_s)
        shutil.rmtree(self._home, ignore_errors=True)

    def __enter__(self) -> JupyterServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ImageServerProcess:
    """``python -m speech2image_nb.server`` on 127.0.0.1 (no token), in its own process group."""

    def __init__(self, *, model_dir: Path, engine: str = "dalle-mini", repo_root: Path = REPO_ROOT) -> None:
        self.model_dir = Path(model_dir)
        self.engine = engine
        self.repo_root = Path(repo_root)
        self.port = 0
        self._log_path = Path(tempfile.mkdtemp(prefix="s2i-image-server-")) / "server.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, timeout_s: float = 120.0) -> ImageServerProcess:
        """Launch the server and wait until ``GET /`` answers (the engine is loaded by then)."""
        self.port = free_port()
        env = dict(os.environ)
        env.update(
            PYTHONPATH=os.pathsep.join(filter(None, [str(self.repo_root), env.get("PYTHONPATH", "")])),
            HF_HUB_OFFLINE="1",
            OMP_NUM_THREADS="1",  # a shared, small machine: one torch thread
        )
        env.pop("S2I_SERVER_TOKEN", None)
        cmd = [sys.executable, "-m", "speech2image_nb.server", "--engine", self.engine]
        cmd += ["--model-dir", str(self.model_dir), "--port", str(self.port), "--no-auth", "--quiet"]
        self._proc = _spawn(cmd, env=env, log_path=self._log_path)
        if not _answers(
            self._proc, f"{self.url}/", timeout_s=timeout_s, what="the image server", log=self.log
        ):
            self.stop()
            raise TimeoutError(f"the image server did not answer in {timeout_s} s:\n{self.log()}")
        return self

    def log(self) -> str:
        try:
            return self._log_path.read_text(errors="replace")[-8000:]
        except OSError:
            return ""

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """Stop the server and remove its log folder."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=timeout_s)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=timeout_s)
        shutil.rmtree(self._log_path.parent, ignore_errors=True)

    def __enter__(self) -> ImageServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def write_notebook(root_dir: Path, name: str, cells: Sequence[str]) -> Path:
    """Write a notebook of code cells, with the ``python3`` kernelspec, to ``root_dir / name``."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    path = Path(root_dir) / name
    nbformat.write(nb, str(path))
    return path


def chromium_args(
    *,
    fake_audio: Path | None = None,
    fake_ui: bool = True,
    fake_device: bool = True,
    host_rules: bool = False,
) -> list[str]:
    """Chromium flags measured to work here (see the module docstring for each switch)."""
    args = [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]
    if fake_ui:
        args.append("--use-fake-ui-for-media-stream")
    if fake_device:
        args.append("--use-fake-device-for-media-stream")
        if fake_audio is not None:
            args.append(f"--use-file-for-fake-audio-capture={Path(fake_audio).resolve()}")
    if host_rules:
        args.append(f"--host-resolver-rules={HOST_RULES}")
    return args


def launch_chromium(playwright: Any, **kwargs: Any) -> Any:
    """Launch Debian Chromium (never a downloaded one) with :func:`chromium_args` ``(**kwargs)``."""
    return playwright.chromium.launch(
        executable_path=CHROMIUM, headless=True, args=chromium_args(**kwargs), timeout=60_000
    )


_KERNEL_IDLE_JS = """(name) => {
  const app = window.jupyterapp;
  const w = app && app.shell && app.shell.currentWidget;
  const ctx = w && w.sessionContext;
  if (!ctx || (name && !(w.context && w.context.path.endsWith(name)))) return false;
  const k = ctx.session && ctx.session.kernel;
  return !!(k && k.connectionStatus === 'connected' && k.status === 'idle');
}"""


# Classic Notebook 6.5: one notebook per page; its widget manager must exist before cells run, or
# the widgets' comm_open finds no target. (A widget displayed before that manager has finished
# starting is hidden by it; the product shows it again: tests/browser/test_colab_stack.py.)
_CLASSIC_KERNEL_IDLE_JS = """(name) => {
  const nb = window.Jupyter && window.Jupyter.notebook;
  const k = nb && nb.kernel;
  if (!k || (name && !(nb.notebook_path || '').endsWith(name))) return false;
  return !!(k.is_connected() && !nb.kernel_busy && k.widget_manager);
}"""


def wait_kernel_idle(page: Any, *, name: str = "", timeout_s: float = 60.0) -> None:
    """Wait until the page's current notebook (``name``, if given) has a connected, idle kernel."""
    classic = page.evaluate("() => !window.jupyterapp && !!window.Jupyter")
    script = _CLASSIC_KERNEL_IDLE_JS if classic else _KERNEL_IDLE_JS
    page.wait_for_function(script, arg=name, timeout=timeout_s * 1000, polling=100)


def open_notebook(
    page: Any,
    server: JupyterServer,
    name: str,
    *,
    host: str = "127.0.0.1",
    run_all: bool = True,
    timeout_s: float = 60.0,
) -> None:
    """Open notebook ``name`` in ``page``, wait for an idle kernel, and (by default) run all cells."""
    page.goto(server.notebook_url(name, host=host), timeout=timeout_s * 1000)
    page.wait_for_function("() => !!(window.jupyterapp || window.Jupyter)", timeout=timeout_s * 1000)
    wait_kernel_idle(page, name=name, timeout_s=timeout_s)
    if run_all and server.stack == "classic":
        page.evaluate("() => window.Jupyter.notebook.execute_all_cells()")
    elif run_all:
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")


def run_cell(page: Any, index: int) -> None:
    """Run cell ``index`` of the page's current notebook, as if the person pressed Shift+Enter.

    Unlike code sent by :class:`KernelClient`, this runs on the page's own session, so the
    page's widget messages keep flowing over its kernel subshell while the cell runs.
    """
    page.evaluate(
        """(index) => {
          if (!window.jupyterapp) return window.Jupyter.notebook.execute_cells([index]);
          const notebook = window.jupyterapp.shell.currentWidget.content;
          notebook.activeCellIndex = index;
          return window.jupyterapp.commands.execute('notebook:run-cell');
        }""",
        index,
    )


#: the prompt and output text of every cell of the page (classic Notebook, Notebook 7, JupyterLab)
CELL_STATE_JS = """() => Array.from(document.querySelectorAll('.cell, .jp-Cell')).map((cell, i) => {
  const prompt = cell.querySelector('.input_prompt, .jp-InputPrompt');
  const out = Array.from(cell.querySelectorAll('.output_area, .jp-OutputArea-child'))
    .map((o) => o.innerText).join(' | ');
  return `cell ${i} ${prompt ? prompt.innerText.trim() : ''} output: ${out.slice(0, 2000)}`;
}).join('\\n')"""


def wait_for_widget(page: Any, locator: Any, screenshot: Path, *, timeout_ms: float) -> None:
    """Wait for ``locator`` to show; if it does not, fail with a screenshot and what each cell shows
    (its prompt, ``In [*]`` while it runs, and its output: a line the widget printed, if any)."""
    import pytest
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    try:
        locator.wait_for(timeout=timeout_ms)
    except PlaywrightTimeoutError:
        page.screenshot(path=str(screenshot))
        pytest.fail(
            f"the widget did not show in {timeout_ms / 1000:.0f} s ({screenshot.name}):\n"
            + page.evaluate(CELL_STATE_JS)
        )


def choose_file(page: Any, selector: str, path: Path, *, timeout_s: float = 10.0) -> None:
    """Click the file control at ``selector`` and choose ``path``, as a person does.

    Through the browser's file chooser: ipywidgets' ``FileUpload`` (7 and 8) clicks an ``<input
    type=file>`` that is not in the page, so there is no element to set files on.
    """
    with page.expect_file_chooser(timeout=timeout_s * 1000) as chooser:
        page.locator(selector).click()
    chooser.value.set_files(str(path))


class KernelExecuteError(RuntimeError):
    """Code sent by :class:`KernelClient` raised in the kernel."""


class KernelClient:
    """A second client on a running kernel: execute code, read its stdout."""

    def __init__(self, server: JupyterServer, kernel_id: str, *, timeout_s: float = 10.0) -> None:
        from websockets.sync.client import connect

        self.session = uuid.uuid4().hex
        url = f"ws://127.0.0.1:{server.port}/api/kernels/{kernel_id}/channels?session_id={self.session}"
        self._stack = contextlib.ExitStack()
        # max_queue=None: the kernel broadcasts every widget message to this client too; with the
        # default 16-frame buffer, reading (and so the keepalive pongs) stops while the test waits
        # on the page, and the connection is dropped ("keepalive ping timeout") during a long draw.
        self._ws = self._stack.enter_context(
            connect(url, open_timeout=timeout_s, max_size=None, max_queue=None)
        )

    def execute(self, code: str, *, timeout_s: float = 30.0) -> str:
        """Run ``code`` in the kernel; return its stdout once both idle and execute_reply arrived."""
        msg_id = uuid.uuid4().hex
        header = {
            "msg_id": msg_id,
            "username": "test",
            "session": self.session,
            "msg_type": "execute_request",
            "version": "5.3",
            "date": "",
        }
        self._ws.send(
            json.dumps(
                {
                    "header": header,
                    "parent_header": {},
                    "metadata": {},
                    "content": {
                        "code": code,
                        "silent": False,
                        "store_history": False,
                        "user_expressions": {},
                        "allow_stdin": False,
                        "stop_on_error": True,
                    },
                    "channel": "shell",
                    "buffers": [],
                }
            )
        )
        out: list[str] = []
        error = ""
        idle = replied = False
        deadline = time.monotonic() + timeout_s
        while not (idle and replied):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"kernel did not finish {code[:60]!r} within {timeout_s} s")
            try:
                raw = self._ws.recv(timeout=remaining)
            except TimeoutError:
                continue
            if isinstance(raw, bytes):  # binary frames carry widget buffers
                continue
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg.get("msg_type") or msg["header"]["msg_type"]
            content = msg.get("content", {})
            if kind == "stream" and content.get("name") == "stdout":
                out.append(content["text"])
            elif kind == "error":
                error = "\n".join(content.get("traceback", [])) or content.get("evalue", "")
            elif kind == "status" and content.get("execution_state") == "idle":
                idle = True
            elif kind == "execute_reply":
                replied = True
                if content.get("status") == "error" and not error:
                    error = f"{content.get('ename')}: {content.get('evalue')}"
        if error:
            raise KernelExecuteError(error)
        return "".join(out)

    def json(self, expr: str, *, timeout_s: float = 30.0) -> Any:
        """Evaluate ``expr`` in the kernel and return it decoded from JSON."""
        marker = "@@S2I-JSON@@"
        out = self.execute(f"import json as _j; print({marker!r} + _j.dumps({expr}))", timeout_s=timeout_s)
        for line in out.splitlines():
            if line.startswith(marker):
                return json.loads(line[len(marker) :])
        raise KernelExecuteError(f"no JSON in the kernel's output: {out!r}")

    def wait_until(self, expr: str, *, timeout_s: float = 10.0, poll_s: float = 0.1) -> Any:
        """Poll ``expr`` in the kernel until it is truthy; return its (JSON) value."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.json(expr, timeout_s=timeout_s)
            if value or time.monotonic() > deadline:
                if not value:
                    raise TimeoutError(f"{expr!r} still falsy after {timeout_s} s: {value!r}")
                return value
            time.sleep(poll_s)

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> KernelClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
