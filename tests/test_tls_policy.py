"""Bad TLS input, as a user writes it: every finding at once, each at its file, line and JSON
pointer, a non-zero exit from ``validate``, warnings that do not fail; and a control plane
that keeps serving its last good certificate when a certificate file turns bad.

Certificates are real (controlplane/certs.py); ``compile()`` and ``python -m controlplane
validate`` are the ones users run.
"""

from __future__ import annotations

import datetime
import os
import resource
import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from controlplane.certs import CertificateAuthority, Issued
from controlplane.compiler import CompileResult, compile
from controlplane.echo import EchoServer
from controlplane.errors import Diagnostic
from controlplane.resources import Resources
from tests.conftest import REPO
from tests.harness import EnvoyProcess, free_port
from tests.xds_harness import ControlPlaneProcess, Pki, start_envoy, wait_for

SPEC = """\
openapi: 3.0.3
info: {title: items, version: "1"}
servers: [{url: /items}]
paths:
  /list:
    get: {operationId: list, responses: {"200": {description: ok}}}
  /secret:
    get: {operationId: secret, responses: {"200": {description: ok}}}
"""
HEAD = "apiVersion: controlplane.dev/v1\nkind: GatewayPolicy\n"
YEAR = 365


@dataclass(frozen=True)
class Files:
    """The certificates of this module, each a (cert, key) pair of real files."""

    dir: Path
    ca: CertificateAuthority
    good: Issued
    other: Issued
    expired: Issued
    weak: Issued
    encrypted: Issued
    expiring: Issued
    client_only: Issued
    server_only: Issued


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Files:
    d = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(d, "web-ca", days=YEAR)
    names = ["api.example.com"]
    long_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
    return Files(
        dir=d,
        ca=ca,
        good=ca.issue("api.example.com", names, days=YEAR, stem="good"),
        other=ca.issue("api.example.com", names, days=YEAR, stem="other"),
        expired=ca.issue("api.example.com", names, days=2, not_before=long_ago, stem="expired"),
        weak=ca.issue("api.example.com", names, key_type="rsa", rsa_bits=1024, days=YEAR, stem="weak"),
        encrypted=ca.issue("api.example.com", names, days=YEAR, password=b"secret", stem="encrypted"),
        expiring=ca.issue("api.example.com", names, days=10, stem="expiring"),
        client_only=ca.issue("gateway", client=True, days=YEAR, stem="client-only"),
        server_only=ca.issue("gateway", ["gateway.internal"], days=YEAR, stem="server-only"),
    )


def inputs(directory: Path, policy: str, files: dict[str, Path] | None = None) -> Path:
    """spec.yaml, policy.yaml and copies of ``files`` (name → source) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "spec.yaml").write_text(SPEC)
    for name, source in (files or {}).items():
        shutil.copy(source, directory / name)
    path = directory / "policy.yaml"
    path.write_text(HEAD + policy)
    return path


def line_of(path: Path, needle: str) -> int:
    """The 1-based line of the only line holding ``needle``."""
    lines = [i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line]
    assert len(lines) == 1, (needle, lines)
    return lines[0]


def run_validate(*args: str, cwd: Path = REPO, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    # (this checkout's controlplane, whatever the working directory and whichever is installed)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, "-m", "controlplane", "validate", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=kwargs.pop("timeout", 120),
        **kwargs,
    )


def in_file(d: Diagnostic, path: Path) -> bool:
    return bool(d.file) and Path(d.file).resolve() == path.resolve()


# -- every certificate error at once ---------------------------------------------------------------


def everything_wrong(pki: Files) -> tuple[str, dict[str, Path], list[tuple[str, str, str, str]]]:
    """A policy with one problem per entry: (policy text, files to copy, expected errors as
    (JSON pointer, code, needle on the expected line, text of the message))."""
    files = {
        "good.crt": pki.good.cert,
        "good.key": pki.good.key,
        "other.key": pki.other.key,
        "expired.crt": pki.expired.cert,
        "expired.key": pki.expired.key,
        "weak.crt": pki.weak.cert,
        "weak.key": pki.weak.key,
        "encrypted.crt": pki.encrypted.cert,
        "encrypted.key": pki.encrypted.key,
        "expiring.crt": pki.expiring.cert,
        "expiring.key": pki.expiring.key,
        "client-only.crt": pki.client_only.cert,
        "client-only.key": pki.client_only.key,
        "server-only.crt": pki.server_only.cert,
        "server-only.key": pki.server_only.key,
        "ca.pem": pki.ca.path,
    }
    policy = """\
listeners:
  - name: plain
    port: 18080
  - name: secure
    port: 18443
    hostnames: [api.example.com]
    tls:
      minVersion: "1.3"
      maxVersion: 1.2
      httpRedirectPort: 18080
      cipherSuites:
        - ECDHE-RSA-AES128-GCM-SHA256
        - RC4-MD5
      clientCertificate:
        caFile: partners-ca.pem
      certificates:
        - certFile: missing.crt
          keyFile: good.key
        - certFile: good.crt
          keyFile: other.key
        - certFile: expired.crt
          keyFile: expired.key
        - certFile: weak.crt
          keyFile: weak.key
        - certFile: good.key
          keyFile: good.key # a key where the certificate should be
        - certFile: encrypted.crt
          keyFile: encrypted.key
        - certFile: good.crt
          keyFile: good.key
          hostnames: [admin.example.com]
        - certFile: good.crt
          keyFile: missing.key
        - certFile: client-only.crt
          keyFile: client-only.key
        - certFile: expiring.crt
          keyFile: expiring.key
upstreams:
  - name: backend
    endpoints: ["127.0.0.1:9"]
    tls:
      caFile: good.key # not a CA bundle
      clientCertificate:
        certFile: server-only.crt
        keyFile: server-only.key
apis: [{name: x, spec: spec.yaml, upstream: backend, pathPrefix: /x}]
"""
    tls = "/listeners/1/tls"
    cert = tls + "/certificates"
    expected = [
        (f"{tls}/minVersion", "tls-version", 'minVersion: "1.3"', "minVersion 1.3 is above maxVersion 1.2"),
        (f"{tls}/httpRedirectPort", "port-conflict", "httpRedirectPort: 18080", ":18080"),
        (f"{tls}/cipherSuites/1", "policy-schema", "- RC4-MD5", "'RC4-MD5'"),
        (f"{tls}/clientCertificate/caFile", "unreadable-file", "caFile: partners-ca.pem", "partners-ca.pem"),
        (f"{cert}/0/certFile", "unreadable-file", "certFile: missing.crt", "missing.crt"),
        (f"{cert}/1/keyFile", "certificate-key-mismatch", "keyFile: other.key", "does not belong"),
        (f"{cert}/2/certFile", "certificate-expired", "certFile: expired.crt", "expired on "),
        (f"{cert}/3/certFile", "certificate-weak-key", "certFile: weak.crt", "1024-bit RSA key"),
        (f"{cert}/4/certFile", "certificate-unreadable", "certFile: good.key", "holds no certificate"),
        (f"{cert}/5/keyFile", "certificate-key-encrypted", "keyFile: encrypted.key", "passphrase"),
        (f"{cert}/6/hostnames", "tls-hostname", "hostnames: [admin.example.com]", "'admin.example.com'"),
        (f"{cert}/7/keyFile", "unreadable-file", "keyFile: missing.key", "missing.key"),
        (f"{cert}/8/certFile", "certificate-usage", "certFile: client-only.crt", "server authentication"),
        ("/upstreams/0/tls/caFile", "tls-ca", "caFile: good.key", "holds no certificate"),
        (
            "/upstreams/0/tls/clientCertificate/certFile",
            "certificate-usage",
            "certFile: server-only.crt",
            "client authentication",
        ),
    ]
    return policy, files, expected


def test_every_tls_error_at_once_at_its_line_and_pointer(tmp_path: Path, pki: Files) -> None:
    policy, files, expected = everything_wrong(pki)
    path = inputs(tmp_path, policy, files)
    result = compile([tmp_path])
    assert not result.ok
    listed = "\n".join(map(str, result.errors))
    assert sorted((d.pointer, d.code) for d in result.errors) == sorted((p, c) for p, c, _n, _t in expected), listed
    found = {(d.pointer, d.code): d for d in result.errors}
    for ptr, code, needle, text in expected:
        d = found[(ptr, code)]
        assert in_file(d, path), d
        assert d.line == line_of(path, needle), d
        assert text in d.message, d
    # an error never hides the warnings of the other entries
    expiring = [d for d in result.warnings if d.code == "certificate-expiring"]
    assert [d.pointer for d in expiring] == ["/listeners/1/tls/certificates/9/certFile"]


def test_validate_prints_every_tls_error_and_exits_non_zero(tmp_path: Path, pki: Files) -> None:
    policy, files, expected = everything_wrong(pki)
    path = inputs(tmp_path, policy, files)
    proc = run_validate(".", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out
    for ptr, code, needle, _text in expected:
        assert f"policy.yaml:{line_of(path, needle)} (#{ptr}): error [{code}]" in out, (ptr, out)
    assert f"{len(expected)} error(s)" in out


def test_expired_certificate_message_gives_the_date(tmp_path: Path, pki: Files) -> None:
    inputs(
        tmp_path,
        "listeners:\n  - name: secure\n    port: 18443\n    tls:\n      certificates:\n"
        "        - {certFile: expired.crt, keyFile: expired.key}\n"
        "upstreams: [{name: backend, endpoints: ['127.0.0.1:9']}]\n"
        "apis: [{name: x, spec: spec.yaml, upstream: backend, pathPrefix: /x}]\n",
        {"expired.crt": pki.expired.cert, "expired.key": pki.expired.key},
    )
    result = compile([tmp_path])
    ended = x509.load_pem_x509_certificate(pki.expired.cert.read_bytes()).not_valid_after_utc
    assert [d.code for d in result.errors] == ["certificate-expired"]
    assert f"{ended:%Y-%m-%d %H:%M} UTC" in result.errors[0].message


# -- warnings do not fail --------------------------------------------------------------------------


def expiring_policy(warn_days: int | None) -> str:
    gateway = "" if warn_days is None else f"gateway: {{certificateExpiryWarningDays: {warn_days}}}\n"
    return (
        gateway + "listeners:\n  - name: secure\n    port: 18443\n    hostnames: [api.example.com]\n"
        "    tls:\n      certificates:\n        - {certFile: expiring.crt, keyFile: expiring.key}\n"
        "upstreams: [{name: backend, endpoints: ['127.0.0.1:9']}]\n"
        "apis: [{name: x, spec: spec.yaml, upstream: backend, pathPrefix: /x}]\n"
    )


def test_expiring_certificate_is_a_warning_with_its_date_and_validate_passes(tmp_path: Path, pki: Files) -> None:
    path = inputs(
        tmp_path, expiring_policy(None), {"expiring.crt": pki.expiring.cert, "expiring.key": pki.expiring.key}
    )
    ends = x509.load_pem_x509_certificate(pki.expiring.cert.read_bytes()).not_valid_after_utc
    proc = run_validate(".", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    line = line_of(path, "certFile: expiring.crt")
    expected = (
        f"policy.yaml:{line} (#/listeners/0/tls/certificates/0/certFile): warning [certificate-expiring]: "
        f"the certificate CN=api.example.com in "
    )
    assert expected in proc.stderr, proc.stderr
    assert f"expires on {ends:%Y-%m-%d %H:%M} UTC, in 9 days" in proc.stderr
    assert "0 error(s), 1 warning(s)" in proc.stderr and "ok: 1 listener(s)" in proc.stderr
    strict = run_validate("--strict", ".", cwd=tmp_path)
    assert strict.returncode == 1 and "error [certificate-expiring]" in strict.stderr, strict.stderr


@pytest.mark.parametrize(("warn_days", "warned"), [(None, True), (11, True), (9, False), (0, False)])
def test_certificate_expiry_warning_days(tmp_path: Path, pki: Files, warn_days: int | None, warned: bool) -> None:
    """The 10-day certificate is warned about only when the window reaches its expiry."""
    inputs(tmp_path, expiring_policy(warn_days), {"expiring.crt": pki.expiring.cert, "expiring.key": pki.expiring.key})
    result = compile([tmp_path])
    assert result.ok, "\n".join(map(str, result.errors))
    codes = [d.code for d in result.warnings]
    assert ("certificate-expiring" in codes) == warned, codes


# -- versions, ciphers, hostnames, ports -----------------------------------------------------------


def listener_policy(tls_extra: str, hostnames: str = "[api.example.com]", cert_hostnames: str = "") -> str:
    hosts = f", hostnames: {cert_hostnames}" if cert_hostnames else ""
    return (
        f"listeners:\n  - name: secure\n    port: 18443\n    hostnames: {hostnames}\n    tls:\n{tls_extra}"
        f"      certificates:\n        - {{certFile: good.crt, keyFile: good.key{hosts}}}\n"
        "upstreams: [{name: backend, endpoints: ['127.0.0.1:9']}]\n"
        "apis: [{name: x, spec: spec.yaml, upstream: backend, pathPrefix: /x}]\n"
    )


def compiled(tmp_path: Path, pki: Files, policy: str) -> tuple[CompileResult, Path]:
    path = inputs(tmp_path, policy, {"good.crt": pki.good.cert, "good.key": pki.good.key})
    return compile([tmp_path]), path


def tls_params(result: CompileResult) -> Any:
    """The TlsParameters of the listener's default filter chain, as Envoy gets them."""
    from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

    assert result.resources is not None
    listener: Any = next(iter(result.resources.of(Resources.LISTENER).values()))
    context = tls_pb2.DownstreamTlsContext()
    listener.filter_chains[-1].transport_socket.typed_config.Unpack(context)
    return context.common_tls_context.tls_params


@pytest.mark.parametrize(
    ("versions", "low", "high"),
    [
        ("      minVersion: 1.2\n      maxVersion: 1.3\n", "TLSv1_2", "TLSv1_3"),  # YAML floats
        ('      minVersion: 1.3\n      maxVersion: "1.3"\n', "TLSv1_3", "TLSv1_3"),
        ("      maxVersion: 1.2\n", "TLSv1_2", "TLSv1_2"),
        ("", "TLSv1_2", "TLSv1_3"),
    ],
)
def test_versions_as_floats_or_strings(tmp_path: Path, pki: Files, versions: str, low: str, high: str) -> None:
    from envoy.extensions.transport_sockets.tls.v3 import common_pb2

    result, _path = compiled(tmp_path, pki, listener_policy(versions))
    assert result.ok, "\n".join(map(str, result.errors))
    params = tls_params(result)
    names = common_pb2.TlsParameters.TlsProtocol.Name
    assert (names(params.tls_minimum_protocol_version), names(params.tls_maximum_protocol_version)) == (low, high)


@pytest.mark.parametrize(
    "value", ["1.1", "1.0", '"1.1"', '"TLSv1.2"', "1", "1.10", "true", "1.25"], ids=lambda v: f"minVersion={v}"
)
def test_versions_envoy_cannot_serve_are_refused_by_the_schema(tmp_path: Path, pki: Files, value: str) -> None:
    result, path = compiled(tmp_path, pki, listener_policy(f"      minVersion: {value}\n"))
    assert not result.ok
    assert [(d.pointer, d.code) for d in result.errors] == [("/listeners/0/tls/minVersion", "policy-schema")]
    assert result.errors[0].line == line_of(path, "minVersion:") and in_file(result.errors[0], path)


@pytest.mark.parametrize(
    "cipher",
    ["RC4-MD5", "DES-CBC3-SHA", "AES128-GCM-SHA256", "TLS_AES_128_GCM_SHA256", "ecdhe-rsa-aes128-gcm-sha256", ""],
)
def test_unknown_or_weak_cipher_is_refused_by_the_schema(tmp_path: Path, pki: Files, cipher: str) -> None:
    extra = f'      cipherSuites: [ECDHE-RSA-AES128-GCM-SHA256, "{cipher}"]\n'
    result, path = compiled(tmp_path, pki, listener_policy(extra))
    assert [(d.pointer, d.code) for d in result.errors] == [("/listeners/0/tls/cipherSuites/1", "policy-schema")]
    assert result.errors[0].line == line_of(path, "cipherSuites:") and in_file(result.errors[0], path)


def test_min_version_above_max_version_is_an_error(tmp_path: Path, pki: Files) -> None:
    result, path = compiled(tmp_path, pki, listener_policy("      minVersion: 1.3\n      maxVersion: 1.2\n"))
    assert [(d.pointer, d.code) for d in result.errors] == [("/listeners/0/tls/minVersion", "tls-version")]
    assert result.errors[0].line == line_of(path, "minVersion: 1.3")


@pytest.mark.parametrize(
    ("listener_hosts", "cert_hosts", "error"),
    [
        ("[api.example.com]", "[admin.example.com]", True),
        ("[api.example.com, admin.example.com]", "[admin.example.com]", False),
        ("[api.example.com]", "[API.Example.COM]", False),  # host names are case-insensitive
        ("['api.example.com:18443']", "[api.example.com]", False),  # a Host header with the port
        ("['*.example.com']", "[example.com]", True),  # the wildcard needs a label in front
        ("['*.example.com']", "[api.example.com]", False),
        ("['*']", "[anything.test]", False),
    ],
)
def test_certificate_hostnames_must_be_the_listeners(
    tmp_path: Path, pki: Files, listener_hosts: str, cert_hosts: str, error: bool
) -> None:
    result, path = compiled(tmp_path, pki, listener_policy("", listener_hosts, cert_hosts))
    errors = [(d.pointer, d.code) for d in result.errors]
    assert errors == ([("/listeners/0/tls/certificates/0/hostnames", "tls-hostname")] if error else []), errors
    if error:
        assert result.errors[0].line == line_of(path, "certFile: good.crt")


def two_listeners(first: str, second: str) -> str:
    return (
        f"listeners:\n{first}{second}"
        "upstreams: [{name: backend, endpoints: ['127.0.0.1:9']}]\n"
        "apis: [{name: x, spec: spec.yaml, upstream: backend, pathPrefix: /x}]\n"
    )


def tls_listener(name: str, port: int, redirect: int) -> str:
    return (
        f"  - name: {name}\n    port: {port}\n    tls:\n      httpRedirectPort: {redirect}\n"
        "      certificates: [{certFile: good.crt, keyFile: good.key}]\n"
    )


def plain_listener(name: str, port: int) -> str:
    return f"  - name: {name}\n    port: {port}\n"


@pytest.mark.parametrize(
    ("policy", "pointer", "needle", "nth"),
    [
        (
            two_listeners(plain_listener("plain", 18080), tls_listener("secure", 18443, 18080)),
            "/listeners/1/tls/httpRedirectPort",
            "httpRedirectPort: 18080",
            0,
        ),
        (
            two_listeners(tls_listener("secure", 18443, 18080), plain_listener("plain", 18080)),
            "/listeners/1/port",
            "port: 18080",
            0,
        ),
        (
            two_listeners(tls_listener("secure", 18443, 18443), ""),
            "/listeners/0/tls/httpRedirectPort",
            "httpRedirectPort: 18443",
            0,
        ),
        (
            two_listeners(tls_listener("one", 18443, 18080), tls_listener("two", 19443, 18080)),
            "/listeners/1/tls/httpRedirectPort",
            "httpRedirectPort: 18080",
            1,
        ),
    ],
    ids=["another-listeners-port", "taken-by-a-later-listener", "its-own-port", "another-redirect-port"],
)
def test_redirect_port_conflicts(tmp_path: Path, pki: Files, policy: str, pointer: str, needle: str, nth: int) -> None:
    result, path = compiled(tmp_path, pki, policy)
    assert [(d.pointer, d.code) for d in result.errors] == [(pointer, "port-conflict")], result.errors
    d = result.errors[0]
    assert in_file(d, path)
    assert d.line == [i for i, t in enumerate(path.read_text().splitlines(), 1) if needle in t][nth]


# -- hostile file names ------------------------------------------------------------------------------


def test_a_directory_as_certificate_file_is_an_error(tmp_path: Path, pki: Files) -> None:
    path = inputs(
        tmp_path, listener_policy("").replace("certFile: good.crt", "certFile: certs"), {"good.key": pki.good.key}
    )
    (tmp_path / "certs").mkdir()
    result = compile([tmp_path])
    assert [(d.pointer, d.code) for d in result.errors] == [
        ("/listeners/0/tls/certificates/0/certFile", "unreadable-file")
    ]
    assert in_file(result.errors[0], path)


def _limited() -> None:
    # a reader that slurps an endless file must fail here, not take the shared machine's memory
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


@pytest.mark.parametrize("special", ["/dev/zero", "fifo"])
def test_a_special_file_as_certificate_is_an_error_not_a_hang(tmp_path: Path, pki: Files, special: str) -> None:
    name = special
    if special == "fifo":
        os.mkfifo(tmp_path / "fifo")
    inputs(tmp_path, listener_policy("").replace("certFile: good.crt", f"certFile: {name}"), {"good.key": pki.good.key})
    try:
        proc = run_validate(".", cwd=tmp_path, timeout=15, preexec_fn=_limited)
    except subprocess.TimeoutExpired:
        pytest.fail(f"validate still reading {special} after 15 s")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "(#/listeners/0/tls/certificates/0/certFile): error" in proc.stderr


# -- plain-HTTP upstreams ------------------------------------------------------------------------------


def upstream_policy(mode: str | None, upstreams: str, apis: str) -> str:
    gateway = f"gateway: {{requireUpstreamTls: {mode}}}\n" if mode else ""
    return gateway + "listeners: [{name: l, port: 18080}]\n" + f"upstreams:\n{upstreams}apis:\n{apis}"


PLAIN = "  - {name: plain, endpoints: ['127.0.0.1:9']}\n"
SECURE = "  - {name: secure, endpoints: ['127.0.0.1:9'], tls: true}\n"
SECURE_OBJECT = "  - {name: secure, endpoints: ['127.0.0.1:9'], tls: {sni: orders.internal}}\n"
SENSITIVE_API = "  - {name: s, spec: spec.yaml, upstream: %s, pathPrefix: /s, defaults: {sensitive: true}}\n"
ONE_SENSITIVE_OP = (
    "  - {name: s, spec: spec.yaml, upstream: %s, pathPrefix: /s, operations: {secret: {sensitive: true}}}\n"
)
ORDINARY_API = "  - {name: o, spec: spec.yaml, upstream: %s, pathPrefix: /o}\n"


@pytest.mark.parametrize(
    ("mode", "upstreams", "apis", "errors"),
    [
        ("sensitive", PLAIN, SENSITIVE_API % "plain", [("s", "plain")]),
        ("sensitive", PLAIN, ONE_SENSITIVE_OP % "plain", [("s", "plain")]),
        ("sensitive", PLAIN, ORDINARY_API % "plain", []),
        ("sensitive", SECURE, SENSITIVE_API % "secure", []),
        ("sensitive", SECURE_OBJECT, SENSITIVE_API % "secure", []),
        ("sensitive", PLAIN + SECURE, SENSITIVE_API % "secure" + ORDINARY_API % "plain", []),
        ("sensitive", PLAIN, SENSITIVE_API % "plain" + ORDINARY_API % "plain", [("s", "plain")]),
        ("all", PLAIN, ORDINARY_API % "plain", [("o", "plain")]),
        ("all", PLAIN, SENSITIVE_API % "plain" + ORDINARY_API % "plain", [("o", "plain"), ("s", "plain")]),
        ("all", SECURE, ORDINARY_API % "secure", []),
        ("all", "  - {name: h, url: 'https://orders.internal', tls: false}\n", ORDINARY_API % "h", [("o", "h")]),
        ("all", "  - {name: h, url: 'https://orders.internal'}\n", ORDINARY_API % "h", []),
        ("none", PLAIN, SENSITIVE_API % "plain", []),
        (None, PLAIN, SENSITIVE_API % "plain", []),
    ],
    ids=[
        "sensitive-api-on-plain",
        "one-sensitive-operation-on-plain",
        "ordinary-api-on-plain",
        "sensitive-api-on-tls",
        "sensitive-api-on-tls-object",
        "each-on-its-own",
        "two-apis-one-sensitive",
        "all-plain",
        "all-two-apis",
        "all-tls",
        "all-https-url-with-tls-off",
        "all-https-url",
        "none",
        "default",
    ],
)
def test_require_upstream_tls(
    tmp_path: Path, mode: str | None, upstreams: str, apis: str, errors: list[tuple[str, str]]
) -> None:
    inputs(tmp_path, upstream_policy(mode, upstreams, apis))
    result = compile([tmp_path])
    found = sorted(
        (api, up)
        for d in result.errors
        if d.code == "plaintext-upstream"
        for api, up in [(d.message.split("'")[1], d.message.split("'")[3])]
    )
    assert found == errors, "\n".join(map(str, result.errors))
    assert result.ok == (not errors), "\n".join(map(str, result.errors))
    assert all(f"requireUpstreamTls: {mode}" in d.message for d in result.errors)


def test_require_upstream_tls_all_covers_upstreams_made_from_spec_urls(tmp_path: Path) -> None:
    inputs(
        tmp_path,
        upstream_policy("all", "", "  - {name: o, spec: spec.yaml, pathPrefix: /o}\n").replace("upstreams:\n", ""),
    )
    (tmp_path / "spec.yaml").write_text(
        SPEC.replace("servers: [{url: /items}]", "servers: [{url: 'http://orders.internal/items'}]")
    )
    result = compile([tmp_path])
    assert [d.code for d in result.errors] == ["plaintext-upstream"], result.errors
    (tmp_path / "spec.yaml").write_text(
        SPEC.replace("servers: [{url: /items}]", "servers: [{url: 'https://orders.internal/items'}]")
    )
    assert compile([tmp_path]).ok


def test_require_upstream_tls_sees_operations_the_spec_marks_sensitive(tmp_path: Path) -> None:
    inputs(tmp_path, upstream_policy("sensitive", PLAIN, ORDINARY_API % "plain"))
    assert compile([tmp_path]).ok
    (tmp_path / "spec.yaml").write_text(
        SPEC.replace("get: {operationId: secret,", "get: {x-gateway: {sensitive: true}, operationId: secret,")
    )
    result = compile([tmp_path])
    assert [d.code for d in result.errors] == ["plaintext-upstream"], result.errors


def test_plaintext_upstream_error_points_at_the_policy_upstream(tmp_path: Path) -> None:
    path = inputs(tmp_path, upstream_policy("sensitive", PLAIN, SENSITIVE_API % "plain"))
    result = compile([tmp_path])
    (d,) = result.errors
    assert in_file(d, path) and d.pointer.startswith("/upstreams/0"), d
    assert d.line == line_of(path, "name: plain")


def test_empty_tls_object_means_tls(tmp_path: Path) -> None:
    inputs(
        tmp_path,
        upstream_policy("all", "  - {name: e, endpoints: ['127.0.0.1:9'], tls: {}}\n", ORDINARY_API % "e"),
    )
    result = compile([tmp_path])
    assert result.ok, "\n".join(map(str, result.errors))
    assert result.gateway is not None
    assert [u.tls for u in result.gateway.upstreams if u.name == "e"] == [True]


def test_upstream_client_certificate_must_be_for_clients(tmp_path: Path, pki: Files) -> None:
    def policy(stem: str) -> str:
        return upstream_policy(
            None,
            "  - name: orders\n    endpoints: ['127.0.0.1:9']\n    tls:\n      clientCertificate:\n"
            f"        certFile: {stem}.crt\n        keyFile: {stem}.key\n",
            ORDINARY_API % "orders",
        )

    files = {
        "server-only.crt": pki.server_only.cert,
        "server-only.key": pki.server_only.key,
        "client-only.crt": pki.client_only.cert,
        "client-only.key": pki.client_only.key,
    }
    path = inputs(tmp_path, policy("server-only"), files)
    result = compile([tmp_path])
    assert [(d.pointer, d.code) for d in result.errors] == [
        ("/upstreams/0/tls/clientCertificate/certFile", "certificate-usage")
    ]
    assert result.errors[0].line == line_of(path, "certFile: server-only.crt")
    assert "not for client authentication" in result.errors[0].message
    path.write_text(HEAD + policy("client-only"))
    assert compile([tmp_path]).ok


# -- a certificate file that turns bad while the control plane serves ------------------------------


def serial(pem: bytes) -> int:
    return x509.load_pem_x509_certificate(pem).serial_number


def presented(port: int, ca: Path) -> int:
    """The serial number of the certificate a new handshake gets."""
    ctx = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="api.example.com") as s,
    ):
        der = s.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


@pytest.fixture
def served(tmp_path: Path, echo: EchoServer) -> Iterator[dict[str, Any]]:
    xds = Pki.make(tmp_path / "xds")
    (tmp_path / "web").mkdir()
    web = CertificateAuthority(tmp_path / "web", "web-ca", days=YEAR)
    first = web.issue("api.example.com", ["api.example.com"], days=YEAR, stem="first")
    config = tmp_path / "config"
    port = free_port()
    policy = inputs(
        config,
        "listeners:\n  - name: secure\n    address: 127.0.0.1\n"
        f"    port: {port}\n"
        "    tls:\n      certificates:\n"
        "        - certFile: server.crt\n          keyFile: server.key\n"
        f"upstreams: [{{name: backend, endpoints: ['127.0.0.1:{echo.port}']}}]\n"
        "apis: [{name: x, spec: spec.yaml, upstream: backend, pathPrefix: /x}]\n",
        {"server.crt": first.cert, "server.key": first.key},
    )
    plane = ControlPlaneProcess([config], tmp_path, xds).start()
    envoys: list[EnvoyProcess] = []
    client = xds.ca.issue("gateway-1", client=True, unit="gateway", days=YEAR, stem="gateway-node")
    envoys.append(start_envoy(tmp_path, plane, client=client))
    yield {"web": web, "first": first, "config": config, "policy": policy, "port": port, "plane": plane}
    for e in envoys:
        e.stop()
    plane.stop()


def replace(config: Path, name: str, content: bytes) -> None:
    """As a certificate manager writes: a new file renamed over the old one."""
    (config / (name + ".new")).write_bytes(content)
    (config / (name + ".new")).replace(config / name)


@pytest.mark.envoy
def test_a_broken_certificate_file_keeps_the_last_good_one_until_repaired(served: dict[str, Any]) -> None:
    plane: ControlPlaneProcess = served["plane"]
    web: CertificateAuthority = served["web"]
    config: Path = served["config"]
    port: int = served["port"]
    first = serial(served["first"].cert.read_bytes())
    wait_for(lambda: presented(port, web.path) == first, 20, "the first certificate over SDS")
    good_version = plane.get("/compile")["served_version"]
    line = line_of(served["policy"], "certFile: server.crt")
    key_line = line_of(served["policy"], "keyFile: server.key")
    long_ago = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=30)
    expired = web.issue("api.example.com", ["api.example.com"], days=2, not_before=long_ago, stem="expired")
    stranger = web.issue("api.example.com", ["api.example.com"], days=YEAR, stem="stranger")
    pem = served["first"].cert.read_bytes()

    def truncated() -> None:
        replace(config, "server.crt", pem[: len(pem) // 2])

    def certificate_of_another_key() -> None:
        replace(config, "server.crt", stranger.cert.read_bytes())

    def expired_pair() -> None:
        replace(config, "server.key", expired.key.read_bytes())
        replace(config, "server.crt", expired.cert.read_bytes())

    # (breakage, the code /compile reports, the policy line it names)
    breakages: list[tuple[Callable[[], None], str, int]] = [
        (truncated, "certificate-unreadable", line),
        (certificate_of_another_key, "certificate-key-mismatch", key_line),
        (expired_pair, "certificate-expired", line),
    ]
    for breakage, code, at in breakages:
        what = breakage.__name__
        breakage()

        def reported(code: str = code) -> list[str]:
            report = plane.get("/compile")
            return [] if report["ok"] else [e for e in report["errors"] if f"[{code}]" in e]

        errors = wait_for(reported, 15, f"/compile to report the {what} certificate")
        assert len(errors) == 1 and f"policy.yaml:{at} (#/listeners/0/tls/certificates/0/" in errors[0], errors
        assert plane.get("/compile")["served_version"] == good_version, what
        # new handshakes still get the last good certificate
        assert presented(port, web.path) == first, what
    # repaired: a renewed pair, key first, then the certificate
    renewed = web.issue("api.example.com", ["api.example.com"], days=YEAR, stem="renewed")
    replace(config, "server.key", renewed.key.read_bytes())
    replace(config, "server.crt", renewed.cert.read_bytes())
    wait_for(lambda: presented(port, web.path) == serial(renewed.cert.read_bytes()), 15, "the repaired certificate")
    report = plane.get("/compile")
    assert report["ok"] and not report["errors"], report
    assert report["served_version"] != good_version
