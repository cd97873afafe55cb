"""Reading the parts of OpenAPI 2.0 / 3.0 / 3.1 documents that decide routing.

Only what the gateway acts on is read here (servers, paths, operations, path parameters,
``x-gateway``), following ``$ref`` across files where needed. Everything found wrong in
those parts is an error, because it changes what the gateway serves. The rest of the
document is checked by the full validator (``validation.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ..documents import Document, DocumentStore
from ..errors import Diagnostics, pointer
from ..ir import Source, new_source
from . import paths as pathlib_

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
_PATH_ITEM_KEYS = {"$ref", "summary", "description", "servers", "parameters", *METHODS}
_SERVER_VAR = re.compile(r"\{([^{}]*)\}")


@dataclass(frozen=True, slots=True)
class ServerUrl:
    """A server URL split into what the gateway needs."""

    scheme: str | None  # None for relative URLs
    host: str | None
    port: int | None
    base_path: str  # "" or "/v1": never ends with '/'
    usable: bool = True

    @property
    def is_absolute(self) -> bool:
        return self.host is not None


# A server that is declared but cannot be used (no host, variable without default…):
# operations that rely on it are not served rather than sent somewhere else.
UNUSABLE_SERVER = ServerUrl(None, None, None, "", usable=False)


@dataclass(slots=True)
class PathParam:
    name: str
    regex: str
    source: Source


@dataclass(slots=True)
class OperationSpec:
    method: str  # upper case
    path: str  # the template as written in the spec
    operation_id: str | None
    segments: list[pathlib_.Segment]
    path_params: dict[str, PathParam]
    source: Source
    server: ServerUrl | None  # operation- or path-level server, if any
    x_gateway: tuple[tuple[str, dict[str, Any], Source], ...] = ()  # (level, value, where)
    # Query parameters the path key itself requires ("/responses?beta=true"): not OpenAPI,
    # but real descriptions use it to tell operations apart, so the gateway matches on it.
    query: tuple[tuple[str, str], ...] = ()
    # The operation's own ``security`` (None: the document's applies); located.
    security: tuple[Requirement, ...] | None = None
    security_source: Source | None = None

    @property
    def key(self) -> str:
        """How a policy names this operation: its operationId, else 'METHOD /path' as written."""
        if self.operation_id:
            return self.operation_id
        query = "&".join(f"{k}={v}" for k, v in self.query)
        return f"{self.method} {self.path}" + (f"?{query}" if query else "")


@dataclass(slots=True)
class ApiSpec:
    document: Document
    version: str  # "2.0", "3.0" or "3.1"
    title: str
    server: ServerUrl | None
    operations: list[OperationSpec]
    x_gateway: tuple[dict[str, Any], Source] | None
    security: tuple[Requirement, ...] = ()  # the document's requirements
    schemes: dict[str, SecurityScheme] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SecurityScheme:
    name: str
    kind: str  # "jwt" (http bearer, oauth2, openIdConnect) or what the gateway cannot check ("apiKey"…)
    source: Source


# One requirement object: scheme name → scopes; all of its schemes must be satisfied.
Requirement = tuple[tuple[str, tuple[str, ...]], ...]


def spec_version(data: Any) -> str | None:
    """'2.0', '3.0' or '3.1' for an OpenAPI document, None for anything else."""
    if not isinstance(data, dict):
        return None
    if "swagger" in data:
        return "2.0" if str(data["swagger"]) == "2.0" else "unsupported"
    if "openapi" in data:
        v = str(data["openapi"])
        for known in ("3.0", "3.1"):
            if v == known or v.startswith(known + "."):
                return known
        return "unsupported"
    return None


def parse_server_url(url: Any, variables: Any) -> tuple[ServerUrl | None, str | None]:
    """Resolve server variables to their defaults and split the URL; returns (url, problem)."""
    if not isinstance(url, str):
        return None, "server url must be a string"
    problem = None

    def substitute(m: re.Match[str]) -> str:
        nonlocal problem
        var = variables.get(m.group(1)) if isinstance(variables, dict) else None
        default = var.get("default") if isinstance(var, dict) else None
        if default is None:
            problem = f"server variable {{{m.group(1)}}} has no default"
            return ""
        return str(default)

    resolved = _SERVER_VAR.sub(substitute, url)
    if problem:
        return None, problem
    try:
        parts = urlsplit(resolved)
    except ValueError as exc:  # e.g. an unclosed '[' around an IPv6 address
        return None, f"server url {resolved!r} is invalid: {exc}"
    base = parts.path.rstrip("/")
    if "{" in base or "}" in base:
        return None, f"server url {resolved!r} has a brace in its path (a variable without a definition?)"
    if parts.scheme or parts.netloc:
        if parts.scheme not in ("http", "https"):
            return None, f"server url {resolved!r} must use http or https"
        try:
            host, port = parts.hostname, parts.port
        except ValueError:
            return None, f"server url {resolved!r} has an invalid port"
        if not host or not re.fullmatch(r"[A-Za-z0-9.\-]+|[0-9a-fA-F:]+", host):
            return None, f"server url {resolved!r} has no usable host"
        return ServerUrl(parts.scheme, host, port or (443 if parts.scheme == "https" else 80), base), None
    if base and not base.startswith("/"):
        base = "/" + base
    return ServerUrl(None, None, None, base), None


class _Parser:
    def __init__(self, store: DocumentStore, doc: Document, diags: Diagnostics):
        self.store = store
        self.doc = doc
        self.diags = diags
        self._regexes: dict[int, tuple[Any, tuple[str, str | None]]] = {}

    def error(self, msg: str, doc: Document, ptr: str, code: str = "openapi") -> None:
        self.diags.error(msg, doc.name, ptr, code)

    def warning(self, msg: str, doc: Document, ptr: str, code: str = "openapi") -> None:
        self.diags.warning(msg, doc.name, ptr, code)

    def servers(self, value: Any, doc: Document, ptr: str) -> ServerUrl | None:
        resolved = self.store.deref(doc, ptr, value)
        if resolved is None:
            return None
        doc, ptr, value = resolved
        if not isinstance(value, list):
            self.error("servers must be a list", doc, ptr)
            return None
        if not value:
            return None
        first = self.store.deref(doc, ptr + "/0", value[0])
        if first is None:
            return None
        fdoc, fptr, server = first
        if not isinstance(server, dict) or "url" not in server:
            self.error("a server needs a url", fdoc, fptr)
            return None
        url, problem = parse_server_url(server["url"], server.get("variables"))
        if problem:
            self.warning(problem, fdoc, fptr + "/url", "server-url")
            return UNUSABLE_SERVER
        return url

    def parse(self) -> ApiSpec | None:
        doc, data = self.doc, self.doc.data
        version = spec_version(data)
        if version == "unsupported":
            key = "swagger" if "swagger" in data else "openapi"
            self.error(f"unsupported OpenAPI version {data[key]!r} (2.0, 3.0 and 3.1 are supported)", doc, "/" + key)
            return None
        assert version is not None
        info = data.get("info")
        title = str(info.get("title", "")) if isinstance(info, dict) else ""
        server: ServerUrl | None
        if version == "2.0":
            server = self._swagger_server(data)
        elif "servers" in data:
            server = self.servers(data["servers"], doc, "/servers")
        else:  # no servers at all means "/" (OpenAPI 3): mounted at the root, no upstream known
            server = ServerUrl(None, None, None, "")
        x_gw = data.get("x-gateway")
        x_gateway = (x_gw, Source(doc.name, "/x-gateway")) if x_gw is not None else None
        paths = data.get("paths")
        operations: list[OperationSpec] = []
        if paths is None:
            if version != "3.1":
                self.error("the document has no 'paths'", doc, "")
            else:
                self.warning("the document has no 'paths': nothing to route", doc, "")
        elif not isinstance(paths, dict):
            self.error("'paths' must be a mapping", doc, "/paths")
        else:
            from .. import incremental

            memo = incremental.path_item_memo(doc, {k: v for k, v in data.items() if k != "paths"}, version)
            for path, item in paths.items():
                memo.parse(self, str(path), item, operations)
            memo.done()
        self._check_operation_ids(operations)
        schemes = self._schemes(data, version)
        security = self._security(data.get("security"), doc, "/security") if "security" in data else ()
        return ApiSpec(doc, version, title, server, operations, x_gateway, security or (), schemes)

    def _schemes(self, data: dict[str, Any], version: str) -> dict[str, SecurityScheme]:
        doc = self.doc
        if version == "2.0":
            raw, base = data.get("securityDefinitions"), "/securityDefinitions"
        else:
            components = data.get("components")
            raw = components.get("securitySchemes") if isinstance(components, dict) else None
            base = "/components/securitySchemes"
        out: dict[str, SecurityScheme] = {}
        if raw is None:
            return out
        if not isinstance(raw, dict):
            self.error("security schemes must be a mapping", doc, base, "security")
            return out
        for name, value in raw.items():
            resolved = self.store.deref(doc, pointer(*base[1:].split("/"), str(name)), value)
            if resolved is None:
                continue
            sdoc, sptr, scheme = resolved
            if not isinstance(scheme, dict) or not isinstance(scheme.get("type"), str):
                self.error(f"security scheme {name!r} needs a type", sdoc, sptr, "security")
                continue
            kind = scheme["type"]
            if kind in ("oauth2", "openIdConnect") or (
                kind == "http" and str(scheme.get("scheme", "")).lower() == "bearer"
            ):
                kind = "jwt"
            elif kind == "http":
                kind = f"http {scheme.get('scheme', '')}".strip()
            out[str(name)] = SecurityScheme(str(name), kind, Source(sdoc.name, sptr))
        return out

    def _security(self, value: Any, doc: Document, ptr: str) -> tuple[Requirement, ...] | None:
        """A security requirement list; None when it is malformed (reported)."""
        if not isinstance(value, list):
            self.error("security must be a list of requirement objects", doc, ptr, "security")
            return None
        out = []
        for i, req in enumerate(value):
            if not isinstance(req, dict):
                self.error("a security requirement must be a mapping", doc, f"{ptr}/{i}", "security")
                return None
            entries = []
            for name, scopes in req.items():
                if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
                    self.error(
                        f"scopes of {name!r} must be a list of strings",
                        doc,
                        f"{ptr}/{i}" + pointer(str(name)),
                        "security",
                    )
                    return None
                entries.append((str(name), tuple(scopes)))
            out.append(tuple(entries))
        return tuple(out)

    def _swagger_server(self, data: dict[str, Any]) -> ServerUrl:
        base = data.get("basePath", "")
        base = base.rstrip("/") if isinstance(base, str) else ""
        if base and not base.startswith("/"):
            self.error("basePath must start with '/'", self.doc, "/basePath")
            base = ""
        if "{" in base or "}" in base:
            self.error("basePath must not contain '{' or '}'", self.doc, "/basePath")
            base = ""
        host = data.get("host")
        if not isinstance(host, str) or not host:
            return ServerUrl(None, None, None, base)
        schemes = data.get("schemes") or ["http"]
        if not isinstance(schemes, list):
            self.error("schemes must be a list", self.doc, "/schemes")
            schemes = ["http"]
        scheme = "https" if "https" in schemes else str(schemes[0])
        url, problem = parse_server_url(f"{scheme}://{host}{base}", None)
        if problem or url is None:
            self.warning(problem or "unusable host", self.doc, "/host", "server-url")
            return ServerUrl(None, None, None, base)
        return url

    def path_item(self, path: str, item: Any, out: list[OperationSpec], version: str) -> None:
        self._path_item(path, item, "/paths/" + path.replace("~", "~0").replace("/", "~1"), out, version)

    def _path_item(self, path: str, item: Any, ptr: str, out: list[OperationSpec], version: str) -> None:
        doc = self.doc
        query: tuple[tuple[str, str], ...] = ()
        if "?" in path and "#" not in path:
            path, _, query_text = path.partition("?")
            query = tuple(parse_qsl(query_text, keep_blank_values=True))
            if not query:
                self.error(f"invalid path {path + '?' + query_text!r}: empty query string", doc, ptr, "path-template")
                return
            self.warning(
                f"a path key with a query string is not OpenAPI; the gateway requires "
                f"{', '.join(f'{k}={v}' for k, v in query)} on these operations",
                doc,
                ptr,
                "path-query",
            )
        try:
            segments = pathlib_.parse_template(path)
        except pathlib_.TemplateError as exc:
            self.error(f"invalid path {path!r}: {exc}", doc, ptr, "path-template")
            return
        names = pathlib_.template_params(segments)
        if len(names) > 1 and len(set(names)) < len(names):
            dupes = {n for n in names if names.count(n) > 1}
            self.error(f"path {path!r} uses parameter {sorted(dupes)[0]!r} twice", doc, ptr, "path-template")
            return
        if type(item) is dict and "$ref" not in item:  # (what deref gives back, without the call)
            idoc, iptr = doc, ptr
        else:
            resolved = self.store.deref(doc, ptr, item)
            if resolved is None:
                return
            idoc, iptr, item = resolved
        if item is None:
            self.warning(f"path {path!r} has no operations", idoc, iptr)
            return
        if not isinstance(item, dict):
            self.error("a path item must be a mapping", idoc, iptr)
            return
        for key in item:
            if key not in _PATH_ITEM_KEYS and not str(key).startswith("x-"):
                self.warning(f"unknown path item field {key!r} is ignored", idoc, iptr + pointer(str(key)))
        path_params = self._parameters(item.get("parameters"), idoc, iptr + "/parameters", version)
        path_server = self.servers(item["servers"], idoc, iptr + "/servers") if "servers" in item else None
        path_x = item.get("x-gateway")
        for method in METHODS:
            if method not in item:
                continue
            optr = iptr + "/" + method
            op = item[method]
            if type(op) is dict and "$ref" not in op:
                odoc = idoc
            else:
                op_resolved = self.store.deref(idoc, optr, op)
                if op_resolved is None:
                    continue
                odoc, optr, op = op_resolved
            if not isinstance(op, dict):
                self.error("an operation must be a mapping", odoc, optr)
                continue
            if op.get("parameters") is None:
                params = path_params  # (read, never changed)
            else:
                params = dict(path_params)
                params.update(self._parameters(op["parameters"], odoc, optr + "/parameters", version))
            op_id = op.get("operationId")
            if op_id is not None and (not isinstance(op_id, str) or not op_id):
                self.error("operationId must be a non-empty string", odoc, optr + "/operationId", "operation-id")
                op_id = None
            server = self.servers(op["servers"], odoc, optr + "/servers") if "servers" in op else path_server
            src = new_source(odoc.name, optr)
            regexes: dict[str, PathParam] = {}
            for name in names:
                if name in params:
                    regexes[name] = params[name]
                else:
                    self.warning(
                        f"path parameter {{{name}}} of {method.upper()} {path} is not declared; it matches any segment",
                        odoc,
                        optr,
                        "path-parameter",
                    )
            for name, param in params.items():
                if name not in names:
                    self.diags.warning(
                        f"path parameter {name!r} is declared but not in the path {path!r}",
                        param.source.file,
                        param.source.pointer,
                        "path-parameter",
                    )
            x_layers: tuple[tuple[str, dict[str, Any], Source], ...] = ()
            if path_x is not None:
                x_layers = (("path", path_x, Source(idoc.name, iptr + "/x-gateway")),)
            if "x-gateway" in op:
                x_layers = (*x_layers, ("operation", op["x-gateway"], Source(odoc.name, optr + "/x-gateway")))
            security = self._security(op["security"], odoc, optr + "/security") if "security" in op else None
            out.append(
                OperationSpec(
                    method.upper(),
                    path,
                    op_id,
                    segments,
                    regexes,
                    src,
                    server,
                    x_layers,
                    query,
                    security,
                    Source(odoc.name, optr + "/security") if security is not None else None,
                )
            )

    def _parameters(self, value: Any, doc: Document, ptr: str, version: str) -> dict[str, PathParam]:
        """Path parameters declared in a parameters list, by name."""
        out: dict[str, PathParam] = {}
        if value is None:
            return out
        resolved = self.store.deref(doc, ptr, value)
        if resolved is None:
            return out
        doc, ptr, value = resolved
        if not isinstance(value, list):
            self.error("parameters must be a list", doc, ptr)
            return out
        for i, raw in enumerate(value):
            if type(raw) is dict and "$ref" not in raw:  # (what deref gives back, without the call)
                pdoc, pptr, param = doc, f"{ptr}/{i}", raw
            else:
                presolved = self.store.deref(doc, f"{ptr}/{i}", raw)
                if presolved is None:
                    continue
                pdoc, pptr, param = presolved
            if not isinstance(param, dict):
                self.error("a parameter must be a mapping", pdoc, pptr)
                continue
            if param.get("in") != "path":
                continue
            name = param.get("name")
            if not isinstance(name, str) or not name:
                self.error("a path parameter needs a name", pdoc, pptr, "path-parameter")
                continue
            if version == "2.0":
                schema: Any = param
            else:
                schema = param.get("schema")
                if isinstance(schema, dict) and "$ref" in schema:
                    sresolved = self.store.deref(pdoc, pptr + "/schema", schema)
                    schema = sresolved[2] if sresolved else None
            regex, warning = self._parameter_regex(schema)
            if warning:
                self.warning(f"path parameter {name!r}: {warning}", pdoc, pptr, "path-parameter")
            out[name] = PathParam(name, regex, new_source(pdoc.name, pptr))
        return out

    def _parameter_regex(self, schema: Any) -> tuple[str, str | None]:
        """``parameter_regex``, once per schema object: a path item's parameters are read
        again for each of its operations, and shared ``$ref`` schemas by many items."""
        if not isinstance(schema, dict):
            return pathlib_.parameter_regex(schema)
        hit = self._regexes.get(id(schema))
        if hit is None or hit[0] is not schema:  # the entry holds the schema: its id is not reused
            hit = self._regexes[id(schema)] = (schema, pathlib_.parameter_regex(schema))
        return hit[1]

    def _check_operation_ids(self, operations: list[OperationSpec]) -> None:
        seen: dict[str, OperationSpec] = {}
        for op in operations:
            if op.operation_id is None:
                continue
            first = seen.setdefault(op.operation_id, op)
            if first is not op:
                self.diags.error(
                    f"duplicate operationId {op.operation_id!r} (also {first.method} {first.path} at "
                    f"{first.source.file}#{first.source.pointer})",
                    op.source.file,
                    op.source.pointer + "/operationId",
                    "duplicate-operation-id",
                )


def parse_openapi(store: DocumentStore, doc: Document, diags: Diagnostics) -> ApiSpec | None:
    return _Parser(store, doc, diags).parse()
