"""The built-in word lists and a teacher's words, compiled once into the matcher's tables.

The lists are plain text files in ``wordlists/`` (package data; their format is in
``wordlists/README.md``). Reading and compiling them costs a few milliseconds, so it happens on
the first check, not at import, and is cached per policy (level, blocked and allowed words).
"""

from __future__ import annotations

import functools
import itertools
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from .tokens import canonical_words

__all__ = ["CATEGORIES", "END", "Matcher", "Trie", "matcher_for", "word_forms"]

#: Built-in categories, most serious first: a prompt refused for several reports the first.
CATEGORIES = ("sexual", "self_harm", "hate", "violence", "weapons", "drugs", "profanity")
CUSTOM = "custom"  # a teacher's own blocked word
_PRIORITY = {name: rank for rank, name in enumerate((*CATEGORIES, CUSTOM))}

_LEVELS_IN = {"standard": ("standard",), "strict": ("standard", "strict")}
_ALTERNATIVES = re.compile(r"\(([^()]*)\)")
_VOWELS = frozenset("aeiou")
_VOWEL_GROUPS = re.compile(r"[aeiouy]+")
# Words a phrase keeps as written ("kill all jews": "all" is not inflected).
_UNINFLECTED = frozenset((
    "a", "an", "the", "my", "your", "his", "her", "their", "our", "its", "all", "of", "in", "on", "at", "to",
    "and", "or", "with", "no", "not", "any", "off", "up", "out", "myself", "yourself", "himself", "herself",
    "themselves",
))  # fmt: skip
_EXACT = "="  # prefixes the trie key of a word that an exact entry ("=cock") keeps as written
_ALLOWED = "+"  # prefixes the trie key of a word of an allowed phrase
#: The key under which a trie node keeps the categories of the phrases that end there (None: allowed).
END = ""
#: Phrases as nested dicts, one level a word: {"kill": {"all": {"jews": {END: {"hate"}}}}}.
Trie = dict[str, Any]
_MASKED_CACHE = 4096  # masked spellings remembered; a session of prompts has a few


def word_forms(word: str) -> frozenset[str]:
    """``word`` and its regular plural and verb forms: kill -> kills, killed, killing."""
    forms = {word}
    if word in _UNINFLECTED or len(word) < 3 or not word.isalpha():
        return frozenset(forms)
    if word.endswith("y") and word[-2] not in _VOWELS:  # bloody -> bloodies, bloodied, bloodying
        forms |= {word[:-1] + "ies", word[:-1] + "ied", word + "ing"}
    elif word.endswith("e"):  # rape -> rapes, raped, raping
        forms |= {word + "s", word + "d", word[:-1] + "ing"}
    else:  # never "bras" -> "brass", "spic" -> "spices", "strip" -> "striped"
        plural = word + "es" if word.endswith(("s", "x", "z", "ch", "sh")) else word + "s"
        stem = word + word[-1] if _doubles_last_letter(word) else word
        forms |= {plural, stem + "ed", stem + "ing"}
    if word.endswith("fe"):
        forms.add(word[:-2] + "ves")  # knife -> knives
    elif word.endswith("f"):
        forms.add(word[:-1] + "ves")
    return frozenset(forms)


def _doubles_last_letter(word: str) -> bool:
    """One syllable ending consonant-vowel-consonant: stab -> stabbed; murder -> murdered does not."""
    ends_cvc = word[-1] not in _VOWELS | {"w", "x", "y"} and word[-2] in _VOWELS and word[-3] not in _VOWELS
    return ends_cvc and len(_VOWEL_GROUPS.findall(word)) == 1


def _bases(word: str) -> set[str]:
    """The words ``word`` may be an inflection of (shoots -> shoot, shooting -> shoot, shoote)."""
    bases = {word}
    suffixes = (("ies", "y"), ("es", ""), ("s", ""), ("ing", ""), ("ing", "e"), ("ed", ""), ("ed", "e"))
    for suffix, back in suffixes:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            bases.add(word[: -len(suffix)] + back)
    return bases


@dataclass
class Matcher:
    """Tries of refused and allowed phrases over words, and every spelling that reaches a word."""

    lemmas_of: dict[str, set[str]] = field(default_factory=dict)
    refused: Trie = field(default_factory=dict)
    allowed: Trie = field(default_factory=dict)
    _masked: dict[str, set[str]] = field(default_factory=dict, repr=False)

    def lemmas(self, form: str) -> set[str]:
        """The list words ``form`` is a spelling of; each ``*`` stands for one masked letter."""
        found = self.lemmas_of.get(form)
        if found is not None or "*" not in form:
            return found or set()
        known = self._masked.get(form)
        if known is None:
            if len(self._masked) >= _MASKED_CACHE:
                self._masked.clear()
            pattern = re.compile(re.escape(form).replace(r"\*", "[a-z]"))
            hits = [f for f in self.lemmas_of if len(f) == len(form) and pattern.fullmatch(f)]
            known = self._masked[form] = set().union(*(self.lemmas_of[f] for f in hits))
        return known

    def add(self, phrase: str, category: str | None, *, inflect: bool = True) -> None:
        """Add one phrase (``category`` None: allowed) in every spelling ``(a|b)`` writes."""
        for variant in _expand(phrase):
            words = canonical_words(variant)
            if not words:
                continue
            # Exact and allowed entries' words get keys of their own, so that one entry's spellings
            # never reach another's: allowed "blue tits" reads "tit" too, refused "tits" does not.
            prefix = _ALLOWED if category is None else "" if inflect else _EXACT
            keys = tuple(prefix + word for word in words)
            for word, key in zip(words, keys, strict=True):
                if not inflect:
                    forms: frozenset[str] = frozenset((word,))
                elif category is None:  # allowed "bamboo shoots" covers "a bamboo shoot" too
                    forms = frozenset().union(*(word_forms(base) for base in _bases(word)))
                else:
                    forms = word_forms(word)
                for form in forms:
                    self.lemmas_of.setdefault(form, set()).add(key)
            node = self.allowed if category is None else self.refused
            for key in keys:
                node = node.setdefault(key, {})
            node.setdefault(END, set()).add(category)


def _expand(phrase: str) -> list[str]:
    """``(kill|gas) all`` -> ["kill all", "gas all"]; an empty choice drops the group."""
    parts = _ALTERNATIVES.split(phrase)  # text, choices, text, choices, ...
    choices = [parts[i].split("|") if i % 2 else [parts[i]] for i in range(len(parts))]
    return [" ".join("".join(combo).split()) for combo in itertools.product(*choices)]


@functools.lru_cache(maxsize=1)
def _builtin() -> tuple[tuple[tuple[str, str, str, bool], ...], tuple[str, ...]]:
    """Every built-in entry as (phrase, category, level, inflect), and the allowed phrases."""
    folder = resources.files(__package__) / "wordlists"
    entries = []
    for category in CATEGORIES:
        level = "standard"
        for raw in (folder / f"{category}.txt").read_text(encoding="utf-8").splitlines():
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            if line in ("[standard]", "[strict]"):
                level = line[1:-1]
                continue
            exact = line.startswith("=")
            entries.append((line.lstrip("=").strip(), category, level, not exact))
    allowed = (folder / "allowed.txt").read_text(encoding="utf-8").splitlines()
    return tuple(entries), tuple(a for a in (x.split("#", 1)[0].strip() for x in allowed) if a)


@functools.lru_cache(maxsize=32)
def matcher_for(level: str, blocked: tuple[str, ...], allowed: tuple[str, ...]) -> Matcher:
    """The compiled tables for one policy; cached, so a session compiles them once."""
    matcher = Matcher()
    entries, builtin_allowed = _builtin()
    levels = _LEVELS_IN[level]
    for phrase, category, entry_level, inflect in entries:
        if entry_level in levels:
            matcher.add(phrase, category, inflect=inflect)
    for phrase in blocked:
        matcher.add(phrase, CUSTOM)
    for phrase in (*builtin_allowed, *allowed):
        matcher.add(phrase, None)
    return matcher


def most_serious(categories: set[str]) -> str:
    """The category a refusal reports when several matched."""
    return min(categories, key=lambda c: _PRIORITY.get(c, len(_PRIORITY)))
