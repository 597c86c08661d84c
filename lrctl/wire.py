"""What both sides of the gRPC API share: channel options, auth metadata, event conversion.

The controller and the workers never import each other; both import this module (and the
generated ``lrctl.v1``) to speak the same wire format.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from lrctl.overrides import Event, Op
from lrctl.v1 import lrctl_pb2

__all__ = [
    "ADDRESS_ENV_VAR",
    "CLIENT_CHANNEL_OPTIONS",
    "DEFAULT_ADDRESS",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "OP_TO_PROTO",
    "PROTO_TO_OP",
    "TOKEN_ENV_VAR",
    "auth_metadata",
    "event_from_proto",
    "event_to_proto",
    "events_from_proto",
]

#: Environment variable holding the controller's ``HOST:PORT`` (CLI and workers).
ADDRESS_ENV_VAR = "LRCTL_ADDRESS"
#: Environment variable holding the bearer token sent with every call.
TOKEN_ENV_VAR = "LRCTL_TOKEN"
#: Where the controller listens when nothing else is said (``lrctl serve``'s default).
DEFAULT_ADDRESS = "127.0.0.1:50051"

#: A Watch snapshot carries the whole event log; 16 MiB holds ~100k events.
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024

#: Options every client of the controller (workers, CLI) passes to its channel.
#: A ping every 10 s with a 5 s timeout (``grpc.keepalive_timeout_ms`` and
#: ``grpc.http2.ping_timeout_ms``, which newer gRPC cores use for the same purpose) detects
#: a frozen or unreachable controller within ~15 s even while a Watch stream is idle; the
#: server accepts pings every 5 s (docs/controller.md). Reconnect backoff is capped at 5 s.
CLIENT_CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.http2.ping_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 5_000),
    ("grpc.max_receive_message_length", DEFAULT_MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", DEFAULT_MAX_MESSAGE_BYTES),
)

OP_TO_PROTO: dict[Op, int] = {
    Op.SCALE: lrctl_pb2.OVERRIDE_OP_SCALE,
    Op.SET: lrctl_pb2.OVERRIDE_OP_SET,
    Op.CLEAR: lrctl_pb2.OVERRIDE_OP_CLEAR,
    Op.REPLACE_SCHEDULE: lrctl_pb2.OVERRIDE_OP_REPLACE_SCHEDULE,
    Op.PLATEAU_REDUCE: lrctl_pb2.OVERRIDE_OP_PLATEAU_REDUCE,
}
PROTO_TO_OP: dict[int, Op] = {v: k for k, v in OP_TO_PROTO.items()}


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """Return the call metadata that carries ``token`` (none without a token)."""
    return (("authorization", f"Bearer {token}"),) if token else ()


def _seconds(msg: Any, field: str) -> float | None:
    if not msg.HasField(field):
        return None
    stamp = getattr(msg, field)
    return float(stamp.seconds) + float(stamp.nanos) / 1e9


def event_from_proto(msg: lrctl_pb2.OverrideEvent) -> Event:
    """Convert an ``OverrideEvent`` message to the domain :class:`Event`."""
    return Event(
        version=msg.version,
        op=PROTO_TO_OP[msg.op],
        value=msg.value if msg.op in (lrctl_pb2.OVERRIDE_OP_SCALE, lrctl_pb2.OVERRIDE_OP_SET)
        else None,
        schedule=msg.schedule or None,
        group=msg.param_group if msg.HasField("param_group") else None,
        effective_step=msg.effective_step if msg.HasField("effective_step") else None,
        actor=msg.actor,
        reason=msg.reason,
        created_at=_seconds(msg, "created_at") or 0.0,
        applied_at=_seconds(msg, "applied_at"),
    )


def events_from_proto(msgs: Iterable[lrctl_pb2.OverrideEvent]) -> tuple[Event, ...]:
    """Convert a repeated ``OverrideEvent`` field, oldest first."""
    return tuple(event_from_proto(m) for m in msgs)


def event_to_proto(event: Event) -> lrctl_pb2.OverrideEvent:
    """Convert a domain :class:`Event` to its ``OverrideEvent`` message."""
    msg = lrctl_pb2.OverrideEvent(
        version=event.version,
        op=OP_TO_PROTO[event.op],  # type: ignore[arg-type]
        value=event.value or 0.0,
        schedule=event.schedule or "",
        actor=event.actor,
        reason=event.reason,
    )
    if event.group is not None:
        msg.param_group = event.group
    if event.effective_step is not None:
        msg.effective_step = event.effective_step
    if event.created_at:
        msg.created_at.FromNanoseconds(int(event.created_at * 1e9))
    if event.applied_at is not None:
        msg.applied_at.FromNanoseconds(int(event.applied_at * 1e9))
    return msg
