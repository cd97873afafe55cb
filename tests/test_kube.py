"""``serve --kubernetes``: what is applied to the cluster reaches a real Envoy, and what is wrong
is said on the object that is wrong. The cluster is tests/kube_fake.py, an API server that
speaks the real list/watch protocol, driven by the official client as a cluster would be."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from controlplane.echo import EchoServer
from tests.harness import EnvoyProcess, free_port, raw_request
from tests.kube_fake import FakeKube
from tests.test_push import ORDERS_V1 as ORDERS
from tests.test_push import ORDERS_V2
from tests.xds_harness import ControlPlaneProcess, Pki, start_envoy, wait_for

pytestmark = pytest.mark.envoy

GROUP, VERSION = "controlplane.dev", "v1"

# Two operations with one operationId: the compile refuses it.
ORDERS_BROKEN = (
    ORDERS_V2
    + """\
  /orders/{id}/lines:
    get:
      operationId: getOrder
      parameters: [{name: id, in: path, required: true, schema: {type: integer}}]
      responses: {"200": {description: ok}}
"""
)


@dataclass
class Cluster:
    kube: FakeKube
    plane: ControlPlaneProcess
    envoy: EnvoyProcess
    echo: EchoServer
    port: int
    custom: Any
    core: Any
    discovery: Any

    def get(self, path: str) -> int:
        return raw_request(self.port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()).status

    def apispec(self, name: str, text: str, ns: str = "shop") -> None:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ApiSpec",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"openapi": text},
        }
        self._apply("apispecs", ns, name, body)

    def policy(self, name: str, spec: dict[str, Any], ns: str = "shop") -> None:
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "GatewayPolicy",
            "metadata": {"name": name, "namespace": ns},
            "spec": spec,
        }
        self._apply("gatewaypolicies", ns, name, body)

    def _apply(self, plural: str, ns: str, name: str, body: dict[str, Any]) -> None:
        try:
            current = self.custom.get_namespaced_custom_object(GROUP, VERSION, ns, plural, name)
        except client.exceptions.ApiException as exc:
            assert exc.status == 404
            self.custom.create_namespaced_custom_object(GROUP, VERSION, ns, plural, body)
            return
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        self.custom.replace_namespaced_custom_object(GROUP, VERSION, ns, plural, name, body)

    def conditions(self, plural: str, name: str, ns: str = "shop") -> dict[str, dict[str, Any]]:
        obj = self.custom.get_namespaced_custom_object(GROUP, VERSION, ns, plural, name)
        return {c["type"]: c for c in (obj.get("status") or {}).get("conditions", [])}


def base_policy(port: int, backend: int) -> dict[str, Any]:
    return {
        "listeners": [{"name": "public", "address": "127.0.0.1", "port": port}],
        "upstreams": [
            {"name": "backend", "endpoints": [f"127.0.0.1:{backend}"]},
            {"name": "echo-svc", "service": "echo.shop:http"},
        ],
        "apis": [{"name": "orders", "spec": "orders", "pathPrefix": "/orders-api", "upstream": "backend"}],
    }


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    work = tmp_path_factory.mktemp("kube")
    echo = EchoServer().start()
    port = free_port()
    with FakeKube(bookmark_interval=0.2) as kube:
        api = kube.api_client()
        c = Cluster(
            kube,
            None,
            None,
            echo,
            port,
            client.CustomObjectsApi(api),
            client.CoreV1Api(api),  # type: ignore[arg-type]
            client.DiscoveryV1Api(api),
        )
        c.apispec("orders", ORDERS)
        c.policy("gateway", base_policy(port, echo.port))
        config = kube.kubeconfig(work / "kubeconfig")
        c.plane = ControlPlaneProcess(
            [],
            work,
            extra=[
                "--kubernetes",
                "--kubeconfig",
                str(config),
                "--kube-state",
                str(work / "mirror"),
                "--kube-lease",
                "shop/controlplane",
                "--kube-identity",
                "cp-1",
            ],
        ).start()
        c.envoy = start_envoy(work, c.plane)
        wait_for(lambda: c.get("/orders-api/orders") == 200, 30, "the ApiSpec served")
        yield c
        c.envoy.stop()
        c.plane.stop()
    echo.shutdown()


def test_create_update_delete_of_an_apispec_reach_envoy(cluster: Cluster) -> None:
    assert cluster.get("/orders-api/orders/3") == 404
    cluster.apispec("orders", ORDERS_V2)
    wait_for(lambda: cluster.get("/orders-api/orders/3") == 200, 20, "the new operation routed")
    cluster.apispec("stock", ORDERS.replace("/orders", "/stock").replace("listOrders", "listStock"))
    policy = base_policy(cluster.port, cluster.echo.port)
    policy["apis"].append({"name": "stock", "spec": "stock", "pathPrefix": "/stock-api", "upstream": "backend"})
    cluster.policy("gateway", policy)
    wait_for(lambda: cluster.get("/stock-api/stock") == 200, 20, "a second ApiSpec routed")
    cluster.policy("gateway", base_policy(cluster.port, cluster.echo.port))
    cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, "shop", "apispecs", "stock")
    wait_for(lambda: cluster.get("/stock-api/stock") == 404, 20, "the deleted API gone")
    conditions = cluster.conditions("apispecs", "orders")
    wait_for(lambda: cluster.conditions("apispecs", "orders")["Programmed"]["status"] == "True", 20, "Programmed")
    conditions = cluster.conditions("apispecs", "orders")
    assert conditions["Accepted"]["status"] == "True"
    generation = cluster.custom.get_namespaced_custom_object(GROUP, VERSION, "shop", "apispecs", "orders")["metadata"][
        "generation"
    ]
    assert conditions["Programmed"]["observedGeneration"] == generation


def test_an_invalid_apispec_gets_a_condition_and_an_event_and_the_last_good_config_serves(cluster: Cluster) -> None:
    cluster.apispec("orders", ORDERS_V2)
    wait_for(lambda: cluster.get("/orders-api/orders/3") == 200, 20, "V2 served")
    cluster.apispec("orders", ORDERS_BROKEN)
    try:

        def refused() -> dict[str, Any] | None:
            accepted = cluster.conditions("apispecs", "orders").get("Accepted")
            return accepted if accepted and accepted["status"] == "False" else None

        accepted = wait_for(refused, 20, "Accepted=False on the ApiSpec")
        assert "ApiSpec shop/orders" in accepted["message"]
        assert "duplicate operationId 'getOrder'" in accepted["message"]
        assert accepted["reason"] == "Invalid"
        # the statuses are written one object after the other, each followed by its Event
        policy = wait_for(
            lambda: (c := cluster.conditions("gatewaypolicies", "gateway"))["Programmed"]["reason"] == "Pending" and c,
            20,
            "the policy's Programmed=Pending",
        )
        assert policy["Accepted"]["status"] == "True"
        assert "ApiSpec shop/orders" in policy["Programmed"]["message"]

        def rejected() -> list[dict[str, Any]]:
            events = [e for e in cluster.kube.objects("events", "shop") if e["involvedObject"]["name"] == "orders"]
            return [e for e in events if e["reason"] == "Rejected" and e["type"] == "Warning"]

        wait_for(rejected, 20, "the Rejected Event")
        assert cluster.get("/orders-api/orders/3") == 200  # still the last good configuration
        assert cluster.get("/orders-api/orders/3/lines") == 404
    finally:  # the next tests need a cluster that compiles
        cluster.apispec("orders", ORDERS_V2)
    wait_for(lambda: cluster.conditions("apispecs", "orders")["Accepted"]["status"] == "True", 20, "accepted again")


def test_a_configmap_of_specs_and_policies_is_a_source(cluster: Cluster) -> None:
    policy = {
        "apiVersion": "controlplane.dev/v1",
        "kind": "GatewayPolicy",
        "apis": [{"name": "catalog", "spec": "catalog.yaml", "pathPrefix": "/catalog", "upstream": "backend"}],
    }
    body = {
        "metadata": {"name": "catalog", "namespace": "shop", "labels": {"controlplane.dev/config": "true"}},
        "data": {
            "catalog.yaml": ORDERS.replace("/orders", "/items").replace("listOrders", "listItems"),
            "policy.json": json.dumps(policy),
        },
    }
    cluster.core.create_namespaced_config_map("shop", body)
    wait_for(lambda: cluster.get("/catalog/items") == 200, 20, "the ConfigMap's API routed")
    unlabelled = {**body, "metadata": {"name": "other", "namespace": "shop"}}
    unlabelled["data"] = {
        "policy.json": json.dumps({**policy, "apis": [{**policy["apis"][0], "name": "x", "pathPrefix": "/x"}]})
    }
    cluster.core.create_namespaced_config_map("shop", unlabelled)
    cluster.core.delete_namespaced_config_map("catalog", "shop")
    wait_for(lambda: cluster.get("/catalog/items") == 404, 20, "the ConfigMap's API gone")
    assert cluster.get("/x/items") == 404  # a ConfigMap without the label is not read


def _slice(name: str, port: int, ready: bool, zone: str) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": "shop", "labels": {"kubernetes.io/service-name": "echo"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": ready}, "zone": zone}],
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
    }


def test_a_service_upstream_follows_its_ready_endpoints(cluster: Cluster) -> None:
    policy = base_policy(cluster.port, cluster.echo.port)
    policy["apis"].append({"name": "echo", "spec": "echo", "pathPrefix": "/echo", "upstream": "echo-svc"})
    cluster.apispec("echo", ORDERS.replace("/orders", "/ping").replace("listOrders", "ping"))
    cluster.policy("gateway", policy)
    wait_for(lambda: cluster.get("/echo/ping") == 503, 20, "the Service's route, no endpoints yet")
    cluster.core.create_namespaced_service(
        "shop", {"metadata": {"name": "echo", "namespace": "shop"}, "spec": {"ports": [{"name": "http", "port": 80}]}}
    )
    cluster.discovery.create_namespaced_endpoint_slice("shop", _slice("echo-abc", cluster.echo.port, False, "zone-a"))
    assert cluster.get("/echo/ping") == 503  # not ready: no traffic
    cluster.discovery.replace_namespaced_endpoint_slice(
        "echo-abc",
        "shop",
        {
            **_slice("echo-abc", cluster.echo.port, True, "zone-a"),
            "metadata": {
                **_slice("echo-abc", 0, True, "")["metadata"],
                "resourceVersion": cluster.discovery.read_namespaced_endpoint_slice(
                    "echo-abc", "shop"
                ).metadata.resource_version,
            },
        },
    )
    wait_for(lambda: cluster.get("/echo/ping") == 200, 20, "the ready endpoint served")
    dump = cluster.plane.get("/config_dump?node=gateway-1")
    text = json.dumps(dump)
    assert '"zone": "zone-a"' in text, "the endpoint's zone is kept as its locality"
    cluster.discovery.delete_namespaced_endpoint_slice("echo-abc", "shop")
    wait_for(lambda: cluster.get("/echo/ping") == 503, 20, "no endpoints once the slice is gone")


def test_a_dropped_watch_resumes_without_losing_a_change_and_410_relists(cluster: Cluster) -> None:
    lists = cluster.kube.count("list", r"/apispecs$")
    cluster.kube.drop_watches()
    cluster.apispec("orders", ORDERS)  # while the watch is down
    wait_for(lambda: cluster.get("/orders-api/orders/3") == 404, 20, "the change made while disconnected")
    assert cluster.kube.count("list", r"/apispecs$") == lists  # resumed from its version, not listed again
    # a change, then history forgotten, while the watch is down: it resumes from a version
    # the server no longer has (410 Gone), lists again, and sees the change in the list
    cluster.kube.drop_watches()
    cluster.apispec("orders", ORDERS_V2)
    cluster.kube.compact()
    wait_for(lambda: cluster.get("/orders-api/orders/3") == 200, 20, "the change after a 410")
    assert cluster.kube.count("list", r"/apispecs$") > lists  # listed again after 410 Gone


def test_the_leader_holds_the_lease_and_status_says_so(cluster: Cluster) -> None:
    import subprocess
    import sys

    lease = client.CoordinationV1Api(cluster.kube.api_client()).read_namespaced_lease("controlplane", "shop")
    assert lease.spec.holder_identity == "cp-1"
    out = subprocess.run(
        [sys.executable, "-m", "controlplane", "status", "--server", f"127.0.0.1:{cluster.plane.admin_port}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    line = next(x for x in out.stdout.splitlines() if x.startswith("kubernetes:"))
    assert line.startswith("kubernetes: leader (lease shop/controlplane as cp-1); 6 of 6 kinds listed"), line


__all__ = ["Path"]


def test_only_the_leader_writes_statuses_and_a_follower_takes_over(tmp_path: Path) -> None:
    """Two replicas serve; the one holding the Lease writes statuses. Stopped (SIGSTOP: it
    neither renews nor lets go), the other takes the Lease once it expires and writes them."""
    import signal

    with FakeKube(bookmark_interval=0.2) as kube:
        api = kube.api_client()
        c = Cluster(kube, None, None, None, 0, client.CustomObjectsApi(api), None, None)  # type: ignore[arg-type]
        c.apispec("orders", ORDERS)
        c.policy("gateway", base_policy(free_port(), 9))
        config = kube.kubeconfig(tmp_path / "kubeconfig")

        def replica(name: str) -> ControlPlaneProcess:
            extra = [
                "--kubernetes",
                "--kubeconfig",
                str(config),
                "--kube-lease",
                "shop/cp",
                "--kube-identity",
                name,
                "--kube-lease-seconds",
                "2",
            ]
            return ControlPlaneProcess([], tmp_path, extra=extra).start()

        leases = client.CoordinationV1Api(api)

        def holder() -> str | None:
            try:
                return str(leases.read_namespaced_lease("cp", "shop").spec.holder_identity)
            except client.exceptions.ApiException:
                return None

        first = replica("cp-a")
        wait_for(lambda: holder() == "cp-a", 20, "cp-a leads")
        second = replica("cp-b")
        try:
            wait_for(
                lambda: c.conditions("apispecs", "orders").get("Accepted", {}).get("status") == "True",
                20,
                "the leader's status",
            )
            assert holder() == "cp-a"
            assert first.proc is not None
            first.proc.send_signal(signal.SIGSTOP)
            before = second.get("/compile")["at"]
            c.apispec("orders", ORDERS_BROKEN)
            wait_for(lambda: second.get("/compile")["at"] > before, 20, "the follower compiled the change")
            # the follower has the errors, but until it holds the Lease the status is unchanged:
            # a status that already says so means the Lease has moved (the status first, then
            # the holder: the other order races with the takeover)
            assert not second.get("/compile")["ok"]
            if c.conditions("apispecs", "orders")["Accepted"]["status"] == "False":
                assert holder() == "cp-b"
            wait_for(
                lambda: leases.read_namespaced_lease("cp", "shop").spec.holder_identity == "cp-b",
                20,
                "cp-b takes the expired Lease",
            )
            wait_for(
                lambda: c.conditions("apispecs", "orders")["Accepted"]["status"] == "False",
                20,
                "the new leader writes the status",
            )
        finally:
            if first.proc is not None:
                first.proc.send_signal(signal.SIGCONT)
            first.stop()
            second.stop()


def test_a_tls_secret_is_the_listeners_certificate_and_its_renewal_is_served(tmp_path: Path) -> None:
    import base64
    import socket
    import ssl

    from controlplane.certs import CertificateAuthority

    ca = CertificateAuthority(tmp_path, "kube-ca")
    echo = EchoServer().start()
    port = free_port()
    with FakeKube(bookmark_interval=0.2) as kube:
        api = kube.api_client()
        c = Cluster(kube, None, None, echo, port, client.CustomObjectsApi(api), client.CoreV1Api(api), None)  # type: ignore[arg-type]

        def secret(cn: str, create: bool) -> None:
            issued = ca.issue(cn, ["localhost"], stem=cn)
            data = {
                k: base64.b64encode(p.read_bytes()).decode()
                for k, p in (("tls.crt", issued.cert), ("tls.key", issued.key))
            }
            body = {
                "metadata": {"name": "shop-tls", "namespace": "shop", "labels": {"controlplane.dev/tls": "true"}},
                "type": "kubernetes.io/tls",
                "data": data,
            }
            if create:
                c.core.create_namespaced_secret("shop", body)
            else:
                current = c.core.read_namespaced_secret("shop-tls", "shop")
                body["metadata"]["resourceVersion"] = current.metadata.resource_version
                c.core.replace_namespaced_secret("shop-tls", "shop", body)

        secret("first.example", create=True)
        policy = base_policy(port, echo.port)
        policy["upstreams"] = policy["upstreams"][:1]
        policy["listeners"][0]["tls"] = {
            "certificates": [{"certFile": "../secrets/shop-tls/tls.crt", "keyFile": "../secrets/shop-tls/tls.key"}]
        }
        c.apispec("orders", ORDERS)
        c.policy("gateway", policy)
        config = kube.kubeconfig(tmp_path / "kubeconfig")
        # certificates and keys go only to Envoys on an mTLS channel, of the gateway group
        pki = Pki.make(tmp_path / "pki")
        plane = ControlPlaneProcess([], tmp_path, pki=pki, extra=["--kubernetes", "--kubeconfig", str(config)]).start()
        envoy = start_envoy(tmp_path, plane, client=pki.ca.issue("gateway-1", client=True, unit="gateway", stem="gw"))
        try:

            def served_cn() -> str:
                context = ssl.create_default_context(cafile=str(ca.path))
                with (
                    socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
                    context.wrap_socket(raw, server_hostname="localhost") as tls,
                ):
                    cert = tls.getpeercert()
                return dict(x[0] for x in cert["subject"])["commonName"]  # type: ignore[index]

            wait_for(lambda: served_cn() == "first.example", 30, "the Secret's certificate served")
            secret("second.example", create=False)
            wait_for(lambda: served_cn() == "second.example", 30, "the renewed Secret served")
        finally:
            envoy.stop()
            plane.stop()
    echo.shutdown()
