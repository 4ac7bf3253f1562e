"""Route scopes, security headers, CORS off by default, and TLS file checks (a real self-signed cert)."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

from kaon.errors import ConfigError
from kaon.security import AUTHENTICATED, check_tls_files, cors_headers, required_scope, security_headers


@pytest.mark.parametrize(("method", "path", "scope"), [
    ("GET", "/healthz", None), ("GET", "/readyz", None), ("GET", "/v2/health/live", None),
    ("GET", "/v2/health/ready", None), ("HEAD", "/healthz", None),
    ("POST", "/predict", "predict"), ("POST", "/v2/models/digits/infer", "predict"),
    ("POST", "/v2/models/digits/versions/1/infer", "predict"), ("POST", "/anything", "predict"),
    ("POST", "/explain", "explain"), ("POST", "/explain/image", "explain"),
    ("GET", "/metrics", "metrics"), ("POST", "/admin/reload", "admin"), ("POST", "/v2/repository/index", "admin"),
    ("GET", "/", AUTHENTICATED), ("GET", "/docs", AUTHENTICATED), ("GET", "/openapi.json", AUTHENTICATED),
    ("GET", "/v2", AUTHENTICATED), ("GET", "/v2/models/digits", AUTHENTICATED),
    ("POST", "/healthz", "predict"),  # only GET/HEAD of a probe is public
])
def test_required_scope(method: str, path: str, scope: str | None) -> None:
    assert required_scope(method, path) == scope


def test_security_headers_and_hsts_only_with_tls() -> None:
    plain = dict(security_headers())
    assert plain[b"x-content-type-options"] == b"nosniff"
    assert plain[b"x-frame-options"] == b"DENY"
    assert b"frame-ancestors 'none'" in plain[b"content-security-policy"]
    assert plain[b"cache-control"] == b"no-store"
    assert b"strict-transport-security" not in plain
    assert b"max-age=" in dict(security_headers(tls=True))[b"strict-transport-security"]


def test_cors_is_off_unless_origins_are_allowed() -> None:
    assert cors_headers("https://evil.example", frozenset()) == []
    allowed = frozenset({"https://app.example"})
    assert cors_headers("https://evil.example", allowed) == []
    assert (b"access-control-allow-origin", b"https://app.example") in cors_headers("https://app.example", allowed)


def make_self_signed(folder: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A real certificate and key for `host`, made with the cryptography package."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_tls_files_load_as_a_pair(tmp_path: Path) -> None:
    cert, key = make_self_signed(tmp_path)
    assert check_tls_files(cert, key) == {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
    assert check_tls_files(None, None) == {}


def test_tls_mistakes_are_config_errors_before_the_server_starts(tmp_path: Path) -> None:
    cert, key = make_self_signed(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    _, other_key = make_self_signed(other)
    with pytest.raises(ConfigError, match="both --tls-cert and --tls-key"):
        check_tls_files(cert, None)
    with pytest.raises(ConfigError, match="not found"):
        check_tls_files(tmp_path / "missing.pem", key)
    with pytest.raises(ConfigError, match="do not load as a pair"):
        check_tls_files(cert, other_key)
