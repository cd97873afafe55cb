"""What every service beside Envoy (the rate-limit service, the WAF service) shares on its
command line and in its life: the xDS channel to the control plane, and running until a
signal. Light to import: the CLI lists these options in its help."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable


def host_port(text: str) -> str:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return text


def add_xds_arguments(p: argparse.ArgumentParser, node: str) -> argparse._ArgumentGroup:
    """``--xds`` and the mTLS files; ``node`` names the default node id (``<node>-<host>-<pid>``)."""
    x = p.add_argument_group("control plane (xDS)")
    x.add_argument("--xds", type=host_port, required=True, metavar="HOST:PORT", help="the control plane's xDS address")
    x.add_argument("--insecure", action="store_true", help="plaintext channel to the control plane (loopback only)")
    x.add_argument("--xds-ca", help="CA that signed the control plane's certificate")
    x.add_argument("--xds-cert", help="client certificate this service presents (its CN is its node id to the server)")
    x.add_argument("--xds-key", help="key of --xds-cert")
    x.add_argument("--xds-server-name", help="name expected in the control plane's certificate (default: its host)")
    x.add_argument("--node-id", help=f"xDS node id (default {node}-<hostname>-<pid>)")
    return x


def check_xds_arguments(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not args.insecure and not all((args.xds_ca, args.xds_cert, args.xds_key)):
        p.error(
            "give --xds-ca, --xds-cert and --xds-key for an mTLS channel to the control plane, "
            "or --insecure for plaintext (loopback development only)"
        )


def configure_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_until_signalled(serve: Callable[[asyncio.Event], Awaitable[None]], uvloop: bool = False) -> int:
    """Run ``serve(stop)`` until SIGTERM or SIGINT sets ``stop``; the exit status. With
    ``uvloop``, on uvloop's event loop (libuv: less CPU per wakeup than asyncio's own)."""

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve(stop)

    if uvloop:
        import uvloop as fast

        fast.run(run())
    else:
        asyncio.run(run())
    return 0
