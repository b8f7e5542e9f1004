"""Word error rate for the speech tests: (substitutions + deletions + insertions) / reference words."""

from __future__ import annotations

import re


def normalize(text: str) -> list[str]:
    """Lower case, punctuation dropped (apostrophes kept), split on whitespace."""
    return re.sub(r"[^\w\s']", " ", text.lower()).split()


def word_errors(reference: str, hypothesis: str) -> int:
    """Edit distance between the normalized word sequences."""
    ref, hyp = normalize(reference), normalize(hypothesis)
    previous = list(range(len(hyp) + 1))
    for i, ref_word in enumerate(ref, 1):
        current = [i]
        for j, hyp_word in enumerate(hyp, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref_word != hyp_word)))
        previous = current
    return previous[-1]


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate of one hypothesis (1.0 when the reference is empty and the hypothesis is not)."""
    count = len(normalize(reference))
    return word_errors(reference, hypothesis) / count if count else float(bool(normalize(hypothesis)))


def corpus_wer(pairs: list[tuple[str, str]]) -> float:
    """Total word errors over total reference words, for (reference, hypothesis) pairs."""
    words = sum(len(normalize(ref)) for ref, _ in pairs)
    return sum(word_errors(ref, hyp) for ref, hyp in pairs) / max(1, words)
