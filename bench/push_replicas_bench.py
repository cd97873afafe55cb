"""A push to one of two control-plane replicas, beside the same push to a single control plane.

Two ways of serving ``--clients`` simulated Envoys (bench/_xds_client.py: real gRPC ADS
streams, every response ACKed) the config of push_bench (bench/synth.py split into one spec
per service, one policy; ``svc00`` pushed, ``--pushed-operations`` of it), both running at
once and alternating which goes first each round:

a. floor: one control plane, its versions in a directory (``--push-store DIR``), every client
   on it;
b. replicas: two control planes sharing their versions in the cluster
   (``--kubernetes --push-configmaps NS/NAME --push-peers A,B``; the cluster is
   tests/kube_fake.py, the in-process API server the tests use, in this process), half the
   clients on each. The push goes to the first; its answer comes once the second replica
   serves the new live map and every client of both has ACKed it.

Each change adds one GET operation to ``svc00`` and pushes it with ``wait: true`` over plain
HTTP (bench only). Measured per push: request → answer, request → the last client's ACK (the
``time.time()`` each client reports), and CPU seconds of every control-plane process tree
(compile and validation workers included) from the request until the machine is idle again;
for the replicas, also this process's CPU over the same span (the fake API server, which a
real cluster runs elsewhere, and the client driver, which the floor has too).

    cd /work/main && .venv/bin/python bench/push_replicas_bench.py              # 100 clients, 2000 ops, 15 rounds
    .venv/bin/python bench/push_replicas_bench.py --clients 20 --rounds 3       # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))
from _common import git_state, machine, median  # noqa: E402
from push_bench import PUSHED_API, TOKEN, add_operation, new_acks, rds_acks, shrink, with_push_client  # noqa: E402
from xds_bench import Config, Fleet, Server, free_port, quantile, table, wait_idle  # noqa: E402


@dataclass
class Setup:
    """Control planes (their push ports) and the fleets on them; pushes go to the first."""

    name: str
    servers: list[Server]
    push_ports: list[int]
    fleets: list[Fleet] = field(default_factory=list)
    answers: list[float] = field(default_factory=list)
    last_acks: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # control-plane trees, request → idle
    own_cpu: list[float] = field(default_factory=list)  # this process (fake API server + driver)
    per_server: list[list[dict[str, float]]] = field(default_factory=list)  # server, compile, validation

    def idle(self) -> None:
        for server, fleet in zip(self.servers, self.fleets, strict=True):
            wait_idle(server, fleet)

    def push(self, text: str, tag: str) -> None:
        body = json.dumps(
            {"files": {f"{PUSHED_API}.yaml": text}, "spec": f"{PUSHED_API}.yaml", "wait": True, "timeout": 120}
        ).encode()
        self.idle()
        before = [rds_acks(f) for f in self.fleets]
        cpu0, own0 = [s.cpu() for s in self.servers], _own_cpu()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.push_ports[0]}/v1/apis/{PUSHED_API}/versions",
            data=body,
            method="POST",
            headers={"content-type": "application/json", "authorization": f"Bearer {TOKEN}"},
        )
        t0 = time.time()
        try:
            with urllib.request.urlopen(req, timeout=180) as resp:
                status, data = resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            status, data = exc.code, json.loads(exc.read() or b"{}")
        t1 = time.time()
        if status != 200:
            raise SystemExit(f"{self.name}: push {tag} answered {status}: {json.dumps(data)[:2000]}")
        expected = sum(f.n for f in self.fleets)
        if data["rollout"]["envoys"] != expected:
            raise SystemExit(f"{self.name}: the answer counted {data['rollout']['envoys']} Envoys, not {expected}")
        last = max(x.acked for f, b in zip(self.fleets, before, strict=True) for x in new_acks(f, b, "the push"))
        self.idle()
        self.answers.append(t1 - t0)
        self.last_acks.append(last - t0)
        after = [s.cpu() for s in self.servers]
        self.per_server.append([{k: a[k] - b[k] for k in a} for a, b in zip(after, cpu0, strict=True)])
        self.cpu.append(sum(sum(d.values()) for d in self.per_server[-1]))
        self.own_cpu.append(_own_cpu() - own0)

    def stop(self) -> None:
        for fleet in self.fleets:
            fleet.stop()
        for server in self.servers:
            server.stop()


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def start_fleet(setup: Setup, server: Server, n: int, procs: int) -> None:
    fleet = Fleet(f"127.0.0.1:{server.xds_port}", n, procs, False)
    fleet.start(time.time() + 0.3)
    fleet.wait(fleet.synced, 600, f"{n} clients of {setup.name} to sync")
    setup.fleets.append(fleet)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", type=int, default=2000, help="operations in the config (default 2000)")
    p.add_argument("--clients", type=int, default=100, help="simulated Envoys of each setup (default 100)")
    p.add_argument("--rounds", type=int, default=15, help="pushes to each setup (default 15)")
    p.add_argument("--pushed-operations", type=int, default=100, help="operations of the pushed spec (default 100)")
    p.add_argument("--procs", type=int, default=2, help="client processes per fleet (default 2)")
    args = p.parse_args()
    from tests.kube_fake import FakeKube

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(f"machine: {machine()}\nmeasured: {git_state(None)}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="push-replicas-bench-"))
    setups: list[Setup] = []
    started = time.monotonic()
    try:
        config = Config(workdir / "config", args.ops)
        shrink(config, PUSHED_API, args.pushed_operations)
        with_push_client(config, free_port(), review=False, auth=False)
        with FakeKube() as kube:
            kubeconfig = kube.kubeconfig(workdir / "kubeconfig")
            port = free_port()
            floor = Setup(
                "1 replica",
                [
                    Server(
                        config.root,
                        workdir,
                        workdir / "cache-floor",
                        0.5,
                        None,
                        watch="defaults",  # no file edits here: fast polling would only add idle CPU
                        extra=(
                            "--push-address",
                            f"127.0.0.1:{port}",
                            "--push-store",
                            str(workdir / "store"),
                            "--push-insecure",
                        ),
                    )
                ],
                [port],
            )
            setups.append(floor)
            start_fleet(floor, floor.servers[0], args.clients, args.procs)
            admins, ports = [free_port(), free_port()], [free_port(), free_port()]
            peers = ",".join(f"127.0.0.1:{a}" for a in admins)
            replicas = Setup("2 replicas", [], ports)
            setups.append(replicas)
            for i in range(2):
                server = Server(
                    config.root,
                    workdir,
                    workdir / f"cache-{i}",
                    0.5,
                    None,
                    watch="defaults",
                    extra=(
                        "--kubernetes",
                        "--kubeconfig",
                        str(kubeconfig),
                        "--kube-namespace",
                        "gw",
                        "--kube-state",
                        str(workdir / f"mirror-{i}"),
                        "--push-configmaps",
                        "gw/push",
                        "--push-store",
                        str(workdir / f"copy-{i}"),
                        "--push-address",
                        f"127.0.0.1:{ports[i]}",
                        "--push-insecure",
                        "--push-peers",
                        peers,
                    ),
                    admin_port=admins[i],
                )
                replicas.servers.append(server)
                start_fleet(replicas, server, args.clients // 2 + (args.clients % 2 if i == 0 else 0), args.procs)
            tag = f"r{os.getpid()}"
            for setup in setups:  # the first push of each: the spec becomes a pushed one
                setup.push(add_operation(config, PUSHED_API, f"{tag}first"), "first")
                for lst in (setup.answers, setup.last_acks, setup.cpu, setup.own_cpu):
                    lst.clear()
            for k in range(args.rounds):
                order = setups if k % 2 == 0 else setups[::-1]
                for setup in order:
                    setup.push(add_operation(config, PUSHED_API, f"{tag}{k}"), str(k))
                    print(
                        f"  {k + 1} {setup.name}: answer {setup.answers[-1] * 1000:.0f} ms, last ACK "
                        f"{setup.last_acks[-1] * 1000:.0f} ms, CPU {setup.cpu[-1]:.2f} s ("
                        + "; ".join(", ".join(f"{k} {v:.2f}" for k, v in d.items()) for d in setup.per_server[-1])
                        + ")",
                        flush=True,
                    )
            for setup in setups:
                setup.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(
        f"\n{args.clients} simulated clients per setup (SotW), {args.ops} operations, pushed {PUSHED_API} "
        f"({args.pushed_operations} operations); {args.rounds} pushes each, alternating; "
        f"total {time.monotonic() - started:.0f} s\n"
    )
    floor = setups[0]
    rows = []
    for s in setups:
        rows.append(
            [
                s.name,
                f"{median(s.answers) * 1000:.0f} / {quantile(s.answers, 0.9) * 1000:.0f}",
                f"{median(s.last_acks) * 1000:.0f}",
                f"{median(s.answers) / median(floor.answers):.2f}x",
                f"{median(s.cpu):.2f}",
                f"{median(s.cpu) / median(floor.cpu):.2f}x",
                f"{median(s.own_cpu):.2f}",
            ]
        )
    print(
        table(
            [
                "setup",
                "request → answer p50 / p90 (ms)",
                "last ACK p50 (ms)",
                "answer x floor",
                "control-plane CPU per push (s)",
                "CPU x floor",
                "this process's CPU (s)",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
