"""Workload certificates: the control plane's certificate authority for the mesh.

The gateway and every backend sidecar get a short-lived certificate whose only name is a
SPIFFE URI (``spiffe://<trust domain>/gateway/<group>``, ``…/backend/<name>``), issued here
and delivered over SDS with the CA bundle. Each is renewed when half of its lifetime is
left, so a renewal that fails has the other half to succeed, and Envoy switches to the new
one for new handshakes without a restart.

The CA is the policy's (``mesh.ca``: several control plane replicas must share it) or one
made when the control plane starts (single replica: after a restart every workload gets
certificates of the new CA within one push, and in-flight handshakes of the old one fail).
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from . import ir
from .translate.tls import bundle_secret, certificate_secret

# Certificates are valid from a little before they are issued: clocks of the machines differ.
CLOCK_SKEW_S = 60


@dataclass(frozen=True)
class Workload:
    uri: str
    cert_pem: str
    key_pem: str
    not_after: float  # seconds since the epoch
    renew_at: float


class Authority:
    def __init__(self, ca: ir.Certificate | None = None, trust_domain: str = "gateway.local"):
        if ca is not None:
            self.cert = x509.load_pem_x509_certificate(ca.cert_pem.encode("latin-1"))
            key = serialization.load_pem_private_key(ca.key_pem.encode("latin-1"), None)
            if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
                raise ValueError("mesh.ca: the key must be RSA or EC")  # certcheck refuses others first
            self.key: CertificateIssuerPrivateKeyTypes = key
            self.bundle_pem = ca.cert_pem
        else:
            self.key = ec.generate_private_key(ec.SECP256R1())
            now = datetime.datetime.now(datetime.UTC)
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{trust_domain} workload CA")])
            self.cert = (
                x509.CertificateBuilder()
                .subject_name(name)
                .issuer_name(name)
                .public_key(self.key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(seconds=CLOCK_SKEW_S))
                .not_valid_after(now + datetime.timedelta(days=365))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(
                    x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
                )
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
                .sign(self.key, hashes.SHA256())
            )
            self.bundle_pem = self.cert.public_bytes(serialization.Encoding.PEM).decode()
        self.source_ca = ca

    def issue(self, uri: str, ttl_s: int, now: float | None = None) -> Workload:
        at = time.time() if now is None else now
        key = ec.generate_private_key(ec.SECP256R1())
        start = datetime.datetime.fromtimestamp(at - CLOCK_SKEW_S, datetime.UTC)
        end = datetime.datetime.fromtimestamp(at + ttl_s, datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=True)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        return Workload(
            uri, cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem, at + ttl_s, at + ttl_s / 2
        )


class WorkloadIdentities:
    """The workload certificates of one mesh, issued on first use and renewed when due."""

    def __init__(self) -> None:
        self.authority: Authority | None = None
        self._authority_key: tuple[str, str] | None = None  # (trust domain, CA pem) it was made for
        self.issued: dict[str, Workload] = {}

    def _authority_for(self, mesh: ir.Mesh) -> Authority:
        key = (mesh.trust_domain, mesh.ca.cert_pem if mesh.ca else "")
        if self.authority is None or key != self._authority_key:
            self.authority = Authority(mesh.ca, mesh.trust_domain)
            self._authority_key = key
            self.issued.clear()  # certificates of another CA are no use
        return self.authority

    def secrets(
        self, mesh: ir.Mesh, gateway_group: str, now: float | None = None
    ) -> tuple[dict[str, bytes], dict[str, dict[str, bytes]]]:
        """(the gateway's mesh secrets, each backend group's), serialized; certificates past
        their renewal time (or for a changed lifetime) are issued again."""
        at = time.time() if now is None else now
        authority = self._authority_for(mesh)
        wanted = {ir.MESH_GATEWAY_SECRET: mesh.gateway_uri(gateway_group)}
        wanted.update((ir.mesh_backend_secret(b.name), mesh.backend_uri(b.name)) for b in mesh.backends)
        for name, uri in wanted.items():
            held = self.issued.get(name)
            if held is None or held.uri != uri or at >= held.renew_at or held.not_after - at > mesh.ttl_s + 1:
                self.issued[name] = authority.issue(uri, mesh.ttl_s, at)
        for gone in set(self.issued) - set(wanted):
            del self.issued[gone]
        bundle = bundle_secret(ir.TrustBundle(ir.MESH_CA_SECRET, "", authority.bundle_pem)).SerializeToString(
            deterministic=True
        )

        def secret(name: str) -> bytes:
            w = self.issued[name]
            cert = ir.Certificate(name, "", "", w.cert_pem, w.key_pem)
            data: bytes = certificate_secret(cert).SerializeToString(deterministic=True)
            return data

        gateway = {ir.MESH_CA_SECRET: bundle, ir.MESH_GATEWAY_SECRET: secret(ir.MESH_GATEWAY_SECRET)}
        backends = {
            b.group: {ir.MESH_CA_SECRET: bundle, ir.mesh_backend_secret(b.name): secret(ir.mesh_backend_secret(b.name))}
            for b in mesh.backends
        }
        return gateway, backends

    def next_renewal(self) -> float | None:
        return min((w.renew_at for w in self.issued.values()), default=None)

    def expiries(self) -> dict[str, tuple[str, str]]:
        """secret → (identity, expiry ISO 8601), for status and metrics."""
        return {
            name: (w.uri, datetime.datetime.fromtimestamp(w.not_after, datetime.UTC).isoformat())
            for name, w in self.issued.items()
        }
