"""Pushes kept in the cluster (``serve --push-configmaps``): a push to one control-plane
replica reaches the Envoys of every replica, survives any replica's restart, and a push
compiled against a live map another replica has changed since is refused, never merged.

The cluster is tests/kube_fake.py (the real list/watch protocol, driven by the official
client); the control planes, the Envoys and the push CLI are real processes."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from controlplane.echo import EchoServer
from controlplane.push.cluster import API_LABEL, STORE_LABEL, ClusterStore, configmap_name
from controlplane.push.store import PushRefused, Version
from tests.harness import EnvoyProcess, free_port, raw_request
from tests.kube_fake import FakeKube
from tests.test_push import ORDERS_NACKED, ORDERS_V1, ORDERS_V2, TOKENS
from tests.xds_harness import REPO, ControlPlaneProcess, http_get, start_envoy, wait_for

pytestmark = pytest.mark.envoy

NEW = "/orders-api/orders/7"  # routed by ORDERS_V2 only


def policy(port: int, backend: int) -> str:
    sha = hashlib.sha256(TOKENS["orders-ci"].encode()).hexdigest()
    return f"""\
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
listeners: [{{name: public, address: 127.0.0.1, port: {port}}}]
upstreams: [{{name: backend, endpoints: ["127.0.0.1:{backend}"]}}]
apis: [{{name: orders, spec: orders.yaml, pathPrefix: /orders-api, upstream: backend}}]
push:
  clients: [{{name: orders-ci, tokenSha256: {sha}, apis: [orders], allowSecurityChanges: true}}]
"""


@dataclass
class Replica:
    """A control plane, its Envoy, and the gateway port only that Envoy listens on (each
    replica reads its own copy of the policy, which differs in that port alone)."""

    plane: ControlPlaneProcess
    envoy: EnvoyProcess | None
    port: int
    push_port: int

    def get(self, path: str) -> int:
        return raw_request(self.port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()).status

    def push(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "CONTROLPLANE_PUSH_TOKEN": TOKENS["orders-ci"], "PYTHONPATH": str(REPO)}
        return subprocess.run(
            [sys.executable, "-m", "controlplane", "push", "--server", f"http://127.0.0.1:{self.push_port}", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )

    def stop(self) -> None:
        if self.envoy is not None:
            self.envoy.stop()
        self.plane.stop()


@dataclass
class Cluster:
    kube: FakeKube
    work: Path
    kubeconfig: Path
    echo: EchoServer
    replicas: list[Replica] = field(default_factory=list)

    admin_ports: dict[str, int] = field(default_factory=dict)

    def replica(self, name: str) -> Replica:
        config = self.work / name
        config.mkdir()
        port = free_port()
        (config / "orders.yaml").write_text(ORDERS_V1)
        (config / "policy.yaml").write_text(policy(port, self.echo.port))
        push_port = free_port()
        plane = ControlPlaneProcess(
            [config],
            self.work,
            extra=[
                "--kubernetes",
                "--kubeconfig",
                str(self.kubeconfig),
                "--kube-namespace",
                "gw",
                "--kube-state",
                str(self.work / f"{name}-mirror"),
                "--push-configmaps",
                "gw/push",
                "--push-store",
                str(self.work / f"{name}-store"),
                "--push-address",
                f"127.0.0.1:{push_port}",
                "--push-insecure",
                "--push-peers",
                ",".join(f"127.0.0.1:{p}" for p in self.admin_ports.values()),
            ],
        )
        plane.admin_port = self.admin_ports.setdefault(name, plane.admin_port)
        plane.start()
        replica = Replica(plane, None, port, push_port)
        replica.envoy = start_envoy(self.work, plane, node_id=f"gateway-{name}")
        self.replicas.append(replica)
        return replica

    def configmaps(self) -> dict[str, dict[str, Any]]:
        return {o["metadata"]["name"]: o for o in self.kube.objects("configmaps", "gw")}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    work = tmp_path_factory.mktemp("push-cluster")
    echo = EchoServer().start()
    with FakeKube(bookmark_interval=0.2) as kube:
        c = Cluster(kube, work, kube.kubeconfig(work / "kubeconfig"), echo)
        c.admin_ports = {"a": free_port(), "b": free_port()}  # each replica's peers: both
        try:
            for name in ("a", "b"):
                c.replica(name)
            for r in c.replicas:
                wait_for(lambda r=r: r.get("/orders-api/orders") == 200, 30, "the policy's spec served")
            yield c
        finally:
            for r in c.replicas:
                r.stop()
    echo.shutdown()


def test_a_push_to_one_replica_reaches_the_envoys_of_every_replica(cluster: Cluster, tmp_path: Path) -> None:
    a, b = cluster.replicas[:2]
    assert a.get(NEW) == 404 and b.get(NEW) == 404
    spec = tmp_path / "orders.yaml"
    spec.write_text(ORDERS_V2)
    out = a.push("--api", "orders", str(spec), "--wait", "--message", "PR #7")
    assert out.returncode == 0, out.stdout + out.stderr
    # --wait counted the other replica's Envoy (--push-peers): both serve it when it returns
    assert "every connected Envoy ACKed it (2," in out.stdout, out.stdout
    assert a.get(NEW) == 200 and b.get(NEW) == 200
    # what the cluster holds: the live map, and the version with its files and record
    objects = cluster.configmaps()
    assert json.loads(objects["push-live"]["data"]["live.json"]) == {"orders": 1}
    version = objects[configmap_name("push", "orders", 1)]
    assert version["metadata"]["labels"] == {STORE_LABEL: "push", API_LABEL: "orders"}
    files = json.loads(gzip.decompress(base64.b64decode(version["binaryData"]["files.json.gz"])))
    assert files == {"orders.yaml": ORDERS_V2}
    wait_for(
        lambda: (
            json.loads(cluster.configmaps()[configmap_name("push", "orders", 1)]["data"]["record.json"])["state"]
            == "live"
        ),
        10,
        "the record live",
    )
    # the other replica lists the version, with who pushed it
    listed = b.push("--versions", "orders")
    assert listed.returncode == 0, listed.stderr
    assert "orders-ci" in listed.stdout and "PR #7" in listed.stdout and " live " in listed.stdout
    assert json.loads(http_get(b.plane.admin_port, "/status")[1])["sources"]["push"]["live"] == {"orders": 1}


def test_a_rollback_on_another_replica_is_followed_by_the_first(cluster: Cluster, tmp_path: Path) -> None:
    a, b = cluster.replicas[:2]
    spec = tmp_path / "orders.yaml"
    spec.write_text(ORDERS_V1)  # version 2: without the new operation
    out = a.push("--api", "orders", str(spec), "--wait")
    assert out.returncode == 0, out.stdout + out.stderr
    assert a.get(NEW) == 404 and b.get(NEW) == 404
    out = b.push("--rollback", "orders", "--to", "1", "--wait")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(cluster.configmaps()["push-live"]["data"]["live.json"]) == {"orders": 1}
    assert a.get(NEW) == 200 and b.get(NEW) == 200  # the first replica's Envoy counted in the wait
    assert json.loads(http_get(a.plane.admin_port, "/status")[1])["sources"]["push"]["live"] == {"orders": 1}


def test_a_push_nacked_by_another_replicas_envoy_is_rolled_back_everywhere(cluster: Cluster, tmp_path: Path) -> None:
    a, b = cluster.replicas[:2]
    assert a.envoy is not None
    # the first replica's Envoy takes larger regular expressions than the second's: only the
    # second refuses the push, and only the other replica sees that NACK
    req = urllib.request.Request(
        f"http://127.0.0.1:{a.envoy.admin_port}/runtime_modify?re2.max_program_size.error_level=100000",
        method="POST",
    )
    urllib.request.urlopen(req, timeout=5).close()
    spec = tmp_path / "orders.yaml"
    spec.write_text(ORDERS_NACKED)
    out = a.push("--api", "orders", str(spec), "--wait")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "gateway-b" in out.stdout + out.stderr and "rolled back" in out.stdout + out.stderr
    assert json.loads(cluster.configmaps()["push-live"]["data"]["live.json"]) == {"orders": 1}
    record = json.loads(cluster.configmaps()[configmap_name("push", "orders", 3)]["data"]["record.json"])
    assert record["state"] == "rolled-back" and "gateway-b" in record["reason"]
    wait_for(lambda: b.get(NEW) == 200 and a.get("/orders-api/orders/codes/x") == 404, 20, "v1 again on both")


def test_a_replica_started_later_serves_what_was_pushed_from_its_first_config(cluster: Cluster) -> None:
    live = json.loads(cluster.configmaps()["push-live"]["data"]["live.json"])
    assert live  # pushed by the tests above
    c = cluster.replica("c")  # its own copy of the policy names ORDERS_V1: only the cluster has the push
    assert c.get(NEW) == 200  # start_envoy waited for Envoy's readiness: the first config had it
    assert json.loads(http_get(c.plane.admin_port, "/status")[1])["sources"]["push"]["live"] == live


# -- the store itself, against the fake cluster: deterministic races -----------------------------


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[FakeKube, ClusterStore, ClusterStore]]:
    with FakeKube(bookmark_interval=0.2) as kube:
        one, two = ClusterStore(tmp_path / "one", "gw", "s"), ClusterStore(tmp_path / "two", "gw", "s")
        assert one.connect(kube.api_client()) and two.connect(kube.api_client())
        try:
            yield kube, one, two
        finally:
            one.close()
            two.close()


def _keep(store: ClusterStore, api: str, text: str) -> Version:
    record = Version(api, 0, "spec.yaml", None, "ci", time.time())
    staged = store.stage(api, {"spec.yaml": text})
    try:
        return store.keep(staged, record)
    finally:
        store.discard(staged)


def test_a_live_map_changed_by_another_replica_refuses_a_push_compiled_before(stores: Any) -> None:
    _kube, one, two = stores
    _keep(one, "orders", ORDERS_V1)
    one.set_live({"orders": 1})
    wait_for(lambda: two.remote[0] == {"orders": 1}, 10, "the other replica sees the change")
    assert two.behind and two.live == {}  # seen, not yet served there
    with pytest.raises(PushRefused) as refused:
        two.set_live({"stock": 1})  # compiled against {} : refused, not merged
    assert refused.value.status == 409 and "push again" in str(refused.value)
    # a rollback changes its one entry over whatever the others are now
    two.set_live({"stock": 1}, only="stock")
    assert two.live == {"orders": 1, "stock": 1}
    wait_for(lambda: one.remote[0] == {"orders": 1, "stock": 1}, 10, "the first sees the merge")
    assert one.adopt() and one.live == {"orders": 1, "stock": 1}
    one.set_live({"orders": 1, "stock": 2})  # served the latest: accepted
    live = next(o for o in _kube.objects("configmaps", "gw") if o["metadata"]["name"] == "s-live")
    assert json.loads(live["data"]["live.json"]) == {"orders": 1, "stock": 2}
    # the second serves the map it wrote, which the first has replaced since: its write is refused
    with pytest.raises(PushRefused) as stale:
        two.set_live({"orders": 2, "stock": 1})
    assert stale.value.status == 409
    live = next(o for o in _kube.objects("configmaps", "gw") if o["metadata"]["name"] == "s-live")
    assert json.loads(live["data"]["live.json"]) == {"orders": 1, "stock": 2}


def test_two_replicas_never_take_one_version_number(stores: Any) -> None:
    kube, one, two = stores
    two.close()  # it sees nothing of what the first writes: only creating the ConfigMap decides
    first, second = _keep(one, "orders", ORDERS_V1), _keep(two, "orders", ORDERS_V2)
    assert (first.version, second.version) == (1, 2)
    names = {o["metadata"]["name"] for o in kube.objects("configmaps", "gw")}
    assert {configmap_name("s", "orders", 1), configmap_name("s", "orders", 2)} <= names
    # each version's files are its own push's
    assert two.pushed_of(second).spec.read_text() == ORDERS_V2


def test_a_version_too_large_for_a_configmap_is_refused_before_anything_is_written(stores: Any) -> None:
    kube, one, _two = stores
    noise = base64.b64encode(os.urandom(800 << 10)).decode()  # does not compress below the limit
    with pytest.raises(PushRefused) as refused:
        one.stage("orders", {"spec.yaml": ORDERS_V1 + f"# {noise}\n"})
    assert refused.value.status == 413 and "ConfigMap" in str(refused.value)
    assert kube.objects("configmaps", "gw") == []


def test_a_directory_store_is_never_taken_for_the_clusters_copy(tmp_path: Path) -> None:
    from controlplane import cli

    directory_store = tmp_path / "store"
    directory_store.mkdir()
    (directory_store / "live.json").write_text('{"orders": 4}\n')  # a store of its own: versions to keep
    args = cli.parser().parse_args(
        ["serve", "--kubernetes", "--push-configmaps", "gw/push", "--push-store", str(directory_store), "--insecure"]
    )
    with pytest.raises(SystemExit) as refused:
        cli._push_options(args)
    assert "holds a store of its own" in str(refused.value)
    assert (directory_store / "live.json").read_text() == '{"orders": 4}\n'
    # a copy made by the store itself is emptied at start and used again
    copy = tmp_path / "copy"
    ClusterStore(copy, "gw", "push")
    (copy / "live.json").write_text('{"orders": 4}\n')
    assert ClusterStore(copy, "gw", "push").live == {}


def test_configmaps_written_by_others_never_reach_outside_the_copy_nor_empty_what_is_served(
    stores: Any, tmp_path: Path
) -> None:
    kube, one, two = stores
    _keep(one, "orders", ORDERS_V1)
    one.set_live({"orders": 1})
    wait_for(lambda: two.remote[0] == {"orders": 1}, 10, "the live map seen")
    core = client.CoreV1Api(kube.api_client())
    labels = {STORE_LABEL: "s"}
    hostile = [
        ("../../outside", 1, {"spec.yaml": "x: 1\n"}),  # an API name that climbs out
        ("orders", 7, {"../../outside.yaml": "x: 1\n"}),  # a file name that does
        ("orders", -1, {"spec.yaml": "x: 1\n"}),
    ]
    for i, (api, version, files) in enumerate(hostile):
        record = Version(api, version, "spec.yaml", None, "intruder", time.time())
        body = {
            "metadata": {"name": f"s-hostile-{i}", "labels": labels},
            "data": {"record.json": json.dumps(record.as_json())},
            "binaryData": {"files.json.gz": base64.b64encode(gzip.compress(json.dumps(files).encode())).decode()},
        }
        core.create_namespaced_config_map("gw", body)
    # a live map that is not {api: version}: ignored, what was seen stays
    live = core.read_namespaced_config_map("s-live", "gw")
    live.data = {"live.json": '{"orders": "latest", "../x": 1}'}
    core.replace_namespaced_config_map("s-live", "gw", live)
    core.create_namespaced_config_map("gw", {"metadata": {"name": "s-marker", "labels": labels}, "data": {}})
    informer = two._informer
    assert informer is not None
    # the watch has had every event when it has the marker: they come in order, and it was last
    wait_for(lambda: ("gw", "s-marker") in informer.objects, 10, "the marker seen")
    assert two.remote[0] == {"orders": 1}
    assert not list(tmp_path.rglob("outside*"))
    assert [v.version for v in two.versions("orders")] == [1]


def test_a_pulled_spec_is_pushed_once_by_the_leader_and_served_by_every_replica(tmp_path: Path) -> None:
    from tests.test_pull import Publisher

    publisher = Publisher(ORDERS_V2)
    published = publisher.start()
    echo = EchoServer().start()
    planes: list[ControlPlaneProcess] = []
    envoys: list[EnvoyProcess] = []
    ports: list[int] = []
    try:
        with FakeKube(bookmark_interval=0.2) as kube:
            kubeconfig = kube.kubeconfig(tmp_path / "kubeconfig")
            for name in ("a", "b"):
                config = tmp_path / name
                config.mkdir()
                port = free_port()
                (config / "orders.yaml").write_text(ORDERS_V1)
                (config / "policy.yaml").write_text(
                    policy(port, echo.port).replace(
                        "upstream: backend}]",
                        f'upstream: backend, pull: {{url: "http://127.0.0.1:{published}/openapi.yaml", '
                        "interval: 1s, allowSecurityChanges: true}}]",
                    )
                )
                # every replica could pull; the one holding the Lease does
                plane = ControlPlaneProcess(
                    [config],
                    tmp_path,
                    extra=[
                        *("--kubernetes", "--kubeconfig", str(kubeconfig), "--kube-namespace", "gw"),
                        *("--kube-lease", "gw/cp", "--kube-identity", name, "--kube-lease-seconds", "2"),
                        *("--push-configmaps", "gw/push", "--push-store", str(tmp_path / f"{name}-copy")),
                    ],
                ).start()
                planes.append(plane)
                envoys.append(start_envoy(tmp_path, plane, node_id=f"gateway-{name}"))
                ports.append(port)

            def get(port: int) -> int:
                return raw_request(port, f"GET {NEW} HTTP/1.1\r\nHost: x\r\n\r\n".encode()).status

            def versions() -> list[dict[str, Any]]:
                return [
                    json.loads(o["data"]["record.json"])
                    for o in kube.objects("configmaps", "gw")
                    if o["metadata"]["labels"].get(API_LABEL) == "orders"
                ]

            wait_for(lambda: all(get(p) == 200 for p in ports), 30, "the pulled spec served by both replicas")
            publisher.text = ORDERS_V1 + "# republished\n"
            wait_for(lambda: all(get(p) == 404 for p in ports), 30, "the change pulled, served by both")
            time.sleep(3)  # several intervals: a replica pulling too would have pushed by now
            pulled = versions()
            assert [v["version"] for v in sorted(pulled, key=lambda v: v["version"])] == [1, 2], pulled
            assert all(v["pushed_by"].startswith("pull http://127.0.0.1:") and v["state"] != "rejected" for v in pulled)
    finally:
        for envoy in envoys:
            envoy.stop()
        for plane in planes:
            plane.stop()
        echo.shutdown()
        publisher.server.shutdown()
