"""Throughput and Envoy CPU per request through the generated auth chain, beside plain proxying.

One Envoy (``--concurrency 1``, static bootstrap from ``controlplane.compile``) serves two
operations of one spec in the same run:

- ``/plain``: public, proxied (the floor);
- ``/secure``: client address allowlist (RBAC, before authentication), JWT verification
  (RS256, ``jwt_authn`` with its verified-token cache), role authorization (RBAC on the
  verified payload), identity headers from claims.

Cases: plain; secure with one repeated token (the cache hit path); secure with a new token
for every request (every one verified: no repetition within the cache).

    python bench/auth_bench.py                 # about 2 minutes
    python bench/auth_bench.py --rounds 3 --requests 4000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine, median, spread, table
from route_bench import BENCH, Client, Envoy, free_port, stat_cpu_s

REPO = BENCH.parent
sys.path.insert(0, str(REPO))

from controlplane import compile  # noqa: E402
from controlplane.bootstrap import AdminOptions, static_bootstrap  # noqa: E402
from controlplane.idp import IdentityProvider, SigningKey  # noqa: E402
from controlplane.resources import to_dict  # noqa: E402

SPEC = """
openapi: 3.0.3
info: {title: auth bench, version: "1"}
servers: [{url: /}]
security: [{bearer: []}]
components: {securitySchemes: {bearer: {type: http, scheme: bearer}}}
paths:
  /plain:
    get: {operationId: plain, security: [], responses: {"200": {description: ok}}}
  /secure:
    get:
      operationId: secure
      x-gateway: {ipAllow: [127.0.0.0/8, 10.0.0.0/8]}
      responses: {"200": {description: ok}}
"""

POLICY = """
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
gateway: {{accessLog: false}}
auth:
  providers:
    - {{name: idp, issuer: https://idp.bench, audiences: [bench], jwks: {{file: jwks.json}}}}
listeners: [{{name: bench, address: 127.0.0.1, port: {port}}}]
upstreams: [{{name: backend, endpoints: ["127.0.0.1:{backend}"]}}]
apis:
  - name: bench
    spec: spec.yaml
    upstream: backend
    auth:
      rules: [{{roles: [customer], operations: ["*"]}}]
"""


def request(path: str, token: str | None) -> str:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return f"GET {path} HTTP/1.1\r\nHost: bench\r\n{auth}\r\n"


def run(envoy: Envoy, client: Client, requests: list[str], count: int) -> dict[str, float]:
    before = stat_cpu_s(envoy.proc.pid)
    out = client.run_many(requests, count)
    cpu = stat_cpu_s(envoy.proc.pid) - before
    if out["statuses"] != {"200": count}:
        raise SystemExit(f"unexpected statuses {out['statuses']}: {out['sample']}")
    return {"cpu_us": cpu / count * 1e6, "rps": count / out["wall"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--requests", type=int, default=5000, help="requests per case per round")
    p.add_argument("--connections", type=int, default=4)
    args = p.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory(prefix="auth-bench-") as tmp:
        work = Path(tmp)
        idp = IdentityProvider("https://idp.bench", [SigningKey.generate("RS256", "bench")])
        (work / "jwks.json").write_text(json.dumps(idp.jwks()))
        backend_port, port, admin = free_port(), free_port(), free_port()
        (work / "spec.yaml").write_text(SPEC)
        (work / "policy.yaml").write_text(POLICY.format(port=port, backend=backend_port))
        result = compile([work])
        assert result.ok and result.gateway and result.resources, result.diagnostics
        backend = subprocess.Popen([sys.executable, str(BENCH / "_http.py"), "backend", str(backend_port)])
        envoy = Envoy(
            "auth",
            to_dict(static_bootstrap(result.gateway, result.resources, AdminOptions(port=admin))),
            work,
            admin,
            port,
        )
        client = Client(port, args.connections)
        t0 = time.perf_counter()
        # unique tokens: more than the rounds need, none repeated (the cache never hits)
        unique = [
            idp.mint({"sub": f"user{i}", "role": "customer"}, audience="bench", ttl=7200)
            for i in range(args.rounds * args.requests + args.requests)
        ]
        print(f"minted {len(unique)} tokens in {time.perf_counter() - t0:.1f}s")
        repeated = idp.mint({"sub": "alice", "role": "customer"}, audience="bench", ttl=7200)
        cases = {
            "plain (public route, proxied)": lambda r: [request("/plain", None)],
            "auth chain, one repeated token": lambda r: [request("/secure", repeated)],
            "auth chain, a new token each request": lambda r: [
                request("/secure", t) for t in unique[(r + 1) * args.requests : (r + 2) * args.requests]
            ],
        }
        # warm-up: connections, the token cache for the repeated token, first verifications
        for name, make in cases.items():
            run(
                envoy,
                client,
                make(-1) if "new token" not in name else [request("/secure", t) for t in unique[:500]],
                500,
            )
        results: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
        for r in range(args.rounds):
            order = list(cases) if r % 2 == 0 else list(reversed(cases))
            for name in order:
                results[name].append(run(envoy, client, cases[name](r), args.requests))
            print(
                f"round {r + 1}/{args.rounds}: "
                + ", ".join(f"{n.split(',')[0].split(' (')[0]}: {results[n][-1]['rps']:.0f} rps" for n in cases),
                flush=True,
            )
        client.stop()
        envoy.stop()
        backend.terminate()
    plain = median([x["rps"] for x in results["plain (public route, proxied)"]])
    rows = []
    for name, runs in results.items():
        rps = [x["rps"] for x in runs]
        cpu = [x["cpu_us"] for x in runs]
        rows.append([name, spread(rps), spread(cpu), f"{median(rps) / plain:.2f}"])
    print()
    print(
        f"Envoy --concurrency 1, {args.connections} keep-alive connections, {args.requests} requests per case and "
        f"round, {args.rounds} rounds; median (min-max)"
    )
    print(table(["case", "requests/s", "Envoy CPU µs/request", "throughput / plain"], rows))
    ratio = median([x["rps"] for x in results["auth chain, one repeated token"]]) / plain
    print(f"\ngoal: repeated-token throughput >= 0.85x plain: {ratio:.2f} -> {'MET' if ratio >= 0.85 else 'MISSED'}")
    # With a few connections Envoy is not saturated; its capacity is 1 / CPU per request.
    cpu = {n: median([x["cpu_us"] for x in runs]) for n, runs in results.items()}
    capacity = cpu["plain (public route, proxied)"] / cpu["auth chain, one repeated token"]
    print(
        f"capacity (CPU per request, plain / auth chain): {capacity:.2f}; unique tokens: "
        f"{cpu['plain (public route, proxied)'] / cpu['auth chain, a new token each request']:.2f}"
    )


if __name__ == "__main__":
    main()
