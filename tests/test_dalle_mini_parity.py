"""Our DALL-E mini/mega against min-dalle's own modules, with the same random weights and seed.

How the comparison is made exact: min-dalle seeds the *global* RNG (``torch.manual_seed(seed)``)
and samples each token with ``torch.multinomial(probs, 1)``, which (one sample) draws
``q ~ Exp(1)`` for the whole row and returns ``argmax(probs / q)``. Our sampler computes the same
``probs`` and draws the same ``Exp(1)`` row from a per-image ``torch.Generator``; seeded with the
same number, the generator yields the same stream as the reseeded global RNG. So when the networks
agree, every one of the 256 tokens must agree, and the VQGAN pixels must agree to rounding.

The VQGAN has one size in min-dalle (46.7M parameters, seconds per image on CPU), so pixels are
compared where the checkpoint carries the full VQGAN (tiny and full-size mini); the other tiny
checkpoints carry a narrow VQGAN and compare the tokens.
"""

from __future__ import annotations

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


def compare(model_dir, variant, options, *, is_mega=False):
    config = VARIANTS[variant]
    with_vqgan = config.vqgan_width_divisor == 1
    ours = DalleMiniEngine(
        is_mega, model_dir=model_dir, device="cpu", dtype="fp32", preview_budget=PREVIEW_BUDGET
    )
    ours.load()
    started = time.perf_counter()
    our_tokens = ours.sample_image_tokens([PROMPT], [SEED], options)[0]
    our_pixels = ours.detokenize(our_tokens[None])[0] if with_vqgan else None
    our_seconds = time.perf_counter() - started

    reference = build_min_dalle(model_dir, config, with_vqgan=with_vqgan)
    started = time.perf_counter()
    their_tokens, their_pixels = min_dalle_tokens_and_pixels(reference, PROMPT, SEED, **options)
    their_seconds = time.perf_counter() - started
    print(f"{variant}: ours {our_seconds:.1f} s, min-dalle {their_seconds:.1f} s")
    return our_tokens, their_tokens, our_pixels, their_pixels


def assert_same(our_tokens, their_tokens, our_pixels, their_pixels):
    mismatch = (our_tokens != their_tokens).nonzero()
    assert mismatch.numel() == 0, f"first differing token at {mismatch[0].item()}"
    assert len(set(our_tokens.tolist())) > 4, "a degenerate sample proves little"
    if their_pixels is None:
        return
    assert their_pixels.shape == our_pixels.shape == (256, 256, 3)
    assert (our_pixels - their_pixels).abs().max().item() <= 1e-4


def test_tiny_tokens_and_pixels_match_min_dalle(tmp_path):
    """Tiny random mini-shaped model with the real-size VQGAN: same 256 tokens, pixels within 1e-4."""
    directory = save_random_checkpoint(tmp_path, "tiny-fullvqgan", seed=1)
    assert_same(*compare(directory, "tiny-fullvqgan", {}))


def test_tiny_with_other_options_matches_min_dalle(tmp_path):
    """Temperature, top_k and supercondition_factor are applied exactly as min-dalle applies them."""
    directory = save_random_checkpoint(tmp_path, "tiny", seed=4)
    options = {"temperature": 3.0, "top_k": 64, "supercondition_factor": 4.0}
    assert_same(*compare(directory, "tiny", options))


def test_mega_shaped_tiny_matches_min_dalle(tmp_path):
    """Mega-shaped tiny model (mega file names and vocabularies, 16415 image logits): same tokens."""
    directory = save_random_checkpoint(tmp_path, "mega-tiny", seed=2)
    assert_same(*compare(directory, "mega-tiny", {"temperature": 2.0}, is_mega=True))


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
    assert_same(our_tokens, theirs["tokens"], our_pixels, theirs["pixels"])
