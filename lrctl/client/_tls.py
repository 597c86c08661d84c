"""TLS for the client's channel: :class:`TLSConfig`, filled from ``LRCTL_TLS_*``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import grpc

from lrctl.client._errors import ClientError
from lrctl.constants import TLS_CA_ENV_VAR, TLS_CERT_ENV_VAR, TLS_KEY_ENV_VAR

__all__ = ["TLSConfig"]


@dataclass(frozen=True)
class TLSConfig:
    """How the client verifies the controller and (for mutual TLS) presents itself.

    ``TLSConfig()`` is TLS against the system's trusted roots, no client certificate.
    """

    ca: str | None = None
    """PEM file of the CA(s) that signed the controller's certificate (``LRCTL_TLS_CA``);
    None trusts the system's roots."""
    cert: str | None = None
    """PEM certificate chain presented to the controller (``LRCTL_TLS_CERT``); needs
    :attr:`key`."""
    key: str | None = None
    """PEM private key of :attr:`cert` (``LRCTL_TLS_KEY``)."""
    server_name: str | None = None
    """Name to verify the controller's certificate against, when it differs from the host
    dialled (e.g. dialling ``127.0.0.1`` a certificate for ``lrctl.internal``)."""

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ClientError(
                "INVALID_ARGUMENT",
                f"expected both a client certificate and its key ({TLS_CERT_ENV_VAR} and "
                f"{TLS_KEY_ENV_VAR}), got only the {'certificate' if self.key is None else 'key'}",
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TLSConfig | None:
        """Return the TLS settings in ``LRCTL_TLS_CA/CERT/KEY``; None when none is set.

        Args:
            environ: Where to read; ``os.environ`` by default.

        Raises:
            ClientError: INVALID_ARGUMENT for a certificate without a key or the reverse.
        """
        env = os.environ if environ is None else environ
        ca, cert, key = (
            env.get(name) or None for name in (TLS_CA_ENV_VAR, TLS_CERT_ENV_VAR, TLS_KEY_ENV_VAR)
        )
        if ca is None and cert is None and key is None:
            return None
        return cls(ca=ca, cert=cert, key=key)

    def credentials(self) -> grpc.ChannelCredentials:
        """Read the files and return the channel credentials.

        Raises:
            ClientError: INVALID_ARGUMENT when a file cannot be read.
        """
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca, TLS_CA_ENV_VAR),
            private_key=_read(self.key, TLS_KEY_ENV_VAR),
            certificate_chain=_read(self.cert, TLS_CERT_ENV_VAR),
        )


def _read(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise ClientError(
            "INVALID_ARGUMENT", f"cannot read the {what} file {path!r}: {error.strerror or error}"
        ) from None
