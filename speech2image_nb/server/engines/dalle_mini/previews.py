"""Progressive previews that cost a bounded share of the generation time.

A preview is a VQGAN decode of the tokens sampled so far. On a GPU it takes milliseconds; on a CPU
one decode costs about as much as a few dozen decoder steps, so decoding every image of a batch
every 32 tokens made a CPU generation several times slower (figures in ``benchmarks/RESULTS.md``).

Three pieces keep the cost proportional:

- :class:`LazyPreviews` decodes an image only when the consumer reads it. The server shows one
  preview per request, so a request of 4 images pays for 1 decode per preview, not 4.
- :class:`PreviewPacer` lets a preview through only while the time spent on previews, plus the
  expected cost of this one, stays within ``budget`` times the time spent sampling so far. On a
  GPU the engine's budget is unlimited (a preview every 32 tokens); on a CPU it is 0.2, so previews
  come as often as the device affords, evenly spread, and never add more than about 20%.
- :class:`PreviewCost` is the engine's running estimate of what one preview costs, refreshed by
  every preview shown and every final decode.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, overload

if TYPE_CHECKING:
    import torch
    from PIL import Image

__all__ = ["LazyPreviews", "PreviewCost", "PreviewPacer"]


class LazyPreviews(Sequence["Image.Image | None"]):
    """Preview images of a batch; image ``i`` is decoded on first access and then kept.

    Parameters
    ----------
    tokens
        ``[rows, 256]`` tokens so far (copied: the generation goes on writing its own buffer).
    decode
        maps ``[1, 256]`` tokens to one PIL image.
    images, image_count
        row ``r`` of ``tokens`` is image ``images[r]`` of a batch of ``image_count``; the others
        (images no longer made) read as ``None``. Default: row ``i`` is image ``i``.
    """

    def __init__(
        self,
        tokens: torch.Tensor,
        decode: Callable[[torch.Tensor], Image.Image],
        *,
        images: Sequence[int] | None = None,
        image_count: int | None = None,
    ) -> None:
        self._tokens = tokens.clone()
        self._decode = decode
        rows = range(tokens.shape[0]) if images is None else images
        count = len(rows) if image_count is None else image_count
        self._row_of: list[int | None] = [None] * count
        for row, image in enumerate(rows):
            self._row_of[image] = row
        self._images: list[Image.Image | None] = [None] * count
        #: images decoded so far
        self.decoded = 0

    def __len__(self) -> int:
        return len(self._images)

    @overload
    def __getitem__(self, index: int) -> Image.Image | None: ...

    @overload
    def __getitem__(self, index: slice) -> list[Image.Image | None]: ...

    def __getitem__(self, index: int | slice) -> Image.Image | list[Image.Image | None] | None:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        image = self._images[index]
        row = self._row_of[index]
        if image is None and row is not None:
            image = self._images[index] = self._decode(self._tokens[row : row + 1])
            self.decoded += 1
        return image

    def __iter__(self) -> Iterator[Image.Image | None]:
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


@dataclasses.dataclass
class PreviewCost:
    """What one preview costs on this engine, measured at load and refreshed while generating.

    Previews may decode in bf16 while final pictures decode in the engine's own precision;
    ``to_final`` is the measured ratio of the two, so a final decode refreshes the estimate too.
    """

    #: seconds of one preview image
    image_seconds: float = 0.0
    #: a preview decode's time over a final decode's
    to_final: float = 1.0
    #: images the consumer read per preview (``None``: no preview shown yet, assume 1)
    images_per_preview: int | None = None

    def pacer(self, budget: float, image_count: int) -> PreviewPacer:
        """A pacer for one batch of ``image_count`` images."""
        per_preview = self.images_per_preview if self.images_per_preview is not None else 1
        return PreviewPacer(budget, self.image_seconds * min(per_preview, image_count))

    def record_preview(self, seconds: float, decoded: int) -> None:
        """A preview point that took ``seconds`` and decoded ``decoded`` images."""
        self.images_per_preview = decoded
        if decoded:
            self.image_seconds = seconds / decoded

    def record_final(self, seconds_per_image: float) -> None:
        """A final decode that took ``seconds_per_image`` per image."""
        self.image_seconds = seconds_per_image * self.to_final
