"""Gateway policy documents: recognising them and checking them against the JSON Schema.

The schema (``controlplane/schemas/policy.schema.json``) is the single definition of the
format: editors use it, the reference page documents it, and this module enforces it.
After a document passes, the rest of the compiler may read it as plain dicts.
"""

from __future__ import annotations

import copy
import functools
import json
from importlib import resources
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError

from ..errors import Diagnostics, pointer, shorten_message

API_VERSION = "controlplane.dev/v1"
KIND = "GatewayPolicy"


def is_policy(data: Any) -> bool:
    return isinstance(data, dict) and data.get("kind") == KIND


@functools.lru_cache(maxsize=1)
def policy_schema() -> dict[str, Any]:
    text = resources.files("controlplane").joinpath("schemas/policy.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


# JSON Schema counts 80.0 as an integer; protobuf and Envoy do not.
_Validator = jsonschema.validators.extend(  # type: ignore[no-untyped-call]
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda _checker, value: isinstance(value, int) and not isinstance(value, bool)
    ),
)


@functools.cache
def _validator(definition: str | None) -> jsonschema.Draft202012Validator:
    schema = policy_schema()
    if definition is not None:
        schema = {"$defs": schema["$defs"], "$ref": f"#/$defs/{definition}"}
    return _Validator(schema, format_checker=None)  # type: ignore[no-any-return]


def _describe(err: ValidationError) -> list[tuple[str, str]]:
    """(pointer, message) pairs a person can act on, for one schema violation."""
    where = pointer(*err.absolute_path)
    schema: dict[str, Any] = err.schema if isinstance(err.schema, dict) else {}
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        allowed = sorted(schema.get("properties", {}))
        extra = [k for k in err.instance if k not in schema.get("properties", {})]
        hint = f"; allowed keys: {', '.join(allowed)}" if allowed else ""
        return [(where + pointer(k), f"unknown key {k!r}{hint}") for k in extra]
    if err.validator == "required":
        return [(where, err.message.replace("is a required property", "is required"))]
    if err.validator == "oneOf" and schema.get("oneOf") and all(set(s) == {"required"} for s in schema["oneOf"]):
        keys = [s["required"][0] for s in schema["oneOf"]]
        return [(where, f"exactly one of {', '.join(keys)} must be set")]
    if err.validator in ("oneOf", "anyOf") and err.context:
        # "not valid under any of the given schemas" helps no one: when the value's kind fits one
        # alternative only (an object where the others are false or a string), its errors say
        # what to fix (a wrong key, a wrong type inside)
        branches: dict[Any, list[ValidationError]] = {}
        for sub in err.context:
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        fitting = [
            subs
            for subs in branches.values()
            if not any(not sub.relative_path and sub.validator in ("type", "const", "enum") for sub in subs)
        ]
        if len(fitting) == 1:
            return [pair for sub in fitting[0] for pair in _describe(sub)]
        if not fitting:  # what each alternative takes: "an object or false"
            kinds = []
            for subs in branches.values():
                top = next(sub for sub in subs if not sub.relative_path and sub.validator in ("type", "const", "enum"))
                value: Any = top.validator_value
                if top.validator == "type":
                    names = [str(n) for n in (value if isinstance(value, list) else [value])]
                    kinds.append(" or ".join(f"an {n}" if n[0] in "aeiou" else f"a {n}" for n in names))
                else:
                    values = value if top.validator == "enum" and isinstance(value, list) else [value]
                    kinds.append(" or ".join(json.dumps(v) for v in values))
            return [(where, f"{shorten_message(repr(err.instance), err.instance)} must be {' or '.join(kinds)}")]
    if err.validator == "pattern":
        description = schema.get("description")
        message = f"{err.instance!r} is not valid"
        return [(where, f"{message}: {description}" if description else f"{message} (must match {schema['pattern']})")]
    if err.validator in ("enum", "const"):
        options = schema.get("enum", [schema.get("const")])
        return [(where, f"{err.instance!r} is not one of {', '.join(repr(o) for o in options)}")]
    return [(where, shorten_message(err.message, err.instance))]


def check(value: Any, file: str, base: str, diags: Diagnostics, definition: str | None = None) -> bool:
    """Validate ``value`` (found at ``file#base``) against the policy schema or one of its $defs."""
    key = _valid_key(value, definition)
    if key is not None and key in _VALID:
        return True
    try:
        errors = sorted(_validator(definition).iter_errors(value), key=lambda e: [str(p) for p in e.absolute_path])
    except RecursionError:
        diags.error("the value nests too deeply to be checked", file, base, "policy-schema")
        return False
    for err in errors:
        for ptr, message in _describe(err):
            diags.error(message, file, base + ptr, "policy-schema")
    if not errors and key is not None:
        if len(_VALID) >= 4096:
            _VALID.clear()
        _VALID[key] = None
    return not errors


# Small values found valid, by their JSON text: the same ``x-gateway`` settings recur on
# many operations, and a schema check costs ~80 us.
_VALID: dict[tuple[str | None, str], None] = {}


def _valid_key(value: Any, definition: str | None) -> tuple[str | None, str] | None:
    """None for values whose JSON text could stand for another value (keys that are not
    strings), or that are too large to be worth it."""
    if not isinstance(value, dict) or len(value) > 8 or not _plain(value, 3):
        return None
    return definition, json.dumps(value, sort_keys=True)


def _plain(value: Any, depth: int) -> bool:
    if type(value) is dict:
        return depth > 0 and all(type(k) is str and _plain(v, depth - 1) for k, v in value.items())
    if type(value) is list:
        return depth > 0 and len(value) <= 16 and all(_plain(v, depth - 1) for v in value)
    return value is None or type(value) in (str, int, float, bool)


def usable(value: Any, definition: str | None = None) -> Any:
    """A copy of ``value`` without the parts that break the schema, or None if nothing usable is left.

    Errors are not reported here (:func:`check` does): this lets the compiler go on with what
    is right, so that the errors beyond the schema (unknown upstream, unknown operation…) are
    found in the same run. A wrong list item takes its list with it: removing the item alone
    would shift the pointers of the ones after it.
    """
    try:
        value = copy.deepcopy(value)
        for _round in range(10):
            errors = list(_validator(definition).iter_errors(value))
            if not errors:
                return value
            for err in errors:
                path = list(err.absolute_path)
                if err.validator == "additionalProperties" and isinstance(err.instance, dict):
                    known = err.schema.get("properties", {})
                    targets = [[*path, k] for k in err.instance if k not in known]
                else:
                    targets = [path]
                for target in targets:
                    while target and isinstance(_at(value, target[:-1]), list):
                        target = target[:-1]
                    if not target:
                        return None
                    parent = _at(value, target[:-1])
                    if isinstance(parent, dict):
                        parent.pop(target[-1], None)
    except RecursionError:
        pass
    return None


def _at(value: Any, path: list[Any]) -> Any:
    for token in path:
        if (isinstance(value, dict) and token in value) or (
            isinstance(value, list) and isinstance(token, int) and token < len(value)
        ):
            value = value[token]
        else:
            return None
    return value


NAMED_LISTS = {"listeners": "listener", "upstreams": "upstream", "apis": "api"}
_WHERE_SERVED = ("listeners", "pathPrefix", "upstreamPathPrefix")


def usable_policy(data: dict[str, Any]) -> dict[str, Any]:
    """The usable parts of a policy that :func:`check` rejected (see :func:`usable`).

    Items of ``listeners``, ``upstreams``, ``apis``, ``auth.providers``, ``ipAllowlists`` and
    ``rateLimits.limits`` keep their index; one with nothing usable left is None. An api whose paths or listeners
    are wrong is checked but served on no listener: its routes would be guesses, and their
    conflicts noise.
    """
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key in NAMED_LISTS:
            if isinstance(value, list):
                out[key] = [usable(item, NAMED_LISTS[key]) for item in value]
            if key == "apis" and isinstance(value, list):
                for item, part in zip(value, out[key], strict=True):
                    if part is not None and any(k in item and k not in part for k in _WHERE_SERVED):
                        part["listeners"] = []
        elif key in ("gateway", "headers", "geo"):
            part = usable(value, key)
            if part is not None:
                out[key] = part
        elif key == "auth" and isinstance(value, dict) and isinstance(value.get("providers"), list):
            # a typo in one provider must not hide it: every api using it would be an error too
            out[key] = {"providers": [usable(item, "jwtProvider") for item in value["providers"]]}
        elif key == "ipAllowlists" and isinstance(value, list):
            out[key] = [usable(item, "ipAllowlist") for item in value]
        elif key == "rateLimits" and isinstance(value, dict) and isinstance(value.get("limits"), list):
            # each limit on its own, so that its names are still checked (the service's place is
            # not needed to report errors)
            out[key] = {"limits": [usable(item, "gatewayRateLimit") for item in value["limits"]]}
    return out


_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}


def duration_ms(text: str) -> int:
    """'250ms' → 250, '1.5s' → 1500 (the schema guarantees the shape)."""
    unit = "ms" if text.endswith("ms") else text[-1]
    number = text[: -len(unit)]
    return round(float(number) * _UNITS_MS[unit])
