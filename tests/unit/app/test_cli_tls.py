"""The web server's TLS context: TLS 1.3 only, or none when no certificate is configured."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from app.cli import server_tls_context
from app.settings import Settings


def test_no_certificate_no_tls() -> None:
    assert server_tls_context(Settings()) is None


def test_tls_1_3_minimum(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    context = server_tls_context(Settings(tls_cert_file=tmp_path / "c.pem", tls_key_file=tmp_path / "k.pem"))
    assert context is not None
    assert context.minimum_version == ssl.TLSVersion.TLSv1_3
