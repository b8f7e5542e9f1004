"""The sampling options of a DALL-E request, checked in one place."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from .config import IMAGE_CODEBOOK_COUNT

__all__ = ["OPTION_NAMES", "SamplingOptions"]

#: the request fields that carry sampling options
OPTION_NAMES = frozenset({"temperature", "top_k", "supercondition_factor"})


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
    """How the next image token is drawn; the defaults are min-dalle's.

    Images of one batch share their options (the engine groups jobs by them), so the options are
    hashable.
    """

    #: divides the mixed logits before the softmax (0.01-16; higher: more varied pictures)
    temperature: float = 1.0
    #: how many of the largest mixed logits stay candidates (1-16384)
    top_k: int = 256
    #: weight of the prompt against the unconditioned row: ``u * (1 - s) + c * s`` (0-256)
    supercondition_factor: float = 16.0

    @classmethod
    def from_request(cls, options: Mapping[str, Any]) -> SamplingOptions:
        """Options from a request's fields (missing ones take the defaults).

        Raises ValueError naming the field that is unknown or out of range.
        """
        unknown = set(options) - OPTION_NAMES
        if unknown:
            raise ValueError(f"unknown field(s) for the DALL-E engine: {', '.join(sorted(unknown))}")
        default = cls()
        return cls(
            temperature=_number(options, "temperature", default.temperature, 0.01, 16.0, integer=False),
            top_k=_number(options, "top_k", default.top_k, 1, IMAGE_CODEBOOK_COUNT, integer=True),
            supercondition_factor=_number(
                options, "supercondition_factor", default.supercondition_factor, 0.0, 256.0, integer=False
            ),
        )

    def as_dict(self) -> dict[str, Any]:
        """The options as request fields."""
        return dataclasses.asdict(self)


def _number(
    options: Mapping[str, Any], field: str, default: float, low: float, high: float, *, integer: bool
) -> Any:
    value = options.get(field, default)
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
        raise ValueError(f"{field} must be {kind} between {low} and {high}")
    if not (low <= value <= high) or (not integer and not math.isfinite(value)):
        raise ValueError(f"{field} must be {kind} between {low} and {high}, not {value}")
    return int(value) if integer else float(value)
