"""Prometheus metrics of the WAF service (``/metrics`` on its admin port)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_SECONDS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "waf_requests_total", "Requests inspected, by verdict (pass, detected, refused)", ["verdict"], registry=r
        )
        self.findings = Counter(
            "waf_findings_total", "Findings by family, rule and operation", ["family", "rule", "operation"], registry=r
        )
        self.seconds = Histogram("waf_inspection_seconds", "Time to inspect one request", buckets=_SECONDS, registry=r)
        self.config_updates = Counter(
            "waf_config_updates_total", "Configs received, by result (accepted, rejected)", ["result"], registry=r
        )
        self.masked = Counter(
            "waf_masked_total",
            "Responses: card numbers and fields masked (masked), responses refused as unreadable (refused)",
            ["outcome", "operation"],
            registry=r,
        )
        self.xds_connected = Gauge("waf_xds_connected", "1 while the ADS stream is open", registry=r)
        self.rules_version = Gauge("waf_rules_info", "The rules served (version label)", ["version"], registry=r)
