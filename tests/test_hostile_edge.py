"""An outside attacker against a real Envoy, over HTTP/1: every test is a class of attack tried in
many spellings, and asserts what docs/policy.md promises, judged by what the recording backend
received (never by the status code alone).

One gateway serves one API on four listeners: ``edge`` (the defaults, a 1 s request-headers
timeout), ``proxied`` (one trusted proxy hop), ``named`` (hostnames) and ``scoped`` (scoped
routes). Operations: public ones, an admin-only one, a customer one, one under an address
allowlist prefix and one with its own ``ipAllow``; tokens may also come in ``?access_token=`` and
the ``session`` cookie.

Tests marked ``xfail(strict=True)`` are promises the gateway breaks today; the reason says how.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from controlplane.echo import EchoServer
from controlplane.idp import IdentityProvider, SigningKey
from tests.harness import Gateway, Response, free_port, raw_request
from tests.xds_harness import wait_for

pytestmark = pytest.mark.envoy

ISSUER = "https://idp.edge"
AUDIENCE = "edge"
ALLOWED_NET = "203.0.113.0/24"  # never the tests' 127.0.0.1
ALLOWED_IP = "203.0.113.5"
NAMED_HOST = "api.example.com"

SPEC = """
openapi: 3.0.3
info: {title: edge, version: "1"}
servers: [{url: /}]
security: [{bearer: []}]
components: {securitySchemes: {bearer: {type: http, scheme: bearer}}}
paths:
  /public:
    get: {operationId: public, security: [], responses: {"200": {description: ok}}}
    post: {operationId: publicPost, security: [], responses: {"200": {description: ok}}}
  /items/{id}:
    parameters: [{name: id, in: path, required: true, schema: {type: integer, minimum: 1}}]
    get: {operationId: getItem, security: [], responses: {"200": {description: ok}}}
    delete: {operationId: deleteItem, x-gateway: {roles: [admin]}, responses: {"200": {description: ok}}}
  /files/{name}:
    parameters: [{name: name, in: path, required: true, schema: {type: string}}]
    get: {operationId: getFile, security: [], responses: {"200": {description: ok}}}
  /admin/users:
    get: {operationId: listUsers, x-gateway: {roles: [admin]}, responses: {"200": {description: ok}}}
  /admin/users/{id}:
    parameters: [{name: id, in: path, required: true, schema: {type: string}}]
    get: {operationId: getUser, x-gateway: {roles: [admin]}, responses: {"200": {description: ok}}}
  /internal/stats:
    get: {operationId: stats, security: [], responses: {"200": {description: ok}}}
  /ops/restart:
    post:
      operationId: restart
      security: []
      x-gateway: {ipAllow: [ALLOWED_NET]}
      responses: {"200": {description: ok}}
  /me:
    get: {operationId: me, responses: {"200": {description: ok}}}
  /reports:
    get: {operationId: reports, x-gateway: {scopes: ["reports:write"]}, responses: {"200": {description: ok}}}
""".replace("ALLOWED_NET", ALLOWED_NET)


def policy(jwks: dict[str, Any], ports: dict[str, int]) -> str:
    return f"""
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
auth:
  providers:
    - name: idp
      issuer: {ISSUER}
      audiences: [{AUDIENCE}]
      jwks: {{inline: {json.dumps(jwks)}}}
      tokenFrom: {{queryParameters: [access_token], cookies: [session]}}
ipAllowlists:
  - pathPrefix: /internal
    allow: [{ALLOWED_NET}]
listeners:
  - {{name: edge, address: 127.0.0.1, port: {{{{PORT}}}}, timeouts: {{requestHeaders: 1s}}}}
  - {{name: proxied, address: 127.0.0.1, port: {ports["proxied"]}, xffNumTrustedHops: 1}}
  - {{name: named, address: 127.0.0.1, port: {ports["named"]}, hostnames: [{NAMED_HOST}]}}
  - {{name: scoped, address: 127.0.0.1, port: {ports["scoped"]}, routeScopes: always}}
upstreams: [{{name: backend, endpoints: ["{{{{BACKEND}}}}"]}}]
apis:
  - name: api
    spec: spec.yaml
    upstream: backend
    auth:
      rules:
        - roles: [customer]
          operations: [me]
"""


Seen = list[dict[str, Any]]


@dataclasses.dataclass
class Target:
    """The gateway under attack, its listeners by name, and what its backend received."""

    gw: Gateway
    ports: dict[str, int]
    echo: EchoServer
    idp: IdentityProvider

    def send(self, raw: bytes, listener: str = "edge") -> tuple[Response | None, Seen]:
        """Exactly these bytes on a fresh connection; None when Envoy closed without a reply."""
        before = len(self.echo.received)
        try:
            resp: Response | None = raw_request(self.ports[listener], raw)
        except ValueError:
            resp = None
        return resp, self.echo.received[before:]

    def request(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]] | None = None,
        listener: str = "edge",
        host: str | None = "gateway.test",
        body: bytes = b"",
    ) -> tuple[Response | None, Seen]:
        head = f"{method} {target} HTTP/1.1\r\n"
        if host is not None:
            head += f"Host: {host}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers or [])
        if body or method in ("POST", "PUT", "PATCH"):
            head += f"Content-Length: {len(body)}\r\n"
        head += "Connection: close\r\n\r\n"
        return self.send(head.encode("latin-1") + body, listener)

    def token(self, role: Any = "customer", **claims: Any) -> str:
        return self.idp.mint({"sub": "alice", "role": role, **claims}, audience=AUDIENCE)

    def stat(self, name: str) -> int:
        assert self.gw.envoy is not None
        _status, body = self.gw.envoy.admin(f"/stats?filter=^{name}$")
        return sum(int(line.rsplit(":", 1)[1]) for line in body.splitlines() if line.strip())


def start_target(gateway_factory: Callable[..., Gateway], echo: EchoServer) -> Target:
    idp = IdentityProvider(ISSUER, [SigningKey.generate("RS256", "edge-1")])
    ports = {"proxied": free_port(), "named": free_port(), "scoped": free_port()}
    gw = gateway_factory({"spec.yaml": SPEC, "policy.yaml": policy(idp.jwks(), ports)})
    for port in ports.values():
        dataclasses.replace(gw, port=port).wait_listening()
    return Target(gw, {"edge": gw.port, **ports}, echo, idp)


@pytest.fixture(scope="module")
def target(gateway_factory: Callable[..., Gateway], echo: EchoServer) -> Target:
    return start_target(gateway_factory, echo)


def bearer(token: str) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {token}")]


def status(resp: Response | None) -> int | None:
    return None if resp is None else resp.status


# -- path ACL bypass: another spelling of a protected path ---------------------------------

# Spellings of /admin/users (admin only); a customer token must never reach it, and whatever
# reaches the backend on that operation is the declared path itself.
ADMIN_SPELLINGS = [
    "/admin/users",
    "/admin/users/",
    "/admin//users",
    "//admin/users",
    "///admin///users",
    "/admin/./users",
    "/./admin/users",
    "/admin/users/.",
    "/x/../admin/users",
    "/admin/users/x/..",
    "/public/../admin/users",
    "/files/%2e%2e/admin/users",
    "/files/%2E%2E/admin/users",
    "/files/.%2e/admin/users",
    "/admin/%2e/users",
    "/%2e/admin/users",
    "/%61dmin/users",
    "/admin/%75sers",
    "/%61%64%6d%69%6e/%75%73%65%72%73",
    "/ADMIN/users",
    "/Admin/Users",
    "/admin/users.",
    "/admin/users..",
    "/admin/users%00",
    "/admin/users%20",
    "/admin/users%09",
    "/admin/users;",
    "/admin;/users",
    "/admin/users;x=y",
    "/admin/users;/",
    "/admin/users?",
    "/admin/users?x=/../../public",
    "/admin/users#",
    "/admin\\users",
    "/admin/users\\",
    "/files/..\\admin\\users",
    "/admin%2fusers",
    "/admin%2Fusers",
    "/admin%5cusers",
    "/admin%252fusers",
    "/files/..%2fadmin%2fusers",
    "/files/%252e%252e/admin/users",
    "/admin/%C0%AE%C0%AE/admin/users",
    "/admin%C0%AFusers",
    "/admin/users%EF%BC%8F",
    "/admin/users%2F",
    "admin/users",
    "*",
    "http://gateway.test/admin/users",
    "http://evil.test/admin/users",
    "https://gateway.test/admin/users",
    "http://gateway.test//admin/users",
    "http://gateway.test:80/admin/users",
    "http://user@gateway.test/admin/users",
    "//gateway.test/admin/users",
]


@pytest.mark.parametrize("listener", ["edge", "scoped"])
@pytest.mark.parametrize("path", ADMIN_SPELLINGS)
def test_no_spelling_of_an_admin_path_lets_a_customer_in(target: Target, listener: str, path: str) -> None:
    resp, seen = target.request("GET", path, bearer(target.token("customer")), listener=listener)
    assert seen == [], (path, [s["path"] for s in seen])
    assert status(resp) in (400, 403, 404), (path, status(resp))
    resp, seen = target.request("GET", path, bearer(target.token("admin")), listener=listener)
    assert all(s["path"].split("?")[0] == "/admin/users" for s in seen), (path, [s["path"] for s in seen])


# Spellings of the operations under an address allowlist (the prefix /internal, and one
# operation's ipAllow), sent with every client-address header a proxy might honour.
ALLOWLISTED = [
    ("GET", "/internal/stats"),
    ("GET", "//internal/stats"),
    ("GET", "/internal//stats"),
    ("GET", "/public/../internal/stats"),
    ("GET", "/files/%2e%2e/internal/stats"),
    ("GET", "/%69nternal/stats"),
    ("GET", "/internal/stats;x"),
    ("GET", "/INTERNAL/stats"),
    ("GET", "/internal/./stats"),
    ("GET", "/internal%2fstats"),
    ("GET", "http://gateway.test/internal/stats"),
    ("POST", "/ops/restart"),
    ("POST", "//ops//restart"),
    ("POST", "/public/../ops/restart"),
    ("POST", "/%6fps/restart"),
    ("POST", "/ops/restart/"),
    ("POST", "http://gateway.test/ops/restart"),
]
SPOOFED_ADDRESS = [
    ("X-Forwarded-For", ALLOWED_IP),
    ("X-Real-IP", ALLOWED_IP),
    ("Forwarded", f"for={ALLOWED_IP}"),
    ("X-Envoy-External-Address", ALLOWED_IP),
    ("True-Client-IP", ALLOWED_IP),
    ("X-Client-IP", ALLOWED_IP),
    ("CF-Connecting-IP", ALLOWED_IP),
    ("X-Cluster-Client-IP", ALLOWED_IP),
    ("X-Original-Forwarded-For", ALLOWED_IP),
]


@pytest.mark.parametrize("listener", ["edge", "scoped", "named"])
@pytest.mark.parametrize(("method", "path"), ALLOWLISTED)
def test_no_spelling_or_header_passes_an_address_allowlist(
    target: Target, listener: str, method: str, path: str
) -> None:
    host = NAMED_HOST if listener == "named" else "gateway.test"
    admin = bearer(target.token("admin"))
    resp, seen = target.request(method, path, [*SPOOFED_ADDRESS, *admin], listener=listener, host=host)
    assert seen == [], (path, [s["path"] for s in seen])
    assert status(resp) in (400, 403, 404), (path, status(resp))


# -- path normalization: what the backend receives is what the gateway routed ---------------


@pytest.mark.parametrize("path", ["/files/%2e%2e;", "/files/.%2e;x=1", "/files/%2e;", "/files/%2E%2e;jsessionid=1"])
def test_a_dot_segment_with_parameters_is_no_parameter_value(target: Target, path: str) -> None:
    """Envoy decodes '%2e' after removing dot-segments: '/files/%2e%2e;' would reach the backend as
    '/files/..;', the parent to Tomcat and Spring (and to Envoy itself, sent as is). A path
    parameter never takes such a value: 404, nothing reaches the backend."""
    resp, seen = target.request("GET", path)
    assert (status(resp), seen) == (404, []), (path, status(resp))


@pytest.mark.parametrize(
    "path",
    [
        "/files/%41",
        "/files/%7e",
        "/files/%252e%252e",
        "/files/..%3b",
        "/files/a;",
        "/files/%C0%AE%C0%AE",
        "/items/%31",
        "/x/../files/a",
    ],
)
def test_what_reaches_the_backend_routes_to_the_same_operation(target: Target, path: str) -> None:
    """Normalization must be idempotent: the path a backend receives, sent again, is routed to the
    same operation and reaches the backend unchanged. Otherwise a backend that finishes the
    normalization (Tomcat and Spring treat '..;' as '..') serves another path than the one routed."""
    resp, seen = target.request("GET", path)
    if not seen:  # refused outright is fine too
        assert status(resp) in (400, 404), (path, status(resp))
        return
    assert status(resp) == 200 and len(seen) == 1, (path, status(resp))
    forwarded = seen[0]["path"]
    again, seen_again = target.request("GET", forwarded)
    assert status(again) == 200 and [s["path"] for s in seen_again] == [forwarded], (path, forwarded, status(again))


# -- query strings: parameters other than tokens are kept as sent ---------------------------


# Envoy's own query parameter mutation (the first token-stripping filter) decoded every
# parameter and wrote the query back unencoded; each of these changed on its way.
@pytest.mark.parametrize(
    "query",
    [
        "a=1&b=2",
        "a=1&a=2",
        "x=a+b",
        "a=1;b=2",
        "q=a%26admin%3Dtrue",  # was 'q=a&admin=true': a new parameter
        "next=%2Fa%3Fb%3D1%26c%3D2",  # an encoded URL split into parameters
        "q=%23&role=user",  # '#': the backend lost 'role=user'
        "q=a%20b",  # a raw space in the upstream request line
        "sig=ab%2Bcd%3D%3D",  # '+', a space to the backend
        "q=100%25",  # a bare '%'
        "q=caf%C3%A9",  # raw non-ASCII bytes
        "b=2&a=1",  # re-ordered by name
        "flag&x=1",  # 'flag='
        "a=1&&b=2",  # '=&a=1&b=2'
        "q=%0A",  # a raw LF in :path: 503
        "q=%26access_token%3Dabc",  # 'access_token=abc' at the backend
    ],
)
@pytest.mark.parametrize("path", ["/public", "/me"])
def test_other_query_parameters_reach_the_backend_as_sent(target: Target, path: str, query: str) -> None:
    headers = bearer(target.token("customer")) if path == "/me" else []
    resp, seen = target.request("GET", f"{path}?{query}", headers)
    assert status(resp) == 200, (query, status(resp), resp.body if resp else None)
    assert [s["path"] for s in seen] == [f"{path}?{query}"]


def test_an_encoded_token_parameter_never_becomes_one(target: Target) -> None:
    token = target.token("customer")
    resp, seen = target.request("GET", f"/public?q=%26access_token%3D{token}")
    assert status(resp) == 200 and len(seen) == 1
    assert "access_token=" not in seen[0]["path"], seen[0]["path"]


# -- tokens: wherever the gateway reads one, it is gone before the backend ------------------

Place = Callable[[str], tuple[str, list[tuple[str, str]]]]  # token -> (query suffix, headers)

# Spellings of the places the gateway reads a token from (or of near misses it must not read).
TOKEN_SPELLINGS: dict[str, Place] = {
    "encoded name %5F": lambda t: (f"?access%5Ftoken={t}", []),
    "encoded name %61": lambda t: (f"?%61ccess_token={t}", []),
    "encoded dots in the value": lambda t: ("?access_token=" + t.replace(".", "%2E"), []),
    "after empty pairs": lambda t: (f"?&&access_token={t}&&", []),
    "quoted cookie": lambda t: ("", [("Cookie", f'session="{t}"')]),
    "cookie in a second header": lambda t: ("", [("Cookie", "a=b"), ("Cookie", f"session={t}")]),
    "cookie without spaces": lambda t: ("", [("Cookie", f"a=b;session={t};c=d")]),
    "Bearer with two spaces": lambda t: ("", [("Authorization", f"Bearer  {t}")]),
    "Bearer and a trailing space": lambda t: ("", [("Authorization", f"Bearer {t} ")]),
    # not read (Bearer is case-sensitive and needs a space), and removed all the same
    "lower-case bearer": lambda t: ("", [("Authorization", f"bearer {t}")]),
    "Bearer and a tab": lambda t: ("", [("Authorization", f"Bearer\t{t}")]),
    "other scheme": lambda t: ("", [("Authorization", f"Token {t}")]),
    "cookie after a tab": lambda t: ("", [("Cookie", f"a=b;\tsession={t}")]),  # Envoy trims spaces only
}
NOT_READ = {"lower-case bearer", "Bearer and a tab", "other scheme", "cookie after a tab"}


@pytest.mark.parametrize("where", list(TOKEN_SPELLINGS))
def test_a_token_the_gateway_reads_never_reaches_the_backend(target: Target, where: str) -> None:
    token = target.token("customer")
    suffix, headers = TOKEN_SPELLINGS[where](token)
    read, seen = target.request("GET", "/me" + suffix, headers)
    if where in NOT_READ:
        assert status(read) == 401 and seen == [], (where, status(read))
    else:
        assert status(read) == 200 and len(seen) == 1, (where, status(read))
    for path in ("/me", "/public"):
        _resp, seen = target.request("GET", path + suffix, headers)
        for s in seen:
            assert token not in json.dumps(s), (where, path, s["path"], s["header_list"])
            assert "authorization" not in s["headers"], (where, path)


def test_a_space_before_the_cookie_equals_sign_does_not_smuggle_the_token(target: Target) -> None:
    token = target.token("customer")
    resp, seen = target.request("GET", "/public", [("Cookie", f"theme=dark; session ={token}")])
    assert status(resp) == 200 and len(seen) == 1
    assert token not in json.dumps(seen[0]), seen[0]["headers"].get("cookie")


def _identity(seen: Seen) -> list[tuple[str, str]] | None:
    """Every identity header the backend received, in order (duplicates included)."""
    if not seen:
        return None
    return [(k, v) for k, v in seen[0]["header_list"] if k.startswith("x-user-")]


TwoTokens = Callable[[str, str], tuple[str, list[tuple[str, str]]]]  # (a, b) -> (query suffix, headers)

# Two tokens in one request, every way the gateway reads them: docs/policy.md promises 400
# before any is verified (jwt_authn would verify each and copy the claims of both).
TWO_TOKENS: dict[str, TwoTokens] = {
    "header and query": lambda a, b: (f"?access_token={b}", bearer(a)),
    "header and cookie": lambda a, b: ("", [*bearer(a), ("Cookie", f"session={b}")]),
    "query and cookie": lambda a, b: (f"?access_token={a}", [("Cookie", f"session={b}")]),
    "query twice": lambda a, b: (f"?access_token={a}&access_token={b}", []),
    "query twice, one name escaped": lambda a, b: (f"?access_token={a}&%61ccess_token={b}", []),
    "header and an escaped query name": lambda a, b: (f"?access%5Ftoken={b}", bearer(a)),
    "cookie twice": lambda a, b: ("", [("Cookie", f"session={a}; session={b}")]),
    "cookie twice, quoted": lambda a, b: ("", [("Cookie", f'session="{a}"; session="{b}"')]),
    "header and a second Cookie header": lambda a, b: ("", [*bearer(a), ("Cookie", "x=1"), ("Cookie", f"session={b}")]),
    "header with leading spaces and query": lambda a, b: (f"?access_token={b}", [("Authorization", f"   Bearer {a}")]),
}
_COOKIE_HEADERS = pytest.mark.xfail(
    strict=True,
    reason="two token cookies in two Cookie headers are not refused (the one-token rule sees only one of them); "
    "harmless today: jwt_authn reads the first session cookie only, one identity reaches the backend and both "
    "cookies are stripped",
)
TWO_TOKEN_COOKIE_HEADERS: dict[str, TwoTokens] = {
    "cookie in two headers": lambda a, b: ("", [("Cookie", f"session={a}"), ("Cookie", f"session={b}")]),
    "cookie in two headers, after another": lambda a, b: (
        "",
        [("Cookie", f"session={a}"), ("Cookie", f"x=1; session={b}")],
    ),
}
TWO_TOKENS_HIDDEN_BEARER: dict[str, TwoTokens] = {
    "another scheme before Bearer, and query": lambda a, b: (
        f"?access_token={b}",
        [("Authorization", f"Token Bearer {a}")],
    ),
    "a prefix glued to Bearer, and query": lambda a, b: (f"?access_token={b}", [("Authorization", f"xBearer {a}")]),
    "Basic then Bearer headers, and query": lambda a, b: (
        f"?access_token={b}",
        [("Authorization", "Basic eDp5"), ("Authorization", f"Bearer {a}")],
    ),
    "Bearer inside Basic, and cookie": lambda a, b: (
        "",
        [("Authorization", f"Basic x Bearer {a}"), ("Cookie", f"session={b}")],
    ),
}


@pytest.mark.parametrize(
    "how",
    [
        *TWO_TOKENS,
        *(pytest.param(how, marks=_COOKIE_HEADERS) for how in TWO_TOKEN_COOKIE_HEADERS),
        *TWO_TOKENS_HIDDEN_BEARER,
    ],
)
@pytest.mark.parametrize("order", ["admin first", "customer first"])
def test_two_tokens_are_refused_before_verification(target: Target, how: str, order: str) -> None:
    admin = target.token("admin", sub="root")
    customer = target.token("customer", sub="carol")
    a, b = (admin, customer) if order == "admin first" else (customer, admin)
    suffix, headers = {**TWO_TOKENS, **TWO_TOKEN_COOKIE_HEADERS, **TWO_TOKENS_HIDDEN_BEARER}[how](a, b)
    for path in ("/admin/users", "/me", "/public"):
        resp, seen = target.request("GET", path + suffix, headers)
        assert (status(resp), _identity(seen)) == (400, None), (how, path, status(resp), _identity(seen))
        assert resp is not None and resp.json()["message"] == "send one token, in one place"


def test_one_token_in_two_places_is_refused(target: Target) -> None:
    token = target.token("customer", sub="carol")
    resp, seen = target.request("GET", "/me", [*bearer(token), ("Cookie", f"session={token}")])
    assert status(resp) == 400 and seen == []


def test_two_authorization_headers_are_refused(target: Target) -> None:
    for tokens in ((target.token("customer"), target.token("admin")), ("not.a.token", target.token("admin"))):
        resp, seen = target.request("GET", "/admin/users", [*bearer(tokens[0]), *bearer(tokens[1])])
        assert status(resp) == 401 and seen == []


# -- roles and scopes: only a whole one grants it ------------------------------------------


@pytest.mark.parametrize(
    ("role", "allowed"),
    [
        ("admin", True),
        (["customer", "admin"], True),
        ("customer admin", False),
        ("customer,admin", False),
        ("admin ", False),
        (" admin", False),
        ("Admin", False),
        ("administrator", False),
        (["admin "], False),
        ([["admin"]], False),
        ({"admin": True}, False),
        ("admin\u00a0", False),
        (None, False),
        (True, False),
    ],
)
def test_only_a_whole_role_grants_it(target: Target, role: Any, allowed: bool) -> None:
    resp, seen = target.request("GET", "/admin/users", bearer(target.token(role)))
    assert (status(resp), len(seen)) == ((200, 1) if allowed else (403, 0)), (role, status(resp))


@pytest.mark.parametrize(
    ("scope", "allowed"),
    [
        ("reports:write", True),
        ("read reports:write", True),
        ("read  reports:write ", True),
        (["read", "reports:write"], True),
        ("read\treports:write", False),  # RFC 6749: scope tokens are separated by spaces only
        ("read\nreports:write", False),
        ("read,reports:write", False),
        ("read\u3000reports:write", False),
        ("reports:writer", False),
        ("reports:write:all", False),
        ("reports", False),
        ("REPORTS:WRITE", False),
        (["read reports:write"], False),  # a list item is one scope
        (["reports:write "], False),
        ([["reports:write"]], False),
        ({"reports:write": True}, False),
    ],
)
def test_only_a_whole_scope_grants_it(target: Target, scope: Any, allowed: bool) -> None:
    resp, seen = target.request("GET", "/reports", bearer(target.token("nobody", scope=scope)))
    assert (status(resp), len(seen)) == ((200, 1) if allowed else (403, 0)), (scope, status(resp))


# -- claims: a header carries the claim verbatim, or the request is refused ------------------


@pytest.mark.parametrize("sub", [" admin", "\tadmin", "admin "])
def test_a_subject_with_edge_whitespace_is_refused(target: Target, sub: str) -> None:
    """HTTP field values have no leading or trailing whitespace (RFC 9110, 5.5): such a claim
    cannot be carried verbatim, and docs/policy.md promises 'never a partial value'."""
    resp, seen = target.request("GET", "/me", bearer(target.token("customer", sub=sub)))
    assert status(resp) == 403 and seen == [], (sub, status(resp), _identity(seen))


def test_a_clean_subject_is_carried_verbatim(target: Target) -> None:
    """The control of the test above: inner whitespace is part of a value."""
    resp, seen = target.request("GET", "/me", bearer(target.token("customer", sub="a  b\tc")))
    assert status(resp) == 200 and _identity(seen) == [("x-user-id", "a  b\tc"), ("x-user-role", "customer")]


# -- Envoy's own control headers: a client cannot steer Envoy or reach the backend with them --

ENVOY_INTERNAL = [
    ("x-envoy-internal", "true"),
    ("x-envoy-original-path", "/admin/users"),
    ("x-envoy-decorator-operation", "admin"),
    ("x-envoy-retry-on", "5xx"),
    ("x-envoy-retry-grpc-on", "unavailable"),
    ("x-envoy-max-retries", "5"),
    ("x-envoy-retriable-status-codes", "503"),
    ("x-envoy-upstream-rq-timeout-ms", "1"),
    ("x-envoy-upstream-rq-per-try-timeout-ms", "1"),
    ("x-envoy-expected-rq-timeout-ms", "1"),
    ("x-envoy-hedge-on-per-try-timeout", "true"),
    ("x-envoy-upstream-alt-stat-name", "admin"),
    ("x-envoy-downstream-service-cluster", "admin"),
    ("x-envoy-downstream-service-node", "admin"),
    ("x-envoy-ip-tags", "internal"),
    ("x-envoy-force-trace", "1"),
    ("x-forwarded-client-cert", "By=spiffe://admin;Hash=0"),
]


@pytest.mark.parametrize("listener", ["edge", "proxied"])
def test_envoy_internal_headers_from_a_client_never_reach_the_backend(target: Target, listener: str) -> None:
    spoof = [*ENVOY_INTERNAL, ("X-Envoy-External-Address", "10.9.9.9"), ("X-Forwarded-Proto", "https")]
    if listener == "proxied":
        spoof.append(("X-Forwarded-For", ALLOWED_IP))
    resp, seen = target.request("GET", "/public", spoof, listener=listener)
    assert status(resp) == 200 and len(seen) == 1
    received = dict(seen[0]["header_list"])
    leaked = set(received) & {k for k, _v in ENVOY_INTERNAL}
    assert not leaked, leaked
    client = ALLOWED_IP if listener == "proxied" else "127.0.0.1"
    assert received["x-envoy-external-address"] == client
    if listener == "edge":  # no trusted proxy: the scheme is the connection's
        assert received["x-forwarded-proto"] == "http"


def test_a_client_cannot_make_envoy_retry_a_post(target: Target) -> None:
    """The default retries only replay what never reached the application; client-sent retry
    headers must not turn a POST that the backend answered 503 into several."""
    steer = [
        ("X-Envoy-Retry-On", "5xx,retriable-status-codes,gateway-error"),
        ("X-Envoy-Max-Retries", "5"),
        ("X-Envoy-Retriable-Status-Codes", "503"),
        ("X-Echo-Status", "503"),
    ]
    for listener in ("edge", "proxied"):
        resp, seen = target.request("POST", "/public", steer, listener=listener, body=b"pay=1")
        assert status(resp) == 503 and len(seen) == 1, (listener, status(resp), len(seen))


def test_a_client_cannot_shorten_the_route_timeout(target: Target) -> None:
    steer = [("X-Envoy-Upstream-Rq-Timeout-Ms", "1"), ("X-Envoy-Upstream-Rq-Per-Try-Timeout-Ms", "1")]
    resp, seen = target.request("GET", "/public", [*steer, ("X-Echo-Delay-Ms", "200")])
    assert status(resp) == 200 and len(seen) == 1


# -- client address: only the trusted hop decides ------------------------------------------


@pytest.mark.parametrize(
    ("xff", "client"),
    [
        ([ALLOWED_IP], ALLOWED_IP),
        ([f"10.0.0.1, {ALLOWED_IP}"], ALLOWED_IP),  # the proxy appended the client it saw
        ([f"unknown, {ALLOWED_IP}"], ALLOWED_IP),
        ([f" {ALLOWED_IP} "], ALLOWED_IP),
        (["10.0.0.1", ALLOWED_IP], ALLOWED_IP),  # two headers are one list
        ([f"{ALLOWED_IP}, 10.0.0.1"], "10.0.0.1"),  # the client's own entry is not trusted
        ([f"{ALLOWED_IP},10.0.0.1"], "10.0.0.1"),
        ([ALLOWED_IP, "10.0.0.1"], "10.0.0.1"),
        ([f"{ALLOWED_IP}, "], None),
        ([f"{ALLOWED_IP}:80"], None),
        ([f"::ffff:{ALLOWED_IP}"], None),
        ([f"[::ffff:{ALLOWED_IP}]"], None),
        (["203.0.113.005"], None),
        (["0313.0161.0.5"], None),
        (["3405803781"], None),
    ],
)
def test_behind_one_proxy_the_rightmost_entry_is_the_client(target: Target, xff: list[str], client: str | None) -> None:
    headers = [("X-Forwarded-For", v) for v in xff] + [("X-Real-IP", ALLOWED_IP), ("Forwarded", f"for={ALLOWED_IP}")]
    allowed = client == ALLOWED_IP
    resp, seen = target.request("GET", "/internal/stats", headers, listener="proxied")
    assert status(resp) == (200 if allowed else 403) and len(seen) == int(allowed), (xff, status(resp))
    resp, seen = target.request("GET", "/public", headers, listener="proxied")
    assert status(resp) == 200 and len(seen) == 1
    forwarded = [v for k, v in seen[0]["header_list"] if k == "x-forwarded-for"]
    assert len(forwarded) == 1 and "," not in forwarded[0], forwarded
    if client is not None:
        assert forwarded == [client]
    assert "x-real-ip" not in seen[0]["headers"] and "forwarded" not in seen[0]["headers"]


# -- methods ------------------------------------------------------------------------------

METHODS = [
    "get",
    "Get",
    "gET",
    "TRACE",
    "TRACK",
    "DEBUG",
    "CONNECT",
    "PROPFIND",
    "MOVE",
    "PURGE",
    "SEARCH",
    "QUERY",
    "LINK",
    "PRI",
    "BREW",
    "M-SEARCH",
    "HEAD",
    "OPTIONS",
    "PUT",
    "PATCH",
    "DELETE",
    "G ET",
    "GET\x00",
    "GE\tT",
]


@pytest.mark.parametrize("method", METHODS, ids=[repr(m) for m in METHODS])
@pytest.mark.parametrize("path", ["/public", "/admin/users", "/items/1"])
def test_undeclared_methods_never_reach_the_backend(target: Target, method: str, path: str) -> None:
    """GET-only paths (DELETE /items/{id} is declared, for admins only)."""
    headers = bearer(target.token("customer"))
    raw = f"{method} {path} HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\nConnection: close\r\n".encode("latin-1")
    for auth in ([], headers):
        extra = "".join(f"{k}: {v}\r\n" for k, v in auth).encode()
        resp, seen = target.send(raw + extra + b"\r\n")
        assert seen == [], (method, path, [(s["method"], s["path"]) for s in seen])
        assert status(resp) in (None, 400, 401, 403, 404, 405), (method, path, status(resp))


@pytest.mark.parametrize(
    "raw",
    [
        b"OPTIONS * HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        b"CONNECT gateway.test:80 HTTP/1.1\r\nHost: gateway.test:80\r\nConnection: close\r\n\r\n",
        b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\nConnection: close\r\n\r\n",
        b"GET /public HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        b"GET /public HTTP/1.1\r\nHost: h\r\nUpgrade: anything\r\nConnection: Upgrade\r\n\r\n",
    ],
    ids=["OPTIONS *", "CONNECT to itself", "CONNECT elsewhere", "websocket upgrade", "custom upgrade"],
)
def test_tunnels_and_upgrades_are_refused(target: Target, raw: bytes) -> None:
    resp, seen = target.send(raw)
    assert seen == [] and status(resp) in (400, 403, 404), status(resp)


# -- hosts --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw_host",
    [
        b"Host: evil.test\r\n",
        b"",
        b"Host: \r\n",
        b"Host: " + NAMED_HOST.encode() + b"\r\nHost: evil.test\r\n",
        b"Host: evil.test\r\nHost: " + NAMED_HOST.encode() + b"\r\n",
        b"Host: evil@" + NAMED_HOST.encode() + b"\r\n",
        b"Host: " + NAMED_HOST.encode() + b"@evil.test\r\n",
        b"Host: " + NAMED_HOST.encode() + b",evil.test\r\n",
        b"Host: " + NAMED_HOST.encode() + b" evil.test\r\n",
        b"Host: " + NAMED_HOST.encode() + b"/evil\r\n",
        b"Host: " + NAMED_HOST.encode() + b":1:2\r\n",
        b"Host: " + NAMED_HOST.encode() + b"..\r\n",
        b"Host: api%2eexample.com\r\n",
        b"Host: api.exampl\xe9.com\r\n",
        b"Host: evil.test\r\nX-Forwarded-Host: " + NAMED_HOST.encode() + b"\r\n",
        b"Host: [::1]\r\n",
    ],
)
@pytest.mark.parametrize("target_form", ["/public", "http://evil.test/public"])
def test_only_the_listeners_hostname_is_served(target: Target, raw_host: bytes, target_form: str) -> None:
    raw = f"GET {target_form} HTTP/1.1\r\n".encode() + raw_host + b"Connection: close\r\n\r\n"
    resp, seen = target.send(raw, "named")
    assert seen == [] and status(resp) in (400, 404), (raw_host, status(resp))


@pytest.mark.parametrize(
    ("target_form", "host"),
    [
        ("/public", NAMED_HOST.upper()),
        ("/public", f"{NAMED_HOST}.:443"),
        ("/public", f"{NAMED_HOST} "),
        (f"http://{NAMED_HOST}/public", "evil.test"),  # the absolute form's host is the request's host
        (f"http://{NAMED_HOST}:8080/public", "evil.test"),
    ],
)
def test_a_served_host_is_the_one_the_backend_sees(target: Target, target_form: str, host: str) -> None:
    resp, seen = target.request("GET", target_form, listener="named", host=host)
    assert status(resp) == 200 and len(seen) == 1
    assert seen[0]["headers"]["host"].lower().rstrip(".").split(":")[0] == NAMED_HOST


# -- identity headers in forms the first filter might miss ----------------------------------


@pytest.mark.parametrize(
    "raw_header",
    [
        b"X-User-Id:root\r\n",
        b"X-USER-ID:\troot\r\n",
        b"x-user-role: admin\r\nx-user-role: admin\r\n",
        b"X-A: 1\r\n X-User-Id: root\r\n",  # folded into X-A's value, never a header
        b"X-User-Id : root\r\n",
        b"X-User-Id\t: root\r\n",
        b"X-User-Id\x00: root\r\n",
        b"X_User_Id: root\r\n",
        b"X-User-\xc4\xb0d: root\r\n",
    ],
)
def test_identity_header_spellings_never_reach_the_backend(target: Target, raw_header: bytes) -> None:
    raw = b"GET /public HTTP/1.1\r\nHost: h\r\n" + raw_header + b"Connection: close\r\n\r\n"
    resp, seen = target.send(raw)
    for s in seen:
        names = {k for k, _v in s["header_list"]}
        assert not {n for n in names if n.startswith("x-user")}, s["header_list"]
    assert status(resp) in (200, 400)


def test_identity_headers_in_trailers_never_reach_the_backend(target: Target) -> None:
    raw = (
        b"POST /public HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTrailer: X-User-Id\r\n"
        b"Connection: close\r\n\r\n3\r\nabc\r\n0\r\nX-User-Id: root\r\nAuthorization: Bearer x\r\n"
        b"X-Forwarded-For: 203.0.113.5\r\n\r\n"
    )
    resp, seen = target.send(raw)
    assert status(resp) == 200 and len(seen) == 1
    names = {k for k, _v in seen[0]["header_list"]}
    assert not names & {"x-user-id", "authorization"}
    assert seen[0]["headers"]["x-forwarded-for"] == "127.0.0.1"


# -- resource limits ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        [("X-Big", "a" * 61 * 1024)],
        [(f"X-H{i}", "1") for i in range(200)],
        [("X", "1")] * 6000,
        [("Cookie", f"c{i}=1") for i in range(200)],
    ],
    ids=["one 61 KiB header", "200 headers", "6000 tiny headers", "200 cookie headers"],
)
def test_oversized_header_sections_are_refused(target: Target, headers: list[tuple[str, str]]) -> None:
    resp, seen = target.request("GET", "/public", headers)
    assert status(resp) == 431 and seen == []


def test_headers_trickled_byte_by_byte_are_cut_off(target: Target) -> None:
    """Slowloris: each byte arrives well inside any idle timeout; requestHeaders (1 s here) is a
    deadline for the whole header section."""
    before = target.stat("http.edge.downstream_rq_header_timeout")
    pre_cx = target.stat(r"listener\..*\.downstream_pre_cx_timeout")
    data = b"GET /public HTTP/1.1\r\nHost: h\r\n" + b"X-A: 1\r\n" * 500
    with socket.create_connection(("127.0.0.1", target.ports["edge"]), timeout=0.1) as s:
        reply = b""
        deadline = time.monotonic() + 15
        for byte in data:
            assert time.monotonic() < deadline, "the request headers timeout never fired"
            try:
                s.sendall(bytes([byte]))
                reply += s.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
            if reply.startswith(b"HTTP/1.1 408"):
                break
    # cut off by the request-headers timeout, or before that by the listener's wait for a
    # request line, which has the same bound
    wait_for(
        lambda: (
            target.stat("http.edge.downstream_rq_header_timeout") == before + 1
            or target.stat(r"listener\..*\.downstream_pre_cx_timeout") > pre_cx
        ),
        10,
        "the headers timeout",
    )


def test_a_silent_connection_is_closed_by_the_request_headers_timeout(target: Target) -> None:
    with socket.create_connection(("127.0.0.1", target.ports["edge"]), timeout=4) as s:
        try:
            closed = s.recv(1) == b""  # requestHeaders is 1 s: 4 s is plenty
        except TimeoutError:
            closed = False
        except ConnectionResetError:
            closed = True
    assert closed


# -- gateway replies carry nothing of the request -------------------------------------------

MARK = "m4rk3r"
ODD_REQUESTS = {
    "426 HTTP/1.0": f"GET /public?s={MARK} HTTP/1.0\r\nHost: h\r\nX-N: {MARK}\r\n\r\n",
    "431 headers too large": f"GET /public?s={MARK} HTTP/1.1\r\nHost: h\r\nX-N: {MARK}\r\nX-Big: {'a' * 62000}\r\n\r\n",
    "501 transfer coding": f"POST /public?s={MARK} HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: {MARK}\r\n\r\n0\r\n\r\n",
    "400 fragment": f"GET /public?s={MARK}#{MARK} HTTP/1.1\r\nHost: h\r\nX-N: {MARK}\r\n\r\n",
    "400 method": f"{MARK.upper()} /public?s={MARK} HTTP/1.1\r\nHost: h\r\n\r\n",
    "400 version": f"GET /public?{MARK} HTTP/9.{MARK}\r\nHost: h\r\n\r\n",
    "400 host": f"GET /public?s={MARK} HTTP/1.1\r\nHost: {MARK}/x\r\n\r\n",
    "400 NUL in the path": f"GET /public/{MARK}%00 HTTP/1.1\r\nHost: h\r\n\r\n",
    "400 huge Content-Length": f"POST /public?s={MARK} HTTP/1.1\r\nHost: h\r\nContent-Length: {'9' * 20}\r\n\r\n",
    "403 upgrade": f"GET /public?s={MARK} HTTP/1.1\r\nHost: h\r\nUpgrade: {MARK}\r\nConnection: Upgrade\r\n\r\n",
    "404 OPTIONS *": f"OPTIONS * HTTP/1.1\r\nHost: {MARK}\r\n\r\n",
    "404 CONNECT": f"CONNECT {MARK}.test:443 HTTP/1.1\r\nHost: {MARK}.test:443\r\n\r\n",
}


@pytest.mark.parametrize("name", sorted(ODD_REQUESTS))
def test_no_reply_to_an_odd_request_echoes_it(target: Target, name: str) -> None:
    resp, seen = target.send(ODD_REQUESTS[name].encode("latin-1"))
    assert resp is not None and seen == []
    assert str(resp.status) == name.split()[0], (name, resp.status, resp.body)
    text = resp.body.decode("latin-1").lower()
    assert MARK not in text, (name, resp.body)
    assert not any(MARK in v.lower() for _k, v in resp.headers), (name, resp.headers)
    assert resp.header("content-type") == "application/json" and resp.header("x-content-type-options") == "nosniff"
    assert resp.json()["status"] == resp.status
