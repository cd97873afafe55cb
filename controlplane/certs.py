"""X.509 certificates: a private CA and the server/client certificates it signs.

``run`` uses it to give the local Envoy and the control plane an mTLS channel without
any setup; the tests use it for real certificates, including the awkward ones a
certificate check must catch (small RSA keys, expired, not yet valid, chains through
intermediate CAs, encrypted keys).
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KeyType = Literal["ec", "rsa"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "P-192": ec.SECP192R1,
    "P-224": ec.SECP224R1,
    "P-256": ec.SECP256R1,
    "P-384": ec.SECP384R1,
    "P-521": ec.SECP521R1,
    "secp256k1": ec.SECP256K1,
}


@dataclass(frozen=True)
class Issued:
    cert: Path  # the leaf; with ``issue(chain=True)`` followed by the intermediates
    key: Path
    chain: Path | None = None  # leaf + intermediate CAs (never the root), when issued by an intermediate


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _new_key(key_type: KeyType, rsa_bits: int, curve: str) -> PrivateKey:
    if key_type == "rsa":
        # (cryptography refuses fewer than 1024 bits; enough to make the too-small case)
        return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    if key_type == "ec":
        return ec.generate_private_key(_CURVES[curve]())
    raise ValueError(f"key_type must be 'ec' or 'rsa', not {key_type!r}")


def _write_key(key: PrivateKey, path: Path, password: bytes | None = None) -> None:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    )
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption))


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _validity(
    builder: x509.CertificateBuilder, days: float, not_before: datetime.datetime | None
) -> x509.CertificateBuilder:
    # (five minutes back by default: a clock a little behind ours still accepts the certificate)
    start = not_before or datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    return builder.not_valid_before(start).not_valid_after(start + datetime.timedelta(days=days))


class CertificateAuthority:
    """A CA writing its certificate to ``directory/<name>.pem``.

    ``parent`` (see :meth:`intermediate`) makes it an intermediate CA signed by that one;
    ``intermediates`` is then the path from this CA up to, not including, the root.
    """

    def __init__(
        self,
        directory: Path,
        name: str = "test-ca",
        *,
        key_type: KeyType = "ec",
        rsa_bits: int = 2048,
        curve: str = "P-256",
        days: float = 2,
        not_before: datetime.datetime | None = None,
        parent: CertificateAuthority | None = None,
    ):
        self.directory = directory
        self.name = name
        self.key: PrivateKey = _new_key(key_type, rsa_bits, curve)
        self.parent = parent
        signer = parent.key if parent else self.key
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(parent.cert.subject if parent else _name(name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
        )
        if parent:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(parent.key.public_key()), critical=False
            )
        self.cert: x509.Certificate = _validity(builder, days, not_before).sign(signer, hashes.SHA256())
        self.intermediates: tuple[x509.Certificate, ...] = (self.cert, *parent.intermediates) if parent else ()
        self.path = directory / f"{name}.pem"
        self.path.write_bytes(_pem(self.cert))

    @property
    def root(self) -> CertificateAuthority:
        return self.parent.root if self.parent else self

    def intermediate(
        self,
        name: str,
        *,
        key_type: KeyType = "ec",
        rsa_bits: int = 2048,
        curve: str = "P-256",
        days: float = 2,
        not_before: datetime.datetime | None = None,
    ) -> CertificateAuthority:
        """A CA signed by this one, writing its files to the same directory."""
        return CertificateAuthority(
            self.directory,
            name,
            key_type=key_type,
            rsa_bits=rsa_bits,
            curve=curve,
            days=days,
            not_before=not_before,
            parent=self,
        )

    def issue(
        self,
        cn: str,
        sans: Sequence[str] = (),
        client: bool = False,
        unit: str | None = None,
        *,
        key_type: KeyType = "ec",
        rsa_bits: int = 2048,
        curve: str = "P-256",
        days: float = 1,
        not_before: datetime.datetime | None = None,
        uris: Sequence[str] = (),
        chain: bool = False,
        stem: str | None = None,
        password: bytes | None = None,
        extensions: Sequence[x509.ExtensionType] = (),
    ) -> Issued:
        """A leaf certificate for ``cn``, valid ``days`` from ``not_before`` (a past start
        and few days make an expired one).

        ``sans``: DNS names or IP addresses (default ``cn``); ``uris``: URI SANs such as
        ``spiffe://…``. ``chain`` writes the intermediates after the leaf in the cert file;
        ``Issued.chain`` is such a file either way when this CA is an intermediate.
        ``stem`` names the files (default ``cn``); ``password`` encrypts the key;
        ``extensions`` are added as they are (not critical).
        """
        key = _new_key(key_type, rsa_bits, curve)
        alt: list[x509.GeneralName] = []
        for san in sans or ([] if uris else [cn]):
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(san)))
            except ValueError:
                alt.append(x509.DNSName(san))
        alt.extend(x509.UniformResourceIdentifier(uri) for uri in uris)
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        subject = _name(cn)
        if unit:
            subject = x509.Name([*subject, x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        for extension in extensions:
            builder = builder.add_extension(extension, critical=False)
        cert = _validity(builder, days, not_before).sign(self.key, hashes.SHA256())
        name = stem or cn
        full = _pem(cert) + b"".join(_pem(c) for c in self.intermediates)
        chain_path = None
        if self.intermediates:
            chain_path = self.directory / f"{name}.chain.crt"
            chain_path.write_bytes(full)
        out = Issued(self.directory / f"{name}.crt", self.directory / f"{name}.key", chain_path)
        out.cert.write_bytes(full if chain else _pem(cert))
        _write_key(key, out.key, password)
        return out
