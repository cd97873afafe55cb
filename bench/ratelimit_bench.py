"""Rate limits through a real gateway: CPU per request of Envoy + the rate-limit service + Redis,
beside plain proxying measured in the same run.

What runs, started as the tests start it (tests/xds_harness.py, tests/redis_harness.py): a
real control plane (``python -m controlplane serve``) compiles the policy and pushes it to one
Envoy (``--concurrency 1``) and to two rate-limit service processes (``python -m controlplane
ratelimit``, the real clock) counting in one ``redis-server``; a minimal backend
(bench/_http.py); tokens really signed (RS256, ``controlplane.idp``), 16 consumers in turn.
Every limit is high enough never to refuse. Cases, one route each on the same Envoy:

- ``plain``: public, no limit: the floor;
- ``plain, 1 connection``: the same over one connection, at a rate near the global case's:
  Envoy's CPU per request grows as its rate falls (fewer events handled per wakeup), and the
  global case runs at a fraction of plain's rate;
- ``local limit``: public, ``{by: ip, enforcement: local}`` (Envoy's token bucket, no service);
- ``token, no limit``: JWT verified, nothing else: the floor of the next one;
- ``global limit``: JWT + ``{by: consumer, minute, hour}`` counted by the service in Redis
  (and the Envoy's local backstop bucket that every fail-open global limit has). The
  service's timeout is 1 s instead of 100 ms so that no request falls open uncounted when
  the saturated service queues (each run checks that the service decided every request);
- ``full chain``: allowlist + JWT + roles + the same global limit;
- ``global limit, 2 service processes``: the global case with the policy's
  ``rateLimits.service.endpoints`` listing both processes (a live policy edit; Envoy spreads
  the calls over both).

Each run sends a fixed number of requests (calibrated to ``--seconds`` per run) over
``--connections`` keep-alive connections, one request in flight each, from a Python client
in its own process (route_bench's ``Client``); the cases run in rounds, in a shuffled order
each round, the service's endpoint count alternating between rounds. CPU per process is read
from /proc before and after each run (every thread's schedstat, or /proc/<pid>/stat when a
thread came or went). Ratios are taken per round against the plain case of the same round.

Also measured: the service's decision latency under that load (the delta of its
``ratelimit_decision_seconds`` histogram on its admin port, bucket-interpolated) and with
one gRPC call at a time from this process (exact percentiles, a client's round trip);
count exactness (N requests over many connections at once on a route limited to L per
minute: exactly L allowed, through 1 and 2 service processes).

Goals (issue 9): a local limit costs <= 5% of plain capacity; a global limit keeps >= 0.6x
plain with the service's and Redis's CPU counted; service decision p99 < 2 ms; exact counts.

    python bench/ratelimit_bench.py            # about 3 minutes
    python bench/ratelimit_bench.py --quick    # under a minute: a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import git_state, machine, median, spread, table
from route_bench import BENCH, Client, free_port

REPO = BENCH.parent
sys.path.insert(0, str(REPO))

from controlplane.idp import IdentityProvider, SigningKey  # noqa: E402
from tests.redis_harness import RateLimitClient, RateLimitService, RedisServer, descriptor  # noqa: E402
from tests.xds_harness import ControlPlaneProcess, start_envoy, wait_for  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
NEVER = 1_000_000_000  # the schema's largest count: no limit of the bench ever refuses
EXACT_LIMIT = 50  # /exact: per consumer per minute
EXACT_REQUESTS = 200
CONSUMERS = 16
LOCAL_GOAL, GLOBAL_GOAL, P99_GOAL_MS = 0.95, 0.6, 2.0

SPEC = f"""
openapi: 3.0.3
info: {{title: ratelimit bench, version: "1"}}
servers: [{{url: /}}]
security: [{{bearer: []}}]
components: {{securitySchemes: {{bearer: {{type: http, scheme: bearer}}}}}}
paths:
  /plain:
    get: {{operationId: plain, security: [], responses: {{"200": {{description: ok}}}}}}
  /local:
    get:
      operationId: local
      security: []
      x-gateway: {{rateLimits: [{{name: per-ip, by: ip, minute: {NEVER}, enforcement: local}}]}}
      responses: {{"200": {{description: ok}}}}
  /token:
    get: {{operationId: token, responses: {{"200": {{description: ok}}}}}}
  /limited:
    get:
      operationId: limited
      x-gateway: {{rateLimits: [{{name: consumer, by: consumer, minute: {NEVER}, hour: {NEVER}}}]}}
      responses: {{"200": {{description: ok}}}}
  /secure:
    get:
      operationId: secure
      x-gateway:
        ipAllow: [127.0.0.0/8]
        roles: [customer]
        rateLimits: [{{name: consumer, by: consumer, minute: {NEVER}, hour: {NEVER}}}]
      responses: {{"200": {{description: ok}}}}
  /exact:
    get:
      operationId: exact
      x-gateway: {{rateLimits: [{{name: exact, by: consumer, minute: {EXACT_LIMIT}}}]}}
      responses: {{"200": {{description: ok}}}}
"""

POLICY = """
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
gateway: {{accessLog: false}}
auth:
  providers:
    - {{name: idp, issuer: https://idp.bench, audiences: [bench], jwks: {{file: jwks.json}}}}
rateLimits:
  service:
    endpoints: [{endpoints}]
    timeout: 1s
listeners: [{{name: bench, address: 127.0.0.1, port: {port}}}]
upstreams: [{{name: backend, endpoints: ["127.0.0.1:{backend}"]}}]
apis:
  - {{name: bench, spec: bench.yaml, upstream: backend, auth: {{provider: idp}}}}
"""

PLAIN = "plain (public, no limit)"
SLOW = "plain, 1 connection (a low-rate floor)"
LOCAL = "local limit (by ip)"
TOKEN = "token, no limit"
GLOBAL = "global limit (consumer, minute + hour)"
CHAIN = "full chain (allowlist + JWT + roles + global)"
GLOBAL2 = "global limit, 2 service processes"
ONE_SERVICE = [PLAIN, SLOW, LOCAL, TOKEN, GLOBAL, CHAIN]  # measured with one service endpoint
COUNTED = {GLOBAL, CHAIN, GLOBAL2}  # the cases that call the service


def request(path: str, token: str | None = None) -> str:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return f"GET {path} HTTP/1.1\r\nHost: bench\r\n{auth}\r\n"


# -- CPU of a process ----------------------------------------------------------------------------


@dataclass
class CpuReading:
    threads: dict[int, int]  # thread id -> on-CPU nanoseconds (schedstat)
    ticks: int  # utime + stime of the process, every thread included (also those that ended)


def read_cpu(pid: int) -> CpuReading:
    threads = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError, IndexError, ValueError):  # a thread that just ended
            threads[int(tid)] = int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return CpuReading(threads, int(fields[11]) + int(fields[12]))


def cpu_between(before: CpuReading, after: CpuReading) -> float:
    """Seconds on CPU: nanosecond schedstat when the same threads lived throughout, else the
    process's ticks (a thread that ended took its schedstat with it)."""
    if before.threads.keys() == after.threads.keys():
        return sum(after.threads[t] - before.threads[t] for t in after.threads) / 1e9
    return (after.ticks - before.ticks) / CLK_TCK


# -- the service's metrics -----------------------------------------------------------------------


def scrape(service: RateLimitService) -> dict[str, float]:
    """The samples the bench reads from /metrics: calls answered and the decision histogram."""
    _status, body = service.admin("GET", "/metrics")
    out: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line.startswith(("ratelimit_requests_total{", "ratelimit_decision_seconds_bucket{")):
            sample, _, value = line.rpartition(" ")
            out[sample] = float(value)
    return out


def calls(samples: dict[str, float]) -> float:
    return sum(v for k, v in samples.items() if k.startswith("ratelimit_requests_total{"))


def buckets(samples: dict[str, float]) -> list[tuple[float, float]]:
    """(upper bound in seconds, cumulative count) of the decision histogram, in order."""
    out = []
    for k, v in samples.items():
        if k.startswith("ratelimit_decision_seconds_bucket{"):
            le = k.split('le="', 1)[1].split('"', 1)[0]
            out.append((math.inf if le == "+Inf" else float(le), v))
    return sorted(out)


def histogram_delta(before: list[dict[str, float]], after: list[dict[str, float]]) -> list[tuple[float, float]]:
    """The decisions of a run, all services together: (bound, cumulative count) per bucket."""
    total: dict[float, float] = {}
    for b, a in zip(before, after, strict=True):
        old = dict(buckets(b))
        for bound, count in buckets(a):
            total[bound] = total.get(bound, 0.0) + count - old.get(bound, 0.0)
    return sorted(total.items())


def quantile(hist: list[tuple[float, float]], q: float) -> float:
    """Prometheus' histogram_quantile: linear within the bucket the quantile falls in (seconds)."""
    if not hist or hist[-1][1] == 0:
        return math.nan
    rank = q * hist[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in hist:
        if count >= rank:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = bound, count
    return lower


def share_within(hist: list[tuple[float, float]], seconds: float) -> float:
    """The fraction of decisions that took at most ``seconds`` (a bucket bound)."""
    return next((count for bound, count in hist if bound >= seconds), 0.0) / hist[-1][1] if hist else math.nan


# -- the rig -------------------------------------------------------------------------------------


class Rig:
    """Control plane, Envoy, two rate-limit services, Redis and the backend, for the whole run."""

    def __init__(self, work: Path, connections: int):
        self.work = work
        self.inputs = work / "inputs"
        self.inputs.mkdir()
        self.idp = IdentityProvider("https://idp.bench", [SigningKey.generate("RS256", "bench")])
        (self.inputs / "jwks.json").write_text(json.dumps(self.idp.jwks()))
        (self.inputs / "bench.yaml").write_text(SPEC)
        self.port, self.backend_port = free_port(), free_port()
        self.service_ports = [free_port(), free_port()]
        self.endpoints = 1
        self.write_policy(1)
        self.started: list[Any] = []
        self.backend = subprocess.Popen([sys.executable, str(BENCH / "_http.py"), "backend", str(self.backend_port)])
        try:
            self._start(connections)
        except BaseException:
            self.stop()
            raise

    def _start(self, connections: int) -> None:
        self.redis = RedisServer(self.work / "redis").start()
        self.started.append(self.redis)
        self.plane = ControlPlaneProcess([self.inputs], self.work).start()
        self.started.append(self.plane)
        self.services = []
        for port in self.service_ports:
            service = RateLimitService(
                self.work, f"127.0.0.1:{self.plane.xds_port}", ["--redis", self.redis.url], port=port, test_clock=False
            )
            service.extra = ["--log-level", "warning"]
            self.started.append(service)
            self.services.append(service.start())
        self.envoy = start_envoy(self.work, self.plane, node_id="bench")
        self.started.append(self.envoy)
        wait_for(lambda: self.service_hosts() == self.expected_hosts(1), 30, "the rate-limit cluster in Envoy")
        self.tokens = [
            self.idp.mint({"sub": f"consumer{i}", "role": "customer"}, audience="bench", ttl=7200)
            for i in range(CONSUMERS)
        ]
        self.client = Client(self.port, connections)
        self.one_connection = Client(self.port, 1)

    def write_policy(self, endpoints: int) -> None:
        listed = ", ".join(f'"127.0.0.1:{p}"' for p in self.service_ports[:endpoints])
        text = POLICY.format(endpoints=listed, port=self.port, backend=self.backend_port)
        tmp = self.inputs / "policy.yaml.tmp"
        tmp.write_text(text)
        tmp.rename(self.inputs / "policy.yaml")  # the watcher never sees half a file

    def expected_hosts(self, endpoints: int) -> set[str]:
        return {f"127.0.0.1:{p}" for p in self.service_ports[:endpoints]}

    def service_hosts(self) -> set[str]:
        _status, text = self.envoy.admin("/clusters")
        # host lines read ratelimit-service::127.0.0.1:PORT::stat::value
        return {
            parts[1] for parts in (line.split("::") for line in text.splitlines()) if parts[0] == "ratelimit-service"
        } & {f"127.0.0.1:{p}" for p in self.service_ports}

    def use_services(self, endpoints: int) -> None:
        """Point Envoy at the first ``endpoints`` services (a policy edit, pushed live), then
        send until each of them has answered."""
        if endpoints == self.endpoints:
            return
        self.write_policy(endpoints)
        wait_for(lambda: self.service_hosts() == self.expected_hosts(endpoints), 30, "Envoy to get the endpoints")
        self.endpoints = endpoints
        before = [calls(scrape(s)) for s in self.services[:endpoints]]

        def every_service_answers() -> bool:
            self.client.run_many(self.requests(GLOBAL), 200)
            return all(calls(scrape(s)) > b for s, b in zip(self.services, before, strict=False))

        wait_for(every_service_answers, 30, "every listed service to answer")

    def requests(self, case: str) -> list[str]:
        if case in (PLAIN, SLOW):
            return [request("/plain")]
        if case == LOCAL:
            return [request("/local")]
        path = {TOKEN: "/token", GLOBAL: "/limited", GLOBAL2: "/limited", CHAIN: "/secure"}[case]
        return [request(path, t) for t in self.tokens]

    def pids(self) -> dict[str, list[int]]:
        services = [s.proc.pid for s in self.services if s.proc is not None]
        assert self.redis.proc is not None
        return {"envoy": [self.envoy.proc.pid], "service": services, "redis": [self.redis.proc.pid]}

    def run(self, case: str, count: int) -> dict[str, float]:
        """``count`` requests of ``case``: CPU per request of each part, requests/s, decisions."""
        pids = self.pids()
        client = self.one_connection if case == SLOW else self.client
        pids["client"] = [client.proc.pid]
        metrics_before = [scrape(s) for s in self.services] if case in COUNTED else []
        before = {part: [read_cpu(p) for p in ps] for part, ps in pids.items()}
        out = client.run_many(self.requests(case), count)
        after = {part: [read_cpu(p) for p in ps] for part, ps in pids.items()}
        if out["statuses"] != {"200": count}:
            raise SystemExit(f"{case}: unexpected statuses {out['statuses']}: {out['sample']}")
        result = {
            f"{part}_us": sum(cpu_between(b, a) for b, a in zip(before[part], after[part], strict=True)) / count * 1e6
            for part in pids
        }
        result["rps"] = count / out["wall"]
        result["total_us"] = result["envoy_us"] + result["service_us"] + result["redis_us"]
        # How much of the machine the four took: near the core count, the run was CPU-bound.
        result["cores"] = (result["total_us"] + result["client_us"]) * result["rps"] / 1e6
        if metrics_before:
            metrics_after = [scrape(s) for s in self.services]
            per_service = [calls(a) - calls(b) for b, a in zip(metrics_before, metrics_after, strict=True)]
            # Every request must have been decided: a call that timed out lets the request
            # through uncounted (fail open), which would flatter the figures.
            result["undecided"] = count - sum(per_service)
            result["second_service_share"] = per_service[1] / max(sum(per_service), 1)
            hist = histogram_delta(metrics_before, metrics_after)
            result["p50_ms"] = quantile(hist, 0.5) * 1e3
            result["p99_ms"] = quantile(hist, 0.99) * 1e3
            result["within_2ms"] = share_within(hist, P99_GOAL_MS / 1e3)
        return result

    def exact(self) -> dict[str, int]:
        """EXACT_REQUESTS requests of one new consumer over every connection at once, on a route
        limited to EXACT_LIMIT a minute: the statuses."""
        into_minute = time.time() % 60
        if into_minute > 55:  # all within one minute window (the service counts on the real clock)
            time.sleep(60.2 - into_minute)
        token = self.idp.mint({"sub": f"exact-{uuid.uuid4().hex[:12]}", "role": "customer"}, audience="bench")
        out = self.client.run_many([request("/exact", token)], EXACT_REQUESTS)
        return {k: int(v) for k, v in out["statuses"].items()}

    def direct_latency(self, calls_count: int) -> dict[str, float]:
        """One ShouldRateLimit at a time from this process to the first service, the descriptors
        Envoy sends for /limited: the round trip as a gRPC client sees it (exact percentiles),
        and the decision as the service times it (its histogram)."""
        config = self.services[0].config() or {}
        limits = config.get("domains", {}).get("gateway", {})
        limit_id = next(i for i, spec in limits.items() if "limited" in i and spec.get("name") == "consumer")
        client = RateLimitClient(self.services[0].address)
        try:
            latencies = []
            for n in range(calls_count + 200):
                consumer = ("consumer:idp:sub", f"consumer{n % CONSUMERS}")
                descriptors = [descriptor(limit_id, w, consumer) for w in ("minute", "hour")]
                started = time.perf_counter()
                answer = client.ask(descriptors)
                elapsed = time.perf_counter() - started
                if answer.overall_code != 1:  # OK
                    raise SystemExit(f"the service refused a bench call: {answer}")
                if n >= 200:  # the first ones warm the channel
                    latencies.append(elapsed)
                if n == 199:
                    before = scrape(self.services[0])
        finally:
            client.close()
        hist = histogram_delta([before], [scrape(self.services[0])])
        latencies.sort()
        return {
            "p50_ms": latencies[len(latencies) // 2] * 1e3,
            "p99_ms": latencies[int(len(latencies) * 0.99)] * 1e3,
            "max_ms": latencies[-1] * 1e3,
            "service_p50_ms": quantile(hist, 0.5) * 1e3,
            "service_p99_ms": quantile(hist, 0.99) * 1e3,
            "service_within_2ms": share_within(hist, P99_GOAL_MS / 1e3),
        }

    def stop(self) -> None:
        for name in ("client", "one_connection"):
            client: Client | None = getattr(self, name, None)  # None when the start failed before it
            if client is not None:
                client.stop()
        for part in reversed(self.started):
            with contextlib.suppress(Exception):
                part.stop()
        self.backend.terminate()
        self.backend.wait(10)


# -- the run -------------------------------------------------------------------------------------


def calibrate(rig: Rig, cases: list[str], seconds: float) -> dict[str, int]:
    """Requests per run so that each case's run lasts about ``seconds``."""
    counts = {}
    for case in cases:
        rig.run(case, 300)  # warm: connections, the token cache, Redis keys
        out = rig.run(case, 1500)
        counts[case] = max(300, int(out["rps"] * seconds))
    return counts


def verdict(met: bool) -> str:
    return "MET" if met else "MISSED"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--seconds", type=float, default=2.0, help="length of one case's run (default %(default)s)")
    p.add_argument("--connections", type=int, default=64, help="keep-alive client connections (default %(default)s)")
    p.add_argument("--latency-calls", type=int, default=3000, help="gRPC calls of the direct latency phase")
    p.add_argument("--quick", action="store_true", help="a smoke run of under a minute (4 rounds of 1 s runs)")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.latency_calls = 4, 1.0, 1000
    print(f"{machine()}; code {git_state(None)}")
    started = time.perf_counter()
    results: dict[str, list[dict[str, float]]] = {case: [] for case in [*ONE_SERVICE, GLOBAL2]}
    with tempfile.TemporaryDirectory(prefix="ratelimit-bench-") as tmp:
        rig = Rig(Path(tmp), args.connections)
        try:
            counts = calibrate(rig, ONE_SERVICE, args.seconds)
            rig.use_services(2)
            counts.update(calibrate(rig, [GLOBAL2], args.seconds))
            print(f"ready in {time.perf_counter() - started:.0f} s; requests per run: {counts}", flush=True)
            for r in range(args.rounds):
                # One endpoint switch per round: 2,1 then 1,2 then 2,1...
                for endpoints in (1, 2) if r % 2 else (2, 1):
                    rig.use_services(endpoints)
                    cases = ONE_SERVICE[:] if endpoints == 1 else [GLOBAL2]
                    random.Random(r).shuffle(cases)  # no case always right after another
                    for case in cases:
                        results[case].append(rig.run(case, counts[case]))
                print(
                    f"round {r + 1}/{args.rounds}: "
                    + ", ".join(f"{c.split(' (')[0]}: {results[c][-1]['total_us']:.0f} µs" for c in results),
                    flush=True,
                )
            exact = {}
            for endpoints in (2, 1):
                rig.use_services(endpoints)
                exact[endpoints] = rig.exact()
            direct = rig.direct_latency(args.latency_calls)
        finally:
            rig.stop()
    report(args, results, exact, direct, time.perf_counter() - started)


def report(
    args: argparse.Namespace,
    results: dict[str, list[dict[str, float]]],
    exact: dict[int, dict[str, int]],
    direct: dict[str, float],
    wall: float,
) -> None:
    def col(case: str, key: str) -> list[float]:
        return [x[key] for x in results[case]]

    def per_round(case: str, ratio: Callable[[dict[str, float], dict[str, float]], float], floor: str) -> list[float]:
        return [ratio(f, x) for f, x in zip(results[floor], results[case], strict=True)]

    def capacity(case: str, floor: str = PLAIN) -> list[float]:
        return per_round(case, lambda f, x: f["total_us"] / x["total_us"], floor)

    def throughput(case: str, floor: str = PLAIN) -> list[float]:
        return per_round(case, lambda f, x: x["rps"] / f["rps"], floor)

    print(
        f"\nOne Envoy --concurrency 1, {args.connections} keep-alive connections (one request in flight each), "
        f"runs of about {args.seconds:g} s, {args.rounds} rounds in shuffled orders; median (min-max). "
        "CPU per request from /proc; total = Envoy + rate-limit services + Redis (the client's is apart); "
        "cores busy: all of them and the client together, CPU seconds per second. "
        "Ratios per round, against plain in the same round."
    )
    rows = []
    for case in results:
        rows.append(
            [
                case,
                spread(col(case, "envoy_us")),
                spread(col(case, "service_us")),
                spread(col(case, "redis_us")),
                spread(col(case, "total_us")),
                spread(capacity(case)),
                spread(col(case, "rps")),
                spread(throughput(case)),
                spread(col(case, "client_us")),
                spread(col(case, "cores")),
            ]
        )
    print(
        table(
            [
                "case",
                "Envoy µs/req",
                "service µs/req",
                "Redis µs/req",
                "total µs/req",
                "capacity vs plain (total CPU)",
                "requests/s",
                "requests/s vs plain",
                "client µs/req",
                "cores busy",
            ],
            rows,
        )
    )
    cpu = {case: median(col(case, "total_us")) for case in results}
    envoy = {case: median(col(case, "envoy_us")) for case in results}
    print(
        "\nshares (differences of medians): "
        f"local limit (Envoy) {envoy[LOCAL] - envoy[PLAIN]:+.1f} µs; "
        f"global limit over the token alone: Envoy {envoy[GLOBAL] - envoy[TOKEN]:+.1f} µs, "
        f"total {cpu[GLOBAL] - cpu[TOKEN]:+.1f} µs; "
        f"JWT (token vs plain) {cpu[TOKEN] - cpu[PLAIN]:+.1f} µs"
    )
    print(
        f"global limit vs token, no limit (the limit alone): capacity {spread(capacity(GLOBAL, TOKEN))}, "
        f"requests/s {spread(throughput(GLOBAL, TOKEN))}"
    )
    rps = {case: median(col(case, "rps")) for case in results}
    print(
        f"Envoy's CPU per request depends on its rate (fewer events per wakeup when slower): plain over 1 connection "
        f"{envoy[SLOW]:.0f} µs at {rps[SLOW]:,.0f} requests/s, over {args.connections} {envoy[PLAIN]:.0f} µs at "
        f"{rps[PLAIN]:,.0f}/s; the global case ({rps[GLOBAL]:,.0f}/s) costs Envoy "
        f"{envoy[GLOBAL] - envoy[SLOW]:+.0f} µs over the low-rate floor"
    )

    print("\nThe service's decisions during those runs (its ratelimit_decision_seconds histogram, bucket-interpolated)")
    rows = []
    for case in (GLOBAL, CHAIN, GLOBAL2):
        rows.append(
            [
                case,
                spread(col(case, "p50_ms")),
                spread(col(case, "p99_ms")),
                spread([100 * x for x in col(case, "within_2ms")]),
                str(int(sum(col(case, "undecided")))),
            ]
        )
    print(table(["case", "p50 ms", "p99 ms", "% within 2 ms", "undecided (fell open)"], rows))
    print(
        f"one call at a time from a gRPC client in the bench ({args.latency_calls} calls, minute + hour "
        f"descriptors): the client's round trip p50 {direct['p50_ms']:.2f} ms, p99 {direct['p99_ms']:.2f} ms, "
        f"max {direct['max_ms']:.2f} ms; the service's histogram p50 {direct['service_p50_ms']:.2f} ms, "
        f"p99 {direct['service_p99_ms']:.2f} ms, {100 * direct['service_within_2ms']:.1f} % within 2 ms"
    )

    one, two = col(GLOBAL, "rps"), col(GLOBAL2, "rps")
    print(
        f"\nscaling: 2 service processes / 1, requests/s of the global case per round: "
        f"{spread([b / a for a, b in zip(one, two, strict=True)])}; the second process answered "
        f"{spread([100 * x for x in col(GLOBAL2, 'second_service_share')])} % of the calls; "
        f"service CPU µs/request 1 process {spread(col(GLOBAL, 'service_us'))}, "
        f"2 processes {spread(col(GLOBAL2, 'service_us'))}"
    )
    for endpoints, statuses in sorted(exact.items()):
        exactly = statuses == {"200": EXACT_LIMIT, "429": EXACT_REQUESTS - EXACT_LIMIT}
        print(
            f"exactness, {endpoints} service process{'es' if endpoints > 1 else ''}: {EXACT_REQUESTS} requests of one "
            f"consumer over {args.connections} connections, limit {EXACT_LIMIT}/minute: {statuses} -> "
            f"{'EXACT' if exactly else 'WRONG'}"
        )

    local = median(capacity(LOCAL))
    global_capacity, global_rps = median(capacity(GLOBAL)), median(throughput(GLOBAL))
    p99 = median(col(GLOBAL, "p99_ms"))
    print("\ngoals:")
    print(f"  local limit capacity vs plain >= {LOCAL_GOAL}: {local:.2f} -> {verdict(local >= LOCAL_GOAL)}")
    print(
        f"  global limit vs plain >= {GLOBAL_GOAL}: total CPU capacity {global_capacity:.2f} -> "
        f"{verdict(global_capacity >= GLOBAL_GOAL)}; requests/s {global_rps:.2f} -> "
        f"{verdict(global_rps >= GLOBAL_GOAL)}"
    )
    print(
        f"  service decision p99 < {P99_GOAL_MS:g} ms: one call at a time {direct['service_p99_ms']:.2f} ms "
        f"(a Python client's round trip {direct['p99_ms']:.2f} ms) -> "
        f"{verdict(direct['service_p99_ms'] < P99_GOAL_MS)}; "
        f"with the service saturated by the global case {p99:.2f} ms -> {verdict(p99 < P99_GOAL_MS)}"
    )
    print(f"\n({wall:.0f} s)")


if __name__ == "__main__":
    main()
