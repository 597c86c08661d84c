"""Deprecated: the client moved to :mod:`lrctl.client` (``from lrctl.client import Client``).

Importing this module warns (``DeprecationWarning``) and re-exports the new names; the old
``Job``/``Event``/``Update`` are now the core's :class:`lrctl.model.Job`,
:class:`lrctl.overrides.Event` and :class:`lrctl.model.WatchMessage`. ``Client.override``
takes the CLI's statement (``client.override("run-42", "lr /= 2")``) instead of an op and a
value. It will be removed in a later release.
"""

from __future__ import annotations

import warnings

from lrctl.client import (
    Client,
    ClientError,
    CreateResult,
    OverrideResult,
    WatchStream,
)
from lrctl.constants import ADDRESS_ENV_VAR, DEFAULT_ADDRESS, DEFAULT_TIMEOUT_S, TOKEN_ENV_VAR
from lrctl.constants import CLIENT_CHANNEL_OPTIONS as CHANNEL_OPTIONS
from lrctl.model import Job
from lrctl.model import WatchMessage as Update
from lrctl.overrides import Event

__all__ = [
    "ADDRESS_ENV_VAR",
    "CHANNEL_OPTIONS",
    "DEFAULT_ADDRESS",
    "DEFAULT_TIMEOUT_SECONDS",
    "TOKEN_ENV_VAR",
    "Client",
    "ClientError",
    "CreateResult",
    "Event",
    "Job",
    "OverrideResult",
    "Update",
    "WatchStream",
]

DEFAULT_TIMEOUT_SECONDS = DEFAULT_TIMEOUT_S

warnings.warn(
    "controller.client is deprecated: use lrctl.client (from lrctl.client import "
    "Client, ClientError)",
    DeprecationWarning,
    stacklevel=2,
)
