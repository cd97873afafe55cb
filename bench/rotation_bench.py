"""The window of 401s after a signing key rotation: keys Envoy fetches vs keys the control
plane pushes.

A real control plane (``python -m controlplane serve``), a real Envoy over ADS, an HTTPS JWKS
server. Each round rotates the identity provider's key (the old one is removed) and sends
requests with a token signed by the new key until one is accepted:

- ``remote``: Envoy fetches the keys itself (``jwks.fetch: envoy``, ``cacheDuration`` below);
  an unknown ``kid`` does not make it fetch again, so the window lasts until its next fetch
  (measured: with a 30 s cache, new-key tokens were still refused 20 s after the rotation).
- ``pushed``: the control plane fetches them (``jwks.fetch: controlplane``) and is told to
  refresh (``/refresh_jwks``, e.g. from the identity provider's rotation hook); the window is
  fetch + compile + push + Envoy's ACK.

    python bench/rotation_bench.py               # about a minute
    python bench/rotation_bench.py --rounds 10 --cache 10
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from _common import machine, median, spread, table
from route_bench import BENCH, Envoy, free_port

REPO = BENCH.parent
sys.path.insert(0, str(REPO))

from controlplane.bootstrap import AdminOptions, XdsOptions, dynamic_bootstrap  # noqa: E402
from controlplane.certs import CertificateAuthority  # noqa: E402
from controlplane.idp import IdentityProvider, JwksServer, SigningKey  # noqa: E402
from controlplane.resources import to_dict  # noqa: E402
from tests.harness import raw_request  # noqa: E402
from tests.test_key_rotation import SPEC  # noqa: E402  (the spec the rotation test uses)


def policy(mode: str, listener: int, backend: int, jwks: int, ca: Path, cache: int) -> str:
    fetch = "fetch: controlplane, refreshInterval: 1h" if mode == "pushed" else f"cacheDuration: {cache}s"
    return f"""
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
gateway: {{accessLog: false}}
auth:
  providers:
    - {{name: idp, issuer: https://idp.bench,
       jwks: {{uri: "https://localhost:{jwks}/.well-known/jwks.json", caFile: {ca}, {fetch}}}}}
listeners: [{{name: public, address: 127.0.0.1, port: {listener}}}]
upstreams: [{{name: backend, endpoints: ["127.0.0.1:{backend}"]}}]
apis: [{{name: items, spec: spec.yaml, upstream: backend}}]
"""


def status(port: int, token: str) -> int:
    req = f"GET /items HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
    return raw_request(port, req).status


def wait(predicate: object, timeout: float, interval: float = 0.005) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if predicate():  # type: ignore[operator]
            return time.monotonic() - t0
        time.sleep(interval)
    raise SystemExit("timed out")


def measure(mode: str, rounds: int, cache: int, work: Path) -> list[float]:
    ca = CertificateAuthority(work, f"ca-{mode}")
    cert = ca.issue("localhost", ["localhost", "127.0.0.1"])
    idp = IdentityProvider("https://idp.bench", [SigningKey.generate("RS256", f"{mode}-0")])
    jwks = JwksServer(idp, tls=(str(cert.cert), str(cert.key))).start()
    config = work / mode
    config.mkdir()
    listener, backend_port, xds, admin, envoy_admin = (free_port() for _ in range(5))
    (config / "spec.yaml").write_text(SPEC)
    (config / "policy.yaml").write_text(policy(mode, listener, backend_port, jwks.port, ca.path, cache))
    backend = subprocess.Popen([sys.executable, str(BENCH / "_http.py"), "backend", str(backend_port)])
    plane = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "controlplane",
            "serve",
            str(config),
            "--insecure",
            "--xds-address",
            f"127.0.0.1:{xds}",
            "--admin-address",
            f"127.0.0.1:{admin}",
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    boot = dynamic_bootstrap(XdsOptions("bench", "127.0.0.1", xds, insecure=True), AdminOptions(port=envoy_admin))
    envoy = Envoy(mode, to_dict(boot), work, envoy_admin, listener)
    windows = []
    rng = random.Random(cache)
    try:
        wait(lambda: status(listener, idp.mint({"sub": "a"})) == 200, 60)
        for r in range(rounds):
            # a rotation lands anywhere in Envoy's fetch cycle
            time.sleep(0.5 if mode == "pushed" else rng.uniform(0, cache))
            idp.rotate(SigningKey.generate("RS256", f"{mode}-{r + 1}"))
            rotated = time.monotonic()
            token = idp.mint({"sub": "a"})
            if mode == "pushed":
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/refresh_jwks", timeout=30) as resp:
                    assert json.loads(resp.read())["changed"]["idp"] is True
            wait(lambda t=token: status(listener, t) == 200, cache + 30)
            windows.append(time.monotonic() - rotated)
            print(
                f"{mode} round {r + 1}/{rounds}: {windows[-1]:.3f}s (JWKS fetches so far: {jwks.fetches})", flush=True
            )
    finally:
        envoy.stop()
        plane.terminate()
        plane.wait(10)
        backend.terminate()
        jwks.shutdown()
    return windows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--cache", type=int, default=10, help="cacheDuration (s) of the remote keys")
    args = p.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory(prefix="rotation-bench-") as tmp:
        results = {mode: measure(mode, args.rounds, args.cache, Path(tmp)) for mode in ("pushed", "remote")}
    rows = [[mode, spread(w), f"{max(w):.3f}"] for mode, w in results.items()]
    print()
    print(
        f"seconds from the rotation to the first accepted new-key token; {args.rounds} rotations; "
        f"remote cacheDuration {args.cache}s"
    )
    print(table(["keys", "window s, median (min-max)", "worst s"], rows))
    print(
        f"\nremote: the window lasts until Envoy's next fetch (each worker thread fetches on its own), up to "
        f"cacheDuration: with the default 10m, up to 10 minutes of 401s for new-key tokens. "
        f"pushed: {median(results['pushed']) * 1000:.0f} ms median."
    )


if __name__ == "__main__":
    main()
