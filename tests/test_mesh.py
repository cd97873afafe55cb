"""Backends that only answer the gateway: a real control plane, a gateway Envoy, a sidecar
Envoy beside the application, workload certificates issued and renewed over SDS.

The sidecar is tried from outside as an attacker on the backend network would: no
certificate, a certificate from another CA, a valid mesh certificate of another identity,
plain HTTP. The renewal test keeps traffic running across several renewals."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from controlplane import ir
from controlplane.certs import CertificateAuthority, Issued
from controlplane.echo import EchoServer
from controlplane.workloads import Authority
from tests.harness import EnvoyProcess, free_port, raw_request
from tests.xds_harness import ControlPlaneProcess, Pki, start_envoy, wait_for

pytestmark = pytest.mark.envoy

SPEC = """
openapi: 3.0.3
info: {title: orders, version: "1"}
servers: [{url: /orders}]
paths:
  /list:
    get: {operationId: list, responses: {"200": {description: ok}}}
"""
TRUST_DOMAIN = "test.local"


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[dict[str, Any]]:
    app = EchoServer().start()
    pki = Pki.make(tmp_path / "pki")
    mesh_ca = CertificateAuthority(tmp_path / "pki", "mesh-ca", days=365)
    (tmp_path / "pki" / "mesh-ca.key").write_bytes(
        mesh_ca.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    config = tmp_path / "config"
    config.mkdir()
    (config / "spec.yaml").write_text(SPEC)
    gateway_port, sidecar_port = free_port(), free_port()
    (config / "policy.yaml").write_text(
        f"""
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
listeners: [{{name: public, address: 127.0.0.1, port: {gateway_port}}}]
upstreams: [{{name: orders, endpoints: ["127.0.0.1:{sidecar_port}"]}}]
apis: [{{name: orders, spec: spec.yaml, upstream: orders}}]
mesh:
  trustDomain: {TRUST_DOMAIN}
  ca: {{certFile: {mesh_ca.path}, keyFile: {tmp_path / "pki" / "mesh-ca.key"}}}
  certificateTtl: 10s
  backends:
    - {{name: orders, upstream: orders, address: 127.0.0.1, port: {sidecar_port}, app: "127.0.0.1:{app.port}"}}
"""
    )
    plane = ControlPlaneProcess([config], tmp_path, pki).start()
    envoys: list[EnvoyProcess] = []

    def envoy(unit: str, node: str) -> EnvoyProcess:
        cert = pki.ca.issue(node, client=True, unit=unit, stem=node)
        e = start_envoy(tmp_path, plane, node_id=node, client=cert)
        envoys.append(e)
        return e

    state = {
        "tmp": tmp_path,
        "app": app,
        "plane": plane,
        "gateway_port": gateway_port,
        "sidecar_port": sidecar_port,
        "mesh_ca": mesh_ca,
        "gateway": envoy("gateway", "gateway-1"),
        "sidecar": envoy("backend.orders", "orders-sidecar-1"),
    }
    wait_for(lambda: get(gateway_port)[0] == 200, 20, "a request through gateway and sidecar")
    yield state
    for e in envoys:
        e.stop()
    plane.stop()
    app.shutdown()


def get(port: int, path: str = "/orders/list") -> tuple[int, dict[str, Any]]:
    resp = raw_request(port, f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    try:
        body = json.loads(resp.body)
    except ValueError:
        body = {}
    return resp.status, body


def test_the_gateway_reaches_the_backend_over_mtls(mesh: dict[str, Any]) -> None:
    status, seen = get(mesh["gateway_port"])
    assert status == 200
    # the application learns which gateway identity called, from the sidecar
    assert f"URI=spiffe://{TRUST_DOMAIN}/gateway/gateway" in seen["headers"]["x-forwarded-client-cert"]
    _code, stats = mesh["sidecar"].admin("/stats?filter=listener.127.0.0.1_.*ssl.handshake")
    assert any(line.endswith(": 0") is False for line in stats.splitlines() if "ssl.handshake" in line), stats


def _client(tmp: Path, ca: CertificateAuthority, name: str, cert: Issued | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the attacker does not care who the sidecar is
    if cert is not None:
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
    return ctx


def _mesh_identity(mesh: dict[str, Any], uri: str) -> Issued:
    """A certificate the mesh CA really signed, for ``uri``."""
    ca: CertificateAuthority = mesh["mesh_ca"]
    tmp: Path = mesh["tmp"]
    key_pem = (tmp / "pki" / "mesh-ca.key").read_text()
    authority = Authority(ir.Certificate("ca", "", "", ca.path.read_text(), key_pem))
    issued = authority.issue(uri, 3600)
    name = uri.rsplit("/", 1)[1]
    (tmp / f"{name}.crt").write_text(issued.cert_pem)
    (tmp / f"{name}.key").write_text(issued.key_pem)
    return Issued(tmp / f"{name}.crt", tmp / f"{name}.key")


def _sidecar_answers(port: int, ctx: ssl.SSLContext) -> bool:
    """True when a request sent straight to the sidecar gets an HTTP answer."""
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            ctx.wrap_socket(raw, server_hostname="orders") as s,
        ):
            s.sendall(b"GET /orders/list HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            return s.recv(100).startswith(b"HTTP/")
    except (ssl.SSLError, OSError):
        return False


@pytest.mark.parametrize("who", ["no-certificate", "another-ca", "another-identity", "a-backend-identity"])
def test_the_sidecar_refuses_everyone_but_the_gateway(mesh: dict[str, Any], who: str) -> None:
    tmp: Path = mesh["tmp"]
    cert: Issued | None = None
    if who == "another-ca":
        cert = CertificateAuthority(tmp, "evil-ca").issue(
            "gateway", client=True, uris=[f"spiffe://{TRUST_DOMAIN}/gateway/gateway"]
        )
    elif who == "another-identity":
        cert = _mesh_identity(mesh, f"spiffe://{TRUST_DOMAIN}/intruder/gateway")
    elif who == "a-backend-identity":
        cert = _mesh_identity(mesh, f"spiffe://{TRUST_DOMAIN}/backend/payments")
    before = len(mesh["app"].received)
    assert not _sidecar_answers(mesh["sidecar_port"], _client(tmp, mesh["mesh_ca"], who, cert))
    # the control: the gateway's own identity, signed by the same CA, is answered
    own = _mesh_identity(mesh, f"spiffe://{TRUST_DOMAIN}/gateway/gateway")
    assert _sidecar_answers(mesh["sidecar_port"], _client(tmp, mesh["mesh_ca"], "own", own))
    assert len(mesh["app"].received) == before + 1


def test_plain_http_to_the_sidecar_is_refused(mesh: dict[str, Any]) -> None:
    before = len(mesh["app"].received)
    try:
        resp = raw_request(mesh["sidecar_port"], b"GET /orders/list HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        answered = resp.status
    except (OSError, ValueError):
        answered = 0
    assert answered == 0
    assert len(mesh["app"].received) == before


def _serials(envoy: EnvoyProcess) -> set[str]:
    _code, text = envoy.admin("/certs")
    data = json.loads(text)
    return {
        c["serial_number"]
        for entry in data.get("certificates", [])
        for c in entry.get("cert_chain", [])
        if any("spiffe://" in san.get("uri", "") for san in c.get("subject_alt_names", []))
    }


def test_workload_certificates_renew_under_traffic(mesh: dict[str, Any]) -> None:
    failures: list[str] = []
    ok = [0]
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            try:
                status, _ = get(mesh["gateway_port"])
                if status == 200:
                    ok[0] += 1
                else:
                    failures.append(str(status))
            except (OSError, ValueError) as exc:
                failures.append(repr(exc))

    seen_sidecar: set[str] = set(_serials(mesh["sidecar"]))
    seen_gateway: set[str] = set(_serials(mesh["gateway"]))
    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    try:
        # a 10 s lifetime is renewed every 5 s: wait for two renewals on both sides
        def renewed() -> bool:
            seen_sidecar.update(_serials(mesh["sidecar"]))
            seen_gateway.update(_serials(mesh["gateway"]))
            return len(seen_sidecar) >= 3 and len(seen_gateway) >= 3

        wait_for(renewed, 30, "two renewals of the workload certificates", interval=0.5)
    finally:
        stop.set()
        thread.join(10)
    assert not failures, failures[:5]
    assert ok[0] > 20
    assert mesh["gateway"].proc.poll() is None and mesh["sidecar"].proc.poll() is None
    status = mesh["plane"].status()
    held = {c["secret"] for n in status["nodes"] for c in n["certificates"]}
    assert {"mesh/gateway", "mesh/backend/orders"} <= held


def test_bootstrap_for_a_sidecar(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "controlplane",
            "bootstrap",
            "--node-id",
            "orders-1",
            "--sidecar",
            "orders",
            "--xds-address",
            "127.0.0.1:18000",
            "--insecure",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["node"] == {"id": "orders-1", "cluster": "backend.orders"}
