"""Every version pushed, on disk, and which one of each API is live.

Layout under the store's directory::

    apis/<api>/<n>/...       the files of version n, as pushed (never changed afterwards)
    apis/<api>/<n>.json      its record: who pushed it, when, its state
    live.json                {api: version}: what the control plane serves (and serves again
                             after a restart)
    audit.log                one JSON line per request and decision

Writes are atomic (a temporary name, fsync, rename): a crash leaves the old ``live.json`` or
the new one, and a version directory whole or absent.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ..documents import display_name
from ..sources import SUFFIXES, Pushed

MAX_FILES = 200
MAX_BYTES = 16 << 20  # of one push, all files together
MAX_NAME = 512  # characters of one file name: far below what file systems take (PATH_MAX)
MAX_DEPTH = 16  # directories in one file name

# as the policy schema's names: an API's directory is never '.' or '..' of the store
_API_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
_FILE_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")


class PushRefused(Exception):
    """A push that cannot be taken as it is (status: the HTTP status that says why)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class Version:
    api: str
    version: int
    spec: str  # relative to the version's directory
    policy: str | None
    pushed_by: str
    at: float
    message: str = ""
    # pending → live (compiled, published) → superseded | rolled-back; or rejected
    state: str = "pending"
    reason: str = ""  # why it was rejected or rolled back
    rolled_back_from: int | None = None  # a rollback's record: the version it replaced
    history: list[dict[str, Any]] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def check_api_name(api: str) -> None:
    if not _API_NAME.match(api):
        raise PushRefused(f"{api!r} is not an API name (lower-case letters, digits, '.', '_', '-')")


def check_files(files: dict[str, str], spec: str, policy: str | None) -> None:
    """Names a pipeline may write: relative, no ``..``, no hidden parts, YAML or JSON."""
    if not files:
        raise PushRefused("a push needs at least the spec file")
    if len(files) > MAX_FILES:
        raise PushRefused(f"{len(files)} files: a push holds at most {MAX_FILES}", 413)
    if sum(len(text.encode()) for text in files.values()) > MAX_BYTES:
        raise PushRefused(f"the files are larger than {MAX_BYTES >> 20} MiB together", 413)
    for name in files:
        parts = PurePosixPath(name).parts
        if (
            not parts
            or str(PurePosixPath(name)) != name  # './x', 'a//b': one file under two names
            or len(name) > MAX_NAME
            or len(parts) > MAX_DEPTH + 1
            or name.startswith("/")
            or "\\" in name
            or not all(_FILE_PART.match(p) for p in parts)
            or not name.lower().endswith(SUFFIXES)
        ):
            raise PushRefused(
                f"file name {name!r}: names are relative paths of letters, digits, '.', '_' and '-' "
                f"(no '..', no hidden parts) ending in {', '.join(SUFFIXES)}"
            )
    directories = {str(parent) for name in files for parent in PurePosixPath(name).parents}
    both = sorted(directories & set(files))
    if both:
        raise PushRefused(f"file name {both[0]!r} is also the directory of another file pushed")
    if spec not in files:
        raise PushRefused(f"the spec {spec!r} is not among the files pushed")
    if policy is not None and policy not in files:
        raise PushRefused(f"the policy fragment {policy!r} is not among the files pushed")
    if policy == spec:
        raise PushRefused("the spec and the policy fragment are one file")


class PushStore:
    """Versions and the live map in a directory (``serve --push-store``)."""

    def __init__(self, root: Path):
        self.root = root.resolve()
        (self.root / "apis").mkdir(parents=True, exist_ok=True)
        (self.root / "staging").mkdir(exist_ok=True)
        for leftover in (self.root / "staging").iterdir():  # a push interrupted by a crash
            shutil.rmtree(leftover, ignore_errors=True)
        self.live: dict[str, int] = self._read_live()

    @property
    def where(self) -> str:
        """Where the versions are kept, for ``status``."""
        return str(self.root)

    # -- reading ----------------------------------------------------------------------------
    def _read_live(self) -> dict[str, int]:
        try:
            data = json.loads((self.root / "live.json").read_text())
        except FileNotFoundError:
            return {}
        return {str(k): int(v) for k, v in data.items()}

    def record(self, api: str, version: int) -> Version | None:
        try:
            data = json.loads((self.root / "apis" / api / f"{version}.json").read_text())
        except (FileNotFoundError, ValueError):
            return None
        return Version(**data)

    def versions(self, api: str) -> list[Version]:
        directory = self.root / "apis" / api
        if not directory.is_dir():
            return []
        numbers = sorted(int(p.stem) for p in directory.glob("*.json") if p.stem.isdigit())
        return [v for n in numbers if (v := self.record(api, n)) is not None]

    def apis(self) -> list[str]:
        return sorted(p.name for p in (self.root / "apis").iterdir() if p.is_dir())

    def pushed(self, live: dict[str, int] | None = None) -> tuple[Pushed, ...]:
        """What the compile takes for ``live`` (default: what is live now)."""
        out = []
        for api, version in sorted((self.live if live is None else live).items()):
            record = self.record(api, version)
            if record is None:
                continue
            out.append(self.pushed_of(record))
        return tuple(out)

    def pushed_of(self, record: Version) -> Pushed:
        root = self.root / "apis" / record.api / str(record.version)
        return Pushed(record.api, root, root / record.spec, root / record.policy if record.policy else None)

    def readable(self, text: str) -> str:
        """Messages name pushed files as the pipeline knows them: ``orders@3:spec.yaml`` for
        version 3 of orders, ``orders:spec.yaml`` for a push being checked, not where the
        store keeps them."""
        return self._places.sub(lambda m: f"{m[1]}@{m[2]}:" if m[1] else f"{m[3]}:", text)

    @functools.cached_property
    def _places(self) -> re.Pattern[str]:
        roots = sorted({re.escape(str(self.root)), re.escape(display_name(self.root))}, key=len, reverse=True)
        return re.compile(
            rf"(?:{'|'.join(roots)})/(?:apis/([a-z0-9._-]+)/([0-9]+)|staging/([a-z0-9._-]+?)-[A-Za-z0-9_]+)/"
        )

    # -- writing ----------------------------------------------------------------------------
    def stage(self, api: str, files: dict[str, str]) -> Path:
        """The files in a directory of their own (for a dry run, or to become a version)."""
        self._api_directory(api)
        directory = Path(tempfile.mkdtemp(prefix=f"{api}-", dir=self.root / "staging"))
        try:
            for name, text in files.items():
                path = directory / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
        except OSError as exc:  # names check_files let through that this file system refuses
            self.discard(directory)
            raise PushRefused(f"file name {name!r} cannot be written: {exc.strerror}") from None
        return directory

    def _api_directory(self, api: str) -> Path:
        """Where the API's versions go; never through a symbolic link planted in the store."""
        directory = self.root / "apis" / api
        if directory.resolve() != directory:
            raise PushRefused(
                f"the store's directory for {api!r} is a symbolic link: nothing is written through it", 500
            )
        return directory

    def candidate(self, staged: Path, record: Version) -> Pushed:
        return Pushed(record.api, staged, staged / record.spec, staged / record.policy if record.policy else None)

    def keep(self, staged: Path, record: Version) -> Version:
        """The staged files become the API's next version."""
        directory = self._api_directory(record.api)
        directory.mkdir(exist_ok=True)
        numbers = [int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit()]
        record.version = max(numbers, default=0) + 1
        _fsync_tree(staged)
        staged.rename(directory / str(record.version))
        self.save(record)
        return record

    def save(self, record: Version) -> None:
        _write_atomic(
            self.root / "apis" / record.api / f"{record.version}.json", json.dumps(record.as_json(), indent=2)
        )

    def set_live(self, live: dict[str, int], only: str | None = None) -> None:
        """What is live from now on (``only``: the one API whose entry changes; one writer
        here, so the whole map is written either way)."""
        _write_atomic(self.root / "live.json", json.dumps(dict(sorted(live.items())), indent=2))
        self.live = dict(live)

    def close(self) -> None:
        """Nothing to let go of here (a store in the cluster stops watching)."""

    def discard(self, staged: Path) -> None:
        shutil.rmtree(staged, ignore_errors=True)

    def audit(self, **entry: Any) -> None:
        line = json.dumps({"at": round(time.time(), 3), **entry}, sort_keys=True)
        # O_NOFOLLOW: a symbolic link planted as audit.log would send the trail elsewhere
        fd = os.open(self.root / "audit.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        with open(fd, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_tree(directory: Path) -> None:
    for path in directory.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
