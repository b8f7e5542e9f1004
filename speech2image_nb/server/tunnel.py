"""A public URL for a server on this machine: a cloudflared quick tunnel, or ngrok with a token.

Why: a notebook outside Colab can reach a Colab server only through a public tunnel. Cloudflare
quick tunnels need no account (random ``*.trycloudflare.com`` URL, testing-grade, about 100 s
proxy read timeout: the client streams, so long generations still get through). ngrok needs an
auth token (``NGROK_AUTHTOKEN``).

The cloudflared binary is used from ``PATH`` or the cache when present, and otherwise downloaded
once from its GitHub release, pinned by version and checked against a SHA-256 kept here; a
mismatch, or a platform without a pinned checksum, is a clear error, never an unchecked binary.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import ConfigError, ServiceUnreachable
from ..images.protocol import URL_TOKEN_PREFIX

__all__ = [
    "Tunnel",
    "connect_line",
    "find_cloudflared",
    "open_tunnel",
    "playground_url",
    "start_tunnel_process",
]

logger = logging.getLogger(__name__)

CLOUDFLARED_VERSION = "2026.6.1"
CLOUDFLARED_URL = "https://github.com/cloudflare/cloudflared/releases/download/{version}/cloudflared-{asset}"
#: SHA-256 of each pinned release asset; bump together with CLOUDFLARED_VERSION
CLOUDFLARED_SHA256: dict[str, str] = {
    "linux-amd64": "5861a10a438fe8ddcfebb3b830f83966cbf193edafce0fe2eeb198fbae1f7a22",
    "linux-arm64": "59816ce9b16db71f5bc2a86d59b3632a96c8c3ee934bde2bc8641ee83a6070eb",
}
CLOUDFLARED_URL_RE = re.compile(r"https://[a-z0-9-]+\.trycloudflare\.com")
NGROK_URL_RE = re.compile(r"url=(https://[A-Za-z0-9.-]+)")
DEFAULT_START_TIMEOUT_S = 60.0
DOWNLOAD_TIMEOUT_S = (10.0, 60.0)  # (connect, read)
STOP_TIMEOUT_S = 5.0
OUTPUT_LINES_KEPT = 50


@dataclasses.dataclass
class Tunnel:
    """A running tunnel process and the public URL it serves."""

    kind: str
    public_url: str
    process: subprocess.Popen[bytes]
    output: list[str] = dataclasses.field(default_factory=list)

    @property
    def alive(self) -> bool:
        """True while the tunnel process runs."""
        return self.process.poll() is None

    def close(self) -> None:
        """Stop the tunnel process (terminate, then kill after a grace period)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT_S)

    def __enter__(self) -> Tunnel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect_line(url: str, token: str | None) -> str:
    """The line a user pastes into their notebook to use this server."""
    if token is None:
        return f'speech2image_nb.connect("{url}")'
    return f'speech2image_nb.connect("{url}", token="{token}")'


def playground_url(url: str, token: str | None) -> str:
    """The backend URL to paste into DALL-E Playground's web UI: the token rides in the path,
    because the UI cannot send an ``Authorization`` header."""
    base = url.rstrip("/")
    return base if token is None else f"{base}{URL_TOKEN_PREFIX}{token}"


def _cloudflared_asset() -> str:
    machine = platform.machine().lower()
    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(machine, machine)
    system = "linux" if sys.platform.startswith("linux") else sys.platform
    return f"{system}-{arch}"


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "speech2image_nb" / "bin"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_cloudflared(*, cache_dir: Path | None = None, download: bool = True) -> Path:
    """The cloudflared executable: from PATH, the cache, or a checked download (in that order)."""
    on_path = shutil.which("cloudflared")
    if on_path:
        return Path(on_path)
    asset = _cloudflared_asset()
    expected = CLOUDFLARED_SHA256.get(asset)
    target = (cache_dir or _cache_dir()) / f"cloudflared-{CLOUDFLARED_VERSION}"
    if expected is None:
        raise ConfigError(
            f"cloudflared is not installed and no checked download exists for this platform ({asset}); "
            "install it from https://developers.cloudflare.com/cloudflare-one/connections/connect-networks/"
            "downloads/ or use --tunnel ngrok."
        )
    if target.is_file() and _sha256(target) == expected:
        return target
    if not download:
        raise ConfigError("cloudflared is not installed; install it or allow the download.")
    return _download(CLOUDFLARED_URL.format(version=CLOUDFLARED_VERSION, asset=asset), target, expected)


def _download(url: str, target: Path, expected_sha256: str) -> Path:
    import requests

    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("downloading cloudflared %s", CLOUDFLARED_VERSION)
    fd, temp_name = tempfile.mkstemp(dir=target.parent, prefix=".cloudflared-")
    temp = Path(temp_name)
    try:
        with (
            os.fdopen(fd, "wb") as handle,
            requests.get(url, stream=True, timeout=DOWNLOAD_TIMEOUT_S) as answer,
        ):
            answer.raise_for_status()
            for chunk in answer.iter_content(1 << 20):
                handle.write(chunk)
        actual = _sha256(temp)
        if actual != expected_sha256:
            raise ConfigError(
                f"The downloaded cloudflared does not match its pinned checksum (got {actual[:12]}...); "
                "it was not used. Install cloudflared yourself or use --tunnel ngrok."
            )
        temp.chmod(0o755)
        temp.replace(target)
        return target
    except requests.RequestException as exc:
        raise ConfigError(
            f"Could not download cloudflared ({type(exc).__name__}); "
            "install it yourself or use --tunnel ngrok."
        ) from exc
    finally:
        temp.unlink(missing_ok=True)


def start_tunnel_process(
    kind: str,
    argv: Sequence[str],
    *,
    url_pattern: re.Pattern[str],
    timeout_s: float = DEFAULT_START_TIMEOUT_S,
    env: Mapping[str, str] | None = None,
) -> Tunnel:
    """Run ``argv``, read its output until ``url_pattern`` matches, and return the running tunnel.

    The output keeps being drained in a daemon thread (so the process never blocks on a full
    pipe); the last lines are kept on :attr:`Tunnel.output` for error messages.
    """
    try:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=None if env is None else {**os.environ, **env},
        )
    except OSError as exc:
        raise ConfigError(f"Cannot start {kind}: {exc.strerror}.") from exc
    output: list[str] = []
    found: list[str] = []
    seen = threading.Event()

    def drain() -> None:
        assert process.stdout is not None
        for raw in iter(process.stdout.readline, b""):
            line = raw.decode("utf-8", errors="replace").rstrip()
            output.append(line)
            del output[:-OUTPUT_LINES_KEPT]
            if not found:
                match = url_pattern.search(line)
                if match:
                    found.append(match.group(match.lastindex or 0))
                    seen.set()
        seen.set()

    threading.Thread(target=drain, name=f"s2i-{kind}-output", daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while not found and time.monotonic() < deadline and process.poll() is None:
        seen.wait(0.05)
    if not found:
        tunnel = Tunnel(kind, "", process, output)
        tunnel.close()
        last = " | ".join(output[-3:])[:300]
        raise ServiceUnreachable(
            f"The {kind} tunnel did not report a public URL within {timeout_s:g} s"
            + (f" (it said: {last})" if last else "")
            + ". Try again, or use the other tunnel kind.",
        )
    return Tunnel(kind, found[0], process, output)


def open_tunnel(
    kind: str,
    port: int,
    *,
    host: str = "127.0.0.1",
    executable: str | Path | None = None,
    ngrok_token: str | None = None,
    timeout_s: float = DEFAULT_START_TIMEOUT_S,
) -> Tunnel:
    """Open a public tunnel to ``http://host:port``; ``kind`` is ``cloudflared`` or ``ngrok``."""
    local = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    if kind == "cloudflared":
        binary = Path(executable) if executable else find_cloudflared()
        argv = [str(binary), "tunnel", "--no-autoupdate", "--url", local]
        return start_tunnel_process(kind, argv, url_pattern=CLOUDFLARED_URL_RE, timeout_s=timeout_s)
    if kind == "ngrok":
        token = ngrok_token or os.environ.get("NGROK_AUTHTOKEN")
        if not token:
            raise ConfigError("ngrok needs an auth token: set NGROK_AUTHTOKEN or pass --ngrok-token.")
        binary_name = str(executable) if executable else shutil.which("ngrok")
        if not binary_name:
            raise ConfigError(
                "ngrok is not installed (https://ngrok.com/download); or use --tunnel cloudflared."
            )
        argv = [binary_name, "http", str(port), "--log", "stdout", "--log-format", "logfmt"]
        # the token travels in the environment, not on the command line where `ps` shows it
        return start_tunnel_process(
            kind, argv, url_pattern=NGROK_URL_RE, timeout_s=timeout_s, env={"NGROK_AUTHTOKEN": token}
        )
    raise ConfigError(f"Unknown tunnel {kind!r}; choose cloudflared or ngrok.")
