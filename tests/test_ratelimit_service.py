"""The global rate-limit service, end to end: real service processes over real gRPC, real Redis
(single, Cluster, Sentinel), limits pushed over a real ADS stream.

Counting tests run the services with ``--test-clock`` set to the same instant, so a window
never changes under a test and hour or day windows are crossed without waiting.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from envoy.service.ratelimit.v3 import rls_pb2
from google.protobuf import json_format, struct_pb2

from controlplane.certs import CertificateAuthority
from controlplane.ratelimit.config import RESOURCE_TYPE

# The harness asserts too (its waits say what they waited for): rewritten like a test module,
# and its Redis fixtures (redis_server, shared_redis, redis_cluster, redis_sentinel) loaded.
pytest_plugins = ["tests.redis_harness"]

from tests.redis_harness import (  # noqa: E402
    FakeAds,
    RateLimitClient,
    RateLimitService,
    RedisCluster,
    RedisSentinel,
    RedisServer,
    descriptor,
    domain_resource,
    wait_until,
)

OK = rls_pb2.RateLimitResponse.Code.OK
OVER = rls_pb2.RateLimitResponse.Code.OVER_LIMIT
MINUTE, HOUR = rls_pb2.RateLimitResponse.RateLimit.Unit.MINUTE, rls_pb2.RateLimitResponse.RateLimit.Unit.HOUR
DAY_START = 1_799_971_200  # a day boundary: every window (second to day) starts here

LIMITS: dict[str, dict[str, Any]] = {
    "per-consumer": {"name": "api-per-consumer", "windows": {"minute": 5, "hour": 8}},
    "crowd": {"name": "crowd", "windows": {"minute": 30, "hour": 50, "day": 60}},
    "login": {"name": "login-per-ip", "windows": {"minute": 3}},
    "shadow": {"name": "shadow-probe", "shadow": True, "windows": {"minute": 2}},
}


def metadata(response: Any) -> dict[str, Any]:
    return json_format.MessageToDict(response.dynamic_metadata)


def headers(response: Any) -> dict[str, str]:
    return {h.key: h.value for h in response.response_headers_to_add}


def unavailable(client: RateLimitClient, descriptors: list[Any], timeout: float = 5) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        client.ask(descriptors, timeout=timeout)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value
    return caught.value


def consumer(name: str) -> list[Any]:
    return [
        descriptor("per-consumer", "minute", ("consumer", name)),
        descriptor("per-consumer", "hour", ("consumer", name)),
    ]


# -- one control plane, one Redis, two service processes shared by the counting tests -----


@pytest.fixture(scope="module")
def ads() -> Iterator[FakeAds]:
    server = FakeAds()
    server.push([domain_resource("gateway", LIMITS)], "v1")
    yield server
    server.close()


@pytest.fixture(scope="module")
def services(
    tmp_path_factory: pytest.TempPathFactory, ads: FakeAds, shared_redis: RedisServer
) -> Iterator[list[RateLimitService]]:
    workdir = tmp_path_factory.mktemp("ratelimit")
    started = [RateLimitService(workdir, ads.address, ["--redis", shared_redis.url]) for _ in range(2)]
    try:
        for service in started:
            service.start(wait_config=False)
        for service in started:
            wait_until(lambda s=service: s.config() is not None, 10, "the first config")  # type: ignore[misc]
        yield started
    finally:
        for service in started:
            service.stop()


@pytest.fixture(scope="module")
def clients(services: list[RateLimitService]) -> Iterator[list[RateLimitClient]]:
    made = [RateLimitClient(s.address) for s in services]
    yield made
    for c in made:
        c.close()


def at(services: list[RateLimitService], when: float) -> None:
    for service in services:
        service.set_clock(when)


def test_over_limit_answer_says_which_window_refused_and_when_to_retry(
    services: list[RateLimitService], clients: list[RateLimitClient]
) -> None:
    at(services, DAY_START + 10)
    client = clients[0]
    for i in range(5):
        ok = client.ask(consumer("answer"))
        assert ok.overall_code == OK
        assert [s.limit_remaining for s in ok.statuses] == [4 - i, 7 - i]
        assert not headers(ok) and not metadata(ok)
    refused = client.ask(consumer("answer"))
    assert refused.overall_code == OVER
    minute, hour = refused.statuses
    assert (minute.code, minute.limit_remaining, minute.duration_until_reset.seconds) == (OVER, 0, 50)
    assert (minute.current_limit.requests_per_unit, minute.current_limit.unit) == (5, MINUTE)
    assert (hour.code, hour.limit_remaining, hour.duration_until_reset.seconds) == (OK, 3, 3590)
    assert (hour.current_limit.requests_per_unit, hour.current_limit.unit) == (8, HOUR)
    assert headers(refused) == {"retry-after": "50"}
    assert metadata(refused) == {
        "limit": "api-per-consumer",
        "source": "test.policy.yaml#/limits/per-consumer",
        "window": "minute",
        "shadow": [],
    }
    # The refused request consumed nothing: the hour has 3 left for the next minutes.
    for service in services:
        service.advance(60)
    assert [client.ask(consumer("answer")).overall_code for _ in range(4)] == [OK, OK, OK, OVER]
    refused = client.ask(consumer("answer"))
    assert metadata(refused)["window"] == "hour"
    assert headers(refused) == {"retry-after": str(3600 - 70)}
    # Another consumer in the same windows has its own budget.
    assert client.ask(consumer("someone-else")).overall_code == OK


def test_two_processes_allow_exactly_the_limit_under_concurrency_in_every_window(
    services: list[RateLimitService], clients: list[RateLimitClient]
) -> None:
    at(services, DAY_START + 5)
    wanted = [descriptor("crowd", w, ("consumer", "crowd")) for w in ("minute", "hour", "day")]

    def burst(per_process: int) -> int:
        futures = [
            c.stub.ShouldRateLimit.future(c.request(wanted), timeout=10) for _ in range(per_process) for c in clients
        ]
        answers = [f.result() for f in futures]
        return sum(a.overall_code == OK for a in answers)

    assert burst(50) == 30  # the minute's 30
    for service in services:
        service.advance(60)
    assert burst(50) == 20  # the hour's 50 (the 70 refused last minute counted nowhere)
    for service in services:
        service.advance(3600)
    assert burst(10) == 10  # the day's 60 (a new hour and minute)
    for service in services:
        service.advance(3600)
    assert burst(50) == 0  # the day is spent


def test_shadow_limit_never_refuses_and_shows_in_metadata_logs_and_metrics(
    services: list[RateLimitService], clients: list[RateLimitClient]
) -> None:
    service, client = services[0], clients[0]
    at([service], DAY_START + 3 * 86400)
    over_before = service.metric("ratelimit_decisions_total", limit="shadow-probe", outcome="shadow_over")
    ok_before = service.metric("ratelimit_decisions_total", limit="shadow-probe", outcome="ok")
    probe = [descriptor("shadow", "minute", ("remote_address", "198.51.100.7"))]
    answers = [client.ask(probe) for _ in range(5)]
    assert [a.overall_code for a in answers] == [OK] * 5
    assert [s.code for a in answers for s in a.statuses] == [OK] * 5
    assert [s.limit_remaining for a in answers for s in a.statuses] == [1, 0, 0, 0, 0]
    assert [metadata(a) for a in answers[:2]] == [{}, {}]
    assert [metadata(a) for a in answers[2:]] == [{"shadow": ["shadow-probe"]}] * 3
    assert service.metric("ratelimit_decisions_total", limit="shadow-probe", outcome="shadow_over") == over_before + 3
    assert service.metric("ratelimit_decisions_total", limit="shadow-probe", outcome="ok") == ok_before + 2
    # Counted whatever the limit says: the log tells how far past it the traffic went.
    line = "shadow limit shadow-probe (test.policy.yaml#/limits/shadow) over: 3 of 2 per minute for remote_address="
    wait_until(lambda: line in service.logs(), 5, "the shadow hit in the log")
    # Beside an enforced limit that refuses, the shadow one is named too.
    for _ in range(3):
        client.ask([descriptor("login", "minute", ("remote_address", "198.51.100.7"))])
    both = client.ask([*probe, descriptor("login", "minute", ("remote_address", "198.51.100.7"))])
    assert both.overall_code == OVER
    assert metadata(both) == {
        "limit": "login-per-ip",
        "source": "test.policy.yaml#/limits/login",
        "window": "minute",
        "shadow": ["shadow-probe"],
    }


def test_unknown_limit_window_or_domain_is_allowed_and_counted(
    services: list[RateLimitService], clients: list[RateLimitClient]
) -> None:
    service, client = services[0], clients[0]
    at([service], DAY_START + 4 * 86400)

    def unknown(reason: str) -> float:
        return service.metric("ratelimit_unknown_descriptors_total", reason=reason)

    before = {r: unknown(r) for r in ("limit", "window", "domain", "malformed")}
    for _ in range(3):
        client.ask([descriptor("login", "minute", ("remote_address", "192.0.2.1"))])
    answer = client.ask(
        [
            descriptor("removed-limit", "minute", ("consumer", "x")),
            descriptor("login", "day", ("remote_address", "192.0.2.1")),
            descriptor("login", "minute", ("remote_address", "192.0.2.1")),
        ]
    )
    assert [s.code for s in answer.statuses] == [OK, OK, OVER]  # the known one still refuses
    assert not answer.statuses[0].HasField("current_limit")
    from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2

    malformed = ratelimit_pb2.RateLimitDescriptor(entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key="x", value="y")])
    assert client.ask([malformed]).overall_code == OK
    assert client.ask([descriptor("login", "minute")], domain="other-domain").overall_code == OK
    after = {r: unknown(r) for r in before}
    assert {r: after[r] - before[r] for r in after} == {"limit": 1, "window": 1, "domain": 1, "malformed": 1}


def test_hits_addend_counts_that_many(services: list[RateLimitService], clients: list[RateLimitClient]) -> None:
    at(services[:1], DAY_START + 5 * 86400)
    client = clients[0]
    login = descriptor("login", "minute", ("remote_address", "192.0.2.50"))
    first = client.ask([login], hits=2)
    assert (first.overall_code, first.statuses[0].limit_remaining) == (OK, 1)
    assert client.ask([login], hits=2).overall_code == OVER  # 2 more do not fit in the 1 left
    assert (
        client.ask([descriptor("login", "minute", ("remote_address", "192.0.2.50"), hits=1)], hits=5)
        .statuses[0]
        .limit_remaining
        == 0
    )  # the descriptor's own hits_addend wins over the request's


def test_any_bytes_in_key_parts_make_distinct_safe_keys(
    services: list[RateLimitService], clients: list[RateLimitClient], shared_redis: RedisServer
) -> None:
    at(services[:1], DAY_START + 6 * 86400)
    client = clients[0]
    awkward = [
        (("header.x-api-key", "ab"),),
        (("header.x-api-key", "a"), ("b", "")),
        (("header.x-api-key:a", "b"),),
        (("header.x-api-key", "}{rl:*\r\n"),),
        (("header.x-api-key", "ключ-🔑"),),
        (("header.x-api-key", "k" * 10_000),),
        (),
    ]
    for parts in awkward:
        answer = client.ask([descriptor("login", "minute", *parts)])
        assert answer.statuses[0].limit_remaining == 2, parts  # each is its own bucket
    keys = shared_redis.command("KEYS", f"*:minute:{DAY_START + 6 * 86400}")
    assert len(keys) == len(awkward)
    assert all(re.fullmatch(r"rl:\{[A-Za-z0-9_-]{22}\}:minute:\d+", k) for k in keys), keys


def test_the_clock_moves_only_with_test_clock(tmp_path: Path, ads: FakeAds, shared_redis: RedisServer) -> None:
    service = RateLimitService(tmp_path, ads.address, ["--redis", shared_redis.url], test_clock=False).start()
    try:
        assert service.admin("POST", "/clock?advance=3600")[0] == 403
    finally:
        service.stop()


# -- configuration over xDS ------------------------------------------------------------------


@pytest.fixture
def rig(tmp_path: Path, shared_redis: RedisServer) -> Iterator[tuple[FakeAds, RateLimitService, RateLimitClient]]:
    """A control plane with nothing published yet, and a service following it."""
    server = FakeAds()
    service = RateLimitService(tmp_path, server.address, ["--redis", shared_redis.url]).start(wait_config=False)
    client = RateLimitClient(service.address)
    try:
        yield server, service, client
    finally:
        client.close()
        service.stop()
        server.close()


def test_unavailable_until_the_first_config_then_reconnects_and_keeps_serving(
    rig: tuple[FakeAds, RateLimitService, RateLimitClient],
) -> None:
    ads, service, client = rig
    wait_until(lambda: ads.requests, 10, "the service to subscribe")
    first = ads.requests[0]
    assert (first.type_url, list(first.resource_names), first.node.cluster) == (RESOURCE_TYPE, ["gateway"], "ratelimit")
    assert first.node.id.startswith("ratelimit-")
    login = [descriptor("login", "minute", ("remote_address", "192.0.2.9"))]
    assert "no rate-limit configuration" in str(unavailable(client, login).details())
    assert service.admin("GET", "/healthz")[0] == 503
    nonce = ads.push([domain_resource("gateway", {"login": {"windows": {"minute": 2}}})], "v1")
    ack = ads.answer_to(nonce)
    assert (ack.version_info, ack.HasField("error_detail")) == ("v1", False)
    service.set_clock(DAY_START + 7 * 86400)
    assert [client.ask(login).overall_code for _ in range(3)] == [OK, OK, OVER]
    wait_until(lambda: service.admin("GET", "/healthz")[0] == 200, 10, "/healthz 200")

    # The control plane goes away: the last config keeps serving, counting goes on.
    ads.stop()
    wait_until(lambda: "xDS stream to" in service.logs() and "ended" in service.logs(), 10, "the stream to drop")
    assert client.ask(login).overall_code == OVER
    # It comes back with a new version: the service reconnects and takes it.
    ads.push([domain_resource("gateway", {"login": {"windows": {"minute": 10}}})], "v2")
    ads.start()
    wait_until(lambda: service.config()["version"] == "v2", 15, "the service to reconnect and take v2")  # type: ignore[index]
    assert client.ask(login).overall_code == OK
    reconnect = [r for r in ads.requests if not r.response_nonce][-1]
    assert reconnect.version_info == "v1"  # it says what it holds


def test_bad_config_is_nacked_with_what_is_wrong_and_the_last_good_one_kept(
    rig: tuple[FakeAds, RateLimitService, RateLimitClient],
) -> None:
    ads, service, client = rig
    ads.answer_to(ads.push([domain_resource("gateway", {"login": {"windows": {"minute": 2}}})], "v1"))
    service.set_clock(DAY_START + 8 * 86400)
    bad = domain_resource("gateway", {"login": {"windows": {"minute": 2}}})
    typed = struct_pb2.Struct()
    typed.update({"domain": "gateway", "limits": {"login": {"windows": {"fortnight": 5, "minute": -1}}}})
    from xds.type.v3 import typed_struct_pb2

    bad.Pack(typed_struct_pb2.TypedStruct(type_url="controlplane.dev/ratelimit.v1.Domain", value=typed))
    nack = ads.answer_to(ads.push([bad], "v2"))
    assert nack.version_info == "v1"
    detail = nack.error_detail.message
    assert "domain 'gateway' at /limits/login/windows/fortnight: unknown window 'fortnight'" in detail, detail
    assert "/limits/login/windows/minute: a window's limit must be a whole number" in detail, detail
    assert "got -1" in detail, detail
    wrong_type = ads.answer_to(ads.push([bad], "v3", type_url="type.googleapis.com/envoy.config.cluster.v3.Cluster"))
    assert "subscribed to " + RESOURCE_TYPE in wrong_type.error_detail.message
    other = domain_resource("gateway", {})
    other.type_url = "type.googleapis.com/google.protobuf.Struct"
    assert "expected " + RESOURCE_TYPE in ads.answer_to(ads.push([other], "v4")).error_detail.message

    # v1 still rules: 2 per minute.
    login = [descriptor("login", "minute", ("remote_address", "192.0.2.10"))]
    assert [client.ask(login).overall_code for _ in range(3)] == [OK, OK, OVER]
    view = service.config()
    assert view is not None and view["version"] == "v1"
    assert service.metric("ratelimit_config_updates_total", result="rejected") == 3
    assert service.metric("ratelimit_config_info", version="v1") == 1


def test_changed_limit_keeps_every_counter(rig: tuple[FakeAds, RateLimitService, RateLimitClient]) -> None:
    ads, service, client = rig
    limits: dict[str, dict[str, Any]] = {"a": {"windows": {"minute": 3}}, "b": {"windows": {"minute": 5}}}
    ads.answer_to(ads.push([domain_resource("gateway", limits)], "v1"))
    service.set_clock(DAY_START + 9 * 86400)
    a, b = [descriptor("a", "minute", ("consumer", "k"))], [descriptor("b", "minute", ("consumer", "k"))]
    for _ in range(2):
        client.ask(a)
    for _ in range(3):
        client.ask(b)
    limits = {"a": {"windows": {"minute": 3}}, "b": {"windows": {"minute": 4}}, "c": {"windows": {"minute": 1}}}
    assert not ads.answer_to(ads.push([domain_resource("gateway", limits)], "v2")).HasField("error_detail")
    answer = client.ask(a)
    assert (answer.overall_code, answer.statuses[0].limit_remaining) == (OK, 0)  # 2 + 1 of 3
    answer = client.ask(b)
    assert (answer.overall_code, answer.statuses[0].limit_remaining) == (OK, 0)  # 3 + 1 of the new 4
    assert client.ask(b).overall_code == OVER


def test_mtls_to_the_control_plane(tmp_path: Path, shared_redis: RedisServer) -> None:
    ca = CertificateAuthority(tmp_path, "xds-ca")
    server = ca.issue("localhost", ["localhost", "127.0.0.1"])
    me = ca.issue("ratelimit-1", client=True, unit="ratelimit")
    ads = FakeAds(tls=(server.cert, server.key, ca.path))
    ads.push([domain_resource("gateway", {"login": {"windows": {"minute": 1}}})], "tls-v1")
    tls = ["--xds-ca", str(ca.path), "--xds-cert", str(me.cert), "--xds-key", str(me.key)]
    service = RateLimitService(tmp_path, ads.address, ["--redis", shared_redis.url], extra=tls)
    try:
        service.start()
        assert service.config()["version"] == "tls-v1"  # type: ignore[index]
    finally:
        service.stop()
        ads.close()


# -- Redis faults and deployments --------------------------------------------------------------


def test_redis_down_or_hung_answers_unavailable_and_recovers_without_restart(
    tmp_path: Path, ads: FakeAds, redis_server: RedisServer
) -> None:
    service = RateLimitService(tmp_path, ads.address, ["--redis", redis_server.url]).start()
    client = RateLimitClient(service.address)
    service.set_clock(DAY_START + 10 * 86400)
    login = [descriptor("login", "minute", ("remote_address", "192.0.2.20"))]
    try:
        assert client.ask(login).overall_code == OK
        redis_server.kill()
        assert "Redis at" in str(unavailable(client, login).details())
        assert service.metric("ratelimit_redis_errors_total", kind="connection") >= 1
        wait_until(lambda: service.admin("GET", "/healthz")[0] == 503, 10, "/healthz 503")
        redis_server.start()

        def counts_again() -> bool:
            # The restarted Redis has no script cached: the service loads it again by itself.
            try:
                crowd = [descriptor("crowd", "minute", ("consumer", "after-restart"))]
                return all(a.overall_code == OK for a in client.ask_many(crowd, 8))
            except grpc.RpcError:
                return False

        wait_until(counts_again, 10, "the service to count again")
        wait_until(lambda: service.admin("GET", "/ready")[0] == 200, 10, "/ready 200")

        # A hung Redis: UNAVAILABLE within the 100 ms timeout, long before the caller's 3 s deadline.
        redis_server.pause()
        try:
            assert "did not answer within 100 ms" in str(unavailable(client, login, timeout=3).details())
        finally:
            redis_server.resume()
        wait_until(lambda: client.ask(login).overall_code in (OK, OVER), 10, "the service to count again")
    finally:
        client.close()
        service.stop()


def test_redis_cluster_keeps_a_buckets_windows_on_one_shard(
    tmp_path: Path, ads: FakeAds, redis_cluster: RedisCluster
) -> None:
    service = RateLimitService(tmp_path, ads.address, ["--redis-cluster", redis_cluster.addresses]).start()
    client = RateLimitClient(service.address)
    service.set_clock(DAY_START + 11 * 86400)
    try:
        people = [f"user-{i}" for i in range(8)]
        everyone = [d for person in people for d in consumer(person)]  # 8 buckets in one request
        for i in range(5):
            answer = client.ask(everyone)
            assert answer.overall_code == OK
            assert {s.limit_remaining for s in answer.statuses[::2]} == {4 - i}
        assert client.ask(everyone).overall_code == OVER
        # Exact under concurrency on a cluster too.
        crowd = [descriptor("crowd", "minute", ("consumer", "cluster-crowd"))]
        assert sum(a.overall_code == OK for a in client.ask_many(crowd, 60)) == 30
        keys = redis_cluster.keys()
        assert sum(1 for on_node in keys.values() if on_node) >= 2, keys  # spread over shards
        windows_of: dict[str, set[tuple[int, str]]] = {}
        for port, on_node in keys.items():
            for key in on_node:
                windows_of.setdefault(key.split(":")[1], set()).add((port, key.split(":")[2]))
        assert len(windows_of) == len(people) + 1
        for found in windows_of.values():
            assert len({port for port, _ in found}) == 1, windows_of  # a bucket's windows on one shard
        assert sorted(len(found) for found in windows_of.values()) == [1] + [2] * len(people)
    finally:
        client.close()
        service.stop()


def test_redis_sentinel_follows_a_failover(tmp_path: Path, ads: FakeAds, redis_sentinel: RedisSentinel) -> None:
    backend = ["--redis-sentinel", redis_sentinel.addresses, "--sentinel-master", redis_sentinel.master_name]
    service = RateLimitService(tmp_path, ads.address, backend).start()
    client = RateLimitClient(service.address)
    service.set_clock(DAY_START + 12 * 86400)
    login = [descriptor("login", "minute", ("remote_address", "192.0.2.30"))]
    try:
        assert [client.ask(login).overall_code for _ in range(4)] == [OK, OK, OK, OVER]
        new_master = redis_sentinel.fail_over()

        def counts_on_new_master() -> bool:
            try:
                client.ask([descriptor("login", "minute", ("remote_address", "192.0.2.31"))])
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE
                return False
            return True

        wait_until(counts_on_new_master, 15, "the service to count on the promoted replica")
        assert new_master.command("KEYS", "rl:*")
    finally:
        client.close()
        service.stop()


# -- the real control plane ---------------------------------------------------------------------

SPEC = """
openapi: 3.0.3
info: {title: shop, version: "1"}
servers: [{url: /shop}]
paths:
  /login:
    post: {operationId: login, responses: {"200": {description: ok}}}
"""

POLICY = """
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
rateLimits:
  service: {endpoints: ["127.0.0.1:8081"]}
listeners:
  - {name: public, address: 127.0.0.1, port: 8080}
upstreams: [{name: backend, endpoints: ["127.0.0.1:9000"]}]
apis:
  - name: shop
    spec: spec.yaml
    upstream: backend
    operations:
      login:
        rateLimits:
          - {name: login, by: ip, minute: MINUTE, hour: 20}
"""


def test_limits_come_from_the_real_control_plane_and_follow_a_policy_edit(
    tmp_path: Path, shared_redis: RedisServer
) -> None:
    from tests.xds_harness import ControlPlaneProcess, http_get

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "spec.yaml").write_text(SPEC)
    (inputs / "policy.yaml").write_text(POLICY.replace("MINUTE", "5"))
    plane = ControlPlaneProcess([inputs], tmp_path).start()
    service = RateLimitService(tmp_path, f"127.0.0.1:{plane.xds_port}", ["--redis", shared_redis.url])
    client: RateLimitClient | None = None
    try:
        service.start()
        config = service.config()
        assert config is not None
        (limit_id, limit), *others = config["domains"]["gateway"].items()
        assert not others
        assert (limit["name"], limit["shadow"], limit["windows"]) == ("login", False, {"minute": 5, "hour": 20})
        assert limit["source"].endswith("policy.yaml#/apis/0/operations/login/rateLimits/0")

        def acked() -> float:
            # The control plane's /status lists Envoy's types only: its metrics count this one's ACKs.
            _status, text = http_get(plane.admin_port, "/metrics")
            found = re.search(r'^xds_acks_total\{type="TypedStruct"\} (\S+)$', text.decode(), re.M)
            return float(found.group(1)) if found else 0.0

        wait_until(acked, 10, "the control plane to see the service's ACK")
        client = RateLimitClient(service.address)
        service.set_clock(DAY_START + 13 * 86400)
        login = [descriptor(limit_id, "minute", ("remote_address", "192.0.2.40"))]
        assert [client.ask(login).overall_code for _ in range(6)] == [OK] * 5 + [OVER]

        # The operator raises the limit: the service takes it live, the address's count stays.
        version = config["version"]
        (inputs / "policy.yaml").write_text(POLICY.replace("MINUTE", "7"))
        wait_until(lambda: service.config()["version"] != version, 20, "the edited policy")  # type: ignore[index]
        assert [client.ask(login).overall_code for _ in range(3)] == [OK, OK, OVER]
        wait_until(lambda: acked() >= 2, 10, "the control plane to see the ACK of the edit")
    finally:
        if client is not None:
            client.close()
        service.stop()
        plane.stop()
