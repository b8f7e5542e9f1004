"""The classroom filter inside the image server: prompts before the engine, pictures before the wire.

- **Prompts** (:func:`prompt_refusal`): every generate route checks the whole prompt with the
  server's :class:`~speech2image_nb.safety.Policy` before anything is queued, so a refused prompt
  costs no engine work. The refusal goes to the server's :class:`~speech2image_nb.safety.RefusalLog`
  (time, route, category; the text only with ``--safety-log-text``) and the client gets
  ``prompt_blocked`` with a sentence that names the category and never repeats the prompt.
- **Pictures** (:class:`ScreenedEngine`): the batcher runs the engine through this wrapper, so the
  check runs inside the engine's own call, on whatever thread the engine's torch work runs on, and
  no image or preview reaches a request before it was checked. A flagged image is replaced by the
  neutral placeholder (same size), marked so that the routes report it in ``withheld`` and never
  save it; a flagged preview is dropped (the client keeps what it showed before). A check that
  fails withholds every image of its batch. The check is one call, :func:`flag_images`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, overload

from ..errors import PromptBlocked
from ..safety import Policy, RefusalLog, check_prompt
from ..safety.images import ImageChecker, flag_images, placeholder_image
from .engines.base import Engine, ImageJob, LoadProgress, PromptReader, StepProgress
from .engines.engine_thread import EngineThread
from .error_handlers import ApiError

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "PICTURE_CATEGORY",
    "WITHHELD_KEY",
    "ScreenedEngine",
    "is_withheld",
    "prompt_refusal",
    "withheld_placeholder",
]

log = logging.getLogger("speech2image_nb.safety")

#: key of ``Image.info`` that marks a placeholder standing in for a withheld picture
WITHHELD_KEY = "speech2image_nb.withheld"
#: the refusal log's category of a withheld picture (flagged by the classifier, or not checkable)
PICTURE_CATEGORY = "picture"


def prompt_refusal(text: str, policy: Policy, refusals: RefusalLog, *, where: str) -> ApiError | None:
    """The ``prompt_blocked`` answer for ``text``, logged in ``refusals``; ``None`` when allowed."""
    verdict = check_prompt(text, policy)
    if verdict.allowed:
        return None
    category = verdict.category or "custom"
    refusals.add(where, category, text if policy.log_text else None)
    if policy.log_text:
        log.info("refused prompt text (%s, kept at the teacher's choice): %r", where, text)
    return ApiError("prompt_blocked", PromptBlocked.describe(category), category=category)


def withheld_placeholder(size: tuple[int, int]) -> Image.Image:
    """The placeholder for a withheld picture of ``size``, marked for :func:`is_withheld`."""
    tile = placeholder_image(size)
    tile.info[WITHHELD_KEY] = True
    return tile


def is_withheld(image: Image.Image) -> bool:
    """True for a placeholder that stands in for a withheld picture."""
    return bool(image.info.get(WITHHELD_KEY))


class _ScreenedPreviews(Sequence["Image.Image | None"]):
    """An engine's previews, each checked when first read (engines decode previews lazily, and the
    batcher reads one per request): a flagged preview reads as ``None``."""

    def __init__(self, previews: Sequence[Image.Image | None], checker: ImageChecker | None) -> None:
        self._previews = previews
        self._checker = checker
        self._seen: dict[int, Image.Image | None] = {}

    def __len__(self) -> int:
        return len(self._previews)

    @overload
    def __getitem__(self, index: int) -> Image.Image | None: ...

    @overload
    def __getitem__(self, index: slice) -> list[Image.Image | None]: ...

    def __getitem__(self, index: int | slice) -> Image.Image | list[Image.Image | None] | None:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = range(len(self))[index]
        if index not in self._seen:
            preview = self._previews[index]
            if preview is not None and flag_images(self._checker, [preview])[0]:
                preview = None
            self._seen[index] = preview
        return self._seen[index]


class ScreenedEngine(Engine):
    """``engine`` with the picture check on every image and preview it makes (see the module docstring).

    ``checker`` may be set after construction (the server loads it at start-up, after the
    engine); until then every picture is withheld. Each withheld image is added to ``refusals``
    (where ``server:image``, category :data:`PICTURE_CATEGORY`). Everything else is the wrapped
    engine's.
    """

    def __init__(
        self, engine: Engine, checker: ImageChecker | None = None, *, refusals: RefusalLog | None = None
    ) -> None:
        self.engine = engine
        self.checker = checker
        self.refusals = refusals

    # what the server reads of an engine: the wrapped engine's, read when asked
    @property
    def name(self) -> str:  # type: ignore[override]
        return self.engine.name

    @property
    def device(self) -> str:  # type: ignore[override]
        return self.engine.device

    @property
    def max_batch(self) -> int:  # type: ignore[override]
        return self.engine.max_batch

    @property
    def option_names(self) -> frozenset[str]:  # type: ignore[override]
        return self.engine.option_names

    @property
    def engine_thread(self) -> EngineThread:
        """The wrapped engine's thread: the check runs where the engine's torch work runs.

        A thread of the wrapper's own would run the check's torch work beside the engine's, and
        a second OpenMP team slows every engine step down (see ``.engines.engine_thread``).
        """
        return self.engine.engine_thread

    def __getattr__(self, name: str) -> Any:
        """Any other attribute (engine-specific ones) is the wrapped engine's."""
        if name in ("engine", "checker", "refusals"):
            raise AttributeError(name)
        return getattr(self.engine, name)

    def load(self, progress: LoadProgress | None = None) -> None:
        self.engine.load(progress)

    def validate_options(self, options: Any) -> dict[str, Any]:
        return self.engine.validate_options(options)

    def prompt_reader(self) -> PromptReader | None:
        return self.engine.prompt_reader()

    def describe(self) -> dict[str, Any]:
        return self.engine.describe()

    def generate(
        self, jobs: Sequence[ImageJob], *, on_progress: StepProgress | None = None
    ) -> list[Image.Image | None]:
        """The engine's images, each flagged one replaced by the placeholder; previews checked."""
        screened: StepProgress | None = None
        if on_progress is not None:
            report = on_progress

            def screened(step: int, total: int, previews: Sequence[Image.Image | None] | None) -> None:
                report(step, total, None if previews is None else _ScreenedPreviews(previews, self.checker))

        images = list(self.engine.generate(jobs, on_progress=screened))
        made = [i for i, image in enumerate(images) if image is not None]
        flags = flag_images(self.checker, [images[i] for i in made])  # type: ignore[misc]
        for i, flagged in zip(made, flags, strict=True):
            if flagged:
                images[i] = withheld_placeholder(images[i].size)  # type: ignore[union-attr]
        if any(flags):
            log.info("picture check: %d of %d image(s) withheld", sum(flags), len(made))
            for _ in range(sum(flags) if self.refusals is not None else 0):
                self.refusals.add("server:image", PICTURE_CATEGORY)  # type: ignore[union-attr]
        return images
