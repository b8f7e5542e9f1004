"""DALL-E mini and mega: our own PyTorch implementation over min-dalle's checkpoint files.

One module per stage, each readable alone:

- :mod:`.config`      sizes of each variant and the file names of its checkpoint
- :mod:`.tokenizer`   text -> BPE token ids (no torch)
- :mod:`.encoder`     BART-style text encoder
- :mod:`.decoder`     BART-style image-token decoder with a static KV cache (one step at a time)
- :mod:`.sampler`     top-k + temperature + "supercondition" sampling, per-image noise
- :mod:`.detokenizer` VQGAN decoder: 16x16 image tokens -> 256x256 RGB
- :mod:`.weights`     find, download (huggingface_hub), check and load the files; random checkpoints
- :mod:`.engine`      :class:`DalleMiniEngine`, the server's engine (batching, CUDA graphs, previews)

Importing this package imports nothing heavy: the names below load their module on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["DalleConfig", "DalleMiniEngine", "save_random_checkpoint"]

_LAZY = {
    "DalleMiniEngine": "speech2image_nb.server.engines.dalle_mini.engine",
    "DalleConfig": "speech2image_nb.server.engines.dalle_mini.config",
    "save_random_checkpoint": "speech2image_nb.server.engines.dalle_mini.weights",
}

if TYPE_CHECKING:
    from .config import DalleConfig
    from .engine import DalleMiniEngine
    from .weights import save_random_checkpoint


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
