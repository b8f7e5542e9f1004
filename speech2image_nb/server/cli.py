"""``python -m speech2image_nb.server``: run the image server, optionally behind a public tunnel.

This is a command-line program: it prints its progress bar, the URL and (for a tunnel) the fresh
token on the terminal for the person who started it. The token is printed only when this program
created it; a token the user supplied is never echoed.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import signal
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, TextIO

from ..errors import Speech2ImageError
from ..images.protocol import RequestLimits
from .settings import DEFAULT_MAX_QUEUE, DEFAULT_REQUEST_TIMEOUT_S

if TYPE_CHECKING:
    from ..safety import Policy
    from . import BackgroundServer
    from .ray_local import RayServer
    from .tunnel import Tunnel

__all__ = ["build_parser", "main"]

TOKEN_ENV = "S2I_SERVER_TOKEN"
BAR_WIDTH = 30


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags (also used by ``speech2image serve``)."""
    from .engines import DEFAULT_ENGINE, ENGINES

    parser = argparse.ArgumentParser(
        prog="python -m speech2image_nb.server",
        description="DALL-E Playground compatible image server (FastAPI + uvicorn).",
    )
    parser.add_argument(
        "--engine",
        default=DEFAULT_ENGINE,
        help=f"image engine: {', '.join(ENGINES)} or diffusers:<model id> (default {DEFAULT_ENGINE})",
    )
    parser.add_argument("--model-dir", help="local weights directory (default: the Hugging Face cache)")
    parser.add_argument("--device", help="torch device, e.g. cuda or cpu (default: cuda when available)")
    parser.add_argument(
        "--dtype",
        help="int8 (DALL-E on CPU: 8-bit weights, the CPU default), fp32 (reference), fp16 or bf16 "
        "(default: fp16 on CUDA, int8/fp32 on CPU; also $S2I_IMAGE_DTYPE)",
    )
    parser.add_argument(
        "--vae",
        choices=("tiny", "full"),
        help="diffusers engines: tiny autoencoder (TAESD, the CPU default) or the model's full VAE",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port)")
    parser.add_argument("--token", help=f"require this bearer token (default: ${TOKEN_ENV})")
    parser.add_argument("--no-auth", action="store_true", help="no token, even behind a public tunnel")
    parser.add_argument("--tunnel", choices=("cloudflared", "ngrok"), help="open a public URL")
    parser.add_argument("--ngrok-token", help="ngrok auth token (default: $NGROK_AUTHTOKEN)")
    parser.add_argument(
        "--cloudflared", help="path of the cloudflared executable (default: PATH or download)"
    )
    limits = RequestLimits()
    parser.add_argument(
        "--max-images", type=int, default=limits.max_images, help="images per request (default %(default)s)"
    )
    parser.add_argument(
        "--max-prompt-chars",
        type=int,
        default=limits.max_prompt_chars,
        help="characters read from a prompt when the engine does not say how many tokens it reads; "
        "the rest is cut off (default %(default)s)",
    )
    parser.add_argument(
        "--max-queue", type=int, default=DEFAULT_MAX_QUEUE, help="waiting requests (default %(default)s)"
    )
    parser.add_argument("--max-batch", type=int, help="images per engine call (default: the engine's)")
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=DEFAULT_REQUEST_TIMEOUT_S,
        help="seconds per request (default %(default)g)",
    )
    parser.add_argument("--save-dir", help="also save every image here (files named by a random id)")
    parser.add_argument("--quiet", action="store_true", help="no access log")
    _add_safety_options(parser)
    parser.add_argument(
        "--ray-replicas",
        type=int,
        default=0,
        metavar="N",
        help="serve with N engine replicas on a local Ray (needs speech2image_nb[ray]; default: no Ray)",
    )
    parser.add_argument(
        "--ray-gpus-per-replica",
        type=float,
        default=None,
        help="GPUs per replica: 1, or 0.5 for two on a card (default: 1 when a GPU is visible, else 0)",
    )
    return parser


def _add_safety_options(parser: argparse.ArgumentParser) -> None:
    """The classroom filter's flags (each defaults to its environment variable, then strict)."""
    from ..safety import LEVELS
    from ..safety.images import DEFAULT_IMAGE_MODEL, IMAGE_MODEL_ENV

    group = parser.add_argument_group("classroom filter")
    group.add_argument(
        "--safety",
        choices=LEVELS,
        help="strict (the default; also $S2I_SAFETY), standard, or off (nothing is checked: not for a class)",
    )
    group.add_argument("--safety-block", metavar="WORDS", help='more words or phrases to refuse: "w1,w2"')
    group.add_argument("--safety-allow", metavar="WORDS", help='words or phrases never refused: "w1,w2"')
    group.add_argument(
        "--safety-file", metavar="PATH", help="a text file of words: one a line, '+word' allows one"
    )
    group.add_argument(
        "--safety-image-model",
        metavar="ID_OR_DIR",
        help=f"the picture check's classifier: hub repo id or folder (default ${IMAGE_MODEL_ENV}, "
        f"else {DEFAULT_IMAGE_MODEL})",
    )
    group.add_argument(
        "--safety-log-text",
        action="store_true",
        help="also write the text of refused prompts to this server's log (default: time, route, category)",
    )


def _policy(args: argparse.Namespace) -> Policy:
    """The classroom filter the flags ask for (the environment fills in what they leave out)."""
    from ..safety import Policy

    return Policy.resolve(
        args.safety,
        blocked=args.safety_block,
        allowed=args.safety_allow,
        word_file=args.safety_file,
        log_text=True if args.safety_log_text else None,
    )


class _ProgressBar:
    """A one-line progress bar for engine loading."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def __call__(self, fraction: float, message: str) -> None:
        fraction = min(max(fraction, 0.0), 1.0)
        filled = int(fraction * BAR_WIDTH)
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        self.stream.write(f"\r[{bar}] {fraction:4.0%} {message[:60]:<60}")
        if fraction >= 1.0:
            self.stream.write("\n")
        self.stream.flush()


def _choose_token(args: argparse.Namespace) -> tuple[str | None, bool]:
    """The token to require, and whether this program created it (a tunnel without --no-auth)."""
    token = None if args.no_auth else (args.token or os.environ.get(TOKEN_ENV) or None)
    if args.tunnel and token is None and not args.no_auth:
        return secrets.token_urlsafe(24), True
    if token is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: listening on {args.host} without a token; anyone who can reach it can use it.",
            file=sys.stderr,
        )
    return token, False


def _start_server(args: argparse.Namespace, token: str | None) -> BackgroundServer | RayServer:
    if args.ray_replicas > 0:
        return _start_ray_server(args, token)
    from . import start_background
    from .engines import create_engine

    policy = _policy(args)
    engine = create_engine(
        args.engine, model_dir=args.model_dir, device=args.device, dtype=args.dtype, vae=args.vae
    )
    print(f"loading engine {args.engine} ...", flush=True)
    return start_background(
        engine,
        host=args.host,
        port=args.port,
        token=token,
        on_progress=_ProgressBar(sys.stderr),
        access_log=not args.quiet,
        max_images=args.max_images,
        max_prompt_chars=args.max_prompt_chars,
        max_queue=args.max_queue,
        max_batch=args.max_batch,
        request_timeout_s=args.request_timeout,
        save_dir=args.save_dir,
        safety=policy,
        image_checker=args.safety_image_model,
    )


def _describe_filter(policy: Policy) -> str:
    """One line for the terminal: the level, and whether pictures are checked."""
    if not policy.enabled:
        return "off (prompts and pictures are not checked)"
    pictures = "pictures checked" if policy.check_images else "pictures not checked"
    return f"{policy.level} (prompts checked, {pictures})"


def _start_ray_server(args: argparse.Namespace, token: str | None) -> RayServer:
    """The same server on a local Ray: ``--ray-replicas`` engines, each with its own batcher."""
    try:
        from .ray_local import start_ray_server
        from .ray_serve import EngineRecipe, IngressOptions, ReplicaOptions, ScalingOptions
    except ModuleNotFoundError as exc:
        raise Speech2ImageError("--ray-replicas needs Ray: pip install 'speech2image_nb[ray]'.") from exc
    gpus = args.ray_gpus_per_replica
    if gpus is None:
        import torch

        gpus = 1.0 if torch.cuda.is_available() else 0.0
    policy = _policy(args)
    print(f"starting Ray with {args.ray_replicas} replicas of {args.engine} ...", flush=True)
    server = start_ray_server(
        EngineRecipe(
            args.engine, model_dir=args.model_dir, device=args.device, dtype=args.dtype, vae=args.vae
        ),
        scaling=ScalingOptions(replicas=args.ray_replicas, gpus_per_replica=gpus),
        replica=ReplicaOptions(
            max_batch=args.max_batch,
            max_queue=args.max_queue,
            check_images=policy.enabled and policy.check_images,
            image_checker=args.safety_image_model,
        ),
        ingress=IngressOptions(
            safety=policy,
            token=token,
            token_env=None,
            max_images=args.max_images,
            max_prompt_chars=args.max_prompt_chars,
            request_timeout_s=args.request_timeout,
        ),
        host=args.host,
        port=args.port,
    )
    signal.signal(signal.SIGTERM, _interrupt)
    return server


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM stops the Ray server as Ctrl-C does: Ray's own handler exits at once and leaves its
    dashboard and runtime-environment agents running."""
    raise KeyboardInterrupt


def _open_tunnel(args: argparse.Namespace, server: BackgroundServer | RayServer) -> Tunnel:
    from .tunnel import open_tunnel

    port = int(server.url.rsplit(":", 1)[1])
    local_host = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
    return open_tunnel(
        args.tunnel,
        port,
        host=local_host,
        executable=args.cloudflared if args.tunnel == "cloudflared" else None,
        ngrok_token=args.ngrok_token,
    )


def _print_how_to_connect(public_url: str, token: str | None, *, created_token: bool) -> None:
    """The lines a user copies: the token (only one this program made), the backend URL for
    DALL-E Playground's web UI, and the connect() call for a notebook."""
    from .tunnel import connect_line, playground_url

    if token is not None and created_token:
        print(f"token: {token}")
        print(f"DALL-E Playground backend URL: {playground_url(public_url, token)}")
        print(f"in your notebook: {connect_line(public_url, token)}", flush=True)
    elif token is not None:
        placeholder = f"<your {TOKEN_ENV}>"
        print(f"DALL-E Playground backend URL: {playground_url(public_url, placeholder)}")
        print(f'in your notebook: speech2image_nb.connect("{public_url}", token={placeholder})', flush=True)
    else:
        print(f"DALL-E Playground backend URL: {public_url}")
        print(f"in your notebook: {connect_line(public_url, None)}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until Ctrl-C; returns the exit status."""
    args = build_parser().parse_args(argv)
    # the time on each line: the teacher's log of refusals says when (see speech2image_nb.safety)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    token, created_token = _choose_token(args)
    server: BackgroundServer | RayServer | None = None
    tunnel: Tunnel | None = None
    try:
        server = _start_server(args, token)
        print(f"ready: image server at {server.url} (engine {args.engine})", flush=True)
        print(f"classroom filter: {_describe_filter(_policy(args))}", flush=True)
        public_url = server.url
        if args.tunnel:
            tunnel = _open_tunnel(args, server)
            public_url = tunnel.public_url
            print(f"public URL: {public_url}")
        _print_how_to_connect(public_url, token, created_token=created_token)
        while not server.join(1.0):
            if tunnel is not None and not tunnel.alive:
                print("the tunnel process ended; stopping.", file=sys.stderr)
                return 1
        return 0 if server.error is None else 1
    except KeyboardInterrupt:
        return 0
    except Speech2ImageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if tunnel is not None:
            tunnel.close()
        if server is not None:
            server.stop()
