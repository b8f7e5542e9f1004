"""Text -> token ids for DALL-E BART: min-dalle's byte-pair encoding, kept exactly.

The rules (lowercase, emoji names, ASCII only, ``Ġ``-prefixed words, merges applied by rank,
``<s>`` ... ``</s>`` around) match min-dalle 0.4.11 ``text_tokenizer.py``, so the same words give
the same ids and the checkpoints see the input they were trained on.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["TextTokenizer"]

#: the byte-level BPE marker for "a word starts here" (chr(ord(" ") + 256) == "Ġ")
WORD_START = chr(ord(" ") + 256)


def _demojize(text: str) -> str:
    """Replace emoji with their names (``🐱`` -> ``cat_face``) when the ``emoji`` package is present."""
    try:
        from emoji import demojize
    except ImportError:  # without it, emoji are dropped with the other non-ASCII characters
        return text
    return str(demojize(text, delimiters=("", "")))


class TextTokenizer:
    """Byte-pair encoder over a vocabulary and a ranked merge list (data, not paths)."""

    def __init__(self, vocab: Mapping[str, int], merges: Sequence[str]) -> None:
        self.token_from_subword = dict(vocab)
        pairs = [tuple(pair.split()) for pair in merges]
        self.rank_from_pair: dict[tuple[str, ...], int] = {pair: rank for rank, pair in enumerate(pairs)}
        for special in ("<s>", "</s>", "<unk>", "<pad>"):
            if special not in self.token_from_subword:
                raise ValueError(f"the vocabulary has no {special} token")

    @classmethod
    def from_files(cls, vocab_path: Path, merges_path: Path) -> TextTokenizer:
        """Read ``vocab*.json`` and ``merges*.txt`` (first line is a header, as in min-dalle's files)."""
        vocab = json.loads(Path(vocab_path).read_text(encoding="utf-8"))
        merges = Path(merges_path).read_text(encoding="utf-8").split("\n")[1:-1]
        return cls(vocab, merges)

    @property
    def pad_token(self) -> int:
        """Id of ``<pad>`` (1 in min-dalle's files; the encoder masks it out)."""
        return self.token_from_subword["<pad>"]

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text``, wrapped in ``<s>`` and ``</s>`` (not truncated)."""
        sep_token = self.token_from_subword["</s>"]
        cls_token = self.token_from_subword["<s>"]
        unk_token = self.token_from_subword["<unk>"]
        text = _demojize(text)
        text = text.lower().encode("ascii", errors="ignore").decode()
        tokens = [
            self.token_from_subword.get(subword, unk_token)
            for word in text.split(" ")
            if word
            for subword in self._byte_pair_encoding(word)
        ]
        return [cls_token, *tokens, sep_token]

    def _byte_pair_encoding(self, word: str) -> list[str]:
        """Merge the characters of one word by rank until no ranked pair is left."""
        subwords = [WORD_START, *word]
        while len(subwords) > 1:
            pairs = list(itertools.pairwise(subwords))
            pair_to_merge = min(pairs, key=lambda pair: self.rank_from_pair.get(pair, math.inf))
            if pair_to_merge not in self.rank_from_pair:
                break
            i = pairs.index(pair_to_merge)
            subwords = [*subwords[:i], subwords[i] + subwords[i + 1], *subwords[i + 2 :]]
        return subwords
