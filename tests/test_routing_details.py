"""Routing details found against another gateway's OpenAPI test inputs, through a real Envoy:
the Host an upstream named by host receives, parameters that may be empty, and the text of
every 404."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from controlplane.echo import EchoServer
from tests.harness import Gateway

pytestmark = pytest.mark.envoy

SPEC = """
openapi: 3.0.3
info: {title: routing, version: "1"}
servers: [{url: "http://localhost:{{ECHO}}/base"}]
paths:
  /orders/{id}:
    get:
      operationId: getOrder
      parameters: [{name: id, in: path, required: true, schema: {type: integer}}]
      responses: {"200": {description: ok}}
  "/CustomWarehouseData(Warehouse='{Warehouse}',Product='{Product}',Location='{Location}')":
    get:
      operationId: warehouse
      parameters:
        - {name: Warehouse, in: path, required: true, schema: {type: string, minLength: 0}}
        - {name: Product, in: path, required: true, schema: {type: string}}
        - {name: Location, in: path, required: true, schema: {type: string, minLength: 0, maxLength: 10}}
      responses: {"200": {description: ok}}
"""


def _policy(upstreams: str, apis: str) -> str:
    return f"""
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
listeners: [{{name: routing, address: 127.0.0.1, port: {{{{PORT}}}}}}]
upstreams: {upstreams}
apis: {apis}
"""


@pytest.fixture(scope="module")
def gw(gateway_factory: Callable[..., Gateway], echo: EchoServer) -> Gateway:
    spec = SPEC.replace("{{ECHO}}", str(echo.port))
    upstreams = (
        f'[{{name: by-name, url: "http://localhost:{echo.port}"}},'
        f' {{name: by-name-kept, url: "http://localhost:{echo.port}", preserveHost: true}},'
        f' {{name: by-endpoint-name, endpoints: ["localhost:{echo.port}"]}},'
        f' {{name: by-ip, endpoints: ["127.0.0.1:{echo.port}"]}}]'
    )
    apis = (
        "[{name: auto, spec: spec.yaml, pathPrefix: /auto},"
        " {name: named, spec: spec.yaml, pathPrefix: /named, upstream: by-name},"
        " {name: kept, spec: spec.yaml, pathPrefix: /kept, upstream: by-name-kept},"
        " {name: endpoint, spec: spec.yaml, pathPrefix: /endpoint, upstream: by-endpoint-name},"
        " {name: ip, spec: spec.yaml, pathPrefix: /ip, upstream: by-ip}]"
    )
    return gateway_factory({"spec.yaml": spec, "policy.yaml": _policy(upstreams, apis)})


def _get(gw: Gateway, echo: EchoServer, path: str, host: str = "api.example.com") -> tuple[Any, dict[str, Any] | None]:
    before = len(echo.received)
    resp = gw.request("GET", path, headers=[("Host", host), ("X-Forwarded-Host", "evil.example")])
    seen = echo.received[before:]
    return resp, (seen[0] if seen else None)


@pytest.mark.parametrize(
    ("prefix", "rewritten"),
    [("/auto", True), ("/named", True), ("/endpoint", True), ("/kept", False), ("/ip", False)],
)
def test_upstreams_named_by_host_get_their_own_host(
    gw: Gateway, echo: EchoServer, prefix: str, rewritten: bool
) -> None:
    resp, seen = _get(gw, echo, f"{prefix}/orders/7")
    assert resp.status == 200 and seen is not None, (prefix, resp.status, resp.body)
    if rewritten:
        assert seen["headers"]["host"] == f"localhost:{echo.port}", seen["headers"]
        # the client's Host, never a client-sent X-Forwarded-Host
        assert seen["headers"]["x-forwarded-host"] == "api.example.com"
    else:
        assert seen["headers"]["host"] == "api.example.com"
        assert "x-forwarded-host" not in seen["headers"]


def test_min_length_zero_parameters_may_be_empty(gw: Gateway, echo: EchoServer) -> None:
    ok = "/ip/CustomWarehouseData(Warehouse='',Product='x1',Location='')"
    resp, seen = _get(gw, echo, ok)
    assert resp.status == 200 and seen is not None, (resp.status, resp.body)
    assert seen["path"] == ok  # an upstream of the policy keeps the gateway path
    assert _get(gw, echo, "/ip/CustomWarehouseData(Warehouse='w',Product='x1',Location='l')")[0].status == 200
    # Product has no minLength: empty is not a value of it
    resp, seen = _get(gw, echo, "/ip/CustomWarehouseData(Warehouse='',Product='',Location='')")
    assert resp.status == 404 and seen is None


@pytest.mark.parametrize(
    "path",
    [
        "/nowhere",  # no API at all
        "/ip/orders",  # under a known prefix, not a declared path
        "/ip/orders/abc",  # a value that does not fit the integer parameter
        "/ip/orders/7/more",
    ],
)
def test_every_404_says_what_happened(gw: Gateway, echo: EchoServer, path: str) -> None:
    resp, seen = _get(gw, echo, path)
    assert resp.status == 404 and seen is None
    body = resp.json()
    assert body["message"] == "no API operation is declared at this path", (path, body)
    assert body["request_id"] == resp.header("x-request-id")
