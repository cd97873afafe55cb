"""What every connected Envoy was sent, and what it said about it (for status, CSDS, metrics)."""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..ir import Source
from .snapshot import Snapshot


class Sync:
    SYNCED = "SYNCED"
    STALE = "STALE"
    NACKED = "NACKED"
    NOT_SENT = "NOT_SENT"


@dataclass
class Nack:
    version: str
    message: str
    at: float
    sources: list[Source] = field(default_factory=list)


@dataclass
class TypeState:
    """One resource type on one stream."""

    subscribed: set[str] | None = None  # None: wildcard
    sent_version: str = ""
    sent_nonce: str = ""
    sent_at: float = 0.0
    sent_names: frozenset[str] = frozenset()
    acked_version: str = ""
    nack: Nack | None = None
    pushes: int = 0


@dataclass
class Connection:
    """One stream from one Envoy."""

    stream_id: int
    protocol: str  # "sotw" or "delta"
    peer: str
    node_id: str = ""
    group: str = ""
    identity: str = "node"  # where node_id comes from: "node" (self-declared) or "certificate"
    envoy_version: str = ""
    secrets_refused: bool = False  # it asked for certificates it may not have (logged once)
    connected_at: float = field(default_factory=time.time)
    types: dict[str, TypeState] = field(default_factory=dict)

    def state(self, type_url: str) -> TypeState:
        return self.types.setdefault(type_url, TypeState())


class Registry:
    """Connections by stream id; observers are told about sends, ACKs and NACKs."""

    def __init__(self) -> None:
        self.connections: dict[int, Connection] = {}
        self._ids = itertools.count(1)
        self.observers: list[Callable[[str, Connection, str, dict[str, Any]], None]] = []

    def open(self, protocol: str, peer: str) -> Connection:
        conn = Connection(next(self._ids), protocol, peer)
        self.connections[conn.stream_id] = conn
        self.emit("open", conn, "", {})
        return conn

    def close(self, conn: Connection) -> None:
        self.connections.pop(conn.stream_id, None)
        self.emit("close", conn, "", {})

    def emit(self, event: str, conn: Connection, type_url: str, data: dict[str, Any]) -> None:
        for observer in self.observers:
            observer(event, conn, type_url, data)

    def by_node(self, node_id: str) -> list[Connection]:
        return [c for c in self.connections.values() if c.node_id == node_id]


def sync_state(state: TypeState, current_version: str) -> str:
    if not state.sent_version:
        return Sync.NOT_SENT
    if state.nack is not None and state.nack.version == state.sent_version:
        return Sync.NACKED
    if state.acked_version == current_version and state.sent_version == current_version:
        return Sync.SYNCED
    return Sync.STALE


def nack_sources(snapshot: Snapshot | None, type_url: str, sent: frozenset[str], message: str) -> list[Source]:
    """The spec or policy places that produced what Envoy rejected, found by name in its message.

    Envoy names the listener, cluster or route configuration it refused, and often the
    route, regex or path inside it; every known name that appears in the message counts.
    With nothing recognisable, a single resource sent is the culprit.
    """
    if snapshot is None:
        return []
    found: list[Source] = []
    for (t, name), source in snapshot.sources.items():
        if t == type_url and name in sent and _mentions(message, name):
            found.append(source)
    details = [src for needle, src in snapshot.details_for(type_url) if _mentions(message, needle)]
    if details:
        found = details + [s for s in found if s not in details]
    if not found and len(sent) == 1:
        src = snapshot.sources.get((type_url, next(iter(sent))))
        if src is not None:
            found.append(src)
    return found


def _mentions(message: str, needle: str) -> bool:
    if not needle:
        return False
    return re.search(r"(?<![\w.-])" + re.escape(needle) + r"(?![\w-])", message) is not None or (
        len(needle) > 8 and needle in message
    )
