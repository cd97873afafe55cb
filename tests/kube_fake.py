"""An in-process Kubernetes API server for tests, driven by the official `kubernetes` client.

It speaks the real HTTP protocol (paths, list/watch with resource versions, chunked watch streams of
JSON lines, 410 Expired, bookmarks, `Status` error bodies, optimistic concurrency, the /status
subresource) so that a watcher under test cannot tell it from a cluster. The server is stdlib only.

    def test_x(kube_api: FakeKube) -> None:
        core = kubernetes.client.CoreV1Api(kube_api.api_client())
        kube_api.kubeconfig(tmp_path / "kubeconfig")   # for code that takes --kubeconfig
        kube_api.drop_watches(); kube_api.compact(); kube_api.fail_next("GET", "/configmaps", 500)
        kube_api.count("list", r"/configmaps$"); kube_api.objects("apispecs")

Approximations (none matter to a list/watch client): strategic-merge patches are applied as merge
patches; no finalizers, deletionTimestamp, managedFields, admission or schema validation; namespaces
need not exist; core/v1 and events.k8s.io/v1 events are stored apart; no discovery endpoints.
"""

from __future__ import annotations

import base64
import bisect
import contextlib
import copy
import json
import re
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped resources


@dataclass(frozen=True)
class Resource:
    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    custom: bool = False  # a CRD's, with `subresources: {status: {}}`: /status, metadata.generation, no strategic merge

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def prefix(self) -> str:
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    @property
    def qualified(self) -> str:  # as the real server names a resource in messages: "apispecs.controlplane.dev"
        return f"{self.plural}.{self.group}" if self.group else self.plural


DEFAULT_RESOURCES = (
    Resource("", "v1", "configmaps", "ConfigMap"),
    Resource("", "v1", "secrets", "Secret"),
    Resource("", "v1", "services", "Service"),
    Resource("", "v1", "events", "Event"),
    Resource("", "v1", "namespaces", "Namespace", namespaced=False),
    Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice"),
    Resource("coordination.k8s.io", "v1", "leases", "Lease"),
    Resource("events.k8s.io", "v1", "events", "Event"),
    Resource("controlplane.dev", "v1", "apispecs", "ApiSpec", custom=True),
    Resource("controlplane.dev", "v1", "gatewaypolicies", "GatewayPolicy", custom=True),
)


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message

    def status(self) -> Obj:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }


def _expired(rv: int, floor: int) -> ApiError:
    return ApiError(410, "Expired", f"too old resource version: {rv} ({floor})")


@dataclass(frozen=True)
class _Event:
    rv: int
    resource: Resource
    type: str  # ADDED, MODIFIED, DELETED
    obj: Obj  # after the change; for DELETED the last state, carrying the deletion's resourceVersion
    prev: Obj | None  # before the change (None for ADDED): lets watches with selectors and old lists be answered


# --- selectors ------------------------------------------------------------------------------------

Match = Callable[[Obj], bool]
_KEY = r"[A-Za-z0-9][-A-Za-z0-9_./]*"
_VALUE = r"[-A-Za-z0-9_.]*"


def _split_terms(selector: str) -> list[str]:
    terms, depth, start = [], 0, 0
    for i, ch in enumerate(selector):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            terms.append(selector[start:i])
            start = i + 1
    terms.append(selector[start:])
    return [t.strip() for t in terms if t.strip()]


def _label_term(term: str) -> tuple[str, str, set[str]]:
    """(key, operator, values): operators in, notin, exists, !exists."""
    if m := re.fullmatch(rf"!\s*({_KEY})", term):
        return m[1], "!exists", set()
    if m := re.fullmatch(rf"({_KEY})\s+(in|notin)\s*\(([^()]*)\)", term):
        return m[1], m[2], {v.strip() for v in m[3].split(",")}
    if m := re.fullmatch(rf"({_KEY})\s*(==|=|!=)\s*({_VALUE})", term):
        return m[1], "notin" if m[2] == "!=" else "in", {m[3]}
    if re.fullmatch(_KEY, term):
        return term, "exists", set()
    raise ApiError(400, "BadRequest", f"unable to parse requirement: {term!r}")


def _label_ok(labels: dict[str, str], key: str, op: str, values: set[str]) -> bool:
    return {
        "exists": key in labels,
        "!exists": key not in labels,
        "in": labels.get(key) in values,
        "notin": labels.get(key) not in values,
    }[op]


def _field_value(obj: Obj, path: str) -> str:
    node: Any = obj
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return "" if node is None else str(node)


def selector(labels: str, fields: str) -> Match:
    """labelSelector (=, ==, !=, in, notin, key, !key) and fieldSelector (path=value, path!=value)."""
    label_terms = [_label_term(t) for t in _split_terms(labels)]
    field_terms: list[tuple[str, bool, str]] = []
    for term in _split_terms(fields):
        m = re.fullmatch(r"([A-Za-z.]+)\s*(==|=|!=)\s*(.*)", term)
        if not m:
            raise ApiError(400, "BadRequest", f"invalid field selector: {term!r}")
        field_terms.append((m[1], m[2] != "!=", m[3]))

    def match(obj: Obj) -> bool:
        obj_labels = obj.get("metadata", {}).get("labels") or {}
        return all(_label_ok(obj_labels, *t) for t in label_terms) and all(
            (_field_value(obj, path) == value) == equal for path, equal, value in field_terms
        )

    return match


# --- patches --------------------------------------------------------------------------------------


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def _pointer(doc: Any, pointer: str) -> tuple[Any, str | int]:
    """The container and the key or index a JSON pointer's last token names in it."""
    if not pointer.startswith("/"):
        raise ApiError(422, "Invalid", f"invalid JSON pointer {pointer!r}")
    tokens = [t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/")]
    node = doc
    for token in tokens[:-1]:
        node = node[int(token)] if isinstance(node, list) else node[token]
    last = tokens[-1]
    if isinstance(node, list):
        return node, (len(node) if last == "-" else int(last))
    return node, last


def json_patch(doc: Any, ops: Any) -> Any:
    """RFC 6902 (add, remove, replace, move, copy, test)."""
    if not isinstance(ops, list):
        raise ApiError(400, "BadRequest", "a JSON patch is a list of operations")
    doc = copy.deepcopy(doc)
    for op in ops:
        try:
            kind = op["op"]
            if kind in ("move", "copy"):
                src, skey = _pointer(doc, op["from"])
                value = copy.deepcopy(src[skey])
                if kind == "move":
                    del src[skey]
                kind, op = "add", {"path": op["path"], "value": value}
            node, key = _pointer(doc, op["path"])
            if kind == "add":
                if isinstance(node, list):
                    node.insert(int(key), copy.deepcopy(op["value"]))
                else:
                    node[key] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del node[key]
            elif kind == "replace":
                _ = node[key]  # replacing a missing member is an error, as in the RFC
                node[key] = copy.deepcopy(op["value"])
            elif kind == "test":
                if node[key] != op["value"]:
                    raise ApiError(422, "Invalid", f"test operation failed at {op['path']}")
            else:
                raise ApiError(400, "BadRequest", f"unknown JSON patch operation {kind!r}")
        except (KeyError, IndexError, ValueError, TypeError) as e:
            raise ApiError(422, "Invalid", f"JSON patch {op!r} cannot be applied: {e!r}") from e
    return doc


# --- the server -----------------------------------------------------------------------------------


class _Dropped(Exception):
    """drop_watches() or stop() cut this watch stream."""


class FakeKube:
    """A Kubernetes API server on 127.0.0.1 (random port), for the official client; thread-safe."""

    def __init__(
        self,
        *,
        token: str | None = "fake-token",
        bookmark_interval: float = 1.0,
        history_limit: int = 10_000,
        resources: tuple[Resource, ...] = DEFAULT_RESOURCES,
    ) -> None:
        self.token = token
        self.bookmark_interval = bookmark_interval
        self.history_limit = history_limit
        self._resources = {(r.prefix, r.plural): r for r in resources}
        self._cond = threading.Condition()
        self._rv = 0
        self._store: dict[Resource, dict[Key, Obj]] = {r: {} for r in resources}
        self._history: list[_Event] = []
        self._trimmed = 0  # events up to this resourceVersion are gone from _history
        self._floor = 0  # ... and up to this one are forgotten for new requests (compact())
        self._drops = 0  # bumped by drop_watches(): open streams compare it with theirs
        self._graceful = False
        self._closing = False
        self._open_watches = 0
        self._failures: list[tuple[str, re.Pattern[str], int, str]] = []
        self.requests: list[tuple[str, str, str]] = []  # (verb, path, query) as received
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.kube = self
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="fake-kube", daemon=True)

    # -- lifecycle and client wiring

    def start(self) -> FakeKube:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FakeKube:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def api_client(self) -> Any:
        """A `kubernetes.client.ApiClient` for this server (as load_kube_config(self.kubeconfig(...)) gives)."""
        from kubernetes import client

        config = client.Configuration(host=self.url)
        if self.token:
            config.api_key = {"authorization": self.token}
            config.api_key_prefix = {"authorization": "Bearer"}
        return client.ApiClient(config)

    def kubeconfig(self, path: Path | str, namespace: str = "default") -> Path:
        """Write a kubeconfig (JSON is YAML) for this server; `kubernetes.config.load_kube_config(path)` reads it."""
        user = {"token": self.token} if self.token else {}
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": user}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": namespace}}],
        }
        Path(path).write_text(json.dumps(config, indent=2))
        return Path(path)

    # -- test controls

    @property
    def resource_version(self) -> str:
        with self._cond:
            return str(self._rv)

    @property
    def open_watches(self) -> int:
        with self._cond:
            return self._open_watches

    def drop_watches(self, graceful: bool = False) -> None:
        """Cut every open watch stream mid-stream, without the chunked encoding's last chunk (graceful: with it,
        as the real server ends a watch at its own timeout)."""
        with self._cond:
            self._drops += 1
            self._graceful = graceful
            self._cond.notify_all()

    def compact(self) -> None:
        """Forget history, as etcd's compaction: watches and exact lists from an older version get 410."""
        with self._cond:
            self._floor = self._rv

    def fail_next(self, method: str, path_regex: str, status: int, reason: str = "InternalError") -> None:
        """Answer the next request matching (HTTP method or verb such as "watch", path regex) with this error."""
        with self._cond:
            self._failures.append((method, re.compile(path_regex), status, reason))

    def count(self, verb: str, path_regex: str = "") -> int:
        """Requests received by verb (get, list, watch, create, update, patch, delete) and path (re.search)."""
        with self._cond:
            return sum(1 for v, p, _ in self.requests if v == verb and re.search(path_regex, p))

    def objects(self, plural: str, namespace: str | None = None) -> list[Obj]:
        with self._cond:
            return [
                copy.deepcopy(o)
                for r, objs in self._store.items()
                if r.plural == plural
                for (ns, _), o in sorted(objs.items())
                if namespace is None or ns == namespace
            ]

    def resource(self, plural: str, group: str | None = None) -> Resource:
        found = [r for r in self._store if r.plural == plural and (group is None or r.group == group)]
        if len(found) != 1:
            raise KeyError(f"{len(found)} resources named {plural!r}: give the group")
        return found[0]

    def apply(self, plural: str, obj: Obj, group: str | None = None) -> Obj:
        """Create or replace (unconditionally) without HTTP: seeding many objects fast."""
        res = self.resource(plural, group)
        meta = obj.get("metadata", {})
        ns = meta.get("namespace", "default") if res.namespaced else ""
        with self._cond:
            current = self._store[res].get((ns, meta.get("name", "")))
            if current is None:
                return self._create(res, ns, copy.deepcopy(obj))
            body = copy.deepcopy(obj)
            body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            return self._update(res, ns, meta["name"], None, body)

    # -- storage (callers hold self._cond)

    def _commit(self, res: Resource, kind: str, key: Key, obj: Obj, prev: Obj | None) -> Obj:
        self._rv += 1
        obj = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(self._rv)}}
        if kind == "DELETED":
            del self._store[res][key]
        else:
            self._store[res][key] = obj
        self._history.append(_Event(self._rv, res, kind, obj, prev))
        if len(self._history) > 2 * self.history_limit:  # trimming in halves keeps appends amortised O(1)
            cut = len(self._history) - self.history_limit
            self._trimmed = self._history[cut - 1].rv
            self._floor = max(self._floor, self._trimmed)
            del self._history[:cut]
        self._cond.notify_all()
        return obj

    def _events_after(self, rv: int) -> list[_Event]:
        return self._history[bisect.bisect_right(self._history, rv, key=lambda e: e.rv) :]

    def _state_at(self, res: Resource, rv: int) -> dict[Key, Obj]:
        """The resource's objects as they were at this resourceVersion, from the current state and history."""
        if rv < self._floor:
            raise _expired(rv, self._floor)
        if rv > self._rv:
            raise ApiError(504, "Timeout", f"Too large resource version: {rv}, current: {self._rv}")
        state = dict(self._store[res])
        for e in reversed(self._events_after(rv)):
            if e.resource == res:
                key = _key(res, e.obj)
                if e.prev is None:
                    del state[key]
                else:
                    state[key] = e.prev
        return state

    def _create(self, res: Resource, ns: str, body: Obj) -> Obj:
        meta = _check_body(res, ns, None, body)
        if meta.get("resourceVersion"):
            raise ApiError(500, "InternalError", "resourceVersion should not be set on objects to be created")
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise ApiError(422, "Invalid", "metadata.name: Required value: name or generateName is required")
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        key = (ns, meta["name"])
        if key in self._store[res]:
            raise ApiError(409, "AlreadyExists", f'{res.qualified} "{meta["name"]}" already exists')
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        if res.custom:  # as the real server: status is written through /status only
            body.pop("status", None)
            meta["generation"] = 1
        return self._commit(res, "ADDED", key, body, None)

    def _current(self, res: Resource, ns: str, name: str) -> Obj:
        current = self._store[res].get((ns, name))
        if current is None:
            raise ApiError(404, "NotFound", f'{res.qualified} "{name}" not found')
        return current

    def _update(self, res: Resource, ns: str, name: str, sub: str | None, body: Obj) -> Obj:
        current = self._current(res, ns, name)
        meta = _check_body(res, ns, name, body)
        rv = meta.get("resourceVersion")
        if rv and rv != current["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {res.qualified} "{name}": the object '
                "has been modified; please apply your changes to the latest version and try again",
            )
        for immutable in ("uid", "creationTimestamp", "resourceVersion", "generation"):
            meta.pop(immutable, None)
            if immutable in current["metadata"]:
                meta[immutable] = current["metadata"][immutable]
        if res.custom:
            if sub == "status":  # only status changes through /status ...
                body = {**current, "status": body.get("status")}
            else:  # ... and never through the main resource
                body = {k: v for k, v in body.items() if k != "status"}
                if "status" in current:
                    body["status"] = current["status"]
                if _spec(body) != _spec(current):
                    meta["generation"] = current["metadata"].get("generation", 0) + 1
            if body.get("status") is None:
                body.pop("status", None)
        if body == current:  # a no-op write: the real server keeps the resourceVersion and sends no event
            return current
        return self._commit(res, "MODIFIED", (ns, name), body, current)

    def _delete(self, res: Resource, ns: str, name: str, options: Obj) -> Obj:
        current = self._current(res, ns, name)
        pre = options.get("preconditions") or {}
        for field in ("uid", "resourceVersion"):
            if pre.get(field) and pre[field] != current["metadata"].get(field):
                raise ApiError(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {res.qualified} "{name}": Precondition failed: {field}',
                )
        return self._commit(res, "DELETED", (ns, name), current, current)

    def _list(self, res: Resource, ns: str | None, q: dict[str, str]) -> Obj:
        match = selector(q.get("labelSelector", ""), q.get("fieldSelector", ""))
        after: Key = ("", "")
        if q.get("continue"):
            try:
                token = json.loads(base64.urlsafe_b64decode(q["continue"]))
                rv, after = int(token["rv"]), (token["ns"], token["name"])
            except (ValueError, KeyError, TypeError) as e:
                raise ApiError(400, "BadRequest", "invalid continue token") from e
        elif q.get("resourceVersionMatch") == "Exact":
            rv = _int(q.get("resourceVersion", ""), "resourceVersion")
        else:  # unset, "0" or NotOlderThan: the real server may answer with anything as recent; the latest is
            rv = self._rv
        state = self._state_at(res, rv)
        items = [o for k, o in sorted(state.items()) if k > after and (ns is None or k[0] == ns) and match(o)]
        meta: Obj = {"resourceVersion": str(rv)}
        limit = int(q.get("limit") or 0)
        if 0 < limit < len(items):
            items, last = items[:limit], items[limit - 1]["metadata"]
            token = {"rv": rv, "ns": last.get("namespace", ""), "name": last["name"]}
            meta["continue"] = base64.urlsafe_b64encode(json.dumps(token).encode()).decode()
        if not res.custom:  # lists of built-in kinds carry no kind/apiVersion per item
            items = [{k: v for k, v in o.items() if k not in ("kind", "apiVersion")} for o in items]
        return {"kind": res.kind + "List", "apiVersion": res.api_version, "metadata": meta, "items": items}

    # -- HTTP

    def _route(self, path: str) -> tuple[Resource, str | None, str | None, str | None]:
        """(resource, namespace (None: all namespaces), name, subresource) for a path, as the real API's."""
        for (prefix, plural), res in self._resources.items():
            if not path.startswith(prefix + "/"):
                continue
            parts = path[len(prefix) + 1 :].split("/")
            ns: str | None = None
            if res.namespaced and len(parts) >= 3 and parts[0] == "namespaces":
                ns, parts = parts[1], parts[2:]
            if parts[0] != plural or len(parts) > 3 or (len(parts) > 1 and ns is None and res.namespaced):
                continue
            name = parts[1] if len(parts) > 1 else None
            sub = parts[2] if len(parts) > 2 else None
            if sub is not None and (sub != "status" or not res.custom):
                continue
            return res, (ns if res.namespaced else ""), name, sub
        raise ApiError(404, "NotFound", "the server could not find the requested resource")

    def handle(self, h: _Handler, method: str) -> None:
        url = urlsplit(h.path)
        q = dict(parse_qsl(url.query, keep_blank_values=True))
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            if self.token and h.headers.get("Authorization") != f"Bearer {self.token}":
                raise ApiError(401, "Unauthorized", "Unauthorized")
            res, ns, name, sub = self._route(url.path)
            watch = q.get("watch") in ("true", "1")
            verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(
                method, "get" if name else "watch" if watch else "list"
            )
            with self._cond:
                self.requests.append((verb, url.path, url.query))
                for i, (m, pattern, status, reason) in enumerate(self._failures):
                    if m in (method, verb) and pattern.search(url.path):
                        del self._failures[i]
                        raise ApiError(status, reason, f"injected by fail_next({m!r}, {pattern.pattern!r})")
            if verb == "watch":
                return self._watch(h, res, ns, q)
            body = json.loads(raw) if raw else {}
            with self._cond:
                code, out = 200, None
                if verb == "list":
                    out = self._list(res, ns, q)
                elif verb == "get":
                    out = self._current(res, ns or "", name or "")
                elif verb == "create" and not name:
                    code, out = 201, self._create(res, ns or "", _dict(body))
                elif verb == "update" and name:
                    out = self._update(res, ns or "", name, sub, _dict(body))
                elif verb == "patch" and name:
                    current = self._current(res, ns or "", name)
                    patched = _patch(res, h.headers.get("Content-Type", ""), current, body)
                    out = self._update(res, ns or "", name, sub, _dict(patched))
                elif verb == "delete" and name and not sub:
                    out = self._delete(res, ns or "", name, _dict(body))
                else:
                    raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on {url.path}")
            _send(h, code, out)
        except ApiError as e:
            _send(h, e.code, e.status())
        except json.JSONDecodeError as e:
            _send(h, 400, ApiError(400, "BadRequest", f"the request body is not JSON: {e}").status())
        except (_Dropped, OSError):
            h.close_connection = True
            with contextlib.suppress(OSError):
                h.connection.shutdown(socket.SHUT_RDWR)

    def _watch(self, h: _Handler, res: Resource, ns: str | None, q: dict[str, str]) -> None:
        match = selector(q.get("labelSelector", ""), q.get("fieldSelector", ""))
        bookmarks = q.get("allowWatchBookmarks") == "true"
        timeout = q.get("timeoutSeconds")
        deadline = time.monotonic() + _int(timeout, "timeoutSeconds") if timeout else None
        with self._cond:
            drops = self._drops
            initial: list[Obj] = []
            expired: ApiError | None = None
            if q.get("resourceVersion", "") in ("", "0"):
                cursor = self._rv
                initial = [
                    o for (o_ns, _), o in sorted(self._store[res].items()) if (ns is None or o_ns == ns) and match(o)
                ]
            else:
                cursor = _int(q["resourceVersion"], "resourceVersion")
                if cursor < self._floor:
                    expired = _expired(cursor, self._floor)
            self._open_watches += 1
        try:
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Transfer-Encoding", "chunked")
            h.end_headers()
            if expired:  # the real server answers 200, then an ERROR event, then ends the stream
                return self._finish(h, [{"type": "ERROR", "object": expired.status()}])
            lines = [{"type": "ADDED", "object": o} for o in initial]
            if q.get("sendInitialEvents") == "true" and bookmarks:
                lines.append(_bookmark(res, cursor, {"k8s.io/initial-events-end": "true"}))
            _write(h, lines)
            next_bookmark = time.monotonic() + self.bookmark_interval
            while True:
                with self._cond:
                    while True:
                        if self._closing or (self._drops != drops and not self._graceful):
                            raise _Dropped
                        if self._drops != drops:
                            break
                        now = time.monotonic()
                        wake = min(deadline or now + 3600, next_bookmark if bookmarks else now + 3600)
                        if self._rv > cursor or now >= wake:
                            break
                        self._cond.wait(wake - now)
                    end: list[Obj] | None = None
                    if self._drops != drops:  # graceful: a clean end, the events after the cursor left unsent
                        end = []
                    elif cursor < self._trimmed:  # a watcher slower than the history: the real server says 410 too
                        end = [{"type": "ERROR", "object": _expired(cursor, self._trimmed).status()}]
                    events = self._events_after(cursor) if end is None else []
                    cursor = self._rv
                if end is not None:
                    return self._finish(h, end)
                lines = []
                for e in events:
                    if e.resource != res or (ns is not None and e.obj["metadata"].get("namespace", "") != ns):
                        continue
                    is_in = e.type != "DELETED" and match(e.obj)
                    was_in = e.prev is not None and match(e.prev)
                    if is_in or was_in:  # in or out of the selector's view: ADDED or DELETED for this watcher
                        kind = e.type if is_in == was_in or e.type == "DELETED" else "ADDED" if is_in else "DELETED"
                        lines.append({"type": kind, "object": e.obj})
                now = time.monotonic()
                if bookmarks and now >= next_bookmark:
                    lines.append(_bookmark(res, cursor))
                    next_bookmark = now + self.bookmark_interval
                if deadline is not None and now >= deadline:
                    return self._finish(h, lines)
                _write(h, lines)
        finally:
            with self._cond:
                self._open_watches -= 1

    @staticmethod
    def _finish(h: _Handler, lines: list[Obj]) -> None:
        _write(h, lines)
        h.wfile.write(b"0\r\n\r\n")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    kube: FakeKube


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()  # headers and body leave in two writes: without this, Nagle meets delayed ACKs (40 ms)
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        self.server.kube.handle(self, self.command)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve


def _send(h: _Handler, code: int, obj: Any) -> None:
    data = json.dumps(obj).encode()
    h.send_response(code)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    h.wfile.write(data)


def _write(h: _Handler, lines: list[Obj]) -> None:
    if lines:  # one chunk per event, as the real server flushes them
        h.wfile.write(b"".join(b"%x\r\n%s\r\n" % (len(d), d) for d in (json.dumps(x).encode() + b"\n" for x in lines)))


def _bookmark(res: Resource, rv: int, annotations: dict[str, str] | None = None) -> Obj:
    meta: Obj = {"resourceVersion": str(rv), **({"annotations": annotations} if annotations else {})}
    return {"type": "BOOKMARK", "object": {"kind": res.kind, "apiVersion": res.api_version, "metadata": meta}}


def _key(res: Resource, obj: Obj) -> Key:
    return (obj["metadata"].get("namespace", "") if res.namespaced else "", obj["metadata"]["name"])


def _spec(obj: Obj) -> Obj:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def _int(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ApiError(400, "BadRequest", f"{name}: not an integer: {value!r}") from None


def _dict(body: Any) -> Obj:
    if not isinstance(body, dict) or not isinstance(body.get("metadata", {}), dict):
        raise ApiError(400, "BadRequest", "the body is not an object with a metadata object")
    return body


def _check_body(res: Resource, ns: str, name: str | None, body: Obj) -> Obj:
    """Defaults kind and apiVersion from the URL, as the real server; returns the body's metadata."""
    for field, value in (("kind", res.kind), ("apiVersion", res.api_version)):
        if body.setdefault(field, value) != value:
            raise ApiError(400, "BadRequest", f"{field} {body[field]!r} does not match the URL's {value!r}")
    meta: Obj = body.setdefault("metadata", {})
    if res.namespaced:
        if meta.setdefault("namespace", ns) != ns:
            raise ApiError(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
            )
    if name is not None and meta.get("name") != name:
        raise ApiError(
            400,
            "BadRequest",
            f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})",
        )
    return meta


def _patch(res: Resource, content_type: str, current: Obj, body: Any) -> Any:
    kind = content_type.split(";")[0].strip()
    if kind == "application/json-patch+json":
        return json_patch(current, body)
    if kind == "application/merge-patch+json" or (kind == "application/strategic-merge-patch+json" and not res.custom):
        return merge_patch(copy.deepcopy(current), body)
    raise ApiError(415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {kind}")


@pytest.fixture
def kube_api() -> Iterator[FakeKube]:
    """A started FakeKube (bookmarks every 0.2 s), stopped after the test."""
    with FakeKube(bookmark_interval=0.2) as kube:
        yield kube
