"""Image engines and the registry that maps an engine name to its class.

Engine modules are imported only when an engine is created, so that listing engines (or importing
the server) loads no torch and touches no device.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

from ...errors import ConfigError, EngineError
from .base import Engine, ImageJob, image_seed

__all__ = ["DEFAULT_ENGINE", "ENGINES", "Engine", "ImageJob", "create_engine", "image_seed"]

#: engine name -> "module:Class" (module relative to this package's parent package)
ENGINES: dict[str, str] = {
    "dalle-mini": "speech2image_nb.server.engines.dalle_mini:DalleMiniEngine",
    "dalle-mega": "speech2image_nb.server.engines.dalle_mini:DalleMiniEngine",
    "sd-turbo": "speech2image_nb.server.engines.diffusers:DiffusersEngine",
    "noise": "speech2image_nb.server.engines.noise:NoiseEngine",
}

#: the engine a server runs when none is named (never the noise test engine)
DEFAULT_ENGINE = "dalle-mini"

DIFFUSERS_PREFIX = "diffusers:"
SD_TURBO_MODEL_ID = "stabilityai/sd-turbo"
#: environment variables read when create_engine's ``dtype`` / ``vae`` are not given
DTYPE_ENV = "S2I_IMAGE_DTYPE"
VAE_ENV = "S2I_SD_VAE"


def _load_class(target: str, engine_name: str) -> Any:
    module_name, _, class_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            raise EngineError(
                f"The image engine {engine_name!r} is not part of this installation; "
                f"choose another with --engine ({', '.join(ENGINES)})."
            ) from exc
        raise EngineError(
            f"The image engine {engine_name!r} needs the Python package {exc.name!r}; "
            "install it with: pip install 'speech2image_nb[server,diffusers]'."
        ) from exc
    cls: Any = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Engine)):
        raise EngineError(f"The image engine {engine_name!r} could not be found in {module_name}.")
    return cls


def create_engine(
    name: str,
    *,
    model_dir: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    vae: str | None = None,
) -> Engine:
    """Build (but do not load) the engine called ``name``.

    Names: ``dalle-mini``, ``dalle-mega``, ``sd-turbo``, ``diffusers:<hugging face model id>``, and
    ``noise`` (the test engine; it takes no model directory). ``dtype`` (else ``$S2I_IMAGE_DTYPE``)
    is the precision: on a CPU the DALL-E engines default to ``int8`` and ``fp32`` is their
    reference path. ``vae`` (else ``$S2I_SD_VAE``) is ``tiny`` or ``full`` for the diffusers
    engines (default: tiny on CPU). Raises ConfigError for an unknown name and EngineError when
    the engine cannot be imported here.
    """
    name = name.strip()
    dtype = dtype or os.environ.get(DTYPE_ENV, "").strip() or None
    common: dict[str, Any] = {"model_dir": model_dir, "device": device, "dtype": dtype}
    diffusers_extra = {"vae": vae or os.environ.get(VAE_ENV, "").strip() or None}
    if name == "noise":
        target, kwargs = ENGINES["noise"], {}
    elif name in ("dalle-mini", "dalle-mega"):
        target, kwargs = ENGINES[name], {"is_mega": name == "dalle-mega", **common}
    elif name == "sd-turbo":
        target, kwargs = ENGINES[name], {"model_id": SD_TURBO_MODEL_ID, **common, **diffusers_extra}
    elif name.startswith(DIFFUSERS_PREFIX) and name[len(DIFFUSERS_PREFIX) :].strip():
        model_id = name[len(DIFFUSERS_PREFIX) :].strip()
        target, kwargs = ENGINES["sd-turbo"], {"model_id": model_id, **common, **diffusers_extra}
    else:
        raise ConfigError(
            f"Unknown image engine {name!r}. Choose one of: {', '.join(ENGINES)}, or diffusers:<model id>."
        )
    engine: Engine = _load_class(target, name)(**kwargs)
    return engine
