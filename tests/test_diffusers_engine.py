"""The diffusers engine over a tiny random Stable Diffusion pipeline saved with ``save_pretrained``.

The pipeline has the real component types of SD-Turbo (UNet2DConditionModel, CLIP text encoder and
tokenizer, AutoencoderKL, Euler scheduler with trailing timesteps), tiny sizes and random weights;
the engine loads it through ``AutoPipelineForText2Image`` like a downloaded model.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from speech2image_nb.errors import ModelNotAvailable
from speech2image_nb.server.engines.base import ImageJob
from speech2image_nb.server.engines.diffusers import DiffusersEngine


def byte_characters():
    """The 256 printable characters byte-level BPE uses for the bytes (GPT-2's bytes_to_unicode)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    extra = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(extra))]


def _write_clip_tokenizer_files(directory):
    """A CLIP BPE vocabulary of single characters (every byte) plus the two special tokens."""

    chars = byte_characters()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    return len(vocab)


@pytest.fixture(scope="module")
def tiny_pipeline_dir(tmp_path_factory):
    """A tiny SD-Turbo-shaped pipeline saved to a folder."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    root = tmp_path_factory.mktemp("tiny_sd")
    token_dir = root / "tokenizer_src"
    token_dir.mkdir()
    vocab_size = _write_clip_tokenizer_files(token_dir)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=vocab_size,
            max_position_embeddings=77,
        )
    )
    tokenizer = CLIPTokenizer(
        str(token_dir / "vocab.json"), str(token_dir / "merges.txt"), model_max_length=77
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="trailing"
    )
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    out = root / "tiny-sd-turbo"
    pipeline.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def engine(tiny_pipeline_dir):
    """The engine loaded from the saved folder on CPU."""
    engine = DiffusersEngine(model_dir=str(tiny_pipeline_dir), device="cpu")
    engine.load()
    return engine


def test_loads_local_pipeline_and_makes_one_image_per_job(engine):
    """Each job gets an RGB image at the UNet's native size (16 latents x 2 = 32 px)."""
    images = engine.generate([ImageJob("a red fox", 7, 0), ImageJob("a cat", 7, 1)])
    assert [im.size for im in images] == [(32, 32), (32, 32)]
    assert all(im.mode == "RGB" for im in images)
    assert engine.describe()["engine"] == "tiny-sd-turbo"
    assert engine.defaults == {"steps": 1, "guidance_scale": 0.0}


def test_image_is_the_same_alone_or_in_a_batch(engine):
    """Per-image generators: the second image of a batch equals the same job run alone."""
    jobs = [ImageJob("a red fox", 11, 0), ImageJob("a blue house", 11, 1)]
    batched = engine.generate(
        jobs,
    )
    alone = engine.generate([jobs[1]])
    diff = np.abs(np.asarray(batched[1], dtype=int) - np.asarray(alone[0], dtype=int)).max()
    assert diff <= 1
    other_seed = engine.generate([ImageJob("a blue house", 12, 1)])
    assert np.abs(np.asarray(other_seed[0], dtype=int) - np.asarray(alone[0], dtype=int)).max() > 1


def test_step_previews_and_options(engine):
    """steps=3 calls on_progress three times with one preview per job."""
    calls = []
    jobs = [ImageJob("snow", 3, i, {"steps": 3, "guidance_scale": 0.0}) for i in range(2)]
    images = engine.generate(jobs, on_progress=lambda s, t, p: calls.append((s, t, p and len(p))))
    assert len(images) == 2
    assert calls == [(1, 3, 2), (2, 3, 2), (3, 3, 2)]


def test_guidance_scale_runs_classifier_free_guidance(engine):
    """guidance_scale > 1 is accepted and changes the picture."""
    plain = engine.generate([ImageJob("a dog", 5, 0, {"steps": 2})])[0]
    guided = engine.generate([ImageJob("a dog", 5, 0, {"steps": 2, "guidance_scale": 5.0})])[0]
    assert np.abs(np.asarray(plain, dtype=int) - np.asarray(guided, dtype=int)).max() > 0


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"steps": 0}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"guidance_scale": -1}, "guidance_scale"),
        ({"guidance_scale": float("nan")}, "guidance_scale"),
        ({"top_k": 5}, "top_k"),
    ],
)
def test_invalid_options_name_the_field(engine, options, field):
    """validate_options raises ValueError naming the bad field."""
    with pytest.raises(ValueError, match=field):
        engine.validate_options(options)


def test_offline_without_cache_fails_fast_and_clearly(monkeypatch):
    """HF_HUB_OFFLINE with the model absent from the cache: ModelNotAvailable within seconds."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    engine = DiffusersEngine(model_id="speech2image-tests/not-a-cached-model", device="cpu")
    started = time.monotonic()
    with pytest.raises(ModelNotAvailable, match="offline"):
        engine.load()
    assert time.monotonic() - started < 10
