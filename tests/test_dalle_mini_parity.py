"""Our DALL-E mini/mega against min-dalle's own modules, with the same random weights and seed.

How the comparison is made exact: min-dalle seeds the *global* RNG (``torch.manual_seed(seed)``)
and samples each token with ``torch.multinomial(probs, 1)``, which (one sample) draws
``q ~ Exp(1)`` for the whole row and returns ``argmax(probs / q)``. Our sampler computes the same
``probs`` and draws the same ``Exp(1)`` row from a per-image ``torch.Generator``; seeded with the
same number, the generator yields the same stream as the reseeded global RNG. So when the networks
agree, the tokens agree, and the VQGAN pixels agree to rounding.

Exact token equality holds only until a near-tie: when the two largest ``probs / q`` of a step
differ by a float32 rounding (measured on an AVX-512 Xeon: 3e-7 relative, at token 141 of the
tiny model; the two sides' weights there differed by 4e-6), the two float orders of summation pick
different tokens and the rest of the sequence differs. So the tiny tests compare, at every one of
the 256 steps, our next-token weights (fed min-dalle's tokens) with the weights min-dalle sampled
from; they require the tokens to agree up to the first step, if any, where they differ, and that
step to be such a near-tie; and the pixels of min-dalle's tokens, decoded by both.

The VQGAN has one size in min-dalle (46.7M parameters, seconds per image on CPU), so pixels are
compared where the checkpoint carries the full VQGAN (tiny and full-size mini); the other tiny
checkpoints carry a narrow VQGAN and compare the tokens.
"""

from __future__ import annotations

import dataclasses
import math
import time

import pytest
import torch

from speech2image_nb.server.engines.dalle_mini import DalleMiniEngine, save_random_checkpoint
from speech2image_nb.server.engines.dalle_mini.config import VARIANTS

from .dalle_reference import ReferenceProcess, build_min_dalle, min_dalle_tokens_and_pixels

PROMPT = "a red fox sitting in the snow"
SEED = 1234567

#: these engines make no previews; an unlimited preview budget skips the load-time preview timing
PREVIEW_BUDGET = math.inf


pytestmark = pytest.mark.usefixtures("one_torch_thread")


NEAR_TIE = 1e-5  # relative gap of the two largest probs / q that float rounding may flip
WEIGHTS_ATOL = 1e-4  # next-token weights (1 for the most likely token) of the two implementations


def race_weights(logits, options):
    """min-dalle's multinomial weights from supercondition-mixed logits: top-k kept, temperature."""
    top_k, temperature = options.get("top_k", 256), options.get("temperature", 1.0)
    kept = logits >= logits.sort(dim=-1, descending=True).values[..., top_k - 1 : top_k]
    return ((logits - logits.max(dim=-1, keepdim=True).values) / temperature).exp() * kept


def exponential_draws(seed, count):
    """The ``Exp(1)`` rows both samplers draw, step by step, from the stream ``seed`` starts."""
    generator = torch.Generator().manual_seed(seed)
    return torch.stack([torch.empty(16384).exponential_(1, generator=generator) for _ in range(count)])


def compare(model_dir, variant, options, *, is_mega=False):
    config = VARIANTS[variant]
    with_vqgan = config.vqgan_width_divisor == 1
    ours = DalleMiniEngine(
        is_mega, model_dir=model_dir, device="cpu", dtype="fp32", preview_budget=PREVIEW_BUDGET
    )
    ours.load()
    started = time.perf_counter()
    our_tokens = ours.sample_image_tokens([PROMPT], [SEED], options)[0]
    our_seconds = time.perf_counter() - started

    reference = build_min_dalle(model_dir, config, with_vqgan=with_vqgan)
    started = time.perf_counter()
    their_weights = []
    multinomial = torch.multinomial

    def recording_multinomial(weights, *args, **kwargs):
        their_weights.append(weights[0].detach().clone())
        return multinomial(weights, *args, **kwargs)

    torch.multinomial = recording_multinomial
    try:
        their_tokens, their_pixels = min_dalle_tokens_and_pixels(reference, PROMPT, SEED, **options)
    finally:
        torch.multinomial = multinomial
    their_seconds = time.perf_counter() - started
    print(f"{variant}: ours {our_seconds:.1f} s, min-dalle {their_seconds:.1f} s")

    factor = options.get("supercondition_factor", 16.0)
    our_weights = race_weights(
        ours.teacher_forced_logits(PROMPT, their_tokens, supercondition_factor=factor), options
    )
    our_pixels = ours.detokenize(their_tokens[None])[0] if with_vqgan else None
    return Sampled(
        our_tokens, their_tokens, our_weights, torch.stack(their_weights), our_pixels, their_pixels
    )


@dataclasses.dataclass
class Sampled:
    """Both sides' tokens, next-token weights over min-dalle's sequence, and pixels of its tokens."""

    our_tokens: torch.Tensor
    their_tokens: torch.Tensor
    our_weights: torch.Tensor
    their_weights: torch.Tensor
    our_pixels: torch.Tensor | None
    their_pixels: torch.Tensor | None


def assert_same(sampled):
    """The same distributions at every step, the same tokens up to a near-tie, the same pixels."""
    assert sampled.their_weights.shape == sampled.our_weights.shape == (256, 16384)
    gap = (sampled.our_weights - sampled.their_weights).abs().max().item()
    assert gap <= WEIGHTS_ATOL, f"next-token weights differ by {gap:.2e}"
    mismatch = (sampled.our_tokens != sampled.their_tokens).nonzero()
    if mismatch.numel():
        step = mismatch[0].item()
        race = sampled.their_weights[step] / exponential_draws(SEED, step + 1)[step]
        top = race.topk(2)
        assert race.argmax().item() == sampled.their_tokens[step].item(), "the draws are not min-dalle's"
        tied = {sampled.our_tokens[step].item(), sampled.their_tokens[step].item()}
        assert set(top.indices.tolist()) == tied, f"token {step} differs, and not between the two likeliest"
        relative = (top.values[0] - top.values[1]).item() / top.values[0].item()
        assert relative <= NEAR_TIE, f"token {step} differs where the race was not a tie ({relative:.1e})"
        print(f"tokens agree up to {step}, a near-tie ({relative:.1e} relative)")
    assert len(set(sampled.their_tokens.tolist())) > 4, "a degenerate sample proves little"
    if sampled.their_pixels is None:
        return
    assert sampled.their_pixels.shape == sampled.our_pixels.shape == (256, 256, 3)
    assert (sampled.our_pixels - sampled.their_pixels).abs().max().item() <= 1e-4


def assert_same_tokens_and_pixels(our_tokens, their_tokens, our_pixels, their_pixels):
    """The full-size comparison's check: every token and the pixels (its harness stops at the first
    differing token)."""
    mismatch = (our_tokens != their_tokens).nonzero()
    assert mismatch.numel() == 0, f"first differing token at {mismatch[0].item()}"
    assert len(set(our_tokens.tolist())) > 4, "a degenerate sample proves little"
    assert their_pixels.shape == our_pixels.shape == (256, 256, 3)
    assert (our_pixels - their_pixels).abs().max().item() <= 1e-4


def test_tiny_tokens_and_pixels_match_min_dalle(tmp_path):
    """Tiny random mini-shaped model with the real-size VQGAN: same 256 tokens, pixels within 1e-4."""
    directory = save_random_checkpoint(tmp_path, "tiny-fullvqgan", seed=1)
    assert_same(compare(directory, "tiny-fullvqgan", {}))


def test_tiny_with_other_options_matches_min_dalle(tmp_path):
    """Temperature, top_k and supercondition_factor are applied exactly as min-dalle applies them."""
    directory = save_random_checkpoint(tmp_path, "tiny", seed=4)
    options = {"temperature": 3.0, "top_k": 64, "supercondition_factor": 4.0}
    assert_same(compare(directory, "tiny", options))


def test_mega_shaped_tiny_matches_min_dalle(tmp_path):
    """Mega-shaped tiny model (mega file names and vocabularies, 16415 image logits): same tokens."""
    directory = save_random_checkpoint(tmp_path, "mega-tiny", seed=2)
    assert_same(compare(directory, "mega-tiny", {"temperature": 2.0}, is_mega=True))


def test_reference_process_stops_at_the_first_differing_token(tmp_path):
    """The full-size test's harness can fail: min-dalle in a child process, ours with another seed,
    and the comparison stops at the first token that differs."""
    directory = save_random_checkpoint(tmp_path / "tiny", "tiny", seed=5)
    reference = ReferenceProcess(directory, "tiny", PROMPT, SEED, tmp_path / "reference.pt")
    try:
        ours = DalleMiniEngine(model_dir=directory, device="cpu", dtype="fp32", preview_budget=PREVIEW_BUDGET)
        ours.load()
        same = ours.sample_image_tokens([PROMPT], [SEED])[0]
        other = ours.sample_image_tokens([PROMPT], [SEED + 1])[0]
        first_difference = int((same != other).nonzero()[0])
        with pytest.raises(AssertionError, match=rf"token {first_difference}: ours \d+, min-dalle's \d+"):
            reference.finish(other, timeout=120)
        assert len(reference.tokens) == first_difference + 1 < 256
    finally:
        reference.stop()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_full_size_mini_matches_min_dalle(tmp_path):
    """Full-size random mini (0.44B parameters): all 256 tokens agree, and the pixels within 1e-4.

    min-dalle's generation runs in a child process (one thread) while ours runs here (one thread),
    so the two overlap on 2 cores; tokens are compared as both sides produce them.
    """
    started = time.perf_counter()
    directory = save_random_checkpoint(tmp_path / "mini", "mini", seed=3)
    saved = time.perf_counter()
    reference = ReferenceProcess(directory, "mini", PROMPT, SEED, tmp_path / "reference.pt")
    try:
        ours = DalleMiniEngine(model_dir=directory, device="cpu", dtype="fp32", preview_budget=PREVIEW_BUDGET)
        ours.load()
        our_tokens = ours.sample_image_tokens(
            [PROMPT], [SEED], on_tokens=lambda step, tokens: reference.assert_agrees(tokens[0, :step])
        )[0]
        reference.assert_agrees(our_tokens)
        our_pixels = ours.detokenize(our_tokens[None])[0]
        ours_done = time.perf_counter()
        del ours
        theirs = reference.finish(our_tokens, timeout=540)
    finally:
        reference.stop()
    print(
        f"full-size mini, 256 tokens + VQGAN: checkpoint {saved - started:.1f} s, "
        f"ours {ours_done - saved:.1f} s, both {time.perf_counter() - saved:.1f} s"
    )
    assert len(reference.tokens) == 256 and torch.equal(theirs["tokens"], our_tokens)
    assert_same_tokens_and_pixels(our_tokens, theirs["tokens"], our_pixels, theirs["pixels"])
