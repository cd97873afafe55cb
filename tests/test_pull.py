"""``apis[].pull``: the control plane polls a backend's published OpenAPI description and the
routes follow it. A real control plane, a real Envoy, a real HTTP server publishing the spec."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from controlplane.echo import EchoServer
from tests.harness import EnvoyProcess, free_port, raw_request
from tests.xds_harness import ControlPlaneProcess, start_envoy, wait_for

pytestmark = pytest.mark.envoy

V1 = """\
openapi: 3.0.3
info: {title: stock, version: "1"}
paths:
  /stock:
    get: {operationId: listStock, responses: {"200": {description: ok}}}
"""

V2 = (
    V1
    + """\
  /stock/{sku}:
    get:
      operationId: getStock
      parameters: [{name: sku, in: path, required: true, schema: {type: string}}]
      responses: {"200": {description: ok}}
"""
)

# Two operations with one operationId: the compile refuses it (routes are named after them).
BROKEN = (
    V1
    + """\
  /stock/{sku}/history:
    get:
      operationId: listStock
      parameters: [{name: sku, in: path, required: true, schema: {type: string}}]
      responses: {"200": {description: ok}}
"""
)


@dataclass
class Publisher:
    """The backend's published description: an HTTP server answering GET /openapi.yaml with
    an ETag (and 304 to If-None-Match), or 503 while ``down``."""

    text: str = V1
    down: bool = False
    requests: list[str] = field(default_factory=list)  # "200", "304", "503"

    def start(self) -> int:
        publisher = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                etag = '"' + hashlib.sha256(publisher.text.encode()).hexdigest()[:16] + '"'
                if publisher.down:
                    code, body = 503, b"down"
                elif self.headers.get("if-none-match") == etag:
                    code, body = 304, b""
                else:
                    code, body = 200, publisher.text.encode()
                publisher.requests.append(str(code))
                self.send_response(code)
                self.send_header("etag", etag)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return int(self.server.server_address[1])


@dataclass
class Setup:
    plane: ControlPlaneProcess
    envoy: EnvoyProcess
    publisher: Publisher
    port: int
    store: Path

    def get(self, path: str) -> int:
        return raw_request(self.port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()).status

    def pulls(self) -> dict[str, Any]:
        return self.plane.get("/pulls")  # type: ignore[no-any-return]

    def versions(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in sorted((self.store / "apis" / "stock").glob("*.json"))]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    work = tmp_path_factory.mktemp("pull")
    echo = EchoServer().start()
    publisher = Publisher()
    published = publisher.start()
    config = work / "config"
    config.mkdir()
    port = free_port()
    (config / "stock.yaml").write_text(V1.replace("/stock:", "/fallback:"))  # served until the first pull
    (config / "policy.yaml").write_text(
        f"""\
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
listeners: [{{name: public, address: 127.0.0.1, port: {port}}}]
upstreams: [{{name: backend, endpoints: ["127.0.0.1:{echo.port}"]}}]
apis:
  - name: stock
    spec: stock.yaml
    pathPrefix: /inventory
    upstream: backend
    pull: {{url: "http://127.0.0.1:{published}/openapi.yaml", interval: 1s, timeout: 2s, allowSecurityChanges: true}}
"""
    )
    # (without allowSecurityChanges the first pull, which opens operations in a policy
    # without auth, would be refused as a security-relevant change)
    store = work / "store"
    plane = ControlPlaneProcess([config], work, extra=["--push-store", str(store)]).start()
    envoy = start_envoy(work, plane)
    s = Setup(plane, envoy, publisher, port, store)
    wait_for(lambda: s.get("/inventory/stock") == 200, 30, "the pulled spec served")
    yield s
    envoy.stop()
    plane.stop()
    publisher.server.shutdown()
    echo.shutdown()


def test_the_pulled_spec_replaces_the_file_and_routes_follow_the_backend(setup: Setup) -> None:
    assert setup.get("/inventory/fallback") == 404  # the file's spec is no longer served
    assert setup.get("/inventory/stock/abc") == 404
    setup.publisher.text = V2
    wait_for(lambda: setup.get("/inventory/stock/abc") == 200, 20, "the new operation routed")
    versions = setup.versions()
    assert [v["state"] for v in versions] == ["superseded", "live"]
    assert all(v["pushed_by"].startswith("pull http://127.0.0.1:") for v in versions)
    # unchanged content is not pushed again: the backend answers 304 to the ETag
    wait_for(lambda: setup.publisher.requests[-2:] == ["304", "304"], 10, "polls answered 304")
    assert len(setup.versions()) == 2


def test_a_broken_or_unreachable_spec_keeps_what_is_served(setup: Setup) -> None:
    setup.publisher.text = V2
    wait_for(lambda: setup.get("/inventory/stock/abc") == 200, 20, "V2 served")
    setup.publisher.text = BROKEN
    wait_for(lambda: (setup.pulls()["stock"].get("error") or "").startswith("the push does not compile"), 20, "refusal")
    state = setup.pulls()["stock"]
    assert any("duplicate operationId 'listStock'" in e and "stock:openapi.yaml:" in e for e in state["errors"]), state
    assert setup.get("/inventory/stock/abc") == 200
    assert setup.versions()[-1]["state"] == "rejected"
    count = len(setup.versions())
    setup.publisher.down = True
    wait_for(lambda: "HTTP 503" in (setup.pulls()["stock"].get("error") or ""), 20, "the failed poll reported")
    assert setup.get("/inventory/stock/abc") == 200
    setup.publisher.down = False
    setup.publisher.text = V2 + "  /stock/{sku}/reservations:\n    get: {responses: {'200': {description: ok}}}\n"
    wait_for(lambda: setup.get("/inventory/stock/abc/reservations") == 200, 20, "the repaired spec served")
    assert len(setup.versions()) == count + 1  # the refused content was not pushed again while it stayed


def test_status_says_what_was_pulled_and_when(setup: Setup) -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "controlplane", "status", "--server", f"127.0.0.1:{setup.plane.admin_port}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    live = json.loads((setup.store / "live.json").read_text())["stock"]
    assert f"pushed: stock v{live} (store " in out.stdout, out.stdout
    pulled = next(x for x in out.stdout.splitlines() if x.startswith("pulled: stock from http://127.0.0.1:"))
    assert f"version {live}, checked " in pulled, pulled
