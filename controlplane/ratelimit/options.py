"""The service's command line: light to import (the CLI lists it in its help), no gRPC or Redis."""

from __future__ import annotations

import argparse

from ..xds.service_options import add_xds_arguments, host_port


def _milliseconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected milliseconds, got {text!r}") from None
    if not 0 < value <= 60_000:
        raise argparse.ArgumentTypeError(f"expected 0 < MS <= 60000, got {text!r}")
    return value / 1000


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"expected a port number (0: any free port), got {text!r}")
    return int(text)


def parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="controlplane ratelimit",
        add_help=add_help,
        description=(
            "Global rate-limit service for Envoy (envoy.service.ratelimit.v3), counting in Redis. "
            "Its limits come from the control plane over xDS; several processes can share one Redis."
        ),
    )
    p.add_argument(
        "--listen", type=host_port, default="127.0.0.1:8081", help="gRPC address Envoy calls (default 127.0.0.1:8081)"
    )
    x = add_xds_arguments(p, "ratelimit")
    x.add_argument("--node-cluster", default="ratelimit", help="xDS node cluster (default ratelimit)")
    x.add_argument(
        "--domain",
        action="append",
        dest="domains",
        metavar="NAME",
        help="rate-limit domain to serve, repeatable (default: gateway)",
    )
    r = p.add_argument_group("Redis (one of)")
    backend = r.add_mutually_exclusive_group(required=True)
    backend.add_argument("--redis", metavar="URL", help="one Redis: redis://HOST:PORT/DB")
    backend.add_argument("--redis-cluster", metavar="HOST:PORT,...", help="Redis Cluster seed nodes")
    backend.add_argument("--redis-sentinel", metavar="HOST:PORT,...", help="Sentinels (with --sentinel-master)")
    r.add_argument("--sentinel-master", metavar="NAME", help="the master's name the sentinels watch")
    r.add_argument(
        "--redis-timeout",
        type=_milliseconds,
        default=0.1,
        metavar="MS",
        help="answer UNAVAILABLE when Redis has not answered within MS milliseconds (default 100)",
    )
    a = p.add_argument_group("admin")
    a.add_argument("--admin-address", default="127.0.0.1", help="admin HTTP address (default 127.0.0.1)")
    a.add_argument(
        "--admin-port", type=_port, default=9102, help="/healthz /ready /metrics /config; 0: any (default 9102)"
    )
    a.add_argument(
        "--test-clock",
        action="store_true",
        help="tests only: the clock stands still and POST /clock?advance=SECONDS moves it",
    )
    a.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="debug also logs each descriptor answered OK as unknown (default info)",
    )
    return p
