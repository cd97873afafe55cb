"""CORS through a real Envoy: preflights answered by the gateway (no token, no backend, security
headers on), refused origins, actual calls, defaults from the spec, overrides and x-gateway;
and the policy's errors with their pointers."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from controlplane import diff, ir
from controlplane.compiler import compile
from controlplane.echo import EchoServer
from controlplane.explain import Caller, explain
from controlplane.idp import IdentityProvider, SigningKey
from tests.harness import Gateway, Response

ISSUER = "https://idp.test"
APP = "https://app.example.com"

SPEC = """
openapi: 3.0.3
info: {title: shop, version: "1"}
servers: [{url: /api}]
security: [{bearer: []}]
components: {securitySchemes: {bearer: {type: http, scheme: bearer, bearerFormat: JWT}}}
paths:
  /orders:
    get: {operationId: listOrders, responses: {"200": {description: ok}}}
    post: {operationId: createOrder, responses: {"201": {description: ok}}}
    delete: {operationId: deleteOrders, responses: {"204": {description: ok}}}
  /orders/{id}:
    parameters: [{name: id, in: path, required: true, schema: {type: integer}}]
    get: {operationId: getOrder, responses: {"200": {description: ok}}}
    put: {operationId: updateOrder, responses: {"200": {description: ok}}}
  /catalog:
    x-gateway:
      cors: {allowOrigins: ["*"], allowHeaders: [content-type]}
    get: {operationId: listCatalog, security: [], responses: {"200": {description: ok}}}
  /hooks:
    options: {operationId: hookOptions, security: [], responses: {"200": {description: ok}}}
    get:
      operationId: listHooks
      x-gateway: {cors: {allowOrigins: ["https://hooks.example.org:8443"], allowMethods: [GET]}}
      responses: {"200": {description: ok}}
"""

POLICY = """
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
auth:
  providers:
    - {name: idp, issuer: %(issuer)s, jwks: {inline: %(jwks)s}}
listeners: [{name: public, address: 127.0.0.1, port: {{PORT}}}]
upstreams: [{name: backend, endpoints: ["{{BACKEND}}"]}]
apis:
  - name: shop
    spec: spec.yaml
    pathPrefix: /api
    upstream: backend
    defaults:
      cors:
        allowOrigins: [%(app)s, "https://*.shop.example"]
        allowHeaders: [authorization, content-type, x-trace]
        exposeHeaders: [x-request-id]
        allowCredentials: true
        maxAge: 5m
    operations:
      deleteOrders: {cors: false}
      updateOrder: {cors: {allowOrigins: ["https://admin.example.com"], maxAge: 1m}}
"""


@pytest.fixture(scope="module")
def idp() -> IdentityProvider:
    return IdentityProvider(ISSUER, [SigningKey.generate("RS256", "k1")])


@pytest.fixture(scope="module")
def gw(gateway_factory: Callable[..., Gateway], idp: IdentityProvider) -> Gateway:
    policy = POLICY % {"issuer": ISSUER, "jwks": json.dumps(idp.jwks()), "app": APP}
    return gateway_factory({"spec.yaml": SPEC, "policy.yaml": policy})


def call(
    gw: Gateway, echo: EchoServer, method: str, path: str, headers: list[tuple[str, str]]
) -> tuple[Response, list[dict]]:
    before = len(echo.received)
    resp = gw.request(method, path, headers=headers)
    # The gateway answered before the response was read: a request it sent on is recorded by then
    return resp, echo.received[before:]


def preflight(
    gw: Gateway, echo: EchoServer, path: str, origin: str, method: str, extra: list[tuple[str, str]] | None = None
) -> tuple[Response, list[dict]]:
    headers = [("Origin", origin), ("Access-Control-Request-Method", method), *(extra or [])]
    return call(gw, echo, "OPTIONS", path, headers)


def security_headers_present(resp: Response) -> None:
    assert resp.header("x-content-type-options") == "nosniff"
    assert resp.header("x-frame-options") == "DENY"


@pytest.mark.envoy
@pytest.mark.parametrize("origin", [APP, "https://eu.shop.example"])
def test_preflight_is_answered_without_a_token_and_never_reaches_the_backend(
    gw: Gateway, echo: EchoServer, origin: str
) -> None:
    resp, seen = preflight(
        gw,
        echo,
        "/api/orders",
        origin,
        "POST",
        [("Access-Control-Request-Headers", "authorization, content-type"), ("X-User-Id", "mallory")],
    )
    assert resp.status == 200, resp.body
    assert resp.header("access-control-allow-origin") == origin
    # the methods the spec declares for the path with this policy (DELETE has cors: false)
    assert resp.header("access-control-allow-methods") == "GET, POST"
    assert resp.header("access-control-allow-headers") == "authorization, content-type, x-trace"
    assert resp.header("access-control-allow-credentials") == "true"
    assert resp.header("access-control-max-age") == "300"
    security_headers_present(resp)
    assert seen == []  # neither the backend nor an identity header got anywhere


@pytest.mark.envoy
def test_pattern_is_one_label_anchored(gw: Gateway, echo: EchoServer) -> None:
    for origin in (
        "https://a.b.shop.example",  # two labels for the one '*'
        "https://shop.example",
        "https://eu.shop.example.evil.test",
        "http://eu.shop.example",
        "https://eu.shop.example:8443",
        "https://eushop.example",
    ):
        resp, seen = preflight(gw, echo, "/api/orders", origin, "GET")
        assert resp.status == 403, (origin, resp.status)
        assert resp.header("access-control-allow-origin") is None
        assert seen == []


@pytest.mark.envoy
def test_preflight_from_a_refused_origin_is_403_without_cors_headers(gw: Gateway, echo: EchoServer) -> None:
    resp, seen = preflight(gw, echo, "/api/orders", "https://evil.test", "GET")
    assert resp.status == 403
    assert "CORS" in resp.json()["message"]
    assert not any(name.startswith("access-control-") for name in resp.header_names())
    security_headers_present(resp)
    assert seen == []


@pytest.mark.envoy
def test_preflight_for_a_method_without_cors_is_refused(gw: Gateway, echo: EchoServer) -> None:
    resp, seen = preflight(gw, echo, "/api/orders", APP, "DELETE")  # deleteOrders: cors: false
    assert resp.status == 403 and resp.header("access-control-allow-origin") is None
    resp, seen2 = preflight(gw, echo, "/api/orders", APP, "PATCH")  # not declared at all
    assert resp.status == 403
    assert seen == seen2 == []


@pytest.mark.envoy
def test_actual_call_from_an_allowed_origin_gets_cors_headers_and_still_needs_its_token(
    gw: Gateway, echo: EchoServer, idp: IdentityProvider
) -> None:
    resp, seen = call(gw, echo, "GET", "/api/orders", [("Origin", APP)])
    assert resp.status == 401 and seen == []
    # the gateway's own refusal is readable by the page (it can tell the user to log in)
    assert resp.header("access-control-allow-origin") == APP
    token = idp.mint({"sub": "alice"})
    resp, seen = call(gw, echo, "GET", "/api/orders", [("Origin", APP), ("Authorization", f"Bearer {token}")])
    assert resp.status == 200 and len(seen) == 1
    assert resp.header("access-control-allow-origin") == APP
    assert resp.header("access-control-allow-credentials") == "true"
    assert resp.header("access-control-expose-headers") == "x-request-id"
    assert "origin" in (resp.header("vary") or "").lower()
    security_headers_present(resp)


@pytest.mark.envoy
def test_actual_call_from_a_refused_origin_gets_no_cors_headers(
    gw: Gateway, echo: EchoServer, idp: IdentityProvider
) -> None:
    token = idp.mint({"sub": "alice"})
    allowed, _ = call(gw, echo, "GET", "/api/orders", [("Origin", APP), ("Authorization", f"Bearer {token}")])
    assert allowed.header("access-control-allow-origin") == APP  # the same call from an allowed origin
    resp, seen = call(
        gw, echo, "GET", "/api/orders", [("Origin", "https://evil.test"), ("Authorization", f"Bearer {token}")]
    )
    assert resp.status == 200 and len(seen) == 1  # CORS is the browser's check: the server answers
    assert not any(name.startswith("access-control-") for name in resp.header_names())


@pytest.mark.envoy
def test_operation_override_replaces_the_api_default(gw: Gateway, echo: EchoServer) -> None:
    resp, seen = preflight(gw, echo, "/api/orders/7", "https://admin.example.com", "PUT")
    assert resp.status == 200 and seen == []
    assert resp.header("access-control-allow-methods") == "PUT"  # GET on the path has another policy
    assert resp.header("access-control-max-age") == "60"
    assert resp.header("access-control-allow-credentials") is None
    resp, _ = preflight(gw, echo, "/api/orders/7", APP, "PUT")  # the API default's origin: not here
    assert resp.status == 403
    resp, _ = preflight(gw, echo, "/api/orders/7", APP, "GET")
    assert resp.status == 200 and resp.header("access-control-allow-methods") == "GET"


@pytest.mark.envoy
def test_x_gateway_any_origin_on_a_public_path(gw: Gateway, echo: EchoServer) -> None:
    resp, seen = preflight(gw, echo, "/api/catalog", "https://anyone.test", "GET")
    assert resp.status == 200 and seen == []
    assert resp.header("access-control-allow-origin") == "https://anyone.test"
    assert resp.header("access-control-allow-credentials") is None
    assert resp.header("access-control-allow-headers") == "content-type"
    assert resp.header("access-control-max-age") == "600"  # the default


@pytest.mark.envoy
def test_declared_options_keeps_reaching_the_backend_but_not_preflights(gw: Gateway, echo: EchoServer) -> None:
    resp, seen = preflight(gw, echo, "/api/hooks", "https://hooks.example.org:8443", "GET")
    assert resp.status == 200 and seen == []
    assert resp.header("access-control-allow-methods") == "GET"  # allowMethods: [GET] (OPTIONS has none)
    resp, seen = call(gw, echo, "OPTIONS", "/api/hooks", [("Origin", "https://hooks.example.org:8443")])
    assert resp.status == 200 and len(seen) == 1  # not a preflight: the declared operation


@pytest.mark.envoy
def test_options_that_is_not_a_preflight_is_still_405(gw: Gateway, echo: EchoServer) -> None:
    answered, _ = preflight(gw, echo, "/api/orders", APP, "GET")
    assert answered.status == 200  # the same path's preflight
    resp, seen = call(gw, echo, "OPTIONS", "/api/orders", [("Origin", APP)])
    assert resp.status == 405 and seen == []
    assert resp.header("access-control-allow-methods") is None


# -- the policy's errors ----------------------------------------------------------------------


def _errors(tmp_path: Path, cors: str, spec: str = SPEC) -> list[tuple[str, str]]:
    (tmp_path / "spec.yaml").write_text(spec)
    policy = (
        "apiVersion: controlplane.dev/v1\nkind: GatewayPolicy\n"
        "upstreams: [{name: backend, endpoints: ['127.0.0.1:9']}]\n"
        f"apis:\n  - name: shop\n    spec: spec.yaml\n    upstream: backend\n    defaults:\n      cors: {cors}\n"
    )
    (tmp_path / "policy.yaml").write_text(policy)
    result = compile([tmp_path])
    return [(d.pointer, d.message) for d in result.diagnostics if d.severity.name == "ERROR"]


@pytest.mark.parametrize(
    ("cors", "pointer", "words"),
    [
        ("{allowOrigins: ['*'], allowCredentials: true}", "/allowOrigins/0", "allowCredentials"),
        ("{allowOrigins: ['https://app.example.com/']}", "/allowOrigins/0", "without a path"),
        ("{allowOrigins: ['https://app.example.com/login']}", "/allowOrigins/0", "without a path"),
        ("{allowOrigins: [app.example.com]}", "/allowOrigins/0", "not an origin"),
        ("{allowOrigins: ['https://app.example.com:443']}", "/allowOrigins/0", "default port"),
        ("{allowOrigins: ['ftp://app.example.com']}", "/allowOrigins/0", "http or https"),
        ("{allowOrigins: ['null']}", "/allowOrigins/0", "sandboxed"),
        ("{allowOrigins: ['https://*.com']}", "/allowOrigins/0", "two labels"),
        ("{allowOrigins: ['https://app*.example.com']}", "/allowOrigins/0", "first label"),
        ("{allowOrigins: ['https://*']}", "/allowOrigins/0", "two labels"),
        ("{allowOrigins: [x], allowHeaders: ['*'], allowCredentials: true}", "/allowOrigins/0", "not an origin"),
        ("{allowOrigins: [APP], allowHeaders: ['*'], allowCredentials: true}", "/allowHeaders/0", "allowCredentials"),
        ("{allowOrigins: [APP], exposeHeaders: ['bad header']}", "/exposeHeaders/0", "header name"),
        ("{allowOrigins: [APP], maxAge: 1500ms}", "/maxAge", "whole seconds"),
    ],
)
def test_errors_name_the_pointer(tmp_path: Path, cors: str, pointer: str, words: str) -> None:
    errors = _errors(tmp_path, cors.replace("APP", APP))
    assert any(p == "/apis/0/defaults/cors" + pointer and words in m for p, m in errors), errors


def test_every_error_at_once_and_in_x_gateway(tmp_path: Path) -> None:
    spec = SPEC.replace('allowOrigins: ["*"]', 'allowOrigins: ["*", "https://a.test/x"], allowCredentials: true')
    errors = _errors(tmp_path, "{allowOrigins: ['null', 'https://ok.test', 'https://b.test?q']}", spec)
    pointers = sorted(p for p, _m in errors)
    assert pointers == [
        "/apis/0/defaults/cors/allowOrigins/0",
        "/apis/0/defaults/cors/allowOrigins/2",
        "/paths/~1catalog/x-gateway/cors/allowOrigins/0",
        "/paths/~1catalog/x-gateway/cors/allowOrigins/1",
    ], errors


@pytest.mark.parametrize(
    ("cors", "pointer", "words"),
    [
        ("{allowMethods: [GET]}", "/apis/0/defaults/cors", "'allowOrigins' is required"),
        ("true", "/apis/0/defaults/cors", "give allowOrigins"),
        ("{allowOrigins: 5}", "/apis/0/defaults/cors/allowOrigins", "not of type 'array'"),
        ("{allowOrigins: [APP], maxAge: soon}", "/apis/0/defaults/cors/maxAge", "soon"),
        ("{allowOrigins: [APP], origins: [APP]}", "/apis/0/defaults/cors/origins", "unknown key 'origins'"),
    ],
)
def test_schema_errors_for_a_wrong_shape_say_what_is_wrong(tmp_path: Path, cors: str, pointer: str, words: str) -> None:
    errors = _errors(tmp_path, cors.replace("APP", APP))
    assert any(p == pointer and words in m for p, m in errors), errors


# -- explain and diff --------------------------------------------------------------------------


def _compiled(tmp_path: Path, policy: str) -> ir.Gateway:
    (tmp_path / "spec.yaml").write_text(SPEC)
    (tmp_path / "policy.yaml").write_text(policy.replace("{{PORT}}", "8080").replace("{{BACKEND}}", "127.0.0.1:9"))
    result = compile([tmp_path])
    assert result.ok and result.gateway is not None, result.diagnostics
    return result.gateway


@pytest.fixture
def gateway_ir(tmp_path: Path, idp: IdentityProvider) -> ir.Gateway:
    return _compiled(tmp_path, POLICY % {"issuer": ISSUER, "jwks": json.dumps(idp.jwks()), "app": APP})


def test_explain_a_preflight(gateway_ir: ir.Gateway) -> None:
    def ask(origin: str, method: str) -> Any:
        headers = {"origin": origin, "access-control-request-method": method}
        return explain(gateway_ir, "OPTIONS", "http://gateway.test:8080/api/orders", Caller(headers=headers))

    answered = ask("https://eu.shop.example", "POST")
    assert answered.status == 200 and answered.operation is None
    assert "CORS preflight answered by the gateway" in answered.steps[-1].decision
    assert answered.steps[-1].source.endswith("#/apis/0/defaults/cors")
    refused = ask("https://evil.test", "POST")
    assert refused.status == 403 and "refused" in refused.steps[-1].decision
    assert ask(APP, "DELETE").status == 403
    # not a preflight: today's 405
    assert explain(gateway_ir, "OPTIONS", "http://gateway.test:8080/api/orders", Caller()).status == 405


def test_explain_an_actual_call_says_whether_the_origin_is_allowed(gateway_ir: ir.Gateway) -> None:
    def ask(origin: str) -> str:
        caller = Caller(headers={"origin": origin}, claims={"sub": "alice"})
        steps = explain(gateway_ir, "GET", "http://gateway.test:8080/api/orders", caller).steps
        return next(s.decision for s in steps if s.stage == "cors")

    assert "allowed: the response gets Access-Control-Allow-Origin" in ask(APP)
    assert "not allowed" in ask("https://evil.test")


def test_diff_flags_more_origins_any_origin_and_credentials(tmp_path: Path, idp: IdentityProvider) -> None:
    base = POLICY % {"issuer": ISSUER, "jwks": json.dumps(idp.jwks()), "app": APP}
    fewer_rights = base.replace("        allowCredentials: true\n", "")

    def flagged(old: str, new: str) -> list[str]:
        folders = [tmp_path / str(len(list(tmp_path.iterdir()))) for _ in (1, 2)]
        folders[1] = folders[1].with_name(folders[1].name + "b")
        gateways = []
        for folder, policy in zip(folders, (old, new), strict=True):
            folder.mkdir()
            gateways.append(_compiled(folder, policy))
        return [c.what for c in diff.diff(*gateways).security]

    assert any(
        "also allows https://new.example" in w
        for w in flagged(base, base.replace(APP + ",", APP + ", https://new.example,"))
    )
    assert any("any origin (*)" in w for w in flagged(base, base.replace("https://admin.example.com", "*")))
    assert any("now allows credentials" in w for w in flagged(fewer_rights, base))
    assert not any("CORS" in w or "cross-origin" in w for w in flagged(base, fewer_rights))
    on = base.replace("deleteOrders: {cors: false}", "deleteOrders: {}")
    assert any("now callable cross-origin with credentials" in w for w in flagged(base, on))
