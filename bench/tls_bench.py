"""TLS through a real gateway: what HTTPS and gateway→backend mTLS cost Envoy per request,
beside plain HTTP in the same run, and how fast a renewed certificate reaches handshakes.

What runs, started as users run it: a real control plane (``python -m controlplane serve``
with its default poll settings, mTLS on xDS) compiles the policy and pushes it, certificates
included, over ADS/SDS to one gateway Envoy (``--concurrency 1``, its xDS client certificate of
the unit ``gateway``, access log off). Certificates are real (``controlplane.certs``): the
listener's RSA 2048 and ECDSA P-256 certificates of one CA, the backend's and the gateway's
client certificate (ECDSA P-256) of two others. The backend is a second Envoy (static
configuration, ``--concurrency 1``) answering every request itself (``direct_response``),
on a plain listener and on a TLS listener that requires a client certificate of the gateway's
CA; each also exists in a variant that closes the connection after every response
(``max_requests_per_connection: 1``), so that the gateway opens an upstream connection per
request.

Parts (``--part``, default all of them; each runs alone with its own processes):

``https``: Envoy's CPU per request, one route to the plain backend, over a plain listener and
over one listener per certificate (RSA 2048, ECDSA P-256), with TLS 1.3 and with TLS 1.2
(the client's maximum): with keep-alive connections, and with a new connection and a full
handshake per request (the client keeps no session, ``Connection: close``, read to the end).
Floors, in the same run: plain HTTP with keep-alive, and plain HTTP with a new connection per
request, also one connection at a time (Envoy's CPU per request grows as its rate falls, and
handshakes run at a fraction of plain's rate: the truth lies between the two). The client
is Python (the ``ssl`` module, OpenSSL 3, non-blocking sockets on one ``selectors`` loop in
its own process), ``--connections`` connections at once (default 4, one request in flight
each) for runs of ``--seconds``: it is slower than Envoy, so Envoy's rate is the client's,
not Envoy's capacity; what counts is Envoy's CPU per completed request (and the keep-alive
connections are opened before the measured runs).

``upstream``: the same over the plain listener, keep-alive downstream, to the backend over
plain HTTP (the floor) and over mTLS (``upstreams[].tls`` with ``clientCertificate``), with
Envoy's upstream connections kept alive, then with a new upstream connection per request
(the backend closes each; against the plain variant of it, and its low-rate form), with the
backend's count of TLS handshakes and of those resumed (Envoy resumes upstream sessions).

CPU per process from /proc before and after each run (every thread's schedstat, or the
process's ticks when a thread came or went): the gateway Envoy, the backend Envoy, the
client (its own ``time.process_time``), and the control plane with its worker processes
(per second, not per request: it only polls its files meanwhile).
Cases run in rounds, shuffled each round; ratios are taken per round against the floor of
the same round, reported as median (min-max).

``rotation``: the time from a certificate change on disk to the end of the first handshake
that presents the new certificate, probed by a Python TLS client every ``PROBE_INTERVAL``,
``serve`` with its default poll interval and quiet period. Two kinds of change,
``--rotations`` each, a second apart (plus a random part of a poll interval): a new key and
certificate written beside the old ones and renamed over them, key first, as certificate
managers do; and the switch of a ``..data`` symlink to a new directory, as the kubelet
updates a Secret volume. Goal (issue 10): < 1 s.

``sds``: the same change with 100 simulated nodes on the control plane instead of an Envoy:
100 ADS streams, each its own gRPC channel with its own client certificate (OU ``gateway``,
so each may have the secret), subscribed to the listener's certificate and ACKing every
response, delta and state-of-the-world in turn. Measured: the time from the rename to the
first, the median and the last node receiving the new certificate, the bytes pushed (the
responses' protobuf bytes as received, and the control plane's own ``xds_push_bytes_total``),
the control plane's CPU (worker processes included) per rotation.

    python bench/tls_bench.py                   # about 3.5 minutes
    python bench/tls_bench.py --quick           # under a minute: a smoke run
    python bench/tls_bench.py --part rotation   # one part (https, upstream, rotation, sds)
    python bench/tls_bench.py --client          # (internal: the load client's process)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import random
import selectors
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from _common import LoadClient, git_state, machine, median, response_frame, spread, table
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

from ratelimit_bench import CLK_TCK, cpu_between, read_cpu  # noqa: E402

from controlplane import cli  # noqa: E402
from controlplane.certs import CertificateAuthority, Issued  # noqa: E402
from controlplane.envoybin import find_envoy  # noqa: E402
from tests.harness import EnvoyProcess, free_port  # noqa: E402
from tests.xds_harness import ControlPlaneProcess, Pki, http_get, start_envoy, wait_for  # noqa: E402

HOST = "bench.example"  # the listener certificates' name (SNI)
BACKEND_HOST = "backend.internal"
PROBE_INTERVAL = 0.005  # seconds between two handshakes of the rotation probe
NODES = 100
LISTENER_SECRET = "ec/cert-0"  # the SDS secret of the ``ec`` listener's certificate
SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
DELTA_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
SOTW_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
UNDER_LOAD = "taken under load (other work running)"

SPEC = """
openapi: 3.0.3
info: {title: tls bench, version: "1"}
paths:
  /x:
    get: {operationId: x, responses: {"200": {description: ok}}}
"""

MTLS = (
    "{caFile: backend-ca.pem, sni: backend.internal, subjectAltNames: [backend.internal], "
    "clientCertificate: {certFile: gateway-client.crt, keyFile: gateway-client.key}}"
)

POLICY = """
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
gateway: {{accessLog: false}}
listeners:
  - {{name: plain, address: 127.0.0.1, port: {plain}}}
  - name: rsa
    address: 127.0.0.1
    port: {rsa}
    tls: {{certificates: [{{certFile: rsa.crt, keyFile: rsa.key}}]}}
  - name: ec
    address: 127.0.0.1
    port: {ec}
    tls: {{certificates: [{{certFile: ec.crt, keyFile: ec.key}}]}}
upstreams:
  - {{name: backend, endpoints: ["127.0.0.1:{b_plain}"]}}
  - {{name: backend-mtls, endpoints: ["127.0.0.1:{b_mtls}"], tls: {mtls}}}
  - {{name: backend-close, endpoints: ["127.0.0.1:{b_plain_close}"]}}
  - {{name: backend-mtls-close, endpoints: ["127.0.0.1:{b_mtls_close}"], tls: {mtls}}}
apis:
  - {{name: plain, spec: bench.yaml, upstream: backend, pathPrefix: /b}}
  - {{name: mtls, spec: bench.yaml, upstream: backend-mtls, pathPrefix: /m}}
  - {{name: plain-close, spec: bench.yaml, upstream: backend-close, pathPrefix: /bc}}
  - {{name: mtls-close, spec: bench.yaml, upstream: backend-mtls-close, pathPrefix: /mc}}
"""


def request(path: str, close: bool) -> str:
    connection = "Connection: close\r\n" if close else ""
    return f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n{connection}\r\n"


# -- the load client (its own process) ---------------------------------------------------------

HANDSHAKE, SEND, READ, DRAIN = range(4)


class _Conn:
    __slots__ = ("buf", "events", "sock", "state")

    def __init__(self, sock: socket.socket, state: int):
        self.sock, self.state, self.buf, self.events = sock, state, b"", 0


class LoadRun:
    """One command of the client: requests for ``seconds`` over ``connections`` connections,
    kept alive (from ``pool``, opened when missing) or one new connection per request."""

    def __init__(self, cmd: dict[str, Any], pool: list[_Conn]):
        self.port: int = cmd["port"]
        self.request = cmd["request"].encode()
        self.new = cmd["mode"] == "new"
        self.connections: int = cmd["connections"]
        self.seconds: float = cmd["seconds"]
        self.pool = pool
        self.ctx: ssl.SSLContext | None = None
        if cmd.get("tls"):
            tls = cmd["tls"]
            self.ctx = ssl.create_default_context(cafile=tls["ca"])
            if tls["version"] == "1.2":
                self.ctx.maximum_version = ssl.TLSVersion.TLSv1_2
            else:
                self.ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        self.sel = selectors.DefaultSelector()
        self.statuses: dict[str, int] = {}
        self.failures: list[str] = []
        self.handshakes = 0
        self.opened = 0
        self.active = 0

    def open(self) -> _Conn:
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=5)  # loopback: no wait
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        raw.setblocking(False)
        self.opened += 1
        if self.ctx is None:
            return _Conn(raw, SEND)
        sock = self.ctx.wrap_socket(raw, server_hostname=HOST, do_handshake_on_connect=False)
        return _Conn(sock, HANDSHAKE)

    def want(self, conn: _Conn, events: int) -> None:
        if conn.events == events:
            return
        if conn.events:
            self.sel.modify(conn.sock, events, conn)
        else:
            self.sel.register(conn.sock, events, conn)
        conn.events = events

    def park(self, conn: _Conn) -> None:
        if conn.events:
            self.sel.unregister(conn.sock)
            conn.events = 0
        self.active -= 1

    def start(self, conn: _Conn) -> None:
        self.active += 1
        self.step(conn)

    def finish(self, conn: _Conn, failure: str | None = None) -> None:
        """A connection is done (new mode, or failed): close it, open the next one."""
        if failure is not None:
            self.failures.append(failure)
        self.park(conn)
        conn.sock.close()
        with contextlib.suppress(ValueError):
            self.pool.remove(conn)
        if time.perf_counter() < self.deadline and (self.new or failure is not None):
            self.start(self.open())

    def step(self, conn: _Conn) -> None:
        sock = conn.sock
        try:
            if conn.state == HANDSHAKE:
                try:
                    sock.do_handshake()  # type: ignore[attr-defined]
                except ssl.SSLWantReadError:
                    return self.want(conn, selectors.EVENT_READ)
                except ssl.SSLWantWriteError:
                    return self.want(conn, selectors.EVENT_WRITE)
                self.handshakes += 1
                conn.state = SEND
            if conn.state == SEND:
                sent = sock.send(self.request)
                if sent != len(self.request):
                    raise OSError(f"short write of {sent} bytes")
                conn.state = READ
                return self.want(conn, selectors.EVENT_READ)
            eof = False
            while True:
                try:
                    data = sock.recv(65536)
                except (ssl.SSLWantReadError, BlockingIOError):
                    break
                if not data:
                    eof = True
                    break
                conn.buf += data
            if conn.state == READ:
                done = response_frame(conn.buf)
                if done is None:
                    if eof:
                        return self.finish(conn, "closed before a whole response")
                    return None
                status, length = done
                self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1
                conn.buf = conn.buf[length:]
                if self.new:
                    conn.state = DRAIN
                elif time.perf_counter() < self.deadline:
                    conn.state = SEND
                    return self.step(conn)
                else:
                    return self.park(conn)
            if conn.state == DRAIN and eof:
                return self.finish(conn)
        except (OSError, ValueError) as exc:
            return self.finish(conn, repr(exc))
        return None

    def run(self) -> dict[str, Any]:
        cpu, started = time.process_time(), time.perf_counter()
        self.deadline = started + self.seconds
        if self.new:
            for _ in range(self.connections):
                self.start(self.open())
        else:
            while len(self.pool) < self.connections:
                self.pool.append(self.open())
            for conn in self.pool:
                if conn.state == READ:
                    conn.state = SEND
                self.start(conn)
        while self.active:
            events = self.sel.select(10)
            if not events:
                self.failures.append(f"stalled with {self.active} connections waiting")
                break
            for key, _mask in events:
                self.step(key.data)
        return {
            "statuses": self.statuses,
            "wall": time.perf_counter() - started,
            "cpu": time.process_time() - cpu,
            "handshakes": self.handshakes,
            "opened": self.opened,
            "failures": self.failures[:5],
            "failed": len(self.failures),
        }


def client_main() -> None:
    pools: dict[str, list[_Conn]] = {}
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        print(json.dumps(LoadRun(cmd, pools.setdefault(cmd["case"], [])).run()), flush=True)


# -- processes -----------------------------------------------------------------------------------


def tree_seconds(pid: int) -> float:
    """CPU seconds of a process and its live descendants (and of the children they reaped)."""
    ticks, stack = 0, [pid]
    while stack:
        p = stack.pop()
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += sum(int(x) for x in fields[11:15])
            for task in os.listdir(f"/proc/{p}/task"):
                stack.extend(int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split())
    return ticks / CLK_TCK


def serve_defaults() -> argparse.Namespace:
    return cli.parser().parse_args(["serve", "."])


class DefaultControlPlane(ControlPlaneProcess):
    """``python -m controlplane serve`` exactly as a user runs it: mTLS, default poll settings."""

    def __post_init__(self) -> None:
        assert self.pki is not None
        self.watch = []

    def metrics(self) -> dict[str, float]:
        _status, body = http_get(self.admin_port, "/metrics")
        out = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                sample, _, value = line.rpartition(" ")
                out[sample] = float(value)
        return out


def metric_sum(samples: dict[str, float], prefix: str, contains: str = "") -> float:
    return sum(v for k, v in samples.items() if k.startswith(prefix) and contains in k)


def backend_config(admin: int, ports: dict[str, int], certs: Path) -> dict[str, Any]:
    """A static Envoy answering 200 itself; ``mtls*`` listeners require a client certificate of
    the gateway's CA, ``*close`` ones close the connection after every response."""

    def listener(name: str, port: int) -> dict[str, Any]:
        hcm: dict[str, Any] = {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3"
            ".HttpConnectionManager",
            "stat_prefix": name,
            "route_config": {
                "virtual_hosts": [
                    {
                        "name": "all",
                        "domains": ["*"],
                        "routes": [
                            {
                                "match": {"prefix": "/"},
                                "direct_response": {"status": 200, "body": {"inline_string": "ok"}},
                            }
                        ],
                    }
                ]
            },
            "http_filters": [
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
                }
            ],
        }
        if name.endswith("close"):
            hcm["common_http_protocol_options"] = {"max_requests_per_connection": 1}
        chain: dict[str, Any] = {
            "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]
        }
        if name.startswith("mtls"):
            chain["transport_socket"] = {
                "name": "envoy.transport_sockets.tls",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                    "require_client_certificate": True,
                    "common_tls_context": {
                        "tls_certificates": [
                            {
                                "certificate_chain": {"filename": str(certs / "backend.crt")},
                                "private_key": {"filename": str(certs / "backend.key")},
                            }
                        ],
                        "validation_context": {"trusted_ca": {"filename": str(certs / "gateway-client-ca.pem")}},
                    },
                },
            }
        return {
            "name": name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
            "filter_chains": [chain],
        }

    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {"listeners": [listener(name, port) for name, port in ports.items()]},
    }


class Gateway:
    """Certificates, the control plane, and with ``envoy`` the gateway Envoy, with ``backend`` the backend Envoy."""

    def __init__(self, work: Path, backend: bool = True, envoy: bool = True):
        self.work = work
        self.config = work / "config"
        self.config.mkdir()
        self.pki = Pki.make(work / "xds-pki")
        web = CertificateAuthority(work / "xds-pki", "web-ca", days=400)
        self.web_ca = web
        rsa = web.issue(HOST, [HOST], key_type="rsa", days=365, stem="rsa")
        ec = web.issue(HOST, [HOST], days=365, stem="ec")
        backends = CertificateAuthority(self.config, "backend-ca", days=400)
        gateways = CertificateAuthority(self.config, "gateway-client-ca", days=400)
        backends.issue(BACKEND_HOST, [BACKEND_HOST], days=365, stem="backend")
        gateways.issue("gateway", client=True, days=365, stem="gateway-client")
        for issued, stem in ((rsa, "rsa"), (ec, "ec")):
            shutil.copy(issued.cert, self.config / f"{stem}.crt")
            shutil.copy(issued.key, self.config / f"{stem}.key")
        (self.config / "bench.yaml").write_text(SPEC)
        self.ports = {"plain": free_port(), "rsa": free_port(), "ec": free_port()}
        self.backend_ports = {name: free_port() for name in ("plain", "mtls", "plain-close", "mtls-close")}
        (self.config / "policy.yaml").write_text(
            POLICY.format(
                **self.ports,
                b_plain=self.backend_ports["plain"],
                b_mtls=self.backend_ports["mtls"],
                b_plain_close=self.backend_ports["plain-close"],
                b_mtls_close=self.backend_ports["mtls-close"],
                mtls=MTLS,
            )
        )
        self.backend: EnvoyProcess | None = None
        self.envoy: EnvoyProcess | None = None
        self.plane = DefaultControlPlane([self.config], work, self.pki)
        try:
            if backend:
                admin = free_port()
                self.backend = EnvoyProcess(backend_config(admin, self.backend_ports, self.config), work, admin)
            self.plane.start()
            if not envoy:
                return
            node = self.pki.ca.issue("gateway-1", client=True, unit="gateway", stem="gateway-1-gateway")
            self.envoy = start_envoy(work, self.plane, client=node)
            ctx = self.context()
            if backend:
                wait_for(lambda: self.https_ok(self.ports["ec"], ctx), 30, "HTTPS through the gateway")
            else:
                wait_for(lambda: self.served(self.ports["ec"], ctx), 30, "a TLS handshake with the gateway")
        except BaseException:
            self.stop()
            raise

    def context(self, version: str | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.web_ca.path))
        if version == "1.2":
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    def https_ok(self, port: int, ctx: ssl.SSLContext, path: str = "/b/x") -> bool:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname=HOST) as s,
        ):
            s.sendall(request(path, close=True).encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return data.startswith(b"HTTP/1.1 200")

    def served(self, port: int, ctx: ssl.SSLContext) -> bytes:
        """The DER certificate a new handshake presents."""
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname=HOST) as s,
        ):
            der = s.getpeercert(binary_form=True)
        assert der is not None
        return der

    def stop(self) -> None:
        for proc in (self.envoy, self.backend):
            if proc is not None:
                proc.stop()
        if self.plane.proc is not None:
            self.plane.stop()


# -- parts 1 and 2: CPU per request --------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    floor: str  # the case of the same round it is compared with
    listener: str  # plain, rsa, ec
    mode: str  # keep, new
    path: str = "/b/x"
    version: str | None = None  # TLS version (the client's maximum: 1.2, or 1.3 only)
    connections: int | None = None  # instead of --connections


PLAIN_KEEP = "HTTP, keep-alive"
PLAIN_NEW = "HTTP, new connection per request"
# Envoy's CPU per request grows as its rate falls (fewer events handled per wakeup), and a
# handshake per request runs at a fraction of plain's rate: the same floor, one at a time.
PLAIN_SLOW = "HTTP, new connection per request, 1 at a time (a low-rate floor)"


def https_cases() -> list[Case]:
    cases = [
        Case(PLAIN_KEEP, PLAIN_KEEP, "plain", "keep"),
        Case(PLAIN_NEW, PLAIN_NEW, "plain", "new"),
        Case(PLAIN_SLOW, PLAIN_SLOW, "plain", "new", connections=1),
    ]
    for listener, label in (("ec", "ECDSA P-256"), ("rsa", "RSA 2048")):
        for version in ("1.3", "1.2"):
            cases.append(
                Case(f"HTTPS {label}, TLS {version}, keep-alive", PLAIN_KEEP, listener, "keep", version=version)
            )
            cases.append(
                Case(
                    f"HTTPS {label}, TLS {version}, new handshake per request",
                    PLAIN_NEW,
                    listener,
                    "new",
                    version=version,
                )
            )
    return cases


UP_PLAIN = "plain upstream, kept alive"
UP_MTLS = "mTLS upstream, kept alive"
UP_PLAIN_NEW = "plain upstream, new connection per request"
UP_MTLS_NEW = "mTLS upstream, new connection per request"
UP_PLAIN_SLOW = "plain upstream, new connection per request, 1 client connection (a low-rate floor)"


def upstream_cases() -> list[Case]:
    return [
        Case(UP_PLAIN, UP_PLAIN, "plain", "keep", "/b/x"),
        Case(UP_MTLS, UP_PLAIN, "plain", "keep", "/m/x"),
        Case(UP_PLAIN_NEW, UP_PLAIN_NEW, "plain", "keep", "/bc/x"),
        Case(UP_MTLS_NEW, UP_PLAIN_NEW, "plain", "keep", "/mc/x"),
        Case(UP_PLAIN_SLOW, UP_PLAIN_SLOW, "plain", "keep", "/bc/x", connections=1),
    ]


class CpuRig:
    def __init__(self, work: Path, connections: int):
        self.gw = Gateway(work)
        self.connections = connections
        try:
            self.client = LoadClient(Path(__file__))
        except BaseException:
            self.gw.stop()
            raise

    def backend_handshakes(self) -> tuple[float, float]:
        """(TLS handshakes, of which resumed) of the backend Envoy's listeners."""
        assert self.gw.backend is not None
        _status, text = self.gw.backend.admin("/stats?filter=^listener\\..*\\.ssl\\.(handshake|session_reused)$")
        counts = {"handshake": 0.0, "session_reused": 0.0}
        for line in text.splitlines():
            name, _, value = line.partition(": ")
            counts[name.rsplit(".", 1)[1]] += float(value)
        return counts["handshake"], counts["session_reused"]

    def run(self, case: Case, seconds: float, warm: bool = False) -> dict[str, float]:
        gw = self.gw
        assert gw.envoy is not None and gw.backend is not None and gw.plane.proc is not None
        tls = None
        if case.version is not None:
            tls = {"ca": str(gw.web_ca.path), "version": case.version}
        command = {
            "case": case.name,
            "port": gw.ports[case.listener],
            "tls": tls,
            "mode": case.mode,
            "connections": case.connections or self.connections,
            "seconds": seconds,
            "request": request(case.path, close=case.mode == "new"),
        }
        envoy0, backend0 = read_cpu(gw.envoy.proc.pid), read_cpu(gw.backend.proc.pid)
        plane0, (hs0, reused0) = tree_seconds(gw.plane.proc.pid), self.backend_handshakes()
        out = self.client.run(**command)
        envoy1, backend1 = read_cpu(gw.envoy.proc.pid), read_cpu(gw.backend.proc.pid)
        plane1, (hs1, reused1) = tree_seconds(gw.plane.proc.pid), self.backend_handshakes()
        n = sum(out["statuses"].values())
        if out["failed"] or set(out["statuses"]) != {"200"} or n == 0:
            raise RuntimeError(f"{case.name}: {out}")
        # what each case claims to measure: no connection setup in a kept-alive run, exactly one
        # full handshake per request in a handshaking one
        if case.mode == "keep" and out["opened"] and not warm:
            raise RuntimeError(f"{case.name}: {out['opened']} connections opened during a kept-alive run")
        if case.mode == "new" and out["handshakes"] != (n if case.version else 0):
            raise RuntimeError(f"{case.name}: {out['handshakes']} handshakes for {n} requests")
        us = 1e6 / n
        return {
            "envoy_us": cpu_between(envoy0, envoy1) * us,
            "backend_us": cpu_between(backend0, backend1) * us,
            "plane_ms_per_s": 1000 * (plane1 - plane0) / out["wall"],  # its watcher: not per request
            "client_us": out["cpu"] * us,
            "rps": n / out["wall"],
            "requests": n,
            "opened": out["opened"],
            "handshakes_per_request": out["handshakes"] / n,
            "upstream_handshakes_per_request": (hs1 - hs0) / n,
            "upstream_resumed": (reused1 - reused0) / max(hs1 - hs0, 1),
        }

    def stop(self) -> None:
        self.client.stop()
        self.gw.stop()


def cpu_part(
    work: Path, cases: list[Case], rounds: int, seconds: float, connections: int
) -> dict[str, list[dict[str, float]]]:
    rig = CpuRig(work, connections)
    results: dict[str, list[dict[str, float]]] = {c.name: [] for c in cases}
    try:
        for case in cases:  # warm: keep-alive connections opened, Envoy's paths taken once
            rig.run(case, min(seconds, 0.3), warm=True)
        for r in range(rounds):
            order = cases[:]
            random.Random(r).shuffle(order)
            for case in order:
                results[case.name].append(rig.run(case, seconds))
            print(
                f"  round {r + 1}/{rounds}: "
                + ", ".join(f"{c.name}: {results[c.name][-1]['envoy_us']:.0f} µs" for c in cases),
                flush=True,
            )
    finally:
        rig.stop()
    return results


def per_round(results: dict[str, list[dict[str, float]]], case: Case, key: str = "envoy_us") -> list[float]:
    return [x[key] / f[key] for x, f in zip(results[case.name], results[case.floor], strict=True)]


def over_floor(results: dict[str, list[dict[str, float]]], case: Case, key: str = "envoy_us") -> list[float]:
    return [x[key] - f[key] for x, f in zip(results[case.name], results[case.floor], strict=True)]


def https_report(results: dict[str, list[dict[str, float]]], cases: list[Case]) -> str:
    def col(case: Case, key: str) -> list[float]:
        return [x[key] for x in results[case.name]]

    rows = [
        [
            c.name,
            spread(col(c, "envoy_us")),
            "floor" if c.floor == c.name else f"{spread(per_round(results, c))}x",
            "-" if c.floor == c.name else spread(over_floor(results, c)),
            spread(col(c, "backend_us")),
            spread(col(c, "plane_ms_per_s")),
            spread(col(c, "client_us")),
            spread(col(c, "rps")),
        ]
        for c in cases
    ]
    out = table(
        [
            "case",
            "Envoy µs/req",
            "vs its floor",
            "Envoy µs/req over the floor",
            "backend Envoy µs/req",
            "control plane CPU ms/s",
            "client µs/req",
            "requests/s",
        ],
        rows,
    )
    by = {c.name: c for c in cases}

    def handshake(label: str, version: str, floor: str | None = None) -> float:
        case = by[f"HTTPS {label}, TLS {version}, new handshake per request"]
        return median(over_floor(results, dataclasses.replace(case, floor=floor or case.floor)))

    rps = {c.name: median([x["rps"] for x in results[c.name]]) for c in cases}
    envoy = {c.name: median([x["envoy_us"] for x in results[c.name]]) for c in cases}
    notes = []
    for version in ("1.3", "1.2"):
        rsa, ec = handshake("RSA 2048", version), handshake("ECDSA P-256", version)
        slow_rsa, slow_ec = (handshake(k, version, PLAIN_SLOW) for k in ("RSA 2048", "ECDSA P-256"))
        notes.append(
            f"TLS {version}: a full handshake (with its connection's TLS setup and teardown) costs Envoy "
            f"{rsa:.0f} µs with RSA 2048 and {ec:.0f} µs with ECDSA P-256 ({rsa / ec:.1f}x); "
            f"{slow_rsa:.0f} and {slow_ec:.0f} µs over the low-rate floor"
        )
    handshaking = [v for k, v in rps.items() if "handshake" in k]
    notes.append(
        f"the floors: plain HTTP with a new connection per request costs Envoy {envoy[PLAIN_NEW]:.0f} µs at "
        f"{rps[PLAIN_NEW]:,.0f} requests/s and {envoy[PLAIN_SLOW]:.0f} µs one at a time at "
        f"{rps[PLAIN_SLOW]:,.0f}/s (the handshake cases ran at "
        f"{min(handshaking):,.0f}-{max(handshaking):,.0f}/s)"
    )
    return out + "\n\n" + ";\n".join(notes) + "."


def upstream_report(results: dict[str, list[dict[str, float]]], cases: list[Case]) -> str:
    def col(case: Case, key: str) -> list[float]:
        return [x[key] for x in results[case.name]]

    rows = []
    for c in cases:
        tls = c.name.startswith("mTLS")
        rows.append(
            [
                c.name,
                spread(col(c, "envoy_us")),
                "floor" if c.floor == c.name else f"{spread(per_round(results, c))}x",
                "-" if c.floor == c.name else spread(over_floor(results, c)),
                spread(col(c, "backend_us")),
                spread(col(c, "upstream_handshakes_per_request")) if tls else "-",
                f"{100 * median(col(c, 'upstream_resumed')):.0f} %" if tls else "-",
                spread(col(c, "client_us")),
                spread(col(c, "rps")),
            ]
        )
    out = table(
        [
            "case",
            "gateway Envoy µs/req",
            "vs its floor",
            "µs/req over the floor",
            "backend Envoy µs/req",
            "upstream handshakes/req",
            "of them resumed",
            "client µs/req",
            "requests/s",
        ],
        rows,
    )
    mtls_new = next(c for c in cases if c.name == UP_MTLS_NEW)
    slow = median(over_floor(results, dataclasses.replace(mtls_new, floor=UP_PLAIN_SLOW)))
    return f"{out}\n\nmTLS upstream, new connection per request, over the low-rate floor: {slow:.0f} µs of Envoy's CPU."


# -- part 3: certificate file change → first handshake with it --------------------------------


RENAME = "new files renamed over the old ones, key first"
SWAP = "directory symlink swapped (as Kubernetes updates a Secret volume)"


def install(config: Path, issued: Issued, stem: str) -> None:
    """As a certificate manager renews: new files beside the old ones, renamed over them, key first."""
    shutil.copy(issued.key, config / f"{stem}.key.new")
    shutil.copy(issued.cert, config / f"{stem}.crt.new")
    (config / f"{stem}.key.new").replace(config / f"{stem}.key")
    (config / f"{stem}.crt.new").replace(config / f"{stem}.crt")


def link(config: Path, stem: str) -> None:
    """Turn ``stem.crt``/``stem.key`` into a Secret volume's layout: links through ``..data``,
    itself a link to a directory of the current files."""
    first = config / "..v0"
    first.mkdir()
    for suffix in ("crt", "key"):
        (config / f"{stem}.{suffix}").replace(first / f"{stem}.{suffix}")
    (config / "..data").symlink_to("..v0")
    for suffix in ("crt", "key"):
        (config / f"{stem}.{suffix}").symlink_to(f"..data/{stem}.{suffix}")


def swap(config: Path, issued: Issued, stem: str, generation: int) -> None:
    """As the kubelet updates a Secret volume: a new directory, ``..data`` switched to it by a
    rename, the old directory removed."""
    new = config / f"..v{generation}"
    new.mkdir()
    shutil.copy(issued.cert, new / f"{stem}.crt")
    shutil.copy(issued.key, new / f"{stem}.key")
    (config / "..data_tmp").symlink_to(new.name)
    (config / "..data_tmp").replace(config / "..data")
    shutil.rmtree(config / f"..v{generation - 1}")


def der_of(issued: Issued) -> bytes:
    return ssl.PEM_cert_to_DER_cert(issued.cert.read_text())


def rotation_part(work: Path, rotations: int) -> dict[str, dict[str, Any]]:
    gw = Gateway(work, backend=False)
    try:
        ctx, port = gw.context(), gw.ports["ec"]
        results: dict[str, dict[str, Any]] = {}
        jitter = random.Random(3)
        for style in (RENAME, SWAP):
            if style == SWAP:
                link(gw.config, "ec")  # the same content: nothing new to serve
            out: dict[str, Any] = {"ms": [], "last_old_ms": [], "compiles": [], "failed_probes": 0}
            for i in range(rotations):
                issued = gw.web_ca.issue(HOST, [HOST], days=365, stem=f"renewed-{len(results)}-{i}")
                new = der_of(issued)
                # Longer than the quiet period (a change on a calm system), and at a random phase of
                # the watcher's polls: whole seconds would land on the same phase every time.
                time.sleep(1.0 + jitter.random() * 0.1)
                before = gw.plane.metrics()
                if style == RENAME:
                    install(gw.config, issued, "ec")
                else:
                    swap(gw.config, issued, "ec", i + 1)
                changed = time.monotonic()
                last_old = 0.0
                while True:
                    try:
                        der = gw.served(port, ctx)
                    except OSError:
                        out["failed_probes"] += 1
                        der = b""
                    now = time.monotonic() - changed
                    if der == new:
                        break
                    last_old = now
                    if now > 30:
                        raise RuntimeError(f"{style}: the renewed certificate never reached a handshake")
                    time.sleep(PROBE_INTERVAL)
                out["ms"].append(1000 * now)
                out["last_old_ms"].append(1000 * last_old)
                after = gw.plane.metrics()
                compiles = {
                    r: metric_sum(after, "controlplane_compiles_total", f'result="{r}"')
                    - metric_sum(before, "controlplane_compiles_total", f'result="{r}"')
                    for r in ("ok", "error")
                }
                out["compiles"].append(compiles)
                print(f"  {style}: the new certificate in a handshake after {1000 * now:.0f} ms", flush=True)
            results[style] = out
        return results
    finally:
        gw.stop()


def rotation_report(results: dict[str, dict[str, Any]]) -> str:
    defaults = serve_defaults()
    rows, notes = [], []
    for style, out in results.items():
        ms = out["ms"]
        rows.append(
            [
                style,
                str(len(ms)),
                f"{median(ms):.0f}",
                f"{min(ms):.0f}",
                f"{max(ms):.0f}",
                f"{median(out['last_old_ms']):.0f}",
                f"{'MET' if max(ms) < 1000 else 'MISSED'} (max {max(ms):.0f} ms)",
            ]
        )
        compiles = out["compiles"]
        notes.append(
            f"{style.split(',')[0].split(' (')[0]}: compiles per rotation {median([c['ok'] for c in compiles]):g} "
            f"good, {median([c['error'] for c in compiles]):g} with errors (median); failed probes "
            f"{out['failed_probes']}"
        )
    header = [
        "change",
        "rotations",
        "median ms",
        "min ms",
        "max ms",
        "last handshake with the old one, median ms",
        "goal < 1 s",
    ]
    return (
        table(header, rows)
        + f"\n\n`serve` defaults: poll interval {defaults.poll_interval:g} s, quiet period "
        + f"{defaults.quiet_period:g} s. "
        + "; ".join(notes)
        + "."
    )


# -- part 4: SDS rotation across 100 simulated nodes -------------------------------------------


class Node:
    """One ADS stream subscribed to the listener's certificate, ACKing every response."""

    def __init__(self, index: int, cert: Issued, delta: bool):
        self.index, self.cert, self.delta = index, cert, delta
        self.arrivals: list[tuple[float, int, bytes]] = []  # (monotonic, response bytes, the response)
        self.changed = asyncio.Event()

    async def run(self, target: str, ca: bytes, ready: asyncio.Event) -> None:
        creds = grpc.ssl_channel_credentials(ca, self.cert.key.read_bytes(), self.cert.cert.read_bytes())
        options = [("grpc.ssl_target_name_override", "localhost"), ("grpc.use_local_subchannel_pool", 1)]
        async with grpc.aio.secure_channel(target, creds, options=options) as channel:
            node = base_pb2.Node(id=f"node-{self.index}", cluster="gateway")
            if self.delta:
                call = channel.stream_stream(
                    DELTA_METHOD, request_serializer=discovery_pb2.DeltaDiscoveryRequest.SerializeToString
                )
                stream = call()
                await stream.write(
                    discovery_pb2.DeltaDiscoveryRequest(
                        node=node, type_url=SECRET_TYPE, resource_names_subscribe=[LISTENER_SECRET]
                    )
                )
            else:
                call = channel.stream_stream(
                    SOTW_METHOD, request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString
                )
                stream = call()
                await stream.write(
                    discovery_pb2.DiscoveryRequest(node=node, type_url=SECRET_TYPE, resource_names=[LISTENER_SECRET])
                )
            while True:
                raw = await stream.read()
                if raw is grpc.aio.EOF:
                    return
                self.arrivals.append((time.monotonic(), len(raw), raw))
                self.changed.set()
                ready.set()
                if self.delta:
                    got = discovery_pb2.DeltaDiscoveryResponse.FromString(raw)
                    await stream.write(
                        discovery_pb2.DeltaDiscoveryRequest(type_url=SECRET_TYPE, response_nonce=got.nonce)
                    )
                else:
                    sotw = discovery_pb2.DiscoveryResponse.FromString(raw)
                    await stream.write(
                        discovery_pb2.DiscoveryRequest(
                            type_url=SECRET_TYPE,
                            resource_names=[LISTENER_SECRET],
                            version_info=sotw.version_info,
                            response_nonce=sotw.nonce,
                        )
                    )

    def first_with(self, marker: bytes, since: float) -> float | None:
        return next((t for t, _n, raw in self.arrivals if t >= since and marker in raw), None)


def marker_of(issued: Issued) -> bytes:
    """A line of the certificate's PEM: found in a response only if it carries that certificate."""
    return issued.cert.read_bytes().splitlines()[3]


async def sds_rotations(
    gw: Gateway, certs: list[Issued], delta: bool, rotations: int, renewals: Iterator[Issued]
) -> dict[str, Any]:
    assert gw.plane.proc is not None
    ca = gw.pki.ca.path.read_bytes()
    target = f"127.0.0.1:{gw.plane.xds_port}"
    nodes = [Node(i, cert, delta) for i, cert in enumerate(certs)]
    readies = [asyncio.Event() for _ in nodes]
    tasks = [asyncio.create_task(n.run(target, ca, r)) for n, r in zip(nodes, readies, strict=True)]
    out: dict[str, Any] = {"first": [], "median": [], "all": [], "bytes": [], "server_bytes": [], "cpu_ms": []}
    try:
        started = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 60)
        out["connect_s"] = time.monotonic() - started
        jitter = random.Random(4)
        for _ in range(rotations):
            await asyncio.sleep(1.0 + jitter.random() * 0.1)  # past the quiet period, at a random poll phase
            issued = next(renewals)
            marker = marker_of(issued)
            before = gw.plane.metrics()
            cpu0 = tree_seconds(gw.plane.proc.pid)
            for n in nodes:
                n.changed.clear()
            install(gw.config, issued, "ec")
            changed = time.monotonic()
            deadline = changed + 30
            while any(n.first_with(marker, changed) is None for n in nodes):
                if time.monotonic() > deadline:
                    missing = sum(n.first_with(marker, changed) is None for n in nodes)
                    raise RuntimeError(f"{missing} nodes never got the renewed certificate")
                await asyncio.sleep(0.002)
            await asyncio.sleep(0.5)  # anything pushed after it is counted too
            cpu1 = tree_seconds(gw.plane.proc.pid)
            after = gw.plane.metrics()
            times = sorted(1000 * (t - changed) for n in nodes if (t := n.first_with(marker, changed)) is not None)
            out["first"].append(times[0])
            out["median"].append(median(times))
            out["all"].append(times[-1])
            out["bytes"].append(sum(size for n in nodes for t, size, _raw in n.arrivals if t >= changed))
            out["server_bytes"].append(
                metric_sum(after, "xds_push_bytes_total", "Secret")
                - metric_sum(before, "xds_push_bytes_total", "Secret")
            )
            out["cpu_ms"].append(1000 * (cpu1 - cpu0))
            print(
                f"  {'delta' if delta else 'sotw'}: all {len(nodes)} nodes had the new certificate after "
                f"{times[-1]:.0f} ms (first {times[0]:.0f} ms), {out['bytes'][-1]:,} bytes",
                flush=True,
            )
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return out


def sds_part(work: Path, rotations: int) -> dict[str, dict[str, Any]]:
    gw = Gateway(work, backend=False, envoy=False)  # the 100 simulated nodes are the only ones
    try:
        certs = [gw.pki.ca.issue(f"node-{i}", client=True, unit="gateway", stem=f"node-{i}") for i in range(NODES)]
        renewals = iter([gw.web_ca.issue(HOST, [HOST], days=365, stem=f"sds-{i}") for i in range(2 * rotations)])

        async def both() -> dict[str, dict[str, Any]]:  # one loop: gRPC's aio layer stays on it
            return {
                protocol: await sds_rotations(gw, certs, protocol == "delta", rotations, renewals)
                for protocol in ("delta", "sotw")
            }

        return asyncio.run(both())
    finally:
        gw.stop()


def sds_report(results: dict[str, dict[str, Any]]) -> str:
    rows = []
    for protocol, out in results.items():
        rows.append(
            [
                "delta" if protocol == "delta" else "state of the world",
                str(NODES),
                f"{len(out['all'])}",
                spread(out["first"]),
                spread(out["median"]),
                spread(out["all"]),
                spread(out["bytes"]),
                spread([b / NODES for b in out["bytes"]]),
                spread(out["server_bytes"]),
                spread(out["cpu_ms"]),
            ]
        )
    return table(
        [
            "protocol",
            "nodes",
            "rotations",
            "first node ms",
            "median node ms",
            "all nodes ms",
            "bytes received, all nodes",
            "per node",
            "bytes the control plane counted",
            "control plane CPU ms",
        ],
        rows,
    )


# -- main ----------------------------------------------------------------------------------------

PARTS = ("https", "upstream", "rotation", "sds")


def main() -> None:
    if "--client" in sys.argv[1:]:
        client_main()
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=[*PARTS, "all"], default="all")
    p.add_argument("--rounds", type=int, default=5, help="rounds of the CPU parts (default %(default)s)")
    p.add_argument("--seconds", type=float, default=2.0, help="length of one CPU run (default %(default)s)")
    p.add_argument("--connections", type=int, default=4, help="the client's connections at once (default %(default)s)")
    p.add_argument("--rotations", type=int, default=10, help="certificate rotations of part 3 (default %(default)s)")
    p.add_argument(
        "--sds-rotations", type=int, default=5, help="rotations per protocol of part 4 (default %(default)s)"
    )
    p.add_argument("--quick", action="store_true", help="a smoke run: 2 rounds of 0.5 s, 3 + 2 rotations")
    p.add_argument("--quiet", action="store_true", help=f"the machine was quiet (else figures say '{UNDER_LOAD}')")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.rotations, args.sds_rotations = 2, 0.5, 3, 2
    parts = PARTS if args.part == "all" else (args.part,)
    started = time.perf_counter()
    header = f"{machine()}; Envoy {envoy_version()}; code {git_state(None)}"
    print(header, flush=True)
    sections: list[str] = []
    load = "" if args.quiet else f", {UNDER_LOAD}"
    with tempfile.TemporaryDirectory(prefix="tls-bench-") as tmp:
        root = Path(tmp)
        for part in parts:
            work = root / part
            work.mkdir()
            t = time.perf_counter()
            print(f"\n{part}:", flush=True)
            section = run_part(part, work, args, load)
            sections.append(section + f"\n\n({time.perf_counter() - t:.0f} s)")
    print("\n\n" + "\n\n".join(sections))
    print(f"\n{header}; {time.perf_counter() - started:.0f} s in all")


def envoy_version() -> str:
    text = subprocess.run([find_envoy() or "envoy", "--version"], capture_output=True, text=True).stdout
    parts = text.split("version:")[-1].strip().split("/")  # <sha>/1.40.0/Clean/RELEASE/BoringSSL
    return parts[1] if len(parts) > 1 else text.strip()


def run_part(part: str, work: Path, args: argparse.Namespace, load: str) -> str:
    cpu_note = (
        f"One gateway Envoy (--concurrency 1); {args.connections} client connections at once, one request in "
        f"flight each; {args.rounds} rounds of {args.seconds:g} s runs, shuffled; median (min-max){load}. "
        "Ratios and differences per round against the floor of the same round."
    )
    if part == "https":
        cases = https_cases()
        results = cpu_part(work, cases, args.rounds, args.seconds, args.connections)
        return f"#### HTTPS vs HTTP at the gateway\n\n{cpu_note}\n\n{https_report(results, cases)}"
    if part == "upstream":
        cases = upstream_cases()
        results = cpu_part(work, cases, args.rounds, args.seconds, args.connections)
        return (
            "#### Gateway → backend mTLS vs plain HTTP (plain, keep-alive downstream)\n\n"
            f"{cpu_note}\n\n{upstream_report(results, cases)}"
        )
    if part == "rotation":
        out = rotation_part(work, args.rotations)
        return (
            "#### A renewed certificate file → the first handshake presenting it\n\n"
            "`python -m controlplane serve` with its defaults, one gateway Envoy getting its certificate over SDS; "
            "time from the change on disk (the last rename) to the end of the first handshake that presents the "
            f"new certificate, probed by a Python TLS client every {1000 * PROBE_INTERVAL:g} ms plus its "
            f"handshake; an ECDSA P-256 certificate{load}.\n\n{rotation_report(out)}"
        )
    sds = sds_part(work, args.sds_rotations)
    return (
        f"#### SDS rotation across {NODES} simulated nodes\n\n"
        f"{NODES} ADS streams (gRPC, each its own mTLS channel and certificate of unit `gateway`) subscribed "
        f"to the listener's certificate, ACKing every response; times from the rename of the certificate file "
        f"(`serve` defaults); bytes are the responses' protobuf bytes; median (min-max) over the "
        f"rotations{load}.\n\n{sds_report(sds)}"
    )


if __name__ == "__main__":
    main()
