"""The positive model: does a request fit its operation's OpenAPI description?

Built by the control plane (``controlplane/request_model.py``) and pushed with the rules.
A request that does not fit is refused before any detector runs (prevent mode): 415 for a
``Content-Type`` the operation does not accept, 400 for a missing or ill-typed parameter or a
JSON body against its schema, the message naming the parameter or the JSON pointer. When it
fits, the locations the schema constrains (integers, enums, formats…) are safe: the detectors
skip them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import fastjsonschema
import jsonschema
import re2

MAX_ERRORS = 1  # the first problem is named; fixing it shows the next
# The formats whose values the detectors skip once they fit (request_model.SAFE_FORMATS), each
# with the grammar a value must fit: strict, so that "safe" means "no room for an attack". The
# same grammar for parameters and bodies (fastjsonschema's and jsonschema's own are looser, or
# absent: byte, int32).
STRICT_FORMATS = {
    "date": r"\d{4}-\d{2}-\d{2}",
    "date-time": r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})",
    "uuid": r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
    "ipv4": r"(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)",
    "ipv6": r"[0-9a-fA-F:.]{2,45}",
    "int32": r"[+-]?\d{1,10}",
    "int64": r"[+-]?\d{1,19}",
    "float": r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?",
    "double": r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?",
    "byte": r"[A-Za-z0-9+/]*={0,2}",
}
_FORMATS = {name: re2.compile(pattern) for name, pattern in STRICT_FORMATS.items()}


def fits_format(name: str, text: str) -> bool:
    grammar = _FORMATS.get(name)
    return grammar is None or grammar.fullmatch(text) is not None


def _format_checker() -> jsonschema.FormatChecker:
    checker = jsonschema.FormatChecker()
    for name in STRICT_FORMATS:
        checker.checks(name)(lambda value, name=name: not isinstance(value, str) or fits_format(name, value))
    return checker


UNREAD: Any = object()  # check() did not read the body as JSON


class _NamedTwice(ValueError):
    def __init__(self, name: str):
        super().__init__(name)
        self.name = name


def _members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members = dict(pairs)
    if len(members) != len(pairs):
        seen: set[str] = set()
        for name, _value in pairs:
            if name in seen:
                raise _NamedTwice(name)
            seen.add(name)
    return members


@dataclass(frozen=True)
class Violation:
    status: int  # 400 or 415
    location: str  # "query:limit", "header:x-trace", "body:/items/0/price", "content-type"
    message: str


class OperationModel:
    def __init__(self, data: dict[str, Any]):
        self.params: list[dict[str, Any]] = data.get("params", [])
        self.media: list[str] | None = data.get("media")
        self.body_required = bool(data.get("body_required"))
        self.safe = frozenset(data.get("safe", ()))
        schema = data.get("schema")
        self.validator: Any = None  # jsonschema's, where fastjsonschema cannot compile the schema
        self.compiled: Any = None  # fastjsonschema's: 20-30x faster on request bodies
        if isinstance(schema, dict):
            schema = _openapi30(schema) if data.get("openapi") != "3.1" else schema
            try:
                if _LATE_DRAFT_KEYWORDS & set(_keywords(schema)):
                    raise fastjsonschema.JsonSchemaDefinitionException("2019-09/2020-12 keywords")
                formats = {name: (lambda value, name=name: fits_format(name, value)) for name in STRICT_FORMATS}
                self.compiled = fastjsonschema.compile(schema, formats=formats)
            except (fastjsonschema.JsonSchemaDefinitionException, ValueError, TypeError, RecursionError):
                cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
                self.validator = cls(schema, format_checker=_format_checker())
        self._patterns: dict[str, Any] = {}

    def check(self, path: str, headers: dict[str, str], body: bytes) -> tuple[Violation | None, Any]:
        """Whether the request fits (None) or what it breaks, and its body's JSON when it was
        read for the schema (dicts all through: a member named twice is refused, since the
        backend's parser and ours might each keep a different one), else :data:`UNREAD`."""
        query: dict[str, list[str]] = {}
        for name, value in parse_qsl(urlsplit(path).query, keep_blank_values=True):
            query.setdefault(name, []).append(value)
        for p in self.params:
            values = query.get(p["name"]) if p["in"] == "query" else _header(headers, p["name"])
            where = f"{p['in']}:{p['name']}"
            if not values:
                if p.get("required"):
                    return Violation(400, where, f"the {p['in']} parameter {p['name']!r} is required"), UNREAD
                continue
            schema = p.get("schema") or {}
            for value in values:
                problem = self._value(value, schema)
                if problem:
                    return Violation(400, where, f"the {p['in']} parameter {p['name']!r} {problem}"), UNREAD
        media = (headers.get("content-type") or "").split(";", 1)[0].strip().lower()
        if self.media is not None and (body or media):
            if not any(_media_matches(m, media) for m in self.media):
                accepted = ", ".join(self.media)
                why = f"Content-Type {media or '(none)'!r} is not accepted: {accepted}"
                return Violation(415, "content-type", why), UNREAD
        elif self.media is None and body:
            return Violation(415, "content-type", "this operation takes no request body"), UNREAD
        if self.body_required and not body:
            return Violation(400, "body", "a request body is required"), UNREAD
        has_schema = self.compiled is not None or self.validator is not None
        if not (has_schema and body and (media == "application/json" or media.endswith("+json"))):
            return None, UNREAD
        try:
            document = json.loads(body, object_pairs_hook=_members)
        except _NamedTwice as twice:
            return Violation(400, "body", f"the body names the member {twice.name!r} twice in one object"), UNREAD
        except (ValueError, RecursionError):
            return Violation(400, "body", "the body is not JSON"), UNREAD
        if self.compiled is not None:
            try:
                self.compiled(document)
            except fastjsonschema.JsonSchemaValueException as failed:
                pointer = _pointer(failed.path[1:] if failed.path else [])
                message = failed.message.split(" ", 1)[1] if " " in failed.message else failed.message
                return Violation(400, f"body:{pointer or '/'}", f"body at {pointer or '/'}: {_short(message)}"), UNREAD
            return None, document
        for error in self.validator.iter_errors(document):
            pointer = _pointer(error.absolute_path)
            return Violation(
                400, f"body:{pointer or '/'}", f"body at {pointer or '/'}: {_short(error.message)}"
            ), UNREAD
        return None, document

    def _value(self, text: str, schema: dict[str, Any]) -> str | None:
        kind = schema.get("type")
        value: Any = text
        if kind == "integer":
            if not re2.fullmatch(r"[+-]?\d{1,19}", text):
                return "must be an integer"
            value = int(text)
        elif kind == "number":
            try:
                value = float(text)
            except ValueError:
                return "must be a number"
        elif kind == "boolean":
            if text not in ("true", "false"):
                return "must be true or false"
            return None
        if "enum" in schema and value not in schema["enum"] and text not in [str(e) for e in schema["enum"]]:
            return "must be one of " + ", ".join(map(str, schema["enum"]))
        if isinstance(value, (int, float)):
            if "minimum" in schema and value < schema["minimum"]:
                return f"must be at least {schema['minimum']}"
            if "maximum" in schema and value > schema["maximum"]:
                return f"must be at most {schema['maximum']}"
            return None
        fmt = schema.get("format")
        if isinstance(fmt, str) and not fits_format(fmt, text):
            return f"must be a {fmt}"
        if "maxLength" in schema and len(text) > schema["maxLength"]:
            return f"must be at most {schema['maxLength']} characters"
        if "minLength" in schema and len(text) < schema["minLength"]:
            return f"must be at least {schema['minLength']} characters"
        pattern = schema.get("pattern")
        if isinstance(pattern, str):
            compiled = self._patterns.get(pattern)
            if compiled is None:
                try:
                    compiled = self._patterns[pattern] = re2.compile(pattern)
                except re2.error:
                    return None  # a pattern RE2 cannot run is not enforced (the control plane warns)
            if not compiled.search(text):
                return "does not match its pattern"
        if schema.get("format") in ("int32", "int64") and not re2.fullmatch(r"[+-]?\d{1,19}", text):
            return "must be an integer"
        return None


# Keywords fastjsonschema (drafts 4-7) does not know: such schemas use jsonschema.
_LATE_DRAFT_KEYWORDS = frozenset(
    {
        "$defs",
        "prefixItems",
        "unevaluatedProperties",
        "unevaluatedItems",
        "dependentSchemas",
        "dependentRequired",
        "$dynamicRef",
    }
)


def _keywords(schema: Any) -> list[str]:
    out: list[str] = []
    stack = [schema]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            out.extend(k for k in value if isinstance(k, str))
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return out


def _pointer(path: Any) -> str:
    return "".join(f"/{str(p).replace('~', '~0').replace('/', '~1')}" for p in path)


def _header(headers: dict[str, str], name: str) -> list[str]:
    value = headers.get(name)
    return [value] if value is not None else []


def _media_matches(declared: str, media: str) -> bool:
    declared = declared.split(";", 1)[0].strip().lower()
    if declared in ("*/*", media):
        return True
    if declared.endswith("/*"):
        return media.startswith(declared[:-1])
    return False


def _short(message: str, limit: int = 160) -> str:
    return message if len(message) <= limit else message[: limit - 1] + "…"


def _openapi30(schema: Any) -> Any:
    """OpenAPI 3.0's schema dialect as JSON Schema: ``nullable`` becomes a null type."""
    if isinstance(schema, list):
        return [_openapi30(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _openapi30(v) for k, v in schema.items() if k not in ("nullable", "discriminator", "xml", "readOnly")}
    if schema.get("nullable") is True and "type" in out:
        out["type"] = [out["type"], "null"] if isinstance(out["type"], str) else [*out["type"], "null"]
    return out


def load_models(text: str) -> dict[str, OperationModel]:
    return {name: OperationModel(data) for name, data in json.loads(text or "{}").items()}
