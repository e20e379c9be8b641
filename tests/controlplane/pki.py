"""Keys and certificates for a loopback control plane, made with `cryptography`.

One CA signs the API server's serving certificate and the client certificates (the admin is in
system:masters); a separate key signs service-account tokens. ECDSA P-256 throughout: the API
server takes it for TLS, client certificates and ES256 tokens, and it is generated in
milliseconds.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVING_NAMES = ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"]
SERVING_IPS = ["127.0.0.1", "10.0.0.1"]  # loopback and the first address of the service range
VALID_FOR = datetime.timedelta(days=365)


@dataclass(frozen=True)
class Pki:
    """Where the files are: PEM certificates and keys under one directory."""

    root: Path

    def path(self, name: str) -> Path:
        return self.root / name

    @property
    def ca(self) -> Path:
        return self.path("ca.crt")

    def pem(self, name: str) -> bytes:
        return self.path(name).read_bytes()


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _name(common: str, organization: str | None = None) -> x509.Name:
    parts = [x509.NameAttribute(NameOID.COMMON_NAME, common)]
    if organization:
        parts.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(parts)


def _certificate(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    usage: list | None = None,
    names: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALID_FOR)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=not ca,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def generate(root: Path) -> Pki:
    """CA, API server serving pair, admin client pair and the service-account signing key."""
    root.mkdir(parents=True, exist_ok=True)
    ca_key, ca_name = _key(), _name("issueops-test-ca")
    _write_key(root / "ca.key", ca_key)
    _write_cert(root / "ca.crt", _certificate(ca_name, ca_key, ca_name, ca_key, ca=True))

    serving_key = _key()
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in SERVING_NAMES]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in SERVING_IPS]
    serving = _certificate(
        _name("kube-apiserver"),
        serving_key,
        ca_name,
        ca_key,
        usage=[ExtendedKeyUsageOID.SERVER_AUTH],
        names=names,
    )
    _write_key(root / "apiserver.key", serving_key)
    _write_cert(root / "apiserver.crt", serving)

    admin_key = _key()
    admin = _certificate(
        _name("issueops-admin", "system:masters"),
        admin_key,
        ca_name,
        ca_key,
        usage=[ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    _write_key(root / "admin.key", admin_key)
    _write_cert(root / "admin.crt", admin)

    signing = _key()
    _write_key(root / "sa.key", signing)
    (root / "sa.pub").write_bytes(
        signing.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return Pki(root)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def service_account_jwt(
    pki: Pki, issuer: str, namespace: str, name: str, uid: str, *, expires_in: int
) -> str:
    """A token for namespace/name signed with the cluster's own key (ES256), expiring in
    `expires_in` seconds (negative: already expired). Only the tests need one the API server
    would not issue itself."""
    key = serialization.load_pem_private_key(pki.pem("sa.key"), password=None)
    now = int(time.time())
    header = {"alg": "ES256", "typ": "JWT"}
    claims = {
        "iss": issuer,
        "aud": [issuer],
        "sub": f"system:serviceaccount:{namespace}:{name}",
        "iat": now + min(expires_in, 0) - 60,
        "nbf": now + min(expires_in, 0) - 60,
        "exp": now + expires_in,
        "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": uid}},
    }
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
