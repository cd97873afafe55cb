"""Full validation of a pushed spec's next version: only the path items that changed since the
last clean version are given to the real validator; anything else changed, or a base that
was not clean, and the whole document is validated."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from controlplane.documents import DocumentStore
from controlplane.errors import Diagnostics
from controlplane.model import validation

BASE = """\
openapi: 3.0.3
info: {title: orders, version: "1"}
components:
  schemas:
    Order: {type: object, properties: {id: {type: integer}}}
paths:
  /orders:
    get:
      operationId: listOrders
      responses: {"200": {description: ok, content: {application/json: {schema: {$ref: "#/components/schemas/Order"}}}}}
  /orders/{id}:
    get:
      operationId: getOrder
      parameters: [{name: id, in: path, required: true, schema: {type: integer}}]
      responses: {"200": {description: ok}}
"""

# A parameter in a place OpenAPI does not have: the validator's finding.
BROKEN_ITEM = """\
  /orders/{id}/lines:
    get:
      operationId: getLines
      parameters:
        - {name: id, in: path, required: true, schema: {type: integer}}
        - {name: page, in: body, schema: {type: integer}}
      responses: {"200": {description: ok}}
"""

GOOD_ITEM = BROKEN_ITEM.replace("in: body", "in: query")


@pytest.fixture
def validated(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The path items of each document the real validator was given."""
    seen: list[list[str]] = []
    run = validation._PROCESS.run

    def spy(version: str, data: Any, base_uri: str, timeout: float) -> Any:
        seen.append(sorted(data.get("paths", {})))
        return run(version, data, base_uri, timeout)

    monkeypatch.setattr(validation._PROCESS, "run", spy)
    monkeypatch.setattr(validation, "_LINEAGES", {})
    return seen


def check(tmp_path: Path, version: int, text: str, lineage: str | None = "push:orders") -> list[str]:
    path = tmp_path / str(version) / "orders.yaml"  # each version in a directory of its own, as pushed
    path.parent.mkdir()
    path.write_text(text)
    store = DocumentStore(Diagnostics())
    doc = store.load(path)
    assert doc is not None
    return [f"{d.pointer}: {d.message}" for d in validation.validate(store, doc, use_cache=False, lineage=lineage)]


def test_only_the_changed_path_items_are_validated_and_their_findings_located(
    tmp_path: Path, validated: list[list[str]]
) -> None:
    assert check(tmp_path, 1, BASE) == []
    findings = check(tmp_path, 2, BASE + BROKEN_ITEM)
    assert validated[-1] == ["/orders/{id}/lines"]
    assert findings and all(f.startswith("/paths/~1orders~1{id}~1lines/get") for f in findings), findings
    # the broken version is no base: the next one is validated whole
    assert check(tmp_path, 3, BASE + GOOD_ITEM) == []
    assert validated[-1] == ["/orders", "/orders/{id}", "/orders/{id}/lines"]
    # an unchanged document is not given to the validator at all
    count = len(validated)
    assert check(tmp_path, 4, BASE + GOOD_ITEM) == []
    assert len(validated) == count


def test_a_change_outside_paths_validates_the_whole_document(tmp_path: Path, validated: list[list[str]]) -> None:
    assert check(tmp_path, 1, BASE) == []
    changed = BASE.replace("id: {type: integer}}}", "id: {type: integer}, note: {type: string}}}") + GOOD_ITEM
    assert check(tmp_path, 2, changed) == []
    assert validated[-1] == ["/orders", "/orders/{id}", "/orders/{id}/lines"]


def test_without_a_lineage_or_with_another_every_version_is_validated_whole(
    tmp_path: Path, validated: list[list[str]]
) -> None:
    check(tmp_path, 1, BASE)
    check(tmp_path, 2, BASE + GOOD_ITEM, lineage=None)
    assert validated[-1] == ["/orders", "/orders/{id}", "/orders/{id}/lines"]
    check(tmp_path, 3, BASE + GOOD_ITEM, lineage="push:catalog")
    assert validated[-1] == ["/orders", "/orders/{id}", "/orders/{id}/lines"]
