"""Upstreams → Cluster and ClusterLoadAssignment.

IP endpoints are delivered over EDS so they can change without touching the cluster.
Named endpoints are resolved by Envoy itself (STRICT_DNS, endpoints inline): EDS carries
addresses, not names.
"""

from __future__ import annotations

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import address_pb2, health_check_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as upstream_http
from envoy.type.v3 import range_pb2

from .. import ir
from . import tls
from ._pb import ads, duration, packed, uint32

SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
BUFFER_LIMIT_BYTES = 32 * 1024


def load_assignment(upstream: ir.Upstream) -> endpoint_pb2.ClusterLoadAssignment:
    cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=upstream.name)
    locality = cla.endpoints.add()
    for ep in upstream.endpoints:
        locality.lb_endpoints.append(
            endpoint_components_pb2.LbEndpoint(
                endpoint=endpoint_components_pb2.Endpoint(
                    address=address_pb2.Address(
                        socket_address=address_pb2.SocketAddress(address=ep.host, port_value=ep.port)
                    )
                )
            )
        )
    return cla


def cluster(upstream: ir.Upstream) -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster(
        name=upstream.name,
        connect_timeout=duration(upstream.connect_timeout_ms),
        lb_policy=cluster_pb2.Cluster.ROUND_ROBIN,
        per_connection_buffer_limit_bytes=uint32(BUFFER_LIMIT_BYTES),
    )
    if upstream.uses_dns:
        c.type = cluster_pb2.Cluster.STRICT_DNS
        c.dns_lookup_family = cluster_pb2.Cluster.V4_PREFERRED
        c.load_assignment.CopyFrom(load_assignment(upstream))
    else:
        c.type = cluster_pb2.Cluster.EDS
        c.eds_cluster_config.eds_config.CopyFrom(ads())
    if upstream.tls:
        c.transport_socket.CopyFrom(tls.upstream_socket(upstream, SYSTEM_CA_BUNDLE))
    if upstream.protocol is ir.Protocol.HTTP2:
        options = upstream_http.HttpProtocolOptions(
            explicit_http_config=upstream_http.HttpProtocolOptions.ExplicitHttpConfig(
                http2_protocol_options=protocol_pb2.Http2ProtocolOptions()
            )
        )
        c.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].CopyFrom(
            packed(options)
        )
    if upstream.health_check is not None:
        hc = upstream.health_check
        c.health_checks.append(
            health_check_pb2.HealthCheck(
                timeout=duration(hc.timeout_ms),
                interval=duration(hc.interval_ms),
                healthy_threshold=uint32(hc.healthy_threshold),
                unhealthy_threshold=uint32(hc.unhealthy_threshold),
                http_health_check=health_check_pb2.HealthCheck.HttpHealthCheck(
                    path=hc.path,
                    expected_statuses=[range_pb2.Int64Range(start=s, end=s + 1) for s in hc.expected_statuses],
                ),
            )
        )
    if upstream.circuit_breaker is not None:
        cb = upstream.circuit_breaker
        thresholds = circuit_breaker_pb2.CircuitBreakers.Thresholds()
        for field, value in (
            ("max_connections", cb.max_connections),
            ("max_pending_requests", cb.max_pending_requests),
            ("max_requests", cb.max_requests),
            ("max_retries", cb.max_retries),
        ):
            if value is not None:
                getattr(thresholds, field).value = value
        c.circuit_breakers.thresholds.append(thresholds)
    if upstream.outlier_detection is not None:
        od = upstream.outlier_detection
        c.outlier_detection.CopyFrom(
            outlier_detection_pb2.OutlierDetection(
                consecutive_5xx=uint32(od.consecutive_5xx),
                interval=duration(od.interval_ms),
                base_ejection_time=duration(od.base_ejection_time_ms),
                max_ejection_percent=uint32(od.max_ejection_percent),
            )
        )
    return c
