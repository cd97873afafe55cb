"""Prometheus metrics of the rate-limit service (``/metrics`` on its admin port)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Decisions take a Redis round trip (~0.1-1 ms on loopback); the timeout caps them at 100 ms.
_DECISION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.decisions = Counter(
            "ratelimit_decisions_total",
            "Descriptors decided, by limit name and outcome (ok, over, shadow_over)",
            ["limit", "outcome"],
            registry=r,
        )
        self.unknown = Counter(
            "ratelimit_unknown_descriptors_total",
            "Descriptors answered OK because the config has no such domain, limit or window, or they are malformed",
            ["reason"],
            registry=r,
        )
        self.requests = Counter(
            "ratelimit_requests_total",
            "ShouldRateLimit calls by answer (ok, over_limit, unavailable)",
            ["answer"],
            registry=r,
        )
        self.redis_errors = Counter(
            "ratelimit_redis_errors_total",
            "Redis failures (each answered UNAVAILABLE), by kind",
            ["kind"],
            registry=r,
        )
        self.decision_seconds = Histogram(
            "ratelimit_decision_seconds",
            "From a ShouldRateLimit request to its answer (Redis included)",
            registry=r,
            buckets=_DECISION_BUCKETS,
        )
        self.config_info = Gauge(
            "ratelimit_config_info", "1 for the xDS version of the config being served", ["version"], registry=r
        )
        self.config_updates = Counter(
            "ratelimit_config_updates_total",
            "xDS responses by result (accepted: ACKed; rejected: NACKed, the last good config kept)",
            ["result"],
            registry=r,
        )
        self.limits = Gauge("ratelimit_config_limits", "Limits in the config being served", registry=r)
        self.xds_connected = Gauge("ratelimit_xds_connected", "1 while the ADS stream is open", registry=r)

    def config_served(self, version: str, limits: int) -> None:
        self.config_info.clear()
        self.config_info.labels(version=version).set(1)
        self.limits.set(limits)
