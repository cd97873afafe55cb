"""The global rate-limit service: how to count in Redis, and what a decision costs.

Part 1, counting strategies (one Redis, the redis-py asyncio client the service uses), each
as a ratio to a bare PING round trip measured in the same run:

- ``pipeline``: INCRBY + EXPIRE per window in one non-transactional pipeline (the classic
  way; a refused request still counts in every window);
- ``script``: the service's Lua script by EVALSHA (reads the windows, adds only when the
  hits fit in all of them, so a refused request consumes nothing);
- ``script, batched``: the same through the service's counter, which sends the calls made
  in one turn of the event loop in one pipeline.

Each is timed one call at a time (latency) and with 32 calls in flight (throughput), with
Redis's own CPU per call.

Part 2, the service end to end: real service processes (1, then 2, sharing one Redis),
limits from a fake control plane over ADS, ShouldRateLimit calls from load-generator
processes (two descriptors per call: minute + hour for one of 1,000 consumers). It reports
decisions per second, CPU per decision of the service, Redis and the load generators, and the
latency of one call at a time (p50, p99). The floor, measured in each round the same way, is
a bare grpc.aio server answering OK at once: what gRPC in Python costs before any counting.

    python bench/ratelimit_service_bench.py [--seconds 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

from _common import machine, spread, table  # noqa: E402

CONSUMERS = 1000
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system time of a process, every thread included (also those that ended)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


# -- part 1: counting strategies ---------------------------------------------------------------


async def _repeat(call: Any, until: float) -> int:
    done = 0
    while time.perf_counter() < until:
        await call()
        done += 1
    return done


async def _strategies(url: str, redis_pid: int, seconds: float) -> dict[str, dict[str, float]]:
    import redis.asyncio as aioredis

    from controlplane.ratelimit.store import COUNT_SCRIPT, Bucket, _arguments, bucket_tag, single, window_key

    client = aioredis.Redis.from_url(url)
    sha = await client.script_load(COUNT_SCRIPT)

    def keys() -> tuple[str, str]:
        tag = bucket_tag("gateway", "per-consumer", [("consumer", f"c{random.randrange(CONSUMERS)}")])
        return window_key(tag, "minute", 0), window_key(tag, "hour", 0)

    async def ping() -> None:
        await client.ping()

    async def pipeline() -> None:
        minute, hour = keys()
        pipe = client.pipeline(transaction=False)
        pipe.incrby(minute, 1)
        pipe.expire(minute, 61)
        pipe.incrby(hour, 1)
        pipe.expire(hour, 3601)
        await pipe.execute()

    async def script() -> None:
        minute, hour = keys()
        bucket = Bucket((minute, hour), (10**9, 10**9), (61, 3601), 1, True)
        await client.evalsha(sha, *_arguments([bucket]))

    counter = single(url, timeout=1.0)

    async def batched() -> None:
        minute, hour = keys()
        await counter.count([Bucket((minute, hour), (10**9, 10**9), (61, 3601), 1, True)])

    results: dict[str, dict[str, float]] = {}
    calls = (("ping", ping), ("pipeline", pipeline), ("script", script), ("script, batched", batched))
    for name, call in calls:
        for _ in range(200):
            await call()  # warm: connections open, script cached
        # One at a time: latency.
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds / 2:
            await call()
            done += 1
        latency = (time.perf_counter() - started) / done
        # 32 in flight: throughput, and Redis's CPU per call.
        redis_before, started = cpu_seconds(redis_pid), time.perf_counter()
        counts = await asyncio.gather(*(_repeat(call, started + seconds / 2) for _ in range(32)))
        count = sum(counts)
        elapsed = time.perf_counter() - started
        results[name] = {
            "latency_us": latency * 1e6,
            "per_second": count / elapsed,
            "redis_cpu_us": (cpu_seconds(redis_pid) - redis_before) / count * 1e6,
        }
    await client.aclose()
    await counter.close()
    return results


# -- part 2: the service -----------------------------------------------------------------------


async def _load(targets: list[str], seconds: float, concurrency: int, sequential: bool) -> dict[str, Any]:
    import grpc
    from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
    from envoy.service.ratelimit.v3 import rls_pb2

    Entry = ratelimit_pb2.RateLimitDescriptor.Entry
    requests = []
    for i in range(CONSUMERS):
        descriptors = [
            ratelimit_pb2.RateLimitDescriptor(
                entries=[
                    Entry(key="limit", value="per-consumer"),
                    Entry(key="window", value=w),
                    Entry(key="consumer", value=f"c{i}"),
                ]
            )
            for w in ("minute", "hour")
        ]
        requests.append(rls_pb2.RateLimitRequest(domain="gateway", descriptors=descriptors))
    channels = [grpc.aio.insecure_channel(t) for t in targets]
    calls = [
        c.unary_unary(
            "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
            request_serializer=rls_pb2.RateLimitRequest.SerializeToString,
            response_deserializer=rls_pb2.RateLimitResponse.FromString,
        )
        for c in channels
    ]
    for call in calls:
        for _ in range(50):
            await call(requests[0])
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def worker(n: int) -> None:
        nonlocal errors
        call = calls[n % len(calls)]
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                await call(requests[random.randrange(CONSUMERS)])
            except grpc.aio.AioRpcError:
                errors += 1
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker(n) for n in range(1 if sequential else concurrency)))
    elapsed = time.perf_counter() - started
    for c in channels:
        await c.close()
    return {"count": len(latencies), "elapsed": elapsed, "errors": errors, "latencies": latencies}


def loadgen_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--targets", required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--sequential", action="store_true")
    args = p.parse_args(argv)
    result = asyncio.run(_load(args.targets.split(","), args.seconds, args.concurrency, args.sequential))
    lat = sorted(result.pop("latencies"))
    result["p50_us"] = lat[len(lat) // 2] * 1e6 if lat else 0
    result["p99_us"] = lat[int(len(lat) * 0.99)] * 1e6 if lat else 0
    print(json.dumps(result))


def _run_loadgens(
    targets: list[str], seconds: float, procs: int, sequential: bool
) -> tuple[list[dict[str, Any]], float]:
    cmd = [sys.executable, __file__, "--loadgen", "--targets", ",".join(targets), "--seconds", str(seconds)]
    if sequential:
        cmd.append("--sequential")
    children = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(procs)]
    outputs = []
    cpu = 0.0
    for child in children:
        out, _ = child.communicate(timeout=seconds + 60)
        outputs.append(json.loads(out))
    # The children have exited: their CPU is in our children's rusage.
    cpu = os.times().children_user + os.times().children_system
    return outputs, cpu


async def _floor_server(port: int) -> None:
    """A grpc.aio RateLimitService that answers OK at once: what gRPC in Python costs alone."""
    import grpc
    from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

    answer = rls_pb2.RateLimitResponse(overall_code=rls_pb2.RateLimitResponse.Code.OK)

    class Constant(rls_pb2_grpc.RateLimitServiceServicer):  # type: ignore[misc]
        async def ShouldRateLimit(self, request: Any, context: Any) -> Any:
            return answer

    server = grpc.aio.server()
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(Constant(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


def _start_floor(port: int) -> subprocess.Popen[bytes]:
    import socket

    proc = subprocess.Popen([sys.executable, __file__, "--floor-server", str(port)])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("the floor server did not start")


def _service_round(workdir: Path, redis: Any, ads: Any, processes: int, seconds: float) -> dict[str, float]:
    """``processes`` service processes (0: the bare gRPC floor) under load."""
    from tests.redis_harness import RateLimitService, free_port

    services = [
        RateLimitService(workdir, ads.address, ["--redis", redis.url], test_clock=False) for _ in range(processes)
    ]
    floor: subprocess.Popen[bytes] | None = None
    try:
        if processes:
            for s in services:
                s.start()
            targets = [s.address for s in services]
            pids = [s.proc.pid for s in services if s.proc is not None]
        else:
            port = free_port()
            floor = _start_floor(port)
            targets, pids = [f"127.0.0.1:{port}"], [floor.pid]
        # Throughput: two load generators, 32 calls in flight each, spread over the processes.
        before = [cpu_seconds(p) for p in pids], cpu_seconds(redis.proc.pid)
        children_before = os.times().children_user + os.times().children_system
        outputs, children_after = _run_loadgens(targets, seconds, 2, sequential=False)
        service_cpu = sum(cpu_seconds(p) - b for p, b in zip(pids, before[0], strict=True))
        redis_cpu = cpu_seconds(redis.proc.pid) - before[1]
        total = sum(o["count"] for o in outputs)
        per_second = sum(o["count"] / o["elapsed"] for o in outputs)
        errors = sum(o["errors"] for o in outputs)
        # Latency: one call at a time, nothing else running.
        single, _ = _run_loadgens(targets[:1], seconds / 2, 1, sequential=True)
        return {
            "per_second": per_second,
            "service_cpu_us": service_cpu / total * 1e6,
            "redis_cpu_us": redis_cpu / total * 1e6,
            "loadgen_cpu_us": (children_after - children_before) / total * 1e6,
            "p50_us": single[0]["p50_us"],
            "p99_us": single[0]["p99_us"],
            "errors": errors,
        }
    finally:
        for s in services:
            s.stop()
        if floor is not None:
            floor.terminate()
            floor.wait(10)


def main() -> int:
    if "--loadgen" in sys.argv:
        loadgen_main([a for a in sys.argv[1:] if a != "--loadgen"])
        return 0
    if sys.argv[1:2] == ["--floor-server"]:
        asyncio.run(_floor_server(int(sys.argv[2])))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=3.0, help="per measurement (default %(default)s)")
    p.add_argument("--rounds", type=int, default=3, help="rounds, in alternating orders (default %(default)s)")
    p.add_argument("--floor-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args()

    from tests.redis_harness import FakeAds, RedisServer, domain_resource

    print(f"# rate-limit service bench: {machine()}\n")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        redis = RedisServer(workdir / "redis").start()
        ads = FakeAds()
        ads.push([domain_resource("gateway", {"per-consumer": {"windows": {"minute": 10**9, "hour": 10**9}}})], "v1")
        try:
            strategy_rounds: list[dict[str, dict[str, float]]] = []
            service_rounds: dict[int, list[dict[str, float]]] = {0: [], 1: [], 2: []}
            for r in range(args.rounds):
                assert redis.proc is not None
                strategy_rounds.append(asyncio.run(_strategies(redis.url, redis.proc.pid, args.seconds)))
                for processes in (0, 1, 2) if r % 2 == 0 else (2, 1, 0):
                    service_rounds[processes].append(_service_round(workdir, redis, ads, processes, args.seconds))
        finally:
            ads.close()
            redis.stop()

    print("## Counting in Redis (redis-py asyncio; ratio: to a PING round trip in the same round)\n")
    rows = []
    for name in ("ping", "pipeline", "script", "script, batched"):
        lat = [r[name]["latency_us"] for r in strategy_rounds]
        ratio = [r[name]["latency_us"] / r["ping"]["latency_us"] for r in strategy_rounds]
        tput = [r[name]["per_second"] for r in strategy_rounds]
        tput_ratio = [r[name]["per_second"] / r["ping"]["per_second"] for r in strategy_rounds]
        cpu = [r[name]["redis_cpu_us"] for r in strategy_rounds]
        rows.append([name, spread(lat), spread(ratio), spread(tput), spread(tput_ratio), spread(cpu)])
    print(
        table(
            ["call", "latency µs (1 in flight)", "x PING", "calls/s (32 in flight)", "x PING", "Redis CPU µs/call"],
            rows,
        )
    )
    print("\n## The service (ShouldRateLimit, minute + hour descriptors, 1,000 consumers)\n")
    rows = []
    floor_cpu = [x["service_cpu_us"] for x in service_rounds[0]]
    for processes, results in service_rounds.items():

        def col(key: str, rs: list[dict[str, float]] = results) -> list[float]:
            return [x[key] for x in rs]

        name = f"{processes} process{'es' if processes > 1 else ''}" if processes else "floor: bare gRPC, constant OK"
        rows.append(
            [
                name,
                spread(col("per_second")),
                spread(col("service_cpu_us")),
                spread([c / f for c, f in zip(col("service_cpu_us"), floor_cpu, strict=True)]),
                spread(col("redis_cpu_us")),
                spread(col("loadgen_cpu_us")),
                spread(col("p50_us")),
                spread(col("p99_us")),
                str(int(sum(col("errors")))),
            ]
        )
    print(
        table(
            [
                "service",
                "decisions/s",
                "service CPU µs/decision",
                "x floor (same round)",
                "Redis CPU µs",
                "load gen CPU µs",
                "p50 µs (1 in flight)",
                "p99 µs",
                "errors",
            ],
            rows,
        )
    )
    one, two = (statistics.median(x["per_second"] for x in service_rounds[n]) for n in (1, 2))
    print(
        f"\n2 processes / 1 process: {two / one:.2f}x decisions/s "
        f"({os.cpu_count()} cores shared with the load generators)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
