"""The cluster as a source: what teams apply reaches the Envoys; what is wrong is said on the
object that is wrong.

``serve --kubernetes`` lists and watches (``informer``):

- ``ApiSpec`` and ``GatewayPolicy`` custom resources (``controlplane.dev/v1``) and the
  ConfigMaps labelled ``controlplane.dev/config``: specs and policies, mirrored as files
  (``mirror``) that the compile reads with the files given on the command line;
- Secrets labelled ``controlplane.dev/tls``: certificates and keys for the policies;
- Services and EndpointSlices: the ready endpoints of upstreams named as a Service
  (``upstreams[].service``), sent over EDS as they change without a compile (``endpoints``).

The first compile waits until every kind has been listed once, so that a restarted control
plane never serves a partial cluster. After each compile, the leader (a ``Lease``; every
replica serves xDS) writes each custom resource's status: ``Accepted`` (its own errors,
located in it) and ``Programmed`` (served, or why not), with ``observedGeneration``; a
rejected change also gets a Kubernetes Event, so that ``kubectl get apispecs`` and
``kubectl describe`` show what is wrong.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from .. import ir
from .endpoints import ServiceEndpoints
from .informer import Informer, Obj, wait_synced
from .mirror import KINDS, Mirror

log = logging.getLogger("controlplane.kube")

GROUP, VERSION = "controlplane.dev", "v1"
CUSTOM = ("apispecs", "gatewaypolicies")
SYNC_TIMEOUT_S = 60
ENDPOINTS_QUIET_S = 0.05  # endpoint changes closer than this are pushed together
MAX_MESSAGE = 1000  # characters of a condition's message


@dataclass
class KubeOptions:
    kubeconfig: str | None = None  # None: the in-cluster service account
    namespaces: tuple[str, ...] = ()  # () : every namespace
    state_dir: Path | None = None  # where the objects are mirrored (default: a temporary directory)
    configmap_selector: str = "controlplane.dev/config"
    secret_selector: str = "controlplane.dev/tls"
    lease: str | None = None  # "namespace/name" of the leader Lease; None: always the leader
    identity: str = field(default_factory=socket.gethostname)
    lease_seconds: int = 15


class Plane(Protocol):
    service_endpoints: Callable[[str, ir.KubeService], bytes] | None
    compile_observers: list[Callable[[Any, Any], None]]

    async def republish(self, why: str) -> None: ...


def api_client(options: KubeOptions) -> Any:
    from kubernetes import client, config

    configuration = client.Configuration()
    if options.kubeconfig:
        config.load_kube_config(options.kubeconfig, client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return client.ApiClient(configuration)


class KubeSource:
    def __init__(self, options: KubeOptions):
        self.options = options
        state = options.state_dir or Path(tempfile.mkdtemp(prefix="controlplane-kube-"))
        self.mirror = Mirror(state)
        self.endpoints = ServiceEndpoints()
        self.client: Any = None
        self.informers: list[Informer] = []
        self.leader = options.lease is None
        self.statuses = StatusWriter(self)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._plane: Plane | None = None
        self._republish: asyncio.TimerHandle | None = None
        self._pushing: set[asyncio.Future[None]] = set()
        self._stop = threading.Event()
        self._lease_thread: threading.Thread | None = None

    @property
    def directory(self) -> Path:
        return self.mirror.root

    # -- life -------------------------------------------------------------------------------
    async def start(self, plane: Plane) -> None:
        """Watch the cluster; returns once every kind has been listed (so the first compile
        sees the whole cluster), or after ``SYNC_TIMEOUT_S`` with what was listed."""
        from kubernetes import client

        self._loop, self._plane = asyncio.get_running_loop(), plane
        self.client = await asyncio.to_thread(api_client, self.options)
        core, custom = client.CoreV1Api(self.client), client.CustomObjectsApi(self.client)
        discovery = client.DiscoveryV1Api(self.client)
        o = self.options
        for ns in o.namespaces or ("",):

            def calls(ns: str = ns) -> list[tuple[str, Callable[..., Any], str]]:
                out: list[tuple[str, Callable[..., Any], str]] = []
                for plural in CUSTOM:
                    if ns:
                        call = _bound(custom.list_namespaced_custom_object, GROUP, VERSION, ns, plural)
                    else:
                        call = _bound(custom.list_cluster_custom_object, GROUP, VERSION, plural)
                    out.append((plural, call, ""))
                for plural, namespaced, everywhere, selector in (
                    (
                        "configmaps",
                        core.list_namespaced_config_map,
                        core.list_config_map_for_all_namespaces,
                        o.configmap_selector,
                    ),
                    ("secrets", core.list_namespaced_secret, core.list_secret_for_all_namespaces, o.secret_selector),
                    ("services", core.list_namespaced_service, core.list_service_for_all_namespaces, ""),
                    (
                        "endpointslices",
                        discovery.list_namespaced_endpoint_slice,
                        discovery.list_endpoint_slice_for_all_namespaces,
                        "kubernetes.io/service-name",
                    ),
                ):
                    out.append((plural, _bound(namespaced, ns) if ns else everywhere, selector))
                return out

            for plural, call, selector in calls():
                name = f"{plural}@{ns}" if ns else plural
                self.informers.append(Informer(name, call, self._handler(plural), selector))
        for informer in self.informers:
            informer.start()
        if not await asyncio.to_thread(wait_synced, self.informers, SYNC_TIMEOUT_S):
            missing = [i.name for i in self.informers if not i.synced.is_set()]
            log.error("kubernetes: not listed after %ds: %s; serving what was", SYNC_TIMEOUT_S, ", ".join(missing))
        plane.service_endpoints = self.endpoints.assignment
        plane.compile_observers.append(self.statuses.observe)
        self.statuses.start()
        if o.lease is not None:
            self._lease_thread = threading.Thread(target=self._lead, name="kube-lease", daemon=True)
            self._lease_thread.start()
        log.info(
            "kubernetes: watching %s (%s), mirrored in %s",
            ", ".join(o.namespaces) or "every namespace",
            ", ".join(sorted({i.name.split("@")[0] for i in self.informers})),
            self.mirror.root,
        )

    def state(self) -> dict[str, Any]:
        """For ``/status``: who writes statuses, and how each kind is followed."""
        return {
            "leader": self.leader,
            "lease": self.options.lease,
            "identity": self.options.identity,
            "kinds": [
                {
                    "name": i.name,
                    "listed": i.synced.is_set(),
                    "objects": len(i.objects),
                    "lists": i.lists,
                    "watches": i.watches,
                    "resource_version": i.resource_version,
                }
                for i in self.informers
            ],
            "status_writes": self.statuses.writes,
            "events": self.statuses.events,
        }

    def stop(self) -> None:
        self._stop.set()
        for informer in self.informers:
            informer.stop()
        self.statuses.stop()

    def _handler(self, plural: str) -> Callable[[str, Obj], None]:
        generations: dict[tuple[str, str], Any] = {}  # of custom resources: their spec's version

        def handle(event: str, obj: Obj) -> None:
            if event == "SYNCED":
                return
            if plural in KINDS:
                meta = obj.get("metadata") or {}
                k = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
                if event == "DELETED":
                    generations.pop(k, None)
                    self.mirror.delete(plural, obj)
                elif plural not in CUSTOM or generations.get(k) != meta.get("generation") or "generation" not in meta:
                    # (a custom resource whose generation is unchanged only had its status written)
                    generations[k] = meta.get("generation")
                    self.mirror.put(plural, obj)
                if plural in CUSTOM:
                    self.statuses.track(plural, event, obj)
            elif (plural == "services" and self.endpoints.service(event, obj)) or (
                plural == "endpointslices" and self.endpoints.slice(event, obj)
            ):
                if self._loop is not None:
                    self._loop.call_soon_threadsafe(self._endpoints_changed)

        return handle

    def _endpoints_changed(self) -> None:
        if self._republish is None and self._plane is not None and self._loop is not None:
            plane = self._plane

            def go() -> None:
                self._republish = None
                task = asyncio.ensure_future(plane.republish("endpoints of Kubernetes Services changed"))
                self._pushing.add(task)
                task.add_done_callback(self._pushing.discard)

            self._republish = self._loop.call_later(ENDPOINTS_QUIET_S, go)

    # -- leader -----------------------------------------------------------------------------
    def _lead(self) -> None:
        from kubernetes import client

        assert self.options.lease is not None
        ns, _, name = self.options.lease.partition("/")
        leases = client.CoordinationV1Api(self.client)
        while not self._stop.is_set():
            try:
                leading = _hold_lease(leases, ns, name, self.options.identity, self.options.lease_seconds)
            except Exception as exc:
                log.warning("kubernetes: the lease %s: %s", self.options.lease, exc)
                leading = False
            if leading != self.leader:
                log.info("kubernetes: %s the leader (lease %s)", "now" if leading else "no longer", self.options.lease)
                self.leader = leading
                if leading:
                    self.statuses.resend()
            self._stop.wait(max(1.0, self.options.lease_seconds / 3))


def _bound(call: Callable[..., Any], *args: Any) -> Callable[..., Any]:
    def bound(**kwargs: Any) -> Any:
        return call(*args, **kwargs)

    return bound


def _micro_time(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(text: str | None) -> float:
    if not text:
        return 0.0
    try:
        return datetime.strptime(text.replace("Z", "+0000"), "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
    except ValueError:
        try:
            return datetime.strptime(text.replace("Z", "+0000"), "%Y-%m-%dT%H:%M:%S%z").timestamp()
        except ValueError:
            return 0.0


def _hold_lease(leases: Any, ns: str, name: str, me: str, seconds: int) -> bool:
    """Take or renew the Lease; True when this replica holds it. Optimistic concurrency: of
    two replicas writing at once, the API server refuses the second (409)."""
    from kubernetes.client.exceptions import ApiException

    now = time.time()
    try:
        response = leases.read_namespaced_lease(name, ns, _preload_content=False)
        lease = json.loads(response.data)
    except ApiException as exc:
        if exc.status != 404:
            raise
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "holderIdentity": me,
                "leaseDurationSeconds": seconds,
                "acquireTime": _micro_time(now),
                "renewTime": _micro_time(now),
                "leaseTransitions": 0,
            },
        }
        try:
            leases.create_namespaced_lease(ns, body, _preload_content=False)
        except ApiException as exc2:
            if exc2.status == 409:
                return False
            raise
        return True
    spec = lease.get("spec") or {}
    holder = spec.get("holderIdentity")
    expired = _parse_time(spec.get("renewTime")) + float(spec.get("leaseDurationSeconds") or seconds) < now
    if holder != me and not expired:
        return False
    spec = {**spec, "holderIdentity": me, "leaseDurationSeconds": seconds, "renewTime": _micro_time(now)}
    if holder != me:
        spec["acquireTime"] = _micro_time(now)
        spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
    lease["spec"] = spec
    try:
        leases.replace_namespaced_lease(name, ns, lease, _preload_content=False)
    except ApiException as exc:
        if exc.status == 409:
            return False
        raise
    return True


class StatusWriter:
    """Conditions on each custom resource after each compile, and Events for rejections;
    written by the leader only, in a thread of its own, and only when they change."""

    def __init__(self, source: KubeSource):
        self.source = source
        self._objects: dict[tuple[str, str, str], Obj] = {}  # (plural, ns, name) → the object
        self._written: dict[tuple[str, str, str], Any] = {}  # what its status says now
        self._since: dict[tuple[tuple[str, str, str], str], tuple[str, str]] = {}  # condition → (status, since)
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[Any, Any] | None] = queue.Queue()
        self._last: tuple[Any, Any] | None = None
        self._thread: threading.Thread | None = None
        self.writes = 0
        self.events = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="kube-status", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)

    def track(self, plural: str, event: str, obj: Obj) -> None:
        meta = obj.get("metadata") or {}
        k = (plural, str(meta.get("namespace") or "default"), str(meta.get("name") or ""))
        with self._lock:
            if event == "DELETED":
                self._objects.pop(k, None)
                self._written.pop(k, None)
                for t in ("Accepted", "Programmed"):
                    self._since.pop((k, t), None)
            else:
                self._objects[k] = obj

    def observe(self, report: Any, _result: Any) -> None:
        """A compile's report (called on the event loop): statuses are written off it."""
        self._queue.put((report, None))

    def resend(self) -> None:
        """A new leader writes every status again (the former one may have died mid-way)."""
        with self._lock:
            self._written.clear()
        if self._last is not None:
            self._queue.put(self._last)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            while not self._queue.empty():  # only the latest compile matters
                newer = self._queue.get()
                if newer is None:
                    return
                item = newer
            self._last = item
            if self.source.leader:
                try:
                    self._write(item[0])
                except Exception:
                    log.exception("kubernetes: writing statuses failed")

    def _write(self, report: Any) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        custom = client.CustomObjectsApi(self.source.client)
        core = client.CoreV1Api(self.source.client)
        by_object: dict[tuple[str, str, str], list[str]] = {}
        for d in report.errors:
            owner = self.source.mirror.owner(d.file) if d.file else None
            if owner is not None:
                by_object.setdefault(owner, []).append(self._readable(str(d)))
        elsewhere = [d for d in report.errors if not d.file or self.source.mirror.owner(d.file) is None]
        # who has errors, said the same way until that changes (not the errors themselves)
        named = sorted(f"{KINDS[p]} {n}/{o}" for p, n, o in by_object)
        culprits = ", ".join(named[:5]) + (f" and {len(named) - 5} more" if len(named) > 5 else "")
        if elsewhere:
            culprits += ("; " if culprits else "") + f"{len(elsewhere)} error(s) in files given to the control plane"
        with self._lock:
            objects = dict(self._objects)
        for k, obj in objects.items():
            plural, ns, name = k
            errors = by_object.get(k, [])
            generation = (obj.get("metadata") or {}).get("generation")
            if errors:
                accepted = ("False", "Invalid", "; ".join(errors))
                programmed = ("False", "Invalid", "not served: this object has errors; the last good configuration is")
            elif report.ok:
                # not the served version: it changes with every compile, and 1,000 objects
                # rewritten per compile cost the API server and this process dearly
                accepted = ("True", "Accepted", "no errors")
                programmed = ("True", "Programmed", "served")
            else:
                accepted = ("True", "Accepted", "no errors")
                programmed = ("False", "Pending", f"not served: other inputs have errors ({culprits})")
            wanted = (generation, accepted, programmed)
            if self._written.get(k) == wanted:
                continue
            now = _micro_time(time.time()).split(".")[0] + "Z"
            conditions = []
            for t, (state, reason, message) in (("Accepted", accepted), ("Programmed", programmed)):
                since = self._since.get((k, t))
                if since is None or since[0] != state:  # a transition: its time is now
                    since = self._since[(k, t)] = (state, now)
                conditions.append(
                    {
                        "type": t,
                        "status": state,
                        "reason": reason,
                        "message": message[:MAX_MESSAGE],
                        "lastTransitionTime": since[1],
                        "observedGeneration": generation,
                    }
                )
            body = {"status": {"observedGeneration": generation, "conditions": conditions}}
            try:
                custom.patch_namespaced_custom_object_status(GROUP, VERSION, ns, plural, name, body)
                self.writes += 1
            except ApiException as exc:
                if exc.status != 404:  # deleted meanwhile: nothing to say
                    log.warning("kubernetes: status of %s %s/%s: HTTP %s", KINDS[plural], ns, name, exc.status)
                continue
            previous = self._written.get(k)
            self._written[k] = wanted
            if errors and (previous is None or previous[1] != accepted):
                self._event(core, obj, plural, "Rejected", accepted[2])

    def _event(self, core: Any, obj: Obj, plural: str, reason: str, message: str) -> None:
        meta = obj.get("metadata") or {}
        now = _micro_time(time.time()).split(".")[0] + "Z"
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name')}.", "namespace": meta.get("namespace") or "default"},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KINDS[plural],
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": reason,
            "message": message[:MAX_MESSAGE],
            "type": "Warning",
            "source": {"component": "controlplane"},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            core.create_namespaced_event(str(meta.get("namespace") or "default"), body)
            self.events += 1
        except Exception as exc:
            log.warning("kubernetes: event for %s/%s: %s", meta.get("namespace"), meta.get("name"), exc)

    def _readable(self, text: str) -> str:
        """Findings name the object, not the mirror's file: ``ApiSpec shop/orders:12 (#/paths/…)``."""
        root = str(self.source.mirror.root)
        for prefix in {root, os.path.relpath(root)}:
            for plural, kind in KINDS.items():
                text = _rename(text, prefix, plural, kind)
        return text


def _rename(text: str, prefix: str, plural: str, kind: str) -> str:
    import re

    pattern = re.escape(prefix) + r"/([a-z0-9.-]+)/" + plural + r"/([a-z0-9.-]+?)(?:\.yaml)?(?=[:/ #]|$)"
    return re.sub(pattern, lambda m: f"{kind} {m[1]}/{m[2]}", text)
