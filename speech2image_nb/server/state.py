"""What the routes read from ``app.state``, and the FastAPI dependencies that read it.

:func:`~speech2image_nb.server.app.create_app` stores a :class:`ServerConfig` at start-up and the
engine and the running batcher (any :class:`~.image_source.ImageSource`) once its lifespan has
started them. Routes never close
over those objects; they declare ``engine: EngineDep`` and friends, so tests can replace any of
them with ``app.dependency_overrides`` (FastAPI's "bigger applications" layout).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ..safety import RefusalLog
from .engines.base import Engine
from .image_source import ImageSource
from .settings import ServerConfig

__all__ = [
    "BatcherDep",
    "ConfigDep",
    "EngineDep",
    "RefusalsDep",
    "get_batcher",
    "get_config",
    "get_engine",
    "get_refusals",
]


def get_engine(request: Request) -> Engine:
    """The loaded engine."""
    engine: Engine = request.app.state.engine
    return engine


def get_batcher(request: Request) -> ImageSource:
    """What makes the images (the local batcher, or Ray Serve replicas), started."""
    batcher: ImageSource = request.app.state.batcher
    return batcher


def get_config(request: Request) -> ServerConfig:
    """The server's settings."""
    config: ServerConfig = request.app.state.config
    return config


def get_refusals(request: Request) -> RefusalLog:
    """The server's log of refusals (the teacher's log; never sent to a client)."""
    refusals: RefusalLog = request.app.state.refusals
    return refusals


EngineDep = Annotated[Engine, Depends(get_engine)]
BatcherDep = Annotated[ImageSource, Depends(get_batcher)]
ConfigDep = Annotated[ServerConfig, Depends(get_config)]
RefusalsDep = Annotated[RefusalLog, Depends(get_refusals)]
