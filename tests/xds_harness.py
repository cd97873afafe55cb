"""A real control plane process and real Envoys bootstrapped to it."""

from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controlplane.bootstrap import AdminOptions, XdsOptions, dynamic_bootstrap
from controlplane.certs import CertificateAuthority, Issued
from controlplane.resources import to_dict
from tests.harness import EnvoyProcess, free_port, raw_request, stop_process

REPO = Path(__file__).resolve().parent.parent


def http_get(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except OSError as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@dataclass
class Pki:
    ca: CertificateAuthority
    server: Issued
    envoy: Issued

    @classmethod
    def make(cls, directory: Path) -> Pki:
        directory.mkdir(parents=True, exist_ok=True)
        ca = CertificateAuthority(directory, "xds-ca")
        return cls(ca, ca.issue("localhost", ["localhost", "127.0.0.1"]), ca.issue("gateway-1", client=True))


@dataclass
class ControlPlaneProcess:
    """``python -m controlplane serve`` as a user runs it."""

    paths: list[Path]
    workdir: Path
    pki: Pki | None = None
    xds_port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[str] | None = None
    extra: list[str] = field(default_factory=list)
    # The watcher's settings; tests poll fast. [] is `serve` with its defaults, as users run it.
    watch: list[str] = field(default_factory=lambda: ["--poll-interval", "0.05", "--quiet-period", "0.1"])

    def start(self) -> ControlPlaneProcess:
        cmd = [
            sys.executable,
            "-m",
            "controlplane",
            "serve",
            *map(str, self.paths),
            "--xds-address",
            f"127.0.0.1:{self.xds_port}",
            "--admin-address",
            f"127.0.0.1:{self.admin_port}",
            *self.watch,
            *self.extra,
        ]
        if self.pki is None:
            cmd.append("--insecure")
        else:
            cmd += [
                "--tls-cert",
                str(self.pki.server.cert),
                "--tls-key",
                str(self.pki.server.key),
                "--tls-client-ca",
                str(self.pki.ca.path),
            ]
        self.log = (self.workdir / f"cp-{self.admin_port}.log").open("w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, text=True, cwd=REPO)
        wait_for(lambda: http_get(self.admin_port, "/healthz")[0] == 200, 30, "control plane /healthz")
        return self

    def get(self, path: str) -> Any:
        _status, body = http_get(self.admin_port, path)
        return json.loads(body)

    def status(self) -> dict[str, Any]:
        return self.get("/status")  # type: ignore[no-any-return]

    def node(self, node_id: str) -> dict[str, Any] | None:
        return next((n for n in self.status()["nodes"] if n["node"] == node_id), None)

    def logs(self) -> str:
        self.log.flush()
        return (self.workdir / f"cp-{self.admin_port}.log").read_text()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        stop_process(self.proc)
        self.log.close()


def start_envoy(
    workdir: Path,
    plane: ControlPlaneProcess,
    node_id: str = "gateway-1",
    delta: bool = False,
    client: Issued | None = None,
    ca: Path | None = None,
    wait_ready: bool = True,
) -> EnvoyProcess:
    pki = plane.pki
    cert = client or (pki.envoy if pki else None)
    options = XdsOptions(
        node_id=node_id,
        host="127.0.0.1",
        port=plane.xds_port,
        delta=delta,
        insecure=pki is None,
        cert_file=str(cert.cert) if cert else None,
        key_file=str(cert.key) if cert else None,
        ca_file=str(ca or (pki.ca.path if pki else "")) or None,
        server_name="localhost",
    )
    admin = free_port()
    config = to_dict(dynamic_bootstrap(options, AdminOptions(port=admin)))
    return EnvoyProcess(config, workdir, admin, wait=wait_ready)


class Traffic(threading.Thread):
    """Requests in a loop until stopped; counts every answer that is not 200."""

    def __init__(self, port: int, path: str):
        super().__init__(daemon=True)
        self.port, self.path = port, path
        self.ok = 0
        self.failures: list[str] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                resp = raw_request(
                    self.port, f"GET {self.path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode()
                )
                if resp.status == 200:
                    self.ok += 1
                else:
                    self.failures.append(f"{resp.status} {resp.body[:100]!r}")
            except (OSError, ValueError) as exc:
                self.failures.append(repr(exc))
            time.sleep(0.005)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)
