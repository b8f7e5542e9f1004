"""The interface between the image server and an image engine.

The server's batcher collects :class:`ImageJob` items from concurrent requests and hands an engine
up to ``max_batch`` of them in one :meth:`Engine.generate` call. Jobs in one call share the same
engine options (the batcher groups them), so an engine may apply one set of knobs to the batch.

Determinism: every image draws its randomness from its own generator seeded with
:func:`image_seed` ``(seed, index)``, so an image is the same whether it ran alone or in a batch.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from PIL import Image

__all__ = [
    "DTYPE_NAMES",
    "Engine",
    "ImageJob",
    "LoadProgress",
    "PromptReader",
    "StepProgress",
    "image_seed",
    "resolve_device_and_dtype",
]

SEED_MAX = 2**63 - 1


def image_seed(seed: int, index: int) -> int:
    """The seed of image ``index`` of a request with ``seed`` (stable across runs and platforms)."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & SEED_MAX


#: accepted spellings of the ``dtype`` argument -> torch dtype name
DTYPE_NAMES = {
    "fp32": "float32",
    "float32": "float32",
    "fp16": "float16",
    "float16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
}


def resolve_device_and_dtype(device: str | None, dtype: str | None) -> tuple[torch.device, str]:
    """The torch device and dtype name an engine runs with.

    ``device=None`` means CUDA when a GPU is visible, else CPU; ``dtype=None`` means float16 on
    CUDA and float32 on CPU (CPUs have no fast half precision). Raises ValueError naming the bad
    argument, so the server can tell the user which flag to fix.
    """
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = torch.device(device)
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', not {device!r}")
    name = dtype if dtype is not None else ("fp16" if resolved.type == "cuda" else "fp32")
    if name not in DTYPE_NAMES:
        raise ValueError(f"dtype must be one of fp32, fp16, bf16, not {dtype!r}")
    return resolved, DTYPE_NAMES[name]


@dataclasses.dataclass(frozen=True)
class ImageJob:
    """One image to make: the prompt, the request's seed and this image's index in the request."""

    prompt: str
    seed: int
    index: int
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def image_seed(self) -> int:
        """The seed of this image's own generator."""
        return image_seed(self.seed, self.index)


#: ``(fraction 0..1, message)`` while weights download or load
LoadProgress = Callable[[float, str], None]
#: ``(step, total, previews or None)`` during generation; previews align with the jobs
StepProgress = Callable[[int, int, "Sequence[Image.Image] | None"], None]


@dataclasses.dataclass(frozen=True)
class PromptReader:
    """How much of a prompt an engine reads, in its own tokens.

    ``tokenize(text)`` returns the token ids with the two special tokens (start, end) around
    them; the engine reads the first ``token_count`` of them and ignores the rest.
    """

    tokenize: Callable[[str], list[int]]
    token_count: int


class Engine(abc.ABC):
    """An image generator. The constructor stores settings; :meth:`load` does the heavy work."""

    #: engine name as the server reports it (``"dalle-mini"``, ``"sd-turbo"``, ``"noise"``)
    name: str = ""
    #: torch device string (``"cpu"``, ``"cuda"``)
    device: str = "cpu"
    #: most images per :meth:`generate` call
    max_batch: int = 1
    #: request fields this engine accepts besides text/num_images/seed/image_format
    option_names: frozenset[str] = frozenset()

    @abc.abstractmethod
    def load(self, progress: LoadProgress | None = None) -> None:
        """Load (and if needed download) the weights. Called once, before any generate()."""

    @abc.abstractmethod
    def generate(
        self, jobs: Sequence[ImageJob], *, on_progress: StepProgress | None = None
    ) -> list[Image.Image]:
        """Make one RGB image per job, in order. Raise EngineError with a clear message on failure."""

    def validate_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Check and normalise engine options from a request; raise ValueError naming the field."""
        unknown = set(options) - self.option_names
        if unknown:
            raise ValueError(f"unknown field(s) for engine {self.name}: {', '.join(sorted(unknown))}")
        return dict(options)

    def prompt_reader(self) -> PromptReader | None:
        """How much of a prompt this engine reads, once loaded; ``None``: it does not say.

        The server cuts a longer prompt to what the engine reads (and reports the cut); for an
        engine that returns ``None`` it cuts at ``--max-prompt-chars`` characters instead.
        """
        return None

    def describe(self) -> dict[str, Any]:
        """Facts for ``GET /``: name, device, max_batch."""
        return {"engine": self.name, "device": self.device, "max_batch": self.max_batch}
