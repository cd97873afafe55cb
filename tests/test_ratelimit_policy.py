"""Rate limits in the policy: what each declaration means in the IR (who shares buckets, what
replaces what), and bad input reported with file, pointer and reason, all at once."""

from __future__ import annotations

import textwrap
from pathlib import Path

from controlplane import ir
from controlplane.compiler import compile
from controlplane.errors import Severity

SPEC = """
openapi: 3.0.3
info: {title: shop, version: "1"}
servers: [{url: /shop}]
x-gateway:
  rateLimits: [{name: doc-level, by: ip, day: 10000}]
paths:
  /orders:
    get: {operationId: listOrders, responses: {"200": {description: ok}}}
    post:
      operationId: createOrder
      x-gateway: {rateLimits: [{by: consumer, minute: 10}]}
      responses: {"200": {description: ok}}
  /admin/purge:
    post: {operationId: purge, responses: {"200": {description: ok}}}
"""

POLICY = """
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
rateLimits:
  domain: shop
  service: {endpoints: ["10.0.0.5:8081", "10.0.0.6:8081"], timeout: 50ms}
  limits:
    - {name: floor, by: ip, second: 20}
    - {name: admin, by: [ip, "header:X-Api-Key"], minute: 3, pathPrefix: /shop/admin}
    - {name: other-api, by: ip, minute: 1, apis: [nothing-here-but-this-is-checked]}
listeners:
  - {name: public, address: 127.0.0.1, port: 8080}
upstreams: [{name: backend, endpoints: ["127.0.0.1:9000"]}]
apis:
  - name: shop
    spec: spec.yaml
    upstream: backend
    defaults:
      rateLimits: [{by: consumer, minute: 100, hour: 5000, exempt: {clients: [10.1.2.3]}}]
    operations:
      purge:
        rateLimits:
          - {name: consumer, disabled: true}
          - {name: purge, by: operation, minute: 1, onStoreFailure: closed, shadow: true}
"""


OTHER_API = "    - {name: other-api, by: ip, minute: 1, apis: [nothing-here-but-this-is-checked]}\n"


def write(tmp: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp / name).write_text(textwrap.dedent(text))
    return tmp


def limits_of(gateway: ir.Gateway, name: str) -> dict[str, ir.RateLimit]:
    op = next(op for pr in gateway.listeners[0].paths for op in pr.operations if op.name == name)
    return {rl.name: rl for rl in op.rate_limits}


def test_where_a_limit_is_declared_decides_who_shares_it_and_what_it_replaces(tmp_path: Path) -> None:
    policy = POLICY.replace(OTHER_API, "")
    result = compile([write(tmp_path, {"spec.yaml": SPEC, "policy.yaml": policy})])
    assert result.ok, result.diagnostics
    gw = result.gateway
    assert gw is not None
    listed, created, purge = (limits_of(gw, f"shop.{n}") for n in ("listOrders", "createOrder", "purge"))
    # the gateway's floor on every operation; the API's limits shared by the API (same id)
    assert listed["floor"].id == created["floor"].id == "*/floor"
    assert listed["consumer"].id == "shop/consumer" and listed["doc-level"].id == "shop/doc-level"
    assert listed["consumer"].windows == (("minute", 100), ("hour", 5000))
    assert listed["consumer"].exempt_clients == ("10.1.2.3/32",)
    # an operation's limit of the same name replaces the API's, and is its own bucket
    assert created["consumer"].id == "shop.createOrder/consumer" and created["consumer"].windows == (("minute", 10),)
    assert created["consumer"].exempt_clients == ()
    # disabled removes; an operation's limit adds; a prefix limit covers only its prefix
    assert set(purge) == {"floor", "doc-level", "purge", "admin"} and "admin" not in listed
    assert purge["purge"].shadow and purge["purge"].fail_closed
    assert purge["admin"].by == ((ir.LimitKey.IP, ""), (ir.LimitKey.HEADER, "x-api-key"))
    assert gw.ratelimit_service is not None
    assert gw.ratelimit_service.domain == "shop" and gw.ratelimit_service.timeout_ms == 50
    assert [e.host for e in gw.ratelimit_service.endpoints] == ["10.0.0.5", "10.0.0.6"]


def test_local_limits_need_no_service(tmp_path: Path) -> None:
    spec = SPEC.replace("x-gateway:\n  rateLimits: [{name: doc-level, by: ip, day: 10000}]\n", "").replace(
        "[{by: consumer, minute: 10}]", "[{by: ip, minute: 10, enforcement: local}]"
    )
    policy = """
    apiVersion: controlplane.dev/v1
    kind: GatewayPolicy
    upstreams: [{name: backend, endpoints: ["127.0.0.1:9000"]}]
    apis: [{name: shop, spec: spec.yaml, upstream: backend}]
    """
    result = compile([write(tmp_path, {"spec.yaml": spec, "policy.yaml": policy})])
    assert result.ok and result.gateway is not None
    assert result.gateway.ratelimit_service is None
    assert result.resources is not None and not result.resources.of(result.resources.RATELIMIT)


def test_bad_limits_are_reported_with_their_place_all_at_once(tmp_path: Path) -> None:
    spec = SPEC.replace("rateLimits: [{by: consumer, minute: 10}]", "rateLimits: [{by: consumer, minute: 0}]")
    policy = (
        POLICY.replace(
            "{by: consumer, minute: 100, hour: 5000, exempt: {clients: [10.1.2.3]}}",
            "{by: consumer, minute: 100, exempt: {clients: [10.1.2.300]}}",
        )
        .replace("{name: floor, by: ip, second: 20}", "{name: floor, by: everyone, second: 20}")
        .replace("{name: purge, by: operation, minute: 1,", "{name: purge, by: operation,")
    )
    policy += "  - name: extra\n    spec: spec.yaml\n    upstream: backend\n    pathPrefix: /x\n"
    policy += "    defaults: {rateLimits: [{by: ip, minute: 5, burst: 3}]}\n"
    result = compile([write(tmp_path, {"spec.yaml": spec, "policy.yaml": policy})])
    assert not result.ok
    found = {(Path(d.file).name, d.pointer) for d in result.diagnostics if d.severity is Severity.ERROR}
    expected = {
        ("policy.yaml", "/rateLimits/limits/0/by"),  # not a key kind
        ("policy.yaml", "/rateLimits/limits/2/apis/0"),  # no such API
        ("policy.yaml", "/apis/0/defaults/rateLimits/0/exempt/clients/0"),  # not an address
        ("policy.yaml", "/apis/0/operations/purge/rateLimits/1"),  # no window
        ("policy.yaml", "/apis/1/defaults/rateLimits/0/burst"),  # unknown key
        ("spec.yaml", "/paths/~1orders/post/x-gateway/rateLimits/0/minute"),  # 0 requests
    }
    missing = {e for e in expected if not any(f[0] == e[0] and f[1].startswith(e[1]) for f in found)}
    assert not missing, (missing, [str(d) for d in result.diagnostics])


def test_a_gateway_limit_defined_twice_is_an_error_naming_both(tmp_path: Path) -> None:
    policy = POLICY.replace(OTHER_API, "    - {name: floor, by: ip, minute: 1}\n")
    result = compile([write(tmp_path, {"spec.yaml": SPEC, "policy.yaml": policy})])
    errors = [d for d in result.diagnostics if d.severity is Severity.ERROR]
    assert any(d.pointer == "/rateLimits/limits/2/name" and "/rateLimits/limits/0" in d.message for d in errors), [
        str(d) for d in errors
    ]
