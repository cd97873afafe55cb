"""Hostile tests of authentication through a real Envoy: forged and confused tokens, tokens that
must never reach a backend, replies that must echo nothing, claims that cannot be headers, and
override headers that would change the request behind the gateway's back.

Each test attacks a class, not one request: every way a key set can be given (file, inline,
fetched by Envoy, fetched by the control plane), every place a token can travel (header, query
parameter, cookie), every kind of gateway reply.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from controlplane import compile
from controlplane.echo import EchoServer
from controlplane.idp import JwksServer, SigningKey, b64url, encode
from controlplane.server import download_jwks
from tests.harness import Gateway, Response

pytestmark = pytest.mark.envoy

ISSUER = "https://idp.hostile"
AUDIENCE = "hostile"
SECRET = b"a-shared-secret-anyone-can-read-in-the-jwks"


def _sign(alg: str, key: SigningKey | bytes, header: dict[str, Any], payload: dict[str, Any]) -> str:
    """A compact JWS with any algorithm (the identity provider only mints RS256 and ES256)."""
    head = b64url(json.dumps(header, separators=(",", ":")).encode())
    body = b64url(json.dumps(payload, separators=(",", ":")).encode())
    message = f"{head}.{body}".encode()
    if alg.startswith("HS"):
        assert isinstance(key, bytes)
        digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
        signature = hmac.new(key, message, digest).digest()
    else:
        assert isinstance(key, SigningKey) and isinstance(key.private, rsa.RSAPrivateKey)
        hash_ = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}[alg[2:]]
        pad = (
            padding.PSS(mgf=padding.MGF1(hash_), salt_length=hash_.digest_size)
            if alg.startswith("PS")
            else padding.PKCS1v15()
        )
        signature = key.private.sign(message, pad, hash_)
    return f"{head}.{body}.{b64url(signature)}"


class HostileIdp:
    """An identity provider whose JWKS carries what a careless one publishes: an RSA key with
    no ``alg``, an HMAC secret without and with ``alg``, and an EC key."""

    def __init__(self) -> None:
        self.rsa = SigningKey.generate("RS256", "rsa-no-alg")
        self.ec = SigningKey.generate("ES256", "ec-1")
        rsa_jwk = {k: v for k, v in self.rsa.jwk().items() if k != "alg"}
        secret = b64url(SECRET)
        self.keys = {
            "keys": [
                rsa_jwk,
                {"kty": "oct", "kid": "hmac", "k": secret},
                {"kty": "oct", "kid": "hmac-alg", "alg": "HS256", "k": secret},
                self.ec.jwk(),
            ]
        }

    def jwks(self) -> dict[str, Any]:  # what JwksServer serves
        return self.keys

    def claims(self, **extra: Any) -> dict[str, Any]:
        now = int(time.time())
        return {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "iat": now, "exp": now + 600, **extra}

    def token(self, alg: str, kid: str | None = None, **extra: Any) -> str:
        header: dict[str, Any] = {"alg": alg, "typ": "JWT"}
        if kid is not None:
            header["kid"] = kid
        if alg == "ES256":
            return encode(header, self.claims(**extra), self.ec)
        key: SigningKey | bytes = SECRET if alg.startswith("HS") else self.rsa
        return _sign(alg, key, header, self.claims(**extra))


@pytest.fixture(scope="module")
def hostile() -> HostileIdp:
    return HostileIdp()


@pytest.fixture(scope="module")
def jwks_server(hostile: HostileIdp) -> Iterator[JwksServer]:
    server = JwksServer(hostile, tls=None).start()  # type: ignore[arg-type]  # anything with jwks()
    yield server
    server.shutdown()


SPEC = """
openapi: 3.0.3
info: {title: hostile, version: "1"}
servers: [{url: /}]
security: [{bearer: []}]
components: {securitySchemes: {bearer: {type: http, scheme: bearer}}}
paths:
  /private:
    get: {operationId: private, responses: {"200": {description: ok}}}
  /roles:
    get: {operationId: roles, x-gateway: {roles: [customer]}, responses: {"200": {description: ok}}}
  /optional:
    get: {operationId: optional, security: [{}, {bearer: []}], responses: {"200": {description: ok}}}
  /public:
    get: {operationId: public, security: [], responses: {"200": {description: ok}}}
    post: {operationId: publicPost, security: [], responses: {"200": {description: ok}}}
"""


def _policy(jwks: str, extra: str = "", headers: str = "") -> str:
    return f"""
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
auth:
  providers:
    - name: idp
      issuer: {ISSUER}
      audiences: [{AUDIENCE}]
      jwks: {jwks}
      algorithms: [RS256, ES256]
      claimHeaders: {{sub: X-User-Id, role: X-User-Role, groups: X-User-Groups}}
{extra}
{headers}
listeners: [{{name: hostile, address: 127.0.0.1, port: {{{{PORT}}}}}}]
upstreams: [{{name: backend, endpoints: ["{{{{BACKEND}}}}"]}}]
apis:
  - {{name: api, spec: spec.yaml, upstream: backend}}
"""


@pytest.fixture(scope="module")
def inline_gw(gateway_factory: Callable[..., Gateway], hostile: HostileIdp) -> Gateway:
    return gateway_factory({"spec.yaml": SPEC, "policy.yaml": _policy("{inline: " + json.dumps(hostile.jwks()) + "}")})


@pytest.fixture(scope="module")
def gateways(
    gateway_factory: Callable[..., Gateway], hostile: HostileIdp, jwks_server: JwksServer, inline_gw: Gateway
) -> dict[str, Gateway]:
    """The same provider with its keys given each way the policy allows."""
    uri = f"http://127.0.0.1:{jwks_server.port}/.well-known/jwks.json"
    return {
        "inline": inline_gw,
        "file": gateway_factory(
            {"spec.yaml": SPEC, "jwks.json": json.dumps(hostile.jwks()), "policy.yaml": _policy("{file: jwks.json}")}
        ),
        "fetched by envoy": gateway_factory(
            {"spec.yaml": SPEC, "policy.yaml": _policy(f'{{uri: "{uri}", fetch: envoy}}')}
        ),
    }


def _get(
    gw: Gateway, echo: EchoServer, path: str, headers: list[tuple[str, str]] | None = None, method: str = "GET"
) -> tuple[Response, dict[str, Any] | None]:
    before = len(echo.received)
    resp = gw.request(method, path, headers=headers or [])
    seen = echo.received[before:]
    return resp, (seen[0] if seen else None)


def _bearer(token: str) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {token}")]


# -- 1, 2: only the provider's algorithms verify; symmetric keys never do --------------------

FORGED = {
    "HS256 signed with the published secret, its kid": ("HS256", "hmac"),
    "HS256 signed with the published secret, the kid with alg": ("HS256", "hmac-alg"),
    "HS256 signed with the published secret, no kid": ("HS256", None),
    "HS512 signed with the published secret": ("HS512", None),
    "PS256 by the RSA key that has no alg": ("PS256", "rsa-no-alg"),
    "RS512 by the RSA key that has no alg": ("RS512", "rsa-no-alg"),
    "RS384 by the RSA key, no kid": ("RS384", None),
}


@pytest.mark.parametrize("how", ["inline", "file", "fetched by envoy"])
def test_only_the_providers_algorithms_verify(
    gateways: dict[str, Gateway], echo: EchoServer, hostile: HostileIdp, how: str
) -> None:
    gw = gateways[how]
    for alg, kid in (("RS256", "rsa-no-alg"), ("RS256", None), ("ES256", "ec-1")):
        resp, seen = _get(gw, echo, "/private", _bearer(hostile.token(alg, kid)))
        assert resp.status == 200 and seen is not None, (how, alg, kid, resp.status, resp.body)
        assert seen["headers"]["x-user-id"] == "alice"
    for name, (alg, kid) in FORGED.items():
        resp, seen = _get(gw, echo, "/private", _bearer(hostile.token(alg, kid)))
        assert resp.status == 401, (how, name, resp.status, resp.body)
        assert seen is None, (how, name)
        assert 'error="invalid_token"' in (resp.header("www-authenticate") or ""), (how, name)
        # an optional token that is forged is refused too, not ignored
        resp, seen = _get(gw, echo, "/optional", _bearer(hostile.token(alg, kid)))
        assert resp.status == 401 and seen is None, (how, name, resp.status)
    none = encode({"alg": "none", "typ": "JWT"}, hostile.claims(), None)
    assert _get(gw, echo, "/private", _bearer(none))[0].status == 401


def test_keys_fetched_by_the_control_plane_are_pinned_too(
    tmp_path: Path,
    hostile: HostileIdp,
    jwks_server: JwksServer,
    gateway_factory: Callable[..., Gateway],
    echo: EchoServer,
) -> None:
    """The control plane downloads the keys (as `serve` does), drops the HMAC keys and pins the
    RSA key to RS256; Envoy then gets them inline."""
    uri = f"http://127.0.0.1:{jwks_server.port}/.well-known/jwks.json"
    (tmp_path / "spec.yaml").write_text(SPEC)
    (tmp_path / "policy.yaml").write_text(
        _policy(f'{{uri: "{uri}", fetch: controlplane}}').replace("{{PORT}}", "1").replace("{{BACKEND}}", "x:1")
    )
    provider = next(iter(compile([tmp_path]).gateway.providers))  # type: ignore[union-attr]
    fetched = json.loads(download_jwks(provider))
    assert {k["kty"] for k in fetched["keys"]} == {"RSA", "EC"}
    assert all(k.get("alg") in ("RS256", "ES256") for k in fetched["keys"])
    # through Envoy: the same keys as an inline JWKS (what the server pushes) refuse every forgery
    gw = gateway_factory({"spec.yaml": SPEC, "policy.yaml": _policy("{inline: " + json.dumps(fetched) + "}")})
    assert _get(gw, echo, "/private", _bearer(hostile.token("RS256", "rsa-no-alg")))[0].status == 200
    for name, (alg, kid) in FORGED.items():
        assert _get(gw, echo, "/private", _bearer(hostile.token(alg, kid)))[0].status == 401, name


def test_a_jwks_of_only_symmetric_keys_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "spec.yaml").write_text(SPEC)
    jwks = {"keys": [{"kty": "oct", "kid": "s", "k": b64url(SECRET)}]}
    (tmp_path / "policy.yaml").write_text(
        _policy("{inline: " + json.dumps(jwks) + "}").replace("{{PORT}}", "8080").replace("{{BACKEND}}", "x:1")
    )
    result = compile([tmp_path])
    assert not result.ok
    text = "\n".join(map(str, result.diagnostics))
    assert "symmetric (kty 'oct') keys are never accepted" in text
    assert "/auth/providers/0/jwks/inline/keys/0" in text


# -- 3: tokens never reach a backend --------------------------------------------------------


@pytest.fixture(scope="module")
def token_places_gw(gateway_factory: Callable[..., Gateway], hostile: HostileIdp) -> Gateway:
    extra = "      tokenFrom: {queryParameters: [access_token, jwt], cookies: [session_token]}"
    return gateway_factory(
        {"spec.yaml": SPEC, "policy.yaml": _policy("{inline: " + json.dumps(hostile.jwks()) + "}", extra)}
    )


@pytest.mark.parametrize("path", ["/private", "/roles", "/optional", "/public"])
def test_tokens_never_reach_the_backend(
    token_places_gw: Gateway, echo: EchoServer, hostile: HostileIdp, path: str
) -> None:
    good = hostile.token("RS256", "rsa-no-alg", role="customer")
    sends: dict[str, tuple[str, list[tuple[str, str]]]] = {
        "header": (path, _bearer(good)),
        "query": (f"{path}?a=1&access_token={good}&b=2", []),
        "other query parameter": (f"{path}?jwt={good}", []),
        "cookie": (path, [("Cookie", f"theme=dark; session_token={good}; lang=en")]),
    }
    if path == "/public":  # nothing is checked here: a bad token must not pass either
        sends["invalid header"] = (path, _bearer("not.a.token"))
        sends["invalid query"] = (f"{path}?access_token=not.a.token", [])
    for how, (target, headers) in sends.items():
        resp, seen = _get(token_places_gw, echo, target, headers)
        assert resp.status == 200 and seen is not None, (path, how, resp.status, resp.body)
        assert "authorization" not in seen["headers"], (path, how)
        assert good not in json.dumps(seen) and "not.a.token" not in json.dumps(seen), (path, how, seen)
        if how == "query":
            assert seen["path"] == f"{path}?a=1&b=2", seen["path"]
        if how == "cookie":
            assert seen["headers"]["cookie"] == "theme=dark; lang=en"


def test_forward_token_keeps_it(gateway_factory: Callable[..., Gateway], echo: EchoServer, hostile: HostileIdp) -> None:
    gw = gateway_factory(
        {
            "spec.yaml": SPEC,
            "policy.yaml": _policy("{inline: " + json.dumps(hostile.jwks()) + "}", "      forwardToken: true"),
        }
    )
    good = hostile.token("RS256", "rsa-no-alg")
    for path in ("/private", "/public"):
        resp, seen = _get(gw, echo, path, _bearer(good))
        assert resp.status == 200 and seen is not None
        assert seen["headers"]["authorization"] == f"Bearer {good}"


# -- 4: no gateway reply echoes the request ---------------------------------------------------

MARK = "m4rk3r"


def test_no_gateway_reply_echoes_the_request(inline_gw: Gateway, echo: EchoServer, hostile: HostileIdp) -> None:
    customer = hostile.token("RS256", "rsa-no-alg", role="nobody")
    cases: dict[str, tuple[str, str, list[tuple[str, str]], int]] = {
        "401 missing token": ("GET", f"/private?secret={MARK}", [("X-Note", MARK)], 401),
        "401 invalid token": ("GET", f"/private?secret={MARK}", _bearer(f"{MARK}.{MARK}.{MARK}"), 401),
        "401 expired token": (
            "GET",
            f"/private?secret={MARK}",
            _bearer(hostile.token("RS256", "rsa-no-alg", exp=1)),
            401,
        ),
        "401 forged algorithm": ("GET", f"/private?{MARK}=1", _bearer(hostile.token("HS256", "hmac")), 401),
        "403 no role": ("GET", f"/roles?secret={MARK}", _bearer(customer), 403),
        "404 unknown path": ("GET", f"/{MARK}?secret={MARK}", [], 404),
        "404 unknown under a known prefix": ("GET", f"/private/{MARK}", [], 404),
        "405 wrong method": ("DELETE", f"/public?secret={MARK}", [("X-Note", MARK)], 405),
        "400 header with underscore": ("GET", f"/public?secret={MARK}", [("X_Note", MARK)], 400),
        "400 escaped slash": ("GET", f"/public%2F{MARK}", [], 400),
    }
    for name, (method, path, headers, status) in cases.items():
        resp, seen = _get(inline_gw, echo, path, headers, method)
        assert resp.status == status, (name, resp.status, resp.body)
        assert seen is None, name
        assert MARK not in resp.body.decode("latin-1"), (name, resp.body)
        for key, value in resp.headers:
            assert MARK not in value, (name, key, value)
        if status == 401:
            challenge = resp.header("www-authenticate") or ""
            assert challenge.startswith('Bearer realm="hostile"'), (name, challenge)
    missing = _get(inline_gw, echo, "/private")[0].header("www-authenticate")
    assert missing == 'Bearer realm="hostile"'  # no token: no error code (RFC 6750 section 3)


# -- 5: claims that are lists or cannot be header values ------------------------------------


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ({"role": "customer"}, {"x-user-role": "customer"}),
        ({"role": ["customer", "admin"]}, {"x-user-role": "customer,admin"}),
        ({"role": ["customer"]}, {"x-user-role": "customer"}),
        ({"role": [], "groups": ["a", 7, True]}, {"x-user-groups": "a,7,true"}),
        ({"groups": 42}, {"x-user-groups": "42"}),
        (
            {"role": "customer", "groups": ["ops", "dev"], "sub": "bob"},
            {"x-user-role": "customer", "x-user-id": "bob", "x-user-groups": "ops,dev"},
        ),
        ({"sub": "Zoë Ångström"}, {"x-user-id": "Zoë Ångström"}),
    ],
)
def test_claims_become_clean_headers(
    inline_gw: Gateway, echo: EchoServer, hostile: HostileIdp, claims: dict[str, Any], expected: dict[str, str]
) -> None:
    resp, seen = _get(inline_gw, echo, "/private", _bearer(hostile.token("RS256", "rsa-no-alg", **claims)))
    assert resp.status == 200 and seen is not None, (claims, resp.status, resp.body)
    # the echo backend reads header bytes as latin-1
    got = {k: v.encode("latin-1").decode("utf-8") for k, v in seen["headers"].items() if k.startswith("x-user-")}
    assert got == {"x-user-id": "alice", **expected}, (claims, seen["headers"])
    assert not any(v.startswith("Wy") for v in seen["headers"].values())  # no base64 JSON


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "alice\r\nX-Injected: 1"},
        {"sub": "alice\nadmin"},
        {"sub": "tab\there-is-fine-but\x01not-this"},
        {"role": ["customer", "admin\r\n"]},
        {"role": ["a,b"]},
        {"role": {"nested": "object"}},
        {"groups": [["nested", "list"]]},
        {"sub": "ok", "groups": ["x\x7f"]},
    ],
)
def test_claims_that_cannot_be_headers_are_refused_not_5xx(
    inline_gw: Gateway, echo: EchoServer, hostile: HostileIdp, claims: dict[str, Any]
) -> None:
    resp, seen = _get(inline_gw, echo, "/private", _bearer(hostile.token("RS256", "rsa-no-alg", **claims)))
    assert resp.status == 403, (claims, resp.status, resp.body)
    assert seen is None
    assert resp.json()["message"] == "forbidden"


def test_claim_error_status_is_the_policys(
    gateway_factory: Callable[..., Gateway], echo: EchoServer, hostile: HostileIdp
) -> None:
    gw = gateway_factory(
        {
            "spec.yaml": SPEC,
            "policy.yaml": _policy("{inline: " + json.dumps(hostile.jwks()) + "}", "      claimErrorStatus: 401"),
        }
    )
    resp, seen = _get(gw, echo, "/private", _bearer(hostile.token("RS256", "rsa-no-alg", sub="a\r\nb")))
    assert resp.status == 401 and seen is None
    assert resp.json()["message"] == "authentication required"


# -- 6: override headers ----------------------------------------------------------------------

OVERRIDES = [
    ("X-HTTP-Method-Override", "DELETE"),
    ("X-HTTP-Method", "DELETE"),
    ("X-Method-Override", "DELETE"),
    ("X-Original-Method", "DELETE"),
    ("X-Original-URL", "/admin"),
    ("X-Rewrite-URL", "/admin"),
    ("X-Forwarded-Host", "evil.example"),
    ("X-Forwarded-Prefix", "/admin"),
    ("X-Forwarded-Port", "1"),
]


def test_override_headers_never_reach_the_backend(inline_gw: Gateway, echo: EchoServer, hostile: HostileIdp) -> None:
    headers = [*OVERRIDES, *[(k.lower(), v) for k, v in OVERRIDES], *[(k.upper(), v) for k, v in OVERRIDES]]
    for path, auth in (("/public", []), ("/private", _bearer(hostile.token("RS256", "rsa-no-alg")))):
        for method in ("GET", "POST") if path == "/public" else ("GET",):
            resp, seen = _get(inline_gw, echo, path, [*headers, *auth], method)
            assert resp.status == 200 and seen is not None, (path, method, resp.status)
            leaked = {k for k, _v in seen["header_list"]} & {k.lower() for k, _v in OVERRIDES}
            assert not leaked, (path, method, leaked)
            assert seen["method"] == method and seen["path"] == path


def test_policy_can_allow_one_override_header(
    gateway_factory: Callable[..., Gateway], echo: EchoServer, hostile: HostileIdp
) -> None:
    gw = gateway_factory(
        {
            "spec.yaml": SPEC,
            "policy.yaml": _policy(
                "{inline: " + json.dumps(hostile.jwks()) + "}",
                headers="headers: {allowOverrideHeaders: [x-http-method-override]}",
            ),
        }
    )
    resp, seen = _get(gw, echo, "/public", [("X-HTTP-Method-Override", "PATCH"), ("X-Original-URL", "/admin")])
    assert resp.status == 200 and seen is not None
    assert seen["headers"]["x-http-method-override"] == "PATCH"
    assert "x-original-url" not in seen["headers"]


def test_unknown_override_header_in_policy_is_a_located_error(tmp_path: Path, hostile: HostileIdp) -> None:
    (tmp_path / "spec.yaml").write_text(SPEC)
    (tmp_path / "policy.yaml").write_text(
        _policy("{inline: " + json.dumps(hostile.jwks()) + "}", headers="headers: {allowOverrideHeaders: [x-user-id]}")
        .replace("{{PORT}}", "8080")
        .replace("{{BACKEND}}", "x:1")
    )
    result = compile([tmp_path])
    assert not result.ok
    assert any("/headers/allowOverrideHeaders/0" in str(d) for d in result.diagnostics), result.diagnostics


def test_b64_of_a_list_is_what_envoy_would_have_sent() -> None:
    """Guards the assertion above that no header starts with 'Wy': base64 of '["' does."""
    assert base64.b64encode(b'["customer"]').decode().startswith("Wy")


def test_claim_headers_of_any_name_cannot_be_spoofed(
    gateway_factory: Callable[..., Gateway], echo: EchoServer, hostile: HostileIdp
) -> None:
    """A claim header outside X-User-* that the policy did not also list as an identity header is
    stripped from client requests all the same. jwt_authn clears its own claim headers, but only
    where it runs: a listener whose operations are all public has no jwt_authn at all, and its
    backends trust these headers just the same."""
    policy = _policy("{inline: " + json.dumps(hostile.jwks()) + "}").replace(
        "claimHeaders: {sub: X-User-Id, role: X-User-Role, groups: X-User-Groups}",
        "claimHeaders: {sub: X-Subject, email: Email-Address}",
    )
    public_only = (
        SPEC.replace("security: [{bearer: []}]", "security: []")
        .replace("security: [{}, {bearer: []}]", "security: []")
        .replace("x-gateway: {roles: [customer]}, ", "")
    )
    spoof = [("X-Subject", "root"), ("email-address", "root@example.com"), ("EMAIL-ADDRESS", "x")]
    for spec in (SPEC, public_only):
        gw = gateway_factory({"spec.yaml": spec, "policy.yaml": policy})
        resp, seen = _get(gw, echo, "/public", spoof)
        assert resp.status == 200 and seen is not None
        assert not {k for k, _v in seen["header_list"]} & {"x-subject", "email-address"}, seen["header_list"]
        resp, seen = _get(gw, echo, "/private", [*spoof, *_bearer(hostile.token("RS256", "rsa-no-alg", email="a@b"))])
        assert resp.status == 200 and seen is not None
        values = sorted((k, v) for k, v in seen["header_list"] if k in ("x-subject", "email-address"))
        assert values == ([] if spec is public_only else [("email-address", "a@b"), ("x-subject", "alice")]), values


@pytest.mark.parametrize("sep", [".", "~", "!", "#", "$", "%", "&", "'", "*", "+", "^", "`", "|"])
def test_identity_headers_with_other_punctuation_never_reach_the_backend(
    inline_gw: Gateway, echo: EchoServer, hostile: HostileIdp, sep: str
) -> None:
    """CGI and PHP backends read every non-alphanumeric character of a header name as '_':
    X-User.Id is their X_USER_ID. (Underscores themselves are refused by Envoy: 400.)"""
    spoof = [
        (f"X-User{sep}Id", "root"),
        (f"X{sep}User{sep}Role", "admin"),
        (f"x-user{sep}groups", "ops"),
        (f"X-HTTP-Method{sep}Override", "DELETE"),
        (f"X{sep}Forwarded{sep}Host", "evil.example"),
        (f"Forwarded{sep}", "for=1.2.3.4"),  # not a variant: kept
    ]
    for path, auth in (("/public", []), ("/private", _bearer(hostile.token("RS256", "rsa-no-alg")))):
        resp, seen = _get(inline_gw, echo, path, [*spoof, *auth])
        assert resp.status == 200 and seen is not None, (sep, path, resp.status)
        names = [k for k, _v in seen["header_list"]]
        leaked = [
            n
            for n in names
            if sep in n
            and n.replace(sep, "-")
            in {"x-user-id", "x-user-role", "x-user-groups", "x-http-method-override", "x-forwarded-host"}
        ]
        assert not leaked, (sep, path, leaked)
        assert [v for k, v in seen["header_list"] if k == "x-user-id"] == (["alice"] if auth else [])
        assert f"forwarded{sep}" in names  # only identity names and their variants go
