"""Certificates over SDS on the ADS stream, through a real control plane and real Envoys:
who may have them, and rotation under traffic with no restart and no dropped request."""

from __future__ import annotations

import base64
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2

from controlplane.certs import CertificateAuthority, Issued
from controlplane.echo import EchoServer
from controlplane.resources import Resources
from tests.harness import EnvoyProcess, free_port
from tests.xds_harness import ControlPlaneProcess, Pki, http_get, start_envoy, wait_for

pytestmark = pytest.mark.envoy

SPEC = """
openapi: 3.0.3
info: {title: items, version: "1"}
servers: [{url: /items}]
paths:
  /list:
    get: {operationId: list, responses: {"200": {description: ok}}}
"""
SECRET = "secure/cert-0"


@pytest.fixture
def setup(tmp_path: Path, echo: EchoServer) -> Iterator[dict[str, Any]]:
    pki = Pki.make(tmp_path / "pki")
    web = CertificateAuthority(tmp_path / "pki", "web-ca")
    first = web.issue("api.example.com", ["api.example.com"], stem="first")
    config = tmp_path / "config"
    config.mkdir()
    shutil.copy(first.cert, config / "server.crt")
    shutil.copy(first.key, config / "server.key")
    port = free_port()
    (config / "spec.yaml").write_text(SPEC)
    (config / "policy.yaml").write_text(
        f"""
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
listeners:
  - name: secure
    address: 127.0.0.1
    port: {port}
    tls:
      certificates: [{{certFile: server.crt, keyFile: server.key}}]
upstreams: [{{name: backend, endpoints: ["127.0.0.1:{echo.port}"]}}]
apis: [{{name: x, spec: spec.yaml, upstream: backend, pathPrefix: /x}}]
"""
    )
    plane = ControlPlaneProcess([config], tmp_path, pki).start()
    envoys: list[EnvoyProcess] = []
    yield {"pki": pki, "web": web, "first": first, "config": config, "port": port, "plane": plane, "envoys": envoys}
    for e in envoys:
        e.stop()
    plane.stop()


def gateway_cert(pki: Pki, unit: str | None = "gateway", cn: str = "gateway-1") -> Issued:
    return pki.ca.issue(cn, client=True, unit=unit, stem=f"{cn}-{unit}")


def tls_context(web: CertificateAuthority) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(web.path))


def served_serial(port: int, ctx: ssl.SSLContext) -> int:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="api.example.com") as s,
    ):
        der = s.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def https_status(port: int, ctx: ssl.SSLContext) -> int:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="api.example.com") as s,
    ):
        s.sendall(b"GET /x/list HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_certificates_arrive_over_sds(setup: dict[str, Any], delta: bool) -> None:
    envoy = start_envoy(setup["config"].parent, setup["plane"], delta=delta, client=gateway_cert(setup["pki"]))
    setup["envoys"].append(envoy)
    ctx = tls_context(setup["web"])
    wait_for(lambda: https_status(setup["port"], ctx) == 200, 20, "HTTPS through the gateway")
    assert (
        served_serial(setup["port"], ctx)
        == x509.load_pem_x509_certificate(setup["first"].cert.read_bytes()).serial_number
    )
    # the listener carries only a reference: the key never travels inside it
    _status, dump = envoy.admin("/config_dump?resource=dynamic_active_secrets")
    assert SECRET in dump
    _status, listeners = envoy.admin("/config_dump?resource=dynamic_listeners")
    assert "PRIVATE KEY" not in listeners
    # status: which node holds which certificate until when; metrics: days to expiry
    plane: ControlPlaneProcess = setup["plane"]
    expiry = x509.load_pem_x509_certificate(setup["first"].cert.read_bytes()).not_valid_after_utc
    node = wait_for(lambda: (n := plane.node("gateway-1")) and n["certificates"] and n, 10, "the node's certificates")
    assert node["certificates"] == [{"secret": SECRET, "not_after": expiry.isoformat()}]
    (row,) = plane.status()["certificates"]
    assert row["file"].endswith("server.crt") and 0 < row["days_left"] <= 1
    _code, metrics = http_get(plane.admin_port, "/metrics")
    line = next(x for x in metrics.decode().splitlines() if x.startswith("controlplane_certificate_expiry_days{"))
    assert f'secret="{SECRET}"' in line and 0 < float(line.rsplit(" ", 1)[1]) <= 1
    shown = subprocess.run(
        [sys.executable, "-m", "controlplane", "status", "--server", f"127.0.0.1:{plane.admin_port}"],
        capture_output=True,
        text=True,
    )
    assert f"certificate {SECRET} (" in shown.stdout and "on gateway-1" in shown.stdout, shown.stdout
    live = subprocess.run(
        [
            sys.executable,
            "-m",
            "controlplane",
            "dump",
            "--server",
            f"127.0.0.1:{plane.admin_port}",
            "--node",
            "gateway-1",
        ],
        capture_output=True,
        text=True,
    )
    assert live.returncode == 0 and SECRET in live.stdout, live.stderr
    key_b64 = base64.b64encode(setup["first"].key.read_bytes()).decode()[:40]
    assert key_b64 not in live.stdout and "redacted" in live.stdout  # what was sent, never the key


class HttpsTraffic(threading.Thread):
    """One keep-alive connection sending requests in a loop, and a new connection per request
    beside it; every failure is kept."""

    def __init__(self, port: int, ctx: ssl.SSLContext):
        super().__init__(daemon=True)
        self.port, self.ctx = port, ctx
        self.kept_alive = 0
        self.fresh = 0
        self.failures: list[str] = []
        self.stop_event = threading.Event()

    def run(self) -> None:
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        conn = self.ctx.wrap_socket(raw, server_hostname="api.example.com")
        buf = b""
        try:
            while not self.stop_event.is_set():
                try:
                    conn.sendall(b"GET /x/list HTTP/1.1\r\nHost: api.example.com\r\n\r\n")
                    while b"\r\n\r\n" not in buf:
                        chunk = conn.recv(65536)
                        if not chunk:
                            raise ConnectionError("the kept-alive connection was closed")
                        buf += chunk
                    head, _, rest = buf.partition(b"\r\n\r\n")
                    length = int(
                        next(
                            line.split(b":")[1]
                            for line in head.split(b"\r\n")
                            if line.lower().startswith(b"content-length")
                        )
                    )
                    while len(rest) < length:
                        rest += conn.recv(65536)
                    buf = rest[length:]
                    if b" 200 " not in head.split(b"\r\n")[0] + b" ":
                        self.failures.append(head.split(b"\r\n")[0].decode())
                    self.kept_alive += 1
                    status = https_status(self.port, self.ctx)
                    if status != 200:
                        self.failures.append(f"fresh connection: {status}")
                    self.fresh += 1
                except (OSError, ValueError, StopIteration) as exc:
                    self.failures.append(repr(exc))
                    return
        finally:
            conn.close()


def test_a_renewed_certificate_is_pushed_without_restart_or_drop(setup: dict[str, Any]) -> None:
    envoy = start_envoy(setup["config"].parent, setup["plane"], client=gateway_cert(setup["pki"]))
    setup["envoys"].append(envoy)
    ctx = tls_context(setup["web"])
    port = setup["port"]
    wait_for(lambda: https_status(port, ctx) == 200, 20, "HTTPS through the gateway")
    first_serial = served_serial(port, ctx)
    pid = envoy.proc.pid
    traffic = HttpsTraffic(port, ctx)
    traffic.start()
    wait_for(lambda: traffic.kept_alive >= 5, 10, "traffic before the renewal")
    renewed = setup["web"].issue("api.example.com", ["api.example.com"], key_type="rsa", stem="renewed")
    # as a certificate manager renews: write new files, rename them over the old ones
    config: Path = setup["config"]
    shutil.copy(renewed.key, config / "server.key.new")
    shutil.copy(renewed.cert, config / "server.crt.new")
    (config / "server.key.new").replace(config / "server.key")
    (config / "server.crt.new").replace(config / "server.crt")
    new_serial = x509.load_pem_x509_certificate(renewed.cert.read_bytes()).serial_number
    wait_for(lambda: served_serial(port, ctx) == new_serial, 15, "new handshakes to present the renewed certificate")
    seen = traffic.kept_alive
    wait_for(lambda: traffic.kept_alive >= seen + 5 or traffic.failures, 10, "traffic after the renewal")
    traffic.stop_event.set()
    traffic.join(10)
    assert not traffic.failures, traffic.failures
    assert first_serial != new_serial
    assert envoy.proc.pid == pid and envoy.proc.poll() is None
    _status, stats = envoy.admin("/stats?filter=listener_manager.listener_(modified|removed)")
    assert "listener_manager.listener_modified: 0" in stats, stats  # no drain: the listener never changed


# -- who may have the secrets ------------------------------------------------------------------


def ask_for_secret(plane: ControlPlaneProcess, cert: Issued | None, node_cluster: str = "gateway") -> Any:
    """A delta ADS stream that subscribes to the listener's certificate; the first response."""
    if cert is None:
        channel = grpc.insecure_channel(f"127.0.0.1:{plane.xds_port}")
    else:
        assert plane.pki is not None
        creds = grpc.ssl_channel_credentials(
            plane.pki.ca.path.read_bytes(), cert.key.read_bytes(), cert.cert.read_bytes()
        )
        channel = grpc.secure_channel(
            f"127.0.0.1:{plane.xds_port}", creds, options=[("grpc.ssl_target_name_override", "localhost")]
        )
    call = channel.stream_stream(
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources",
        request_serializer=discovery_pb2.DeltaDiscoveryRequest.SerializeToString,
        response_deserializer=discovery_pb2.DeltaDiscoveryResponse.FromString,
    )
    request = discovery_pb2.DeltaDiscoveryRequest(
        node=base_pb2.Node(id="curious", cluster=node_cluster),
        type_url=Resources.SECRET,
        resource_names_subscribe=[SECRET],
    )
    done = threading.Event()

    def requests() -> Iterator[discovery_pb2.DeltaDiscoveryRequest]:
        yield request
        done.wait(10)

    try:
        return next(iter(call(requests(), timeout=10)))
    finally:
        done.set()
        channel.close()


def test_a_gateway_node_gets_the_certificate(setup: dict[str, Any]) -> None:
    response = ask_for_secret(setup["plane"], gateway_cert(setup["pki"]))
    assert [r.name for r in response.resources] == [SECRET]
    secret = secret_pb2.Secret()
    response.resources[0].resource.Unpack(secret)
    assert b"PRIVATE KEY" in secret.tls_certificate.private_key.inline_bytes


@pytest.mark.parametrize("who", ["another-group", "no-group", "claims-gateway-in-its-node"])
def test_other_nodes_get_nothing(setup: dict[str, Any], who: str) -> None:
    pki = setup["pki"]
    unit = {"another-group": "ratelimit", "no-group": None, "claims-gateway-in-its-node": "sidecar"}[who]
    response = ask_for_secret(setup["plane"], gateway_cert(pki, unit, cn=f"node-{who}"), node_cluster="gateway")
    assert not response.resources
    assert SECRET in response.removed_resources  # told it does not exist, not left waiting
    assert "asked for certificates and keys: refused" in setup["plane"].logs()


def test_plaintext_nodes_get_nothing(tmp_path: Path, setup: dict[str, Any]) -> None:
    plane = ControlPlaneProcess([setup["config"]], tmp_path, None).start()
    try:
        response = ask_for_secret(plane, None)
        assert not response.resources and SECRET in response.removed_resources
        wait_for(lambda: "its channel is not mTLS" in plane.logs(), 5, "the refusal in the log")
    finally:
        plane.stop()


def test_a_renewal_written_key_first_is_not_an_error_unless_it_stays_half_done(setup: dict[str, Any]) -> None:
    envoy = start_envoy(setup["config"].parent, setup["plane"], client=gateway_cert(setup["pki"]))
    setup["envoys"].append(envoy)
    plane: ControlPlaneProcess = setup["plane"]
    ctx = tls_context(setup["web"])
    port = setup["port"]
    wait_for(lambda: https_status(port, ctx) == 200, 20, "HTTPS through the gateway")
    config: Path = setup["config"]
    renewed = setup["web"].issue("api.example.com", ["api.example.com"], stem="renewed-key-first")
    shutil.copy(renewed.key, config / "server.key.new")
    (config / "server.key.new").replace(config / "server.key")
    wait_for(lambda: "do not match (yet?)" in plane.logs(), 10, "the calm warning")
    shutil.copy(renewed.cert, config / "server.crt.new")
    (config / "server.crt.new").replace(config / "server.crt")
    new_serial = x509.load_pem_x509_certificate(renewed.cert.read_bytes()).serial_number
    wait_for(lambda: served_serial(port, ctx) == new_serial, 15, "the renewed certificate")
    # a mismatch that stays is an error (after the quiet period and the longest burst)
    other = setup["web"].issue("api.example.com", ["api.example.com"], stem="stray-key")
    assert "change rejected" not in plane.logs()
    shutil.copy(other.key, config / "server.key.new")
    (config / "server.key.new").replace(config / "server.key")
    wait_for(lambda: "change rejected" in plane.logs(), 15, "the error once the pair stays mismatched")
    assert served_serial(port, ctx) == new_serial  # the last good certificate still serves
