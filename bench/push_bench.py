"""Push → all-ACK: how long a CI push through the push API takes until every Envoy runs it,
beside the floor of the same change made by writing the spec file.

The config is xds_bench's (bench/synth.py, default 10k operations split into one OpenAPI file
per service, ~1,000 operations and 0.5 MB each, one policy mounting them), except that the
pushed API (``svc00``) keeps only its first ``--pushed-operations`` operations (default 100,
~50 KB: the push validates the whole pushed spec before publishing, so its size is what the
push pays; 1000 keeps the whole spec, 969 operations), plus a push client in the policy
(``push.clients``: a token whose SHA-256 is in the policy, owning ``svc00``), with
``allowSecurityChanges: true`` (a new public operation is a security-relevant change). With
``--review`` the client has no ``allowSecurityChanges`` (real clients' default), so every push
is also reviewed (a dry-run compile of both sides and a diff, controlplane/push/api.py); for
the added operation not to be security-relevant, ``svc00`` then gets a token provider (an
inline JWKS, the example identity provider's public keys; nothing is verified here) and
``public: false`` on every operation (``--auth`` alone: the same config, no review).
The real control plane serves it with the push API (TLS by default, its own throwaway CA)::

    python -m controlplane serve DIR --insecure --poll-interval 0.01 --quiet-period 0.01 --max-delay 0.5 \\
        --push-address 127.0.0.1:PORT --push-store STORE --push-cert CERT --push-key KEY

N simulated Envoys (bench/_xds_client.py, as xds_bench: real gRPC ADS streams, CDS/EDS/LDS/RDS,
every response ACKed, SotW or delta, over ``--procs`` processes) and optionally K real Envoys
(``--real-envoys K``) connect and sync. Then, ``--repeats`` times, the same one-operation
change (one GET operation added to one spec: a ~1,000-operation one for the floor, the pushed
one for the push) is made two ways, alternating which goes first:

a. floor (the file watcher, as xds_bench measures it): ``time.time()`` just before writing the
   spec file (the services other than the pushed one, in turn) until the last client's ACK of
   the new RouteConfiguration (the ``time.time()`` each client reports).
b. push: ``POST /v1/apis/svc00/versions`` with ``{"files": {...}, "spec": ..., "wait": true}``
   (a new TLS connection, the whole spec, bearer token), ``time.time()`` just before
   the request: until the answer (which comes only once every connected Envoy ACKed); the
   server's own ``rollout.seconds`` (publish → every ACK, compile not included); the time
   before publishing (answer - ``rollout.seconds``: upload, validation, review, compile); and
   the last ACK as the clients report it.

Real Envoys' ACK times are their RDS subscriptions' ``update_time`` gauges (ms since the epoch,
read from their admin ``/stats``). CPU seconds of the control-plane process and its workers
(``/proc/<pid>/stat``) are read around each change: to the last ACK (floor) or the answer
(push), and until the machine is idle again (the background validation included). Every
change starts on an idle machine. Then one push through the real ``push`` command
(``python -m controlplane push --wait``, interpreter start-up included) per ``--cli-pushes``,
beside the start-up alone (``push --help``).

Goal (issue 14): push → all-ACK for a one-operation change at 100 Envoys < 1 s.

    cd /work/main && .venv/bin/python bench/push_bench.py      # 100 clients, SotW and delta, 20 repeats
    .venv/bin/python bench/push_bench.py --clients 20 --repeats 3 --modes delta     # a quick check
    .venv/bin/python bench/push_bench.py --modes delta --real-envoys 2             # + 2 real Envoys
    .venv/bin/python bench/push_bench.py --review                                  # each push reviewed
    .venv/bin/python bench/push_bench.py --pushed-operations 1000                  # the whole 0.5 MB spec pushed
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import re
import resource
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))
import synth  # noqa: E402
from _common import REPO, child_env, git_state, machine, median  # noqa: E402
from xds_bench import (  # noqa: E402
    CLK_TCK,
    TYPES,
    Config,
    Fleet,
    Server,
    children_of,
    fmt_cpu,
    free_port,
    quantile,
    table,
    wait_idle,
)

GOAL_PUSH_100 = 1.0
PUSHED_API = "svc00"  # pushed through the API; the floor edits the other services' files
TOKEN = "push-bench-token"  # a throwaway token for a throwaway control plane


# -- the config --------------------------------------------------------------------------------
def add_operation(config: Config, service: str, tag: str) -> str:
    """One more GET operation in ``service``'s spec; its new text."""
    config.edits += 1
    path = f"/{service}/pushbench-{tag}-{config.edits}"
    config.specs[service]["paths"][path] = {
        "get": {
            "operationId": f"pushBench_{tag}_{config.edits}".replace("-", "_"),
            "summary": "added by push_bench",
            "responses": {"200": {"description": "ok"}},
        }
    }
    return synth.dump(config.specs[service])


METHODS = frozenset({"get", "put", "post", "delete", "patch", "head", "options", "trace"})


def operation_count(spec: dict[str, Any]) -> int:
    return sum(1 for item in spec["paths"].values() for key in item if key in METHODS)


def shrink(config: Config, service: str, n_ops: int) -> None:
    """``service``'s spec keeps its first ``n_ops`` operations (all of them when it has fewer);
    its components stay whole (the other services' specs carry them too)."""
    kept: dict[str, Any] = {}
    left = n_ops
    for path, item in config.specs[service]["paths"].items():
        if left <= 0:
            break
        methods = [k for k in item if k in METHODS][:left]
        kept[path] = {k: v for k, v in item.items() if k in methods or k not in METHODS}
        left -= len(methods)
    config.specs[service]["paths"] = kept
    config.file(service).write_text(synth.dump(config.specs[service]))


PROVIDER = "push-bench-idp"


def with_push_client(config: Config, listener_port: int, review: bool, auth: bool) -> None:
    """The policy gets a push client owning the pushed API, and a free listener port (real Envoys
    bind it). With ``auth``, the pushed API gets a token provider and every one of its
    operations needs a token, so that an added operation is not a security-relevant change."""
    policy = config.root / "gateway.policy.yaml"
    text = policy.read_text().replace("port: 10080", f"port: {listener_port}")
    # a pushed API is mounted where the policy says (push-unpinned); "/" mounts it where its
    # spec's servers did: the same routes as the file-watched services
    entry = f"    spec: specs/{PUSHED_API}.yaml\n"
    assert entry in text
    pinned = entry + "    pathPrefix: /\n"
    if auth:
        # the synthetic specs declare no security: without public: false the new operation
        # would be public, which the review refuses
        pinned += f"    auth: {{provider: {PROVIDER}}}\n    defaults: {{public: false}}\n"
    text = text.replace(entry, pinned)
    if auth:
        # nothing is verified here: the example identity provider's public keys will do
        jwks = json.dumps(json.loads((REPO / "specs" / "idp" / "jwks.json").read_text()))
        text += (
            "auth:\n  providers:\n"
            f"    - {{name: {PROVIDER}, issuer: https://idp.push-bench, audiences: [push-bench],\n"
            f"       jwks: {{inline: {jwks}}}}}\n"
        )
    digest = hashlib.sha256(TOKEN.encode()).hexdigest()
    client = f"name: push-bench, tokenSha256: {digest}, apis: [{PUSHED_API}]"
    if not review:
        # a new public operation is a security-relevant change, which a client must be allowed
        # to make; without the flag every push is reviewed (a dry-run compile and a diff)
        client += ", allowSecurityChanges: true"
    policy.write_text(text + "push:\n  clients:\n" + f"    - {{{client}}}\n")


class PushTarget:
    """The push API: its URL, TLS material (or plain HTTP) and the serve options that set it up."""

    def __init__(self, workdir: Path, insecure: bool):
        self.port = free_port()
        self.store = workdir / "push-store"
        self.insecure = insecure
        self.ca_file: Path | None = None
        self.serve_options = ["--push-address", f"127.0.0.1:{self.port}", "--push-store", str(self.store)]
        if insecure:
            self.serve_options.append("--push-insecure")
            self.context: ssl.SSLContext | None = None
        else:
            from controlplane.certs import CertificateAuthority

            (workdir / "pki").mkdir(parents=True)
            ca = CertificateAuthority(workdir / "pki", "push-bench-ca")
            cert = ca.issue("localhost", ["localhost", "127.0.0.1"])
            self.ca_file = ca.path
            self.serve_options += ["--push-cert", str(cert.cert), "--push-key", str(cert.key)]
            self.context = ssl.create_default_context(cafile=str(ca.path))

    @property
    def url(self) -> str:
        return f"{'http' if self.insecure else 'https'}://127.0.0.1:{self.port}"

    def post(self, path: str, body: bytes, timeout: float) -> tuple[int, dict[str, Any]]:
        headers = {"content-type": "application/json", "authorization": f"Bearer {TOKEN}"}
        req = urllib.request.Request(self.url + path, data=body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self.context) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")


# -- real Envoys -------------------------------------------------------------------------------
UPDATE_TIME = re.compile(r"^(\S*rds\.\S*\.update_time): (\d+)$", re.M)


class RealEnvoys:
    """K real Envoys on the same ADS server; when each accepted a RouteConfiguration (its RDS
    subscriptions' ``update_time`` gauges, ms since the epoch)."""

    def __init__(self, workdir: Path, xds_port: int, k: int, delta: bool):
        from controlplane.bootstrap import AdminOptions, XdsOptions, dynamic_bootstrap
        from controlplane.resources import to_dict
        from tests.harness import EnvoyProcess

        self.envoys: list[Any] = []
        for i in range(k):
            options = XdsOptions(node_id=f"real-{i}", host="127.0.0.1", port=xds_port, delta=delta, insecure=True)
            admin = free_port()
            config = to_dict(dynamic_bootstrap(options, AdminOptions(port=admin)))
            self.envoys.append(EnvoyProcess(config, workdir, admin, wait=False))

    def updated_ms(self) -> list[int]:
        """Per Envoy, the latest ``update_time`` of its RDS subscriptions (0 when none yet)."""
        out = []
        for envoy in self.envoys:
            with contextlib.suppress(OSError):
                _status, text = envoy.admin("/stats?filter=rds%5C..*update_time")
                out.append(max((int(m.group(2)) for m in UPDATE_TIME.finditer(text)), default=0))
                continue
            out.append(0)
        return out

    def wait_updated(self, after: float, timeout: float) -> float:
        """The time (``time.time()``) the last of them accepted a route configuration after ``after``."""
        if not self.envoys:
            return float("nan")
        deadline = time.monotonic() + timeout
        while True:
            times = self.updated_ms()
            if all(t / 1000 >= after - 0.001 for t in times):
                return max(times) / 1000
            if time.monotonic() > deadline:
                raise SystemExit(f"real Envoys did not take the change in {timeout}s: update_time {times}")
            time.sleep(0.02)

    def stop(self) -> None:
        for envoy in self.envoys:
            envoy.stop()


# -- one change, two ways ----------------------------------------------------------------------
@dataclass
class Change:
    latency: float  # start → last ACK (clients' times; real Envoys' update_time included)
    first_ack: float
    answer: float = float("nan")  # push: start → the API's answer
    rollout: float = float("nan")  # push: the server's rollout.seconds
    real_last: float = float("nan")  # start → the last real Envoy's update
    cpu: dict[str, float] = field(default_factory=dict)  # to the last ACK / the answer
    cpu_idle: dict[str, float] = field(default_factory=dict)  # until idle again

    @property
    def before_publish(self) -> float:
        """push: request → publishing (upload, validation, review, compile), as the answer
        time less the server's publish → every ACK."""
        return self.answer - self.rollout


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def tree_cpu(pid: int, parents: dict[int, int]) -> float:
    """utime + stime of ``pid`` and every live descendant, with the CPU of the children each
    has reaped (cutime + cstime): the workers run the full validator as a child process of
    their own (controlplane/model/_validator_process.py), which xds_bench's direct-children
    count does not see."""
    total = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        fields = _stat(p)
        if fields is not None:
            total += sum(int(x) for x in fields[11:15]) / CLK_TCK
        todo += [c for c, parent in parents.items() if parent == p]
    return total


def cpu_now(server: Server) -> dict[str, float]:
    """CPU seconds so far: the server process, the compile worker's tree, the other workers' trees."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) is not None:
            parents[int(entry)] = int(fields[1])
    kids = children_of(server.pid)  # oldest first: the compile worker, then the validation worker
    own = _stat(server.pid)
    return {
        "server": sum(int(x) for x in own[11:13]) / CLK_TCK if own else 0.0,
        "compile": tree_cpu(kids[0], parents) if kids else 0.0,
        "other workers": sum(tree_cpu(k, parents) for k in kids[1:]),
    }


def diff(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: b[k] - a[k] for k in a}


def rds_acks(fleet: Fleet) -> list[int]:
    return [len(a["RDS"]) for a in fleet.acks]


def new_acks(fleet: Fleet, before: list[int], what: str) -> list[Any]:
    def done() -> bool:
        return all(len(a["RDS"]) > b for a, b in zip(fleet.acks, before, strict=True))

    fleet.wait(done, 300, what)
    new = [a["RDS"][b] for a, b in zip(fleet.acks, before, strict=True)]
    versions = {x.version for x in new}
    if len(versions) != 1:
        raise SystemExit(f"clients ACKed different RDS versions after one change: {versions}")
    return new


def floor_change(server: Server, fleet: Fleet, real: RealEnvoys, config: Config, tag: str) -> Change:
    services = [s for s in sorted(config.specs) if s != PUSHED_API]
    service = services[config.edits % len(services)]
    content = add_operation(config, service, tag).encode()
    wait_idle(server, fleet)
    before = rds_acks(fleet)
    cpu0 = cpu_now(server)
    t0 = time.time()
    config.file(service).write_bytes(content)
    new = new_acks(fleet, before, "every client to ACK the file change")
    real_at = real.wait_updated(t0, 60)
    cpu1 = cpu_now(server)
    wait_idle(server, fleet)
    last = max(x.acked for x in new)
    if not math.isnan(real_at):  # real Envoys too
        last = max(last, real_at)
    return Change(
        latency=last - t0,
        first_ack=min(x.acked for x in new) - t0,
        real_last=real_at - t0,
        cpu=diff(cpu0, cpu1),
        cpu_idle=diff(cpu0, cpu_now(server)),
    )


def push_change(server: Server, fleet: Fleet, real: RealEnvoys, target: PushTarget, config: Config, tag: str) -> Change:
    text = add_operation(config, PUSHED_API, tag)
    body = json.dumps(
        {
            "files": {f"{PUSHED_API}.yaml": text},
            "spec": f"{PUSHED_API}.yaml",
            "wait": True,
            "timeout": 120,
            "message": f"push_bench {tag}",
        }
    ).encode()
    wait_idle(server, fleet)
    before = rds_acks(fleet)
    cpu0 = cpu_now(server)
    t0 = time.time()
    status, data = target.post(f"/v1/apis/{PUSHED_API}/versions", body, 180)
    t1 = time.time()
    cpu1 = cpu_now(server)
    if status != 200:
        raise SystemExit(f"push answered {status}: {json.dumps(data)[:2000]}")
    new = new_acks(fleet, before, "every client to ACK the push")
    real_at = real.wait_updated(t0, 60)
    wait_idle(server, fleet)
    last = max(x.acked for x in new)
    if not math.isnan(real_at):
        last = max(last, real_at)
    return Change(
        latency=last - t0,
        first_ack=min(x.acked for x in new) - t0,
        answer=t1 - t0,
        rollout=float(data["rollout"]["seconds"]),
        real_last=real_at - t0,
        cpu=diff(cpu0, cpu1),
        cpu_idle=diff(cpu0, cpu_now(server)),
    )


@dataclass
class CliPush:
    wall: float  # `push --wait` started → exited
    latency: float  # started → last ACK
    rollout: float


def cli_push(
    server: Server,
    fleet: Fleet,
    real: RealEnvoys,
    target: PushTarget,
    config: Config,
    workdir: Path,
    tag: str,
    src: Path | None,
) -> CliPush:
    spec = workdir / "cli" / f"{PUSHED_API}.yaml"
    spec.parent.mkdir(exist_ok=True)
    spec.write_text(add_operation(config, PUSHED_API, tag))
    cmd = [*push_command(target), "--api", PUSHED_API, str(spec), "--wait", "--timeout", "120", "-o", "json"]
    env = dict(child_env(src), CONTROLPLANE_PUSH_TOKEN=TOKEN)
    wait_idle(server, fleet)
    before = rds_acks(fleet)
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=src or REPO, env=env, timeout=300)
    t1 = time.time()
    if proc.returncode != 0:
        raise SystemExit(f"push --wait exited {proc.returncode}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    new = new_acks(fleet, before, "every client to ACK the push command's push")
    real_at = real.wait_updated(t0, 60)
    last = max(x.acked for x in new)
    if not math.isnan(real_at):
        last = max(last, real_at)
    return CliPush(t1 - t0, last - t0, float(json.loads(proc.stdout)["rollout"]["seconds"]))


def push_command(target: PushTarget) -> list[str]:
    ca = ["--ca", str(target.ca_file)] if target.ca_file else []
    return [sys.executable, "-m", "controlplane", "push", "--server", target.url, *ca]


def startup_seconds(src: Path | None, n: int = 3) -> float:
    """The push command's interpreter start-up and imports: ``push --help``, median of ``n``."""
    times = []
    for _ in range(n):
        t0 = time.monotonic()
        subprocess.run(
            [sys.executable, "-m", "controlplane", "push", "--help"],
            capture_output=True,
            check=True,
            cwd=src or REPO,
            env=child_env(src),
        )
        times.append(time.monotonic() - t0)
    return median(times)


# -- one scenario ------------------------------------------------------------------------------
@dataclass
class Scenario:
    mode: str
    clients: int
    real_envoys: int
    first_push: Change | None = None
    floor: list[Change] = field(default_factory=list)
    push: list[Change] = field(default_factory=list)
    cli: list[CliPush] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        for key in ("floor", "cli"):
            d[key] = [c.__dict__ for c in d[key]]
        d["push"] = [dict(c.__dict__, before_publish=c.before_publish) for c in self.push]
        d["first_push"] = self.first_push.__dict__ if self.first_push else None
        return d


def run_scenario(args: argparse.Namespace, config: Config, workdir: Path, mode: str) -> Scenario:
    n = args.clients
    result = Scenario(mode, n, args.real_envoys)
    print(f"\n== {mode}, {n} simulated clients + {args.real_envoys} real Envoys ==", flush=True)
    target = PushTarget(workdir / f"push-{mode}", args.push_insecure)
    cache_dir = workdir / "cache"
    server = Server(config.root, workdir, cache_dir, args.max_delay, args.src, args.watch, tuple(target.serve_options))
    fleet: Fleet | None = None
    real: RealEnvoys | None = None
    try:
        waited = wait_idle(server, None, timeout=120)
        print(f"server ready (pid {server.pid}, idle after {waited:.1f} s); push API {target.url}", flush=True)
        fleet = Fleet(f"127.0.0.1:{server.xds_port}", n, args.procs, mode == "delta")
        fleet.start(time.time() + 0.3)
        fleet.wait(fleet.synced, 600, f"{n} clients to sync")
        real = RealEnvoys(workdir, server.xds_port, args.real_envoys, mode == "delta")
        deadline = time.monotonic() + 120
        while True:
            nodes = server.get("/status")["nodes"]
            if len(nodes) == n + args.real_envoys and all(x["state"] == "SYNCED" for x in nodes):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"not every node SYNCED after 120 s: {len(nodes)} nodes")
            fleet.pump(0.2)
        print(f"{len(nodes)} nodes SYNCED", flush=True)
        tag = f"{mode}{n}x{os.getpid()}"
        result.first_push = push_change(server, fleet, real, target, config, f"{tag}first")
        print(f"  first push (the API's spec becomes a pushed one): {report_line(result.first_push)}", flush=True)
        for k in range(args.repeats):
            ways = ("floor", "push") if k % 2 == 0 else ("push", "floor")
            for way in ways:
                if way == "floor":
                    c = floor_change(server, fleet, real, config, f"{tag}f{k}")
                    result.floor.append(c)
                else:
                    c = push_change(server, fleet, real, target, config, f"{tag}p{k}")
                    result.push.append(c)
                print(f"  {k + 1} {way:5}: {report_line(c)}", flush=True)
        for k in range(args.cli_pushes):
            cli = cli_push(server, fleet, real, target, config, workdir, f"{tag}c{k}", args.src)
            result.cli.append(cli)
            print(
                f"  push --wait (CLI) {k + 1}: exited after {cli.wall * 1000:.0f} ms, last ACK "
                f"{cli.latency * 1000:.0f} ms, server's rollout {cli.rollout * 1000:.0f} ms",
                flush=True,
            )
    finally:
        if real is not None:
            real.stop()
        if fleet is not None:
            fleet.stop()
        server.stop()
    return result


def report_line(c: Change) -> str:
    answer = (
        ""
        if math.isnan(c.answer)
        else f"answer {c.answer * 1000:.0f} ms (before publishing {c.before_publish * 1000:.0f}, "
        f"server's rollout {c.rollout * 1000:.0f}); "
    )
    real = "" if math.isnan(c.real_last) else f"real Envoys {c.real_last * 1000:.0f} ms; "
    return (
        f"{answer}last ACK {c.latency * 1000:.0f} ms, first {c.first_ack * 1000:.0f} ms; {real}"
        f"CPU s {fmt_cpu(c.cpu)} (until idle {sum(c.cpu_idle.values()):.2f})"
    )


# -- report ------------------------------------------------------------------------------------
def ms(x: float) -> str:
    return "-" if math.isnan(x) else f"{x * 1000:,.0f}"


def stats(values: list[float]) -> list[str]:
    return [
        str(len(values)),
        ms(quantile(values, 0.5)),
        ms(quantile(values, 0.9)),
        ms(max(values, default=float("nan"))),
    ]


def latency_table(scenarios: list[Scenario]) -> str:
    rows = []
    for s in scenarios:
        if not s.floor or not s.push:
            continue
        label = f"{s.mode}, {s.clients}" + (f" + {s.real_envoys} real" if s.real_envoys else "")
        floor = [c.latency for c in s.floor]
        answer = [c.answer for c in s.push]
        for what, values in (
            ("a. floor: file write → last ACK", floor),
            ("b. push: request → answer (wait: true)", answer),
            ("b. push: request → last ACK (clients)", [c.latency for c in s.push]),
            ("b. push: server's rollout.seconds (publish → every ACK)", [c.rollout for c in s.push]),
            ("b. push: before publishing (answer - rollout.seconds)", [c.before_publish for c in s.push]),
        ):
            rows.append([label, what, *stats(values)])
        if s.real_envoys:
            rows.append([label, "a. floor: write → last real Envoy", *stats([c.real_last for c in s.floor])])
            rows.append([label, "b. push: request → last real Envoy", *stats([c.real_last for c in s.push])])
        rows.append(
            [
                label,
                "ratio push answer / floor",
                "",
                f"{quantile(answer, 0.5) / quantile(floor, 0.5):.2f}x",
                f"{quantile(answer, 0.9) / quantile(floor, 0.9):.2f}x",
                f"{max(answer) / max(floor):.2f}x",
            ]
        )
    return table(["mode, clients", "measured", "n", "p50 ms", "p90 ms", "max ms"], rows)


def cpu_table(scenarios: list[Scenario]) -> str:
    rows = []
    for s in scenarios:
        for what, changes in (("a. floor (file write)", s.floor), ("b. push", s.push)):
            if not changes:
                continue
            keys = list(changes[0].cpu)
            rows.append(
                [f"{s.mode}, {s.clients}", what]
                + [f"{median([c.cpu[k] for c in changes]):.2f}" for k in keys]
                + [f"{median([sum(c.cpu.values()) for c in changes]):.2f}"]
                + [f"{median([sum(c.cpu_idle.values()) for c in changes]):.2f}"]
            )
    return table(
        [
            "mode, clients",
            "change",
            "server process",
            "compile worker",
            "other workers",
            "all, to last ACK / answer",
            "all, until idle",
        ],
        rows,
    )


def cli_table(scenarios: list[Scenario], startup: float) -> str:
    rows = []
    for s in scenarios:
        for i, c in enumerate(s.cli):
            rows.append([f"{s.mode}, {s.clients}", str(i + 1), ms(c.wall), ms(c.latency), ms(c.rollout), ms(startup)])
    return table(
        [
            "mode, clients",
            "push",
            "`push --wait` start → exit ms",
            "start → last ACK ms",
            "server's rollout ms",
            "`push --help` alone ms",
        ],
        rows,
    )


def goals(scenarios: list[Scenario]) -> list[tuple[str, str, bool | None]]:
    out: list[tuple[str, str, bool | None]] = []
    for s in scenarios:
        if not s.push:
            continue
        answer = [c.answer for c in s.push]
        p90, worst = quantile(answer, 0.9), max(answer)
        out.append(
            (
                f"push → all-ACK (answer of wait: true), one-operation change, {s.mode}, {s.clients} clients < 1 s",
                f"p90 {p90 * 1000:.0f} ms, max {worst * 1000:.0f} ms",
                worst < GOAL_PUSH_100 if s.clients >= 100 else None,
            )
        )
    return out


def review_text(args: argparse.Namespace) -> str:
    auth = f"{PUSHED_API} needs a token" if args.auth or args.review else f"{PUSHED_API} public"
    if args.review:
        return f"{auth}; pushes reviewed (no allowSecurityChanges)"
    return f"{auth}; allowSecurityChanges: true (no review)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", type=int, default=10_000, help="operations in the config (default 10000)")
    p.add_argument("--clients", type=int, default=100, help="simulated Envoys (default 100)")
    p.add_argument("--real-envoys", type=int, default=0, metavar="K", help="real Envoys besides (default 0)")
    p.add_argument("--modes", nargs="+", choices=["sotw", "delta"], default=["sotw", "delta"])
    p.add_argument("--repeats", type=int, default=20, help="changes each way per mode (default 20)")
    p.add_argument("--cli-pushes", type=int, default=1, help="pushes through `push --wait` per mode (default 1)")
    p.add_argument("--procs", type=int, default=4, help="client processes (default 4)")
    p.add_argument("--max-delay", type=float, default=0.5, help="with the fast watcher (default 0.5)")
    p.add_argument(
        "--watch",
        choices=["fast", "defaults"],
        default="fast",
        help="the floor's watcher: fast (poll and quiet period 10 ms, as xds_bench) or serve's defaults",
    )
    p.add_argument(
        "--pushed-operations",
        type=int,
        default=100,
        metavar="N",
        help=f"operations in the pushed API's spec ({PUSHED_API}; default 100; the other services keep "
        "xds_bench's size); as many as xds_bench gives it (969 of 10k) or more: the whole spec",
    )
    p.add_argument(
        "--review",
        action="store_true",
        help="the push client without allowSecurityChanges (real clients' default): every push is "
        "reviewed (a dry-run compile and a diff); implies --auth",
    )
    p.add_argument(
        "--auth",
        action="store_true",
        help=f"{PUSHED_API} gets a token provider and needs a token on every operation (an added "
        "operation is then not security-relevant)",
    )
    p.add_argument("--push-insecure", action="store_true", help="the push API over plain HTTP (default TLS)")
    p.add_argument(
        "--src",
        type=Path,
        help="directory holding the controlplane package to measure (default: this repo), e.g. "
        "`git archive HEAD controlplane | tar -x -C DIR`",
    )
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    p.add_argument("--keep", action="store_true", help="keep the work directory (config, logs, push store)")
    args = p.parse_args()
    if args.pushed_operations < 1:
        p.error("--pushed-operations must be at least 1")
    if args.src:
        args.src = args.src.resolve()
        sys.path.insert(0, str(args.src))

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # inherited by the server and the clients
    print(f"machine: {machine()}\nmeasured: {git_state(args.src)}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="push-bench-"))
    started = time.monotonic()
    scenarios: list[Scenario] = []
    startup = float("nan")
    pushed: dict[str, Any] = {}
    try:
        config = Config(workdir / "config", args.ops)
        shrink(config, PUSHED_API, args.pushed_operations)
        with_push_client(config, free_port(), args.review, args.auth or args.review)
        size = config.file(PUSHED_API).stat().st_size
        total = sum(operation_count(spec) for spec in config.specs.values())
        pushed.update(
            api=PUSHED_API,
            operations=operation_count(config.specs[PUSHED_API]),
            bytes=size,
            auth=args.auth or args.review,
            review=args.review,
        )
        print(
            f"config: {total} operations in {len(config.specs)} spec files + gateway.policy.yaml; "
            f"pushed: {PUSHED_API}, {operation_count(config.specs[PUSHED_API])} operations, "
            f"{size / 1e3:.0f} KB; {review_text(args)}",
            flush=True,
        )
        for mode in args.modes:
            scenarios.append(run_scenario(args, config, workdir, mode))
            print(f"({time.monotonic() - started:.0f} s so far)", flush=True)
        if args.cli_pushes:
            startup = startup_seconds(args.src)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"work directory kept: {workdir}")

    watcher = "--poll-interval 0.01 --quiet-period 0.01 --max-delay " + str(args.max_delay)
    print(
        f"\nserver: python -m controlplane serve DIR --insecure {watcher if args.watch == 'fast' else ''} "
        f"--push-address … ({'plain HTTP' if args.push_insecure else 'TLS'}); "
        f"{args.procs} client processes; {review_text(args)}; total run time {time.monotonic() - started:.0f} s\n"
    )
    print("One-operation change, file write (floor) vs push through the API (ms)\n")
    print(latency_table(scenarios))
    print("\nCPU seconds per change (median), of the control plane's process tree\n")
    print(cpu_table(scenarios))
    if any(s.cli for s in scenarios):
        print("\nThrough the push command (`python -m controlplane push --wait`), interpreter start-up included\n")
        print(cli_table(scenarios, startup))
    print("\nGoals:\n")
    for goal, value, met in goals(scenarios):
        verdict = "not run" if met is None else ("MET" if met else "MISSED")
        print(f"  {verdict:7}  {goal}: {value}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "scenarios": [s.as_json() for s in scenarios],
                    "startup": startup,
                    "types": TYPES,
                    "pushed": pushed,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
