"""Sizes of the DALL-E mini/mega variants and the names of min-dalle's checkpoint files.

min-dalle's files carry no configuration: the sizes below are the ones its ``MinDalle`` constructor
hard-codes (``min_dalle.py`` 0.4.11). A checkpoint of another size (the tiny random ones that tests
build) carries a ``dalle_config.json`` beside its files; the name avoids ``config.json``, which the
Hugging Face repository ``kuprel/min-dalle`` already holds for another purpose.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

__all__ = [
    "CONFIG_FILE_NAME",
    "IMAGE_TOKEN_COUNT",
    "MEGA",
    "MINI",
    "START_TOKEN",
    "VARIANTS",
    "DalleConfig",
]

#: image tokens per picture (a 16 x 16 grid)
IMAGE_TOKEN_COUNT = 256
#: tokens the sampler may pick (the VQGAN codebook size); mega's decoder has a few more logits
IMAGE_CODEBOOK_COUNT = 2**14
#: the token fed to the decoder before the first image token (min-dalle's choice, kept for parity)
START_TOKEN = 2**14 - 1
#: file that describes a checkpoint of non-standard size
CONFIG_FILE_NAME = "dalle_config.json"


@dataclasses.dataclass(frozen=True)
class DalleConfig:
    """The sizes of one DALL-E BART + VQGAN model.

    Attributes follow min-dalle's names so a reader can compare them with its source.
    ``is_mega`` selects the checkpoint file names (``encoder.pt`` versus ``encoder_mini.pt``).
    ``vqgan_width_divisor`` shrinks the VQGAN channels for tiny test models (1 = the real VQGAN).
    """

    is_mega: bool
    layer_count: int
    attention_head_count: int
    embed_count: int
    glu_embed_count: int
    text_vocab_count: int
    image_vocab_count: int
    text_token_count: int = 64
    vqgan_width_divisor: int = 1

    def __post_init__(self) -> None:
        if self.embed_count % self.attention_head_count:
            raise ValueError("embed_count must be a multiple of attention_head_count")
        if self.image_vocab_count < IMAGE_CODEBOOK_COUNT:
            raise ValueError(f"image_vocab_count must be at least {IMAGE_CODEBOOK_COUNT}")
        if self.vqgan_width_divisor not in (1, 2, 4):
            raise ValueError("vqgan_width_divisor must be 1, 2 or 4")

    @property
    def suffix(self) -> str:
        """File name suffix: ``""`` for mega, ``"_mini"`` for mini."""
        return "" if self.is_mega else "_mini"

    @property
    def file_names(self) -> dict[str, str]:
        """Role -> file name in the Hugging Face repository ``kuprel/min-dalle``."""
        return {
            "vocab": f"vocab{self.suffix}.json",
            "merges": f"merges{self.suffix}.txt",
            "encoder": f"encoder{self.suffix}.pt",
            "decoder": f"decoder{self.suffix}.pt",
            "detokenizer": "detoker.pt",
        }

    @property
    def is_standard(self) -> bool:
        """True for the real mini or mega sizes (no ``dalle_config.json`` needed)."""
        return self in (MINI, MEGA)

    def to_json(self) -> str:
        """The config as JSON, for ``dalle_config.json``."""
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_file(cls, path: Path) -> DalleConfig:
        """Read ``dalle_config.json``; raise ValueError naming the problem."""
        data: Any = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a JSON object")
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - fields
        if unknown:
            raise ValueError(f"{path} has unknown keys: {', '.join(sorted(unknown))}")
        return cls(**data)


MINI = DalleConfig(
    is_mega=False,
    layer_count=12,
    attention_head_count=16,
    embed_count=1024,
    glu_embed_count=2730,
    text_vocab_count=50264,
    image_vocab_count=16384,
)
MEGA = DalleConfig(
    is_mega=True,
    layer_count=24,
    attention_head_count=32,
    embed_count=2048,
    glu_embed_count=4096,
    text_vocab_count=50272,
    image_vocab_count=16415,
)
#: tiny random models for tests: real vocabulary sizes (so real token ids fit), small everything else
TINY = DalleConfig(
    is_mega=False,
    layer_count=2,
    attention_head_count=4,
    embed_count=64,
    glu_embed_count=96,
    text_vocab_count=50264,
    image_vocab_count=16384,
    vqgan_width_divisor=4,
)
MEGA_TINY = dataclasses.replace(
    TINY, is_mega=True, attention_head_count=8, text_vocab_count=50272, image_vocab_count=16415
)

#: a mini with a third of its layers at half its width, for timing tests: a decoder step has the
#: mini's structure and a few ms of real kernel work (the tiny one's steps are Python overhead only)
SMALL = dataclasses.replace(
    MINI, layer_count=4, attention_head_count=8, embed_count=512, glu_embed_count=1365, vqgan_width_divisor=4
)

#: names accepted by ``save_random_checkpoint(variant=...)``
VARIANTS: dict[str, DalleConfig] = {
    "tiny": TINY,
    "mega-tiny": MEGA_TINY,
    "tiny-fullvqgan": dataclasses.replace(TINY, vqgan_width_divisor=1),
    "mega-tiny-fullvqgan": dataclasses.replace(MEGA_TINY, vqgan_width_divisor=1),
    "small": SMALL,
    "mini": MINI,
    "mega": MEGA,
}
