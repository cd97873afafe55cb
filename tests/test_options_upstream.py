"""Every documented upstream option, through a real Envoy: TLS with SNI and certificate
checks, retries, active health checks, circuit breakers and outlier detection.

Backends are echo servers (plain, and TLS with certificates from test CAs) steered per
request by ``x-echo-*`` headers; endpoints nobody listens on stand for dead hosts. Every
wait is on a positive signal (a host's health flag in Envoy's /clusters, a counter, a
held request seen by the backend), with a generous deadline.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from controlplane.certs import CertificateAuthority
from controlplane.echo import EchoServer
from controlplane.translate import clusters
from tests.harness import Gateway, Response, free_port
from tests.xds_harness import wait_for

pytestmark = pytest.mark.envoy

SPEC = """
openapi: 3.0.3
info: {title: items, version: "1"}
servers: [{url: /items}]
paths:
  /list:
    get: {operationId: list, responses: {"200": {description: ok}}}
  /read:
    get: {operationId: read, responses: {"200": {description: ok}}}
  /write:
    post: {operationId: write, responses: {"200": {description: ok}}}
"""

RETRY_503 = "{attempts: 2, on: [retriable-status-codes], retriableStatusCodes: [503]}"
NO_RETRY = "{retries: {attempts: 0}}"


@dataclasses.dataclass
class World:
    gw: Gateway
    echo: EchoServer  # plain HTTP
    trusted: EchoServer  # HTTPS, certificate for localhost and api.internal.test from the trusted CA
    stranger: EchoServer  # HTTPS, certificate for localhost from another CA
    dead: tuple[int, ...]  # ports nobody listens on

    def get(self, path: str, headers: list[tuple[str, str]] | None = None, method: str = "GET") -> Response:
        return self.gw.request(method, path, headers=headers)

    def clusters(self) -> dict[str, dict[str, Any]]:
        """Cluster name → {"host:port": host status} from Envoy's admin."""
        assert self.gw.envoy is not None
        data = json.loads(self.gw.envoy.admin("/clusters?format=json")[1])
        out: dict[str, dict[str, Any]] = {}
        for c in data["cluster_statuses"]:
            hosts = out.setdefault(c["name"], {})
            for h in c.get("host_statuses", []):
                a = h["address"]["socket_address"]
                hosts[f"{a['address']}:{a['port_value']}"] = h
        return out

    def health(self, cluster: str, port: int) -> dict[str, Any]:
        return dict(self.clusters()[cluster][f"127.0.0.1:{port}"]["health_status"])

    def stat(self, name: str) -> int:
        assert self.gw.envoy is not None
        _status, body = self.gw.envoy.admin(f"/stats?filter=^{name}$")
        return sum(int(line.rsplit(":", 1)[1]) for line in body.splitlines() if line.strip())


def policy(w: dict[str, int]) -> str:
    return f"""
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
listeners: [{{name: public, address: 127.0.0.1, port: {{{{PORT}}}}}}]
upstreams:
  - {{name: backend, endpoints: ["{{{{BACKEND}}}}"]}}
  - {{name: secure, url: "https://localhost:{w["trusted"]}"}}
  - {{name: named-sni, endpoints: ["127.0.0.1:{w["trusted"]}"], tls: true, sni: api.internal.test}}
  - {{name: wrong-ca, url: "https://localhost:{w["stranger"]}"}}
  - {{name: wrong-name, endpoints: ["127.0.0.1:{w["trusted"]}"], tls: true, sni: other.internal.test}}
  - {{name: flaky, endpoints: ["{{{{BACKEND}}}}"], retries: {RETRY_503}}}
  - name: checked
    endpoints: ["{{{{BACKEND}}}}", "127.0.0.1:{w["dead"]}"]
    healthCheck: {{path: /healthz, interval: 200ms, timeout: 1s, unhealthyThreshold: 1, healthyThreshold: 1}}
  - name: picky
    endpoints: ["{{{{BACKEND}}}}"]
    healthCheck: {{path: /healthz, interval: 200ms, unhealthyThreshold: 1, expectedStatuses: [204]}}
  - name: ejecting
    endpoints: ["{{{{BACKEND}}}}", "127.0.0.1:{w["dead2"]}"]
    outlierDetection: {{consecutive5xx: 2, baseEjectionTime: 5m}}
  - name: returning
    endpoints: ["{{{{BACKEND}}}}", "127.0.0.1:{w["dead3"]}"]
    outlierDetection: {{consecutive5xx: 1, interval: 200ms, baseEjectionTime: 500ms}}
  - name: capped
    endpoints: ["{{{{BACKEND}}}}", "127.0.0.1:{w["dead4"]}", "127.0.0.1:{w["dead5"]}", "127.0.0.1:{w["dead6"]}"]
    outlierDetection: {{consecutive5xx: 1, baseEjectionTime: 5m, maxEjectionPercent: 25}}
  - name: one-connection
    endpoints: ["{{{{BACKEND}}}}"]
    circuitBreaker: {{maxConnections: 1, maxPendingRequests: 1}}
  - {{name: one-request, endpoints: ["{{{{BACKEND}}}}"], circuitBreaker: {{maxRequests: 1}}}}
  - name: no-retry-budget
    endpoints: ["{{{{BACKEND}}}}"]
    retries: {RETRY_503}
    circuitBreaker: {{maxRetries: 0}}
apis:
  - {{name: plain, spec: spec.yaml, upstream: backend, pathPrefix: /plain}}
  - {{name: secure, spec: spec.yaml, upstream: secure, pathPrefix: /secure}}
  - {{name: named-sni, spec: spec.yaml, upstream: named-sni, pathPrefix: /named-sni}}
  - {{name: wrong-ca, spec: spec.yaml, upstream: wrong-ca, pathPrefix: /wrong-ca}}
  - {{name: wrong-name, spec: spec.yaml, upstream: wrong-name, pathPrefix: /wrong-name}}
  - name: flaky
    spec: spec.yaml
    upstream: flaky
    pathPrefix: /flaky
    operations:
      write: {NO_RETRY}
      read: {{retries: {{attempts: 1, on: [gateway-error], perTryTimeout: 300ms}}}}
  - {{name: checked, spec: spec.yaml, upstream: checked, pathPrefix: /checked, defaults: {NO_RETRY}}}
  - {{name: picky, spec: spec.yaml, upstream: picky, pathPrefix: /picky}}
  - {{name: ejecting, spec: spec.yaml, upstream: ejecting, pathPrefix: /ejecting, defaults: {NO_RETRY}}}
  - {{name: returning, spec: spec.yaml, upstream: returning, pathPrefix: /returning, defaults: {NO_RETRY}}}
  - {{name: capped, spec: spec.yaml, upstream: capped, pathPrefix: /capped, defaults: {NO_RETRY}}}
  - {{name: one-connection, spec: spec.yaml, upstream: one-connection, pathPrefix: /one-connection,
     defaults: {NO_RETRY}}}
  - {{name: one-request, spec: spec.yaml, upstream: one-request, pathPrefix: /one-request, defaults: {NO_RETRY}}}
  - {{name: no-retry-budget, spec: spec.yaml, upstream: no-retry-budget, pathPrefix: /no-retry-budget}}
"""


@pytest.fixture(scope="module")
def tls_backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, EchoServer, EchoServer]]:
    pki = tmp_path_factory.mktemp("upstream-pki")
    trusted_ca = CertificateAuthority(pki, "trusted-ca")
    good = trusted_ca.issue("localhost", ["localhost", "api.internal.test"])
    other = CertificateAuthority(pki, "stranger-ca").issue("stranger", ["localhost"])
    trusted = EchoServer(tls=(str(good.cert), str(good.key))).start()
    stranger = EchoServer(tls=(str(other.cert), str(other.key))).start()
    yield trusted_ca.path, trusted, stranger
    trusted.shutdown()
    stranger.shutdown()


@pytest.fixture(scope="module")
def world(
    gateway_factory: Callable[..., Gateway],
    echo: EchoServer,
    tls_backends: tuple[Path, EchoServer, EchoServer],
) -> World:
    ca, trusted, stranger = tls_backends
    ports = {"trusted": trusted.port, "stranger": stranger.port}
    ports.update((f"dead{i}", free_port()) for i in ("", 2, 3, 4, 5, 6))
    # The test CA stands in for the system CAs that verify https upstreams.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(clusters, "SYSTEM_CA_BUNDLE", str(ca))
        gw = gateway_factory({"spec.yaml": SPEC, "policy.yaml": policy(ports)})
    return World(gw, echo, trusted, stranger, tuple(ports[f"dead{i}"] for i in ("", 2, 3, 4, 5, 6)))


def attempts(backend: EchoServer, resp: Response) -> list[dict[str, Any]]:
    """What the backend received for this response's request, one entry per attempt."""
    rid = resp.header("x-request-id")
    return [r for r in backend.received if r["headers"].get("x-request-id") == rid]


# -- TLS ---------------------------------------------------------------------------------


def test_https_upstream_gets_sni_and_a_verified_certificate(world: World) -> None:
    resp = world.get("/secure/list")
    assert resp.status == 200, resp.body
    assert len(attempts(world.trusted, resp)) == 1
    assert "localhost" in world.trusted.server_names  # SNI = the URL's host


def test_the_sni_option_names_the_server_and_the_certificate_it_must_present(world: World) -> None:
    resp = world.get("/named-sni/list")
    assert resp.status == 200, resp.body
    assert len(attempts(world.trusted, resp)) == 1
    assert "api.internal.test" in world.trusted.server_names


def test_a_certificate_from_another_ca_is_refused(world: World) -> None:
    before = len(world.stranger.server_names)
    resp = world.get("/wrong-ca/list")
    assert resp.status == 503
    assert len(world.stranger.server_names) > before  # Envoy did reach it, and refused its certificate
    assert world.stranger.received == []
    assert world.stat("cluster.wrong-ca.ssl.fail_verify_error") >= 1


def test_a_certificate_for_another_name_is_refused(world: World) -> None:
    before = world.stat("cluster.wrong-name.ssl.fail_verify_san")
    resp = world.get("/wrong-name/list")
    assert resp.status == 503
    assert attempts(world.trusted, resp) == []
    assert world.stat("cluster.wrong-name.ssl.fail_verify_san") > before


# -- retries -------------------------------------------------------------------------------

FAIL = [("X-Echo-Status", "503")]


def test_the_upstreams_retry_policy_retries_its_status_codes(world: World) -> None:
    resp = world.get("/flaky/list", [*FAIL, ("X-Echo-Attempts", "2")])  # two 503s, then 200
    assert resp.status == 200
    assert len(attempts(world.echo, resp)) == 3
    resp = world.get("/flaky/list", [*FAIL, ("X-Echo-Attempts", "3")])  # 2 retries are not enough
    assert resp.status == 503
    assert len(attempts(world.echo, resp)) == 3


def test_an_operation_turns_retries_off(world: World) -> None:
    resp = world.get("/flaky/write", [*FAIL, ("X-Echo-Attempts", "1")], method="POST")
    assert resp.status == 503
    assert len(attempts(world.echo, resp)) == 1


def test_per_try_timeout_retries_a_slow_attempt(world: World) -> None:
    resp = world.get("/flaky/read", [("X-Echo-Delay-Ms", "3000"), ("X-Echo-Attempts", "1")])
    assert resp.status == 200
    assert len(attempts(world.echo, resp)) == 2


def test_default_retries_leave_an_application_error_alone(world: World) -> None:
    """The built-in policy retries only what proves the request never reached the application."""
    resp = world.get("/plain/write", [*FAIL, ("X-Echo-Attempts", "1")], method="POST")
    assert resp.status == 503
    assert len(attempts(world.echo, resp)) == 1


# -- health checks ---------------------------------------------------------------------------


def test_active_health_checks_take_a_dead_endpoint_out(world: World) -> None:
    dead = world.dead[0]
    wait_for(lambda: world.health("checked", dead).get("failed_active_health_check"), 15, "the dead host flagged")
    assert not world.health("checked", world.echo.port).get("failed_active_health_check")
    wait_for(
        lambda: any(
            r["path"] == "/healthz" and "envoy" in r["headers"].get("user-agent", "").lower()
            for r in world.echo.received
        ),
        15,
        "a health check request at the configured path",
    )
    # retries are off: every request meets a healthy endpoint only because the dead one is out
    assert [world.get("/checked/list").status for _ in range(10)] == [200] * 10


def test_a_status_outside_expected_statuses_is_unhealthy(world: World) -> None:
    wait_for(
        lambda: world.health("picky", world.echo.port).get("failed_active_health_check"),
        15,
        "200 flagged when only 204 is expected",
    )


# -- outlier detection -----------------------------------------------------------------------


def test_consecutive_failures_eject_an_endpoint(world: World) -> None:
    dead = world.dead[1]
    failures = 0
    for _ in range(20):  # round robin: about every other request meets the dead endpoint
        if world.get("/ejecting/list").status != 200:
            failures += 1
        if world.health("ejecting", dead).get("failed_outlier_check"):
            break
    assert world.health("ejecting", dead).get("failed_outlier_check"), "never ejected"
    assert failures == 2  # consecutive5xx: 2
    assert world.stat("cluster.ejecting.outlier_detection.ejections_enforced_consecutive_5xx") == 1
    assert [world.get("/ejecting/list").status for _ in range(10)] == [200] * 10


def test_an_ejected_endpoint_returns_after_the_base_ejection_time(world: World) -> None:
    dead = world.dead[2]
    for _ in range(10):
        world.get("/returning/list")
        if world.health("returning", dead).get("failed_outlier_check"):
            break
    assert world.health("returning", dead).get("failed_outlier_check"), "never ejected"
    wait_for(lambda: not world.health("returning", dead).get("failed_outlier_check"), 15, "the host back in")
    assert world.stat("cluster.returning.outlier_detection.ejections_active") == 0


def test_max_ejection_percent_caps_the_ejected_endpoints(world: World) -> None:
    """Three dead endpoints of four, at most 25 % ejected: one is, the others are refused."""
    dead = world.dead[3:]
    for _ in range(40):
        world.get("/capped/list")
        if world.stat("cluster.capped.outlier_detection.ejections_overflow"):
            break
    assert world.stat("cluster.capped.outlier_detection.ejections_overflow") >= 1
    assert [bool(world.health("capped", d).get("failed_outlier_check")) for d in dead].count(True) == 1


# -- circuit breakers -------------------------------------------------------------------------


class Held:
    """Requests the backend holds until released; each runs in its own thread."""

    def __init__(self, world: World, path: str, gate: str):
        self.world, self.path, self.gate = world, path, gate
        self.statuses: list[int] = []
        self.threads: list[threading.Thread] = []

    def send(self) -> None:
        thread = threading.Thread(target=self._one)
        self.threads.append(thread)
        thread.start()

    def at_backend(self) -> int:
        return sum(1 for r in self.world.echo.received if r["headers"].get("x-echo-hold") == self.gate)

    def _one(self) -> None:
        self.statuses.append(self.world.get(self.path, [("X-Echo-Hold", self.gate)]).status)

    def release(self) -> list[int]:
        self.world.echo.release(self.gate)
        for t in self.threads:
            t.join(15)
        return self.statuses


def test_max_connections_and_pending_requests(world: World) -> None:
    held = Held(world, "/one-connection/list", "one-connection")
    try:
        held.send()  # holds the only connection...
        wait_for(lambda: held.at_backend() == 1, 15, "the first request at the backend")
        held.send()  # ...so this one waits for it
        wait_for(lambda: world.stat("cluster.one-connection.upstream_rq_pending_active") == 1, 15, "a pending request")
        resp = world.get("/one-connection/list")
        assert resp.status == 503
        assert world.stat("cluster.one-connection.upstream_rq_pending_overflow") == 1
    finally:
        assert held.release() == [200, 200]


def test_max_requests(world: World) -> None:
    held = Held(world, "/one-request/list", "one-request")
    try:
        held.send()
        wait_for(lambda: held.at_backend() == 1, 15, "the first request at the backend")
        resp = world.get("/one-request/list")
        assert resp.status == 503
        assert world.stat("cluster.one-request.upstream_rq_active_overflow") == 1
    finally:
        assert held.release() == [200]


def test_max_retries(world: World) -> None:
    resp = world.get("/no-retry-budget/list", [*FAIL, ("X-Echo-Attempts", "1")])
    assert resp.status == 503  # the same request on /flaky/list is retried and succeeds
    assert len(attempts(world.echo, resp)) == 1
    assert world.stat("cluster.no-retry-budget.upstream_rq_retry_overflow") == 1
