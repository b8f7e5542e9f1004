"""speech2image_nb: speak a sentence in a notebook, see it drawn.

The public API lives here; each name is imported from its module on first use, so that
``import speech2image_nb`` stays fast and does no work (no network, no threads, no model loads,
no global settings changed).
"""

import importlib as _importlib
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY: dict[str, str] = {
    "app": "speech2image_nb.ui.panel",
    "Panel": "speech2image_nb.ui.panel",
    "Recorder": "speech2image_nb.recorder.widget",
    "WebRTCRecorder": "speech2image_nb.recorder.webrtc",
    "transcribe": "speech2image_nb.speech",
    "TranscriptEvent": "speech2image_nb.speech.base",
    "ImageClient": "speech2image_nb.images.client",
    "Generation": "speech2image_nb.images.client",
    "connect": "speech2image_nb.images.service",
    "generate": "speech2image_nb.images.service",
    "Settings": "speech2image_nb.config",
    "Secret": "speech2image_nb.config",
    "decode_audio": "speech2image_nb.audio",
    "Speech2ImageError": "speech2image_nb.errors",
}

__all__ = sorted([*_LAZY, "__version__"])

if _TYPE_CHECKING:
    from .audio import decode_audio
    from .config import Secret, Settings
    from .errors import Speech2ImageError
    from .images.client import Generation, ImageClient
    from .images.service import connect, generate
    from .recorder.webrtc import WebRTCRecorder
    from .recorder.widget import Recorder
    from .speech import transcribe
    from .speech.base import TranscriptEvent
    from .ui.panel import Panel, app


def __getattr__(name: str) -> _Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'speech2image_nb' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
