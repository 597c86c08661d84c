"""lrctl controller: the asyncio gRPC server that owns every job's LR schedule.

Public entry points (imported lazily, so the CLI's client commands never load the server
stack)::

    from controller import ServerConfig, start, serve

    async with await start(ServerConfig(port=0, metrics_port=0, db="lrctl.db")) as ctl:
        print(ctl.port)

docs/controller.md describes the behaviour and the decisions behind it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from controller.config import ServerConfig
    from controller.server import Controller, serve, start
    from controller.service import ControllerService
    from controller.tokens import load_tokens

__all__ = [
    "Controller",
    "ControllerService",
    "ServerConfig",
    "load_tokens",
    "serve",
    "start",
]

_HOMES = {
    "ServerConfig": "controller.config",
    "load_tokens": "controller.tokens",
    "Controller": "controller.server",
    "serve": "controller.server",
    "start": "controller.server",
    "ControllerService": "controller.service",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'controller' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
