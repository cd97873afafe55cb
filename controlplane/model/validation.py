"""Full OpenAPI validation with openapi-spec-validator, located and cached.

Validating a 3 MB description takes seconds, so results are cached on disk, keyed by the
content hash of the root document and checked against the hashes of every file its
``$ref``s reach: the same set of documents is never validated twice.

Findings are located in the file that holds the offending value: the validator reports a
logical path from the root through ``$ref``s, which is walked here with the same resolver
the compiler uses. A finding whose location decides routing or security (servers, path
parameters, operationId, security requirements and schemes) is an error in every mode;
the rest are warnings, errors with ``--strict``.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import pickle
import select
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urldefrag, urlsplit

from ..documents import Document, DocumentStore
from ..errors import Diagnostic, Diagnostics, Severity, describe_value, pointer
from .openapi import METHODS, spec_version

CACHE_FORMAT = 2
# Real descriptions of 3 MB take 10-15 s; an alias bomb or a backtracking pattern takes as
# long as it is allowed to.
DEFAULT_TIMEOUT_S = 60.0


def cache_dir() -> Path:
    """$CONTROLPLANE_CACHE_DIR, else $XDG_CACHE_HOME/controlplane, else ~/.cache/controlplane."""
    base = os.environ.get("CONTROLPLANE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "controlplane"
    )
    return Path(base) / "validation"


def cache_enabled() -> bool:
    """False when CONTROLPLANE_NO_CACHE is set to anything but "" or "0"."""
    return os.environ.get("CONTROLPLANE_NO_CACHE", "") in ("", "0")


def _validator_version() -> str:
    try:
        return package_version("openapi-spec-validator")
    except Exception:  # pragma: no cover
        return "unknown"


def dependencies(store: DocumentStore, root: Document) -> dict[str, str]:
    """Every file reachable from ``root`` through ``$ref``, with its content hash."""
    found: dict[str, str] = {}
    pending = [root]
    while pending:
        doc = pending.pop()
        if str(doc.path) in found:
            continue
        found[str(doc.path)] = doc.digest
        for ref in _refs(doc.data):
            file_part = urldefrag(ref)[0]
            if not file_part or "://" in file_part:
                continue
            try:
                target = (doc.path.parent / unquote(file_part)).resolve()
            except (OSError, ValueError, RuntimeError):  # a NUL in the name, a symlink loop
                continue
            if str(target) in found:
                continue
            loaded = store.load(target, diags=Diagnostics())
            if loaded is not None:
                pending.append(loaded)
    return found


def _refs(value: Any) -> Iterator[str]:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            ref = v.get("$ref")
            if isinstance(ref, str):
                yield ref
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)


def _digest_file(path: str) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def _cache_lookup(root: Document, timeout: float) -> list[dict[str, Any]] | None:
    entry_path = cache_dir() / f"{root.digest}.json"
    try:
        entry = json.loads(entry_path.read_text())
    except (OSError, ValueError):
        return None
    if entry.get("format") != CACHE_FORMAT or entry.get("validator") != _validator_version():
        return None
    if entry.get("root") != str(root.path):
        return None  # same content elsewhere: relative $refs may point to other files
    if entry.get("timed_out_at") is not None and timeout > entry["timed_out_at"]:
        return None  # stopped by a shorter limit than this one: try again
    for path, digest in entry.get("deps", {}).items():
        if _digest_file(path) != digest:
            return None
    findings: list[dict[str, Any]] = entry["findings"]
    return findings


def _cache_store(
    root: Document, deps: dict[str, str], findings: list[dict[str, Any]], timed_out_at: float | None
) -> None:
    directory = cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{root.digest}.{os.getpid()}.tmp"
        tmp.write_text(
            json.dumps(
                {
                    "format": CACHE_FORMAT,
                    "validator": _validator_version(),
                    "root": str(root.path),
                    "deps": deps,
                    "findings": findings,
                    "timed_out_at": timed_out_at,
                }
            )
        )
        tmp.replace(directory / f"{root.digest}.json")
    except OSError:
        pass  # a cache that cannot be written only costs time


class ValidatorProcess:
    """The child process that runs the full validator (``_validator_process.py``), kept
    between documents and killed when one takes longer than its time limit."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()  # one document at a time; the server validates from two threads
        atexit.register(self.close)

    def _start(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            script = Path(__file__).with_name("_validator_process.py")
            self._proc = subprocess.Popen(
                [sys.executable, str(script)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                # out of the terminal's process group: Ctrl-C is for the parent, which stops this one
                start_new_session=True,
            )
        return self._proc

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def run(self, version: str, data: Any, base_uri: str, timeout: float) -> tuple[list[Any], str | None, Any]:
        """The child's answer (see its docstring); ``stopped`` says so when the time ran out."""
        request = pickle.dumps((version, data, base_uri), protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            proc = self._start()
            assert proc.stdin is not None and proc.stdout is not None
            deadline = time.monotonic() + timeout
            try:
                proc.stdin.write(struct.pack("!Q", len(request)) + request)
                proc.stdin.flush()
                head = _read_until(proc.stdout.fileno(), 8, deadline)
                answer = pickle.loads(_read_until(proc.stdout.fileno(), struct.unpack("!Q", head)[0], deadline))
            except TimeoutError:
                self.close()
                return [], f"it took longer than the limit of {timeout:g} s per document", None
            except (OSError, EOFError, struct.error, pickle.UnpicklingError):
                code = proc.poll()
                self.close()
                return [], f"the validator process ended (exit status {code})", None
        findings, stopped, broken = answer
        return findings, stopped, broken


def _read_until(fd: int, size: int, deadline: float) -> bytes:
    """``size`` bytes from ``fd``; TimeoutError at ``deadline``, EOFError if the writer is gone."""
    chunks: list[bytes] = []
    while size:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            raise TimeoutError
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


_PROCESS = ValidatorProcess()


def validation_timeout() -> float:
    """Seconds the full validator may spend on one document: CONTROLPLANE_VALIDATION_TIMEOUT."""
    text = os.environ.get("CONTROLPLANE_VALIDATION_TIMEOUT", "")
    try:
        value = float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        value = DEFAULT_TIMEOUT_S
    return value if value > 0 else DEFAULT_TIMEOUT_S


def _physical(store: DocumentStore, root: Document, parts: tuple[Any, ...]) -> tuple[Document, str, Any]:
    """Walk a logical path through $refs to (document, pointer, value)."""
    ignored = Diagnostics()  # broken $refs are reported by the compiler or the validator itself
    doc, ptr, value = root, "", root.data
    for part in parts:
        resolved = store.deref(doc, ptr, value, ignored)
        if resolved is None:
            break
        doc, ptr, value = resolved
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, dict) and str(part) in value:
            value = value[str(part)]
        elif isinstance(value, list) and isinstance(part, int) and part < len(value):
            value = value[part]
        else:
            break
        ptr += pointer(part)
    return doc, ptr, value


_SECURITY_ROOTS = {"security", "securityDefinitions"}


def decides_routing_or_security(store: DocumentStore, root: Document, parts: tuple[Any, ...]) -> bool:
    p = [str(x) for x in parts]
    if not p:
        return False
    if p[0] in ("servers", "host", "basePath", "schemes") or p[0] in _SECURITY_ROOTS:
        return True
    if p[:2] == ["components", "securitySchemes"]:
        return True
    if p[0] != "paths":
        return False
    if len(p) <= 2:
        return True  # the paths object or a path item as a whole
    rest = p[2:]
    if rest[0] == "servers":
        return True
    if rest[0] in METHODS:
        if len(rest) == 1:
            return False
        if rest[1] in ("operationId", "servers", "security"):
            return True
        rest = rest[1:]
    if rest[0] == "parameters" and len(rest) >= 2:
        _doc, _ptr, param = _physical(store, root, tuple(parts[: len(parts) - len(rest) + 2]))
        resolved = store.deref(_doc, _ptr, param, Diagnostics()) if isinstance(param, dict) else None
        value = resolved[2] if resolved else param
        return isinstance(value, dict) and value.get("in") == "path"
    return False


def _non_schema(data: Any, value: Any) -> str | None:
    """Pointer of ``value`` where a schema must be (a member of ``properties``, an item of
    ``allOf``…) in ``data``: what the validator's reference resolver chokes on."""
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:
        node, ptr = stack.pop()
        if isinstance(node, dict):
            for key, child in node.items():
                here = ptr + pointer(key)
                members: list[tuple[Any, str]] = []
                if key in _SCHEMA_MAPS and isinstance(child, dict):
                    members = [(v, here + pointer(k)) for k, v in child.items()]
                elif key in _SCHEMA_LISTS and isinstance(child, list):
                    members = [(v, here + pointer(n)) for n, v in enumerate(child)]
                elif key in _SCHEMA_VALUES:
                    members = [(child, here)]
                for member, where in members:
                    if member == value and not isinstance(member, (dict, bool)):
                        return where
                stack.append((child, here))
        elif isinstance(node, list):
            stack.extend((child, f"{ptr}/{n}") for n, child in enumerate(node))
    return None


_SCHEMA_MAPS = {"properties", "patternProperties", "definitions", "$defs", "dependentSchemas"}
_SCHEMA_LISTS = {"allOf", "anyOf", "oneOf", "prefixItems"}
_SCHEMA_VALUES = {"additionalProperties", "not", "if", "then", "else", "contains", "propertyNames"}


def _operation_as_ref(store: DocumentStore, root: Document, parts: tuple[Any, ...]) -> Document | None:
    """The document holding an operation written as ``$ref`` (OpenAPI allows it for path items
    only; the gateway follows it), when ``parts`` is that operation or inside it."""
    p = [str(x) for x in parts]
    if len(p) < 3 or p[0] != "paths" or p[2] not in METHODS:
        return None
    doc, _ptr, value = _physical(store, root, parts[:3])
    return doc if isinstance(value, dict) and "$ref" in value else None


# The last clean version of each lineage (see ``validate``), in this process.
_LINEAGES: dict[str, Any] = {}


def _changed_paths(lineage: str | None, root: Document) -> list[str] | None:
    """The path items of ``root`` that differ from its lineage's last clean version; None
    when the whole document must be validated (no clean base, or more than paths changed)."""
    base = _LINEAGES.get(lineage) if lineage is not None else None
    data = root.data
    if base is None or not isinstance(data, dict) or not isinstance(data.get("paths"), dict):
        return None
    if not _self_contained(data) or set(data) != set(base) or not isinstance(base.get("paths"), dict):
        return None
    if any(data[k] != base[k] for k in data if k != "paths"):
        return None  # components, servers, security…: what every path item may depend on
    old = base["paths"]
    return [p for p, item in data["paths"].items() if old.get(p) != item]


def _self_contained(data: Any) -> bool:
    """No ``$ref`` to another file: what the document validates against is all in it."""
    return all(ref.startswith("#") for ref in _refs(data))


def _findings(
    store: DocumentStore, root: Document, timeout: float, data: Any = None
) -> tuple[list[dict[str, Any]], bool]:
    """Every finding, located, as cached; and whether the time ran out. ``data``: what to
    validate instead of the whole document (some of its path items), located in it."""
    version = spec_version(root.data)
    raw, stopped, broken = _PROCESS.run(
        version if version in ("2.0", "3.0", "3.1") else "3.0",
        root.data if data is None else data,
        root.path.as_uri(),
        timeout,
    )
    findings: list[dict[str, Any]] = []
    refs_seen: set[tuple[str, str]] = set()
    for parts, message in raw:
        doc, ptr, _ = _physical(store, root, parts)
        if _operation_as_ref(store, root, parts) is not None:
            # The validator does not follow it and says so twice per operation ("'$ref' does
            # not match any of the regexes", "'responses' is a required property"): once.
            op_doc, op_ptr, _ = _physical(store, root, tuple(parts[:3]))
            if (str(op_doc.path), op_ptr) in refs_seen:
                continue
            refs_seen.add((str(op_doc.path), op_ptr))
            doc, ptr = op_doc, op_ptr
            message = (
                "an operation written as a $ref: OpenAPI allows $ref for path items, not operations; "
                "the gateway follows it, other tools may not"
            )
        severity = Severity.ERROR if decides_routing_or_security(store, root, parts) else Severity.WARNING
        findings.append({"message": message, "file": str(doc.path), "pointer": ptr, "severity": severity.value})
    timed_out = stopped is not None and stopped.startswith("it took longer")
    if stopped:
        where, ptr = str(root.path), ""
        if broken is not None:
            uri, value = broken
            try:
                target = store.load(Path(unquote(urlsplit(uri).path)), diags=Diagnostics())
            except (OSError, ValueError):  # pragma: no cover - not a file URI
                target = None
            place = _non_schema(target.data, value) if target is not None else None
            if target is not None and place is not None:
                where, ptr = str(target.path), place
                stopped = (
                    f"this must be a schema, not {describe_value(value)}; the validator cannot read past it "
                    "(the documents after it are not checked)"
                )
        findings.append(
            {
                "message": f"full validation stopped early: {stopped}",
                "file": where,
                "pointer": ptr,
                "severity": Severity.WARNING.value,
            }
        )
    return findings, timed_out


def validate(
    store: DocumentStore,
    root: Document,
    use_cache: bool = True,
    timeout: float | None = None,
    lineage: str | None = None,
) -> list[Diagnostic]:
    """Every validator finding for ``root``, located; routing/security ones as errors.

    The validator gets ``timeout`` seconds (default: :func:`validation_timeout`); past that it
    is stopped and a warning says so (an error with --strict, like every finding).

    ``lineage`` names a line of versions of one document (a pushed API): when the last
    version of that line validated clean in this process and the new one differs from it only
    in some path items, only those are validated (with everything else of the document, which
    they may refer to). Pushing one operation of a 1,000-operation description then costs
    the validation of that operation, not of the 1,000 (1.8 s of a 2 s push)."""
    limit = validation_timeout() if timeout is None else timeout
    use_cache = use_cache and cache_enabled()
    findings = _cache_lookup(root, limit) if use_cache else None
    if findings is None:
        changed = _changed_paths(lineage, root)
        if changed is None:
            findings, timed_out = _findings(store, root, limit)
        elif changed:
            reduced = {**root.data, "paths": {p: root.data["paths"][p] for p in changed}}
            findings, timed_out = _findings(store, root, limit, reduced)
        else:
            findings, timed_out = [], False  # the same document as the clean one before
        if use_cache:
            _cache_store(root, dependencies(store, root), findings, limit if timed_out else None)
    if lineage is not None:
        # only a clean version is a base: what a reduced validation leaves out was checked in it
        _LINEAGES[lineage] = root.data if not findings and _self_contained(root.data) else None
    out = []
    for f in findings:
        found = store.load(Path(f["file"]), diags=Diagnostics())
        name = found.name if found else f["file"]
        out.append(
            Diagnostic(
                f"OpenAPI validation: {f['message']}",
                name,
                f["pointer"],
                None,
                Severity(f["severity"]),
                "openapi-validation",
            )
        )
    return out
