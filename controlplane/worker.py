"""Compiling in a worker process, so the server's event loop never waits on it.

The worker returns what the server needs and nothing more: resources already serialized
(deterministically, once), the names they reference, where each came from, every
diagnostic, and the files that were read (the watcher's list). The worker process is
kept between compiles, so its parsed-document cache (``documents.py``) and the
validation cache make recompiles cheap for files that did not change.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import gc
import itertools
import json
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from . import ir
from .documents import gc_paused
from .errors import Diagnostic, WithDiagnostics
from .ir import Source
from .resources import Resources, operation_details
from .sources import Pushed


@dataclass(frozen=True)
class CompiledConfig(WithDiagnostics):
    ok: bool
    diagnostics: list[Diagnostic]
    serialized: dict[str, dict[str, bytes]] = field(default_factory=dict)
    references: dict[str, set[str]] = field(default_factory=dict)
    sources: dict[tuple[str, str], Source] = field(default_factory=dict)
    # Route names and regexes → spec places (see ``xds.snapshot.decode_details``), as text per route
    # configuration: 20k small objects cost the server 20-100 ms to unpickle on every change,
    # for a lookup that only a NACK needs.
    details: dict[str, str] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)  # every file read: what to watch
    digests: dict[str, str] = field(default_factory=dict)  # file → content hash
    operations: int = 0
    seconds: float = 0.0
    listeners: list[tuple[str, str, int]] = field(default_factory=list)  # (name, address, port)
    jwks_to_fetch: list[ir.JwtProvider] = field(default_factory=list)  # providers with jwks.fetch: controlplane
    secret_groups: tuple[str, ...] = ()  # node groups that may receive the secrets
    certificates: list[tuple[str, str, str]] = field(default_factory=list)  # (secret, file, expiry ISO 8601)
    mesh: ir.Mesh | None = None  # workload certificates the server issues
    # Other node groups (mesh sidecars): group → (serialized resources, references).
    groups: dict[str, tuple[dict[str, dict[str, bytes]], dict[str, set[str]]]] = field(default_factory=dict)
    waf_service: ir.WafService | None = None  # where the WAF service listens (run starts it)
    waf: dict[str, Any] | None = None  # what the WAF does (status): rules, routes by mode, masked
    push_clients: tuple[ir.PushClient, ...] = ()  # who may push specs (push API)
    spec_pulls: tuple[ir.SpecPull, ...] = ()  # APIs whose spec the control plane polls
    services: dict[str, ir.KubeService] = field(default_factory=dict)  # cluster → its Kubernetes Service
    reputation_feeds: tuple[ir.ReputationFeed, ...] = ()  # feeds (the URL ones the control plane fetches)
    reputation_expiry: float | None = None  # when a feed in force expires: compile again then
    # From the worker process, a result can be relative to the one before (``base``): then
    # ``serialized`` and ``details`` hold only what is new or changed, ``removed`` the names
    # gone (details under "#details"). ``Compiler.compile`` makes it whole again.
    generation: str = ""
    base: str = ""
    removed: dict[str, list[str]] = field(default_factory=dict)


# Each operation's part of the details, and each route configuration's, kept while the
# objects live on between compiles (incremental.py, routes.py): encoding 30k entries anew
# cost 30-40 ms per compile, looking up 10k operations' parts 10 ms.
_FRAGMENTS: dict[int, tuple[ir.Operation, str]] = {}
_GROUPS: dict[int, tuple[tuple[ir.PathRoute, ...], str]] = {}


def encode_path_group_details(groups: dict[str, tuple[ir.PathRoute, ...]]) -> dict[str, str]:
    """Route configuration name → the items of a JSON array of ``[needle, file, pointer]``
    for its operations (``Resources.details``), from pieces encoded once."""
    global _GROUPS
    if len(_FRAGMENTS) > 200_000:
        _FRAGMENTS.clear()  # entries hold operations alive: bounded
    texts: dict[int, tuple[tuple[ir.PathRoute, ...], str]] = {}
    out = {}
    for name, group in groups.items():
        hit = _GROUPS.get(id(group))
        if hit is None or hit[0] is not group:
            ops_parts = []
            for op in (op for pr in group for op in pr.operations):
                frag = _FRAGMENTS.get(id(op))
                if frag is None or frag[0] is not op:
                    text = ", ".join(json.dumps([needle, s.file, s.pointer]) for needle, s in operation_details(op))
                    frag = _FRAGMENTS[id(op)] = (op, text)
                ops_parts.append(frag[1])
            hit = (group, ", ".join(p for p in ops_parts if p))
        texts[id(group)] = hit
        out[name] = hit[1]
    _GROUPS = texts
    return out


def compile_serialized(
    paths: Sequence[str],
    strict: bool = False,
    full_validation: bool = False,
    fetched: dict[str, str] | None = None,
    base: str = "",
    listener_port: int | None = None,
    pushed: Sequence[Pushed] = (),
) -> CompiledConfig:
    """Runs in the worker process (and directly in tests). ``base``: the generation of the
    last result the caller holds whole (see ``CompiledConfig``)."""
    with gc_paused():
        result = _compile_serialized(paths, strict, full_validation, fetched, listener_port, pushed)
        if _IN_WORKER and result.ok:
            result = _relative(result, base)
    if _IN_WORKER:
        # What survives a compile is mostly the caches, kept for the next one: the collector
        # need not scan them again. A full collection over them cost 0.25-0.4 s and fell in
        # the middle of every fifth or so compile (xds_bench: the p99 of a one-operation
        # change). Their entries hold no reference cycles and are freed by reference counting
        # when evicted; ``collect_garbage`` (after every 50th compile) unfreezes and collects them.
        gc.freeze()
    return result


def _compile_serialized(
    paths: Sequence[str],
    strict: bool,
    full_validation: bool,
    fetched: dict[str, str] | None,
    listener_port: int | None = None,
    pushed: Sequence[Pushed] = (),
) -> CompiledConfig:
    from .compiler import compile
    from .xds.snapshot import references_of

    started = time.perf_counter()
    try:
        result = compile(
            list(paths),
            strict=strict,
            full_validation=full_validation,
            fetched=fetched,
            listener_port=listener_port,
            pushed=pushed,
        )
    except RecursionError:  # pragma: no cover - compile reports these itself; a last guard
        return CompiledConfig(False, [Diagnostic("input nests too deeply", ", ".join(paths))])
    files = sorted({str(d.path) for d in result.documents})
    digests = {str(d.path): d.digest for d in result.documents}
    if not result.ok or result.resources is None or result.gateway is None:
        return CompiledConfig(
            False, result.diagnostics, files=files, digests=digests, seconds=time.perf_counter() - started
        )
    serialized = serialize(result.resources)
    ops = sum(len(p.operations) for lst in result.gateway.listeners for p in lst.paths)
    return CompiledConfig(
        True,
        result.diagnostics,
        serialized,
        references_of(result.resources),
        dict(result.resources.sources),
        encode_path_group_details(result.resources.path_groups),
        files,
        digests,
        ops,
        time.perf_counter() - started,
        [(lst.name, lst.address, lst.port) for lst in result.gateway.listeners]
        + [
            (f"{lst.name}-http-redirect", lst.address, lst.tls.redirect_port)
            for lst in result.gateway.listeners
            if lst.tls is not None and lst.tls.redirect_port is not None
        ],
        [p for p in result.gateway.providers if p.jwks_fetch == "controlplane"],
        result.gateway.secret_groups,
        [(c.name, c.cert_file, c.not_after) for c in result.gateway.certificates()],
        result.gateway.mesh,
        {group: (serialize(r), references_of(r)) for group, r in result.resources.groups.items()},
        result.gateway.waf_service,
        waf_summary(result.gateway),
        result.gateway.push_clients,
        result.gateway.spec_pulls,
        {u.name: u.service for u in result.gateway.upstreams if u.service is not None},
        result.gateway.reputation.feeds if result.gateway.reputation else (),
        result.gateway.reputation.next_expiry if result.gateway.reputation else None,
    )


def waf_summary(gateway: ir.Gateway) -> dict[str, Any] | None:
    """What ``status`` says of the WAF: its rules, where its service is, and how many routes
    (an operation on a listener) it inspects in each mode, fail open, and masks."""
    svc = gateway.waf_service
    if svc is None:
        return None
    rules = json.loads(svc.rules)
    routes = {"prevent": 0, "detect": 0, "fail_open": 0, "masked": 0, "off": 0}
    for lst in gateway.listeners:
        for pr in lst.paths:
            for op in pr.operations:
                if op.waf is None:
                    routes["off"] += 1
                else:
                    routes["prevent" if op.waf.prevent else "detect"] += 1
                    routes["fail_open"] += op.waf.fail_open
                routes["masked"] += op.mask is not None
    return {
        "rules": rules["rules"].get("version", ""),
        "rule_count": len(rules["rules"].get("rules", ())) - len(rules.get("disabled", ())),
        "endpoints": [f"{e.host}:{e.port}" for e in svc.endpoints],
        "routes": routes,
    }


def serialize(resources: Resources) -> dict[str, dict[str, bytes]]:
    return {
        type_url: {name: msg.SerializeToString(deterministic=True) for name, msg in by_name.items()}
        for type_url, by_name in resources.by_type.items()
    }


_IN_WORKER = False
_COMPILES_BETWEEN_COLLECTIONS = 50
_generations = itertools.count(1)
T = TypeVar("T")

# The last result sent whole or relative: its generation, resources and details.
_SENT: dict[str, Any] = {"generation": "", "serialized": {}, "details": {}}
_DETAILS = "#details"  # the pseudo type of details in ``removed``


def _relative(result: CompiledConfig, base: str) -> CompiledConfig:
    """The result relative to the last one sent, when the caller holds that one (``base``).

    Sending 5 MB (all resources and the details) from the worker to the server cost ~20 ms
    of pickling, pipe and unpickling per compile; an edit changes a few resources."""
    generation = f"{os.getpid()}.{next(_generations)}"
    out = dataclasses.replace(result, generation=generation)
    if base and base == _SENT["generation"]:
        changed, removed = _diff(_SENT["serialized"], result.serialized)
        details, gone = _diff({_DETAILS: _SENT["details"]}, {_DETAILS: result.details})
        out = dataclasses.replace(
            out, serialized=changed, details=details.get(_DETAILS, {}), removed={**removed, **gone}, base=base
        )
    _SENT.update(generation=generation, serialized=result.serialized, details=result.details)
    return out


def _diff(
    last: dict[str, dict[str, Any]], now: dict[str, dict[str, Any]]
) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]]]:
    """(what is new or changed, the names gone), by table."""
    changed = {t: {n: v for n, v in table.items() if last.get(t, {}).get(n) != v} for t, table in now.items()}
    removed = {t: [n for n in table if n not in now.get(t, {})] for t, table in last.items()}
    return {t: c for t, c in changed.items() if c}, {t: r for t, r in removed.items() if r}


def _merge(
    last: dict[str, dict[str, Any]], changed: dict[str, dict[str, Any]], removed: dict[str, list[str]]
) -> dict[str, dict[str, Any]]:
    out = {t: dict(table) for t, table in last.items()}
    for t, names in removed.items():
        for name in names:
            out.get(t, {}).pop(name, None)
    for t, table in changed.items():
        out.setdefault(t, {}).update(table)
    return {t: table for t, table in out.items() if table}


def whole(result: CompiledConfig, last: CompiledConfig | None) -> CompiledConfig:
    """A relative result made whole with the last whole one (in the server)."""
    if not result.base:
        return result
    if last is None or last.generation != result.base:  # pragma: no cover - the worker checks the base
        raise ValueError(f"result relative to {result.base}, not to what is held")
    removed = {t: names for t, names in result.removed.items() if t != _DETAILS}
    details = _merge({_DETAILS: last.details}, {_DETAILS: result.details}, {_DETAILS: result.removed.get(_DETAILS, [])})
    return dataclasses.replace(
        result,
        serialized=_merge(last.serialized, result.serialized, removed),
        details=details.get(_DETAILS, {}),
        base="",
        removed={},
    )


def collect_garbage() -> int:
    """In the worker: a full collection, frozen objects included. Returns what it freed."""
    gc.unfreeze()
    freed = gc.collect()
    gc.freeze()
    return freed


def _ignore_result(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: a dead worker is reported by the next compile


def _follow_parent(parent: int, nice: int = 0) -> None:
    """Worker initializer: die with the server, even when it is killed with SIGKILL.

    A killed parent cannot shut its pool down, and an orphaned worker would otherwise live
    on holding its caches (measured: 37-50 MB each).
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(0)

    global _IN_WORKER
    _IN_WORKER = True
    if os.getppid() != parent:  # it died before we started
        os._exit(0)
    if nice:
        os.nice(nice)
    # Ctrl-C in a terminal reaches the whole process group: the server stops this worker
    # itself, and an interrupted worker only prints a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=watch, daemon=True).start()


class _ProcessWithoutCtrlC(multiprocessing.context.SpawnProcess):
    """A spawned process that ignores SIGINT from its first instruction: Ctrl-C in a terminal
    reaches the whole process group, and a worker interrupted while it starts prints a
    traceback (the initializer comes too late). The ignored disposition is inherited."""

    def start(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            super().start()  # only the main thread may change handlers; the initializer still does
            return
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            super().start()
        finally:
            signal.signal(signal.SIGINT, previous)


class _SpawnWithoutCtrlC(multiprocessing.context.SpawnContext):
    # spawn, not fork: the parent runs gRPC threads, which fork would copy half-alive
    Process = _ProcessWithoutCtrlC


class Compiler:
    """A long-lived worker process for compiles; ``await compile(...)`` never blocks the loop."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        strict: bool = False,
        in_process: bool = False,
        nice: int = 0,
        listener_port: int | None = None,
    ):
        self.paths = [str(p) for p in paths]
        self.strict = strict
        self.listener_port = listener_port  # see compile()
        self.nice = nice  # lower priority for background work (full validation)
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self.in_process = in_process
        self.compiles = 0
        self.pushed: tuple[Pushed, ...] = ()  # the APIs pipelines pushed, as served
        self._last: CompiledConfig | None = None  # the last good result, whole

    def _executor(self) -> concurrent.futures.Executor | None:
        if self.in_process:
            return None
        if self._pool is None:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                1,
                mp_context=_SpawnWithoutCtrlC(),
                initializer=_follow_parent,
                initargs=(os.getpid(), self.nice),
            )
        return self._pool

    async def compile(
        self,
        full_validation: bool = False,
        fetched: dict[str, str] | None = None,
        pushed: tuple[Pushed, ...] | None = None,
    ) -> CompiledConfig:
        """Compile the paths with ``pushed`` (default: the pushes served)."""
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(
                self._executor(),
                compile_serialized,
                self.paths,
                self.strict,
                full_validation or self.strict,
                fetched,
                self._last.generation if self._last is not None else "",
                self.listener_port,
                self.pushed if pushed is None else pushed,
            )
        except concurrent.futures.process.BrokenProcessPool:
            self._pool = None  # the worker died (out of memory…): start a new one next time
            return CompiledConfig(False, [Diagnostic("the compile worker died; retrying on the next change", "")])
        if result.ok:
            result = self._last = whole(result, self._last)
        self.compiles += 1
        if self._pool is not None and self.compiles % _COMPILES_BETWEEN_COLLECTIONS == 0:
            # now, while the worker is idle, rather than in the middle of a compile
            loop.run_in_executor(self._pool, collect_garbage).add_done_callback(_ignore_result)
        return result

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the worker process (a thread when in process): other work on the
        compiler's inputs that must not hold the event loop, such as a push's dry run."""
        return await asyncio.get_running_loop().run_in_executor(self._executor(), fn, *args)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
