"""``python -m controlplane sync-files SRC DST``: copies of SRC's files in DST, each replaced by a
rename when its content changes.

Envoy reloads a file it reads (the geo database) when a file is renamed over its path:
``geoipupdate`` does that, and so does a Kubernetes volume filled by it. A ConfigMap, Secret
or projected volume does not: the kubelet writes the new files into a new directory and
swaps a directory link (``..data``), and the path Envoy watches is never renamed, so Envoy
keeps the old content until it restarts. This keeps a copy of every regular file of SRC
(links followed; the kubelet's ``..``-names skipped) in DST, checked every ``--interval``
seconds: a changed file is written beside its copy and renamed over it, which Envoy sees.
Files that leave SRC stay in DST (a file Envoy reads must not vanish under it).

The Helm chart runs it in the gateway pods (an init container once, so that Envoy starts with
the files, then beside Envoy) when ``geoDatabase.volume`` is set.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import signal
import sys
import threading
from pathlib import Path

log = logging.getLogger("controlplane.filesync")

CHUNK = 1 << 20


def _digest(path: Path) -> str | None:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(CHUNK):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()


def _sources(src: Path) -> dict[str, Path]:
    """SRC's regular files by name (links followed), its subdirectories' as relative paths."""
    out: dict[str, Path] = {}
    for root, dirs, files in os.walk(src, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".."))  # the kubelet's own directories
        for name in sorted(files):
            if name.startswith(".."):
                continue
            path = Path(root) / name
            if path.is_file():
                out[str(path.relative_to(src))] = path
    return out


def _stamp(path: Path) -> tuple[int, ...] | None:
    """What changes when the file behind ``path`` (links followed) is replaced or written."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def sync(src: Path, dst: Path, known: dict[str, str], seen: dict[str, tuple[int, ...]] | None = None) -> list[str]:
    """One pass: every file of SRC whose content differs from its copy is copied (written
    beside it, then renamed over it). ``known``: digests of the copies, and ``seen``: the
    sources' stamps, kept between passes (a source whose stamp did not change is not read
    again). The names copied."""
    seen = {} if seen is None else seen
    copied = []
    for name, path in _sources(src).items():
        stamp = _stamp(path)
        if stamp is not None and seen.get(name) == stamp and name in known:
            continue
        digest = _digest(path)
        target = dst / name
        if digest is None:
            continue  # gone meanwhile: the next pass sees what replaced it
        if known.get(name) is None and target.is_file():
            known[name] = _digest(target) or ""
        if known.get(name) == digest:
            if stamp is not None:
                seen[name] = stamp
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.sync-{os.getpid()}")
        try:
            written = hashlib.sha256()
            with open(path, "rb") as source, open(tmp, "wb") as out:
                while block := source.read(CHUNK):
                    out.write(block)
                    written.update(block)
                out.flush()
                os.fsync(out.fileno())
            if written.hexdigest() != digest:  # replaced while read: the next pass copies the new one whole
                tmp.unlink()
                continue
            os.replace(tmp, target)
        except OSError as exc:
            log.error("sync-files: %s not copied to %s: %s", path, target, exc)
            tmp.unlink(missing_ok=True)
            continue
        known[name] = digest
        if stamp is not None and _stamp(path) == stamp:  # (written while copied: read again next pass)
            seen[name] = stamp
        copied.append(name)
        log.info("sync-files: %s copied to %s", path, target)
    return copied


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m controlplane sync-files", description=__doc__.split("\n\n")[0])
    p.add_argument("src", type=Path, help="the directory to copy from (e.g. a ConfigMap or Secret volume)")
    p.add_argument("dst", type=Path, help="where the copies are (the path the policy names)")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between checks (default 5)")
    p.add_argument("--once", action="store_true", help="copy once and exit (an init container)")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.src.is_dir():
        print(f"sync-files: {args.src} is not a directory", file=sys.stderr)
        return 2
    args.dst.mkdir(parents=True, exist_ok=True)
    known: dict[str, str] = {}
    seen: dict[str, tuple[int, ...]] = {}
    copied = sync(args.src, args.dst, known, seen)
    if args.once:
        print(f"sync-files: {len(copied)} file(s) copied to {args.dst}")
        return 0
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(args.interval):
        sync(args.src, args.dst, known, seen)
    return 0
