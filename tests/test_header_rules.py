"""requestHeaders and responseHeaders through a real Envoy: add, set, append and remove at
listener, API, operation and x-gateway level, with precedence; substitution variables reaching
the backend; and the targets and variables refused, with their pointers, all at once."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from controlplane import diff, ir
from controlplane.compiler import compile
from controlplane.echo import EchoServer
from controlplane.explain import Caller, explain
from tests.harness import Gateway, Response

SPEC = """
openapi: 3.0.3
info: {title: shop, version: "1"}
servers: [{url: /api}]
paths:
  /orders:
    get: {operationId: listOrders, responses: {"200": {description: ok}}}
    post:
      operationId: createOrder
      x-gateway: {requestHeaders: {set: {x-tier: spec}}}
      responses: {"201": {description: ok}}
  /items:
    get: {operationId: listItems, responses: {"200": {description: ok}}}
"""

POLICY = """
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
listeners:
  - name: public
    address: 127.0.0.1
    port: {{PORT}}
    requestHeaders:
      set: {x-gw: listener, x-tier: listener}
      add: {x-default: listener}
      remove: [x-drop-me]
    responseHeaders:
      set: {x-served-by: gateway}
      remove: [x-backend-secret]
upstreams: [{name: backend, endpoints: ["{{BACKEND}}"]}]
apis:
  - name: shop
    spec: spec.yaml
    pathPrefix: /api
    upstream: backend
    defaults:
      requestHeaders:
        add: {x-tenant: acme}
        set:
          X-Tier: api
          x-request-copy: "%REQ(X-Request-Id)%"
          x-client: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"
          x-route: "%ROUTE_NAME%"
          x-discount: "100%% off"
        append: {x-list: api}
      responseHeaders:
        set: {x-api: shop, x-code: "%RESPONSE_CODE%"}
        add: {x-cache-hint: api}
    operations:
      listItems:
        requestHeaders: {remove: [x-gw]}
        responseHeaders: {set: {x-served-by: items}}
"""


@pytest.fixture(scope="module")
def gw(gateway_factory: Callable[..., Gateway]) -> Gateway:
    return gateway_factory({"spec.yaml": SPEC, "policy.yaml": POLICY})


def call(
    gw: Gateway, echo: EchoServer, method: str, path: str, headers: list[tuple[str, str]] | None = None
) -> tuple[Response, dict[str, Any]]:
    before = len(echo.received)
    resp = gw.request(method, path, headers=headers or [])
    assert resp.status in (200, 201), (resp.status, resp.body)
    # the gateway forwarded it before the response was read: recorded by then
    (seen,) = echo.received[before:]
    return resp, seen


def values(seen: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in seen["header_list"] if k == name]


@pytest.mark.envoy
def test_listener_and_api_changes_reach_the_backend(gw: Gateway, echo: EchoServer) -> None:
    _resp, seen = call(gw, echo, "GET", "/api/orders", [("X-Drop-Me", "1"), ("X-List", "client")])
    h = seen["headers"]
    assert h["x-gw"] == "listener"
    assert h["x-default"] == "listener"
    assert h["x-tier"] == "api"  # the API's set comes after the listener's
    assert h["x-tenant"] == "acme"
    assert h["x-discount"] == "100% off"
    assert "x-drop-me" not in h
    assert values(seen, "x-list") in (["client", "api"], ["client,api"])


@pytest.mark.envoy
def test_add_keeps_what_the_client_sent(gw: Gateway, echo: EchoServer) -> None:
    _resp, seen = call(gw, echo, "GET", "/api/orders", [("X-Tenant", "other"), ("X-Tier", "client")])
    assert values(seen, "x-tenant") == ["other"]
    assert values(seen, "x-tier") == ["api"]  # set replaces


@pytest.mark.envoy
def test_substitution_variables(gw: Gateway, echo: EchoServer) -> None:
    resp, seen = call(gw, echo, "GET", "/api/orders", [("X-Request-Copy", "forged")])
    h = seen["headers"]
    request_id = h["x-request-id"]
    assert request_id and request_id != "forged"
    assert h["x-request-copy"] == request_id == resp.header("x-request-id")
    assert h["x-client"] == "127.0.0.1"
    assert h["x-route"] == "shop.listOrders"


@pytest.mark.envoy
def test_response_changes(gw: Gateway, echo: EchoServer) -> None:
    backend_says = [
        ("X-Echo-Response-Header", "x-backend-secret: s3cret"),
        ("X-Echo-Response-Header", "x-cache-hint: backend"),
    ]
    resp, _seen = call(gw, echo, "GET", "/api/orders", backend_says)
    assert resp.header("x-served-by") == "gateway"
    assert resp.header("x-api") == "shop"
    assert resp.header("x-code") == "200"
    assert resp.header("x-backend-secret") is None
    assert resp.header("x-cache-hint") == "backend"  # add: only when absent
    assert resp.header("x-content-type-options") == "nosniff"  # the gateway's own still there
    resp, _seen = call(gw, echo, "GET", "/api/orders")
    assert resp.header("x-cache-hint") == "api"


@pytest.mark.envoy
def test_an_operation_replaces_the_api_and_wins_over_the_listener(gw: Gateway, echo: EchoServer) -> None:
    resp, seen = call(gw, echo, "GET", "/api/items", [("X-Drop-Me", "1")])
    h = seen["headers"]
    assert "x-gw" not in h  # the operation's remove comes after the listener's set
    assert h["x-tier"] == "listener"  # the API's requestHeaders are replaced whole
    assert "x-tenant" not in h
    assert "x-drop-me" not in h  # the listener's still apply
    assert resp.header("x-served-by") == "items"
    assert resp.header("x-api") is None


@pytest.mark.envoy
def test_x_gateway_in_the_spec(gw: Gateway, echo: EchoServer) -> None:
    _resp, seen = call(gw, echo, "POST", "/api/orders")
    assert seen["headers"]["x-tier"] == "spec"
    assert "x-tenant" not in seen["headers"]


# -- the policy's errors ----------------------------------------------------------------------


def _errors(
    tmp_path: Path, settings: str, spec: str = SPEC, headers: str = "", listener: str = ""
) -> list[tuple[str, str]]:
    (tmp_path / "spec.yaml").write_text(spec)
    policy = (
        "apiVersion: controlplane.dev/v1\nkind: GatewayPolicy\n"
        f"listeners: [{{name: public, port: 8080{listener}}}]\n"
        "upstreams: [{name: backend, endpoints: ['127.0.0.1:9']}]\n"
        f"{headers}"
        f"apis:\n  - name: shop\n    spec: spec.yaml\n    upstream: backend\n    defaults: {settings}\n"
    )
    (tmp_path / "policy.yaml").write_text(policy)
    result = compile([tmp_path])
    return [(d.pointer, d.message) for d in result.diagnostics if d.severity.name == "ERROR"]


REFUSED = [
    ("requestHeaders", "set", "x-user-id", "identity header"),
    ("requestHeaders", "add", "X-User-Tenant", "identity header"),  # the x-user- prefix
    ("requestHeaders", "set", "x-user.role", "identity header"),  # CGI reads it as X-User-Role
    ("requestHeaders", "set", "x-real-ip", "identity header"),
    ("requestHeaders", "set", "x-http-method-override", "override header"),
    ("requestHeaders", "set", "x-forwarded-for", "client address chain"),
    ("requestHeaders", "append", "forwarded", "identity header"),
    ("requestHeaders", "set", "x-client-cert-subject", "identity header"),
    ("requestHeaders", "set", "x-waf-route", "internal"),
    ("requestHeaders", "set", "x-request-id", "Envoy sets it"),
    ("requestHeaders", "set", "x-envoy-retry-on", "Envoy sets it"),
    ("requestHeaders", "set", "host", "Envoy sets it"),
    ("requestHeaders", "set", ":authority", "pseudo-header"),
    ("requestHeaders", "set", "content-length", "Envoy sets it"),
    ("requestHeaders", "set", "transfer-encoding", "Envoy sets it"),
    ("requestHeaders", "set", "upgrade", "Envoy sets it"),
    ("responseHeaders", "set", "strict-transport-security", "every reply"),
    ("responseHeaders", "set", "x-frame-options", "every reply"),
    ("responseHeaders", "add", "access-control-allow-origin", "CORS"),
    ("responseHeaders", "set", "www-authenticate", "challenge"),
    ("responseHeaders", "set", "set-cookie", "cookie"),
    ("responseHeaders", "set", "server", "removeResponseHeaders"),
    ("requestHeaders", "set", "x_tenant", "not a header name"),
    ("requestHeaders", "set", "bad header", "not a header name"),
]


@pytest.mark.parametrize(("key", "action", "name", "words"), REFUSED)
def test_refused_targets_name_the_pointer(tmp_path: Path, key: str, action: str, name: str, words: str) -> None:
    errors = _errors(tmp_path, f"{{{key}: {{{action}: {{'{name}': v}}}}}}")
    escaped = name.replace("~", "~0").replace("/", "~1")
    assert any(p == f"/apis/0/defaults/{key}/{action}/{escaped}" and words in m for p, m in errors), errors


def test_removing_the_security_headers_is_refused_but_not_set_cookie(tmp_path: Path) -> None:
    errors = _errors(tmp_path, "{responseHeaders: {remove: [set-cookie, x-content-type-options]}}")
    assert [p for p, _m in errors] == ["/apis/0/defaults/responseHeaders/remove/1"], errors


def test_the_policy_s_own_identity_headers_are_refused(tmp_path: Path) -> None:
    headers = "headers: {identityHeaders: [x-tenant-id], identityHeaderPrefixes: [x-acme-]}\n"
    errors = _errors(
        tmp_path, "{requestHeaders: {set: {x-tenant-id: a, x-acme-org: b, x-user-id: c}}}", headers=headers
    )
    assert sorted(p for p, _m in errors) == [
        "/apis/0/defaults/requestHeaders/set/x-acme-org",
        "/apis/0/defaults/requestHeaders/set/x-tenant-id",
        "/apis/0/defaults/requestHeaders/set/x-user-id",  # built in, whatever the prefixes
    ], errors


def test_cache_control_of_a_sensitive_operation_is_refused(tmp_path: Path) -> None:
    errors = _errors(tmp_path, "{sensitive: true, responseHeaders: {set: {cache-control: 'max-age=60'}}}")
    assert any(p == "/apis/0/defaults/responseHeaders" and "sensitive" in m for p, m in errors), errors
    assert not _errors(tmp_path, "{sensitive: false, responseHeaders: {set: {cache-control: 'max-age=60'}}}")


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("'%REQ(authorization)%'", "not one of the variables"),
        ("'%DYNAMIC_METADATA(envoy.filters.http.jwt_authn:payload)%'", "not one of the variables"),
        ("'%UPSTREAM_REMOTE_ADDRESS%'", "not one of the variables"),
        ("'100%'", "lone '%'"),
        ("'a % b'", "lone '%'"),
        ("'%RESPONSE_CODE%'", "only on responses"),
    ],
)
def test_refused_values(tmp_path: Path, value: str, words: str) -> None:
    errors = _errors(tmp_path, f"{{requestHeaders: {{set: {{x-a: {value}}}}}}}")
    assert any(p == "/apis/0/defaults/requestHeaders/set/x-a" and words in m for p, m in errors), errors


def test_every_error_at_once_in_x_gateway_and_listeners(tmp_path: Path) -> None:
    spec = SPEC.replace("{set: {x-tier: spec}}", "{set: {x-user-id: spec, x-ok: '%REQ(cookie)%'}}")
    errors = _errors(
        tmp_path,
        "{requestHeaders: {set: {x-a: '%'}, remove: [x-a, x-forwarded-host]}}",
        spec,
        listener=", responseHeaders: {append: {x-frame-options: SAMEORIGIN}}",
    )
    assert sorted(p for p, _m in errors) == [
        "/apis/0/defaults/requestHeaders/remove/1",
        "/apis/0/defaults/requestHeaders/set/x-a",  # already removed in the same object
        "/listeners/0/responseHeaders/append/x-frame-options",
        "/paths/~1orders/post/x-gateway/requestHeaders/set/x-ok",
        "/paths/~1orders/post/x-gateway/requestHeaders/set/x-user-id",
    ], errors


def test_schema_errors_for_a_wrong_shape(tmp_path: Path) -> None:
    assert any(
        p.startswith("/apis/0/defaults/requestHeaders") for p, _m in _errors(tmp_path, "{requestHeaders: {put: {}}}")
    )
    assert any(
        p.startswith("/apis/0/defaults/responseHeaders")
        for p, _m in _errors(tmp_path, "{responseHeaders: {set: {x-a: 1}}}")
    )


# -- diff ------------------------------------------------------------------------------------


def test_diff_says_what_changed(tmp_path: Path) -> None:
    (tmp_path / "spec.yaml").write_text(SPEC)
    (tmp_path / "policy.yaml").write_text(POLICY.replace("{{PORT}}", "8080").replace("{{BACKEND}}", "127.0.0.1:9"))
    result = compile([tmp_path])
    assert result.ok and result.gateway is not None, result.diagnostics
    old = result.gateway
    lst = old.listeners[0]
    changed_ops = tuple(
        dataclasses.replace(pr, operations=tuple(dataclasses.replace(op, header_rules=None) for op in pr.operations))
        for pr in lst.paths
    )
    new = dataclasses.replace(old, listeners=(dataclasses.replace(lst, paths=changed_ops, header_rules=None),))
    report = diff.diff(old, new)
    text = "\n".join(f"{c.subject}: {c.what}" for c in report.changes)
    assert "(shop.listOrders): request header x-tenant: add 'acme' → no change" in text, text
    assert "listener public: response header x-served-by: set 'gateway' → no change" in text, text
    assert not any(c.security for c in report.changes)
    assert isinstance(old.listeners[0].header_rules, ir.HeaderRules)


def test_explain_names_the_header_changes_and_where_they_were_written(gw: Gateway) -> None:
    result = compile([gw.workdir])
    assert result.ok and result.gateway is not None
    said = explain(result.gateway, "GET", f"http://gateway.test:{gw.port}/api/items", Caller())
    steps = [(s.decision, s.source.rsplit("#", 1)[-1]) for s in said.steps if s.stage == "headers"]
    assert steps == [
        (
            "request (listener public): x-default: add 'listener', x-gw: set 'listener', x-tier: set 'listener', "
            "x-drop-me: remove",
            "/listeners/0/requestHeaders",
        ),
        (
            "response (listener public): x-served-by: set 'gateway', x-backend-secret: remove",
            "/listeners/0/responseHeaders",
        ),
        ("request (operation): x-gw: remove", "/apis/0/operations/listItems/requestHeaders"),
        ("response (operation): x-served-by: set 'items'", "/apis/0/operations/listItems/responseHeaders"),
    ]
    assert said.status == 200
