"""Throwaway certificates for the TLS tests: self-signed, or issued by a test CA so that a
client can verify a name the way nginx verifies `web`."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_FOR = dt.timedelta(hours=1)


@dataclass(frozen=True)
class Authority:
    """A CA that issues the tests' server certificates; ``cert_file`` is what clients trust."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    cert_file: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _builder(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey
             ) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + VALID_FOR))


def _alt_name(name: str) -> x509.GeneralName:
    """An IP address where ``name`` is one (clients match IPs only against IP entries)."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def new_authority(directory: Path, stem: str = "ca") -> Authority:
    """A CA certificate in ``directory/<stem>.crt`` (its key stays in memory)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(f"Sluice test {stem}")
    cert = (_builder(name, name, key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    cert_file = directory / f"{stem}.crt"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Authority(key, cert, cert_file)


def issue(directory: Path, stem: str, names: Sequence[str], ca: Authority | None = None
          ) -> tuple[Path, Path]:
    """A server certificate for ``names`` (DNS names or IP addresses) and its key, as
    ``directory/<stem>.crt`` and ``.key`` (mode 600); self-signed unless ``ca`` is given."""
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (_builder(_name(names[0]), ca.cert.subject if ca else _name(names[0]), key)
               .add_extension(x509.SubjectAlternativeName([_alt_name(n) for n in names]),
                              critical=False))
    if ca is not None:
        builder = (builder
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                                  critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       ca.key.public_key()), critical=False))
    cert = builder.sign(ca.key if ca else key, hashes.SHA256())
    cert_file, key_file = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    return cert_file, key_file
