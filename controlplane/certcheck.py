"""Checks on a TLS certificate file and its key, as ``validate`` reports them.

Everything here works on bytes already read; nothing knows about Envoy's configuration.
The rules mirror what makes a handshake fail or a gateway refuse to start:

- Envoy refuses RSA keys under 2048 bits and EC keys on curves other than P-256, P-384
  and P-521 ("Failed to load certificate chain ..."), and a key that does not belong to
  the first certificate of the file.
- Clients refuse expired or not yet valid certificates, names not among the
  subjectAltNames (RFC 6125: a wildcard stands for exactly one left-most label; the
  Common Name is ignored, as browsers and Go do even when there is no SAN at all), and a
  certificate whose extendedKeyUsage excludes its role.
- Clients must be able to build a chain: the file holds the leaf first, each certificate
  followed by its issuer.

**Incomplete chains and private CAs.** When the file's chain stops at a certificate that
is not self-signed and whose issuer is neither in ``extra_roots`` nor in the system trust
store, it may be a public certificate without its intermediates (the classic ``cert.pem``
instead of ``fullchain.pem``) or, just as well, a certificate from a private CA whose root
the clients are given separately. Warning on every private CA would be a warning nobody
can fix, so the warning is given only when the certificate says it comes from a public
hierarchy: the leaf asserts a CA/Browser Forum certificate policy (every publicly trusted
TLS certificate must), or the top certificate tells clients where to fetch its issuer
(Authority Information Access caIssuers: the issuer expects not to be known already).
The system store is read once, and only when such a chain needs it.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import ipaddress
import re
import ssl
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from .errors import Diagnostics

MIN_RSA_BITS = 2048
ENVOY_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
# CA/Browser Forum Baseline Requirements: a publicly trusted TLS certificate asserts one
# of these (EV, DV, OV, IV)
CABF_POLICIES = frozenset({"2.23.140.1.1", "2.23.140.1.2.1", "2.23.140.1.2.2", "2.23.140.1.2.3"})

_BEGIN = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----")


@dataclass(frozen=True)
class CertificateInfo:
    """What a policy's certificate is, for messages, the IR and ``validate`` output."""

    subject: str  # RFC 4514, e.g. "CN=api.example.com,O=Example"
    issuer: str
    not_after: datetime.datetime  # aware, UTC
    not_before: datetime.datetime
    dns_names: tuple[str, ...]
    uris: tuple[str, ...]
    ips: tuple[str, ...]
    fingerprint_sha256: str  # hex, lower case, no colons
    key_type: str  # "RSA 2048", "EC P-256", ...


def _pem_blocks(pem: bytes) -> list[tuple[str, bytes]]:
    """(label, whole block) for each PEM block; ValueError for a block without its END line."""
    blocks: list[tuple[str, bytes]] = []
    for begin in _BEGIN.finditer(pem):
        label = begin.group(1)
        end = pem.find(b"-----END " + label + b"-----", begin.end())
        if end < 0:
            raise ValueError(
                f"the '-----BEGIN {label.decode()}-----' block #{len(blocks) + 1} has no END line (a truncated file?)"
            )
        blocks.append((label.decode(), pem[begin.start() : end + len(label) + 14]))
    return blocks


def _not_pem(data: bytes, what: str) -> str:
    if not data.strip():
        return "is empty"
    if what == "CERTIFICATE":
        try:
            x509.load_der_x509_certificate(data)
        except ValueError:
            pass
        else:
            return "holds a DER (binary) certificate, not PEM: convert it with `openssl x509 -inform der`"
    return f"is not PEM (no '-----BEGIN {what}-----' line)"


def read_certificates(pem: bytes) -> list[x509.Certificate]:
    """The certificates of a PEM file in file order (other blocks, such as a key, are skipped
    as Envoy skips them). ValueError with a reason a person can act on when there is none or
    one does not parse."""
    blocks = _pem_blocks(pem)
    if not blocks:
        raise ValueError(_not_pem(pem, "CERTIFICATE"))
    certs: list[x509.Certificate] = []
    for label, block in blocks:
        if label != "CERTIFICATE":
            continue
        try:
            certs.append(x509.load_pem_x509_certificate(block))
        except ValueError as exc:
            raise ValueError(f"certificate #{len(certs) + 1} in the file does not parse ({exc})") from None
    if not certs:
        found = ", ".join(sorted({label for label, _ in blocks}))
        raise ValueError(f"holds no certificate (only {found})")
    return certs


def _read_key(pem: bytes) -> tuple[PrivateKeyTypes | None, str, str]:
    """(key, problem, code suffix): the key, or None and why not."""
    try:
        blocks = _pem_blocks(pem)
    except ValueError as exc:
        return None, str(exc), "key-unreadable"
    keys = [block for label, block in blocks if label.endswith("PRIVATE KEY")]
    if not keys:
        if blocks:
            found = ", ".join(sorted({label for label, _ in blocks}))
            return None, f"holds no private key (only {found})", "key-unreadable"
        return None, _not_pem(pem, "PRIVATE KEY"), "key-unreadable"
    block = keys[0]
    try:
        # OpenSSL's RSA key check costs ~35 ms for 2048 bits (nearly all of a check's time);
        # _consistent checks the same numbers but for the primality of p and q
        return serialization.load_pem_private_key(block, password=None, unsafe_skip_rsa_key_validation=True), "", ""
    except TypeError:  # (cryptography's way of saying a password is needed)
        return None, "is encrypted with a passphrase; Envoy needs the key unencrypted", "key-encrypted"
    except (ValueError, UnsupportedAlgorithm) as exc:
        return None, f"does not parse as a private key ({exc})", "key-unreadable"


def _key_type(key: object) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {ENVOY_CURVES.get(key.curve.name, key.curve.name)}"
    if isinstance(key, dsa.DSAPublicKey):
        return f"DSA {key.key_size}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448"
    return type(key).__name__


def _key_problem(key: object) -> str | None:
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            return f"has a {key.key_size}-bit RSA key; Envoy requires at least {MIN_RSA_BITS} bits"
        return None
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ENVOY_CURVES:
            return f"has an EC key on {key.curve.name}; Envoy accepts only P-256, P-384 and P-521"
        return None
    return f"has a {_key_type(key)} key; Envoy accepts only RSA and ECDSA certificates"


def _spki(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _consistent(key: PrivateKeyTypes) -> bool:
    """An RSA key's private numbers agree with each other and with its public part (what
    OpenSSL's key check does, less the costly primality tests: Envoy's BoringSSL refuses
    such a key). Other key types are checked when they are loaded."""
    if not isinstance(key, rsa.RSAPrivateKey):
        return True
    n = key.private_numbers()
    p, q, e = n.p, n.q, n.public_numbers.e
    return (
        p * q == n.public_numbers.n
        and (e * n.d) % (p - 1) == 1
        and (e * n.d) % (q - 1) == 1
        and n.dmp1 == n.d % (p - 1)
        and n.dmq1 == n.d % (q - 1)
        and (n.iqmp * q) % p == 1
    )


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _names(cert: x509.Certificate) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return (), (), ()
    return (
        tuple(san.get_values_for_type(x509.DNSName)),
        tuple(san.get_values_for_type(x509.UniformResourceIdentifier)),
        tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress)),
    )


def _host(hostname: str) -> str:
    """A listener hostname without port, brackets or final dot, in lower case (A-labels)."""
    host = hostname.strip().lower()
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host[1:]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    host = host.rstrip(".")
    if not host.isascii():
        with contextlib.suppress(UnicodeError):
            host = host.encode("idna").decode("ascii")
    return host


def dns_name_covers(pattern: str, host: str) -> bool:
    """RFC 6125 §6.4.3: ``pattern`` (a DNS SAN) matches ``host``; a wildcard is the whole
    left-most label, stands for exactly one label and needs two labels after it. A wildcard
    host (``*.example.com``, a listener serving every subdomain) is covered only by the same
    wildcard."""
    pattern, host = _host(pattern), _host(host)
    if pattern == host:
        return True
    if not pattern.startswith("*."):
        return False
    rest = pattern[2:]
    if "*" in rest or "." not in rest:
        return False
    label, dot, suffix = host.partition(".")
    return bool(dot) and label not in ("", "*") and suffix == rest


def _covered(hostname: str, dns_names: Sequence[str], ips: Sequence[str]) -> bool:
    host = _host(hostname)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return any(dns_name_covers(name, host) for name in dns_names)
    return any(ipaddress.ip_address(ip) == address for ip in ips)


def _checkable(hostname: str) -> bool:
    """Whether a certificate can cover this listener hostname at all: "*" (any host) and
    Envoy's other wildcard forms ("api.*") are left alone."""
    host = _host(hostname)
    return bool(host) and "*" not in host.removeprefix("*.")


def _when(moment: datetime.datetime) -> str:
    return f"{moment:%Y-%m-%d %H:%M} UTC"


def _in(delta: datetime.timedelta) -> str:
    if delta.days >= 1:
        return f"{delta.days} day{'s' if delta.days != 1 else ''}"
    hours = int(delta.total_seconds() // 3600)
    return f"{hours} hour{'s' if hours != 1 else ''}" if hours else "less than an hour"


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


def _certificates_in(path: Path) -> list[x509.Certificate]:
    """The certificates of a trust store file; what does not parse is skipped."""
    try:
        blocks = _pem_blocks(path.read_bytes())
    except (OSError, ValueError):
        return []
    certs = []
    for label, block in blocks:
        if label == "CERTIFICATE":
            try:
                with warnings.catch_warnings():  # a store's old roots (negative serial numbers) are not ours to fix
                    warnings.simplefilter("ignore")
                    certs.append(x509.load_pem_x509_certificate(block))
            except ValueError:
                continue
    return certs


@functools.cache
def _public_roots() -> dict[bytes, tuple[x509.Certificate, ...]]:
    """The system trust store (and certifi's, when installed) by subject, read once. The
    hashed directory is read only when no bundle file is there: it holds the same roots."""
    paths = ssl.get_default_verify_paths()
    files = [Path(p) for p in dict.fromkeys((paths.cafile, paths.openssl_cafile)) if p]
    try:
        import certifi  # type: ignore[import-not-found, unused-ignore]

        files.append(Path(certifi.where()))
    except ImportError:
        pass
    certs = [cert for path in files if path.is_file() for cert in _certificates_in(path)]
    if not certs:
        for directory in dict.fromkeys((paths.capath, paths.openssl_capath)):
            if directory and Path(directory).is_dir():
                certs += [cert for path in sorted(Path(directory).iterdir()) for cert in _certificates_in(path)]
    roots: dict[bytes, dict[bytes, x509.Certificate]] = {}
    for cert in certs:  # (the same root may be in several files)
        roots.setdefault(cert.subject.public_bytes(), {})[cert.fingerprint(hashes.SHA256())] = cert
    return {subject: tuple(by_print.values()) for subject, by_print in roots.items()}


def _looks_public(leaf: x509.Certificate, top: x509.Certificate) -> bool:
    try:
        policies = leaf.extensions.get_extension_for_class(x509.CertificatePolicies).value
    except x509.ExtensionNotFound:
        pass
    else:
        if any(p.policy_identifier.dotted_string in CABF_POLICIES for p in policies):
            return True
    try:
        aia = top.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return False
    return any(d.access_method == AuthorityInformationAccessOID.CA_ISSUERS for d in aia)


def check_certificate(
    cert_pem: bytes,
    key_pem: bytes | None,
    diags: Diagnostics,
    file: str,
    pointer: str,
    *,
    hostnames: Sequence[str] = (),
    warn_days: int = 30,
    now: datetime.datetime | None = None,
    code_prefix: str = "certificate",
    cert_path: str | None = None,
    key_path: str | None = None,
    key_pointer: str | None = None,
    purpose: Literal["server", "client"] | None = None,
    extra_roots: Sequence[x509.Certificate] = (),
) -> CertificateInfo | None:
    """Check a certificate file (leaf first, then its chain) and its key; report every
    finding to ``diags`` at ``file``/``pointer`` (the policy's place; ``key_pointer`` for
    findings about the key alone, default ``pointer``). ``cert_path``/``key_path`` name the
    files in messages. ``hostnames`` are those the certificate serves ("*" and other
    wildcards a certificate cannot cover are skipped). ``purpose``, when given, is the
    role the extendedKeyUsage must allow (a client certificate as a listener's is refused).
    ``extra_roots`` count as trusted roots for the chain check (a private CA the caller
    knows). None when no certificate can be read; otherwise the leaf's description, even
    with errors reported.
    """
    now = now or datetime.datetime.now(datetime.UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=datetime.UTC)
    cert_name = cert_path or "the certificate file"
    key_name = key_path or "the key file"
    key_ptr = pointer if key_pointer is None else key_pointer

    def error(message: str, code: str, ptr: str = pointer) -> None:
        diags.error(message, file, ptr, f"{code_prefix}-{code}")

    def warning(message: str, code: str) -> None:
        diags.warning(message, file, pointer, f"{code_prefix}-{code}")

    certs: list[x509.Certificate] = []
    try:
        certs = read_certificates(cert_pem)
    except ValueError as exc:
        error(f"{cert_name} {exc}", "unreadable")
    key: PrivateKeyTypes | None = None
    if key_pem is not None:
        key, problem, code = _read_key(key_pem)
        if key is None:
            error(f"{key_name} {problem}", code, key_ptr)
    if not certs:
        return None

    leaf = certs[0]
    where = f"certificate {_subject(leaf)} in {cert_name}"
    public_key = leaf.public_key()
    if key is not None and _spki(key.public_key()) != _spki(public_key):
        mine = _spki(key.public_key())
        owner = next((i for i, c in enumerate(certs) if _spki(c.public_key()) == mine), None)
        if owner is not None:
            error(
                f"the key in {key_name} belongs to certificate #{owner + 1} ({_subject(certs[owner])}) of "
                f"{cert_name}, not to the first one ({_subject(leaf)}): the certificate of the key comes first, "
                "followed by its issuers",
                "key-mismatch",
                key_ptr,
            )
        else:
            error(f"the key in {key_name} does not belong to the {where}", "key-mismatch", key_ptr)
    elif key is not None and not _consistent(key):
        error(
            f"the key in {key_name} is corrupt: its private part does not match its public part", "key-corrupt", key_ptr
        )
    weak = _key_problem(public_key)
    if weak:
        error(f"the {where} {weak}", "weak-key")

    for number, cert in enumerate(certs, 1):
        which = where if number == 1 else f"certificate #{number} ({_subject(cert)}) in {cert_name}"
        not_after, not_before = cert.not_valid_after_utc, cert.not_valid_before_utc
        if not_after < now:
            error(f"the {which} expired on {_when(not_after)}", "expired")
        elif not_before > now:
            error(f"the {which} is not valid before {_when(not_before)}", "not-yet-valid")
        elif warn_days > 0 and not_after - now < datetime.timedelta(days=warn_days):
            warning(f"the {which} expires on {_when(not_after)}, in {_in(not_after - now)}", "expiring")

    dns_names, uris, ips = _names(leaf)
    uncovered = [h for h in hostnames if _checkable(h) and not _covered(h, dns_names, ips)]
    if uncovered:
        names = ", ".join([f"DNS:{n}" for n in dns_names] + [f"IP:{ip}" for ip in ips])
        has = f"its names are {names}" if names else "it has no DNS or IP subjectAltName (clients ignore the CN)"
        listed = ", ".join(repr(h) for h in uncovered)
        warning(f"the {where} does not cover the hostname(s) {listed}: {has}", "hostname")

    if purpose is not None:
        try:
            usages = list(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        except x509.ExtensionNotFound:
            usages = [ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE]
        wanted = ExtendedKeyUsageOID.SERVER_AUTH if purpose == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
        if wanted not in usages and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in usages:
            error(
                f"the {where} is not for {purpose} authentication (its extendedKeyUsage does not allow it): "
                "clients refuse it",
                "usage",
            )

    _check_chain(certs, cert_name, extra_roots, error, warning)

    return CertificateInfo(
        subject=leaf.subject.rfc4514_string(),
        issuer=leaf.issuer.rfc4514_string(),
        not_after=leaf.not_valid_after_utc,
        not_before=leaf.not_valid_before_utc,
        dns_names=dns_names,
        uris=uris,
        ips=ips,
        fingerprint_sha256=leaf.fingerprint(hashes.SHA256()).hex(),
        key_type=_key_type(public_key),
    )


def _check_chain(
    certs: Sequence[x509.Certificate],
    cert_name: str,
    extra_roots: Sequence[x509.Certificate],
    error: Callable[[str, str], None],
    warning: Callable[[str, str], None],
) -> None:
    def label(i: int) -> str:
        return f"#{i + 1} ({_subject(certs[i])})"

    # the chain as clients build it: from the leaf, each certificate's issuer among the others
    chain = [0]
    while True:
        current = certs[chain[-1]]
        if _issued_by(current, current):
            break
        step = chain[-1] + 1
        following = [step] if step < len(certs) else []
        issuer = next(
            (i for i in [*following, *range(len(certs))] if i not in chain and _issued_by(current, certs[i])), None
        )
        if issuer is None:
            break
        chain.append(issuer)
    strays = [i for i in range(len(certs)) if i not in chain]
    for i in strays:
        error(
            f"certificate {label(i)} in {cert_name} is not in the chain of the first one: it issued none of "
            "the others; remove it",
            "chain",
        )
    if [i for i in range(len(certs)) if i in chain] != chain:
        order = ", ".join(label(i) for i in chain)
        error(
            f"the certificates in {cert_name} are out of order: each must be followed by its issuer, i.e. {order}",
            "chain-order",
        )

    top = certs[chain[-1]]
    if _issued_by(top, top) or not _looks_public(certs[0], top):
        return  # a root, or a private CA's certificate whose root clients get otherwise (module docstring)
    known = [*extra_roots, *_public_roots().get(top.issuer.public_bytes(), ())]
    if any(_issued_by(top, root) for root in known):
        return
    warning(
        f"chain incomplete: {_subject(top)} is issued by {top.issuer.rfc4514_string()}, which is neither in "
        f"{cert_name} nor a public root (add the intermediate certificates, or ignore this for a private CA)",
        "chain-incomplete",
    )
