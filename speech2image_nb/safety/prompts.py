"""The prompt check: whole words and phrases, never substrings.

A prompt is refused when one of its words or phrases is in a word list of the policy's level, or
in the teacher's blocked words, unless an allowed phrase (the teacher's or the built-in
``wordlists/allowed.txt``) covers it. Words are compared after :mod:`.tokens` has folded case,
punctuation, accents, look-alike letters, zero-width characters, leetspeak, spelt-out letters,
repeated letters and number words; :mod:`.wordlists` adds plurals and simple inflections. Never a
substring: "Scunthorpe", "cocktail", "Sussex", "therapist" and "grape" are other words.

Why our own lists (``wordlists/*.txt``) and not a maintained one. Measured (2026-12-03) with
``benchmarks/safety_filter.py`` on COCO-30k captions (false refusals) and the 118 I2P prompts
labelled sexual with nudity >= 50 %, and on our test lists (184 unsafe classroom prompts, 220
harmless ones), each candidate list matched as whole words:

- better-profanity 0.7.0 (MIT, PyPI): 1.36 % of COCO refused ("pot", "ugly", "urinal" are on it),
  10 / 118 I2P; 50 / 184 unsafe refused, 194 / 220 harmless passed; its own matcher takes 14 ms a
  prompt.
- glin-profanity 4.1.0 (MIT, PyPI; its own matcher, leetspeak on): 0.17 % ("girl", "skis"),
  15 / 118; 49 / 184 and 211 / 220; 0.33 ms a prompt.
- leo-profanity 1.9.0 (MIT, npm; Shutterstock's list): 0.06 %, 15 / 118; 28 / 184 and 208 / 220.
- LDNOOBW via naughty-words 1.2.0 (CC-BY-4.0: attribution, not MIT): 0.16 %, 15 / 118;
  34 / 184 and 204 / 220.

All four are swear-word lists: one category, next to nothing on violence, weapons, self-harm or
drugs, and none says which words a primary class may still hear, so none refuses a third of our
unsafe prompts (the best, 27 %). Ours are categorised, split into what ``standard`` and
``strict`` refuse, carry an allow list for the phrases that trip whole-word filters ("hot dog",
"cocker spaniel", "bamboo shoots"), and add no dependency: 0.33 % of COCO refused at strict,
0.07 % at standard, 53 % / 18 % of the 118 I2P prompts, about 25 us a prompt
(``benchmarks/RESULTS.md``, "Classroom filter: prompts"). The price is upkeep: new slang and
euphemisms are added by hand, and a teacher's word file covers the rest.
"""

from __future__ import annotations

import dataclasses

from .policy import Policy, warn_off_once
from .tokens import Lattice, lattice
from .wordlists import END, Matcher, Trie, matcher_for, most_serious

__all__ = ["PromptVerdict", "check_prompt", "mask_text"]


@dataclasses.dataclass(frozen=True)
class PromptVerdict:
    """What the prompt check decided: allowed or not, the category, and where the refused words are."""

    allowed: bool
    #: ``sexual``, ``self_harm``, ``hate``, ``violence``, ``weapons``, ``drugs``, ``profanity``,
    #: ``custom`` (a teacher's word); None if allowed
    category: str | None = None
    #: (start, end) character spans of the refused words in the text given, for masking
    spans: tuple[tuple[int, int], ...] = ()


_DEFAULT_POLICY = Policy()


def check_prompt(text: str, policy: Policy | None = None) -> PromptVerdict:
    """Whether ``text`` may be drawn under ``policy`` (default: strict), and if not, why and where."""
    policy = policy or _DEFAULT_POLICY
    if not policy.enabled:
        warn_off_once()
        return PromptVerdict(True)
    matcher = matcher_for(policy.level, policy.blocked, policy.allowed)
    words = lattice(text)
    refused = _find(words, matcher, matcher.refused)
    if not refused:
        return PromptVerdict(True)
    allowed = _find(words, matcher, matcher.allowed)
    kept = [(s, e, cats) for s, e, cats in refused if not any(s < ae and as_ < e for as_, ae, _ in allowed)]
    if not kept:
        return PromptVerdict(True)
    category = most_serious(set().union(*(cats for _, _, cats in kept)))
    return PromptVerdict(False, category, _char_spans(words, [(s, e) for s, e, _ in kept]))


def mask_text(text: str, policy: Policy | None = None, mask: str = "•") -> str:
    """``text`` with every refused word replaced by ``mask`` characters (for the live transcript)."""
    verdict = check_prompt(text, policy)
    out = text
    for start, end in reversed(verdict.spans):
        out = out[:start] + mask * (end - start) + out[end:]
    return out


def _find(words: Lattice, matcher: Matcher, trie: Trie) -> list[tuple[int, int, set[str]]]:
    """Every phrase of ``trie`` in ``words``, as (first word, past the last word, categories)."""
    found: list[tuple[int, int, set[str]]] = []
    lemmas_of = matcher.lemmas_of.get
    edges_from = words.edges_from

    def walk(start: int, at: int, node: Trie) -> None:
        for end, forms in edges_from[at]:
            for form in forms:
                lemmas = lemmas_of(form)
                if lemmas is None:
                    if "*" not in form:
                        continue
                    lemmas = matcher.lemmas(form)  # masked letters: "f*ck"
                for lemma in lemmas:
                    child = node.get(lemma)
                    if child is None:
                        continue
                    ends = child.get(END)
                    if ends:
                        found.append((start, end, ends))
                    if end < len(edges_from):
                        walk(start, end, child)

    for start in range(len(edges_from)):
        walk(start, start, trie)
    return found


def _char_spans(words: Lattice, runs: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Word runs as sorted, merged character spans of the original text."""
    spans = sorted((words.spans[s][0], words.spans[e - 1][1]) for s, e in runs)
    merged: list[tuple[int, int]] = []
    for start, end in spans:
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return tuple(merged)
