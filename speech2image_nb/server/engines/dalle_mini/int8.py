# mypy: disable-error-code="no-any-return"
"""8-bit weights for the Linear layers of the text encoder and the image-token decoder (CPU only).

Why: on a CPU, one decoder step at batch 1 reads every decoder weight once, so its time is the
bytes of the weights over the memory bandwidth. 8-bit weights read a quarter of the fp32 bytes,
and the step becomes several times faster (measured in ``benchmarks/RESULTS.md``).

How: each ``nn.Linear`` becomes an :class:`Int8Linear` holding its weight as int8 with one scale
per output channel, packed once at load for PyTorch's own int8 CPU kernel
(``quantized::linear_dynamic``: fbgemm on x86, qnnpack on Arm), which quantizes the activations
to 8 bits on the fly and accumulates in int32. Among the int8 matrix products PyTorch and torchao
offer today it is the only one faster than fp32 on CPUs without AVX-512 when run eagerly (no
``torch.compile``, no C++ compiler on the user's machine); torchao's CPU paths target
``torch.compile``. Packing goes through ``torch.quantize_per_channel``, whose quantized dtypes
PyTorch has announced it will remove: :func:`int8_available` then answers False and the engine
stays in fp32 (see :func:`int8_available`).

The kernel would quantize the activations with one scale for the whole batch, so an image would
depend on the other images of its batch. :class:`Int8Linear` therefore scales every row to
``[-1, 1]`` first and appends one row holding -1 and 1: the kernel's scale and zero point are then
the same for every batch, each row is quantized with its own scale, and a picture is the same
alone or in a batch.
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["Int8Linear", "int8_available", "quantize_linears"]

#: smallest row scale (a row of zeros stays zeros)
_MIN_ROW_SCALE = 1e-12


def _pack(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Int8 weight ``[out, in]`` with per-output-channel scales, packed for the CPU kernel."""
    weight = weight.detach().float()
    scale = (weight.abs().amax(dim=1) / 127).clamp(min=_MIN_ROW_SCALE)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        quantized = torch.quantize_per_channel(
            weight, scale.double(), torch.zeros(weight.shape[0], dtype=torch.long), 0, torch.qint8
        )
        packed = torch.ops.quantized.linear_prepack(quantized, None)
    return packed, scale


@functools.cache
def int8_available() -> bool:
    """True where this PyTorch build has the int8 CPU kernel (it packs and runs a tiny layer).

    The probe runs on a thread of its own that then ends: run on the caller's thread (an engine's
    constructor, often the notebook's main thread) it would leave that thread an OpenMP team, and
    a second team slows every engine step down (see ``..engine_thread``).
    """
    answer: list[bool] = []
    probe = threading.Thread(target=lambda: answer.append(_run_tiny_int8_layer()), name="s2i-int8-probe")
    probe.start()
    probe.join()
    return bool(answer and answer[0])


def _run_tiny_int8_layer() -> bool:
    try:
        layer = Int8Linear(nn.Linear(8, 4, bias=False))
        with torch.inference_mode():
            layer(torch.ones(2, 8))
    except (RuntimeError, AttributeError, NotImplementedError):
        return False
    return True


class Int8Linear(nn.Module):
    """A bias-free ``nn.Linear`` with 8-bit weights (per output channel) and 8-bit activations
    (per row), for CPU inference. Built from an fp32 ``nn.Linear``; the fp32 weight is not kept."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        if linear.bias is not None:
            raise ValueError("Int8Linear takes bias-free layers (DALL-E BART has no biases)")
        self.in_features: int = linear.in_features
        self.out_features: int = linear.out_features
        self._packed: torch.Tensor
        self._packed, self.weight_scale = _pack(linear.weight)
        #: appended to every input: it fixes the kernel's activation range to [-1, 1]
        self.range_row: torch.Tensor = torch.zeros(1, self.in_features)
        self.range_row[0, 0], self.range_row[0, -1] = -1.0, 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()
        row_scale = rows.abs().amax(dim=1, keepdim=True).clamp_(min=_MIN_ROW_SCALE)
        scaled = torch.cat([rows / row_scale, self.range_row])
        out = torch.ops.quantized.linear_dynamic(scaled, self._packed, True)[:-1].mul_(row_scale)
        return out.view(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def quantize_linears(module: nn.Module, *, on_layer: Callable[[int, int], None] | None = None) -> int:
    """Replace every ``nn.Linear`` inside ``module`` by an :class:`Int8Linear`, in place.

    ``on_layer(done, total)`` is called after each layer (quantizing the full-size mini takes
    seconds, mega longer: the caller shows it as load progress). Returns the number replaced.
    """
    targets = [
        (parent, name, child)
        for parent in module.modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.Linear)
    ]
    for done, (parent, name, child) in enumerate(targets, start=1):
        setattr(parent, name, Int8Linear(child))
        if on_layer is not None:
            on_layer(done, len(targets))
    return len(targets)
