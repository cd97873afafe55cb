"""Limits each Envoy counts alone (``enforcement: local``), through a real Envoy with really
signed tokens: the keys (consumer, address, header, operation), their fallbacks, several
windows, where limits are declared, and the 429 the client gets."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from controlplane.idp import IdentityProvider, SigningKey
from tests.harness import Gateway, Response

pytestmark = pytest.mark.envoy

IDP = IdentityProvider("https://idp.test", [SigningKey.generate("ES256", "k1")])

SPEC = """
openapi: 3.0.3
info: {title: shop, version: "1"}
servers: [{url: /shop}]
security: [{bearer: []}]
components:
  securitySchemes:
    bearer: {type: http, scheme: bearer}
paths:
  /orders:
    get: {operationId: listOrders, responses: {"200": {description: ok}}}
    post: {operationId: createOrder, responses: {"200": {description: ok}}}
  /items:
    get: {operationId: listItems, security: [], responses: {"200": {description: ok}}}
  /browse:
    get: {operationId: browse, security: [{}, {bearer: []}], responses: {"200": {description: ok}}}
  /keyed:
    get:
      operationId: keyed
      security: []
      x-gateway:
        rateLimits:
          - {name: consumer, disabled: true}
          - {name: api-key, by: "header:X-Api-Key", minute: 2, enforcement: local}
      responses: {"200": {description: ok}}
  /shared:
    get:
      operationId: shared
      security: []
      x-gateway: {rateLimits: [{name: consumer, disabled: true}, {by: operation, minute: 3, enforcement: local}]}
      responses: {"200": {description: ok}}
  /windows:
    get:
      operationId: windows
      security: []
      x-gateway: {rateLimits: [{name: consumer, disabled: true}, {by: ip, second: 2, minute: 100, enforcement: local}]}
      responses: {"200": {description: ok}}
  /monitored:
    get:
      operationId: monitored
      security: [{}, {bearer: []}]
      x-gateway:
        rateLimits:
          - {name: consumer, disabled: true}
          - {by: ip, minute: 2, enforcement: local, exempt: {clients: [198.51.100.200], roles: [admin]}}
      responses: {"200": {description: ok}}
  /login:
    post:
      operationId: login
      security: []
      responses: {"200": {description: ok}}
"""

POLICY = """
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
auth:
  providers:
    - {name: idp, issuer: "https://idp.test", jwks: {file: jwks.json}}
listeners:
  - {name: public, address: 127.0.0.1, port: {{PORT}}}
  - {name: proxied, address: 127.0.0.1, port: {{PROXIED}}, xffNumTrustedHops: 1}
upstreams: [{name: backend, endpoints: ["{{BACKEND}}"]}]
apis:
  - name: shop
    spec: spec.yaml
    upstream: backend
    auth: {provider: idp}
    defaults:
      rateLimits: [{by: consumer, minute: 3, enforcement: local}]
    operations:
      login:
        # replaces the API's consumer limit for this operation, adds one per address
        rateLimits:
          - {name: consumer, disabled: true}
          - {name: login, by: ip, minute: 5, enforcement: local}
"""


@pytest.fixture(scope="module")
def gw(gateway_factory: Callable[..., Gateway]) -> tuple[Gateway, int]:
    from tests.harness import free_port

    proxied = free_port()
    g = gateway_factory(
        {
            "spec.yaml": SPEC,
            "jwks.json": json.dumps(IDP.jwks()),
            "policy.yaml": POLICY.replace("{{PROXIED}}", str(proxied)),
        }
    )
    return g, proxied


def token(sub: str) -> str:
    return IDP.mint({"sub": sub})


def statuses(send: Callable[[], Response], n: int) -> list[int]:
    return [send().status for _ in range(n)]


def test_each_consumer_has_its_own_bucket_shared_by_the_apis_operations(gw: tuple[Gateway, int]) -> None:
    g, _ = gw
    alice = {"Authorization": f"Bearer {token('alice')}"}
    bob = {"Authorization": f"Bearer {token('bob')}"}
    # 3 per minute per consumer over the whole API: list and create share alice's bucket
    assert [g.request("GET", "/shop/orders", alice).status for _ in range(2)] == [200, 200]
    assert g.request("POST", "/shop/orders", alice).status == 200
    refused = g.request("GET", "/shop/orders", alice)
    assert refused.status == 429
    # bob, in the same window, is not refused (another token of alice is still alice)
    assert statuses(lambda: g.request("GET", "/shop/orders", bob), 3) == [200, 200, 200]
    assert g.request("GET", "/shop/orders", {"Authorization": f"Bearer {token('alice')}"}).status == 429


def test_refusal_is_the_gateways_json_with_budget_headers(gw: tuple[Gateway, int]) -> None:
    g, _ = gw
    carol = {"Authorization": f"Bearer {token('carol')}"}
    first = g.request("GET", "/shop/orders", carol)
    assert first.status == 200
    assert first.header("x-ratelimit-limit") is not None and first.header("x-ratelimit-remaining") == "2"
    for _ in range(2):
        g.request("GET", "/shop/orders", carol)
    refused = g.request("GET", "/shop/orders", carol)
    assert refused.status == 429
    body = refused.json()
    assert body["status"] == 429 and body["request_id"] == refused.header("x-request-id")
    assert "too many requests" in body["message"]
    # a local bucket says when it refills (the service's refusals carry Retry-After too)
    reset = refused.header("x-ratelimit-reset")
    assert reset is not None and 0 < int(reset) <= 60
    assert refused.header("x-ratelimit-remaining") == "0"
    assert refused.header("x-content-type-options") == "nosniff"  # the security headers still apply


def test_anonymous_callers_count_by_address_never_in_one_shared_bucket(gw: tuple[Gateway, int]) -> None:
    g, proxied = gw
    # the proxied listener trusts one hop: the address is the last X-Forwarded-For entry
    proxy = Gateway(g.workdir, {}, port=proxied)

    def from_(addr: str) -> int:
        return proxy.request("GET", "/shop/browse", {"X-Forwarded-For": addr}).status

    assert [from_("198.51.100.1") for _ in range(3)] == [200, 200, 200]
    assert from_("198.51.100.1") == 429
    # another address has its own bucket: anonymous callers do not share one
    assert from_("198.51.100.2") == 200
    # a verified consumer on the same operation and address is counted as the consumer
    dave = {"Authorization": f"Bearer {token('dave')}", "X-Forwarded-For": "198.51.100.1"}
    assert proxy.request("GET", "/shop/browse", dave).status == 200


def test_spoofed_forwarding_headers_do_not_change_the_key(gw: tuple[Gateway, int]) -> None:
    g, _ = gw
    # the public listener trusts no hop: the TCP peer is the address, whatever the client says
    results = [
        g.request("GET", "/shop/items", {"X-Forwarded-For": f"203.0.113.{i}", "X-Real-IP": f"192.0.2.{i}"}).status
        for i in range(5)
    ]
    assert results == [200, 200, 200, 429, 429]


def test_a_header_key_falls_back_to_the_address_without_the_header(gw: tuple[Gateway, int]) -> None:
    g, _ = gw
    assert statuses(lambda: g.request("GET", "/shop/keyed", {"X-Api-Key": "k1"}), 3) == [200, 200, 429]
    assert g.request("GET", "/shop/keyed", {"X-Api-Key": "k2"}).status == 200
    # no key: by address, not unlimited and not in k1's bucket
    assert statuses(lambda: g.request("GET", "/shop/keyed"), 3) == [200, 200, 429]


def test_an_operation_key_is_one_bucket_for_everyone(gw: tuple[Gateway, int]) -> None:
    g, proxied = gw
    proxy = Gateway(g.workdir, {}, port=proxied)
    got = [proxy.request("GET", "/shop/shared", {"X-Forwarded-For": f"198.51.100.{10 + i}"}).status for i in range(4)]
    assert got == [200, 200, 200, 429]


def test_every_window_holds(gw: tuple[Gateway, int]) -> None:
    g, _ = gw
    # 2 per second (and 100 per minute): the third in the same second is refused
    got = statuses(lambda: g.request("GET", "/shop/windows"), 3)
    assert got.count(429) >= 1 and got[0] == 200


def test_login_five_per_minute_per_address_replacing_the_consumer_limit(gw: tuple[Gateway, int]) -> None:
    g, _ = gw
    erin = {"Authorization": f"Bearer {token('erin')}"}
    # the consumer limit (3) is disabled here: 5 attempts pass, the 6th is refused even with a token
    assert statuses(lambda: g.request("POST", "/shop/login", erin), 5) == [200] * 5
    assert g.request("POST", "/shop/login", erin).status == 429


def test_exempt_clients_and_roles_are_not_counted(gw: tuple[Gateway, int]) -> None:
    g, proxied = gw
    proxy = Gateway(g.workdir, {}, port=proxied)

    def call(addr: str, role: str | None = None) -> int:
        headers = {"X-Forwarded-For": addr}
        if role is not None:
            headers["Authorization"] = f"Bearer {IDP.mint({'sub': 'm-' + role, 'role': role})}"
        return proxy.request("GET", "/shop/monitored", headers).status

    assert [call("198.51.100.200") for _ in range(4)] == [200] * 4  # the monitor's address
    assert [call("198.51.100.201", "admin") for _ in range(4)] == [200] * 4  # an admin, verified
    # everyone else is counted: a customer from that address too, and a forged role header does nothing
    assert [call("198.51.100.201", "customer") for _ in range(3)] == [200, 200, 429]
    forged = {"X-Forwarded-For": "198.51.100.202", "X-User-Role": "admin"}
    assert proxy.request("GET", "/shop/monitored", forged).status == 200
    assert call("198.51.100.202") == 200
    assert call("198.51.100.202") == 429
