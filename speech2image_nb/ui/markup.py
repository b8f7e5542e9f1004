"""The HTML the panel's widgets show, built from plain data: every user text escaped.

Apart from the widgets so that what the browser receives can be read in a test without one.
Images travel as JPEG data URLs (the grid's previews and finals; saved files are PNG).
"""

from __future__ import annotations

import base64
import html
import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL.Image import Image

    from .session import Grid, Status

__all__ = [
    "DataUrls",
    "error_markup",
    "grid_markup",
    "jpeg_bytes",
    "seed_markup",
    "status_markup",
    "transcript_markup",
]

PREVIEW_QUALITY = 85  # JPEG quality of what the grid shows
_MAX_CACHED = 64  # data URLs kept; a grid holds at most 10 images, the history restores others


def status_markup(status: Status) -> str:
    """The status line: speech engine, image server, and what happens now."""
    text = f"Speech: {html.escape(status.speech)} · Images: {html.escape(status.images)}"
    if status.activity:
        text += f" · {html.escape(status.activity)}"
    return f'<span class="s2i-status">{text}</span>'


def error_markup(line: str) -> str:
    """The error line ("" for none)."""
    return f'<span class="s2i-error">⚠ {html.escape(line)}</span>' if line else ""


def transcript_markup(inner: str) -> str:
    """The transcript box around already escaped ``inner`` HTML (a hint when empty)."""
    if not inner:
        inner = '<span class="s2i-empty">Press Record (or Space) and speak…</span>'
    return f'<div class="s2i-transcript">{inner}</div>'


def seed_markup(seed: int | None) -> str:
    """The seed of the images shown ("" when the server reported none)."""
    return f'<span class="s2i-seed">seed <b>{seed}</b></span>' if seed is not None else ""


def jpeg_bytes(image: Image, *, quality: int = PREVIEW_QUALITY) -> bytes:
    """``image`` as JPEG."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


class DataUrls:
    """JPEG data URLs of images, each encoded once while it stays on screen."""

    def __init__(self) -> None:
        self._urls: dict[int, tuple[Image, str]] = {}

    def __call__(self, image: Image) -> str:
        """The data URL of ``image``."""
        cached = self._urls.get(id(image))
        if cached is not None and cached[0] is image:
            return cached[1]
        url = "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes(image)).decode("ascii")
        if len(self._urls) > _MAX_CACHED:
            self._urls.clear()
        self._urls[id(image)] = (image, url)
        return url


def grid_markup(grid: Grid, data_url: DataUrls) -> str:
    """The image grid: placeholders, blurred previews and finals; a click enlarges an image."""
    cells = []
    for index, (tile, final) in enumerate(zip(grid.tiles, grid.final, strict=True)):
        if tile is None:
            cells.append(f'<div class="s2i-placeholder" data-index="{index}"></div>')
            continue
        css = "s2i-img" if final else "s2i-img s2i-preview"
        cells.append(
            f'<img class="{css}" data-index="{index}" src="{data_url(tile)}" '
            f'alt="image {index + 1}" title="click to enlarge" '
            f"onclick=\"this.classList.toggle('s2i-big')\"/>"
        )
    return f'<div class="s2i-grid" data-id="{html.escape(grid.id)}">{"".join(cells)}</div>'
