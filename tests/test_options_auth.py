"""Every documented auth, identity and client-address option, through a real Envoy.

One gateway (three listeners, two token providers, one spec mounted by several APIs)
serves every case; each test asserts what docs/policy.md promises, with really signed
tokens and a recording backend.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from controlplane.echo import EchoServer
from controlplane.idp import IdentityProvider, SigningKey
from tests.harness import Gateway, Response, free_port
from tests.xds_harness import wait_for

pytestmark = pytest.mark.envoy

IDP = IdentityProvider("https://idp.test", [SigningKey.generate("ES256", "k1")])
# the same keys, another issuer: the provider whose every option differs from the defaults
CUSTOM = IdentityProvider("https://custom.test", IDP.keys)

SPEC = """
openapi: 3.0.3
info: {title: items, version: "1"}
servers: [{url: /items}]
security: [{bearer: []}]
components:
  securitySchemes:
    bearer: {type: http, scheme: bearer}
    oauth:
      type: oauth2
      flows: {clientCredentials: {tokenUrl: "https://idp.test/token", scopes: {"items:read": r}}}
paths:
  /list:
    get: {operationId: list, responses: {"200": {description: ok}}}
  /read:
    get: {operationId: read, security: [{oauth: ["items:read"]}], responses: {"200": {description: ok}}}
  /write:
    post: {operationId: write, responses: {"200": {description: ok}}}
  /purge:
    delete: {operationId: purge, responses: {"200": {description: ok}}}
  /open:
    get: {operationId: open, security: [], responses: {"200": {description: ok}}}
  /opened:
    get: {operationId: opened, x-gateway: {public: true}, responses: {"200": {description: ok}}}
"""

# 64 ranges that hold neither the test client nor 203.0.113.0/24: with one more, a list is
# past IP_TRIE_THRESHOLD and goes to Envoy's IP matcher rather than RBAC principals.
FILLER = [str(ipaddress.ip_network(f"10.{i}.0.0/16")) for i in range(64)]
RULES = "[{roles: [staff], operations: [list]}, {scopes: ['items:write'], operations: [write]}]"


def policy(internal: int, proxied: int) -> str:
    return f"""
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
auth:
  providers:
    - {{name: idp, issuer: "{IDP.issuer}", jwks: {{file: jwks.json}}}}
    - name: custom
      issuer: "{CUSTOM.issuer}"
      jwks: {{file: jwks.json}}
      rolesClaim: groups
      scopesClaim: scp
      claimHeaders: {{sub: X-Subject, tenant: X-Tenant-Id}}
      tokenFrom: {{queryParameters: [token], cookies: [session]}}
      clockSkew: 300s
headers:
  identityHeaders: [x-subject, x-tenant-id, x-partner-id]
  identityHeaderPrefixes: [x-auth-]
ipAllowlists:
  - {{pathPrefix: /d/purge, allow: [203.0.113.0/24]}}
  - {{pathPrefix: /d/read, allow: [127.0.0.1, 10.0.0.0/8]}}
  - {{pathPrefix: /d/open, allow: [203.0.113.0/24], listeners: [internal]}}
listeners:
  - {{name: public, address: 127.0.0.1, port: {{{{PORT}}}}}}
  - {{name: internal, address: 127.0.0.1, port: {internal}}}
  - {{name: proxied, address: 127.0.0.1, port: {proxied}, xffNumTrustedHops: 1}}
upstreams: [{{name: backend, endpoints: ["{{{{BACKEND}}}}"]}}]
apis:
  - {{name: a, spec: spec.yaml, upstream: backend, pathPrefix: /a, auth: {{provider: idp, rules: {RULES}}}}}
  - name: b
    spec: spec.yaml
    upstream: backend
    pathPrefix: /b
    auth: {{provider: idp}}
    operations: {{open: {{public: false}}, write: {{public: true}}}}
  - {{name: c, spec: spec.yaml, upstream: backend, pathPrefix: /c, auth: {{provider: custom, rules: {RULES}}}}}
  - name: d
    spec: spec.yaml
    upstream: backend
    pathPrefix: /d
    listeners: [public, internal]
    defaults: {{public: true}}
    ipAllow: [127.0.0.0/8]
    operations: {{write: {{ipAllow: [203.0.113.0/24]}}}}
  - name: e
    spec: spec.yaml
    upstream: backend
    pathPrefix: /e
    listeners: [public]
    defaults: {{public: true}}
    ipAllow: [203.0.113.0/24]
    operations: {{write: {{ipAllow: [127.0.0.1/32]}}}}
  - name: f
    spec: spec.yaml
    upstream: backend
    pathPrefix: /f
    listeners: [proxied]
    defaults: {{public: true}}
    operations:
      list: {{ipAllow: [127.0.0.0/8]}}
      write: {{ipAllow: [203.0.113.0/24]}}
      read: {{ipAllow: {json.dumps([*FILLER, "203.0.113.0/24"])}}}
      purge: {{ipAllow: {json.dumps([*FILLER, "127.0.0.0/8"])}}}
"""


@dataclasses.dataclass
class Listeners:
    public: Gateway
    internal: Gateway
    proxied: Gateway


@pytest.fixture(scope="module")
def gws(gateway_factory: Callable[..., Gateway]) -> Listeners:
    internal, proxied = free_port(), free_port()
    gw = gateway_factory(
        {"spec.yaml": SPEC, "jwks.json": json.dumps(IDP.jwks()), "policy.yaml": policy(internal, proxied)}
    )
    # the same Envoy seen through its other listeners
    others = [dataclasses.replace(gw, port=p) for p in (internal, proxied)]
    for other in others:
        other.wait_listening()
    return Listeners(gw, *others)


def token(provider: IdentityProvider = IDP, now: float | None = None, ttl: int = 3600, **claims: Any) -> str:
    return provider.mint({"sub": "alice", **claims}, now=now, ttl=ttl)


def bearer(tok: str) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {tok}")]


def received(echo: EchoServer, resp: Response) -> dict[str, Any] | None:
    """What the backend got for this response's request (the gateway sets its id on both)."""
    rid = resp.header("x-request-id")
    return next((r for r in reversed(echo.received) if r["headers"].get("x-request-id") == rid), None)


def status(gw: Gateway, method: str, path: str, headers: list[tuple[str, str]] | None = None) -> int:
    return gw.request(method, path, headers=headers).status


# -- authorization ------------------------------------------------------------------------


def test_an_operation_no_rule_allows_is_denied_to_every_valid_token(gws: Listeners) -> None:
    """Rules allow list and write; purge is in no rule: its route has an RBAC with no policy."""
    gw = gws.public
    for claims in ({"role": "staff"}, {"role": "admin"}, {"scope": "items:write"}, {}):
        resp = gw.request("DELETE", "/a/purge", headers=bearer(token(**claims)))
        assert resp.status == 403, (claims, resp.status)
        assert resp.json()["message"] == "forbidden"
    assert status(gw, "DELETE", "/a/purge") == 401  # still a token first
    assert status(gw, "DELETE", "/b/purge", bearer(token())) == 200  # no rules on API b: a valid token is enough


def test_roles_allow_only_the_operations_of_their_rules(gws: Listeners, echo: EchoServer) -> None:
    gw = gws.public
    resp = gw.request("GET", "/a/list", headers=bearer(token(role="staff")))
    assert resp.status == 200 and received(echo, resp) is not None
    assert status(gw, "GET", "/a/list", bearer(token(role=["intern", "staff"]))) == 200  # a list of roles
    assert status(gw, "GET", "/a/list", bearer(token(role="customer"))) == 403
    assert status(gw, "GET", "/a/list", bearer(token(role="staffer"))) == 403  # exact, not a prefix
    assert status(gw, "POST", "/a/write", bearer(token(role="staff"))) == 403  # write is allowed by scope only


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        ("items:write", 200),
        ("openid items:write profile", 200),  # a space-separated string
        (["openid", "items:write"], 200),  # a list
        ("items:writer", 403),
        ("openid items:read", 403),
        ("items:write".upper(), 403),
    ],
)
def test_scopes_allow_the_operations_of_their_rules(gws: Listeners, scope: object, expected: int) -> None:
    assert status(gws.public, "POST", "/a/write", bearer(token(scope=scope))) == expected


def test_oauth2_scopes_in_the_spec_are_required(gws: Listeners) -> None:
    gw = gws.public
    # API b has no rules: the spec's oauth2 requirement alone turns authorization on for read
    assert status(gw, "GET", "/b/read", bearer(token(scope="items:read"))) == 200
    assert status(gw, "GET", "/b/read", bearer(token(scope="items:write"))) == 403
    assert status(gw, "GET", "/b/read", bearer(token(role="staff"))) == 403
    assert status(gw, "GET", "/b/list", bearer(token())) == 200  # the rest of the API: a valid token


def test_roles_and_scopes_claims_are_the_providers(gws: Listeners) -> None:
    """Provider custom reads roles from `groups` and scopes from `scp`, never from the defaults."""
    gw = gws.public
    assert status(gw, "GET", "/c/list", bearer(token(CUSTOM, groups=["staff"]))) == 200
    assert status(gw, "GET", "/c/list", bearer(token(CUSTOM, groups="staff"))) == 200
    assert status(gw, "GET", "/c/list", bearer(token(CUSTOM, role="staff"))) == 403
    assert status(gw, "POST", "/c/write", bearer(token(CUSTOM, scp="openid items:write"))) == 200
    assert status(gw, "POST", "/c/write", bearer(token(CUSTOM, scope="items:write"))) == 403


# -- identity ------------------------------------------------------------------------------


def test_claim_headers_are_the_providers_and_replace_client_values(gws: Listeners, echo: EchoServer) -> None:
    spoofed = [("X-Subject", "mallory"), ("X-Tenant-Id", "evil"), ("X-User-Id", "mallory"), ("X-Partner-Id", "p")]
    resp = gws.public.request(
        "GET", "/c/list", headers=[*spoofed, *bearer(token(CUSTOM, groups="staff", tenant="acme"))]
    )
    assert resp.status == 200
    seen = received(echo, resp)
    assert seen is not None
    names = [k for k, _ in seen["header_list"]]
    assert seen["headers"]["x-subject"] == "alice" and names.count("x-subject") == 1
    assert seen["headers"]["x-tenant-id"] == "acme" and names.count("x-tenant-id") == 1
    assert "x-user-id" not in seen["headers"]  # the custom map replaces the default one
    assert "x-partner-id" not in seen["headers"]  # listed in headers.identityHeaders, no claim sets it
    # without a token (a public operation) the client's values are removed all the same
    resp = gws.public.request("GET", "/c/open", headers=spoofed)
    seen = received(echo, resp)
    assert resp.status == 200 and seen is not None
    assert not {"x-subject", "x-tenant-id", "x-user-id", "x-partner-id"} & set(seen["headers"])


def test_identity_header_prefixes_replace_the_default(gws: Listeners, echo: EchoServer) -> None:
    sent = [("X-Auth-Level", "root"), ("x-auth-", "1"), ("X-User-Nickname", "mal"), ("X-User-Id", "mallory")]
    for path in ("/b/open", "/b/list"):
        resp = gws.public.request("GET", path, headers=[*sent, *bearer(token())])
        seen = received(echo, resp)
        assert resp.status == 200 and seen is not None, path
        assert not [k for k in seen["headers"] if k.startswith("x-auth-")], path
        # [x-auth-] replaced [x-user-]: the built-in names are still removed, others pass
        assert seen["headers"].get("x-user-nickname") == "mal", path
        assert seen["headers"].get("x-user-id") in (None, "alice"), path


def test_token_from_listed_query_parameters_and_cookies(gws: Listeners, echo: EchoServer) -> None:
    gw, good = gws.public, token(CUSTOM, groups="staff")
    for how, path, headers in [
        ("query", f"/c/list?token={good}", []),
        ("query among others", f"/c/list?a=1&token={good}&b=2", []),
        ("cookie", "/c/list", [("Cookie", f"session={good}")]),
        ("cookie among others", "/c/list", [("Cookie", f"theme=dark; session={good}; lang=en")]),
        ("header", "/c/list", bearer(good)),
    ]:
        resp = gw.request("GET", path, headers=headers)
        seen = received(echo, resp)
        assert resp.status == 200 and seen is not None, how
        assert seen["headers"]["x-subject"] == "alice", how
    for how, path, headers in [
        ("unlisted query parameter", f"/c/list?access_token={good}", []),
        ("unlisted cookie", "/c/list", [("Cookie", f"token={good}")]),
        ("listed name, on a provider that does not list it", f"/b/list?token={token()}", []),
    ]:
        assert status(gw, "GET", path, headers) == 401, how


def test_clock_skew_is_the_providers(gws: Listeners) -> None:
    gw, now = gws.public, time.time()
    # provider idp: the default 60 s either side
    assert status(gw, "GET", "/b/list", bearer(token(now=now - 630, ttl=600))) == 200  # expired 30 s ago
    assert status(gw, "GET", "/b/list", bearer(token(now=now - 720, ttl=600))) == 401  # expired 120 s ago
    assert status(gw, "GET", "/b/list", bearer(token(nbf=int(now) + 120))) == 401
    # provider custom: clockSkew 300s
    late = token(CUSTOM, now=now - 800, ttl=600, groups="staff")  # expired 200 s ago
    assert status(gw, "GET", "/c/list", bearer(late)) == 200
    early = token(CUSTOM, nbf=int(now) + 200, groups="staff")
    assert status(gw, "GET", "/c/list", bearer(early)) == 200
    assert status(gw, "GET", "/c/list", bearer(token(CUSTOM, now=now - 1000, ttl=600, groups="staff"))) == 401


def test_public_overrides_the_spec_either_way(gws: Listeners, echo: EchoServer) -> None:
    gw = gws.public
    # the spec says public (security: []), the policy says public: false
    assert status(gw, "GET", "/b/open") == 401
    resp = gw.request("GET", "/b/open", headers=bearer(token()))
    seen = received(echo, resp)
    assert resp.status == 200 and seen is not None and seen["headers"]["x-user-id"] == "alice"
    # the spec needs a token; the policy (write) or x-gateway (opened) says public: true
    assert status(gw, "POST", "/b/write") == 200
    assert status(gw, "GET", "/b/opened") == 200
    assert status(gw, "GET", "/b/list") == 401  # the rest keeps the spec's security


# -- client address allowlists ---------------------------------------------------------------


def test_api_ip_allow_covers_the_api_and_an_operations_list_replaces_it(gws: Listeners) -> None:
    gw = gws.public
    assert status(gw, "GET", "/d/list") == 200  # API d: 127.0.0.0/8
    assert status(gw, "POST", "/d/write") == 403  # ...but its write: 203.0.113.0/24 only
    assert status(gw, "GET", "/e/list") == 403  # API e: 203.0.113.0/24
    assert status(gw, "GET", "/e/opened") == 403
    assert status(gw, "POST", "/e/write") == 200  # ...but its write: 127.0.0.1/32
    resp = gw.request("GET", "/e/list")
    assert resp.json()["message"] == "forbidden" and resp.header("www-authenticate") is None


def test_an_operation_under_several_lists_must_pass_all(gws: Listeners) -> None:
    gw = gws.public
    # /d/purge: API d's 127.0.0.0/8 (passes) and the prefix list 203.0.113.0/24 (fails)
    assert status(gw, "DELETE", "/d/purge") == 403
    # /d/read: API d's 127.0.0.0/8 and the prefix list [127.0.0.1, 10.0.0.0/8]: passes both
    assert status(gw, "GET", "/d/read") == 200


def test_a_prefix_list_applies_on_its_listeners_only(gws: Listeners) -> None:
    assert status(gws.internal, "GET", "/d/open") == 403
    assert status(gws.public, "GET", "/d/open") == 200
    assert status(gws.internal, "GET", "/d/list") == 200  # the rest of API d on that listener


@pytest.mark.parametrize("shape", ["principals", "ip-trie"])
def test_with_trusted_hops_the_client_is_the_forwarded_address(gws: Listeners, echo: EchoServer, shape: str) -> None:
    """xffNumTrustedHops: 1: the client is the last X-Forwarded-For entry, not the TCP peer
    (127.0.0.1): a 127.0.0.0/8 list refuses it, a 203.0.113.0/24 list lets it in."""
    loopback_only, documentation_net = ("/f/list", "/f/write") if shape == "principals" else ("/f/purge", "/f/read")
    method = {"/f/list": "GET", "/f/write": "POST", "/f/purge": "DELETE", "/f/read": "GET"}
    via_proxy = [("X-Forwarded-For", "198.51.100.1, 203.0.113.9")]
    assert status(gws.proxied, method[loopback_only], loopback_only, via_proxy) == 403
    resp = gws.proxied.request(method[documentation_net], documentation_net, headers=via_proxy)
    seen = received(echo, resp)
    assert resp.status == 200 and seen is not None
    assert seen["headers"]["x-forwarded-for"] == "203.0.113.9"  # exactly one value: the trusted client
    # from the proxy itself (no X-Forwarded-For entry of its own): the lists see 127.0.0.1
    loopback = [("X-Forwarded-For", "127.0.0.1")]
    assert status(gws.proxied, method[documentation_net], documentation_net, loopback) == 403
    assert status(gws.proxied, method[loopback_only], loopback_only, loopback) == 200


def test_the_allowlist_decision_is_logged_with_the_trusted_client(gws: Listeners) -> None:
    resp = gws.proxied.request("GET", "/f/list", headers=[("X-Forwarded-For", "203.0.113.9")])
    assert resp.status == 403
    envoy = gws.proxied.envoy
    assert envoy is not None
    rid = resp.header("x-request-id")
    entry = wait_for(lambda: next((e for e in envoy.access_log() if e["request_id"] == rid), None), 10, "the log")
    assert entry["client"] == "203.0.113.9" and entry["status"] == 403


def test_an_operations_ip_allow_takes_bare_addresses(gateway_factory: Callable[..., Gateway]) -> None:
    files = {
        "spec.yaml": SPEC,
        "jwks.json": json.dumps(IDP.jwks()),
        "policy.yaml": policy(free_port(), free_port()).replace("[127.0.0.1/32]", "[127.0.0.1]"),
    }
    gw = gateway_factory(files)
    assert status(gw, "POST", "/e/write") == 200
    assert status(gw, "GET", "/e/list") == 403
