"""The X.509 certificates of the OPC UA interface: the server's own certificate and key, and the
client certificates it trusts, each checked before anything starts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zsad.errors import ZsadError

CERTIFICATE_SUFFIXES = (".der", ".pem", ".crt", ".cer")


@dataclass(frozen=True)
class ServerCredentials:
    """A server certificate (DER bytes), its private key (PEM bytes) and its application URI."""

    certificate_der: bytes
    private_key_pem: bytes
    application_uri: str


def load_certificate(path: Path, flag: str) -> Any:
    """An ``x509.Certificate`` from a PEM or DER file, or a one-line error naming the file."""
    from cryptography import x509

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ZsadError(f"{flag} {path}: cannot read it ({exc.strerror or exc})") from exc
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as exc:
        raise ZsadError(f"{flag} {path}: not an X.509 certificate in PEM or DER ({exc})") from exc


def application_uri(certificate: Any, path: Path) -> str:
    """The URI in the certificate's subjectAltName: OPC UA names the application by it."""
    from cryptography import x509

    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        uris = names.value.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    if not uris:
        raise ZsadError(
            f"--opcua-cert {path}: no URI in its subjectAltName; OPC UA clients check the "
            "server's application URI there (see docs/line.md for how to make a certificate)"
        )
    return str(uris[0])


def server_credentials(certificate: Path, private_key: Path) -> ServerCredentials:
    """The server's certificate and key, checked to be readable, RSA and a matching pair."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    cert = load_certificate(certificate, "--opcua-cert")
    uri = application_uri(cert, certificate)
    try:
        data = private_key.read_bytes()
    except OSError as exc:
        raise ZsadError(
            f"--opcua-key {private_key}: cannot read it ({exc.strerror or exc})"
        ) from exc
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_der_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ZsadError(
            f"--opcua-key {private_key}: not an unencrypted private key in PEM or DER ({exc})"
        ) from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ZsadError(f"--opcua-key {private_key}: Basic256Sha256 needs an RSA key")
    if key.public_key().public_numbers() != cert.public_key().public_numbers():
        raise ZsadError(
            f"--opcua-key {private_key}: does not belong to the certificate {certificate}"
        )
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return ServerCredentials(cert.public_bytes(serialization.Encoding.DER), pem, uri)


def trusted_certificates(folder: Path) -> frozenset[bytes]:
    """The DER bytes of every client certificate in ``folder`` (*.der, *.pem, *.crt, *.cer)."""
    from cryptography.hazmat.primitives import serialization

    if not folder.is_dir():
        raise ZsadError(f"--opcua-trust {folder}: not a folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in CERTIFICATE_SUFFIXES)
    if not files:
        raise ZsadError(
            f"--opcua-trust {folder}: holds no client certificate (*.der, *.pem, *.crt, *.cer)"
        )
    return frozenset(
        load_certificate(p, "--opcua-trust").public_bytes(serialization.Encoding.DER) for p in files
    )
