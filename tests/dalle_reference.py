"""min-dalle's own modules (PyPI ``min-dalle==0.4.11``) built over a checkpoint folder, for parity tests.

``MinDalle.__init__`` always touches the network, so the object is made with ``__new__`` and given
the attributes its generation loop reads, with its three modules built directly (as the design
notes describe). Importing ``min_dalle`` changes process-wide torch settings (autograd off, thread
count, cuDNN flags); :func:`import_min_dalle` restores them right after the import.

Run as ``python -m tests.dalle_reference MODEL_DIR VARIANT PROMPT SEED PIXELS`` (from the repository
root), it runs min-dalle's own generation loop in a process of its own, with one torch thread,
prints each image token as it is sampled (``token <index> <id>``) and saves its tokens and
pixels (None for a checkpoint with a narrow VQGAN) to ``PIXELS``. :class:`ReferenceProcess` runs
it beside our engine, so that the two full-size generations overlap on a 2-core machine and a
differing token fails the test as soon as both sides have produced it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import subprocess
import sys
import threading
import time
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


def main(argv: list[str] | None = None) -> None:
    """Entry point of the reference process (see the module docstring)."""
    from speech2image_nb.server.engines.dalle_mini.config import VARIANTS

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("variant", choices=sorted(VARIANTS))
    parser.add_argument("prompt")
    parser.add_argument("seed", type=int)
    parser.add_argument("pixels", type=Path)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)  # this process only
    config = VARIANTS[args.variant]
    m = build_min_dalle(args.model_dir, config, with_vqgan=config.vqgan_width_divisor == 1)
    sample_tokens = m.decoder.sample_tokens
    sampled = 0

    def reporting_sample_tokens(*a: Any, **kw: Any) -> Any:
        nonlocal sampled
        tokens, state = sample_tokens(*a, **kw)
        print(f"token {sampled} {int(tokens[0])}", flush=True)
        sampled += 1
        return tokens, state

    m.decoder.sample_tokens = reporting_sample_tokens  # min-dalle's loop itself is unchanged
    tokens, pixels = min_dalle_tokens_and_pixels(m, args.prompt, args.seed)
    torch.save({"tokens": tokens.clone(), "pixels": None if pixels is None else pixels.clone()}, args.pixels)
    print("done", flush=True)


class ReferenceProcess:
    """min-dalle's generation of one image in a child process, its tokens read as they come.

    Parameters
    ----------
    model_dir, variant, prompt, seed
        what to generate (min-dalle's default options).
    pixels_path
        file the child saves its tokens and pixels to.
    """

    def __init__(self, model_dir: Path, variant: str, prompt: str, seed: int, pixels_path: Path) -> None:
        root = Path(__file__).resolve().parents[1]
        self.pixels_path = pixels_path
        self.tokens: list[int] = []
        self.done = False
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._errors: list[str] = []
        arguments = [str(model_dir), variant, prompt, str(seed), str(pixels_path)]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.dalle_reference", *arguments],
            cwd=root,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_errors, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line.strip())
        self._lines.put(None)

    def _read_errors(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._errors.append(line)

    def _take(self, timeout: float | None) -> bool:
        """Read one line of the child (waiting up to ``timeout``; None: only if one is there).

        Returns False when there was nothing to read or the child has ended.
        """
        if self.done:
            return False
        try:
            line = self._lines.get(timeout=timeout) if timeout else self._lines.get_nowait()
        except queue.Empty:
            return False
        if line is None:
            self.done = True
            code = self.process.wait(timeout=60)
            if code != 0:
                errors = "".join(self._errors[-30:])
                raise AssertionError(f"min-dalle's reference process failed ({code}):\n{errors}")
            return False
        if line.startswith("token "):
            index, token = map(int, line.split()[1:])
            assert index == len(self.tokens)
            self.tokens.append(token)
        return True

    def assert_agrees(self, our_tokens: Any) -> None:
        """Check the tokens both sides have produced so far, one line of the child at a time, so
        that a failure comes at the first differing token (does not wait for the child)."""
        ours = [int(t) for t in our_tokens]
        checked = 0
        while True:
            common = min(len(ours), len(self.tokens))
            for index in range(checked, common):
                a, b = ours[index], self.tokens[index]
                assert a == b, f"token {index}: ours {a}, min-dalle's {b}"
            checked = max(checked, common)
            if not self._take(None):
                break

    def finish(self, our_tokens: Any, *, timeout: float) -> dict[str, Any]:
        """Compare each further token as it arrives, then return the child's tokens and pixels."""
        deadline = time.monotonic() + timeout
        while not self.done and time.monotonic() < deadline:
            self._take(deadline - time.monotonic())
            self.assert_agrees(our_tokens)
        assert self.done, f"min-dalle's reference process did not finish within {timeout} s"
        return torch.load(self.pixels_path, weights_only=True)

    def stop(self) -> None:
        """End the child if it still runs (after a failure)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)


if __name__ == "__main__":
    main()
