"""Snapshots per node group, and the change notification streams wait on.

A node's group is the ``cluster`` of its node (or the organizational unit of its client
certificate when the channel is mTLS); a group without a snapshot of its own gets the
default one (``*``). Until the first complete compile is set, there is no snapshot at all
and no stream is answered: an empty configuration would delete every listener.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from .snapshot import Snapshot

DEFAULT_GROUP = "*"
# Groups with configurations of their own only (mesh sidecars are "backend.<name>").
OWN_GROUP_PREFIXES = ("backend.",)


@dataclass(frozen=True)
class Published:
    snapshot: Snapshot
    at: float  # monotonic time the change was seen (file change, or when set)


class SnapshotCache:
    def __init__(self) -> None:
        self._by_group: dict[str, Published] = {}
        self._changed = asyncio.Event()
        self.generation = 0

    def set(self, snapshot: Snapshot, group: str = DEFAULT_GROUP, changed_at: float | None = None) -> bool:
        """Publish ``snapshot`` (already checked); False when the group already has that version."""
        snapshot.check()
        current = self._by_group.get(group)
        if current is not None and current.snapshot.version == snapshot.version:
            return False
        self._by_group[group] = Published(snapshot, changed_at if changed_at is not None else time.monotonic())
        self.generation += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        return True

    def get(self, group: str) -> Snapshot | None:
        published = self.published(group)
        return published.snapshot if published else None

    def published(self, group: str) -> Published | None:
        own = self._by_group.get(group)
        if own is not None or group.startswith(OWN_GROUP_PREFIXES):
            return own  # a sidecar never gets the gateway's configuration
        return self._by_group.get(DEFAULT_GROUP)

    def remove(self, group: str) -> None:
        """A group whose configuration is gone (a backend removed from the mesh): its nodes
        get no configuration at all, never the default group's."""
        if self._by_group.pop(group, None) is not None:
            self.generation += 1
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()

    def groups(self) -> list[str]:
        return list(self._by_group)

    @property
    def ready(self) -> bool:
        return bool(self._by_group)

    async def wait_change(self) -> None:
        """Return at the next ``set`` that changes something."""
        await self._changed.wait()

    def change_event(self) -> asyncio.Event:
        return self._changed
