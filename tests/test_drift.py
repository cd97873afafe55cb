"""``check``: a connected Envoy that serves other than what some inputs compile to, or that is
NACKED or STALE, fails the check, named with the resource and the first difference. A real
control plane and a real Envoy; the state rows of a NACKED node are the server's own format."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane import drift
from tests.harness import raw_request
from tests.xds_harness import REPO, ControlPlaneProcess, http_get, start_envoy, wait_for

SPEC = """
openapi: 3.0.3
info: {title: shop, version: "1"}
servers: [{url: /shop}]
paths:
  /orders:
    get: {operationId: listOrders, responses: {"200": {description: ok}}}
  /orders/{id}:
    get:
      operationId: getOrder
      parameters: [{name: id, in: path, required: true, schema: {type: integer}}]
      responses: {"200": {description: ok}}
"""

POLICY = """
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
listeners: [{name: public, address: 127.0.0.1, port: 18099}]
upstreams: [{name: backend, endpoints: ["127.0.0.1:9"]}]
apis:
  - name: shop
    spec: spec.yaml
    upstream: backend
    operations:
      getOrder: {timeout: 5s}
"""


def write(directory: Path, spec: str = SPEC, policy: str = POLICY) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "spec.yaml").write_text(spec)
    (directory / "policy.yaml").write_text(policy)
    return directory


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ControlPlaneProcess, Path]]:
    work = tmp_path_factory.mktemp("drift")
    config = write(work / "config")
    plane = ControlPlaneProcess([config], work).start()
    envoy = start_envoy(work, plane)
    (work / "access.log").symlink_to(envoy.stdout_path)  # the JSON access log (gateway.accessLog)

    def synced() -> bool:
        nodes = json.loads(http_get(plane.admin_port, "/status")[1])["nodes"]
        return bool(nodes) and all(n["state"] == "SYNCED" for n in nodes)

    wait_for(synced, 20, "the Envoy in sync")
    yield plane, work
    envoy.stop()
    plane.stop()


def check(plane: ControlPlaneProcess, *paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controlplane", "check", "--server", f"127.0.0.1:{plane.admin_port}", *map(str, paths)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )


def test_the_same_inputs_pass(served: tuple[ControlPlaneProcess, Path]) -> None:
    plane, work = served
    same = shutil.copytree(work / "config", work / "same")
    proc = check(plane, same)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout == "" and "1 of 1 node(s) serve what" in proc.stderr


def test_a_changed_timeout_is_drift_named_with_its_first_difference(served: tuple[ControlPlaneProcess, Path]) -> None:
    plane, work = served
    changed = write(work / "changed", policy=POLICY.replace("getOrder: {timeout: 5s}", "getOrder: {timeout: 7s}"))
    proc = check(plane, changed)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("gateway-1: differs routes/public"))
    assert "/timeout: compiled '7s', served '5s'" in line, proc.stdout
    assert "drift on 1" in proc.stderr


def test_an_operation_the_envoys_do_not_have_is_drift(served: tuple[ControlPlaneProcess, Path]) -> None:
    plane, work = served
    spec = SPEC + "  /refunds:\n    post: {operationId: refund, responses: {'200': {description: ok}}}\n"
    proc = check(plane, write(work / "more", spec=spec))
    assert proc.returncode == 1 and "gateway-1: differs routes/public" in proc.stdout, proc.stdout


def test_inputs_that_do_not_compile_exit_2(served: tuple[ControlPlaneProcess, Path]) -> None:
    plane, work = served
    proc = check(plane, write(work / "broken", policy=POLICY.replace("timeout: 5s", "timeout: soon")))
    assert proc.returncode == 2 and "policy.yaml" in proc.stderr


def test_a_nacked_or_stale_node_fails_whatever_it_holds() -> None:
    status = {
        "nodes": [
            {
                "node": "edge-7",
                "group": "gateway",
                "state": "NACKED",
                "types": {"routes": {"state": "NACKED", "nack": {"message": "invalid regex", "version": "v9"}}},
            },
            {"node": "edge-8", "group": "gateway", "state": "STALE", "types": {"routes": {"state": "STALE"}}},
            {"node": "waf-1", "group": "waf", "state": "SYNCED", "types": {"services": {"state": "SYNCED"}}},
        ]
    }
    findings = drift.check(status, {}, {}, "gateway")
    assert [f.line() for f in findings] == ["edge-7: NACKED: routes: invalid regex", "edge-8: STALE"]


def test_a_resource_a_node_lacks_is_drift_only_for_types_it_takes_whole() -> None:
    want = {"listeners": {"public": {"name": "public"}}, "routes": {"public": {"name": "public"}}}
    lacking = drift.compare_node("n", want, {"listeners": [], "routes": []}, {"listeners", "routes"})
    assert [f.line() for f in lacking] == ["n: missing listeners/public: compiled here, not served to this node"]
    extra = drift.compare_node("n", want, {"listeners": [{"name": "public"}, {"name": "old"}]}, {"listeners"})
    assert [f.what for f in extra] == ["extra"]


def test_calls_to_endpoints_no_spec_declares_are_grouped_by_shape(served: tuple[ControlPlaneProcess, Path]) -> None:
    """Traffic drift from a real Envoy's access log: a client calling /shop/refunds/{n} (which
    the spec lacks) shows as one endpoint shape; the declared operations and the backend's own
    answers do not."""
    _plane, work = served
    for i in (1, 2, 3):
        assert (
            raw_request(
                18099, f"POST /shop/refunds/{i} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode()
            ).status
            == 404
        )
    assert raw_request(18099, b"GET /shop/admin/9f1c2d3e4b5a6978 HTTP/1.1\r\nHost: x\r\n\r\n").status == 404
    raw_request(18099, b"GET /shop/orders/7 HTTP/1.1\r\nHost: x\r\n\r\n")  # declared (its upstream is down: 503)
    log = work / "access.log"
    wait_for(lambda: log.read_text().count("/shop/admin/") == 1, 10, "the access log lines")
    proc = subprocess.run(
        [sys.executable, "-m", "controlplane", "check", "--access-log", str(log)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["3", "POST", "/shop/refunds/{n}", "e.g.", "/shop/refunds/1"], lines
    assert lines[1].split()[:3] == ["1", "GET", "/shop/admin/{id}"] and len(lines) == 2, lines
    assert "4 request(s) to 2 endpoint shape(s) no spec declares" in proc.stderr


def test_path_shapes() -> None:
    assert drift.path_shape("/a/42/b/3f2504e0-4f89-11d3-9a0c-0305e82c3301/c/deadbeef00?x=1") == "/a/{n}/b/{uuid}/c/{id}"
    assert drift.path_shape("/orders/export") == "/orders/export"
    assert drift.path_shape("/users/usr_8f3a2b91c0ffee") == "/users/{id}"
