"""The informer on its own, against the fake API server through the official client: a quiet
watch kept resumable by bookmarks, a relist that turns what happened unseen into events."""

from __future__ import annotations

from typing import Any

from kubernetes import client

from controlplane.kube.informer import Informer
from tests.kube_fake import FakeKube, kube_api
from tests.xds_harness import wait_for

__all__ = ["kube_api"]

GROUP, VERSION = "controlplane.dev", "v1"


def apispecs(kube: FakeKube, events: list[tuple[str, str]]) -> Informer:
    custom = client.CustomObjectsApi(kube.api_client())

    def list_call(**kwargs: Any) -> Any:
        return custom.list_cluster_custom_object(GROUP, VERSION, "apispecs", **kwargs)

    informer = Informer(
        "apispecs", list_call, lambda kind, obj: events.append((kind, obj.get("metadata", {}).get("name", "")))
    )
    informer.start()
    assert informer.synced.wait(10)
    return informer


def spec(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ApiSpec",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"openapi": "openapi: 3.0.3"},
    }


def test_bookmarks_keep_a_quiet_watch_resumable_after_compaction(kube_api: FakeKube) -> None:
    events: list[tuple[str, str]] = []
    informer = apispecs(kube_api, events)
    try:
        core = client.CoreV1Api(kube_api.api_client())
        for i in range(5):  # the server's version moves on; this watch sees no event of it
            core.create_namespaced_config_map("default", {"metadata": {"name": f"other-{i}"}})
        latest = int(kube_api.resource_version)
        wait_for(lambda: int(informer.resource_version or 0) >= latest, 10, "a bookmark carrying the version")
        kube_api.compact()  # history before now forgotten
        kube_api.drop_watches()
        client.CustomObjectsApi(kube_api.api_client()).create_namespaced_custom_object(
            GROUP, VERSION, "shop", "apispecs", spec("orders")
        )
        wait_for(lambda: ("ADDED", "orders") in events, 10, "the ApiSpec created after the drop")
        assert kube_api.count("list", r"/apispecs$") == 1  # resumed from the bookmark's version: no relist
    finally:
        informer.stop()


def test_a_relist_after_410_reports_what_changed_unseen(kube_api: FakeKube) -> None:
    custom = client.CustomObjectsApi(kube_api.api_client())
    for name in ("kept", "deleted"):
        custom.create_namespaced_custom_object(GROUP, VERSION, "shop", "apispecs", spec(name))
    events: list[tuple[str, str]] = []
    informer = apispecs(kube_api, events)
    try:
        kube_api.fail_next("watch", r"/apispecs$", 503)  # keep the watch down for a moment
        kube_api.drop_watches()
        custom.delete_namespaced_custom_object(GROUP, VERSION, "shop", "apispecs", "deleted")
        custom.create_namespaced_custom_object(GROUP, VERSION, "shop", "apispecs", spec("added"))
        kube_api.compact()
        wait_for(lambda: ("DELETED", "deleted") in events and ("ADDED", "added") in events, 15, "the relist's events")
        assert kube_api.count("list", r"/apispecs$") == 2
        assert ("DELETED", "kept") not in events
    finally:
        informer.stop()
