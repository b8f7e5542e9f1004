"""Colab's custom widget manager switch, as ``google/colab/output/_widgets.py`` behaves (colabtools).

Like Colab: ``enable_custom_widget_manager()`` registers a display hook on the kernel's display
publisher, and from then on every display that holds a widget view carries the manager's URL in
its metadata (``{"application/vnd.jupyter.widget-view+json": {"colab": {"custom_widget_manager":
{"url": ...}}}}``), which is what makes Colab's page load the manager for it. anywidget reads
``_installed_url`` from here, as it does in Colab.

For tests, in addition: ``events`` lists, in order, each enable call (with the calling module) and
each display (whether it holds a widget), seen by a second hook registered at import, i.e. when
Colab's kernel would start.
"""

from __future__ import annotations

import sys
from typing import Any

import IPython

URL = "https://ssl.gstatic.com/colaboratory-static/widgets/colab-cdn-widget-manager/stub/manager.min.js"
WIDGET_MIME_TYPE = "application/vnd.jupyter.widget-view+json"

_installed_url: str | None = None
events: list[dict[str, Any]] = []


def enable_custom_widget_manager(version: str = "5.0.0a") -> None:
    """Turn on the manager (what Colab does), and note who asked."""
    events.append({"event": "enable", "caller": sys._getframe(1).f_globals.get("__name__", "")})
    _install_custom_widget_manager(URL)


def disable_custom_widget_manager() -> None:
    """Turn the manager off again."""
    _install_custom_widget_manager(None)


def _install_custom_widget_manager(url: str | None) -> None:
    global _installed_url
    shell = IPython.get_ipython()
    if url and not _installed_url:
        shell.display_pub.register_hook(_widget_display_hook)
    elif not url and _installed_url:
        shell.display_pub.unregister_hook(_widget_display_hook)
    _installed_url = url


def _widget_display_hook(msg: dict[str, Any]) -> dict[str, Any]:
    """Tag a widget display with the manager's URL (Colab's hook, same rules)."""
    if not _installed_url:
        return msg
    content = msg.get("content", {})
    if not content or not content.get("data", {}).get(WIDGET_MIME_TYPE):
        return msg
    metadata = content.setdefault("metadata", {}).setdefault(WIDGET_MIME_TYPE, {})
    metadata["colab"] = {"custom_widget_manager": {"url": _installed_url}}
    return msg


def _log_display(msg: dict[str, Any]) -> dict[str, Any]:
    content = msg.get("content", {})
    events.append({"event": "display", "widget": WIDGET_MIME_TYPE in content.get("data", {})})
    return msg


_shell = IPython.get_ipython()
if _shell is not None and hasattr(_shell.display_pub, "register_hook"):
    _shell.display_pub.register_hook(_log_display)
