"""Progressive previews that cost a bounded share of the generation time.

A preview is a VQGAN decode of the tokens sampled so far. Measured on a 2-core CPU (one thread,
fp32): the full VQGAN takes 3.8 s per 256x256 image, about 27 decoder steps of the full-size mini
(140 ms each); for the tiny test model it takes 0.23 s against 1 ms per step. Decoding every image
of the batch every 32 tokens therefore made a CPU generation 4-5 times slower, almost all of it in
the VQGAN's convolutions (81% in ``mkldnn_convolution``). On a GPU the decode is a few
milliseconds and previews every 32 tokens are cheap.

Two measures keep the cost proportional:

- :class:`LazyPreviews` decodes an image only when the consumer reads it. The server shows one
  preview per request, so a request of 4 images pays for 1 decode per preview, not 4.
- :class:`PreviewPacer` lets a preview through only while the time spent on previews, plus the
  expected cost of this one, stays within ``budget`` times the time spent sampling so far. On a
  GPU the engine's budget is unlimited (a preview every 32 tokens); on a CPU it is 0.2, so previews
  come as often as the device affords, evenly spread, and never add more than about 20%.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, overload

if TYPE_CHECKING:
    import torch
    from PIL import Image

__all__ = ["LazyPreviews", "PreviewPacer"]


class LazyPreviews(Sequence["Image.Image"]):
    """Preview images of a batch; image ``i`` is decoded on first access and then kept.

    Parameters
    ----------
    tokens
        ``[images, 256]`` tokens so far (copied: the generation goes on writing its own buffer).
    decode
        maps ``[1, 256]`` tokens to one PIL image.
    """

    def __init__(self, tokens: torch.Tensor, decode: Callable[[torch.Tensor], Image.Image]) -> None:
        self._tokens = tokens.clone()
        self._decode = decode
        self._images: list[Image.Image | None] = [None] * tokens.shape[0]
        #: images decoded so far
        self.decoded = 0

    def __len__(self) -> int:
        return len(self._images)

    @overload
    def __getitem__(self, index: int) -> Image.Image: ...

    @overload
    def __getitem__(self, index: slice) -> list[Image.Image]: ...

    def __getitem__(self, index: int | slice) -> Image.Image | list[Image.Image]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        image = self._images[index]
        if image is None:
            image = self._images[index] = self._decode(self._tokens[index : index + 1])
            self.decoded += 1
        return image

    def __iter__(self) -> Iterator[Image.Image]:
        return (self[i] for i in range(len(self)))


class PreviewPacer:
    """Decides, at each preview point of one generation, whether a preview fits the time budget.

    Parameters
    ----------
    budget
        largest ratio of preview time to sampling time (``math.inf``: every preview point).
    estimate
        expected seconds of the first preview (then the last measured one is used).
    clock
        monotonic seconds (a parameter for tests).
    """

    def __init__(
        self, budget: float, estimate: float, *, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self.budget = budget
        self.estimate = estimate
        self.clock = clock
        self.started = clock()
        #: seconds spent in previews so far
        self.spent = 0.0
        #: previews let through / skipped
        self.shown = 0
        self.skipped = 0

    def sampling_seconds(self) -> float:
        """Seconds of this generation not spent in previews."""
        return self.clock() - self.started - self.spent

    def allows(self) -> bool:
        """True if a preview now keeps previews within the budget (counts the decision)."""
        allowed = math.isinf(self.budget) or (
            self.spent + self.estimate <= self.budget * self.sampling_seconds()
        )
        if allowed:
            self.shown += 1
        else:
            self.skipped += 1
        return allowed

    def record(self, seconds: float) -> None:
        """Account a preview that took ``seconds``; it becomes the estimate of the next one."""
        self.spent += seconds
        self.estimate = seconds
