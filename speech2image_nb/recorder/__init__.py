"""Browser microphone recorders for the notebook.

:class:`Recorder` streams 16 kHz int16 PCM chunks to the kernel while the person speaks;
:class:`WebRTCRecorder` wraps ipywebrtc (the ``webrtc`` extra) and delivers the whole take after
stop. Both are imported on first use; both are :class:`RecorderLike`, whose ``streams`` says which
kind a recorder is.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["Recorder", "RecorderLike", "WebRTCRecorder"]

_LAZY = {"Recorder": ".widget", "RecorderLike": ".callbacks", "WebRTCRecorder": ".webrtc"}

if TYPE_CHECKING:
    from .callbacks import RecorderLike
    from .webrtc import WebRTCRecorder
    from .widget import Recorder


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
