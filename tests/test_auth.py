"""Authentication, authorization and IP allowlists through a real Envoy, with a real JWKS
server (HTTPS, a test CA) and really signed tokens (RS256 and ES256)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from controlplane.certs import CertificateAuthority
from controlplane.echo import EchoServer
from controlplane.idp import IdentityProvider, JwksServer, SigningKey, b64url, encode
from tests.conftest import REPO
from tests.harness import Gateway, Response

pytestmark = pytest.mark.envoy

ISSUER = "https://idp.test"
AUDIENCE = "shop-api"


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[IdentityProvider, JwksServer, Path]]:
    pki = tmp_path_factory.mktemp("pki")
    ca = CertificateAuthority(pki, "jwks-ca")
    cert = ca.issue("localhost", ["localhost", "127.0.0.1"])
    provider = IdentityProvider(ISSUER, [SigningKey.generate("RS256", "rsa-1"), SigningKey.generate("ES256", "ec-1")])
    server = JwksServer(provider, tls=(str(cert.cert), str(cert.key))).start()
    yield provider, server, ca.path
    server.shutdown()


def policy(jwks_port: int, ca: Path, ip_allow: str = "[127.0.0.0/8]") -> str:
    return f"""
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
auth:
  providers:
    - name: idp
      issuer: {ISSUER}
      audiences: [{AUDIENCE}]
      jwks: {{uri: "https://localhost:{jwks_port}/.well-known/jwks.json", caFile: {ca}, cacheDuration: 5m}}
      algorithms: [RS256, ES256]
      clockSkew: 30s
ipAllowlists:
  - pathPrefix: /api/accounts
    allow: {ip_allow}
listeners: [{{name: public, address: 127.0.0.1, port: {{{{PORT}}}}}}]
upstreams: [{{name: backend, endpoints: ["{{{{BACKEND}}}}"]}}]
apis:
  - name: orders
    spec: {REPO}/specs/orders.openapi.yaml
    upstream: backend
    auth:
      rules:
        - roles: [customer]
          operations: [listOrders, createOrder, getOrder]
        - roles: [admin]
          operations: ["*"]
"""


@pytest.fixture(scope="module")
def gw(gateway_factory: Callable[..., Gateway], idp: tuple[IdentityProvider, JwksServer, Path]) -> Gateway:
    _provider, server, ca = idp
    return gateway_factory({"policy.yaml": policy(server.port, ca)})


@pytest.fixture(scope="module")
def closed_gw(gateway_factory: Callable[..., Gateway], idp: tuple[IdentityProvider, JwksServer, Path]) -> Gateway:
    """The same gateway, but the accounts API admits only 203.0.113.0/24: the tests' 127.0.0.1 is outside."""
    _provider, server, ca = idp
    return gateway_factory({"policy.yaml": policy(server.port, ca, "[203.0.113.0/24, 198.51.100.10]")})


def call(
    gw: Gateway,
    echo: EchoServer,
    method: str,
    path: str,
    token: str | None = None,
    headers: list[tuple[str, str]] | None = None,
) -> tuple[Response, dict | None]:
    items = list(headers or [])
    if token is not None:
        items.append(("Authorization", f"Bearer {token}"))
    before = len(echo.received)
    resp = gw.request(method, path, headers=items)
    seen = echo.received[before:]
    return resp, (seen[0] if seen else None)


def token(
    idp: tuple[IdentityProvider, JwksServer, Path], role: object = "customer", alg: str = "RS256", **claims: object
) -> str:
    provider = idp[0]
    body: dict[str, object] = {"sub": "alice", "role": role, **claims}
    return provider.mint(body, audience=AUDIENCE, alg=alg)


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_valid_token_reaches_the_backend_with_verified_identity(
    gw: Gateway, echo: EchoServer, idp: tuple[IdentityProvider, JwksServer, Path], alg: str
) -> None:
    resp, seen = call(
        gw,
        echo,
        "GET",
        "/api/orders",
        token(idp, alg=alg),
        headers=[("X-User-Id", "mallory"), ("X-User-Role", "admin")],
    )
    assert resp.status == 200, resp.body
    assert seen is not None
    assert seen["headers"]["x-user-id"] == "alice" and seen["headers"]["x-user-role"] == "customer"
    assert [k for k, _ in seen["header_list"]].count("x-user-id") == 1
    assert "authorization" not in seen["headers"]  # the token is not forwarded


def _now() -> int:
    return int(time.time())


def _hs256_with_public_key(idp: tuple[IdentityProvider, JwksServer, Path]) -> str:
    """The classic confusion attack: HMAC keyed with the RSA public key."""
    from cryptography.hazmat.primitives import serialization

    rsa_key = idp[0].key(kid="rsa-1")
    public_pem = rsa_key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
    body = b64url(
        json.dumps({"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "role": "admin", "exp": _now() + 600}).encode()
    )
    sig = hmac.new(public_pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(sig)}"


def _tampered(idp: tuple[IdentityProvider, JwksServer, Path]) -> str:
    head, _body, sig = token(idp).split(".")
    forged = b64url(
        json.dumps({"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "role": "admin", "exp": _now() + 600}).encode()
    )
    return f"{head}.{forged}.{sig}"


REJECTED: dict[str, Callable[[tuple[IdentityProvider, JwksServer, Path]], str]] = {
    "expired beyond skew": lambda i: i[0].mint(
        {"sub": "a", "role": "customer"}, audience=AUDIENCE, now=time.time() - 3600, ttl=600
    ),
    "nbf in the future": lambda i: token(i, nbf=_now() + 600),
    "wrong issuer": lambda i: IdentityProvider("https://evil.test", i[0].keys).mint(
        {"sub": "a", "role": "customer"}, audience=AUDIENCE
    ),
    "unknown kid": lambda i: i[0].mint(
        {"sub": "a", "role": "customer"}, audience=AUDIENCE, key=SigningKey.generate("RS256", "not-published")
    ),
    "alg none": lambda i: encode(
        {"alg": "none", "typ": "JWT"},
        {"iss": ISSUER, "aud": AUDIENCE, "sub": "a", "role": "admin", "exp": _now() + 600},
        None,
    ),
    "empty signature": lambda i: token(i).rsplit(".", 1)[0] + ".",
    "HS256 signed with the RSA public key": _hs256_with_public_key,
    "tampered payload": _tampered,
    "expiration of the wrong type": lambda i: token(i, exp="tomorrow"),
    "no expiration": lambda i: encode(
        {"alg": "RS256", "kid": "rsa-1"},
        {"iss": ISSUER, "aud": AUDIENCE, "sub": "a", "role": "customer"},
        i[0].key(kid="rsa-1"),
    ),
    "garbage": lambda i: "not.a.token",
}


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_bad_tokens_get_401_without_details(
    gw: Gateway, echo: EchoServer, idp: tuple[IdentityProvider, JwksServer, Path], case: str
) -> None:
    resp, seen = call(gw, echo, "GET", "/api/orders", REJECTED[case](idp))
    assert resp.status == 401, (case, resp.body)
    assert seen is None
    assert (resp.header("www-authenticate") or "").startswith("Bearer")
    body = resp.json()
    assert body == {"status": 401, "message": "authentication required", "request_id": resp.header("x-request-id")}


def test_missing_token_gets_401_with_www_authenticate(gw: Gateway, echo: EchoServer) -> None:
    resp, seen = call(gw, echo, "GET", "/api/orders")
    assert resp.status == 401 and seen is None
    assert (resp.header("www-authenticate") or "").startswith("Bearer")


def test_wrong_audience_is_refused(
    gw: Gateway, echo: EchoServer, idp: tuple[IdentityProvider, JwksServer, Path]
) -> None:
    bad = idp[0].mint({"sub": "a", "role": "customer"}, audience="another-api")
    resp, seen = call(gw, echo, "GET", "/api/orders", bad)
    # jwt_authn says 403 with error="invalid_token"; the gateway answers what that means: 401
    assert resp.status == 401 and seen is None
    assert 'error="invalid_token"' in (resp.header("www-authenticate") or "")
    assert resp.json()["message"] == "authentication required"


@pytest.mark.parametrize(
    ("how", "headers", "path"),
    [
        ("query string when not enabled", lambda t: [], lambda t: f"/api/orders?access_token={t}"),
        ("lowercase bearer", lambda t: [("Authorization", f"bearer {t}")], lambda t: "/api/orders"),
        (
            "two Authorization headers",
            lambda t: [("Authorization", f"Bearer {t}"), ("Authorization", "Bearer x.y.z")],
            lambda t: "/api/orders",
        ),
        (
            "two Authorization headers, the good one second",
            lambda t: [("Authorization", "Bearer x.y.z"), ("Authorization", f"Bearer {t}")],
            lambda t: "/api/orders",
        ),
    ],
)
def test_tokens_in_the_wrong_place_are_refused(
    gw: Gateway,
    echo: EchoServer,
    idp: tuple[IdentityProvider, JwksServer, Path],
    how: str,
    headers: Callable[[str], list[tuple[str, str]]],
    path: Callable[[str], str],
) -> None:
    good = token(idp)
    resp, seen = call(gw, echo, "GET", path(good), headers=headers(good))
    assert resp.status == 401, (how, resp.status)
    assert seen is None


def test_oversized_token_is_refused(gw: Gateway, echo: EchoServer) -> None:
    resp, seen = call(gw, echo, "GET", "/api/orders", "a" * 70_000 + ".b.c")
    assert resp.status == 431 and seen is None


def test_orders_example_roles(gw: Gateway, echo: EchoServer, idp: tuple[IdentityProvider, JwksServer, Path]) -> None:
    customer, admin = token(idp, "customer"), token(idp, "admin")
    assert call(gw, echo, "GET", "/api/orders", customer)[0].status == 200
    denied, seen = call(gw, echo, "DELETE", "/api/orders", customer)
    assert denied.status == 403 and seen is None
    assert denied.json() == {"status": 403, "message": "forbidden", "request_id": denied.header("x-request-id")}
    assert call(gw, echo, "DELETE", "/api/orders", admin)[0].status == 200
    assert call(gw, echo, "DELETE", "/api/orders/7", token(idp, ["customer", "admin"]))[0].status == 200  # list claim
    assert call(gw, echo, "DELETE", "/api/orders/7", token(idp, 7))[0].status == 403  # a role of the wrong type
    # public operations need no token, and a token there changes nothing
    resp, seen = call(gw, echo, "GET", "/api/products", headers=[("X-User-Id", "mallory"), ("x-user-role", "admin")])
    assert resp.status == 200 and seen is not None
    assert not {k for k in seen["headers"] if k.startswith("x-user")}


def test_spoofed_identity_never_reaches_the_backend(
    gw: Gateway, echo: EchoServer, idp: tuple[IdentityProvider, JwksServer, Path]
) -> None:
    spoofed = [("X-User-Id", "root"), ("x-user-id", "root2"), ("X-USER-ROLE", "admin"), ("X-User-Email", "e@x")]
    for method, path, tok in [
        ("GET", "/api/products", None),
        ("GET", "/api/orders", token(idp)),
        ("OPTIONS", "/api/orders", None),
    ]:
        resp, seen = call(gw, echo, method, path, tok, headers=spoofed)
        if seen is None:
            continue  # refused (OPTIONS is not declared: 405)
        users = [(k, v) for k, v in seen["header_list"] if k.startswith("x-user")]
        assert users in ([], [("x-user-id", "alice"), ("x-user-role", "customer")]), users
    resp, seen = call(gw, echo, "GET", "/api/orders", token(idp), headers=[("X_User_Id", "root")])
    assert resp.status == 400 and seen is None


def test_allowlisted_admin_api_from_an_allowed_address(
    gw: Gateway, echo: EchoServer, idp: tuple[IdentityProvider, JwksServer, Path]
) -> None:
    resp, seen = call(gw, echo, "GET", "/api/accounts/acme", token(idp, "admin"))
    assert resp.status == 200 and seen is not None


@pytest.mark.parametrize(
    "path",
    [
        "/api/accounts/acme",
        "//api/accounts/acme",
        "/api/orders/../accounts/acme",
        "/api/%2e%2e/api/accounts/acme",
        "/api/accounts%2Facme",
        "/api/accounts/acme;x=y",
        "/API/accounts/acme",
        "http://gateway.test/api/accounts/acme",
        "/api/accounts/acme:suspend",
    ],
)
def test_allowlist_is_checked_before_authentication_and_not_bypassed(
    closed_gw: Gateway, echo: EchoServer, idp: tuple[IdentityProvider, JwksServer, Path], path: str
) -> None:
    admin = token(idp, "admin")
    method = "POST" if path.endswith(":suspend") else "GET"
    spoof = [("X-Forwarded-For", "203.0.113.7"), ("X-Real-IP", "203.0.113.7"), ("Forwarded", "for=203.0.113.7")]
    resp, seen = call(closed_gw, echo, method, path, admin, headers=spoof)
    assert seen is None, path
    assert resp.status in (400, 403, 404), (path, resp.status)
    if path == "/api/accounts/acme":
        assert resp.status == 403
        no_token, _ = call(closed_gw, echo, "GET", path)
        assert no_token.status == 403 and no_token.header("www-authenticate") is None  # no token check at all
    # the rest of the API is unaffected
    assert call(closed_gw, echo, "GET", "/api/orders", admin)[0].status == 200


def test_jwks_is_fetched_over_tls_once_and_cached(
    gw: Gateway, echo: EchoServer, idp: tuple[IdentityProvider, JwksServer, Path]
) -> None:
    before = idp[1].fetches
    for _ in range(5):
        assert call(gw, echo, "GET", "/api/orders", token(idp))[0].status == 200
    assert idp[1].fetches == before  # cached (cacheDuration 5m)
    assert before >= 1
