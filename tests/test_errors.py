"""Bad input of every kind: every error at once, each located, never a traceback.

The product rule: whatever is wrong with the specs and policies, ``compile()`` returns a
CompileResult with ``ok == False`` and every error (file, JSON pointer, line, an actionable
message), and the CLI prints them as ``file:line (#pointer): error [code]: message`` and
exits with 1.

* ``CASES``: one table entry per kind of bad input, with the errors it must produce;
* CLI tests through a real ``python -m controlplane`` process;
* a property test mutating the bundled examples in ``specs/`` at random.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controlplane import CompileResult, Diagnostic, compile
from controlplane.documents import _Loader
from tests.conftest import REPO

SPEC_HEAD = """\
openapi: 3.0.3
info: {title: t, version: "1"}
servers: [{url: "http://backend.example.com"}]
"""

POLICY_HEAD = """\
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
"""

UPSTREAM = """\
upstreams:
  - {name: backend, endpoints: ["127.0.0.1:9000"]}
"""

# file:line[:column] (#pointer): error [code]: message -- the pointer part is absent for
# whole-file errors, the column present for YAML and JSON syntax errors
ERROR_LINE = re.compile(
    r"^(?P<file>[^\s:][^:]*):(?P<line>\d+)(?::(?P<column>\d+))?(?: \(#(?P<pointer>.*?)\))?"
    r": error \[(?P<code>[a-z0-9-]+)\]: (?P<message>.+)$"
)


def line_of(text: str, needle: str) -> int:
    """1-based line of the only line of ``text`` containing ``needle``."""
    found = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    assert len(found) == 1, f"{needle!r} is on lines {found}"
    return found[0]


@dataclass(frozen=True)
class Expect:
    """One error that must be reported."""

    file: str
    pointer: str
    code: str
    words: tuple[str, ...]  # each must occur in the message (case-insensitive)
    line: int | None = None  # checked when given


@dataclass(frozen=True)
class Case:
    id: str
    files: dict[str, str | bytes]
    expected: tuple[Expect, ...]
    paths: tuple[str, ...] = ()  # what to compile; default: every file written
    exact: bool = False  # the expected errors are all the errors


def _cases() -> Iterator[Case]:
    # -- documents that are not YAML/JSON, or not documents --------------------------------
    text = SPEC_HEAD + "paths:\n  /a:\n    get: {operationId: a}\n    post: operationId: b\n"
    yield Case(
        "broken-yaml",
        {"a.yaml": text},
        (Expect("a.yaml", "", "yaml", ("invalid yaml", "mapping values"), line_of(text, "post: operationId")),),
        exact=True,
    )

    text = '{\n  "openapi": "3.0.3",\n  "info": {"title": "t", "version": "1",},\n  "paths": {}\n}\n'
    yield Case(
        "broken-json",
        {"a.json": text},
        (Expect("a.json", "", "json", ("invalid json", "property name"), line_of(text, '"info"')),),
        exact=True,
    )

    yield Case(
        "empty-file", {"a.yaml": ""}, (Expect("a.yaml", "", "unknown-document", ("openapi", "policy"), 1),), exact=True
    )
    yield Case(
        "whitespace-only-file",
        {"a.yaml": "\n\n   \n"},
        (Expect("a.yaml", "", "unknown-document", ("openapi", "policy"), 1),),
        exact=True,
    )
    yield Case(
        "yaml-list",
        {"a.yaml": "- openapi: 3.0.3\n- paths: {}\n"},
        (Expect("a.yaml", "", "unknown-document", ("openapi", "policy"), 1),),
        exact=True,
    )
    yield Case(
        "yaml-scalar",
        {"a.yaml": "just some words\n"},
        (Expect("a.yaml", "", "unknown-document", ("openapi", "policy"), 1),),
        exact=True,
    )
    yield Case(
        "binary-garbage-yaml",
        {"a.yaml": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe"},
        (Expect("a.yaml", "", "yaml", ("invalid yaml", "character"), 1),),
        exact=True,
    )
    yield Case(
        "binary-garbage-json",
        {"a.json": b"\x00\x01\x02\xff\xfe\xfd"},
        (Expect("a.json", "", "json", ("invalid json",), 1),),
        exact=True,
    )
    text = SPEC_HEAD + 'x-note: "caf\xe9"\npaths: {}\n'
    yield Case(
        "invalid-utf8",
        {"a.yaml": text.encode("latin-1")},
        (Expect("a.yaml", "", "yaml", ("invalid yaml", "utf-8"), line_of(text, "x-note")),),
        exact=True,
    )

    text = '{\n  "openapi": "3.0.3",\n  "info": {"title": "\\ud83d\\ude00", "version": "\\ud800"},\n  "paths": {}\n}\n'
    yield Case(
        "json-lone-surrogate",
        {"a.json": text},
        (Expect("a.json", "/info/version", "json", ("invalid json", "surrogate")),),
        exact=True,
    )

    # -- $ref --------------------------------------------------------------------------------
    text = SPEC_HEAD + "paths:\n  /a:\n    $ref: missing.yaml\n"
    yield Case(
        "ref-missing-file",
        {"a.yaml": text},
        (
            Expect(
                "a.yaml", "/paths/~1a/$ref", "unreadable-file", ("cannot read", "missing.yaml"), line_of(text, "$ref")
            ),
        ),
        exact=True,
    )
    text = SPEC_HEAD + "paths:\n  /a:\n    $ref: '#/components/pathItems/nope'\n  /b:\n    $ref: 'b.yaml#/nope'\n"
    yield Case(
        "ref-missing-pointer",
        {"a.yaml": text, "b.yaml": "get: {operationId: b}\n"},
        (
            Expect(
                "a.yaml",
                "/paths/~1a/$ref",
                "ref",
                ("unresolvable", "#/components/pathItems/nope"),
                line_of(text, "pathItems/nope"),
            ),
            Expect("a.yaml", "/paths/~1b/$ref", "ref", ("unresolvable", "b.yaml", "#/nope"), line_of(text, "b.yaml#")),
        ),
        paths=("a.yaml",),
        exact=True,
    )
    text = SPEC_HEAD + "paths:\n  /a:\n    $ref: '#/x-one'\nx-one: {$ref: '#/x-two'}\nx-two: {$ref: '#/x-one'}\n"
    yield Case(
        "ref-circular",
        {"a.yaml": text},
        (Expect("a.yaml", "/x-two", "ref", ("circular",), line_of(text, "x-two:")),),
        exact=True,
    )
    a = SPEC_HEAD + "paths:\n  /a:\n    $ref: b.yaml\n"
    yield Case(
        "ref-circular-across-files",
        {"a.yaml": a, "b.yaml": "$ref: a.yaml#/paths/~1a\n"},
        (Expect("a.yaml", "/paths/~1a", "ref", ("circular",), line_of(a, "/a:")),),
        paths=("a.yaml",),
        exact=True,
    )

    # -- OpenAPI content ---------------------------------------------------------------------
    text = SPEC_HEAD + "paths:\n  /a:\n    get: {operationId: same}\n  /b:\n    post: {operationId: same}\n"
    yield Case(
        "duplicate-operation-id",
        {"a.yaml": text},
        (
            Expect(
                "a.yaml",
                "/paths/~1b/post/operationId",
                "duplicate-operation-id",
                ("duplicate", "operationid", "'same'", "get /a"),
                line_of(text, "post:"),
            ),
        ),
        exact=True,
    )

    text = SPEC_HEAD + "paths:\n  /a/{x}:\n    get: {operationId: byX}\n  /a/{y}:\n    get: {operationId: byY}\n"
    yield Case(
        "route-conflict-parameter-names",
        {"a.yaml": text},
        (Expect("a.yaml", "/paths/~1a~1{y}/get", "route-conflict", ("get", "/a/{x}", "/a/{y}"), line_of(text, "byY")),),
        exact=True,
    )

    policy = (
        POLICY_HEAD
        + UPSTREAM
        + (
            "apis:\n"
            "  - {name: one, spec: one.yaml, upstream: backend, pathPrefix: /shop}\n"
            "  - {name: two, spec: two.yaml, upstream: backend, pathPrefix: /shop}\n"
        )
    )
    one = SPEC_HEAD + "paths:\n  /items:\n    get: {operationId: listItems}\n"
    two = SPEC_HEAD + "paths:\n  /items:\n    get: {operationId: listAllItems}\n"
    yield Case(
        "route-conflict-two-specs-one-prefix",
        {"p.yaml": policy, "one.yaml": one, "two.yaml": two},
        (
            Expect(
                "two.yaml",
                "/paths/~1items/get",
                "route-conflict",
                ("get", "/shop/items", "one.yaml"),
                line_of(two, "get:"),
            ),
        ),
        paths=("p.yaml",),
        exact=True,
    )

    text = SPEC_HEAD + (
        "paths:\n"
        "  /a/{:\n    get: {}\n"
        "  /b/{}:\n    get: {}\n"
        "  c:\n    get: {}\n"
        "  /d/{x}{y}:\n    get: {}\n"
        "  /e/{x}/{x}:\n    get: {}\n"
        "  /f}:\n    get: {}\n"
    )
    yield Case(
        "malformed-path-templates",
        {"a.yaml": text},
        (
            Expect("a.yaml", "/paths/~1a~1{", "path-template", ("invalid path", "brace"), line_of(text, "/a/{:")),
            Expect(
                "a.yaml", "/paths/~1b~1{}", "path-template", ("invalid path", "empty parameter"), line_of(text, "/b/{}")
            ),
            Expect("a.yaml", "/paths/c", "path-template", ("invalid path", "start with '/'"), line_of(text, "  c:")),
            Expect("a.yaml", "/paths/~1d~1{x}{y}", "path-template", ("invalid path", "adjacent"), line_of(text, "/d/")),
            Expect("a.yaml", "/paths/~1e~1{x}~1{x}", "path-template", ("'x'", "twice"), line_of(text, "/e/")),
            Expect("a.yaml", "/paths/~1f}", "path-template", ("invalid path", "brace"), line_of(text, "/f}")),
        ),
        exact=True,
    )

    yield Case(
        "unsupported-openapi-version",
        {"a.yaml": "openapi: 4.0.0\npaths: {}\n"},
        (Expect("a.yaml", "/openapi", "openapi", ("unsupported", "4.0.0", "3.1"), 1),),
        exact=True,
    )
    yield Case(
        "unsupported-swagger-version",
        {"a.yaml": "info: {title: t}\nswagger: '1.2'\npaths: {}\n"},
        (Expect("a.yaml", "/swagger", "openapi", ("unsupported", "1.2", "2.0"), 2),),
        exact=True,
    )

    text = SPEC_HEAD + (
        "x-gateway: {timeout: 5}\n"
        "paths:\n"
        "  /a:\n"
        "    x-gateway: [fast]\n"
        "    get:\n"
        "      operationId: getA\n"
        "      x-gateway: {speed: 11, retries: {attempts: -1}, sensitive: 'yes'}\n"
    )
    yield Case(
        "bad-x-gateway",
        {"a.yaml": text},
        (
            Expect(
                "a.yaml",
                "/x-gateway/timeout",
                "policy-schema",
                ("not of type", "string"),
                line_of(text, "x-gateway: {timeout"),
            ),
            Expect(
                "a.yaml", "/paths/~1a/x-gateway", "policy-schema", ("not of type", "object"), line_of(text, "[fast]")
            ),
            Expect(
                "a.yaml",
                "/paths/~1a/get/x-gateway/speed",
                "policy-schema",
                ("unknown key", "speed", "timeout"),
                line_of(text, "speed"),
            ),
            Expect(
                "a.yaml",
                "/paths/~1a/get/x-gateway/retries/attempts",
                "policy-schema",
                ("minimum",),
                line_of(text, "speed"),
            ),
            Expect(
                "a.yaml", "/paths/~1a/get/x-gateway/sensitive", "policy-schema", ("boolean",), line_of(text, "speed")
            ),
        ),
        exact=True,
    )

    text = """\
swagger: "2.0"
info: {title: t, version: "1"}
host: backend.example.com
basePath: /v1{
schemes: https
paths:
  /a:
    get: {operationId: getA}
"""
    yield Case(
        "bad-swagger-server-fields",
        {"a.yaml": text},
        (
            Expect("a.yaml", "/basePath", "openapi", ("basepath", "{"), line_of(text, "basePath")),
            Expect("a.yaml", "/schemes", "openapi", ("schemes", "list"), line_of(text, "schemes")),
        ),
    )

    # -- policies ----------------------------------------------------------------------------
    spec = SPEC_HEAD + "paths:\n  /a:\n    get: {operationId: getA}\n"
    text = POLICY_HEAD + (
        "colour: blue\n"
        "listeners:\n"
        "  - {name: public, port: 8080, bogus: 1}\n"
        "upstreams:\n"
        "  - {name: backend, endpoints: ['127.0.0.1:9000'], keepalive: true}\n"
        "apis:\n"
        "  - {name: a, specc: s.yaml, upstream: backend}\n"
    )
    yield Case(
        "policy-unknown-keys",
        {"p.yaml": text, "s.yaml": spec},
        (
            Expect(
                "p.yaml", "/colour", "policy-schema", ("unknown key", "colour", "listeners"), line_of(text, "colour")
            ),
            Expect(
                "p.yaml",
                "/listeners/0/bogus",
                "policy-schema",
                ("unknown key", "bogus", "port"),
                line_of(text, "bogus"),
            ),
            Expect(
                "p.yaml",
                "/upstreams/0/keepalive",
                "policy-schema",
                ("unknown key", "keepalive", "endpoints"),
                line_of(text, "keepalive"),
            ),
            Expect(
                "p.yaml", "/apis/0/specc", "policy-schema", ("unknown key", "specc", "spec"), line_of(text, "specc")
            ),
            Expect("p.yaml", "/apis/0", "policy-schema", ("'spec'", "required"), line_of(text, "specc")),
        ),
        paths=("p.yaml",),
    )

    text = POLICY_HEAD + (
        "gateway: {accessLog: 'yes', maxConnections: many}\n"
        "headers: {identityHeaders: x-tenant}\n"
        "listeners:\n"
        "  - {name: public, port: '8080'}\n"
        "  - {name: Admin_Port, port: 80.0}\n"
        "upstreams: {name: backend}\n"
        "apis: 5\n"
    )
    yield Case(
        "policy-wrong-types",
        {"p.yaml": text},
        (
            Expect(
                "p.yaml", "/gateway/accessLog", "policy-schema", ("not of type", "boolean"), line_of(text, "gateway")
            ),
            Expect(
                "p.yaml",
                "/gateway/maxConnections",
                "policy-schema",
                ("not of type", "integer"),
                line_of(text, "gateway"),
            ),
            Expect(
                "p.yaml",
                "/headers/identityHeaders",
                "policy-schema",
                ("not of type", "array"),
                line_of(text, "headers"),
            ),
            Expect("p.yaml", "/listeners/0/port", "policy-schema", ("not of type", "integer"), line_of(text, "'8080'")),
            Expect(
                "p.yaml", "/listeners/1/name", "policy-schema", ("admin_port", "lower-case"), line_of(text, "Admin")
            ),
            Expect("p.yaml", "/listeners/1/port", "policy-schema", ("80.0", "integer"), line_of(text, "Admin")),
            Expect("p.yaml", "/upstreams", "policy-schema", ("not of type", "array"), line_of(text, "upstreams")),
            Expect("p.yaml", "/apis", "policy-schema", ("not of type", "array"), line_of(text, "apis")),
        ),
        exact=True,
    )

    text = POLICY_HEAD + UPSTREAM + "apis:\n  - {name: a, spec: nowhere/missing.yaml, upstream: backend}\n"
    yield Case(
        "policy-missing-spec",
        {"p.yaml": text},
        (
            Expect(
                "p.yaml", "/apis/0/spec", "unreadable-file", ("cannot read", "missing.yaml"), line_of(text, "nowhere")
            ),
        ),
    )
    text = POLICY_HEAD + UPSTREAM + "apis:\n  - {name: a, spec: p.yaml, upstream: backend}\n"
    yield Case(
        "policy-spec-is-not-a-spec",
        {"p.yaml": text},
        (Expect("p.yaml", "/apis/0/spec", "not-a-spec", ("p.yaml", "not an openapi"), line_of(text, "spec:")),),
        exact=True,
    )

    text = (
        POLICY_HEAD
        + UPSTREAM
        + (
            "listeners:\n  - {name: public, port: 8080}\n"
            "apis:\n"
            "  - name: a\n    spec: s.yaml\n    upstream: elsewhere\n"
            "  - name: b\n    spec: t.yaml\n    upstream: backend\n    listeners: [public, internal]\n"
        )
    )
    t = spec.replace("getA", "getB")
    yield Case(
        "policy-unknown-upstream-and-listener",
        {"p.yaml": text, "s.yaml": spec, "t.yaml": t},
        (
            Expect(
                "p.yaml",
                "/apis/0/upstream",
                "unknown-upstream",
                ("no upstream", "elsewhere"),
                line_of(text, "elsewhere"),
            ),
            Expect(
                "p.yaml",
                "/apis/1/listeners",
                "unknown-listener",
                ("no listener", "internal"),
                line_of(text, "internal"),
            ),
        ),
        paths=("p.yaml",),
        exact=True,
    )

    text = (
        POLICY_HEAD
        + UPSTREAM
        + (
            "apis:\n"
            "  - name: a\n    spec: s.yaml\n    upstream: backend\n"
            "    operations:\n"
            "      getA: {timeout: 1s}\n"
            "      getZ: {timeout: 1s}\n"
            "      GET /zz: {sensitive: true}\n"
        )
    )
    yield Case(
        "policy-unknown-operations",
        {"p.yaml": text, "s.yaml": spec},
        (
            Expect(
                "p.yaml",
                "/apis/0/operations/getZ",
                "unknown-operation",
                ("no operation", "getz"),
                line_of(text, "getZ"),
            ),
            Expect(
                "p.yaml",
                "/apis/0/operations/GET ~1zz",
                "unknown-operation",
                ("no operation", "get /zz"),
                line_of(text, "GET /zz"),
            ),
        ),
        paths=("p.yaml",),
        exact=True,
    )

    text = (
        POLICY_HEAD
        + UPSTREAM
        + (
            "listeners:\n"
            "  - {name: one, port: 8080}\n"
            "  - {name: two, port: 8080}\n"
            "  - {name: three, port: 8081, address: 127.0.0.1}\n"
            "  - {name: four, port: 8081, address: 127.0.0.1}\n"
            "apis:\n  - {name: a, spec: s.yaml, upstream: backend}\n"
        )
    )
    yield Case(
        "duplicate-listener-ports",
        {"p.yaml": text, "s.yaml": spec},
        (
            Expect("p.yaml", "/listeners/1/port", "port-conflict", ("'two'", "'one'", "8080"), line_of(text, "two")),
            Expect(
                "p.yaml",
                "/listeners/3/port",
                "port-conflict",
                ("'four'", "'three'", "127.0.0.1:8081"),
                line_of(text, "four"),
            ),
        ),
        paths=("p.yaml",),
        exact=True,
    )

    # -- deep, huge, self-referencing ------------------------------------------------------
    text = SPEC_HEAD + "x-deep: " + "[" * 5000 + "]" * 5000 + "\npaths: {}\n"
    yield Case(
        "deep-yaml",
        {"a.yaml": text},
        (Expect("a.yaml", "", "yaml", ("invalid yaml", "nesting depth"), line_of(text, "x-deep")),),
        exact=True,
    )
    text = '{"openapi": "3.0.3",\n "x-deep": ' + "[" * 100_000 + "]" * 100_000 + "}\n"
    yield Case("deep-json", {"a.json": text}, (Expect("a.json", "", "json", ("nests too deeply",), 1),), exact=True)
    text = POLICY_HEAD + "metadata:\n  name: " + "[" * 990 + "]" * 990 + "\n"
    yield Case(
        "deep-policy-value",
        {"p.yaml": text},
        (Expect("p.yaml", "", "policy-schema", ("nests too deeply",), 1),),
        exact=True,
    )
    text = SPEC_HEAD + "x-loop: &loop\n  again: *loop\npaths:\n  /a:\n    get: {operationId: getA}\n"
    yield Case(
        "recursive-yaml-alias",
        {"a.yaml": text},
        (Expect("a.yaml", "/x-loop/again", "yaml", ("alias", "contains it"), line_of(text, "again")),),
        exact=True,
    )

    text = SPEC_HEAD + "x-big: " + "9" * 5000 + "\npaths: {}\n"
    yield Case(
        "huge-number-yaml",
        {"a.yaml": text},
        (Expect("a.yaml", "", "yaml", ("5000 digits", "too many"), line_of(text, "x-big")),),
        exact=True,
    )
    text = '{\n  "openapi": "3.0.3",\n  "x-big": ' + "9" * 5000 + "\n}\n"
    yield Case(
        "huge-number-json",
        {"a.json": text},
        (Expect("a.json", "", "json", ("5000 digits", "too many"), line_of(text, "x-big")),),
        exact=True,
    )
    big = 10**30
    text = POLICY_HEAD + (
        f"gateway: {{maxConnections: {big}}}\n"
        "listeners:\n  - {name: public, port: 4294967377}\n"
        "upstreams:\n"
        f"  - name: backend\n    endpoints: ['127.0.0.1:9000']\n    circuitBreaker: {{maxRequests: {big}}}\n"
        "    timeout: 99999999999999999999h\n"
        "apis:\n  - {name: a, spec: s.yaml, upstream: backend, defaults: {timeout: 100000000000000000ms}}\n"
    )
    yield Case(
        "huge-numbers-policy",
        {"p.yaml": text, "s.yaml": spec},
        (
            Expect("p.yaml", "/gateway/maxConnections", "policy-schema", ("maximum",), line_of(text, "gateway")),
            Expect("p.yaml", "/listeners/0/port", "policy-schema", ("maximum", "65535"), line_of(text, "4294967377")),
            Expect(
                "p.yaml",
                "/upstreams/0/circuitBreaker/maxRequests",
                "policy-schema",
                ("maximum", "4294967295"),
                line_of(text, "maxRequests"),
            ),
            Expect("p.yaml", "/upstreams/0/timeout", "policy-schema", ("duration", "digits"), line_of(text, "999h")),
            Expect(
                "p.yaml", "/apis/0/defaults/timeout", "policy-schema", ("duration", "digits"), line_of(text, "000ms")
            ),
        ),
        paths=("p.yaml",),
        exact=True,
    )
    text = SPEC_HEAD + "x-gateway: {timeout: 99999999999999999999h}\npaths:\n  /a:\n    get: {operationId: getA}\n"
    yield Case(
        "huge-duration-x-gateway",
        {"a.yaml": text},
        (Expect("a.yaml", "/x-gateway/timeout", "policy-schema", ("duration",), line_of(text, "x-gateway")),),
        exact=True,
    )

    # -- several independent errors in one file: all of them in one run ----------------------
    text = SPEC_HEAD + (
        "x-gateway: {timeout: 5}\n"
        "paths:\n"
        "  /a/{:\n    get: {operationId: broken}\n"
        "  /b:\n    get: {operationId: twin}\n"
        "  /c:\n    get: {operationId: twin}\n"
        "  /d:\n    $ref: '#/components/pathItems/missing'\n"
        "  /e:\n    $ref: other.yaml\n"
        "  /f/{x}:\n    get: {operationId: fx}\n"
        "  /f/{y}:\n    get: {operationId: fy}\n"
        "  /g:\n    get: {operationId: g, x-gateway: {retries: {attempts: -1}}}\n"
    )
    yield Case(
        "spec-with-many-errors",
        {"a.yaml": text},
        (
            Expect("a.yaml", "/x-gateway/timeout", "policy-schema", ("string",), line_of(text, "x-gateway: {timeout")),
            Expect("a.yaml", "/paths/~1a~1{", "path-template", ("brace",), line_of(text, "/a/{")),
            Expect(
                "a.yaml", "/paths/~1c/get/operationId", "duplicate-operation-id", ("twin",), line_of(text, "/c:") + 1
            ),
            Expect("a.yaml", "/paths/~1d/$ref", "ref", ("unresolvable",), line_of(text, "pathItems/missing")),
            Expect("a.yaml", "/paths/~1e/$ref", "unreadable-file", ("other.yaml",), line_of(text, "other.yaml")),
            Expect("a.yaml", "/paths/~1f~1{y}/get", "route-conflict", ("/f/{x}",), line_of(text, "fy")),
            Expect(
                "a.yaml",
                "/paths/~1g/get/x-gateway/retries/attempts",
                "policy-schema",
                ("minimum",),
                line_of(text, "attempts"),
            ),
        ),
        exact=True,
    )

    text = POLICY_HEAD + (
        "colour: blue\n"
        "listeners:\n"
        "  - {name: a, port: 8080}\n"
        "  - {name: b, port: 8080}\n"
        "  - {name: c, port: '8081'}\n"
        "upstreams:\n"
        "  - {name: backend, endpoints: ['127.0.0.1:9000'], timeout: 5}\n"
        "apis:\n"
        "  - name: one\n    spec: s.yaml\n    upstream: nowhere\n"
        "  - name: two\n    spec: t.yaml\n    upstream: backend\n    listeners: [a, c, zz]\n"
        "    operations:\n      nope: {timeout: 1s}\n      getB: {timeout: soon}\n"
        "  - name: three\n    spec: missing.yaml\n    upstream: backend\n"
    )
    yield Case(
        "policy-with-many-errors",
        {"p.yaml": text, "s.yaml": spec, "t.yaml": t},
        (
            Expect("p.yaml", "/colour", "policy-schema", ("unknown key",), line_of(text, "colour")),
            Expect("p.yaml", "/listeners/1/port", "port-conflict", ("'b'", "'a'"), line_of(text, "name: b, port")),
            Expect("p.yaml", "/listeners/2/port", "policy-schema", ("integer",), line_of(text, "name: c, port")),
            Expect("p.yaml", "/upstreams/0/timeout", "policy-schema", ("string",), line_of(text, "backend, endpoints")),
            Expect("p.yaml", "/apis/0/upstream", "unknown-upstream", ("nowhere",), line_of(text, "nowhere")),
            Expect("p.yaml", "/apis/1/listeners", "unknown-listener", ("'zz'",), line_of(text, "zz")),
            Expect("p.yaml", "/apis/1/operations/nope", "unknown-operation", ("'nope'",), line_of(text, "nope")),
            Expect(
                "p.yaml",
                "/apis/1/operations/getB/timeout",
                "policy-schema",
                ("soon", "duration"),
                line_of(text, "soon"),
            ),
            Expect("p.yaml", "/apis/2/spec", "unreadable-file", ("missing.yaml",), line_of(text, "missing.yaml")),
        ),
        paths=("p.yaml",),
        exact=True,
    )

    # A wrong pathPrefix: the api's spec is still checked, but its routes (which would be guesses)
    # do not produce conflicts of their own.
    text = (
        POLICY_HEAD
        + UPSTREAM
        + (
            "apis:\n"
            "  - {name: one, spec: s.yaml, upstream: backend}\n"
            "  - {name: two, spec: t.yaml, upstream: backend, pathPrefix: shop}\n"
        )
    )
    s = SPEC_HEAD.replace("example.com", "example.com/shop") + "paths:\n  /a:\n    get: {operationId: getA}\n"
    t2 = SPEC_HEAD.replace("example.com", "example.com/shop") + (
        "paths:\n  /a:\n    get: {operationId: getA2}\n  /b:\n    get: {operationId: getA2}\n"
    )
    yield Case(
        "policy-error-does-not-cascade",
        {"p.yaml": text, "s.yaml": s, "t.yaml": t2},
        (
            Expect(
                "p.yaml", "/apis/1/pathPrefix", "policy-schema", ("'shop'", "starts with '/'"), line_of(text, "two")
            ),
            Expect(
                "t.yaml", "/paths/~1b/get/operationId", "duplicate-operation-id", ("getA2",), line_of(t2, "/b:") + 1
            ),
        ),
        paths=("p.yaml",),
        exact=True,
    )

    yield Case(
        "errors-in-several-files",
        {
            "broken.yaml": "openapi: 3.0.3\npaths: {\n",
            "empty.json": "",
            "v4.yaml": "openapi: 4.0.0\n",
            "s.yaml": SPEC_HEAD + "paths:\n  /a/{:\n    get: {}\n",
        },
        (
            Expect("broken.yaml", "", "yaml", ("invalid yaml",), 3),
            Expect("empty.json", "", "json", ("invalid json",), 1),
            Expect("v4.yaml", "/openapi", "openapi", ("unsupported",), 1),
            Expect("s.yaml", "/paths/~1a~1{", "path-template", ("brace",), 5),
        ),
        exact=True,
    )


CASES = list(_cases())


def write(root: Path, files: dict[str, str | bytes]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8", errors="surrogatepass")  # lone surrogates: invalid UTF-8


def assert_located(result: CompileResult) -> None:
    """Every diagnostic names a file; every error also a place in it."""
    for d in result.diagnostics:
        assert d.file, d
        assert "\n" not in d.message, d
    for d in result.errors:
        if d.code in ("no-input", "missing-input"):
            continue  # about a path given on the command line, not about a place in a document
        assert d.pointer or d.line is not None, f"no line for a whole-file error: {d}"


def find(errors: list[Diagnostic], e: Expect) -> Diagnostic:
    at = [d for d in errors if d.file == e.file and d.pointer == e.pointer and d.code == e.code]
    assert at, f"no [{e.code}] error at {e.file}#{e.pointer}; errors:\n" + "\n".join(map(str, errors))
    for d in at:
        if all(w.lower() in d.message.lower() for w in e.words):
            return d
    raise AssertionError(f"{e.file}#{e.pointer}: no message with {e.words}: {[d.message for d in at]}")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_reported(case: Case, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, case.files)
    monkeypatch.chdir(tmp_path)  # diagnostics name files relative to the working directory
    result = compile(list(case.paths or case.files))
    assert not result.ok
    assert result.resources is None and result.gateway is None
    assert_located(result)
    for e in case.expected:
        d = find(result.errors, e)
        if e.line is not None:
            assert d.line == e.line, f"{d}: expected line {e.line}"
    if case.exact:
        assert len(result.errors) == len(case.expected), "\n".join(map(str, result.errors))


# Every kind of bad input the product promises to report, and the cases that show it.
KINDS = {
    "broken YAML": ["broken-yaml", "invalid-utf8"],
    "broken JSON": ["broken-json", "json-lone-surrogate"],
    "$ref to a missing file": ["ref-missing-file"],
    "$ref to a missing pointer": ["ref-missing-pointer"],
    "circular $ref": ["ref-circular", "ref-circular-across-files"],
    "duplicate operationId": ["duplicate-operation-id"],
    "templates differing only by parameter names": ["route-conflict-parameter-names"],
    "same path+method from two specs at one prefix": ["route-conflict-two-specs-one-prefix"],
    "unknown policy keys": ["policy-unknown-keys"],
    "wrong types in a policy": ["policy-wrong-types"],
    "policy pointing at a missing spec": ["policy-missing-spec", "policy-spec-is-not-a-spec"],
    "unknown upstream/listener names": ["policy-unknown-upstream-and-listener"],
    "unknown operation keys": ["policy-unknown-operations"],
    "bad x-gateway values": ["bad-x-gateway", "huge-duration-x-gateway"],
    "malformed path templates": ["malformed-path-templates"],
    "unsupported OpenAPI versions": ["unsupported-openapi-version", "unsupported-swagger-version"],
    "empty files": ["empty-file", "whitespace-only-file"],
    "a YAML list or scalar": ["yaml-list", "yaml-scalar"],
    "binary garbage": ["binary-garbage-yaml", "binary-garbage-json"],
    "very deep nesting": ["deep-yaml", "deep-json", "deep-policy-value", "recursive-yaml-alias"],
    "huge numbers": ["huge-number-yaml", "huge-number-json", "huge-numbers-policy"],
    "duplicate listener ports": ["duplicate-listener-ports"],
    "several errors in one file": ["spec-with-many-errors", "policy-with-many-errors", "policy-error-does-not-cascade"],
    "errors in several files": ["errors-in-several-files"],
}


def test_cases_cover_every_kind() -> None:
    ids = [c.id for c in CASES]
    assert len(set(ids)) == len(ids)
    for kind, cases in KINDS.items():
        assert set(cases) <= set(ids), kind


def test_compile_of_missing_path_is_an_error(tmp_path: Path) -> None:
    result = compile([tmp_path / "nope.yaml"])
    assert not result.ok
    assert [d.code for d in result.errors] == ["missing-input"]
    assert result.errors[0].file.endswith("nope.yaml")


def test_ref_with_nul_and_bad_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Values that make the standard library raise ValueError instead of OSError."""
    spec = SPEC_HEAD.replace("http://backend.example.com", "http://[broken") + (
        "paths:\n  /a:\n    $ref: 'a%00.yaml'\n  /b/{x}:\n    get:\n      operationId: getB\n"
        "      parameters: [{name: x, in: path, required: true, schema: {pattern: '^caf\u00e9[\u00e0-\u00ff]$'}}]\n"
    )
    policy = POLICY_HEAD + (
        "upstreams:\n  - {name: backend, url: 'http://[::1'}\n"
        'apis:\n  - {name: a, spec: "b\\0.yaml", upstream: backend}\n  - {name: s, spec: s.yaml, upstream: backend}\n'
    )
    write(tmp_path, {"s.yaml": spec, "p.yaml": policy})
    monkeypatch.chdir(tmp_path)
    result = compile(["p.yaml"])
    assert not result.ok
    assert_located(result)
    find(result.errors, Expect("s.yaml", "/paths/~1a/$ref", "unreadable-file", ("cannot read", "null")))
    find(result.errors, Expect("p.yaml", "/apis/0/spec", "unreadable-file", ("cannot read", "null")))
    find(result.errors, Expect("p.yaml", "/upstreams/0/url", "upstream", ("url", "host")))
    assert any(w.pointer == "/servers/0/url" and "invalid" in w.message for w in result.warnings)


# -- the command line -----------------------------------------------------------------------


def run_cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controlplane", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def error_lines(stderr: str) -> list[re.Match[str]]:
    """The error lines of the CLI output; every line is an error, a warning or the summary."""
    out = []
    for line in stderr.splitlines():
        if ": warning [" in line or ": note [" in line or line.startswith("    … and the same in "):
            continue
        if re.fullmatch(r"\d+ error\(s\), \d+ warning\(s\)( \(\d+ of them repeats, grouped above\))?", line):
            continue
        m = ERROR_LINE.match(line)
        if m is None and re.search(r": error \[(no-input|missing-input)\]: ", line):
            continue  # about a path given on the command line: no line to show
        assert m, f"not file:line (#pointer): error [code]: message: {line!r}"
        out.append(m)
    return out


# Inputs compiled together: specs alone (a policy would leave the ones it does not mount unread)
# or one policy with what it mounts.
CLI_GROUPS = {
    "specs": (
        "broken-yaml",
        "binary-garbage-yaml",
        "unsupported-openapi-version",
        "recursive-yaml-alias",
        "spec-with-many-errors",
        "errors-in-several-files",
    ),
    "policy": ("policy-with-many-errors",),
    "numbers": ("huge-numbers-policy",),
}


@pytest.mark.parametrize("group", list(CLI_GROUPS))
@pytest.mark.parametrize("command", ["validate", "dump"])
def test_cli_prints_every_error_located(command: str, group: str, tmp_path: Path) -> None:
    """Several bad inputs in one run: every error, as file:line (#pointer): error [code]: message."""
    paths, wanted = [], set()
    for case in CASES:
        if case.id not in CLI_GROUPS[group]:
            continue
        write(tmp_path / case.id, case.files)
        paths += [f"{case.id}/{name}" for name in case.paths or case.files]
        for e in case.expected:
            assert e.line is not None
            wanted.add((f"{case.id}/{e.file}", e.line, e.pointer, e.code))
    proc = run_cli(command, *paths, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stdout == ""
    errors = error_lines(proc.stderr)
    found = {(m["file"], int(m["line"]), m["pointer"] or "", m["code"]) for m in errors}
    assert wanted <= found, "missing:\n" + "\n".join(map(str, sorted(wanted - found)))
    assert len(errors) == len(wanted)  # nothing twice, nothing that follows from another error
    summary = proc.stderr.strip().splitlines()[-1]
    assert summary.startswith(f"{len(errors)} error(s)")


@pytest.mark.parametrize(
    ("name", "content", "code"),
    [
        ("v4.yaml", "openapi: 4.0.0\ninfo: {title: t, version: '1'}\npaths: {}\n", "openapi"),  # crashed the validator
        ("loop.yaml", SPEC_HEAD + "x-loop: &l [*l]\npaths: {}\n", "yaml"),  # hung the validator
        (
            "pattern.yaml",
            SPEC_HEAD + "paths:\n  /a/{x}:\n    get:\n      parameters:\n"
            "        - {name: x, in: path, required: true, schema: {pattern: '^\u00e9+$'}}\n"
            "      responses: {'200': {description: ok}}\n  /a/{y}:\n    get: {}\n",
            "route-conflict",
        ),
        ("missing.yaml", None, "missing-input"),
    ],
    ids=["unsupported-version", "recursive-alias", "non-ascii-pattern", "missing-path"],
)
def test_cli_validate_regressions(name: str, content: str | None, code: str, tmp_path: Path) -> None:
    if content is not None:
        write(tmp_path, {name: content})
    proc = run_cli("validate", name, cwd=tmp_path, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    if code == "missing-input":
        assert f"{name}: error [missing-input]" in proc.stderr
    else:
        assert code in {m["code"] for m in error_lines(proc.stderr)}


def test_cli_dump_bootstrap_with_numbers_envoy_cannot_hold(tmp_path: Path) -> None:
    spec = SPEC_HEAD + "paths:\n  /a:\n    get: {operationId: getA}\n"
    policy = (
        POLICY_HEAD
        + UPSTREAM
        + "gateway: {maxConnections: 9223372036854775808}\n"
        + ("apis:\n  - {name: a, spec: s.yaml, upstream: backend}\n")
    )
    write(tmp_path, {"s.yaml": spec, "p.yaml": policy})
    proc = run_cli("dump", "--bootstrap", "p.yaml", cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    [m] = error_lines(proc.stderr)
    assert (m["file"], m["line"], m["pointer"]) == ("p.yaml", "5", "/gateway/maxConnections")
    assert m["code"] == "policy-schema"


def test_cli_examples_are_fine() -> None:
    proc = run_cli("validate", "specs", cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "error" not in proc.stderr


# -- property: random damage to the bundled examples ----------------------------------------

SPECS = REPO / "specs"
SOURCES = {p.relative_to(SPECS).as_posix(): p.read_text() for p in sorted(SPECS.rglob("*.yaml"))}

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**32, max_value=2**80)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["/a/{", "{}", "5s", "99999999999999999999999h", "3.0.3", "2.0", "GatewayPolicy", "~1", "\x00"])
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
MISSING_REFS = [
    "missing.yaml",
    "#/nope",
    "#/components/parameters/Nope",
    "catalog/paths/missing.yaml#/get",
    "catalog/components/schemas.yaml#/Nope",
    "orders.openapi.yaml#/paths/~1nope",
    "gateway.policy.yaml",
    "#",
    "",
    "#/paths",
    "//[x",
    "a%00.yaml",
    "http://example.com/x.yaml",
    "catalog",
]
PATH_KEYS = [
    "/a/{",
    "/b/{}",
    "c",
    "/d/{x}{y}",
    "/e/{x}/{x}",
    "/orders/{other}",
    "/pets/{petId}",
    "/login",
    "/q?x=1",
    "/#",
    "/{a}",
    "",
    "/f}",
    "/products/{sku}",
]
# What decides routing, upstreams and listeners: mutated more often than descriptions.
HOT_KEYS = {
    "servers",
    "url",
    "variables",
    "default",
    "host",
    "basePath",
    "schemes",
    "paths",
    "parameters",
    "in",
    "name",
    "schema",
    "type",
    "pattern",
    "enum",
    "minimum",
    "operationId",
    "x-gateway",
    "timeout",
    "retries",
    "$ref",
    "listeners",
    "upstreams",
    "apis",
    "port",
    "address",
    "endpoints",
    "spec",
    "upstream",
    "pathPrefix",
    "upstreamPathPrefix",
    "operations",
    "healthCheck",
    "circuitBreaker",
    "outlierDetection",
    "gateway",
    "headers",
}
# Values of the right type that are wrong all the same.
EDGY_STRINGS = [
    "",
    " ",
    "\x00",
    "{",
    "/a{b",
    "/a/{x}",
    "http://[x",
    "http://h:99999",
    "ftp://h",
    "https://h/p?q#f",
    "^\u00e9[\u00e0-\u00ff]+$",
    "(?<=a)b",
    "a{1001}",
    "[",
    "99999999999999999999h",
    "0s",
    "1.5",
    "x" * 300,
    "a%00.yaml",
    "../../../etc/passwd",
    "GET /nope",
    "\ud800",
    "~1",
    "#/x",
]
EDGY_NUMBERS = [0, -1, 1.0, 80.0, 2**31, 2**32, 2**63, 2**64, 10**30, float("inf"), float("nan"), -0.0, 1e308]
SNIPPETS = [
    "{",
    "}",
    "[",
    "]",
    ": ",
    "- ",
    "\t",
    "\n  ",
    "&a [*a]",
    "*a",
    "!!python/object:os.system",
    "'",
    '"',
    "\x00",
    "\ufeff",
    "9" * 5000,
    "$ref: nope.yaml\n",
    "<<: 5\n",
    "---\n",
    "? [1]\n: 2\n",
    "%YAML 9.9\n",
    "[" * 3000,
    "\\u",
    "\x85",
    "\ud800",
]


def _type_name(value: Any) -> str:
    return type(value).__name__


def _places(value: Any, at: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield at
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _places(v, (*at, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _places(v, (*at, i))


def _get(value: Any, at: tuple[Any, ...]) -> Any:
    for token in at:
        value = value[token]
    return value


@st.composite
def damaged_data(draw: st.DrawFn, data: Any) -> Any:
    """``data`` after 1 to 4 structural mutations."""
    data = copy.deepcopy(data)
    for _ in range(draw(st.integers(1, 4))):
        places = list(_places(data))
        hot = [p for p in places if any(token in HOT_KEYS for token in p[-2:])]
        at = draw(st.sampled_from(hot) if hot and draw(st.booleans()) else st.sampled_from(places))
        kind = draw(st.sampled_from(["delete", "retype", "edge", "edge", "ref", "path-key", "duplicate-id"]))
        if kind == "delete" and at:
            parent = _get(data, at[:-1])
            del parent[at[-1]]
        elif kind == "retype":
            old = _get(data, at)
            new = draw(json_values.filter(lambda v, old=old: _type_name(v) != _type_name(old)))
            if at:
                _get(data, at[:-1])[at[-1]] = new
            else:
                data = new
        elif kind == "edge" and at:
            old = _get(data, at)
            if isinstance(old, str):
                new = draw(st.sampled_from(EDGY_STRINGS))
            elif isinstance(old, (int, float)) and not isinstance(old, bool):
                new = draw(st.sampled_from(EDGY_NUMBERS))
            elif isinstance(old, list) and old:
                new = [*old, *old]  # duplicates: listeners, upstreams, apis, parameters…
            else:
                new = copy.deepcopy(_get(data, draw(st.sampled_from(places))))  # something from elsewhere
            _get(data, at[:-1])[at[-1]] = new
        elif kind == "ref":
            ref = draw(st.sampled_from(MISSING_REFS) | st.integers())
            if at:
                _get(data, at[:-1])[at[-1]] = {"$ref": ref}
            elif isinstance(data, dict):
                data["x-ref"] = {"$ref": ref}
        elif kind == "path-key" and isinstance(data, dict) and isinstance(data.get("paths"), dict):
            items = list(data["paths"].values()) or [None]
            key = draw(st.sampled_from(PATH_KEYS) | st.text(max_size=10))
            data["paths"][key] = copy.deepcopy(draw(st.sampled_from(items)))
        elif kind == "duplicate-id":
            ids = [p for p in places if p and p[-1] == "operationId"]
            if len(ids) >= 2:
                first, second = draw(st.permutations(ids))[:2]
                _get(data, second[:-1])["operationId"] = _get(data, first)
    return data


@st.composite
def damaged_text(draw: st.DrawFn, text: str) -> str | bytes:
    """``text`` after one textual mutation."""
    kind = draw(st.sampled_from(["insert", "truncate", "bytes", "replace"]))
    raw = text.encode()
    if kind == "insert":
        pos = draw(st.integers(0, len(text)))
        snippet = draw(st.sampled_from(SNIPPETS) | st.text(max_size=20))
        return (text[:pos] + snippet + text[pos:]).encode("utf-8", "surrogatepass")
    if kind == "truncate":
        return raw[: draw(st.integers(0, len(raw)))]
    if kind == "bytes":
        pos = draw(st.integers(0, len(raw)))
        return raw[:pos] + draw(st.binary(min_size=1, max_size=16)) + raw[pos + draw(st.integers(0, 16)) :]
    return draw(random_document())


def random_document() -> st.SearchStrategy[str]:
    """Random YAML or JSON text, sometimes shaped like a spec or a policy."""
    shaped = st.fixed_dictionaries(
        {"openapi": st.sampled_from(["3.0.3", "3.1.0", "4.0", 3.0])},
        optional={"paths": json_values, "servers": json_values, "x-gateway": json_values, "info": json_values},
    ) | st.fixed_dictionaries(
        {"apiVersion": st.just("controlplane.dev/v1"), "kind": st.just("GatewayPolicy")},
        optional={"apis": json_values, "listeners": json_values, "upstreams": json_values, "gateway": json_values},
    )
    value = json_values | shaped
    return (
        st.text(max_size=200)
        | value.map(lambda v: yaml.safe_dump(v, allow_unicode=True))
        | value.map(lambda v: json.dumps(v, indent=1))
    )


@dataclass
class Damage:
    files: dict[str, str | bytes] = field(default_factory=dict)  # relative path under specs/ -> content
    explicit: bool = False  # give every top-level file instead of the directory
    full_validation: bool = False

    def __repr__(self) -> str:  # what hypothesis prints for a failing example
        shown = {k: (v[:300] if isinstance(v, (str, bytes)) else v) for k, v in self.files.items()}
        return f"Damage(files={shown!r}, explicit={self.explicit}, full_validation={self.full_validation})"


@st.composite
def damages(draw: st.DrawFn) -> Damage:
    damage = Damage(explicit=draw(st.booleans()), full_validation=draw(st.integers(0, 4)) == 0)
    for name in draw(st.lists(st.sampled_from(sorted(SOURCES)), min_size=1, max_size=3, unique=True)):
        text = SOURCES[name]
        if draw(st.booleans()):
            data = draw(damaged_data(yaml.load(text, Loader=_Loader)))
            as_json = draw(st.booleans())
            text = json.dumps(data, indent=1) if as_json else yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
            damage.files[name] = text
        if draw(st.booleans()) or name not in damage.files:
            damage.files[name] = draw(damaged_text(text))
    if draw(st.integers(0, 3)) == 0:
        damage.files[draw(st.sampled_from(["extra.yaml", "extra.json"]))] = draw(random_document())
    return damage


def materialize(damage: Damage, root: Path) -> list[str]:
    shutil.copytree(SPECS, root, dirs_exist_ok=True)
    write(root, damage.files)
    if damage.explicit:
        return sorted(str(p) for p in root.iterdir() if p.is_file())
    return [str(root)]


PROPERTY = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


@PROPERTY
@given(damages())
def test_damaged_examples_never_escape_compile(damage: Damage) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        paths = materialize(damage, Path(tmp))
        result = compile(paths, full_validation=damage.full_validation)
    assert_located(result)
    assert result.ok == (not result.errors)


@settings(PROPERTY, max_examples=6)
@given(damages())
def test_damaged_examples_through_the_cli(damage: Damage) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        paths = materialize(damage, Path(tmp))
        proc = run_cli("validate", *paths, cwd=Path(tmp), timeout=60)
        dump = run_cli("dump", *paths, cwd=Path(tmp), timeout=60)
    for p in (proc, dump):
        assert "Traceback" not in p.stdout + p.stderr, p.stderr
        assert p.returncode in (0, 1), p.stderr
        if p.returncode == 1:
            error_lines(p.stderr)  # every line is a located error, a warning or the summary
            assert " error [" in p.stderr


def test_property_inputs_are_valid_before_damage() -> None:
    """The mutations start from examples that compile, so what breaks is the mutation."""
    result = compile([str(SPECS)])
    assert result.ok, "\n".join(map(str, result.errors))


def test_a_key_with_a_line_break_is_described_on_one_line() -> None:
    """Found by the damaged-examples property: a policy key ending in a newline made a
    two-line message, which breaks every ``file:line: message`` reader."""
    from controlplane.errors import describe_value

    text = describe_value({"0000000000000000000000000:0": 1, "000000000000\n": 2}, 20)
    assert "\n" not in text and "'000000000000\\n'" in text


@pytest.mark.parametrize(
    ("section", "pointer", "message"),
    [
        # an object where the alternatives are an object or a boolean: the object's own error
        (
            {"upstreams": [{"name": "b", "endpoints": ["x:1"], "tls": {"caFile": 5}}]},
            "/upstreams/0/tls/caFile",
            "5 is not of type 'string'",
        ),
        (
            {"upstreams": [{"name": "b", "endpoints": ["x:1"], "tls": {"cafile": "ca.pem"}}]},
            "/upstreams/0/tls/cafile",
            "unknown key 'cafile'",
        ),
        # a value no alternative takes: what each one takes
        (
            {"upstreams": [{"name": "b", "endpoints": ["x:1"], "tls": "yes"}]},
            "/upstreams/0/tls",
            "'yes' must be a boolean or an object",
        ),
        (
            {"headers": {"strictTransportSecurity": True}},
            "/headers/strictTransportSecurity",
            "True must be a string or false",
        ),
    ],
)
def test_a_value_against_alternatives_is_told_what_to_fix(section: dict[str, Any], pointer: str, message: str) -> None:
    """The schema's oneOf never answers "not valid under any of the given schemas" alone."""
    from controlplane.errors import Diagnostics
    from controlplane.model import policy as pol

    diags = Diagnostics()
    assert not pol.check({"apiVersion": "controlplane.dev/v1", "kind": "GatewayPolicy", **section}, "p.yaml", "", diags)
    found = [(d.pointer, d.message) for d in diags.items]
    assert any(p == pointer and message in m for p, m in found), found
    assert not any("any of the given schemas" in m for _p, m in found)
