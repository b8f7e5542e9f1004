"""The diffusers engine on a CPU with native bf16 computes under bf16 autocast by default.

Measured on an SD-Turbo-shaped random pipeline with TAESD at 512 px (``benchmarks/RESULTS.md``):
2.1x faster, the picture within 57.7 dB PSNR of fp32's. Here, on the tiny pipeline: the choice
follows the CPU, ``dtype="fp32"`` stays exact fp32, and the pictures agree (PSNR >= 30 dB).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from speech2image_nb.server.engines.base import ImageJob
from speech2image_nb.server.engines.cpu import bf16_is_native
from speech2image_nb.server.engines.diffusers import DiffusersEngine, save_random_pipeline

JOB = ImageJob("a red fox sitting in the snow", 3, 0, {"steps": 1, "guidance_scale": 0.0})


@pytest.fixture(scope="module")
def tiny_pipeline_dir(tmp_path_factory):
    return save_random_pipeline(tmp_path_factory.mktemp("tiny_sd_bf16") / "tiny-sd-turbo", shape="tiny")


def test_bf16_follows_the_cpu_and_fp32_stays_one_option_away(tiny_pipeline_dir):
    default = DiffusersEngine(model_dir=str(tiny_pipeline_dir), device="cpu", vae="full", threads=1)
    exact = DiffusersEngine(
        model_dir=str(tiny_pipeline_dir), device="cpu", vae="full", threads=1, dtype="fp32"
    )
    assert default.cpu_bf16 == bf16_is_native()
    assert not exact.cpu_bf16


@pytest.mark.skipif(not bf16_is_native(), reason="bf16 is emulated on this CPU (the engine stays in fp32)")
def test_bf16_pictures_stay_close_to_fp32(tiny_pipeline_dir):
    pictures = {}
    for dtype in (None, "fp32"):
        engine = DiffusersEngine(
            model_dir=str(tiny_pipeline_dir), device="cpu", vae="full", threads=1, dtype=dtype
        )
        engine.load()
        pictures[dtype] = np.asarray(engine.generate([JOB])[0]).astype(float)
    mse = ((pictures[None] - pictures["fp32"]) ** 2).mean()
    psnr = math.inf if mse == 0 else 10 * math.log10(255**2 / mse)
    print(f"tiny pipeline, bf16 autocast against fp32: PSNR {psnr:.1f} dB")
    assert 30.0 <= psnr < math.inf  # close, and not secretly the fp32 path
