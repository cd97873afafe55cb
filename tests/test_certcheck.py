"""controlplane.certcheck on real certificates from controlplane.certs (no Envoy here)."""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import AuthorityInformationAccessOID

from controlplane import certcheck
from controlplane.certs import CertificateAuthority, Issued
from controlplane.errors import Diagnostic, Diagnostics, Severity

POLICY = "gateway.policy.yaml"
CERT_PTR = "/listeners/0/tls/certificates/1/certFile"
KEY_PTR = "/listeners/0/tls/certificates/1/keyFile"
YEAR = 365  # long enough that the expiry warning stays out of tests about something else
UTC = datetime.UTC
# What a publicly trusted certificate asserts (CA/Browser Forum DV policy)
DV_POLICY = x509.CertificatePolicies([x509.PolicyInformation(x509.ObjectIdentifier("2.23.140.1.2.1"), None)])


class Pki:
    """root → mid → mid2, and an unrelated CA, in one directory."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.root = CertificateAuthority(directory, "root-ca", days=2 * YEAR)
        self.mid = self.root.intermediate("mid-ca", days=2 * YEAR)
        self.mid2 = self.mid.intermediate("mid2-ca", key_type="rsa", days=2 * YEAR)
        self.other = CertificateAuthority(directory, "other-ca", days=2 * YEAR)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def check(
    cert: bytes | Path, key: bytes | Path | None, **options: object
) -> tuple[certcheck.CertificateInfo | None, Diagnostics]:
    diags = Diagnostics()
    cert_pem = cert.read_bytes() if isinstance(cert, Path) else cert
    key_pem = key.read_bytes() if isinstance(key, Path) else key
    options.setdefault("cert_path", "certs/server.crt")
    options.setdefault("key_path", "certs/server.key")
    options.setdefault("key_pointer", KEY_PTR)
    info = certcheck.check_certificate(cert_pem, key_pem, diags, POLICY, CERT_PTR, **options)  # type: ignore[arg-type]
    return info, diags


def codes(diags: Diagnostics) -> list[str]:
    return [d.code for d in diags.items]


def only(diags: Diagnostics, code: str) -> Diagnostic:
    found = [d for d in diags.items if d.code == code]
    assert len(found) == 1, diags.items
    return found[0]


# --- what a good certificate gives -------------------------------------------------------------------


def test_good_ec_certificate_is_described_and_raises_nothing(pki: Pki) -> None:
    issued = pki.root.issue(
        "api.example.com", ["api.example.com", "10.1.2.3"], uris=["spiffe://example.com/gateway"], days=YEAR
    )
    info, diags = check(issued.cert, issued.key, hostnames=["api.example.com", "10.1.2.3", "*"])
    assert diags.items == []
    leaf = x509.load_pem_x509_certificate(issued.cert.read_bytes())
    assert info == certcheck.CertificateInfo(
        subject="CN=api.example.com",
        issuer="CN=root-ca",
        not_after=leaf.not_valid_after_utc,
        not_before=leaf.not_valid_before_utc,
        dns_names=("api.example.com",),
        uris=("spiffe://example.com/gateway",),
        ips=("10.1.2.3",),
        fingerprint_sha256=leaf.fingerprint(hashes.SHA256()).hex(),
        key_type="EC P-256",
    )
    assert len(info.fingerprint_sha256) == 64 and info.fingerprint_sha256 == info.fingerprint_sha256.lower()


@pytest.mark.parametrize(("options", "key_type"), [({"key_type": "rsa"}, "RSA 2048"), ({"curve": "P-384"}, "EC P-384")])
def test_keys_envoy_accepts(pki: Pki, options: dict[str, str], key_type: str) -> None:
    issued = pki.root.issue("ok.example.com", days=YEAR, stem=f"ok-{key_type}", **options)  # type: ignore[arg-type]
    info, diags = check(issued.cert, issued.key)
    assert diags.items == []
    assert info is not None and info.key_type == key_type


# --- keys ----------------------------------------------------------------------------------------------


def test_rsa_key_under_2048_bits_is_an_error(pki: Pki) -> None:
    issued = pki.root.issue("small.example.com", key_type="rsa", rsa_bits=1024, days=YEAR)
    info, diags = check(issued.cert, issued.key)
    assert info is not None and info.key_type == "RSA 1024"
    error = only(diags, "certificate-weak-key")
    assert error.severity is Severity.ERROR
    assert "1024-bit RSA" in error.message and "CN=small.example.com" in error.message
    assert "certs/server.crt" in error.message
    assert (error.file, error.pointer) == (POLICY, CERT_PTR)


@pytest.mark.parametrize("curve", ["P-224", "secp256k1"])
def test_ec_curves_envoy_refuses_are_an_error(pki: Pki, curve: str) -> None:
    issued = pki.root.issue("curve.example.com", curve=curve, days=YEAR, stem=f"curve-{curve}")
    _, diags = check(issued.cert, issued.key)
    assert "P-256, P-384 and P-521" in only(diags, "certificate-weak-key").message


def test_key_of_another_certificate_is_an_error_at_the_key(pki: Pki) -> None:
    issued = pki.root.issue("a.example.com", days=YEAR)
    stranger = pki.root.issue("b.example.com", days=YEAR)
    _, diags = check(issued.cert, stranger.key)
    error = only(diags, "certificate-key-mismatch")
    assert error.severity is Severity.ERROR and error.pointer == KEY_PTR
    assert "certs/server.key" in error.message and "CN=a.example.com" in error.message


def test_key_of_the_second_certificate_says_the_order_is_wrong(pki: Pki) -> None:
    leaf = pki.root.issue("first.example.com", days=YEAR)
    second = pki.root.issue("second.example.com", days=YEAR)
    _, diags = check(second.cert.read_bytes() + leaf.cert.read_bytes(), leaf.key)
    message = only(diags, "certificate-key-mismatch").message
    assert "certificate #2 (CN=first.example.com)" in message and "comes first" in message


@pytest.mark.parametrize("number", ["d", "dmp1", "iqmp"])
def test_corrupt_rsa_key_is_an_error(pki: Pki, number: str) -> None:
    issued = pki.root.issue("corrupt.example.com", key_type="rsa", days=YEAR)
    key = serialization.load_pem_private_key(issued.key.read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    n = key.private_numbers()
    # the right public part with one private number wrong (BoringSSL refuses such a key)
    numbers = {"p": n.p, "q": n.q, "d": n.d, "dmp1": n.dmp1, "dmq1": n.dmq1, "iqmp": n.iqmp}
    numbers[number] ^= 2
    broken = rsa.RSAPrivateNumbers(public_numbers=n.public_numbers, **numbers)
    pem_key = broken.private_key(unsafe_skip_rsa_key_validation=True).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _, diags = check(issued.cert, pem_key)
    assert only(diags, "certificate-key-corrupt").pointer == KEY_PTR


def test_encrypted_keys_are_an_error(pki: Pki) -> None:
    pkcs8 = pki.root.issue("locked.example.com", days=YEAR, password=b"secret")
    assert b"ENCRYPTED PRIVATE KEY" in pkcs8.key.read_bytes()
    _, diags = check(pkcs8.cert, pkcs8.key)
    assert "encrypted" in only(diags, "certificate-key-encrypted").message
    assert codes(diags) == ["certificate-key-encrypted"]

    key = serialization.load_pem_private_key(pkcs8.key.read_bytes(), b"secret")
    traditional = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.BestAvailableEncryption(b"secret"),
    )
    assert b"Proc-Type: 4,ENCRYPTED" in traditional
    _, diags = check(pkcs8.cert, traditional)
    assert codes(diags) == ["certificate-key-encrypted"]


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        (b"", "is empty"),
        (b"not a key at all\n", "is not PEM"),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "does not parse"),
    ],
)
def test_unreadable_keys_are_an_error(pki: Pki, key: bytes, reason: str) -> None:
    issued = pki.root.issue("plain.example.com", days=YEAR)
    info, diags = check(issued.cert, key)
    assert info is not None  # the certificate itself is fine
    error = only(diags, "certificate-key-unreadable")
    assert reason in error.message and error.message.startswith("certs/server.key ")
    assert error.pointer == KEY_PTR


def test_a_certificate_given_as_the_key_is_named(pki: Pki) -> None:
    issued = pki.root.issue("swapped.example.com", days=YEAR)
    _, diags = check(issued.cert, issued.cert)
    assert "holds no private key (only CERTIFICATE)" in only(diags, "certificate-key-unreadable").message


def test_no_key_given_checks_the_certificate_alone(pki: Pki) -> None:
    issued = pki.root.issue("alone.example.com", days=YEAR)
    info, diags = check(issued.cert, None)
    assert info is not None and diags.items == []


# --- validity ------------------------------------------------------------------------------------------


def test_expired_certificate_is_an_error_with_the_date(pki: Pki) -> None:
    issued = pki.root.issue("old.example.com", days=1, not_before=datetime.datetime(2020, 1, 1, tzinfo=UTC))
    info, diags = check(issued.cert, issued.key)
    error = only(diags, "certificate-expired")
    assert error.severity is Severity.ERROR and "expired on 2020-01-02 00:00 UTC" in error.message
    assert info is not None and info.not_after == datetime.datetime(2020, 1, 2, tzinfo=UTC)


def test_not_yet_valid_certificate_is_an_error(pki: Pki) -> None:
    start = datetime.datetime.now(UTC) + datetime.timedelta(days=3)
    issued = pki.root.issue("future.example.com", days=YEAR, not_before=start)
    _, diags = check(issued.cert, issued.key)
    assert f"not valid before {start:%Y-%m-%d %H:%M} UTC" in only(diags, "certificate-not-yet-valid").message


def test_expiring_certificate_is_a_warning_with_the_date_and_days_left(pki: Pki) -> None:
    start = datetime.datetime(2030, 1, 1, tzinfo=UTC)
    issued = pki.root.issue("soon.example.com", days=20, not_before=start)
    now = start + datetime.timedelta(days=8, hours=1)
    _, diags = check(issued.cert, issued.key, now=now)
    warning = only(diags, "certificate-expiring")
    assert warning.severity is Severity.WARNING
    assert "expires on 2030-01-21 00:00 UTC, in 11 days" in warning.message
    _, diags = check(issued.cert, issued.key, now=now, warn_days=10)
    assert diags.items == []


def test_expiring_intermediate_is_named(pki: Pki) -> None:
    mid = pki.root.intermediate("short-mid", days=5)
    issued = mid.issue("chained.example.com", days=YEAR, chain=True)
    _, diags = check(issued.cert, issued.key)
    assert [d.code for d in diags.items] == ["certificate-expiring"]  # the leaf itself lasts a year
    assert "certificate #2 (CN=short-mid)" in diags.items[0].message


# --- hostnames -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "host", "covered"),
    [
        ("api.example.com", "API.Example.com.", True),
        ("*.example.com", "api.example.com", True),
        ("*.example.com", "example.com", False),  # exactly one label
        ("*.example.com", "a.b.example.com", False),
        ("*.example.com", "*.example.com", True),  # a wildcard listener needs the wildcard
        ("api.example.com", "*.example.com", False),
        ("*.com", "example.com", False),  # two labels after the wildcard
        ("f*.example.com", "foo.example.com", False),  # only a whole-label wildcard
        ("api.*.com", "api.example.com", False),
        ("api.example.com", "api.example.com:8443", True),
    ],
)
def test_dns_name_covers(pattern: str, host: str, covered: bool) -> None:
    assert certcheck.dns_name_covers(pattern, host) is covered


def test_hostnames_not_covered_are_one_warning_naming_each(pki: Pki) -> None:
    issued = pki.root.issue("*.example.com", ["*.example.com", "10.0.0.1"], days=YEAR, stem="wild")
    hostnames = ["api.example.com", "example.com", "a.b.example.com", "10.0.0.1", "10.0.0.2", "*", "api.*"]
    _, diags = check(issued.cert, issued.key, hostnames=hostnames)
    warning = only(diags, "certificate-hostname")
    assert warning.severity is Severity.WARNING
    assert "'example.com', 'a.b.example.com', '10.0.0.2':" in warning.message
    assert "DNS:*.example.com, IP:10.0.0.1" in warning.message
    _, diags = check(issued.cert, issued.key, hostnames=["api.example.com", "*.example.com", "10.0.0.1", "*"])
    assert diags.items == []


def test_ip_hostname_needs_an_ip_san(pki: Pki) -> None:
    issued = pki.root.issue("10.9.9.9", ["ip.example.com"], days=YEAR, stem="ip-as-dns")
    _, diags = check(issued.cert, issued.key, hostnames=["10.9.9.9"])
    assert "'10.9.9.9'" in only(diags, "certificate-hostname").message
    v6 = pki.root.issue("v6", ["::1", "v6.example.com"], days=YEAR)
    assert check(v6.cert, v6.key, hostnames=["[::1]:8443", "0:0::1", "v6.example.com:443"])[1].items == []
    assert "'::2'" in only(check(v6.cert, v6.key, hostnames=["::2"])[1], "certificate-hostname").message


def test_common_name_is_not_a_hostname(pki: Pki) -> None:
    issued = pki.root.issue("cn.example.com", ["san.example.com"], days=YEAR, stem="cn-only")
    _, diags = check(issued.cert, issued.key, hostnames=["cn.example.com"])
    assert "'cn.example.com'" in only(diags, "certificate-hostname").message
    uri_only = pki.root.issue("cn2.example.com", uris=["spiffe://example.com/x"], days=YEAR, stem="uri-only")
    _, diags = check(uri_only.cert, uri_only.key, hostnames=["cn2.example.com"])
    assert "no DNS or IP subjectAltName" in only(diags, "certificate-hostname").message


def test_client_certificate_as_server_certificate_is_an_error(pki: Pki) -> None:
    client = pki.root.issue("gateway-1", client=True, days=YEAR)
    _, diags = check(client.cert, client.key, purpose="server")
    assert "not for server authentication" in only(diags, "certificate-usage").message
    assert check(client.cert, client.key, purpose="client")[1].items == []
    assert check(client.cert, client.key)[1].items == []  # no purpose, no check
    server = pki.root.issue("server-1", days=YEAR)
    assert codes(check(server.cert, server.key, purpose="client")[1]) == ["certificate-usage"]


# --- chains --------------------------------------------------------------------------------------------


def test_chain_in_order_is_fine(pki: Pki) -> None:
    issued = pki.mid2.issue("deep.example.com", days=YEAR, chain=True)
    assert issued.cert.read_bytes().count(b"BEGIN CERTIFICATE") == 3
    for cert in (issued.cert.read_bytes(), issued.cert.read_bytes() + pem(pki.root.cert)):
        _, diags = check(cert, issued.key)
        assert diags.items == []


def test_chain_out_of_order_is_an_error_giving_the_order(pki: Pki) -> None:
    issued = pki.mid2.issue("order.example.com", days=YEAR)
    leaf = issued.cert.read_bytes()
    _, diags = check(leaf + pem(pki.mid.cert) + pem(pki.mid2.cert), issued.key)
    error = only(diags, "certificate-chain-order")
    assert error.severity is Severity.ERROR
    assert "#1 (CN=order.example.com), #3 (CN=mid2-ca), #2 (CN=mid-ca)" in error.message
    assert codes(diags) == ["certificate-chain-order"]


def test_unrelated_certificate_in_the_chain_is_an_error(pki: Pki) -> None:
    issued = pki.mid.issue("stray.example.com", days=YEAR)
    _, diags = check(issued.cert.read_bytes() + pem(pki.mid.cert) + pem(pki.other.cert), issued.key)
    error = only(diags, "certificate-chain")
    assert "#3 (CN=other-ca)" in error.message and error.severity is Severity.ERROR


def test_a_namesake_of_the_issuer_is_not_its_issuer(pki: Pki, tmp_path: Path) -> None:
    namesake = CertificateAuthority(tmp_path, "mid-ca", days=YEAR)  # same name as pki.mid, another key
    issued = pki.mid.issue("namesake.example.com", days=YEAR)
    _, diags = check(issued.cert.read_bytes() + pem(namesake.cert), issued.key)
    assert "#2 (CN=mid-ca)" in only(diags, "certificate-chain").message


def test_missing_intermediate_between_leaf_and_next_is_an_error(pki: Pki) -> None:
    issued = pki.mid2.issue("gap.example.com", days=YEAR)
    _, diags = check(issued.cert.read_bytes() + pem(pki.mid.cert), issued.key)
    assert "#2 (CN=mid-ca)" in only(diags, "certificate-chain").message


def test_public_looking_certificate_without_intermediates_is_a_warning(pki: Pki) -> None:
    issued = pki.mid.issue("public.example.com", days=YEAR, extensions=[DV_POLICY], stem="public")
    _, diags = check(issued.cert, issued.key)
    warning = only(diags, "certificate-chain-incomplete")
    assert warning.severity is Severity.WARNING
    assert warning.message.startswith("chain incomplete: CN=public.example.com is issued by CN=mid-ca")
    assert "certs/server.crt" in warning.message
    # the intermediate added: its issuer (our root) is still no public root
    _, diags = check(issued.chain or Path(), issued.key)
    assert "CN=mid-ca is issued by CN=root-ca" in only(diags, "certificate-chain-incomplete").message
    # unless the caller trusts it, or the file ends with it
    _, diags = check(issued.chain or Path(), issued.key, extra_roots=[pki.root.cert])
    assert diags.items == []
    _, diags = check((issued.chain or Path()).read_bytes() + pem(pki.root.cert), issued.key)
    assert diags.items == []


def test_issuer_location_makes_a_certificate_look_public(pki: Pki) -> None:
    aia = x509.AuthorityInformationAccess(
        [x509.AccessDescription(AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier("http://x/"))]
    )
    issued = pki.mid.issue("aia.example.com", days=YEAR, extensions=[aia], stem="aia")
    _, diags = check(issued.cert, issued.key)
    assert codes(diags) == ["certificate-chain-incomplete"]


def test_private_ca_without_its_root_is_not_warned(pki: Pki) -> None:
    """The chosen quiet side: no public-CA marks, so the root is the clients' business."""
    issued = pki.mid.issue("private.example.com", days=YEAR, stem="private")
    assert check(issued.cert, issued.key)[1].items == []
    assert check(issued.chain or Path(), issued.key)[1].items == []


@pytest.fixture
def fresh_trust_store() -> Iterator[None]:
    """The system trust store read again in the test (and after it, without the test's changes)."""
    certcheck._public_roots.cache_clear()
    yield
    certcheck._public_roots.cache_clear()


def test_issuer_in_the_system_trust_store_completes_the_chain(
    pki: Pki, monkeypatch: pytest.MonkeyPatch, fresh_trust_store: None
) -> None:
    issued = pki.mid.issue("store.example.com", days=YEAR, extensions=[DV_POLICY], chain=True, stem="store")
    assert codes(check(issued.cert, issued.key)[1]) == ["certificate-chain-incomplete"]
    certcheck._public_roots.cache_clear()
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.root.path))  # read by ssl.get_default_verify_paths()
    assert check(issued.cert, issued.key)[1].items == []


def test_self_signed_certificate_is_a_complete_chain(pki: Pki) -> None:
    own = CertificateAuthority(pki.dir, "self.example.com", days=YEAR)
    key = own.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    info, diags = check(own.path, key)
    assert diags.items == [] and info is not None and info.issuer == info.subject


# --- unreadable certificate files ------------------------------------------------------------------------


def der(issued: Issued) -> bytes:
    cert = x509.load_pem_x509_certificate(issued.cert.read_bytes())
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (lambda i: b"garbage\n", "is not PEM"),
        (lambda i: b"", "is empty"),
        (der, "DER (binary)"),
        (lambda i: i.key.read_bytes(), "holds no certificate (only PRIVATE KEY)"),
        (lambda i: i.cert.read_bytes()[:200], "has no END line"),
        (lambda i: b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "#1 in the file does not parse"),
    ],
)
def test_unreadable_certificate_file_is_an_error(pki: Pki, content: object, reason: str) -> None:
    issued = pki.root.issue("unreadable.example.com", days=YEAR)
    data = content(issued)  # type: ignore[operator]
    info, diags = check(data, issued.key)
    assert info is None
    error = only(diags, "certificate-unreadable")
    assert reason in error.message and error.message.startswith("certs/server.crt ")
    assert (error.file, error.pointer) == (POLICY, CERT_PTR)
    with pytest.raises(ValueError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        certcheck.read_certificates(data)


def test_read_certificates_keeps_file_order_and_skips_other_blocks(pki: Pki) -> None:
    issued = pki.mid.issue("order2.example.com", days=YEAR)
    data = issued.key.read_bytes() + issued.cert.read_bytes() + pem(pki.mid.cert)
    subjects = [c.subject.rfc4514_string() for c in certcheck.read_certificates(data)]
    assert subjects == ["CN=order2.example.com", "CN=mid-ca"]


# --- everything at once --------------------------------------------------------------------------------


def test_every_finding_is_reported_at_once(pki: Pki) -> None:
    issued = pki.root.issue(
        "bad.example.com",
        key_type="rsa",
        rsa_bits=1024,
        days=1,
        not_before=datetime.datetime(2021, 6, 1, tzinfo=UTC),
        client=True,
    )
    stranger = pki.root.issue("stranger.example.com", days=YEAR)
    _, diags = check(
        issued.cert.read_bytes() + pem(pki.other.cert),
        stranger.key,
        hostnames=["www.example.com"],
        code_prefix="upstream-certificate",
        purpose="server",
    )
    assert sorted(codes(diags)) == sorted(
        f"upstream-certificate-{c}" for c in ("key-mismatch", "weak-key", "expired", "hostname", "usage", "chain")
    )
