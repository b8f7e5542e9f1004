"""The interface between the image server and an image engine.

The server's batcher collects :class:`ImageJob` items from concurrent requests and hands an engine
up to ``max_batch`` of them in one :meth:`Engine.generate` call. Jobs in one call share the same
engine options (the batcher groups them), so an engine may apply one set of knobs to the batch.

Determinism: every image draws its randomness from its own generator seeded with
:func:`image_seed` ``(seed, index)``, so an image is the same whether it ran alone or in a batch.

Cancellation: a job's :attr:`ImageJob.is_wanted` turns False when its request goes away (the client
left, or its time ran out). An engine with many steps may look between steps and stop making
such an image (DALL-E drops its rows from the batch); it answers ``None`` in its place.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .engine_thread import EngineThread, engine_thread_of

if TYPE_CHECKING:
    import torch
    from PIL import Image

__all__ = [
    "BF16_CUDA_CAPABILITY",
    "DTYPE_NAMES",
    "Engine",
    "ImageJob",
    "LoadProgress",
    "PromptReader",
    "StepProgress",
    "cuda_bf16_is_native",
    "default_cuda_dtype",
    "image_seed",
    "resolve_device_and_dtype",
    "warn_if_bf16_is_emulated",
]

log = logging.getLogger(__name__)

SEED_MAX = 2**63 - 1


def _always_wanted() -> bool:
    return True


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


#: the compute capability from which NVIDIA GPUs compute bfloat16 natively (Ampere, sm_80)
BF16_CUDA_CAPABILITY = (8, 0)


def cuda_bf16_is_native(device: torch.device) -> bool:
    """True where the GPU has bf16 tensor cores (sm_80 and newer); False on Turing (Colab's T4)."""
    import torch

    return tuple(torch.cuda.get_device_capability(device)) >= BF16_CUDA_CAPABILITY


def default_cuda_dtype(device: torch.device) -> str:
    """``"fp16"`` on every GPU: Volta and Turing (Colab's T4) have fp16 tensor cores and emulate
    bf16; on Ampere and newer both run at the same speed and fp16 keeps 3 more mantissa bits."""
    del device  # the same choice on every capability; kept so the choice has one place
    return "fp16"


def warn_if_bf16_is_emulated(device: torch.device, name: str) -> None:
    """Log a warning when bf16 is asked for on a GPU without bf16 tensor cores (several times slower)."""
    import torch

    if name != "bfloat16" or device.type != "cuda" or not torch.cuda.is_available():
        return
    if not cuda_bf16_is_native(device):
        major, minor = torch.cuda.get_device_capability(device)
        log.warning(
            "dtype bf16 on a GPU of compute capability %d.%d (before Ampere) is emulated and "
            "several times slower; use dtype fp16 (the default)",
            major,
            minor,
        )


def resolve_device_and_dtype(device: str | None, dtype: str | None) -> tuple[torch.device, str]:
    """The torch device and dtype name an engine runs with.

    ``device=None`` means CUDA when a GPU is visible, else CPU; ``dtype=None`` means float16 on
    CUDA (:func:`default_cuda_dtype`) and float32 on CPU (CPUs have no fast half precision).
    Raises ValueError naming the bad argument, so the server can tell the user which flag to fix;
    bf16 on a GPU before Ampere logs a warning.
    """
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = torch.device(device)
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', not {device!r}")
    auto = default_cuda_dtype(resolved) if resolved.type == "cuda" else "fp32"
    name = dtype if dtype is not None else auto
    if name not in DTYPE_NAMES:
        raise ValueError(f"dtype must be one of fp32, fp16, bf16, not {dtype!r}")
    warn_if_bf16_is_emulated(resolved, DTYPE_NAMES[name])
    return resolved, DTYPE_NAMES[name]


@dataclasses.dataclass(frozen=True)
class ImageJob:
    """One image to make: the prompt, the request's seed and this image's index in the request."""

    prompt: str
    seed: int
    index: int
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: False once nobody waits for this image (read from the engine's thread, between steps)
    is_wanted: Callable[[], bool] = dataclasses.field(default=_always_wanted, compare=False, repr=False)

    @property
    def image_seed(self) -> int:
        """The seed of this image's own generator."""
        return image_seed(self.seed, self.index)


#: ``(fraction 0..1, message)`` while weights download or load
LoadProgress = Callable[[float, str], None]
#: ``(step, total, previews or None)`` during generation; previews align with the jobs (``None``
#: for an image the engine stopped making)
StepProgress = Callable[[int, int, "Sequence[Image.Image | None] | None"], None]


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
    ) -> Sequence[Image.Image | None]:
        """Make one RGB image per job, in order. Raise EngineError with a clear message on failure.

        ``None`` may stand for a job whose :attr:`ImageJob.is_wanted` was False (never otherwise).
        """

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

    @property
    def engine_thread(self) -> EngineThread:
        """The thread this engine's torch work runs on (see :mod:`.engine_thread` for why one).

        Callers that schedule work themselves (the server's batcher) submit it here; the CPU
        engines' own methods move onto it whoever calls them.
        """
        return engine_thread_of(self)

    def describe(self) -> dict[str, Any]:
        """Facts for ``GET /``: name, device, max_batch."""
        return {"engine": self.name, "device": self.device, "max_batch": self.max_batch}
