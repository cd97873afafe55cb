"""The fake Kubernetes API server (tests/kube_fake.py) as the official `kubernetes` client sees it.

What the client does with a 410 (kubernetes 37, kubernetes/watch/watch.py): `Watch.stream` turns an
ERROR event into `ApiException(status=410, reason="Expired: too old resource version: …")`; without
`timeout_seconds` it first retries the watch once, silently, from the same resourceVersion (a second
watch request), and raises only if that one expires too. With `timeout_seconds` it raises at once.
A stream that ends cleanly is re-watched silently from the last resourceVersion seen (including a
bookmark's) unless `timeout_seconds` was given; an abruptly cut stream raises urllib3's
ProtocolError out of the generator, and the caller resumes from `Watch.resource_version`.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from tests.kube_fake import FakeKube, kube_api

__all__ = ["kube_api"]  # the fixture, imported for pytest

GROUP, VERSION = "controlplane.dev", "v1"


def _cm(name: str, labels: dict[str, str] | None = None, **data: str) -> client.V1ConfigMap:
    return client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name, labels=labels), data=data)


def _spec(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ApiSpec", "metadata": {"name": name}, "spec": spec}


def _status(e: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(e.body)
    assert body["kind"] == "Status" and body["status"] == "Failure" and body["code"] == e.status
    return body


@pytest.fixture
def core(kube_api: FakeKube) -> client.CoreV1Api:
    return client.CoreV1Api(kube_api.api_client())


@pytest.fixture
def custom(kube_api: FakeKube) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(kube_api.api_client())


def test_configmap_crud(core: client.CoreV1Api, kube_api: FakeKube) -> None:
    created = core.create_namespaced_config_map("default", _cm("a", k="1"))
    assert created.metadata.uid and created.metadata.creation_timestamp and created.kind == "ConfigMap"
    rv1 = int(created.metadata.resource_version)
    with pytest.raises(ApiException) as dup:
        core.create_namespaced_config_map("default", _cm("a"))
    assert dup.value.status == 409 and _status(dup.value)["reason"] == "AlreadyExists"

    assert core.read_namespaced_config_map("a", "default").data == {"k": "1"}
    created.data = {"k": "2"}
    replaced = core.replace_namespaced_config_map("a", "default", created)
    assert int(replaced.metadata.resource_version) > rv1 and replaced.metadata.uid == created.metadata.uid
    patched = core.patch_namespaced_config_map("a", "default", {"data": {"j": "3"}})  # strategic merge
    assert patched.data == {"k": "2", "j": "3"}
    core.create_namespaced_config_map("other", _cm("b"))

    listed = core.list_config_map_for_all_namespaces()
    assert [(i.metadata.namespace, i.metadata.name) for i in listed.items] == [("default", "a"), ("other", "b")]
    assert listed.metadata.resource_version == kube_api.resource_version
    assert [i.metadata.name for i in core.list_namespaced_config_map("other").items] == ["b"]

    deleted = core.delete_namespaced_config_map("a", "default")
    assert deleted is not None
    with pytest.raises(ApiException) as gone:
        core.read_namespaced_config_map("a", "default")
    assert gone.value.status == 404 and _status(gone.value)["reason"] == "NotFound"
    assert [o["metadata"]["name"] for o in kube_api.objects("configmaps")] == ["b"]
    assert kube_api.count("create") == 3 and kube_api.count("list", r"^/api/v1/configmaps$") == 1


def test_label_and_field_selectors(core: client.CoreV1Api) -> None:
    for name, labels in [("a", {"app": "x", "tier": "web"}), ("b", {"app": "y"}), ("c", {"app": "z"}), ("d", {})]:
        core.create_namespaced_config_map("default", _cm(name, labels))

    def names(label: str = "", field: str = "") -> list[str]:
        found = core.list_namespaced_config_map("default", label_selector=label, field_selector=field)
        return [i.metadata.name for i in found.items]

    assert names("app=x") == names("app==x") == ["a"]
    assert names("app!=x") == ["b", "c", "d"]  # as the real server: != also selects objects without the label
    assert names("app in (x, y)") == ["a", "b"]
    assert names("app notin (x,y)") == ["c", "d"]
    assert names("tier") == ["a"]
    assert names("!tier") == ["b", "c", "d"]
    assert names("app in (x,y),!tier") == ["b"]
    assert names(field="metadata.name=c") == ["c"]
    assert names("app", "metadata.name!=a") == ["b", "c"]
    with pytest.raises(ApiException) as bad:
        names("app in x")
    assert bad.value.status == 400


def test_stale_replace_is_a_conflict(core: client.CoreV1Api) -> None:
    first = core.create_namespaced_config_map("default", _cm("a", k="1"))
    core.patch_namespaced_config_map("a", "default", {"data": {"k": "2"}})
    first.data = {"k": "3"}
    with pytest.raises(ApiException) as conflict:
        core.replace_namespaced_config_map("a", "default", first)
    assert conflict.value.status == 409 and _status(conflict.value)["reason"] == "Conflict"
    assert core.read_namespaced_config_map("a", "default").data == {"k": "2"}


def test_custom_objects_and_the_status_subresource(custom: client.CustomObjectsApi, kube_api: FakeKube) -> None:
    created = custom.create_namespaced_custom_object(
        GROUP, VERSION, "team", "apispecs", {**_spec("orders", file="a.yaml"), "status": {"phase": "forged"}}
    )
    assert created["metadata"]["generation"] == 1 and "status" not in created  # status is /status's alone
    rv = created["metadata"]["resourceVersion"]

    with_status = custom.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        "team",
        "apispecs",
        "orders",
        {"status": {"conditions": [{"type": "Accepted", "status": "True"}]}, "spec": {"file": "ignored"}},
    )
    assert with_status["spec"] == {"file": "a.yaml"} and with_status["metadata"]["generation"] == 1
    assert with_status["status"]["conditions"][0]["type"] == "Accepted"
    assert int(with_status["metadata"]["resourceVersion"]) > int(rv)

    with_status["spec"] = {"file": "b.yaml"}
    with_status["status"] = {"conditions": []}  # ignored: the main resource never writes status
    replaced = custom.replace_namespaced_custom_object(GROUP, VERSION, "team", "apispecs", "orders", with_status)
    assert replaced["metadata"]["generation"] == 2 and replaced["status"]["conditions"][0]["type"] == "Accepted"

    patched = custom.patch_namespaced_custom_object(  # merge patch, the client's default for custom objects
        GROUP, VERSION, "team", "apispecs", "orders", {"metadata": {"labels": {"team": "a"}}}
    )
    assert patched["metadata"]["generation"] == 2 and patched["metadata"]["labels"] == {"team": "a"}
    json_patched = custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        "team",
        "apispecs",
        "orders",
        [{"op": "replace", "path": "/spec/file", "value": "c.yaml"}],
        _content_type="application/json-patch+json",
    )
    assert json_patched["spec"] == {"file": "c.yaml"} and json_patched["metadata"]["generation"] == 3

    same = custom.replace_namespaced_custom_object(GROUP, VERSION, "team", "apispecs", "orders", json_patched)
    assert same["metadata"]["resourceVersion"] == json_patched["metadata"]["resourceVersion"]  # a no-op write

    custom.create_namespaced_custom_object(
        GROUP, VERSION, "ops", "gatewaypolicies", {"metadata": {"name": "p"}, "spec": {"any": ["thing"]}}
    )
    everywhere = custom.list_cluster_custom_object(GROUP, VERSION, "gatewaypolicies")
    assert [(i["kind"], i["metadata"]["namespace"]) for i in everywhere["items"]] == [("GatewayPolicy", "ops")]
    custom.delete_namespaced_custom_object(GROUP, VERSION, "team", "apispecs", "orders")
    assert kube_api.objects("apispecs") == []


def test_watch_from_a_resource_version_sees_exactly_the_later_events(core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map("default", _cm("before"))
    rv = core.list_namespaced_config_map("default").metadata.resource_version
    core.create_namespaced_config_map("default", _cm("a"))
    core.patch_namespaced_config_map("a", "default", {"data": {"k": "v"}})
    core.create_namespaced_config_map("default", _cm("b"))
    core.delete_namespaced_config_map("a", "default")
    core.create_namespaced_config_map("other", _cm("elsewhere"))
    core.create_namespaced_config_map("default", _cm("last"))  # the positive signal that nothing else follows

    w = watch.Watch()
    seen = []
    for event in w.stream(core.list_namespaced_config_map, "default", resource_version=rv, timeout_seconds=10):
        seen.append((event["type"], event["object"].metadata.name, int(event["object"].metadata.resource_version)))
        if seen[-1][1] == "last":
            w.stop()
    assert [s[:2] for s in seen] == [
        ("ADDED", "a"),
        ("MODIFIED", "a"),
        ("ADDED", "b"),
        ("DELETED", "a"),
        ("ADDED", "last"),
    ]
    versions = [s[2] for s in seen]
    assert versions == sorted(versions) and versions[0] > int(rv)


def test_watch_without_a_version_starts_with_the_current_objects(core: client.CoreV1Api) -> None:
    core.create_namespaced_config_map("default", _cm("a"))
    core.create_namespaced_config_map("default", _cm("b"))
    w = watch.Watch()
    seen = []
    for event in w.stream(core.list_namespaced_config_map, "default", timeout_seconds=10):
        seen.append((event["type"], event["object"].metadata.name))
        if len(seen) == 2:
            core.delete_namespaced_config_map("b", "default")
        if len(seen) == 3:
            w.stop()
    assert seen == [("ADDED", "a"), ("ADDED", "b"), ("DELETED", "b")]


def test_a_watch_with_a_selector_sees_objects_leave_and_enter_it(core: client.CoreV1Api) -> None:
    rv = core.create_namespaced_config_map("default", _cm("a", {"app": "x"})).metadata.resource_version
    core.patch_namespaced_config_map("a", "default", {"metadata": {"labels": {"app": "y"}}})
    core.create_namespaced_config_map("default", _cm("b", {"app": "y"}))
    core.patch_namespaced_config_map("a", "default", {"metadata": {"labels": {"app": "x"}}})
    w = watch.Watch()
    seen = []
    for event in w.stream(
        core.list_namespaced_config_map, "default", label_selector="app=x", resource_version="0", timeout_seconds=10
    ):
        seen.append(event["type"])
        if len(seen) == 1:
            rv = event["object"].metadata.resource_version
            w.stop()
    assert seen == ["ADDED"]  # the current state first
    seen = []
    core.patch_namespaced_config_map("a", "default", {"metadata": {"labels": {"app": "y"}}})
    core.patch_namespaced_config_map("b", "default", {"metadata": {"labels": {"app": "x"}}})
    for event in w.stream(
        core.list_namespaced_config_map, "default", label_selector="app=x", resource_version=rv, timeout_seconds=10
    ):
        seen.append((event["type"], event["object"].metadata.name))
        if len(seen) == 2:
            w.stop()
    assert seen == [("DELETED", "a"), ("ADDED", "b")]


def _consume(w: watch.Watch, core: client.CoreV1Api, rv: str, out: queue.Queue[Any], resume: threading.Event) -> None:
    """A watcher as the control plane will be: resumes from the last resourceVersion when the stream breaks."""
    while True:
        try:
            for event in w.stream(core.list_namespaced_config_map, "default", resource_version=rv):
                out.put((event["type"], event["object"].metadata.name))
                if event["object"].metadata.name == "stop":
                    return
        except urllib3.exceptions.ProtocolError as e:
            out.put(("broken", type(e).__name__))
            resume.wait(30)
            rv = w.resource_version


def _take(out: queue.Queue[Any], n: int) -> list[Any]:
    return [out.get(timeout=10) for _ in range(n)]


@pytest.mark.parametrize("graceful", [False, True])
def test_a_dropped_watch_resumes_from_its_last_version_without_loss_or_duplicate(
    core: client.CoreV1Api, kube_api: FakeKube, graceful: bool
) -> None:
    rv = core.create_namespaced_config_map("default", _cm("seed")).metadata.resource_version
    out: queue.Queue[Any] = queue.Queue()
    resume = threading.Event()
    w = watch.Watch()
    consumer = threading.Thread(target=_consume, args=(w, core, rv, out, resume), daemon=True)
    consumer.start()
    for i in range(3):
        core.create_namespaced_config_map("default", _cm(f"a{i}"))
    assert _take(out, 3) == [("ADDED", f"a{i}") for i in range(3)]

    kube_api.drop_watches(graceful=graceful)
    if not graceful:  # the client raises urllib3's ProtocolError: the consumer waits while changes happen
        assert _take(out, 1)[0][0] == "broken"
    for i in range(3):  # during the gap (abrupt) or while the client re-watches by itself (graceful)
        core.patch_namespaced_config_map(f"a{i}", "default", {"data": {"k": "v"}})
    resume.set()
    core.delete_namespaced_config_map("a0", "default")
    core.create_namespaced_config_map("default", _cm("stop"))
    consumer.join(10)
    rest = [out.get_nowait() for _ in range(out.qsize())]
    assert rest == [("MODIFIED", "a0"), ("MODIFIED", "a1"), ("MODIFIED", "a2"), ("DELETED", "a0"), ("ADDED", "stop")]
    assert kube_api.count("watch") == 2  # the resumption is a watch, never a relist
    assert kube_api.count("list") == 0


def test_a_compacted_history_gives_410_and_a_relist_recovers(core: client.CoreV1Api, kube_api: FakeKube) -> None:
    old = core.create_namespaced_config_map("default", _cm("a")).metadata.resource_version
    core.create_namespaced_config_map("default", _cm("b"))
    kube_api.compact()

    with pytest.raises(ApiException) as expired:  # with timeout_seconds: at once, from the ERROR event
        list(watch.Watch().stream(core.list_namespaced_config_map, "default", resource_version=old, timeout_seconds=5))
    assert expired.value.status == 410 and "Expired: too old resource version" in str(expired.value.reason)
    assert kube_api.count("watch") == 1

    with pytest.raises(ApiException) as again:  # without: the client retries once by itself, then raises
        next(iter(watch.Watch().stream(core.list_namespaced_config_map, "default", resource_version=old)))
    assert again.value.status == 410 and kube_api.count("watch") == 3

    with pytest.raises(ApiException) as exact:  # an exact list of a forgotten version
        core.list_namespaced_config_map("default", resource_version=old, resource_version_match="Exact")
    assert exact.value.status == 410 and _status(exact.value)["reason"] == "Expired"

    relisted = core.list_namespaced_config_map("default")
    assert [i.metadata.name for i in relisted.items] == ["a", "b"]
    core.create_namespaced_config_map("default", _cm("c"))
    w = watch.Watch()
    seen = []
    for event in w.stream(
        core.list_namespaced_config_map,
        "default",
        resource_version=relisted.metadata.resource_version,
        timeout_seconds=10,
    ):
        seen.append((event["type"], event["object"].metadata.name))
        w.stop()
    assert seen == [("ADDED", "c")]


def test_paged_lists_are_one_snapshot(core: client.CoreV1Api) -> None:
    for name in "abcde":
        core.create_namespaced_config_map("default", _cm(name))
    first = core.list_namespaced_config_map("default", limit=2)
    core.delete_namespaced_config_map("d", "default")
    core.create_namespaced_config_map("default", _cm("f"))
    rest = core.list_namespaced_config_map("default", limit=10, _continue=first.metadata._continue)
    assert [i.metadata.name for i in first.items + rest.items] == list("abcde")
    assert rest.metadata._continue is None and rest.metadata.resource_version == first.metadata.resource_version


def test_bookmarks_carry_the_latest_version(custom: client.CustomObjectsApi, kube_api: FakeKube) -> None:
    rv = custom.create_namespaced_custom_object(GROUP, VERSION, "team", "apispecs", _spec("a"))["metadata"][
        "resourceVersion"
    ]
    client.CoreV1Api(kube_api.api_client()).create_namespaced_config_map("default", _cm("unwatched"))
    w = watch.Watch()
    seen = []
    for event in w.stream(
        custom.list_namespaced_custom_object,
        GROUP,
        VERSION,
        "team",
        "apispecs",
        resource_version=rv,
        allow_watch_bookmarks=True,
        timeout_seconds=10,
    ):
        seen.append((event["type"], event["raw_object"]))
        if len(seen) == 2:
            w.stop()
        else:
            custom.create_namespaced_custom_object(GROUP, VERSION, "team", "apispecs", _spec("b"))
    (first, bookmark), (second, added) = seen
    assert first == "BOOKMARK" and bookmark["kind"] == "ApiSpec" and list(bookmark["metadata"]) == ["resourceVersion"]
    assert second == "ADDED" and added["metadata"]["name"] == "b"
    assert int(rv) < int(bookmark["metadata"]["resourceVersion"]) < int(added["metadata"]["resourceVersion"])
    assert w.resource_version == added["metadata"]["resourceVersion"]


def test_a_watch_ends_at_its_timeout(core: client.CoreV1Api, kube_api: FakeKube) -> None:
    events = list(
        watch.Watch().stream(
            core.list_namespaced_config_map, "default", timeout_seconds=1, resource_version=kube_api.resource_version
        )
    )
    assert events == [] and kube_api.count("watch") == 1
    # the server's thread closes its side just after the client has read the end of the stream
    deadline = time.monotonic() + 5
    while kube_api.open_watches and time.monotonic() < deadline:
        time.sleep(0.01)
    assert kube_api.open_watches == 0


def test_leases_replace_with_optimistic_concurrency(kube_api: FakeKube) -> None:
    leases = client.CoordinationV1Api(kube_api.api_client())
    spec = client.V1LeaseSpec(holder_identity="replica-1", lease_duration_seconds=15)
    lease = leases.create_namespaced_lease("cp", client.V1Lease(metadata=client.V1ObjectMeta(name="leader"), spec=spec))
    mine = leases.read_namespaced_lease("leader", "cp")
    theirs = leases.read_namespaced_lease("leader", "cp")
    theirs.spec.holder_identity = "replica-2"
    taken = leases.replace_namespaced_lease("leader", "cp", theirs)
    assert int(taken.metadata.resource_version) > int(lease.metadata.resource_version)
    mine.spec.holder_identity = "replica-3"
    with pytest.raises(ApiException) as lost:
        leases.replace_namespaced_lease("leader", "cp", mine)
    assert lost.value.status == 409
    assert leases.read_namespaced_lease("leader", "cp").spec.holder_identity == "replica-2"


def test_endpointslices_events_and_secrets(kube_api: FakeKube) -> None:
    api = kube_api.api_client()
    slices = client.DiscoveryV1Api(api)
    slices.create_namespaced_endpoint_slice(
        "shop",
        client.V1EndpointSlice(
            metadata=client.V1ObjectMeta(name="orders-x1", labels={"kubernetes.io/service-name": "orders"}),
            address_type="IPv4",
            endpoints=[
                client.V1Endpoint(addresses=["10.0.0.1"], zone="a", conditions=client.V1EndpointConditions(ready=True))
            ],
        ),
    )
    found = slices.list_namespaced_endpoint_slice("shop", label_selector="kubernetes.io/service-name=orders")
    assert found.items[0].endpoints[0].zone == "a"
    client.EventsV1Api(api).create_namespaced_event(
        "team",
        client.EventsV1Event(
            metadata=client.V1ObjectMeta(generate_name="orders."),
            event_time=datetime.now(UTC),
            reason="Rejected",
            note="bad",
            type="Warning",
            action="Compile",
            reporting_controller="controlplane.dev/cp",
            reporting_instance="cp-0",
        ),
    )
    core = client.CoreV1Api(api)
    core.create_namespaced_secret(
        "team",
        client.V1Secret(metadata=client.V1ObjectMeta(name="tls"), type="kubernetes.io/tls", data={"tls.crt": "Yg=="}),
    )
    assert [e["metadata"]["name"].startswith("orders.") for e in kube_api.objects("events")] == [True]
    assert core.read_namespaced_secret("tls", "team").data == {"tls.crt": "Yg=="}


def test_kubeconfig_and_token(kube_api: FakeKube, tmp_path: Path) -> None:
    configuration = client.Configuration()
    config.load_kube_config(str(kube_api.kubeconfig(tmp_path / "kubeconfig")), client_configuration=configuration)
    core = client.CoreV1Api(client.ApiClient(configuration))
    core.create_namespaced_config_map("default", _cm("a"))
    assert [i.metadata.name for i in core.list_namespaced_config_map("default").items] == ["a"]
    for wrong in ({"BearerToken": "wrong"}, {}):
        stranger = client.Configuration(host=kube_api.url, api_key=wrong, api_key_prefix={"BearerToken": "Bearer"})
        with pytest.raises(ApiException) as denied:
            client.CoreV1Api(client.ApiClient(stranger)).list_namespaced_config_map("default")
        assert denied.value.status == 401 and _status(denied.value)["reason"] == "Unauthorized"


def test_injected_failures_are_answered_once(core: client.CoreV1Api, kube_api: FakeKube) -> None:
    kube_api.fail_next("list", r"/configmaps$", 503, "ServiceUnavailable")
    with pytest.raises(ApiException) as failed:
        core.list_namespaced_config_map("default")
    assert failed.value.status == 503 and _status(failed.value)["reason"] == "ServiceUnavailable"
    assert core.list_namespaced_config_map("default").items == []
    assert kube_api.count("list") == 2


def test_versions_older_than_the_bounded_history_get_410() -> None:
    with FakeKube(history_limit=2) as kube:
        core = client.CoreV1Api(kube.api_client())
        rv = core.create_namespaced_config_map("default", _cm("a")).metadata.resource_version
        for i in range(5):
            core.patch_namespaced_config_map("a", "default", {"data": {"i": str(i)}})
        with pytest.raises(ApiException) as expired:
            list(
                watch.Watch().stream(core.list_namespaced_config_map, "default", resource_version=rv, timeout_seconds=5)
            )
        assert expired.value.status == 410

        errors: list[ApiException] = []

        def slow_watcher() -> None:
            try:
                list(
                    watch.Watch().stream(
                        core.list_namespaced_config_map,
                        "default",
                        timeout_seconds=10,
                        resource_version=kube.resource_version,
                    )
                )
            except ApiException as e:
                errors.append(e)

        watcher = threading.Thread(target=slow_watcher)
        watcher.start()
        while kube.open_watches == 0:
            threading.Event().wait(0.01)
        with kube._cond:  # the watcher cannot wake while the history moves on beyond it
            for i in range(5):
                kube.apply("configmaps", {"metadata": {"name": "a"}, "data": {"j": str(i)}})
        watcher.join(10)
        assert [e.status for e in errors] == [410]
