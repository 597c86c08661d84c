"""Health probe for containers: ``python -m controller.healthcheck``; exit 0 when SERVING.

It asks the controller's standard gRPC health service (``grpc.health.v1.Health/Check``) the
way a client would, over the same port and the same TLS, so the probe keeps working when TLS
or mutual TLS is on; Kubernetes' built-in ``grpc`` probe cannot present a CA or a client
certificate. Used by the controller image's ``HEALTHCHECK`` and by the Kubernetes manifests
(deploy/, docs/operations.md). Health checks never need a token.

Defaults suit a probe that runs next to the server: address ``127.0.0.1:$LRCTL_PORT`` (the
server's own port setting, 50051 by default); TLS when ``LRCTL_TLS_CA`` (or ``--tls-ca``) is
set, with ``LRCTL_TLS_CERT``/``LRCTL_TLS_KEY`` as the client certificate for mutual TLS, and
``--tls-server-name`` for the name the server certificate carries (the probe dials an IP).

Exit status: 0 SERVING; 1 anything else (NOT_SERVING, unknown service, unreachable, timeout,
bad TLS), with one line on stderr saying which.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lrctl import constants as c
from lrctl.client import ClientError, TLSConfig

__all__ = ["check", "main"]

#: Checked by default: the lrctl API itself (turns NOT_SERVING on shutdown, like "").
DEFAULT_SERVICE = "lrctl.v1.LRController"


def check(
    address: str,
    service: str = DEFAULT_SERVICE,
    *,
    timeout: float = 3.0,
    credentials: grpc.ChannelCredentials | None = None,
    server_name: str | None = None,
) -> str:
    """Return the health status name of ``service`` at ``address`` (``SERVING``, ...).

    Raises:
        grpc.RpcError: the call failed (unreachable, timeout, TLS, unknown service).
    """
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    channel = (
        grpc.secure_channel(address, credentials, options)
        if credentials is not None
        else grpc.insecure_channel(address, options)
    )
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


def _credentials(
    ca: str | None, cert: str | None, key: str | None
) -> grpc.ChannelCredentials | None:
    if not ca:
        if cert or key:
            raise SystemExit(
                f"expected {c.TLS_CA_ENV_VAR} (--tls-ca) with a client "
                "certificate, got only the certificate/key"
            )
        return None
    # The client's own TLS settings: the same checks (a certificate needs its key) and reads.
    return TLSConfig(ca=ca, cert=cert or None, key=key or None).credentials()


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    env = os.environ if env is None else env
    port = env.get(c.PORT_ENV_VAR) or str(c.DEFAULT_PORT)
    parser = argparse.ArgumentParser(
        prog="python -m controller.healthcheck", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--address",
        default=f"127.0.0.1:{port}",
        help="HOST:PORT (default 127.0.0.1:$LRCTL_PORT, else 50051)",
    )
    parser.add_argument(
        "--service",
        default=DEFAULT_SERVICE,
        help=f'service to check; "" = the whole server (default {DEFAULT_SERVICE})',
    )
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    for flag, what, var in (
        ("--tls-ca", "CA bundle to verify the server (default ", c.TLS_CA_ENV_VAR),
        ("--tls-cert", "client certificate for mutual TLS (", c.TLS_CERT_ENV_VAR),
        ("--tls-key", "client key for mutual TLS (", c.TLS_KEY_ENV_VAR),
    ):
        parser.add_argument(flag, default=env.get(var), help=f"{what}${var})")
    parser.add_argument(
        "--tls-server-name",
        default=None,
        help="name to expect in the server certificate (e.g. the Service's "
        "DNS name) when --address is an IP",
    )
    args = parser.parse_args(argv)
    try:
        credentials = _credentials(args.tls_ca, args.tls_cert, args.tls_key)
        status = check(
            args.address,
            args.service,
            timeout=args.timeout,
            credentials=credentials,
            server_name=args.tls_server_name,
        )
    except grpc.RpcError as exc:
        code = exc.code() if isinstance(exc, grpc.Call) else None
        details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        name = code.name if code is not None else "ERROR"
        print(f"unhealthy: {args.address} {args.service!r}: {name}: {details}", file=sys.stderr)
        return 1
    except ClientError as exc:  # TLS settings that do not make credentials
        print(f"unhealthy: {exc.details}", file=sys.stderr)
        return 1
    if status != "SERVING":
        print(f"unhealthy: {args.address} {args.service!r} is {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
