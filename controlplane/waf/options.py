"""The WAF service's command line: light to import (the CLI lists it in its help)."""

from __future__ import annotations

import argparse

from ..ratelimit.options import _port
from ..xds.service_options import add_xds_arguments, host_port


def parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="controlplane waf",
        add_help=add_help,
        description=(
            "The WAF service for Envoy (ext_authz, envoy.service.auth.v3): inspects each request, its "
            "whole body included, for attacks. Its rules come from the control plane over xDS."
        ),
    )
    p.add_argument(
        "--listen", type=host_port, default="127.0.0.1:8082", help="gRPC address Envoy calls (default 127.0.0.1:8082)"
    )
    p.add_argument(
        "--mask-listen",
        type=host_port,
        help="gRPC address where Envoy has responses masked (ext_proc; default: --listen's port + 1)",
    )
    add_xds_arguments(p, "waf")
    a = p.add_argument_group("admin")
    a.add_argument("--admin-address", default="127.0.0.1", help="admin HTTP address (default 127.0.0.1)")
    a.add_argument(
        "--admin-port", type=_port, default=9103, help="/healthz /ready /metrics /config; 0: any (default 9103)"
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"], help="default info")
    return p
