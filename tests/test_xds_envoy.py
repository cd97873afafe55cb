"""The control plane as a process, real Envoys over ADS (SotW and delta), real traffic.

Every test here starts ``python -m controlplane serve`` and one or more ``envoy`` processes
bootstrapped by ``controlplane.bootstrap``; nothing is mocked.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from envoy.service.status.v3 import csds_pb2

from controlplane.certs import CertificateAuthority
from controlplane.echo import EchoServer
from tests.harness import EnvoyProcess, free_port, raw_request
from tests.xds_harness import REPO, ControlPlaneProcess, Pki, Traffic, start_envoy, wait_for

pytestmark = pytest.mark.envoy

SPEC = """\
openapi: 3.0.3
info: {title: items, version: "1"}
servers: [{url: /}]
paths:
  /items:
    get: {operationId: listItems, responses: {"200": {description: ok}}}
  /items/{id}:
    get:
      operationId: getItem
      parameters: [{name: id, in: path, required: true, schema: {type: integer}}]
      responses: {"200": {description: ok}}
"""

NEW_OPERATION = """\
  /items/{id}/notes:
    get:
      operationId: listNotes
      parameters: [{name: id, in: path, required: true, schema: {type: integer}}]
      responses: {"200": {description: ok}}
"""

NEW_SCOPE = """\
  /notes/{noteId}:
    get:
      operationId: getNote
      parameters: [{name: noteId, in: path, required: true, schema: {type: integer}}]
      responses: {"200": {description: ok}}
"""

# RE2 refuses programs above the size the bootstrap allows; the compiler cannot know the
# program size of a pattern, so this is a config Envoy NACKs.
NACKED_OPERATION = """\
  /codes/{code}:
    get:
      operationId: getCode
      parameters:
        - name: code
          in: path
          required: true
          schema: {type: string, pattern: "^[a-z]{1000}[0-9]{1000}[A-Z]{1000}[a-f]{1000}[g-z]{1000}[0-5]{1000}$"}
      responses: {"200": {description: ok}}
"""


def policy(listener_port: int, backend_port: int, scopes: str = "auto") -> str:
    return f"""\
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
listeners: [{{name: public, address: 127.0.0.1, port: {listener_port}, routeScopes: {scopes}}}]
upstreams: [{{name: backend, endpoints: ["127.0.0.1:{backend_port}"]}}]
apis: [{{name: items, spec: spec.yaml, upstream: backend}}]
"""


class Setup:
    def __init__(self, workdir: Path, echo: EchoServer):
        self.workdir = workdir
        self.listener = free_port()
        (workdir / "config").mkdir()
        self.spec = workdir / "config" / "spec.yaml"
        self.spec.write_text(SPEC)
        (workdir / "config" / "policy.yaml").write_text(policy(self.listener, echo.port))
        self.planes: list[ControlPlaneProcess] = []
        self.envoys: list[EnvoyProcess] = []

    def route_scopes(self, mode: str, echo_port: int) -> None:
        (self.workdir / "config" / "policy.yaml").write_text(policy(self.listener, echo_port, mode))

    def plane(self, pki: Pki | None = None) -> ControlPlaneProcess:
        plane = ControlPlaneProcess([self.workdir / "config"], self.workdir, pki)
        self.planes.append(plane.start())
        return plane

    def envoy(self, plane: ControlPlaneProcess, **kw: object) -> EnvoyProcess:
        envoy = start_envoy(self.workdir, plane, **kw)  # type: ignore[arg-type]
        self.envoys.append(envoy)
        return envoy

    def get(self, path: str) -> int:
        return raw_request(self.listener, f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode()).status

    def wait_status(self, path: str, status: int, timeout: float = 15) -> float:
        started = time.monotonic()
        wait_for(lambda: self.get(path) == status, timeout, f"GET {path} -> {status}")
        return time.monotonic() - started

    def close(self) -> None:
        for envoy in self.envoys:
            envoy.stop()
        for plane in self.planes:
            plane.stop()


@pytest.fixture
def setup(tmp_path: Path, echo: EchoServer) -> Iterator[Setup]:
    s = Setup(tmp_path, echo)
    yield s
    s.close()


MODES = pytest.mark.parametrize(
    ("delta", "scopes"),
    [(False, "never"), (True, "never"), (False, "always"), (True, "always")],
    ids=["sotw", "delta", "sotw-scoped-routes", "delta-scoped-routes"],
)


@MODES
def test_config_arrives_over_ads_and_serves(setup: Setup, echo: EchoServer, delta: bool, scopes: str) -> None:
    setup.route_scopes(scopes, echo.port)
    plane = setup.plane()
    setup.envoy(plane, delta=delta)
    setup.wait_status("/items/7", 200)
    assert setup.get("/items/abc") == 404
    node = wait_for(lambda: (n := plane.node("gateway-1")) and n["state"] == "SYNCED" and n, 10, "SYNCED")
    assert node["protocol"] == ("delta" if delta else "sotw")
    expected = {"clusters", "endpoints", "listeners", "routes"} | ({"scopes"} if scopes == "always" else set())
    assert set(node["types"]) == expected


@MODES
def test_spec_edits_are_served_and_removals_answer_404(
    setup: Setup, echo: EchoServer, delta: bool, scopes: str
) -> None:
    setup.route_scopes(scopes, echo.port)
    plane = setup.plane()
    setup.envoy(plane, delta=delta)
    setup.wait_status("/items/7", 200)
    assert setup.get("/items/7/notes") == 404
    setup.spec.write_text(SPEC + NEW_OPERATION)
    took = setup.wait_status("/items/7/notes", 200, timeout=10)
    assert took < 10  # generous: docs/benchmarks.md has the measured latency
    # a new first segment: with scoped routes, a new scope and its route configuration
    setup.spec.write_text(SPEC + NEW_OPERATION + NEW_SCOPE)
    setup.wait_status("/notes/5", 200, timeout=10)
    assert setup.get("/notes/x") == 404
    # the items scope was not sent again (SotW too sends route configurations by name, only
    # the changed ones): Envoy keeps serving it
    assert setup.get("/items/7/notes") == 200
    setup.spec.write_text(SPEC.replace(SPEC[SPEC.index("  /items/{id}:") :], ""))
    setup.wait_status("/items/7", 404, timeout=10)
    assert setup.get("/items") == 200
    setup.wait_status("/notes/5", 404, timeout=10)  # its scope is gone


def test_bad_edit_keeps_the_old_config_and_status_names_the_file(setup: Setup) -> None:
    plane = setup.plane()
    setup.envoy(plane)
    setup.wait_status("/items/7", 200)
    served = plane.get("/compile")["served_version"]
    setup.spec.write_text(SPEC + "  /broken: [unclosed\n")
    report = wait_for(lambda: (c := plane.get("/compile")) and not c["ok"] and c, 10, "the compile to fail")
    assert any("spec.yaml:" in e and "invalid YAML" in e for e in report["errors"])
    assert report["served_version"] == served
    for _ in range(20):
        assert setup.get("/items/7") == 200
    out = subprocess.run(
        [sys.executable, "-m", "controlplane", "status", "--server", f"127.0.0.1:{plane.admin_port}"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert "last compile: REJECTED" in out.stdout and "spec.yaml" in out.stdout
    assert "gateway-1" in out.stdout and "SYNCED" in out.stdout
    metrics = plane_metrics(plane)
    assert 'controlplane_compiles_total{result="error"} 1.0' in metrics
    assert "controlplane_last_compile_ok 0.0" in metrics


def plane_metrics(plane: ControlPlaneProcess) -> str:
    from tests.xds_harness import http_get

    return http_get(plane.admin_port, "/metrics")[1].decode()


def envoy_stat(envoy: EnvoyProcess, name: str) -> int:
    _status, body = envoy.admin(f"/stats?filter=^{name}$")
    return sum(int(line.rsplit(":", 1)[1]) for line in body.splitlines() if line.strip())


def test_killed_control_plane_loses_no_request_and_envoy_resyncs(setup: Setup) -> None:
    plane = setup.plane()
    envoy = setup.envoy(plane)
    setup.wait_status("/items/7", 200)
    traffic = Traffic(setup.listener, "/items/7")
    traffic.start()
    try:
        wait_for(lambda: traffic.ok >= 10, 15, "traffic")
        plane.kill()
        # Envoy knows the control plane is gone, and serves on its last good config meanwhile
        wait_for(lambda: envoy_stat(envoy, "control_plane.connected_state") == 0, 15, "Envoy to lose the plane")
        away = traffic.ok
        wait_for(lambda: traffic.ok >= away + 20, 15, "requests served while the control plane is away")
        restarted = ControlPlaneProcess([setup.workdir / "config"], setup.workdir, None, plane.xds_port)
        setup.planes.append(restarted.start())
        wait_for(lambda: (n := restarted.node("gateway-1")) and n["state"] == "SYNCED", 30, "resync after restart")
        wait_for(lambda: envoy_stat(envoy, "control_plane.connected_state") == 1, 15, "Envoy to see the plane")
        back = traffic.ok
        wait_for(lambda: traffic.ok >= back + 20, 15, "requests served after the resync")
    finally:
        traffic.stop()
    assert traffic.failures == []


def test_nack_is_reported_with_envoys_message_and_the_source(setup: Setup) -> None:
    plane = setup.plane()
    setup.envoy(plane)
    setup.wait_status("/items/7", 200)
    setup.spec.write_text(SPEC + NACKED_OPERATION)
    node = wait_for(lambda: (n := plane.node("gateway-1")) and n["state"] == "NACKED" and n, 15, "a NACK")
    nack = node["types"]["routes"]["nack"]
    assert "RE2 program size" in nack["message"]
    assert any("spec.yaml#/paths/~1codes~1{code}/get" in s for s in nack["sources"]), nack
    # Envoy keeps its last good configuration: traffic is not affected
    for _ in range(20):
        assert setup.get("/items/7") == 200
    assert setup.get("/codes/x") == 404
    assert 'xds_nacks_total{type="RouteConfiguration"} 1.0' in plane_metrics(plane)
    out = subprocess.run(
        [sys.executable, "-m", "controlplane", "status", "--server", f"127.0.0.1:{plane.admin_port}"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert out.returncode == 3 and "RDS NACKED" in out.stdout and "spec.yaml#/paths/~1codes~1{code}/get" in out.stdout


def test_mtls_envoy_with_the_right_certificate_connects_and_one_without_is_refused(setup: Setup) -> None:
    pki = Pki.make(setup.workdir / "pki")
    plane = setup.plane(pki)
    setup.envoy(plane, node_id="declared-name")
    setup.wait_status("/items/7", 200)
    node = wait_for(lambda: plane.node("gateway-1"), 10, "the node known by its certificate")
    assert node["identity"] == "certificate"
    assert plane.node("declared-name") is None

    stranger_ca = CertificateAuthority(setup.workdir / "pki", "stranger-ca")
    stranger = stranger_ca.issue("intruder", client=True)
    intruder = setup.envoy(plane, node_id="intruder", client=stranger, wait_ready=False)
    # refused at the handshake, and again when it retries
    wait_for(lambda: envoy_stat(intruder, "cluster.xds.upstream_cx_connect_fail") >= 2, 30, "the refused handshakes")
    assert envoy_stat(intruder, "control_plane.connected_state") == 0
    assert plane.node("intruder") is None
    _status, body = intruder.admin("/ready")
    assert body.strip() != "LIVE"  # it never got a configuration


def test_csds_reports_what_each_node_was_sent_and_acked(setup: Setup) -> None:
    plane = setup.plane()
    setup.envoy(plane, delta=True)
    setup.wait_status("/items/7", 200)
    wait_for(lambda: (n := plane.node("gateway-1")) and n["state"] == "SYNCED", 10, "SYNCED")
    with grpc.insecure_channel(f"127.0.0.1:{plane.xds_port}") as channel:
        fetch = channel.unary_unary(
            "/envoy.service.status.v3.ClientStatusDiscoveryService/FetchClientStatus",
            request_serializer=csds_pb2.ClientStatusRequest.SerializeToString,
            response_deserializer=csds_pb2.ClientStatusResponse.FromString,
        )
        response = fetch(csds_pb2.ClientStatusRequest(), timeout=5)
    (config,) = response.config
    assert config.node.id == "gateway-1"
    by_type = {c.type_url.rsplit(".", 1)[1]: c for c in config.generic_xds_configs}
    assert set(by_type) == {"Cluster", "ClusterLoadAssignment", "Listener", "RouteConfiguration"}
    assert all(c.config_status == csds_pb2.SYNCED for c in config.generic_xds_configs)
    assert by_type["Listener"].name == "public"


def test_live_dump_matches_the_offline_dump(setup: Setup) -> None:
    plane = setup.plane()
    setup.envoy(plane)
    setup.wait_status("/items/7", 200)
    live = subprocess.run(
        [
            sys.executable,
            "-m",
            "controlplane",
            "dump",
            "--server",
            f"127.0.0.1:{plane.admin_port}",
            "--node",
            "gateway-1",
            "--type",
            "routes",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    offline = subprocess.run(
        [sys.executable, "-m", "controlplane", "dump", str(setup.workdir / "config"), "--type", "routes"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert live.returncode == 0 and offline.returncode == 0, live.stderr + offline.stderr
    assert live.stdout == offline.stdout


@pytest.mark.parametrize(
    ("method", "type_url", "names"),
    [
        ("/envoy.service.listener.v3.ListenerDiscoveryService/StreamListeners", "Listener", []),
        ("/envoy.service.cluster.v3.ClusterDiscoveryService/StreamClusters", "Cluster", []),
        ("/envoy.service.route.v3.RouteDiscoveryService/StreamRoutes", "RouteConfiguration", ["public"]),
        ("/envoy.service.endpoint.v3.EndpointDiscoveryService/StreamEndpoints", "ClusterLoadAssignment", ["backend"]),
    ],
)
def test_per_type_services_over_real_grpc(setup: Setup, method: str, type_url: str, names: list[str]) -> None:
    from envoy.config.core.v3 import base_pb2
    from envoy.service.discovery.v3 import discovery_pb2

    plane = setup.plane()
    wait_for(lambda: plane.get("/compile")["ok"], 15, "first compile")
    full_type = next(t for t in _TYPES if t.endswith("." + type_url))
    request = discovery_pb2.DiscoveryRequest(
        node=base_pb2.Node(id="probe", cluster="gateway"), type_url=full_type, resource_names=names
    )
    with grpc.insecure_channel(f"127.0.0.1:{plane.xds_port}") as channel:
        stream = channel.stream_stream(
            method,
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
        )
        responses = stream(iter([request]), timeout=10)
        first = next(responses)
        responses.cancel()
    assert first.type_url == full_type and len(first.resources) == 1 and first.version_info


_TYPES = [
    "type.googleapis.com/envoy.config.listener.v3.Listener",
    "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
    "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
]


def _children(pid: int) -> set[int]:
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        out.update(int(c) for c in children)
    return out


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_a_killed_control_plane_leaves_no_compile_worker_behind(setup: Setup) -> None:
    plane = setup.plane()
    wait_for(lambda: plane.get("/compile")["ok"], 15, "first compile")
    assert plane.proc is not None
    workers = wait_for(lambda: _children(plane.proc.pid), 15, "the compile workers")
    plane.kill()
    wait_for(lambda: not any(_alive(w) for w in workers), 10, "the workers to exit")


def test_rewriting_the_same_bytes_compiles_nothing_and_pushes_nothing(setup: Setup) -> None:
    plane = setup.plane()
    setup.envoy(plane)
    setup.wait_status("/items/7", 200)
    wait_for(lambda: (n := plane.node("gateway-1")) and n["state"] == "SYNCED", 10, "SYNCED")
    before = plane_metrics(plane)
    said = plane.logs().count("the same content: nothing to compile")
    setup.spec.write_text(setup.spec.read_text())  # a new mtime, the same content
    wait_for(lambda: plane.logs().count("the same content: nothing to compile") > said, 15, "the watcher's verdict")
    after = plane_metrics(plane)

    def value(text: str, name: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))

    assert value(after, "controlplane_compiles_total") == value(before, "controlplane_compiles_total")
    assert value(after, "xds_push_bytes_total") == value(before, "xds_push_bytes_total")
