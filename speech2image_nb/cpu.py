"""Whether this machine's CPU multiplies int8 exactly, for choosing a model's number format.

Why it matters: the same int8 model gives different answers on different x86 CPUs. Without the
VNNI dot-product instructions (AVX2-only and early AVX-512 CPUs: many laptops, older servers),
int8 matrix products go through ``vpmaddubsw``, whose 16-bit intermediate sums saturate (oneDNN's
"nuances of int8 computations"); with VNNI they do not. Engines ask here instead of assuming the CPU
they were measured on. (The image engines, which run on torch, ask torch about bf16: see
``speech2image_nb.server.engines.cpu``.)

Nothing is read at import; the answer is computed once, on first use.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

__all__ = ["cpu_flags", "cpu_model", "has_int8_dot_product", "is_arm", "parse_cpuinfo_flags"]

#: flags (as Linux spells them) that give int8 dot products without 16-bit saturation
_INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
#: numpy's names for the same features, where /proc/cpuinfo cannot be read (macOS, Windows)
_NUMPY_NAMES = {"AVX512VNNI": "avx512_vnni"}


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags, lower case as Linux names them (empty when they cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        text = ""
    flags = parse_cpuinfo_flags(text)
    return flags if flags is not None else _numpy_flags()


def cpu_model() -> str:
    """The CPU's model name as ``/proc/cpuinfo`` gives it (benchmarks put it in every table)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def parse_cpuinfo_flags(text: str) -> frozenset[str] | None:
    """The first ``flags`` (x86) or ``Features`` (ARM) line of ``/proc/cpuinfo``; None if absent."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return None


def _numpy_flags() -> frozenset[str]:
    """numpy's view of the CPU (a private table, hence the guard): where /proc/cpuinfo is absent."""
    import importlib

    features: dict[str, bool] = {}
    for module in ("numpy._core._multiarray_umath", "numpy.core._multiarray_umath"):
        try:
            features = getattr(importlib.import_module(module), "__cpu_features__", {})
            break
        except ImportError:
            continue
    return frozenset(_NUMPY_NAMES.get(name, name.lower()) for name, present in features.items() if present)


def is_arm() -> bool:
    """True on 64-bit Arm (Apple silicon, most Chromebooks, Arm servers)."""
    return platform.machine().lower() in ("arm64", "aarch64")


def has_int8_dot_product() -> bool:
    """True where int8 matrix products are exact to 32 bits: ARM (``sdot``/NEON) or x86 with VNNI."""
    return is_arm() or bool(cpu_flags() & _INT8_DOT_FLAGS)
