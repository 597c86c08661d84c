"""Certificates made in the test (``cryptography``): a CA, a server and clients, and a stranger.

``make_pki(directory)`` writes PEM files:

* ``ca.crt`` — the test CA;
* ``server.crt``/``server.key`` — for ``localhost`` and ``127.0.0.1`` (server auth), so a
  client dialling ``127.0.0.1:PORT`` verifies it without overriding the name;
* ``client.crt``/``client.key`` — a client certificate from the same CA (client auth);
* ``rogue-ca.crt``, ``rogue.crt``/``rogue.key`` — a client certificate from another CA, which
  mutual TLS must refuse.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Pki", "make_pki"]


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path
    rogue_cert: Path
    rogue_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    usage: x509.ObjectIdentifier | None = None,
    san: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(
    path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None
) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.with_suffix(".key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )


def make_pki(directory: Path, server_names: tuple[str, ...] = ("localhost",)) -> Pki:
    """Write a CA, a server certificate (for ``server_names`` and 127.0.0.1), a client
    certificate and a rogue client."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    _write(directory / "ca.crt", _issue("lrctl test CA", ca_key, "lrctl test CA", ca_key, ca=True))
    server_key = ec.generate_private_key(ec.SECP256R1())
    _write(
        directory / "server.crt",
        _issue(
            server_names[0],
            server_key,
            "lrctl test CA",
            ca_key,
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
            san=[
                *(x509.DNSName(name) for name in server_names),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            ],
        ),
        server_key,
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    _write(
        directory / "client.crt",
        _issue(
            "rank-0", client_key, "lrctl test CA", ca_key, usage=ExtendedKeyUsageOID.CLIENT_AUTH
        ),
        client_key,
    )
    rogue_ca_key = ec.generate_private_key(ec.SECP256R1())
    _write(
        directory / "rogue-ca.crt",
        _issue("rogue CA", rogue_ca_key, "rogue CA", rogue_ca_key, ca=True),
    )
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    _write(
        directory / "rogue.crt",
        _issue("rogue", rogue_key, "rogue CA", rogue_ca_key, usage=ExtendedKeyUsageOID.CLIENT_AUTH),
        rogue_key,
    )
    return Pki(
        ca=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
        rogue_ca=directory / "rogue-ca.crt",
        rogue_cert=directory / "rogue.crt",
        rogue_key=directory / "rogue.key",
    )
