"""Simulated Envoys for ``xds_bench.py``: many ADS streams per process, over grpc.aio.

Each client opens one ADS stream (its own channel and TCP connection) and behaves like
Envoy: CDS (wildcard) first, then EDS for the EDS clusters it received, then LDS
(wildcard), then RDS for the ``rds.route_config_name`` of the listeners' HTTP connection
managers. Every response is ACKed (same nonce, the response's version, the same names);
nothing is ever NACKed. State of the world uses ``StreamAggregatedResources``, delta
``DeltaAggregatedResources`` (wildcard for CDS and LDS, named subscriptions for EDS and
RDS, an ACK is a request carrying the response's nonce).

Responses arrive as raw bytes (identity deserializer) and are walked at the wire level:
only the top-level fields are read, and a resource is decoded only when its content is
needed (clusters and listeners, which are small). A RouteConfiguration is never decoded:
its names are those subscribed (SotW) or the ``Resource.name`` (delta).

A worker process runs ``n`` clients on one asyncio loop and reports each ACK to the
driver as ``(client, type, version, received_at, acked_at, bytes)`` (``time.time()``),
batched on a multiprocessing queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from multiprocessing.connection import Connection
from typing import Any

CDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
RDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SRDS = "type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration"
SHORT = {CDS: "CDS", EDS: "EDS", LDS: "LDS", SRDS: "SRDS", RDS: "RDS"}
SOTW_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
DELTA_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


# -- protobuf wire format, just enough to walk a response ------------------------------------
def _varint(buf: bytes, i: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, i
        shift += 7


def fields(buf: bytes, start: int = 0, end: int | None = None) -> list[tuple[int, int, int]]:
    """Top-level length-delimited fields of a message as (number, start, end) offsets.

    Varint and fixed-width fields are skipped (the messages walked here have none that matter).
    """
    end = len(buf) if end is None else end
    out = []
    i = start
    while i < end:
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 2:
            n, i = _varint(buf, i)
            out.append((number, i, i + n))
            i += n
        elif wire == 0:
            _, i = _varint(buf, i)
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            raise ValueError(f"unexpected wire type {wire}")
    return out


def parse_sotw(raw: bytes) -> tuple[str, list[tuple[int, int]], str, str]:
    """DiscoveryResponse → (version_info, [Any offsets], type_url, nonce)."""
    version = type_url = nonce = ""
    resources = []
    for number, s, e in fields(raw):
        if number == 2:
            resources.append((s, e))
        elif number == 1:
            version = raw[s:e].decode()
        elif number == 4:
            type_url = raw[s:e].decode()
        elif number == 5:
            nonce = raw[s:e].decode()
    return version, resources, type_url, nonce


def parse_delta(raw: bytes) -> tuple[str, list[tuple[str, int, int]], str, list[str], str]:
    """DeltaDiscoveryResponse → (system_version_info, [(name, Any start, Any end)], type_url, removed, nonce)."""
    version = type_url = nonce = ""
    resources: list[tuple[str, int, int]] = []
    removed = []
    for number, s, e in fields(raw):
        if number == 2:  # Resource: version 1, resource 2 (Any), name 3
            name, any_s, any_e = "", 0, 0
            for n2, s2, e2 in fields(raw, s, e):
                if n2 == 3:
                    name = raw[s2:e2].decode()
                elif n2 == 2:
                    any_s, any_e = s2, e2
            resources.append((name, any_s, any_e))
        elif number == 1:
            version = raw[s:e].decode()
        elif number == 4:
            type_url = raw[s:e].decode()
        elif number == 6:
            removed.append(raw[s:e].decode())
        elif number == 5:
            nonce = raw[s:e].decode()
    return version, resources, type_url, removed, nonce


def any_value(raw: bytes, s: int, e: int) -> bytes:
    for number, vs, ve in fields(raw, s, e):
        if number == 2:
            return raw[vs:ve]
    return b""


class _Decoders:
    """Protobuf classes, imported once per worker (after spawn)."""

    def __init__(self) -> None:
        from envoy.config.cluster.v3 import cluster_pb2
        from envoy.config.core.v3 import base_pb2
        from envoy.config.listener.v3 import listener_pb2
        from envoy.config.route.v3 import scoped_route_pb2
        from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
        from envoy.service.discovery.v3 import discovery_pb2

        self.Cluster = cluster_pb2.Cluster
        self.EDS = cluster_pb2.Cluster.EDS
        self.Listener = listener_pb2.Listener
        self.Hcm = http_connection_manager_pb2.HttpConnectionManager
        self.Scope = scoped_route_pb2.ScopedRouteConfiguration
        self.Node = base_pb2.Node
        self.Request = discovery_pb2.DiscoveryRequest
        self.DeltaRequest = discovery_pb2.DeltaDiscoveryRequest

    def cluster(self, value: bytes) -> tuple[str, bool]:
        c = self.Cluster.FromString(value)
        return c.name, c.type == self.EDS

    def route_names(self, value: bytes) -> tuple[set[str], bool]:
        """Route configuration names a listener asks for, and whether it uses scoped routes."""
        listener = self.Listener.FromString(value)
        out = set()
        scoped = False
        for chain in [*listener.filter_chains, listener.default_filter_chain]:
            for f in chain.filters:
                if f.typed_config.type_url == HCM_TYPE:
                    hcm = self.Hcm.FromString(f.typed_config.value)
                    if hcm.HasField("rds"):
                        out.add(hcm.rds.route_config_name)
                    scoped = scoped or hcm.HasField("scoped_routes")
        return out, scoped

    def scope_route(self, value: bytes) -> tuple[str, str]:
        scope = self.Scope.FromString(value)
        return scope.name, scope.route_configuration_name


# -- one simulated Envoy ---------------------------------------------------------------------
class Client:
    def __init__(self, index: int, channel: Any, delta: bool, dec: _Decoders, report: list[tuple[Any, ...]]):
        self.index = index
        self.channel = channel
        self.delta = delta
        self.dec = dec
        self.report = report
        self.node = dec.Node(id=f"bench-{index}", cluster="bench")
        self.call: Any = None
        self.errors: list[str] = []
        # SotW: last ACKed version and nonce per type; subscribed names (EDS, RDS)
        self.version: dict[str, str] = {}
        self.nonce: dict[str, str] = {}
        self.names: dict[str, set[str]] = {EDS: set(), RDS: set()}
        self.listener_routes: set[str] = set()  # route configurations named by listeners
        self.scopes: dict[str, str] = {}  # scope → its route configuration (scoped routes)
        self.requested: set[str] = set()
        # delta: what the client has, per type: name → is-EDS (clusters) or route names (listeners)
        self.clusters: dict[str, bool] = {}
        self.listeners: dict[str, set[str]] = {}
        self.sent_node = False

    def _delta_routes(self) -> set[str]:
        listed = set().union(*self.listeners.values()) if self.listeners else set()
        return listed | set(self.scopes.values())

    async def run(self) -> None:
        method = DELTA_METHOD if self.delta else SOTW_METHOD
        self.call = self.channel.stream_stream(method, request_serializer=_identity, response_deserializer=_identity)()
        try:
            await self.request(CDS)
            while True:
                raw = await self.call.read()
                if raw is _EOF():
                    return
                received = time.time()
                if self.delta:
                    await self.on_delta(raw, received)
                else:
                    await self.on_sotw(raw, received)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # reported, not raised: one broken stream must not stop the others
            self.errors.append(repr(exc))
            self.report.append(("error", self.index, repr(exc)[:300]))

    async def request(self, type_url: str, subscribe: Iterable[str] = (), unsubscribe: Iterable[str] = ()) -> None:
        """A new subscription (or a change of the names): the first request of a type, or a names update."""
        self.requested.add(type_url)
        node = None if self.sent_node else self.node
        self.sent_node = True
        if self.delta:
            req = self.dec.DeltaRequest(
                node=node,
                type_url=type_url,
                resource_names_subscribe=sorted(subscribe),
                resource_names_unsubscribe=sorted(unsubscribe),
            )
        else:
            req = self.dec.Request(
                node=node,
                type_url=type_url,
                version_info=self.version.get(type_url, ""),
                response_nonce=self.nonce.get(type_url, ""),
                resource_names=sorted(self.names.get(type_url, ())),
            )
        await self.call.write(req.SerializeToString())

    async def on_sotw(self, raw: bytes, received: float) -> None:
        version, resources, type_url, nonce = parse_sotw(raw)
        follow: list[tuple[str, set[str]]] = []
        if type_url == CDS:
            eds = set()
            for s, e in resources:
                name, is_eds = self.dec.cluster(any_value(raw, s, e))
                if is_eds:
                    eds.add(name)
            if eds != self.names[EDS] or EDS not in self.requested:
                follow.append((EDS, eds))
        elif type_url == EDS:
            if LDS not in self.requested:
                follow.append((LDS, set()))
        elif type_url == LDS:
            routes: set[str] = set()
            scoped = False
            for s, e in resources:
                names, is_scoped = self.dec.route_names(any_value(raw, s, e))
                routes |= names
                scoped = scoped or is_scoped
            self.listener_routes = routes
            if scoped and SRDS not in self.requested:
                follow.append((SRDS, set()))
            wanted = routes | set(self.scopes.values())
            if wanted and (wanted != self.names[RDS] or RDS not in self.requested):
                follow.append((RDS, wanted))
        elif type_url == SRDS:
            self.scopes = dict(self.dec.scope_route(any_value(raw, s, e)) for s, e in resources)
            wanted = self.listener_routes | set(self.scopes.values())
            if wanted != self.names[RDS] or RDS not in self.requested:
                follow.append((RDS, wanted))
        self.version[type_url], self.nonce[type_url] = version, nonce
        ack = self.dec.Request(
            type_url=type_url,
            version_info=version,
            response_nonce=nonce,
            resource_names=sorted(self.names.get(type_url, ())),
        )
        await self.call.write(ack.SerializeToString())
        acked = time.time()
        self.report.append(("ack", self.index, SHORT.get(type_url, type_url), version, received, acked, len(raw)))
        for t, names in follow:
            if t in self.names:
                self.names[t] = names
            await self.request(t)

    async def on_delta(self, raw: bytes, received: float) -> None:
        version, resources, type_url, removed, nonce = parse_delta(raw)
        follow: list[tuple[str, set[str], set[str]]] = []
        if type_url == CDS:
            before = {n for n, eds in self.clusters.items() if eds}
            for name, s, e in resources:
                self.clusters[name] = self.dec.cluster(any_value(raw, s, e))[1]
            for name in removed:
                self.clusters.pop(name, None)
            after = {n for n, eds in self.clusters.items() if eds}
            if after != before or EDS not in self.requested:
                follow.append((EDS, after - before, before - after))
        elif type_url == EDS:
            if LDS not in self.requested:
                follow.append((LDS, set(), set()))
        elif type_url in (LDS, SRDS):
            before = self._delta_routes()
            scoped = False
            for name, s, e in resources:
                if type_url == LDS:
                    self.listeners[name], is_scoped = self.dec.route_names(any_value(raw, s, e))
                    scoped = scoped or is_scoped
                else:
                    self.scopes[name] = self.dec.scope_route(any_value(raw, s, e))[1]
            for name in removed:
                (self.listeners if type_url == LDS else self.scopes).pop(name, None)
            after = self._delta_routes()
            if scoped and SRDS not in self.requested:
                follow.append((SRDS, set(), set()))
            if after != before or (after and RDS not in self.requested):
                follow.append((RDS, after - before, before - after))
        ack = self.dec.DeltaRequest(type_url=type_url, response_nonce=nonce)
        await self.call.write(ack.SerializeToString())
        acked = time.time()
        self.report.append(("ack", self.index, SHORT.get(type_url, type_url), version, received, acked, len(raw)))
        for t, sub, unsub in follow:
            await self.request(t, sub, unsub)


def _identity(b: bytes) -> bytes:
    return b


def _EOF() -> Any:
    import grpc

    return grpc.aio.EOF


# -- a worker process ------------------------------------------------------------------------
async def _worker(worker: int, target: str, delta: bool, indices: list[int], events: Any, control: Connection) -> None:
    import grpc

    dec = _Decoders()
    report: list[tuple[Any, ...]] = []
    loop = asyncio.get_running_loop()
    options = [
        ("grpc.max_receive_message_length", -1),
        ("grpc.use_local_subchannel_pool", 1),  # one TCP connection per client, like separate Envoys
        ("grpc.enable_retries", 0),
    ]
    channels = [grpc.aio.insecure_channel(target, options=options) for _ in indices]
    await asyncio.gather(*(asyncio.wait_for(ch.channel_ready(), 120) for ch in channels))
    commands: asyncio.Queue[Any] = asyncio.Queue()
    loop.add_reader(control.fileno(), lambda: commands.put_nowait(control.recv()))
    events.put([("ready", worker, len(channels))])
    clients: list[Client] = []
    tasks: list[asyncio.Task[None]] = []

    async def flush() -> None:
        while True:
            await asyncio.sleep(0.02)
            if report:
                batch = report[:]
                del report[:]
                events.put(batch)

    flusher = asyncio.ensure_future(flush())
    try:
        while True:
            cmd = await commands.get()
            if cmd[0] == "start":
                start_at = cmd[1]
                await asyncio.sleep(max(0.0, start_at - time.time()))
                clients = [Client(i, ch, delta, dec, report) for i, ch in zip(indices, channels, strict=True)]
                tasks = [asyncio.ensure_future(c.run()) for c in clients]
            elif cmd[0] == "cpu":
                events.put([("cpu", worker, time.process_time())])
            elif cmd[0] == "stop":
                for t in tasks:
                    t.cancel()
                with contextlib.suppress(BaseException):
                    await asyncio.gather(*tasks, return_exceptions=True)
                for ch in channels:
                    await ch.close()
                break
    finally:
        flusher.cancel()
        if report:
            events.put(report[:])
        events.put([("stopped", worker, time.process_time())])


def worker_main(worker: int, target: str, delta: bool, indices: list[int], events: Any, control: Connection) -> None:
    """Entry point of a spawned worker process."""
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(_worker(worker, target, delta, indices, events, control))
