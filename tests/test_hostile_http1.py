"""Lenient and ambiguous HTTP/1 framing through a real Envoy.

Envoy 1.40 offers no switch that refuses bare-LF line ends or obs-folded header lines (neither
BalsaParser nor the legacy parser; both were tried). The gateway pins the strictest parser
settings it has, and these tests hold what matters for request smuggling: every such request is
either refused, or reaches the backend as exactly one well-formed request whose framing is the
one the gateway saw (a folded ``Transfer-Encoding: chunked`` is text inside another header,
never a transfer coding; a body the gateway read by Content-Length is the body the backend gets).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from controlplane import compile
from controlplane.echo import EchoServer
from tests.harness import Gateway, raw_request

pytestmark = pytest.mark.envoy

SPEC = """
openapi: 3.0.3
info: {title: http1, version: "1"}
servers: [{url: /}]
paths:
  /echo:
    get: {operationId: get, responses: {"200": {description: ok}}}
    post: {operationId: post, responses: {"200": {description: ok}}}
"""
POLICY = """
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
listeners: [{name: h1, address: 127.0.0.1, port: {{PORT}}}]
upstreams: [{name: backend, endpoints: ["{{BACKEND}}"]}]
apis: [{name: api, spec: spec.yaml, upstream: backend}]
"""

SMUGGLED = b"GET /admin HTTP/1.1\r\nHost: x\r\n\r\n"

# name -> raw request; each ends the connection after itself
LENIENT = {
    "bare LF everywhere": b"GET /echo HTTP/1.1\nHost: h\nX-A: 1\nConnection: close\n\n",
    "bare LF on one header line": b"GET /echo HTTP/1.1\r\nHost: h\nX-A: 1\r\nConnection: close\r\n\r\n",
    "bare LF ending the head": b"GET /echo HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\n",
    "obs-fold carrying Transfer-Encoding": (
        b"POST /echo HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n Transfer-Encoding: chunked\r\nContent-Length: 5\r\n"
        b"Connection: close\r\n\r\n0\r\n\r\n"
    ),
    "obs-fold with a tab": b"GET /echo HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\tmore\r\nConnection: close\r\n\r\n",
    "lone CR between headers": b"GET /echo HTTP/1.1\r\nHost: h\r\nX-A: 1\rX-B: 2\r\nConnection: close\r\n\r\n",
}

REFUSED = {
    "Content-Length and Transfer-Encoding": (
        b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        + SMUGGLED
    ),
    "two different Content-Length": (
        b"POST /echo HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabc" + SMUGGLED
    ),
    "unknown transfer coding": b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "chunked not last": b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "space before the colon": b"GET /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n",
    "NUL in a value": b"GET /echo HTTP/1.1\r\nHost: h\r\nX-A: a\x00b\r\n\r\n",
    "HTTP/1.0": b"GET /echo HTTP/1.0\r\nHost: h\r\n\r\n",
    "custom method": b"SMUGGLE /echo HTTP/1.1\r\nHost: h\r\n\r\n",
}


def test_a_bad_chunk_ends_the_request_without_a_smuggled_one(gw: Gateway, echo: EchoServer) -> None:
    """Headers stream to the backend before the body is read, so the backend may see the start of
    this request; the bad chunk resets it, and what follows it never becomes a request."""
    before = len(echo.received)
    data = b"POST /echo HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n" + SMUGGLED
    resp = raw_request(gw.port, data)
    assert resp.status in (400, 503), resp.status
    assert all(r["path"] == "/echo" for r in echo.received[before:])


@pytest.fixture(scope="module")
def gw(gateway_factory: Callable[..., Gateway]) -> Gateway:
    return gateway_factory({"spec.yaml": SPEC, "policy.yaml": POLICY})


@pytest.mark.parametrize("name", sorted(LENIENT))
def test_lenient_framing_reaches_the_backend_as_one_well_formed_request(
    gw: Gateway, echo: EchoServer, name: str
) -> None:
    before = len(echo.received)
    resp = raw_request(gw.port, LENIENT[name])
    seen = echo.received[before:]
    assert resp.status == 200, (name, resp.status, resp.body)
    assert len(seen) == 1, (name, seen)
    request = seen[0]
    assert request["path"] == "/echo"
    names = [k for k, _v in request["header_list"]]
    assert "transfer-encoding" not in names, (name, request["header_list"])
    assert len(names) == len(set(names)), name  # no header split into two, none duplicated
    if request["method"] == "POST":
        assert request["body"] == "0\r\n\r\n"  # the Content-Length body, not a chunked one
    assert all("\r" not in v and "\n" not in v for _k, v in request["header_list"]), request["header_list"]


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_ambiguous_framing_is_refused(gw: Gateway, echo: EchoServer, name: str) -> None:
    before = len(echo.received)
    resp = raw_request(gw.port, REFUSED[name])
    assert 400 <= resp.status < 500 or resp.status == 501, (name, resp.status)
    assert echo.received[before:] == [], name


def test_generated_configuration_uses_no_deprecated_envoy_field(tmp_path: Path) -> None:
    """Envoy warns on every push of a deprecated field (RBAC's Principal.metadata did, 34 times per
    push of the examples), and such fields are removed in later releases."""
    from controlplane.bootstrap import static_bootstrap
    from controlplane.resources import to_dict
    from tests.conftest import REPO
    from tests.harness import envoy_binary

    result = compile([REPO / "specs"])
    assert result.gateway is not None and result.resources is not None
    path = tmp_path / "bootstrap.json"
    path.write_text(json.dumps(to_dict(static_bootstrap(result.gateway, result.resources))))
    proc = subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "-l", "warning", "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "deprecated" not in (proc.stdout + proc.stderr).lower(), proc.stdout + proc.stderr
