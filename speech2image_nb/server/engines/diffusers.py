"""The diffusers engine: SD-Turbo by default, or any ``AutoPipelineForText2Image`` model.

``stabilityai/sd-turbo`` makes a 512x512 picture in one to four steps with no classifier-free
guidance, so it suits small GPUs (a Colab T4) where DALL-E mega does not fit or is slow. Each image
starts from noise drawn by its own CPU ``torch.Generator`` seeded with the job's image seed, so an
image is the same alone or in a batch, and the same starting noise is used on CPU and GPU.

On a CPU the full VAE decode takes most of a one-step picture's time, so there the engine decodes
with diffusers' tiny autoencoder (``AutoencoderTiny`` with the ``madebyollin/taesd`` weights, made
for the SD 1.x/2.x latent space), loaded through the hub like the rest; ``vae="full"`` keeps the
model's own VAE (the GPU default). Work runs on the physical cores, set around each call only.

Note: ``import diffusers`` below is the library (absolute import), not this module.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import EngineError, ModelNotAvailable
from ...hub import MODEL_DIR_HINT, hub_unavailable
from .base import Engine, ImageJob, LoadProgress, StepProgress, resolve_device_and_dtype
from .cpu import bf16_is_native, resolve_threads, torch_threads
from .engine_thread import on_engine_thread

if TYPE_CHECKING:
    import torch
    from PIL import Image

__all__ = [
    "DEFAULT_MODEL_ID",
    "TINY_VAE_ID",
    "DiffusersEngine",
    "latents_to_preview",
    "save_random_pipeline",
    "save_random_tiny_vae",
]

log = logging.getLogger(__name__)

DEFAULT_MODEL_ID = "stabilityai/sd-turbo"
#: the tiny autoencoder for SD 1.x/2.x latents (TAESD)
TINY_VAE_ID = "madebyollin/taesd"
#: accepted values of ``vae``
VAE_CHOICES = ("tiny", "full")
#: (steps, guidance_scale) for distilled one-step models and for ordinary diffusion models
TURBO_DEFAULTS = (1, 0.0)
CLASSIC_DEFAULTS = (25, 7.5)
MAX_STEPS = 100
MAX_GUIDANCE = 30.0

#: SD 1.x/2.x latent channels -> approximate RGB (a cheap preview without the VAE)
_LATENT_RGB = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)


def latents_to_preview(latents: torch.Tensor) -> list[Image.Image] | None:
    """Small RGB previews of 4-channel SD latents ``[n, 4, h, w]`` (``None`` for other latents)."""
    import torch
    from PIL import Image

    if latents.dim() != 4 or latents.shape[1] != len(_LATENT_RGB):
        return None
    factors = torch.tensor(_LATENT_RGB, dtype=torch.float32)
    rgb = latents.detach().float().cpu().permute(0, 2, 3, 1) @ factors
    pixels = ((rgb + 1) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    return [Image.fromarray(p) for p in pixels]


def _is_turbo(model_id: str) -> bool:
    name = model_id.lower()
    return any(word in name for word in ("turbo", "schnell", "lightning", "sprint", "lcm"))


class DiffusersEngine(Engine):
    """Text-to-image with a diffusers pipeline.

    Parameters
    ----------
    model_id
        Hugging Face model id or a local folder written by ``save_pretrained``.
    model_dir
        local folder that overrides ``model_id`` (the server's ``--model-dir``).
    device
        ``"cuda"``, ``"cpu"``; ``None`` picks CUDA when available.
    dtype
        ``"fp16"``, ``"bf16"`` or ``"fp32"``; ``None`` means fp16 on CUDA, fp32 on CPU (computed
        under bf16 autocast where the CPU has bf16 natively: :attr:`cpu_bf16`).
    max_batch
        images per pipeline call; default 8 on CUDA, 2 on CPU.
    default_steps, default_guidance_scale
        used when a request gives none; ``None`` picks (1, 0.0) for turbo-style models and
        (25, 7.5) otherwise.
    vae
        ``"tiny"``: decode with the tiny autoencoder ``tiny_vae_id`` (SD 1.x/2.x pipelines only;
        others keep their own); ``"full"``: the model's own VAE. ``None``: tiny on CPU, full on CUDA.
    tiny_vae_id
        Hugging Face id or local folder (``save_pretrained``) of an ``AutoencoderTiny``.
    threads
        torch CPU threads during this engine's work (set around each call, then restored);
        ``None``: ``$S2I_CPU_THREADS``, else the physical cores.
    """

    option_names = frozenset({"steps", "guidance_scale"})

    def __init__(
        self,
        *,
        model_id: str = DEFAULT_MODEL_ID,
        model_dir: str | Path | None = None,
        device: str | None = None,
        dtype: str | None = None,
        max_batch: int | None = None,
        default_steps: int | None = None,
        default_guidance_scale: float | None = None,
        vae: str | None = None,
        tiny_vae_id: str | Path = TINY_VAE_ID,
        threads: int | None = None,
    ) -> None:
        self.model_id = str(model_dir) if model_dir is not None else model_id
        self.model_dir_given = model_dir is not None
        self.is_local = Path(self.model_id).is_dir()
        self.name = Path(self.model_id).name if self.is_local else self.model_id.split("/")[-1]
        self._device, self.dtype_name = resolve_device_and_dtype(device, dtype)
        self.device = str(self._device)
        is_cuda = self._device.type == "cuda"
        self.max_batch = int(max_batch) if max_batch is not None else (8 if is_cuda else 2)
        steps, guidance = TURBO_DEFAULTS if _is_turbo(self.model_id) else CLASSIC_DEFAULTS
        self.defaults = {
            "steps": steps if default_steps is None else int(default_steps),
            "guidance_scale": guidance if default_guidance_scale is None else float(default_guidance_scale),
        }
        self.validate_options(self.defaults)
        self.vae = vae if vae is not None else ("full" if is_cuda else "tiny")
        if self.vae not in VAE_CHOICES:
            raise ValueError(f"vae must be one of {', '.join(VAE_CHOICES)}, not {vae!r}")
        self.tiny_vae_id = str(tiny_vae_id)
        self.threads = None if is_cuda else resolve_threads(threads)
        #: on a CPU that computes bf16 natively, the default (fp32 weights) runs under bf16 autocast:
        #: an SD-Turbo-shaped pipeline with TAESD, 512 px, took 2.7 s instead of 5.8 s (2 cores,
        #: Sapphire Rapids), the picture within 57.7 dB PSNR of fp32's; ``dtype="fp32"`` stays exact
        self.cpu_bf16 = dtype is None and not is_cuda and bf16_is_native()
        self.pipeline: Any = None

    def _work(self) -> Any:
        """This engine's CPU thread count for the duration of one call (nothing on CUDA)."""
        import contextlib

        return torch_threads(self.threads) if self.threads is not None else contextlib.nullcontext()

    def _precision(self) -> Any:
        """bf16 autocast where :attr:`cpu_bf16` (see there), else nothing."""
        import torch

        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cpu_bf16)

    @on_engine_thread
    def load(self, progress: LoadProgress | None = None) -> None:
        """Load (downloading into the Hugging Face cache if needed) and move the pipeline to the device."""
        import torch

        if progress is not None:
            progress(0.0, f"loading {self.model_id}")
        dtype = getattr(torch, self.dtype_name)
        with self._work():
            pipeline = self._load_pipeline(dtype)
            if self.vae == "tiny":
                if progress is not None:
                    progress(0.8, f"loading the tiny autoencoder {self.tiny_vae_id}")
                self._use_tiny_vae(pipeline, dtype)
            try:
                pipeline = pipeline.to(self._device)
            except RuntimeError as exc:
                raise EngineError(f"Could not move {self.model_id} to {self.device}: {exc}") from exc
        pipeline.set_progress_bar_config(disable=True)
        self.pipeline = pipeline
        if progress is not None:
            progress(1.0, f"{self.name} ready on {self.device}")
        log.info("%s loaded on %s (%s, %s VAE)", self.model_id, self.device, self.dtype_name, self.vae)

    def _load_pipeline(self, dtype: torch.dtype) -> Any:
        """The pipeline from the hub or a local folder (the fp16 variant first where it exists)."""
        import torch
        from diffusers import AutoPipelineForText2Image

        if self.model_dir_given and not self.is_local:
            raise ModelNotAvailable(
                f"The model folder {self.model_id} (S2I_MODEL_DIR) does not exist; point S2I_MODEL_DIR "
                "at a folder saved with save_pretrained, or unset it to download the model."
            )
        unavailable = None if self.is_local else hub_unavailable()
        attempts: list[dict[str, Any]] = [{}]
        if dtype == torch.float16 and not self.is_local:
            attempts.insert(0, {"variant": "fp16"})  # half the download where the repo has it
        error: Exception | None = None
        for extra in attempts:
            try:
                return AutoPipelineForText2Image.from_pretrained(  # type: ignore[no-untyped-call]
                    self.model_id, torch_dtype=dtype, local_files_only=unavailable is not None, **extra
                )
            except (OSError, ValueError) as exc:
                error = exc
        if self.is_local:
            raise ModelNotAvailable(
                f"The diffusers model folder {self.model_id} (S2I_MODEL_DIR) could not be loaded "
                f"({error}); point S2I_MODEL_DIR at a folder saved with save_pretrained, or unset it "
                "to download the model."
            ) from error
        if unavailable is not None:
            raise ModelNotAvailable(
                f"The diffusers model {self.model_id} is not in the Hugging Face cache and cannot be "
                f"downloaded (offline: {unavailable}). Connect to the internet once, or {MODEL_DIR_HINT}."
            ) from error
        raise ModelNotAvailable(
            f"The diffusers model {self.model_id} could not be loaded ({error}); "
            f"try again, or {MODEL_DIR_HINT}."
        ) from error

    def _use_tiny_vae(self, pipeline: Any, dtype: torch.dtype) -> None:
        """Swap the pipeline's VAE for the tiny autoencoder, where its latent space fits."""
        from diffusers import AutoencoderTiny

        kind = type(pipeline).__name__
        if kind not in ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"):
            log.warning("%s is a %s: TAESD fits SD 1.x/2.x only, keeping its own VAE", self.model_id, kind)
            self.vae = "full"
            return
        offline = not Path(self.tiny_vae_id).is_dir() and hub_unavailable() is not None
        try:
            tiny = AutoencoderTiny.from_pretrained(  # type: ignore[no-untyped-call]
                self.tiny_vae_id, torch_dtype=dtype, local_files_only=offline
            )
        except (OSError, ValueError) as exc:
            raise ModelNotAvailable(
                f"The tiny autoencoder {self.tiny_vae_id} could not be loaded ({exc}). Connect to the "
                "internet once so it can be downloaded, or use the full VAE (S2I_SD_VAE=full, --vae full)."
            ) from exc
        pipeline.vae = tiny

    def validate_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Check ``steps`` (1-100) and ``guidance_scale`` (0-30)."""
        super().validate_options(options)
        steps = options.get("steps", self.defaults["steps"])
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
            raise ValueError(f"steps must be an integer between 1 and {MAX_STEPS}")
        guidance = options.get("guidance_scale", self.defaults["guidance_scale"])
        if (
            isinstance(guidance, bool)
            or not isinstance(guidance, (int, float))
            or not math.isfinite(guidance)
            or not 0 <= guidance <= MAX_GUIDANCE
        ):
            raise ValueError(f"guidance_scale must be a number between 0 and {MAX_GUIDANCE}")
        return {"steps": steps, "guidance_scale": float(guidance)}

    @on_engine_thread
    def generate(
        self, jobs: Sequence[ImageJob], *, on_progress: StepProgress | None = None
    ) -> list[Image.Image]:
        """One image per job; ``on_progress(step, steps, previews)`` after each denoising step."""
        import torch

        if self.pipeline is None:
            raise EngineError(f"The {self.name} engine is not loaded; call load() first.")
        by_job: dict[int, Image.Image] = {}
        groups: dict[tuple[int, float], list[ImageJob]] = {}
        for job in jobs:
            valid = self.validate_options(job.options)
            groups.setdefault((valid["steps"], valid["guidance_scale"]), []).append(job)
        for (steps, guidance), group in groups.items():
            for start in range(0, len(group), self.max_batch):
                chunk = group[start : start + self.max_batch]
                generators = [torch.Generator("cpu").manual_seed(job.image_seed) for job in chunk]

                def on_step(
                    pipe: Any, index: int, timestep: Any, tensors: dict[str, Any], steps: int = steps
                ) -> dict[str, Any]:
                    if on_progress is not None:
                        on_progress(index + 1, steps, latents_to_preview(tensors["latents"]))
                    return tensors

                try:
                    with torch.inference_mode(), self._work(), self._precision():
                        result = self.pipeline(
                            prompt=[job.prompt for job in chunk],
                            num_inference_steps=steps,
                            guidance_scale=guidance,
                            generator=generators,
                            output_type="pil",
                            callback_on_step_end=on_step if on_progress is not None else None,
                            callback_on_step_end_tensor_inputs=["latents"],
                        )
                except (RuntimeError, ValueError, MemoryError) as exc:
                    raise EngineError(f"{self.name} failed to generate on {self.device}: {exc}") from exc
                for job, image in zip(chunk, result.images, strict=True):
                    by_job[id(job)] = image.convert("RGB")
        return [by_job[id(job)] for job in jobs]

    def describe(self) -> dict[str, Any]:
        """Facts for ``GET /``: engine, device, max_batch, model, dtype, vae."""
        return {**super().describe(), "model": self.model_id, "dtype": self.dtype_name, "vae": self.vae}


# --- random pipelines for tests and benchmarks --------------------------------------------------

#: component sizes: "tiny" for tests (seconds on a CPU), "sd-turbo" for SD 2.1 / SD-Turbo FLOPs
_RANDOM_SHAPES: dict[str, dict[str, Any]] = {
    "tiny": {
        "unet": {
            "block_out_channels": (32, 64),
            "layers_per_block": 1,
            "sample_size": 16,
            "in_channels": 4,
            "out_channels": 4,
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
            "cross_attention_dim": 32,
        },
        "vae": {
            "block_out_channels": (32, 64),
            "in_channels": 3,
            "out_channels": 3,
            "latent_channels": 4,
            "down_block_types": ("DownEncoderBlock2D",) * 2,
            "up_block_types": ("UpDecoderBlock2D",) * 2,
        },
        "text": {
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_attention_heads": 4,
            "num_hidden_layers": 2,
        },
    },
    "sd-turbo": {
        "unet": {
            "sample_size": 64,
            "cross_attention_dim": 1024,
            "attention_head_dim": (5, 10, 20, 20),
            "use_linear_projection": True,
            "block_out_channels": (320, 640, 1280, 1280),
        },
        "vae": {
            "block_out_channels": (128, 256, 512, 512),
            "latent_channels": 4,
            "down_block_types": ("DownEncoderBlock2D",) * 4,
            "up_block_types": ("UpDecoderBlock2D",) * 4,
        },
        "text": {
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_attention_heads": 16,
            "num_hidden_layers": 23,
            "hidden_act": "gelu",
            "projection_dim": 1024,
        },
    },
}


def _byte_characters() -> list[str]:
    """The 256 characters byte-level BPE uses for the bytes (GPT-2's ``bytes_to_unicode``)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\u00a1"), ord("\u00ac") + 1),
        *range(ord("\u00ae"), ord("\u00ff") + 1),
    ]
    extra = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(extra))]


def _write_clip_tokenizer_files(directory: Path) -> int:
    """A CLIP BPE vocabulary of single characters (every byte) plus the two special tokens."""
    import json

    chars = _byte_characters()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    return len(vocab)


def save_random_pipeline(folder: str | Path, *, shape: str = "tiny", seed: int = 0) -> Path:
    """Save an SD-Turbo-shaped pipeline with random weights to ``folder`` (``save_pretrained``).

    It has SD-Turbo's component types (UNet2DConditionModel, CLIP text encoder and tokenizer,
    AutoencoderKL, Euler scheduler with trailing timesteps), so :class:`DiffusersEngine` loads it
    like a downloaded model: offline tests use ``shape="tiny"``, speed measurements
    ``shape="sd-turbo"`` (the real sizes, so the same FLOPs). The global RNG is left as it was.
    """
    import importlib
    import tempfile

    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    lib: Any = importlib.import_module("diffusers")  # the library (its classes are untyped)

    if shape not in _RANDOM_SHAPES:
        raise ValueError(f"shape must be one of {', '.join(_RANDOM_SHAPES)}, not {shape!r}")
    sizes = _RANDOM_SHAPES[shape]
    folder = Path(folder)
    with tempfile.TemporaryDirectory() as token_dir, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vocab_size = _write_clip_tokenizer_files(Path(token_dir))
        text_config = CLIPTextConfig(
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
            vocab_size=vocab_size,
            max_position_embeddings=77,
            **sizes["text"],
        )
        pipeline = lib.StableDiffusionPipeline(
            vae=lib.AutoencoderKL(**sizes["vae"]),
            text_encoder=CLIPTextModel(text_config),
            tokenizer=CLIPTokenizer(
                str(Path(token_dir) / "vocab.json"), str(Path(token_dir) / "merges.txt"), model_max_length=77
            ),
            unet=lib.UNet2DConditionModel(**sizes["unet"]),
            scheduler=lib.EulerDiscreteScheduler(
                beta_start=0.00085,
                beta_end=0.012,
                beta_schedule="scaled_linear",
                timestep_spacing="trailing",
            ),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipeline.save_pretrained(folder)
    return folder


#: AutoencoderTiny sizes: "tiny" for tests, "taesd" for the real TAESD (its published config)
_TINY_VAE_SHAPES: dict[str, dict[str, Any]] = {
    "tiny": {
        "encoder_block_out_channels": (8, 8, 8, 8),
        "decoder_block_out_channels": (8, 8, 8, 8),
        "num_encoder_blocks": (1, 1, 1, 1),
        "num_decoder_blocks": (1, 1, 1, 1),
    },
    "taesd": {},
}


def save_random_tiny_vae(folder: str | Path, *, shape: str = "tiny", seed: int = 0) -> Path:
    """Save an ``AutoencoderTiny`` with random weights to ``folder`` (``save_pretrained``).

    Tests load it as ``tiny_vae_id`` through the same code as the downloaded TAESD;
    ``shape="taesd"`` has TAESD's real sizes (the same FLOPs) for speed measurements.
    """
    import importlib

    import torch

    lib: Any = importlib.import_module("diffusers")
    if shape not in _TINY_VAE_SHAPES:
        raise ValueError(f"shape must be one of {', '.join(_TINY_VAE_SHAPES)}, not {shape!r}")
    folder = Path(folder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lib.AutoencoderTiny(**_TINY_VAE_SHAPES[shape]).save_pretrained(folder)
    return folder
