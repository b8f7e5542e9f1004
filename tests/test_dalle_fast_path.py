"""The DALL-E engine's CPU fast path (8-bit Linear weights) against its fp32 reference path.

With random weights no picture can be judged, so the test measures what the fast path changes:
teacher-forced over one 256-token sequence, the next-token distributions after the supercondition
mix (KL divergence from fp32, and how often the most likely token agrees), and the VQGAN's pixels
in the fast path's precision (PSNR against fp32). The bounds hold the measured figures (recorded in
``benchmarks/RESULTS.md``) with a margin; a deliberately broken quantization (weight scales 10%
off) must fall outside them, which shows the measurement can fail.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import math

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from speech2image_nb.server import start_background
from speech2image_nb.server.engines import ImageJob, create_engine
from speech2image_nb.server.engines.cpu import bf16_is_native
from speech2image_nb.server.engines.dalle_mini import DalleMiniEngine, save_random_checkpoint
from speech2image_nb.server.engines.dalle_mini.int8 import Int8Linear

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPT = "a red fox sitting in the snow"
NO_PREVIEWS = math.inf  # skips the load-time preview timing


@dataclasses.dataclass(frozen=True)
class Agreement:
    """How the fast path's next-token distributions agree with fp32's over one sequence."""

    kl_mean: float  # nats, mean over the 256 positions of KL(fp32 || fast)
    kl_median: float
    top1: float  # share of positions whose most likely token is the same


def agreement(reference: DalleMiniEngine, fast: DalleMiniEngine, seed: int = 7) -> Agreement:
    """Teacher-force both engines over the sequence the fast path samples for ``seed``."""
    tokens = fast.sample_image_tokens([PROMPT], [seed])[0]
    p = reference.teacher_forced_logits(PROMPT, tokens).log_softmax(-1)
    q = fast.teacher_forced_logits(PROMPT, tokens).log_softmax(-1)
    kl = (p.exp() * (p - q)).sum(-1)
    top1 = (p.argmax(-1) == q.argmax(-1)).float().mean()
    return Agreement(kl.mean().item(), kl.median().item(), top1.item())


def engines(directory, *, is_mega=False):
    fp32 = DalleMiniEngine(
        is_mega, model_dir=directory, device="cpu", dtype="fp32", preview_budget=NO_PREVIEWS
    )
    int8 = DalleMiniEngine(
        is_mega, model_dir=directory, device="cpu", dtype="int8", preview_budget=NO_PREVIEWS
    )
    fp32.load()
    int8.load()
    return fp32, int8


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of two pixel arrays in 0..255."""
    mse = (a.float() - b.float()).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


@pytest.fixture(scope="module")
def tiny_fullvqgan_dir(tmp_path_factory):
    """A tiny mini-shaped checkpoint with the real-size VQGAN."""
    return save_random_checkpoint(tmp_path_factory.mktemp("fast"), "tiny-fullvqgan", seed=3)


def test_int8_is_the_cpu_default_and_fp32_one_option_away(tiny_dalle_dir, monkeypatch):
    """On CPU the engine runs int8 unless told otherwise: dtype="fp32", or S2I_IMAGE_DTYPE=fp32."""
    assert DalleMiniEngine(model_dir=tiny_dalle_dir, device="cpu").describe()["dtype"] == "int8"
    assert DalleMiniEngine(model_dir=tiny_dalle_dir, device="cpu", dtype="fp32").dtype_name == "float32"
    assert create_engine("dalle-mega", model_dir=str(tiny_dalle_dir)).dtype_name == "int8"
    monkeypatch.setenv("S2I_IMAGE_DTYPE", "fp32")
    assert create_engine("dalle-mini", model_dir=str(tiny_dalle_dir)).dtype_name == "float32"
    with pytest.raises(ValueError, match="CPU fast path"):
        DalleMiniEngine(model_dir=tiny_dalle_dir, device="cuda", dtype="int8")


def test_quantizing_at_load_reports_progress_and_keeps_the_files(tiny_dalle_dir):
    """Loading says it is quantizing (layer counts, rising fractions); the checkpoint is untouched."""
    before = {p.name: p.read_bytes() for p in tiny_dalle_dir.iterdir()}
    reports = []
    engine = DalleMiniEngine(model_dir=tiny_dalle_dir, device="cpu")
    engine.load(lambda fraction, message: reports.append((fraction, message)))
    fractions = [f for f, _ in reports]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    quantizing = [m for _, m in reports if m.startswith("quantizing")]
    assert "quantizing the encoder to 8 bits: layer 14 of 14" in quantizing
    assert "quantizing the decoder to 8 bits: layer 23 of 23" in quantizing
    linears = [m for m in engine.model.decoder.modules() if isinstance(m, (torch.nn.Linear, Int8Linear))]
    assert linears and all(isinstance(m, Int8Linear) for m in linears)
    assert {p.name: p.read_bytes() for p in tiny_dalle_dir.iterdir()} == before


def test_tiny_next_token_distributions_stay_close_to_fp32(tmp_path):
    """Tiny mini-shaped model: KL(fp32 || int8) and top-1 agreement within the recorded bounds."""
    fp32, int8 = engines(save_random_checkpoint(tmp_path, "tiny", seed=3))
    measured = agreement(fp32, int8)
    print(f"tiny: {measured}")
    assert measured.kl_mean < 0.15 and measured.kl_median < 0.06 and measured.top1 > 0.8


def test_mega_shaped_tiny_next_token_distributions_stay_close_to_fp32(tmp_path):
    """Mega-shaped tiny model (mega's file names and 16415 logits) on the int8 path: same bounds."""
    fp32, int8 = engines(save_random_checkpoint(tmp_path, "mega-tiny", seed=2), is_mega=True)
    measured = agreement(fp32, int8)
    print(f"mega-tiny: {measured}")
    assert measured.kl_mean < 0.15 and measured.kl_median < 0.06 and measured.top1 > 0.8


def test_a_wrong_weight_scale_falls_outside_the_bounds(tmp_path, monkeypatch):
    """The measurement can fail: int8 weights read with scales 10% too large break the bounds."""
    fp32, int8 = engines(save_random_checkpoint(tmp_path, "tiny", seed=3))
    for layer in int8.model.decoder.modules():
        if isinstance(layer, Int8Linear):
            monkeypatch.setattr(layer, "forward", _scaled_forward(layer, 1.1))
    measured = agreement(fp32, int8)
    print(f"tiny, scales x1.1: {measured}")
    assert not (measured.kl_mean < 0.15 and measured.kl_median < 0.06 and measured.top1 > 0.8)


def _scaled_forward(layer, factor):
    forward = layer.forward

    def scaled(x):
        return forward(x) * factor

    return scaled


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_full_size_mini_next_token_distributions_stay_close_to_fp32(tmp_path):
    """Full-size random mini (0.44B parameters): KL and top-1 agreement within the recorded bounds."""
    fp32, int8 = engines(save_random_checkpoint(tmp_path, "mini", seed=3))
    measured = agreement(fp32, int8)
    print(f"full-size mini: {measured}")
    assert measured.kl_mean < 0.4 and measured.kl_median < 0.15 and measured.top1 > 0.75


def test_vqgan_pixels_in_the_fast_paths_precision(tiny_fullvqgan_dir):
    """The real-size VQGAN: where bf16 is native the fast path decodes in bf16 (PSNR >= 30 dB against
    fp32); elsewhere it decodes in fp32, the same pixels as the reference path."""
    fp32, int8 = engines(tiny_fullvqgan_dir)
    tokens = int8.sample_image_tokens([PROMPT], [5])
    reference = fp32.detokenize(tokens)
    assert int8._final_in_bf16 == bf16_is_native()
    fast = int8.detokenize(tokens)
    print(f"fast-path VQGAN ({'bf16' if bf16_is_native() else 'fp32'}): PSNR {psnr(fast, reference):.1f} dB")
    assert psnr(fast, reference) >= (30.0 if bf16_is_native() else math.inf)


def test_bf16_vqgan_pixels_stay_close_to_fp32(tiny_dalle_dir):
    """The bf16 decode itself, on the narrow test VQGAN over a 4x4 token grid (where bf16 is
    emulated it runs far slower than fp32, so the test keeps it small): PSNR >= 30 dB."""
    engine = DalleMiniEngine(model_dir=tiny_dalle_dir, device="cpu", preview_budget=NO_PREVIEWS)
    engine.load()
    detokenizer = engine.model.detokenizer
    tokens = engine.sample_image_tokens([PROMPT], [5])[0, :16]
    z = detokenizer.embedding(tokens).view(1, 4, 4, -1).permute(0, 3, 1, 2).contiguous()

    def decode(in_bf16):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=in_bf16):
            pixels = detokenizer.decoder(detokenizer.post_quant_conv(z)).float()
        return pixels.clip(0.0, 1.0) * 255

    measured = psnr(decode(True), decode(False))
    print(f"bf16 VQGAN: PSNR {measured:.1f} dB")
    assert 30.0 <= measured < math.inf


def _images(response):
    assert response.status_code == 200, response.text
    return [
        np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))
        for b64 in response.json()["generatedImgs"]
    ]


def test_fast_path_serves_deterministic_images_by_seed(tiny_dalle_dir):
    """The server on the default CPU engine (int8, min-dalle's file format through the real loading
    code): the same seed gives the same batch of pictures, another seed others."""
    server = start_background("dalle-mini", model_dir=str(tiny_dalle_dir), ready_timeout_s=300)
    try:
        assert requests.get(server.url + "/", timeout=10).json()["dtype"] == "int8"

        def generate(seed):
            body = {"text": "a red fox", "num_images": 2, "seed": seed, "image_format": "png"}
            return _images(requests.post(server.url + "/generate", json=body, timeout=300))

        first, again, other = generate(5), generate(5), generate(6)
    finally:
        server.stop()
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[0], first[1])
    assert not any(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_engine_sets_its_threads_only_during_its_work(tiny_dalle_dir):
    """threads=1 applies inside generate() (seen from the progress callback) and is undone after."""
    torch.set_num_threads(2)
    engine = DalleMiniEngine(model_dir=tiny_dalle_dir, device="cpu", threads=1, preview_budget=NO_PREVIEWS)
    engine.load()
    seen = []
    engine.generate([ImageJob("a fox", 1, 0)], on_progress=lambda *_: seen.append(torch.get_num_threads()))
    assert set(seen) == {1} and torch.get_num_threads() == 2
