"""Synthetic OpenAPI 3.0 specs of N operations, for the benchmarks.

The shape follows a large real API surface: ``/svcNN/<resource>NNN/...`` with a handful
of literal sub-paths per resource (search, export, settings/defaults, a ``:batchGet``
custom verb...), and about one path in five templated: ``/{id}`` items with typed
parameters (mostly integers, some UUIDs and patterned strings), nested sub-resources
``/{id}/parts/{partId}``, ``/{id}.json`` representations and ``/{id}:cancel`` custom
verbs. Operations carry what real ones carry (summary, tags, a query parameter, a
request body and responses through ``$ref``), and about 1% have an ``x-gateway`` override.

The output depends only on N. ``generate(n)`` also returns one concrete request path per
path template (a value of the right type for every parameter), so a benchmark can send a
request that matches a given route.

    python bench/synth.py 50000 -o /tmp/synth-50000.yaml
"""

from __future__ import annotations

import argparse
import random
import sys
import uuid
from pathlib import Path
from typing import Any

import yaml

SERVER = "http://127.0.0.1:9000"
OPS_PER_SERVICE = 1000
RESOURCE_NAMES = (
    "orders",
    "customers",
    "invoices",
    "products",
    "shipments",
    "accounts",
    "payments",
    "users",
    "groups",
    "projects",
    "tickets",
    "reports",
    "devices",
    "sessions",
    "tokens",
    "subscriptions",
    "plans",
    "coupons",
    "warehouses",
    "suppliers",
    "contracts",
    "documents",
    "folders",
    "comments",
    "events",
    "webhooks",
)
# Literal sub-paths of a resource: (suffix, methods). A leading ':' is a custom verb on the collection.
LITERAL_EXTRAS = (
    ("/search", ("get", "post")),
    ("/count", ("get",)),
    ("/export", ("get",)),
    ("/export.csv", ("get",)),
    ("/stats", ("get",)),
    ("/settings/defaults", ("get", "put")),
    ("/settings/limits", ("get", "put")),
    ("/actions/archive", ("post",)),
    ("/actions/restore", ("post",)),
    ("/bulk", ("post", "delete")),
    (":batchGet", ("get",)),
    (":import", ("post",)),
    ("/metadata", ("get",)),
    ("/summary", ("get",)),
    ("/v2/search", ("get",)),
)
ITEM_METHOD_SETS = (("get",), ("get", "delete"), ("get", "put", "delete"), ("get", "put", "patch", "delete"))


def _param_schema(rng: random.Random) -> tuple[dict[str, Any], str]:
    """A typed path parameter schema and the kind of value that matches it."""
    roll = rng.random()
    if roll < 0.55:
        return {"type": "integer", "format": "int64"}, "int"
    if roll < 0.70:
        return {"type": "integer", "minimum": 1}, "int"
    if roll < 0.85:
        return {"type": "string", "format": "uuid"}, "uuid"
    return {"type": "string", "pattern": "^[a-z][a-z0-9-]{2,40}$"}, "slug"


def _value(kind: str, rng: random.Random) -> str:
    if kind == "int":
        return str(rng.randint(1, 10**9))
    if kind == "uuid":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    return "k" + "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(11))


def _json_body(schema: str) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}


def _operation(
    method: str, path: str, service: str, resource: str, rng: random.Random, params: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    op_id = (
        method
        + "_"
        + path.strip("/")
        .replace("/", "_")
        .replace("{", "")
        .replace("}", "")
        .replace(":", "_")
        .replace(".", "_")
        .replace("-", "_")
    )
    op: dict[str, Any] = {
        "operationId": op_id,
        "summary": f"{method.upper()} {path}",
        "tags": [f"{service}-{resource}"],
    }
    if params:
        op["parameters"] = params
    if method == "get" and rng.random() < 0.3:
        op.setdefault("parameters", []).append({"$ref": "#/components/parameters/Limit"})
    if method in ("post", "put", "patch"):
        op["requestBody"] = {"required": True, "content": _json_body("Resource")}
    op["responses"] = {
        "200": {"description": "ok", "content": _json_body("Resource")},
        "default": {"$ref": "#/components/responses/Error"},
    }
    if rng.random() < 0.01:
        op["x-gateway"] = {"timeout": rng.choice(["5s", "30s", "60s"])}
    return op


def generate(n_ops: int) -> tuple[dict[str, Any], dict[str, str]]:
    """(spec, {path template: a concrete request path matching it}). Same output for the same N."""
    rng = random.Random(n_ops)
    paths: dict[str, dict[str, Any]] = {}
    examples: dict[str, str] = {}
    count = 0
    n_services = max(1, round(n_ops / OPS_PER_SERVICE))

    def add(
        path: str,
        methods: tuple[str, ...],
        service: str,
        resource: str,
        example: str,
        path_params: list[dict[str, Any]] | None = None,
    ) -> bool:
        nonlocal count
        item: dict[str, Any] = {}
        if path_params:
            item["parameters"] = path_params
        for m in methods:
            if count >= n_ops:
                break
            item[m] = _operation(m, path, service, resource, rng)
            count += 1
        if len(item) > (1 if path_params else 0):
            paths[path] = item
            examples[path] = example
        return count < n_ops

    r = 0
    while count < n_ops:
        s = r % n_services  # resources go round-robin over the services
        service = f"svc{s:02d}"
        name = RESOURCE_NAMES[(r // n_services) % len(RESOURCE_NAMES)]
        resource = f"{name}{r // n_services:03d}"
        r += 1
        base = f"/{service}/{resource}"
        if not add(base, ("get", "post"), service, resource, base):
            break
        for suffix, methods in rng.sample(LITERAL_EXTRAS, rng.randint(2, 8)):
            if not add(base + suffix, methods, service, resource, base + suffix):
                break
        n_templated = rng.choice((0, 1, 1, 2, 2, 3))
        if not n_templated or count >= n_ops:
            continue
        id_name = resource.rstrip("0123456789") + "Id"
        schema, kind = _param_schema(rng)
        if rng.random() < 0.3:
            id_param: dict[str, Any] = {"$ref": "#/components/parameters/ItemId"}
            id_name, kind = "itemId", "int"
        else:
            id_param = {"name": id_name, "in": "path", "required": True, "schema": schema}
        id_value = _value(kind, rng)
        item_path = f"{base}/{{{id_name}}}"
        if not add(item_path, rng.choice(ITEM_METHOD_SETS), service, resource, f"{base}/{id_value}", [id_param]):
            break
        others = [
            "sub",
            "sub",
            "nested",
            "json",
            "verb",
        ]
        for shape in rng.sample(others, n_templated - 1):
            if shape == "sub":
                sub = f"sub{rng.randint(0, 9)}"
                p, ex, methods = f"{item_path}/{sub}", f"{base}/{id_value}/{sub}", ("get", "post")
                params = [id_param]
            elif shape == "nested":
                sschema, skind = _param_schema(rng)
                p, methods = f"{item_path}/parts/{{partId}}", ("get", "delete")
                ex = f"{base}/{id_value}/parts/{_value(skind, rng)}"
                params = [id_param, {"name": "partId", "in": "path", "required": True, "schema": sschema}]
            elif shape == "json":
                p, ex, methods, params = f"{item_path}.json", f"{base}/{id_value}.json", ("get",), [id_param]
            else:
                p, ex, methods, params = f"{item_path}:cancel", f"{base}/{id_value}:cancel", ("post",), [id_param]
            if p in paths:
                continue
            if not add(p, methods, service, resource, ex, params):
                break
    spec = {
        "openapi": "3.0.3",
        "info": {"title": f"Synthetic API ({n_ops} operations)", "version": "1.0"},
        "servers": [{"url": SERVER}],
        "paths": paths,
        "components": {
            "parameters": {
                "ItemId": {
                    "name": "itemId",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "integer", "minimum": 1},
                },
                "Limit": {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
            },
            "schemas": {
                "Resource": {
                    "type": "object",
                    "properties": {"id": {"type": "integer"}, "name": {"type": "string"}, "labels": {"type": "object"}},
                },
                "Error": {"type": "object", "properties": {"code": {"type": "integer"}, "message": {"type": "string"}}},
            },
            "responses": {
                "Error": {"description": "error", "content": _json_body("Error")},
            },
        },
    }
    return spec, examples


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    """No anchors/aliases for shared sub-objects: real specs repeat them (or use $ref)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump(spec: dict[str, Any]) -> str:
    return yaml.dump(spec, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)


def write_spec(n_ops: int, path: Path) -> dict[str, str]:
    """Write the spec of ``n_ops`` operations to ``path`` (unless already there); return the examples."""
    spec, examples = generate(n_ops)
    text = dump(spec)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return examples


def stats(spec: dict[str, Any]) -> dict[str, int]:
    paths = spec["paths"]
    ops = sum(1 for item in paths.values() for k in item if k != "parameters")
    templated = sum(1 for p in paths if "{" in p)
    return {"operations": ops, "paths": len(paths), "templated_paths": templated}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("operations", type=int)
    p.add_argument("-o", "--output", type=Path, help="file to write (default: stdout)")
    args = p.parse_args()
    spec, _ = generate(args.operations)
    text = dump(spec)
    if args.output:
        args.output.write_text(text)
        print(stats(spec), file=sys.stderr)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
