"""Speed of our DALL-E mini/mega engine against min-dalle's own modules, and of SD-Turbo-shaped diffusers.

Both DALL-E implementations run the same random full-size weights (random weights cost the same
FLOPs and bytes as the real checkpoints, and need no download).

    python benchmarks/engine_speed.py --mode gpu    # CUDA: 1/4/9/16 images, mini & mega, fp16 & bf16
    python benchmarks/engine_speed.py --mode cpu    # CPU: min-dalle, our fp32 and our int8 path, 1 & 4 images

GPU mode (options ``--variants``, ``--dtypes``, ``--counts``, ``--skip-min-dalle``,
``--skip-diffusers``, ``--profile``) prints a table (seconds per request, decoder ms/step, peak
memory, speed-up over min-dalle), with ``--profile`` a profiler table of one eager decoder step of
ours, and SD-Turbo-shaped random diffusers timings at 1 and 9 images. Without a CUDA GPU it says
so and exits 0.

CPU mode (``--variants`` default mini, ``--counts`` default 1 4, ``--threads`` default the
physical cores) prints, from one run over the same full-size random weights, min-dalle's modules,
our fp32 reference path and our int8 fast path: seconds per request, decoder ms/step, the
speed-ups, a profiler table of one int8 decoder step, the same int8 engine called directly and
through the public API (``start_background`` + ``ImageClient``: the serving overhead), and an
SD-Turbo-shaped pipeline at 512 px with its full VAE and with the tiny autoencoder. It prints the
machine, the CPU flags the engines choose their kernels by, and the load average, since a shared
machine's numbers move with the load. Run from the repository root so
``tests.dalle_reference`` (min-dalle's modules built without network) imports.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from speech2image_nb.server.engines.base import ImageJob  # noqa: E402
from speech2image_nb.server.engines.dalle_mini import DalleMiniEngine, save_random_checkpoint  # noqa: E402
from speech2image_nb.server.engines.dalle_mini.config import IMAGE_TOKEN_COUNT, VARIANTS  # noqa: E402
from speech2image_nb.server.engines.engine_thread import EngineThread  # noqa: E402
from tests.dalle_reference import build_min_dalle  # noqa: E402

PROMPT = "a red fox sitting in the snow"
#: CPU flags behind the engines' choices: int8 kernels (VNNI / AMX versus AVX2) and bf16
CHOICE_FLAGS = frozenset(
    {"avx2", "avx512_vnni", "avx_vnni", "amx_int8", "avx512_bf16", "amx_bf16", "asimddp"}
)
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_ours(engine: DalleMiniEngine, count: int, device: str) -> tuple[float, float, float]:
    """(seconds for the whole request, decoder ms/step, peak GiB) of our engine, after a warm-up."""
    jobs = [ImageJob(PROMPT, 1, i) for i in range(count)]
    engine.generate(jobs)  # warm-up: captures the CUDA graph of this batch size
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    started = time.perf_counter()
    engine.generate(jobs)
    sync(device)
    total = time.perf_counter() - started
    started = time.perf_counter()
    engine.sample_image_tokens([PROMPT] * count, list(range(count)))
    sync(device)
    step_ms = (time.perf_counter() - started) / 256 * 1000
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
    return total, step_ms, peak


def time_min_dalle(model, count: int, device: str, *, warm_up: bool = True) -> tuple[float, float]:
    """(seconds, peak GiB) of min-dalle's ``generate_images`` for a square grid of ``count`` images."""
    grid = round(count**0.5)
    assert grid * grid == count
    with contextlib.ExitStack() as stack:
        import warnings

        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")
        stack.enter_context(torch.inference_mode())
        if warm_up:
            model.generate_images(PROMPT, 1, grid_size=grid)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        sync(device)
        started = time.perf_counter()
        model.generate_images(PROMPT, 1, grid_size=grid)
        sync(device)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
    return time.perf_counter() - started, peak


def profile_step(
    engine: DalleMiniEngine, count: int, *, token_count: int = IMAGE_TOKEN_COUNT, device: str = "cuda"
) -> str:
    """Profiler table of one generation with eager steps (CUDA graphs off, so each kernel shows).

    ``token_count`` stops after that many decoder steps (default all of them); on a CPU ``device`` the
    table has CPU time only.
    """
    from torch.profiler import ProfilerActivity, profile

    on_cuda = device.startswith("cuda")
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if on_cuda else [ProfilerActivity.CPU]
    graphs = engine.use_cuda_graphs
    engine.use_cuda_graphs = False

    def profiled() -> Any:
        engine.sample_image_tokens([PROMPT] * count, list(range(count)), token_count=2)  # warm-up
        with profile(activities=activities) as prof:
            engine.sample_image_tokens([PROMPT] * count, list(range(count)), token_count=token_count)
            sync(device)
        return prof

    try:
        prof = engine.engine_thread.run(profiled)  # the profiler sees the thread it was started on
    finally:
        engine.use_cuda_graphs = graphs
    sort_by = "cuda_time_total" if on_cuda else "self_cpu_time_total"
    return str(prof.key_averages().table(sort_by=sort_by, row_limit=20))


def diffusers_turbo_shaped(
    device: str, counts: list[int], *, shape: str = "sd-turbo"
) -> Iterator[tuple[int, float]]:
    """Seconds per request of a random SD-Turbo-shaped pipeline (SD 2.1 sizes), 1 step, 512 px.

    Yields ``(images, seconds)`` as each count is measured. ``shape="tiny"`` times the tests' tiny
    pipeline instead. The full VAE decodes (the CUDA default;
    the tiny autoencoder would need a download).
    """
    from speech2image_nb.server.engines.diffusers import DiffusersEngine, save_random_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        folder = save_random_pipeline(Path(tmp) / f"{shape}-shaped", shape=shape)
        engine = DiffusersEngine(model_dir=str(folder), device=device, max_batch=max(counts), vae="full")
        engine.load()
        for count in counts:
            jobs = [ImageJob(PROMPT, 1, i, {"steps": 1, "guidance_scale": 0.0}) for i in range(count)]
            engine.generate(jobs)
            sync(device)
            started = time.perf_counter()
            engine.generate(jobs)
            sync(device)
            yield count, time.perf_counter() - started


def gpu_mode(args: argparse.Namespace) -> int:
    if not torch.cuda.is_available():
        print(
            "engine_speed: no CUDA GPU here, so the GPU benchmark is skipped (run --mode cpu for the CPU one)."  # noqa: E501
        )
        return 0
    device = "cuda"
    print(f"# engine_speed on {torch.cuda.get_device_name()} (torch {torch.__version__})\n")
    rows = []
    for variant in args.variants:
        config = VARIANTS[variant]
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            save_random_checkpoint(tmp, variant, seed=0)
            print(f"random {variant} checkpoint written in {time.perf_counter() - started:.0f} s", flush=True)
            for dtype in args.dtypes:
                engine = DalleMiniEngine(
                    config.is_mega, model_dir=tmp, device=device, dtype=dtype, max_batch=16
                )
                engine.load()
                reference = (
                    None
                    if args.skip_min_dalle
                    else build_min_dalle(Path(tmp), config, device=device, dtype=DTYPES[dtype])
                )
                for count in args.counts:
                    ours, step_ms, our_peak = time_ours(engine, count, device)
                    theirs, their_peak = (float("nan"), float("nan"))
                    if reference is not None:
                        theirs, their_peak = time_min_dalle(reference, count, device)
                    rows.append(
                        (variant, dtype, count, theirs, ours, theirs / ours, step_ms, their_peak, our_peak)
                    )
                    print("  " + " | ".join(str(x) for x in rows[-1]), flush=True)
                if args.profile and dtype == args.dtypes[0]:
                    print(
                        f"\nprofile of ours, {variant} {dtype}, 4 images, eager steps:\n{profile_step(engine, 4)}\n"  # noqa: E501
                    )
                del engine, reference
                torch.cuda.empty_cache()
    print(
        "\n| variant | dtype | images | min-dalle s | ours s | speed-up | ours ms/step | peak GiB min-dalle | peak GiB ours |"  # noqa: E501
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for v, d, n, theirs, ours, ratio, step_ms, tp, op in rows:
        print(
            f"| {v} | {d} | {n} | {theirs:.2f} | {ours:.3f} | {ratio:.1f}x | {step_ms:.2f} | {tp:.2f} | {op:.2f} |"  # noqa: E501
        )
    if not args.skip_diffusers:
        print("\n| SD-Turbo-shaped (random), 1 step, 512 px, fp16 | seconds |")
        print("|---|---|")
        for count, seconds in diffusers_turbo_shaped(device, [1, 9]):
            print(f"| {count} image(s) | {seconds:.3f} |")
    return 0


#: CPU mode's one thread for all torch work: every engine, min-dalle's modules and the random
#: weights run there, so the process has one OpenMP team (two would slow each other down: see
#: ``speech2image_nb/server/engines/engine_thread.py``)
TORCH_THREAD = EngineThread("s2i-benchmark-torch")


def sharing_torch_thread(engine: Any) -> Any:
    """``engine``, set to run its work on :data:`TORCH_THREAD` instead of a thread of its own."""
    engine.__dict__["_engine_thread"] = TORCH_THREAD
    return engine


def cpu_description() -> str:
    """The CPU model, the instruction sets the engines choose by, and the load average."""
    from speech2image_nb.cpu import cpu_flags, cpu_model, has_int8_dot_product
    from speech2image_nb.server.engines.cpu import bf16_is_native, physical_core_count

    model = cpu_model()
    chosen_by = sorted(cpu_flags() & CHOICE_FLAGS) or ["none of " + ", ".join(sorted(CHOICE_FLAGS))]
    return (
        f"{model}, {physical_core_count()} physical cores, torch CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}; flags the engines choose by: {' '.join(chosen_by)} "
        f"(int8 dot products: {has_int8_dot_product()}, native bf16: {bf16_is_native()}); "
        f"load average {load_average()}"
    )


def load_average() -> str:
    """The 1, 5 and 15 minute load averages (a shared machine's numbers move with them)."""
    return " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def step_ms_interleaved(
    timers: dict[str, Callable[[int], None]], *, steps: int = 16, rounds: int = 3
) -> dict[str, float]:
    """Decoder ms/step of each implementation, alternating short runs and keeping each one's best.

    On a shared machine the load changes from minute to minute; alternating runs of ``steps``
    tokens exposes every implementation to the same conditions.
    """
    best = dict.fromkeys(timers, float("inf"))
    for _ in range(rounds):
        for name, run in timers.items():
            started = time.perf_counter()
            run(steps)
            best[name] = min(best[name], (time.perf_counter() - started) / steps * 1000)
    return best


def time_generate(engine: DalleMiniEngine, count: int) -> float:
    """Seconds of one request of ``count`` images (encode, 256 steps, VQGAN), no warm-up."""
    jobs = [ImageJob(PROMPT, 1, i) for i in range(count)]
    started = time.perf_counter()
    engine.generate(jobs)
    return time.perf_counter() - started


def profile_cpu_step(engine: DalleMiniEngine, steps: int = 8) -> str:
    """Profiler table of ``steps`` decoder steps of one image (self CPU time, per op)."""
    from torch.profiler import ProfilerActivity, profile

    def profiled() -> Any:
        engine.sample_image_tokens([PROMPT], [1], token_count=2)  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            engine.sample_image_tokens([PROMPT], [1], token_count=steps)
        return prof

    prof = engine.engine_thread.run(profiled)  # the profiler sees the thread it was started on
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    return f"{steps} steps (encoder included once):\n{table}"


def cpu_dalle(
    args: argparse.Namespace, variant: str, threads: int, api_rows: list[tuple[Any, ...]]
) -> list[tuple[Any, ...]]:
    """Rows ``(variant, images, min-dalle s, fp32 s, int8 s, ms/step x3)`` for one variant; the
    rows of :func:`cpu_api_rows` are appended to ``api_rows``."""
    from tests.dalle_reference import min_dalle_first_tokens

    config = VARIANTS[variant]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        TORCH_THREAD.run(save_random_checkpoint, tmp, variant, seed=0)
        print(f"random {variant} checkpoint written in {time.perf_counter() - started:.0f} s", flush=True)
        engines = {}
        for dtype in ("int8",) if args.skip_fp32 else ("fp32", "int8"):
            engine = DalleMiniEngine(
                config.is_mega,
                model_dir=tmp,
                device="cpu",
                dtype=dtype,
                threads=threads,
                preview_budget=math.inf,
            )
            sharing_torch_thread(engine)
            started = time.perf_counter()
            engine.load()
            kernel = f", int8 kernel {engine.int8_kernel}" if engine.int8_kernel else ""
            print(f"ours {dtype}: loaded in {time.perf_counter() - started:.1f} s{kernel}", flush=True)
            engines[dtype] = engine
        reference = None if args.skip_min_dalle else TORCH_THREAD.run(build_min_dalle, Path(tmp), config)
        timers: dict[str, Callable[[int], None]] = {
            name: (lambda n, e=engine: e.sample_image_tokens([PROMPT], [1], token_count=n))
            for name, engine in engines.items()
        }
        if reference is not None:
            timers["min-dalle"] = lambda n: TORCH_THREAD.run(min_dalle_first_tokens, reference, PROMPT, 1, n)
        step_ms = step_ms_interleaved(timers)
        print("decoder ms/step (best of 3 alternating runs of 16 steps, 1 image):", step_ms, flush=True)
        for count in args.counts:
            theirs = math.nan
            if reference is not None and round(count**0.5) ** 2 == count:
                theirs, _ = TORCH_THREAD.run(time_min_dalle, reference, count, "cpu", warm_up=False)
            ours = {name: time_generate(engine, count) for name, engine in engines.items()}
            rows.append((variant, count, theirs, ours.get("fp32", math.nan), ours["int8"], step_ms))
            print(f"  {variant}, {count} image(s): min-dalle {theirs:.1f} s, ours {ours}", flush=True)
        print(f"\nprofile of ours, {variant} int8, one image:\n{profile_cpu_step(engines['int8'])}\n")
        engines.pop("fp32", None)  # free its memory before the server loads the int8 engine again
        del timers
        reference = None
        api_rows.extend(cpu_api_rows(engines["int8"], variant, args.counts))
    return rows


def cpu_api_rows(engine: DalleMiniEngine, variant: str, counts: list[int]) -> list[tuple[Any, ...]]:
    """Rows ``(variant, images, direct s, API s)``: the loaded int8 engine called directly and
    through the public API (``start_background`` + ``ImageClient``), alternating, best of 2 each.

    The API path is the user's: the classroom filter at its default level, so every picture also
    goes through the picture check (a random ViT-base/16, the default model's shape and cost).

    The server loads the same engine object again (on the engine's thread, as for a user), so
    both paths run the same weights; alternating exposes both to the same load on a shared machine.
    """
    from benchmarks.safety_images import save_vit_base
    from speech2image_nb.server import start_background

    rows = []
    with tempfile.TemporaryDirectory() as checker_dir:
        # on the torch thread: torch work on this (main) thread would leave it an OpenMP team of
        # its own, and a second team slows every step of the engine (see ``engine_thread``)
        checker = TORCH_THREAD.run(save_vit_base, Path(checker_dir) / "picture-check")
        started = time.perf_counter()
        server = start_background(engine, ready_timeout_s=900, image_checker=str(checker))
        ready_s = time.perf_counter() - started
        print(f"API: server ready in {ready_s:.1f} s (loads the engine again)", flush=True)
        try:
            rows += _api_rounds(server, engine, variant, counts)
        finally:
            server.stop()
    return rows


def _api_rounds(
    server: Any, engine: DalleMiniEngine, variant: str, counts: list[int]
) -> list[tuple[Any, ...]]:
    """Per count, the engine called directly and through ``server``, alternating, best of 2 each."""
    from speech2image_nb.images.client import ImageClient

    rows = []
    with ImageClient(server.url) as client:
        client.generate(PROMPT, seed=1)  # warm-up, as the direct path had
        for count in counts:
            best = {"direct": math.inf, "api": math.inf}
            for _ in range(2):
                best["direct"] = min(best["direct"], time_generate(engine, count))
                started = time.perf_counter()
                client.generate(PROMPT, num_images=count, seed=1)
                best["api"] = min(best["api"], time.perf_counter() - started)
            rows.append((variant, count, best["direct"], best["api"]))
            print(f"  {variant}, {count} image(s), int8: {best} (load {load_average()})", flush=True)
    return rows


def cpu_diffusers(threads: int) -> list[tuple[str, float]]:
    """Seconds of one 512 px SD-Turbo-shaped image (random weights) with the full VAE and with TAESD."""
    from speech2image_nb.server.engines.diffusers import (
        DiffusersEngine,
        save_random_pipeline,
        save_random_tiny_vae,
    )

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = TORCH_THREAD.run(save_random_pipeline, Path(tmp) / "sd-turbo-shaped", shape="sd-turbo")
        tiny = TORCH_THREAD.run(save_random_tiny_vae, Path(tmp) / "taesd-shaped", shape="taesd")
        for vae in ("full", "tiny"):
            engine = DiffusersEngine(
                model_dir=str(folder), device="cpu", vae=vae, tiny_vae_id=tiny, threads=threads
            )
            sharing_torch_thread(engine)
            engine.load()
            job = ImageJob(PROMPT, 1, 0, {"steps": 1, "guidance_scale": 0.0})
            engine.generate([job])  # warm-up
            started = time.perf_counter()
            image = engine.generate([job])[0]
            precision = "bf16 autocast" if engine.cpu_bf16 else "fp32"
            results.append((f"{vae} VAE, {image.size[0]} px, {precision}", time.perf_counter() - started))
            print(f"  SD-Turbo-shaped, {results[-1][0]}: {results[-1][1]:.1f} s", flush=True)
            del engine
    return results


def cpu_mode(args: argparse.Namespace) -> int:
    from speech2image_nb.server.engines.cpu import physical_core_count

    threads = args.threads or physical_core_count()
    torch.set_num_threads(threads)  # min-dalle's modules run on the global setting (read by TORCH_THREAD)
    print(f"# engine_speed CPU mode, {threads} threads, torch {torch.__version__}")
    print(f"# {cpu_description()}\n", flush=True)
    rows: list[tuple[Any, ...]] = []
    api_rows: list[tuple[Any, ...]] = []
    for variant in args.variants:
        rows += cpu_dalle(args, variant, threads, api_rows)
    print(f"\n# at the end: {cpu_description()}")
    print(
        "\n| variant | images | min-dalle s | ours fp32 s | ours int8 s | int8 vs min-dalle | int8 vs fp32 "
        "| ms/step min-dalle / fp32 / int8 |\n|---|---|---|---|---|---|---|---|"
    )
    for variant, count, theirs, fp32, int8, step in rows:
        steps = " / ".join(f"{step.get(k, math.nan):.0f}" for k in ("min-dalle", "fp32", "int8"))
        print(
            f"| {variant} | {count} | {theirs:.1f} | {fp32:.1f} | {int8:.1f} | {theirs / int8:.1f}x "
            f"| {fp32 / int8:.1f}x | {steps} |"
        )
    print(
        "\n| variant | images | int8 called directly s | int8 through start_background + ImageClient s "
        "| API / direct |\n|---|---|---|---|---|"
    )
    for variant, count, direct, api in api_rows:
        print(f"| {variant} | {count} | {direct:.2f} | {api:.2f} | {api / direct:.2f} |")
    if not args.skip_diffusers:
        results = cpu_diffusers(threads)
        print(f"\n| SD-Turbo-shaped (random), 1 step, 1 image, {threads} threads | seconds |\n|---|---|")
        for name, seconds in results:
            print(f"| {name} | {seconds:.1f} |")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--mode", choices=("gpu", "cpu"), default="gpu", help="default gpu (skips without CUDA)"
    )
    parser.add_argument(
        "--variants", nargs="+", choices=("mini", "mega"), help="default: gpu mini mega, cpu mini"
    )
    parser.add_argument(
        "--dtypes",
        nargs="+",
        default=["fp16", "bf16"],
        choices=tuple(DTYPES),
        help="gpu mode (default fp16 bf16)",
    )
    parser.add_argument(
        "--counts", nargs="+", type=int, help="images per request (default: gpu 1 4 9 16, cpu 1 4)"
    )
    parser.add_argument("--skip-min-dalle", action="store_true", help="time only ours")
    parser.add_argument("--skip-diffusers", action="store_true", help="no SD-Turbo-shaped timings")
    parser.add_argument("--skip-fp32", action="store_true", help="cpu mode: not our fp32 reference path")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="gpu mode: a profiler table of eager steps (cpu mode always prints one)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: cpu mode the physical cores, gpu mode torch's)",
    )
    args = parser.parse_args(argv)
    is_cpu = args.mode == "cpu"
    args.variants = args.variants or (["mini"] if is_cpu else ["mini", "mega"])
    args.counts = args.counts or ([1, 4] if is_cpu else [1, 4, 9, 16])
    if args.threads is not None and not is_cpu:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    return gpu_mode(args) if args.mode == "gpu" else cpu_mode(args)


if __name__ == "__main__":
    sys.exit(main())
