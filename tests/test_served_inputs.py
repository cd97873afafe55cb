"""``/inputs``: what a running control plane compiled its served version from, so that ``diff
--server`` and ``explain --server`` work on what is live. A real control plane (``serve``) with
a real Envoy connected, serving a copy of the bundled examples; the compiles compared are real
ones; private keys never leave the control plane."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from controlplane import inputs
from controlplane.certs import CertificateAuthority
from controlplane.compiler import compile
from controlplane.sources import Pushed
from controlplane.worker import compile_serialized, serialize
from tests.harness import free_port
from tests.xds_harness import REPO, ControlPlaneProcess, http_get, start_envoy, wait_for

pytestmark = pytest.mark.envoy

NODE = "gateway-1"


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))


def examples(directory: Path, port: int) -> Path:
    """A copy of specs/ whose listener is on 127.0.0.1:``port``."""
    shutil.copytree(REPO / "specs", directory)
    _replace(
        directory / "gateway.policy.yaml", "address: 0.0.0.0\n    port: 8080", f"address: 127.0.0.1\n    port: {port}"
    )
    return directory


def admin(plane: ControlPlaneProcess) -> str:
    return f"127.0.0.1:{plane.admin_port}"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controlplane", *args], capture_output=True, text=True, cwd=REPO, timeout=120
    )


def recompiled(data: dict[str, Any], into: Path) -> dict[str, dict[str, bytes]]:
    """The resources /inputs' files compile to here, named as the CLI names them."""
    paths, pushed = inputs.materialize(data, into)
    here = os.getcwd()
    mirror = inputs.inside(into, here)
    mirror.mkdir(parents=True, exist_ok=True)
    os.chdir(mirror)
    try:
        result = compile(paths, pushed=pushed)
    finally:
        os.chdir(here)
    assert result.ok and result.resources is not None, [str(d) for d in result.errors]
    return serialize(result.resources)


def synced(plane: ControlPlaneProcess) -> bool:
    nodes = json.loads(http_get(plane.admin_port, "/status")[1])["nodes"]
    return bool(nodes) and all(n["state"] == "SYNCED" for n in nodes)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ControlPlaneProcess, Path, int, Any]]:
    """The control plane, its inputs, the listener's port and the Envoy connected to it."""
    work = tmp_path_factory.mktemp("served")
    port = free_port()
    config = examples(work / "config", port)
    plane = ControlPlaneProcess([config], work).start()
    envoy = start_envoy(work, plane, node_id=NODE)
    wait_for(lambda: synced(plane), 30, "the Envoy in sync")
    yield plane, config, port, envoy
    envoy.stop()
    plane.stop()


@pytest.fixture
def served(live: tuple[ControlPlaneProcess, Path, int, Any]) -> tuple[ControlPlaneProcess, Path, int]:
    return live[:3]


def test_inputs_compile_to_the_served_resources(served: tuple[ControlPlaneProcess, Path, int], tmp_path: Path) -> None:
    plane, config, _port = served
    data = inputs.fetch(admin(plane))
    assert data["paths"] == [str(config.resolve())]
    assert str((config / "orders.openapi.yaml").resolve()) in data["files"]
    assert data["version"] == plane.get("/compile")["served_version"]
    original = compile([config])
    assert original.ok and original.resources is not None
    assert recompiled(data, tmp_path) == serialize(original.resources)


def test_diff_against_what_is_served(served: tuple[ControlPlaneProcess, Path, int], tmp_path: Path) -> None:
    plane, config, _port = served
    same = tmp_path / "same"
    shutil.copytree(config, same)
    unchanged = cli("diff", "--server", admin(plane), "--", str(same))
    assert unchanged.returncode == 0, unchanged.stdout + unchanged.stderr

    public = tmp_path / "public"
    shutil.copytree(config, public)
    _replace(
        public / "orders.openapi.yaml", "operationId: exportOrders\n", "operationId: exportOrders\n      security: []\n"
    )
    changed = cli("diff", "--server", admin(plane), "-o", "json", "--", str(public))
    assert changed.returncode == 1, changed.stdout + changed.stderr
    report = json.loads(changed.stdout)
    assert report["security_relevant"] >= 1
    assert any("exportOrders" in json.dumps(c) and "public" in json.dumps(c) for c in report["changes"])


def test_explain_what_is_served_and_the_node_state(served: tuple[ControlPlaneProcess, Path, int]) -> None:
    plane, config, port = served
    request = ["explain", "GET", f"http://127.0.0.1:{port}/api/orders", "--claims", "sub=bob,roles=guest", "-o", "json"]
    offline = cli(*request, str(config))
    live = cli(*request, "--server", admin(plane), "--node", NODE)
    assert offline.returncode == live.returncode == 0, live.stderr
    want, got = json.loads(offline.stdout), json.loads(live.stdout)
    assert got["status"] == want["status"] == 403
    assert got["steps"] == want["steps"]  # the same decisions, named by the same files and places
    assert got["node"]["state"] == "SYNCED" and got["node"]["served"] == plane.get("/compile")["served_version"]

    text = cli(*request[:-2], "--server", admin(plane), "--node", NODE)
    assert f"node {NODE} (group gateway): SYNCED: runs the served version" in text.stdout

    absent = cli(*request, "--server", admin(plane), "--node", "gateway-9")
    assert absent.returncode == 2
    assert "'gateway-9' is not connected" in absent.stderr and NODE in absent.stderr


def test_a_node_behind_is_named_and_warned_of(live: tuple[ControlPlaneProcess, Path, int, Any]) -> None:
    plane, config, port, envoy = live
    policy = config / "gateway.policy.yaml"
    before = policy.read_text()
    envoy.proc.send_signal(signal.SIGSTOP)  # it receives nothing more, acknowledges nothing more
    try:
        _replace(policy, "exportOrders: {timeout: 120s}", "exportOrders: {timeout: 90s}")
        wait_for(lambda: (plane.node(NODE) or {}).get("state") == "STALE", 20, "the node behind the new version")
        request = ["explain", "GET", f"http://127.0.0.1:{port}/api/orders", "--server", admin(plane), "--node", NODE]
        explained = cli(*request, "-o", "json")
        assert explained.returncode == 0, explained.stderr
        node = json.loads(explained.stdout)["node"]
        assert node["state"] == "STALE" and node["behind"]
        assert f"node {NODE} is STALE: this explanation is for the served version" in explained.stderr
        assert "not the served version" in cli(*request).stdout
    finally:
        envoy.proc.send_signal(signal.SIGCONT)
        policy.write_text(before)
        # in sync with the restored policy, not only with the 90s edit: /inputs answers 409 until
        # the served version is compiled from what is on disk again
        wait_for(
            lambda: http_get(plane.admin_port, "/inputs")[0] == 200 and synced(plane), 30, "the Envoy in sync again"
        )


def test_a_file_changed_since_the_served_compile_is_a_conflict(served: tuple[ControlPlaneProcess, Path, int]) -> None:
    plane, config, port = served
    spec = config / "orders.openapi.yaml"
    good = spec.read_text()
    spec.write_text(good + "\n  broken: [\n")  # does not parse: the control plane keeps the served version
    try:
        wait_for(lambda: plane.get("/compile")["ok"] is False, 20, "the broken edit rejected")
        code, body = http_get(plane.admin_port, "/inputs")
        assert code == 409
        answer = json.loads(body)
        assert answer["changed"] == [str(spec.resolve())]
        assert "cannot be reproduced" in answer["error"]

        explained = cli("explain", "GET", f"http://127.0.0.1:{port}/api/orders", "--server", admin(plane))
        assert explained.returncode == 2
        assert "409" in explained.stderr and "cannot be reproduced" in explained.stderr
        assert str(spec.resolve()) in explained.stderr
    finally:
        spec.write_text(good)
        wait_for(
            lambda: plane.get("/compile")["ok"] is True and http_get(plane.admin_port, "/inputs")[0] == 200,
            20,
            "the spec restored",
        )


def test_nothing_served_yet_and_nobody_there(tmp_path: Path) -> None:
    assert inputs.answer([tmp_path], (), None)[0] == 503
    with pytest.raises(inputs.InputsError, match="cannot reach the control plane"):
        inputs.fetch(f"127.0.0.1:{free_port()}", timeout=2)
    gone = cli("diff", "--server", f"127.0.0.1:{free_port()}", "--", str(REPO / "specs"))
    assert gone.returncode == 2 and "cannot reach the control plane" in gone.stderr


TLS_POLICY = """
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
listeners:
  - name: secure
    address: 127.0.0.1
    port: {port}
    hostnames: [api.example.com]
    tls:
      certificates:
        - {{certFile: certs/api.pem, keyFile: certs/api.key}}
upstreams: [{{name: backend, endpoints: ["127.0.0.1:9"]}}]
apis: [{{name: x, spec: spec.yaml, upstream: backend, pathPrefix: /x}}]
"""

SPEC = """
openapi: 3.0.3
info: {title: x, version: "1"}
paths:
  /items:
    get: {operationId: listItems, responses: {"200": {description: ok}}}
"""


def test_private_keys_are_never_served(tmp_path: Path) -> None:
    config = tmp_path / "config"
    (config / "certs").mkdir(parents=True)
    issued = (
        CertificateAuthority(tmp_path, "ca")
        .intermediate("issuing")
        .issue("api.example.com", ["api.example.com"], key_type="rsa")
    )
    shutil.copy(issued.cert, config / "certs" / "api.pem")
    shutil.copy(issued.key, config / "certs" / "api.key")
    (config / "policy.yaml").write_text(TLS_POLICY.format(port=free_port()))
    (config / "spec.yaml").write_text(SPEC)
    plane = ControlPlaneProcess([config], tmp_path).start()
    try:
        wait_for(lambda: plane.get("/compile")["ok"] is True, 30, "the TLS config served")
        code, body = http_get(plane.admin_port, "/inputs")
        assert code == 200
        key = (config / "certs" / "api.key").read_bytes()
        assert b"PRIVATE KEY" not in body
        assert key.split(b"\n")[1] not in body  # not even a line of it, in any form
        data = json.loads(body)
        key_path, cert_path = (
            str((config / "certs" / "api.key").resolve()),
            str((config / "certs" / "api.pem").resolve()),
        )
        assert key_path not in data["files"]
        assert data["withheld"] == {key_path: cert_path}

        # the stand-ins give a compile with the same TLS settings: a usable diff, with nothing to report
        same = cli("diff", "--server", admin(plane), "--", str(config))
        assert same.returncode == 0, same.stdout + same.stderr
    finally:
        plane.stop()


PLAIN_POLICY = """
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
listeners: [{name: plain, address: 127.0.0.1, port: 18097}]
upstreams: [{name: backend, endpoints: ["127.0.0.1:9"]}]
apis: [{name: x, spec: spec.yaml, upstream: backend, pathPrefix: /x}]
"""


def test_pushed_apis_are_reproduced(tmp_path: Path) -> None:
    config = tmp_path / "config"
    config.mkdir()
    (config / "policy.yaml").write_text(PLAIN_POLICY)
    (config / "spec.yaml").write_text(SPEC)
    root = tmp_path / "pushed" / "x"
    root.mkdir(parents=True)
    (root / "spec.yaml").write_text(SPEC.replace("paths:\n", "paths:\n  /orders: {$ref: 'paths/orders.yaml'}\n"))
    (root / "paths").mkdir()
    (root / "paths" / "orders.yaml").write_text(
        "get: {operationId: listOrders, responses: {'200': {description: ok}}}\n"
    )
    pushed = (Pushed("x", root, root / "spec.yaml"),)

    expected = compile([config], pushed=pushed)
    assert expected.ok and expected.resources is not None, [str(d) for d in expected.errors]
    without = compile([config])
    assert without.resources is not None and serialize(without.resources) != serialize(expected.resources)

    code, _type, body = inputs.answer([config], pushed, compile_serialized([str(config)], pushed=pushed))
    assert code == 200
    data = json.loads(body)
    assert data["pushed"] == [{"api": "x", "root": str(root), "spec": str(root / "spec.yaml"), "policy": None}]
    assert str(root / "paths" / "orders.yaml") in data["files"]
    assert recompiled(data, tmp_path / "copy") == serialize(expected.resources)
