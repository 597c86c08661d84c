"""Every tunable of lrctl in one place, as ``*_ENV_VAR`` / ``DEFAULT_*`` pairs (Ray's style).

Nothing here reads the environment: the loaders (:meth:`lrctl.client.TLSConfig.from_env`,
:meth:`lrctl.client.Client`, ``worker.WorkerConfig.load``, ``controller.config``) do, when
they are called, never at import time.

Client and server names never collide: clients read ``LRCTL_ADDRESS``, ``LRCTL_TOKEN`` and
``LRCTL_TLS_*``; ``lrctl serve`` reads ``LRCTL_<FLAG>`` and ``LRCTL_SERVER_TLS_*``.

Keepalive (the contract between both sides; this is the one place it is written down):

* Clients ping every :data:`CLIENT_KEEPALIVE_TIME_MS` (10 s) and give a ping
  :data:`CLIENT_KEEPALIVE_TIMEOUT_MS` (5 s; set both as ``grpc.keepalive_timeout_ms`` and
  ``grpc.http2.ping_timeout_ms``, which newer gRPC cores use for the same purpose), even
  without calls in flight. A frozen or unreachable controller is so detected within ~15 s
  even while a Watch stream sits idle between heartbeats.
* The server accepts client pings as often as every :data:`SERVER_MIN_PING_INTERVAL_MS`
  (5 s): clients must not ping more often, or the server answers GOAWAY ``too_many_pings``.
* The server pings each client every :data:`SERVER_KEEPALIVE_TIME_MS` (30 s) and drops the
  connection after :data:`SERVER_KEEPALIVE_TIMEOUT_MS` (10 s) without an answer: that ends
  the Watch streams of a dead or partitioned worker, so ``lrctl_watch_streams`` drops.
* Reconnect backoff of the channel is capped at :data:`CLIENT_MAX_RECONNECT_BACKOFF_MS`
  (5 s), so workers catch up quickly after a controller restart.
"""

from __future__ import annotations

__all__ = [
    "ADDRESS_ENV_VAR",
    "AGREE_EVERY_ENV_VAR",
    "CLIENT_CHANNEL_OPTIONS",
    "CLIENT_KEEPALIVE_TIMEOUT_MS",
    "CLIENT_KEEPALIVE_TIME_MS",
    "CLIENT_MAX_RECONNECT_BACKOFF_MS",
    "CONNECT_TIMEOUT_ENV_VAR",
    "DB_ENV_VAR",
    "DEFAULT_ADDRESS",
    "DEFAULT_AGREE_EVERY",
    "DEFAULT_BACKOFF_INITIAL_S",
    "DEFAULT_BACKOFF_MAX_S",
    "DEFAULT_CONNECT_TIMEOUT_S",
    "DEFAULT_DB",
    "DEFAULT_DIVERGENCE_CHECK_EVERY",
    "DEFAULT_EVAL_DEADLINE_SECONDS",
    "DEFAULT_GRACE_SECONDS",
    "DEFAULT_HEARTBEAT_SECONDS",
    "DEFAULT_HOST",
    "DEFAULT_MAX_ACTOR_CHARS",
    "DEFAULT_MAX_EVENTS_PER_JOB",
    "DEFAULT_MAX_JOBS",
    "DEFAULT_MAX_LR",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_MAX_PARAM_GROUPS",
    "DEFAULT_MAX_REASON_BYTES",
    "DEFAULT_MAX_REPORT_ITEMS",
    "DEFAULT_MAX_SPEC_BYTES",
    "DEFAULT_MAX_WATCH_STREAMS",
    "DEFAULT_MAX_WATCH_STREAMS_PER_JOB",
    "DEFAULT_METRICS_PORT",
    "DEFAULT_PAGE_SIZE",
    "DEFAULT_PORT",
    "DEFAULT_REPORT_INTERVAL_S",
    "DEFAULT_TIMEOUT_S",
    "DIVERGENCE_CHECK_EVERY_ENV_VAR",
    "EVAL_DEADLINE_SECONDS_ENV_VAR",
    "GRACE_SECONDS_ENV_VAR",
    "HEARTBEAT_SECONDS_ENV_VAR",
    "HOST_ENV_VAR",
    "INSECURE_ENV_VAR",
    "JOB_ENV_VAR",
    "MAX_ACTOR_CHARS_ENV_VAR",
    "MAX_EVENTS_PER_JOB_ENV_VAR",
    "MAX_JOBS_ENV_VAR",
    "MAX_LR_ENV_VAR",
    "MAX_MESSAGE_BYTES_ENV_VAR",
    "MAX_PAGE_SIZE",
    "MAX_PARAM_GROUPS_ENV_VAR",
    "MAX_PREVIEW_VALUES",
    "MAX_REASON_BYTES_ENV_VAR",
    "MAX_REPORT_ITEMS_ENV_VAR",
    "MAX_SPEC_BYTES_ENV_VAR",
    "MAX_STATUS_MESSAGE_BYTES",
    "MAX_WATCH_STREAMS_ENV_VAR",
    "MAX_WATCH_STREAMS_PER_JOB_ENV_VAR",
    "METRICS_HOST_ENV_VAR",
    "METRICS_PORT_ENV_VAR",
    "METRICS_TLS_CERT_ENV_VAR",
    "METRICS_TLS_CLIENT_CA_ENV_VAR",
    "METRICS_TLS_KEY_ENV_VAR",
    "PORT_ENV_VAR",
    "PROGRESS_PERSIST_S",
    "REPORT_INTERVAL_ENV_VAR",
    "SERVER_KEEPALIVE_TIMEOUT_MS",
    "SERVER_KEEPALIVE_TIME_MS",
    "SERVER_MIN_PING_INTERVAL_MS",
    "SERVER_TLS_CERT_ENV_VAR",
    "SERVER_TLS_CLIENT_CA_ENV_VAR",
    "SERVER_TLS_KEY_ENV_VAR",
    "TIMEOUT_ENV_VAR",
    "TLS_CA_ENV_VAR",
    "TLS_CERT_ENV_VAR",
    "TLS_KEY_ENV_VAR",
    "TOKEN_ENV_VAR",
    "TOKEN_FILE_ENV_VAR",
]

# -- clients (CLI, scripts, workers) -----------------------------------------------------------

#: The controller's ``HOST:PORT`` (or ``HOST:PORT,HOST:PORT`` for replicas).
ADDRESS_ENV_VAR = "LRCTL_ADDRESS"
#: Where ``lrctl serve`` listens when nothing else is said.
DEFAULT_ADDRESS = "127.0.0.1:50051"
#: The bearer token sent with every call (``authorization: Bearer <token>``).
TOKEN_ENV_VAR = "LRCTL_TOKEN"
#: PEM file of the CA that signed the controller's certificate; setting it turns TLS on.
TLS_CA_ENV_VAR = "LRCTL_TLS_CA"
#: PEM certificate chain the client presents (mutual TLS); needs :data:`TLS_KEY_ENV_VAR`.
TLS_CERT_ENV_VAR = "LRCTL_TLS_CERT"
#: PEM private key of :data:`TLS_CERT_ENV_VAR`.
TLS_KEY_ENV_VAR = "LRCTL_TLS_KEY"
#: Deadline of every unary call, in seconds (Watch streams have none).
TIMEOUT_ENV_VAR = "LRCTL_TIMEOUT"
DEFAULT_TIMEOUT_S = 10.0

#: A Watch snapshot carries the whole event log; 16 MiB holds ~100k events.
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024

CLIENT_KEEPALIVE_TIME_MS = 10_000
CLIENT_KEEPALIVE_TIMEOUT_MS = 5_000
CLIENT_MAX_RECONNECT_BACKOFF_MS = 5_000

#: gRPC channel arguments of every client (see the module docstring for the keepalive).
CLIENT_CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", CLIENT_KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", CLIENT_KEEPALIVE_TIMEOUT_MS),
    ("grpc.http2.ping_timeout_ms", CLIENT_KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", CLIENT_MAX_RECONNECT_BACKOFF_MS),
    ("grpc.max_receive_message_length", DEFAULT_MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", DEFAULT_MAX_MESSAGE_BYTES),
)

#: First delay before the Watch follower reconnects; doubles (with jitter) per failure.
DEFAULT_BACKOFF_INITIAL_S = 0.2
#: Longest delay between two reconnect attempts of the Watch follower.
DEFAULT_BACKOFF_MAX_S = 5.0

# -- workers (RemoteLRScheduler) ---------------------------------------------------------------

#: The job id; else the Ray Train run name or torchrun's ``TORCHELASTIC_RUN_ID``.
JOB_ENV_VAR = "LRCTL_JOB"
#: How long construction waits for the controller before raising, in seconds.
CONNECT_TIMEOUT_ENV_VAR = "LRCTL_CONNECT_TIMEOUT"
DEFAULT_CONNECT_TIMEOUT_S = 30.0
#: Minimum time between two progress reports from rank 0, in seconds (~10 per second).
REPORT_INTERVAL_ENV_VAR = "LRCTL_REPORT_INTERVAL"
DEFAULT_REPORT_INTERVAL_S = 0.1
#: Ranks agree on the version to apply every this many steps; 0 (the default): rank 0 paces
#: the exchanges by its step time (about every 20 ms, see worker/_agreement.py).
AGREE_EVERY_ENV_VAR = "LRCTL_AGREE_EVERY"
DEFAULT_AGREE_EVERY = 0
#: Ranks compare a checksum of their applied LRs at most every this many steps (at an
#: agreement exchange); 0 turns the divergence check off.
DIVERGENCE_CHECK_EVERY_ENV_VAR = "LRCTL_DIVERGENCE_CHECK_EVERY"
DEFAULT_DIVERGENCE_CHECK_EVERY = 1

# -- the controller (lrctl serve) --------------------------------------------------------------
# Each ``lrctl serve --flag`` also reads ``LRCTL_<FLAG>``: the flag wins, then the variable,
# then the default (``controller.config.ServerConfig.from_env`` and ``from_args``).

SERVER_KEEPALIVE_TIME_MS = 30_000
SERVER_KEEPALIVE_TIMEOUT_MS = 10_000
SERVER_MIN_PING_INTERVAL_MS = 5_000

#: ``--host``: interface the gRPC server binds (``0.0.0.0`` for every IPv4 interface).
HOST_ENV_VAR = "LRCTL_HOST"
DEFAULT_HOST = "127.0.0.1"
#: ``--port``: gRPC port; 0 picks a free one.
PORT_ENV_VAR = "LRCTL_PORT"
DEFAULT_PORT = 50051
#: ``--metrics-host``: interface of ``/metrics``; unset: the same as ``--host``.
METRICS_HOST_ENV_VAR = "LRCTL_METRICS_HOST"
#: ``--metrics-port``: Prometheus exposition port; 0 picks a free one, negative turns it off.
METRICS_PORT_ENV_VAR = "LRCTL_METRICS_PORT"
DEFAULT_METRICS_PORT = 9464
#: ``--db``: the SQLite file holding every job and event.
DB_ENV_VAR = "LRCTL_DB"
DEFAULT_DB = "lrctl.db"
#: ``--token-file``: JSON ``{"tokens": [{"name", "sha256", "role", "jobs"}]}`` (or the older
#: ``{"TOKEN": "ROLE"}``); enables authentication (``controller.tokens``).
TOKEN_FILE_ENV_VAR = "LRCTL_TOKEN_FILE"
#: ``--heartbeat-seconds``: idle Watch streams get a heartbeat about this often.
HEARTBEAT_SECONDS_ENV_VAR = "LRCTL_HEARTBEAT_SECONDS"
DEFAULT_HEARTBEAT_SECONDS = 5.0
#: ``--grace-seconds``: on SIGTERM/SIGINT, in-flight RPCs get this long.
GRACE_SECONDS_ENV_VAR = "LRCTL_GRACE_SECONDS"
DEFAULT_GRACE_SECONDS = 5.0
#: Server TLS (``--tls-cert``, ``--tls-key``, ``--tls-client-ca`` for mutual TLS): PEM files.
SERVER_TLS_CERT_ENV_VAR = "LRCTL_SERVER_TLS_CERT"
SERVER_TLS_KEY_ENV_VAR = "LRCTL_SERVER_TLS_KEY"
SERVER_TLS_CLIENT_CA_ENV_VAR = "LRCTL_SERVER_TLS_CLIENT_CA"
#: HTTPS on ``/metrics`` (``--metrics-tls-cert``, ``--metrics-tls-key``,
#: ``--metrics-client-ca``): PEM files.
METRICS_TLS_CERT_ENV_VAR = "LRCTL_METRICS_TLS_CERT"
METRICS_TLS_KEY_ENV_VAR = "LRCTL_METRICS_TLS_KEY"
METRICS_TLS_CLIENT_CA_ENV_VAR = "LRCTL_METRICS_TLS_CLIENT_CA"
#: ``--insecure`` (``1``/``true``): serve outside loopback without TLS or tokens anyway.
INSECURE_ENV_VAR = "LRCTL_INSECURE"

#: Longest time rank 0's bare progress (step, LRs) stays in memory only; effective steps,
#: new events, plateau metrics and final reports are written before the reply.
PROGRESS_PERSIST_S = 2.0
#: ListJobs page size when the request says 0, and the largest one served.
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
#: Preview rows x param groups; keeps a response well under the message size limit.
MAX_PREVIEW_VALUES = 1_000_000

# Default limits (DESIGN "Default limits"): RESOURCE_EXHAUSTED past a size or count,
# INVALID_ARGUMENT for a value out of range. Each is an ``lrctl serve --max-...`` flag and an
# ``LRCTL_MAX_...`` variable (``controller.limits.ServerLimits``; docs/controller.md "Limits").
DEFAULT_MAX_EVENTS_PER_JOB = 10_000
DEFAULT_MAX_JOBS = 100_000
DEFAULT_MAX_WATCH_STREAMS_PER_JOB = 1_024
DEFAULT_MAX_PARAM_GROUPS = 1_024
DEFAULT_MAX_SPEC_BYTES = 4 * 1024
DEFAULT_MAX_ACTOR_CHARS = 256
DEFAULT_MAX_REASON_BYTES = 1024
#: Ceiling of a base LR, an ``lr = X`` and an LR inside a spec (CyclicLR's ``max_lr``...):
#: far above any optimizer's LR, finite so a typo such as ``lr = 3e40`` is refused
#: (INVALID_ARGUMENT). Schedules themselves may still grow past it (ExponentialLR(gamma=1.5)).
DEFAULT_MAX_LR = 1e6
#: Watch streams one controller serves at once, all jobs together (each costs a task and a
#: few KiB); per job: :data:`DEFAULT_MAX_WATCH_STREAMS_PER_JOB`.
DEFAULT_MAX_WATCH_STREAMS = 16_384
#: Items one Report may carry in each of ``applied``, ``plateau_metrics`` and ``divergences``
#: (a worker sends a handful every 0.1 s; thousands after a long outage).
DEFAULT_MAX_REPORT_ITEMS = 10_000
#: Longest CPU-heavy validation or evaluation (a spec of 1,024 groups, a preview), run off
#: the event loop, before the call answers RESOURCE_EXHAUSTED.
DEFAULT_EVAL_DEADLINE_SECONDS = 10.0
#: Longest status message a client gets, in UTF-8 bytes: errors quote at most a bounded
#: prefix of what was sent, so an answer never outgrows gRPC's 16 KiB header limit.
MAX_STATUS_MESSAGE_BYTES = 1024

MAX_JOBS_ENV_VAR = "LRCTL_MAX_JOBS"
MAX_EVENTS_PER_JOB_ENV_VAR = "LRCTL_MAX_EVENTS_PER_JOB"
MAX_WATCH_STREAMS_PER_JOB_ENV_VAR = "LRCTL_MAX_WATCH_STREAMS_PER_JOB"
MAX_WATCH_STREAMS_ENV_VAR = "LRCTL_MAX_WATCH_STREAMS"
MAX_PARAM_GROUPS_ENV_VAR = "LRCTL_MAX_PARAM_GROUPS"
MAX_SPEC_BYTES_ENV_VAR = "LRCTL_MAX_SPEC_BYTES"
MAX_ACTOR_CHARS_ENV_VAR = "LRCTL_MAX_ACTOR_CHARS"
MAX_REASON_BYTES_ENV_VAR = "LRCTL_MAX_REASON_BYTES"
MAX_LR_ENV_VAR = "LRCTL_MAX_LR"
MAX_REPORT_ITEMS_ENV_VAR = "LRCTL_MAX_REPORT_ITEMS"
EVAL_DEADLINE_SECONDS_ENV_VAR = "LRCTL_EVAL_DEADLINE_SECONDS"
#: ``--max-message-bytes``: largest gRPC message sent or received
#: (:data:`DEFAULT_MAX_MESSAGE_BYTES`); a job's log is kept small enough to fit in one.
MAX_MESSAGE_BYTES_ENV_VAR = "LRCTL_MAX_MESSAGE_BYTES"


#: Trailing-metadata key by which the controller tells a client *why* a call failed, where
#: the status code alone is ambiguous (FAILED_PRECONDITION covers a superseded attach epoch
#: and a job that cannot be evaluated). Clients read it into ``ClientError.reason``.
REASON_METADATA_KEY = "lrctl-reason"
#: ``lrctl-reason`` of a report refused because a newer rank 0 attached to the job.
REASON_SUPERSEDED = "superseded"
#: ``lrctl-reason`` of every UNAVAILABLE the controller itself answers (shutting down, its
#: database out of reach or refusing writes): without it, UNAVAILABLE means the client could
#: not reach the controller at all.
REASON_UNAVAILABLE = "unavailable"
