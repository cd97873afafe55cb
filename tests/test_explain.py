"""``explain``: its predicted status equals what a real Envoy answers, over a corpus of a few
hundred requests on the bundled example specs (operations, unknown paths and methods, path
normalization, tokens of every kind, roles, an allowlist), and each decision names its source."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from controlplane.compiler import compile
from controlplane.explain import Caller, explain
from controlplane.idp import IdentityProvider
from tests.conftest import REPO
from tests.harness import Gateway, raw_request

pytestmark = pytest.mark.envoy

POLICY = f"""
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
auth:
  providers:
    - name: example-idp
      issuer: https://idp.example.com
      audiences: [shop-api]
      jwks: {{file: {REPO}/specs/idp/jwks.json}}
      algorithms: [RS256, ES256]
ipAllowlists:
  - pathPrefix: /api/accounts
    allow: [203.0.113.0/24]
listeners:
  - {{name: public, address: 127.0.0.1, port: {{{{PORT}}}}}}
upstreams:
  - {{name: backend, endpoints: ["{{{{BACKEND}}}}"]}}
apis:
  - name: orders
    spec: {REPO}/specs/orders.openapi.yaml
    upstream: backend
    auth:
      provider: example-idp
      rules:
        - roles: [customer]
          operations: [listOrders, createOrder, getOrder, getOrderItem, exportOrders, getReport]
        - roles: [admin]
          operations: ["*"]
  - name: petstore
    spec: {REPO}/specs/petstore.swagger.yaml
    upstream: backend
    pathPrefix: /pets-api
    upstreamPathPrefix: /petstore/v1
  - name: catalog
    spec: {REPO}/specs/catalog.openapi.yaml
    upstream: backend
"""

PATHS = [
    "/api/orders",
    "/api/orders/12",
    "/api/orders/abc",
    "/api/orders/export",
    "/api/orders/7/items/00000000-0000-0000-0000-000000000005",
    "/api/orders/7/items/not-a-uuid",
    "/api/products/ABC-1234",
    "/api/reports/q3-2026.csv",
    "/api/accounts/acme",
    "/api/accounts:batchGet",
    "/api/login",
    "/api/nothing-here",
    "/pets-api/pets",
    "/pets-api/pets/3",
    "/pets-api/pets/../pets/3",
    "/pets-api/./pets//3",
    "/pets-api/pets/%2e%2e/pets",
    "/pets-api/pets%2F3",
    "/catalog/v2/categories/garden-tools",
    "/catalog/v2/search?q=rake",
    "/catalog/v2/nothing",
    "/unknown",
    "/",
]
METHODS = ["GET", "POST", "DELETE", "PUT"]


def tokens() -> dict[str, str | None]:
    idp = IdentityProvider.example()
    wrong = IdentityProvider("https://evil.test", idp.keys)
    return {
        "none": None,
        "customer": idp.mint({"sub": "alice", "role": "customer"}, audience="shop-api"),
        "admin": idp.mint({"sub": "root", "role": "admin"}, audience="shop-api", alg="ES256"),
        "expired": idp.mint({"sub": "alice", "role": "admin"}, audience="shop-api", ttl=-3600),
        "wrong-audience": idp.mint({"sub": "alice", "role": "admin"}, audience="other"),
        "wrong-issuer": wrong.mint({"sub": "alice", "role": "admin"}, audience="shop-api"),
        "tampered": idp.mint({"sub": "alice", "role": "customer"}, audience="shop-api")[:-6] + "AAAAAA",
    }


@pytest.fixture(scope="module")
def gw(gateway_factory: Callable[..., Gateway]) -> Gateway:
    return gateway_factory({"policy.yaml": POLICY})


def corpus() -> list[tuple[str, str, str]]:
    names = list(tokens())
    # every path and method without a token, and every path with every token for GET and POST
    out = [(m, p, "none") for m, p in itertools.product(METHODS, PATHS)]
    out += [(m, p, t) for m, p, t in itertools.product(["GET", "POST"], PATHS, names) if t != "none"]
    return out


def test_explain_predicts_what_envoy_answers(gw: Gateway) -> None:
    assert gw.workdir is not None
    result = compile([str(gw.workdir)])
    assert result.ok and result.gateway is not None, result.diagnostics
    port = result.gateway.listeners[0].port
    minted = tokens()
    disagreements = []
    cases = corpus()
    assert len(cases) >= 200
    for method, path, token_name in cases:
        token = minted[token_name]
        headers = {"host": "shop.test"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        lines = [f"{method} {path} HTTP/1.1", "Host: shop.test", "Connection: close"]
        if token:
            lines.append(f"Authorization: Bearer {token}")
        if method in ("POST", "PUT"):
            lines.append("Content-Length: 0")
        actual = raw_request(port, ("\r\n".join(lines) + "\r\n\r\n").encode()).status
        predicted = explain(result.gateway, method, f"http://shop.test:{port}{path}", Caller(headers, "127.0.0.1"))
        # the backend answers 200 to whatever it gets: "forwarded" means 200 here
        if predicted.status != actual:
            disagreements.append((method, path, token_name, predicted.status, actual, predicted.text()))
    assert not disagreements, (
        "\n\n".join(f"{d[:5]}\n{d[5]}" for d in disagreements[:5]) + f"\n({len(disagreements)} in all)"
    )


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controlplane", "explain", *args], capture_output=True, text=True, cwd=REPO, timeout=60
    )


def test_each_decision_names_its_source() -> None:
    proc = run(
        "DELETE", "http://localhost:8080/api/orders/42", "--claims", "role=customer,sub=alice", "specs", "-o", "json"
    )
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    assert answer["status"] == 403 and answer["operation"] == "orders.deleteOrder"
    stages = {s["stage"]: s for s in answer["steps"]}
    assert stages["route"]["source"] == "specs/orders.openapi.yaml#/paths/~1orders~1{orderId}/delete"
    assert "needs role admin" in stages["authorization"]["decision"]
    assert stages["listener"]["source"] == "specs/gateway.policy.yaml#/listeners/0"


def test_the_waf_verdict_is_the_services(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text(
        (REPO / "specs/gateway.policy.yaml").read_text().replace("\napis:\n", "\nwaf: {mode: prevent}\n\napis:\n")
    )
    for name in ("orders.openapi.yaml", "petstore.swagger.yaml", "catalog.openapi.yaml", "idp", "catalog"):
        source = REPO / "specs" / name
        target = tmp_path / name
        if source.is_dir():
            import shutil

            shutil.copytree(source, target)
        else:
            target.write_text(source.read_text())
    attack = run("GET", "http://localhost:8080/pets-api/pets?limit=1%27%20OR%201=1--", str(tmp_path))
    assert attack.returncode == 0, attack.stderr
    assert attack.stdout.rstrip().endswith("=> 403") or attack.stdout.rstrip().endswith("=> 400"), attack.stdout
    waf = next(line for line in attack.stdout.splitlines() if line.startswith("waf"))
    assert "limit" in waf, waf
    clean = run("GET", "http://localhost:8080/pets-api/pets?limit=10", str(tmp_path))
    assert "nothing found" in clean.stdout and clean.stdout.rstrip().endswith("=> 200"), clean.stdout
