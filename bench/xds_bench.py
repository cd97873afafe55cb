"""xDS distribution: how fast a change reaches N simulated Envoys, and what it costs.

A synthetic config of N operations (bench/synth.py, default 10k) is split into one
OpenAPI file per service (``specs/svcNN.yaml``, about 1,000 operations and 0.5 MB each)
plus one gateway policy naming them (one upstream per service, IP endpoints: EDS). The
real control plane serves it::

    python -m controlplane serve DIR --insecure --poll-interval 0.01 --quiet-period 0.01 --max-delay 0.5

and, for the one-operation changes at the smallest client count, as a user runs it with the
watcher's defaults (``--watch defaults``: no polling or quiet-period options; a lone edit is
compiled at once, so what it adds is the polling interval).

Simulated Envoys (bench/_xds_client.py: grpc.aio, one ADS stream and one TCP connection
each, spread over ``--procs`` spawned processes) subscribe like Envoy (CDS, EDS, LDS, RDS),
ACK every response and report the ``time.time()`` of each ACK. Measured:

a. one-operation change: an operation is added to one spec file (``time.time()`` is
   taken just before the write); latency = the last client's ACK of the new
   RouteConfiguration version. Broken down with ``/compile`` (when the compile result was
   back in the server, how long the worker compiled): detection + compile, then first ACK,
   then last ACK; the server's own ``xds_convergence_seconds`` is shown beside. CPU seconds
   of the server process, its compile and validation workers and the client processes are
   read from ``/proc/<pid>/stat`` around each change. Changes start on an idle machine.
b. full push: the initial sync of fresh clients (all start their streams at the same
   instant) until the last ACK of all four types.
c. no-op changes (at the smallest client count): the same bytes rewritten, a comment
   added, the file rewritten as JSON text: ``xds_push_bytes_total`` must not move.
d. memory per idle stream: VmRSS of the server with 0 clients, then with N synced idle clients.
e. serialize-once vs per-client serialization, in-process (no gRPC): CPU, page faults and
   bytes per client per push of ``snapshot.sotw_response``/``delta_response`` over the
   pre-built entries vs a ``DiscoveryResponse`` with ``Any.Pack`` of each resource and
   ``SerializeToString``, under three pinned allocator regimes (see ``SERIALIZE_REGIMES``).
f. the server's per-ACK bookkeeping (``Registry.emit("ack")`` → ``Metrics``) for one change
   at 100 / 300 / 1000 synced connections, in-process.

Goals: one-operation delta change p99 < 150 ms at 100 clients and < 1 s at 1000; full
push < 5 s; no-op change 0 bytes; < 100 KB per idle stream.

    cd /work/main && .venv/bin/python bench/xds_bench.py              # about 5 minutes
    .venv/bin/python bench/xds_bench.py --clients 100 --modes delta --repeats 5 --skip-inprocess
    .venv/bin/python bench/xds_bench.py --clients 1000 --repeats 3 --profile /tmp/prof   # py-spy
    git archive HEAD controlplane | tar -x -C /tmp/src && .venv/bin/python bench/xds_bench.py --src /tmp/src
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import queue
import resource
import shutil
import signal
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
import _xds_client as xc  # noqa: E402
import synth  # noqa: E402
from _common import REPO, child_env, git_state, machine, median  # noqa: E402
from _common import table as _table  # noqa: E402

from controlplane.ports import unused_port as free_port  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
TYPES = ("CDS", "EDS", "LDS", "SRDS", "RDS")
REQUIRED = ("CDS", "EDS", "LDS", "RDS")  # SRDS only when the routes are scoped
GOAL_DELTA_100 = 0.150
GOAL_DELTA_1000 = 1.0
GOAL_FULL_PUSH = 5.0
GOAL_BYTES_PER_STREAM = 100 * 1000


# -- the config --------------------------------------------------------------------------------
POLICY_HEAD = """\
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
metadata:
  name: xds-bench
gateway:
  accessLog: false
listeners:
  - name: public
    address: 127.0.0.1
    port: 10080
"""


class Config:
    """The synthetic spec split into one file per service, and a policy that mounts them all."""

    def __init__(self, root: Path, n_ops: int):
        self.root = root
        spec, _ = synth.generate(n_ops)
        by_service: dict[str, dict[str, Any]] = {}
        for path, item in spec["paths"].items():
            by_service.setdefault(path.split("/")[1], {})[path] = item
        (root / "specs").mkdir(parents=True, exist_ok=True)
        self.specs: dict[str, dict[str, Any]] = {}
        upstreams, apis = [], []
        for i, (service, paths) in enumerate(sorted(by_service.items())):
            doc = dict(spec, info={"title": f"{service} (synthetic)", "version": "1.0"}, paths=paths)
            self.specs[service] = doc
            self.file(service).write_text(synth.dump(doc))
            upstreams.append(f'  - name: {service}-backend\n    endpoints: ["127.0.0.{i + 1}:9000"]\n')
            apis.append(f"  - name: {service}\n    spec: specs/{service}.yaml\n    upstream: {service}-backend\n")
        (root / "gateway.policy.yaml").write_text(
            POLICY_HEAD + "upstreams:\n" + "".join(upstreams) + "apis:\n" + "".join(apis)
        )
        self.edits = 0

    def file(self, service: str) -> Path:
        return self.root / "specs" / f"{service}.yaml"

    def one_operation_change(self, tag: str) -> tuple[Path, bytes]:
        """(file, new content): one more GET operation in one service's spec (services in turn)."""
        services = sorted(self.specs)
        service = services[self.edits % len(services)]
        self.edits += 1
        path = f"/{service}/benchedit-{tag}-{self.edits}"
        self.specs[service]["paths"][path] = {
            "get": {
                "operationId": f"benchEdit_{tag}_{self.edits}",
                "summary": "added by xds_bench",
                "responses": {"200": {"description": "ok"}},
            }
        }
        return self.file(service), synth.dump(self.specs[service]).encode()


# -- processes ---------------------------------------------------------------------------------
def cpu_of(pid: int) -> float:
    """utime + stime of a process (all threads), seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def children_of(pid: int) -> list[int]:
    """Child processes, oldest first (the compile worker starts before the validation worker)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"resource_tracker" not in cmdline:
            out.append((int(fields[19]), int(entry)))  # starttime
    return [p for _, p in sorted(out)]


class Server:
    """``python -m controlplane serve`` on loopback, plaintext, with fast file polling."""

    def __init__(
        self,
        config_dir: Path,
        workdir: Path,
        cache_dir: Path,
        max_delay: float,
        src: Path | None,
        watch: str = "fast",
        extra: tuple[str, ...] = (),  # more `serve` options (push_bench: the push API)
        admin_port: int | None = None,  # (push_replicas_bench: known to the peers before it starts)
    ):
        self.xds_port, self.admin_port = free_port(), admin_port or free_port()
        self.log_path = workdir / f"controlplane-{self.admin_port}.log"
        cmd = [
            sys.executable,
            "-m",
            "controlplane",
            "serve",
            str(config_dir),
            "--insecure",
            *(["--poll-interval", "0.01", "--quiet-period", "0.01", "--max-delay", str(max_delay)] * (watch == "fast")),
            *extra,
            "--xds-address",
            f"127.0.0.1:{self.xds_port}",
            "--admin-address",
            f"127.0.0.1:{self.admin_port}",
        ]
        self.command = " ".join(["python", *cmd[1:4], "DIR", *cmd[5:-4]])
        env = dict(child_env(src), XDG_CACHE_HOME=str(cache_dir))  # the validation cache of this run only
        self.log = self.log_path.open("w")
        # `python -m` puts the working directory first on sys.path: the measured package's parent
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=src or REPO, env=env)
        self.pid = self.proc.pid
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"control plane exited:\n{self.log_path.read_text()[-3000:]}")
            with contextlib.suppress(OSError, ValueError):
                if self.get("/compile").get("ok"):
                    break
            if time.monotonic() > deadline:
                self.proc.terminate()  # not left running: nobody holds this half-made Server to stop it
                raise SystemExit(f"control plane not ready after 120 s:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.1)

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}{path}", timeout=60) as resp:
            body = resp.read()
        return body.decode() if path == "/metrics" else json.loads(body)

    def metric(self, name: str) -> float:
        """Sum of a Prometheus counter over its labels."""
        total = 0.0
        for line in self.get("/metrics").splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def cpu(self) -> dict[str, float]:
        kids = children_of(self.pid)
        out = {"server": cpu_of(self.pid), "compile": 0.0, "validation": 0.0}
        if kids:
            out["compile"] = cpu_of(kids[0])
        for k in kids[1:]:
            out["validation"] += cpu_of(k)
        return out

    def tree_cpu(self) -> float:
        return sum(self.cpu().values())

    def rss_kb(self) -> int:
        return status_kb(self.pid, "VmRSS")

    def hwm_kb(self) -> int:
        return status_kb(self.pid, "VmHWM")

    def stop(self) -> None:
        workers = children_of(self.pid) if self.proc.poll() is None else []
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        deadline = time.monotonic() + 5
        for pid in workers:  # its compile and validation workers, if they outlived it
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            with contextlib.suppress(OSError):
                if b"multiprocessing" in Path(f"/proc/{pid}/cmdline").read_bytes():  # still that worker
                    os.kill(pid, signal.SIGKILL)
        self.log.close()


class Profile:
    """``py-spy record`` of the server process (collapsed stacks), when ``--profile DIR`` is given."""

    def __init__(self, directory: Path | None, pid: int, name: str):
        self.proc: subprocess.Popen[bytes] | None = None
        self.path = directory / f"{name}.txt" if directory else None
        if self.path is None:
            return
        spy = shutil.which("py-spy") or shutil.which("py-spy", path=os.path.dirname(sys.executable))
        if spy is None:
            raise SystemExit("--profile needs py-spy (pip install py-spy)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        cmd = [spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "200", "-o", str(self.path)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # attached

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(60)
            print(f"  profile of the server: {self.path}\n{summarize_profile(self.path)}", flush=True)


def summarize_profile(path: Path | None, top: int = 10) -> str:
    """Where the server's busy samples are: the functions of ``controlplane`` (and the ``grpc``/
    ``pickle`` frames) with the largest inclusive share, and the largest self times.

    Collapsed stacks, one ``frame;frame;... count`` per line; threads blocked in a wait are left out.
    """
    if path is None or not path.exists():
        return ""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        if any(w in frames[-1] for w in ("select", "Condition.wait", "thread.py:81", "Thread.run", "connection.py")):
            continue  # idle: the event loop waiting, executor threads waiting
        n = int(count)
        total += n
        own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n
    if not total:
        return ""
    generic = ("cli.py", "__main__.py", "grpc_server.py:103", "serve_sotw", "serve_delta", "_serve (")
    incl = [
        (f, n)
        for f, n in sorted(inclusive.items(), key=lambda kv: -kv[1])
        if "controlplane/" in f and not any(g in f for g in generic)
    ][:top]
    lines = [f"    busy samples: {total}; inclusive share of controlplane functions:"]
    lines += [f"    {n / total:6.1%}  {f}" for f, n in incl]
    lines.append("    largest self time:")
    lines += [f"    {n / total:6.1%}  {f}" for f, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]]
    return "\n".join(lines)


@dataclass
class Ack:
    version: str
    received: float
    acked: float
    nbytes: int


class Fleet:
    """N simulated Envoys over P spawned processes; their ACK reports, per client and type."""

    def __init__(self, target: str, n: int, procs: int, delta: bool):
        ctx = multiprocessing.get_context("spawn")
        self.n = n
        self.events = ctx.Queue()
        self.acks: list[dict[str, list[Ack]]] = [{t: [] for t in TYPES} for _ in range(n)]
        self.errors: list[str] = []
        self.pipes = []
        self.procs = []
        procs = max(1, min(procs, n))
        for w in range(procs):
            indices = list(range(w, n, procs))
            parent, child = ctx.Pipe()
            p = ctx.Process(target=xc.worker_main, args=(w, target, delta, indices, self.events, child), daemon=True)
            p.start()
            self.pipes.append(parent)
            self.procs.append(p)
        ready = 0
        deadline = time.monotonic() + 180
        while ready < len(self.procs):
            for ev in self._get(deadline):
                if ev[0] == "ready":
                    ready += 1

    def _get(self, deadline: float) -> list[tuple[Any, ...]]:
        timeout = deadline - time.monotonic()
        if timeout <= 0:
            raise TimeoutError("no report from the clients in time")
        try:
            return self.events.get(timeout=min(timeout, 0.2))  # type: ignore[no-any-return]
        except queue.Empty:
            return []

    def pump(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._take(self._get(deadline + 1))

    def _take(self, batch: list[tuple[Any, ...]]) -> None:
        for ev in batch:
            if ev[0] == "ack":
                _, i, t, version, received, acked, nbytes = ev
                self.acks[i][t].append(Ack(version, received, acked, nbytes))
            elif ev[0] == "error":
                self.errors.append(f"client {ev[1]}: {ev[2]}")

    def wait(self, done: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if self.errors:
                raise SystemExit("client errors:\n" + "\n".join(self.errors[:10]))
            dead = [p.pid for p in self.procs if p.exitcode is not None]
            if dead:
                raise SystemExit(f"client processes {dead} died while waiting for {what}")
            try:
                self._take(self._get(deadline))
            except TimeoutError:
                raise SystemExit(f"timed out after {timeout}s waiting for {what}") from None

    def start(self, at: float) -> None:
        for p in self.pipes:
            p.send(("start", at))

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def cpu(self) -> float:
        return sum(cpu_of(pid) for pid in self.pids())

    def synced(self) -> bool:
        return all(all(a[t] for t in REQUIRED) for a in self.acks)

    def total_bytes(self) -> int:
        return sum(x.nbytes for a in self.acks for t in TYPES for x in a[t])

    def stop(self) -> None:
        for p in self.pipes:
            with contextlib.suppress(OSError):
                p.send(("stop",))
        for p in self.procs:
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join()


def wait_idle(server: Server, fleet: Fleet | None, timeout: float = 60.0, window: float = 0.5) -> float:
    """Wait until the server tree and the clients use < 10% of a core; returns the seconds waited."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = server.tree_cpu() + (fleet.cpu() if fleet else 0.0)
        if fleet:
            fleet.pump(window)
        else:
            time.sleep(window)
        if server.tree_cpu() + (fleet.cpu() if fleet else 0.0) - before <= 0.1 * window + 1.0 / CLK_TCK:
            break
    return time.monotonic() - started


def table(headers: list[str], rows: list[list[str]]) -> str:
    return _table(headers, rows) if rows else "(not run)"


def quantile(values: list[float], q: float) -> float:
    """Linear interpolation between order statistics (q in [0, 1])."""
    if not values:
        return float("nan")
    s = sorted(values)
    pos = q * (len(s) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


# -- one scenario: a server, N clients, changes ------------------------------------------------
@dataclass
class Change:
    latency: float  # write → last client's ACK of the new RDS version
    first_ack: float  # write → first ACK
    published: float  # write → compile finished in the server (/compile "at")
    compile_s: float  # compile in the worker (/compile "seconds")
    last_receive: float  # write → last client received it
    cpu: dict[str, float] = field(default_factory=dict)
    bytes_per_client: float = 0.0
    server_convergence: float = float("nan")  # the server's own xds_convergence_seconds


@dataclass
class Scenario:
    mode: str
    clients: int
    watch: str = "fast"  # the watcher's options: "fast" (10 ms) or "defaults"
    full_push: float = float("nan")
    full_push_first: float = float("nan")
    full_push_cpu: dict[str, float] = field(default_factory=dict)
    full_push_bytes: float = 0.0
    rss0_kb: int = 0
    rss1_kb: int = 0
    hwm_kb: int = 0
    status_synced: int = 0
    changes: list[Change] = field(default_factory=list)
    noop: dict[str, float] = field(default_factory=dict)  # kind → push bytes
    noop_acks: int = 0

    @property
    def label(self) -> str:
        return self.mode if self.watch == "fast" else f"{self.mode}, default watcher"

    def per_stream_kb(self) -> float:
        return (self.rss1_kb - self.rss0_kb) / self.clients

    def as_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["changes"] = [c.__dict__ for c in self.changes]
        d["per_stream_kb"] = self.per_stream_kb()
        return d


def run_scenario(
    args: argparse.Namespace,
    config: Config,
    workdir: Path,
    cache_dir: Path,
    mode: str,
    n: int,
    repeats: int,
    noop: bool,
    watch: str = "fast",
) -> Scenario:
    result = Scenario(mode, n, watch)
    print(f"\n== {result.label}, {n} clients ==", flush=True)
    server = Server(config.root, workdir, cache_dir, args.max_delay, args.src, watch)
    fleet: Fleet | None = None
    try:
        waited = wait_idle(server, None, timeout=120)
        result.rss0_kb = server.rss_kb()
        print(
            f"server ready (pid {server.pid}, idle after {waited:.1f} s); VmRSS {result.rss0_kb / 1024:.0f} MiB",
            flush=True,
        )
        fleet = Fleet(f"127.0.0.1:{server.xds_port}", n, args.procs, mode == "delta")
        cpu0 = {**server.cpu(), "clients": fleet.cpu()}
        profile = Profile(args.profile, server.pid, f"server-{mode}-{n}-full-push")
        start_at = time.time() + 0.3
        fleet.start(start_at)
        fleet.wait(fleet.synced, 600, f"{n} clients to sync")
        profile.stop()
        cpu1 = {**server.cpu(), "clients": fleet.cpu()}
        last = max(x.acked for a in fleet.acks for t in TYPES for x in a[t])
        first_rds = min(a["RDS"][0].acked for a in fleet.acks)
        result.full_push = last - start_at
        result.full_push_first = first_rds - start_at
        result.full_push_cpu = {k: cpu1[k] - cpu0[k] for k in cpu0}
        result.full_push_bytes = fleet.total_bytes() / n
        print(
            f"full push: last ACK of all four types {result.full_push:.2f} s after the streams started "
            f"(first RDS ACK {result.full_push_first:.2f} s); {result.full_push_bytes / 1e6:.2f} MB per client; "
            f"CPU s {fmt_cpu(result.full_push_cpu)}",
            flush=True,
        )
        wait_idle(server, fleet)
        fleet.pump(1.0)
        result.rss1_kb = server.rss_kb()
        result.hwm_kb = server.hwm_kb()
        nodes = server.get("/status")["nodes"]
        result.status_synced = sum(1 for node in nodes if node["state"] == "SYNCED")
        print(
            f"idle: VmRSS {result.rss1_kb / 1024:.0f} MiB ({result.per_stream_kb():.1f} KB per stream), "
            f"VmHWM {result.hwm_kb / 1024:.0f} MiB; /status: {result.status_synced}/{len(nodes)} SYNCED",
            flush=True,
        )
        profile = Profile(args.profile, server.pid, f"server-{mode}-{n}-changes")
        for k in range(repeats):
            result.changes.append(one_change(server, fleet, config, f"{mode}{n}x{os.getpid()}", k))
        profile.stop()
        if noop:
            noop_changes(server, fleet, config, result)
    finally:
        if fleet is not None:
            fleet.stop()
        server.stop()
    return result


def fmt_cpu(cpu: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())


def one_change(server: Server, fleet: Fleet, config: Config, tag: str, k: int) -> Change:
    path, content = config.one_operation_change(tag)
    wait_idle(server, fleet)
    rds_before = [len(a["RDS"]) for a in fleet.acks]
    bytes_before = [sum(x.nbytes for t in TYPES for x in a[t]) for a in fleet.acks]
    conv_count = server.metric("xds_convergence_seconds_count")
    conv_sum = server.metric("xds_convergence_seconds_sum")
    cpu0 = {**server.cpu(), "clients": fleet.cpu()}
    t0 = time.time()
    path.write_bytes(content)

    def done() -> bool:
        return all(len(a["RDS"]) > b for a, b in zip(fleet.acks, rds_before, strict=True))

    fleet.wait(done, 300, "every client to ACK the change")
    cpu1 = {**server.cpu(), "clients": fleet.cpu()}
    new = [a["RDS"][b] for a, b in zip(fleet.acks, rds_before, strict=True)]
    versions = {x.version for x in new}
    if len(versions) != 1:
        raise SystemExit(f"clients ACKed different RDS versions after one change: {versions}")
    compiled = server.get("/compile")
    fleet.pump(0.05)
    bytes_after = [sum(x.nbytes for t in TYPES for x in a[t]) for a in fleet.acks]
    conv = float("nan")
    deadline = time.monotonic() + 10  # the server may still be reading the last ACKs
    while time.monotonic() < deadline:
        if server.metric("xds_convergence_seconds_count") > conv_count:
            conv = server.metric("xds_convergence_seconds_sum") - conv_sum
            break
        fleet.pump(0.05)
    change = Change(
        latency=max(x.acked for x in new) - t0,
        first_ack=min(x.acked for x in new) - t0,
        published=compiled["at"] - t0,
        compile_s=compiled["seconds"],
        last_receive=max(x.received for x in new) - t0,
        cpu={k: cpu1[k] - cpu0[k] for k in cpu0},
        bytes_per_client=(sum(bytes_after) - sum(bytes_before)) / fleet.n,
        server_convergence=conv,
    )
    print(
        f"  change {k + 1}: last ACK {change.latency * 1000:.0f} ms (compile done {change.published * 1000:.0f} ms, "
        f"worker {change.compile_s * 1000:.0f} ms; first ACK {change.first_ack * 1000:.0f} ms); "
        f"server says {conv * 1000:.0f} ms; CPU s {fmt_cpu(change.cpu)}",
        flush=True,
    )
    return change


def noop_changes(server: Server, fleet: Fleet, config: Config, result: Scenario) -> None:
    service = sorted(config.specs)[0]
    path = config.file(service)
    original = path.read_bytes()
    reformatted = json.dumps(config.specs[service], indent=1).encode()  # JSON is YAML: same data, other text
    kinds = {
        "same bytes rewritten": original,
        "comment added": b"# a comment added by xds_bench\n" + original,
        "reformatted (YAML to JSON text)": reformatted,
        "back to the original text": original,
    }
    acks_before = sum(len(a[t]) for a in fleet.acks for t in TYPES)
    for kind, content in kinds.items():
        wait_idle(server, fleet)
        before = server.metric("xds_push_bytes_total")
        compiles_before = server.metric("controlplane_compiles_total")
        at_before = server.get("/compile")["at"]
        same = path.read_bytes() == content
        t0 = time.time()
        path.write_bytes(content)
        if same:  # the server compares content hashes: nothing to compile
            fleet.pump(1.5)
            compiled = {"seconds": 0.0, "ok": True}
        else:
            deadline = time.monotonic() + 60
            while server.get("/compile")["at"] <= max(at_before, t0):
                if time.monotonic() > deadline:
                    raise SystemExit(f"no recompile after the no-op change {kind!r}")
                fleet.pump(0.05)
            compiled = server.get("/compile")
            fleet.pump(1.0)
        pushed = server.metric("xds_push_bytes_total") - before
        compiles = server.metric("controlplane_compiles_total") - compiles_before
        result.noop[kind] = pushed
        print(
            f"  no-op ({kind}): {compiles:.0f} compile(s) ({compiled['seconds'] * 1000:.0f} ms), "
            f"ok={compiled['ok']}, {pushed:.0f} bytes pushed",
            flush=True,
        )
    result.noop_acks = sum(len(a[t]) for a in fleet.acks for t in TYPES) - acks_before


# -- e. serialize once vs per client -----------------------------------------------------------
SERIALIZE_VARIANTS = {
    "once": "serialize-once, assembled per client: snapshot.sotw_response(body, …) (the server before)",
    "once-delta": "serialize-once, assembled per client: snapshot.delta_response(entries, …) (the server before)",
    "naive": "per client: DiscoveryResponse + Any.Pack + SerializeToString",
    "cached": "what-if: whole response cached per version, nonce appended",
    "shared": "shared (the server now): Snapshot.sotw_response, one response object for every stream",
}


def serialize_child(config_dir: str, variant: str, n_clients: int, repeats: int, window: int, out: Any) -> None:
    """In a fresh process: compile, then build one push (all four types) for N clients, CPU-timed.

    ``window`` responses are kept alive (a server with that many writes in flight); with 0
    each response is dropped at once, so the allocator reuses the same memory.
    """
    from collections import deque

    from envoy.service.discovery.v3 import discovery_pb2

    import controlplane
    from controlplane.resources import Resources
    from controlplane.wire import length_delimited
    from controlplane.xds.snapshot import TYPE_ORDER, delta_response, snapshot_from_resources, sotw_response

    result = controlplane.compile([config_dir])
    assert result.resources is not None
    c = time.process_time()
    snap = snapshot_from_resources(result.resources)
    snapshot_s = time.process_time() - c
    messages = {t: dict(sorted(result.resources.of(t).items())) for t in TYPE_ORDER}
    short = {
        Resources.CLUSTER: "CDS",
        Resources.ENDPOINT: "EDS",
        Resources.LISTENER: "LDS",
        Resources.SCOPED_ROUTE: "SRDS",
        Resources.ROUTE: "RDS",
    }
    heads = {}
    for t in TYPE_ORDER:  # for the what-if: the response without its nonce, built once per version
        entries = snap.of(t)
        heads[t] = sotw_response(b"".join(entries[n].sotw for n in sorted(entries)), snap.version_of(t), t, "")

    def once(t: str, i: int) -> bytes:
        entries = snap.of(t)
        return sotw_response(b"".join(entries[n].sotw for n in sorted(entries)), snap.version_of(t), t, str(i))

    def once_delta(t: str, i: int) -> bytes:
        entries = snap.of(t)
        return delta_response((entries[n] for n in sorted(entries)), [], snap.version, t, str(i))

    def shared(t: str, i: int) -> bytes:
        entries = snap.of(t)
        return snap.sotw_response(t, tuple(sorted(entries)), snap.version_of(t))[0]

    def cached(t: str, i: int) -> bytes:
        return heads[t] + length_delimited(5, str(i).encode())

    def naive(t: str, i: int) -> bytes:
        resp = discovery_pb2.DiscoveryResponse(version_info=snap.version_of(t), type_url=t, nonce=str(i))
        for msg in messages[t].values():
            resp.resources.add().Pack(msg)
        return resp.SerializeToString()  # type: ignore[no-any-return]

    fn = {"once": once, "once-delta": once_delta, "naive": naive, "cached": cached, "shared": shared}[variant]
    alive: deque[bytes] = deque(maxlen=window or None)
    rows: dict[str, list[float]] = {}
    for t in TYPE_ORDER:
        cpu_runs, faults, nbytes = [], [], 0
        for _ in range(repeats):
            alive.clear()
            r0 = resource.getrusage(resource.RUSAGE_SELF)
            c = time.process_time()
            for i in range(n_clients):
                data = fn(t, i)
                if window:
                    alive.append(data)
            cpu_runs.append((time.process_time() - c) / n_clients * 1e6)
            faults.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0.ru_minflt) / n_clients)
            nbytes = len(data)
        rows[short[t]] = [median(cpu_runs), min(cpu_runs), max(cpu_runs), nbytes, median(faults)]
    out.put({"rows": rows, "snapshot_s": snapshot_s})


# Allocator regimes of the in-process measurement: (label, GLIBC_TUNABLES, responses kept alive).
# Building a 2-3 MB response per client costs very different CPU depending on whether glibc
# reuses heap memory or maps fresh pages (page faults) for each allocation, and which one
# happens by default depends on the allocation history (glibc's dynamic mmap threshold), so
# the two extremes are pinned with tunables, and the default is shown with writes in flight.
SERIALIZE_REGIMES = (
    ("heap reused", "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824", 0),
    ("glibc defaults, 100 in flight", "", 100),
    ("fresh pages every time", "glibc.malloc.mmap_threshold=131072", 0),
)


def run_serialize(config_dir: Path, n_clients: int, repeats: int) -> dict[str, Any]:
    """Each variant and allocator regime in its own fresh process."""
    ctx = multiprocessing.get_context("spawn")
    data: dict[str, Any] = {
        "clients": n_clients,
        "repeats": repeats,
        "regimes": [r[0] for r in SERIALIZE_REGIMES],
        "rows": {},
    }
    saved = os.environ.get("GLIBC_TUNABLES")
    try:
        for variant in SERIALIZE_VARIANTS:
            for label, tunables, window in SERIALIZE_REGIMES:
                if tunables:
                    os.environ["GLIBC_TUNABLES"] = tunables  # read by the child at exec
                elif saved is None:
                    os.environ.pop("GLIBC_TUNABLES", None)
                else:
                    os.environ["GLIBC_TUNABLES"] = saved
                out = ctx.Queue()
                args = (str(config_dir), variant, n_clients, repeats, window, out)
                p = ctx.Process(target=serialize_child, args=args)
                p.start()
                got = out.get(timeout=1800)
                p.join()
                data["rows"].setdefault(variant, {})[label] = got["rows"]
                data["snapshot_s"] = got["snapshot_s"]
                rds = got["rows"]["RDS"]
                print(f"  {variant}, {label}: RDS {rds[0]:,.1f} µs, {rds[4]:,.0f} page faults per client", flush=True)
    finally:
        if saved is None:
            os.environ.pop("GLIBC_TUNABLES", None)
        else:
            os.environ["GLIBC_TUNABLES"] = saved
    return data


def decode_costs(config_dir: Path, src: Path | None) -> dict[str, float]:
    """Client side: what walking a RouteConfiguration response costs vs decoding it (ms, CPU)."""
    code = f"""
import json, sys, time
sys.path.insert(0, {str(BENCH)!r})
import controlplane, _xds_client as xc
from controlplane.xds.snapshot import snapshot_from_resources, sotw_response
from envoy.service.discovery.v3 import discovery_pb2
from envoy.config.route.v3 import route_pb2
snap = snapshot_from_resources(controlplane.compile([{str(config_dir)!r}]).resources)
raw = sotw_response(b"".join(e.sotw for e in snap.of(xc.RDS).values()), "v", xc.RDS, "1")
def t(f, n):
    c = time.process_time()
    for _ in range(n):
        f()
    return (time.process_time() - c) / n * 1e3
walk = t(lambda: xc.parse_sotw(raw), 2000)
resp = t(lambda: discovery_pb2.DiscoveryResponse.FromString(raw), 50)
value = discovery_pb2.DiscoveryResponse.FromString(raw).resources[0].value
full = t(lambda: route_pb2.RouteConfiguration.FromString(value).virtual_hosts[0].routes, 20)
print(json.dumps({{"bytes": len(raw), "walk_ms": walk, "discovery_response_ms": resp, "route_configuration_ms": full}}))
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=src or REPO, env=child_env(src)
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def rollout_child(config_dir: str, counts: list[int], out: Any) -> None:
    """The server's per-ACK bookkeeping (``Registry.emit("ack")`` → ``Metrics``) for one rollout.

    N synced connections are registered as the server does, a new snapshot (one route
    configuration changed) is published, then every connection ACKs it: the CPU of those
    N ``emit("ack")`` calls is what the server's event loop spends on bookkeeping per change.
    """
    import controlplane
    from controlplane.resources import Resources
    from controlplane.xds.cache import SnapshotCache
    from controlplane.xds.metrics import Metrics
    from controlplane.xds.registry import Registry
    from controlplane.xds.snapshot import FULL_STATE_TYPES, TYPE_ORDER, build_snapshot, snapshot_from_resources

    snap = snapshot_from_resources(controlplane.compile([config_dir]).resources)  # type: ignore[arg-type]
    serialized = {t: {n: e.value for n, e in by_name.items()} for t, by_name in snap.resources.items()}
    route = next(iter(serialized[Resources.ROUTE]))
    serialized[Resources.ROUTE][route] += b"\x12\x00"  # one more (empty) field: a new version of that resource
    changed = build_snapshot(serialized, snap.references, snap.sources, snap.details_source)
    rows = []
    for n in counts:
        cache = SnapshotCache()
        cache.set(snap)
        registry = Registry()
        metrics = Metrics(registry, cache)
        conns = []
        for i in range(n):
            conn = registry.open("sotw", f"bench:{i}")
            conn.node_id, conn.group = f"bench-{i}", "bench"
            for t in TYPE_ORDER:
                state = conn.state(t)
                state.subscribed = None if t in FULL_STATE_TYPES else set(snap.of(t))
                state.sent_version = state.acked_version = snap.version_of(t, state.subscribed)
            conns.append(conn)
        cache.set(changed)
        metrics.published("*", changed.version, time.monotonic())
        new = changed.version_of(Resources.ROUTE, {route})
        c = time.process_time()
        for conn in conns:
            state = conn.state(Resources.ROUTE)
            state.sent_version = state.acked_version = new
            registry.emit("ack", conn, Resources.ROUTE, {"version": new})
        rows.append((n, time.process_time() - c))
    out.put(rows)


def rollout_costs(config_dir: Path, counts: list[int]) -> list[tuple[int, float]]:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    p = ctx.Process(target=rollout_child, args=(str(config_dir), counts, out))
    p.start()
    try:
        rows: list[tuple[int, float]] = out.get(timeout=600)
    except queue.Empty:
        rows = []
    p.join()
    if p.exitcode:
        print("  skipped: the server's registry/metrics API has changed (see the traceback above)", flush=True)
    for n, cpu in rows:
        print(f"  {n} streams: {cpu:.3f} s CPU for the {n} ACKs of one change ({cpu / n * 1e3:.3f} ms per ACK)")
    return rows


# -- report ------------------------------------------------------------------------------------
def ms(x: float) -> str:
    return "-" if math.isnan(x) else f"{x * 1000:,.0f}"


def change_tables(scenarios: list[Scenario]) -> str:
    rows = []
    for s in scenarios:
        if not s.changes:
            continue
        lat = [c.latency for c in s.changes]
        rows.append(
            [
                s.label,
                f"{s.clients:,}",
                str(len(lat)),
                ms(quantile(lat, 0.5)),
                ms(quantile(lat, 0.99)),
                ms(max(lat)),
                ms(median([c.published for c in s.changes])),
                ms(median([c.compile_s for c in s.changes])),
                ms(median([c.first_ack - c.published for c in s.changes])),
                ms(median([c.latency - c.first_ack for c in s.changes])),
                ms(median([c.server_convergence for c in s.changes])),
                f"{median([c.bytes_per_client for c in s.changes]) / 1e6:.2f}",
            ]
        )
    latency = table(
        [
            "mode",
            "clients",
            "changes",
            "p50 ms",
            "p99 ms",
            "max ms",
            "write → compiled ms",
            "of which compile (worker) ms",
            "compiled → first ACK ms",
            "first → last ACK ms",
            "server's convergence ms",
            "MB per client",
        ],
        rows,
    )
    cpu_rows = []
    for s in scenarios:
        if not s.changes:
            continue
        keys = list(s.changes[0].cpu)
        cpu_rows.append(
            [s.label, f"{s.clients:,}"]
            + [f"{median([c.cpu[k] for c in s.changes]):.2f}" for k in keys]
            + [f"{median([c.cpu['server'] for c in s.changes]) / s.clients * 1e3:.2f}"]
            + [f"{median([c.cpu['clients'] for c in s.changes]) / s.clients * 1e3:.2f}"]
        )
    cpu = table(
        [
            "mode",
            "clients",
            "server process CPU s",
            "compile worker CPU s",
            "validation worker CPU s",
            "client processes CPU s",
            "server CPU ms / clients",
            "clients CPU ms / clients",
        ],
        cpu_rows,
    )
    return latency + "\n\nCPU seconds per one-operation change (median), write → last ACK:\n\n" + cpu


def push_memory_table(scenarios: list[Scenario]) -> str:
    rows = []
    for s in scenarios:
        rows.append(
            [
                s.label,
                f"{s.clients:,}",
                f"{s.full_push:.2f}",
                f"{s.full_push_first:.2f}",
                f"{s.full_push_bytes / 1e6:.2f}",
                f"{s.full_push_cpu.get('server', 0):.2f}",
                f"{s.full_push_cpu.get('clients', 0):.2f}",
                f"{s.rss0_kb / 1024:.0f}",
                f"{s.rss1_kb / 1024:.0f}",
                f"{s.per_stream_kb():.1f}",
                f"{s.hwm_kb / 1024:.0f}",
                f"{s.status_synced:,}",
            ]
        )
    return table(
        [
            "mode",
            "clients",
            "full push s (last ACK)",
            "first RDS ACK s",
            "MB per client",
            "server CPU s",
            "clients CPU s",
            "RSS 0 clients MiB",
            "RSS idle MiB",
            "KB per stream",
            "server VmHWM MiB",
            "/status SYNCED",
        ],
        rows,
    )


def noop_table(scenarios: list[Scenario]) -> str:
    rows = []
    for s in scenarios:
        for kind, pushed in s.noop.items():
            rows.append([s.label, f"{s.clients:,}", kind, f"{pushed:,.0f}"])
        if s.noop:
            rows.append(
                [s.label, f"{s.clients:,}", "responses ACKed by clients during all of the above", str(s.noop_acks)]
            )
    return table(["mode", "clients", "change", "xds_push_bytes_total delta"], rows) if rows else "(not run)"


def serialize_table(data: dict[str, Any]) -> str:
    regimes = data["regimes"]
    rows = []
    for variant, by_regime in data["rows"].items():
        for t in [*TYPES, "all four"]:
            cells = [SERIALIZE_VARIANTS[variant], t]
            for regime in regimes:
                r = by_regime[regime]
                if t == "all four":
                    cells += [f"{sum(v[0] for v in r.values()):,.1f}", f"{sum(v[4] for v in r.values()):,.0f}"]
                else:
                    cells += [f"{r[t][0]:,.1f}", f"{r[t][4]:,.0f}"]
            first = by_regime[regimes[0]]
            cells.append(f"{sum(v[3] for v in first.values()):,}" if t == "all four" else f"{first[t][3]:,}")
            rows.append(cells)
    headers = ["responses built", "type"]
    for regime in regimes:
        headers += [f"µs CPU per client ({regime})", "page faults"]
    return table([*headers, "bytes per client per push"], rows)


def goals(scenarios: list[Scenario]) -> list[tuple[str, str, bool | None]]:
    out: list[tuple[str, str, bool | None]] = []
    by = {(s.mode, s.clients): s for s in scenarios if s.watch == "fast"}
    for n, goal in ((100, GOAL_DELTA_100), (1000, GOAL_DELTA_1000)):
        s = by.get(("delta", n))
        if s is None or not s.changes:
            out.append((f"one-operation delta change p99 < {goal * 1000:.0f} ms at {n} clients", "not run", None))
            continue
        p99 = quantile([c.latency for c in s.changes], 0.99)
        out.append(
            (
                f"one-operation delta change p99 < {goal * 1000:.0f} ms at {n} clients",
                f"{p99 * 1000:.0f} ms",
                p99 < goal,
            )
        )
    s = by.get(("sotw", 1000))
    if s is None:
        out.append(("full 10k-operation SotW push to 1000 clients < 5 s", "not run", None))
    else:
        out.append(
            ("full 10k-operation SotW push to 1000 clients < 5 s", f"{s.full_push:.2f} s", s.full_push < GOAL_FULL_PUSH)
        )
    noops = [v for s in scenarios for v in s.noop.values()]
    out.append(
        (
            "no-op change: 0 bytes pushed",
            f"{max(noops):,.0f} bytes max" if noops else "not run",
            (max(noops) == 0) if noops else None,
        )
    )
    for mode in ("sotw", "delta"):
        s = max((x for x in scenarios if x.mode == mode), key=lambda x: x.clients, default=None)
        if s is None:
            continue
        kb = s.per_stream_kb()
        out.append(
            (
                f"< 100 KB per idle stream ({mode}, {s.clients} clients)",
                f"{kb:.1f} KB" + ("" if s.clients >= 1000 else " (judged at 1000 clients: too few to measure)"),
                kb * 1000 < GOAL_BYTES_PER_STREAM if s.clients >= 1000 else None,
            )
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", type=int, default=10_000, help="operations in the config (default 10000)")
    p.add_argument("--clients", type=int, nargs="*", default=[100, 1000], help="client counts (none: skip a-d)")
    p.add_argument("--modes", nargs="+", choices=["sotw", "delta"], default=["sotw", "delta"])
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="one-operation changes per scenario (default 20 at <=100 clients, else 8)",
    )
    p.add_argument("--procs", type=int, default=4, help="client processes (default 4)")
    p.add_argument("--max-delay", type=float, default=0.5, help="with the fast watcher (default 0.5)")
    p.add_argument(
        "--watch",
        nargs="+",
        choices=["fast", "defaults"],
        default=["fast", "defaults"],
        help="watcher options: fast (poll and quiet period 10 ms: every scenario) and the defaults "
        "(one-operation changes at the smallest client count; every scenario when alone)",
    )
    p.add_argument("--no-noop", dest="noop", action="store_false", help="skip the no-op changes")
    p.add_argument("--skip-inprocess", action="store_true", help="skip the in-process measurements (e, f)")
    p.add_argument("--rollout-streams", type=int, nargs="+", default=[100, 300, 1000])
    p.add_argument("--serialize-clients", type=int, default=1000)
    p.add_argument("--serialize-repeats", type=int, default=2)
    p.add_argument("--profile", type=Path, metavar="DIR", help="py-spy profiles of the server (collapsed stacks)")
    p.add_argument(
        "--src",
        type=Path,
        help="directory holding the controlplane package to measure (default: this repo), e.g. "
        "`git archive HEAD controlplane | tar -x -C DIR`",
    )
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the work directory (config, server logs)")
    args = p.parse_args()
    if args.src:
        args.src = args.src.resolve()
        sys.path.insert(0, str(args.src))  # in-process measurements (spawned children inherit sys.path)

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by the server and the clients
    print(f"machine: {machine()}\nmeasured: {git_state(args.src)}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="xds-bench-"))
    started = time.monotonic()
    scenarios: list[Scenario] = []
    serialized: dict[str, Any] | None = None
    decode: dict[str, float] = {}
    rollouts: list[tuple[int, float]] = []
    try:
        config = Config(workdir / "config", args.ops)
        sizes = [config.file(s).stat().st_size for s in config.specs]
        print(
            f"config: {args.ops} operations in {len(sizes)} spec files "
            f"({min(sizes) / 1e3:.0f}-{max(sizes) / 1e3:.0f} KB) + gateway.policy.yaml, in {config.root}",
            flush=True,
        )
        cache_dir = workdir / "cache"
        for n in sorted(args.clients):
            for mode in args.modes:
                repeats = args.repeats if args.repeats is not None else (20 if n <= 100 else 8)
                noop = args.noop and n == min(args.clients)  # the no-op checks do not depend on N
                for watch in args.watch:
                    if watch == "defaults" and "fast" in args.watch and n != min(args.clients):
                        continue
                    scenarios.append(
                        run_scenario(
                            args, config, workdir, cache_dir, mode, n, repeats, noop and watch == args.watch[0], watch
                        )
                    )
                    print(f"({time.monotonic() - started:.0f} s so far)", flush=True)
        if not args.skip_inprocess:
            pristine = Config(workdir / "config-inprocess", args.ops)  # the edits above change sizes
            print(f"\n== serialization, in-process, {args.serialize_clients} clients ==", flush=True)
            serialized = run_serialize(pristine.root, args.serialize_clients, args.serialize_repeats)
            decode = decode_costs(pristine.root, args.src)
            print("\n== ACK bookkeeping of one rollout, in-process ==", flush=True)
            rollouts = rollout_costs(pristine.root, args.rollout_streams)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"work directory kept: {workdir}")

    print(
        "\nserver: python -m controlplane serve DIR --insecure --poll-interval 0.01 --quiet-period 0.01 "
        f"--max-delay {args.max_delay}; 'default watcher': python -m controlplane serve DIR --insecure"
    )
    print(f"client processes: {args.procs}; total run time {time.monotonic() - started:.0f} s\n")
    print("a. One-operation change: write → last client's ACK of the new RouteConfiguration (ms)\n")
    print(change_tables(scenarios))
    print("\nb/d. Initial sync of fresh clients (full push) and memory per idle stream\n")
    print(push_memory_table(scenarios))
    print("\nc. No-op changes\n")
    print(noop_table(scenarios))
    if serialized is not None:
        print(
            f"\ne. Building the responses of one push for {serialized['clients']} clients in-process "
            f"(CPU, median (min-max) of {serialized['repeats']}; snapshot_from_resources once: "
            f"{serialized['snapshot_s'] * 1000:.0f} ms CPU)\n"
        )
        print(serialize_table(serialized))
    if decode:
        print(
            f"\nclient side, one RDS response of {decode['bytes']:,} bytes: "
            f"wire walk {decode['walk_ms'] * 1000:.1f} µs, "
            f"DiscoveryResponse.FromString {decode['discovery_response_ms']:.3f} ms, "
            f"+ RouteConfiguration.FromString {decode['route_configuration_ms']:.2f} ms (CPU)"
        )
    if rollouts:
        print("\nf. Server-side ACK bookkeeping of one change (Registry.emit('ack') → Metrics), in-process\n")
        print(
            table(
                ["streams", "CPU s for all ACKs of one change", "ms per ACK"],
                [[f"{n:,}", f"{cpu:.3f}", f"{cpu / n * 1e3:.3f}"] for n, cpu in rollouts],
            )
        )
    print("\nGoals:\n")
    for goal, value, met in goals(scenarios):
        verdict = "not run" if met is None else ("MET" if met else "MISSED")
        print(f"  {verdict:7}  {goal}: {value}")
    for s in scenarios:
        if s.watch == "defaults" and s.changes:
            lat = [c.latency for c in s.changes]
            print(
                f"  (info)   one-operation {s.mode} change at {s.clients} clients with the default watcher: "
                f"p50 {quantile(lat, 0.5) * 1000:.0f} ms, p99 {quantile(lat, 0.99) * 1000:.0f} ms"
            )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "scenarios": [s.as_json() for s in scenarios],
                    "serialize": serialized,
                    "decode": decode,
                    "rollouts": rollouts,
                    "goals": goals(scenarios),
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
