"""Key rotation, both ways: keys Envoy fetches itself (cached, not re-fetched on an unknown
kid) and keys the control plane fetches and pushes over xDS (refreshed on demand).

A real control plane process, a real Envoy over ADS, a real HTTPS JWKS server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from controlplane.certs import CertificateAuthority
from controlplane.echo import EchoServer
from controlplane.idp import IdentityProvider, JwksServer, SigningKey
from tests.harness import free_port, raw_request
from tests.xds_harness import ControlPlaneProcess, http_get, start_envoy, wait_for

pytestmark = pytest.mark.envoy

SPEC = """
openapi: 3.0.3
info: {title: t, version: "1"}
servers: [{url: /}]
security: [{bearer: []}]
components: {securitySchemes: {bearer: {type: http, scheme: bearer}}}
paths:
  /items:
    get: {operationId: listItems, responses: {"200": {description: ok}}}
"""


CACHE_DURATION_S = 3  # the by-envoy provider's cacheDuration


def policy(listener: int, backend: int, jwks: int, ca: Path) -> str:
    uri = f"https://localhost:{jwks}/.well-known/jwks.json"
    return f"""
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
auth:
  providers:
    - {{name: by-envoy, issuer: https://idp.test,
       jwks: {{uri: "{uri}", caFile: {ca}, cacheDuration: {CACHE_DURATION_S}s}}}}
    - {{name: by-controlplane, issuer: https://idp.test,
       jwks: {{uri: "{uri}", caFile: {ca}, fetch: controlplane, refreshInterval: 1h}}}}
listeners: [{{name: public, address: 127.0.0.1, port: {listener}}}]
upstreams: [{{name: backend, endpoints: ["127.0.0.1:{backend}"]}}]
apis:
  - {{name: remote, spec: spec.yaml, upstream: backend, pathPrefix: /remote, upstreamPathPrefix: /,
     auth: {{provider: by-envoy}}}}
  - {{name: pushed, spec: spec.yaml, upstream: backend, pathPrefix: /pushed, upstreamPathPrefix: /,
     auth: {{provider: by-controlplane}}}}
"""


@pytest.fixture
def world(tmp_path: Path, echo: EchoServer) -> Iterator[tuple[IdentityProvider, JwksServer, ControlPlaneProcess, int]]:
    ca = CertificateAuthority(tmp_path, "ca")
    cert = ca.issue("localhost", ["localhost", "127.0.0.1"])
    idp = IdentityProvider("https://idp.test", [SigningKey.generate("RS256", "key-a")])
    jwks = JwksServer(idp, tls=(str(cert.cert), str(cert.key))).start()
    config = tmp_path / "config"
    config.mkdir()
    listener = free_port()
    (config / "spec.yaml").write_text(SPEC)
    (config / "policy.yaml").write_text(policy(listener, echo.port, jwks.port, ca.path))
    plane = ControlPlaneProcess([config], tmp_path).start()
    envoy = start_envoy(tmp_path, plane)
    try:
        yield idp, jwks, plane, listener
    finally:
        envoy.stop()
        plane.stop()
        jwks.shutdown()


def status(port: int, path: str, token: str) -> int:
    request = f"GET {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
    return raw_request(port, request).status


def test_rotation_window_remote_vs_pushed_keys(
    world: tuple[IdentityProvider, JwksServer, ControlPlaneProcess, int],
) -> None:
    idp, jwks, plane, port = world
    old = idp.mint({"sub": "a"})
    wait_for(lambda: status(port, "/pushed/items", old) == 200, 20, "pushed keys in use")
    wait_for(lambda: status(port, "/remote/items", old) == 200, 20, "remote keys in use")

    # 1. keys Envoy fetches: new tokens are refused until its next fetch, cacheDuration after
    #    the last one (an unknown kid does not trigger one). Rotating right after a fetch
    #    leaves the whole cache duration for the checks. Nothing else changes meanwhile: any
    #    listener update would rebuild the filter, which fetches at once.
    seen = jwks.fetches
    wait_for(lambda: jwks.fetches > seen, 3 * CACHE_DURATION_S, "one of Envoy's periodic fetches")
    fetched_at = time.monotonic()
    idp.rotate(SigningKey.generate("RS256", "key-b"))
    new = idp.mint({"sub": "a"})
    fetches = jwks.fetches
    assert [status(port, "/remote/items", new) for _ in range(3)] == [401] * 3
    wait_for(lambda: status(port, "/remote/items", new) == 200, 3 * CACHE_DURATION_S, "the next periodic fetch")
    assert jwks.fetches == fetches + 1  # one fetch let the new key in...
    # ...the periodic one: an unknown kid triggering a fetch would have let it in at once
    assert time.monotonic() - fetched_at > CACHE_DURATION_S - 1

    # 2. keys the control plane pushes: refreshed on demand (an identity provider's rotation
    #    hook, or an operator), live as soon as Envoy ACKs
    idp.rotate(SigningKey.generate("RS256", "key-c"))
    newer = idp.mint({"sub": "a"})
    assert status(port, "/pushed/items", newer) == 401
    _code, body = http_get(plane.admin_port, "/refresh_jwks")
    assert b'"by-controlplane": true' in body
    wait_for(lambda: status(port, "/pushed/items", newer) == 200, 10, "the pushed new key", interval=0.01)
    assert status(port, "/pushed/items", new) == 401  # the removed key is refused at once (the same push)
