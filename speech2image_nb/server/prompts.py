"""How much of a prompt the engine reads, and cutting a longer prompt to that (reported, not refused).

DALL-E Playground's own backend takes a prompt of any length, and DALL-E mini reads only its
first 64 text tokens anyway: refusing a long prompt helps nobody. So the server cuts the prompt to
what the engine reads, at a word boundary, uses that, and says so in the answer
(``prompt_truncated``); only a prompt far past any real one is refused (the protocol's
``MAX_PROMPT_CHARS_ACCEPTED``).

An engine says how much it reads through :meth:`Engine.prompt_reader` (the DALL-E engines: their
tokenizer and the 64 text tokens they read). For any other engine the server reads the first
``--max-prompt-chars`` characters.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable

from ..images.protocol import GenerateRequest, PromptTruncation
from .engines.base import Engine

__all__ = ["cut_to_chars", "cut_to_tokens", "fit_prompt"]

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = 2  # <s> and </s>, which every tokenized prompt carries
WORD = re.compile(r"[^ ]+")  # DALL-E's tokenizer splits words on plain spaces
WORD_BEFORE_SPACE = re.compile(r"\S+(?=\s)")

Tokenize = Callable[[str], "list[int]"]


def cut_to_chars(text: str, max_chars: int) -> str:
    """The longest start of ``text`` of at most ``max_chars`` that ends with a whole word.

    A first word longer than ``max_chars`` on its own is cut inside the word.
    """
    if len(text) <= max_chars:
        return text
    ends = [m.end() for m in WORD_BEFORE_SPACE.finditer(text[: max_chars + 1])]
    return text[: ends[-1]] if ends else text[:max_chars]


def _fits(tokenize: Tokenize, text: str, token_count: int) -> bool:
    return len(tokenize(text)) <= token_count


def cut_to_tokens(text: str, tokenize: Tokenize, token_count: int) -> str:
    """The longest start of ``text`` made of whole words whose tokens the engine reads in full.

    ``tokenize`` wraps its result in the two special tokens, and the engine reads the first
    ``token_count`` tokens; words are counted one at a time (the tokenizer encodes each word on
    its own, so the counts add up). A first word too long on its own is cut inside the word.
    """
    if _fits(tokenize, text, token_count):
        return text
    budget = token_count - SPECIAL_TOKENS
    end = 0
    for word in WORD.finditer(text):
        budget -= len(tokenize(word.group())) - SPECIAL_TOKENS
        if budget < 0:
            break
        end = word.end()
    if end:
        return text[:end]
    low, high = 0, len(text)  # the first word alone is too long: the longest prefix that fits
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if _fits(tokenize, text[:middle], token_count) else (low, middle - 1)
    return text[:low]


def fit_prompt(req: GenerateRequest, engine: Engine, *, max_chars: int) -> GenerateRequest:
    """``req`` with its text cut to what ``engine`` reads, and the cut recorded; unchanged if it fits."""
    reader = engine.prompt_reader()
    if reader is not None and reader.token_count > SPECIAL_TOKENS:
        used = cut_to_tokens(req.text, reader.tokenize, reader.token_count).rstrip()
        limit = f"{reader.token_count} text tokens"
    else:
        used, limit = cut_to_chars(req.text, max_chars).rstrip(), f"{max_chars} characters"
    if used == req.text or not used:
        return req
    truncation = PromptTruncation(sent_chars=len(req.text), used_chars=len(used), limit=limit)
    logger.info("prompt cut from %d to %d characters (%s read)", len(req.text), len(used), limit)
    return dataclasses.replace(req, text=used, prompt_truncated=truncation)
