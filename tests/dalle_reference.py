"""min-dalle's own modules (PyPI ``min-dalle==0.4.11``) built over a checkpoint folder, for parity tests.

``MinDalle.__init__`` always touches the network, so the object is made with ``__new__`` and given
the attributes its generation loop reads, with its three modules built directly (as the design
notes describe). Importing ``min_dalle`` changes process-wide torch settings (autograd off, thread
count, cuDNN flags); :func:`import_min_dalle` restores them right after the import.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any

import torch

from speech2image_nb.server.engines.dalle_mini.config import DalleConfig


def import_min_dalle() -> Any:
    """``import min_dalle`` without keeping its global torch settings."""
    grad = torch.is_grad_enabled()
    threads = torch.get_num_threads()
    cudnn = (torch.backends.cudnn.enabled, torch.backends.cudnn.allow_tf32)
    try:
        import min_dalle
    finally:
        torch.set_grad_enabled(grad)
        torch.set_num_threads(threads)
        torch.backends.cudnn.enabled, torch.backends.cudnn.allow_tf32 = cudnn
    return min_dalle


def build_min_dalle(
    model_dir: Path, config: DalleConfig, *, device: str = "cpu", dtype: Any = None, with_vqgan: bool = True
) -> Any:
    """A ``MinDalle`` over the files in ``model_dir`` (Hugging Face names), with no network access.

    ``with_vqgan=False`` skips its VQGAN (min-dalle's has one fixed size; tiny checkpoints have a
    smaller one): :func:`min_dalle_tokens_and_pixels` then returns no pixels.
    """
    min_dalle = import_min_dalle()
    from min_dalle.models import DalleBartDecoder, DalleBartEncoder, VQGanDetokenizer
    from min_dalle.text_tokenizer import TextTokenizer

    dtype = dtype or torch.float32
    names = config.file_names
    m = min_dalle.MinDalle.__new__(min_dalle.MinDalle)
    m.device, m.is_mega, m.is_reusable, m.dtype, m.is_verbose = device, config.is_mega, True, dtype, False
    m.text_token_count = config.text_token_count
    m.layer_count = config.layer_count
    m.attention_head_count = config.attention_head_count
    m.embed_count = config.embed_count
    m.glu_embed_count = config.glu_embed_count
    m.text_vocab_count = config.text_vocab_count
    m.image_vocab_count = config.image_vocab_count
    import json

    vocab = json.loads((model_dir / names["vocab"]).read_text(encoding="utf8"))
    merges = (model_dir / names["merges"]).read_text(encoding="utf8").split("\n")[1:-1]
    m.tokenizer = TextTokenizer(vocab, merges)
    with torch.device("meta"):
        encoder = DalleBartEncoder(
            layer_count=config.layer_count,
            embed_count=config.embed_count,
            attention_head_count=config.attention_head_count,
            text_vocab_count=config.text_vocab_count,
            text_token_count=config.text_token_count,
            glu_embed_count=config.glu_embed_count,
            device=device,
        )
        decoder = DalleBartDecoder(
            image_vocab_count=config.image_vocab_count,
            embed_count=config.embed_count,
            attention_head_count=config.attention_head_count,
            glu_embed_count=config.glu_embed_count,
            layer_count=config.layer_count,
            device=device,
        )
        detokenizer = VQGanDetokenizer()

    def load(module: Any, name: str, module_dtype: Any) -> Any:
        state = torch.load(model_dir / name, map_location=device, weights_only=True)
        state = {k: v.to(module_dtype) for k, v in state.items()}
        module.load_state_dict(state, strict=True, assign=True)
        return module.eval()

    m.encoder = load(encoder, names["encoder"], dtype)
    m.decoder = load(decoder, names["decoder"], dtype)
    m.detokenizer = load(detokenizer, names["detokenizer"], torch.float32) if with_vqgan else None
    return m


def min_dalle_tokens_and_pixels(m: Any, prompt: str, seed: int, **options: Any) -> tuple[Any, Any]:
    """min-dalle's 256 image tokens and its float pixels ``[256, 256, 3]`` for one image."""
    captured = []
    original = type(m).image_grid_from_tokens

    def capture(image_tokens: Any, is_seamless: bool, is_verbose: bool = False) -> Any:
        captured.append(image_tokens.clone())
        if m.detokenizer is None:
            return None
        return original(m, image_tokens, is_seamless, is_verbose)

    m.image_grid_from_tokens = capture
    with contextlib.ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")  # its CUDA autocast calls warn on CPU at every step
        stack.enter_context(torch.inference_mode())
        pixels = list(m.generate_raw_image_stream(prompt, seed, grid_size=1, **options))[-1]
    return captured[-1][0], pixels


def min_dalle_first_tokens(m: Any, prompt: str, seed: int, token_count: int, **options: Any) -> Any:
    """min-dalle's first ``token_count`` image tokens for one image.

    The loop is ``MinDalle.generate_raw_image_stream`` (0.4.11) cut short: the same text rows,
    the same calls of its encoder and ``decoder.sample_tokens``, the same global-RNG seeding.
    """
    import numpy

    tokens = m.tokenizer.tokenize(prompt)[: m.text_token_count]
    text_tokens = numpy.ones((2, 64), dtype=numpy.int32)
    text_tokens[0, :2] = [tokens[0], tokens[-1]]
    text_tokens[1, : len(tokens)] = tokens
    with torch.inference_mode():
        text_tokens = torch.tensor(text_tokens, dtype=torch.long, device=m.device)
        encoder_state = m.encoder.forward(text_tokens)
        attention_mask = text_tokens.not_equal(1)[:, None, None, :]
        attention_state = torch.zeros((m.layer_count, 4, 256, m.embed_count), device=m.device)
        image_tokens = torch.full((1, 257), 2**14 - 1, dtype=torch.long, device=m.device)
        torch.manual_seed(seed)
        token_indices = torch.arange(256, device=m.device)
        settings = torch.tensor(
            [
                options.get("temperature", 1),
                options.get("top_k", 256),
                options.get("supercondition_factor", 16),
            ],
            dtype=torch.float32,
            device=m.device,
        )
        for i in range(token_count):
            image_tokens[:, i + 1], attention_state = m.decoder.sample_tokens(
                settings=settings,
                attention_mask=attention_mask,
                encoder_state=encoder_state,
                attention_state=attention_state,
                prev_tokens=image_tokens[:, [i]],
                token_index=token_indices[[i]],
            )
    return image_tokens[0, 1:]
