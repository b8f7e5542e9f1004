"""Tunnels and the server command: a stand-in cloudflared/ngrok (no network) and the real CLI."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from speech2image_nb.errors import ConfigError, ServiceUnreachable
from speech2image_nb.server import tunnel as tunnel_module
from speech2image_nb.server.tunnel import (
    NGROK_URL_RE,
    connect_line,
    find_cloudflared,
    open_tunnel,
    playground_url,
)

from .conftest import TIME_FACTOR
from .image_server_utils import StandIn, send

REPO = Path(__file__).resolve().parents[1]
PUBLIC_URL = "https://calm-river-blue-fox.trycloudflare.com"

STAND_IN = """\
#!{python}
# behaves like `cloudflared tunnel --url ...`: banner on stderr, then runs until terminated
import json, os, sys, time
with open({record!r}, "w") as f:
    json.dump({{"argv": sys.argv[1:], "pid": os.getpid(), "ngrok": os.environ.get("NGROK_AUTHTOKEN")}}, f)
mode = {mode!r}
err = sys.stderr
err.write("2026-11-24T20:00:00Z INF Thank you for trying Cloudflare Tunnel.\\n")
err.write("2026-11-24T20:00:00Z INF Requesting new quick Tunnel on trycloudflare.com...\\n")
err.flush()
if mode == "exit":
    err.write("2026-11-24T20:00:01Z ERR failed to request quick Tunnel: 500 Internal Server Error\\n")
    sys.exit(1)
if mode == "ok":
    time.sleep(0.2)
    err.write("2026-11-24T20:00:01Z INF +-------------------------------------------------+\\n")
    err.write("2026-11-24T20:00:01Z INF |  Your quick Tunnel has been created! Visit it at:  |\\n")
    err.write("2026-11-24T20:00:01Z INF |  {url}                  |\\n")
    err.write("2026-11-24T20:00:01Z INF +-------------------------------------------------+\\n")
    err.flush()
if mode == "ngrok":
    print('t=2026-11-24T20:00:01+0000 lvl=info msg="started tunnel" obj=tunnels name=command_line '
          'addr=http://localhost:80 url=https://ab12-34-56.ngrok-free.app', flush=True)
while True:
    time.sleep(0.1)
"""


def stand_in(tmp_path: Path, mode: str) -> tuple[Path, Path]:
    """An executable stand-in for the tunnel binary; returns (its path, the file it records argv in)."""
    record = tmp_path / f"record-{mode}.json"
    script = tmp_path / f"tunnel-{mode}"
    script.write_text(STAND_IN.format(python=sys.executable, record=str(record), mode=mode, url=PUBLIC_URL))
    script.chmod(0o755)
    return script, record


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie counts as ended
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "zombie" in status.read_text())


def test_cloudflared_tunnel_parses_url_and_stops_the_process(tmp_path):
    """open_tunnel runs cloudflared with --url, reads the trycloudflare URL, and close() ends it."""
    script, record = stand_in(tmp_path, "ok")
    tunnel = open_tunnel("cloudflared", 8123, executable=script, timeout_s=10 * TIME_FACTOR)
    try:
        assert tunnel.public_url == PUBLIC_URL and tunnel.alive
        args = json.loads(record.read_text())["argv"]
        assert args[:1] == ["tunnel"] and args[args.index("--url") + 1] == "http://127.0.0.1:8123"
    finally:
        tunnel.close()
    assert not tunnel.alive


def test_tunnel_that_fails_or_stays_silent_gives_a_clear_error(tmp_path):
    """A tunnel process that exits, or prints no URL in time, raises ServiceUnreachable and is stopped."""
    script, _ = stand_in(tmp_path, "exit")
    with pytest.raises(ServiceUnreachable, match="failed to request quick Tunnel"):
        open_tunnel("cloudflared", 8123, executable=script, timeout_s=10)
    script, record = stand_in(tmp_path, "silent")
    start = time.monotonic()
    with pytest.raises(ServiceUnreachable, match="did not report a public URL"):
        open_tunnel("cloudflared", 8123, executable=script, timeout_s=1.0)
    assert time.monotonic() - start < 8 * TIME_FACTOR
    assert not is_running(json.loads(record.read_text())["pid"])


def test_ngrok_token_goes_through_the_environment_not_argv(tmp_path):
    """ngrok gets its auth token in NGROK_AUTHTOKEN (not on the command line); the URL is parsed."""
    script, record = stand_in(tmp_path, "ngrok")
    with open_tunnel("ngrok", 8124, executable=script, ngrok_token="ngrok-secret-1") as tunnel:
        assert tunnel.public_url == "https://ab12-34-56.ngrok-free.app"
    seen = json.loads(record.read_text())
    assert seen["ngrok"] == "ngrok-secret-1" and "ngrok-secret-1" not in seen["argv"]
    with pytest.raises(ConfigError, match="auth token"):
        open_tunnel("ngrok", 1, executable=script, ngrok_token="")
    assert NGROK_URL_RE.search("lvl=info url=https://x.ngrok.app").group(1) == "https://x.ngrok.app"


def test_cloudflared_download_is_checked_against_its_checksum(tmp_path, monkeypatch):
    """A download whose SHA-256 does not match is refused and removed; a matching one is installed."""
    payload = b"#!/bin/sh\necho fake cloudflared\n"
    with StandIn(
        {("GET", "/cloudflared"): lambda h, b: send(h, 200, payload, "application/octet-stream")}
    ) as srv:
        target = tmp_path / "bin" / "cloudflared-x"
        with pytest.raises(ConfigError, match="checksum"):
            tunnel_module._download(srv.url + "/cloudflared", target, "0" * 64)
        assert not target.exists() and list(target.parent.iterdir()) == []
        good = tunnel_module._download(srv.url + "/cloudflared", target, hashlib.sha256(payload).hexdigest())
        assert good == target and os.access(target, os.X_OK)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ConfigError):
        find_cloudflared(cache_dir=tmp_path / "cache", download=False)
    (tmp_path / "path").mkdir()
    fake = tmp_path / "path" / "cloudflared"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path / "path"))
    assert find_cloudflared(download=False) == fake


def test_server_command_with_tunnel_prints_url_token_and_connect_line(tmp_path):
    """`python -m speech2image_nb.server --tunnel cloudflared` creates a token, prints URL/token/connect line
    and the Playground backend URL, enforces the token, and Ctrl-C stops the server and the tunnel."""
    script, record = stand_in(tmp_path, "ok")
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    env.pop("S2I_SERVER_TOKEN", None)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "speech2image_nb.server",
            "--engine",
            "noise",
            "--port",
            "0",
            "--quiet",
            "--tunnel",
            "cloudflared",
            "--cloudflared",
            str(script),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines = []
    try:
        deadline = time.monotonic() + 30 * TIME_FACTOR
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line.strip())
            if line.startswith("in your notebook:"):
                break
        text = "\n".join(lines)
        local = re.search(r"ready: image server at (http://127\.0\.0\.1:\d+)", text).group(1)
        token = re.search(r"^token: (\S+)$", text, re.M).group(1)
        assert f"public URL: {PUBLIC_URL}" in text
        assert f'speech2image_nb.connect("{PUBLIC_URL}", token="{token}")' in text
        assert f"DALL-E Playground backend URL: {PUBLIC_URL}/t/{token}" in text
        assert len(token) >= 24
        tunnel_args = json.loads(record.read_text())["argv"]
        assert tunnel_args[tunnel_args.index("--url") + 1] == local
        body = json.dumps({"text": "a fox"})
        assert requests.post(local + "/generate", data=body, timeout=10).status_code == 401
        ok = requests.post(
            local + "/generate", data=body, headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        assert ok.status_code == 200
        in_url = requests.post(f"{local}/t/{token}/generate", data=body, timeout=10)
        assert in_url.status_code == 200 and len(in_url.json()["generatedImgs"]) == 1
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(15)
    assert code == 0
    pid = json.loads(record.read_text())["pid"]
    deadline = time.monotonic() + 5
    while is_running(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not is_running(pid)


def test_unknown_engine_exits_with_a_message(capsys):
    """The command reports an engine it cannot build in one line and exits 2."""
    from speech2image_nb.server.cli import main

    assert main(["--engine", "no-such-engine", "--port", "0"]) == 2
    assert "Unknown image engine" in capsys.readouterr().err
    assert connect_line("https://x", None) == 'speech2image_nb.connect("https://x")'
    assert (
        playground_url("https://x/", "tok") == "https://x/t/tok"
        and playground_url("https://x", None) == "https://x"
    )
