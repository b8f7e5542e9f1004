"""The prompt check: whole words and phrases, never substrings.

PLACEHOLDER implementation (exact lowercase word match against a tiny list) so that the server and
panel can be wired against the final API; replaced by the real matcher and word lists.
"""

from __future__ import annotations

import dataclasses
import re

from .policy import Policy

__all__ = ["PromptVerdict", "check_prompt", "mask_text"]


@dataclasses.dataclass(frozen=True)
class PromptVerdict:
    allowed: bool
    #: ``sexual``, ``violence``, ``self_harm``, ``drugs``, ``hate``, ``custom`` (a teacher's word); None if allowed
    category: str | None = None
    #: (start, end) character spans of the refused words in the text given, for masking
    spans: tuple[tuple[int, int], ...] = ()


_DEFAULT_POLICY = Policy()
_PLACEHOLDER = {"nude": "sexual", "naked": "sexual", "gore": "violence", "cocaine": "drugs"}


def check_prompt(text: str, policy: Policy | None = None) -> PromptVerdict:
    policy = policy or _DEFAULT_POLICY
    if not policy.enabled:
        return PromptVerdict(True)
    allowed = {w.lower() for w in policy.allowed}
    spans, category = [], None
    for m in re.finditer(r"[a-z]+", text.lower()):
        word = m.group()
        if word in allowed:
            continue
        cat = "custom" if word in {w.lower() for w in policy.blocked} else _PLACEHOLDER.get(word)
        if cat:
            category = category or cat
            spans.append(m.span())
    return PromptVerdict(category is None, category, tuple(spans))


def mask_text(text: str, policy: Policy | None = None, mask: str = "•") -> str:
    """``text`` with every refused word replaced by ``mask`` characters (for the live transcript)."""
    verdict = check_prompt(text, policy)
    out = text
    for start, end in reversed(verdict.spans):
        out = out[:start] + mask * (end - start) + out[end:]
    return out
