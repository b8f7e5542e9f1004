"""The picture check: an image classifier that flags pictures a class must not see.

Every image and every preview is checked before it leaves the image server; a flagged one is
replaced by :func:`placeholder_image` (a calm tile of the same size, never a black square), the
others of the request still show.

The model: ``Falconsai/nsfw_image_detection`` by default (a ViT-base/16 at 224 px fine-tuned to
two labels, ``normal`` and ``nsfw``; Apache-2.0, so it may be used with this MIT package; about
340 MB of safetensors weights). Chosen because it runs offline once cached, loads with plain
``transformers`` (no extra package, no pinned scientific stack), and costs one ViT-base forward
pass per picture, small against a generation (``benchmarks/safety_images.py``). It covers
sexual content only, as the Stable Diffusion safety checker does; the prompt check covers the
other categories. Any image-classification model with an ``nsfw`` label may replace it
(``S2I_SAFETY_IMAGE_MODEL``: a hub repo id or a folder saved with ``save_pretrained``).

Weights come through ``huggingface_hub`` like the engines' (pinned revision, cache, offline mode):
offline or with the hub unreachable only the cache is read, so a missing model fails at once with
a message naming the setting. torch and transformers are imported inside the functions only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..errors import ModelNotAvailable

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "DEFAULT_IMAGE_MODEL",
    "DEFAULT_IMAGE_MODEL_REVISION",
    "DEFAULT_THRESHOLD",
    "IMAGE_MODEL_ENV",
    "UNSAFE_LABELS",
    "ClassifierChecker",
    "ImageChecker",
    "flag_images",
    "load_image_checker",
    "placeholder_image",
    "save_random_image_classifier",
]

log = logging.getLogger("speech2image_nb.safety")

DEFAULT_IMAGE_MODEL = "Falconsai/nsfw_image_detection"
#: the hub commit the default model is read at (model.safetensors, config.json, preprocessor_config.json)
DEFAULT_IMAGE_MODEL_REVISION = "63e0a066bb08d2ae47324b540fba3adfd4536569"
#: the setting that names another model (hub repo id or local folder)
IMAGE_MODEL_ENV = "S2I_SAFETY_IMAGE_MODEL"
#: a picture is flagged when the probability of its unsafe labels together reaches this
DEFAULT_THRESHOLD = 0.5
#: label names (lower case) counted as unsafe; a model must have at least one of them
UNSAFE_LABELS = frozenset({"nsfw", "porn", "hentai", "sexy", "explicit", "unsafe"})

#: (fraction 0..1, message) while the classifier loads
LoadProgress = Callable[[float, str], None]


@runtime_checkable
class ImageChecker(Protocol):
    """Anything that says, for each picture, whether a class must not see it."""

    def flags(self, images: Sequence[Image.Image]) -> list[bool]:
        """One bool per image, in order: True = must not be shown."""
        ...


def flag_images(checker: ImageChecker | None, images: Sequence[Image.Image]) -> list[bool]:
    """``checker.flags(images)``, failing closed: a checker that raises, answers the wrong number
    of flags, or is missing flags every image (a picture nobody checked is never shown)."""
    if not images:
        return []
    if checker is None:
        log.error("no picture check is loaded: %d image(s) withheld", len(images))
        return [True] * len(images)
    try:
        flags = [bool(flag) for flag in checker.flags(images)]
    except Exception:
        log.exception("the picture check failed: %d image(s) withheld", len(images))
        return [True] * len(images)
    if len(flags) != len(images):
        log.error("the picture check answered %d flags for %d images: all withheld", len(flags), len(images))
        return [True] * len(images)
    return flags


def placeholder_image(size: tuple[int, int]) -> Image.Image:
    """A calm pastel tile of ``size`` (width, height) with a small grey circle and bar: what shows
    in place of a withheld picture (never black, so a projector does not flash)."""
    from PIL import Image, ImageDraw

    width, height = max(1, int(size[0])), max(1, int(size[1]))
    tile = Image.new("RGB", (width, height), (222, 228, 236))
    draw = ImageDraw.Draw(tile)
    radius = max(2, min(width, height) // 8)
    cx, cy = width // 2, height // 2
    grey = (150, 160, 175)
    draw.ellipse(
        (cx - radius, cy - radius, cx + radius, cy + radius), outline=grey, width=max(1, radius // 5)
    )
    bar = max(1, radius // 4)
    draw.rectangle((cx - radius // 2, cy - bar // 2, cx + radius // 2, cy + bar // 2 + (bar % 2)), fill=grey)
    return tile


class ClassifierChecker:
    """An image-classification model as an :class:`ImageChecker`.

    ``flags`` runs the whole batch through one forward pass and flags an image when the summed
    probability of the model's unsafe labels (:data:`UNSAFE_LABELS`) reaches ``threshold``.
    On a CPU the pass runs with ``threads`` torch threads, set around it only (the engines' rule:
    ``S2I_CPU_THREADS``, else the physical cores; on shared cores more threads were slower).
    Built by :func:`load_image_checker`.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        unsafe_ids: Sequence[int],
        threshold: float,
        name: str,
        threads: int | None = None,
    ) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError("threshold must be above 0 and at most 1")
        self.model = model
        self.processor = processor
        self.unsafe_ids = list(unsafe_ids)
        self.threshold = threshold
        self.name = name
        self.threads = threads

    @property
    def device(self) -> str:
        return str(next(self.model.parameters()).device)

    def scores(self, images: Sequence[Image.Image]) -> list[float]:
        """The unsafe probability of each image (one forward pass)."""
        import torch

        from ..server.engines.cpu import resolve_threads, torch_threads

        if not images:
            return []
        pictures = [image if image.mode == "RGB" else image.convert("RGB") for image in images]
        on_cpu = self.model.device.type == "cpu"
        threads = torch_threads(resolve_threads(self.threads)) if on_cpu else contextlib.nullcontext()
        with threads, torch.inference_mode():
            inputs = self.processor(images=pictures, return_tensors="pt")
            pixels = inputs["pixel_values"].to(device=self.model.device, dtype=self.model.dtype)
            logits = self.model(pixel_values=pixels).logits
            unsafe = logits.float().softmax(dim=-1)[:, self.unsafe_ids].sum(dim=-1)
        return [float(p) for p in unsafe.cpu()]

    def flags(self, images: Sequence[Image.Image]) -> list[bool]:
        """True for each image whose unsafe probability reaches the threshold."""
        return [score >= self.threshold for score in self.scores(images)]

    def __repr__(self) -> str:
        return f"ClassifierChecker({self.name!r}, threshold={self.threshold:g})"


def _fix_hint() -> str:
    return (
        f"set {IMAGE_MODEL_ENV} (or --safety-image-model) to a folder saved with save_pretrained "
        "that holds an image classifier with an 'nsfw' label"
    )


def _resolve_source(model: str) -> tuple[str, str | None, bool]:
    """``(what from_pretrained reads, revision, local_files_only)`` for a repo id or a folder."""
    from ..hub import hub_unavailable

    if Path(model).is_dir():
        return model, None, True
    if model.startswith((".", "/", "~")) or model.count("/") > 1 or (os.sep != "/" and os.sep in model):
        raise ModelNotAvailable(f"The picture-check model folder {model} does not exist; {_fix_hint()}.")
    revision = DEFAULT_IMAGE_MODEL_REVISION if model == DEFAULT_IMAGE_MODEL else None
    unavailable = hub_unavailable()
    if unavailable is not None:
        log.info("picture check: reading %s from the cache only (%s)", model, unavailable)
    return model, revision, unavailable is not None


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """transformers draws a "Loading weights" bar on stderr at every load: none while we load."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def load_image_checker(
    model: str | None = None,
    *,
    device: str = "cpu",
    threshold: float = DEFAULT_THRESHOLD,
    progress: LoadProgress | None = None,
) -> ClassifierChecker:
    """Load the picture check's classifier (downloading it through the hub if needed).

    Parameters
    ----------
    model
        A hub repo id or a local folder; default ``$S2I_SAFETY_IMAGE_MODEL``, else
        :data:`DEFAULT_IMAGE_MODEL` (at its pinned revision).
    device
        Where the classifier runs (``"cpu"``, ``"cuda"``); the server passes its engine's device.
    threshold
        Unsafe probability from which a picture is withheld.
    progress
        ``(fraction, message)`` while loading.

    Raises
    ------
    ModelNotAvailable
        the model is not cached and cannot be downloaded, cannot be read, or has no unsafe label;
        the message names the setting to change.
    """
    import torch
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    name = (model or os.environ.get(IMAGE_MODEL_ENV, "").strip() or DEFAULT_IMAGE_MODEL).strip()
    if progress is not None:
        progress(0.0, f"loading the picture check {name}")
    source, revision, offline = _resolve_source(name)
    try:
        with _no_progress_bars():  # the panel's status line says what loads; no bars in the cell
            classifier = AutoModelForImageClassification.from_pretrained(
                source, revision=revision, local_files_only=offline
            )
            processor = AutoImageProcessor.from_pretrained(
                source, revision=revision, local_files_only=offline
            )
    except (OSError, ValueError) as exc:
        if Path(name).is_dir():
            raise ModelNotAvailable(
                f"The picture-check model in {name} cannot be read ({exc}); {_fix_hint()}."
            ) from exc
        if offline:
            raise ModelNotAvailable(
                f"The picture-check model {name} is not in the Hugging Face cache and cannot be downloaded "
                f"now: connect to the internet once, or {_fix_hint()}."
            ) from exc
        raise ModelNotAvailable(
            f"The picture-check model {name} could not be loaded ({exc}); {_fix_hint()}."
        ) from exc
    labels = {int(i): str(label).lower() for i, label in classifier.config.id2label.items()}
    unsafe_ids = sorted(i for i, label in labels.items() if label in UNSAFE_LABELS)
    if not unsafe_ids:
        raise ModelNotAvailable(
            f"The picture-check model {name} has no unsafe label (it has {', '.join(labels.values())}); "
            f"{_fix_hint()}."
        )
    try:
        classifier = classifier.to(torch.device(device)).eval()
    except (RuntimeError, AssertionError) as exc:
        raise ModelNotAvailable(f"The picture-check model could not be moved to {device}: {exc}.") from exc
    checker = ClassifierChecker(classifier, processor, unsafe_ids=unsafe_ids, threshold=threshold, name=name)
    _warm_up(checker)
    if progress is not None:
        progress(1.0, f"picture check {name} ready on {device}")
    log.info(
        "picture check %s loaded on %s (unsafe labels: %s)", name, device, [labels[i] for i in unsafe_ids]
    )
    return checker


def _warm_up(checker: ClassifierChecker) -> None:
    """One forward pass at load time, so the first request does not pay for lazy set-up (and the
    thread pools it starts exist before the server serves)."""
    from PIL import Image

    checker.flags([Image.new("RGB", (32, 32), (128, 128, 128))])


# --- a tiny random classifier, for tests and offline demos ---------------------------------------

#: shape of :func:`save_random_image_classifier`'s model (far smaller than ViT-base, same code)
_TINY = {"hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 16}
_TINY_IMAGE_PX = 32
_TINY_PATCH_PX = 16


def save_random_image_classifier(
    directory: str | os.PathLike[str], *, verdict: str | None = "normal", seed: int = 0
) -> Path:
    """Write a tiny random ViT image classifier (labels ``normal``/``nsfw``) as ``save_pretrained``
    would: ``config.json``, ``preprocessor_config.json``, ``model.safetensors``.

    Written with numpy alone (no torch), so a test session can make one in milliseconds.
    ``verdict="normal"`` or ``"nsfw"`` zeroes the classifier head's weights and sets its bias so
    that every picture gets that label with probability about 0.98; ``None`` leaves the head random.
    """
    import numpy as np
    from safetensors.numpy import save_file

    if verdict not in ("normal", "nsfw", None):
        raise ValueError("verdict must be 'normal', 'nsfw' or None")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    hidden, layers = _TINY["hidden_size"], _TINY["num_hidden_layers"]
    inner = _TINY["intermediate_size"]
    patches = (_TINY_IMAGE_PX // _TINY_PATCH_PX) ** 2
    rng = np.random.default_rng(seed)

    def random(*shape: int) -> Any:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    tensors: dict[str, Any] = {
        "vit.embeddings.cls_token": random(1, 1, hidden),
        "vit.embeddings.position_embeddings": random(1, patches + 1, hidden),
        "vit.embeddings.patch_embeddings.projection.weight": random(
            hidden, 3, _TINY_PATCH_PX, _TINY_PATCH_PX
        ),
        "vit.embeddings.patch_embeddings.projection.bias": np.zeros(hidden, np.float32),
        "vit.layernorm.weight": np.ones(hidden, np.float32),
        "vit.layernorm.bias": np.zeros(hidden, np.float32),
        "classifier.weight": random(2, hidden),
        "classifier.bias": np.zeros(2, np.float32),
    }
    for i in range(layers):
        prefix = f"vit.encoder.layer.{i}."
        for name in ("attention.attention.query", "attention.attention.key", "attention.attention.value"):
            tensors[prefix + name + ".weight"] = random(hidden, hidden)
            tensors[prefix + name + ".bias"] = np.zeros(hidden, np.float32)
        tensors[prefix + "attention.output.dense.weight"] = random(hidden, hidden)
        tensors[prefix + "attention.output.dense.bias"] = np.zeros(hidden, np.float32)
        tensors[prefix + "intermediate.dense.weight"] = random(inner, hidden)
        tensors[prefix + "intermediate.dense.bias"] = np.zeros(inner, np.float32)
        tensors[prefix + "output.dense.weight"] = random(hidden, inner)
        tensors[prefix + "output.dense.bias"] = np.zeros(hidden, np.float32)
        for norm in ("layernorm_before", "layernorm_after"):
            tensors[prefix + norm + ".weight"] = np.ones(hidden, np.float32)
            tensors[prefix + norm + ".bias"] = np.zeros(hidden, np.float32)
    if verdict is not None:
        tensors["classifier.weight"] = np.zeros((2, hidden), np.float32)
        favoured = 0 if verdict == "normal" else 1
        tensors["classifier.bias"] = np.array([2.0, -2.0] if favoured == 0 else [-2.0, 2.0], np.float32)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    config = {
        "architectures": ["ViTForImageClassification"],
        "model_type": "vit",
        **_TINY,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-12,
        "image_size": _TINY_IMAGE_PX,
        "patch_size": _TINY_PATCH_PX,
        "num_channels": 3,
        "qkv_bias": True,
        "encoder_stride": _TINY_PATCH_PX,
        "id2label": {"0": "normal", "1": "nsfw"},
        "label2id": {"normal": 0, "nsfw": 1},
        "problem_type": "single_label_classification",
        "torch_dtype": "float32",
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    processor = {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True,
        "size": {"height": _TINY_IMAGE_PX, "width": _TINY_IMAGE_PX},
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(processor, indent=2))
    return folder
