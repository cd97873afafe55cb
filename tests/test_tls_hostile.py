"""Hostile clients on the gateway's HTTPS listeners, through a real Envoy (static bootstrap).

Domain fronting, forged client-certificate headers, certificates that are almost right, old
protocol versions, renegotiation, stalled handshakes, h2 via ALPN and plain text on the TLS
port. Every refusal is checked by what the client or Envoy positively saw (an alert, a close,
a status, a counter), never by waiting and seeing nothing.
"""

from __future__ import annotations

import datetime
import json
import queue
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from controlplane.certs import CertificateAuthority, Issued
from controlplane.echo import EchoServer
from tests.harness import Gateway, free_port, parse_response

pytestmark = pytest.mark.envoy

SPEC = """
openapi: 3.0.3
info: {title: items, version: "1"}
servers: [{url: /items}]
paths:
  /list:
    get: {operationId: list, responses: {"200": {description: ok}}}
"""
YEAR = 365
API, ADMIN = "api.example.com", "admin.example.com"


@dataclass(frozen=True)
class Pki:
    ca: CertificateAuthority
    api: Issued  # RSA, api.example.com and localhost: the default certificate
    admin: Issued  # admin.example.com only, chosen by SNI
    partners: CertificateAuthority
    acme: Issued  # a partner's client certificate
    expired: Issued  # same CA and identity as acme, expired
    not_yet_valid: Issued
    server_purpose: Issued  # same CA and identity, but its extendedKeyUsage is serverAuth


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(d, "server-ca", days=YEAR)
    partners = CertificateAuthority(d, "partners-ca", days=YEAR)
    now = datetime.datetime.now(datetime.UTC)
    acme = {"cn": "acme", "uris": ["spiffe://partners/acme"]}
    return Pki(
        ca=ca,
        api=ca.issue(API, [API, "localhost"], key_type="rsa", days=YEAR, stem="api"),
        admin=ca.issue(ADMIN, [ADMIN], days=YEAR, stem="admin"),
        partners=partners,
        acme=partners.issue(**acme, client=True, days=YEAR, stem="acme"),
        expired=partners.issue(
            **acme, client=True, days=2, not_before=now - datetime.timedelta(days=30), stem="acme-expired"
        ),
        not_yet_valid=partners.issue(
            **acme, client=True, days=YEAR, not_before=now + datetime.timedelta(days=2), stem="acme-future"
        ),
        server_purpose=partners.issue(**acme, days=YEAR, stem="acme-server"),
    )


def policy(pki: Pki, client: str = "", redirect: int | None = None) -> str:
    redirect_line = f"      httpRedirectPort: {redirect}\n" if redirect else ""
    return f"""
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
listeners:
  - name: secure
    address: 127.0.0.1
    port: {{{{PORT}}}}
    hostnames: [{API}, {ADMIN}, localhost]
    timeouts: {{requestHeaders: 1s}}
    tls:
{redirect_line}      certificates:
        - {{certFile: {pki.api.cert}, keyFile: {pki.api.key}}}
        - {{certFile: {pki.admin.cert}, keyFile: {pki.admin.key}, hostnames: [{ADMIN}]}}
{client}
upstreams: [{{name: backend, endpoints: ["{{{{BACKEND}}}}"]}}]
apis: [{{name: x, spec: spec.yaml, upstream: backend, pathPrefix: /x}}]
"""


@pytest.fixture(scope="module")
def redirect_port() -> int:
    """The plain-HTTP listener of ``gateways["tls"]`` that redirects to HTTPS."""
    return free_port()


@pytest.fixture(scope="module")
def gateways(gateway_factory: Callable[..., Gateway], pki: Pki, redirect_port: int) -> dict[str, Gateway]:
    """One listener without client certificates, one where they are optional, one where required."""

    def client(mode: str) -> str:
        return f"      clientCertificate: {{caFile: {pki.partners.path}, mode: {mode}}}\n"

    return {
        "tls": gateway_factory({"spec.yaml": SPEC, "policy.yaml": policy(pki, redirect=redirect_port)}),
        "optional": gateway_factory({"spec.yaml": SPEC, "policy.yaml": policy(pki, client("optional"))}),
        "required": gateway_factory({"spec.yaml": SPEC, "policy.yaml": policy(pki, client("required"))}),
    }


def context(pki: Pki, cert: Issued | None = None, alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca.path))
    if cert is not None:
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def connect(port: int, ctx: ssl.SSLContext, sni: str | None = API) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    return ctx.wrap_socket(raw, server_hostname=sni)


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def exchange(port: int, ctx: ssl.SSLContext, head: str, sni: str | None = API) -> tuple[bytes, x509.Certificate]:
    """One request (``head`` without its blank line) on a new TLS connection: the raw answer
    and the certificate the gateway presented."""
    with connect(port, ctx, sni) as s:
        der = s.getpeercert(binary_form=True)
        assert der is not None
        s.sendall(head.encode() + b"\r\nConnection: close\r\n\r\n")
        return read_all(s), x509.load_der_x509_certificate(der)


def alert(port: int, ctx: ssl.SSLContext) -> str:
    """The reason of the alert that ends the client's handshake. With TLS 1.2 it ends the
    handshake itself; with TLS 1.3 it shows on the client's first read (the client sends
    nothing, so that its data cannot race the alert into a reset)."""
    try:
        with connect(port, ctx) as s:
            data = s.recv(1)
    except ssl.SSLError as exc:
        return str(exc.reason)
    raise AssertionError(f"no alert: the connection gave {data!r}")


def stat(gw: Gateway, name: str, port: int | None = None) -> int:
    """A counter of one of the gateway's listeners (``listener.127.0.0.1_PORT.<name>``; the
    HTTPS listener unless ``port`` says another)."""
    assert gw.envoy is not None
    full = f"listener.127.0.0.1_{port or gw.port}.{name}"
    _status, body = gw.envoy.admin(f"/stats?filter=^{re.escape(full)}$")
    for line in body.splitlines():
        key, _, value = line.partition(": ")
        if key == full:
            return int(value)
    raise AssertionError(f"no counter {full}: {body!r}")


def fingerprint(issued: Issued) -> bytes:
    return x509.load_pem_x509_certificate(issued.cert.read_bytes()).fingerprint(hashes.SHA256())


# -- domain fronting: SNI and Host ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sni", "host", "served_by"),
    [
        (API, API, "api"),
        ("localhost", API, "api"),  # one certificate covers both: a client may reuse the connection
        (ADMIN, ADMIN, "admin"),
        ("ADMIN.Example.COM", ADMIN, "admin"),  # SNI is case-insensitive
    ],
)
def test_host_covered_by_the_presented_certificate_is_served(
    gateways: dict[str, Gateway], pki: Pki, sni: str, host: str, served_by: str
) -> None:
    ctx = context(pki)
    ctx.check_hostname = False  # (the upper-case SNI; the certificate is compared below)
    answer, cert = exchange(gateways["tls"].port, ctx, f"GET /x/list HTTP/1.1\r\nHost: {host}", sni)
    assert cert.fingerprint(hashes.SHA256()) == fingerprint(getattr(pki, served_by))
    assert parse_response(answer).status == 200, answer[:300]


@pytest.mark.parametrize(
    ("sni", "host", "h2"), [(ADMIN, API, False), (API, ADMIN, False), (ADMIN, API, True)], ids=["1", "2", "h2"]
)
def test_host_outside_the_presented_certificate_is_misdirected(
    gateways: dict[str, Gateway], pki: Pki, echo: EchoServer, sni: str, host: str, h2: bool
) -> None:
    """The client verified a certificate for ``sni`` only; a request for another host on that
    connection (a browser coalescing h2 connections does this too) is answered 421
    (RFC 9110 §15.5.20) and never reaches the backend."""
    before = len(echo.received)
    port = gateways["tls"].port
    if h2:
        with connect(port, context(pki, alpn=["h2"]), sni) as s:
            request = [(":method", "GET"), (":scheme", "https"), (":authority", host), (":path", "/x/list")]
            headers, body = h2_get(s, request)
        assert headers[":status"] == "421", body
    else:
        answer, _cert = exchange(port, context(pki), f"GET /x/list HTTP/1.1\r\nHost: {host}", sni)
        assert parse_response(answer).status == 421, answer[:300]
    assert len(echo.received) == before


# -- forged client-certificate headers ---------------------------------------------------------------------

# every name a backend might read as the client certificate (CGI and PHP turn '.' into '_')
FORGED_FAMILY = [
    "X-Client-Cert-Subject",
    "x-client-cert-subject",  # a second copy, lower case
    "X-CLIENT-CERT-URI-SAN",
    "X-Client.Cert-Subject",
    "X-Client-Cert.Sha256",
    "X.Client.Cert.Dns.San",
    "X-Client-Cert-Fingerprint",  # a member of the family the gateway does not set
    "X-Forwarded-Client-Cert",
    "x-forwarded-client-cert",
]
FORGED_XFCC_PUNCTUATION = ["X-Forwarded-Client.Cert", "X.Forwarded.Client.Cert", "X-Forwarded.Client-Cert"]


def forged_request(names: list[str]) -> str:
    lines = [f"{name}: FORGED-{i}" for i, name in enumerate(names)]
    return "GET /x/list HTTP/1.1\r\nHost: api.example.com\r\n" + "\r\n".join(lines)


def backend_saw(answer: bytes) -> list[tuple[str, str]]:
    response = parse_response(answer)
    assert response.status == 200, answer[:500]
    return [(k, v) for k, v in json.loads(response.body)["header_list"]]


LISTENERS = [("tls", False), ("optional", False), ("optional", True), ("required", True)]
LISTENER_IDS = ["no-client-certificates", "optional-none-sent", "optional-sent", "required"]


def check_certificate_headers(seen: list[tuple[str, str]], pki: Pki, with_cert: bool) -> None:
    assert not [(k, v) for k, v in seen if "FORGED" in v], seen
    family = sorted(k for k, _ in seen if re.sub(r"[^a-z0-9]", "-", k).startswith(("x-client-cert", "x-forwarded-cl")))
    if not with_cert:
        assert family == [], seen
        return
    # the gateway's own copies, one of each
    assert family == sorted(
        ["x-client-cert-subject", "x-client-cert-uri-san", "x-client-cert-sha256", "x-forwarded-client-cert"]
    ), seen
    values = dict(seen)
    assert values["x-client-cert-subject"] == "CN=acme"
    assert values["x-client-cert-uri-san"] == "spiffe://partners/acme"
    assert values["x-client-cert-sha256"] == fingerprint(pki.acme).hex()
    assert f"Hash={fingerprint(pki.acme).hex()}" in values["x-forwarded-client-cert"]


@pytest.mark.parametrize(("listener", "with_cert"), LISTENERS, ids=LISTENER_IDS)
def test_forged_client_certificate_headers_never_reach_the_backend(
    gateways: dict[str, Gateway], pki: Pki, listener: str, with_cert: bool
) -> None:
    ctx = context(pki, pki.acme if with_cert else None)
    answer, _cert = exchange(gateways[listener].port, ctx, forged_request(FORGED_FAMILY))
    check_certificate_headers(backend_saw(answer), pki, with_cert)


@pytest.mark.parametrize(("listener", "with_cert"), LISTENERS, ids=LISTENER_IDS)
def test_punctuated_forwarded_client_cert_never_reaches_the_backend(
    gateways: dict[str, Gateway], pki: Pki, listener: str, with_cert: bool
) -> None:
    ctx = context(pki, pki.acme if with_cert else None)
    answer, _cert = exchange(gateways[listener].port, ctx, forged_request(FORGED_XFCC_PUNCTUATION))
    check_certificate_headers(backend_saw(answer), pki, with_cert)


def test_underscore_variant_is_refused(gateways: dict[str, Gateway], pki: Pki, echo: EchoServer) -> None:
    before = len(echo.received)
    answer, _cert = exchange(
        gateways["required"].port, context(pki, pki.acme), forged_request(["X_Client_Cert_Subject"])
    )
    assert parse_response(answer).status == 400
    assert len(echo.received) == before


# -- client certificates that are almost right -------------------------------------------------------------


@pytest.mark.parametrize("listener", ["required", "optional"])
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"])
@pytest.mark.parametrize(
    ("which", "expected"),
    [
        ("expired", "SSLV3_ALERT_CERTIFICATE_EXPIRED"),
        ("not_yet_valid", "SSLV3_ALERT_CERTIFICATE_EXPIRED"),  # (BoringSSL's alert for both)
        ("server_purpose", "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE"),
    ],
)
def test_client_certificate_of_the_right_ca_but_unusable_is_refused(
    gateways: dict[str, Gateway],
    pki: Pki,
    echo: EchoServer,
    listener: str,
    version: ssl.TLSVersion,
    which: str,
    expected: str,
) -> None:
    gw = gateways[listener]
    failed = stat(gw, "ssl.fail_verify_error")
    before = len(echo.received)
    ctx = context(pki, getattr(pki, which))
    ctx.maximum_version = version
    assert alert(gw.port, ctx) == expected
    assert stat(gw, "ssl.fail_verify_error") == failed + 1
    # the valid certificate of the same CA and identity passes
    good = context(pki, pki.acme)
    good.maximum_version = version
    answer, _cert = exchange(gw.port, good, "GET /x/list HTTP/1.1\r\nHost: api.example.com")
    assert parse_response(answer).status == 200
    assert len(echo.received) == before + 1  # that one request, and nothing of the refused connection


# -- protocol versions, ciphers, renegotiation -------------------------------------------------------------


def legacy_context(version: ssl.TLSVersion, cafile: Path, ciphers: str = "DEFAULT:@SECLEVEL=0") -> ssl.SSLContext:
    with warnings.catch_warnings():  # (TLS 1.0 and 1.1 are deprecated: that is the point)
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = ssl.create_default_context(cafile=str(cafile))
        ctx.minimum_version = version
        ctx.maximum_version = version
    ctx.set_ciphers(ciphers)
    return ctx


@pytest.fixture(scope="module")
def legacy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """A Python TLS server that still speaks TLS 1.0 and 1.1 and every cipher: proof that the
    client of the tests below can, so that their refusals come from the gateway."""
    d = tmp_path_factory.mktemp("legacy")
    ca = CertificateAuthority(d, "legacy-ca", key_type="rsa", days=YEAR)
    cert = ca.issue("localhost", ["localhost"], key_type="rsa", days=YEAR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.minimum_version = ssl.TLSVersion.TLSv1
    server.set_ciphers("ALL:@SECLEVEL=0")
    server.load_cert_chain(str(cert.cert), str(cert.key))
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                with server.wrap_socket(conn, server_side=True) as s:
                    s.recv(1)
            except (OSError, ssl.SSLError):
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1], ca.path
    stop.set()
    thread.join(5)
    listener.close()


def handshake_version(port: int, ctx: ssl.SSLContext, sni: str) -> str:
    with connect(port, ctx, sni) as s:
        return s.version() or ""


@pytest.mark.parametrize(
    ("version", "name"), [(ssl.TLSVersion.TLSv1, "TLSv1"), (ssl.TLSVersion.TLSv1_1, "TLSv1.1")], ids=["1.0", "1.1"]
)
def test_tls_10_and_11_are_refused(
    gateways: dict[str, Gateway], pki: Pki, legacy_server: tuple[int, Path], version: ssl.TLSVersion, name: str
) -> None:
    port, legacy_ca = legacy_server
    assert handshake_version(port, legacy_context(version, legacy_ca), "localhost") == name
    with pytest.raises(ssl.SSLError) as refused:
        handshake_version(gateways["tls"].port, legacy_context(version, pki.ca.path), API)
    assert refused.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION"


@pytest.mark.parametrize("cipher", ["AES128-GCM-SHA256", "AES256-SHA", "ECDHE-RSA-AES128-SHA256"])
def test_tls_12_suites_without_forward_secrecy_or_aead_are_refused(
    gateways: dict[str, Gateway], pki: Pki, legacy_server: tuple[int, Path], cipher: str
) -> None:
    port, legacy_ca = legacy_server
    ctx = legacy_context(ssl.TLSVersion.TLSv1_2, legacy_ca, f"{cipher}:@SECLEVEL=0")
    with connect(port, ctx, "localhost") as s:
        assert s.cipher()[0] == cipher  # type: ignore[index]
    with pytest.raises(ssl.SSLError) as refused:
        handshake_version(gateways["tls"].port, legacy_context(ssl.TLSVersion.TLSv1_2, pki.ca.path, cipher), API)
    assert refused.value.reason == "SSLV3_ALERT_HANDSHAKE_FAILURE"


class SClient:
    """``openssl s_client`` with its output read line by line as it comes."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen(
            ["openssl", "s_client", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, pattern: str, timeout: float = 10) -> bool:
        """True once a line matches; False when the output ends first."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no {pattern!r} within {timeout}s: {''.join(self.seen)[-2000:]}") from None
            if line is None:
                return False
            self.seen.append(line)
            if re.search(pattern, line):
                return True

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text)
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command line tool")
def test_client_initiated_renegotiation_is_refused(gateways: dict[str, Gateway], pki: Pki, echo: EchoServer) -> None:
    port = gateways["tls"].port
    client = SClient("-connect", f"127.0.0.1:{port}", "-servername", API, "-tls1_2", "-CAfile", str(pki.ca.path))
    try:
        assert client.wait_for(r"Verify return code: 0 \(ok\)")  # the first handshake is fine
        client.send("R\n")  # s_client's command: renegotiate now
        assert client.wait_for("RENEGOTIATING")
        assert client.wait_for("alert no renegotiation"), "".join(client.seen)
        assert client.proc.wait(10) != 0  # and the connection is gone
    finally:
        client.close()


# -- stalled handshakes (slowloris on the TLS port) --------------------------------------------------------


def client_hello(pki: Pki) -> bytes:
    """The first flight of a real TLS client to the gateway."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context(pki).wrap_bio(incoming, outgoing, server_hostname=API)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def closed_within(sock: socket.socket, seconds: float) -> bytes:
    """What the gateway sent before closing; fails when it keeps the connection open longer."""
    sock.settimeout(seconds)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        raise AssertionError(f"the connection is still open after {seconds}s") from None
    return data


@pytest.mark.parametrize(
    "sent",
    ["nothing", "record-header", "half-client-hello", "client-hello-but-its-last-byte", "nothing-to-the-redirect-port"],
)
def test_a_stalled_client_hello_is_closed_by_the_listener_filter_timeout(
    gateways: dict[str, Gateway], pki: Pki, redirect_port: int, sent: str
) -> None:
    """requestHeaders (1 s here) bounds the wait for a ClientHello (or, on the plain-HTTP
    redirect port, for the first bytes of a request): the inspector gives up and Envoy closes
    the connection (downstream_pre_cx_timeout)."""
    gw = gateways["tls"]
    hello = client_hello(pki)
    prefix = {
        "record-header": hello[:5],
        "half-client-hello": hello[: len(hello) // 2],
        "client-hello-but-its-last-byte": hello[:-1],
    }.get(sent, b"")
    port = redirect_port if "redirect" in sent else gw.port
    timeouts = stat(gw, "downstream_pre_cx_timeout", port)
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(prefix)
        assert closed_within(s, 10) == b""
    assert stat(gw, "downstream_pre_cx_timeout", port) == timeouts + 1


def test_a_handshake_stalled_after_the_client_hello_is_closed(gateways: dict[str, Gateway], pki: Pki) -> None:
    gw = gateways["tls"]
    with socket.create_connection(("127.0.0.1", gw.port)) as s:
        s.sendall(client_hello(pki))
        s.settimeout(5)
        assert s.recv(5)[:1] == b"\x16"  # the ServerHello: the handshake started; the client never finishes it
        closed_within(s, 8)


# -- h2 over TLS via ALPN -----------------------------------------------------------------------------


def h2_get(sock: ssl.SSLSocket, headers: list[tuple[str, str]]) -> tuple[dict[str, str], bytes]:
    import h2.config
    import h2.connection
    import h2.events

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    conn.send_headers(1, headers, end_stream=True)
    sock.sendall(conn.data_to_send())
    response: dict[str, str] = {}
    body = b""
    while True:
        data = sock.recv(65536)
        if not data:
            raise AssertionError("the gateway closed the h2 connection before the response ended")
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                response = {str(k): str(v) for k, v in event.headers}
            elif isinstance(event, h2.events.DataReceived):
                body += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                return response, body
            elif isinstance(event, h2.events.StreamReset | h2.events.ConnectionTerminated):
                raise AssertionError(f"h2 stream refused: {event}")
        sock.sendall(conn.data_to_send())


@pytest.mark.parametrize(("listener", "with_cert"), [("tls", False), ("required", True)], ids=["tls", "mtls"])
def test_h2_over_tls_via_alpn(gateways: dict[str, Gateway], pki: Pki, listener: str, with_cert: bool) -> None:
    ctx = context(pki, pki.acme if with_cert else None, alpn=["h2", "http/1.1"])
    with connect(gateways[listener].port, ctx) as s:
        assert s.selected_alpn_protocol() == "h2"
        forged = [(name.lower(), f"FORGED-{i}") for i, name in enumerate(FORGED_FAMILY)]
        headers, body = h2_get(
            s, [(":method", "GET"), (":scheme", "https"), (":authority", API), (":path", "/x/list"), *forged]
        )
    assert headers[":status"] == "200", body
    assert "strict-transport-security" in headers
    check_certificate_headers([(k, v) for k, v in json.loads(body)["header_list"]], pki, with_cert)


# -- plain text on the TLS port -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b"GET /x/list HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",  # h2 with prior knowledge
        b"PROXY TCP4 10.0.0.1 127.0.0.1 1234 443\r\nGET /x/list HTTP/1.1\r\nHost: api.example.com\r\n\r\n",
        b"\x80\x2e\x01\x03\x01\x00\x15\x00\x00\x00\x10" + b"\x00" * 37,  # an SSLv2-style ClientHello
    ],
    ids=["http1", "h2-prior-knowledge", "proxy-protocol", "sslv2-hello"],
)
def test_plain_text_on_the_tls_port_is_closed_unanswered(
    gateways: dict[str, Gateway], echo: EchoServer, payload: bytes
) -> None:
    gw = gateways["tls"]
    before = len(echo.received)
    errors = stat(gw, "ssl.connection_error")
    with socket.create_connection(("127.0.0.1", gw.port)) as s:
        s.sendall(payload)
        answer = closed_within(s, 10)
    assert not answer.startswith((b"HTTP/", b"\x00\x00")), answer[:200]  # no HTTP/1 or h2 frame came back
    assert stat(gw, "ssl.connection_error") == errors + 1  # refused by the TLS handshake itself
    assert len(echo.received) == before
