"""The global rate-limit service: Envoy's ``RateLimitService``, counting in Redis.

Envoy's ``ratelimit`` filter asks it about each request (``ShouldRateLimit``); it counts in
fixed windows in Redis (one, a cluster, or behind Sentinel), shared by any number of
service processes, and takes its limits from the control plane over xDS. See
docs/ratelimit-service.md.

- ``config``: the xDS resource (one per domain) and its validation
- ``xds_client``: the ADS stream that keeps the config current (ACK, NACK, reconnect)
- ``store``: Redis keys, the counting script, the three ways to reach Redis
- ``service``: the decision and the gRPC servicer
- ``admin``, ``metrics``, ``clock``: the admin port, Prometheus metrics, the test clock
- ``app``: options and the process
"""

from __future__ import annotations

from collections.abc import Sequence

from .config import DOMAIN_TYPE, RESOURCE_TYPE, Config, DomainConfig, Limit, decode_resources, encode_domain


def main(argv: Sequence[str] | None = None) -> int:
    """``controlplane ratelimit ARGS``: run the service until SIGTERM or SIGINT."""
    from .app import main as run  # grpc, redis and the service load only for this command

    return run(argv)


__all__ = [
    "DOMAIN_TYPE",
    "RESOURCE_TYPE",
    "Config",
    "DomainConfig",
    "Limit",
    "decode_resources",
    "encode_domain",
    "main",
]
