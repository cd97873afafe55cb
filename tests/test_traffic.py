"""Real requests through a real Envoy serving the compiled bundled examples.

The gateway serves specs/orders.openapi.yaml, specs/petstore.swagger.yaml and
specs/catalog.openapi.yaml (the files shipped in the repository) with a test policy that
points them at an echo backend, which reports exactly what reached it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest

from controlplane.echo import EchoServer
from tests.conftest import REPO
from tests.harness import Gateway, Response

pytestmark = pytest.mark.envoy

POLICY = f"""
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
headers:
  identityHeaders: [x-tenant-id]
  removeResponseHeaders: [x-internal-trace-id]
listeners:
  - name: public
    address: 127.0.0.1
    port: {{{{PORT}}}}
    routeScopes: ROUTE_SCOPES
upstreams:
  - name: backend
    endpoints: ["{{{{BACKEND}}}}"]
apis:
  - name: orders
    spec: {REPO}/specs/orders.openapi.yaml
    upstream: backend
  - name: petstore
    spec: {REPO}/specs/petstore.swagger.yaml
    upstream: backend
    pathPrefix: /pets-api
    upstreamPathPrefix: /petstore/v1
  - name: catalog
    spec: {REPO}/specs/catalog.openapi.yaml
    upstream: backend
  - name: precedence
    spec: precedence.yaml
    upstream: backend
"""

# Literal and templated paths that both match "/things/special" when the parameter is a
# plain string: the literal one must win, whatever order the spec lists them in.
PRECEDENCE = """
openapi: 3.0.3
info: {title: precedence, version: "1"}
servers: [{url: /p}]
paths:
  /things/{name}:
    get: {operationId: getThing, responses: {"200": {description: ok}}}
  /things/special:
    get: {operationId: getSpecialThing, responses: {"200": {description: ok}}}
  /things/{name}/parts/special:
    get: {operationId: getSpecialPart, responses: {"200": {description: ok}}}
  /things/special/parts/{part}:
    get: {operationId: getPartOfSpecial, responses: {"200": {description: ok}}}
"""


@pytest.fixture(scope="module", params=["never", "always"], ids=["one-route-config", "scoped-routes"])
def gw(gateway_factory: Callable[..., Gateway], request: pytest.FixtureRequest) -> Gateway:
    """Every traffic test runs against both shapes of route configuration: one per listener,
    and one per first path segment (scoped routes)."""
    policy = POLICY.replace("ROUTE_SCOPES", request.param)
    return gateway_factory({"policy.yaml": policy, "precedence.yaml": PRECEDENCE})


def forwarded(echo: EchoServer, gw: Gateway, method: str, path: str, **kw: object) -> tuple[Response, dict | None]:
    """Send a request; return the response and what the backend received (None if nothing)."""
    before = len(echo.received)
    resp = gw.request(method, path, **kw)  # type: ignore[arg-type]
    seen = echo.received[before:]
    assert len(seen) <= 1
    return resp, (seen[0] if seen else None)


def log_of(gw: Gateway, resp: Response) -> dict:
    """The access log line of one response (Envoy flushes its log about once a second)."""
    assert gw.envoy is not None
    rid = resp.header("x-request-id")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for entry in gw.envoy.access_log():
            if entry.get("request_id") == rid:
                return entry
        time.sleep(0.1)
    raise AssertionError(f"no access log line for request {rid}")


@pytest.mark.parametrize(
    ("method", "path", "operation"),
    [
        ("GET", "/api/orders", "orders.listOrders"),
        ("POST", "/api/orders", "orders.createOrder"),
        ("GET", "/api/orders/12", "orders.getOrder"),
        ("DELETE", "/api/orders/12", "orders.deleteOrder"),
        ("GET", "/api/orders/export", "orders.exportOrders"),
        ("GET", f"/api/orders/7/items/{uuid.UUID(int=5)}", "orders.getOrderItem"),
        ("GET", "/api/products/ABC-1234", "orders.getProduct"),
        ("GET", "/api/reports/q3-2026.csv", "orders.getReport"),
        ("POST", "/api/accounts:batchGet", "orders.batchGetAccounts"),
        ("POST", "/api/accounts/acme:suspend", "orders.suspendAccount"),
        ("GET", "/api/accounts/acme", "orders.getAccount"),
        ("GET", "/api/orders?page=2&sort=desc", "orders.listOrders"),
        ("GET", "/catalog/v2/categories/garden-tools", "catalog.getCategory"),
        ("GET", "/catalog/v2/search?q=rake", "catalog.searchCatalog"),
        ("GET", "/p/things/special", "precedence.getSpecialThing"),
        ("GET", "/p/things/other", "precedence.getThing"),
        ("GET", "/p/things/special/parts/special", "precedence.getPartOfSpecial"),
        ("GET", "/p/things/other/parts/special", "precedence.getSpecialPart"),
    ],
)
def test_declared_operations_reach_the_backend(
    echo: EchoServer, gw: Gateway, method: str, path: str, operation: str
) -> None:
    resp, seen = forwarded(echo, gw, method, path)
    assert resp.status == 200, resp.body
    assert seen is not None and seen["method"] == method and seen["path"] == path
    log = log_of(gw, resp)
    assert log["operation"] == operation
    assert log["method"] == method and log["status"] == 200 and log["upstream"] == "backend"


def test_mount_prefix_is_rewritten_for_the_upstream(echo: EchoServer, gw: Gateway) -> None:
    resp, seen = forwarded(echo, gw, "GET", "/pets-api/pets/5/photo/small?x=1")
    assert resp.status == 200
    assert seen is not None and seen["path"] == "/petstore/v1/pets/5/photo/small?x=1"


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/api",
        "/api/",
        "/api/nothing",
        "/api/orders/",
        "/api/orders/12/extra",
        "/API/orders",
        "/api/orders/abc",  # orderId is an integer
        "/api/orders/0",  # ... with minimum 1
        "/api/orders/-3",
        "/api/orders/1.5",
        "/api/products/abc-1234",  # sku pattern ^[A-Z]{3}-[0-9]{4}$
        "/api/products/ABC-12345",
        "/api/orders/7/items/not-a-uuid",
        "/api/reports/q3.pdf",
        "/api/reports/Q3.csv",
        "/pets-api/pets/5/photo/huge",  # enum [small, large]
        "/petstore/v1/pets",  # the upstream's own path is not the gateway's
        "/p/things",
        "/api/ordersXYZ",
        "/api/orders/exportfoo",
        "/catalog/v2/categories/Garden",  # slug pattern via a $ref'd schema in another file
        "/api/../admin",
        "/api/orders/../../admin",
        "//admin",
        "/api/%2e%2e/admin",
        "/api/%2E%2E/%2E%2E/admin",
        "/api/orders;x=y",
        "/api/orders/12;jsessionid=1",
    ],
)
def test_undeclared_paths_answer_404_and_never_reach_the_backend(echo: EchoServer, gw: Gateway, path: str) -> None:
    resp, seen = forwarded(echo, gw, "GET", path)
    assert resp.status == 404, (path, resp.status, resp.body)
    assert seen is None
    body = resp.json()
    assert body["status"] == 404
    assert body["request_id"] == resp.header("x-request-id")
    assert resp.header("content-type") == "application/json"


@pytest.mark.parametrize("path", ["/api%2Forders", "/api/orders%2F12", "/api/orders%5c12", "/api%2fnothing"])
def test_escaped_slashes_are_rejected(echo: EchoServer, gw: Gateway, path: str) -> None:
    resp, seen = forwarded(echo, gw, "GET", path)
    assert resp.status == 400
    assert seen is None


def test_normalized_paths_are_matched_after_normalization(echo: EchoServer, gw: Gateway) -> None:
    # Envoy normalizes before routing: what reaches the backend is the declared path,
    # never the raw one.
    resp, seen = forwarded(echo, gw, "GET", "/api/products/../orders")
    assert resp.status == 200
    assert seen is not None and seen["path"] == "/api/orders"
    resp, seen = forwarded(echo, gw, "GET", "//api//orders")
    assert resp.status == 200
    assert seen is not None and seen["path"] == "/api/orders"


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("DELETE", "/api/products", "GET"),
        ("PUT", "/api/orders/12", "DELETE, GET"),
        ("PATCH", "/api/orders", "DELETE, GET, POST"),
        ("GET", "/api/accounts/acme:suspend", "POST"),
        ("HEAD", "/api/orders/export", "GET"),
        ("OPTIONS", "/api/login", "POST"),
        ("POST", "/p/things/special", "GET"),  # the literal path decides, not /things/{name}
    ],
)
def test_wrong_method_answers_405_with_allow(echo: EchoServer, gw: Gateway, method: str, path: str, allow: str) -> None:
    resp, seen = forwarded(echo, gw, method, path)
    assert resp.status == 405
    assert resp.header("allow") == allow
    assert seen is None
    if method != "HEAD":
        assert resp.json()["status"] == 405
        assert resp.json()["message"] == "method not allowed: see the Allow header"


SPOOFED = [
    ("X-User-Id", "admin"),
    ("x-user-role", "admin"),
    ("X-USER-EMAIL", "root@example.com"),
    ("X-User-Anything", "1"),
    ("x-user-", "1"),
    ("X-Tenant-Id", "other-tenant"),  # listed in the policy
    ("X-Real-IP", "10.0.0.1"),
    ("Forwarded", "for=10.0.0.1"),
]


@pytest.mark.parametrize("path", ["/api/orders", "/api/login"])
def test_spoofed_identity_headers_never_reach_the_backend(echo: EchoServer, gw: Gateway, path: str) -> None:
    method = "POST" if path.endswith("login") else "GET"
    headers = [*SPOOFED, ("X-User-Id", "second-copy"), ("x-user-id", "third")]
    resp, seen = forwarded(echo, gw, method, path, headers=headers)
    assert resp.status == 200
    assert seen is not None
    received = {k for k, _ in seen["header_list"]}
    assert not {k for k in received if k.startswith("x-user")}
    assert not received & {"x-tenant-id", "x-real-ip", "forwarded"}


def test_identity_header_with_underscores_is_refused(echo: EchoServer, gw: Gateway) -> None:
    resp, seen = forwarded(echo, gw, "GET", "/api/orders", headers=[("X_User_Id", "admin")])
    assert resp.status == 400
    assert seen is None


def test_security_response_headers(echo: EchoServer, gw: Gateway) -> None:
    for method, path, headers, expected in [
        ("GET", "/api/orders", {}, 200),
        ("GET", "/nope", {}, 404),  # no partition at all
        ("GET", "/api/nothing", {}, 404),  # a partition without a matching route: Envoy's no-route reply
        ("PUT", "/api/orders", {}, 405),
        ("GET", "/api/orders", {"X_Under": "1"}, 400),  # refused before routing
    ]:
        resp = gw.request(method, path, headers=headers)
        assert resp.status == expected
        assert resp.header("strict-transport-security") is None  # a plain-HTTP listener (RFC 6797 §7.2)
        assert resp.header("x-content-type-options") == "nosniff"
        assert resp.header("x-frame-options") == "DENY"
        leaked = resp.header_names() & {"server", "x-powered-by", "x-envoy-upstream-service-time"}
        assert not leaked, (path, leaked)


def test_sensitive_operations_are_not_cached(gw: Gateway) -> None:
    assert gw.request("POST", "/api/login").header("cache-control") == "no-store"
    assert gw.request("GET", "/api/accounts/acme").header("cache-control") == "no-store"
    assert gw.request("GET", "/api/orders").header("cache-control") is None


def test_request_id_is_generated_and_client_value_not_trusted(echo: EchoServer, gw: Gateway) -> None:
    resp, seen = forwarded(echo, gw, "GET", "/api/orders", headers=[("X-Request-Id", "client-chosen")])
    assert seen is not None
    rid = resp.header("x-request-id")
    assert rid and rid != "client-chosen"
    assert seen["headers"]["x-request-id"] == rid
    uuid.UUID(rid)
    assert log_of(gw, resp)["request_id"] == rid


def test_backend_sees_only_the_verified_client_address(echo: EchoServer, gw: Gateway) -> None:
    resp, seen = forwarded(echo, gw, "GET", "/api/orders", headers=[("X-Forwarded-For", "1.2.3.4, 5.6.7.8")])
    assert resp.status == 200 and seen is not None
    assert seen["headers"]["x-forwarded-for"] == "127.0.0.1"


def test_absolute_form_request_target_is_routed_by_path(echo: EchoServer, gw: Gateway) -> None:
    resp, seen = forwarded(echo, gw, "GET", "http://gateway.test/api/../admin")
    assert resp.status in (400, 404)
    assert seen is None
    resp, seen = forwarded(echo, gw, "GET", "http://gateway.test/api/orders")
    assert resp.status == 200 and seen is not None and seen["path"] == "/api/orders"


def test_access_log_is_json_with_the_request_story(gw: Gateway) -> None:
    resp = gw.request("GET", "/api/orders/12")
    entry = log_of(gw, resp)
    assert entry["operation"] == "orders.getOrder"
    assert entry["method"] == "GET" and entry["path"] == "/api/orders/12"
    assert entry["status"] == 200 and entry["upstream"] == "backend"
    assert isinstance(entry["duration_ms"], int)
    entry = log_of(gw, gw.request("GET", "/nope"))
    # no partition matched: the catch-all route; with scoped routes no scope matched: no route at all
    assert entry["status"] == 404 and (entry["operation"] == "not-found" or entry["flags"] == "NR")


RETRY_SPEC = """
openapi: 3.0.3
info: {title: retries, version: "1"}
servers: [{url: /r}]
paths:
  /safe:
    get: {operationId: safe, responses: {"200": {description: ok}}}
  /once:
    get: {operationId: once, x-gateway: {retries: {attempts: 0}}, responses: {"200": {description: ok}}}
"""


def test_default_retries_hide_a_dead_endpoint_and_can_be_turned_off(gateway_factory: Callable[..., Gateway]) -> None:
    from tests.harness import free_port

    dead = free_port()  # nothing listens here: connections are refused
    policy = f"""
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
listeners: [{{name: public, address: 127.0.0.1, port: {{{{PORT}}}}}}]
upstreams: [{{name: pool, endpoints: ["127.0.0.1:{dead}", "{{{{BACKEND}}}}"]}}]
apis: [{{name: r, spec: retry.yaml, upstream: pool}}]
"""
    gw = gateway_factory({"policy.yaml": policy, "retry.yaml": RETRY_SPEC})
    # the default policy retries a refused connection on the other endpoint (set once on the virtual host)
    assert [gw.request("GET", "/r/safe").status for _ in range(20)] == [200] * 20
    # attempts: 0 on one operation: about half its requests meet the dead endpoint
    statuses = [gw.request("GET", "/r/once").status for _ in range(20)]
    assert 503 in statuses and 200 in statuses
