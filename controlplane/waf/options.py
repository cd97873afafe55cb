"""The WAF service's command line: light to import (the CLI lists it in its help)."""

from __future__ import annotations

import argparse

from ..ratelimit.options import _host_port, _port


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
        "--listen", type=_host_port, default="127.0.0.1:8082", help="gRPC address Envoy calls (default 127.0.0.1:8082)"
    )
    x = p.add_argument_group("control plane (xDS)")
    x.add_argument("--xds", type=_host_port, required=True, metavar="HOST:PORT", help="the control plane's xDS address")
    x.add_argument("--insecure", action="store_true", help="plaintext channel to the control plane (loopback only)")
    x.add_argument("--xds-ca", help="CA that signed the control plane's certificate")
    x.add_argument("--xds-cert", help="client certificate this service presents (its CN is its node id to the server)")
    x.add_argument("--xds-key", help="key of --xds-cert")
    x.add_argument("--xds-server-name", help="name expected in the control plane's certificate (default: its host)")
    x.add_argument("--node-id", help="xDS node id (default waf-<hostname>-<pid>)")
    a = p.add_argument_group("admin")
    a.add_argument("--admin-address", default="127.0.0.1", help="admin HTTP address (default 127.0.0.1)")
    a.add_argument(
        "--admin-port", type=_port, default=9103, help="/healthz /ready /metrics /config; 0: any (default 9103)"
    )
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"], help="default info")
    return p
