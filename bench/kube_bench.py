"""The cluster as a source at scale: 1,000 ApiSpec objects and 5,000 endpoints churning.

The cluster is tests/kube_fake.py (the fake API server the tests use, spoken to over HTTP by
the official client inside the control plane), run in a process of its own with the change
driver, so that its threads share neither the GIL of the bench (which reads the clients'
reports) nor the control plane's CPU count. It is seeded (``FakeKube.apply``, no HTTP) by a
generator, in namespace ``bench``:

- ``--apis`` ApiSpec objects (default 1,000), three operations each (``GET /items``,
  ``POST /items``, ``GET /items/{id}``);
- one GatewayPolicy mounting every one (``pathPrefix: /api-NNNN``) on one of ``--services``
  upstreams (default 50), each ``service: svc-NN.bench:80``;
- per upstream a Service (port 80 ``http`` → 8080) and EndpointSlices of ``--per-slice``
  endpoints (default 50), ``--endpoints`` in all (default 5,000), spread over three zones.

The real control plane watches it, as a user runs it (the watcher's defaults; leader without
a Lease, so it writes every object's status after each compile)::

    python -m controlplane serve --insecure --kubernetes --kubeconfig F --kube-state DIR

N simulated Envoys (bench/_xds_client.py: real gRPC ADS streams, every response ACKed, SotW or
delta) connect as the server starts. Each client also reports the highest *mark* in each EDS
and RDS response it ACKs, so that a change can be followed to the clients:

- an endpoint change moves the first endpoint of one EndpointSlice (in turn) to the address
  ``10.255.A.B`` that encodes the change's number (``A*250 + B-1``);
- an ApiSpec change adds ``GET /kbench-K-m`` to one ApiSpec (in turn), K the change's number.

The informer applies events in order, so a response holding mark K holds every change up to K.

Measured, per mode:

a. start: from ``serve`` starting to the cluster listed (its log), the first version served,
   and every client ACKed all of CDS, EDS, LDS, RDS (the first full sync); CPU until then.
b. idle floor: CPU per second of the control plane's process tree (server, compile worker,
   validation worker and their children, from /proc) with the clients connected and synced.
c. endpoint churn: one EndpointSlice change every ``--interval`` (10 ms) for ``--churn``
   seconds. Lag of a change: its ``time.time()`` (taken by the driver after the write) to the
   last client's ACK of an EDS response holding it; p50/p99/max over the changes. Publishes
   per second (distinct EDS versions the first client ACKed), CPU per second of churn (from the
   first change to the last change's last ACK), and both against the idle floor.
d. ApiSpec churn: one ApiSpec edit every ``--interval`` for ``--spec-churn`` seconds: the
   compiles it took (``controlplane_compiles_total``: the quiet period coalesces a burst, the
   max delay bounds it), the time from the last edit to the last client's ACK of the RDS
   holding it, CPU to then and until the machine is idle (status writes included).
e. the floor of (c): the same endpoint churn with no client connected (the clients are
   stopped), CPU per second beside the idle floor without clients: what the informer, the
   endpoints' model and the snapshots cost, without the fan-out.

    cd /work/main && .venv/bin/python bench/kube_bench.py            # 1,000 ApiSpecs, 5,000 endpoints, 20 clients
    .venv/bin/python bench/kube_bench.py --apis 200 --endpoints 1000 --churn 10 --spec-churn 5 --modes delta
    .venv/bin/python bench/kube_bench.py --profile /tmp/prof          # py-spy of the server per churn
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))
import _xds_client as xc  # noqa: E402
from _common import REPO, child_env, git_state, machine  # noqa: E402
from push_bench import cpu_now, diff  # noqa: E402
from xds_bench import CLK_TCK, REQUIRED, Fleet, Profile, Server, free_port, quantile  # noqa: E402
from xds_bench import table as _table  # noqa: E402  (says "(not run)" for no rows)

NS = "bench"
GROUP, VERSION = "controlplane.dev", "v1"
Obj = dict[str, Any]


# -- the cluster -------------------------------------------------------------------------------
def spec_text(i: int, added: list[int]) -> str:
    def op(op_id: str, **more: Any) -> Obj:
        return {"operationId": op_id, "responses": {"200": {"description": "ok"}}, **more}

    item = {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}
    paths: Obj = {
        "/items": {"get": op(f"list{i}"), "post": op(f"create{i}")},
        "/items/{id}": {"get": op(f"get{i}", parameters=[item])},
    }
    for k in added:
        paths[f"/kbench-{k}-m"] = {"get": op(f"churn{k}")}  # "-m": a protobuf tag byte after it may be a digit
    doc = {"openapi": "3.0.3", "info": {"title": f"api-{i:04d}", "version": "1"}, "paths": paths}
    return json.dumps(doc, indent=1)  # JSON is YAML


def apispec(i: int, added: list[int]) -> Obj:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ApiSpec",
        "metadata": {"name": f"api-{i:04d}", "namespace": NS},
        "spec": {"openapi": spec_text(i, added)},
    }


def gateway_policy(n_apis: int, n_services: int) -> Obj:
    spec = {
        "gateway": {"accessLog": False},
        "listeners": [{"name": "public", "address": "127.0.0.1", "port": 10080}],
        "upstreams": [{"name": f"up-{j:02d}", "service": f"svc-{j:02d}.{NS}:80"} for j in range(n_services)],
        "apis": [
            {
                "name": f"api-{i:04d}",
                "spec": f"api-{i:04d}",
                "pathPrefix": f"/api-{i:04d}",
                "upstream": f"up-{i % n_services:02d}",
            }
            for i in range(n_apis)
        ],
    }
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "GatewayPolicy",
        "metadata": {"name": "gateway", "namespace": NS},
        "spec": spec,
    }


def service(j: int) -> Obj:
    return {
        "metadata": {"name": f"svc-{j:02d}", "namespace": NS},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    }


def endpoint_slices(j: int, count: int, per_slice: int) -> list[Obj]:
    out = []
    for s, start in enumerate(range(0, count, per_slice)):
        endpoints = [
            {"addresses": [f"10.{j}.{e // 250}.{e % 250 + 1}"], "conditions": {"ready": True}, "zone": f"zone-{e % 3}"}
            for e in range(start, min(count, start + per_slice))
        ]
        out.append(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"svc-{j:02d}-{s}",
                    "namespace": NS,
                    "labels": {"kubernetes.io/service-name": f"svc-{j:02d}"},
                },
                "addressType": "IPv4",
                "endpoints": endpoints,
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            }
        )
    return out


def marker(seq: int) -> str:
    return f"10.255.{seq // 250}.{seq % 250 + 1}"


EDS_MARK = re.compile(rb"10\.255\.(\d{1,3})\.(\d{1,3})")
RDS_MARK = re.compile(rb"kbench-(\d+)-m")


# -- the fake API server and the change driver, in a process of their own ------------------------
def kube_main(conn: Connection, apis: int, services: int, endpoints: int, per_slice: int) -> None:
    from tests.kube_fake import FakeKube

    kube = FakeKube(bookmark_interval=1.0, history_limit=20_000).start()
    added: list[list[int]] = [[] for _ in range(apis)]
    for i in range(apis):
        kube.apply("apispecs", apispec(i, []))
    kube.apply("gatewaypolicies", gateway_policy(apis, services))
    slices: list[Obj] = []
    for j in range(services):
        kube.apply("services", service(j))
        count = endpoints // services + (j < endpoints % services)
        for s in endpoint_slices(j, count, per_slice):
            kube.apply("endpointslices", s)
            slices.append(s)
    conn.send(("ready", len(slices)))
    seq = {"endpoints": 0, "apispecs": 0}
    while True:
        cmd = conn.recv()
        if cmd[0] == "kubeconfig":
            kube.kubeconfig(cmd[1], namespace=NS)
            conn.send(("ok",))
        elif cmd[0] == "churn":
            _, what, start_at, interval, duration = cmd
            times: list[tuple[int, float]] = []
            next_at = start_at
            while next_at < start_at + duration:
                time.sleep(max(0.0, next_at - time.time()))  # late: no sleep (the rate achieved is reported)
                seq[what] += 1
                k = seq[what]
                at = time.time()  # before: under load the fake server's threads can hold the GIL past the write
                if what == "endpoints":
                    obj = slices[k % len(slices)]
                    obj["endpoints"][0]["addresses"] = [marker(k)]
                    kube.apply("endpointslices", obj)
                else:
                    i = k % apis
                    added[i].append(k)
                    kube.apply("apispecs", apispec(i, added[i]))
                times.append((k, at))
                next_at += interval
            conn.send(("done", times))
        elif cmd[0] == "requests":
            with kube._cond:
                verbs: dict[str, int] = {}
                for verb, path, _ in kube.requests:
                    key = f"{verb} {path.rsplit('/', 1)[-1]}" if verb in ("list", "watch") else verb
                    verbs[key] = verbs.get(key, 0) + 1
            conn.send(("requests", verbs))
        elif cmd[0] == "stop":
            kube.stop()
            conn.send(("stopped",))
            return


class Cluster:
    def __init__(self, args: argparse.Namespace):
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=kube_main, args=(child, args.apis, args.services, args.endpoints, args.per_slice), daemon=True
        )
        self.proc.start()
        ready = self._recv(300)
        self.slices = ready[1]

    def _recv(self, timeout: float) -> Any:
        if not self.conn.poll(timeout):
            raise SystemExit(f"the fake API server did not answer in {timeout} s")
        return self.conn.recv()

    def kubeconfig(self, path: Path) -> Path:
        self.conn.send(("kubeconfig", str(path)))
        self._recv(30)
        return path

    def churn(self, what: str, start_at: float, interval: float, duration: float) -> None:
        self.conn.send(("churn", what, start_at, interval, duration))

    def churned(self) -> list[tuple[int, float]] | None:
        """The changes (number, time) once the churn is over, else None."""
        if not self.conn.poll():
            return None
        msg = self.conn.recv()
        assert msg[0] == "done", msg
        return list(msg[1])

    def requests(self) -> dict[str, int]:
        self.conn.send(("requests",))
        return dict(self._recv(30)[1])

    def stop(self) -> None:
        with contextlib.suppress(OSError, SystemExit):
            self.conn.send(("stop",))
            self._recv(10)
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()


# -- simulated Envoys that report marks ----------------------------------------------------------
class MarkingClient(xc.Client):
    """A simulated Envoy that also reports the highest mark of each EDS and RDS response."""

    async def on_sotw(self, raw: bytes, received: float) -> None:
        await super().on_sotw(raw, received)
        self._mark(raw, received)

    async def on_delta(self, raw: bytes, received: float) -> None:
        await super().on_delta(raw, received)
        self._mark(raw, received)

    def _mark(self, raw: bytes, received: float) -> None:
        eds = [int(a) * 250 + int(b) - 1 for a, b in EDS_MARK.findall(raw)]
        if eds:
            self.report.append(("mark", self.index, "endpoints", max(eds), received, time.time()))
        rds = [int(k) for k in RDS_MARK.findall(raw)]
        if rds:
            self.report.append(("mark", self.index, "apispecs", max(rds), received, time.time()))


def marking_worker(worker: int, target: str, delta: bool, indices: list[int], events: Any, control: Connection) -> None:
    xc.Client = MarkingClient  # type: ignore[misc]  # the worker builds its clients by this name
    xc.worker_main(worker, target, delta, indices, events, control)


class MarkingFleet(Fleet):
    """xds_bench's Fleet, over marking clients; per client and kind, (ACK time, highest mark so far)."""

    def __init__(self, target: str, n: int, procs: int, delta: bool):
        from xds_bench import TYPES

        ctx = multiprocessing.get_context("spawn")
        self.n = n
        self.events = ctx.Queue()
        self.acks = [{t: [] for t in TYPES} for _ in range(n)]
        self.errors = []
        self.pipes = []
        self.procs = []
        self.marks: dict[str, list[list[tuple[float, int]]]] = {k: [[] for _ in range(n)] for k in MARK_KINDS}
        procs = max(1, min(procs, n))
        for w in range(procs):
            parent, child = ctx.Pipe()
            indices = list(range(w, n, procs))
            p = ctx.Process(target=marking_worker, args=(w, target, delta, indices, self.events, child), daemon=True)
            p.start()
            self.pipes.append(parent)
            self.procs.append(p)
        ready = 0
        deadline = time.monotonic() + 180
        while ready < len(self.procs):
            for ev in self._get(deadline):
                if ev[0] == "ready":
                    ready += 1

    def _take(self, batch: list[tuple[Any, ...]]) -> None:
        super()._take(batch)
        for ev in batch:
            if ev[0] == "mark":
                _, i, kind, mark, _received, acked = ev
                seen = self.marks[kind][i]
                seen.append((acked, max(mark, seen[-1][1] if seen else 0)))

    def has(self, kind: str, k: int) -> bool:
        return all(m and m[-1][1] >= k for m in self.marks[kind])

    def lags(self, kind: str, changes: list[tuple[int, float]]) -> list[float]:
        """Per change: its time to the last client's first ACK holding it."""
        out = []
        for k, at in changes:
            last = 0.0
            for m in self.marks[kind]:
                # marks are in ACK order and non-decreasing: the first one at or past k
                lo, hi = 0, len(m)
                while lo < hi:
                    mid = (lo + hi) // 2
                    if m[mid][1] >= k:
                        hi = mid
                    else:
                        lo = mid + 1
                last = max(last, m[lo][0] if lo < len(m) else float("inf"))
            out.append(last - at)
        return out


MARK_KINDS = ("endpoints", "apispecs")


# -- the control plane -------------------------------------------------------------------------
class KubeServer(Server):
    """``serve --kubernetes`` (no files), as a user runs it; not waited for: the clients connect at once."""

    def __init__(self, kubeconfig: Path, workdir: Path, src: Path | None, extra: list[str]):
        self.xds_port, self.admin_port = free_port(), free_port()
        self.log_path = workdir / f"controlplane-{self.admin_port}.log"
        cmd = [
            sys.executable,
            *("-m", "controlplane", "serve", "--insecure", "--kubernetes"),
            *("--kubeconfig", str(kubeconfig), "--kube-state", str(workdir / f"mirror-{self.admin_port}")),
            *extra,
            *("--xds-address", f"127.0.0.1:{self.xds_port}", "--admin-address", f"127.0.0.1:{self.admin_port}"),
        ]
        self.command = " ".join(["python", *cmd[1:6], "--kubeconfig F --kube-state DIR", *extra])
        env = dict(child_env(src), XDG_CACHE_HOME=str(workdir / "cache"))
        self.log = self.log_path.open("w")
        self.started = time.time()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=src or REPO, env=env)
        self.pid = self.proc.pid

    def logged(self, text: str) -> float | None:
        """``time.time()`` of the first log line holding ``text`` (the log's millisecond clock)."""
        for line in self.log_path.read_text().splitlines():
            if text in line:
                stamp, _, ms = line[:23].partition(",")
                with contextlib.suppress(ValueError):
                    return time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(ms) / 1000
        return None

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise SystemExit(f"control plane exited:\n{self.log_path.read_text()[-3000:]}")


def tree(server: Server) -> float:
    return sum(cpu_now(server).values())


def wait_idle(server: Server, fleet: Fleet | None, timeout: float = 60.0, window: float = 0.5) -> float:
    """xds_bench's, with the whole process tree (the validator runs as a grandchild)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = tree(server) + (fleet.cpu() if fleet else 0.0)
        if fleet:
            fleet.pump(window)
        else:
            time.sleep(window)
        if tree(server) + (fleet.cpu() if fleet else 0.0) - before <= 0.1 * window + 1.0 / CLK_TCK:
            break
    return time.monotonic() - started


# -- one mode ----------------------------------------------------------------------------------
@dataclass
class Churn:
    changes: int = 0
    seconds: float = 0.0  # first change → last change
    lags: list[float] = field(default_factory=list)
    publishes: int = 0
    cpu: float = 0.0  # first change → last change's last ACK (or idle)
    cpu_idle: float = 0.0  # until the machine is idle again
    clients_cpu: float = 0.0  # the client processes', over ``window`` (on 2 cores, whether they kept up)
    window: float = 0.0  # the seconds ``cpu`` covers
    compiles: int = 0
    writes: int = 0  # requests that write (the leader's statuses and Events), to idle
    converged: float = float("nan")  # last change → last client's ACK holding it

    @property
    def rate(self) -> float:
        return (self.changes - 1) / self.seconds if self.seconds > 0 else float("nan")

    @property
    def cpu_per_s(self) -> float:
        return self.cpu / self.window if self.window > 0 else float("nan")


@dataclass
class Result:
    mode: str
    clients: int
    listed: float = float("nan")
    first_version: float = float("nan")
    synced: float = float("nan")
    start_cpu: float = 0.0
    idle: float = 0.0  # CPU seconds per second, clients connected
    idle_alone: float = 0.0  # ... none connected
    endpoints: Churn = field(default_factory=Churn)
    endpoints_alone: Churn = field(default_factory=Churn)
    apispecs: Churn = field(default_factory=Churn)
    requests: dict[str, int] = field(default_factory=dict)


def idle_floor(server: Server, fleet: Fleet | None, seconds: float) -> tuple[float, dict[str, float]]:
    """CPU seconds per second of the idle server tree, and per part."""
    wait_idle(server, fleet)
    c0, t0 = cpu_now(server), time.monotonic()
    if fleet is not None:
        fleet.pump(seconds)
    else:
        time.sleep(seconds)
    elapsed = time.monotonic() - t0
    parts = {k: v / elapsed for k, v in diff(c0, cpu_now(server)).items()}
    return sum(parts.values()), parts


def writes(cluster: Cluster) -> int:
    return sum(n for k, n in cluster.requests().items() if k in ("create", "update", "patch", "delete"))


def run_churn(
    server: KubeServer,
    fleet: MarkingFleet | None,
    cluster: Cluster,
    what: str,
    args: argparse.Namespace,
    seconds: float,
) -> Churn:
    result = Churn()
    if seconds <= 0:
        return result
    wait_idle(server, fleet)
    compiles0 = server.metric("controlplane_compiles_total")
    writes0 = writes(cluster)
    eds0 = len(fleet.acks[0]["EDS"]) if fleet else 0
    start_at = time.time() + 0.2
    cpu0, clients0 = tree(server), (fleet.cpu() if fleet else 0.0)
    cluster.churn(what, start_at, args.interval, seconds)
    changes = None
    while changes is None:
        if fleet is not None:
            fleet.pump(0.1)
        else:
            time.sleep(0.1)
        server.check()
        changes = cluster.churned()
    last_k, last_at = changes[-1]
    result.changes, result.seconds = len(changes), last_at - changes[0][1]
    if fleet is not None:
        fleet.wait(lambda: fleet.has(what, last_k), 120, f"every client holding change {last_k} ({what})")
        result.lags = fleet.lags(what, changes)
        result.converged = result.lags[-1]
        end = last_at + result.converged
        result.cpu, result.clients_cpu = tree(server) - cpu0, fleet.cpu() - clients0
        result.window = max(end, time.time()) - start_at
        result.publishes = len({a.version for a in fleet.acks[0]["EDS"][eds0:]})
        wait_idle(server, fleet, timeout=120)
    else:
        wait_idle(server, None, timeout=120)
        result.cpu = tree(server) - cpu0
        result.window = time.time() - start_at
    result.cpu_idle = tree(server) - cpu0
    result.compiles = int(server.metric("controlplane_compiles_total") - compiles0)
    result.writes = writes(cluster) - writes0
    return result


def run_mode(args: argparse.Namespace, cluster: Cluster, workdir: Path, mode: str) -> Result:
    res = Result(mode, args.clients)
    kubeconfig = cluster.kubeconfig(workdir / "kubeconfig")
    extra = (
        []
        if args.watch == "defaults"
        else ["--quiet-period", str(args.quiet_period), "--max-delay", str(args.max_delay)]
    )
    server = KubeServer(kubeconfig, workdir, args.src, extra)
    fleet: MarkingFleet | None = None
    try:
        fleet = MarkingFleet(f"127.0.0.1:{server.xds_port}", args.clients, args.procs, mode == "delta")
        fleet.start(time.time())
        synced = fleet.synced

        def started() -> bool:
            server.check()
            return synced()

        fleet.wait(started, 600, "the first full sync")
        last_ack = max(a[t][0].acked for a in fleet.acks for t in REQUIRED)
        res.synced = last_ack - server.started
        res.listed = (server.logged("kubernetes: watching") or float("nan")) - server.started
        res.first_version = (server.logged("serving version") or float("nan")) - server.started
        res.start_cpu = tree(server)
        print(
            f"  [{mode}] listed {res.listed:.1f} s, first version {res.first_version:.1f} s, "
            f"{args.clients} clients synced {res.synced:.1f} s after start ({res.start_cpu:.1f} CPU s)",
            flush=True,
        )
        res.idle, parts = idle_floor(server, fleet, args.idle)
        print(f"  [{mode}] idle floor, clients connected: {res.idle * 1000:.0f} ms CPU/s ({fmt(parts)})", flush=True)
        with profiled(args, server, f"{mode}-endpoints"):
            res.endpoints = run_churn(server, fleet, cluster, "endpoints", args, args.churn)
        print(f"  [{mode}] endpoint churn: {churn_line(res.endpoints)}", flush=True)
        with profiled(args, server, f"{mode}-apispecs"):
            res.apispecs = run_churn(server, fleet, cluster, "apispecs", args, args.spec_churn)
        print(f"  [{mode}] ApiSpec churn: {churn_line(res.apispecs)}", flush=True)
        fleet.stop()
        fleet = None
        res.idle_alone, parts = idle_floor(server, None, args.idle)
        with profiled(args, server, f"{mode}-endpoints-alone"):
            res.endpoints_alone = run_churn(server, None, cluster, "endpoints", args, args.churn)
        print(
            f"  [{mode}] no clients: idle {res.idle_alone * 1000:.0f} ms CPU/s ({fmt(parts)}); endpoint churn "
            f"{churn_line(res.endpoints_alone)}",
            flush=True,
        )
        res.requests = cluster.requests()
    finally:
        if fleet is not None:
            fleet.stop()
        server.stop()
    return res


@contextlib.contextmanager
def profiled(args: argparse.Namespace, server: Server, name: str) -> Any:
    profile = Profile(args.profile, server.pid, name)
    try:
        yield
    finally:
        profile.stop()


# -- report ------------------------------------------------------------------------------------
def ms(x: float) -> str:
    return "-" if x != x else f"{x * 1000:.0f}"


def churn_line(c: Churn) -> str:
    if not c.changes:
        return "not run"
    lag = (
        f"; lag p50 {ms(quantile(c.lags, 0.5))} / p99 {ms(quantile(c.lags, 0.99))} / max {ms(max(c.lags))} ms"
        if c.lags
        else ""
    )
    return (
        f"{c.changes} changes at {c.rate:.0f}/s{lag}; {c.publishes} EDS versions, {c.compiles} compiles, "
        f"{c.writes} API writes; "
        f"CPU {c.cpu:.1f} s over {c.window:.1f} s ({c.cpu_per_s * 1000:.0f} ms/s), {c.cpu_idle:.1f} s to idle; "
        f"clients {c.clients_cpu:.1f} s"
    )


def fmt(parts: dict[str, float]) -> str:
    return ", ".join(f"{k} {v * 1000:.0f}" for k, v in parts.items())


def ratio(a: float, b: float) -> str:
    return f"{a / b:.1f}x" if b > 0 else "-"


def report(results: list[Result], args: argparse.Namespace) -> str:
    out = [
        "First full sync (s after `serve` started) and its CPU\n",
        _table(
            ["mode", "clients", "listed", "first version", "all ACKed", "CPU s"],
            [
                [
                    r.mode,
                    str(r.clients),
                    f"{r.listed:.1f}",
                    f"{r.first_version:.1f}",
                    f"{r.synced:.1f}",
                    f"{r.start_cpu:.1f}",
                ]
                for r in results
            ],
        ),
        f"\nEndpoint churn: one EndpointSlice change every {args.interval * 1000:.0f} ms for {args.churn:.0f} s "
        "(lag: change → last client's ACK holding it, ms)\n",
        _table(
            [
                "mode",
                "changes/s",
                "lag p50",
                "p99",
                "max",
                "EDS versions/s",
                "CPU ms/s",
                "clients ms/s",
                "idle floor ms/s",
                "vs idle",
                "no clients ms/s",
                "vs no clients",
                "CPU ms/change",
            ],
            [
                [
                    r.mode,
                    f"{r.endpoints.rate:.0f}",
                    ms(quantile(r.endpoints.lags, 0.5)),
                    ms(quantile(r.endpoints.lags, 0.99)),
                    ms(max(r.endpoints.lags, default=float("nan"))),
                    f"{r.endpoints.publishes / r.endpoints.window:.1f}" if r.endpoints.window else "-",
                    ms(r.endpoints.cpu_per_s),
                    ms(r.endpoints.clients_cpu / r.endpoints.window if r.endpoints.window else float("nan")),
                    ms(r.idle),
                    ratio(r.endpoints.cpu_per_s, r.idle),
                    ms(r.endpoints_alone.cpu_per_s),
                    ratio(r.endpoints.cpu_per_s, r.endpoints_alone.cpu_per_s),
                    f"{r.endpoints.cpu / r.endpoints.changes * 1000:.1f}" if r.endpoints.changes else "-",
                ]
                for r in results
            ],
        ),
        f"\n(no clients: idle floor {', '.join(f'{r.mode} {ms(r.idle_alone)}' for r in results)} ms/s)",
        f"\nApiSpec churn: one ApiSpec edit (an operation added) every {args.interval * 1000:.0f} ms "
        f"for {args.spec_churn:.0f} s\n",
        _table(
            [
                "mode",
                "edits/s",
                "compiles",
                "API writes",
                "last edit → all ACKed (ms)",
                "CPU s to then",
                "CPU ms/s",
                "vs idle",
                "CPU s to idle",
            ],
            [
                [
                    r.mode,
                    f"{r.apispecs.rate:.0f}",
                    str(r.apispecs.compiles),
                    str(r.apispecs.writes),
                    ms(r.apispecs.converged),
                    f"{r.apispecs.cpu:.1f}",
                    ms(r.apispecs.cpu_per_s),
                    ratio(r.apispecs.cpu_per_s, r.idle),
                    f"{r.apispecs.cpu_idle:.1f}",
                ]
                for r in results
                if r.apispecs.changes
            ],
        ),
    ]
    if results:
        requests = results[-1].requests
        top = sorted(requests.items(), key=lambda kv: -kv[1])[:8]
        out.append("\nRequests the fake API server received (last mode): " + ", ".join(f"{k} {v}" for k, v in top))
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--apis", type=int, default=1000, help="ApiSpec objects (default 1000)")
    p.add_argument("--services", type=int, default=50, help="Services, one upstream each (default 50)")
    p.add_argument("--endpoints", type=int, default=5000, help="endpoints over all Services (default 5000)")
    p.add_argument("--per-slice", type=int, default=50, help="endpoints per EndpointSlice (default 50)")
    p.add_argument(
        "--clients",
        type=int,
        default=20,
        help="simulated Envoys (default 20: in SotW each EDS publish sends every endpoint to every "
        "client, which more clients on 2 cores turn into a measure of the clients)",
    )
    p.add_argument("--procs", type=int, default=2, help="client processes (default 2)")
    p.add_argument("--modes", nargs="+", choices=["sotw", "delta"], default=["sotw", "delta"])
    p.add_argument("--interval", type=float, default=0.01, help="seconds between changes (default 0.01)")
    p.add_argument("--churn", type=float, default=30.0, help="seconds of endpoint churn (default 30)")
    p.add_argument("--spec-churn", type=float, default=10.0, help="seconds of ApiSpec churn (default 10)")
    p.add_argument("--idle", type=float, default=5.0, help="seconds of each idle floor (default 5)")
    p.add_argument(
        "--watch",
        choices=["defaults", "set"],
        default="defaults",
        help="serve's watcher: its defaults (quiet period 0.3 s, max delay 2 s) or --quiet-period/--max-delay",
    )
    p.add_argument("--quiet-period", type=float, default=0.3)
    p.add_argument("--max-delay", type=float, default=2.0)
    p.add_argument("--profile", type=Path, help="py-spy record the server during each churn, into this directory")
    p.add_argument("--src", type=Path, help="directory holding the controlplane package to measure")
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the work directory (mirrors, logs)")
    args = p.parse_args()
    if args.src:
        args.src = args.src.resolve()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(f"machine: {machine()}\nmeasured: {git_state(args.src)}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="kube-bench-"))
    started = time.monotonic()
    results: list[Result] = []
    cluster = Cluster(args)
    try:
        print(
            f"cluster: {args.apis} ApiSpecs (3 operations each), 1 GatewayPolicy, {args.services} Services, "
            f"{args.endpoints} endpoints in {cluster.slices} EndpointSlices; {args.clients} clients over "
            f"{args.procs} processes (seeded in {time.monotonic() - started:.0f} s)",
            flush=True,
        )
        for mode in args.modes:
            results.append(run_mode(args, cluster, workdir, mode))
            print(f"({time.monotonic() - started:.0f} s so far)", flush=True)
    finally:
        cluster.stop()
        if args.keep:
            print(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"\nserver: python -m controlplane serve --insecure --kubernetes ...; CLK_TCK {CLK_TCK}; "
        f"total run time {time.monotonic() - started:.0f} s\n"
    )
    print(report(results, args))
    if args.json:
        args.json.write_text(
            json.dumps(
                [
                    r.__dict__
                    | {
                        "endpoints": r.endpoints.__dict__,
                        "endpoints_alone": r.endpoints_alone.__dict__,
                        "apispecs": r.apispecs.__dict__,
                    }
                    for r in results
                ],
                indent=1,
                default=str,
            )
        )


if __name__ == "__main__":
    main()
