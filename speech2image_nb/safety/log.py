"""The teacher's log of refusals: when, where, which category; the text only if the teacher chose.

Never shown on the projector: the panel keeps it on the panel object, the server writes it to its
log (logger ``speech2image_nb.safety``), neither puts it in a widget or a response.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

__all__ = ["Refusal", "RefusalLog"]

logger = logging.getLogger("speech2image_nb.safety")


@dataclasses.dataclass(frozen=True)
class Refusal:
    time: float  # seconds since the epoch
    where: str  # "panel", "server", "panel:hands-free", "server:image", ...
    category: str
    text: str | None = None  # only with Policy.log_text


class RefusalLog:
    """A bounded, thread-safe list of :class:`Refusal`, also written to the log."""

    def __init__(self, max_entries: int = 1000) -> None:
        self._entries: list[Refusal] = []
        self._lock = threading.Lock()
        self._max = max_entries

    def add(self, where: str, category: str, text: str | None = None) -> Refusal:
        entry = Refusal(time=time.time(), where=where, category=category, text=text)
        with self._lock:
            self._entries.append(entry)
            del self._entries[: max(0, len(self._entries) - self._max)]
        logger.info("refused (%s): category %s", where, category)
        return entry

    @property
    def entries(self) -> list[Refusal]:
        with self._lock:
            return list(self._entries)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def __repr__(self) -> str:
        return f"RefusalLog({len(self)} refusals)"
