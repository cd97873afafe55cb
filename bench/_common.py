"""Shared helpers of the benchmarks: synthetic spec files, the machine, the source under test."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
CACHE = Path(os.environ.get("CONTROLPLANE_BENCH_DIR", Path(tempfile.gettempdir()) / "controlplane-bench"))


def synth_file(n_ops: int) -> Path:
    """The synthetic spec of ``n_ops`` operations, generated once per version of synth.py."""
    digest = hashlib.sha256((BENCH / "synth.py").read_bytes()).hexdigest()[:10]
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"synth-{n_ops}-{digest}.yaml"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        # A child process, so the generator's memory is not kept by the parent.
        subprocess.run(
            [sys.executable, str(BENCH / "synth.py"), str(n_ops), "-o", str(tmp)], check=True, stderr=subprocess.DEVNULL
        )
        tmp.rename(path)
    return path


def child_env(src: Path | None) -> dict[str, str]:
    """Environment of child processes: ``src`` (a directory holding a ``controlplane`` package) first."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    return env


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_state(src: Path | None) -> str:
    """What was measured: a snapshot directory, or the repo's commit (+dirty when controlplane/ has edits)."""
    if src is not None:
        return f"source {src}"
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "controlplane"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return f"{head}{' + uncommitted edits in controlplane/' if dirty else ''}"
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> str:
    system = f"{platform.system()} {platform.release()}"
    return f"{os.cpu_count()} cores ({cpu_model()}), Python {platform.python_version()}, {system}"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _num(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.3g}"


def spread(values: list[float]) -> str:
    """Median with min-max, for a table cell."""
    if not values:
        return "-"
    if len(values) == 1:
        return _num(values[0])
    return f"{_num(median(values))} ({_num(min(values))}-{_num(max(values))})"


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A Markdown table (also readable in a terminal)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


class LoadClient:
    """A benchmark's load generator in its own process: ``script --client`` reads one JSON
    command per line on stdin and answers one JSON line (its CPU is not the measured one's)."""

    def __init__(self, script: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(script.resolve()), "--client"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        json.loads(self.proc.stdout.readline())

    def run(self, **command: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the load client died")
        return json.loads(line)  # type: ignore[no-any-return]

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def response_frame(buf: bytes) -> tuple[int, int] | None:
    """(status, length) of the first complete response in ``buf`` (Content-Length framed), or None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buf[:end].lower()
    i = head.find(b"content-length:")
    length = 0
    if i >= 0:
        j = head.find(b"\r\n", i)
        length = int(head[i + 15 : j if j >= 0 else end])
    if len(buf) < end + 4 + length:
        return None
    return int(buf[9:12]), end + 4 + length
