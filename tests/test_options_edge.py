"""Every documented edge option, through a real Envoy: response header hygiene, HSTS,
hostnames, escaped slashes, request ids, listener timeouts and route timeouts.

Timeouts are small and every check waits on what Envoy does when one fires (its reply,
its close, its counter) with a generous deadline, never on the clock alone.
"""

from __future__ import annotations

import dataclasses
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from controlplane.echo import EchoServer
from tests.harness import Gateway, Response, free_port, parse_response
from tests.xds_harness import wait_for

pytestmark = pytest.mark.envoy

SPEC = """
openapi: 3.0.3
info: {title: items, version: "1"}
servers: [{url: /items}]
paths:
  /list:
    get: {operationId: list, responses: {"200": {description: ok}}}
  /list/{name}:
    get:
      operationId: item
      parameters: [{name: name, in: path, required: true, schema: {type: string}}]
      responses: {"200": {description: ok}}
  /write:
    post: {operationId: write, responses: {"200": {description: ok}}}
"""

HOST = "api.example.com"


def policy(plain: int) -> str:
    return f"""
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
headers:
  removeResponseHeaders: [X-Internal-Trace-Id]
  strictTransportSecurity: "max-age=600"
listeners:
  - name: edge
    address: 127.0.0.1
    port: {{{{PORT}}}}
    hostnames: [{HOST}, "*.example.org"]
    escapedSlashes: unescapeAndRedirect
    trustClientRequestId: true
    timeouts: {{requestHeaders: 400ms, streamIdle: 800ms, request: 1500ms, connectionIdle: 400ms}}
  - {{name: plain, address: 127.0.0.1, port: {plain}}}
upstreams:
  - {{name: backend, endpoints: ["{{{{BACKEND}}}}"]}}
  - {{name: slow, endpoints: ["{{{{BACKEND}}}}"], timeout: 300ms}}
apis:
  - {{name: x, spec: spec.yaml, upstream: backend, pathPrefix: /x}}
  - name: s
    spec: spec.yaml
    upstream: slow
    pathPrefix: /s
    listeners: [plain]
    operations: {{write: {{timeout: 5s}}}}
"""


NO_HSTS = """
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
headers: {strictTransportSecurity: false}
listeners: [{name: public, address: 127.0.0.1, port: {{PORT}}}]
upstreams: [{name: backend, endpoints: ["{{BACKEND}}"]}]
apis: [{name: x, spec: spec.yaml, upstream: backend, pathPrefix: /x}]
"""


@dataclasses.dataclass
class Edge:
    edge: Gateway  # hostnames, escaped slashes, client request ids, short listener timeouts
    plain: Gateway  # the same Envoy, a listener with the defaults

    def get(self, path: str, headers: list[tuple[str, str]] | None = None, host: str = HOST) -> Response:
        return self.edge.request("GET", path, headers=[("Host", host), *(headers or [])])

    def stat(self, name: str) -> int:
        assert self.edge.envoy is not None
        _status, body = self.edge.envoy.admin(f"/stats?filter=^{name}$")
        return sum(int(line.rsplit(":", 1)[1]) for line in body.splitlines() if line.strip())


@pytest.fixture(scope="module")
def gw(gateway_factory: Callable[..., Gateway]) -> Edge:
    plain = free_port()
    edge = gateway_factory({"spec.yaml": SPEC, "policy.yaml": policy(plain)})
    other = dataclasses.replace(edge, port=plain)
    other.wait_listening()
    return Edge(edge, other)


def received(echo: EchoServer, resp: Response) -> dict[str, Any] | None:
    rid = resp.header("x-request-id")
    return next((r for r in reversed(echo.received) if r["headers"].get("x-request-id") == rid), None)


# -- response headers ---------------------------------------------------------------------


def test_listed_and_built_in_response_headers_are_removed(gw: Edge) -> None:
    backend_sends = [
        ("X-Internal-Trace-Id", "t-1"),
        ("X-AspNet-Version", "4.0"),
        ("X-AspNetMvc-Version", "5.2"),
        ("X-Envoy-Upstream-Service-Time", "3"),
        ("X-Kept", "yes"),
    ]
    resp = gw.get("/x/list", [("X-Echo-Response-Header", f"{k}: {v}") for k, v in backend_sends])
    assert resp.status == 200
    assert resp.header("x-kept") == "yes"  # the backend did send its headers
    removed = {"x-internal-trace-id", "x-aspnet-version", "x-aspnetmvc-version", "x-envoy-upstream-service-time"}
    assert not resp.header_names() & (removed | {"server", "x-powered-by"})


@pytest.mark.parametrize(
    ("method", "path", "headers", "expected"),
    [
        ("GET", "/x/list", [], 200),
        ("GET", "/x/nothing", [], 404),
        ("POST", "/x/list", [], 405),
        ("GET", "/x/list", [("X_Under", "1")], 400),
        ("GET", "/x/list", [("Host", "other.test")], 404),  # not one of the listener's hostnames
    ],
)
def test_strict_transport_security_is_not_sent_over_plain_http(
    gw: Edge, method: str, path: str, headers: list[tuple[str, str]], expected: int
) -> None:
    """RFC 6797 §7.2: only over HTTPS (tests/test_tls.py: on every HTTPS reply)."""
    items = headers if any(k == "Host" for k, _ in headers) else [("Host", HOST), *headers]
    resp = gw.edge.request(method, path, headers=items)
    assert resp.status == expected
    assert resp.header("strict-transport-security") is None
    assert resp.header("x-content-type-options") == "nosniff"


def test_strict_transport_security_false_leaves_it_out(gateway_factory: Callable[..., Gateway]) -> None:
    gw = gateway_factory({"spec.yaml": SPEC, "policy.yaml": NO_HSTS})
    for path, expected in (("/x/list", 200), ("/x/nothing", 404)):
        resp = gw.request("GET", path)
        assert resp.status == expected
        assert resp.header("strict-transport-security") is None
        assert resp.header("x-content-type-options") == "nosniff"  # the other security headers stay


# -- hostnames ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "served"),
    [
        (HOST, True),
        ("API.Example.COM", True),
        (f"{HOST}:8443", True),  # strip_any_host_port
        (f"{HOST}.", True),  # strip_trailing_host_dot
        ("shop.example.org", True),
        ("a.b.example.org", True),
        ("example.org", False),  # *.example.org needs a label before it
        ("example.com", False),
        ("other.test", False),
        ("api.example.com.evil.test", False),
    ],
)
def test_only_the_listeners_hostnames_are_served(gw: Edge, echo: EchoServer, host: str, served: bool) -> None:
    resp = gw.get("/x/list", host=host)
    if served:
        assert resp.status == 200 and received(echo, resp) is not None, host
    else:
        assert resp.status == 404 and received(echo, resp) is None, host
        assert resp.json()["status"] == 404 and resp.json()["request_id"] == resp.header("x-request-id")
    # the listener without hostnames serves any host
    assert gw.plain.request("GET", "/x/list", headers=[("Host", host)]).status == 200


# -- escaped slashes ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "unescaped"),
    [("/x%2Flist", "/x/list"), ("/x/list%2Fwidget", "/x/list/widget"), ("/x/list%5cwidget", "/x/list/widget")],
)
def test_unescape_and_redirect_sends_the_client_to_the_unescaped_path(
    gw: Edge, echo: EchoServer, path: str, unescaped: str
) -> None:
    resp = gw.get(path)
    assert resp.status in (301, 302, 307, 308), resp.status
    assert received(echo, resp) is None
    location = resp.header("location") or ""
    assert location.endswith(unescaped), location
    followed = gw.get(unescaped)
    assert followed.status == 200
    # the other listener keeps the default: refused
    assert gw.plain.request("GET", path).status == 400


# -- request ids -----------------------------------------------------------------------------


def test_a_client_request_id_is_kept_when_trusted(gw: Edge, echo: EchoServer) -> None:
    resp = gw.get("/x/list", [("X-Request-Id", "client-chosen-7")])
    assert resp.status == 200 and resp.header("x-request-id") == "client-chosen-7"
    seen = received(echo, resp)
    assert seen is not None and seen["headers"]["x-request-id"] == "client-chosen-7"
    assert gw.edge.envoy is not None
    entry = wait_for(
        lambda: next((e for e in gw.edge.envoy.access_log() if e["request_id"] == "client-chosen-7"), None),  # type: ignore[union-attr]
        10,
        "the access log line",
    )
    assert entry["operation"] == "x.list"
    # without one, the gateway makes one; the other listener (default) replaces the client's
    assert gw.get("/x/list").header("x-request-id")
    replaced = gw.plain.request("GET", "/x/list", headers=[("X-Request-Id", "client-chosen-8")])
    assert replaced.header("x-request-id") not in (None, "client-chosen-8")


# -- listener timeouts ----------------------------------------------------------------------


@pytest.fixture
def conn(gw: Edge) -> Iterator[socket.socket]:
    s = socket.create_connection(("127.0.0.1", gw.edge.port), timeout=15)
    yield s
    s.close()


def read_reply(s: socket.socket) -> Response:
    """One response (complete by its Content-Length; Envoy's close comes a second later)."""
    data = b""
    while True:
        chunk = s.recv(65536)
        data += chunk
        head, sep, body = data.partition(b"\r\n\r\n")
        length = next(
            (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")),
            None,
        )
        if not chunk or (sep and length is not None and len(body) >= length):
            return parse_response(data)


def test_request_headers_timeout(gw: Edge, conn: socket.socket) -> None:
    before = gw.stat("http.edge.downstream_rq_header_timeout")
    conn.sendall(f"GET /x/list HTTP/1.1\r\nHost: {HOST}\r\nX-Slow: ".encode())  # and nothing more
    wait_for(lambda: gw.stat("http.edge.downstream_rq_header_timeout") == before + 1, 15, "the headers timeout")


def test_stream_idle_timeout(gw: Edge, echo: EchoServer, conn: socket.socket) -> None:
    before = gw.stat("http.edge.downstream_rq_idle_timeout")
    conn.sendall(f"POST /x/write HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 100\r\n\r\n0123456789".encode())
    resp = read_reply(conn)
    assert resp.status == 408 and resp.json()["message"] == "stream timeout"
    assert gw.stat("http.edge.downstream_rq_idle_timeout") == before + 1


def test_request_timeout(gw: Edge, conn: socket.socket) -> None:
    """A body trickled faster than the idle timeout, for longer than the request timeout."""
    before = gw.stat("http.edge.downstream_rq_timeout")
    conn.sendall(f"POST /x/write HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 100000\r\n\r\n".encode())
    deadline = time.monotonic() + 15
    while gw.stat("http.edge.downstream_rq_timeout") == before:
        assert time.monotonic() < deadline, "the request timeout never fired"
        conn.sendall(b"x" * 10)
        time.sleep(0.1)  # the trickle's pace: well inside the 800ms idle timeout
    try:
        resp = read_reply(conn)
    except ConnectionResetError:
        return  # a byte sent after the reply reset the connection: the counter said which timer fired
    assert resp.status == 408 and resp.json()["message"] == "request timeout"


def test_connection_idle_timeout(gw: Edge, conn: socket.socket) -> None:
    before = gw.stat("http.edge.downstream_cx_idle_timeout")
    conn.sendall(f"GET /x/list HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
    assert read_reply(conn).status == 200
    # Envoy counts the timeout when it fires, then drains the connection (5 s) before closing it
    wait_for(lambda: gw.stat("http.edge.downstream_cx_idle_timeout") == before + 1, 15, "the idle timeout")


# -- route timeouts ------------------------------------------------------------------------


def test_the_upstreams_timeout_bounds_its_routes_and_an_operation_overrides_it(gw: Edge) -> None:
    slow = [("X-Echo-Delay-Ms", "2000")]
    resp = gw.plain.request("GET", "/s/list", headers=slow)  # upstream slow: timeout 300ms
    assert resp.status == 504 and resp.json()["message"] == "upstream request timeout"
    resp = gw.plain.request("POST", "/s/write", headers=[("X-Echo-Delay-Ms", "600")])  # operation: 5s
    assert resp.status == 200
    assert gw.plain.request("GET", "/x/list", headers=[("X-Echo-Delay-Ms", "600")]).status == 200  # default 15s
