"""Gateway policy documents: recognising them and checking them against the JSON Schema.

The schema (``controlplane/schemas/policy.schema.json``) is the single definition of the
format: editors use it, the reference page documents it, and this module enforces it.
After a document passes, the rest of the compiler may read it as plain dicts.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError

from ..errors import Diagnostics, pointer

API_VERSION = "controlplane.dev/v1"
KIND = "GatewayPolicy"


def is_policy(data: Any) -> bool:
    return isinstance(data, dict) and data.get("kind") == KIND


@functools.lru_cache(maxsize=1)
def policy_schema() -> dict[str, Any]:
    text = resources.files("controlplane").joinpath("schemas/policy.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


@functools.lru_cache(maxsize=None)
def _validator(definition: str | None) -> jsonschema.Draft202012Validator:
    schema = policy_schema()
    if definition is not None:
        schema = {"$defs": schema["$defs"], "$ref": f"#/$defs/{definition}"}
    return jsonschema.Draft202012Validator(schema, format_checker=None)


def _describe(err: ValidationError) -> list[tuple[str, str]]:
    """(pointer, message) pairs a person can act on, for one schema violation."""
    where = pointer(*err.absolute_path)
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        allowed = sorted(err.schema.get("properties", {}))
        extra = [k for k in err.instance if k not in err.schema.get("properties", {})]
        hint = f"; allowed keys: {', '.join(allowed)}" if allowed else ""
        return [(where + pointer(k), f"unknown key {k!r}{hint}") for k in extra]
    if err.validator == "required":
        return [(where, err.message.replace("is a required property", "is required"))]
    if err.validator == "oneOf" and err.schema.get("oneOf") and all(
        set(s) == {"required"} for s in err.schema["oneOf"]
    ):
        keys = [s["required"][0] for s in err.schema["oneOf"]]
        return [(where, f"exactly one of {', '.join(keys)} must be set")]
    if err.validator == "pattern":
        description = err.schema.get("description")
        message = f"{err.instance!r} is not valid"
        return [(where, f"{message}: {description}" if description else f"{message} (must match {err.schema['pattern']})")]
    if err.validator in ("enum", "const"):
        options = err.schema.get("enum", [err.schema.get("const")])
        return [(where, f"{err.instance!r} is not one of {', '.join(repr(o) for o in options)}")]
    return [(where, err.message)]


def check(value: Any, file: str, base: str, diags: Diagnostics, definition: str | None = None) -> bool:
    """Validate ``value`` (found at ``file#base``) against the policy schema or one of its $defs."""
    errors = sorted(_validator(definition).iter_errors(value), key=lambda e: [str(p) for p in e.absolute_path])
    for err in errors:
        for ptr, message in _describe(err):
            diags.error(message, file, base + ptr, "policy-schema")
    return not errors


_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}


def duration_ms(text: str) -> int:
    """'250ms' → 250, '1.5s' → 1500 (the schema guarantees the shape)."""
    unit = "ms" if text.endswith("ms") else text[-1]
    number = text[: -len(unit)]
    return round(float(number) * _UNITS_MS[unit])
