"""What a teacher chose: how strict the filter is, and the words they added or allowed.

A :class:`Policy` is frozen data; build it with :meth:`Policy.resolve` so that the environment and
a teacher's word file are read. ``strict`` is the default everywhere (panel, embedded server,
``speech2image serve``, the Colab server notebook).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..errors import ConfigError

__all__ = ["ENV_VARS", "LEVELS", "Policy"]

logger = logging.getLogger("speech2image_nb.safety")

#: ``strict``: every category, the wider word lists, pictures checked (the default);
#: ``standard``: every category, only unambiguous words, pictures checked;
#: ``off``: nothing is checked (a warning is logged once per process).
LEVELS = ("strict", "standard", "off")
DEFAULT_LEVEL = "strict"

#: Environment variables that feed :meth:`Policy.resolve`.
ENV_VARS: dict[str, str] = {
    "level": "S2I_SAFETY",
    "blocked": "S2I_SAFETY_BLOCK",  # comma-separated words or phrases to refuse as well
    "allowed": "S2I_SAFETY_ALLOW",  # comma-separated words or phrases never refused
    "word_file": "S2I_SAFETY_FILE",  # a plain text file of both (see load_word_file)
    "log_text": "S2I_SAFETY_LOG_TEXT",  # 1: keep the refused text in the teacher's log
}

_warned_off = False


@dataclasses.dataclass(frozen=True)
class Policy:
    """The filter's settings.

    ``blocked`` and ``allowed`` are a teacher's own words and phrases, matched the same way as the
    built-in lists (whole words, case, punctuation and simple inflections ignored). An allowed
    phrase wins over every list, built-in or the teacher's.
    """

    level: str = DEFAULT_LEVEL
    blocked: tuple[str, ...] = ()
    allowed: tuple[str, ...] = ()
    #: Keep the refused text in the teacher's log (default: time, place and category only).
    log_text: bool = False
    #: Check pictures and previews too (needs the image classifier); ignored when ``level`` is off.
    check_images: bool = True

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ConfigError(
                f"Unknown safety level {self.level!r} (S2I_SAFETY): use one of {', '.join(LEVELS)}."
            )
        # Lists or a comma-separated string become tuples, so that a policy stays hashable (the
        # compiled word lists are cached per policy) and "spider" is one word, not six letters.
        object.__setattr__(self, "blocked", tuple(_words(self.blocked)))
        object.__setattr__(self, "allowed", tuple(_words(self.allowed)))

    @property
    def enabled(self) -> bool:
        return self.level != "off"

    @classmethod
    def resolve(
        cls,
        level: str | None = None,
        *,
        blocked: Iterable[str] | str | None = None,
        allowed: Iterable[str] | str | None = None,
        word_file: str | os.PathLike[str] | None = None,
        log_text: bool | None = None,
        check_images: bool | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> Policy:
        """Arguments first, then the environment; a word file adds to the words given.

        Logs a warning once per process when the result is ``off``.
        """
        env = os.environ if environ is None else environ
        level = (level or env.get(ENV_VARS["level"]) or DEFAULT_LEVEL).strip().lower()
        block = list(_words(blocked if blocked is not None else env.get(ENV_VARS["blocked"])))
        allow = list(_words(allowed if allowed is not None else env.get(ENV_VARS["allowed"])))
        path = word_file if word_file is not None else env.get(ENV_VARS["word_file"])
        if path:
            more_block, more_allow = load_word_file(path)
            block += more_block
            allow += more_allow
        policy = cls(
            level=level,
            blocked=tuple(dict.fromkeys(block)),
            allowed=tuple(dict.fromkeys(allow)),
            log_text=bool(log_text)
            if log_text is not None
            else env.get(ENV_VARS["log_text"], "").strip().lower() in ("1", "true", "yes", "on"),
            check_images=True if check_images is None else bool(check_images),
        )
        if not policy.enabled:
            warn_off_once()
        return policy


def warn_off_once() -> None:
    """Say once per process that the classroom filter is off."""
    global _warned_off
    if not _warned_off:
        _warned_off = True
        logger.warning(
            "The classroom filter is off (safety level 'off'): prompts and pictures are not checked. "
            "Do not show this to a class."
        )


def _words(value: Iterable[str] | str | None) -> Iterable[str]:
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    out = []
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"A safety word must be a string, not {type(item).__name__}.")
        item = item.strip()
        if item:
            out.append(item)
    return out


def load_word_file(path: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """Read a teacher's word file: one word or phrase a line.

    A line is blocked unless it starts with ``+`` (allowed) ; ``-`` may mark a blocked one
    explicitly; ``#`` starts a comment; blank lines are skipped.
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            f"Cannot read the safety word file {str(file)!r} (S2I_SAFETY_FILE): {exc.strerror}; "
            "check the path, or unset S2I_SAFETY_FILE."
        ) from exc
    blocked: list[str] = []
    allowed: list[str] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("+"):
            allowed.append(line[1:].strip())
        elif line.startswith("-"):
            blocked.append(line[1:].strip())
        else:
            blocked.append(line)
    return [w for w in blocked if w], [w for w in allowed if w]
