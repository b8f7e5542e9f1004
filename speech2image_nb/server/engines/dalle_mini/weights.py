"""Find, download, check and load min-dalle's checkpoint files; write random ones for tests.

Where the files come from, in order:

1. ``model_dir``: the Hugging Face file names (``encoder_mini.pt``, ... as in ``kuprel/min-dalle``,
   e.g. after ``huggingface-cli download kuprel/min-dalle --local-dir DIR``), or min-dalle's own
   ``models_root`` layout (``dalle_bart_mini/encoder.pt``, ``vqgan/detoker.pt``).
2. otherwise the Hugging Face repository ``kuprel/min-dalle`` at a pinned commit, through
   ``huggingface_hub`` (cache, resumed downloads, checksums of the cached blobs, ``HF_HUB_OFFLINE``).

Checkpoints are loaded with ``torch.load(weights_only=True)``: they hold only tensors, so no code
in a downloaded pickle can run.
"""

from __future__ import annotations

import json
import logging
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ....errors import ModelNotAvailable
from .config import CONFIG_FILE_NAME, MEGA, MINI, VARIANTS, DalleConfig

__all__ = [
    "MIN_DALLE_REPO",
    "MIN_DALLE_REVISION",
    "load_state_dict",
    "locate_files",
    "read_config",
    "save_random_checkpoint",
]

log = logging.getLogger(__name__)

MIN_DALLE_REPO = "kuprel/min-dalle"
#: the commit whose file list and sizes the design notes record (pinned: files cannot change under us)
MIN_DALLE_REVISION = "710b83387b895585f190778d321c0cc8c4525b36"

ROLES = ("vocab", "merges", "encoder", "decoder", "detokenizer")


def read_config(is_mega: bool, model_dir: Path | None) -> DalleConfig:
    """The sizes of the checkpoint: ``dalle_config.json`` in ``model_dir`` if present, else mini/mega."""
    if model_dir is not None:
        path = Path(model_dir) / CONFIG_FILE_NAME
        if path.is_file():
            try:
                config = DalleConfig.from_file(path)
            except (ValueError, TypeError) as exc:
                raise ModelNotAvailable(
                    f"{path} is not a valid DALL-E config: {exc}. Fix or delete it."
                ) from exc
            if config.is_mega != is_mega:
                kind = "dalle-mega" if config.is_mega else "dalle-mini"
                raise ModelNotAvailable(f"{path} describes a {kind} checkpoint; choose the {kind} engine.")
            return config
    return MEGA if is_mega else MINI


def _local_candidates(model_dir: Path, config: DalleConfig, role: str) -> list[Path]:
    """Where a file may lie in ``model_dir``: Hugging Face names first, then min-dalle's layout."""
    flat = model_dir / config.file_names[role]
    sub = "dalle_bart_mega" if config.is_mega else "dalle_bart_mini"
    legacy = {
        "vocab": model_dir / sub / "vocab.json",
        "merges": model_dir / sub / "merges.txt",
        "encoder": model_dir / sub / "encoder.pt",
        "decoder": model_dir / sub / "decoder.pt",
        "detokenizer": model_dir / "vqgan" / "detoker.pt",
    }[role]
    return [flat, legacy]


def locate_files(
    config: DalleConfig,
    *,
    model_dir: Path | None = None,
    cache_dir: Path | None = None,
    revision: str = MIN_DALLE_REVISION,
    progress: Callable[[float, str], None] | None = None,
) -> dict[str, Path]:
    """Role -> local path of each checkpoint file, downloading what the cache lacks.

    Raises
    ------
    ModelNotAvailable
        a file is missing from ``model_dir``, or cannot be downloaded (offline, no network).
    """
    paths: dict[str, Path] = {}
    if model_dir is not None:
        model_dir = Path(model_dir)
        missing = []
        for role in ROLES:
            found = [p for p in _local_candidates(model_dir, config, role) if p.is_file()]
            if found:
                paths[role] = found[0]
            else:
                missing.append(config.file_names[role])
        if missing:
            raise ModelNotAvailable(
                f"The DALL-E model folder {model_dir} (S2I_MODEL_DIR) lacks {', '.join(missing)}. Download "
                f"them from https://huggingface.co/{MIN_DALLE_REPO} into that folder, or unset "
                "S2I_MODEL_DIR to download them automatically."
            )
        return paths

    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    from ....hub import MODEL_DIR_HINT, hub_unavailable

    # The revision is pinned, so cached files are final: the network is asked only for what is missing.
    unavailable: str | None = None
    for i, role in enumerate(ROLES):
        name = config.file_names[role]
        try:
            path = hf_hub_download(
                MIN_DALLE_REPO, name, revision=revision, cache_dir=cache_dir, local_files_only=True
            )
        except LocalEntryNotFoundError:
            unavailable = unavailable or hub_unavailable()
            if unavailable is not None:
                raise ModelNotAvailable(
                    f"{name} of {MIN_DALLE_REPO} is not in the Hugging Face cache and cannot be downloaded "
                    f"(offline: {unavailable}). Connect to the internet once, or {MODEL_DIR_HINT}."
                ) from None
            if progress is not None:
                progress(i / len(ROLES), f"fetching {name}")
            try:
                path = hf_hub_download(MIN_DALLE_REPO, name, revision=revision, cache_dir=cache_dir)
            except (OSError, ValueError) as exc:  # HTTP errors, the network gone meanwhile, disk full
                raise ModelNotAvailable(
                    f"Could not download {name} from {MIN_DALLE_REPO} ({exc}); "
                    f"try again, or {MODEL_DIR_HINT}."
                ) from exc
        paths[role] = Path(str(path))
    return paths


def load_state_dict(path: Path, *, map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load(weights_only=True)`` of a checkpoint, with a clear error for broken files."""
    import torch

    fix = (
        f"Delete {path} and download it again (from https://huggingface.co/{MIN_DALLE_REPO}), "
        "or point the model folder elsewhere."
    )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
        raise ModelNotAvailable(f"The checkpoint file {path} is truncated or corrupt ({exc}). {fix}") from exc
    except Exception as exc:  # unpickling errors of foreign files have many types
        raise ModelNotAvailable(f"The checkpoint file {path} cannot be read ({exc}). {fix}") from exc
    if not isinstance(state, Mapping) or not all(isinstance(k, str) for k in state):
        raise ModelNotAvailable(f"The checkpoint file {path} does not hold a state dict. {fix}")
    return dict(state)


def norm_parameter_names(module: Any) -> set[str]:
    """Names of the LayerNorm/GroupNorm parameters of ``module`` (their defaults are meaningful)."""
    from torch import nn

    return {
        f"{prefix}.{name}" if prefix else name
        for prefix, sub in module.named_modules()
        if isinstance(sub, (nn.LayerNorm, nn.GroupNorm))
        for name, _ in sub.named_parameters(recurse=False)
    }


def apply_state_dict(module: Any, state: Mapping[str, Any], path: Path) -> None:
    """Copy ``state`` into ``module``; missing weights other than norm defaults are an error.

    min-dalle loads its encoder and decoder with ``strict=False``; we accept the same files, but a
    missing weight would silently stay uninitialised, so only missing norm parameters (whose
    defaults, 1 and 0, the modules already hold) are tolerated.
    """
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch: another model's file
        raise ModelNotAvailable(
            f"The checkpoint file {path} does not fit this model ({str(exc).splitlines()[0]} ...). "
            "Is it the right variant (mini versus mega) and complete?"
        ) from exc
    norms = norm_parameter_names(module)
    missing = [k for k in result.missing_keys if k not in norms]
    if missing:
        raise ModelNotAvailable(
            f"The checkpoint file {path} lacks {len(missing)} weight(s), e.g. {missing[0]}. "
            "Is it the right file for this variant?"
        )
    if result.unexpected_keys:
        log.debug("%s: ignored %d unexpected keys", path, len(result.unexpected_keys))


# --- random checkpoints for tests ----------------------------------------------------------------

_WORDS = "a an the red blue green fox cat dog sitting in on snow tree house sky with painting of astronaut"


def _random_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """A small BPE vocabulary that spells the words above (plus single letters) without ``<unk>``."""
    vocab: dict[str, int] = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    merges: list[str] = []

    def add(token: str) -> None:
        vocab.setdefault(token, len(vocab))

    for c in "abcdefghijklmnopqrstuvwxyz0123456789":
        add(c)
        add("Ġ" + c)
    for word in _WORDS.split():
        piece = "Ġ" + word[0]
        for c in word[1:]:
            merge = f"{piece} {c}"
            if merge not in merges:
                merges.append(merge)
            piece += c
            add(piece)
    return vocab, merges


def _random_state(module: Any, generator: Any) -> dict[str, Any]:
    """Normal weights scaled by 1/sqrt(fan-in) (keeps activations in range), norms near 1/0."""
    import torch

    state = {}
    norms = norm_parameter_names(module)
    for name, param in module.state_dict().items():
        if name in norms:
            base = 1.0 if name.endswith("weight") else 0.0
            value = base + 0.1 * torch.randn(param.shape, generator=generator)
        elif param.dim() >= 2:
            fan_in = 1 if "embed" in name else param[0].numel()
            value = torch.randn(param.shape, generator=generator) / max(fan_in, 1) ** 0.5
        else:
            value = 0.02 * torch.randn(param.shape, generator=generator)
        state[name] = value
    return state


def save_random_checkpoint(directory: str | Path, variant: str = "tiny", *, seed: int = 0) -> Path:
    """Write a random checkpoint in min-dalle's file format (for tests and offline demos).

    Parameters
    ----------
    directory
        created if needed; receives ``encoder[_mini].pt``, ``decoder[_mini].pt``, ``detoker.pt``,
        ``vocab[_mini].json``, ``merges[_mini].txt`` and, for non-standard sizes, ``dalle_config.json``.
    variant
        a name of :data:`~.config.VARIANTS`: ``"tiny"``, ``"mega-tiny"`` (mega-shaped: mega file
        names, vocabulary sizes and 16415 image logits), ``"tiny-fullvqgan"``, ``"mini"``, ``"mega"``.
    seed
        seed of the weights.

    Returns
    -------
    Path
        the directory, to pass as ``model_dir``.

    Encoder and decoder are stored in float16 and the VQGAN in float32, like the published files.
    """
    import torch

    from .decoder import DalleBartDecoder
    from .detokenizer import VQGanDetokenizer
    from .encoder import DalleBartEncoder

    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, not {variant!r}")
    config = VARIANTS[variant]
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    names = config.file_names
    generator = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        modules = {
            "encoder": DalleBartEncoder(config),
            "decoder": DalleBartDecoder(config),
            "detokenizer": VQGanDetokenizer(width_divisor=config.vqgan_width_divisor),
        }
    for role, module in modules.items():
        state = _random_state(module, generator)
        if role != "detokenizer":
            state = {k: v.to(torch.float16) for k, v in state.items()}
        torch.save(state, directory / names[role])
    vocab, merges = _random_vocab_and_merges()
    (directory / names["vocab"]).write_text(json.dumps(vocab), encoding="utf-8")
    (directory / names["merges"]).write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    if not config.is_standard:
        (directory / CONFIG_FILE_NAME).write_text(config.to_json(), encoding="utf-8")
    return directory
