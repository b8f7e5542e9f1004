"""The diffusers engine over a tiny random Stable Diffusion pipeline saved with ``save_pretrained``.

The pipeline (``save_random_pipeline``) has the real component types of SD-Turbo, tiny sizes and
random weights; the engine loads it through ``AutoPipelineForText2Image`` like a downloaded model,
and the tiny autoencoder (``save_random_tiny_vae``, an ``AutoencoderTiny``) through the same
``from_pretrained`` as TAESD from the hub.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from speech2image_nb.errors import ModelNotAvailable
from speech2image_nb.server.engines import create_engine
from speech2image_nb.server.engines.base import ImageJob
from speech2image_nb.server.engines.diffusers import (
    TINY_VAE_ID,
    DiffusersEngine,
    save_random_pipeline,
    save_random_tiny_vae,
)
from tests.conftest import TIME_FACTOR


@pytest.fixture(scope="module")
def tiny_pipeline_dir(tmp_path_factory):
    """A tiny SD-Turbo-shaped pipeline saved to a folder."""
    return save_random_pipeline(tmp_path_factory.mktemp("tiny_sd") / "tiny-sd-turbo", shape="tiny")


@pytest.fixture(scope="module")
def engine(tiny_pipeline_dir):
    """The engine loaded from the saved folder on CPU, with the pipeline's own (full) VAE."""
    engine = DiffusersEngine(model_dir=str(tiny_pipeline_dir), device="cpu", vae="full", threads=1)
    engine.load()
    return engine


@pytest.fixture(scope="module")
def tiny_vae_dir(tmp_path_factory):
    """A tiny random AutoencoderTiny saved to a folder (TAESD's component type)."""
    return save_random_tiny_vae(tmp_path_factory.mktemp("taesd") / "tiny-taesd", shape="tiny")


def test_cpu_default_decodes_with_the_tiny_autoencoder(tiny_pipeline_dir, tiny_vae_dir):
    """On CPU the engine swaps in the tiny autoencoder (TAESD, 8x upsampling: 16 latents -> 128 px),
    deterministically by seed; vae="full" keeps the pipeline's own VAE."""
    engine = DiffusersEngine(
        model_dir=str(tiny_pipeline_dir), device="cpu", tiny_vae_id=tiny_vae_dir, threads=1
    )
    assert (
        engine.vae == "tiny" and DiffusersEngine(model_dir=str(tiny_pipeline_dir)).tiny_vae_id == TINY_VAE_ID
    )
    engine.load()
    assert type(engine.pipeline.vae).__name__ == "AutoencoderTiny"
    assert engine.describe()["vae"] == "tiny"
    jobs = [ImageJob("a red fox", 7, 0), ImageJob("a cat", 7, 1)]
    first, again = engine.generate(jobs), engine.generate(jobs)
    assert [im.size for im in first] == [(128, 128), (128, 128)]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(np.asarray(first[0]), np.asarray(first[1]))


def test_full_vae_is_one_option_away(tiny_pipeline_dir, monkeypatch):
    """S2I_SD_VAE=full (or vae="full", --vae full) keeps the model's own VAE on CPU."""
    monkeypatch.setenv("S2I_SD_VAE", "full")
    assert create_engine("sd-turbo", model_dir=str(tiny_pipeline_dir)).vae == "full"
    monkeypatch.delenv("S2I_SD_VAE")
    assert create_engine("sd-turbo", model_dir=str(tiny_pipeline_dir)).vae == "tiny"
    with pytest.raises(ValueError, match="vae"):
        DiffusersEngine(model_dir=str(tiny_pipeline_dir), vae="small")


def test_missing_tiny_autoencoder_offline_says_how_to_go_on(tiny_pipeline_dir, monkeypatch):
    """Offline without TAESD in the cache: ModelNotAvailable naming it and the full-VAE option."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    engine = DiffusersEngine(
        model_dir=str(tiny_pipeline_dir), device="cpu", tiny_vae_id="speech2image-tests/not-a-cached-taesd"
    )
    with pytest.raises(ModelNotAvailable, match="S2I_SD_VAE=full"):
        engine.load()


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
    assert time.monotonic() - started < 10 * TIME_FACTOR
