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

Which activations: the kernel multiplies 8-bit weights by 8-bit (unsigned) activations. On x86
CPUs without VNNI it does so with ``vpmaddubsw``, whose 16-bit sums of two products saturate, so
there the activations are reduced to 7 bits (``reduce_range``). CPUs with int8 dot products
(AVX-512 VNNI, AVX-VNNI, AMX; Arm's ``sdot``) sum exactly and take the full 8 bits, which halves
the rounding error. :func:`choose_kernel` picks at load from the CPU's flags
(:mod:`speech2image_nb.cpu`); :data:`KERNELS` names the choices. Measured on a Xeon (Sapphire
Rapids, 2 cores), the decoder's shapes at 1 and 4 images: full 8-bit activations were as fast as 7
(often faster) with 1.6x smaller relative error (0.011 against 0.018); ``torch._int_mm`` (what
torchao's eager int8 path calls) was 1.5-5x slower at these row counts, and oneDNN's
``qlinear_pointwise`` about as fast as fbgemm, so fbgemm stays (``benchmarks/RESULTS.md``).

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

__all__ = ["KERNELS", "Int8Linear", "choose_kernel", "int8_available", "quantize_linears"]

#: smallest row scale (a row of zeros stays zeros)
_MIN_ROW_SCALE = 1e-12

#: int8 kernel paths -> bits of the activations: fbgemm without VNNI (AVX2), fbgemm with int8 dot
#: products (VNNI / AVX-VNNI / AMX), qnnpack on Arm (which has no reduced range)
KERNELS: dict[str, int] = {"fbgemm-7bit": 7, "fbgemm-8bit": 8, "qnnpack-8bit": 8}


def choose_kernel() -> str:
    """The int8 kernel path for this CPU: 8-bit activations where int8 dot products are exact."""
    from ....cpu import has_int8_dot_product, is_arm

    if is_arm():
        return "qnnpack-8bit"
    return "fbgemm-8bit" if has_int8_dot_product() else "fbgemm-7bit"


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
    """A bias-free ``nn.Linear`` with 8-bit weights (per output channel) and 8- or 7-bit activations
    (per row), for CPU inference. Built from an fp32 ``nn.Linear``; the fp32 weight is not kept."""

    def __init__(self, linear: nn.Linear, *, kernel: str = "fbgemm-7bit") -> None:
        super().__init__()
        if linear.bias is not None:
            raise ValueError("Int8Linear takes bias-free layers (DALL-E BART has no biases)")
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(KERNELS)}, not {kernel!r}")
        self.in_features: int = linear.in_features
        self.out_features: int = linear.out_features
        self.kernel: str = kernel
        self._reduce_range: bool = KERNELS[kernel] == 7
        self._packed: torch.Tensor
        self._packed, self.weight_scale = _pack(linear.weight)
        #: scaled rows by row count, the last row holding -1 and 1: it fixes the kernel's activation
        #: range to [-1, 1] (kept, so that a call writes into it instead of concatenating)
        self._scaled: dict[int, torch.Tensor] = {}

    def _scaled_rows(self, count: int) -> torch.Tensor:
        scaled = self._scaled.get(count)
        if scaled is None:
            with torch.inference_mode(False):  # written in and out of inference mode alike
                scaled = torch.zeros(count + 1, self.in_features)
            scaled[-1, 0], scaled[-1, -1] = -1.0, 1.0
            self._scaled[count] = scaled
        return scaled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()
        # abs().amax(): 7 us for [3, 1024], half of linalg.vector_norm(ord=inf) (14.6 us), 2 threads
        row_scale = rows.abs().amax(dim=1, keepdim=True).clamp_(min=_MIN_ROW_SCALE)
        scaled = self._scaled_rows(rows.shape[0])
        torch.div(rows, row_scale, out=scaled[:-1])
        out = torch.ops.quantized.linear_dynamic(scaled, self._packed, self._reduce_range)
        out = out[:-1].mul_(row_scale)
        return out.view(*x.shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 ({self.kernel})"


def quantize_linears(
    module: nn.Module, *, kernel: str = "fbgemm-7bit", on_layer: Callable[[int, int], None] | None = None
) -> int:
    """Replace every ``nn.Linear`` inside ``module`` by an :class:`Int8Linear` for ``kernel``, in place.

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
        setattr(parent, name, Int8Linear(child, kernel=kernel))
        if on_layer is not None:
            on_layer(done, len(targets))
    return len(targets)
