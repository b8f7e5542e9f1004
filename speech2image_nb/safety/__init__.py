"""The classroom filter: one policy, a check for prompts and a check for pictures.

Safety sits at both ends of the wire: the image server checks every prompt before any engine work
and every picture (and preview) before it leaves; the panel checks prompts before sending too,
because it may talk to a server that does not filter. Both import this package.

Importing it loads no model and imports no torch: the prompt check is plain Python; the picture
check (:mod:`speech2image_nb.safety.images`) loads its classifier only when asked to.
"""

from .log import Refusal, RefusalLog
from .policy import LEVELS, Policy
from .prompts import PromptVerdict, check_prompt, mask_text

__all__ = [
    "LEVELS",
    "Policy",
    "PromptVerdict",
    "Refusal",
    "RefusalLog",
    "check_prompt",
    "mask_text",
]
