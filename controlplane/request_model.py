"""The positive model of an operation, for the WAF: what its requests may contain, read from
its OpenAPI description (3.0 and 3.1; Swagger 2.0's ``consumes`` and body parameter too).

- the media types its request body may have (another ``Content-Type`` is refused, 415);
- its query and header parameters: required ones, and the type, enum, pattern and bounds of
  each (a value that does not fit is refused, 400);
- its JSON body's schema, every ``$ref`` resolved (400 naming the JSON pointer);
- the *safe* locations: values the description already constrains to something that cannot
  carry an attack (an integer, a number, a boolean, an enum, a date, an email, a UUID…), where
  the detectors need not look (fewer false positives, less CPU).

The model is plain data (JSON) pushed to the WAF service with its rules.
"""

from __future__ import annotations

from typing import Any

from .documents import Document, DocumentStore, split_pointer
from .errors import Diagnostics
from .model.openapi import ApiSpec, OperationSpec
from .waf.locations import pointer_token

# String formats whose valid values carry no attack; the service checks each value against the
# format's strict grammar (controlplane/waf/model.py STRICT_FORMATS) before skipping it. Not
# email: its grammar admits quotes and brackets ('<script>alert(1)</script>@x.io' is one).
SAFE_FORMATS = frozenset({"date", "date-time", "uuid", "ipv4", "ipv6", "int32", "int64", "float", "double", "byte"})
MAX_DEPTH = 24  # a schema deeper than this (or recursive) is cut there: not validated below, not safe
JSON_MEDIA = ("application/json",)


def _schema_ops(doc: Document, ptr: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(the path item, the operation) at ``ptr`` (``/paths/<path>/<method>``)."""
    value: Any = doc.data
    item: Any = None
    tokens = split_pointer(ptr)
    for i, token in enumerate(tokens):
        if not isinstance(value, dict):
            return None, None
        if i == len(tokens) - 1:
            item = value
        value = value.get(token)
    return (item if isinstance(item, dict) else None), (value if isinstance(value, dict) else None)


def _operation(
    store: DocumentStore, op: OperationSpec
) -> tuple[Document, dict[str, Any] | None, dict[str, Any]] | None:
    """(its document, its path item, the operation) as written in the spec."""
    doc = next((d for d in store if d.name == op.source.file), None)
    if doc is None:
        return None
    item, raw = _schema_ops(doc, op.source.pointer)
    return None if raw is None else (doc, item, raw)


class _Resolver:
    def __init__(self, store: DocumentStore, doc: Document):
        self.store = store
        self.doc = doc

    def deref(self, doc: Document, ptr: str, value: Any) -> tuple[Document, str, Any]:
        found = self.store.deref(doc, ptr, value, diags=Diagnostics())  # the spec's problems are reported elsewhere
        return found if found is not None else (doc, ptr, {})

    def schema(self, doc: Document, ptr: str, value: Any, depth: int = 0, seen: tuple[str, ...] = ()) -> Any:
        """``value`` with every ``$ref`` replaced by its target (recursion cut at MAX_DEPTH)."""
        if isinstance(value, dict) and "$ref" in value:
            key = f"{doc.name}#{value['$ref']}"
            if key in seen or depth > MAX_DEPTH:
                return {}
            seen = (*seen, key)
            doc, ptr, value = self.deref(doc, ptr, value)
        if depth > MAX_DEPTH:
            return {}
        if isinstance(value, dict):
            return {k: self.schema(doc, f"{ptr}/{k}", v, depth + 1, seen) for k, v in value.items() if k != "example"}
        if isinstance(value, list):
            return [self.schema(doc, f"{ptr}/{i}", v, depth + 1, seen) for i, v in enumerate(value)]
        return value


def operation_model(store: DocumentStore, spec: ApiSpec, op: OperationSpec) -> dict[str, Any] | None:
    found = _operation(store, op)
    if found is None:
        return None
    doc, item, raw = found
    resolver = _Resolver(store, doc)
    params: dict[tuple[str, str], dict[str, Any]] = {}
    for level, where in ((item, op.source.pointer.rsplit("/", 1)[0]), (raw, op.source.pointer)):
        for i, p in enumerate((level or {}).get("parameters") or []):
            pdoc, pptr, p = resolver.deref(doc, f"{where}/parameters/{i}", p)
            if isinstance(p, dict) and isinstance(p.get("name"), str) and isinstance(p.get("in"), str):
                params[(p["in"], p["name"])] = resolver.schema(pdoc, pptr, p)
    model: dict[str, Any] = {"params": [], "media": None, "schema": None, "safe": []}
    for (where, name), p in sorted(params.items()):
        if where not in ("query", "header"):
            continue
        schema = p.get("schema") if spec.version != "2.0" else {k: v for k, v in p.items() if k not in ("name", "in")}
        entry = {"in": where, "name": name.lower() if where == "header" else name, "required": bool(p.get("required"))}
        if isinstance(schema, dict):
            entry["schema"] = schema
            if _safe(schema):
                model["safe"].append(f"{'query' if where == 'query' else 'header'}:{entry['name']}")
        model["params"].append(entry)
    if spec.version == "2.0":
        body = next((p for (w, _n), p in params.items() if w == "body"), None)
        consumes = raw.get("consumes") or doc.data.get("consumes")
        if body is not None:
            model["media"] = list(consumes or JSON_MEDIA)
            model["schema"] = body.get("schema")
    else:
        rdoc, rptr, body = resolver.deref(doc, op.source.pointer + "/requestBody", raw.get("requestBody"))
        if isinstance(body, dict) and isinstance(body.get("content"), dict):
            model["media"] = sorted(body["content"])
            model["body_required"] = bool(body.get("required"))
            for media, content in body["content"].items():
                if _is_json(media) and isinstance(content, dict) and "schema" in content:
                    model["schema"] = resolver.schema(rdoc, f"{rptr}/content/{media}/schema", content["schema"])
                    break
    if isinstance(model["schema"], dict):
        model["safe"].extend("body:" + p for p in _safe_pointers(model["schema"], ""))
        model["openapi"] = spec.version
    return model


def _is_json(media: str) -> bool:
    kind = media.split(";", 1)[0].strip().lower()
    return kind == "application/json" or kind.endswith("+json")


def _safe(schema: dict[str, Any]) -> bool:
    kind = schema.get("type")
    if "enum" in schema or kind in ("integer", "number", "boolean"):
        return True
    return kind == "string" and schema.get("format") in SAFE_FORMATS


def _safe_pointers(schema: Any, prefix: str, depth: int = 0) -> list[str]:
    """JSON pointers (``*`` for any array index) of the body's values the schema makes safe."""
    if not isinstance(schema, dict) or depth > MAX_DEPTH:
        return []
    if _safe(schema):
        return [prefix or "/"]
    out: list[str] = []
    properties = schema.get("properties")
    if isinstance(properties, dict):
        for name, sub in properties.items():
            out.extend(_safe_pointers(sub, f"{prefix}/{pointer_token(str(name))}", depth + 1))
    items = schema.get("items")
    kind = schema.get("type")
    # (``*`` covers any member name too: without ``type: array`` an object with hostile keys fits)
    if isinstance(items, dict) and (kind == "array" or (isinstance(kind, list) and kind == ["array"])):
        out.extend(_safe_pointers(items, f"{prefix}/*", depth + 1))
    return out


STREAMED_MEDIA = frozenset(
    {"text/event-stream", "application/x-ndjson", "application/jsonl", "application/stream+json"}
)


def streamed_responses(store: DocumentStore, op: OperationSpec) -> list[str]:
    """The endless-stream media types (server-sent events, NDJSON) the operation answers with."""
    found = _operation(store, op)
    if found is None or not isinstance(found[2].get("responses"), dict):
        return []
    doc, _item, raw = found
    responses = _Resolver(store, doc).schema(doc, op.source.pointer + "/responses", raw["responses"])
    out = set()
    for response in responses.values() if isinstance(responses, dict) else ():
        content = response.get("content") if isinstance(response, dict) else None
        for media in content if isinstance(content, dict) else ():
            if str(media).split(";", 1)[0].strip().lower() in STREAMED_MEDIA:
                out.add(str(media))
    return sorted(out)


def masked_fields(store: DocumentStore, op: OperationSpec) -> tuple[str, ...]:
    """Names of the response schemas' properties marked ``x-gateway-mask: true``."""
    found = _operation(store, op)
    if found is None or not isinstance(found[2].get("responses"), dict):
        return ()
    doc, _item, raw = found
    resolver = _Resolver(store, doc)
    schema = resolver.schema(doc, op.source.pointer + "/responses", raw["responses"])
    out: set[str] = set()

    def walk(value: Any, depth: int = 0) -> None:
        if depth > MAX_DEPTH:
            return
        if isinstance(value, dict):
            props = value.get("properties")
            if isinstance(props, dict):
                out.update(
                    name for name, sub in props.items() if isinstance(sub, dict) and sub.get("x-gateway-mask") is True
                )
            for sub in value.values():
                walk(sub, depth + 1)
        elif isinstance(value, list):
            for sub in value:
                walk(sub, depth + 1)

    walk(schema)
    return tuple(sorted(out))
