"""Reuse between compiles in one process (the xDS server's compile worker).

A one-operation edit used to rebuild everything: every spec's model, every operation's IR
and every route's encoding (0.6 s for 10k operations; now ~50 ms, ``bench/edit_bench.py``).
These caches keep what an edit does not touch, each keyed by everything its result depends on:

- a spec's model, by the content hash of every document its parsing read;
- within a changed document, a path item's operations (model), by the item's data and the
  document outside ``paths`` (items that follow a ``$ref`` elsewhere are parsed again);
- an API's operations (IR), by that model, its policy entry and what the entry refers to;
  when the API is rebuilt, each operation by its model object and the same context, and
  operations that come out equal keep their earlier objects;
- a path's operations grouped into a ``PathRoute``, and its encoded routes and its scope's
  route configuration (``translate/routes.py``), by the operation and path objects;
- a policy document's schema check, by its content.

Results and the diagnostics they produced are replayed exactly, so a compile with caches
gives byte-identical resources and the same findings as one without (a test compares them).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from .documents import Document, DocumentStore
from .errors import Diagnostic, Diagnostics

K = TypeVar("K")
V = TypeVar("V")


class Lru(Generic[K, V]):
    def __init__(self, size: int):
        self.size = size
        self.items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self.items.get(key)
        if value is not None:
            self.items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self.items[key] = value
        self.items.move_to_end(key)
        if len(self.items) > self.size:
            self.items.popitem(last=False)

    def clear(self) -> None:
        self.items.clear()


ENABLED = True  # tests turn it off to compare

# Caches kept elsewhere (translate/routes.py), cleared with these: registered by their module,
# so that this one imports none of them.
_OTHER_CACHES: list[Callable[[], None]] = []


def register_cache(clear: Callable[[], None]) -> None:
    _OTHER_CACHES.append(clear)


@dataclass
class _SpecEntry:
    deps: tuple[tuple[Path, str], ...]
    value: Any
    diagnostics: list[Diagnostic]


_SPECS: Lru[Path, _SpecEntry] = Lru(4096)


@contextmanager
def _tracking(store: DocumentStore) -> Iterator[set[Path]]:
    seen: set[Path] = set()
    previous = store.tracking
    store.tracking = seen
    try:
        yield seen
    finally:
        store.tracking = previous
        if previous is not None:
            previous.update(seen)


def cached_spec(
    store: DocumentStore, doc: Document, diags: Diagnostics, parse: Callable[[DocumentStore, Document, Diagnostics], V]
) -> V:
    """``parse(store, doc, diags)``, or its earlier result if no document it read has changed."""
    if ENABLED:
        entry = _SPECS.get(doc.path)
        if entry is not None and _unchanged(store, entry.deps):
            diags.extend(entry.diagnostics)
            return entry.value  # type: ignore[no-any-return]
    local = Diagnostics()
    with _tracking(store) as seen:
        value = parse(store, doc, local)
    seen.add(doc.path)
    diags.extend(local)
    deps = []
    for path in sorted(seen):
        d = store.load(path, diags=Diagnostics())
        deps.append((path, d.digest if d is not None else ""))
    _SPECS.put(doc.path, _SpecEntry(tuple(deps), value, list(local.items)))
    return value


def _unchanged(store: DocumentStore, deps: tuple[tuple[Path, str], ...]) -> bool:
    for path, digest in deps:
        d = store.load(path, diags=Diagnostics())
        if (d.digest if d is not None else "") != digest:
            return False
    return True


@dataclass
class ApiRecord:
    """What building one API's operations did, to replay on a hit."""

    # (listener, shape, operations), in order. While the record is reused these tuples are
    # the same objects, so a path held by one API is found by one lookup.
    groups: list[tuple[str, str, tuple[Any, ...]]]
    auto_upstreams: list[tuple[str, Any]]
    used_upstreams: list[str]
    diagnostics: list[Diagnostic]


_APIS: Lru[tuple[Any, ...], tuple[Any, ApiRecord]] = Lru(4096)


def api_key(*parts: Any) -> tuple[Any, ...]:
    """A cache key from plain data (dicts are made canonical)."""
    return tuple(json.dumps(p, sort_keys=True, default=str) if isinstance(p, (dict, list)) else p for p in parts)


def cached_api(key: tuple[Any, ...], spec: Any) -> ApiRecord | None:
    if not ENABLED:
        return None
    hit = _APIS.get(key)
    if hit is not None and hit[0] is spec:  # the same (cached) model object
        return hit[1]
    return None


def store_api(key: tuple[Any, ...], spec: Any, record: ApiRecord) -> None:
    _APIS.put(key, (spec, record))


# The operations an API produced last time (its groups, see ``reuse_operations``): when an
# edit rebuilds an API, its unchanged operations keep their objects, so that the caches keyed
# by operation objects (path routes, encoded routes, details) still hit for them.
_LAST_OPERATIONS: Lru[str, list[tuple[str, str, tuple[Any, ...]]]] = Lru(4096)


def reuse_operations(
    api: str, groups: Sequence[tuple[str, str, Sequence[Any]]]
) -> list[tuple[str, str, tuple[Any, ...]]]:
    """``groups`` (listener, shape, operations) with each operation equal to one of the last
    build of ``api`` (same listener and name) replaced by that earlier object."""
    last = _LAST_OPERATIONS.get(api) if ENABLED else None
    if last is None:  # a first build: nothing to compare (the lookup table is made when needed)
        out = [(listener, shape, tuple(ops)) for listener, shape, ops in groups]
    else:
        previous = {(listener, op.name): op for listener, _shape, ops in last for op in ops}
        out = []
        for listener, shape, ops in groups:
            kept = []
            for op in ops:
                old = previous.get((listener, op.name))
                kept.append(old if old is not None and old == op else op)
            out.append((listener, shape, tuple(kept)))
    if ENABLED:
        _LAST_OPERATIONS.put(api, out)
    return out


# The operations parsed from each path item of a description, by document: an edit of one
# operation in a 1,000-operation file re-parses that path item, not the file's 670 others.
@dataclass(slots=True)
class _ItemRecord:
    item: Any  # the path item's data as parsed last time
    operations: list[Any]
    diagnostics: list[Diagnostic]


@dataclass
class _ItemMemo:
    """Replays a path item's operations and findings when its data, and everything outside
    ``paths`` it could refer to, are equal to last time. A path item that followed a ``$ref``
    into another file or into ``paths`` is always parsed again."""

    document: Path
    context: tuple[Any, str]  # the document without its paths, and the OpenAPI version
    last: dict[str, _ItemRecord] | None
    now: dict[str, _ItemRecord]

    def parse(self, parser: Any, path: str, item: Any, out: list[Any]) -> None:
        hit = self.last.get(path) if self.last is not None else None
        if hit is not None and hit.item == item:
            out.extend(hit.operations)
            parser.diags.extend(hit.diagnostics)
            self.now[path] = hit
            return
        # The item's operations, findings and followed references: what it appends to each.
        store, found = parser.store, parser.diags.items
        followed, own = store.followed, store.followed is None
        if followed is None:
            followed = store.followed = []
        start, first_finding, first_ref = len(out), len(found), len(followed)
        try:
            parser.path_item(path, item, out, self.context[1])
        finally:
            refs = followed[first_ref:]
            if own:
                store.followed = None
        document = self.document
        for file, ptr in refs:
            if file != document or ptr.startswith("/paths"):
                return
        self.now[path] = _ItemRecord(item, out[start:], found[first_finding:])

    def done(self) -> None:
        _ITEMS.put(self.document, (self.context, self.now))


_ITEMS: Lru[Path, tuple[tuple[Any, str], dict[str, _ItemRecord]]] = Lru(1024)


def path_item_memo(doc: Document, rest: dict[str, Any], version: str) -> _ItemMemo:
    """The memo for parsing ``doc``'s path items; ``rest``: the document without ``paths``."""
    context = (rest, version)
    hit = _ITEMS.get(doc.path) if ENABLED else None
    last = hit[1] if hit is not None and hit[0] == context else None
    return _ItemMemo(doc.path, context, last, {})


@dataclass
class OperationMemo:
    """An API's operations built last time, by model operation object (see build.py)."""

    api: str
    key: tuple[Any, ...]
    last: dict[int, tuple[Any, list[Any], list[Diagnostic]]] | None
    now: dict[int, tuple[Any, list[Any], list[Diagnostic]]]

    def get(self, op: Any) -> tuple[list[Any], list[Diagnostic]] | None:
        hit = self.last.get(id(op)) if self.last is not None else None
        if hit is None or hit[0] is not op:
            return None
        self.now[id(op)] = hit
        return hit[1], hit[2]

    def put(self, op: Any, produced: list[Any], found: list[Diagnostic]) -> None:
        """The entry holds the model operation, so its id is not reused while it lives."""
        self.now[id(op)] = (op, produced, list(found))

    def done(self) -> None:
        _OPERATIONS.put(self.api, (self.key, self.now))


_OPERATIONS: Lru[str, tuple[tuple[Any, ...], dict[int, tuple[Any, list[Any], list[Diagnostic]]]]] = Lru(4096)


def operation_memo(api: str, key: tuple[Any, ...]) -> OperationMemo:
    """The memo of ``api``'s operations, usable when its context ``key`` is the same as last time."""
    hit = _OPERATIONS.get(api) if ENABLED else None
    return OperationMemo(api, key, hit[1] if hit is not None and hit[0] == key else None, {})


# Schema checks of policy documents, by content (3-5 ms of jsonschema per compile).
_CHECKS: Lru[tuple[Any, ...], tuple[bool, list[Diagnostic]]] = Lru(1024)


def cached_check(key: tuple[Any, ...], diags: Diagnostics, check: Callable[[Diagnostics], bool]) -> bool:
    """``check(diags)``, replayed (result and findings) for a key seen before."""
    hit = _CHECKS.get(key) if ENABLED else None
    if hit is None:
        local = Diagnostics()
        hit = (check(local), list(local.items))
        _CHECKS.put(key, hit)
    diags.extend(hit[1])
    return hit[0]


# A path's operations grouped (build.py ``_path_routes``) with its precedence key, while
# they are the same objects. A plain dict, emptied when it grows too big: an LRU's
# bookkeeping cost more than the lookups (6,500 paths per compile at 10k operations).
_PATH_ROUTES: dict[tuple[int, ...], tuple[tuple[Any, ...], Any, Any]] = {}
_PATH_ROUTES_MAX = 200_000


# The same, by the identity of an ``ApiRecord.groups`` tuple (one lookup, not one per operation).
_GROUP_ROUTES: dict[int, tuple[tuple[Any, ...], Any, Any]] = {}


def cached_path_route(operations: Sequence[Any]) -> tuple[Any, Any] | None:
    """(path route, its sort key), or None."""
    if not ENABLED:
        return None
    if type(operations) is tuple:
        group = _GROUP_ROUTES.get(id(operations))
        if group is not None and group[0] is operations:
            return group[2], group[1]
    hit = _PATH_ROUTES.get(tuple(map(id, operations)))
    if hit is not None and all(a is b for a, b in zip(hit[0], operations, strict=True)):
        if type(operations) is tuple:
            _GROUP_ROUTES[id(operations)] = (operations, hit[1], hit[2])
        return hit[2], hit[1]
    return None


def store_path_route(operations: Sequence[Any], path_route: Any, key: Any) -> None:
    """The entry holds the operations, so their ids cannot be reused by others while it lives."""
    if len(_PATH_ROUTES) >= _PATH_ROUTES_MAX:
        _PATH_ROUTES.clear()
        _GROUP_ROUTES.clear()
    _PATH_ROUTES[tuple(map(id, operations))] = (tuple(operations), path_route, key)
    if type(operations) is tuple:
        _GROUP_ROUTES[id(operations)] = (operations, path_route, key)


def clear() -> None:
    _SPECS.clear()
    _APIS.clear()
    _PATH_ROUTES.clear()
    _GROUP_ROUTES.clear()
    _LAST_OPERATIONS.clear()
    _CHECKS.clear()
    _ITEMS.clear()
    _OPERATIONS.clear()
    for clear_other in _OTHER_CACHES:
        clear_other()
