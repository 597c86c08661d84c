"""Controller configuration: one frozen dataclass and one loader.

:class:`ServerConfig` is filled from ``lrctl serve`` flags (:meth:`ServerConfig.from_args`),
from ``LRCTL_<FLAG>`` environment variables (:meth:`ServerConfig.from_env`), or directly in
tests. The names and defaults are in :mod:`lrctl.constants` (the keepalive numbers and their
rationale too); nothing here reads the environment at import time. TLS files use
``LRCTL_SERVER_TLS_*`` and ``LRCTL_METRICS_TLS_*``, so they never collide with a client's
``LRCTL_TLS_*``. :func:`exposure` applies the bind rule (docs/security.md): outside loopback,
the gRPC API needs TLS and tokens and ``/metrics`` needs TLS, unless ``insecure`` is set.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from controller.limits import ServerLimits, add_limit_arguments
from controller.tokens import TokenEntry, as_entries, load_tokens
from lrctl import constants as c

__all__ = [
    "ServerConfig",
    "add_server_arguments",
    "exposure",
    "is_loopback",
    "server_channel_options",
]


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

    tokens: tuple[TokenEntry, ...] | Mapping[str, str] = ()
    """The tokens accepted (:func:`controller.tokens.load_tokens`); a ``{token: role}``
    mapping is turned into entries. Empty disables authentication."""

    max_message_bytes: int = c.DEFAULT_MAX_MESSAGE_BYTES
    """Largest gRPC message sent or received; a job's log is kept small enough to fit."""

    limits: ServerLimits = field(default_factory=ServerLimits)
    """Jobs, events, Watch streams, sizes and values one client may ask for
    (:class:`controller.limits.ServerLimits`)."""

    tls_cert: str | None = None
    """PEM certificate chain of the gRPC server; with :attr:`tls_key`, TLS is on."""

    tls_key: str | None = None
    """PEM private key of :attr:`tls_cert`."""

    tls_client_ca: str | None = None
    """PEM CA bundle: every client must present a certificate it signed (mutual TLS)."""

    metrics_tls_cert: str | None = None
    """PEM certificate chain of ``/metrics``; with :attr:`metrics_tls_key`, HTTPS is on."""

    metrics_tls_key: str | None = None
    """PEM private key of :attr:`metrics_tls_cert`."""

    metrics_tls_client_ca: str | None = None
    """PEM CA bundle: scrapers must present a certificate it signed (mutual TLS)."""

    insecure: bool = False
    """Serve outside loopback without TLS or tokens anyway (loudly warned about)."""

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
        if not isinstance(self.limits, ServerLimits):
            raise ValueError(f"expected limits to be a ServerLimits, got {self.limits!r}")
        # A job's log must fit in a message beside its largest other fields.
        least = self.limits.reserved_bytes() + 16 * 1024
        if self.max_message_bytes < least:
            raise ValueError(
                f"expected max_message_bytes >= {least} with these limits (room "
                f"for a job of {self.limits.max_param_groups} groups and a "
                f"{self.limits.max_spec_bytes}-byte spec, and its log), got "
                f"{self.max_message_bytes}"
            )
        # Frozen all the way down: a config shared between tasks cannot change under them.
        entries = as_entries(self.tokens)
        object.__setattr__(self, "tokens", entries)
        for entry in entries:  # each name is its overrides' actor: held to that limit
            if len(entry.name) > self.limits.max_actor_chars:
                raise ValueError(
                    f"expected token names of at most {self.limits.max_actor_chars} characters "
                    f"(--max-actor-chars: they are the actor of their overrides), got "
                    f"{entry.name[:40]!r}... ({len(entry.name)})"
                )
        for prefix, flag in (("", "--tls"), ("metrics_", "--metrics-tls")):
            cert, key, ca = (
                getattr(self, f"{prefix}tls_{k}") for k in ("cert", "key", "client_ca")
            )
            if (cert is None) != (key is None):
                given = f"{flag}-cert" if key is None else f"{flag}-key"
                raise ValueError(f"expected both {flag}-cert and {flag}-key, got only {given}")
            if ca is not None and cert is None:
                raise ValueError(
                    f"expected {flag}-cert and {flag}-key with "
                    f"{flag.replace('-tls', '')}-client-ca (mutual TLS is TLS "
                    f"first), got only the client CA"
                )

    @property
    def token_entries(self) -> tuple[TokenEntry, ...]:
        """:attr:`tokens` as entries (what ``__post_init__`` made of it)."""
        return as_entries(self.tokens)

    @property
    def tls(self) -> bool:
        """Whether the gRPC server uses TLS."""
        return self.tls_cert is not None

    @property
    def metrics_tls(self) -> bool:
        """Whether ``/metrics`` is served over HTTPS."""
        return self.metrics_tls_cert is not None

    def __repr__(self) -> str:
        """The fields, without the database URL's password or the tokens' hashes (logs and
        test reports show it)."""
        from controller.store_api import redact_url

        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        shown.update(db=redact_url(self.db), tokens=f"<{len(self.tokens)} tokens>")
        return f"ServerConfig({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    @property
    def address(self) -> str:
        """``host:port`` as gRPC wants it (IPv6 literals bracketed)."""
        return join_host_port(self.host, self.port)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> ServerConfig:
        """Build a config from ``LRCTL_<FLAG>`` variables, then apply ``overrides``.

        Reads ``LRCTL_HOST``, ``LRCTL_PORT``, ``LRCTL_METRICS_HOST``, ``LRCTL_METRICS_PORT``
        (negative disables), ``LRCTL_DB``, ``LRCTL_TOKEN_FILE``, ``LRCTL_HEARTBEAT_SECONDS``,
        ``LRCTL_GRACE_SECONDS``, ``LRCTL_INSECURE`` (``1``/``true``), the server's TLS files
        ``LRCTL_SERVER_TLS_CERT``/``_KEY``/``_CLIENT_CA`` and those of ``/metrics``,
        ``LRCTL_METRICS_TLS_CERT``/``_KEY``/``_CLIENT_CA``, ``LRCTL_MAX_MESSAGE_BYTES`` and the
        limits' ``LRCTL_MAX_*`` (:class:`controller.limits.ServerLimits`; names in
        :mod:`lrctl.constants`).

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
            (c.MAX_MESSAGE_BYTES_ENV_VAR, "max_message_bytes", int),
            (c.METRICS_HOST_ENV_VAR, "metrics_host", str),
            (c.SERVER_TLS_CERT_ENV_VAR, "tls_cert", str),
            (c.SERVER_TLS_KEY_ENV_VAR, "tls_key", str),
            (c.SERVER_TLS_CLIENT_CA_ENV_VAR, "tls_client_ca", str),
            (c.METRICS_TLS_CERT_ENV_VAR, "metrics_tls_cert", str),
            (c.METRICS_TLS_KEY_ENV_VAR, "metrics_tls_key", str),
            (c.METRICS_TLS_CLIENT_CA_ENV_VAR, "metrics_tls_client_ca", str),
            (c.INSECURE_ENV_VAR, "insecure", _flag),
        ]
        for var, key, convert in readers:
            if env.get(var):
                try:
                    values[key] = convert(env[var])
                except ValueError:
                    kind = "1, true, 0 or false" if convert is _flag else convert.__name__
                    raise ValueError(f"expected {var} to be {kind}, got {env[var]!r}") from None
        if "limits" not in overrides:
            values["limits"] = ServerLimits.from_env(env)
        if env.get(c.TOKEN_FILE_ENV_VAR):
            values["tokens"] = load_tokens(env[c.TOKEN_FILE_ENV_VAR])
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "metrics_port" in values and values["metrics_port"] < 0:
            values["metrics_port"] = None
        return cls(**values)

    @classmethod
    def from_args(
        cls, args: argparse.Namespace, environ: Mapping[str, str] | None = None
    ) -> ServerConfig:
        """Build a config from :func:`add_server_arguments` flags; flags win over ``LRCTL_*``.

        Raises:
            ValueError: an unreadable token file or an invalid resulting config.
        """
        tokens = load_tokens(args.token_file) if args.token_file else None
        same = "host port metrics_host metrics_port db heartbeat_seconds grace_seconds"
        same += " tls_cert tls_key tls_client_ca metrics_tls_cert metrics_tls_key"
        return cls.from_env(
            environ,
            **{name: getattr(args, name) for name in same.split()},
            tokens=tokens,
            max_message_bytes=getattr(args, "max_message_bytes", None),
            limits=ServerLimits.from_args(args, os.environ if environ is None else environ),
            metrics_tls_client_ca=args.metrics_client_ca,
            insecure=True if args.insecure else None,
        )


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``lrctl serve`` flags; read them back with :meth:`ServerConfig.from_args`."""
    parser.add_argument(
        "--host", help=f"interface to bind (default {c.DEFAULT_HOST}; {c.HOST_ENV_VAR})"
    )
    parser.add_argument(
        "--port",
        type=int,
        help=f"gRPC port, 0 = any free (default {c.DEFAULT_PORT}; {c.PORT_ENV_VAR})",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        help=f"Prometheus port, 0 = any free, -1 = off "
        f"(default {c.DEFAULT_METRICS_PORT}; {c.METRICS_PORT_ENV_VAR})",
    )
    parser.add_argument(
        "--db",
        help=f"SQLite file, or postgresql://USER@HOST:PORT/DB for "
        f"replicas (password: PGPASSWORD or PGPASSFILE) "
        f"(default {c.DEFAULT_DB}; {c.DB_ENV_VAR})",
    )
    parser.add_argument(
        "--metrics-host", help=f"interface of /metrics (default: --host; {c.METRICS_HOST_ENV_VAR})"
    )
    parser.add_argument(
        "--token-file",
        help='JSON {"tokens": [{"name", "sha256", "role", "jobs"}]} or '
        '{"TOKEN": "ROLE"}; roles admin, operator, worker, reader; '
        f"enables authentication ({c.TOKEN_FILE_ENV_VAR}; "
        "docs/security.md)",
    )
    tls = parser.add_argument_group(
        "TLS",
        "PEM files. Outside loopback the gRPC API needs TLS and --token-file, and "
        "/metrics needs TLS, unless --insecure is given.",
    )
    for flags, what, var in (
        (["--tls-cert"], "server certificate chain", c.SERVER_TLS_CERT_ENV_VAR),
        (["--tls-key"], "server private key", c.SERVER_TLS_KEY_ENV_VAR),
        (
            ["--tls-client-ca"],
            "require client certificates signed by this CA: mutual TLS",
            c.SERVER_TLS_CLIENT_CA_ENV_VAR,
        ),
        (["--metrics-tls-cert"], "/metrics certificate chain: HTTPS", c.METRICS_TLS_CERT_ENV_VAR),
        (["--metrics-tls-key"], "/metrics private key", c.METRICS_TLS_KEY_ENV_VAR),
        (
            ["--metrics-client-ca", "--metrics-tls-client-ca"],
            "require scrapers' certificates signed by this CA",
            c.METRICS_TLS_CLIENT_CA_ENV_VAR,
        ),
    ):
        tls.add_argument(*flags, metavar="FILE", help=f"{what} ({var})")
    tls.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="serve outside loopback without TLS or tokens anyway: anyone who "
        "reaches the port can change every job's LR "
        f"({c.INSECURE_ENV_VAR}=1)",
    )
    add_limit_arguments(parser)
    parser.add_argument(
        "--heartbeat-seconds",
        type=float,
        help=f"Watch heartbeat interval (default {c.DEFAULT_HEARTBEAT_SECONDS}; "
        f"{c.HEARTBEAT_SECONDS_ENV_VAR})",
    )
    parser.add_argument(
        "--grace-seconds",
        type=float,
        help=f"shutdown grace period (default {c.DEFAULT_GRACE_SECONDS}; "
        f"{c.GRACE_SECONDS_ENV_VAR})",
    )


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


def _flag(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(text)


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps a port on this machine (127.0.0.0/8, ::1, localhost)."""
    name = host.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a name that may resolve anywhere: treat it as exposed


def exposure(config: ServerConfig) -> list[str]:
    """Return what a non-loopback bind would expose unprotected; empty when nothing.

    The bind rule (docs/security.md): outside loopback the gRPC API needs TLS and tokens,
    and ``/metrics`` needs TLS. :func:`controller.server.start` refuses a config with
    problems unless ``insecure`` is set, and then warns with these lines.
    """
    problems: list[str] = []
    if not is_loopback(config.host):
        missing = [
            what
            for what, ok in (
                ("TLS (--tls-cert/--tls-key)", config.tls),
                ("tokens (--token-file)", bool(config.tokens)),
            )
            if not ok
        ]
        if missing:
            problems.append(
                f"the gRPC API on {config.address} has no "
                f"{' and no '.join(missing)}: anyone who can reach it can change "
                "every job's learning rate"
            )
    metrics_host = config.metrics_host or config.host
    if config.metrics_port is not None and not is_loopback(metrics_host) and not config.metrics_tls:
        problems.append(
            f"/metrics on {join_host_port(metrics_host, config.metrics_port)} "
            "has no TLS (--metrics-tls-cert/--metrics-tls-key)"
        )
    return problems
