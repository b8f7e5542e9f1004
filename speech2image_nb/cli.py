"""The ``speech2image`` command: the panel's pipeline without a browser.

::

    speech2image serve [server options]          run the image server (see --help there)
    speech2image transcribe AUDIO                 print what was said
    speech2image generate PROMPT --out DIR        save images for a prompt
    speech2image run AUDIO --out DIR              transcribe a recording, then save its images

Configured by the same settings as ``app()``: ``ASSEMBLYAI_API_KEY`` (else local Whisper,
``S2I_WHISPER_MODEL`` may name a local model directory); the image server is picked as for the
panel (:mod:`speech2image_nb.images.service`): ``S2I_SERVER_URL`` + ``S2I_SERVER_TOKEN``, else an
embedded server with ``S2I_IMAGE_ENGINE``, weights from ``S2I_MODEL_DIR``, stopped when the command
ends. Heavy modules are imported inside the commands, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]

logger = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_ERROR = 1  # a Speech2ImageError: the message says what to do
EXIT_USAGE = 2  # argparse's own code for bad arguments


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speech2image",
        description="Turn spoken words into pictures: transcribe a recording and draw it.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("serve", help="run the image server (all further options go to it)", add_help=False)

    transcribe = sub.add_parser("transcribe", help="print the transcript of a recording")
    transcribe.add_argument("audio", help="recording: wav, webm, ogg, mp4/m4a, flac")
    _speech_options(transcribe)

    generate = sub.add_parser("generate", help="save images for a prompt")
    generate.add_argument("prompt", help="what to draw")
    _image_options(generate)

    run = sub.add_parser("run", help="transcribe a recording and save images of what was said")
    run.add_argument("audio", help="recording: wav, webm, ogg, mp4/m4a, flac")
    _speech_options(run)
    _image_options(run)
    return parser


def _speech_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--engine",
        choices=("assemblyai", "whisper"),
        default=None,
        help="speech engine (default: assemblyai when ASSEMBLYAI_API_KEY is set, else whisper)",
    )


def _image_options(parser: argparse.ArgumentParser) -> None:
    from .images.protocol import DEFAULT_MAX_IMAGES  # pure data: --help stays instant

    parser.add_argument("--out", default="speech2image_images", help="folder for the PNG files")
    parser.add_argument(
        "--num-images",
        type=int,
        default=1,
        choices=range(1, DEFAULT_MAX_IMAGES + 1),
        metavar="N",
        help=f"images to generate, 1-{DEFAULT_MAX_IMAGES} (default 1)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed (default: random)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "serve":
        from .server.cli import main as serve_main

        return int(serve_main(args_list[1:]) or 0)
    args = _parser().parse_args(args_list)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    from .errors import Speech2ImageError

    try:
        if args.command == "transcribe":
            print(_transcribe(args.audio, args.engine))
        elif args.command == "generate":
            for path in _generate(args.prompt, args):
                print(path)
        elif args.command == "run":
            text = _transcribe(args.audio, args.engine)
            print(f"transcript: {text}")
            for path in _generate(text, args):
                print(path)
    except Speech2ImageError as exc:
        print(f"speech2image: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    return EXIT_OK


def _transcribe(audio: str, engine: str | None) -> str:
    from .errors import EmptyAudioError
    from .speech import transcribe

    text = " ".join(transcribe(audio, engine=engine).split())
    if not text:
        raise EmptyAudioError(f"No words were recognised in {audio!r}: check the recording.")
    return text


def _generate(prompt: str, args: argparse.Namespace) -> list[Path]:
    from .config import Settings
    from .images.files import new_id, save_images
    from .images.service import ImageService

    def progress(fraction: float, message: str) -> None:
        logger.info("image server loading: %d%% %s", round(fraction * 100), message)

    service = ImageService(Settings.resolve(), on_progress=progress)
    try:
        client = service.open()
        generation = client.generate(prompt, num_images=args.num_images, seed=args.seed)
        logger.info("seed %s, engine %s", generation.seed, generation.engine)
        return [p.resolve() for p in save_images(generation.images, args.out, new_id())]
    finally:
        service.close()
