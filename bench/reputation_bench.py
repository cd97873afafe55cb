"""IP-reputation feeds of 100k and 1M entries, and geo rules, beside plain proxying: compile
time, push size, a real Envoy's memory, and its CPU and latency per request.

For each size (``--sizes``, default ``0 100000 1000000``; 0 is the policy without
``reputation``), a deterministic synthetic feed: 99% single IPv4 addresses, 1% /24 ranges,
spread over the whole space (a 1M feed covers about 3.5M addresses, under the 1/1024 limit), as
a file next to the policy. One spec of two operations, one listener.

- **compile**: ``controlplane.compile([dir])`` as ``serve``'s worker runs it: the first one
  (wall and this process's CPU; the feeds are new to the process, as after a feed changed), the
  best of ``--compiles`` more with nothing changed ("again": as after a spec pushed, the parsed
  feeds and built tries kept), and the feed's parse alone (``reputation.parse``);
- **push size**: the serialized tries (the reputation filters' configurations, ECDS resources
  sent apart from the listener) and every resource together, as the xDS server sends them;
- **Envoy memory**: a real Envoy (``--concurrency 1``, static bootstrap of the same compile):
  its RSS (/proc) and ``server.memory_allocated`` once ready, and how long it took to be ready;
- **per request**: ``--rounds`` rounds of ``--requests`` keep-alive GETs, every variant's Envoy
  running at once and the rounds alternating between them (the median round is reported):
  from 127.0.0.2 (in no feed: the trie is searched and misses, the common case) and, with a
  feed, from a listed address (403: a hit). Envoy's CPU per request from /proc (every thread's
  schedstat) before and after, and the client's latency p50/p99. The backend is
  ``bench/_http.py backend`` (a fixed 200, its own process), the same for every size.

With ``--geo`` (the default), two more rows: the policy with a ``geo`` section (a MaxMind-format
database of ``--geo-networks`` random /24 networks and the clients' addresses) and a hard rule
on the listener (``deny: [CN]``: the client, placed in FR, is looked up and passes; a client
placed in CN gets 403: the "hit"), without a feed and with the largest feed: the cost of a
lookup, and of the address checks together.

Run: ``python bench/reputation_bench.py`` (a few minutes); ``--sizes 0 1000 --requests 500``
checks the script in seconds.
"""

from __future__ import annotations

import argparse
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import git_state, machine
from _http import _response_end

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ratelimit_bench import cpu_between, read_cpu  # noqa: E402

from controlplane import reputation  # noqa: E402
from controlplane.bootstrap import AdminOptions, static_bootstrap  # noqa: E402
from controlplane.compiler import compile  # noqa: E402
from controlplane.resources import to_dict  # noqa: E402
from controlplane.worker import serialize  # noqa: E402
from tests.harness import EnvoyProcess, free_port  # noqa: E402

SPEC = """openapi: 3.0.3
info: {title: things, version: "1"}
servers: [{url: /api}]
paths:
  /things:
    get: {operationId: listThings, responses: {"200": {description: ok}}}
  /other:
    get: {operationId: other, responses: {"200": {description: ok}}}
"""

LISTED = "127.0.0.5"  # in every feed: the hit case
UNLISTED = "127.0.0.2"  # in no feed, placed in FR: passes every check
REFUSED_COUNTRY = "127.0.0.6"  # in no feed, placed in CN: the geo rule's 403


def feed_text(n: int, seed: int = 12) -> str:
    rng = random.Random(seed)
    lines = ["# synthetic reputation feed", f"{LISTED}"]
    ranges = n // 100
    for i in range(n - 1):
        a = rng.randrange(1, 224)
        if a == 127:
            a = 126
        if i < ranges:
            lines.append(f"{a}.{rng.randrange(256)}.{rng.randrange(256)}.0/24 ; range")
        else:
            lines.append(f"{a}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}")
    return "\n".join(lines) + "\n"


def database(path: Path, networks: int, seed: int = 7) -> None:
    """A country database: ``networks`` random /24s in random countries, and the clients."""
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    rng = random.Random(seed)
    codes = ["US", "DE", "FR", "GB", "JP", "BR", "IN", "NL", "SE", "CA", "AU", "CN"]
    by_country: dict[str, list[str]] = {c: [] for c in codes}
    for _ in range(networks):
        a = rng.randrange(1, 224)
        by_country[rng.choice(codes)].append(f"{126 if a == 127 else a}.{rng.randrange(256)}.{rng.randrange(256)}.0/24")
    by_country["FR"] += [f"{UNLISTED}/32", f"{LISTED}/32"]
    by_country["CN"].append(f"{REFUSED_COUNTRY}/32")
    writer = MMDBWriter(ip_version=4, database_type="GeoLite2-Country", languages=["en"])
    for code, cidrs in by_country.items():
        writer.insert_network(IPSet(cidrs), {"country": {"iso_code": code, "names": {"en": code}}})
    writer.to_db_file(str(path))


def write_inputs(directory: Path, n: int, port: int, backend: int, geo_networks: int = 0) -> None:
    feeds = "reputation:\n  feeds:\n    - {name: synthetic, file: feed.txt}\n" if n else ""
    rule = ", geo: {deny: [CN], mode: hard}" if geo_networks else ""
    if geo_networks:
        database(directory / "countries.mmdb", geo_networks)
        feeds += "geo: {database: countries.mmdb}\n"
    (directory / "policy.yaml").write_text(
        "apiVersion: controlplane.dev/v1\nkind: GatewayPolicy\n"
        f"listeners: [{{name: public, address: 127.0.0.1, port: {port}{rule}}}]\n"
        f'upstreams: [{{name: backend, endpoints: ["127.0.0.1:{backend}"]}}]\n'
        "gateway: {accessLog: false}\n"
        f"{feeds}"
        "apis: [{name: things, spec: things.yaml, upstream: backend}]\n"
    )
    (directory / "things.yaml").write_text(SPEC)
    if n:
        (directory / "feed.txt").write_text(feed_text(n))


def timed_compile(directory: Path, times: int) -> tuple[float, float, float, Any]:
    """(wall, CPU) of the first compile (the feeds new to this process: as after a feed
    changed), the best wall of ``times`` more with nothing changed (as after a spec pushed or a
    policy edited: parsed feeds and built tries are kept), and the result."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = compile([directory])
    first_wall, first_cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert result.ok, "\n".join(map(str, result.diagnostics))
    again = float("inf")
    for _ in range(times):
        wall = time.perf_counter()
        result = compile([directory])
        again = min(again, time.perf_counter() - wall)
        assert result.ok, "\n".join(map(str, result.diagnostics))
    return first_wall, first_cpu, again, result


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def requests(port: int, source: str, count: int, expect: int) -> list[float]:
    """``count`` keep-alive GETs from ``source`` (a new connection after each 403, which Envoy
    closes); each one's latency in seconds."""
    request = b"GET /api/things HTTP/1.1\r\nHost: gateway.test\r\n\r\n"
    out = []
    sock: socket.socket | None = None
    try:
        for _ in range(count):
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            started = time.perf_counter()
            sock.sendall(request)
            buf = b""
            while (end := _response_end(buf)) is None:
                chunk = sock.recv(65536)
                if not chunk:
                    raise AssertionError(f"from {source}: connection closed mid-response")
                buf += chunk
            out.append(time.perf_counter() - started)
            status, _length = end
            if status != expect:
                raise AssertionError(f"from {source}: {status}, expected {expect}")
            if b"connection: close" in buf.lower():
                sock.close()
                sock = None
    finally:
        if sock is not None:
            sock.close()
    return out


def per_request(envoy: EnvoyProcess, port: int, source: str, count: int, expect: int) -> dict[str, float]:
    requests(port, source, min(200, count), expect)  # warm: connections, the first allocation
    before = read_cpu(envoy.proc.pid)
    latencies = requests(port, source, count, expect)
    after = read_cpu(envoy.proc.pid)
    latencies.sort()
    return {
        "envoy_cpu_us": cpu_between(before, after) / count * 1e6,
        "p50_ms": statistics.median(latencies) * 1e3,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1e3,
    }


def measure(
    n: int, args: argparse.Namespace, backend: int, workdir: Path, geo: bool = False
) -> tuple[dict[str, Any], EnvoyProcess, int]:
    """Compile and push figures, and a running Envoy serving the variant (on the port returned)."""
    directory = Path(tempfile.mkdtemp(prefix=f"rep-{n}-", dir=workdir))
    port = free_port()
    write_inputs(directory, n, port, backend, args.geo_networks if geo else 0)
    row: dict[str, Any] = {"entries": n, "geo": geo}
    if n:
        text = (directory / "feed.txt").read_text()
        started = time.perf_counter()
        parsed = reputation.parse(text, "synthetic")
        row["parse_s"] = time.perf_counter() - started
        row["feed_mib"] = len(text) / (1 << 20)
        row["ranges"] = len(parsed.cidrs)
    row["compile_s"], row["compile_cpu_s"], row["recompile_s"], result = timed_compile(directory, args.compiles)
    serialized = serialize(result.resources)
    tries = next((v for k, v in serialized.items() if k.endswith("TypedExtensionConfig")), {})
    row["tries_mib"] = sum(map(len, tries.values())) / (1 << 20)
    row["push_mib"] = sum(len(b) for by_name in serialized.values() for b in by_name.values()) / (1 << 20)
    admin = free_port()
    config = to_dict(static_bootstrap(result.gateway, result.resources, AdminOptions(port=admin)))
    started = time.perf_counter()
    envoy = EnvoyProcess(config, directory, admin, wait=False)
    envoy.wait_ready(300)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    row["envoy_ready_s"] = time.perf_counter() - started
    row["envoy_rss_mib"] = rss_kib(envoy.proc.pid) / 1024
    _, stats = envoy.admin("/stats?filter=^server.memory_allocated$")
    row["envoy_allocated_mib"] = int(stats.split(":")[1]) / (1 << 20)
    return row, envoy, port


def cases(row: dict[str, Any]) -> list[tuple[str, str, int]]:
    """(name, client address, expected status) measured per request for a variant."""
    out = [("miss", UNLISTED, 200)]
    if row["entries"]:
        out.append(("hit", LISTED, 403))
    if row["geo"]:
        out.append(("geo_hit", REFUSED_COUNTRY, 403))
    return out


def per_request_rounds(running: list[tuple[dict[str, Any], EnvoyProcess, int]], count: int, rounds: int) -> None:
    """Every variant's Envoy serves at once; rounds alternate between them, so that the machine's
    drift (frequency, caches) falls on all alike. Each figure is the median of its rounds."""
    samples: dict[tuple[int, str], list[dict[str, float]]] = {}
    for _ in range(rounds):
        for i, (row, envoy, port) in enumerate(running):
            for name, source, status in cases(row):
                samples.setdefault((i, name), []).append(per_request(envoy, port, source, count, status))
    for i, (row, _envoy, _port) in enumerate(running):
        for name, _source, _status in cases(row):
            taken = samples[(i, name)]
            row[name] = {k: statistics.median(t[k] for t in taken) for k in taken[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[0, 100_000, 1_000_000])
    parser.add_argument("--requests", type=int, default=3000, help="requests per case and round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds alternating between the variants")
    parser.add_argument("--compiles", type=int, default=3)
    parser.add_argument("--geo", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--geo-networks", type=int, default=50_000)
    args = parser.parse_args()
    backend = free_port()
    server = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "_http.py"), "backend", str(backend)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None and server.stdout.readline().strip() == "ready"
    print(machine())
    print(git_state(None))
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="reputation-bench-") as tmp:
            variants = [(n, False) for n in args.sizes]
            if args.geo:
                variants += [(0, True), *([(max(args.sizes), True)] if max(args.sizes) else [])]
            running = []
            try:
                for n, geo in variants:
                    running.append(measure(n, args, backend, Path(tmp), geo))
                    print(running[-1][0], flush=True)
                per_request_rounds(running, args.requests, args.rounds)
            finally:
                for _row, envoy, _port in running:
                    envoy.stop()
            rows = [row for row, _envoy, _port in running]
            for row in rows:
                print(row, flush=True)
    finally:
        server.terminate()
        server.wait()
    print()
    print(
        "| feed entries | geo | parse s | compile s (cpu) | again s | tries MiB | push MiB | Envoy ready s | RSS MiB "
        "| allocated MiB | pass: Envoy µs/req (x the floor: no feed, no geo), p50/p99 ms "
        "| feed hit (403): Envoy µs/req, p50/p99 ms "
        "| geo hit (403): Envoy µs/req, p50/p99 ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    floor = next((r["miss"]["envoy_cpu_us"] for r in rows if not r["entries"] and not r["geo"]), None)
    for r in rows:
        miss, hit, geo_hit = r["miss"], r.get("hit"), r.get("geo_hit")
        print(
            f"| {r['entries']:,} | {'yes' if r['geo'] else 'no'} | {r.get('parse_s', 0):.2f} "
            f"| {r['compile_s']:.2f} ({r['compile_cpu_s']:.2f}) | {r['recompile_s']:.3f} "
            f"| {r['tries_mib']:.2f} | {r['push_mib']:.2f} | {r['envoy_ready_s']:.1f} | {r['envoy_rss_mib']:.0f} "
            f"| {r['envoy_allocated_mib']:.0f} | {miss['envoy_cpu_us']:.0f}"
            + (f" ({miss['envoy_cpu_us'] / floor:.2f}x)" if floor else "")
            + f", {miss['p50_ms']:.2f}/{miss['p99_ms']:.2f} "
            + (f"| {hit['envoy_cpu_us']:.0f}, {hit['p50_ms']:.2f}/{hit['p99_ms']:.2f} " if hit else "| - ")
            + (
                f"| {geo_hit['envoy_cpu_us']:.0f}, {geo_hit['p50_ms']:.2f}/{geo_hit['p99_ms']:.2f} |"
                if geo_hit
                else "| - |"
            )
        )


if __name__ == "__main__":
    main()
