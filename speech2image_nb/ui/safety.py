"""The panel's side of the classroom filter: check before sending, mask on screen, log for the teacher.

Why the panel checks although our server does too: the panel may talk to a server that does not
filter (an older one, a DALL-E Playground backend). What the class sees on the projector is kept
neutral: a refusal is one line naming the category, never the words; refused words in the live
transcript show as ``•••``. What the teacher may read later (the time, where, the category, and
the text only when :attr:`~speech2image_nb.safety.Policy.log_text` is set) goes to a
:class:`~speech2image_nb.safety.RefusalLog` that no widget shows.

Plain data and functions, no widget: :mod:`speech2image_nb.ui.session` uses them from its threads.
"""

from __future__ import annotations

import threading

from ..errors import BLOCKED_CATEGORY_WORDS
from ..safety import Policy, RefusalLog, check_prompt, mask_text

__all__ = [
    "PICTURE_CATEGORY",
    "WHERE_HANDS_FREE",
    "WHERE_PANEL",
    "WHERE_SERVER",
    "WHERE_SERVER_IMAGE",
    "WHERE_SPEECH",
    "WHERE_UPLOAD",
    "PromptScreen",
    "blocked_category",
    "is_prompt_blocked",
    "refusal_line",
    "withheld_line",
]

#: Where a refusal happened, as the teacher's log names it.
WHERE_PANEL = "panel"  # the Generate button or Panel.generate()
WHERE_HANDS_FREE = "panel:hands-free"  # a finished sentence that hands-free would have drawn
WHERE_SPEECH = "panel:speech"  # a finished sentence that would have gone into the prompt box
WHERE_UPLOAD = "panel:upload"  # the sentence of an uploaded recording
WHERE_SERVER = "server"  # the image server's own filter refused the prompt
WHERE_SERVER_IMAGE = "server:image"  # the image server withheld a picture (as its own log says)
PICTURE_CATEGORY = "picture"  # the category of a withheld picture (the server's name for it)

_CHANGE = "Change the prompt, or the teacher can change the filter."
_MASK_CACHE_SIZE = 512  # transcript turns whose masked text is kept (the transcript is redrawn often)


def refusal_line(category: str | None) -> str:
    """The neutral line the class sees: not drawn, and why (the category only, never the words).

    The same whether the panel or the image server refused: the class needs no more, and the
    teacher's log says which.
    """
    if not category:
        return f"Not drawn: the classroom filter refused this prompt. {_CHANGE}"
    what = BLOCKED_CATEGORY_WORDS.get(category, f"{category.replace('_', ' ')} content")
    return f"Not drawn: the classroom filter refuses {what}. {_CHANGE}"


def withheld_line(count: int) -> str:
    """Says how many pictures of a generation the server replaced by its neutral placeholder."""
    if count == 1:
        return "1 picture was not shown (classroom filter)."
    return f"{count} pictures were not shown (classroom filter)."


def is_prompt_blocked(exc: BaseException) -> bool:
    """Whether ``exc`` is the image server refusing a prompt (its ``prompt_blocked`` answer).

    The client raises ``PromptBlocked`` for it; a client without that class raises a
    ``ServerError`` whose ``code`` is ``prompt_blocked``. Both count.
    """
    if any(cls.__name__ == "PromptBlocked" for cls in type(exc).__mro__):
        return True
    return getattr(exc, "code", None) == "prompt_blocked"


def blocked_category(exc: BaseException) -> str | None:
    """The category the server named for a refused prompt, when it named one."""
    category = getattr(exc, "category", None)
    return category if isinstance(category, str) and category else None


class PromptScreen:
    """One panel's classroom filter: checks prompts, masks the transcript, keeps the teacher's log.

    Parameters
    ----------
    policy
        The filter (level, a teacher's words); ``off`` lets everything through.
    log
        The teacher's log to add refusals to (a new one by default).
    mask_transcript
        Mask refused words in what :meth:`mask` returns; off, it returns the text as it is.
    """

    def __init__(
        self, policy: Policy, *, log: RefusalLog | None = None, mask_transcript: bool = True
    ) -> None:
        self.policy = policy
        self.log = log if log is not None else RefusalLog()
        self.mask_transcript = mask_transcript
        self._masked: dict[str, str] = {}
        self._lock = threading.Lock()

    def refuse(self, text: str, where: str) -> str | None:
        """Check ``text``; when refused, log it and return the line to show, else ``None``."""
        verdict = check_prompt(text, self.policy)
        if verdict.allowed:
            return None
        category = verdict.category or "unknown"
        self.record(where, category, text)
        return refusal_line(verdict.category)

    def allows(self, text: str) -> bool:
        """Whether ``text`` passes, without logging anything."""
        return check_prompt(text, self.policy).allowed

    def record(self, where: str, category: str | None, text: str | None) -> None:
        """Add a refusal to the teacher's log; the text only when the policy says to keep it."""
        self.log.add(where, category or "unknown", text if self.policy.log_text else None)

    def mask(self, text: str) -> str:
        """``text`` as the projector may show it: refused words as ``•`` (unless masking is off)."""
        if not self.mask_transcript or not self.policy.enabled or not text:
            return text
        with self._lock:
            cached = self._masked.get(text)
        if cached is not None:
            return cached
        masked = mask_text(text, self.policy)
        with self._lock:
            if len(self._masked) >= _MASK_CACHE_SIZE:
                self._masked.clear()
            self._masked[text] = masked
        return masked
