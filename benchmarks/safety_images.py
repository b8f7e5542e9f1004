"""What the classroom filter's picture check costs, against the generation it guards.

The check is one forward pass of a ViT-base/16 at 224 px (the shape of ``Falconsai/nsfw_image_detection``,
the default model) over a batch of pictures. Random weights of the full size cost the same FLOPs
as the real ones, so no download is needed: the model is built from the real config, saved with
``save_pretrained`` and loaded through :func:`speech2image_nb.safety.images.load_image_checker`
(the server's own loading code), then timed on 256 px pictures (DALL-E mini's size) at batch sizes
1, 4 and 9, median of several runs after a warm-up.

The generation it is compared with, in the same run: one DALL-E mini image with random full-size
weights on the CPU path the server uses (8-bit weights), unless ``--dalle-s SECONDS`` gives a
figure instead (about 9 s on a 2-core CPU; writing the random checkpoint takes a while).

    python benchmarks/safety_images.py                 # CPU, DALL-E mini measured in the same run
    python benchmarks/safety_images.py --dalle-s 9     # CPU, against a given DALL-E time
    python benchmarks/safety_images.py --device cuda   # GPU (the DALL-E image on the GPU as well)

Prints the machine, seconds per check, per image, and the ratios to the generation: for a
request of one image streamed with previews, each preview shown is checked too (one pass each).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: the default model's shape (its config.json): ViT-base/16, 224 px, labels normal/nsfw
VIT_BASE = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "image_size": 224,
    "patch_size": 16,
}
BATCHES = (1, 4, 9)
PICTURE_PX = 256  # DALL-E mini's pictures
PROMPT = "a red fox sitting in the snow"


def machine(device: str) -> str:
    """The CPU model (or GPU name), cores, torch threads and the load average."""
    import torch

    from speech2image_nb.cpu import cpu_model

    model = cpu_model()
    load = " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    text = f"{model}, {os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads"
    if device.startswith("cuda"):
        text += f", GPU {torch.cuda.get_device_name(device)}"
    return f"{text}, load average {load}"


def save_vit_base(folder: Path) -> Path:
    """A random ViT-base/16 image classifier (labels normal/nsfw) saved as the real model is."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(**VIT_BASE, id2label={0: "normal", 1: "nsfw"}, label2id={"normal": 0, "nsfw": 1})
    ViTForImageClassification(config).save_pretrained(folder)
    size = VIT_BASE["image_size"]
    ViTImageProcessor(
        size={"height": size, "width": size}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    ).save_pretrained(folder)
    return folder


def time_check(checker, count: int, device: str, repeats: int) -> float:
    """Median seconds of one ``flags`` call over ``count`` pictures (after one warm-up call)."""
    import torch
    from PIL import Image

    pictures = [Image.new("RGB", (PICTURE_PX, PICTURE_PX), (30 * i % 256, 120, 200)) for i in range(count)]
    checker.flags(pictures)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        checker.flags(pictures)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def time_dalle_mini(device: str) -> float:
    """Seconds of one DALL-E mini image with random full-size weights (the engine's default dtype)."""
    from speech2image_nb.server.engines.base import ImageJob
    from speech2image_nb.server.engines.dalle_mini import DalleMiniEngine, save_random_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        save_random_checkpoint(tmp, "mini", seed=0)
        print(f"random DALL-E mini checkpoint written in {time.perf_counter() - started:.0f} s", flush=True)
        engine = DalleMiniEngine(False, model_dir=tmp, device=device)
        engine.load()
        engine.generate([ImageJob(PROMPT, 1, 0)])  # warm-up (CUDA graphs on a GPU)
        started = time.perf_counter()
        engine.generate([ImageJob(PROMPT, 2, 0)])
        return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument(
        "--dalle-s", type=float, help="seconds of one DALL-E mini image, instead of measuring it"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per batch size (default 5)")
    parser.add_argument(
        "--previews", type=int, default=7, help="previews checked per streamed image (default 7)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="CPU threads of the check and the engine (default: S2I_CPU_THREADS or cores)",
    )
    args = parser.parse_args(argv)
    if args.threads is not None:
        import torch

        os.environ["S2I_CPU_THREADS"] = str(args.threads)  # read by the check and the engine
        torch.set_num_threads(args.threads)

    from speech2image_nb.safety.images import load_image_checker

    print(machine(args.device), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_vit_base(Path(tmp) / "vit-base")
        started = time.perf_counter()
        checker = load_image_checker(str(folder), device=args.device)
        loaded_s = time.perf_counter() - started
        print(f"picture check (ViT-base/16, 224 px, random weights) loaded in {loaded_s:.1f} s")
        checks = {}
        for count in BATCHES:
            checks[count] = time_check(checker, count, args.device, args.repeats)
            print(f"check of {count} picture(s): {checks[count]:.3f} s", flush=True)
    del checker
    if args.dalle_s is not None:
        dalle_s, source = args.dalle_s, "given"
    else:
        dalle_s, source = time_dalle_mini(args.device), "measured in this run"
    print(f"\none DALL-E mini image: {dalle_s:.2f} s ({source})\n")
    print("| pictures per check | check s | per picture s | per picture / one DALL-E mini image |")
    print("| --- | --- | --- | --- |")
    for count, seconds in checks.items():
        print(f"| {count} | {seconds:.3f} | {seconds / count:.3f} | {seconds / count / dalle_s:.1%} |")
    streamed = checks[1] * (1 + args.previews)
    print(
        f"\none image streamed with {args.previews} previews: {1 + args.previews} checks, {streamed:.2f} s, "
        f"{streamed / dalle_s:.1%} of its generation; the same image not streamed: {checks[1] / dalle_s:.1%}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
