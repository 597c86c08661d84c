"""Controller addresses: one endpoint or several replicas, as a gRPC target plus options.

``LRCTL_ADDRESS`` (and ``--address``) is ``HOST:PORT`` or ``HOST:PORT,HOST:PORT,...`` (the
replicas of one controller on a shared PostgreSQL), or a DNS name that resolves to several
addresses (a Kubernetes headless Service). :func:`channel_target` turns it into what
``grpc.insecure_channel`` / ``grpc.secure_channel`` take:

* one ``HOST:PORT`` is dialled as given (gRPC's DNS resolver; a name with several A records
  is balanced over all of them with ``round_robin``);
* several IP literals become gRPC's own ``ipv4:A:P,B:Q`` (or ``ipv6:[A]:P,[B]:Q``) target;
* several names are resolved once, here, into such a list; the channel's authority stays the
  first name, so TLS still checks the certificate against it.

With several addresses the channel uses the ``round_robin`` load-balancing policy: calls are
spread over the replicas that are up, and when one dies the channel keeps using the others
(a Watch that was on it ends ``UNAVAILABLE`` and is resumed from its last version by the
client's follower, on a live replica). See https://github.com/grpc/grpc/blob/master/doc/naming.md.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from typing import Any

__all__ = ["ROUND_ROBIN", "channel_target", "split_address"]

#: Channel option selecting the ``round_robin`` policy (gRPC's default is ``pick_first``).
ROUND_ROBIN: tuple[str, Any] = (
    "grpc.service_config",
    json.dumps({"loadBalancingConfig": [{"round_robin": {}}]}),
)

_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:")


def split_address(address: str) -> list[tuple[str, int]]:
    """Split ``HOST:PORT[,HOST:PORT...]`` into ``(host, port)`` pairs (IPv6 hosts unbracketed).

    Raises:
        ValueError: an empty list or item, a missing or invalid port.
    """
    items = [item.strip() for item in address.split(",")]
    if not address.strip() or not all(items):
        raise ValueError(f"expected HOST:PORT[,HOST:PORT...], got {address!r}")
    out = []
    for item in items:
        host, sep, port = item.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(
                f"expected HOST:PORT[,HOST:PORT...] with ports 1-65535, got {item!r} in {address!r}"
            )
        out.append((host, int(port)))
    return out


def channel_target(address: str) -> tuple[str, list[tuple[str, Any]]]:
    """Return the gRPC target for ``address`` and the channel options it needs.

    Args:
        address: ``HOST:PORT``, ``HOST:PORT,HOST:PORT,...``, or a gRPC target with a scheme
            (``dns:///name:port``, ``ipv4:...``, ``unix:...``), passed through.

    Returns:
        ``(target, options)``; add ``options`` to the channel's own.

    Raises:
        ValueError: a malformed list, or names that resolve to nothing.
    """
    address = address.strip()
    if address.startswith(_SCHEMES):
        return address, [ROUND_ROBIN]
    endpoints = split_address(address)
    if len(endpoints) == 1:
        # An IP literal is one server; a name may resolve to several: balance over them.
        return address, [] if _ip(endpoints[0][0]) is not None else [ROUND_ROBIN]
    literal = [_ip(host) for host, _ in endpoints]
    options: list[tuple[str, Any]] = [ROUND_ROBIN]
    if any(ip is None for ip in literal):
        first_host, first_port = endpoints[0]
        endpoints = [(ip, port) for host, port in endpoints for ip in _resolve(host, port)]
        options.append(("grpc.default_authority", _join(first_host, first_port)))
    families = {ipaddress.ip_address(host).version for host, _ in endpoints}
    if families == {4}:
        return "ipv4:" + ",".join(f"{h}:{p}" for h, p in endpoints), options
    if families == {6}:
        return "ipv6:" + ",".join(f"[{h}]:{p}" for h, p in endpoints), options
    raise ValueError(
        f"expected the endpoints of {address!r} to be all IPv4 or all IPv6; "
        f"gRPC cannot mix them in one target (use a DNS name instead)"
    )


def _ip(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def _resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ValueError(f"cannot resolve controller address {host!r}: {exc.strerror}") from None
    found: dict[str, None] = {}
    v4 = [info for info in infos if info[0] == socket.AF_INET]
    for info in v4 or infos:  # prefer IPv4 when a name has both (one family per target)
        found.setdefault(str(info[4][0]), None)
    return list(found)


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
