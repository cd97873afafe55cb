"""The policy reference documents every key of the policy schema."""

from __future__ import annotations

import re
from typing import Any

from controlplane.model.policy import policy_schema
from tests.conftest import REPO


def _keys(schema: dict[str, Any], defs: dict[str, Any], seen: set[str]) -> set[str]:
    out: set[str] = set()
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        if name in seen:
            return out
        return _keys(defs[name], defs, seen | {name})
    for key, sub in schema.get("properties", {}).items():
        out.add(key)
        out |= _keys(sub, defs, seen)
    for word in ("items", "additionalProperties"):
        if isinstance(schema.get(word), dict):
            out |= _keys(schema[word], defs, seen)
    return out


def test_every_policy_key_is_in_the_reference() -> None:
    schema = policy_schema()
    keys = _keys(schema, schema["$defs"], set())
    text = (REPO / "docs" / "policy.md").read_text()
    documented = set(re.findall(r"`([A-Za-z0-9]+)(?:\.[A-Za-z0-9]+)*`", text)) | set(
        re.findall(r"`[\w.]+\.(\w+)`", text)
    )
    missing = sorted(k for k in keys if k not in documented and f"{k}:" not in text)
    assert not missing, f"docs/policy.md does not mention: {missing}"
