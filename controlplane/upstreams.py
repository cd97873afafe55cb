"""Model → IR for upstreams: the policy's ``upstreams[]``, the ones made from a spec's server
URLs, and the Host header each expects."""

from __future__ import annotations

import functools
from typing import Any
from urllib.parse import urlsplit

from . import ir
from .errors import Diagnostics
from .model import policy as pol
from .model.openapi import ServerUrl


def from_server(name: str, server: ServerUrl, src: ir.Source) -> ir.Upstream:
    """The upstream of a spec's absolute server URL (TLS with SNI for https)."""
    assert server.host is not None and server.port is not None
    tls = server.scheme == "https"
    return ir.Upstream(name, (ir.Endpoint(server.host, server.port),), src, tls=tls, sni=server.host if tls else None)


def from_policy(name: str, spec: dict[str, Any], src: ir.Source, diags: Diagnostics) -> ir.Upstream:
    """An ``upstreams[]`` entry (already checked against the schema); errors go to ``diags``."""
    service: ir.KubeService | None = None
    if "url" in spec:
        try:
            parts = urlsplit(spec["url"])
        except ValueError:  # an unclosed '[' around an IPv6 address: reported below as a url without host
            parts = urlsplit("")
        https = parts.scheme == "https"
        try:
            port = parts.port or (443 if https else 80)
        except ValueError:
            diags.error("invalid port in url", src.file, src.pointer + "/url", "upstream")
            port = 80
        host = parts.hostname or ""
        if not host or parts.path not in ("", "/"):
            diags.error(
                "url must be scheme://host[:port] without a path (use apis[].upstreamPathPrefix)",
                src.file,
                src.pointer + "/url",
                "upstream",
            )
        endpoints: tuple[ir.Endpoint, ...] = (ir.Endpoint(host, port),)
        tls = spec["tls"] is not False if "tls" in spec else https  # an object: TLS with those settings
    elif "service" in spec:
        name_ns, _, port_text = spec["service"].rpartition(":")
        svc_name, _, namespace = name_ns.partition(".")
        service = ir.KubeService(namespace, svc_name, port_text)
        if port_text.isdigit() and not 0 < int(port_text) < 65536:
            diags.error(f"port {port_text} is out of range", src.file, f"{src.pointer}/service", "upstream")
        endpoints = ()  # the cluster's, over EDS, as they change
        tls = spec.get("tls", False) is not False
    else:
        eps = []
        for i, text in enumerate(spec["endpoints"]):
            host, _, port_text = text.rpartition(":")
            port = int(port_text)
            if not 0 < port < 65536:
                diags.error(f"port {port} is out of range", src.file, f"{src.pointer}/endpoints/{i}", "upstream")
            eps.append(ir.Endpoint(host, port))
        endpoints = tuple(eps)
        tls = spec.get("tls", False) is not False
    hc = spec.get("healthCheck")
    cb = spec.get("circuitBreaker")
    od = spec.get("outlierDetection")
    return ir.Upstream(
        name=name,
        endpoints=endpoints,
        source=src,
        tls=bool(tls),
        sni=spec.get("sni") or (_first_host(endpoints, service) if tls else None),
        service=service,
        protocol=ir.Protocol(spec.get("protocol", "http1")),
        connect_timeout_ms=pol.duration_ms(spec.get("connectTimeout", "2s")),
        health_check=ir.HealthCheck(
            path=hc["path"],
            interval_ms=pol.duration_ms(hc.get("interval", "5s")),
            timeout_ms=pol.duration_ms(hc.get("timeout", "1s")),
            healthy_threshold=hc.get("healthyThreshold", 2),
            unhealthy_threshold=hc.get("unhealthyThreshold", 3),
            expected_statuses=tuple(hc.get("expectedStatuses", [200])),
        )
        if hc
        else None,
        circuit_breaker=ir.CircuitBreaker(
            cb.get("maxConnections"), cb.get("maxPendingRequests"), cb.get("maxRequests"), cb.get("maxRetries")
        )
        if cb
        else None,
        outlier_detection=ir.OutlierDetection(
            consecutive_5xx=od.get("consecutive5xx", 5),
            interval_ms=pol.duration_ms(od.get("interval", "10s")),
            base_ejection_time_ms=pol.duration_ms(od.get("baseEjectionTime", "30s")),
            max_ejection_percent=od.get("maxEjectionPercent", 50),
        )
        if od is not None
        else None,
    )


def _first_host(endpoints: tuple[ir.Endpoint, ...], service: ir.KubeService | None) -> str | None:
    """The name a TLS upstream is reached by: its Service's, else its first endpoint's (not an IP)."""
    if service is not None:
        return service.host
    return endpoints[0].host if not endpoints[0].is_ip else None


@functools.lru_cache(maxsize=4096)  # per operation; an IP address check parses the host
def host_header(host: str, port: int, tls: bool) -> str | None:
    """The Host an upstream named by host expects; None for an IP address (nothing to name)."""
    if ir.Endpoint(host, port).is_ip:
        return None
    return host if port == (443 if tls else 80) else f"{host}:{port}"


def policy_host(spec: dict[str, Any]) -> str | None:
    """``upstreams[]``: the host of its URL, else of its first endpoint, unless ``preserveHost``."""
    if spec.get("preserveHost"):
        return None
    try:
        if "url" in spec:
            parts = urlsplit(spec["url"])
            tls = spec["tls"] is not False if "tls" in spec else parts.scheme == "https"
            if not parts.hostname:
                return None
            return host_header(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80), tls)
        if "service" in spec:
            name_ns, _, port = str(spec["service"]).rpartition(":")
            tls = spec.get("tls", False) is not False
            return host_header(name_ns + ".svc", int(port) if port.isdigit() else (443 if tls else 80), tls)
        host, _, port = str(spec["endpoints"][0]).rpartition(":")
        return host_header(host.strip("[]"), int(port), spec.get("tls", False) is not False)
    except (ValueError, LookupError):  # reported where the upstream itself is read
        return None
