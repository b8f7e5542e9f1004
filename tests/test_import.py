"""Importing the package does no work: no sockets, no threads, no global state, under a second."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import TIME_FACTOR

PROBE = r"""
import json, logging, socket, sys, threading, time, asyncio
opened = []
real_socket = socket.socket
class Spy(real_socket):
    def __init__(self, *a, **k):
        opened.append(repr(a))
        super().__init__(*a, **k)
socket.socket = Spy
threads_before = threading.active_count()
root_handlers = list(logging.getLogger().handlers)
policy = type(asyncio.get_event_loop_policy()).__name__
start = time.perf_counter()
import speech2image_nb
import speech2image_nb.config, speech2image_nb.errors, speech2image_nb.runtime
elapsed = time.perf_counter() - start
print(json.dumps({
    "elapsed_s": elapsed,
    "sockets": opened,
    "threads": threading.active_count() - threads_before,
    "heavy": sorted(m for m in ("torch", "av", "faster_whisper", "fastapi", "ipywidgets", "anywidget",
                                "websockets", "requests", "diffusers", "PIL") if m in sys.modules),
    "logging_changed": list(logging.getLogger().handlers) != root_handlers,
    "policy_changed": type(asyncio.get_event_loop_policy()).__name__ != policy,
}))
"""


def _probe() -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_opens_no_socket_starts_no_thread_and_is_fast():
    """import speech2image_nb: no socket, no thread, no heavy modules, no global changes, < 1 s."""
    result = _probe()
    assert result["sockets"] == []
    assert result["threads"] == 0
    assert result["heavy"] == []
    assert not result["logging_changed"]
    assert not result["policy_changed"]
    assert result["elapsed_s"] < 1.0 * TIME_FACTOR, result


def test_torch_global_state_untouched_by_engine_modules():
    """Importing the server and engine modules leaves torch's global switches as they were."""
    probe = r"""
import json, importlib, pkgutil, torch
before = (torch.is_grad_enabled(), torch.get_num_threads(), torch.backends.cudnn.benchmark,
          torch.get_default_dtype() is torch.float32)
import speech2image_nb
for name in ("speech2image_nb.server", "speech2image_nb.server.engines"):
    try:
        pkg = importlib.import_module(name)
    except ModuleNotFoundError:
        continue
    for info in pkgutil.iter_modules(getattr(pkg, "__path__", [])):
        importlib.import_module(f"{name}.{info.name}")
after = (torch.is_grad_enabled(), torch.get_num_threads(), torch.backends.cudnn.benchmark,
         torch.get_default_dtype() is torch.float32)
print(json.dumps(before == after))
"""
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-1] == "true"


def test_server_and_its_command_line_do_not_import_ray():
    """Ray is an optional extra: importing the server, its app and its CLI loads none of it."""
    probe = (
        "import sys, speech2image_nb.server, speech2image_nb.server.app, speech2image_nb.server.cli, "
        "speech2image_nb.server.image_source\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'ray'))"
    )
    out = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
