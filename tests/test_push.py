"""The push API and the ``push`` command, end to end: a real control plane serving it over
TLS, real Envoys taking what is pushed, requests through them, the ``push`` CLI as a CI job
runs it, a restart, a NACK and its rollback."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from controlplane.certs import CertificateAuthority, Issued
from controlplane.echo import EchoServer
from tests.harness import EnvoyProcess, free_port, raw_request
from tests.xds_harness import REPO, ControlPlaneProcess, start_envoy, wait_for

pytestmark = pytest.mark.envoy

TOKENS = {
    "orders-ci": "orders-secret-token-1",
    "catalog-ci": "catalog-secret-token-2",
    "reviewed-ci": "reviewed-secret-token-3",
}

ORDERS_V1 = """\
openapi: 3.0.3
info: {title: orders, version: "1"}
paths:
  /orders:
    get: {operationId: listOrders, responses: {"200": {description: ok}}}
"""

ORDERS_V2 = (
    ORDERS_V1
    + """\
  /orders/{id}:
    get:
      operationId: getOrder
      parameters: [{name: id, in: path, required: true, schema: {type: integer}}]
      responses: {"200": {description: ok}}
"""
)

# RE2 refuses programs above the size the bootstrap allows; the compiler cannot know the
# program size of a pattern, so this compiles and Envoy NACKs it (as in test_xds_envoy).
ORDERS_NACKED = (
    ORDERS_V1
    + """\
  /orders/codes/{code}:
    get:
      operationId: getCode
      parameters:
        - name: code
          in: path
          required: true
          schema: {type: string, pattern: "^[a-z]{1000}[0-9]{1000}[A-Z]{1000}[a-f]{1000}[g-z]{1000}[0-5]{1000}$"}
      responses: {"200": {description: ok}}
"""
)

LINES = """\
  /orders/{id}/lines:
    get:
      operationId: getLines
      parameters: [{name: id, in: path, required: true, schema: {type: integer}}]
      responses: {"200": {description: ok}}
"""

CATALOG = """\
openapi: 3.0.3
info: {title: catalog, version: "1"}
paths:
  /items:
    get: {operationId: listItems, responses: {"200": {description: ok}}}
"""

CATALOG_FRAGMENT = """\
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
apis:
  - name: catalog-books
    spec: catalog.yaml
    pathPrefix: /books
    upstream: backend
"""


def platform_policy(port: int, backend: int, payments_san: str) -> str:
    orders_sha = hashlib.sha256(TOKENS["orders-ci"].encode()).hexdigest()
    catalog_sha = hashlib.sha256(TOKENS["catalog-ci"].encode()).hexdigest()
    reviewed_sha = hashlib.sha256(TOKENS["reviewed-ci"].encode()).hexdigest()
    return f"""\
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
listeners: [{{name: public, address: 127.0.0.1, port: {port}}}]
upstreams: [{{name: backend, endpoints: ["127.0.0.1:{backend}"]}}]
apis:
  - name: orders
    spec: orders.yaml
    pathPrefix: /orders-api
    upstream: backend
  - name: payments
    spec: payments.yaml
    pathPrefix: /payments
    upstream: backend
push:
  clients:
    - {{name: orders-ci, tokenSha256: {orders_sha}, apis: [orders], allowSecurityChanges: true}}
    - name: catalog-ci
      tokenSha256: {catalog_sha}
      apis: ["catalog-*"]
      pathPrefixes: [/books]
      upstreams: [backend]
      allowSecurityChanges: true
    - {{name: payments-ci, subjectAltNames: ["{payments_san}"], apis: [payments], allowSecurityChanges: true}}
    - {{name: reviewed-ci, tokenSha256: {reviewed_sha}, apis: [orders, reviewed-new], pathPrefixes: [/r]}}
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

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.push_port}"

    def start_plane(self) -> None:
        self.plane = ControlPlaneProcess(
            [self.config],
            self.work,
            extra=[
                "--push-address",
                f"127.0.0.1:{self.push_port}",
                "--push-store",
                str(self.store),
                "--push-cert",
                str(self.server_cert.cert),
                "--push-key",
                str(self.server_cert.key),
                "--push-client-ca",
                str(self.ca.path),
            ],
        )
        self.plane.xds_port = self.xds_port
        self.plane.start()

    xds_port: int = 0

    def get(self, path: str) -> int:
        return raw_request(self.port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()).status

    def synced(self) -> bool:
        nodes = self.plane.status()["nodes"]
        return len(nodes) == len(self.envoys) and all(n["state"] == "SYNCED" for n in nodes)


def push(
    setup: Setup, *args: str, token: str | None = "orders-ci", cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CONTROLPLANE_PUSH_TOKEN"}
    if token is not None:
        env["CONTROLPLANE_PUSH_TOKEN"] = TOKENS.get(token, token)
    return subprocess.run(
        [sys.executable, "-m", "controlplane", "push", "--server", setup.url, "--ca", str(setup.ca.path), *args],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        env={**env, "PYTHONPATH": str(REPO)},
        timeout=120,
    )


def api(setup: Setup, method: str, path: str, body: Any = None, token: str | None = "orders-ci") -> tuple[int, Any]:
    """The push API without the CLI (for requests the CLI never sends)."""
    import ssl
    import urllib.error
    import urllib.request

    headers = {"content-type": "application/json"}
    if token is not None:
        headers["authorization"] = f"Bearer {TOKENS.get(token, token)}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(setup.url + path, data=data, method=method, headers=headers)
    context = ssl.create_default_context(cafile=str(setup.ca.path))
    try:
        with urllib.request.urlopen(req, timeout=60, context=context) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    work = tmp_path_factory.mktemp("push")
    echo = EchoServer().start()
    (work / "pki").mkdir()
    ca = CertificateAuthority(work / "pki", "push-ca")
    server_cert = ca.issue("localhost", ["localhost", "127.0.0.1"])
    config = work / "config"
    config.mkdir()
    port = free_port()
    (config / "orders.yaml").write_text(ORDERS_V1)
    (config / "payments.yaml").write_text(CATALOG.replace("catalog", "payments").replace("/items", "/charges"))
    (config / "policy.yaml").write_text(platform_policy(port, echo.port, "spiffe://ci.example.com/payments"))
    s = Setup(work, config, work / "store", ca, server_cert, None, [], port, free_port())  # type: ignore[arg-type]
    s.xds_port = free_port()
    s.start_plane()
    s.envoys = [start_envoy(work, s.plane, node_id=f"gateway-{i}") for i in (1, 2)]
    wait_for(s.synced, 30, "both Envoys in sync")
    yield s
    for envoy in s.envoys:
        envoy.stop()
    s.plane.stop()
    echo.shutdown()


def audit(setup: Setup) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (setup.store / "audit.log").read_text().splitlines()]


def test_a_push_reaches_every_envoy_and_wait_returns_when_all_acked(setup: Setup, tmp_path: Path) -> None:
    assert setup.get("/orders-api/orders/7") == 404  # not declared yet
    spec = tmp_path / "orders.yaml"
    spec.write_text(ORDERS_V2)
    out = push(setup, "--api", "orders", str(spec), "--wait", "--message", "PR #12")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "every connected Envoy ACKed it (2," in out.stdout
    # --wait returned: the Envoys already route the new operation, no polling needed
    assert setup.get("/orders-api/orders/7") == 200
    status = setup.plane.status()
    assert all(n["state"] == "SYNCED" for n in status["nodes"])
    listed = push(setup, "--versions", "orders")
    assert listed.returncode == 0
    assert "orders-ci" in listed.stdout and "PR #12" in listed.stdout and " live " in listed.stdout
    *_, pushed, listed_line = audit(setup)  # every request gets its line, reads too
    assert (pushed["client"], pushed["action"], pushed["status"]) == ("orders-ci", "push", 200)
    assert (listed_line["action"], listed_line["status"], listed_line["api"]) == ("list", 200, "orders")


def test_a_push_that_does_not_compile_changes_nothing_and_names_the_pushed_file(setup: Setup, tmp_path: Path) -> None:
    before = setup.plane.get("/compile")["served_version"]
    spec = tmp_path / "orders.yaml"
    spec.write_text(ORDERS_V2.replace("type: integer", "type: intger"))
    out = push(setup, "--api", "orders", str(spec), "--wait")
    assert out.returncode == 1
    assert "does not compile" in out.stdout
    assert "  error: orders:orders.yaml:" in out.stdout and "intger" in out.stdout, out.stdout
    assert setup.plane.get("/compile")["served_version"] == before
    assert setup.get("/orders-api/orders") == 200


def test_credentials_own_only_their_apis(setup: Setup, tmp_path: Path) -> None:
    spec = tmp_path / "payments.yaml"
    spec.write_text(ORDERS_V1)
    foreign = push(setup, "--api", "payments", str(spec))
    assert foreign.returncode == 1 and "(403)" in foreign.stdout and "may not change api 'payments'" in foreign.stdout
    unknown = push(setup, "--api", "orders", str(spec), token="guessed")
    assert unknown.returncode == 1 and "(401)" in unknown.stdout
    nothing = push(setup, "--api", "orders", str(spec), token=None)
    assert nothing.returncode == 1 and "no credentials" in nothing.stdout
    import socket
    import ssl

    context = ssl.create_default_context(cafile=str(setup.ca.path))
    with (
        socket.create_connection(("127.0.0.1", setup.push_port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):  # a POST without a length: answered 411 before any credential is read
        tls.sendall(b"POST /v1/apis/orders/versions HTTP/1.1\r\nHost: x\r\n\r\n")
        assert tls.recv(100).startswith(b"HTTP/1.1 411")
    entries = audit(setup)
    assert any(e.get("client") == "orders-ci" and e["api"] == "payments" and e["status"] == 403 for e in entries)
    assert any(e["status"] == 401 and e["reason"] == "unknown token" for e in entries)
    assert entries[-1]["action"] == "malformed" and entries[-1]["status"] == 411, entries[-1]


def test_a_client_certificate_identifies_its_pipeline(setup: Setup, tmp_path: Path) -> None:
    spec = tmp_path / "payments.yaml"
    spec.write_text(CATALOG.replace("catalog", "payments").replace("/items", "/refunds"))
    good = setup.ca.issue("payments-ci", client=True, uris=["spiffe://ci.example.com/payments"])
    other = setup.ca.issue("billing-ci", client=True, uris=["spiffe://ci.example.com/billing"])
    out = push(
        setup, "--api", "payments", str(spec), "--wait", "--cert", str(good.cert), "--key", str(good.key), token=None
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert setup.get("/payments/refunds") == 200
    refused = push(
        setup, "--api", "payments", str(spec), "--cert", str(other.cert), "--key", str(other.key), token=None
    )
    assert refused.returncode == 1 and "spiffe://ci.example.com/billing" in refused.stdout


def test_a_nacked_push_is_rolled_back_and_reported_with_its_source(setup: Setup, tmp_path: Path) -> None:
    spec = tmp_path / "orders.yaml"
    spec.write_text(ORDERS_V2)
    assert push(setup, "--api", "orders", str(spec), "--wait").returncode == 0
    good = setup.plane.get("/compile")["served_version"]
    spec.write_text(ORDERS_NACKED)
    out = push(setup, "--api", "orders", str(spec), "--wait", "-o", "json")
    assert out.returncode == 1
    data = json.loads(out.stdout)
    assert data["status"] == 409 and "rolled back" in data["error"]
    nack = data["rollout"]["nacks"][0]
    assert nack["sources"][0].startswith(f"orders@{data['version']}:orders.yaml#/paths/"), nack
    # the version before the push is served again, and every Envoy holds it
    wait_for(lambda: setup.plane.get("/compile")["served_version"] == good, 20, "the rollback served")
    wait_for(setup.synced, 20, "every Envoy back in sync")
    assert setup.get("/orders-api/orders/7") == 200
    versions = api(setup, "GET", "/v1/apis/orders/versions")[1]
    assert (
        versions["versions"][-1]["state"] == "rolled-back"
        and "NACKed by gateway-" in versions["versions"][-1]["reason"]
    )
    assert versions["live"] == versions["versions"][-2]["version"]


def test_concurrent_pushes_to_two_apis_both_land(setup: Setup, tmp_path: Path) -> None:
    (tmp_path / "o").mkdir()
    (tmp_path / "c").mkdir()
    orders = tmp_path / "o" / "orders.yaml"
    orders.write_text(ORDERS_V2 + LINES)
    (tmp_path / "c" / "catalog.yaml").write_text(CATALOG)
    (tmp_path / "c" / "policy.yaml").write_text(CATALOG_FRAGMENT)
    results: dict[str, subprocess.CompletedProcess[str]] = {}

    def run(name: str, args: list[str], token: str) -> None:
        results[name] = push(setup, *args, token=token)

    threads = [
        threading.Thread(target=run, args=("orders", ["--api", "orders", str(orders), "--wait"], "orders-ci")),
        threading.Thread(
            target=run,
            args=(
                "catalog",
                [
                    "--api",
                    "catalog-books",
                    str(tmp_path / "c" / "catalog.yaml"),
                    "--policy",
                    str(tmp_path / "c" / "policy.yaml"),
                    "--wait",
                ],
                "catalog-ci",
            ),
        ),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results["orders"].returncode == 0, results["orders"].stdout
    assert results["catalog"].returncode == 0, results["catalog"].stdout
    assert setup.get("/orders-api/orders/3/lines") == 200
    assert setup.get("/books/items") == 200


def test_a_fragment_may_declare_only_its_own_api(setup: Setup, tmp_path: Path) -> None:
    (tmp_path / "catalog.yaml").write_text(CATALOG)
    widening = tmp_path / "policy.yaml"
    widening.write_text(CATALOG_FRAGMENT + "listeners: [{name: sneaky, address: 0.0.0.0, port: 18777}]\n")
    out = push(
        setup, "--api", "catalog-books", str(tmp_path / "catalog.yaml"), "--policy", str(widening), token="catalog-ci"
    )
    assert out.returncode == 1 and "(403)" in out.stdout and "listeners" in out.stdout
    other = tmp_path / "other.yaml"
    other.write_text(CATALOG_FRAGMENT.replace("catalog-books", "orders"))
    out = push(
        setup, "--api", "catalog-books", str(tmp_path / "catalog.yaml"), "--policy", str(other), token="catalog-ci"
    )
    assert out.returncode == 1 and "(403)" in out.stdout


def test_a_pushed_spec_cannot_read_files_outside_what_was_pushed(setup: Setup, tmp_path: Path) -> None:
    spec = tmp_path / "orders.yaml"
    target = setup.config / "policy.yaml"
    spec.write_text(
        ORDERS_V1 + f"  /leak:\n    get: {{operationId: leak, responses: {{'200': {{$ref: '{target}#/push'}}}}}}\n"
    )
    out = push(setup, "--api", "orders", str(spec), "-o", "json")
    data = json.loads(out.stdout)
    assert data["status"] == 422, data
    assert any("may only refer to files pushed with it" in e for e in data["errors"]), data["errors"]
    assert "tokenSha256" not in out.stdout


def test_a_dry_run_shows_the_diff_and_changes_nothing(setup: Setup, tmp_path: Path) -> None:
    before = api(setup, "GET", "/v1/apis/orders/versions")[1]
    served = setup.plane.get("/compile")["served_version"]
    spec = tmp_path / "orders.yaml"
    spec.write_text(
        ORDERS_V2 + '  /orders/export:\n    get: {operationId: exportOrders, responses: {"200": {description: ok}}}\n'
    )
    out = push(setup, "--api", "orders", str(spec), "--dry-run", "-o", "json")
    assert out.returncode == 0, out.stdout
    data = json.loads(out.stdout)
    assert data["dryRun"] and data["ok"]
    assert any("exportOrders" in json.dumps(c) for c in data["diff"]["changes"]), data["diff"]
    assert api(setup, "GET", "/v1/apis/orders/versions")[1] == before
    assert setup.plane.get("/compile")["served_version"] == served
    assert setup.get("/orders-api/orders/export") == 404


def test_rollback_to_a_version_and_a_restart_serves_what_was_pushed(setup: Setup, tmp_path: Path) -> None:
    spec = tmp_path / "orders.yaml"
    spec.write_text(ORDERS_V1)
    assert push(setup, "--api", "orders", str(spec), "--wait").returncode == 0
    assert setup.get("/orders-api/orders/7") == 404
    versions = api(setup, "GET", "/v1/apis/orders/versions")[1]["versions"]
    with_get = max(v["version"] for v in versions if v["state"] == "superseded")
    out = push(setup, "--rollback", "orders", "--to", str(with_get), "--wait")
    assert out.returncode == 0, out.stdout
    assert setup.get("/orders-api/orders/7") == 200
    # a new control plane process on the same store serves exactly what was pushed
    setup.plane.stop()
    setup.start_plane()
    wait_for(setup.synced, 30, "the Envoys in sync with the restarted control plane")
    assert setup.get("/orders-api/orders/7") == 200
    assert setup.get("/books/items") == 200
    assert api(setup, "GET", "/v1/apis/orders/versions")[1]["live"] == with_get


def test_a_client_without_allow_security_changes_cannot_open_an_operation(setup: Setup, tmp_path: Path) -> None:
    """Without auth in this policy every operation is public: adding one is security-relevant,
    and a client that may not make such changes is refused with the list; removing one is not."""
    versions = api(setup, "GET", "/v1/apis/orders/versions")[1]
    live = next(v for v in versions["versions"] if v["version"] == versions["live"])
    current = (setup.store / "apis" / "orders" / str(live["version"]) / live["spec"]).read_text()
    spec = tmp_path / "orders.yaml"
    spec.write_text(current + "  /orders/private-export:\n    get: {responses: {'200': {description: ok}}}\n")
    out = push(setup, "--api", "orders", str(spec), "--wait", "-o", "json", token="reviewed-ci")
    data = json.loads(out.stdout)
    assert out.returncode == 1 and data["status"] == 403, data
    assert any("new operation, public" in c["change"] for c in data["security"]), data["security"]
    assert setup.get("/orders-api/orders/private-export") == 404
    assert api(setup, "GET", "/v1/apis/orders/versions")[1]["versions"][-1]["state"] == "rejected"
    text = push(setup, "--api", "orders", str(spec), token="reviewed-ci")
    assert "security-relevant" in text.stdout and "GET /orders-api/orders/private-export" in text.stdout, text.stdout
    spec.write_text(ORDERS_V1)  # only removes operations: nothing opens
    assert push(setup, "--api", "orders", str(spec), "--wait", token="reviewed-ci").returncode == 0
    assert setup.get("/orders-api/orders/7") == 404


def test_a_fragment_mounts_only_under_the_clients_prefixes_and_upstreams(setup: Setup, tmp_path: Path) -> None:
    (tmp_path / "catalog.yaml").write_text(CATALOG)
    fragment = tmp_path / "policy.yaml"
    for changed, phrase in (
        (CATALOG_FRAGMENT.replace("pathPrefix: /books", "pathPrefix: /payments/books"), "pathPrefixes"),
        (CATALOG_FRAGMENT.replace("pathPrefix: /books", "pathPrefix: /bookshelf"), "pathPrefixes"),
        (CATALOG_FRAGMENT.replace("    pathPrefix: /books\n", ""), "pathPrefixes"),
        (CATALOG_FRAGMENT.replace("upstream: backend", "upstream: internal"), "push.clients[].upstreams"),
    ):
        fragment.write_text(changed)
        out = push(
            setup,
            "--api",
            "catalog-books",
            str(tmp_path / "catalog.yaml"),
            "--policy",
            str(fragment),
            token="catalog-ci",
        )
        assert out.returncode == 1 and "(403)" in out.stdout and phrase in out.stdout, out.stdout
