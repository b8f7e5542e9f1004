"""Space inside the panel starts and stops recording: a tiny invisible anywidget that says so."""

from __future__ import annotations

import functools
from collections.abc import Callable
from importlib import resources
from typing import Any

__all__ = ["make_hotkeys"]


@functools.lru_cache(maxsize=1)
def _hotkeys_class() -> Any:
    import anywidget

    class Hotkeys(anywidget.AnyWidget):
        """Invisible: listens for Space on the enclosing panel and tells the kernel."""

        _esm = resources.files(__package__).joinpath("hotkeys.js").read_text(encoding="utf-8")

    return Hotkeys


def make_hotkeys(on_toggle: Callable[[], object]) -> Any:
    """The hotkey widget, calling ``on_toggle()`` on each Space; ``None`` without anywidget."""
    import ipywidgets as widgets

    try:
        cls = _hotkeys_class()
    except ImportError:
        return None
    widget = cls(layout=widgets.Layout(width="0px", height="0px"))

    def on_msg(_widget: Any, content: Any, _buffers: Any) -> None:
        if isinstance(content, dict) and content.get("kind") == "toggle-recording":
            on_toggle()

    widget.on_msg(on_msg)
    return widget
