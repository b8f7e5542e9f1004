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


def assert_wer_bounds(pairs: list[tuple[str, str]], *, corpus: float, over_15: int, worst: float) -> None:
    """Fail unless the set's WER is <= ``corpus``, <= ``over_15`` clips exceed 15 %, none ``worst``."""
    scores = [wer(ref, hyp) for ref, hyp in pairs]
    assert corpus_wer(pairs) <= corpus, pairs
    assert sum(score > 0.15 for score in scores) <= over_15, pairs
    assert max(scores, default=0.0) <= worst, pairs
