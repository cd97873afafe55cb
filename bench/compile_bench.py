"""Compile time and memory of ``controlplane.compile([spec])`` against the YAML floor.

For N operations of a synthetic spec (bench/synth.py) this measures, each in a fresh
Python process so that peak RSS and tracemalloc numbers are clean:

* floor: ``yaml.load(f, Loader=yaml.CSafeLoader)`` of the same file (default GC), and for
  reference the same load with the garbage collector disabled;
* compile: ``controlplane.compile([path])``, the whole pipeline (load, model, IR, Envoy
  protos), with the time spent in each phase; then ``SerializeToString()`` of every
  resource, as the xDS server will do;
* the tracemalloc peak of one compile (a separate run: tracemalloc slows everything down).

Times are CPU seconds of the child process (``time.process_time``), median of the repeats
(min-max in parentheses); other people's load on the machine changes wall time, much less
CPU time. Goals: 10k operations within 2x the floor; t(50k)/t(10k) <= 5.

    cd /work/main && /work/venv/bin/python bench/compile_bench.py                  # 1k, 10k, 50k
    /work/venv/bin/python bench/compile_bench.py --ops 10000 --repeats 5
    /work/venv/bin/python bench/compile_bench.py --profile 10000                  # cProfile of one compile
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
FLOOR_RATIO_GOAL = 2.0
SCALING_GOAL = 5.0


# -- child processes ---------------------------------------------------------------------------
def _rss_kb() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child_floor(path: str, gc_off: bool) -> dict[str, Any]:
    import gc

    import yaml

    base = _rss_kb()
    if gc_off:
        gc.disable()
    c0, w0 = time.process_time(), time.perf_counter()
    with open(path, "rb") as f:
        data = yaml.load(f, Loader=yaml.CSafeLoader)
    c1, w1 = time.process_time(), time.perf_counter()
    assert isinstance(data, dict) and data["paths"]
    return {"cpu": c1 - c0, "wall": w1 - w0, "rss_kb": _rss_kb(), "base_rss_kb": base}


def child_compile(path: str, serialize_repeats: int, gc_off_in_yaml_load: bool = False) -> dict[str, Any]:
    import controlplane
    from controlplane import compiler

    if gc_off_in_yaml_load:
        # What-if for the report: the same compile with the garbage collector paused inside
        # yaml.load only (the YAML data has no reference cycles for the GC to find).
        import gc

        import yaml

        real_load = yaml.load

        def load_without_gc(*args: Any, **kwargs: Any) -> Any:
            enabled = gc.isenabled()
            gc.disable()
            try:
                return real_load(*args, **kwargs)
            finally:
                if enabled:
                    gc.enable()

        yaml.load = load_without_gc

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
def measure(n: int, repeats: int, src: Path | None, gc_refs: bool, use_tracemalloc: bool) -> dict[str, Any]:
    path = synth_file(n)
    floors, floors_nogc, compiles, compiles_nogc = [], [], [], []
    for i in range(repeats):
        # Alternate the order so that drift on a shared machine hits both sides alike.
        order = ["floor", "compile"] if i % 2 == 0 else ["compile", "floor"]
        for kind in order:
            if kind == "floor":
                floors.append(run_child(["floor", str(path)], src))
            else:
                compiles.append(run_child(["compile", str(path)], src))
        print(
            f"  {n}: repeat {i + 1}/{repeats}: floor {floors[-1]['cpu']:.2f}s, compile {compiles[-1]['cpu']:.2f}s",
            file=sys.stderr,
            flush=True,
        )
    if gc_refs:  # references, once each: their spread is small (no GC passes over a growing heap)
        floors_nogc.append(run_child(["floor-nogc", str(path)], src))
        compiles_nogc.append(run_child(["compile-gc-off-in-load", str(path)], src))
    tm = run_child(["tracemalloc", str(path)], src) if use_tracemalloc else {}
    return {
        "n": n,
        "file_mb": path.stat().st_size / 1e6,
        "floor": floors,
        "floor_nogc": floors_nogc,
        "compile": compiles,
        "compile_nogc": compiles_nogc,
        "tracemalloc": tm,
    }


def report(results: list[dict[str, Any]]) -> str:
    rows, phase_rows, mem_rows = [], [], []
    for r in results:
        f = [x["cpu"] for x in r["floor"]]
        c = [x["cpu"] for x in r["compile"]]
        fn = [x["cpu"] for x in r["floor_nogc"]]
        cn = [x["cpu"] for x in r["compile_nogc"]]
        first = r["compile"][0]
        ratio = median(c) / median(f)
        rows.append(
            [
                f"{r['n']:,}",
                f"{first['paths']:,}",
                f"{r['file_mb']:.1f}",
                spread(c),
                spread(f),
                f"{ratio:.2f}",
                f"{median([x['rss_kb'] for x in r['compile']]) / 1024:.0f}",
                spread(fn) if fn else "-",
                spread(cn) if cn else "-",
                f"{median([x['serialize_first_cpu'] * 1000 for x in r['compile']]):.3g} / "
                f"{median([x['serialize_cpu'] * 1000 for x in r['compile']]):.3g}",
                f"{first['serialized_bytes'] / 1e6:.1f}",
            ]
        )
        phases = {}
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
        "compile time (CPU s, median (min-max)) against the floor (yaml.load with CSafeLoader, same file)",
        table(
            [
                "ops",
                "paths",
                "YAML MB",
                "compile s",
                "floor s",
                "compile/floor",
                "peak RSS MiB",
                "floor, GC off s",
                "compile, GC off in yaml.load s",
                "serialize ms, first / again",
                "serialized MB",
            ],
            rows,
        ),
        "(the two 'GC off' columns are what-ifs, one run each: the garbage collector paused during yaml.load)",
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
        ratio = median([x["cpu"] for x in r["compile"]]) / median([x["cpu"] for x in r["floor"]])
        out.append(
            f"goal 10k compile/floor <= {FLOOR_RATIO_GOAL}: {ratio:.2f} -> "
            f"{'MET' if ratio <= FLOOR_RATIO_GOAL else 'MISSED'}"
        )
    if 10_000 in by_n and 50_000 in by_n:
        for kind in ("compile", "floor"):
            t50 = median([x["cpu"] for x in by_n[50_000][kind]])
            t10 = median([x["cpu"] for x in by_n[10_000][kind]])
            line = f"t(50k)/t(10k) {kind}: {t50 / t10:.2f}"
            if kind == "compile":
                line = f"goal {line} <= {SCALING_GOAL}: {'MET' if t50 / t10 <= SCALING_GOAL else 'MISSED'}"
            else:
                line = f"     {line} (for reference)"
            out.append(line)
        for kind, label in (("floor_nogc", "floor, GC off"), ("compile_nogc", "compile, GC off in yaml.load")):
            if by_n[10_000][kind] and by_n[50_000][kind]:
                t50 = median([x["cpu"] for x in by_n[50_000][kind]])
                t10 = median([x["cpu"] for x in by_n[10_000][kind]])
                out.append(f"     t(50k)/t(10k) {label}: {t50 / t10:.2f} (for reference)")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--ops", default=",".join(map(str, DEFAULT_OPS)), help="comma-separated operation counts (default: %(default)s)"
    )
    p.add_argument("--repeats", type=int, default=3, help="runs of each measurement (default: %(default)s)")
    p.add_argument(
        "--no-gc-refs",
        action="store_true",
        help="skip the what-if runs with the GC paused during yaml.load (floor and compile)",
    )
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
            out = child_floor(path, gc_off=False)
        elif kind == "floor-nogc":
            out = child_floor(path, gc_off=True)
        elif kind == "compile":
            out = child_compile(path, serialize_repeats=3)
        elif kind == "compile-gc-off-in-load":
            out = child_compile(path, serialize_repeats=1, gc_off_in_yaml_load=True)
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
    results = [measure(n, args.repeats, src, not args.no_gc_refs, not args.no_tracemalloc) for n in ops]
    print(f"\nmachine: {machine()}\nmeasured: {git_state(src)}\n")
    print(report(results))


if __name__ == "__main__":
    main()
