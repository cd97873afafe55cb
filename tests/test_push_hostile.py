"""The push API attacked as a hostile pipeline or a network attacker would: through the real
server (TLS, tokens, client certificates), a real control plane and two real Envoys.

Each test names the protection it checks; with that protection removed, it fails."""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controlplane.certs import CertificateAuthority, Issued
from controlplane.echo import EchoServer
from controlplane.idp import IdentityProvider, SigningKey
from tests.harness import EnvoyProcess, free_port, raw_request
from tests.test_push import CATALOG, ORDERS_NACKED, ORDERS_V1
from tests.xds_harness import ControlPlaneProcess, start_envoy, wait_for

pytestmark = pytest.mark.envoy

TOKENS = {
    "orders-ci": "hostile-orders-token-1",
    "catalog-ci": "hostile-catalog-token-2",
    "dots-ci": "hostile-dots-token-3",
}

# The platform's orders API needs a token; the pushed versions below try to change that.
SECURED = """\
openapi: 3.0.3
info: {title: orders, version: "1"}
components: {securitySchemes: {bearer: {type: http, scheme: bearer}}}
security: [{bearer: []}]
paths:
  /orders:
    get: {operationId: listOrders, responses: {"200": {description: ok}}}
"""

PLATFORM_CATALOG = CATALOG.replace("/items", "/shelves")


def fragment(api: str, upstream: str = "backend", prefix: str = "/books", extra: str = "") -> str:
    return f"""\
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
apis:
  - name: {api}
    spec: catalog.yaml
    pathPrefix: {prefix}
    upstream: {upstream}
{extra}"""


def platform_policy(port: int, backend: int, internal: int, jwks: str) -> str:
    sha = {name: hashlib.sha256(token.encode()).hexdigest() for name, token in TOKENS.items()}
    return f"""\
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
auth:
  providers:
    - {{name: idp, issuer: "https://idp.test", audiences: [gw], jwks: {{inline: {jwks}}}}}
listeners: [{{name: public, address: 127.0.0.1, port: {port}}}]
upstreams:
  - {{name: backend, endpoints: ["127.0.0.1:{backend}"]}}
  - {{name: internal, endpoints: ["127.0.0.1:{internal}"]}}
apis:
  - name: orders
    spec: orders.yaml
    pathPrefix: /orders-api
    upstream: backend
    defaults: {{public: false}}
  - name: payments
    spec: payments.yaml
    pathPrefix: /payments
    upstream: backend
  - name: catalog-platform
    spec: catalog-platform.yaml
    pathPrefix: /catalog-platform
    upstream: backend
push:
  clients:
    - {{name: orders-ci, tokenSha256: {sha["orders-ci"]}, apis: [orders]}}
    - name: catalog-ci
      tokenSha256: {sha["catalog-ci"]}
      apis: ["catalog-*"]
      pathPrefixes: [/books, /inside]
      upstreams: [backend]
      allowSecurityChanges: true
    - {{name: dots-ci, tokenSha256: {sha["dots-ci"]}, apis: [".*"]}}
    - {{name: payments-ci, subjectAltNames: ["spiffe://ci.example.com/payments"], apis: [payments]}}
"""


@dataclass
class Setup:
    work: Path
    config: Path
    store: Path
    ca: CertificateAuthority
    server_cert: Issued
    plane: ControlPlaneProcess
    envoys: list[EnvoyProcess]
    port: int
    push_port: int
    internal: EchoServer

    def get(self, path: str, headers: str = "") -> int:
        return raw_request(self.port, f"GET {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode()).status

    def synced(self) -> bool:
        nodes = self.plane.status()["nodes"]
        return len(nodes) == len(self.envoys) and all(n["state"] == "SYNCED" for n in nodes)

    def context(self, cert: Issued | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca.path))
        if cert is not None:
            context.load_cert_chain(str(cert.cert), str(cert.key))
        return context

    def raw(self, data: bytes, cert: Issued | None = None, timeout: float = 60) -> tuple[int | None, bytes]:
        """One request as bytes on its own TLS connection: (status or None, whole answer)."""
        plain = socket.create_connection(("127.0.0.1", self.push_port), timeout=timeout)
        with plain, self.context(cert).wrap_socket(plain, server_hostname="127.0.0.1") as s:
            s.sendall(data)
            answer = b""
            try:
                while chunk := s.recv(65536):
                    answer += chunk
            except (ConnectionResetError, ssl.SSLEOFError):
                pass
        return _status(answer), answer

    def call(
        self, method: str, path: str, body: Any = None, token: str | None = "orders-ci", cert: Issued | None = None
    ) -> tuple[int | None, Any]:
        data = b"" if body is None else json.dumps(body).encode()
        head = f"{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {len(data)}\r\n"
        if token is not None:
            head += f"authorization: Bearer {TOKENS.get(token, token)}\r\n"
        status, answer = self.raw(head.encode() + b"\r\n" + data, cert)
        _, _, payload = answer.partition(b"\r\n\r\n")
        return status, json.loads(payload) if payload else None

    def push(self, api: str, files: dict[str, str], token: str = "orders-ci", **more: Any) -> tuple[int | None, Any]:
        spec = more.pop("spec", next(iter(files)))
        return self.call("POST", f"/v1/apis/{api}/versions", {"files": files, "spec": spec, **more}, token)

    def audit(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in (self.store / "audit.log").read_text().splitlines()]


def _status(answer: bytes) -> int | None:
    parts = answer.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        return None
    return int(parts[1])


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    work = tmp_path_factory.mktemp("push-hostile")
    echo, internal = EchoServer().start(), EchoServer().start()
    (work / "pki").mkdir()
    ca = CertificateAuthority(work / "pki", "push-ca")
    server_cert = ca.issue("localhost", ["localhost", "127.0.0.1"])
    config = work / "config"
    config.mkdir()
    port = free_port()
    jwks = json.dumps(IdentityProvider("https://idp.test", [SigningKey.generate("ES256", "k1")]).jwks())
    (config / "orders.yaml").write_text(SECURED)
    (config / "payments.yaml").write_text(CATALOG.replace("catalog", "payments").replace("/items", "/charges"))
    (config / "catalog-platform.yaml").write_text(PLATFORM_CATALOG)
    (config / "policy.yaml").write_text(platform_policy(port, echo.port, internal.port, jwks))
    store, push_port = work / "store", free_port()
    plane = ControlPlaneProcess(
        [config],
        work,
        extra=[
            *("--push-address", f"127.0.0.1:{push_port}", "--push-store", str(store)),
            *("--push-cert", str(server_cert.cert), "--push-key", str(server_cert.key)),
            *("--push-client-ca", str(ca.path)),
        ],
    )
    plane.start()
    s = Setup(work, config, store, ca, server_cert, plane, [], port, push_port, internal)
    s.envoys = [start_envoy(work, plane, node_id=f"gateway-{i}") for i in (1, 2)]
    wait_for(s.synced, 30, "both Envoys in sync")
    # another team's pushed version, for the tests that try to read it
    status, answer = s.push(
        "catalog-books",
        {"catalog.yaml": CATALOG, "policy.yaml": fragment("catalog-books")},
        token="catalog-ci",
        spec="catalog.yaml",
        policy="policy.yaml",
        wait=True,
    )
    assert status == 200, answer
    yield s
    for envoy in s.envoys:
        envoy.stop()
    plane.stop()
    echo.shutdown()
    internal.shutdown()


def _leftovers(setup: Setup) -> list[Path]:
    return list((setup.store / "staging").iterdir())


# -- file names -------------------------------------------------------------------------------

BAD_NAMES = [
    "../x.yaml",
    "a/../../x.yaml",
    "a/../x.yaml",
    "/tmp/x.yaml",
    "a\\..\\..\\x.yaml",
    "x\x00.yaml",
    ".hidden.yaml",
    "a/.git/x.yaml",
    "\uff0e\uff0e/x.yaml",  # fullwidth full stops
    "\u2024\u2024/x.yaml",  # one-dot leaders
    "\u0430.yaml",  # Cyrillic a
    "x.yaml\n",
    "x.sh",
    "",
    "a/" * 2100 + "x.yaml",  # longer than any path the file system takes (PATH_MAX)
]


@pytest.mark.parametrize("name", BAD_NAMES, ids=[repr(n)[:30] for n in BAD_NAMES])
def test_file_names_that_leave_the_version_directory_are_refused(setup: Setup, name: str) -> None:
    status, answer = setup.push("orders", {"spec.yaml": ORDERS_V1, name: "openapi: 3.0.3\n"}, spec="spec.yaml")
    assert status in (400, 413), answer
    assert "file name" in answer["error"] or "path" in answer["error"], answer
    assert not (setup.work / "x.yaml").exists() and not Path("/tmp/x.yaml").exists()
    assert _leftovers(setup) == []


@pytest.mark.parametrize(
    "files",
    [
        {"a.yaml": ORDERS_V1, "a.yaml/b.yaml": "x: 1\n"},
        {"a.yaml/b.yaml": "x: 1\n", "a.yaml": ORDERS_V1},
    ],
    ids=["file-then-directory", "directory-then-file"],
)
def test_a_name_that_is_another_names_directory_is_refused_not_a_crash(setup: Setup, files: dict[str, str]) -> None:
    status, answer = setup.push("orders", files, spec="a.yaml")
    assert status == 400, answer
    assert "a.yaml" in answer["error"]
    assert _leftovers(setup) == []  # nothing staged is left behind


@pytest.mark.parametrize("alias", ["./spec.yaml", "a//../spec.yaml", "sub//x.yaml"])
def test_one_file_under_two_names_is_refused(setup: Setup, alias: str) -> None:
    files = {"spec.yaml": ORDERS_V1, "sub/x.yaml": ORDERS_V1, alias: SECURED}
    status, answer = setup.push("orders", files, spec="spec.yaml")
    assert status == 400 and repr(alias) in answer["error"], answer


def test_api_names_made_of_dots_never_reach_the_store_root(setup: Setup) -> None:
    before = sorted(p.name for p in setup.store.iterdir())
    for api in ("..", "."):
        status, answer = setup.push(api, {"spec.yaml": ORDERS_V1}, token="dots-ci")
        assert status == 400 and "not an API name" in answer["error"], answer
        status, answer = setup.call("POST", f"/v1/apis/{api}/rollback", {"to": 1}, token="dots-ci")
        assert status == 400 and "not an API name" in answer["error"], answer
    assert sorted(p.name for p in setup.store.iterdir()) == before


def test_a_symlink_planted_in_the_store_is_not_followed(setup: Setup, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (setup.store / "apis" / "catalog-planted").symlink_to(outside)
    try:
        status, answer = setup.push(
            "catalog-planted",
            {"catalog.yaml": CATALOG, "policy.yaml": fragment("catalog-planted", prefix="/planted")},
            token="catalog-ci",
            spec="catalog.yaml",
            policy="policy.yaml",
        )
        assert list(outside.iterdir()) == []
        assert status == 500 and "symbolic link" in answer["error"], answer
        assert "catalog-planted" not in json.loads((setup.store / "live.json").read_text())
    finally:
        (setup.store / "apis" / "catalog-planted").unlink()


# -- $ref -------------------------------------------------------------------------------------


def _with_ref(ref: str) -> str:
    return ORDERS_V1 + f"  /leak:\n    get: {{operationId: leak, responses: {{'200': {{$ref: '{ref}'}}}}}}\n"


@pytest.mark.parametrize(
    "ref",
    [
        "/etc/passwd",
        "file:///etc/passwd",
        "../../apis/catalog-books/1/catalog.yaml#/paths",  # another team's pushed version
        "..%2F..%2Fapis%2Fcatalog-books%2F1%2Fcatalog.yaml#/paths",
        "{config}/policy.yaml#/push",
    ],
)
def test_a_pushed_spec_cannot_read_outside_its_files(setup: Setup, ref: str) -> None:
    ref = ref.format(config=setup.config)
    for dry_run in (True, False):
        status, answer = setup.push("orders", {"spec.yaml": _with_ref(ref)}, dryRun=dry_run)
        assert status == 422, answer
        text = json.dumps(answer)
        assert "pushed document may only refer to files pushed with it" in text, answer
        assert "root:" not in text and "listItems" not in text and "tokenSha256" not in text


def test_a_pushed_spec_cannot_make_the_control_plane_connect_anywhere(setup: Setup) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    try:
        refs = [f"http://127.0.0.1:{port}/x.yaml", f"//127.0.0.1:{port}/x.yaml", f"HTTP://127.0.0.1:{port}/x.yaml"]
        for ref in refs:
            for dry_run in (True, False):
                status, answer = setup.push("orders", {"spec.yaml": _with_ref(ref)}, dryRun=dry_run)
                assert status == 422, answer
        # OpenAPI 3.1: a schema's $id moves the base of the references below it
        based = ORDERS_V1.replace("3.0.3", "3.1.0") + (
            "  /based:\n    get:\n      responses:\n        '200':\n          description: ok\n"
            "          content:\n            application/json:\n              schema:\n"
            f"                $id: 'http://127.0.0.1:{port}/s/'\n                $ref: 'x.yaml'\n"
        )
        status, answer = setup.push("orders", {"spec.yaml": based, "x.yaml": "type: object\n"}, dryRun=True)
        assert status in (200, 422), answer
        # every push was answered: a connection of ours is the first one the listener has
        with socket.create_connection(("127.0.0.1", port)) as ours:
            accepted, peer = listener.accept()
            accepted.close()
            assert peer == ours.getsockname(), "the control plane connected to a URL a pushed spec named"
    finally:
        listener.close()


# -- policy fragments ---------------------------------------------------------------------------

PLATFORM_KEYS = {
    "push": "push: {clients: [{name: evil, tokenSha256: " + "0" * 64 + ", apis: [orders]}]}",
    "auth": "auth: {providers: []}",
    "listeners": "listeners: [{name: sneaky, address: 0.0.0.0, port: 18777}]",
    "upstreams": "upstreams: [{name: evil, endpoints: ['169.254.169.254:80']}]",
    "ipAllowlists": "ipAllowlists: [{pathPrefix: /, allow: [0.0.0.0/0]}]",
    "rateLimits": "rateLimits: []",
    "waf": "waf: {mode: off}",
    "gateway": "gateway: {maxConnections: 1}",
    "headers": "headers: {}",
    "mesh": "mesh: {}",
}


@pytest.mark.parametrize("key", sorted(PLATFORM_KEYS))
def test_a_fragment_cannot_set_what_the_platform_owns(setup: Setup, key: str) -> None:
    status, answer = setup.push(
        "catalog-frag",
        {"catalog.yaml": CATALOG, "policy.yaml": fragment("catalog-frag") + PLATFORM_KEYS[key] + "\n"},
        token="catalog-ci",
        spec="catalog.yaml",
        policy="policy.yaml",
    )
    assert status == 403 and key in answer["error"] and "platform" in answer["error"], answer


@pytest.mark.parametrize(
    "text",
    [
        fragment("catalog-frag") + "  - {name: catalog-two, spec: catalog.yaml, upstream: backend}\n",
        fragment("catalog-other"),
        fragment("orders"),
        "apiVersion: controlplane.dev/v1\nkind: GatewayPolicy\napis: []\n",
        "apiVersion: controlplane.dev/v1\nkind: GatewayPolicy\napis: [[]]\n",
    ],
    ids=["two-apis", "another-name", "another-teams-api", "no-api", "not-a-mapping"],
)
def test_a_fragment_declares_exactly_its_own_api(setup: Setup, text: str) -> None:
    status, answer = setup.push(
        "catalog-frag",
        {"catalog.yaml": CATALOG, "policy.yaml": text},
        token="catalog-ci",
        spec="catalog.yaml",
        policy="policy.yaml",
    )
    assert status == 403 and "exactly one API" in answer["error"], answer


def test_a_fragment_cannot_redeclare_a_platform_api(setup: Setup) -> None:
    # catalog-ci owns catalog-* by pattern, so it may push catalog-platform's spec, but not
    # replace the platform's entry (its prefix, upstream, auth) with its own
    text = fragment("catalog-platform", upstream="backend", prefix="/books/hijacked")  # both the client's
    files = {"catalog.yaml": PLATFORM_CATALOG, "policy.yaml": text}
    status, answer = setup.push(
        "catalog-platform", files, token="catalog-ci", spec="catalog.yaml", policy="policy.yaml", wait=True
    )
    assert status == 422 and "defined twice" in json.dumps(answer), answer
    assert setup.get("/catalog-platform/shelves") == 200
    assert setup.get("/hijacked/shelves") == 404


def test_a_spec_that_is_also_a_policy_is_never_read_as_one(setup: Setup) -> None:
    evil_token = "minted-by-the-pipeline"
    sha = hashlib.sha256(evil_token.encode()).hexdigest()
    spec = (
        ORDERS_V1
        + "kind: GatewayPolicy\n"
        + f"push: {{clients: [{{name: evil, tokenSha256: {sha}, apis: [payments, catalog-platform]}}]}}\n"
    )
    status, answer = setup.push("orders", {"spec.yaml": spec})
    assert status in (200, 202, 422), answer
    status, answer = setup.call("GET", "/v1/apis", token=evil_token)
    assert status == 401, answer


def test_a_fragment_cannot_route_to_the_platforms_internal_upstream(setup: Setup) -> None:
    files = {"catalog.yaml": CATALOG, "policy.yaml": fragment("catalog-inside", upstream="internal", prefix="/inside")}
    status, answer = setup.push(
        "catalog-inside", files, token="catalog-ci", spec="catalog.yaml", policy="policy.yaml", wait=True
    )
    reached = setup.get("/inside/items") == 200 and any(r["path"] == "/items" for r in setup.internal.received)
    assert status == 403 and not reached, answer


# -- what the platform requires of the operations -------------------------------------------------


def test_a_pushed_spec_saying_public_does_not_beat_the_platforms_defaults(setup: Setup) -> None:
    spec = ORDERS_V1.replace("get: {operationId: listOrders,", "get: {operationId: listOrders, security: [],")
    status, answer = setup.push("orders", {"spec.yaml": spec}, wait=True)
    assert status == 200, answer
    assert setup.get("/orders-api/orders") == 401


def test_an_operations_x_gateway_public_needs_a_client_allowed_security_changes(setup: Setup) -> None:
    spec = ORDERS_V1.replace(
        "get: {operationId: listOrders,", "get: {operationId: listOrders, x-gateway: {public: true},"
    )
    status, answer = setup.push("orders", {"spec.yaml": spec}, wait=True)
    # the spec's x-gateway wins over apis[].defaults (docs/policy.md), so the push would open
    # the operation: diff flags it, and a client without allowSecurityChanges is refused
    assert status == 403 and any("public" in c["change"] for c in answer["security"]), answer
    assert setup.get("/orders-api/orders") == 401


# -- documents that cost too much --------------------------------------------------------------

ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
    for i in range(8)
)

COSTLY = {
    "alias-bomb-spec": (
        "spec.yaml",
        ORDERS_V1 + "x-bomb:\n" + "".join("  " + line + "\n" for line in ALIAS_BOMB.splitlines()),
    ),
    "nested-json-spec": ("spec.json", "[" * 200_000 + "]" * 200_000),
    "nested-yaml-spec": ("spec.yaml", ORDERS_V1 + "x-deep: " + "[" * 200_000 + "]" * 200_000 + "\n"),
    "huge-number-spec": ("spec.yaml", ORDERS_V1 + "x-big: " + "9" * 200_000 + "\n"),
    "huge-number-json": ("spec.json", '{"openapi": "3.0.3", "x": ' + "9" * 200_000 + "}"),
}


@pytest.mark.parametrize("case", sorted(COSTLY))
def test_costly_documents_are_refused_and_the_api_keeps_answering(setup: Setup, case: str) -> None:
    name, text = COSTLY[case]
    results: dict[str, tuple[int | None, Any]] = {}
    pushing = threading.Thread(target=lambda: results.update(push=setup.push("orders", {name: text})))
    pushing.start()
    assert setup.call("GET", "/v1/apis")[0] == 200  # answered while the push is handled
    pushing.join(120)
    status, answer = results["push"]
    assert status == 422, answer


@pytest.mark.parametrize("where", ["spec", "fragment"])
def test_an_alias_bomb_in_a_fragment_or_spec_is_refused(setup: Setup, where: str) -> None:
    bomb = "x-bomb:\n" + "".join("  " + line + "\n" for line in ALIAS_BOMB.splitlines())
    spec = CATALOG + (bomb if where == "spec" else "")
    text = fragment("catalog-bomb") + ("metadata:\n  " + bomb.replace("\n  ", "\n    ") if where == "fragment" else "")
    status, answer = setup.push(
        "catalog-bomb",
        {"catalog.yaml": spec, "policy.yaml": text},
        token="catalog-ci",
        spec="catalog.yaml",
        policy="policy.yaml",
    )
    assert status == 422 and "aliases expand" in json.dumps(answer), answer


# -- HTTP --------------------------------------------------------------------------------------


def _head(method: str = "POST", path: str = "/v1/apis/orders/versions", token: str = "orders-ci") -> str:
    return f"{method} {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKENS[token]}\r\n"


BODY = json.dumps({"files": {"spec.yaml": ORDERS_V1}, "spec": "spec.yaml", "dryRun": True}).encode()

MALFORMED = {
    "no-content-length": (_head() + "\r\n", 411),
    "negative-content-length": (_head() + "content-length: -1\r\n\r\n", 411),
    "plus-content-length": (_head() + f"content-length: +{len(BODY)}\r\n\r\n", 411),
    "superscript-content-length": (_head() + "content-length: \xb2\r\n\r\n", 411),
    "huge-content-length": (_head() + "content-length: 99999999999999999999\r\n\r\n", 413),
    "chunked": (_head() + "transfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 411),
    "chunked-and-length": (_head() + f"transfer-encoding: chunked\r\ncontent-length: {len(BODY)}\r\n\r\n", 411),
    "two-content-lengths": (_head() + f"content-length: {len(BODY)}\r\ncontent-length: 0\r\n\r\n", 400),
    "space-before-colon": (_head() + f"content-length : {len(BODY)}\r\n\r\n", 400),
    "folded-header": (_head() + f"content-length: {len(BODY)}\r\n x: y\r\n\r\n", 400),
    "two-authorizations": (_head() + "authorization: Bearer x\r\ncontent-length: 0\r\n\r\n", 400),
    "request-line": ("POST /v1/apis/orders/versions\r\n\r\n", 400),
    "http-0.9": ("GET /v1/apis\r\n\r\n", 400),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_requests_are_answered_and_never_applied(setup: Setup, case: str) -> None:
    head, expected = MALFORMED[case]
    data = head.encode("latin-1")
    if "content-length: " in head and "chunked" not in head:
        data += BODY
    status, answer = setup.raw(data)
    assert status == expected, answer[:300]


AUTHORIZATIONS = {
    "tab": f"Bearer\t{TOKENS['orders-ci']}",
    "basic": f"Basic {TOKENS['orders-ci']}",
    "token-and-more": f"Bearer {TOKENS['orders-ci']} {TOKENS['orders-ci']}",
    "nul": f"Bearer {TOKENS['orders-ci']}\x00",
    "digest-as-token": "Bearer " + hashlib.sha256(TOKENS["orders-ci"].encode()).hexdigest(),
    "empty": "Bearer ",
    "prefix": f"Bearer {TOKENS['orders-ci'][:-1]}",
}


@pytest.mark.parametrize("case", sorted(AUTHORIZATIONS))
def test_tokens_are_compared_whole(setup: Setup, case: str) -> None:
    head = f"GET /v1/apis/orders/versions HTTP/1.1\r\nhost: x\r\nauthorization: {AUTHORIZATIONS[case]}\r\n\r\n"
    status, answer = setup.raw(head.encode("latin-1"))
    assert status == 401, answer[:300]


def test_another_clients_token_with_a_newline_is_that_client(setup: Setup) -> None:
    head = (
        "POST /v1/apis/orders/versions HTTP/1.1\r\nhost: x\r\n"
        f"authorization: Bearer {TOKENS['catalog-ci']}\n\r\ncontent-length: {len(BODY)}\r\n\r\n"
    )
    status, answer = setup.raw(head.encode() + BODY)
    assert status == 403 and b"catalog-ci" in answer, answer[:300]


def test_a_client_certificate_from_another_ca_is_no_client(setup: Setup, tmp_path: Path) -> None:
    rogue = CertificateAuthority(tmp_path, "rogue-ca").issue(
        "payments-ci", client=True, uris=["spiffe://ci.example.com/payments"]
    )
    try:
        status, answer = setup.call("GET", "/v1/apis/payments/versions", token=None, cert=rogue)
    except (ssl.SSLError, ConnectionError):
        status, answer = None, "refused in the handshake"
    assert status in (None, 401), answer  # None: the handshake failed, no HTTP answer
    good = setup.ca.issue("payments-ci", client=True, uris=["spiffe://ci.example.com/payments"])
    assert setup.call("GET", "/v1/apis/payments/versions", token=None, cert=good)[0] == 200


def test_plain_http_on_the_tls_port_gets_no_answer_and_harms_nobody(setup: Setup) -> None:
    with socket.create_connection(("127.0.0.1", setup.push_port), timeout=30) as s:
        s.sendall(_head("GET", "/v1/apis").encode() + b"\r\n")
        answer = b""
        try:
            while chunk := s.recv(4096):
                answer += chunk
        except ConnectionResetError:
            pass
    assert _status(answer) is None
    assert setup.call("GET", "/v1/apis")[0] == 200


def test_slow_and_oversized_heads_do_not_stall_other_clients(setup: Setup) -> None:
    slow: list[ssl.SSLSocket] = []
    try:
        for _ in range(30):
            s = setup.context().wrap_socket(
                socket.create_connection(("127.0.0.1", setup.push_port), timeout=30), server_hostname="127.0.0.1"
            )
            s.sendall(b"POST /v1/apis/orders/versions HTTP/1.1\r\nhost: x\r\n")
            slow.append(s)
        body_held = slow[0]
        body_held.sendall(b"content-length: 1000\r\n\r\n{")
        assert setup.call("GET", "/v1/apis")[0] == 200
        status, answer = setup.push("orders", {"spec.yaml": ORDERS_V1}, dryRun=True)
        assert status == 200, answer
        big: dict[str, tuple[int | None, bytes]] = {}

        def send_big() -> None:
            try:
                big["answer"] = setup.raw(_head("GET", "/v1/apis").encode() + b"x-pad: " + b"a" * (10 << 20))
            except (ConnectionError, ssl.SSLError) as exc:
                big["answer"] = (None, str(exc).encode())

        sender = threading.Thread(target=send_big)
        sender.start()
        sender.join(60)
        assert big["answer"][0] in (413, None), big["answer"][1][:200]
        assert setup.call("GET", "/v1/apis")[0] == 200
    finally:
        for s in slow:
            s.close()


@pytest.mark.parametrize(
    ("path", "token", "expected"),
    [
        ("/v1/apis/orders%2F..%2Fpayments/versions", "orders-ci", 403),
        ("/v1/apis/ORDERS/versions", "orders-ci", 403),
        ("/v1/apis/orders/versions/../rollback", "orders-ci", 404),
        ("/v1/apis/orders/./versions", "orders-ci", 404),
        ("/v1/apis//versions", "orders-ci", 404),
        ("/v1/apis/payments/versions", "orders-ci", 403),
        ("/v1/apis/orders/versions?api=payments", "orders-ci", 404),
        ("https://127.0.0.1/v1/apis/payments/versions", "orders-ci", 404),
        ("/v1/apis/catalog-x%2F..%2F..%2Forders/versions", "catalog-ci", 200),
        ("/v1/apis/catalog-..%2F..%2Forders/versions", "catalog-ci", 200),
    ],
)
def test_paths_name_one_api_literally(setup: Setup, path: str, token: str, expected: int) -> None:
    status, answer = setup.call("GET", path, token=token)
    assert status == expected, answer
    if status == 200:  # another team's versions are not reached through the name
        assert answer["versions"] == [] and answer["live"] is None, answer


# -- rollback and its arguments ------------------------------------------------------------------


def test_rollback_of_another_teams_api_is_refused(setup: Setup) -> None:
    live = json.loads((setup.store / "live.json").read_text())
    status, answer = setup.call("POST", "/v1/apis/catalog-books/rollback", {}, token="orders-ci")
    assert status == 403, answer
    status, answer = setup.call("POST", "/v1/apis/payments/rollback", {"to": 1}, token="catalog-ci")
    assert status == 403, answer
    assert json.loads((setup.store / "live.json").read_text()) == live


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('{"to": true}', 400),
        ('{"to": -1}', 404),
        ('{"to": 0}', 404),
        ('{"to": 1e309}', 400),
        ('{"to": 1.0}', 400),
        ('{"to": "1"}', 400),
        ('{"to": 100000000000000000000000000000}', 404),
        ('{"timeout": 0}', 400),
        ('{"timeout": -5}', 400),
        ('{"timeout": NaN}', 400),
        ('{"timeout": Infinity}', 400),
        ('{"timeout": 1e309}', 400),
        ('{"timeout": 100000000}', 400),
        ('{"timeout": true}', 400),
        ("[]", 400),
        ("not json", 400),
        ('{"to": 1', 400),
    ],
)
def test_rollback_arguments_are_checked(setup: Setup, body: str, expected: int) -> None:
    data = body.encode()
    head = _head(path="/v1/apis/catalog-books/rollback", token="catalog-ci") + f"content-length: {len(data)}\r\n\r\n"
    status, answer = setup.raw(head.encode() + data)
    assert status == expected, answer[-300:]


@pytest.mark.parametrize("timeout", ["0", "-1", "NaN", "Infinity", "1e309", "601", "true", '"5"'])
def test_push_timeouts_are_checked(setup: Setup, timeout: str) -> None:
    data = (
        '{"files": {"spec.yaml": ' + json.dumps(ORDERS_V1) + '}, "spec": "spec.yaml", "timeout": ' + timeout + "}"
    ).encode()
    status, answer = setup.raw(_head().encode() + f"content-length: {len(data)}\r\n\r\n".encode() + data)
    assert status == 400 and b"timeout" in answer, answer[-300:]


def test_rollback_to_a_rejected_or_nacked_version_leaves_the_good_one_live(setup: Setup) -> None:
    good = setup.push("orders", {"spec.yaml": ORDERS_V1}, wait=True)
    assert good[0] == 200, good
    rejected = setup.push("orders", {"spec.yaml": ORDERS_V1.replace("3.0.3", "9.9.9")})
    assert rejected[0] == 422 and rejected[1]["version"], rejected
    status, answer = setup.call("POST", "/v1/apis/orders/rollback", {"to": rejected[1]["version"]})
    assert status == 409 and "never compiled" in answer["error"], answer
    nacked = setup.push("orders", {"spec.yaml": ORDERS_NACKED}, wait=True)
    assert nacked[0] == 409, nacked
    wait_for(setup.synced, 30, "the Envoys back on the good version")
    status, answer = setup.call("POST", "/v1/apis/orders/rollback", {"to": nacked[1]["version"], "wait": True})
    assert status == 409, answer  # refused, or served, NACKed and rolled back again
    wait_for(setup.synced, 30, "the Envoys back on the good version")
    versions = setup.call("GET", "/v1/apis/orders/versions")[1]
    assert versions["live"] == good[1]["version"], versions
    assert setup.get("/orders-api/orders") == 401  # the good version, the platform's auth


# -- concurrency -------------------------------------------------------------------------------


def test_twenty_parallel_pushes_are_all_answered_and_the_store_stays_consistent(setup: Setup) -> None:
    before = len(setup.audit())
    results: list[tuple[int | None, Any]] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        if i % 2:
            spec = (
                ORDERS_V1
                + f"  /orders/p{i}:\n    get: {{operationId: p{i}, responses: {{'200': {{description: ok}}}}}}\n"
            )
            answer = setup.push("orders", {"spec.yaml": spec}, wait=bool(i % 3))
        else:
            files = {"catalog.yaml": CATALOG.replace("/items", f"/items{i}"), "policy.yaml": fragment("catalog-par")}
            answer = setup.push(
                "catalog-par", files, token="catalog-ci", spec="catalog.yaml", policy="policy.yaml", wait=bool(i % 3)
            )
        with lock:
            results.append(answer)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert len(results) == 20 and all(status in (200, 202) for status, _ in results), results
    # the last rollout ends; then every live version exists and is the one marked live
    wait_for(setup.synced, 60, "every Envoy in sync")
    live = json.loads((setup.store / "live.json").read_text())
    for api, version in live.items():
        record = json.loads((setup.store / "apis" / api / f"{version}.json").read_text())
        assert record["state"] == "live", record
        assert (setup.store / "apis" / api / str(version) / record["spec"]).is_file()
    for api in ("orders", "catalog-par"):
        states = [
            v["state"]
            for v in setup.call(
                "GET", f"/v1/apis/{api}/versions", token="orders-ci" if api == "orders" else "catalog-ci"
            )[1]["versions"]
        ]
        assert states.count("live") == 1, states
    entries = setup.audit()[before:]
    pushes = [e for e in entries if e.get("action") == "push" and e.get("client") in ("orders-ci", "catalog-ci")]
    assert len(pushes) == 20, entries
    versions = {(e["api"], e["version"]) for e in pushes}
    assert len(versions) == 20  # each push its own version
    assert setup.get("/orders-api/orders") == 401 and setup.get("/books/items") == 200


def test_a_push_during_a_rollback_is_taken_after_it(setup: Setup) -> None:
    first = setup.push(
        "catalog-books", _catalog("/v1"), token="catalog-ci", spec="catalog.yaml", policy="policy.yaml", wait=True
    )
    second = setup.push(
        "catalog-books", _catalog("/v2"), token="catalog-ci", spec="catalog.yaml", policy="policy.yaml", wait=True
    )
    assert first[0] == 200 and second[0] == 200, (first, second)
    results: dict[str, tuple[int | None, Any]] = {}
    rolling = threading.Thread(
        target=lambda: results.update(
            rollback=setup.call(
                "POST", "/v1/apis/catalog-books/rollback", {"to": first[1]["version"], "wait": True}, token="catalog-ci"
            )
        )
    )
    rolling.start()
    results["push"] = setup.push(
        "catalog-books", _catalog("/v3"), token="catalog-ci", spec="catalog.yaml", policy="policy.yaml", wait=True
    )
    rolling.join(120)
    assert results["rollback"][0] == 200 and results["push"][0] == 200, results
    live = setup.call("GET", "/v1/apis/catalog-books/versions", token="catalog-ci")[1]["live"]
    # one of them is live (whichever the lock took last), and the Envoys serve exactly that
    assert live in (first[1]["version"], results["push"][1]["version"])
    wait_for(setup.synced, 30, "every Envoy in sync")
    served, other = ("/v3", "/v1") if live == results["push"][1]["version"] else ("/v1", "/v3")
    assert setup.get(f"/books{served}") == 200 and setup.get(f"/books{other}") == 404


def _catalog(path: str) -> dict[str, str]:
    return {"catalog.yaml": CATALOG.replace("/items", path), "policy.yaml": fragment("catalog-books")}
