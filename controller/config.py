"""Controller configuration: one frozen dataclass, one loader, and the channel options.

:class:`ServerConfig` is filled from flags (``lrctl serve``, ``python -m controller.server``),
from ``LRCTL_*`` environment variables (:meth:`ServerConfig.from_env`), or directly in tests.
Nothing here reads the environment at import time.

Keepalive (both sides; the numbers below are the contract between them):

* The server pings every client every ``SERVER_KEEPALIVE_TIME_MS`` (30 s) and drops the
  connection if the ping is not acknowledged within ``SERVER_KEEPALIVE_TIMEOUT_MS`` (10 s).
  That ends the Watch streams of a dead or partitioned worker, so ``lrctl_workers`` drops.
* It accepts client pings as often as every ``SERVER_MIN_PING_INTERVAL_MS`` (5 s), even
  without calls in flight. Clients must not ping more often than that: a server answers
  over-eager pings with GOAWAY ``too_many_pings``.
* Clients use :data:`CLIENT_CHANNEL_OPTIONS`: a ping every 10 s and a 5 s ping timeout
  (``grpc.keepalive_timeout_ms`` *and* ``grpc.http2.ping_timeout_ms``, which newer gRPC
  cores use for the same purpose), so a frozen or unreachable controller is detected
  within ~15 s even while a Watch stream sits idle between heartbeats, and reconnect
  backoff is capped at 5 s so workers catch up quickly after a controller restart.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from lrctl import wire

__all__ = [
    "CLIENT_CHANNEL_OPTIONS",
    "DEFAULT_DB",
    "DEFAULT_GRACE_SECONDS",
    "DEFAULT_HEARTBEAT_SECONDS",
    "DEFAULT_HOST",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_METRICS_PORT",
    "DEFAULT_PORT",
    "ROLES",
    "ServerConfig",
    "add_server_arguments",
    "load_tokens",
    "server_channel_options",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 50051
DEFAULT_METRICS_PORT = 9464
DEFAULT_DB = "lrctl.db"
DEFAULT_HEARTBEAT_SECONDS = 5.0
DEFAULT_GRACE_SECONDS = 5.0
#: A Watch snapshot carries the whole event log; 16 MiB holds ~100k events.
DEFAULT_MAX_MESSAGE_BYTES = wire.DEFAULT_MAX_MESSAGE_BYTES

HOST_ENV_VAR = "LRCTL_HOST"
PORT_ENV_VAR = "LRCTL_PORT"
METRICS_PORT_ENV_VAR = "LRCTL_METRICS_PORT"
DB_ENV_VAR = "LRCTL_DB"
TOKEN_FILE_ENV_VAR = "LRCTL_TOKEN_FILE"
HEARTBEAT_SECONDS_ENV_VAR = "LRCTL_HEARTBEAT_SECONDS"
GRACE_SECONDS_ENV_VAR = "LRCTL_GRACE_SECONDS"

#: Role -> may it call the mutating RPCs (CreateJob, Override, FinishJob, Report)?
ROLES: Mapping[str, bool] = MappingProxyType({"admin": True, "reader": False})

SERVER_KEEPALIVE_TIME_MS = 30_000
SERVER_KEEPALIVE_TIMEOUT_MS = 10_000
SERVER_MIN_PING_INTERVAL_MS = 5_000

#: Options every client of the controller (worker, CLI) should pass to its channel. Defined
#: in :mod:`lrctl.wire`, which workers import without importing the controller.
CLIENT_CHANNEL_OPTIONS = wire.CLIENT_CHANNEL_OPTIONS


def _tokens_default() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``lrctl serve`` can be told."""

    host: str = DEFAULT_HOST
    """Interface the gRPC server binds (``0.0.0.0`` for every IPv4 interface)."""

    port: int = DEFAULT_PORT
    """gRPC port; 0 picks a free one (see ``Controller.port``)."""

    metrics_port: int | None = DEFAULT_METRICS_PORT
    """Prometheus exposition port; 0 picks a free one, None disables the endpoint."""

    metrics_host: str | None = None
    """Interface of the exposition endpoint; None means the same as :attr:`host`."""

    db: str = DEFAULT_DB
    """SQLite file holding every job and event (created if missing)."""

    heartbeat_seconds: float = DEFAULT_HEARTBEAT_SECONDS
    """Idle Watch streams get a heartbeat about this often (jittered down by up to 25%)."""

    grace_seconds: float = DEFAULT_GRACE_SECONDS
    """On SIGTERM/SIGINT, in-flight RPCs get this long before they are cancelled."""

    tokens: Mapping[str, str] = field(default_factory=_tokens_default)
    """Bearer token -> role (``admin`` or ``reader``); empty disables authentication."""

    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    """Largest gRPC message sent or received."""

    def __post_init__(self) -> None:
        _check_port("port", self.port)
        if self.metrics_port is not None:
            _check_port("metrics_port", self.metrics_port)
        if not self.host:
            raise ValueError("expected a host to bind, such as '127.0.0.1', got ''")
        for key in ("heartbeat_seconds", "grace_seconds"):
            value = getattr(self, key)
            low_ok = value > 0 if key == "heartbeat_seconds" else value >= 0
            if not isinstance(value, (int, float)) or not math.isfinite(value) or not low_ok:
                bound = "> 0" if key == "heartbeat_seconds" else ">= 0"
                raise ValueError(f"expected {key} to be a finite number {bound}, got {value!r}")
        if self.max_message_bytes < 1024:
            raise ValueError(f"expected max_message_bytes >= 1024, got {self.max_message_bytes}")
        tokens = dict(self.tokens)
        for token, role in tokens.items():
            _check_token(token, role)
        # Frozen all the way down: a config shared between tasks cannot change under them.
        object.__setattr__(self, "tokens", MappingProxyType(tokens))

    @property
    def address(self) -> str:
        """``host:port`` as gRPC wants it (IPv6 literals bracketed)."""
        return _join(self.host, self.port)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ServerConfig:
        """Build a config from ``LRCTL_*`` variables, then apply ``overrides``.

        Reads ``LRCTL_HOST``, ``LRCTL_PORT``, ``LRCTL_METRICS_PORT`` (negative disables),
        ``LRCTL_DB``, ``LRCTL_TOKEN_FILE``, ``LRCTL_HEARTBEAT_SECONDS`` and
        ``LRCTL_GRACE_SECONDS``.

        Args:
            environ: The variables to read; ``os.environ`` when None.
            **overrides: Fields that win over the environment (None values are ignored).

        Raises:
            ValueError: a variable that does not parse, or an invalid resulting config.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        readers: list[tuple[str, str, Any]] = [
            (HOST_ENV_VAR, "host", str),
            (PORT_ENV_VAR, "port", int),
            (METRICS_PORT_ENV_VAR, "metrics_port", int),
            (DB_ENV_VAR, "db", str),
            (HEARTBEAT_SECONDS_ENV_VAR, "heartbeat_seconds", float),
            (GRACE_SECONDS_ENV_VAR, "grace_seconds", float),
        ]
        for var, key, convert in readers:
            if env.get(var):
                try:
                    values[key] = convert(env[var])
                except ValueError:
                    raise ValueError(f"expected {var} to be {convert.__name__}, "
                                     f"got {env[var]!r}") from None
        if env.get(TOKEN_FILE_ENV_VAR):
            values["tokens"] = load_tokens(env[TOKEN_FILE_ENV_VAR])
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "metrics_port" in values and values["metrics_port"] < 0:
            values["metrics_port"] = None
        return cls(**values)

    @classmethod
    def from_args(cls, args: argparse.Namespace,
                  environ: Mapping[str, str] | None = None) -> ServerConfig:
        """Build a config from :func:`add_server_arguments` flags; flags win over ``LRCTL_*``.

        Raises:
            ValueError: an unreadable token file or an invalid resulting config.
        """
        tokens = load_tokens(args.token_file) if args.token_file else None
        return cls.from_env(environ, host=args.host, port=args.port,
                            metrics_port=args.metrics_port, db=args.db, tokens=tokens,
                            heartbeat_seconds=args.heartbeat_seconds,
                            grace_seconds=args.grace_seconds)


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``lrctl serve`` flags; read them back with :meth:`ServerConfig.from_args`."""
    parser.add_argument("--host", help=f"interface to bind (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int,
                        help=f"gRPC port, 0 = any free (default {DEFAULT_PORT})")
    parser.add_argument("--metrics-port", type=int,
                        help=f"Prometheus port, 0 = any free, -1 = off "
                             f"(default {DEFAULT_METRICS_PORT})")
    parser.add_argument("--db", help=f"SQLite file (default {DEFAULT_DB})")
    parser.add_argument("--token-file",
                        help='JSON object {"TOKEN": "admin" | "reader"}; enables authentication')
    parser.add_argument("--heartbeat-seconds", type=float,
                        help=f"Watch heartbeat interval (default {DEFAULT_HEARTBEAT_SECONDS})")
    parser.add_argument("--grace-seconds", type=float,
                        help=f"shutdown grace period (default {DEFAULT_GRACE_SECONDS})")


def load_tokens(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read a token file: a JSON object mapping each bearer token to ``admin`` or ``reader``.

    Raises:
        ValueError: the file is missing, not JSON, or holds something else.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"cannot read token file {os.fspath(path)!r}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"token file {os.fspath(path)!r} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f'expected token file {os.fspath(path)!r} to hold a JSON object '
                         f'{{"TOKEN": "admin"}}, got {type(data).__name__}')
    for token, role in data.items():
        _check_token(token, role)
    return dict(data)


def server_channel_options(config: ServerConfig) -> list[tuple[str, int]]:
    """Return the gRPC server options: keepalive (see module docstring) and message sizes."""
    return [
        ("grpc.keepalive_time_ms", SERVER_KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", SERVER_KEEPALIVE_TIMEOUT_MS),
        ("grpc.http2.ping_timeout_ms", SERVER_KEEPALIVE_TIMEOUT_MS),
        ("grpc.http2.min_ping_interval_without_data_ms", SERVER_MIN_PING_INTERVAL_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        # gRPC sets SO_REUSEPORT by default, so a second controller on the same port would
        # silently share it (and the SQLite file); fail to bind instead.
        ("grpc.so_reuseport", 0),
    ]


def _check_port(key: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ValueError(f"expected {key} to be an integer from 0 to 65535, got {value!r}")


def _check_token(token: object, role: object) -> None:
    if not isinstance(token, str) or not token or any(c.isspace() for c in token):
        raise ValueError(f"expected each token to be a non-empty string without spaces, "
                         f"got {token!r}")
    if role not in ROLES:
        raise ValueError(f"expected a role of {', '.join(map(repr, ROLES))}, got {role!r}")


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
