"""Compile time and memory of ``controlplane.compile([spec])``, and of the CLI, against the YAML floor.

For N operations of a synthetic spec (bench/synth.py) this measures, each in a fresh
Python process so that peak RSS and tracemalloc numbers are clean:

* floor: the fastest parse of the same file by the parser the compile uses: ``yaml_rs.loads``
  of the file's text with the garbage collector paused, as ``compile()`` does; for reference
  also PyYAML's ``CSafeLoader`` with the collector on (the floor of earlier reports);
* compile: ``controlplane.compile([path])``, the whole pipeline (load, model, IR, Envoy
  protos), with the time spent in each phase; then ``SerializeToString()`` of every
  resource, as the xDS server will do;
* CLI: ``python -m controlplane dump --bootstrap FILE > /dev/null`` as a user runs it
  (interpreter start, imports, compile, static bootstrap, YAML text), against the same floor
  as a command: ``python -c`` that imports yaml_rs and parses the file;
* the tracemalloc peak of one compile (a separate run: tracemalloc slows everything down).

Times are CPU seconds of the child process (``time.process_time`` inside it; user+sys from
``wait4`` for whole commands), median of the repeats (min-max in parentheses); other people's
load on the machine changes wall time, much less CPU time. Goals: a 10k-operation compile
within 3x the floor, the CLI within 1.5x its floor; t(50k)/t(10k) <= 5 for both.

    cd /work/main && .venv/bin/python bench/compile_bench.py                  # 1k, 10k, 50k
    .venv/bin/python bench/compile_bench.py --ops 10000 --repeats 5
    .venv/bin/python bench/compile_bench.py --profile 10000                  # cProfile of one compile
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, child_env, git_state, machine, median, spread, synth_file, table

DEFAULT_OPS = (1_000, 10_000, 50_000)
FLOOR_RATIO_GOAL = 3.0
CLI_RATIO_GOAL = 1.5
SCALING_GOAL = 5.0


# -- child processes ---------------------------------------------------------------------------
def _rss_kb() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child_floor(path: str, parser: str) -> dict[str, Any]:
    """``yaml-rs``: what ``documents.py`` does (read, decode, yaml_rs.loads; GC paused);
    ``pyyaml``: PyYAML's C loader, GC on; ``pyyaml-nogc``: the same, GC paused."""
    import gc

    import yaml
    import yaml_rs

    base = _rss_kb()
    if parser != "pyyaml":
        gc.disable()
    c0, w0 = time.process_time(), time.perf_counter()
    with open(path, "rb") as f:
        if parser == "yaml-rs":
            data = yaml_rs.loads(f.read().decode("utf-8"), parse_datetime=False)
        else:
            data = yaml.load(f, Loader=yaml.CSafeLoader)
    c1, w1 = time.process_time(), time.perf_counter()
    assert isinstance(data, dict) and data["paths"]
    return {"cpu": c1 - c0, "wall": w1 - w0, "rss_kb": _rss_kb(), "base_rss_kb": base}


def child_compile(path: str, serialize_repeats: int) -> dict[str, Any]:
    import controlplane
    from controlplane import compiler

    phases: dict[str, float] = {}

    def timed(name: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                phases[name] = phases.get(name, 0.0) + time.process_time() - t0

        return wrapper

    # Phase times without changing what compile() runs: wrap the names it calls.
    for name, label in (("collect", "load"), ("build", "model+IR"), ("translate", "protos")):
        if hasattr(compiler, name):
            setattr(compiler, name, timed(label, getattr(compiler, name)))
    base = _rss_kb()
    c0, w0 = time.process_time(), time.perf_counter()
    result = controlplane.compile([path])
    c1, w1 = time.process_time(), time.perf_counter()
    if not result.ok:
        raise SystemExit("compile failed:\n" + "\n".join(map(str, result.diagnostics[:20])))
    rss = _rss_kb()
    assert result.resources is not None and result.gateway is not None
    messages = [m for by_name in result.resources.by_type.values() for m in by_name.values()]
    ser_times = []
    size = 0
    for _ in range(serialize_repeats):
        s0 = time.process_time()
        size = sum(len(m.SerializeToString()) for m in messages)
        ser_times.append(time.process_time() - s0)
    routes = sum(len(p.operations) for lst in result.gateway.listeners for p in lst.paths)
    return {
        "cpu": c1 - c0,
        "wall": w1 - w0,
        "rss_kb": rss,
        "base_rss_kb": base,
        "phases": phases,
        "serialize_first_cpu": ser_times[0],  # the xDS server serializes a new snapshot once
        "serialize_cpu": median(ser_times[1:] or ser_times),
        "serialized_bytes": size,
        "operations": routes,
        "paths": sum(len(lst.paths) for lst in result.gateway.listeners),
        "warnings": len(result.warnings),
    }


def child_tracemalloc(path: str) -> dict[str, Any]:
    import tracemalloc

    import controlplane

    tracemalloc.start()
    result = controlplane.compile([path])
    _current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert result.ok
    return {"tracemalloc_peak": peak}


def child_profile(path: str, out: str, top: int) -> None:
    import cProfile
    import pstats

    import controlplane

    prof = cProfile.Profile()
    prof.enable()
    result = controlplane.compile([path])
    prof.disable()
    assert result.ok
    prof.dump_stats(out)
    for key in ("tottime", "cumulative"):
        print(f"\n=== top {top} by {key} ===")
        pstats.Stats(prof).sort_stats(key).print_stats(top)


def run_command(argv: list[str], src: Path | None) -> dict[str, Any]:
    """CPU (user+sys, from wait4) and wall seconds of a whole command, output to /dev/null."""
    import os

    w0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=child_env(src), cwd=REPO)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - w0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} failed ({proc.returncode}):\n{err[-4000:].decode(errors='replace')}")
    return {"cpu": usage.ru_utime + usage.ru_stime, "wall": wall, "rss_kb": usage.ru_maxrss}


def cli_command(path: Path) -> list[str]:
    return [sys.executable, "-m", "controlplane", "dump", "--bootstrap", str(path)]


def cli_floor_command(path: Path) -> list[str]:
    parse = (
        "import gc, sys, yaml_rs; gc.disable(); "
        "yaml_rs.loads(open(sys.argv[1], 'rb').read().decode('utf-8'), parse_datetime=False)"
    )
    return [sys.executable, "-c", parse, str(path)]


def run_child(args: list[str], src: Path | None) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", *args],
        capture_output=True,
        text=True,
        env=child_env(src),
        cwd=REPO,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- the benchmark -----------------------------------------------------------------------------
def measure(n: int, repeats: int, src: Path | None, pyyaml: bool, cli: bool, use_tracemalloc: bool) -> dict[str, Any]:
    path = synth_file(n)
    runs: dict[str, list[dict[str, Any]]] = {
        k: [] for k in ("floor", "compile", "cli", "cli_floor", "pyyaml", "pyyaml_nogc")
    }
    kinds = ["floor", "compile"] + (["cli_floor", "cli"] if cli else [])
    for i in range(repeats):
        # Alternate the order so that drift on a shared machine hits both sides alike.
        for kind in kinds if i % 2 == 0 else reversed(kinds):
            if kind == "floor":
                runs[kind].append(run_child(["floor", str(path), "yaml-rs"], src))
            elif kind == "compile":
                runs[kind].append(run_child(["compile", str(path)], src))
            elif kind == "cli":
                runs[kind].append(run_command(cli_command(path), src))
            else:
                runs[kind].append(run_command(cli_floor_command(path), src))
        print(
            f"  {n}: repeat {i + 1}/{repeats}: " + ", ".join(f"{k} {runs[k][-1]['cpu']:.2f}s" for k in kinds),
            file=sys.stderr,
            flush=True,
        )
    if pyyaml:  # the floor of earlier reports, for reference: once each
        runs["pyyaml"].append(run_child(["floor", str(path), "pyyaml"], src))
        runs["pyyaml_nogc"].append(run_child(["floor", str(path), "pyyaml-nogc"], src))
    tm = run_child(["tracemalloc", str(path)], src) if use_tracemalloc else {}
    return {"n": n, "file_mb": path.stat().st_size / 1e6, **runs, "tracemalloc": tm}


def _cpu(r: dict[str, Any], kind: str) -> list[float]:
    return [x["cpu"] for x in r[kind]]


def report(results: list[dict[str, Any]]) -> str:
    rows, cli_rows, phase_rows, mem_rows = [], [], [], []
    for r in results:
        f, c = _cpu(r, "floor"), _cpu(r, "compile")
        first = r["compile"][0]
        rows.append(
            [
                f"{r['n']:,}",
                f"{first['paths']:,}",
                f"{r['file_mb']:.1f}",
                spread(c),
                spread(f),
                f"**{median(c) / median(f):.2f}**",
                spread(_cpu(r, "pyyaml")) if r["pyyaml"] else "-",
                f"{median(c) / median(_cpu(r, 'pyyaml')):.2f}" if r["pyyaml"] else "-",
                spread(_cpu(r, "pyyaml_nogc")) if r["pyyaml_nogc"] else "-",
                f"{median([x['serialize_first_cpu'] * 1000 for x in r['compile']]):.3g} / "
                f"{median([x['serialize_cpu'] * 1000 for x in r['compile']]):.3g}",
                f"{first['serialized_bytes'] / 1e6:.1f}",
            ]
        )
        if r["cli"]:
            cli, cf = _cpu(r, "cli"), _cpu(r, "cli_floor")
            cli_rows.append(
                [
                    f"{r['n']:,}",
                    spread(cli),
                    spread([x["wall"] for x in r["cli"]]),
                    spread(cf),
                    f"**{median(cli) / median(cf):.2f}**",
                    f"{median(cli) / median(f):.2f}",
                    f"{median(cli) / median(_cpu(r, 'pyyaml')):.2f}" if r["pyyaml"] else "-",
                    f"{median([x['rss_kb'] for x in r['cli']]) / 1024:.0f}",
                ]
            )
        phases: dict[str, list[float]] = {}
        for x in r["compile"]:
            for k, v in x["phases"].items():
                phases.setdefault(k, []).append(v)
        phase_rows.append(
            [f"{r['n']:,}"]
            + [f"{median(phases.get(k, [])):.3f}" for k in ("load", "model+IR", "protos")]
            + [f"{max(0.0, median(c) - sum(median(v) for v in phases.values())):.3f}"]
        )
        tm = r["tracemalloc"].get("tracemalloc_peak")
        mem_rows.append(
            [
                f"{r['n']:,}",
                f"{median([x['rss_kb'] for x in r['compile']]) / 1024:.0f}",
                f"{median([x['base_rss_kb'] for x in r['compile']]) / 1024:.0f}",
                f"{tm / 2**20:.0f}" if tm else "-",
                f"{median([x['rss_kb'] for x in r['floor']]) / 1024:.0f}",
                f"{median([x['base_rss_kb'] for x in r['floor']]) / 1024:.0f}",
            ]
        )
    out = [
        "compile time (CPU s, median (min-max)) against the floor: yaml_rs.loads of the same file, GC paused "
        "(the parser and the setting the compile uses); PyYAML's CSafeLoader (GC on, then off) for reference",
        table(
            [
                "ops",
                "paths",
                "YAML MB",
                "compile s",
                "floor (yaml-rs) s",
                "compile/floor",
                "PyYAML s",
                "compile/PyYAML",
                "PyYAML, GC off s",
                "serialize ms, first / again",
                "serialized MB",
            ],
            rows,
        ),
    ]
    if cli_rows:
        out += [
            "",
            "the CLI as a user runs it: `python -m controlplane dump --bootstrap FILE > /dev/null` (CPU s = user+sys "
            "of the process), against the floor as a command: `python -c` importing yaml_rs and parsing FILE",
            table(
                [
                    "ops",
                    "CLI CPU s",
                    "CLI wall s",
                    "floor command CPU s",
                    "CLI/floor command",
                    "CLI/floor (in-process parse)",
                    "CLI/PyYAML",
                    "CLI peak RSS MiB",
                ],
                cli_rows,
            ),
        ]
    out += [
        "",
        "where compile time goes (CPU s, median): load = reading + YAML, model+IR = build(), protos = translate()",
        table(["ops", "load", "model+IR", "protos", "rest"], phase_rows),
        "",
        "memory (MiB): peak RSS of the process (after imports in 'base'), tracemalloc peak of one compile",
        table(
            [
                "ops",
                "compile peak RSS",
                "compile base RSS",
                "compile tracemalloc peak",
                "floor peak RSS",
                "floor base RSS",
            ],
            mem_rows,
        ),
    ]
    by_n = {r["n"]: r for r in results}
    out.append("")
    if 10_000 in by_n:
        r = by_n[10_000]
        ratio = median(_cpu(r, "compile")) / median(_cpu(r, "floor"))
        out.append(
            f"goal 10k compile/floor (yaml-rs) <= {FLOOR_RATIO_GOAL}: {ratio:.2f} -> "
            f"{'MET' if ratio <= FLOOR_RATIO_GOAL else 'MISSED'}"
        )
        if r["cli"]:
            ratio = median(_cpu(r, "cli")) / median(_cpu(r, "cli_floor"))
            out.append(
                f"goal 10k CLI/floor command <= {CLI_RATIO_GOAL}: {ratio:.2f} -> "
                f"{'MET' if ratio <= CLI_RATIO_GOAL else 'MISSED'}"
            )
    if 10_000 in by_n and 50_000 in by_n:
        for kind in ("compile", "cli", "floor", "cli_floor", "pyyaml"):
            if not by_n[10_000][kind] or not by_n[50_000][kind]:
                continue
            t50, t10 = median(_cpu(by_n[50_000], kind)), median(_cpu(by_n[10_000], kind))
            line = f"t(50k)/t(10k) {kind}: {t50 / t10:.2f}"
            if kind in ("compile", "cli"):
                line = f"goal {line} <= {SCALING_GOAL}: {'MET' if t50 / t10 <= SCALING_GOAL else 'MISSED'}"
            else:
                line = f"     {line} (for reference)"
            out.append(line)
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--ops", default=",".join(map(str, DEFAULT_OPS)), help="comma-separated operation counts (default: %(default)s)"
    )
    p.add_argument("--repeats", type=int, default=3, help="runs of each measurement (default: %(default)s)")
    p.add_argument("--no-pyyaml", action="store_true", help="skip the PyYAML reference floors")
    p.add_argument("--no-cli", action="store_true", help="skip the CLI (dump --bootstrap) and its floor command")
    p.add_argument("--no-tracemalloc", action="store_true", help="skip the tracemalloc run")
    p.add_argument(
        "--src", type=Path, help="directory holding the controlplane package to measure (default: this repo)"
    )
    p.add_argument("--profile", type=int, metavar="N", help="instead: cProfile one compile of N operations")
    p.add_argument("--top", type=int, default=30, help="functions shown by --profile")
    p.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.child:
        kind, path, *rest = args.child
        if kind == "floor":
            out = child_floor(path, rest[0])
        elif kind == "compile":
            out = child_compile(path, serialize_repeats=3)
        elif kind == "tracemalloc":
            out = child_tracemalloc(path)
        elif kind == "profile":
            child_profile(path, rest[0], int(rest[1]))
            return
        else:
            raise SystemExit(f"unknown child {kind}")
        print(json.dumps(out))
        return

    src = args.src.resolve() if args.src else None
    if args.profile:
        path = synth_file(args.profile)
        out = str(Path(path).with_suffix(".prof"))
        subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--child", "profile", str(path), out, str(args.top)],
            check=True,
            env=child_env(src),
            cwd=REPO,
        )
        print(f"\nprofile saved to {out} (python -m pstats {out})")
        return

    ops = [int(x) for x in args.ops.split(",") if x]
    print(f"machine: {machine()}", file=sys.stderr)
    print(f"measured: {git_state(src)}", file=sys.stderr)
    for n in ops:
        synth_file(n)
    results = [measure(n, args.repeats, src, not args.no_pyyaml, not args.no_cli, not args.no_tracemalloc) for n in ops]
    print(f"\nmachine: {machine()}\nmeasured: {git_state(src)}\n")
    print(report(results))


if __name__ == "__main__":
    main()
