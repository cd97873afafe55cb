"""Pushed versions kept in the cluster: every control-plane replica serves what was pushed to any.

With ``serve --kubernetes --push-configmaps NAMESPACE/NAME`` the versions and what is live
are ConfigMaps of NAMESPACE, which every replica lists and watches::

    NAME-live                    live.json: {api: version}: what every replica serves
    NAME-<digest of api>-<n>     version n of an API: record.json (who, when, state) and
                                 files.json.gz (binaryData: {file name: text}, gzipped)

each labelled ``controlplane.dev/push-store: NAME`` (and ``controlplane.dev/push-api: API``).
The store's directory is this replica's copy of them, in ``PushStore``'s layout, so that the
compile reads pushed files as it reads any.

**One live map, changed by compare-and-swap.** A replica pushes against what it serves; it
writes ``NAME-live`` with the resourceVersion of the copy it serves, so that a push compiled
against a map another replica has changed since is refused (409: push again), never merged
unchecked. A rollback after a NACK changes only its API's entry, over whatever else changed.
The other replicas see the new map through their watch, compile it and serve it
(``on_change``): a push to one replica reaches the Envoys of all.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import logging
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..kube.informer import Informer, Obj, wait_synced
from .store import PushRefused, PushStore, Version, check_api_name, check_files

log = logging.getLogger("controlplane.push")
audit_log = logging.getLogger("controlplane.push.audit")

STORE_LABEL = "controlplane.dev/push-store"
API_LABEL = "controlplane.dev/push-api"
# A ConfigMap holds at most 1 MiB; base64 makes 3 bytes 4, and the record needs room.
MAX_STORED = 700 << 10
SYNC_TIMEOUT_S = 60
CREATE_ATTEMPTS = 20


MARKER = ".cluster-copy"  # in the copy's directory: what may be emptied at start


def is_copy(root: Path) -> bool:
    """An empty or missing directory, or one this store made."""
    return not root.exists() or not any(root.iterdir()) or (root / MARKER).is_file()


def configmap_name(store: str, api: str, version: int) -> str:
    """API names may hold '_' and '.', which object names do not: the API goes by a digest."""
    return f"{store}-{hashlib.sha256(api.encode()).hexdigest()[:12]}-{version}"


def pack(files: dict[str, str]) -> bytes:
    return gzip.compress(json.dumps(files, sort_keys=True).encode(), mtime=0)


class ClusterStore(PushStore):
    def __init__(self, root: Path, namespace: str, name: str):
        if not is_copy(root):
            raise ValueError(
                f"{root} holds files that are not a copy of a push store in the cluster (a directory store?): "
                "give an empty or new directory for the copy"
            )
        # the cluster is the truth: nothing of a copy left by an earlier run is read
        for stale in ("apis", "staging"):
            shutil.rmtree(root / stale, ignore_errors=True)
        (root / "live.json").unlink(missing_ok=True)
        root.mkdir(parents=True, exist_ok=True)
        (root / MARKER).write_text(f"{namespace}/{name}\n")
        super().__init__(root)
        self.namespace, self.name = namespace, name
        self.live_object = f"{name}-live"
        self._core: Any = None
        self._informer: Informer | None = None
        self._live_version = ""  # resourceVersion of NAME-live as this replica serves it ("": none yet)
        self.remote: tuple[dict[str, int], str] = ({}, "")  # NAME-live as last seen, and its version
        self.on_change: Callable[[], None] = lambda: None  # called from the watch's thread
        self._mirror_lock = threading.Lock()
        self._packed: dict[Path, str] = {}  # a staged push's files as stored (base64 of gzip), from stage to keep

    @property
    def where(self) -> str:
        return f"configmaps {self.namespace}/{self.name}-* (copy in {self.root})"

    # -- following the cluster --------------------------------------------------------------
    def connect(self, api_client: Any) -> bool:
        """List and watch the store's ConfigMaps (blocking until listed, at most
        ``SYNC_TIMEOUT_S``), then serve what is live there."""
        from kubernetes import client

        self._core = client.CoreV1Api(api_client)
        core, ns = self._core, self.namespace

        def call(**kwargs: Any) -> Any:
            return core.list_namespaced_config_map(ns, **kwargs)

        self._informer = Informer(f"push-store@{ns}", call, self._handle, f"{STORE_LABEL}={self.name}")
        self._informer.start()
        synced = wait_synced([self._informer], SYNC_TIMEOUT_S)
        self.adopt()
        return synced

    def close(self) -> None:
        if self._informer is not None:
            self._informer.stop()

    def _handle(self, event: str, obj: Obj) -> None:
        if event == "SYNCED":
            return
        meta = obj.get("metadata") or {}
        data = obj.get("data") or {}
        if meta.get("name") == self.live_object:
            live = {} if event == "DELETED" else _live_of(data.get("live.json"))
            if live is None:
                log.error(
                    "push store: ConfigMap %s/%s does not hold {api: version} in live.json; ignored, what is "
                    "served stays",
                    self.namespace,
                    self.live_object,
                )
                return
            self.remote = (live, str(meta.get("resourceVersion") or ""))
            self.on_change()
            return
        if event == "DELETED":
            return  # a version removed by hand: its copy stays readable
        try:
            record = Version(**json.loads(data["record.json"]))
            files = json.loads(gzip.decompress(base64.b64decode((obj.get("binaryData") or {})["files.json.gz"])))
            # whoever wrote it, nothing is copied outside the API's directory
            check_api_name(record.api)
            if not isinstance(record.version, int) or isinstance(record.version, bool) or record.version < 1:
                raise ValueError(f"version {record.version!r} is not a positive integer")
            if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
                raise ValueError("files.json.gz is not {file name: text}")
            check_files(files, record.spec, record.policy)
        except (KeyError, ValueError, TypeError, OSError, PushRefused) as exc:
            log.error("push store: ConfigMap %s/%s is not a version: %s", self.namespace, meta.get("name"), exc)
            return
        try:
            with self._mirror_lock:
                self._copy(record, files)
        except (PushRefused, OSError) as exc:  # never out of the watch: it would list again and again
            log.error("push store: version %d of %s not copied: %s", record.version, record.api, exc)

    def _copy(self, record: Version, files: dict[str, str]) -> None:
        """The version in the local copy: its files once (they never change), its record each time."""
        directory = self._api_directory(record.api) / str(record.version)
        if not directory.is_dir():
            staged = super().stage(record.api, files)  # (stored already: no size check here)
            directory.parent.mkdir(exist_ok=True)
            staged.rename(directory)
        super().save(record)

    def adopt(self, remote: tuple[dict[str, int], str] | None = None) -> bool:
        """``remote`` (default: the live map last seen in the cluster) is what this replica
        serves; pushes compare against it from here on. False when it was already."""
        live, version = self.remote if remote is None else remote
        if version == self._live_version and live == self.live:
            return False
        super().set_live(live)
        self._live_version = version
        return True

    @property
    def behind(self) -> bool:
        """The cluster's live map differs from the one served here."""
        return self.remote[1] != self._live_version

    # -- writing ----------------------------------------------------------------------------
    def stage(self, api: str, files: dict[str, str]) -> Path:
        packed = base64.b64encode(pack(files)).decode()
        if len(packed) > MAX_STORED * 4 // 3:
            raise PushRefused(
                f"the files take more than {MAX_STORED >> 10} KiB gzipped: more than a ConfigMap of "
                "the push store holds",
                413,
            )
        staged = super().stage(api, files)
        self._packed[staged] = packed
        return staged

    def discard(self, staged: Path) -> None:
        self._packed.pop(staged, None)
        super().discard(staged)

    def keep(self, staged: Path, record: Version) -> Version:
        """The next version number that no replica has taken: creating its ConfigMap decides."""
        from kubernetes.client.exceptions import ApiException

        packed = self._packed.pop(staged)
        record.version = max((v.version for v in self.versions(record.api)), default=0) + 1
        for _ in range(CREATE_ATTEMPTS):
            try:
                self._core.create_namespaced_config_map(self.namespace, self._version_object(record, packed))
                break
            except ApiException as exc:
                if exc.status != 409:
                    refused = f"the push store (Kubernetes) refused version {record.version}: {exc.reason}"
                    raise PushRefused(refused, 503) from None
                record.version += 1  # another replica took this number
        else:
            raise PushRefused("the push store (Kubernetes): no free version number; push again", 503)
        with self._mirror_lock:
            directory = self._api_directory(record.api)
            directory.mkdir(exist_ok=True)
            if not (directory / str(record.version)).exists():  # the watch may have copied it already
                staged.rename(directory / str(record.version))
            super().save(record)
        return record

    def _version_object(self, record: Version, packed: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": configmap_name(self.name, record.api, record.version),
                "labels": {STORE_LABEL: self.name, API_LABEL: record.api},
            },
            "data": {"record.json": json.dumps(record.as_json(), indent=2)},
            "binaryData": {"files.json.gz": packed},
        }

    def save(self, record: Version) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self._core.patch_namespaced_config_map(
                configmap_name(self.name, record.api, record.version),
                self.namespace,
                {"data": {"record.json": json.dumps(record.as_json(), indent=2)}},
            )
        except ApiException as exc:
            log.error("push store: the record of %s version %d not written: %s", record.api, record.version, exc.reason)
        with self._mirror_lock:
            super().save(record)

    def set_live(self, live: dict[str, int], only: str | None = None) -> None:
        """Write the live map if nobody changed it since the one served here; with ``only``,
        change that API's entry over whatever the others are now."""
        from kubernetes.client.exceptions import ApiException

        for _ in range(CREATE_ATTEMPTS):
            base = self._live_version
            if only is not None:
                current, base = self._live_in_cluster()
                live = {k: v for k, v in current.items() if k != only} | ({only: live[only]} if only in live else {})
            body: dict[str, Any] = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": self.live_object, "labels": {STORE_LABEL: self.name}},
                "data": {"live.json": json.dumps(dict(sorted(live.items())), indent=2)},
            }
            try:
                if base:
                    body["metadata"]["resourceVersion"] = base
                    written = self._core.replace_namespaced_config_map(self.live_object, self.namespace, body)
                else:
                    written = self._core.create_namespaced_config_map(self.namespace, body)
            except ApiException as exc:
                if exc.status == 409 and only is not None:
                    continue  # changed meanwhile: read it again, change the one entry again
                if exc.status == 409:
                    raise PushRefused(
                        "another control-plane replica changed what is live while this push compiled; "
                        "nothing changed: push again",
                        409,
                    ) from None
                raise PushRefused(f"the push store (Kubernetes) refused the live map: {exc.reason}", 503) from None
            version = str(written.metadata.resource_version)
            if _older(self.remote[1], version):  # (the watch may have brought a later one already)
                self.remote = (dict(live), version)
            super().set_live(live)
            self._live_version = version
            return
        raise PushRefused("the push store (Kubernetes): the live map kept changing; try again", 503)

    def _live_in_cluster(self) -> tuple[dict[str, int], str]:
        from kubernetes.client.exceptions import ApiException

        try:
            obj = self._core.read_namespaced_config_map(self.live_object, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return {}, ""
            raise
        live = _live_of((obj.data or {}).get("live.json"))
        if live is None:
            raise PushRefused(f"ConfigMap {self.namespace}/{self.live_object} does not hold {{api: version}}", 503)
        return live, str(obj.metadata.resource_version)

    def audit(self, **entry: Any) -> None:
        """In the copy's audit.log, and in the replica's log (which the cluster keeps)."""
        super().audit(**entry)
        audit_log.info("%s", json.dumps(entry, sort_keys=True))


def _older(seen: str, written: str) -> bool:
    """Whether ``seen`` comes before ``written`` (resource versions are opaque, but the API
    server's are increasing integers; anything else: take the one just written)."""
    return not (seen.isdigit() and written.isdigit()) or int(seen) < int(written)


def _live_of(text: Any) -> dict[str, int] | None:
    """``{api: version}``, or None when it is something else (then ignored: what is served stays)."""
    try:
        data = json.loads(text)
        live = {str(k): int(v) for k, v in data.items() if not isinstance(v, bool)}
        if len(live) != len(data):
            return None
        for api in live:
            check_api_name(api)
        return live
    except (ValueError, TypeError, AttributeError, PushRefused):
        return None
