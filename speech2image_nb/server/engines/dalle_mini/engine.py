"""The DALL-E mini/mega engine: batching, the 256-step sampling loop, CUDA graphs, previews.

Per generation: encode each distinct prompt once (as min-dalle does, a pair of rows: the
unconditioned ``<s></s>`` and the prompt), compute every layer's cross-attention keys and values
once, then run 256 decoder steps over static buffers. On CUDA one step, sampling included, is
captured as a CUDA graph and replayed: the loop then issues no Python-side work per kernel and
never waits for the GPU, except every 32 steps when previews are asked for.

On a CPU the default precision is ``"int8"``: the Linear layers of the encoder and the decoder get
8-bit weights at load (:mod:`.int8`; the checkpoint files stay as they are), because a decoder step
there is bound by reading its weights. For the same reason a CPU step attends only to the
positions written so far (not all 256 under a mask), and where the CPU computes bf16 natively the
attention's keys and values are held in bf16 (with 8-bit activations) and the VQGAN decodes in
bf16 on channels-last weights; elsewhere both stay fp32. ``dtype="fp32"`` is the reference path
whose tokens and pixels match min-dalle's. Work runs on the physical cores (:mod:`..cpu`), set
around each call only.

Previews (a VQGAN decode of the tokens so far) are offered every 32 tokens; how many are decoded
follows a time budget measured at run time (:mod:`.previews`): all of them on a GPU, as many as
keep them within 20% of the sampling time on a CPU, where one decode costs seconds.

A request that goes away mid-sampling frees its rows at once: before every step the loop asks each
job whether it is still wanted (:attr:`ImageJob.is_wanted`), and when one is not, the images still
wanted move (tokens, KV cache, noise streams) into the static buffers of the smaller batch, so the
remaining steps and the final decodes run only for them; the images come out exactly as they would
have. When no image is wanted the batch ends there, with no decode at all.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ....errors import EngineError, ModelNotAvailable
from ..base import (
    DTYPE_NAMES,
    Engine,
    ImageJob,
    LoadProgress,
    PromptReader,
    StepProgress,
    default_cuda_dtype,
    warn_if_bf16_is_emulated,
)
from ..cpu import bf16_is_native, resolve_threads, torch_threads
from ..engine_thread import on_engine_thread
from .config import IMAGE_TOKEN_COUNT, START_TOKEN, DalleConfig
from .options import OPTION_NAMES, SamplingOptions
from .previews import PreviewCost
from .weights import MIN_DALLE_REVISION, apply_state_dict, load_state_dict, locate_files, read_config

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from .decoder import DalleBartDecoder, DecoderCache
    from .detokenizer import VQGanDetokenizer
    from .encoder import DalleBartEncoder
    from .previews import PreviewPacer
    from .tokenizer import TextTokenizer

__all__ = [
    "DEFAULT_OPTIONS",
    "INT8",
    "DalleMiniEngine",
    "LoadedModel",
    "PreviewReport",
    "SamplingOptions",
    "SamplingReport",
]

log = logging.getLogger(__name__)

#: min-dalle's defaults, as request fields
DEFAULT_OPTIONS: dict[str, Any] = SamplingOptions().as_dict()
#: the CPU fast path: 8-bit weights in the encoder's and decoder's Linear layers
INT8 = "int8"
#: tokens between two preview points (progress is reported at each; a preview image when affordable)
PREVIEW_EVERY = 32
#: on CPU, the largest ratio of preview time to sampling time (a VQGAN decode takes seconds there)
CPU_PREVIEW_BUDGET = 0.2
#: CUDA graphs kept (one per batch size and top_k); each holds its own KV cache
GRAPH_CACHE_SIZE = 3
#: share of the load progress bar for finding/downloading the files, then for building the networks
FETCH_SHARE, BUILD_SHARE = 0.6, 0.3


@dataclasses.dataclass(frozen=True)
class PreviewReport:
    """How previews went in the last :meth:`DalleMiniEngine.generate` batch that asked for them."""

    shown: int
    skipped: int
    preview_seconds: float
    sampling_seconds: float


@dataclasses.dataclass(frozen=True)
class SamplingReport:
    """How the last sampled batch of :meth:`DalleMiniEngine.generate` went, image by image."""

    #: tokens sampled for each image of the batch: 256, or fewer for an image dropped on the way
    steps_by_image: tuple[int, ...]

    @property
    def dropped(self) -> int:
        """Images that stopped being wanted before their last token."""
        return sum(steps < IMAGE_TOKEN_COUNT for steps in self.steps_by_image)


@dataclasses.dataclass(frozen=True)
class SampledTokens:
    """The tokens of the images still wanted when sampling ended."""

    #: ``[len(images), 256]`` long token ids
    tokens: torch.Tensor
    #: the index, in the batch asked for, of each row of ``tokens``
    images: tuple[int, ...]
    #: tokens sampled for each image of the batch asked for
    steps_by_image: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """What :meth:`DalleMiniEngine.load` builds: the sizes, the tokenizer and the three networks."""

    config: DalleConfig
    tokenizer: TextTokenizer
    encoder: DalleBartEncoder
    decoder: DalleBartDecoder
    detokenizer: VQGanDetokenizer


def resolve_precision(device: str | None, dtype: str | None) -> tuple[torch.device, str]:
    """The device and precision name (``"int8"`` or a torch float dtype name) of a DALL-E engine.

    ``dtype=None``: fp16 on CUDA (every GPU, Colab's T4 included: :func:`default_cuda_dtype`); on
    CPU ``"int8"`` where PyTorch has its int8 CPU kernel, else fp32. ``"int8"`` is CPU-only. Raises
    ValueError naming the bad argument; bf16 on a GPU before Ampere logs a warning.
    """
    import torch

    from .int8 import int8_available

    resolved = torch.device(
        device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda[:N]', not {device!r}")
    is_cuda = resolved.type == "cuda"
    if dtype is None:
        dtype = default_cuda_dtype(resolved) if is_cuda else (INT8 if int8_available() else "fp32")
    if dtype == INT8:
        if is_cuda:
            raise ValueError("dtype 'int8' is the CPU fast path; on CUDA use fp16 or bf16")
        if not int8_available():
            raise ValueError("this PyTorch build has no int8 CPU kernel; use dtype fp32")
        return resolved, INT8
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"dtype must be one of int8 (CPU), fp32, fp16, bf16, not {dtype!r}")
    warn_if_bf16_is_emulated(resolved, DTYPE_NAMES[dtype])
    return resolved, DTYPE_NAMES[dtype]


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

    def reset(self, options: SamplingOptions, seeds: Sequence[int]) -> None:
        """Start a new generation (the cross-attention part of the cache is filled separately)."""
        import torch

        self.image_tokens.fill_(START_TOKEN)
        self.position.zero_()
        self.temperature.fill_(options.temperature)
        self.supercondition_factor.fill_(options.supercondition_factor)
        self.seeds.copy_(torch.tensor(list(seeds), dtype=torch.long))

    def copy_images_into(self, target: _Generation, images: Sequence[int]) -> None:
        """Continue images ``images`` (rows of this generation, in order) in ``target``, a
        generation of ``len(images)`` images: tokens, KV cache, position, settings and seeds."""
        import torch

        rows = torch.tensor(list(images), dtype=torch.long, device=self.image_tokens.device)
        both_halves = torch.cat([rows, rows + self.image_count])  # unconditioned, then conditioned
        self.cache.copy_rows_into(target.cache, both_halves, int(self.position.item()))
        target.image_tokens.copy_(self.image_tokens.index_select(0, rows))
        target.position.copy_(self.position)
        target.temperature.copy_(self.temperature)
        target.supercondition_factor.copy_(self.supercondition_factor)
        target.seeds.copy_(self.seeds.index_select(0, rows))

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
        """One step: the captured graph where there is one, else :meth:`step`."""
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
        ``"int8"`` (CPU only: 8-bit Linear weights, the rest fp32), ``"fp32"``, ``"fp16"`` or
        ``"bf16"`` for encoder and decoder; ``None`` means fp16 on CUDA (every GPU has it; bf16
        suits Ampere and newer) and int8 on CPU. fp32 is the reference path (min-dalle's tokens).
        The VQGAN decodes final pictures in fp32, except on the int8 path where the CPU computes
        bf16 natively.
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
    threads
        torch CPU threads during this engine's work (set around each call, then restored);
        ``None``: ``$S2I_CPU_THREADS``, else the physical cores.
    int8_kernel
        the int8 path's kernel, a name of :data:`.int8.KERNELS`; ``None``: chosen for this CPU
        at load (:func:`.int8.choose_kernel`: full 8-bit activations where the CPU has int8 dot
        products). Tests force each one.
    """

    option_names = OPTION_NAMES

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
        threads: int | None = None,
        int8_kernel: str | None = None,
    ) -> None:
        import torch

        from .int8 import KERNELS

        self.is_mega = bool(is_mega)
        self.name = "dalle-mega" if self.is_mega else "dalle-mini"
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.revision = revision
        self._device, self.dtype_name = resolve_precision(device, dtype)
        self.device = str(self._device)
        is_cuda = self._device.type == "cuda"
        #: dtype of activations, KV cache and unquantized weights
        self._dtype = torch.float32 if self.is_int8 else getattr(torch, self.dtype_name)
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
        self.threads = None if is_cuda else resolve_threads(threads)
        if int8_kernel is not None and int8_kernel not in KERNELS:
            raise ValueError(f"int8_kernel must be one of {', '.join(KERNELS)}, not {int8_kernel!r}")
        #: the int8 kernel path (None until :meth:`load` chose one, and off the int8 path)
        self.int8_kernel: str | None = int8_kernel if self.is_int8 else None
        #: VQGAN precision of previews and of final pictures (bf16 where the CPU has it natively)
        self._preview_in_bf16 = not is_cuda and bf16_is_native()
        self._final_in_bf16 = self.is_int8 and bf16_is_native()
        #: the decoder's attention keys and values (see :meth:`_choose_kv_dtype`, at load)
        self._kv_dtype = self._dtype
        self._preview_cost = PreviewCost()
        #: previews of the last batch generated with ``on_progress``
        self.last_previews: PreviewReport | None = None
        #: tokens sampled per image in the last batch :meth:`generate` sampled
        self.last_sampling: SamplingReport | None = None
        self.model: LoadedModel | None = None
        self._generations: collections.OrderedDict[tuple[int, int], _Generation] = collections.OrderedDict()

    @property
    def is_int8(self) -> bool:
        """True on the CPU fast path (8-bit Linear weights)."""
        return self.dtype_name == INT8

    @contextlib.contextmanager
    def _work(self) -> Iterator[None]:
        """Inference mode, and this engine's CPU thread count, for the duration of one call."""
        import torch

        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.inference_mode())
            if self.threads is not None:
                stack.enter_context(torch_threads(self.threads))
            yield

    # --- loading -------------------------------------------------------------------------------

    @on_engine_thread
    def load(self, progress: LoadProgress | None = None) -> None:
        """Find or download the five files, build the three networks and load their weights.

        On the int8 path the encoder's and decoder's Linear layers are then quantized (progress
        names the layer count, so a first start never looks like a hang).
        """
        report = progress if progress is not None else (lambda fraction, message: None)
        config = read_config(self.is_mega, self.model_dir)
        paths = locate_files(
            config,
            model_dir=self.model_dir,
            cache_dir=self.cache_dir,
            revision=self.revision,
            progress=lambda fraction, message: report(FETCH_SHARE * fraction, message),
        )
        with self._work():
            tokenizer = _read_tokenizer(paths)
            modules = self._build_networks(config, tokenizer, paths, report)
            self.model = LoadedModel(config, tokenizer, *modules)
            self._kv_dtype = self._choose_kv_dtype()
            self._generations.clear()
            if math.isfinite(self.preview_budget):
                report(0.98, "timing one preview decode")
                self._preview_cost = self._time_preview()
        report(1.0, f"{self.name} ready on {self.device} ({self.dtype_name})")
        kernel = f", kernel {self.int8_kernel}" if self.int8_kernel is not None else ""
        log.info("%s loaded on %s (%s%s)", self.name, self.device, self.dtype_name, kernel)

    def _choose_kv_dtype(self) -> torch.dtype:
        """bf16 attention keys and values on the int8 path with 8-bit activations where the CPU
        computes bf16 natively, else the model's dtype.

        Why: a CPU step's attention reads every key and value written so far from memory, like
        the weights; bf16 halves those bytes (full-size mini, 2 cores: 20.0 against 21.2 ms per
        step). Measured against fp32, teacher-forced on full-size random mini: with 8-bit
        activations the next-token distributions stayed as close with bf16 keys as with fp32
        ones (KL 0.136 / 0.144); with the 7-bit activations of CPUs without int8 dot products
        they did not (KL 0.44 against 0.17), and those CPUs lack native bf16 anyway.
        """
        import torch

        from .int8 import KERNELS

        if self._final_in_bf16 and self.int8_kernel is not None and KERNELS[self.int8_kernel] == 8:
            return torch.bfloat16
        return self._dtype

    def _build_networks(
        self, config: DalleConfig, tokenizer: TextTokenizer, paths: Mapping[str, Path], report: LoadProgress
    ) -> tuple[DalleBartEncoder, DalleBartDecoder, VQGanDetokenizer]:
        """Encoder, decoder and VQGAN with their weights (encoder/decoder quantized on the int8 path)."""
        import torch

        from .decoder import DalleBartDecoder
        from .detokenizer import VQGanDetokenizer
        from .encoder import DalleBartEncoder

        builders: dict[str, Callable[[], torch.nn.Module]] = {
            "encoder": lambda: DalleBartEncoder(config, pad_token=tokenizer.pad_token),
            "decoder": lambda: DalleBartDecoder(config),
            "detokenizer": lambda: VQGanDetokenizer(width_divisor=config.vqgan_width_divisor),
        }
        share = BUILD_SHARE / len(builders)
        modules: dict[str, torch.nn.Module] = {}
        for i, (role, build) in enumerate(builders.items()):
            start = FETCH_SHARE + share * i
            report(start, f"loading {paths[role].name}")
            # the int8 path loads the files' fp16 weights as they are and quantizes from them
            dtype = (
                torch.float32 if role == "detokenizer" else (torch.float16 if self.is_int8 else self._dtype)
            )
            module = _load_module(build, paths[role], device=self._device, dtype=dtype)
            if self.is_int8 and role != "detokenizer":

                def report_share(fraction: float, message: str, start: float = start) -> None:
                    report(start + share * fraction, message)

                module = self._quantize(module, role, report_share)
            if role == "detokenizer" and self._final_in_bf16:
                # oneDNN's bf16 convolutions on channels-last weights: a 256 px decode took 0.23 s
                # against 0.56 s in the default layout (same pixels to 0.2 dB), which spent half of
                # its time converting every activation between layouts
                module = module.to(memory_format=torch.channels_last)
            modules[role] = module.eval().requires_grad_(False)
        return modules["encoder"], modules["decoder"], modules["detokenizer"]  # type: ignore[return-value]

    def _quantize(self, module: torch.nn.Module, role: str, report: LoadProgress) -> torch.nn.Module:
        """8-bit weights for ``module``'s Linear layers, fp32 for the rest of its parameters."""
        from .int8 import choose_kernel, quantize_linears

        started = time.perf_counter()
        if self.int8_kernel is None:
            self.int8_kernel = choose_kernel()
        for layer in module.layers:  # type: ignore[union-attr]
            layer.self_attn.fuse_self_projections()
            layer.glu.fuse_input_projections()

        def on_layer(done: int, total: int) -> None:
            if done == 1 or done % 8 == 0 or done == total:
                report(done / total, f"quantizing the {role} to 8 bits: layer {done} of {total}")

        count = quantize_linears(module, kernel=self.int8_kernel, on_layer=on_layer)
        log.debug(
            "%s: %d Linear layers of the %s quantized for %s in %.1f s",
            self.name,
            count,
            role,
            self.int8_kernel,
            time.perf_counter() - started,
        )
        return module.float()

    def _time_preview(self) -> PreviewCost:
        """What one preview costs on this device, from one decode (which also warms the VQGAN up).

        Previews need not match the final picture to the last bit, so where bf16 is native
        previews decode under bf16 autocast (about twice as fast there); elsewhere bf16 is
        emulated and slower than fp32, so they decode in the final pictures' precision.
        """
        import torch

        tokens = torch.full((1, IMAGE_TOKEN_COUNT), START_TOKEN, dtype=torch.long)
        timings = {}
        for in_bf16 in {self._preview_in_bf16, self._final_in_bf16}:
            started = time.perf_counter()
            self._decode(tokens, in_bf16=in_bf16)
            timings[in_bf16] = time.perf_counter() - started
        seconds = timings[self._preview_in_bf16]
        log.debug("%s on %s: one VQGAN decode takes %s s", self.name, self.device, timings)
        return PreviewCost(image_seconds=seconds, to_final=seconds / timings[self._final_in_bf16])

    def _decode(self, image_tokens: torch.Tensor, *, in_bf16: bool) -> torch.Tensor:
        """Pixels ``[n, 256, 256, 3]`` (float 0..255) of tokens ``[n, 256]``, one image at a time.

        One at a time: convolution kernels pick different algorithms for different batch sizes,
        and a picture must not change with the batch it happened to share.
        """
        import torch

        detokenizer = self._require_loaded().detokenizer
        tokens = image_tokens.to(self._device)
        with torch.autocast(self._device.type, dtype=torch.bfloat16, enabled=in_bf16):
            return torch.cat([detokenizer(tokens[i : i + 1]).float() for i in range(tokens.shape[0])])

    @on_engine_thread
    def _preview_image(self, image_tokens: torch.Tensor) -> Image.Image:
        """A preview picture of tokens ``[1, 256]``."""
        import torch
        from PIL import Image

        with self._work():
            pixels = self._decode(image_tokens, in_bf16=self._preview_in_bf16)[0]
        return Image.fromarray(pixels.to(torch.uint8).cpu().numpy())

    # --- options -------------------------------------------------------------------------------

    def validate_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Check ``temperature`` (0.01-16), ``top_k`` (1-16384), ``supercondition_factor`` (0-256)."""
        return SamplingOptions.from_request(options).as_dict()

    # --- generation ----------------------------------------------------------------------------

    def _require_loaded(self) -> LoadedModel:
        if self.model is None:
            raise EngineError(f"The {self.name} engine is not loaded; call load() first.")
        return self.model

    def _text_rows(self, prompt: str) -> list[list[int]]:
        """The two encoder rows of a prompt, exactly as min-dalle builds them (pad = ``<pad>``)."""
        model = self._require_loaded()
        count = model.config.text_token_count
        tokens = model.tokenizer.tokenize(prompt)[:count]
        pad = model.tokenizer.pad_token
        uncond = [tokens[0], tokens[-1]] + [pad] * (count - 2)
        cond = tokens + [pad] * (count - len(tokens))
        return [uncond, cond]

    @on_engine_thread
    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder-side text states ``[2n, 64, embed]`` and mask ``[2n, 64]`` for n prompts.

        Each distinct prompt is encoded alone with its unconditioned row, as in min-dalle, so an
        image does not depend on the other prompts of its batch.
        """
        import torch

        model = self._require_loaded()
        states: dict[str, torch.Tensor] = {}
        with self._work():
            for prompt in dict.fromkeys(prompts):
                rows = torch.tensor(self._text_rows(prompt), dtype=torch.long, device=self._device)
                states[prompt] = model.encoder(rows)
        uncond = [states[p][0] for p in prompts]
        cond = [states[p][1] for p in prompts]
        encoder_state = torch.stack(uncond + cond)
        masks = [
            torch.tensor(self._text_rows(p), device=self._device).ne(model.tokenizer.pad_token)
            for p in prompts
        ]
        mask = torch.stack([m[0] for m in masks] + [m[1] for m in masks])
        return encoder_state, mask

    def _generation(self, image_count: int, top_k: int, noise: Any) -> _Generation:
        """Static buffers (and on CUDA a captured graph) for this batch size, cached."""
        model = self._require_loaded()

        def build(noise: Any) -> _Generation:
            return _Generation(
                model.config,
                model.decoder,
                image_count,
                top_k,
                device=self._device,
                dtype=self._kv_dtype,
                noise=noise,
            )

        if noise is not None or not self.use_cuda_graphs:
            return build(noise)
        key = (image_count, top_k)
        generation = self._generations.get(key)
        if generation is None:
            generation = build(None)
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

    @on_engine_thread
    def sample_image_tokens(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        options: Mapping[str, Any] | SamplingOptions | None = None,
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
            sampling options (request fields are validated); defaults are min-dalle's.
        generators
            explicit ``torch.Generator`` per image for the noise (the CPU default: generators
            seeded with ``seeds``). Seeded like min-dalle's global RNG, they reproduce its draws.
        on_tokens
            called as ``on_tokens(step, image_tokens)`` every 32 steps (not after the last).
        token_count
            sample only this many tokens (the rest stay the start token): a partial picture, for
            quick checks of full-size models on slow machines.
        """
        tokens_hook = None if on_tokens is None else (lambda step, tokens, images: on_tokens(step, tokens))
        sampled = self._sample(
            prompts, seeds, options, generators=generators, on_tokens=tokens_hook, token_count=token_count
        )
        return sampled.tokens

    def _sample(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        options: Mapping[str, Any] | SamplingOptions | None = None,
        *,
        generators: Sequence[torch.Generator] | None = None,
        is_wanted: Sequence[Callable[[], bool]] | None = None,
        on_tokens: Callable[[int, torch.Tensor, tuple[int, ...]], None] | None = None,
        token_count: int = IMAGE_TOKEN_COUNT,
    ) -> SampledTokens:
        """:meth:`sample_image_tokens`, dropping the images whose ``is_wanted`` turns False.

        ``on_tokens(step, tokens, images)`` gets the rows still sampled and, for each, the index
        of its image in the batch asked for.
        """
        import torch

        from .sampler import GeneratorNoise

        if not isinstance(options, SamplingOptions):
            options = SamplingOptions.from_request(options or {})
        model = self._require_loaded()
        if len(prompts) != len(seeds) or (is_wanted is not None and len(is_wanted) != len(prompts)):
            raise ValueError("one seed (and one is_wanted) per prompt")
        noise = None
        if generators is None and self.noise == "generator":
            generators = [torch.Generator(device=self._device).manual_seed(int(s)) for s in seeds]
        if generators is not None:
            noise = GeneratorNoise(generators, device=self._device)
        images = tuple(range(len(prompts)))  # the batch's index of each row of the generation
        steps_by_image = [0] * len(prompts)
        with self._work():
            generation = self._generation(len(prompts), options.top_k, noise)
            encoder_state, mask = self.encode(prompts)
            model.decoder.prepare(generation.cache, encoder_state, mask)
            generation.reset(options, seeds)
            for i in range(min(token_count, IMAGE_TOKEN_COUNT)):
                if is_wanted is not None:
                    kept = tuple(image for image in images if is_wanted[image]())
                    if len(kept) < len(images):
                        if kept:
                            generation = self._keep_images(
                                generation, [images.index(k) for k in kept], options
                            )
                        images = kept
                    if not images:
                        break
                generation.run_step()
                step = i + 1
                for image in images:
                    steps_by_image[image] = step
                if on_tokens is not None and step % PREVIEW_EVERY == 0 and step < IMAGE_TOKEN_COUNT:
                    on_tokens(step, generation.image_tokens[:, 1:], images)
            tokens = generation.image_tokens[:, 1:].clone()
        if not images:
            tokens = tokens[:0]
        return SampledTokens(tokens, images, tuple(steps_by_image))

    def _keep_images(
        self, generation: _Generation, rows: Sequence[int], options: SamplingOptions
    ) -> _Generation:
        """A generation of the images at ``rows`` of ``generation``, carried on where it stands."""
        from .sampler import GeneratorNoise

        noise: Any = None
        if isinstance(generation.noise, GeneratorNoise):
            kept = [generation.noise.generators[row] for row in rows]
            noise = GeneratorNoise(kept, device=self._device)
        smaller = self._generation(len(rows), options.top_k, noise)
        generation.copy_images_into(smaller, rows)
        log.debug("%s: %d of %d images still wanted", self.name, len(rows), generation.image_count)
        return smaller

    @on_engine_thread
    def teacher_forced_logits(
        self, prompt: str, image_tokens: torch.Tensor, *, supercondition_factor: float = 16.0
    ) -> torch.Tensor:
        """Next-token logits ``[256, 16384]`` after the supercondition mix, feeding ``image_tokens``.

        Step ``i`` sees the start token and ``image_tokens[:i]``, whatever this engine would have
        sampled: two engines (fp32 and int8, say) then predict over the same sequence, and their
        distributions can be compared token by token.
        """
        import torch

        from .config import IMAGE_CODEBOOK_COUNT
        from .decoder import DecoderCache

        model = self._require_loaded()
        tokens = image_tokens.reshape(-1).to(self._device)
        previous = torch.cat([torch.tensor([START_TOKEN], device=self._device), tokens[:-1]])
        out = torch.empty(len(tokens), IMAGE_CODEBOOK_COUNT)
        with self._work():
            cache = DecoderCache.allocate(model.config, 2, device=self._device, dtype=self._kv_dtype)
            model.decoder.prepare(cache, *self.encode([prompt]))
            for i in range(len(tokens)):
                logits = model.decoder.step(
                    previous[i : i + 1], torch.tensor([i], device=self._device), cache
                )
                uncond, cond = logits[:, :IMAGE_CODEBOOK_COUNT].float()
                out[i] = uncond * (1 - supercondition_factor) + cond * supercondition_factor
        return out

    @on_engine_thread
    def detokenize(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """Pixels ``[n, 256, 256, 3]`` (float 0..255) of image tokens ``[n, 256]`` (final quality)."""
        with self._work():
            return self._decode(image_tokens, in_bf16=self._final_in_bf16)

    @on_engine_thread
    def to_images(self, image_tokens: torch.Tensor) -> list[Image.Image]:
        """PIL images of image tokens (truncated to uint8, as min-dalle does)."""
        import torch
        from PIL import Image

        pixels = self.detokenize(image_tokens).to(torch.uint8).cpu().numpy()
        return [Image.fromarray(p) for p in pixels]

    @on_engine_thread
    def generate(
        self, jobs: Sequence[ImageJob], *, on_progress: StepProgress | None = None
    ) -> list[Image.Image | None]:
        """One 256x256 image per job (``None`` for a job that stopped being wanted meanwhile).

        With ``on_progress``: progress every 32 tokens, with previews (decoded when read) as often
        as ``preview_budget`` allows, then ``(256, 256, None)``.
        """
        self._require_loaded()
        groups: dict[SamplingOptions, list[ImageJob]] = {}
        for job in jobs:
            groups.setdefault(SamplingOptions.from_request(job.options), []).append(job)
        by_job: dict[int, Image.Image | None] = {}
        with self._work():
            for options, group in groups.items():
                for start in range(0, len(group), self.max_batch):
                    chunk = group[start : start + self.max_batch]
                    images = self._generate_chunk(chunk, options, on_progress)
                    by_job.update((id(job), image) for job, image in zip(chunk, images, strict=True))
            if on_progress is not None:
                on_progress(IMAGE_TOKEN_COUNT, IMAGE_TOKEN_COUNT, None)
        return [by_job[id(job)] for job in jobs]

    def _generate_chunk(
        self, chunk: Sequence[ImageJob], options: SamplingOptions, on_progress: StepProgress | None
    ) -> list[Image.Image | None]:
        """The images of up to ``max_batch`` jobs that share their options (``None`` where unwanted)."""
        on_tokens = self._preview_hook(len(chunk), on_progress) if on_progress is not None else None
        try:
            with self._work():
                sampled = self._sample(
                    [j.prompt for j in chunk],
                    [j.image_seed for j in chunk],
                    options,
                    is_wanted=[j.is_wanted for j in chunk],
                    on_tokens=on_tokens,
                )
                self.last_sampling = SamplingReport(sampled.steps_by_image)
                rows = [row for row, image in enumerate(sampled.images) if chunk[image].is_wanted()]
                started = time.perf_counter()
                decoded = self.to_images(sampled.tokens[rows]) if rows else []
        except (RuntimeError, MemoryError) as exc:
            raise EngineError(f"{self.name} failed to generate on {self.device}: {exc}") from exc
        if on_tokens is not None and rows:  # the final decode refreshes the preview estimate
            self._preview_cost.record_final((time.perf_counter() - started) / len(rows))
        images: list[Image.Image | None] = [None] * len(chunk)
        for row, image in zip(rows, decoded, strict=True):
            images[sampled.images[row]] = image
        return images

    def _preview_hook(
        self, image_count: int, on_progress: StepProgress
    ) -> Callable[[int, torch.Tensor, tuple[int, ...]], None]:
        """The ``on_tokens`` callback of one batch: progress at every preview point, and a
        (lazily decoded) preview when the pacer finds it affordable."""
        from .previews import LazyPreviews

        pacer: PreviewPacer = self._preview_cost.pacer(self.preview_budget, image_count)

        def on_tokens(step: int, tokens: torch.Tensor, images: tuple[int, ...]) -> None:
            if not pacer.allows():
                on_progress(step, IMAGE_TOKEN_COUNT, None)
            else:
                previews = LazyPreviews(tokens, self._preview_image, images=images, image_count=image_count)
                started = time.perf_counter()
                on_progress(step, IMAGE_TOKEN_COUNT, previews)
                seconds = time.perf_counter() - started
                pacer.record(seconds)
                self._preview_cost.record_preview(seconds, previews.decoded)
            self.last_previews = PreviewReport(
                pacer.shown, pacer.skipped, pacer.spent, pacer.sampling_seconds()
            )

        return on_tokens

    def prompt_reader(self) -> PromptReader | None:
        """The BPE tokenizer and the text tokens the encoder reads (64 for mini and mega)."""
        if self.model is None:
            return None
        return PromptReader(self.model.tokenizer.tokenize, self.model.config.text_token_count)

    def describe(self) -> dict[str, Any]:
        """Facts for ``GET /``: engine, device, max_batch, dtype."""
        return {**super().describe(), "dtype": self.dtype_name}


def _read_tokenizer(paths: Mapping[str, Path]) -> TextTokenizer:
    """The BPE tokenizer from the vocabulary and merges files, with a clear error if unreadable."""
    from .tokenizer import TextTokenizer

    try:
        return TextTokenizer.from_files(paths["vocab"], paths["merges"])
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise ModelNotAvailable(
            f"The tokenizer files {paths['vocab']} / {paths['merges']} are unreadable ({exc}). "
            "Delete them and download them again."
        ) from exc


def _load_module(
    build: Callable[[], torch.nn.Module], path: Path, *, device: torch.device, dtype: torch.dtype
) -> torch.nn.Module:
    """Build a network without allocating twice (on the meta device), then load its file."""
    import torch

    with torch.device("meta"):
        module = build()
    module = module.to_empty(device=device).to(dtype)
    for sub in module.modules():  # norms may be absent from the files (min-dalle tolerates it)
        if isinstance(sub, (torch.nn.LayerNorm, torch.nn.GroupNorm)):
            sub.reset_parameters()
    apply_state_dict(module, load_state_dict(path), path)
    return module
