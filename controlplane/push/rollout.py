"""Whether every connected gateway Envoy took what is published: ACKed, NACKed, or not yet."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from ..xds.cache import DEFAULT_GROUP, SnapshotCache
from ..xds.registry import Connection, Registry
from ..xds.status import SHORT


@dataclass
class Rollout:
    version: str  # the snapshot's
    synced: list[str] = field(default_factory=list)  # nodes
    pending: list[str] = field(default_factory=list)
    nacks: list[dict[str, Any]] = field(default_factory=list)  # node, type, message, sources
    seconds: float = 0.0

    @property
    def done(self) -> bool:
        return bool(self.nacks) or not self.pending

    def as_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "envoys": len(self.synced) + len(self.pending) + len({n["node"] for n in self.nacks}),
            "acked": sorted(self.synced),
            "pending": sorted(self.pending),
            "nacks": self.nacks,
            "seconds": round(self.seconds, 3),
        }


def look(registry: Registry, cache: SnapshotCache) -> Rollout:
    """Where the gateway's Envoys are with the snapshot published for them now."""
    snapshot = cache.get(DEFAULT_GROUP)
    out = Rollout(snapshot.version if snapshot is not None else "")
    if snapshot is None:
        return out
    for conn in registry.connections.values():
        if not conn.node_id or cache.get(conn.group) is not snapshot:  # a mesh sidecar: its own snapshot
            continue
        state, nacks = _node(conn, snapshot)
        if nacks:
            out.nacks.extend(nacks)
        elif state:
            out.synced.append(conn.node_id)
        else:
            out.pending.append(conn.node_id)
    return out


def _node(conn: Connection, snapshot: Any) -> tuple[bool, list[dict[str, Any]]]:
    synced, nacks = True, []
    for type_url, state in conn.types.items():
        current = snapshot.version_of(type_url, state.subscribed)
        if state.acked_version == current:
            continue
        synced = False
        if state.nack is not None and state.nack.version == current:
            nacks.append(
                {
                    "node": conn.node_id,
                    "type": SHORT.get(type_url, type_url),
                    "message": state.nack.message,
                    "sources": [f"{s.file}#{s.pointer}" if s.pointer else s.file for s in state.nack.sources],
                }
            )
    return synced and bool(conn.types), nacks


async def wait(registry: Registry, cache: SnapshotCache, timeout: float) -> Rollout:
    """Until every connected Envoy ACKed what is published, or one NACKed it, or ``timeout``."""
    started = time.monotonic()
    woken = asyncio.Event()

    def observe(*_: Any) -> None:
        woken.set()

    registry.observers.append(observe)
    try:
        while True:
            woken.clear()
            current = look(registry, cache)
            remaining = timeout - (time.monotonic() - started)
            if current.done or remaining <= 0:
                current.seconds = time.monotonic() - started
                return current
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(woken.wait(), remaining)
    finally:
        registry.observers.remove(observe)
