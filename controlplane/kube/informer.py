"""List and watch one kind of Kubernetes object, as a cluster's own controllers do.

A list gives the objects and a resource version; a watch from that version gives every
change after it, as a chunked stream of JSON lines. A watch ends (its ``timeoutSeconds``, a
dropped connection, an API server restart) and is resumed from the last version seen: no
change is lost or seen twice. Bookmarks move that version forward without a change, so that
a resumed watch does not start from a version the server has forgotten. When it has
(``410 Gone``, "too old resource version"), the kind is listed again and the differences
from what was known become events.

The official ``kubernetes`` client makes the requests (configuration, authentication, TLS);
the watch stream is read here line by line (its ``Watch`` helper retries a 410 itself, and
without deserializing each object cannot report one).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("controlplane.kube")

Obj = dict[str, Any]
# (event type "ADDED" | "MODIFIED" | "DELETED", the object); "SYNCED" with {} after each (re)list
Handler = Callable[[str, Obj], None]

WATCH_SECONDS = 240  # a watch is ended by the server after this long, then resumed
BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)


def key(obj: Obj) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


@dataclass
class Informer:
    """One kind (``list_call``: a ``kubernetes.client`` list method, bound to its group,
    plural and namespace as needed), its objects kept by (namespace, name)."""

    name: str
    list_call: Callable[..., Any]
    handler: Handler
    label_selector: str = ""
    objects: dict[tuple[str, str], Obj] = field(default_factory=dict)
    resource_version: str = ""
    synced: threading.Event = field(default_factory=threading.Event)
    lists: int = 0
    watches: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _response: Any = None
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"kube-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        response = self._response
        if response is not None:
            with contextlib.suppress(Exception):  # closing twice
                response.close()  # ends a watch blocked on the stream
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                if not self.resource_version:
                    self._list()
                self._watch()
                failures = 0
            except _Gone:
                log.info("%s: the resource version %s is too old; listing again", self.name, self.resource_version)
                self.resource_version = ""
            except Exception as exc:
                if self._stop.is_set():
                    return
                status = getattr(exc, "status", None)
                if status == 410:
                    self.resource_version = ""
                    continue
                delay = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
                failures += 1
                log.warning("%s: %s; again in %.1fs", self.name, _describe(exc), delay)
                self._stop.wait(delay)

    def _list(self) -> None:
        kwargs: dict[str, Any] = {"_preload_content": False, "_request_timeout": 60}
        if self.label_selector:
            kwargs["label_selector"] = self.label_selector
        response = self.list_call(**kwargs)
        try:
            data = json.loads(response.data)
        finally:
            response.release_conn()
        self.lists += 1
        fresh = {key(obj): obj for obj in data.get("items") or []}
        for k, obj in fresh.items():
            old = self.objects.get(k)
            if old is None:
                self.handler("ADDED", obj)
            elif _version(old) != _version(obj):
                self.handler("MODIFIED", obj)
        for k in set(self.objects) - set(fresh):
            self.handler("DELETED", self.objects[k])  # deleted while no watch saw it
        self.objects = fresh
        self.resource_version = str((data.get("metadata") or {}).get("resourceVersion") or "")
        self.handler("SYNCED", {})
        self.synced.set()

    def _watch(self) -> None:
        kwargs: dict[str, Any] = {
            "watch": True,
            "resource_version": self.resource_version,
            "allow_watch_bookmarks": True,
            "timeout_seconds": WATCH_SECONDS,
            "_preload_content": False,
            "_request_timeout": (10, WATCH_SECONDS + 30),
        }
        if self.label_selector:
            kwargs["label_selector"] = self.label_selector
        self._response = response = self.list_call(**kwargs)
        self.watches += 1
        try:
            for line in _lines(response):
                if self._stop.is_set():
                    return
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise _Gone()
                    raise RuntimeError(f"watch error {obj.get('code')}: {obj.get('message')}")
                version = str((obj.get("metadata") or {}).get("resourceVersion") or "")
                if kind == "BOOKMARK":
                    self.resource_version = version or self.resource_version
                    continue
                k = key(obj)
                if kind == "DELETED":
                    self.objects.pop(k, None)
                else:
                    self.objects[k] = obj
                self.resource_version = version or self.resource_version
                self.handler(str(kind), obj)
        finally:
            self._response = None
            with contextlib.suppress(Exception):  # a connection closed under it
                response.release_conn()


class _Gone(Exception):
    pass


def _version(obj: Obj) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion") or "")


def _lines(response: Any) -> Any:
    """The JSON lines of a watch stream, as they arrive (chunks split anywhere)."""
    pending = b""
    for chunk in response.stream(amt=None, decode_content=False):
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            if line.strip():
                yield line
    if pending.strip():
        yield pending


def _describe(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    if status is not None:
        return f"HTTP {status} {getattr(exc, 'reason', '')}".strip()
    return f"{type(exc).__name__}: {exc}"


def wait_synced(informers: list[Informer], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    return all(i.synced.wait(max(0.0, deadline - time.monotonic())) for i in informers)
