"""How specs and policies decide authentication, authorization and allowlists: compile-time
checks on the IR and errors, and through Envoy the paths that compile checks cannot prove
(dry-run rules, optional tokens, a 10k-range allowlist on the IP trie)."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from controlplane import compile, ir
from controlplane.echo import EchoServer
from controlplane.idp import IdentityProvider, SigningKey
from tests.harness import Gateway
from tests.xds_harness import wait_for

IDP = IdentityProvider("https://idp.test", [SigningKey.generate("ES256", "k1")])

SPEC = """
openapi: 3.0.3
info: {title: t, version: "1"}
servers: [{url: /t}]
security: [{bearer: []}]
components:
  securitySchemes:
    bearer: {type: http, scheme: bearer}
    oauth: {type: oauth2, flows: {clientCredentials: {tokenUrl: "https://idp.test/token", scopes: {read: r, write: w}}}}
    key: {type: apiKey, in: header, name: X-Api-Key}
paths:
  /open:
    get: {operationId: open, security: [], responses: {"200": {description: ok}}}
  /maybe:
    get: {operationId: maybe, security: [{}, {bearer: []}], responses: {"200": {description: ok}}}
  /read:
    get: {operationId: read, security: [{oauth: [read]}], responses: {"200": {description: ok}}}
  /admin:
    get: {operationId: admin, x-gateway: {roles: [admin]}, responses: {"200": {description: ok}}}
  /any:
    get: {operationId: anyToken, responses: {"200": {description: ok}}}
"""

POLICY = """
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
auth:
  providers: [{{name: idp, issuer: https://idp.test, jwks: {{file: jwks.json}}}}]
listeners: [{{name: public, address: 127.0.0.1, port: {{{{PORT}}}}}}]
upstreams: [{{name: backend, endpoints: ["{{{{BACKEND}}}}"]}}]
apis:
  - name: t
    spec: spec.yaml
    upstream: backend
    auth: {auth}
{extra}
"""


def files(auth: str = "{}", extra: str = "", spec: str = SPEC) -> dict[str, str]:
    return {
        "spec.yaml": spec,
        "jwks.json": json.dumps(IDP.jwks()),
        "policy.yaml": POLICY.format(auth=auth, extra=extra),
    }


def compiled(tmp_path: Path, **kw: str) -> ir.Gateway:
    for name, text in files(**kw).items():
        (tmp_path / name).write_text(text.replace("{{PORT}}", "8080").replace("{{BACKEND}}", "127.0.0.1:9"))
    result = compile([tmp_path])
    assert result.ok, "\n".join(map(str, result.diagnostics))
    assert result.gateway is not None
    return result.gateway


def ops(gw: ir.Gateway) -> dict[str, ir.Operation]:
    return {op.operation_id: op for lst in gw.listeners for p in lst.paths for op in p.operations}


def test_openapi_security_decides_who_needs_a_token(tmp_path: Path) -> None:
    by_id = ops(compiled(tmp_path))
    assert by_id["open"].auth is None
    maybe = by_id["maybe"].auth
    assert maybe is not None and maybe.optional and not maybe.authorize
    read = by_id["read"].auth
    assert read is not None and read.authorize and read.scope_sets == (("read",),)
    admin = by_id["admin"].auth
    assert admin is not None and admin.authorize and admin.roles == ("admin",)
    any_token = by_id["anyToken"].auth
    assert any_token is not None and not any_token.authorize  # no rules for the API: a valid token is enough


def test_rules_turn_on_authorization_and_deny_what_they_do_not_allow(tmp_path: Path) -> None:
    by_id = ops(compiled(tmp_path, auth="{rules: [{roles: [staff], operations: [read, 'GET /any']}]}"))
    assert by_id["anyToken"].auth == ir.Auth("idp", True, ("staff",), (), False, False)
    assert by_id["maybe"].auth is not None and by_id["maybe"].auth.authorize and not by_id["maybe"].auth.roles


def test_policy_overrides_the_spec(tmp_path: Path) -> None:
    extra = "    operations:\n      open: {public: false, roles: [ops]}\n      anyToken: {public: true}"
    by_id = ops(compiled(tmp_path, extra=extra))
    assert by_id["anyToken"].auth is None
    assert by_id["open"].auth is not None and by_id["open"].auth.roles == ("ops",)


def test_unenforceable_security_is_an_error_with_a_provider(tmp_path: Path) -> None:
    spec = SPEC.replace("security: [{oauth: [read]}]", "security: [{key: []}]")
    for name, text in files(spec=spec).items():
        (tmp_path / name).write_text(text.replace("{{PORT}}", "8080").replace("{{BACKEND}}", "127.0.0.1:9"))
    result = compile([tmp_path])
    assert not result.ok
    (err,) = [d for d in result.errors if d.code == "security"]
    assert "apiKey" in err.message and err.pointer == "/paths/~1read/get/security" and err.line


def test_without_a_provider_security_is_reported_not_enforced(tmp_path: Path) -> None:
    (tmp_path / "spec.yaml").write_text(
        SPEC.replace("servers: [{url: /t}]", "servers: [{url: 'http://127.0.0.1:9/t'}]")
    )
    result = compile([tmp_path / "spec.yaml"])
    assert result.ok
    assert [d.code for d in result.warnings].count("security-not-enforced") == 1
    assert all(op.auth is None for op in ops(result.gateway).values())  # type: ignore[arg-type]


def test_bad_auth_references_are_errors(tmp_path: Path) -> None:
    for name, text in files(
        auth="{provider: nobody, rules: [{roles: [x], operations: [nope]}]}", extra="    ipAllow: [10.0.0.300]"
    ).items():
        (tmp_path / name).write_text(text.replace("{{PORT}}", "8080").replace("{{BACKEND}}", "127.0.0.1:9"))
    result = compile([tmp_path])
    codes = {d.code for d in result.errors}
    assert {"unknown-provider", "unknown-operation", "cidr"} <= codes, result.errors


@pytest.mark.envoy
def test_dry_run_logs_but_does_not_deny(gateway_factory: Callable[..., Gateway], echo: EchoServer) -> None:
    gw = gateway_factory(files(auth="{dryRun: true, rules: [{roles: [admin], operations: ['*']}]}"))
    token = IDP.mint({"sub": "u", "role": "customer"})
    resp = gw.request("GET", "/t/any", headers=[("Authorization", f"Bearer {token}")])
    assert resp.status == 200  # a customer, not allowed by the rules, passes: dry run
    assert gw.envoy is not None
    assert "http.public.rbac.shadow_denied: 1" in gw.envoy.admin("/stats?filter=shadow_denied")[1]
    rid = resp.header("x-request-id")
    entry = wait_for(lambda: next((e for e in gw.envoy.access_log() if e["request_id"] == rid), None), 5, "the log")
    assert entry["dry_run_authorization"] == "denied"


@pytest.mark.envoy
def test_optional_token_is_checked_when_present(gateway_factory: Callable[..., Gateway], echo: EchoServer) -> None:
    gw = gateway_factory(files())
    assert gw.request("GET", "/t/maybe").status == 200
    assert gw.request("GET", "/t/maybe", headers=[("Authorization", "Bearer bad.to.ken")]).status == 401
    good = IDP.mint({"sub": "u"})
    before = len(echo.received)
    assert gw.request("GET", "/t/maybe", headers=[("Authorization", f"Bearer {good}")]).status == 200
    assert echo.received[before]["headers"]["x-user-id"] == "u"


@pytest.mark.envoy
def test_ten_thousand_ranges_use_the_ip_trie(gateway_factory: Callable[..., Gateway], echo: EchoServer) -> None:
    ranges = [str(ipaddress.ip_network(f"10.{i // 256}.{i % 256}.0/24")) for i in range(10_000)]
    allow_local = json.dumps([*ranges, "127.0.0.1/32"])
    deny_local = json.dumps(ranges)
    extra = (
        f"    operations:\n      open: {{ipAllow: {allow_local}}}\n"
        f"      anyToken: {{ipAllow: {deny_local}, public: true}}"
    )
    gw = gateway_factory(files(extra=extra))
    assert gw.request("GET", "/t/open").status == 200
    assert gw.request("GET", "/t/any").status == 403
    routes = gw.envoy.admin("/config_dump?resource=dynamic_route_configs")[1] if gw.envoy else ""
    static = gw.envoy.admin("/config_dump")[1] if gw.envoy else ""
    assert "IPMatcher" in routes + static
