"""Prometheus metrics of the control plane, fed by registry events and compiles.

Convergence is the time from a change (the file change the watcher saw, or the publish)
to the last ACK of the new configuration by every Envoy connected at that moment.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .cache import SnapshotCache
from .registry import Connection, Registry, Sync, sync_state

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2, 5, 10, 30)


def _short(type_url: str) -> str:
    return type_url.rsplit(".", 1)[-1]


@dataclass
class _Rollout:
    version: str
    started: float  # monotonic
    waiting: set[int] = field(default_factory=set)  # stream ids not yet in sync


class Metrics:
    def __init__(self, registry: Registry, cache: SnapshotCache):
        self.prometheus = CollectorRegistry()
        r = self.prometheus
        self.streams = Gauge("xds_connected_streams", "Open xDS streams", ["protocol"], registry=r)
        self.pushes = Counter("xds_pushes_total", "Responses sent", ["type"], registry=r)
        self.push_bytes = Counter("xds_push_bytes_total", "Bytes of responses sent", ["type"], registry=r)
        self.acks = Counter("xds_acks_total", "ACKs received", ["type"], registry=r)
        self.nacks = Counter("xds_nacks_total", "NACKs received", ["type"], registry=r)
        self.compile_seconds = Histogram(
            "controlplane_compile_seconds", "Duration of compiles", registry=r, buckets=_LATENCY_BUCKETS
        )
        self.compiles = Counter("controlplane_compiles_total", "Compiles by result", ["result"], registry=r)
        self.last_compile_ok = Gauge("controlplane_last_compile_ok", "1 if the last compile succeeded", registry=r)
        self.config_operations = Gauge("controlplane_operations", "Operations in the served config", registry=r)
        self.convergence = Histogram(
            "xds_convergence_seconds",
            "From a change to the last ACK of it by every connected Envoy",
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.feed_entries = Gauge(
            "controlplane_reputation_feed_entries", "Entries of the copy of a URL feed in force", ["feed"], registry=r
        )
        self.feed_failures = Counter(
            "controlplane_reputation_feed_fetch_failures", "Failed fetches of a URL feed", ["feed"], registry=r
        )
        self.feed_fetched = Gauge(
            "controlplane_reputation_feed_last_success_timestamp_seconds",
            "When the copy of a URL feed in force was fetched",
            ["feed"],
            registry=r,
        )
        self.registry = registry
        self.cache = cache
        self.certificates: dict[str, tuple[str, str]] = {}  # secret → (file, expiry): set by the server
        r.register(_CertificateCollector(self))
        self.rollouts: dict[str, _Rollout] = {}  # group → rollout in progress
        self.last_convergence: float | None = None
        registry.observers.append(self._on_event)

    def published(self, group: str, version: str, changed_at: float) -> None:
        waiting = {c.stream_id for c in self.registry.connections.values() if c.node_id}
        self.rollouts[group] = _Rollout(version, changed_at, waiting)
        for stream_id in list(waiting):
            self._check(self.registry.connections[stream_id])

    def _in_sync(self, conn: Connection) -> bool:
        snapshot = self.cache.get(conn.group)
        if snapshot is None or not conn.types:
            return False
        return all(
            sync_state(state, snapshot.version_of(t, state.subscribed)) == Sync.SYNCED
            for t, state in conn.types.items()
            if t in snapshot.resources
        )

    def _check(self, conn: Connection, closed: bool = False) -> None:
        """Only the connection that ACKed (or closed) can have changed its state: checking every
        waiting connection on every ACK made a rollout cost O(streams²)."""
        for group, rollout in list(self.rollouts.items()):
            if conn.stream_id not in rollout.waiting:
                continue
            if closed or self._in_sync(conn):
                rollout.waiting.discard(conn.stream_id)
            if not rollout.waiting:
                self.last_convergence = time.monotonic() - rollout.started
                self.convergence.observe(self.last_convergence)
                del self.rollouts[group]

    def _on_event(self, event: str, conn: Connection, type_url: str, data: dict[str, Any]) -> None:
        if event == "open":
            self.streams.labels(conn.protocol).inc()
        elif event == "close":
            self.streams.labels(conn.protocol).dec()
            self._check(conn, closed=True)
        elif event == "send":
            self.pushes.labels(_short(type_url)).inc()
            self.push_bytes.labels(_short(type_url)).inc(data["bytes"])
        elif event == "ack":
            self.acks.labels(_short(type_url)).inc()
            self._check(conn)
        elif event == "nack":
            self.nacks.labels(_short(type_url)).inc()


class _CertificateCollector:
    """Days until each served certificate expires, computed when scraped (an alert on
    ``controlplane_certificate_expiry_days < 14`` needs no other clock)."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        from .status import certificate_rows

        days = GaugeMetricFamily(
            "controlplane_certificate_expiry_days",
            "Days until a served certificate expires (negative: expired)",
            labels=["secret", "file"],
        )
        for row in certificate_rows(self.metrics.certificates):
            days.add_metric([row["secret"], row["file"]], row["days_left"])
        yield days
