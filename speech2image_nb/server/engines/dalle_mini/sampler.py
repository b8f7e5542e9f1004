"""Next-token sampling: the "supercondition" mix, top-k, temperature, and per-image noise.

The arithmetic is min-dalle's (``DalleBartDecoder.sample_tokens``): mix the unconditioned and
conditioned logits as ``u * (1 - s) + c * s``, keep the ``top_k`` largest, subtract the maximum,
divide by the temperature, exponentiate. min-dalle then calls ``torch.multinomial(probs, 1)``,
which for one sample draws ``q ~ Exp(1)`` for every entry and takes ``argmax(probs / q)``. We do
exactly that, but with the noise drawn per image, so that an image does not depend on the other
images of its batch, and without ``multinomial``'s validity check, which syncs with the host.

Two noise sources give each image its own stream:

- :class:`GeneratorNoise` fills row ``i`` with ``exponential_(generator=generators[i])``. Seeded
  like min-dalle's global RNG, it reproduces min-dalle's draws exactly (the parity tests rely on it).
- :class:`HashNoise` derives the noise from ``(seed, position, token)`` with a counter-based hash
  (splitmix64) in tensor arithmetic. It has no hidden state, so a CUDA graph can replay it: the
  engine uses it on CUDA.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .config import IMAGE_CODEBOOK_COUNT

__all__ = ["GeneratorNoise", "HashNoise", "sample_tokens"]


def sample_tokens(
    logits: torch.Tensor,
    *,
    top_k: int,
    temperature: torch.Tensor,
    supercondition_factor: torch.Tensor,
    noise: torch.Tensor,
) -> torch.Tensor:
    """Next image token of each image.

    Parameters
    ----------
    logits
        ``[2 x images, vocab]``: unconditioned rows first, then conditioned rows.
    top_k
        how many of the largest mixed logits stay candidates.
    temperature, supercondition_factor
        1-element float32 tensors (tensors, so a captured CUDA graph reads their current value).
    noise
        ``[images, 16384]`` samples of Exp(1), one row per image.

    Returns
    -------
    torch.Tensor
        ``[images]`` long token ids in ``0 .. 16383``.
    """
    image_count = logits.shape[0] // 2
    logits = logits[:, :IMAGE_CODEBOOK_COUNT].float()
    s = supercondition_factor
    mixed = logits[:image_count] * (1 - s) + logits[image_count:] * s
    top = mixed.topk(top_k, dim=-1).values
    is_kept = mixed >= top[:, top_k - 1 : top_k]
    probs = ((mixed - top[:, :1]) / temperature).exp() * is_kept.to(torch.float32)
    return (probs / noise).argmax(dim=-1)


class GeneratorNoise:
    """Exp(1) noise from one ``torch.Generator`` per image (matches ``torch.multinomial`` draws)."""

    def __init__(self, generators: Sequence[torch.Generator], *, device: torch.device) -> None:
        self.generators = list(generators)
        self.out = torch.empty((len(self.generators), IMAGE_CODEBOOK_COUNT), device=device)

    def __call__(self, position: torch.Tensor) -> torch.Tensor:
        for row, generator in zip(self.out, self.generators, strict=True):
            row.exponential_(generator=generator)
        return self.out


def _signed(value: int) -> int:
    """A 64-bit constant as the signed int64 that torch stores."""
    return value - 2**64 if value >= 2**63 else value


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _splitmix64(x: torch.Tensor) -> torch.Tensor:
    """The splitmix64 finaliser on int64 tensors (multiplication wraps modulo 2**64)."""
    x = x + _GOLDEN
    x = (x ^ _shift_right(x, 30)) * _MIX1
    x = (x ^ _shift_right(x, 27)) * _MIX2
    return x ^ _shift_right(x, 31)


class HashNoise:
    """Exp(1) noise as a pure function of ``(seed, position, token)``: replayable in a CUDA graph.

    ``seeds`` is a static ``[images]`` int64 buffer; write new seeds into it before a generation.
    """

    def __init__(self, seeds: torch.Tensor) -> None:
        self.seeds = seeds
        self.token_ids = torch.arange(IMAGE_CODEBOOK_COUNT, device=seeds.device, dtype=torch.long)

    def __call__(self, position: torch.Tensor) -> torch.Tensor:
        stream = _splitmix64(self.seeds)[:, None]
        counter = position * IMAGE_CODEBOOK_COUNT + self.token_ids
        bits = _splitmix64(stream ^ _splitmix64(counter)[None, :])
        uniform = (_shift_right(bits, 40).to(torch.float32) + 0.5) * (1.0 / 2**24)
        return -torch.log(uniform)
