"""The DALL-E mini engine on tiny random checkpoints: loading, errors, determinism, previews, options."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from speech2image_nb.errors import ModelNotAvailable
from speech2image_nb.server.engines.base import ImageJob
from speech2image_nb.server.engines.dalle_mini import DalleMiniEngine, save_random_checkpoint
from speech2image_nb.server.engines.dalle_mini.previews import LazyPreviews, PreviewPacer
from speech2image_nb.server.engines.dalle_mini.sampler import HashNoise

from .conftest import TIME_FACTOR

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A tiny random mini-shaped checkpoint in min-dalle's file format."""
    return save_random_checkpoint(tmp_path_factory.mktemp("tiny"), "tiny", seed=0)


@pytest.fixture(scope="module")
def engine(tiny_dir):
    """The engine loaded from the tiny checkpoint on CPU (the default int8 path, one thread)."""
    engine = DalleMiniEngine(model_dir=tiny_dir, device="cpu", threads=1)
    engine.load()
    return engine


def pixels(image):
    return np.asarray(image, dtype=np.int16)


def test_loads_hugging_face_file_names_and_reports_progress(tiny_dir):
    """The five files under their Hugging Face names load; progress goes from 0 to 1."""
    assert sorted(p.name for p in tiny_dir.iterdir()) == [
        "dalle_config.json",
        "decoder_mini.pt",
        "detoker.pt",
        "encoder_mini.pt",
        "merges_mini.txt",
        "vocab_mini.json",
    ]
    reports = []
    engine = DalleMiniEngine(model_dir=tiny_dir, device="cpu")
    engine.load(lambda fraction, message: reports.append(fraction))
    assert reports[-1] == 1.0 and reports == sorted(reports)
    assert engine.describe() == {"engine": "dalle-mini", "device": "cpu", "max_batch": 4, "dtype": "int8"}


def test_loads_min_dalle_models_root_layout(tmp_path, tiny_dir, engine):
    """min-dalle's own folder layout (dalle_bart_mini/, vqgan/) loads too, with the same result."""
    (tmp_path / "dalle_bart_mini").mkdir()
    (tmp_path / "vqgan").mkdir()
    for src, dst in [
        ("vocab_mini.json", "dalle_bart_mini/vocab.json"),
        ("merges_mini.txt", "dalle_bart_mini/merges.txt"),
        ("encoder_mini.pt", "dalle_bart_mini/encoder.pt"),
        ("decoder_mini.pt", "dalle_bart_mini/decoder.pt"),
        ("detoker.pt", "vqgan/detoker.pt"),
        ("dalle_config.json", "dalle_config.json"),
    ]:
        shutil.copy(tiny_dir / src, tmp_path / dst)
    other = DalleMiniEngine(model_dir=tmp_path, device="cpu")
    other.load()
    job = ImageJob("a fox", 3, 0)
    assert np.array_equal(pixels(other.generate([job])[0]), pixels(engine.generate([job])[0]))


def test_missing_file_is_named(tmp_path, tiny_dir):
    """A folder without decoder_mini.pt: ModelNotAvailable naming it and where to get it."""
    for p in tiny_dir.iterdir():
        if p.name != "decoder_mini.pt":
            shutil.copy(p, tmp_path / p.name)
    with pytest.raises(ModelNotAvailable, match=r"decoder_mini\.pt.*huggingface\.co/kuprel/min-dalle"):
        DalleMiniEngine(model_dir=tmp_path, device="cpu").load()


@pytest.mark.parametrize("damage", ["truncated", "html"])
def test_broken_checkpoint_is_named_with_a_fix(tmp_path, tiny_dir, damage):
    """A truncated or non-checkpoint decoder file: ModelNotAvailable naming the file and the fix."""
    shutil.copytree(tiny_dir, tmp_path / "m")
    path = tmp_path / "m" / "decoder_mini.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"<html>502 Bad Gateway</html>")
    with pytest.raises(ModelNotAvailable) as info:
        DalleMiniEngine(model_dir=tmp_path / "m", device="cpu").load()
    assert str(path) in str(info.value) and "download it again" in str(info.value)


def test_wrong_variant_is_refused(tiny_dir):
    """Asking for mega over a mini checkpoint folder says which engine fits."""
    with pytest.raises(ModelNotAvailable, match="dalle-mini"):
        DalleMiniEngine(True, model_dir=tiny_dir, device="cpu").load()


def test_offline_without_cache_fails_fast_and_clearly(tmp_path, monkeypatch):
    """No model folder, HF_HUB_OFFLINE and an empty cache: ModelNotAvailable within seconds."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    engine = DalleMiniEngine(device="cpu", cache_dir=tmp_path)
    started = time.monotonic()
    with pytest.raises(ModelNotAvailable, match=r"vocab_mini\.json.*offline"):
        engine.load()
    assert time.monotonic() - started < 10 * TIME_FACTOR


def test_image_is_the_same_alone_or_in_a_batch(engine):
    """Per-image generators: a job gives the same pixels alone and as the 3rd image of a batch."""
    jobs = [ImageJob("a red fox", 5, 0), ImageJob("a cat in the snow", 9, 0), ImageJob("a dog", 5, 2)]
    batched = engine.generate(jobs)
    alone = engine.generate([jobs[2]])
    assert np.array_equal(pixels(batched[2]), pixels(alone[0]))
    assert not np.array_equal(pixels(batched[0]), pixels(batched[2]))
    assert [im.size for im in batched] == [(256, 256)] * 3


def test_hash_noise_path_is_deterministic_and_batch_independent(tiny_dir):
    """The CUDA default noise (counter-based, graph-replayable) run on CPU: same tokens alone or batched."""
    engine = DalleMiniEngine(model_dir=tiny_dir, device="cpu", noise="hash")
    engine.load()
    batched = engine.sample_image_tokens(["a red fox", "a blue sky"], [21, 22])
    alone = engine.sample_image_tokens(["a blue sky"], [22])
    assert torch.equal(batched[1], alone[0])
    assert not torch.equal(batched[0], batched[1])


def test_hash_noise_is_exponential():
    """HashNoise draws look like Exp(1) (mean and variance near 1) and differ per seed and step."""
    noise = HashNoise(torch.tensor([1, 2], dtype=torch.long))
    a = noise(torch.tensor([0]))
    b = noise(torch.tensor([1]))
    assert abs(a.mean().item() - 1) < 0.03 and abs(a.var().item() - 1) < 0.08
    assert (a > 0).all() and torch.isfinite(a).all()
    assert not torch.equal(a[0], a[1]) and not torch.equal(a, b)
    assert torch.equal(a, noise(torch.tensor([0])))


def test_previews_every_32_tokens(tiny_dir):
    """Unlimited preview budget (the CUDA default): 7 previews (one image per job) at 32..224 tokens,
    then (256, 256, None); an image is decoded only when read."""
    engine = DalleMiniEngine(model_dir=tiny_dir, device="cpu", preview_budget=math.inf)
    engine.load()
    calls = []

    def on_progress(step, total, previews):
        calls.append((step, total, previews))
        if previews is not None:
            assert previews.decoded == 0
            assert previews[1].size == (256, 256) and previews.decoded == 1

    engine.generate([ImageJob("a fox", 1, 0), ImageJob("a fox", 1, 1)], on_progress=on_progress)
    assert [(s, t) for s, t, _ in calls] == [(32 * i, 256) for i in range(1, 9)]
    assert all(len(p) == 2 and p[0].size == (256, 256) for _, _, p in calls[:-1])
    assert calls[-1][2] is None
    assert engine.last_previews.shown == 7 and engine.last_previews.skipped == 0


def test_bf16_previews_look_like_the_fp32_picture(engine):
    """A preview decoded under bf16 autocast (chosen where it measures faster) is close to the fp32
    picture; final pictures stay fp32."""
    tokens = engine.sample_image_tokens(["a red fox"], [3])
    final = pixels(engine.to_images(tokens)[0])
    chosen = engine._preview_in_bf16
    try:
        engine._preview_in_bf16 = True
        preview = pixels(engine._preview_image(tokens))
    finally:
        engine._preview_in_bf16 = chosen
    assert np.abs(preview - final).mean() < 4 and np.array_equal(pixels(engine.to_images(tokens)[0]), final)


def test_lazy_previews_decode_each_image_once():
    """LazyPreviews decodes an image on first read only, from a copy of the tokens."""
    tokens = torch.arange(6).reshape(3, 2)
    seen = []
    previews = LazyPreviews(tokens, lambda t: seen.append(t.tolist()) or t.sum().item())
    tokens.zero_()  # the generation goes on writing its buffer
    assert previews[2] == 9 and previews[2] == 9 and previews[-3] == 1
    assert seen == [[[4, 5]], [[0, 1]]] and previews.decoded == 2
    assert list(previews) == [1, 5, 9] and previews[0:2] == [1, 5] and previews.decoded == 3


def test_preview_pacer_keeps_previews_within_budget():
    """With a clock: 32 tokens take 1 s, a preview 0.5 s, budget 0.2: previews are spread out and
    their time never exceeds a fifth of the sampling time."""
    now = [0.0]
    pacer = PreviewPacer(0.2, 0.5, clock=lambda: now[0])
    shown_at = []
    for step in range(32, 256, 32):
        now[0] += 1.0  # 32 decoder steps
        if pacer.allows():
            now[0] += 0.5
            pacer.record(0.5)
            shown_at.append(step)
        assert pacer.spent <= 0.2 * pacer.sampling_seconds()
    assert shown_at == [96, 160] and (pacer.shown, pacer.skipped) == (2, 5)
    assert PreviewPacer(math.inf, 99.0, clock=lambda: 0.0).allows()


def time_generation(engine, jobs, *, previews):
    calls = []

    def on_progress(step, total, images):
        calls.append(step)
        if images is not None:
            images[0]  # what the server reads: the first image of each request

    started = time.perf_counter()
    images = engine.generate(jobs, on_progress=on_progress if previews else None)
    return time.perf_counter() - started, images, calls


@pytest.mark.parametrize("budget", [None, "half"])
def test_cpu_previews_cost_at_most_their_budget(tiny_dir, budget):
    """On CPU (default budget 0.2, and a budget measured here to fit about half of the preview
    points): same pictures with and without previews, progress every 32 tokens, and previews add
    at most the budget (best of 3 alternating runs, with slack)."""
    engine = DalleMiniEngine(
        model_dir=tiny_dir, device="cpu", preview_budget=None if budget is None else math.inf
    )
    engine.load()
    jobs = [ImageJob("a red fox", 11, 0), ImageJob("a red fox", 11, 1)]
    engine.generate(jobs)  # warm-up
    if budget == "half":
        # what a preview point and 32 tokens cost on this machine, every point shown: a budget of
        # half their ratio lets about every other point through (a fixed budget would fit all
        # points on one CPU and none on another)
        time_generation(engine, jobs, previews=True)
        every = engine.last_previews
        assert every is not None and every.shown == 7
        per_point = every.preview_seconds / every.shown
        engine.preview_budget = per_point / (2 * every.sampling_seconds / 8)
    share = engine.preview_budget
    off, on, reports = [], [], []
    for _ in range(3):
        seconds, plain, _ = time_generation(engine, jobs, previews=False)
        off.append(seconds)
        seconds, streamed, steps = time_generation(engine, jobs, previews=True)
        on.append(seconds)
        reports.append(engine.last_previews)
        assert steps == [32 * i for i in range(1, 9)]
        assert all(np.array_equal(pixels(a), pixels(b)) for a, b in zip(plain, streamed, strict=True))
    ratio = min(on) / min(off)
    print(f"budget {share}: off {min(off):.3f} s, on {min(on):.3f} s, ratio {ratio:.2f}, {reports}")
    assert ratio <= 1 + share * 1.5 + 0.1
    for report in reports:
        assert report.shown + report.skipped == 7
        assert report.preview_seconds <= share * 2 * report.sampling_seconds  # one preview may overrun
    if budget == "half":
        assert max(r.shown for r in reports) >= 1 and max(r.skipped for r in reports) >= 1


def test_options_change_the_picture_and_mixed_options_are_grouped(engine):
    """Jobs with different options in one call each get their own settings."""
    plain, hot = ImageJob("a fox", 4, 0), ImageJob("a fox", 4, 0, {"temperature": 8.0, "top_k": 2000})
    both = engine.generate([plain, hot])
    assert np.array_equal(pixels(both[0]), pixels(engine.generate([plain])[0]))
    assert np.array_equal(pixels(both[1]), pixels(engine.generate([hot])[0]))
    assert not np.array_equal(pixels(both[0]), pixels(both[1]))


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"temperature": 0}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_k": 0}, "top_k"),
        ({"top_k": 3.5}, "top_k"),
        ({"top_k": True}, "top_k"),
        ({"supercondition_factor": -1}, "supercondition_factor"),
        ({"steps": 4}, "steps"),
    ],
)
def test_invalid_options_name_the_field(engine, options, field):
    """validate_options raises ValueError naming the bad field."""
    with pytest.raises(ValueError, match=field):
        engine.validate_options(options)


def test_defaults_are_min_dalles(engine):
    """Options default to min-dalle's temperature 1, top_k 256, supercondition_factor 16."""
    assert engine.validate_options({}) == {"temperature": 1.0, "top_k": 256, "supercondition_factor": 16.0}


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_runs_on_cpu(tiny_dir, dtype):
    """bf16 and fp16 encoder/decoder work (the VQGAN stays fp32) and give an RGB picture."""
    engine = DalleMiniEngine(model_dir=tiny_dir, device="cpu", dtype=dtype)
    engine.load()
    tokens = engine.sample_image_tokens(["a fox"], [1])
    assert tokens.shape == (1, 256) and int(tokens.max()) < 2**14
    assert engine.describe()["dtype"] in ("bfloat16", "float16")
    (image,) = engine.generate([ImageJob("a fox", 1, 0)])
    assert image.mode == "RGB" and image.size == (256, 256)
    values = pixels(image)
    assert values.shape == (256, 256, 3) and values.std(axis=(0, 1)).min() > 1  # a picture, every channel


def test_generation_leaves_global_torch_state_alone(engine):
    """Generating keeps autograd on and the thread count as it was (no global settings)."""
    threads = torch.get_num_threads()
    assert torch.is_grad_enabled()
    engine.generate([ImageJob("a fox", 1, 0)])
    assert torch.is_grad_enabled() and torch.get_num_threads() == threads


def test_importing_the_engines_imports_no_torch():
    """Importing both engine modules does no work: torch is not even imported."""
    code = (
        "import sys, speech2image_nb.server.engines.dalle_mini, speech2image_nb.server.engines.diffusers\n"
        "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules, sorted(sys.modules)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_reused_static_buffers_give_the_same_tokens(tiny_dir, monkeypatch):
    """The CUDA-graph path keeps one set of buffers per batch size (dirtied by warm-up steps);
    reusing them across generations gives the same tokens as fresh buffers."""
    from speech2image_nb.server.engines.dalle_mini.engine import _Generation

    engine = DalleMiniEngine(model_dir=tiny_dir, device="cpu", noise="hash")
    engine.load()
    fresh = [
        engine.sample_image_tokens(p, s)
        for p, s in ((["a fox", "a cat"], [3, 4]), (["a dog", "sky"], [5, 6]))
    ]
    kept = {}

    def reuse(image_count, top_k, noise):
        if (image_count, top_k) not in kept:
            generation = _Generation(
                engine.model.config,
                engine.model.decoder,
                image_count,
                top_k,
                device=engine._device,
                dtype=engine._kv_dtype,
                noise=None,
            )
            with torch.inference_mode():
                for _ in range(3):  # the warm-up steps before a capture leave garbage behind
                    generation.step()
            kept[(image_count, top_k)] = generation
        return kept[(image_count, top_k)]

    monkeypatch.setattr(engine, "_generation", reuse)
    again = [
        engine.sample_image_tokens(p, s)
        for p, s in ((["a fox", "a cat"], [3, 4]), (["a dog", "sky"], [5, 6]))
    ]
    assert len(kept) == 1
    assert all(torch.equal(a, b) for a, b in zip(fresh, again, strict=True))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_cuda_graph_steps_match_eager_steps(tiny_dir, dtype):
    """On CUDA, replaying the captured step gives the same tokens as running it step by step."""
    graphs = DalleMiniEngine(model_dir=tiny_dir, device="cuda", dtype=dtype)
    eager = DalleMiniEngine(model_dir=tiny_dir, device="cuda", dtype=dtype, use_cuda_graphs=False)
    graphs.load()
    eager.load()
    prompts, seeds = ["a red fox", "a cat", "a dog"], [1, 2, 3]
    first = graphs.sample_image_tokens(prompts, seeds)
    assert graphs._generations and next(iter(graphs._generations.values())).graph is not None
    assert torch.equal(first, graphs.sample_image_tokens(prompts, seeds))
    assert torch.equal(first, eager.sample_image_tokens(prompts, seeds))
    alone = graphs.sample_image_tokens(prompts[1:2], seeds[1:2])
    assert torch.equal(first[1], alone[0])


class Wanted:
    """is_wanted flags that a test turns off at a chosen progress step."""

    def __init__(self):
        self.wanted = True

    def __call__(self):
        return self.wanted


@pytest.mark.parametrize("noise", ["generator", "hash"])
def test_a_job_cancelled_mid_sampling_frees_its_rows_at_the_next_step(tiny_dir, noise):
    """Two of three jobs stop being wanted at token 32: they stop there (None, no decode), and the
    job still wanted finishes alone in the smaller batch with exactly its picture."""
    engine = DalleMiniEngine(model_dir=tiny_dir, device="cpu", noise=noise, preview_budget=math.inf)
    engine.load()
    leaving = Wanted()
    jobs = [
        ImageJob("a red fox", 7, 0),
        ImageJob("a cat", 8, 0, is_wanted=leaving),
        ImageJob("a cat", 8, 1, is_wanted=leaving),
    ]
    previews_seen = []

    def on_progress(step, total, previews):
        if previews is not None:
            previews_seen.append((step, [previews[i] is not None for i in range(3)]))
        if step == 32:
            leaving.wanted = False

    images = engine.generate(jobs, on_progress=on_progress)
    assert engine.last_sampling.steps_by_image == (256, 32, 32) and engine.last_sampling.dropped == 2
    assert images[1] is None and images[2] is None
    alone = engine.generate([ImageJob("a red fox", 7, 0)])[0]
    assert np.array_equal(pixels(images[0]), pixels(alone))
    assert previews_seen[0] == (32, [True, True, True])
    assert previews_seen[1:] and all(seen == [True, False, False] for _, seen in previews_seen[1:])


def test_a_batch_nobody_wants_ends_without_decoding(tiny_dir, monkeypatch):
    """When every job of a batch stops being wanted, sampling stops there and nothing is decoded."""
    engine = DalleMiniEngine(model_dir=tiny_dir, device="cpu", preview_budget=0)
    engine.load()
    decodes = []
    decode = engine._decode
    monkeypatch.setattr(engine, "_decode", lambda *a, **k: decodes.append(1) or decode(*a, **k))
    leaving = Wanted()

    def on_progress(step, total, previews):
        if step == 64:
            leaving.wanted = False

    jobs = [ImageJob("a fox", 1, i, is_wanted=leaving) for i in range(2)]
    assert engine.generate(jobs, on_progress=on_progress) == [None, None]
    assert engine.last_sampling.steps_by_image == (64, 64) and decodes == []
    gone = ImageJob("a fox", 1, 0, is_wanted=lambda: False)
    assert engine.generate([gone]) == [None] and engine.last_sampling.steps_by_image == (0,)
