"""Caches between compiles (incremental.py) change nothing: after every kind of edit, a
warm compile gives byte-identical resources and the same findings as a cold one."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from controlplane import incremental
from controlplane.resources import Resources
from controlplane.worker import CompiledConfig, compile_serialized
from tests.conftest import REPO


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))


EDITS: list[tuple[str, Callable[[Path], None]]] = [
    ("nothing", lambda d: None),
    (
        "a new operation",
        lambda d: _replace(
            d / "orders.openapi.yaml",
            "  /orders/export:\n",
            "  /orders/recent:\n    get: {operationId: recentOrders, responses: "
            "{'200': {description: ok}}}\n  /orders/export:\n",
        ),
    ),
    (
        "a file reached only through $ref",
        lambda d: _replace(d / "catalog/paths/category.yaml", "attempts: 0", "attempts: 2"),
    ),
    (
        "a component of the same document",
        lambda d: _replace(d / "orders.openapi.yaml", "schema: {type: integer, minimum: 1}", "schema: {type: string}"),
    ),
    (
        "one operation of a path item",
        lambda d: _replace(d / "orders.openapi.yaml", "operationId: deleteOrder", "operationId: removeOrder"),
    ),
    ("a schema pattern two $refs away", lambda d: _replace(d / "catalog/components/schemas.yaml", "{1,62}", "{1,30}")),
    (
        "the policy",
        lambda d: _replace(d / "gateway.policy.yaml", "exportOrders: {timeout: 120s}", "exportOrders: {timeout: 90s}"),
    ),
    (
        "an authorization rule",
        lambda d: _replace(
            d / "gateway.policy.yaml", "operations: [listOrders, createOrder", "operations: [listOrders"
        ),
    ),
    ("broken YAML", lambda d: _replace(d / "petstore.swagger.yaml", "paths:", "paths: [")),
    ("fixed again", lambda d: _replace(d / "petstore.swagger.yaml", "paths: [", "paths:")),
    ("the JWKS file", lambda d: _replace(d / "idp/jwks.json", '"alg": "ES256"', '"alg": "ES384"')),
    (
        "a waf section",
        lambda d: _replace(d / "gateway.policy.yaml", "listeners:\n", "waf: {mode: prevent}\n\nlisteners:\n"),
    ),
    (
        "a listener's waf mode",
        lambda d: _replace(
            d / "gateway.policy.yaml",
            "    escapedSlashes: reject\n",
            "    escapedSlashes: reject\n    waf: {mode: detect}\n",
        ),
    ),
    (
        "a listener's failure mode",
        lambda d: _replace(
            d / "gateway.policy.yaml", "waf: {mode: detect}", "waf: {mode: detect, onServiceFailure: closed}"
        ),
    ),
]


def _cold(path: Path) -> CompiledConfig:
    incremental.ENABLED = False
    try:
        return compile_serialized([str(path)])
    finally:
        incremental.ENABLED = True


def test_warm_compiles_equal_cold_ones_after_every_edit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "specs"
    shutil.copytree(REPO / "specs", work)
    monkeypatch.chdir(tmp_path)
    incremental.clear()
    compile_serialized([str(work)])  # fills the caches
    for what, edit in EDITS:
        edit(work)
        warm = compile_serialized([str(work)])
        cold = _cold(work)
        assert warm.ok == cold.ok, what
        assert [str(d) for d in warm.diagnostics] == [str(d) for d in cold.diagnostics], what
        assert warm.serialized == cold.serialized, what
        assert warm.sources == cold.sources and warm.details == cold.details, what


@pytest.fixture
def warm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the examples, compiled once with empty caches."""
    work = tmp_path / "specs"
    shutil.copytree(REPO / "specs", work)
    monkeypatch.chdir(tmp_path)
    incremental.clear()
    compile_serialized([str(work)])
    return work


def test_an_edit_reuses_what_it_does_not_touch(warm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = warm
    parsed: list[str] = []
    real = incremental._SPECS.put

    def record(key: Path, value: object) -> None:
        parsed.append(key.name)
        real(key, value)  # type: ignore[arg-type]

    monkeypatch.setattr(incremental._SPECS, "put", record)
    EDITS[1][1](work)  # one operation more in orders
    compile_serialized([str(work)])
    assert parsed == ["orders.openapi.yaml"]  # the other specs' models were reused


def test_an_edit_encodes_only_the_routes_it_changes(warm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The API an edit touches is rebuilt, but its unchanged operations keep their objects,
    so that only the new path's routes are encoded again."""
    from controlplane.translate import routes

    work = warm
    encoded: list[str] = []
    real = routes.encoded_path_routes

    def record(path_route, *args, **kwargs):  # type: ignore[no-untyped-def]
        encoded.append(path_route.path.template)
        return real(path_route, *args, **kwargs)

    monkeypatch.setattr(routes, "encoded_path_routes", record)
    EDITS[1][1](work)  # one operation more in orders
    warm = compile_serialized([str(work)])
    assert len(encoded) == 1 and encoded[0].endswith("/orders/recent"), encoded
    assert warm.serialized == _cold(work).serialized


def test_worker_results_relative_to_the_last_one_are_made_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker sends only the resources an edit changed; the server side rebuilds the
    whole table, identical to a cold compile's. A caller holding another base gets it all."""
    from controlplane import worker

    work = tmp_path / "specs"
    shutil.copytree(REPO / "specs", work)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(worker, "_IN_WORKER", True)
    monkeypatch.setattr(worker.gc, "freeze", lambda: None)  # the worker's, not this process's
    monkeypatch.setattr(worker, "_SENT", {"generation": "", "serialized": {}, "details": {}})
    incremental.clear()
    first = compile_serialized([str(work)])
    assert first.generation and not first.base
    EDITS[1][1](work)  # one operation more in orders
    relative = compile_serialized([str(work)], base=first.generation)
    assert relative.base == first.generation
    sent = {(t, n) for t, by_name in relative.serialized.items() for n in by_name}
    total = {(t, n) for t, by_name in first.serialized.items() for n in by_name}
    assert sent and len(sent) < len(total), sent  # the orders route configuration, not everything
    # details come only for the route configurations that changed
    assert set(relative.details) <= set(relative.serialized[Resources.ROUTE])
    made = worker.whole(relative, first)
    with monkeypatch.context() as m:
        m.setattr(worker, "_IN_WORKER", False)  # not to move the worker's base
        cold = _cold(work)
    assert made.serialized == cold.serialized and made.details == cold.details
    unchanged = compile_serialized([str(work)], base=relative.generation)
    assert unchanged.serialized == {} and unchanged.details == {}
    assert worker.whole(unchanged, made).serialized == cold.serialized
    stranger = compile_serialized([str(work)], base="someone-else")
    assert not stranger.base and stranger.serialized == cold.serialized


def test_an_edit_parses_and_builds_only_the_path_items_it_changes(warm: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Within the edited file, path items equal to last time (and a document equal outside
    its paths) are replayed: their model and their operations' IR are not built again."""
    from controlplane import build
    from controlplane.model import openapi

    parsed: list[str] = []
    built: list[str] = []
    real_item, real_auth = openapi._Parser.path_item, build.auth.operation_auth

    def item(self, path, *args, **kwargs):  # type: ignore[no-untyped-def]
        parsed.append(path)
        return real_item(self, path, *args, **kwargs)

    def operation_auth(ctx, spec, op, *args, **kwargs):  # type: ignore[no-untyped-def]
        built.append(op.key)
        return real_auth(ctx, spec, op, *args, **kwargs)

    monkeypatch.setattr(openapi._Parser, "path_item", item)
    monkeypatch.setattr(build.auth, "operation_auth", operation_auth)
    EDITS[1][1](warm)  # one operation more in orders
    compile_serialized([str(warm)])
    assert parsed == ["/orders/recent"]
    assert built == ["recentOrders"]
    # a change outside the paths (a component) parses the whole document again
    parsed.clear()
    EDITS[3][1](warm)
    compile_serialized([str(warm)])
    assert "/orders/{orderId}" in parsed and len(parsed) > 5


_VARIED_SPEC = """
openapi: 3.0.3
info: {title: varied, version: "1"}
servers: [{url: https://api.example.com/v1}]
paths:
  /responses?beta=true:
    get: {responses: {'200': {description: ok}}}
  /responses:
    get: {responses: {'200': {description: ok}}}
  /items/{id}?view=full:
    parameters: [{name: id, in: path, required: true, schema: {type: integer}}]
    get: {responses: {'200': {description: ok}}}
  /items/{id}:
    parameters: [{name: id, in: path, required: true, schema: {type: integer}}]
    get:
      x-gateway: {sensitive: true, timeout: 3s, retries: {attempts: 3, perTryTimeout: 1s}}
      responses: {'200': {description: ok}}
    delete: {responses: {'204': {description: gone}}}
  /literal/é/path:
    put: {responses: {'200': {description: ok}}}
"""


def test_routes_encoded_without_messages_are_the_messages_serialized(tmp_path: Path) -> None:
    """``encoded_path_routes`` (what the compile uses) gives the bytes of ``path_routes``'s
    messages, for every path of every golden input and of a spec with query keys, regexes,
    per-operation settings, a host rewrite and non-ASCII text."""
    from controlplane import compile
    from controlplane.translate import routes

    (tmp_path / "varied.yaml").write_text(_VARIED_SPEC)
    inputs = [REPO / "specs", tmp_path, *(p / "input" for p in (REPO / "tests" / "golden").iterdir())]
    checked = 0
    for folder in inputs:
        if not folder.is_dir():
            continue
        result = compile([folder])
        assert result.ok and result.gateway is not None, result.diagnostics
        for listener in result.gateway.listeners:
            retry = routes.common_retry(listener.paths)
            for ctx in (None, (result.gateway, listener)):
                for pr in listener.paths:
                    messages = [r.SerializeToString(deterministic=True) for r in routes.path_routes(pr, retry, ctx)]
                    assert routes.encoded_path_routes(pr, retry, ctx) == messages, pr.path
                    checked += 1
    assert checked > 50
