"""The DALL-E engine's CPU fast path (8-bit Linear weights) against its fp32 reference path.

With random weights no picture can be judged, so the test measures what the fast path changes:
teacher-forced over one 256-token sequence, the next-token distributions after the supercondition
mix (KL divergence from fp32, and how often the most likely token agrees), and the VQGAN's pixels
in the fast path's precision (PSNR against fp32). The bounds hold the measured figures (recorded in
``benchmarks/RESULTS.md``) with a margin; a deliberately broken quantization (weight scales 10%
off) must fall outside them, which shows the measurement can fail.

Each int8 kernel path the engine can choose on this machine is forced in turn, against bounds of
its own: 7-bit activations (CPUs without int8 dot products), 8-bit ones (VNNI / AMX, Arm).
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

from speech2image_nb.cpu import has_int8_dot_product, is_arm
from speech2image_nb.server import start_background
from speech2image_nb.server.engines import ImageJob, create_engine
from speech2image_nb.server.engines.cpu import bf16_is_native
from speech2image_nb.server.engines.dalle_mini import DalleMiniEngine, save_random_checkpoint
from speech2image_nb.server.engines.dalle_mini.int8 import KERNELS, Int8Linear

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


@dataclasses.dataclass(frozen=True)
class Bounds:
    """What a kernel path's agreement must stay within (the measured figures with a margin)."""

    kl_mean: float
    kl_median: float
    top1: float

    def hold(self, measured: Agreement) -> bool:
        return (
            measured.kl_mean < self.kl_mean
            and measured.kl_median < self.kl_median
            and measured.top1 > self.top1
        )


#: tiny models (mini- and mega-shaped), per kernel: 7-bit measured KL 0.054 / 0.011, top-1 91.4%;
#: 8-bit KL 0.030 / 0.007, top-1 93.4% (benchmarks/RESULTS.md)
TINY_BOUNDS = {
    "fbgemm-7bit": Bounds(0.15, 0.06, 0.8),
    "fbgemm-8bit": Bounds(0.09, 0.035, 0.85),
    "qnnpack-8bit": Bounds(0.09, 0.035, 0.85),
}
#: full-size mini, per kernel: 7-bit measured 0.254 / 0.023, top-1 84.4%; 8-bit 0.128 / 0.020, 87.5%
FULL_BOUNDS = {
    "fbgemm-7bit": Bounds(0.4, 0.15, 0.75),
    "fbgemm-8bit": Bounds(0.25, 0.08, 0.8),
    "qnnpack-8bit": Bounds(0.25, 0.08, 0.8),
}


def kernel_runs_here(kernel: str) -> bool:
    """Whether the engine could choose ``kernel`` on this machine (fbgemm on x86, with int8 dot
    products for 8-bit activations; qnnpack on Arm)."""
    if kernel.startswith("qnnpack"):
        return is_arm()
    return not is_arm() and (KERNELS[kernel] == 7 or has_int8_dot_product())


KERNEL_PARAMS = [
    pytest.param(
        k, marks=pytest.mark.skipif(not kernel_runs_here(k), reason=f"{k} is not a choice on this CPU")
    )
    for k in KERNELS
]


def engines(directory, *, is_mega=False, kernel=None):
    fp32 = DalleMiniEngine(
        is_mega, model_dir=directory, device="cpu", dtype="fp32", preview_budget=NO_PREVIEWS
    )
    int8 = DalleMiniEngine(
        is_mega,
        model_dir=directory,
        device="cpu",
        dtype="int8",
        preview_budget=NO_PREVIEWS,
        int8_kernel=kernel,
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
    # per layer, fused: queries-keys-values, out; the GLU's two inputs, its output (+ cross-attention's
    # four and the logits for the decoder)
    assert "quantizing the encoder to 8 bits: layer 8 of 8" in quantizing
    assert "quantizing the decoder to 8 bits: layer 17 of 17" in quantizing
    linears = [m for m in engine.model.decoder.modules() if isinstance(m, (torch.nn.Linear, Int8Linear))]
    assert linears and all(isinstance(m, Int8Linear) for m in linears)
    assert {p.name: p.read_bytes() for p in tiny_dalle_dir.iterdir()} == before


@pytest.mark.parametrize("kernel", KERNEL_PARAMS)
def test_tiny_next_token_distributions_stay_close_to_fp32(tmp_path, kernel):
    """Tiny mini-shaped model: KL(fp32 || int8) and top-1 agreement within the kernel's bounds."""
    fp32, int8 = engines(save_random_checkpoint(tmp_path, "tiny", seed=3), kernel=kernel)
    assert int8.int8_kernel == kernel
    measured = agreement(fp32, int8)
    print(f"tiny, {kernel}: {measured}")
    assert TINY_BOUNDS[kernel].hold(measured), measured


@pytest.mark.parametrize("kernel", KERNEL_PARAMS)
def test_mega_shaped_tiny_next_token_distributions_stay_close_to_fp32(tmp_path, kernel):
    """Mega-shaped tiny model (mega's file names and 16415 logits) on the int8 path: same bounds."""
    fp32, int8 = engines(save_random_checkpoint(tmp_path, "mega-tiny", seed=2), is_mega=True, kernel=kernel)
    measured = agreement(fp32, int8)
    print(f"mega-tiny, {kernel}: {measured}")
    assert TINY_BOUNDS[kernel].hold(measured), measured


@pytest.mark.parametrize("kernel", KERNEL_PARAMS)
def test_a_wrong_weight_scale_falls_outside_the_bounds(tmp_path, monkeypatch, kernel):
    """The measurement can fail: int8 weights read with scales 10% too large break the bounds."""
    fp32, int8 = engines(save_random_checkpoint(tmp_path, "tiny", seed=3), kernel=kernel)
    for layer in int8.model.decoder.modules():
        if isinstance(layer, Int8Linear):
            monkeypatch.setattr(layer, "forward", _scaled_forward(layer, 1.1))
    measured = agreement(fp32, int8)
    print(f"tiny, {kernel}, scales x1.1: {measured}")
    assert not TINY_BOUNDS[kernel].hold(measured)


def test_the_engine_chooses_its_kernel_by_the_cpu(tiny_dalle_dir):
    """Unforced, the kernel follows the CPU: 8-bit activations exactly where int8 dot products are."""
    engine = DalleMiniEngine(model_dir=tiny_dalle_dir, device="cpu", preview_budget=NO_PREVIEWS)
    engine.load()
    expected = "qnnpack-8bit" if is_arm() else ("fbgemm-8bit" if has_int8_dot_product() else "fbgemm-7bit")
    assert engine.int8_kernel == expected
    with pytest.raises(ValueError, match="int8_kernel"):
        DalleMiniEngine(model_dir=tiny_dalle_dir, device="cpu", int8_kernel="avx9")


@pytest.mark.parametrize("kernel", KERNEL_PARAMS)
def test_each_kernel_gives_an_image_the_same_tokens_alone_and_in_a_batch(tiny_dalle_dir, kernel):
    """Per-row activation scales: a seed's tokens do not depend on the batch it shares."""
    engine = DalleMiniEngine(
        model_dir=tiny_dalle_dir, device="cpu", preview_budget=NO_PREVIEWS, int8_kernel=kernel
    )
    engine.load()
    alone = engine.sample_image_tokens([PROMPT], [11], token_count=48)
    again = engine.sample_image_tokens([PROMPT], [11], token_count=48)
    batch = engine.sample_image_tokens(["a blue car", PROMPT, "a cat"], [3, 11, 4], token_count=48)
    assert torch.equal(alone[0], again[0]) and torch.equal(alone[0], batch[1])
    assert not torch.equal(batch[0], batch[1])


def _scaled_forward(layer, factor):
    forward = layer.forward

    def scaled(x):
        return forward(x) * factor

    return scaled


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("kernel", KERNEL_PARAMS)
def test_full_size_mini_next_token_distributions_stay_close_to_fp32(tmp_path, kernel):
    """Full-size random mini (0.44B parameters): KL and top-1 agreement within the kernel's bounds."""
    fp32, int8 = engines(save_random_checkpoint(tmp_path, "mini", seed=3), kernel=kernel)
    measured = agreement(fp32, int8)
    print(f"full-size mini, {kernel}: {measured}")
    assert FULL_BOUNDS[kernel].hold(measured), measured


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


@pytest.mark.parametrize("kernel", KERNEL_PARAMS)
def test_attention_keys_are_bf16_only_with_8_bit_activations_where_bf16_is_native(tiny_dalle_dir, kernel):
    """The decoder's keys and values are bf16 only on the path measured to stay as close to fp32
    with them (8-bit activations, native bf16); elsewhere they keep the model's fp32."""
    engine = DalleMiniEngine(
        model_dir=tiny_dalle_dir, device="cpu", preview_budget=NO_PREVIEWS, int8_kernel=kernel
    )
    engine.load()
    expected = torch.bfloat16 if KERNELS[kernel] == 8 and bf16_is_native() else torch.float32
    assert engine._kv_dtype == expected
    fp32 = DalleMiniEngine(model_dir=tiny_dalle_dir, device="cpu", dtype="fp32", preview_budget=NO_PREVIEWS)
    fp32.load()
    assert fp32._kv_dtype == torch.float32
