"""Browser microphone recorders for the notebook.

:class:`Recorder` streams 16 kHz int16 PCM chunks to the kernel while the person speaks;
:class:`WebRTCRecorder` wraps ipywebrtc (the ``webrtc`` extra) and delivers the whole take after
stop. Both are imported on first use; both are :class:`RecorderLike`, whose ``streams`` says which
kind a recorder is. :func:`make_recorder` builds one by name (what ``app(recorder=...)`` takes).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["Recorder", "RecorderLike", "WebRTCRecorder", "make_recorder"]

_LAZY = {"Recorder": ".widget", "RecorderLike": ".callbacks", "WebRTCRecorder": ".webrtc"}

if TYPE_CHECKING:
    from .callbacks import RecorderLike
    from .webrtc import WebRTCRecorder
    from .widget import Recorder


def make_recorder(recorder: str | RecorderLike) -> RecorderLike:
    """The recorder ``recorder`` names (``"anywidget"`` or ``"ipywebrtc"``), or ``recorder`` itself.

    Raises
    ------
    ConfigError
        An unknown name, or an object that is not :class:`RecorderLike`.
    ImportError
        The recorder's package (anywidget, or ipywebrtc for the ``webrtc`` extra) is missing.
    """
    from ..errors import ConfigError
    from .callbacks import RecorderLike

    if not isinstance(recorder, str):
        if not isinstance(recorder, RecorderLike):
            raise ConfigError(
                f"{type(recorder).__name__} is not a recorder: it needs streams, recording, on_audio, "
                "on_stop and on_error (see speech2image_nb.recorder.RecorderLike)."
            )
        return recorder
    if recorder == "ipywebrtc":
        from .webrtc import WebRTCRecorder

        return WebRTCRecorder()
    if recorder == "anywidget":
        from .widget import Recorder

        return Recorder()
    raise ConfigError(f"Unknown recorder {recorder!r}: use 'anywidget' or 'ipywebrtc'.")


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
