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

import hashlib
import json
import os
from collections.abc import Iterator
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urldefrag

from ..documents import Document, DocumentStore
from ..errors import Diagnostic, Diagnostics, Severity, pointer
from .openapi import METHODS, spec_version

CACHE_FORMAT = 1


def cache_dir() -> Path:
    base = os.environ.get("CONTROLPLANE_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "controlplane"
    )
    return Path(base) / "validation"


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


def _cache_lookup(root: Document) -> list[dict[str, Any]] | None:
    entry_path = cache_dir() / f"{root.digest}.json"
    try:
        entry = json.loads(entry_path.read_text())
    except (OSError, ValueError):
        return None
    if entry.get("format") != CACHE_FORMAT or entry.get("validator") != _validator_version():
        return None
    if entry.get("root") != str(root.path):
        return None  # same content elsewhere: relative $refs may point to other files
    for path, digest in entry.get("deps", {}).items():
        if _digest_file(path) != digest:
            return None
    findings: list[dict[str, Any]] = entry["findings"]
    return findings


def _cache_store(root: Document, deps: dict[str, str], findings: list[dict[str, Any]]) -> None:
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
                }
            )
        )
        tmp.replace(directory / f"{root.digest}.json")
    except OSError:
        pass  # a cache that cannot be written only costs time


def _annotating(cls: type) -> type:
    """A subclass of a keyword validator that tags each error with the logical path it checked."""
    from jsonschema_path import SchemaPath

    def __call__(self: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
        node = next((a for a in args if isinstance(a, SchemaPath)), None)
        for err in cls.__call__(self, *args, **kwargs):
            if node is not None and not hasattr(err, "_cp_parts"):
                err._cp_parts = tuple(node.parts)
            yield err

    return type(cls.__name__, (cls,), {"__call__": __call__})


def _run_validator(doc: Document) -> tuple[list[tuple[tuple[Any, ...], str]], str | None]:
    """(logical path, message) for each finding, and why validation stopped early, if it did."""
    from openapi_spec_validator import OpenAPIV2SpecValidator, OpenAPIV30SpecValidator, OpenAPIV31SpecValidator

    base = {"2.0": OpenAPIV2SpecValidator, "3.0": OpenAPIV30SpecValidator, "3.1": OpenAPIV31SpecValidator}[
        spec_version(doc.data) or "3.0"
    ]
    cls = type(
        "Located" + base.__name__,
        (base,),
        {"keyword_validators": {k: _annotating(v) for k, v in base.keyword_validators.items()}},
    )
    out: list[tuple[tuple[Any, ...], str]] = []
    stopped = None
    try:
        validator = cls(doc.data, base_uri=doc.path.as_uri())
        for err in validator.iter_errors():
            parts = getattr(err, "_cp_parts", ())
            out.append((tuple(parts) + tuple(err.absolute_path), err.message))
    except RecursionError:
        stopped = "the document nests too deeply"
    except Exception as exc:  # the validator itself failed on this input; say so, keep what it found
        stopped = f"{type(exc).__name__}: {exc}"
    return out, stopped


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


def validate(store: DocumentStore, root: Document, use_cache: bool = True) -> list[Diagnostic]:
    """Every validator finding for ``root``, located; routing/security ones as errors."""
    findings = _cache_lookup(root) if use_cache else None
    if findings is None:
        raw, stopped = _run_validator(root)
        findings = []
        for parts, message in raw:
            doc, ptr, _ = _physical(store, root, parts)
            severity = Severity.ERROR if decides_routing_or_security(store, root, parts) else Severity.WARNING
            findings.append({"message": message, "file": str(doc.path), "pointer": ptr, "severity": severity.value})
        if stopped:
            findings.append(
                {
                    "message": f"full validation stopped early: {stopped}",
                    "file": str(root.path),
                    "pointer": "",
                    "severity": Severity.WARNING.value,
                }
            )
        if use_cache:
            _cache_store(root, dependencies(store, root), findings)
    out = []
    for f in findings:
        found = store.load(Path(f["file"]))
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
