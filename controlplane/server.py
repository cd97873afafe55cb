"""The control plane process: watch sources, compile off the loop, publish, serve xDS.

Life of a change: the watcher polls the files of the last compile (and the directories
given). The first change after a quiet period is compiled at once; changes that follow it
within the quiet period, or arrive while it compiles, are coalesced into one more compile
once the files have been quiet that long (bounded by a maximum delay), so that an editor's
or a CI job's burst of writes costs at most two compiles. The compile runs in a worker process. A
compile with errors is logged, shown by ``/status`` and ``/compile`` and counted in
metrics, and changes nothing: the previous configuration keeps serving. A good compile
becomes a checked snapshot; if its content is the same as what is served, nothing is
pushed.

In default mode the full OpenAPI validation runs after publishing, in a second worker,
so that a big description never delays a route change; its findings go to ``/compile``.
With ``strict`` a compile is only published once it passes full validation.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import inputs, ir, reputation
from .errors import Diagnostic
from .kube.source import KubeOptions, KubeSource
from .push.api import PushApi, PushOptions
from .push.pull import Puller
from .resources import Resources
from .sources import Pushed, stamps
from .worker import CompiledConfig, Compiler
from .workloads import WorkloadIdentities
from .xds.admin import AdminServer, json_answer, metrics_handler
from .xds.cache import DEFAULT_GROUP, OWN_GROUP_PREFIXES, SnapshotCache
from .xds.grpc_server import TlsFiles, build_server
from .xds.metrics import Metrics
from .xds.protocol import XdsContext
from .xds.snapshot import DetailTexts, InconsistentSnapshot, Snapshot, build_snapshot
from .xds.status import config_dump, status

if TYPE_CHECKING:
    from .push.cluster import ClusterStore

log = logging.getLogger("controlplane")


@dataclass
class ServeOptions:
    paths: Sequence[str | Path]
    xds_address: str = "127.0.0.1:18000"
    admin_address: str = "127.0.0.1:18001"
    tls: TlsFiles | None = None
    strict: bool = False
    poll_interval: float = 0.05
    quiet_period: float = 0.3
    max_delay: float = 2.0
    background_validation: bool = True
    in_process: bool = False  # compile in the server process (tests, tiny inputs)
    listener_port: int | None = None  # serve the one listener on this port (run --port)
    push: PushOptions | None = None  # the push API (serve --push-address)
    kubernetes: KubeOptions | None = None  # the cluster as a source (serve --kubernetes)


@dataclass
class CompileReport:
    ok: bool = False
    at: float = 0.0
    seconds: float = 0.0
    version: str = ""
    operations: int = 0
    errors: list[Diagnostic] = field(default_factory=list)
    warnings: list[Diagnostic] = field(default_factory=list)
    validation: list[Diagnostic] = field(default_factory=list)
    listeners: list[tuple[str, str, int]] = field(default_factory=list)
    waf: dict[str, Any] | None = None  # of the version served (worker.waf_summary)

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "at": self.at,
            "seconds": round(self.seconds, 3),
            "served_version": self.version,
            "operations": self.operations,
            "errors": [str(d) for d in self.errors],
            "warnings": [str(d) for d in self.warnings],
            "validation": [str(d) for d in self.validation],
            "waf": self.waf,
        }


def _fingerprint(files: Sequence[str], inputs: Sequence[str | Path]) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for f in files:
        try:
            st = os.stat(f)
            out[f] = (st.st_mtime_ns, st.st_size)
        except OSError:
            out[f] = (-1, -1)
    for given in inputs:
        p = Path(given)
        if p.is_dir():  # a new file in a directory given on the command line is a change
            with contextlib.suppress(OSError):
                for name, stamp in stamps(p).items():
                    out.setdefault(name, stamp)
        elif str(p.resolve()) not in out:
            try:
                st = p.stat()
                out[str(p.resolve())] = (st.st_mtime_ns, st.st_size)
            except OSError:
                out[str(p.resolve())] = (-1, -1)
    return out


class ControlPlane:
    def __init__(self, options: ServeOptions):
        self.kube: KubeSource | None = None
        if options.kubernetes is not None:
            self.kube = KubeSource(options.kubernetes)
            # the cluster's objects are files the compile reads with the others
            options = dataclasses.replace(options, paths=[*options.paths, self.kube.directory])
        self.options = options
        self.cache = SnapshotCache()
        self.ctx = XdsContext(self.cache)
        self.metrics = Metrics(self.ctx.registry, self.cache)
        port = options.listener_port
        self.compiler = Compiler(options.paths, options.strict, in_process=options.in_process, listener_port=port)
        # full validation yields the CPU to compiles and pushes
        self.validator = Compiler(options.paths, False, in_process=options.in_process, nice=10, listener_port=port)
        self.report = CompileReport()
        self.files: list[str] = []
        self.digests: dict[str, str] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._following: set[asyncio.Future[Any]] = set()  # serving what another replica pushed
        self._validation: asyncio.Task[Any] | None = None
        self.grpc: Any = None
        self.admin = AdminServer(
            {
                "/healthz": lambda q: json_answer(200, {"live": True}),
                "/readyz": lambda q: json_answer(200 if self.cache.ready else 503, {"ready": self.cache.ready}),
                "/metrics": metrics_handler(self.metrics.prometheus),
                "/status": lambda q: json_answer(
                    200, {**status(self.ctx.registry, self.cache, self.certificates), "sources": self.sources()}
                ),
                "/config_dump": self._config_dump,
                "/compile": lambda q: json_answer(200, self.report.as_json()),
                "/rollout": lambda q: self._rollout(),
                "/refresh_jwks": self._refresh_jwks_now,
                "/refresh_reputation": self._refresh_feeds_now,
                "/pulls": lambda q: json_answer(200, self.puller.state if self.puller else {}),
                "/inputs": lambda q: inputs.answer(
                    self.options.paths,
                    self.compiler.pushed,
                    self.last_result,
                    listener_port=self.options.listener_port,
                    fetched=self._fetched(),
                ),
            }
        )
        self.certificates: dict[str, tuple[str, str]] = {}  # served secret → (file, expiry), for status and metrics
        self.identities = WorkloadIdentities()
        self.last_result: CompiledConfig | None = None  # the configuration served (renewals rebuild it)
        self.metrics.certificates = self.certificates
        self.jwks: dict[str, str] = {}  # provider → keys the control plane fetched
        self.jwks_state: dict[str, dict[str, Any]] = {}
        self._fetchers: dict[str, tuple[ir.JwtProvider, asyncio.Task[Any]]] = {}
        self.feeds = reputation.Fetched()  # copies of URL reputation feeds, and their states
        self._feed_tasks: dict[str, tuple[ir.ReputationFeed, asyncio.Task[Any]]] = {}
        self._expiry_timer: asyncio.TimerHandle | None = None
        self._compile_lock = asyncio.Lock()
        self.xds_port = 0
        self.admin_port = 0
        self.compiles = 0
        # The serialized ClusterLoadAssignment of a Kubernetes Service's cluster (kube source).
        self.service_endpoints: Callable[[str, ir.KubeService], bytes] | None = None
        # Told of every compile's report, served or rejected (the kube source writes statuses).
        self.compile_observers: list[Callable[[CompileReport, CompiledConfig], None]] = []
        self._pulls_refused = False  # said once: pulls without a store
        self.push: PushApi | None = None
        self.puller: Puller | None = None
        if options.push is not None:
            self.push = PushApi(self, options.push)
            self.puller = Puller(self.push)
            # what was pushed before a restart is served again, from the first compile on
            self.compiler.pushed = self.validator.pushed = self.push.store.pushed()

    def sources(self) -> dict[str, Any]:
        """Where the configuration comes from besides files: pushes, pulls, the cluster."""
        out: dict[str, Any] = {}
        if self.push is not None:
            out["push"] = {"live": dict(self.push.store.live), "store": self.push.store.where}
        if self.puller is not None and self.puller.state:
            out["pulls"] = self.puller.state
        if self.kube is not None:
            out["kubernetes"] = self.kube.state()
        if self.feeds.states:
            out["reputation"] = {name: state.as_json() for name, state in sorted(self.feeds.states.items())}
        return out

    def _fetched(self) -> dict[str, str]:
        """What the control plane fetched, for the compile: JWKS and reputation feeds."""
        return {**self.jwks, **self.feeds.texts}

    def _rollout(self) -> tuple[int, str, bytes]:
        """The live map of pushes served here and where the Envoys are with it (push.peers)."""
        from .push import peers, rollout

        live = dict(self.push.store.live) if self.push is not None else {}
        return json_answer(200, peers.answer(live, rollout.look(self.ctx.registry, self.cache)))

    def _config_dump(self, query: dict[str, list[str]]) -> tuple[int, str, bytes]:
        node = (query.get("node") or [""])[0]
        dump = config_dump(self.ctx.registry, self.cache, node)
        if dump is None:
            return json_answer(404, {"error": f"no connected node {node!r}"})
        return json_answer(200, dump)

    async def start(self) -> None:
        self.grpc, self.xds_port = build_server(self.ctx, self.options.xds_address, self.options.tls)
        await self.grpc.start()
        host, _, port = self.options.admin_address.rpartition(":")
        self.admin_port = await self.admin.start(host or "127.0.0.1", int(port))
        log.info(
            "xDS on port %d%s, admin on %s:%d",
            self.xds_port,
            " (mTLS)" if self.options.tls else " (plaintext)",
            host,
            self.admin_port,
        )
        if self.kube is not None:
            await self.kube.start(self)
            await self._share_pushes()
        await self.recompile(time.monotonic())
        if self.push is not None:
            await self.push.start()
        self._tasks.append(asyncio.ensure_future(self._watch()))
        self._tasks.append(asyncio.ensure_future(self._collect_when_idle()))
        self._tasks.append(asyncio.ensure_future(self._renew_workloads()))

    async def _collect_when_idle(self, quiet: float = 1.0, full_every: float = 600.0) -> None:
        """Keep full garbage collections out of pushes.

        Python starts a full collection when enough long-lived objects have piled up, which
        after a thousand streams have synced tends to fall during the next change. Once the
        streams and the snapshot have been quiet for ``quiet`` seconds, the young generations
        are collected and what survives is frozen (cheap), so that collections during the
        next push only look at objects made since. A full collection, frozen objects
        included, runs at a quiet time every ``full_every`` seconds (at 100 streams one took
        ~40 ms of the event loop: too much to pay before every change).
        """
        activity = [0]
        self.ctx.registry.observers.append(lambda *_: activity.__setitem__(0, activity[0] + 1))
        seen = handled = -1
        full_at = time.monotonic()
        while True:
            await asyncio.sleep(quiet)
            now = activity[0] + self.compiles
            if now == seen and now != handled:
                if time.monotonic() - full_at >= full_every:
                    gc.unfreeze()
                    gc.collect()
                    full_at = time.monotonic()
                else:
                    gc.collect(1)
                gc.freeze()
                handled = now
            seen = now

    async def stop(self) -> None:
        for task in (*self._tasks, *self._following):
            task.cancel()
        gc.unfreeze()  # what ``_collect_when_idle`` froze is the collector's again
        for _provider, task in self._fetchers.values():
            task.cancel()
        for _feed, task in self._feed_tasks.values():
            task.cancel()
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
        if self._validation is not None:
            self._validation.cancel()
        if self.kube is not None:
            self.kube.stop()
        if self.puller is not None:
            self.puller.stop()
        if self.push is not None:
            await self.push.stop()
            self.push.store.close()
        if self.grpc is not None:
            await self.grpc.stop(grace=1)
        await self.admin.close()
        self.compiler.close()
        self.validator.close()

    async def recompile(self, changed_at: float) -> bool:
        async with self._compile_lock:
            return await self._recompile(changed_at)

    async def _share_pushes(self) -> None:
        """With the push store in the cluster: serve what is live there from the first compile
        on, and what any replica pushes from then on."""
        from .push.cluster import SYNC_TIMEOUT_S, ClusterStore

        store = self.push.store if self.push is not None else None
        if not isinstance(store, ClusterStore):
            return
        assert self.kube is not None
        if not await asyncio.to_thread(store.connect, self.kube.client):
            log.error("push store: %s not listed within %ds; serving what was", store.where, SYNC_TIMEOUT_S)
        self.compiler.pushed = self.validator.pushed = store.pushed()
        loop = asyncio.get_running_loop()

        def follow() -> None:
            task = asyncio.ensure_future(self._follow_pushes(store))
            self._following.add(task)
            task.add_done_callback(self._following.discard)

        def changed() -> None:
            loop.call_soon_threadsafe(follow)

        store.on_change = changed
        if store.behind:  # changed between the list and now
            follow()
        if self.puller is not None and self.kube.options.lease is not None:
            kube = self.kube
            self.puller.polls = lambda: kube.leader  # one replica pulls; every one serves what it pushed

    async def _follow_pushes(self, store: ClusterStore) -> None:
        """Another replica changed what is live: compile it and serve it here too."""
        async with self._compile_lock:
            if not store.behind:
                return  # served already (this replica's own push, or an earlier call)
            live, version = store.remote
            missing = [f"{api} v{v}" for api, v in live.items() if store.record(api, v) is None]
            if missing:
                log.error("push store: the live map names versions not (yet) copied: %s", ", ".join(missing))
                return
            pushed = store.pushed(live)
            result = await self.compile_pushed(pushed)
            report = await self.serve_pushed(pushed, result) if result.ok else None
            if report is None or not report.ok:
                errors = report.errors if report is not None else result.errors
                log.error(
                    "push store: what another replica made live does not compile here; still serving the last "
                    "good configuration: %s",
                    "; ".join(store.readable(str(d)) for d in errors[:5]),
                )
                return
            store.adopt((live, version))
            log.info(
                "push store: serving what is live in the cluster: %s",
                ", ".join(f"{a} v{v}" for a, v in sorted(live.items())) or "nothing pushed",
            )

    async def compile_pushed(self, pushed: tuple[Pushed, ...]) -> CompiledConfig:
        """What the inputs compile to with ``pushed`` instead of the pushes served; nothing
        changes (a push's check, or its dry run). Call with ``compile_lock`` held."""
        result = await self.compiler.compile(fetched=self._fetched(), pushed=pushed)
        self.compiles += 1
        return result

    async def serve_pushed(self, pushed: tuple[Pushed, ...], result: CompiledConfig) -> CompileReport:
        """Serve ``result`` (``compile_pushed(pushed)``'s, good) and keep ``pushed`` for the
        compiles that follow. Call with ``compile_lock`` held."""
        report = self._serve(result, time.monotonic())
        if report.ok:
            self.compiler.pushed = self.validator.pushed = pushed
        return report

    @property
    def compile_lock(self) -> asyncio.Lock:
        return self._compile_lock

    async def _recompile(self, changed_at: float) -> bool:
        started = time.perf_counter()
        result: CompiledConfig = await self.compiler.compile(fetched=self._fetched())
        missing = [p for p in result.jwks_to_fetch if p.name not in self.jwks]
        feeds = [f for f in result.reputation_feeds if f.url and f.name not in self.feeds.states]
        if result.ok and (missing or feeds) and not self.cache.ready:
            # Before the first publish, fetch the keys: a first config without them would
            # refuse every token until they arrive. And the feeds: nor let listed clients in.
            fetched = [await self._fetch(p, rebuild=False) for p in missing]
            fetched += [await self._fetch_feed(f, rebuild=False) for f in feeds]
            if any(fetched):
                result = await self.compiler.compile(fetched=self._fetched())
        self.compiles += 1
        self.metrics.compile_seconds.observe(time.perf_counter() - started)
        return self._serve(result, changed_at).ok

    def _serve(self, result: CompiledConfig, changed_at: float) -> CompileReport:
        """Publish a compile's result, or report and log why it is not."""
        if result.files:
            self.files = result.files
            self.digests = result.digests
        report = CompileReport(
            ok=result.ok,
            at=time.time(),
            seconds=result.seconds,
            version=self.report.version,
            operations=result.operations,
            errors=result.errors,
            warnings=result.warnings,
            validation=self.report.validation,
            listeners=result.listeners or self.report.listeners,
            waf=result.waf,
        )
        if not result.ok:
            self._rejected(report, "the inputs have errors")
            self._observe(report, result)
            return report
        try:
            snapshot, sidecars = self._snapshots(result)
        except InconsistentSnapshot as exc:
            report.errors = [Diagnostic(str(exc), "")]
            report.ok = False
            self._rejected(report, "the compiled configuration is inconsistent")
            return report
        changed = self._publish(result, snapshot, sidecars, changed_at)
        report.version = snapshot.version
        self.report = report
        self.metrics.compiles.labels("ok").inc()
        self.metrics.last_compile_ok.set(1)
        self.metrics.config_operations.set(result.operations)
        if changed:
            self.metrics.published(DEFAULT_GROUP, snapshot.version, changed_at)
            log.info(
                "serving version %s: %d operations (compiled in %.2fs)",
                snapshot.version,
                result.operations,
                result.seconds,
            )
        else:
            log.info("compiled: no change to the served configuration (version %s)", snapshot.version)
        for d in result.warnings:
            log.warning("%s", d)
        if self.options.background_validation and not self.options.strict:
            self._start_validation()
        self._sync_fetchers(result.jwks_to_fetch)
        self._sync_pulls(result.spec_pulls)
        self._sync_feeds(result.reputation_feeds)
        self._recompile_at(result.reputation_expiry)
        self._observe(report, result)
        return report

    def _observe(self, report: CompileReport, result: CompiledConfig) -> None:
        for observer in self.compile_observers:
            try:
                observer(report, result)
            except Exception:  # an observer failing must not stop serving
                log.exception("a compile observer failed")

    # -- snapshots, and workload certificates ----------------------------------------------
    def _snapshots(self, result: CompiledConfig) -> tuple[Snapshot, dict[str, Snapshot]]:
        """The gateway's snapshot and each mesh sidecar group's, with the workload
        certificates due (issued, or renewed when half their lifetime is gone), and the
        endpoints of Kubernetes Services as the cluster has them now."""
        serialized = result.serialized
        if result.services and self.service_endpoints is not None:
            assignments = {c: self.service_endpoints(c, svc) for c, svc in result.services.items()}
            serialized = {**serialized, Resources.ENDPOINT: {**serialized.get(Resources.ENDPOINT, {}), **assignments}}
        sidecars: dict[str, Snapshot] = {}
        if result.mesh is not None:
            gateway_secrets, backend_secrets = self.identities.secrets(result.mesh, result.secret_groups[0])
            serialized = {**serialized, Resources.SECRET: {**serialized.get(Resources.SECRET, {}), **gateway_secrets}}
            for group, (own, references) in result.groups.items():
                sidecars[group] = build_snapshot(
                    {**own, Resources.SECRET: backend_secrets[group]},
                    references,
                    previous=self.cache.get(group),
                    secret_groups=[group],
                )
        snapshot = build_snapshot(
            serialized,
            result.references,
            result.sources,
            DetailTexts(result.details),
            previous=self.cache.get(DEFAULT_GROUP),
            secret_groups=result.secret_groups,
        )
        return snapshot, sidecars

    def _publish(
        self, result: CompiledConfig, snapshot: Snapshot, sidecars: dict[str, Snapshot], changed_at: float
    ) -> bool:
        for group, own in sidecars.items():
            if self.cache.set(own, group, changed_at):
                self.metrics.published(group, own.version, changed_at)
        for group in self.cache.groups():
            if group.startswith(OWN_GROUP_PREFIXES) and group not in sidecars:
                self.cache.remove(group)
        changed = self.cache.set(snapshot, DEFAULT_GROUP, changed_at)
        self.last_result = result
        self.certificates.clear()
        self.certificates.update((name, (file, not_after)) for name, file, not_after in result.certificates)
        if result.mesh is not None:
            self.certificates.update(self.identities.expiries())
        return changed

    async def republish(self, why: str) -> None:
        """Serve the last result again with what changed outside the compile (the endpoints
        of Kubernetes Services): no compile, only the changed resources are pushed."""
        async with self._compile_lock:
            result = self.last_result
            if result is None or not result.services:
                return
            snapshot, sidecars = self._snapshots(result)
            if self._publish(result, snapshot, sidecars, time.monotonic()):
                self.metrics.published(DEFAULT_GROUP, snapshot.version, time.monotonic())
                log.info("serving version %s: %s", snapshot.version, why)

    async def _renew_workloads(self) -> None:
        """Republish with renewed workload certificates when the first is due."""
        while True:
            due = self.identities.next_renewal()
            await asyncio.sleep(60.0 if due is None else min(max(due - time.time(), 0.05), 60.0))
            due = self.identities.next_renewal()
            if due is None or due > time.time() or self.last_result is None:
                continue
            async with self._compile_lock:
                result = self.last_result
                snapshot, sidecars = self._snapshots(result)
                self._publish(result, snapshot, sidecars, time.monotonic())
            log.info("workload certificates renewed: %s", ", ".join(sorted(self.identities.issued)))

    def _sync_pulls(self, pulls: tuple[ir.SpecPull, ...]) -> None:
        if self.puller is not None:
            self.puller.sync(pulls)
        elif pulls and not self._pulls_refused:
            self._pulls_refused = True
            log.error(
                "apis[].pull (%s) needs a store for the versions pulled: serve --push-store DIR; not polled",
                ", ".join(p.api for p in pulls),
            )

    # -- keys fetched by the control plane ------------------------------------------------
    def _sync_fetchers(self, providers: list[ir.JwtProvider]) -> None:
        wanted = {p.name: p for p in providers}
        for name, (provider, task) in list(self._fetchers.items()):
            if wanted.get(name) != provider:
                task.cancel()
                del self._fetchers[name]
        for name, provider in wanted.items():
            if name not in self._fetchers:
                self._fetchers[name] = (provider, asyncio.ensure_future(self._fetch_loop(provider)))

    async def _fetch_loop(self, provider: ir.JwtProvider) -> None:
        while True:
            await self._fetch(provider)
            await asyncio.sleep(provider.refresh_interval_ms / 1000)

    async def _fetch(self, provider: ir.JwtProvider, rebuild: bool = True) -> bool:
        """Fetch one provider's keys; True when they changed (then, with ``rebuild``, the
        configuration is rebuilt and pushed)."""
        state = self.jwks_state.setdefault(provider.name, {})
        try:
            text = await asyncio.to_thread(download_jwks, provider)
        except (OSError, ValueError) as exc:
            state.update(error=str(exc), failed_at=time.time())
            log.error("fetching the keys of %s failed (%s); the last keys stay in use", provider.name, exc)
            return False
        state.update(error=None, fetched_at=time.time(), keys=len(json.loads(text)["keys"]))
        if self.jwks.get(provider.name) == text:
            return False
        self.jwks[provider.name] = text
        if rebuild:
            log.info("new keys for %s: rebuilding the configuration", provider.name)
            await self.recompile(time.monotonic())
        return True

    # -- reputation feeds fetched by the control plane -------------------------------------
    def _sync_feeds(self, feeds: tuple[ir.ReputationFeed, ...]) -> None:
        wanted = {f.name: f for f in feeds if f.url is not None}
        for name, (feed, task) in list(self._feed_tasks.items()):
            if wanted.get(name) != feed:
                task.cancel()
                del self._feed_tasks[name]
        for name in list(self.feeds.states):
            if name not in wanted:  # gone from the policy: its copy and state too
                self.feeds.states.pop(name)
                self.feeds.texts.pop(reputation.FETCHED_PREFIX + name, None)
        for name, feed in wanted.items():
            if name not in self._feed_tasks:
                self._feed_tasks[name] = (feed, asyncio.ensure_future(self._feed_loop(feed)))

    async def _feed_loop(self, feed: ir.ReputationFeed) -> None:
        if feed.name in self.feeds.states:  # fetched before the first publish, or before a policy edit
            await asyncio.sleep(feed.refresh_ms / 1000)
        while True:
            await self._fetch_feed(feed)
            await asyncio.sleep(feed.refresh_ms / 1000)

    async def _fetch_feed(self, feed: ir.ReputationFeed, rebuild: bool = True) -> bool:
        """Fetch one feed; True when its copy changed (then, with ``rebuild``, the configuration
        is rebuilt and pushed). A failure keeps the last good copy in force."""
        changed = await asyncio.to_thread(self.feeds.fetch, feed)
        state = self.feeds.states[feed.name]
        if state.error is not None:
            self.metrics.feed_failures.labels(feed.name).inc()
            kept = "the last good copy stays in force" if state.fetched_at else "nothing applied yet"
            log.error("fetching reputation feed %s failed (%s); %s", feed.name, state.error, kept)
            return False
        self.metrics.feed_entries.labels(feed.name).set(state.entries or 0)
        self.metrics.feed_fetched.labels(feed.name).set(state.fetched_at or 0)
        if changed and rebuild:
            log.info("reputation feed %s changed (%d entries): rebuilding the configuration", feed.name, state.entries)
            await self.recompile(time.monotonic())
        return changed

    def _recompile_at(self, moment: float | None) -> None:
        """Compile again when the next feed in force expires (it is then left out)."""
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None
        if moment is None:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, moment - time.time()) + 0.5
        self._expiry_timer = loop.call_later(delay, lambda: asyncio.ensure_future(self.recompile(time.monotonic())))

    async def _refresh_feeds_now(self, _query: dict[str, list[str]]) -> tuple[int, str, bytes]:
        changed = {name: await self._fetch_feed(feed) for name, (feed, _task) in list(self._feed_tasks.items())}
        return json_answer(200, {"changed": changed, "feeds": self.sources().get("reputation", {})})

    async def _refresh_jwks_now(self, _query: dict[str, list[str]]) -> tuple[int, str, bytes]:
        changed = {name: await self._fetch(provider) for name, (provider, _task) in list(self._fetchers.items())}
        return json_answer(200, {"changed": changed, "providers": self.jwks_state})

    def _rejected(self, report: CompileReport, why: str) -> None:
        report.operations = self.report.operations  # of the version still served
        report.waf = self.report.waf
        self.report = report
        self.metrics.compiles.labels("error").inc()
        self.metrics.last_compile_ok.set(0)
        kept = f"; still serving version {report.version}" if report.version else "; nothing served yet"
        if report.version and all(d.code in HALF_RENEWED for d in report.errors):
            # A renewal writes the key and the certificate one after the other: between the two
            # the pair does not match. Said calmly, and as an error only if it stays so.
            log.warning(
                "a certificate and its key do not match (yet?)%s; a renewal writing one file after the other "
                "looks like this: waiting for the other file",
                kept,
            )
            task = asyncio.ensure_future(self._still_rejected(report, why, kept))
            self._tasks.append(task)
            task.add_done_callback(self._tasks.remove)
            return
        self._log_rejected(report, why, kept)

    async def _still_rejected(self, report: CompileReport, why: str, kept: str) -> None:
        await asyncio.sleep(self.options.max_delay + 2 * self.options.quiet_period + 1.0)
        if self.report is report:  # nothing compiled since: not a renewal in progress
            self._log_rejected(report, why, kept)

    @staticmethod
    def _log_rejected(report: CompileReport, why: str, kept: str) -> None:
        log.error("change rejected: %s (%d error(s))%s", why, len(report.errors), kept)
        for d in report.errors:
            log.error("%s", d)

    def _start_validation(self) -> None:
        if self._validation is not None and not self._validation.done():
            self._validation.cancel()  # only the latest inputs matter

        async def validate() -> None:
            result = await self.validator.compile(full_validation=True)
            self.report.validation = [d for d in result.diagnostics if d.code == "openapi-validation"]
            errors = [d for d in self.report.validation if d.severity.value == "error"]
            if errors:
                log.error("full validation found %d error(s) in the served inputs; see /compile", len(errors))

        self._validation = asyncio.ensure_future(validate())

    async def _watch(self) -> None:
        o = self.options
        seen = compiled = _fingerprint(self.files, o.paths)
        pending_since = 0.0  # when the oldest change not compiled yet was seen
        last_change = -math.inf
        at_once = False  # compile the pending change without waiting for quiet
        polled = 0.0  # how long the last look at the files took
        if self.digests and not await asyncio.to_thread(_same_content, self.digests):
            pending_since = last_change = time.monotonic()  # written after the first compile read it
            at_once = True
        while True:
            await asyncio.sleep(max(o.poll_interval, polled * POLL_COST_FACTOR))
            now = time.monotonic()
            current = await asyncio.to_thread(_fingerprint, self.files, o.paths)
            polled = time.monotonic() - now
            if current != seen:
                # Nobody waits for a quiet period after a lone edit; what follows it within
                # the quiet period is a burst, compiled once it is over.
                at_once = at_once or (not pending_since and now - last_change >= o.quiet_period)
                seen = current
                last_change = now
                pending_since = pending_since or now
            if not pending_since:
                continue
            if not (at_once or now - last_change >= o.quiet_period or now - pending_since >= o.max_delay):
                continue
            changed_at, pending_since, at_once = pending_since, 0.0, False
            resized = any(stamp[1] != compiled.get(f, stamp)[1] for f, stamp in current.items())
            if (
                not resized
                and set(current) == set(self.digests)
                and await asyncio.to_thread(_same_content, self.digests)
            ):
                log.info("files were written with the same content: nothing to compile")
                continue
            await self.recompile(changed_at)
            after = await asyncio.to_thread(_fingerprint, self.files, o.paths)
            if any(after.get(f, stamp) != stamp for f, stamp in seen.items()):
                pending_since = last_change = time.monotonic()  # written to while compiling
            seen = compiled = after


# Errors a certificate renewal in progress shows (key written, certificate not yet).
HALF_RENEWED = frozenset({"certificate-key-mismatch"})

# A large tree of inputs is looked at less often: polling takes at most 1/10 of the time.
POLL_COST_FACTOR = 10


def _same_content(digests: dict[str, str]) -> bool:
    """Every file still has the content the last compile read (a touch, a rewrite of the same bytes)."""
    import hashlib

    for path, digest in digests.items():
        try:
            if hashlib.sha256(Path(path).read_bytes()).hexdigest() != digest:
                return False
        except OSError:
            return False
    return True


def download_jwks(provider: ir.JwtProvider, limit: int = 1 << 20) -> str:
    """The provider's JWKS as canonical JSON (only keys for its algorithms); raises on failure."""
    import ssl
    import urllib.request

    from .auth import filter_jwks

    assert provider.jwks_uri is not None
    context = ssl.create_default_context(cafile=provider.ca_file)
    with urllib.request.urlopen(provider.jwks_uri, timeout=provider.timeout_ms / 1000, context=context) as resp:
        body = resp.read(limit + 1)
    if len(body) > limit:
        raise ValueError("the JWKS is larger than 1 MiB")
    data = json.loads(body)
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list) or not data["keys"]:
        raise ValueError("not a JWKS: no 'keys' list")
    return filter_jwks(json.dumps(data, sort_keys=True, separators=(",", ":")), provider.algorithms)


async def serve_forever(options: ServeOptions) -> None:
    plane = ControlPlane(options)
    await plane.start()
    try:
        await asyncio.Event().wait()
    finally:
        await plane.stop()
