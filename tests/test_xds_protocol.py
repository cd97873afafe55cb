"""The xDS state machines over a fake stream: ordering, ACK/NACK, stale nonces, reconnects,
subscriptions, removals and no-op changes. Snapshots are real compiles of real specs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

from controlplane import compile
from controlplane.resources import Resources
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.protocol import XdsContext, serve_delta, serve_sotw
from controlplane.xds.registry import Sync, sync_state
from controlplane.xds.snapshot import Snapshot, build_snapshot, snapshot_from_resources

LDS, RDS, CDS, EDS = Resources.LISTENER, Resources.ROUTE, Resources.CLUSTER, Resources.ENDPOINT

SPEC = """
openapi: 3.0.3
info: {title: t, version: "1"}
servers: [{url: /}]
paths:
%s
"""
POLICY = """
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
listeners: [{name: public, port: 8080}, {name: admin, port: 8081}]
upstreams:
  - {name: one, endpoints: [%s]}
  - {name: two, endpoints: [%s]}
apis:
  - {name: a, spec: a.yaml, upstream: one, listeners: [public]}
  - {name: b, spec: b.yaml, upstream: two, listeners: [admin]}
"""


def _paths(paths: list[str]) -> str:
    return "\n".join(f"  {p}:\n    get: {{responses: {{'200': {{description: ok}}}}}}" for p in paths)


def make_snapshot(
    tmp: Path,
    a_paths: list[str],
    two: str = '"10.0.0.2:80"',
    one: str = '"10.0.0.1:80"',
    b_paths: tuple[str, ...] = ("/b",),
) -> Snapshot:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "a.yaml").write_text(SPEC % _paths(a_paths))
    (tmp / "b.yaml").write_text(SPEC % _paths(list(b_paths)))
    (tmp / "policy.yaml").write_text(POLICY % (one, two))
    result = compile([tmp])
    assert result.ok, result.diagnostics
    assert result.resources is not None
    return snapshot_from_resources(result.resources)


class FakeStream:
    def __init__(self, identity: tuple[str, str] | None = None):
        self.peer = "fake:1"
        self.identity = identity
        self.requests: asyncio.Queue[Any] = asyncio.Queue()
        self.responses: asyncio.Queue[bytes] = asyncio.Queue()
        self.asks = self.taken = 0  # the server's reads of a request: begun, and returned
        self.asked = asyncio.Event()

    async def recv(self) -> Any:
        self.asks += 1
        self.asked.set()
        request = await self.requests.get()
        self.taken += 1
        return request

    async def send(self, data: bytes) -> None:
        await self.responses.put(data)


NODE = base_pb2.Node(id="envoy-1", cluster="gateway")


def sotw(type_url: str, names: list[str] = (), version: str = "", nonce: str = "", error: str = "") -> Any:  # type: ignore[assignment]
    req = discovery_pb2.DiscoveryRequest(
        node=NODE, type_url=type_url, resource_names=list(names), version_info=version, response_nonce=nonce
    )
    if error:
        req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return req


def delta(
    type_url: str,
    subscribe: list[str] = (),
    unsubscribe: list[str] = (),
    nonce: str = "",  # type: ignore[assignment]
    initial: dict[str, str] | None = None,
    error: str = "",
) -> Any:
    req = discovery_pb2.DeltaDiscoveryRequest(
        node=NODE,
        type_url=type_url,
        resource_names_subscribe=list(subscribe),
        resource_names_unsubscribe=list(unsubscribe),
        response_nonce=nonce,
    )
    req.initial_resource_versions.update(initial or {})
    if error:
        req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
    return req


class Harness:
    def __init__(self, delta_mode: bool = False):
        self.cache = SnapshotCache()
        self.ctx = XdsContext(self.cache)
        self.delta_mode = delta_mode
        self.streams: list[tuple[FakeStream, asyncio.Task[None]]] = []

    def open(self, identity: tuple[str, str] | None = None) -> FakeStream:
        stream = FakeStream(identity)
        serve = serve_delta if self.delta_mode else serve_sotw
        self.streams.append((stream, asyncio.ensure_future(serve(stream, self.ctx))))
        return stream

    async def close(self) -> None:
        for stream, task in self.streams:
            await stream.requests.put(None)
            await asyncio.wait_for(task, 2)


async def response(stream: FakeStream, delta_mode: bool = False, timeout: float = 2) -> Any:
    data = await asyncio.wait_for(stream.responses.get(), timeout)
    cls = discovery_pb2.DeltaDiscoveryResponse if delta_mode else discovery_pb2.DiscoveryResponse
    return cls.FromString(data)


# A request of no type: the server reads it and changes nothing.
NO_OP = discovery_pb2.DiscoveryRequest()


async def nothing(stream: FakeStream) -> None:
    """No response is due. Proven, not waited for: once the server has read every request put
    so far (a no-op one last) and asks for the next, it has sent whatever was due (it answers
    before it reads again, and sees any snapshot set before this call)."""
    await stream.requests.put(NO_OP)
    while not (stream.requests.empty() and stream.asks > stream.taken):
        stream.asked.clear()
        await stream.asked.wait()
    assert stream.responses.empty(), "unexpected response"


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


def names_of(resp: Any) -> list[str]:
    out = []
    for any_msg in resp.resources:
        msg = _message(resp.type_url)
        any_msg.Unpack(msg)
        out.append(getattr(msg, "name", "") or msg.cluster_name)
    return sorted(out)


def _message(type_url: str) -> Any:
    from google.protobuf import descriptor_pool, message_factory

    desc = descriptor_pool.Default().FindMessageTypeByName(type_url.rsplit("/", 1)[1])
    return message_factory.GetMessageClass(desc)()


# -- state of the world -----------------------------------------------------------------------


def test_nothing_is_answered_before_the_first_complete_compile(tmp_path: Path) -> None:
    async def go() -> None:
        h = Harness()
        s = h.open()
        await s.requests.put(sotw(LDS))
        await nothing(s)
        h.cache.set(make_snapshot(tmp_path, ["/a"]))
        resp = await response(s)
        assert resp.type_url == LDS and names_of(resp) == ["admin", "public"]
        await h.close()

    run(go())


def test_ads_answers_pending_types_in_cds_eds_lds_rds_order(tmp_path: Path) -> None:
    async def go() -> None:
        h = Harness()
        s = h.open()
        for req in (sotw(RDS, ["public", "admin"]), sotw(LDS), sotw(EDS, ["one", "two"]), sotw(CDS)):
            await s.requests.put(req)
        await nothing(s)  # all four pending when the snapshot arrives
        h.cache.set(make_snapshot(tmp_path, ["/a"]))
        order = [(await response(s)).type_url for _ in range(4)]
        assert order == [CDS, EDS, LDS, RDS]
        await h.close()

    run(go())


def test_ack_holds_until_a_change_and_only_changed_types_are_resent(tmp_path: Path) -> None:
    async def go() -> None:
        h = Harness()
        h.cache.set(make_snapshot(tmp_path / "1", ["/a"]))
        s = h.open()
        got = {}
        for req in (sotw(CDS), sotw(EDS, ["one", "two"]), sotw(LDS), sotw(RDS, ["public", "admin"])):
            await s.requests.put(req)
            resp = await response(s)
            got[resp.type_url] = resp
        for resp in got.values():  # ACK everything
            await s.requests.put(
                sotw(
                    resp.type_url, names_of(resp) if resp.type_url in (EDS, RDS) else [], resp.version_info, resp.nonce
                )
            )
        await nothing(s)
        conn = next(iter(h.ctx.registry.connections.values()))
        snap = h.cache.get("gateway")
        assert snap is not None
        for t in got:
            assert sync_state(conn.state(t), snap.version_of(t, conn.state(t).subscribed)) == Sync.SYNCED

        # the same content compiled again: nothing to publish, nothing sent
        assert not h.cache.set(make_snapshot(tmp_path / "2", ["/a"]))
        await nothing(s)

        # one new operation on api a: only the route configuration that holds it is sent
        # (state of the world needs the whole set for listeners and clusters only)
        h.cache.set(make_snapshot(tmp_path / "3", ["/a", "/a2"]))
        resp = await response(s)
        assert resp.type_url == RDS and names_of(resp) == ["public"]
        assert resp.version_info == h.cache.get("gateway").version_of(RDS, {"public", "admin"})  # type: ignore[union-attr]
        await nothing(s)
        await h.close()

    run(go())


def test_stale_nonce_is_ignored(tmp_path: Path) -> None:
    async def go() -> None:
        h = Harness()
        h.cache.set(make_snapshot(tmp_path / "1", ["/a"]))
        s = h.open()
        await s.requests.put(sotw(CDS))
        first = await response(s)
        await s.requests.put(sotw(CDS, [], first.version_info, first.nonce))
        h.cache.set(make_snapshot(tmp_path / "2", ["/a"], two='"10.0.0.2:80", "cluster-two.internal:80"'))
        second = await response(s)
        assert second.nonce != first.nonce
        # a late NACK of the first response must not be taken as a NACK of the second
        await s.requests.put(sotw(CDS, [], first.version_info, first.nonce, error="late"))
        await nothing(s)
        conn = next(iter(h.ctx.registry.connections.values()))
        assert conn.state(CDS).nack is None
        await h.close()

    run(go())


def test_nack_is_recorded_with_its_source_and_not_resent(tmp_path: Path) -> None:
    async def go() -> None:
        h = Harness()
        h.cache.set(make_snapshot(tmp_path, ["/a"]))
        s = h.open()
        await s.requests.put(sotw(RDS, ["public"]))
        resp = await response(s)
        message = "Error adding/updating route configuration: regex '/a/...' RE2 program too large in route a.GET /a"
        await s.requests.put(sotw(RDS, ["public"], "", resp.nonce, error=message))
        await nothing(s)
        conn = next(iter(h.ctx.registry.connections.values()))
        state = conn.state(RDS)
        assert state.nack is not None and state.nack.message == message
        assert any(src.file.endswith("a.yaml") and src.pointer == "/paths/~1a/get" for src in state.nack.sources)
        snap = h.cache.get("gateway")
        assert snap is not None
        assert sync_state(state, snap.version_of(RDS, {"public"})) == Sync.NACKED
        await h.close()

    run(go())


def test_a_refused_route_configuration_is_not_resent_and_stays_nacked_until_it_changes(tmp_path: Path) -> None:
    async def go() -> None:
        h = Harness()
        h.cache.set(make_snapshot(tmp_path / "1", ["/a"]))
        s = h.open()
        await s.requests.put(sotw(RDS, ["public", "admin"]))
        first = await response(s)
        await s.requests.put(sotw(RDS, ["public", "admin"], first.version_info, first.nonce))
        conn = next(iter(h.ctx.registry.connections.values()))
        state = conn.state(RDS)

        def sync() -> str:
            snap = h.cache.get("gateway")
            assert snap is not None
            return sync_state(state, snap.version_of(RDS, {"public", "admin"}))

        h.cache.set(make_snapshot(tmp_path / "2", ["/a", "/a2"]))  # public changes; Envoy refuses it
        bad = await response(s)
        assert names_of(bad) == ["public"]
        await s.requests.put(sotw(RDS, ["public", "admin"], first.version_info, bad.nonce, error="refused public"))
        await nothing(s)
        assert sync() == Sync.NACKED
        h.cache.set(make_snapshot(tmp_path / "3", ["/a", "/a2"], b_paths=("/b", "/b2")))  # admin changes
        other = await response(s)
        assert names_of(other) == ["admin"]  # not the refused public again
        await s.requests.put(sotw(RDS, ["public", "admin"], other.version_info, other.nonce))
        await nothing(s)
        assert sync() == Sync.NACKED  # it still lacks the current public
        h.cache.set(make_snapshot(tmp_path / "4", ["/a", "/a3"], b_paths=("/b", "/b2")))  # public fixed
        fixed = await response(s)
        assert names_of(fixed) == ["public"]
        await s.requests.put(sotw(RDS, ["public", "admin"], fixed.version_info, fixed.nonce))
        await nothing(s)
        assert sync() == Sync.SYNCED
        await h.close()

    run(go())


def test_reconnect_with_current_version_gets_no_push_old_version_does(tmp_path: Path) -> None:
    async def go() -> None:
        h = Harness()
        snap = make_snapshot(tmp_path / "1", ["/a"])
        h.cache.set(snap)
        s = h.open()
        await s.requests.put(sotw(LDS, [], snap.version_of(LDS)))
        await nothing(s)
        old = h.open()
        await old.requests.put(sotw(LDS, [], "some-old-version"))
        resp = await response(old)
        assert resp.version_info == snap.version_of(LDS)
        # the up-to-date one still gets later changes
        new = make_snapshot(tmp_path / "2", ["/a"], two='"10.0.0.2:80", "10.0.0.3:80"')
        h.cache.set(new)
        await nothing(s)  # listeners did not change
        await h.close()

    run(go())


def test_reconnect_with_current_route_version_gets_nothing_then_only_changes(tmp_path: Path) -> None:
    async def go() -> None:
        h = Harness()
        snap = make_snapshot(tmp_path / "1", ["/a"])
        h.cache.set(snap)
        s = h.open()
        await s.requests.put(sotw(RDS, ["public", "admin"], snap.version_of(RDS, {"public", "admin"})))
        await nothing(s)
        old = h.open()
        await old.requests.put(sotw(RDS, ["public", "admin"], "some-old-version"))
        assert names_of(await response(old)) == ["admin", "public"]
        h.cache.set(make_snapshot(tmp_path / "2", ["/a", "/a2"]))
        assert names_of(await response(s)) == ["public"]
        await h.close()

    run(go())


def test_sotw_unsubscribe_and_same_bytes_for_every_stream(tmp_path: Path) -> None:
    async def go() -> None:
        h = Harness()
        h.cache.set(make_snapshot(tmp_path, ["/a"]))
        s1, s2 = h.open(), h.open()
        for s in (s1, s2):
            await s.requests.put(sotw(EDS, ["one", "two"]))
        r1, r2 = await response(s1), await response(s2)
        assert [a.SerializeToString() for a in r1.resources] == [a.SerializeToString() for a in r2.resources]
        await s2.requests.put(sotw(EDS, ["one", "two"], r2.version_info, r2.nonce))
        # unsubscribing from "one" needs no response: the client has "two"
        await s1.requests.put(sotw(EDS, ["two"], r1.version_info, r1.nonce))
        await nothing(s1)
        conn = h.ctx.registry.connections[1]
        snap = h.cache.get("gateway")
        assert snap is not None
        assert sync_state(conn.state(EDS), snap.version_of(EDS, {"two"})) == Sync.SYNCED
        # both change: s1 gets "two" only, s2 both
        h.cache.set(make_snapshot(tmp_path / "2", ["/a"], one='"10.0.0.7:80"', two='"10.0.0.8:80"'))
        assert names_of(await response(s1)) == ["two"]
        r4 = await response(s2)
        assert names_of(r4) == ["one", "two"]
        # subscribing to "one" again sends it, and only it
        await s1.requests.put(
            sotw(EDS, ["one", "two"], r4.version_info, h.ctx.registry.connections[1].state(EDS).sent_nonce)
        )
        assert names_of(await response(s1)) == ["one"]
        await h.close()

    run(go())


# -- delta --------------------------------------------------------------------------------


def test_delta_wildcard_changes_and_removals(tmp_path: Path) -> None:
    async def go() -> None:
        h = Harness(delta_mode=True)
        h.cache.set(make_snapshot(tmp_path / "1", ["/a"]))
        s = h.open()
        await s.requests.put(delta(CDS))
        first = await response(s, True)
        assert sorted(r.name for r in first.resources) == ["one", "two"] and not first.removed_resources
        await s.requests.put(delta(CDS, nonce=first.nonce))
        await nothing(s)
        # upstream "two" changes from EDS to DNS endpoints: only it is sent
        h.cache.set(make_snapshot(tmp_path / "2", ["/a"], two='"two.internal:80"'))
        changed = await response(s, True)
        assert [r.name for r in changed.resources] == ["two"]
        await h.close()

    run(go())


def test_delta_named_subscriptions_unsubscribe_missing_and_reconnect(tmp_path: Path) -> None:
    async def go() -> None:
        h = Harness(delta_mode=True)
        snap = make_snapshot(tmp_path / "1", ["/a"])
        h.cache.set(snap)
        s = h.open()
        await s.requests.put(delta(RDS, ["public", "nope"]))
        resp = await response(s, True)
        assert [r.name for r in resp.resources] == ["public"]
        assert list(resp.removed_resources) == ["nope"]  # told it does not exist
        await s.requests.put(delta(RDS, nonce=resp.nonce))
        await s.requests.put(delta(RDS, unsubscribe=["public"]))
        await nothing(s)
        h.cache.set(make_snapshot(tmp_path / "2", ["/a", "/a2"]))  # public changes, but nobody wants it
        await nothing(s)
        await s.requests.put(delta(RDS, ["admin"]))
        resp = await response(s, True)
        assert [r.name for r in resp.resources] == ["admin"]

        # a reconnecting Envoy that has the current versions gets nothing
        current = h.cache.get("gateway")
        assert current is not None
        versions = {n: e.version for n, e in current.of(LDS).items()}
        again = h.open()
        await again.requests.put(delta(LDS, initial=versions))
        await nothing(again)
        await h.close()

    run(go())


def test_delta_removal_and_nack(tmp_path: Path) -> None:
    async def go() -> None:
        h = Harness(delta_mode=True)
        h.cache.set(make_snapshot(tmp_path / "1", ["/a"]))
        s = h.open()
        await s.requests.put(delta(EDS, ["one", "two"]))
        resp = await response(s, True)
        await s.requests.put(delta(EDS, nonce=resp.nonce, error="bad endpoint"))
        await nothing(s)
        conn = next(iter(h.ctx.registry.connections.values()))
        assert conn.state(EDS).nack is not None
        # "two" becomes a DNS upstream: its EDS resource disappears
        h.cache.set(make_snapshot(tmp_path / "2", ["/a"], two='"two.internal:80"'))
        resp = await response(s, True)
        assert list(resp.removed_resources) == ["two"] and not resp.resources
        await h.close()

    run(go())


def test_certificate_identity_wins_over_the_declared_node(tmp_path: Path) -> None:
    async def go() -> None:
        h = Harness()
        h.cache.set(make_snapshot(tmp_path, ["/a"]))
        s = h.open(identity=("gw-from-cert", "*"))
        await s.requests.put(sotw(LDS))
        await response(s)
        conn = next(iter(h.ctx.registry.connections.values()))
        assert conn.node_id == "gw-from-cert" and conn.identity == "certificate"
        await h.close()

    run(go())


def test_streams_that_get_the_same_response_share_one_bytes_object(tmp_path: Path) -> None:
    """Built once per snapshot, with one nonce: no per-stream copy of a big response."""

    async def go() -> None:
        for delta_mode in (False, True):
            h = Harness(delta_mode=delta_mode)
            h.cache.set(make_snapshot(tmp_path / str(delta_mode), ["/a"]))
            s1, s2 = h.open(), h.open()
            for s in (s1, s2):
                await s.requests.put(delta(RDS, ["public"]) if delta_mode else sotw(RDS, ["public"]))
            raw1 = await asyncio.wait_for(s1.responses.get(), 2)
            raw2 = await asyncio.wait_for(s2.responses.get(), 2)
            assert raw1 is raw2
            # and each stream's ACK of that shared nonce is taken
            cls = discovery_pb2.DeltaDiscoveryResponse if delta_mode else discovery_pb2.DiscoveryResponse
            resp = cls.FromString(raw1)
            for s in (s1, s2):
                ack = (
                    delta(RDS, nonce=resp.nonce) if delta_mode else sotw(RDS, ["public"], resp.version_info, resp.nonce)
                )
                await s.requests.put(ack)
            await nothing(s1)
            for conn in h.ctx.registry.connections.values():
                assert conn.state(RDS).acked_version == conn.state(RDS).sent_version
            await h.close()

    run(go())


def test_a_snapshot_reuses_the_entries_of_resources_passed_again(tmp_path: Path) -> None:
    """The server hands unchanged resources over as the same bytes objects: their entries
    (hash, wire forms) are not built again; new bytes, even equal ones, are."""
    snap = make_snapshot(tmp_path, ["/a"])
    same = {t: {n: e.value for n, e in entries.items()} for t, entries in snap.resources.items()}
    again = build_snapshot(same, snap.references, snap.sources, previous=snap)
    assert all(again.of(t)[n] is e for t, entries in snap.resources.items() for n, e in entries.items())
    copies = {t: {n: bytes(bytearray(v)) for n, v in values.items()} for t, values in same.items()}
    rebuilt = build_snapshot(copies, snap.references, snap.sources, previous=snap)
    assert rebuilt.version == snap.version
    assert all(rebuilt.of(t)[n] is not e for t, entries in snap.resources.items() for n, e in entries.items())


# -- the watcher ---------------------------------------------------------------------------
WATCHED_POLICY = """
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
upstreams: [{name: one, endpoints: ["10.0.0.1:80"]}]
apis: [{name: a, spec: a.yaml, upstream: one}]
"""


def _watched_plane(tmp: Path, quiet: float, max_delay: float) -> Any:
    from controlplane.server import ControlPlane, ServeOptions

    (tmp / "a.yaml").write_text(SPEC % _paths(["/base"]))
    (tmp / "policy.yaml").write_text(WATCHED_POLICY)
    return ControlPlane(
        ServeOptions(
            [tmp],
            xds_address="127.0.0.1:0",
            admin_address="127.0.0.1:0",
            poll_interval=0.02,
            quiet_period=quiet,
            max_delay=max_delay,
            in_process=True,
            background_validation=False,
        )
    )


async def _served(plane: Any, operations: int, timeout: float = 30.0) -> None:
    """Wait until the served configuration has ``operations`` operations (a positive signal)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not (plane.report.ok and plane.report.operations == operations):
        assert asyncio.get_running_loop().time() < deadline, f"not served: {plane.report.as_json()}"
        await asyncio.sleep(0.02)


def test_a_lone_edit_is_compiled_without_waiting_for_the_quiet_period(tmp_path: Path) -> None:
    """With a one-minute quiet period and max delay, an edit is still served within seconds."""

    async def go() -> None:
        plane = _watched_plane(tmp_path, quiet=60.0, max_delay=120.0)
        await plane.start()
        try:
            await _served(plane, 1)
            (tmp_path / "a.yaml").write_text(SPEC % _paths(["/base", "/added"]))
            await _served(plane, 2, timeout=30.0)
            assert plane.compiles == 2
        finally:
            await plane.stop()

    asyncio.run(go())


def test_a_burst_of_writes_costs_at_most_two_compiles_and_its_last_state_is_served(tmp_path: Path) -> None:
    async def go() -> None:
        plane = _watched_plane(tmp_path, quiet=1.0, max_delay=30.0)
        await plane.start()
        try:
            await _served(plane, 1)
            started = plane.compiles
            paths = ["/base"]
            for i in range(20):  # each write seen by the watcher (it polls every 20 ms)
                paths.append(f"/burst{i}")
                (tmp_path / "a.yaml").write_text(SPEC % _paths(paths))
                await asyncio.sleep(0.03)
            await _served(plane, 21)
            burst = plane.compiles - started
            # A later lone edit is compiled after the burst's compiles: once it is served,
            # the burst has cost all it will.
            (tmp_path / "a.yaml").write_text(SPEC % _paths([*paths, "/after"]))
            await _served(plane, 22)
            assert plane.compiles - started == burst + 1
            assert 1 <= burst <= 2, f"{burst} compiles for one burst"
        finally:
            await plane.stop()

    asyncio.run(go())
