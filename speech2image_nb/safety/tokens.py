"""Prompt text to the words the matcher compares: the same text however it was spelt or spoken.

Speech-to-text and typed prompts write one word many ways: "Nude", "NUDE!", "nüde", full-width letters,
"n.u.d.e", "n u d e", "nuuuude", "n00d3", "sixty-nine" for "69". This module folds those ways
into a small lattice of candidate spellings per position, and keeps, for every word, where it
sits in the original text, so that a refused word can be masked in the live transcript.

It does not decide anything: :mod:`.wordlists` says which spellings are refused.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass

__all__ = ["Edge", "Lattice", "canonical_words", "lattice", "number_value"]

# Look-alike letters that NFKC leaves alone: Cyrillic and Greek letters that read as Latin ones,
# a few Latin letters with strokes, and the apostrophes people type.
_LOOKALIKES = str.maketrans(
    "\u0430\u0432\u0435\u0451\u043a\u043c\u043d\u043e\u0440\u0441\u0442\u0443\u0445\u0455\u0456\u0457"
    "\u0458\u0501\u04cf\u0261\u03b1\u03b2\u03b5\u03b7\u03b9\u03ba\u03bd\u03bf\u03c1\u03c4\u03c5\u03c7"
    "\u03c9\u00f8\u0142\u0111\u00f0\u0131\u2019\u2018`\u00b4",
    "abeekmhopctyxsiijdlgabenikvoptuxwolddi''''",
)
_LIGATURES = str.maketrans({"\u00df": "ss", "\u00e6": "ae", "\u0153": "oe", "\u00fe": "th"})

# Leetspeak: digits and symbols typed for letters. "1" may stand for i or l, so both are tried.
_LEET_I = str.maketrans(
    {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "9": "g", "@": "a", "$": "s"}
)
_LEET_L = str.maketrans({"1": "l"})

# A word: letters, digits and the symbols leetspeak uses, with apostrophes inside ("swimmer's").
_WORD = re.compile(r"[a-z0-9@$]+(?:'[a-z0-9@$]+)*")
# Between two pieces of one spelt-out word: "s.e.x", "s-e-x", "por_n", "4/20" (no space).
_JOINERS = frozenset(".-_*+~/|:")
_MAX_JOINED = 12  # the longest spelt-out word tried, in pieces
_LEETY = re.compile(r"[0-9@$]")
_REPEAT3 = re.compile(r"(.)\1{2,}")
_REPEAT2 = re.compile(r"(.)\1+")

_UNITS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
    "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
)  # fmt: skip
_TENS = {
    "twenty": 20,
    "thirty": 30,
    "forty": 40,
    "fifty": 50,
    "sixty": 60,
    "seventy": 70,
    "eighty": 80,
    "ninety": 90,
}
_NUMBER_WORDS: dict[str, int] = {**{w: i for i, w in enumerate(_UNITS)}, **_TENS}


def number_value(word: str) -> int | None:
    """The value of a number word ("nine" -> 9), or None."""
    return _NUMBER_WORDS.get(word)


@functools.lru_cache(maxsize=4096)
def _fold_char(ch: str) -> str:
    """One character as the matcher reads it: NFKC, lower case, accents and look-alikes folded."""
    if unicodedata.category(ch) == "Cf":  # zero-width spaces and joiners, soft hyphens, bidi marks
        return ""
    out = unicodedata.normalize("NFKC", ch).casefold().translate(_LOOKALIKES).translate(_LIGATURES)
    out = "".join(c for c in unicodedata.normalize("NFKD", out) if not unicodedata.combining(c))
    return out.translate(_LOOKALIKES)


def _fold(text: str) -> tuple[str, list[int]]:
    """The folded text and, for each of its characters, the index of the original it came from."""
    if text.isascii():
        return text.lower().replace("`", "'"), list(range(len(text)))
    chars: list[str] = []
    where: list[int] = []
    for i, ch in enumerate(text):
        folded = _fold_char(ch)
        chars.append(folded)
        where.extend([i] * len(folded))
    return "".join(chars), where


@functools.lru_cache(maxsize=16384)
def _spellings(word: str) -> frozenset[str]:
    """The ways one written word may be meant: as typed, leetspeak read back, repeats squeezed."""
    base = word.replace("'", "")
    forms = {base}
    if base.isdigit():
        return frozenset(forms)
    if _LEETY.search(base):
        forms.add(base.translate(_LEET_I))
        forms.add(base.translate(_LEET_L).translate(_LEET_I))
    for form in list(forms):
        if _REPEAT3.search(form):  # "nuuuude": try "nuude" and "nude"
            forms.add(_REPEAT3.sub(r"\1\1", form))
            forms.add(_REPEAT3.sub(r"\1", form))  # "kiiiill" -> "kill"
            forms.add(_REPEAT2.sub(r"\1", form))
    value = number_value(base)
    if value is not None:
        forms.add(str(value))
    return frozenset(forms)


#: A reading of one or more words as one word: (index past its last word, its spellings).
Edge = tuple[int, frozenset[str]]
_Edges = tuple[list[Edge], ...]


@dataclass(frozen=True)
class Lattice:
    """The words of a text (their spans in the original) and the readings that start at each."""

    spans: tuple[tuple[int, int], ...]
    edges_from: tuple[list[Edge], ...]


def lattice(text: str) -> Lattice:
    """Split ``text`` into words and the ways to read them (see the module docstring)."""
    folded, where = _fold(text)
    matches = list(_WORD.finditer(folded))
    words = [m.group() for m in matches]
    spans = tuple((where[m.start()], where[m.end() - 1] + 1) for m in matches)
    edges = tuple([(i + 1, _spellings(w))] for i, w in enumerate(words))
    gaps = [folded[matches[k].end() : matches[k + 1].start()] for k in range(len(words) - 1)]
    n = len(words)
    i = 0
    while i < n - 1:  # pieces joined by separators with no space: "s.e.x", "na-ked", "f*ck", "4/20"
        j = i
        while j < n - 1 and gaps[j] != " " and _joins(gaps[j]):
            j += 1
        if j > i:
            _add_joined(edges, words, i, j + 1, [_stars(g) for g in gaps[i:j]])
        i = j + 1
    i = 0
    while i < n:  # letters spelt out with spaces: "s e x", "s. e. x." (three letters or more)
        j = i
        while j < n and len(words[j]) == 1 and (j == i or _spaced(gaps[j - 1])):
            j += 1
        if j - i >= 3:
            _add_joined(edges, words, i, j, [""] * (j - i - 1))
        i = max(j, i + 1)
    for i in range(n - 1):  # "sixty nine", "sixty-nine" -> 69
        tens = _TENS.get(words[i])
        unit = number_value(words[i + 1])
        if tens is not None and unit is not None and 0 < unit < 10:
            edges[i].append((i + 2, frozenset({str(tens + unit)})))
    return Lattice(spans, edges)


def _joins(gap: str) -> bool:
    """Whether ``gap`` sits inside one spelt-out word ("s.e.x", "f**k") rather than between two."""
    return 0 < len(gap) <= 3 and all(c in _JOINERS for c in gap)


def _spaced(gap: str) -> bool:
    """Whether ``gap`` is a space between spelt-out letters, maybe with a separator: " ", ". "."""
    return " " in gap and len(gap) <= 3 and all(c == " " or c in _JOINERS for c in gap)


def _stars(gap: str) -> str:
    """What a gap adds to the joined word: masked letters ("f*ck") stay as ``*``, separators go."""
    return gap if set(gap) == {"*"} else ""


def _add_joined(edges: _Edges, words: list[str], start: int, end: int, glue: list[str]) -> None:
    """Readings of words ``start`` to ``end - 1`` as one word; ``glue[k]`` goes after word start + k."""
    for first in range(start, end - 1):  # every shorter run too: "a s e x" -> "sex"
        joined = words[first]
        for last in range(first + 1, min(end, first + _MAX_JOINED)):
            joined += glue[last - 1 - start] + words[last]
            edges[first].append((last + 1, _spellings(joined)))


def canonical_words(phrase: str) -> tuple[str, ...]:
    """A word-list entry as the matcher stores it: folded words, number words as digits (69 for
    "sixty nine", as the lattice reads them)."""
    folded, _ = _fold(phrase)
    out: list[str] = []
    tens = None
    for m in _WORD.finditer(folded):
        word = m.group().replace("'", "")
        value = number_value(word)
        if tens is not None and value is not None and 0 < value < 10:
            out[-1] = str(tens + value)
            tens = None
            continue
        tens = _TENS.get(word)
        out.append(str(value) if value is not None else word)
    return tuple(out)
