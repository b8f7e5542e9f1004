"""CPU facts the engines tune themselves by: physical cores, native bf16, and a scoped thread count.

torch's intra-op thread count is a process-wide setting. Engines set it only around their own
work (:func:`torch_threads`) and put the previous value back, so importing or creating an engine
changes nothing for the rest of the process.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["THREADS_ENV", "bf16_is_native", "physical_core_count", "resolve_threads", "torch_threads"]

#: environment variable that sets the engines' CPU threads (default: the physical cores)
THREADS_ENV = "S2I_CPU_THREADS"


@functools.cache
def physical_core_count() -> int:
    """Physical cores this process may run on (hyper-threads share a core's arithmetic units).

    Reads Linux's CPU topology for the CPUs in this process's affinity mask; elsewhere, or when
    the topology is unreadable, the logical CPU count.
    """
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            package = (topology / "physical_package_id").read_text().strip()
            core = (topology / "core_id").read_text().strip()
        except OSError:
            return max(1, len(cpus))
        cores.add((package, core))
    return max(1, len(cores))


def resolve_threads(threads: int | None) -> int:
    """The engine's thread count: ``threads``, else ``$S2I_CPU_THREADS``, else the physical cores."""
    if threads is None:
        value = os.environ.get(THREADS_ENV, "").strip()
        if value:
            try:
                threads = int(value)
            except ValueError:
                raise ValueError(f"{THREADS_ENV} must be a whole number of threads, not {value!r}") from None
        else:
            threads = physical_core_count()
    if threads < 1:
        raise ValueError(f"threads must be at least 1, not {threads}")
    return threads


@functools.cache
def bf16_is_native() -> bool:
    """True where the CPU computes bfloat16 natively (AVX-512 BF16, AMX, Arm BF16).

    Elsewhere oneDNN emulates bf16 convolutions, which then run several times slower than fp32.
    """
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with ``count`` torch intra-op threads, then restore the previous count."""
    import torch

    previous = torch.get_num_threads()
    if previous == count:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
