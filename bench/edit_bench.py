"""What a one-operation edit costs the compile worker, part by part, against a cold compile.

The xDS benchmark's configuration (``xds_bench.Config``: the 10k-operation synthetic spec in
ten files of ~1,000 operations, one policy) is compiled once to fill the caches, then each
of N edits adds one GET operation to one file (the files in turn) and is compiled with
``worker.compile_serialized`` as the server's worker does (caches on, the worker's garbage
collector settings). The floor is a cold compile of the same inputs in the same run (caches
off, files already parsed, 5 times). CPU time of this process (``time.process_time``) is reported,
median (min-max) over the edits, total and by part (parts timed by wrapping the functions
named in the table; they nest, see the indentation).

    cd /work/main && .venv/bin/python bench/edit_bench.py            # about 1 minute
    .venv/bin/python bench/edit_bench.py --edits 30 --operations 20000
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from _common import git_state, machine, median, spread, table  # noqa: E402
from xds_bench import Config  # noqa: E402

# (label, module, attribute, depth): what is timed, nested as the compile calls it
PARTS = [
    ("build: sources → IR", "controlplane.compiler", "build", 0),
    ("read specs and policies (parse the edited file, its model)", "controlplane.build", "_Builder._collect_apis", 1),
    ("operations of each API (rebuilt for the edited one)", "controlplane.build", "_Builder._operations_cached", 1),
    ("group operations by path, precedence order", "controlplane.build", "_Builder._path_routes", 1),
    ("translate: IR → Envoy messages", "controlplane.compiler", "translate", 0),
    ("route configurations (one scope rebuilt)", "controlplane.translate.routes", "route_configurations", 1),
    ("listeners (scopes, filters)", "controlplane.translate.listener", "listener", 1),
]


def _wrap(times: dict[str, float], label: str, module: str, attribute: str) -> Callable[[], None]:
    import importlib

    owner: Any = importlib.import_module(module)
    *path, name = attribute.split(".")
    for part in path:
        owner = getattr(owner, part)
    original = getattr(owner, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.process_time()
        try:
            return original(*args, **kwargs)
        finally:
            times[label] += time.process_time() - started

    setattr(owner, name, timed)
    return lambda: setattr(owner, name, original)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--operations", type=int, default=10_000)
    p.add_argument("--edits", type=int, default=20)
    args = p.parse_args()

    from controlplane import incremental, worker

    worker._IN_WORKER = True  # relative results and frozen survivors, as in the server's worker
    root = Path(tempfile.mkdtemp(prefix="edit-bench-"))
    config = Config(root, args.operations)
    paths = [str(root)]
    print(f"machine: {machine()}\nmeasured: {git_state(None)}\n{args.operations} operations in 10 files", flush=True)

    first = worker.compile_serialized(paths)
    assert first.ok, first.errors
    base = first.generation
    per_edit: dict[str, list[float]] = defaultdict(list)
    restore = []
    times: dict[str, float] = defaultdict(float)
    for label, module, attribute, _depth in PARTS:
        restore.append(_wrap(times, label, module, attribute))
    for i in range(args.edits):
        path, text = config.one_operation_change(f"e{i}")
        path.write_bytes(text)
        times.clear()
        started = time.process_time()
        result = worker.compile_serialized(paths, base=base)
        per_edit["total"].append(time.process_time() - started)
        assert result.ok and result.base == base, result.errors
        base = result.generation
        for label, *_ in PARTS:
            per_edit[label].append(times[label])
    for undo in restore:
        undo()
    # The floor: the last inputs compiled cold, as before the caches (parsed documents stay
    # cached: parsing is the same with and without them).
    cold: list[float] = []
    incremental.ENABLED = False
    for _ in range(5):
        incremental.clear()
        started = time.process_time()
        worker.compile_serialized(paths)
        cold.append(time.process_time() - started)

    ms = 1000
    rows = [["one-operation edit, caches on (the worker)", spread([t * ms for t in per_edit["total"]]), ""]]
    for label, _module, _attribute, depth in PARTS:
        rows.append([("of which: " if depth else "· ") + label, spread([t * ms for t in per_edit[label]]), ""])
    rows.append(["the same inputs, caches off (floor)", spread([t * ms for t in cold]), ""])
    ratio = median(per_edit["total"]) / median(cold)
    rows[0][2] = f"{ratio:.2f}x the floor"
    print()
    print(table(["compile (· a part, of which: a part of the part above)", "CPU ms, median (min-max)", ""], rows))


if __name__ == "__main__":
    main()
