"""The cluster's specs, policies and certificates as files, which the compiler reads.

Every object becomes files under the mirror's directory, one directory per namespace::

    <ns>/apispecs/<name>.yaml              ApiSpec: spec.openapi, as written (lines kept)
    <ns>/gatewaypolicies/<name>.yaml       GatewayPolicy: its spec, as a policy file
    <ns>/configmaps/<name>/<key>           a selected ConfigMap: each .yaml/.yml/.json key
    <ns>/secrets/<name>/tls.crt|tls.key|ca.crt   a selected TLS Secret (keys mode 0600)

So the compile, its errors, the watcher that coalesces bursts of changes and everything the
control plane does with files work unchanged; a finding in a file is mapped back to its
object (``owner``) for the object's status. A GatewayPolicy's ``apis[].spec`` may name an
ApiSpec of its namespace (``spec: orders``); file references are otherwise relative to
``<ns>/gatewaypolicies/`` (``../secrets/shop-tls/tls.crt``).

Files are written only when their content changes, atomically, so that an unchanged object
(a resync, a status update) costs no compile.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import threading
from pathlib import Path
from typing import Any

Obj = dict[str, Any]

SUFFIXES = (".yaml", ".yml", ".json")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")

KINDS = {"apispecs": "ApiSpec", "gatewaypolicies": "GatewayPolicy", "configmaps": "ConfigMap", "secrets": "Secret"}


def files_of(plural: str, obj: Obj) -> dict[str, bytes]:
    """An object's files, relative to the mirror ({} for an object that gives none)."""
    meta = obj.get("metadata") or {}
    ns, name = str(meta.get("namespace") or "default"), str(meta.get("name") or "")
    if not _NAME.match(ns) or not _NAME.match(name):
        return {}
    if plural == "apispecs":
        text = (obj.get("spec") or {}).get("openapi")
        if isinstance(text, dict):  # given as an object rather than a string
            text = json.dumps(text, indent=2)
        return {f"{ns}/apispecs/{name}.yaml": str(text or "").encode()}
    if plural == "gatewaypolicies":
        spec = dict(obj.get("spec") or {})
        apis = spec.get("apis")
        if isinstance(apis, list):
            spec["apis"] = [_spec_by_name(a) for a in apis]
        policy = {"apiVersion": "controlplane.dev/v1", "kind": "GatewayPolicy", "metadata": {"name": name}, **spec}
        return {f"{ns}/gatewaypolicies/{name}.yaml": (json.dumps(policy, indent=2) + "\n").encode()}
    if plural == "configmaps":
        data = obj.get("data") or {}
        return {
            f"{ns}/configmaps/{name}/{k}": str(v).encode()
            for k, v in data.items()
            if _KEY.match(k) and k.lower().endswith(SUFFIXES)
        }
    if plural == "secrets":
        data = obj.get("data") or {}
        out = {}
        for k in ("tls.crt", "tls.key", "ca.crt"):
            if isinstance(data.get(k), str):
                with contextlib.suppress(ValueError):
                    out[f"{ns}/secrets/{name}/{k}"] = base64.b64decode(data[k], validate=True)
        return out
    return {}


def _spec_by_name(api: Any) -> Any:
    """``spec: orders`` names the ApiSpec ``orders`` of the policy's namespace."""
    if isinstance(api, dict) and isinstance(api.get("spec"), str) and _NAME.match(api["spec"]):
        if not api["spec"].lower().endswith(SUFFIXES):
            return {**api, "spec": f"../apispecs/{api['spec']}.yaml"}
    return api


class Mirror:
    def __init__(self, root: Path):
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._owned: dict[tuple[str, str, str], set[str]] = {}  # (plural, ns, name) → its files
        self._owner: dict[str, tuple[str, str, str]] = {}  # file → (plural, ns, name)

    def put(self, plural: str, obj: Obj) -> bool:
        """Write an object's files (and remove the ones it no longer has); True when any changed."""
        meta = obj.get("metadata") or {}
        ident = (plural, str(meta.get("namespace") or "default"), str(meta.get("name") or ""))
        files = files_of(plural, obj)
        with self._lock:
            changed = False
            for rel, content in files.items():
                changed |= _write(self.root / rel, content, secret=rel.endswith(".key"))
                self._owner[rel] = ident
            for rel in self._owned.get(ident, set()) - set(files):
                changed |= _remove(self.root / rel)
                self._owner.pop(rel, None)
            self._owned[ident] = set(files)
            return changed

    def delete(self, plural: str, obj: Obj) -> bool:
        meta = obj.get("metadata") or {}
        ident = (plural, str(meta.get("namespace") or "default"), str(meta.get("name") or ""))
        with self._lock:
            changed = False
            for rel in self._owned.pop(ident, set()):
                changed |= _remove(self.root / rel)
                self._owner.pop(rel, None)
            return changed

    def owner(self, path: str | Path) -> tuple[str, str, str] | None:
        """The object a file (absolute, or as the compiler names it) was written for."""
        try:
            rel = Path(os.path.abspath(path)).relative_to(self.root).as_posix()
        except ValueError:
            return None
        with self._lock:
            return self._owner.get(rel)

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _write(path: Path, content: bytes, secret: bool) -> bool:
    try:
        if path.read_bytes() == content:
            return False
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(content)
    os.replace(tmp, path)
    return True


def _remove(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    with contextlib.suppress(OSError):  # its directory, when it was the last file there
        path.parent.rmdir()
    return True
