"""Generated images on disk: the ids that name them, and PNG files named by those ids.

File names come from an id, never from the prompt: a prompt is user text and may hold path
separators or words the user would rather not see in a folder listing.
"""

from __future__ import annotations

import datetime
import os
import secrets
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["new_id", "save_images"]


def new_id() -> str:
    """A short unique id for a generation, used in file names (never the prompt)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"s2i-{stamp}-{secrets.token_hex(3)}"


def save_images(images: Iterable[Image], out_dir: str | os.PathLike[str], entry_id: str) -> list[Path]:
    """Write ``images`` as PNG files ``<entry_id>-<n>.png`` into ``out_dir`` (created if needed).

    Returns the paths written.

    Raises
    ------
    ValueError
        When ``entry_id`` could name a file outside ``out_dir`` (a bug, not a user error).
    ConfigError
        When the folder cannot be created or written.
    """
    if not entry_id or any(c in entry_id for c in "/\\\0") or entry_id in {".", ".."}:
        raise ValueError(f"invalid image id {entry_id!r}")
    folder = Path(out_dir).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for index, image in enumerate(images, start=1):
            path = folder / f"{entry_id}-{index}.png"
            image.save(path, format="PNG")
            paths.append(path)
    except OSError as exc:
        raise ConfigError(
            f"Cannot write images to {str(folder)!r} ({exc.strerror}): choose another folder."
        ) from exc
    return paths
