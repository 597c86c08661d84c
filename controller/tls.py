"""TLS for the controller's two ports: gRPC credentials and the ``/metrics`` SSL context.

Both read PEM files named by :class:`~controller.config.ServerConfig` (``--tls-*`` and
``--metrics-tls-*``) once, at startup; a pair that does not load (unreadable, not PEM, key and
certificate that do not match) fails :func:`controller.server.start` with the file named.
Rotating a certificate means restarting the controller (a rolling restart with replicas).
"""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc

from controller.config import ServerConfig

__all__ = ["metrics_ssl_context", "server_credentials"]


def server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    """Return the gRPC server credentials of ``config``; None for plaintext.

    With ``tls_client_ca`` every client must present a certificate that CA signed.

    Raises:
        ValueError: a file that cannot be read, or a certificate and key that do not load.
    """
    if config.tls_cert is None or config.tls_key is None:
        return None
    _check_pair(config.tls_cert, config.tls_key, "--tls-cert", "--tls-key")
    client_ca = None
    if config.tls_client_ca is not None:
        client_ca = _read(config.tls_client_ca, "--tls-client-ca")
        _check_ca(config.tls_client_ca, "--tls-client-ca")
    return grpc.ssl_server_credentials(
        [(_read(config.tls_key, "--tls-key"), _read(config.tls_cert, "--tls-cert"))],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def metrics_ssl_context(config: ServerConfig) -> ssl.SSLContext | None:
    """Return the server-side SSL context of ``/metrics``; None for plain HTTP.

    TLS 1.2 at least; with ``metrics_tls_client_ca`` scrapers must present a certificate
    that CA signed.

    Raises:
        ValueError: a file that cannot be read, or a certificate and key that do not load.
    """
    if config.metrics_tls_cert is None or config.metrics_tls_key is None:
        return None
    context = _check_pair(
        config.metrics_tls_cert, config.metrics_tls_key, "--metrics-tls-cert", "--metrics-tls-key"
    )
    if config.metrics_tls_client_ca is not None:
        _check_ca(config.metrics_tls_client_ca, "--metrics-client-ca", context)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _read(path: str, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read the {flag} file {path!r}: {exc.strerror or exc}") from None


def _check_pair(cert: str, key: str, cert_flag: str, key_flag: str) -> ssl.SSLContext:
    """Load the pair the way OpenSSL will, so a bad one fails here, naming its files."""
    _read(cert, cert_flag)
    _read(key, key_flag)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=cert, keyfile=key)
    except ssl.SSLError as exc:
        raise ValueError(
            f"cannot load the TLS certificate {cert!r} ({cert_flag}) with the "
            f"key {key!r} ({key_flag}): expected a PEM certificate chain and its "
            f"PEM private key ({exc.reason or exc})"
        ) from None
    return context


def _check_ca(path: str, flag: str, context: ssl.SSLContext | None = None) -> None:
    _read(path, flag)
    try:
        (context or ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)).load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise ValueError(
            f"cannot load the CA bundle {path!r} ({flag}): expected PEM "
            f"certificates ({exc.reason or exc})"
        ) from None
