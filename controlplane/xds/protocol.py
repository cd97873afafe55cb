"""The xDS protocol state machines (state-of-the-world and delta) over a small stream interface.

They know nothing of gRPC: a :class:`Stream` gives requests and takes response bytes, so
tests drive them with a fake stream. ``fixed_type`` serves the per-type services (LDS,
RDS, CDS, EDS); ``None`` serves ADS, where each request names its type.

State of the world (per type on a stream):
- a request with a nonce that is not the last one sent is stale and ignored;
- a request with the last nonce ACKs (no ``error_detail``) or NACKs that response; a
  NACKed version is not sent again (Envoy keeps its last good config);
- a response is sent only when the client has a request open and what it would receive
  differs from what it has (a reconnecting Envoy that already has the current version,
  or a change that yields identical resources, gets nothing);
- listeners, clusters and scopes are always the full state; route configurations and
  endpoint sets are sent by name, only those that changed or were newly subscribed (as the
  protocol allows: Envoy keeps the ones a response leaves out), so that an edit to one
  route configuration of many sends that one;
- on ADS, pending types are answered in the order CDS, EDS, LDS, RDS.

Delta: subscriptions change by name (``*`` is the wildcard, the default for listeners and
clusters), ``initial_resource_versions`` tells what a reconnecting Envoy has, only changed
resources are sent and removed ones named in ``removed_resources``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..resources import Resources
from .cache import SnapshotCache
from .registry import Connection, Nack, Registry, TypeState, nack_sources
from .snapshot import FULL_STATE_TYPES, TYPE_ORDER, Snapshot

log = logging.getLogger("controlplane.xds")


class Stream(Protocol):
    peer: str
    identity: tuple[str, str] | None  # (node id, group) proven by a client certificate

    async def recv(self) -> Any | None:
        """The next request, or None when the client has closed the stream."""

    async def send(self, data: bytes) -> None: ...


@dataclass
class XdsContext:
    """What all streams share."""

    cache: SnapshotCache
    registry: Registry = field(default_factory=Registry)
    # Called with (connection, node) on the first request: returns the group, may refuse.
    authorize: Callable[[Connection, Any, Stream], Awaitable[None]] | None = None


def _group_of(node: Any) -> str:
    return node.cluster or "*"


async def _identify(ctx: XdsContext, conn: Connection, node: Any, stream: Stream) -> None:
    if stream.identity is not None:
        conn.node_id, conn.group = stream.identity
        conn.identity = "certificate"
    else:
        conn.node_id, conn.group = node.id, _group_of(node)
    v = node.user_agent_build_version.version
    conn.envoy_version = f"{node.user_agent_name}/{v.major_number}.{v.minor_number}.{v.patch}".strip("/")
    if ctx.authorize is not None:
        await ctx.authorize(conn, node, stream)
    ctx.registry.emit("identified", conn, "", {"node": node})


class _Loop:
    """Waits for either the next request or the next snapshot change.

    The wait on changes is kept across requests (one task per change, not one per request:
    with a thousand streams syncing, creating and cancelling it per request was 10% of the
    server's time), and it is taken on the change event read *before* the snapshot that was
    answered, so a change published while answering is never missed."""

    def __init__(self, stream: Stream, cache: SnapshotCache):
        self.stream = stream
        self.cache = cache
        self.recv_task: asyncio.Task[Any] | None = None
        self.change_task: asyncio.Task[Any] | None = None
        self.change_event: asyncio.Event | None = None

    async def next(self, event: asyncio.Event) -> tuple[bool, Any]:
        """(True, request-or-None) when a request came, (False, None) when ``event`` is set."""
        if self.recv_task is None:
            self.recv_task = asyncio.ensure_future(self.stream.recv())
        if self.change_task is None or self.change_event is not event:
            if self.change_task is not None:
                self.change_task.cancel()
            self.change_task, self.change_event = asyncio.ensure_future(event.wait()), event
        done, _ = await asyncio.wait({self.recv_task, self.change_task}, return_when=asyncio.FIRST_COMPLETED)
        if self.recv_task in done:
            task, self.recv_task = self.recv_task, None
            return True, task.result()
        self.change_task = self.change_event = None
        return False, None

    def close(self) -> None:
        for task in (self.recv_task, self.change_task):
            if task is not None:
                task.cancel()


# What a node that may not have the gateway's secrets sees of them: nothing (a named
# subscription is never answered over SotW; delta says the names do not exist).
_NO_SECRETS = Snapshot(resources={})


def _secrets_for(conn: Connection, snapshot: Snapshot) -> Snapshot:
    """Certificates and keys go only to nodes whose client certificate proved them members of
    a group allowed to have them (``gateway.secretNodeGroups``): never over plaintext, never
    to a group named only in the node's own request."""
    if conn.identity == "certificate" and conn.group in snapshot.secret_groups:
        return snapshot
    if not conn.secrets_refused:
        conn.secrets_refused = True
        why = "its channel is not mTLS" if conn.identity != "certificate" else f"its group {conn.group!r} may not"
        log.warning("node %r asked for certificates and keys: refused (%s)", conn.node_id, why)
    return _NO_SECRETS


def _ordered(types: list[str]) -> list[str]:
    rank = {t: i for i, t in enumerate(TYPE_ORDER)}
    return sorted(types, key=lambda t: rank.get(t, len(rank)))


# -- state of the world -------------------------------------------------------------------


@dataclass
class _Watch:
    pending: bool = False  # the client has a request we have not answered
    # Route configurations and endpoint sets (not full state): name → version of what the
    # client was sent, what the response in flight replaced, and what it rejected.
    known: dict[str, str] = field(default_factory=dict)
    in_flight: dict[str, str | None] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    resync: str = ""  # the version a reconnecting client says it has


async def serve_sotw(stream: Stream, ctx: XdsContext, fixed_type: str | None = None) -> None:
    await _serve(stream, ctx, "sotw", fixed_type, _Watch, _sotw_request, _sotw_respond)


async def _serve(
    stream: Stream,
    ctx: XdsContext,
    protocol: str,
    fixed_type: str | None,
    new_state: Callable[[], Any],
    on_request: Callable[[XdsContext, Connection, Any, str, Any], None],
    respond: Callable[[Stream, XdsContext, Connection, Any, str, Snapshot], Awaitable[None]],
) -> None:
    """The loop both protocols share: answer what is pending, then wait for a request or a change."""
    conn = ctx.registry.open(protocol, stream.peer)
    loop = _Loop(stream, ctx.cache)
    states: dict[str, Any] = {}
    identified = False
    try:
        while True:
            event = ctx.cache.change_event()  # before the snapshot: a later change wakes the wait
            snapshot = ctx.cache.get(conn.group) if identified else None
            if snapshot is not None:
                for type_url in _ordered(list(states)):
                    visible = snapshot if type_url != Resources.SECRET else _secrets_for(conn, snapshot)
                    await respond(stream, ctx, conn, states[type_url], type_url, visible)
            got_request, request = await loop.next(event)
            if not got_request:
                continue
            if request is None:
                return
            if not identified:
                await _identify(ctx, conn, request.node, stream)
                identified = True
            type_url = fixed_type or request.type_url
            if type_url:
                on_request(ctx, conn, states.setdefault(type_url, new_state()), type_url, request)
    finally:
        loop.close()
        ctx.registry.close(conn)


def _sotw_request(ctx: XdsContext, conn: Connection, watch: _Watch, type_url: str, req: Any) -> None:
    state = conn.state(type_url)
    if req.response_nonce:
        if req.response_nonce != state.sent_nonce:
            return  # stale: an answer to a response that has been superseded
        if req.HasField("error_detail"):
            snapshot = ctx.cache.get(conn.group)
            state.nack = Nack(
                state.sent_version,
                req.error_detail.message,
                time.time(),
                nack_sources(snapshot, type_url, state.sent_names, req.error_detail.message),
            )
            # The client kept what it had; what it refused is not sent again until it changes.
            for name, before in watch.in_flight.items():
                refused = watch.known.get(name)
                if refused is not None:
                    watch.rejected[name] = refused
                if before is None:
                    watch.known.pop(name, None)
                else:
                    watch.known[name] = before
            ctx.registry.emit("nack", conn, type_url, {"version": state.sent_version})
        else:
            for name in watch.in_flight:
                watch.rejected.pop(name, None)
            state.acked_version = req.version_info
            ctx.registry.emit("ack", conn, type_url, {"version": req.version_info})
        watch.in_flight = {}
    elif req.version_info and not state.sent_version:
        # A reconnecting Envoy says what it already has: no need to send it again.
        if type_url in FULL_STATE_TYPES:
            state.sent_version = state.acked_version = req.version_info
        else:
            watch.resync = req.version_info
    names = set(req.resource_names)
    if type_url in FULL_STATE_TYPES and (not names or "*" in names):
        state.subscribed = None
    else:
        names.discard("*")
        state.subscribed = names
    watch.pending = True


async def _sotw_respond(
    stream: Stream, ctx: XdsContext, conn: Connection, watch: _Watch, type_url: str, snapshot: Snapshot
) -> None:
    if not watch.pending:
        return
    if type_url not in FULL_STATE_TYPES:
        await _sotw_respond_named(stream, ctx, conn, watch, type_url, snapshot)
        return
    state = conn.state(type_url)
    entries = snapshot.of(type_url)
    names = sorted(entries) if state.subscribed is None else sorted(n for n in state.subscribed if n in entries)
    version = snapshot.version_of(type_url, None if state.subscribed is None else state.subscribed)
    if version == state.sent_version and frozenset(names) == state.sent_names:
        return
    if version == state.sent_version and state.sent_names == frozenset() and state.acked_version == version:
        # reconnected with the current version: what it has is what it would get
        state.sent_names = frozenset(names)
        return
    await _sotw_send(stream, ctx, conn, watch, type_url, snapshot, names, version)


async def _sotw_respond_named(
    stream: Stream, ctx: XdsContext, conn: Connection, watch: _Watch, type_url: str, snapshot: Snapshot
) -> None:
    """Route configurations and endpoint sets: like delta, a response carries only what
    changed or was newly subscribed (the protocol requires the full state for listeners and
    clusters only, and Envoy keeps the named resources a response leaves out). One changed
    route configuration among many is sent alone."""
    state = conn.state(type_url)
    entries = snapshot.of(type_url)
    subscribed = state.subscribed or set()
    names = sorted(n for n in subscribed if n in entries)
    version = snapshot.version_of(type_url, subscribed)
    if watch.resync:
        if watch.resync == version:  # reconnected with everything current
            watch.known = {n: entries[n].version for n in names}
            state.sent_version = state.acked_version = version
        watch.resync = ""
    for gone in [n for n in watch.known if n not in subscribed]:
        del watch.known[gone]  # unsubscribed: a later subscription sends it again
    send = [n for n in names if entries[n].version not in (watch.known.get(n), watch.rejected.get(n))]
    if send:
        await _sotw_send(stream, ctx, conn, watch, type_url, snapshot, send, version)
    elif version != state.sent_version:
        # The subscription changed and the client already has all of it: in sync, nothing to send.
        state.sent_version = state.acked_version = version
    if any(watch.rejected.get(n) == entries[n].version for n in names) and state.nack is not None:
        state.nack.version = version  # it still lacks what it refused: NACKED until that changes


async def _sotw_send(
    stream: Stream,
    ctx: XdsContext,
    conn: Connection,
    watch: _Watch,
    type_url: str,
    snapshot: Snapshot,
    names: list[str],
    version: str,
) -> None:
    state = conn.state(type_url)
    data, nonce = snapshot.sotw_response(type_url, tuple(names), version)
    await stream.send(data)
    watch.pending = False
    if type_url not in FULL_STATE_TYPES:
        entries = snapshot.of(type_url)
        watch.in_flight = {n: watch.known.get(n) for n in names}
        watch.known.update((n, entries[n].version) for n in names)
    state.sent_version, state.sent_nonce, state.sent_at = version, nonce, time.time()
    state.sent_names = frozenset(names)
    state.pushes += 1
    ctx.registry.emit("send", conn, type_url, {"bytes": len(data), "version": version, "resources": len(names)})


# -- delta --------------------------------------------------------------------------------


@dataclass
class _DeltaType:
    wildcard: bool = False
    subscribed: set[str] = field(default_factory=set)
    known: dict[str, str] = field(default_factory=dict)  # what the client has: name → version
    missing_told: set[str] = field(default_factory=set)  # subscribed names told not to exist
    in_flight: dict[str, str] = field(default_factory=dict)  # nonce → version
    started: bool = False


async def serve_delta(stream: Stream, ctx: XdsContext, fixed_type: str | None = None) -> None:
    await _serve(stream, ctx, "delta", fixed_type, _DeltaType, _delta_request, _delta_respond)


def _delta_request(ctx: XdsContext, conn: Connection, dt: _DeltaType, type_url: str, req: Any) -> None:
    state = conn.state(type_url)
    if not dt.started:
        dt.started = True
        dt.wildcard = type_url in FULL_STATE_TYPES and not req.resource_names_subscribe
        dt.known.update(req.initial_resource_versions)
    for name in req.resource_names_subscribe:
        if name == "*":
            dt.wildcard = True
        else:
            dt.subscribed.add(name)
    for name in req.resource_names_unsubscribe:
        if name == "*":
            dt.wildcard = False
        else:
            dt.subscribed.discard(name)
            dt.missing_told.discard(name)
            if not dt.wildcard:
                dt.known.pop(name, None)  # the client dropped it: a later subscribe resends it
    state.subscribed = None if dt.wildcard else set(dt.subscribed)
    if req.response_nonce:
        version = dt.in_flight.pop(req.response_nonce, None)
        if version is None:
            return  # stale or unknown nonce
        if req.HasField("error_detail"):
            snapshot = ctx.cache.get(conn.group)
            state.nack = Nack(
                version,
                req.error_detail.message,
                time.time(),
                nack_sources(snapshot, type_url, state.sent_names, req.error_detail.message),
            )
            ctx.registry.emit("nack", conn, type_url, {"version": version})
        else:
            state.acked_version = version
            ctx.registry.emit("ack", conn, type_url, {"version": version})


async def _delta_respond(
    stream: Stream, ctx: XdsContext, conn: Connection, dt: _DeltaType, type_url: str, snapshot: Snapshot
) -> None:
    if not dt.started:
        return
    state: TypeState = conn.state(type_url)
    entries = snapshot.of(type_url)
    wanted = set(entries) if dt.wildcard else dt.subscribed
    changed = [entries[n] for n in sorted(wanted) if n in entries and dt.known.get(n) != entries[n].version]
    removed = sorted(n for n in dt.known if n not in entries or n not in wanted)
    # named subscriptions to resources that do not exist are answered, so Envoy stops waiting
    missing = sorted(n for n in dt.subscribed if n not in entries and n not in dt.known and n not in dt.missing_told)
    if not changed and not removed and not missing:
        return
    version = snapshot.version_of(type_url, None if dt.wildcard else dt.subscribed)
    data, nonce = snapshot.delta_response(type_url, tuple(e.name for e in changed), tuple(removed + missing), version)
    await stream.send(data)
    for e in changed:
        dt.known[e.name] = e.version
    for n in removed:
        dt.known.pop(n, None)
    dt.missing_told.update(missing)
    dt.in_flight[nonce] = version
    state.sent_version, state.sent_nonce, state.sent_at = version, nonce, time.time()
    state.sent_names = frozenset(e.name for e in changed)
    state.pushes += 1
    ctx.registry.emit(
        "send", conn, type_url, {"bytes": len(data), "version": version, "resources": len(changed), "removed": removed}
    )
