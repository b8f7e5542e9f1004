"""Speed of our DALL-E mini/mega engine against min-dalle's own modules, and of SD-Turbo-shaped diffusers.

Both DALL-E implementations run the same random full-size weights (random weights cost the same
FLOPs and bytes as the real checkpoints, and need no download).

    python benchmarks/engine_speed.py --mode gpu    # CUDA: 1/4/9/16 images, mini & mega, fp16 & bf16
    python benchmarks/engine_speed.py --mode cpu    # one mini image, ours vs min-dalle, fp32

GPU mode prints a table (seconds per request, decoder ms/step, peak memory, speed-up over
min-dalle), a profiler table of one eager decoder step of ours, and SD-Turbo-shaped random
diffusers timings at 1 and 9 images. Without a CUDA GPU it says so and exits 0. Run from the
repository root so ``tests.dalle_reference`` (min-dalle's modules built without network) imports.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from speech2image_nb.server.engines.base import ImageJob  # noqa: E402
from speech2image_nb.server.engines.dalle_mini import DalleMiniEngine, save_random_checkpoint  # noqa: E402
from speech2image_nb.server.engines.dalle_mini.config import VARIANTS  # noqa: E402
from tests.dalle_reference import build_min_dalle  # noqa: E402

PROMPT = "a red fox sitting in the snow"
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


def profile_step(engine: DalleMiniEngine, count: int) -> str:
    """Profiler table of one generation with eager steps (CUDA graphs off, so each kernel shows)."""
    from torch.profiler import ProfilerActivity, profile

    graphs = engine.use_cuda_graphs
    engine.use_cuda_graphs = False
    try:
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            engine.sample_image_tokens([PROMPT] * count, list(range(count)))
            torch.cuda.synchronize()
    finally:
        engine.use_cuda_graphs = graphs
    return str(prof.key_averages().table(sort_by="cuda_time_total", row_limit=20))


def diffusers_turbo_shaped(device: str, counts: list[int]) -> list[tuple[int, float]]:
    """Seconds per request of a random SD-Turbo-shaped pipeline (SD 2.1 sizes), 1 step, 512 px."""
    from speech2image_nb.server.engines.diffusers import DiffusersEngine, save_random_pipeline

    with tempfile.TemporaryDirectory() as tmp:
        folder = save_random_pipeline(Path(tmp) / "sd-turbo-shaped", shape="sd-turbo")
        engine = DiffusersEngine(model_dir=str(folder), device=device, max_batch=max(counts))
        engine.load()
        results = []
        for count in counts:
            jobs = [ImageJob(PROMPT, 1, i, {"steps": 1, "guidance_scale": 0.0}) for i in range(count)]
            engine.generate(jobs)
            sync(device)
            started = time.perf_counter()
            engine.generate(jobs)
            sync(device)
            results.append((count, time.perf_counter() - started))
        return results


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


def step_ms_interleaved(
    engine: DalleMiniEngine, reference, *, steps: int = 16, rounds: int = 3
) -> tuple[float, float]:
    """Decoder ms/step of min-dalle and ours, alternating short runs and keeping each one's best.

    On a shared machine the load changes from minute to minute; alternating runs of ``steps``
    tokens exposes both implementations to the same conditions.
    """
    from tests.dalle_reference import min_dalle_first_tokens

    theirs, ours = [], []
    for _ in range(rounds):
        started = time.perf_counter()
        min_dalle_first_tokens(reference, PROMPT, 1, steps)
        theirs.append((time.perf_counter() - started) / steps * 1000)
        started = time.perf_counter()
        engine.sample_image_tokens([PROMPT], [1], token_count=steps)
        ours.append((time.perf_counter() - started) / steps * 1000)
    return min(theirs), min(ours)


def cpu_mode(args: argparse.Namespace) -> int:
    print(
        f"# engine_speed CPU mode: one mini image, fp32, {torch.get_num_threads()} threads, torch {torch.__version__}"  # noqa: E501
    )
    config = VARIANTS["mini"]
    with tempfile.TemporaryDirectory() as tmp:
        save_random_checkpoint(tmp, "mini", seed=0)
        engine = DalleMiniEngine(model_dir=tmp, device="cpu", dtype="fp32")
        engine.load()
        started = time.perf_counter()
        engine.generate([ImageJob(PROMPT, 1, 0)])
        ours = time.perf_counter() - started
        print(f"ours:      {ours:.1f} s", flush=True)
        theirs = float("nan")
        if not args.skip_min_dalle:
            reference = build_min_dalle(Path(tmp), config)
            theirs, _ = time_min_dalle(reference, 1, "cpu", warm_up=False)
            print(f"min-dalle: {theirs:.1f} s", flush=True)
            their_step, our_step = step_ms_interleaved(engine, reference)
            print(
                f"decoder ms/step (best of 3 alternating runs of 16 steps): min-dalle {their_step:.0f}, "
                f"ours {our_step:.0f} ({their_step / our_step:.2f}x)"
            )
    print(
        f"\n| one mini image, CPU fp32 | min-dalle s | ours s | speed-up |\n|---|---|---|---|\n"
        f"| {torch.get_num_threads()} threads | {theirs:.1f} | {ours:.1f} | {theirs / ours:.2f}x |"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("gpu", "cpu"), default="gpu")
    parser.add_argument("--variants", nargs="+", default=["mini", "mega"], choices=("mini", "mega"))
    parser.add_argument("--dtypes", nargs="+", default=["fp16", "bf16"], choices=tuple(DTYPES))
    parser.add_argument("--counts", nargs="+", type=int, default=[1, 4, 9, 16])
    parser.add_argument("--skip-min-dalle", action="store_true", help="time only ours")
    parser.add_argument("--skip-diffusers", action="store_true")
    parser.add_argument("--profile", action="store_true", help="print a profiler table of eager steps")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    return gpu_mode(args) if args.mode == "gpu" else cpu_mode(args)


if __name__ == "__main__":
    sys.exit(main())
