"""A test engine that draws smooth colour noise: deterministic, fast, and shaped like a GPU.

It exists to wire and test the server, the batcher and the clients without weights. Images
depend only on the prompt and each image's own seed, so "batched == alone" can be checked
exactly. Its latency model grows sub-linearly with the batch size (``base + per_image * n**0.3``),
like a real accelerator, so batching wins can be measured. It is never the default engine.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from .base import Engine, ImageJob, LoadProgress, StepProgress

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["NoiseEngine"]

GRID_CELLS = 8  # colour cells per side before smooth upscaling (keeps JPEGs small)
MAX_STEPS = 50


class NoiseEngine(Engine):
    """Deterministic colour-noise images; see the module docstring.

    Parameters
    ----------
    size_px
        Width and height of every image.
    base_latency_s, per_image_latency_s
        One :meth:`generate` call of ``n`` images sleeps ``base + per_image * n**0.3`` seconds.
    steps
        Progress callbacks per call (each with previews); a request may override with ``steps``.
    max_batch
        Most images per call.
    load_latency_s
        Time :meth:`load` takes (reported through the progress callback in 4 parts).
    fail_on
        Prompts that make :meth:`generate` raise (tests of the server's error path).
    """

    name = "noise"
    option_names = frozenset({"steps", "temperature"})
    #: JSON schema of each option (documents the API; validate_options is what enforces it)
    option_schema: ClassVar[dict[str, dict[str, Any]]] = {
        "steps": {"type": "integer", "minimum": 1, "maximum": MAX_STEPS},
        "temperature": {"type": "number", "exclusiveMinimum": 0, "maximum": 10},
    }

    def __init__(
        self,
        *,
        size_px: int = 256,
        base_latency_s: float = 0.0,
        per_image_latency_s: float = 0.0,
        steps: int = 4,
        max_batch: int = 16,
        load_latency_s: float = 0.0,
        fail_on: frozenset[str] = frozenset(),
    ) -> None:
        if not 8 <= size_px <= 2048:
            raise ValueError("size_px must be between 8 and 2048")
        if min(base_latency_s, per_image_latency_s, load_latency_s) < 0:
            raise ValueError("latencies must be >= 0")
        if not 1 <= steps <= MAX_STEPS or max_batch < 1:
            raise ValueError(f"steps must be 1..{MAX_STEPS} and max_batch >= 1")
        self.size_px = size_px
        self.base_latency_s = base_latency_s
        self.per_image_latency_s = per_image_latency_s
        self.steps = steps
        self.max_batch = max_batch
        self.load_latency_s = load_latency_s
        self.fail_on = fail_on
        self.loaded = False
        self.calls: list[int] = []  # batch size of each generate() call, for tests

    def latency_s(self, image_count: int) -> float:
        """Seconds one call of ``image_count`` images takes."""
        if image_count <= 0:
            return 0.0
        return self.base_latency_s + self.per_image_latency_s * math.pow(image_count, 0.3)

    def load(self, progress: LoadProgress | None = None) -> None:
        """Pretend to load weights, reporting progress in four parts."""
        for part in range(4):
            if progress is not None:
                progress(part / 4, "loading noise engine")
            time.sleep(self.load_latency_s / 4)
        self.loaded = True
        if progress is not None:
            progress(1.0, "noise engine ready")

    def validate_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Accept ``steps`` (int 1..50) and ``temperature`` (number > 0 and <= 10)."""
        clean = super().validate_options(options)
        if "steps" in clean:
            steps = clean["steps"]
            if isinstance(steps, float) and steps.is_integer():
                steps = clean["steps"] = int(steps)
            if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
                raise ValueError(f"steps must be an integer from 1 to {MAX_STEPS}")
        if "temperature" in clean:
            value = clean["temperature"]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 10:
                raise ValueError("temperature must be a number above 0 and at most 10")
            clean["temperature"] = float(value)
        return clean

    def generate(
        self, jobs: Sequence[ImageJob], *, on_progress: StepProgress | None = None
    ) -> list[Image.Image]:
        """Sleep the modelled latency in ``steps`` parts, then return one image per job."""
        from ...errors import EngineError

        if not self.loaded:
            raise EngineError("The noise engine was used before load(); call load() first.")
        if len(jobs) > self.max_batch:
            raise EngineError(f"The noise engine got {len(jobs)} images; its maximum is {self.max_batch}.")
        for job in jobs:
            if job.prompt in self.fail_on:
                raise EngineError("The noise engine was told to fail on this prompt.")
        self.calls.append(len(jobs))
        steps = int(jobs[0].options.get("steps", self.steps)) if jobs else self.steps
        temperature = float(jobs[0].options.get("temperature", 1.0)) if jobs else 1.0
        grids = [self._grid(job, temperature) for job in jobs]
        pause_s = self.latency_s(len(jobs)) / steps
        for step in range(1, steps + 1):
            time.sleep(pause_s)
            if on_progress is not None and step < steps:
                on_progress(step, steps, [self._render(g, size_px=32) for g in grids])
        images = [self._render(g, size_px=self.size_px) for g in grids]
        if on_progress is not None:
            on_progress(steps, steps, None)
        return images

    @staticmethod
    def _grid(job: ImageJob, temperature: float) -> Any:
        import numpy as np

        prompt_key = int.from_bytes(hashlib.blake2b(job.prompt.encode(), digest_size=8).digest(), "little")
        rng = np.random.default_rng([job.image_seed, prompt_key])
        cells = rng.random((GRID_CELLS, GRID_CELLS, 3))
        cells = 0.5 + (cells - 0.5) * min(temperature, 2.0)
        return (np.clip(cells, 0.0, 1.0) * 255).astype(np.uint8)

    @staticmethod
    def _render(grid: Any, *, size_px: int) -> Image.Image:
        from PIL import Image

        return Image.fromarray(grid, "RGB").resize((size_px, size_px), Image.Resampling.BILINEAR)
