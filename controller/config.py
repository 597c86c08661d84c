"""Controller configuration: one frozen dataclass and one loader.

:class:`ServerConfig` is filled from ``lrctl serve`` flags (:meth:`ServerConfig.from_args`),
from ``LRCTL_<FLAG>`` environment variables (:meth:`ServerConfig.from_env`), or directly in
tests. The names and defaults are in :mod:`lrctl.constants` (the keepalive numbers and their
rationale too); nothing here reads the environment at import time.
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

from lrctl import constants as c

__all__ = [
    "ADMIN",
    "OPERATOR",
    "READER",
    "ROLES",
    "WORKER",
    "ServerConfig",
    "add_server_arguments",
    "load_tokens",
    "server_channel_options",
]

#: Every call, including recreating a job (CreateJob with ``replace``).
ADMIN = "admin"
#: Create, recreate, override, finish and read jobs; no reports.
OPERATOR = "operator"
#: What a training run's rank 0 needs: create or attach to a job, Watch and Report.
WORKER = "worker"
#: Read only: GetJob, ListJobs, History, Preview and Watch.
READER = "reader"
#: The roles a token file may name (which role may call what: :mod:`controller.auth`).
ROLES = (ADMIN, OPERATOR, WORKER, READER)


def _tokens_default() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``lrctl serve`` can be told."""

    host: str = c.DEFAULT_HOST
    """Interface the gRPC server binds (``0.0.0.0`` for every IPv4 interface)."""

    port: int = c.DEFAULT_PORT
    """gRPC port; 0 picks a free one (see ``Controller.port``)."""

    metrics_port: int | None = c.DEFAULT_METRICS_PORT
    """Prometheus exposition port; 0 picks a free one, None disables the endpoint."""

    metrics_host: str | None = None
    """Interface of the exposition endpoint; None means the same as :attr:`host`."""

    db: str = c.DEFAULT_DB
    """SQLite file holding every job and event (created if missing), or a PostgreSQL URL
    ``postgresql://USER[:PASSWORD]@HOST:PORT/DB`` shared by several replicas."""

    heartbeat_seconds: float = c.DEFAULT_HEARTBEAT_SECONDS
    """Idle Watch streams get a heartbeat about this often (jittered down by up to 25%)."""

    grace_seconds: float = c.DEFAULT_GRACE_SECONDS
    """On SIGTERM/SIGINT, in-flight RPCs get this long before they are cancelled."""

    tokens: Mapping[str, str] = field(default_factory=_tokens_default)
    """Bearer token -> role (one of :data:`ROLES`); empty disables authentication."""

    max_message_bytes: int = c.DEFAULT_MAX_MESSAGE_BYTES
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
        return join_host_port(self.host, self.port)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ServerConfig:
        """Build a config from ``LRCTL_<FLAG>`` variables, then apply ``overrides``.

        Reads ``LRCTL_HOST``, ``LRCTL_PORT``, ``LRCTL_METRICS_PORT`` (negative disables),
        ``LRCTL_DB``, ``LRCTL_TOKEN_FILE``, ``LRCTL_HEARTBEAT_SECONDS`` and
        ``LRCTL_GRACE_SECONDS`` (:mod:`lrctl.constants`).

        Args:
            environ: The variables to read; ``os.environ`` when None.
            **overrides: Fields that win over the environment (None values are ignored).

        Raises:
            ValueError: a variable that does not parse, or an invalid resulting config.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        readers: list[tuple[str, str, Any]] = [
            (c.HOST_ENV_VAR, "host", str),
            (c.PORT_ENV_VAR, "port", int),
            (c.METRICS_PORT_ENV_VAR, "metrics_port", int),
            (c.DB_ENV_VAR, "db", str),
            (c.HEARTBEAT_SECONDS_ENV_VAR, "heartbeat_seconds", float),
            (c.GRACE_SECONDS_ENV_VAR, "grace_seconds", float),
        ]
        for var, key, convert in readers:
            if env.get(var):
                try:
                    values[key] = convert(env[var])
                except ValueError:
                    raise ValueError(f"expected {var} to be {convert.__name__}, "
                                     f"got {env[var]!r}") from None
        if env.get(c.TOKEN_FILE_ENV_VAR):
            values["tokens"] = load_tokens(env[c.TOKEN_FILE_ENV_VAR])
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
    parser.add_argument("--host", help=f"interface to bind (default {c.DEFAULT_HOST}; "
                                       f"{c.HOST_ENV_VAR})")
    parser.add_argument("--port", type=int,
                        help=f"gRPC port, 0 = any free (default {c.DEFAULT_PORT}; "
                             f"{c.PORT_ENV_VAR})")
    parser.add_argument("--metrics-port", type=int,
                        help=f"Prometheus port, 0 = any free, -1 = off "
                             f"(default {c.DEFAULT_METRICS_PORT}; {c.METRICS_PORT_ENV_VAR})")
    parser.add_argument("--db", help=f"SQLite file, or postgresql://USER@HOST:PORT/DB for "
                                     f"replicas (password: PGPASSWORD or PGPASSFILE) "
                                     f"(default {c.DEFAULT_DB}; {c.DB_ENV_VAR})")
    parser.add_argument("--token-file",
                        help='JSON object {"TOKEN": "admin" | "operator" | "worker" | '
                             f'"reader"}}; enables authentication ({c.TOKEN_FILE_ENV_VAR})')
    parser.add_argument("--heartbeat-seconds", type=float,
                        help=f"Watch heartbeat interval (default {c.DEFAULT_HEARTBEAT_SECONDS}; "
                             f"{c.HEARTBEAT_SECONDS_ENV_VAR})")
    parser.add_argument("--grace-seconds", type=float,
                        help=f"shutdown grace period (default {c.DEFAULT_GRACE_SECONDS}; "
                             f"{c.GRACE_SECONDS_ENV_VAR})")


def load_tokens(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read a token file: a JSON object mapping each bearer token to one of :data:`ROLES`.

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
    """Return the gRPC server options: keepalive (:mod:`lrctl.constants`) and message sizes."""
    return [
        ("grpc.keepalive_time_ms", c.SERVER_KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", c.SERVER_KEEPALIVE_TIMEOUT_MS),
        ("grpc.http2.ping_timeout_ms", c.SERVER_KEEPALIVE_TIMEOUT_MS),
        ("grpc.http2.min_ping_interval_without_data_ms", c.SERVER_MIN_PING_INTERVAL_MS),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        # gRPC sets SO_REUSEPORT by default, so a second controller on the same port would
        # silently share it (and the SQLite file); fail to bind instead.
        ("grpc.so_reuseport", 0),
    ]


def join_host_port(host: str, port: int) -> str:
    """Return ``host:port`` as gRPC wants it (IPv6 literals bracketed)."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _check_port(key: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ValueError(f"expected {key} to be an integer from 0 to 65535, got {value!r}")


def _check_token(token: object, role: object) -> None:
    if not isinstance(token, str) or not token or any(ch.isspace() for ch in token):
        raise ValueError(f"expected each token to be a non-empty string without spaces, "
                         f"got {token!r}")
    if role not in ROLES:
        raise ValueError(f"expected a role of {', '.join(map(repr, ROLES))}, got {role!r}")
