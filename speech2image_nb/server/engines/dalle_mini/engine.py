"""The DALL-E mini/mega engine: batching, the 256-step sampling loop, CUDA graphs, previews.

Per generation: encode each distinct prompt once (as min-dalle does, a pair of rows: the
unconditioned ``<s></s>`` and the prompt), compute every layer's cross-attention keys and values
once, then run 256 decoder steps over static buffers. On CUDA one step, sampling included, is
captured as a CUDA graph and replayed: the loop then issues no Python-side work per kernel and
never waits for the GPU, except every 32 steps when previews are asked for.

Previews (a VQGAN decode of the tokens so far) are offered every 32 tokens; how many are decoded
follows a time budget measured at run time (:mod:`.previews`): all of them on a GPU, as many as
keep them within 20% of the sampling time on a CPU, where one decode costs seconds.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ....errors import EngineError, ModelNotAvailable
from ..base import Engine, ImageJob, LoadProgress, StepProgress, resolve_device_and_dtype
from .config import IMAGE_CODEBOOK_COUNT, IMAGE_TOKEN_COUNT, START_TOKEN, DalleConfig
from .weights import MIN_DALLE_REVISION, apply_state_dict, load_state_dict, locate_files, read_config

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from .decoder import DalleBartDecoder, DecoderCache
    from .detokenizer import VQGanDetokenizer
    from .encoder import DalleBartEncoder
    from .tokenizer import TextTokenizer

__all__ = ["DEFAULT_OPTIONS", "DalleMiniEngine", "DalleOptions", "PreviewReport"]

log = logging.getLogger(__name__)

#: min-dalle's defaults
DEFAULT_OPTIONS: dict[str, Any] = {"temperature": 1.0, "top_k": 256, "supercondition_factor": 16.0}
#: tokens between two preview points (progress is reported at each; a preview image when affordable)
PREVIEW_EVERY = 32
#: on CPU, the largest ratio of preview time to sampling time (a VQGAN decode takes seconds there)
CPU_PREVIEW_BUDGET = 0.2
#: CUDA graphs kept (one per batch size and top_k); each holds its own KV cache
GRAPH_CACHE_SIZE = 3


DalleOptions = tuple[float, int, float]  # (temperature, top_k, supercondition_factor)


def _number(options: Mapping[str, Any], field: str, low: float, high: float, *, integer: bool) -> Any:
    value = options.get(field, DEFAULT_OPTIONS[field])
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise ValueError(f"{field} must be {kind} between {low} and {high}")
    if not (low <= value <= high) or (not integer and not math.isfinite(value)):
        raise ValueError(f"{field} must be {kind} between {low} and {high}, not {value}")
    return int(value) if integer else float(value)


@dataclasses.dataclass(frozen=True)
class PreviewReport:
    """How previews went in the last :meth:`DalleMiniEngine.generate` batch that asked for them."""

    shown: int
    skipped: int
    preview_seconds: float
    sampling_seconds: float


class _Generation:
    """Static buffers and the one-step function for a fixed number of images and ``top_k``."""

    def __init__(
        self,
        config: DalleConfig,
        decoder: DalleBartDecoder,
        image_count: int,
        top_k: int,
        *,
        device: torch.device,
        dtype: torch.dtype,
        noise: Callable[[torch.Tensor], torch.Tensor] | None,
    ) -> None:
        import torch

        from .decoder import DecoderCache
        from .sampler import HashNoise

        self.decoder = decoder
        self.image_count = image_count
        self.top_k = top_k
        self.cache: DecoderCache = DecoderCache.allocate(config, 2 * image_count, device=device, dtype=dtype)
        self.image_tokens = torch.full(
            (image_count, IMAGE_TOKEN_COUNT + 1), START_TOKEN, dtype=torch.long, device=device
        )
        self.position = torch.zeros(1, dtype=torch.long, device=device)
        self.temperature = torch.ones(1, device=device)
        self.supercondition_factor = torch.ones(1, device=device)
        self.seeds = torch.zeros(image_count, dtype=torch.long, device=device)
        self.noise = noise if noise is not None else HashNoise(self.seeds)
        self.graph: Any = None

    def reset(self, options: DalleOptions, seeds: Sequence[int]) -> None:
        """Start a new generation (the cross-attention part of the cache is filled separately)."""
        import torch

        temperature, _, supercondition_factor = options
        self.image_tokens.fill_(START_TOKEN)
        self.position.zero_()
        self.temperature.fill_(temperature)
        self.supercondition_factor.fill_(supercondition_factor)
        self.seeds.copy_(torch.tensor(list(seeds), dtype=torch.long))

    def step(self) -> None:
        """Sample the token at ``position`` for every image and advance ``position`` (all on device)."""
        from .sampler import sample_tokens

        prev_tokens = self.image_tokens.index_select(1, self.position)[:, 0]
        logits = self.decoder.step(prev_tokens, self.position, self.cache)
        tokens = sample_tokens(
            logits,
            top_k=self.top_k,
            temperature=self.temperature,
            supercondition_factor=self.supercondition_factor,
            noise=self.noise(self.position),
        )
        self.image_tokens.index_copy_(1, self.position + 1, tokens[:, None])
        self.position.add_(1)

    def capture(self) -> None:
        """Record :meth:`step` as a CUDA graph (after warm-up steps on a side stream)."""
        import torch

        stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                self.step()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.step()
        self.graph = graph

    def run_step(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        else:
            self.step()


class DalleMiniEngine(Engine):
    """DALL-E mini (``is_mega=False``) or mega, from min-dalle's checkpoint files.

    Parameters
    ----------
    is_mega
        mega (2.6B parameters, better pictures, ~6 GB in fp16) instead of mini (0.4B, ~1 GB).
    model_dir
        folder holding the files (Hugging Face names or min-dalle's layout); ``None`` downloads
        them from ``kuprel/min-dalle`` into the Hugging Face cache.
    device
        ``"cuda"``, ``"cuda:1"``, ``"cpu"``; ``None`` picks CUDA when available.
    dtype
        ``"fp32"``, ``"fp16"`` or ``"bf16"`` for encoder and decoder (the VQGAN always runs in fp32);
        ``None`` means fp16 on CUDA (every GPU has it; bf16 suits Ampere and newer) and fp32 on CPU.
    cache_dir
        Hugging Face cache folder (default: the hub's own).
    revision
        commit of ``kuprel/min-dalle`` to download.
    max_batch
        images per decoder forward; default 16 on CUDA, 4 on CPU.
    use_cuda_graphs
        replay each decoder step as a CUDA graph (falls back to plain execution if capture fails).
    noise
        ``"generator"``: a ``torch.Generator`` per image (min-dalle's exact draws; the CPU default);
        ``"hash"``: counter-based noise that a CUDA graph can replay (the CUDA default). The same
        seed gives different pictures with the two, and each is the same alone or in a batch.
    preview_budget
        largest ratio of preview time to sampling time, measured while generating: a preview due
        every 32 tokens is decoded only if it fits (``math.inf``: always). ``None`` means
        unlimited on CUDA (a decode takes milliseconds) and 0.2 on CPU (it takes seconds there);
        a finite budget times one VQGAN decode during :meth:`load`, as the first estimate, then
        each shown preview and each final decode refresh it.
    """

    option_names = frozenset(DEFAULT_OPTIONS)

    def __init__(
        self,
        is_mega: bool = False,
        *,
        model_dir: str | Path | None = None,
        device: str | None = None,
        dtype: str | None = None,
        cache_dir: str | Path | None = None,
        revision: str = MIN_DALLE_REVISION,
        max_batch: int | None = None,
        use_cuda_graphs: bool = True,
        noise: str | None = None,
        preview_budget: float | None = None,
    ) -> None:
        import torch

        self.is_mega = bool(is_mega)
        self.name = "dalle-mega" if self.is_mega else "dalle-mini"
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.revision = revision
        self._device, self.dtype_name = resolve_device_and_dtype(device, dtype)
        self.device = str(self._device)
        is_cuda = self._device.type == "cuda"
        self._dtype = getattr(torch, self.dtype_name)
        self.max_batch = int(max_batch) if max_batch is not None else (16 if is_cuda else 4)
        if self.max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.use_cuda_graphs = bool(use_cuda_graphs) and is_cuda
        self.noise = noise if noise is not None else ("hash" if is_cuda else "generator")
        if self.noise not in ("generator", "hash"):
            raise ValueError(f"noise must be 'generator' or 'hash', not {noise!r}")
        if preview_budget is None:
            preview_budget = math.inf if is_cuda else CPU_PREVIEW_BUDGET
        if not preview_budget >= 0:
            raise ValueError(f"preview_budget must be a number >= 0, not {preview_budget!r}")
        self.preview_budget = float(preview_budget)
        #: seconds of one preview image (measured), and images the consumer read per preview
        self._preview_image_seconds = 0.0
        #: decode previews under bf16 autocast (chosen at load where it measured faster), and
        #: the measured ratio of a preview decode to a final (fp32) one
        self._preview_in_bf16 = False
        self._preview_to_final = 1.0
        self._images_per_preview: int | None = None
        #: previews of the last batch generated with ``on_progress``
        self.last_previews: PreviewReport | None = None
        self.config: DalleConfig | None = None
        self.tokenizer: TextTokenizer | None = None
        self.encoder: DalleBartEncoder | None = None
        self.decoder: DalleBartDecoder | None = None
        self.detokenizer: VQGanDetokenizer | None = None
        self._generations: collections.OrderedDict[tuple[int, int], _Generation] = collections.OrderedDict()

    # --- loading -------------------------------------------------------------------------------

    def load(self, progress: LoadProgress | None = None) -> None:
        """Find or download the five files, build the three networks and load their weights."""
        import torch

        from .decoder import DalleBartDecoder
        from .detokenizer import VQGanDetokenizer
        from .encoder import DalleBartEncoder
        from .tokenizer import TextTokenizer

        config = read_config(self.is_mega, self.model_dir)

        def fetch_progress(fraction: float, message: str) -> None:
            if progress is not None:
                progress(0.6 * fraction, message)

        paths = locate_files(
            config,
            model_dir=self.model_dir,
            cache_dir=self.cache_dir,
            revision=self.revision,
            progress=fetch_progress,
        )
        try:
            tokenizer = TextTokenizer.from_files(paths["vocab"], paths["merges"])
        except (ValueError, OSError, UnicodeDecodeError) as exc:
            raise ModelNotAvailable(
                f"The tokenizer files {paths['vocab']} / {paths['merges']} are unreadable ({exc}). "
                "Delete them and download them again."
            ) from exc

        builders: dict[str, Callable[[], torch.nn.Module]] = {
            "encoder": lambda: DalleBartEncoder(config, pad_token=tokenizer.pad_token),
            "decoder": lambda: DalleBartDecoder(config),
            "detokenizer": lambda: VQGanDetokenizer(width_divisor=config.vqgan_width_divisor),
        }
        modules: dict[str, torch.nn.Module] = {}
        for i, (role, build) in enumerate(builders.items()):
            if progress is not None:
                progress(0.6 + 0.4 * i / len(builders), f"loading {paths[role].name}")
            with torch.device("meta"):
                module = build()
            dtype = torch.float32 if role == "detokenizer" else self._dtype
            module = module.to_empty(device=self._device).to(dtype)
            for sub in module.modules():  # norms may be absent from the files (min-dalle tolerates it)
                if isinstance(sub, (torch.nn.LayerNorm, torch.nn.GroupNorm)):
                    sub.reset_parameters()
            apply_state_dict(module, load_state_dict(paths[role]), paths[role])
            modules[role] = module.eval().requires_grad_(False)
        self.config = config
        self.tokenizer = tokenizer
        self.encoder = modules["encoder"]  # type: ignore[assignment]
        self.decoder = modules["decoder"]  # type: ignore[assignment]
        self.detokenizer = modules["detokenizer"]  # type: ignore[assignment]
        self._generations.clear()
        if math.isfinite(self.preview_budget):
            self._preview_image_seconds = self._time_preview()
        if progress is not None:
            progress(1.0, f"{self.name} ready on {self.device}")
        log.info("%s loaded on %s (%s)", self.name, self.device, self.dtype_name)

    def _time_preview(self) -> float:
        """Seconds of one preview image on this device (also warms the VQGAN up).

        Previews need not match the final picture to the last bit, so where bf16 autocast decodes
        faster (CPUs with bf16 instructions: 1.5-2.2 s instead of 3.2-3.8 s per image measured on the
        2-core test machine) previews use it; final pictures always decode in fp32.
        """
        import torch

        tokens = torch.full((1, IMAGE_TOKEN_COUNT), START_TOKEN, dtype=torch.long)
        timings = {}
        for in_bf16 in (False, True):
            self._preview_in_bf16 = in_bf16
            started = time.perf_counter()
            self._preview_image(tokens)
            timings[in_bf16] = time.perf_counter() - started
        self._preview_in_bf16 = timings[True] < 0.8 * timings[False]
        seconds = timings[self._preview_in_bf16]
        self._preview_to_final = seconds / timings[False]
        log.debug(
            "%s on %s: a preview image takes %.3f s in fp32, %.3f s in bf16",
            self.name,
            self.device,
            timings[False],
            timings[True],
        )
        return seconds

    def _preview_image(self, image_tokens: torch.Tensor) -> Image.Image:
        """A preview picture of tokens ``[1, 256]`` (bf16 autocast where that measured faster)."""
        import torch
        from PIL import Image

        *_, detokenizer = self._require_loaded()
        tokens = image_tokens.to(self._device)
        with (
            torch.inference_mode(),
            torch.autocast(self._device.type, dtype=torch.bfloat16, enabled=self._preview_in_bf16),
        ):
            pixels = detokenizer(tokens)[0].float()
        return Image.fromarray(pixels.to(torch.uint8).cpu().numpy())

    # --- options -------------------------------------------------------------------------------

    def validate_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Check ``temperature`` (0.01-16), ``top_k`` (1-16384), ``supercondition_factor`` (0-256)."""
        super().validate_options(options)
        return {
            "temperature": _number(options, "temperature", 0.01, 16.0, integer=False),
            "top_k": _number(options, "top_k", 1, IMAGE_CODEBOOK_COUNT, integer=True),
            "supercondition_factor": _number(options, "supercondition_factor", 0.0, 256.0, integer=False),
        }

    def _options_tuple(self, options: Mapping[str, Any]) -> DalleOptions:
        valid = self.validate_options(options)
        return (valid["temperature"], valid["top_k"], valid["supercondition_factor"])

    # --- generation ----------------------------------------------------------------------------

    def _require_loaded(self) -> tuple[DalleConfig, TextTokenizer, Any, Any, Any]:
        if self.config is None or self.tokenizer is None:
            raise EngineError(f"The {self.name} engine is not loaded; call load() first.")
        return self.config, self.tokenizer, self.encoder, self.decoder, self.detokenizer

    def _text_rows(self, prompt: str) -> list[list[int]]:
        """The two encoder rows of a prompt, exactly as min-dalle builds them (pad = ``<pad>``)."""
        config, tokenizer, *_ = self._require_loaded()
        tokens = tokenizer.tokenize(prompt)[: config.text_token_count]
        pad = tokenizer.pad_token
        uncond = [tokens[0], tokens[-1]] + [pad] * (config.text_token_count - 2)
        cond = tokens + [pad] * (config.text_token_count - len(tokens))
        return [uncond, cond]

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder-side text states ``[2n, 64, embed]`` and mask ``[2n, 64]`` for n prompts.

        Each distinct prompt is encoded alone with its unconditioned row, as in min-dalle, so an
        image does not depend on the other prompts of its batch.
        """
        import torch

        _, tokenizer, encoder, _, _ = self._require_loaded()
        states: dict[str, torch.Tensor] = {}
        for prompt in dict.fromkeys(prompts):
            rows = torch.tensor(self._text_rows(prompt), dtype=torch.long, device=self._device)
            states[prompt] = encoder(rows)
        uncond = [states[p][0] for p in prompts]
        cond = [states[p][1] for p in prompts]
        encoder_state = torch.stack(uncond + cond)
        masks = [
            torch.tensor(self._text_rows(p), device=self._device).ne(tokenizer.pad_token) for p in prompts
        ]
        mask = torch.stack([m[0] for m in masks] + [m[1] for m in masks])
        return encoder_state, mask

    def _generation(self, image_count: int, top_k: int, noise: Any) -> _Generation:
        """Static buffers (and on CUDA a captured graph) for this batch size, cached."""
        config, _, _, decoder, _ = self._require_loaded()
        if noise is not None or not self.use_cuda_graphs:
            return _Generation(
                config, decoder, image_count, top_k, device=self._device, dtype=self._dtype, noise=noise
            )
        key = (image_count, top_k)
        generation = self._generations.get(key)
        if generation is None:
            generation = _Generation(
                config, decoder, image_count, top_k, device=self._device, dtype=self._dtype, noise=None
            )
            try:
                generation.capture()
            except Exception as exc:  # a driver/torch combination without graph support
                log.warning("CUDA graph capture failed (%s); running steps one by one", exc)
                self.use_cuda_graphs = False
                generation.graph = None
            self._generations[key] = generation
            while len(self._generations) > GRAPH_CACHE_SIZE:
                self._generations.popitem(last=False)
        self._generations.move_to_end(key)
        return generation

    def sample_image_tokens(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        options: Mapping[str, Any] | None = None,
        *,
        generators: Sequence[torch.Generator] | None = None,
        on_tokens: Callable[[int, torch.Tensor], None] | None = None,
        token_count: int = IMAGE_TOKEN_COUNT,
    ) -> torch.Tensor:
        """The 256 image tokens ``[n, 256]`` of each (prompt, seed).

        Parameters
        ----------
        prompts, seeds
            one per image; ``seeds`` seed each image's own noise stream.
        options
            engine options (validated); defaults are min-dalle's.
        generators
            explicit ``torch.Generator`` per image for the noise (the CPU default: generators
            seeded with ``seeds``). Seeded like min-dalle's global RNG, they reproduce its draws.
        on_tokens
            called as ``on_tokens(step, image_tokens)`` every 32 steps (not after the last).
        token_count
            sample only this many tokens (the rest stay the start token): a partial picture, for
            quick checks of full-size models on slow machines.
        """
        import torch

        from .sampler import GeneratorNoise

        options_tuple = self._options_tuple(options or {})
        _, _, _, decoder, _ = self._require_loaded()
        if len(prompts) != len(seeds):
            raise ValueError("one seed per prompt")
        noise = None
        if generators is None and self.noise == "generator":
            generators = [torch.Generator(device=self._device).manual_seed(int(s)) for s in seeds]
        if generators is not None:
            noise = GeneratorNoise(generators, device=self._device)
        with torch.inference_mode():
            generation = self._generation(len(prompts), options_tuple[1], noise)
            encoder_state, mask = self.encode(prompts)
            decoder.prepare(generation.cache, encoder_state, mask)
            generation.reset(options_tuple, seeds)
            for i in range(min(token_count, IMAGE_TOKEN_COUNT)):
                generation.run_step()
                step = i + 1
                if on_tokens is not None and step % PREVIEW_EVERY == 0 and step < IMAGE_TOKEN_COUNT:
                    on_tokens(step, generation.image_tokens[:, 1:])
            return generation.image_tokens[:, 1:].clone()

    def detokenize(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """Pixels ``[n, 256, 256, 3]`` (float 0..255) of image tokens ``[n, 256]``.

        One image at a time: convolution kernels pick different algorithms for different batch
        sizes, and a picture must not change with the batch it happened to share.
        """
        import torch

        *_, detokenizer = self._require_loaded()
        tokens = image_tokens.to(self._device)
        with torch.inference_mode():
            return torch.cat([detokenizer(tokens[i : i + 1]) for i in range(tokens.shape[0])])

    def to_images(self, image_tokens: torch.Tensor) -> list[Image.Image]:
        """PIL images of image tokens (truncated to uint8, as min-dalle does)."""
        import torch
        from PIL import Image

        pixels = self.detokenize(image_tokens).to(torch.uint8).cpu().numpy()
        return [Image.fromarray(p) for p in pixels]

    def generate(
        self, jobs: Sequence[ImageJob], *, on_progress: StepProgress | None = None
    ) -> list[Image.Image]:
        """One 256x256 image per job.

        With ``on_progress``: progress every 32 tokens, with previews (decoded when read) as often
        as ``preview_budget`` allows, then ``(256, 256, None)``.
        """
        self._require_loaded()
        images: list[Image.Image] = []
        groups: dict[DalleOptions, list[ImageJob]] = {}
        for job in jobs:
            groups.setdefault(self._options_tuple(job.options), []).append(job)
        by_job: dict[int, Image.Image] = {}
        for options, group in groups.items():
            for start in range(0, len(group), self.max_batch):
                chunk = group[start : start + self.max_batch]
                on_tokens = self._preview_hook(len(chunk), on_progress) if on_progress is not None else None
                try:
                    tokens = self.sample_image_tokens(
                        [j.prompt for j in chunk],
                        [j.image_seed for j in chunk],
                        dict(zip(("temperature", "top_k", "supercondition_factor"), options, strict=True)),
                        on_tokens=on_tokens,
                    )
                    started = time.perf_counter()
                    for job, image in zip(chunk, self.to_images(tokens), strict=True):
                        by_job[id(job)] = image
                    if on_tokens is not None:  # the final decode refreshes the preview estimate
                        final = (time.perf_counter() - started) / len(chunk)
                        self._preview_image_seconds = final * self._preview_to_final
                except (RuntimeError, MemoryError) as exc:
                    raise EngineError(f"{self.name} failed to generate on {self.device}: {exc}") from exc
        if on_progress is not None:
            on_progress(IMAGE_TOKEN_COUNT, IMAGE_TOKEN_COUNT, None)
        images = [by_job[id(job)] for job in jobs]
        return images

    def _preview_hook(
        self, image_count: int, on_progress: StepProgress
    ) -> Callable[[int, torch.Tensor], None]:
        """The ``on_tokens`` callback of one batch: progress at every preview point, and a
        (lazily decoded) preview when the pacer finds it affordable."""
        from .previews import LazyPreviews, PreviewPacer

        per_preview = self._images_per_preview if self._images_per_preview is not None else 1
        pacer = PreviewPacer(self.preview_budget, self._preview_image_seconds * min(per_preview, image_count))

        def on_tokens(step: int, tokens: torch.Tensor) -> None:
            if not pacer.allows():
                on_progress(step, IMAGE_TOKEN_COUNT, None)
            else:
                previews = LazyPreviews(tokens, self._preview_image)
                started = time.perf_counter()
                on_progress(step, IMAGE_TOKEN_COUNT, previews)
                seconds = time.perf_counter() - started
                pacer.record(seconds)
                self._images_per_preview = previews.decoded
                if previews.decoded:
                    self._preview_image_seconds = seconds / previews.decoded
            self.last_previews = PreviewReport(
                pacer.shown, pacer.skipped, pacer.spent, pacer.sampling_seconds()
            )

        return on_tokens

    def describe(self) -> dict[str, Any]:
        """Facts for ``GET /``: engine, device, max_batch, dtype."""
        return {**super().describe(), "dtype": self.dtype_name}
