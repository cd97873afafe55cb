"""HTTPS at the gateway and TLS to backends, through a real Envoy (static bootstrap).

Certificates are real (controlplane/certs.py), the clients are Python's ``ssl`` module, and
each test looks at what the handshake or the backend actually saw.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from controlplane.certs import CertificateAuthority, Issued
from controlplane.echo import EchoServer
from tests.harness import Gateway, free_port, raw_request

pytestmark = pytest.mark.envoy

SPEC = """
openapi: 3.0.3
info: {title: items, version: "1"}
servers: [{url: /items}]
paths:
  /list:
    get: {operationId: list, responses: {"200": {description: ok}}}
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(d, "server-ca")
    partners = CertificateAuthority(d, "partners-ca")
    stranger = CertificateAuthority(d, "stranger-ca")
    return {
        "dir": d,
        "ca": ca,
        "rsa": ca.issue("api.example.com", ["api.example.com", "localhost"], key_type="rsa", stem="rsa"),
        "ec": ca.issue("api.example.com", ["api.example.com", "localhost"], stem="ec"),
        "admin": ca.issue("admin.example.com", ["admin.example.com"], stem="admin"),
        "partners": partners,
        "acme": partners.issue("acme", client=True, uris=["spiffe://partners/acme"], stem="acme"),
        "other": partners.issue("other", client=True, uris=["spiffe://partners/other"], stem="other"),
        "stranger": stranger.issue("acme", client=True, uris=["spiffe://partners/acme"], stem="stranger"),
    }


def tls_policy(pki: dict[str, Any], extra: str = "", client: str = "") -> str:
    return f"""
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
headers: {{strictTransportSecurity: "max-age=600"}}
listeners:
  - name: secure
    address: 127.0.0.1
    port: {{{{PORT}}}}
    hostnames: [api.example.com, admin.example.com, localhost]
    tls:
      certificates:
        - {{certFile: {pki["rsa"].cert}, keyFile: {pki["rsa"].key}}}
        - {{certFile: {pki["ec"].cert}, keyFile: {pki["ec"].key}}}
        - {{certFile: {pki["admin"].cert}, keyFile: {pki["admin"].key}, hostnames: [admin.example.com]}}
{extra}{client}
upstreams: [{{name: backend, endpoints: ["{{{{BACKEND}}}}"]}}]
apis: [{{name: x, spec: spec.yaml, upstream: backend, pathPrefix: /x}}]
"""


@pytest.fixture(scope="module")
def echo_module() -> Iterator[EchoServer]:
    server = EchoServer().start()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def secure(
    pki: dict[str, Any], tmp_path_factory: pytest.TempPathFactory, echo_module: EchoServer
) -> Iterator[tuple[Gateway, int]]:
    redirect = free_port()
    files = {
        "spec.yaml": SPEC,
        "policy.yaml": tls_policy(pki, f"      httpRedirectPort: {redirect}\n").replace(
            "{{BACKEND}}", f"127.0.0.1:{echo_module.port}"
        ),
    }
    gw = Gateway(tmp_path_factory.mktemp("gw"), files).start()
    yield gw, redirect
    gw.stop()


def context(
    pki: dict[str, Any],
    *,
    alpn: list[str] | None = None,
    max_version: ssl.TLSVersion | None = None,
    ciphers: str | None = None,
    cert: Issued | None = None,
) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki["ca"].path))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if max_version is not None:
        ctx.maximum_version = max_version
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    if cert is not None:
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
    return ctx


def handshake(port: int, ctx: ssl.SSLContext, sni: str | None = "api.example.com") -> ssl.SSLSocket:
    if sni is None:
        ctx.check_hostname = False
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    return ctx.wrap_socket(raw, server_hostname=sni)


def served(port: int, ctx: ssl.SSLContext, sni: str | None = "api.example.com") -> x509.Certificate:
    with handshake(port, ctx, sni) as s:
        der = s.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def https_get(
    port: int,
    ctx: ssl.SSLContext,
    path: str = "/x/list",
    host: str = "api.example.com",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=5)
    conn.sock = handshake(port, ctx, host)  # connect to 127.0.0.1 with the SNI and Host of ``host``
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def fingerprint(issued: Issued) -> bytes:
    cert = x509.load_pem_x509_certificate(issued.cert.read_bytes())
    return cert.fingerprint(hashes.SHA256())


# -- listener TLS --------------------------------------------------------------------------


def test_https_reaches_the_backend_with_hsts(secure: tuple[Gateway, int], pki: dict[str, Any]) -> None:
    gw, _ = secure
    status, headers, body = https_get(gw.port, context(pki))
    assert status == 200, body
    assert json.loads(body)["path"] == "/x/list"
    assert headers["strict-transport-security"] == "max-age=600"


def https_raw(port: int, ctx: ssl.SSLContext, request: bytes, sni: str = "api.example.com") -> bytes:
    with handshake(port, ctx, sni) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


@pytest.mark.parametrize(
    ("request_head", "expected"),
    [
        ("GET /x/list HTTP/1.1\r\nHost: api.example.com", 200),
        ("GET /x/nothing HTTP/1.1\r\nHost: api.example.com", 404),
        ("POST /x/list HTTP/1.1\r\nHost: api.example.com\r\nContent-Length: 0", 405),
        ("GET /x/list HTTP/1.1\r\nHost: api.example.com\r\nX_Under: 1", 400),
        ("GET /x/list HTTP/1.1\r\nHost: other.test", 404),
        # a backend's own header never replaces the gateway's
        (
            "GET /x/list HTTP/1.1\r\nHost: api.example.com\r\n"
            "X-Echo-Response-Header: Strict-Transport-Security: max-age=0",
            200,
        ),
    ],
)
def test_hsts_on_every_https_reply(
    secure: tuple[Gateway, int], pki: dict[str, Any], request_head: str, expected: int
) -> None:
    gw, _ = secure
    data = https_raw(gw.port, context(pki), request_head.encode() + b"\r\nConnection: close\r\n\r\n")
    head = data.split(b"\r\n\r\n", 1)[0].decode().lower().split("\r\n")
    assert head[0].split()[1] == str(expected)
    assert [line for line in head if line.startswith("strict-transport-security:")] == [
        "strict-transport-security: max-age=600"
    ]


def test_sni_chooses_the_certificate(secure: tuple[Gateway, int], pki: dict[str, Any]) -> None:
    gw, _ = secure
    admin = served(gw.port, context(pki), "admin.example.com")
    assert admin.fingerprint(hashes.SHA256()) == fingerprint(pki["admin"])
    api = served(gw.port, context(pki), "api.example.com")
    assert api.fingerprint(hashes.SHA256()) in (fingerprint(pki["rsa"]), fingerprint(pki["ec"]))
    # no SNI at all: the default certificates, not a closed connection
    anonymous = served(gw.port, context(pki), None)
    assert anonymous.fingerprint(hashes.SHA256()) in (fingerprint(pki["rsa"]), fingerprint(pki["ec"]))


@pytest.mark.parametrize(
    ("ciphers", "kind"), [("ECDHE-ECDSA-AES128-GCM-SHA256", "ec"), ("ECDHE-RSA-AES128-GCM-SHA256", "rsa")]
)
def test_rsa_and_ecdsa_side_by_side(secure: tuple[Gateway, int], pki: dict[str, Any], ciphers: str, kind: str) -> None:
    """A TLS 1.2 client that only speaks one signature family gets the certificate of that family."""
    gw, _ = secure
    cert = served(gw.port, context(pki, max_version=ssl.TLSVersion.TLSv1_2, ciphers=ciphers))
    assert cert.fingerprint(hashes.SHA256()) == fingerprint(pki[kind])


def test_alpn_offers_h2_then_http1(secure: tuple[Gateway, int], pki: dict[str, Any]) -> None:
    gw, _ = secure
    with handshake(gw.port, context(pki, alpn=["h2", "http/1.1"])) as s:
        assert s.selected_alpn_protocol() == "h2"
    with handshake(gw.port, context(pki, alpn=["http/1.1"])) as s:
        assert s.selected_alpn_protocol() == "http/1.1"


def test_default_versions_prefer_13_and_accept_12(secure: tuple[Gateway, int], pki: dict[str, Any]) -> None:
    gw, _ = secure
    with handshake(gw.port, context(pki)) as s:
        assert s.version() == "TLSv1.3"
    with handshake(gw.port, context(pki, max_version=ssl.TLSVersion.TLSv1_2)) as s:
        assert s.version() == "TLSv1.2"


def test_cbc_suites_are_not_offered_by_default(secure: tuple[Gateway, int], pki: dict[str, Any]) -> None:
    gw, _ = secure
    with pytest.raises(ssl.SSLError):
        handshake(gw.port, context(pki, max_version=ssl.TLSVersion.TLSv1_2, ciphers="ECDHE-RSA-AES128-SHA"))


def test_plain_http_redirect_listener(secure: tuple[Gateway, int]) -> None:
    gw, redirect = secure
    resp = raw_request(redirect, b"GET /x/list?a=1 HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n")
    assert resp.status == 301
    assert resp.header("location") == f"https://api.example.com:{gw.port}/x/list?a=1"
    assert resp.header("strict-transport-security") is None  # only over HTTPS
    # a host the listener does not serve is not redirected anywhere
    other = raw_request(redirect, b"GET / HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
    assert other.status == 404


def test_plain_text_on_the_tls_port_is_refused(secure: tuple[Gateway, int]) -> None:
    gw, _ = secure
    try:
        resp = raw_request(gw.port, b"GET /x/list HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n")
    except (OSError, ValueError):
        return  # closed without an answer
    assert resp.status != 200


def test_minimum_version_13(gateway_factory: Callable[..., Gateway], pki: dict[str, Any]) -> None:
    gw = gateway_factory({"spec.yaml": SPEC, "policy.yaml": tls_policy(pki, "      minVersion: 1.3\n")})
    with pytest.raises(ssl.SSLError):
        handshake(gw.port, context(pki, max_version=ssl.TLSVersion.TLSv1_2))
    with handshake(gw.port, context(pki)) as s:
        assert s.version() == "TLSv1.3"


# -- client certificates ---------------------------------------------------------------------


def client_policy(pki: dict[str, Any], mode: str, sans: str = "") -> str:
    return tls_policy(
        pki,
        client=f"      clientCertificate: {{caFile: {pki['partners'].path}, mode: {mode}{sans}}}\n",
    )


def refused(port: int, ctx: ssl.SSLContext) -> bool:
    """The handshake or the first request fails (TLS 1.3 reports a refused client certificate
    on the first read)."""
    try:
        https_get(port, ctx)
    except (ssl.SSLError, OSError, http.client.HTTPException):
        return True
    return False


def test_required_client_certificate(gateway_factory: Callable[..., Gateway], pki: dict[str, Any]) -> None:
    gw = gateway_factory({"spec.yaml": SPEC, "policy.yaml": client_policy(pki, "required")})
    assert refused(gw.port, context(pki))  # no certificate
    assert refused(gw.port, context(pki, cert=pki["stranger"]))  # same names, another CA
    status, _h, body = https_get(
        gw.port,
        context(pki, cert=pki["acme"]),
        headers={"X-Client-Cert-Subject": "CN=admin", "X-Client-Cert-Uri-San": "spiffe://partners/root"},
    )
    assert status == 200, body
    seen = json.loads(body)["headers"]
    assert seen["x-client-cert-subject"] == "CN=acme"
    assert seen["x-client-cert-uri-san"] == "spiffe://partners/acme"
    assert seen["x-client-cert-sha256"] == fingerprint(pki["acme"]).hex()
    assert "URI=spiffe://partners/acme" in seen["x-forwarded-client-cert"]


def test_client_certificate_sans_are_enforced(gateway_factory: Callable[..., Gateway], pki: dict[str, Any]) -> None:
    gw = gateway_factory(
        {
            "spec.yaml": SPEC,
            "policy.yaml": client_policy(pki, "required", ", subjectAltNames: [spiffe://partners/acme]"),
        }
    )
    assert refused(gw.port, context(pki, cert=pki["other"]))  # signed by the right CA, wrong identity
    status, _h, _b = https_get(gw.port, context(pki, cert=pki["acme"]))
    assert status == 200


def test_optional_client_certificate_strips_forged_headers(
    gateway_factory: Callable[..., Gateway], pki: dict[str, Any]
) -> None:
    gw = gateway_factory({"spec.yaml": SPEC, "policy.yaml": client_policy(pki, "optional")})
    forged = {
        "X-Client-Cert-Subject": "CN=acme",
        "X-Client-Cert-Sha256": "00" * 32,
        "X-Forwarded-Client-Cert": 'By=x;Hash=00;Subject="CN=acme";URI=spiffe://partners/acme',
    }
    status, _h, body = https_get(gw.port, context(pki), headers=forged)
    assert status == 200, body
    seen = json.loads(body)["headers"]
    assert not [k for k in seen if k.startswith("x-client-cert-") or k == "x-forwarded-client-cert"], seen
    assert refused(gw.port, context(pki, cert=pki["stranger"]))  # a certificate, if sent, must verify


def test_hsts_is_not_sent_over_plain_http(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory(
        {
            "spec.yaml": SPEC,
            "policy.yaml": """
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
headers: {strictTransportSecurity: "max-age=600"}
listeners: [{name: plain, address: 127.0.0.1, port: {{PORT}}}]
upstreams: [{name: backend, endpoints: ["{{BACKEND}}"]}]
apis: [{name: x, spec: spec.yaml, upstream: backend, pathPrefix: /x}]
""",
        }
    )
    for path in ("/x/list", "/nowhere"):  # a routed answer and one of the gateway's own
        resp = gw.request("GET", path)
        assert resp.header("strict-transport-security") is None
        assert resp.header("x-content-type-options") == "nosniff"


# -- upstream TLS and mTLS ------------------------------------------------------------------


@pytest.fixture(scope="module")
def mtls_backend(pki: dict[str, Any]) -> Iterator[tuple[EchoServer, dict[str, Issued]]]:
    d: Path = pki["dir"]
    backends = CertificateAuthority(d, "backend-ca")
    gateways = CertificateAuthority(d, "gateway-client-ca")
    issued = {
        "server": backends.issue("orders.internal", ["orders.internal"], stem="orders"),
        "client": gateways.issue("gateway", client=True, stem="gateway-client"),
        "wrong-client": CertificateAuthority(d, "elsewhere").issue("gateway", client=True, stem="elsewhere"),
    }
    server = EchoServer(
        tls=(str(issued["server"].cert), str(issued["server"].key)), client_ca=str(gateways.path)
    ).start()
    issued["backend-ca"] = Issued(backends.path, backends.path)
    yield server, issued
    server.shutdown()


def upstream_policy(server: EchoServer, issued: dict[str, Issued], tls: str) -> str:
    return f"""
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
listeners: [{{name: plain, address: 127.0.0.1, port: {{{{PORT}}}}}}]
upstreams:
  - name: orders
    endpoints: ["127.0.0.1:{server.port}"]
    tls: {tls}
apis: [{{name: x, spec: spec.yaml, upstream: orders, pathPrefix: /x}}]
"""


def test_upstream_mtls(
    gateway_factory: Callable[..., Gateway], mtls_backend: tuple[EchoServer, dict[str, Issued]]
) -> None:
    server, issued = mtls_backend
    tls = (
        f"{{caFile: {issued['backend-ca'].cert}, sni: orders.internal, "
        f"clientCertificate: {{certFile: {issued['client'].cert}, keyFile: {issued['client'].key}}}}}"
    )
    gw = gateway_factory({"spec.yaml": SPEC, "policy.yaml": upstream_policy(server, issued, tls)})
    resp = gw.request("GET", "/x/list")
    assert resp.status == 200, resp.body
    assert resp.json()["peer_subject"] == ["gateway"]
    assert server.server_names[-1] == "orders.internal"


@pytest.mark.parametrize(
    "case",
    ["no-client-certificate", "client-certificate-of-another-ca", "wrong-san", "unknown-server-ca"],
)
def test_upstream_mtls_refusals(
    gateway_factory: Callable[..., Gateway], mtls_backend: tuple[EchoServer, dict[str, Issued]], case: str
) -> None:
    server, issued = mtls_backend
    client = issued["wrong-client" if case == "client-certificate-of-another-ca" else "client"]
    ca = issued["client"].cert if case == "unknown-server-ca" else issued["backend-ca"].cert
    parts = [f"caFile: {ca}", "sni: orders.internal"]
    if case != "no-client-certificate":
        parts.append(f"clientCertificate: {{certFile: {client.cert}, keyFile: {client.key}}}")
    if case == "wrong-san":
        parts.append("subjectAltNames: [payments.internal]")
    gw = gateway_factory(
        {"spec.yaml": SPEC, "policy.yaml": upstream_policy(server, issued, "{" + ", ".join(parts) + "}")}
    )
    before = len(server.received)
    resp = gw.request("GET", "/x/list")
    assert resp.status == 503, resp.body
    assert len(server.received) == before


# -- what dumps show -------------------------------------------------------------------------


def test_dumps_never_print_a_private_key(tmp_path: Path, pki: dict[str, Any]) -> None:
    (tmp_path / "spec.yaml").write_text(SPEC)
    (tmp_path / "policy.yaml").write_text(
        tls_policy(pki).replace("{{PORT}}", "8443").replace("{{BACKEND}}", "127.0.0.1:9")
    )
    key_text = pki["ec"].key.read_text()
    key_line = key_text.splitlines()[1]

    def dump(*args: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "controlplane", "dump", str(tmp_path), *args], capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    import base64

    encoded = base64.b64encode(key_text.encode()).decode()[:40]
    for args in ((), ("--type", "secrets"), ("--bootstrap",), ("--ir",), ("-o", "json")):
        out = dump(*args)
        assert key_line not in out and encoded not in out, args
    assert "redacted" in dump("--type", "secrets")
    assert str(pki["ec"].key) in dump("--bootstrap")  # Envoy reads the key from the policy's file
    shown = dump("--type", "secrets", "--show-secrets", "-o", "json")
    assert encoded in shown


def test_an_api_for_certificate_holders_on_a_shared_listener(
    gateway_factory: Callable[..., Gateway], pki: dict[str, Any]
) -> None:
    """Partners present certificates on the same listener as everyone else: only their API
    requires one (and the right one), the public API does not."""
    policy = client_policy(pki, "optional").replace(
        "apis: [{name: x, spec: spec.yaml, upstream: backend, pathPrefix: /x}]",
        """apis:
  - {name: x, spec: spec.yaml, upstream: backend, pathPrefix: /x}
  - {name: p, spec: spec.yaml, upstream: backend, pathPrefix: /p,
     clientCertificate: {subjectAltNames: ["spiffe://partners/acme"]}}""",
    )
    gw = gateway_factory({"spec.yaml": SPEC, "policy.yaml": policy})
    assert https_get(gw.port, context(pki), "/x/list")[0] == 200
    status, _h, body = https_get(gw.port, context(pki), "/p/list")
    assert status == 403 and json.loads(body)["message"] == "forbidden"
    assert https_get(gw.port, context(pki, cert=pki["other"]), "/p/list")[0] == 403  # the CA's, not acme
    status, _h, body = https_get(gw.port, context(pki, cert=pki["acme"]), "/p/list")
    assert status == 200, body
    assert json.loads(body)["headers"]["x-client-cert-uri-san"] == "spiffe://partners/acme"


def test_an_api_cannot_ask_for_certificates_a_listener_never_requests(tmp_path: Path, pki: dict[str, Any]) -> None:
    from controlplane import compile

    (tmp_path / "spec.yaml").write_text(SPEC)
    (tmp_path / "policy.yaml").write_text(
        tls_policy(pki)
        .replace("{{PORT}}", "8443")
        .replace("{{BACKEND}}", "127.0.0.1:9")
        .replace("pathPrefix: /x}", "pathPrefix: /x, clientCertificate: {}}")
    )
    result = compile([tmp_path])
    errors = [d for d in result.diagnostics if d.code == "client-certificate"]
    assert len(errors) == 1 and errors[0].pointer == "/apis/0/clientCertificate", result.diagnostics
    assert "listener 'secure' asks for no client certificate" in errors[0].message
