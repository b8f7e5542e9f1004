"""CPU feature detection: which number formats are fast and exact on this machine."""

from __future__ import annotations

import pytest

from speech2image_nb import cpu

AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\nprocessor\t: 1\nflags\t\t: fpu\n"
SKYLAKE = "flags\t\t: fpu avx2 avx512f avx512bw\n"
ICELAKE = "flags\t\t: fpu avx2 avx512f avx512_vnni\n"
SAPPHIRE = "flags\t\t: avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_int8\n"


def test_cpuinfo_flags_come_from_the_first_flags_line():
    """The first flags line is read whole; a file without one gives None."""
    assert cpu.parse_cpuinfo_flags(AVX2_ONLY) == frozenset({"fpu", "sse2", "avx", "avx2", "fma"})
    assert cpu.parse_cpuinfo_flags("processor\t: 0\n") is None


@pytest.mark.parametrize(
    ("text", "machine", "int8"),
    [
        (AVX2_ONLY, "x86_64", False),
        (SKYLAKE, "x86_64", False),
        (ICELAKE, "x86_64", True),
        (SAPPHIRE, "x86_64", True),
        ("Features\t: fp asimd asimddp\n", "aarch64", True),
    ],
)
def test_int8_follows_the_flags(monkeypatch, text, machine, int8):
    """int8 only with VNNI or AMX (or on ARM), not on AVX2-only or early AVX-512 CPUs."""
    monkeypatch.setattr(cpu, "cpu_flags", lambda: cpu.parse_cpuinfo_flags(text) or frozenset())
    monkeypatch.setattr(cpu.platform, "machine", lambda: machine)
    assert cpu.has_int8_dot_product() is int8


def test_this_machine_reports_some_flags():
    """On the test machine (Linux x86 or ARM) the flags are read, not left empty."""
    assert cpu.cpu_flags()
