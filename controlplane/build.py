"""Model → IR: resolve every policy decision so the IR says exactly what to serve.

Precedence of per-route settings, least specific first (a later layer wins, key by key):

1. built-in defaults
2. the upstream's ``timeout`` / ``retries``
3. the spec document's ``x-gateway``
4. the policy's ``apis[].defaults``
5. the spec path item's ``x-gateway``
6. the spec operation's ``x-gateway``
7. the policy's ``apis[].operations[<operationId or 'METHOD /path'>]``

The more specific level wins; at the same level the policy (owned by the platform team)
wins over the spec (owned by the API team).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any

from . import (
    auth,
    cors,
    edge,
    geo,
    header_rules,
    incremental,
    inspection,
    ir,
    mesh,
    ratelimits,
    reputation,
    request_model,
    tls,
    upstreams,
)
from .documents import Document, display_name
from .errors import Diagnostics, pointer
from .model import policy as pol
from .model.openapi import ApiSpec, ServerUrl, parse_openapi, spec_version
from .model.paths import build_pattern, normalized_template, parse_template, re2_escape
from .push import policy as push_policy
from .sources import Bundle

DEFAULT_ROUTE_SETTINGS: dict[str, Any] = {
    "timeout": "15s",
    # Retrying only failures that prove the request never reached the application is safe
    # for every method, POST included.
    "retries": {"attempts": 1, "on": ["connect-failure", "refused-stream", "reset-before-request"]},
    "sensitive": False,
}
_NAME_UNSAFE = re.compile(r"[^a-z0-9._-]+")


@functools.lru_cache(maxsize=65_536)  # an upstream's name is asked for once per operation
def safe_name(text: str) -> str:
    name = _NAME_UNSAFE.sub("-", text.lower()).strip("-._")[:63].strip("-._")
    return name or "api"


@dataclass
class _Api:
    """One mounted spec, with the policy entry that mounts it (if any)."""

    name: str
    spec: ApiSpec
    entry: dict[str, Any]  # the policy's apis[] item, {} for a bare spec
    policy: Document | None
    ptr: str  # pointer of the apis[] item in the policy


class _Builder:
    def __init__(self, bundle: Bundle, diags: Diagnostics, fetched: Mapping[str, str]):
        self.bundle = bundle
        self.diags = diags
        self.fetched = fetched
        self.listeners: dict[str, tuple[dict[str, Any], ir.Source]] = {}
        self.upstreams: dict[str, tuple[dict[str, Any], ir.Source]] = {}
        self.auto_upstreams: dict[str, ir.Upstream] = {}
        self.used_upstreams: set[str] = set()
        self.gateway: dict[str, Any] = {}
        self.headers: dict[str, Any] = {}
        self.rateLimits: dict[str, Any] = {}  # the policy section (its name, for the singleton check)
        self.mesh: dict[str, Any] = {}
        self.waf: dict[str, Any] = {}
        self.push: dict[str, Any] = {}
        self.reputation: dict[str, Any] = {}
        self.geo: dict[str, Any] = {}
        self.geo_resolver = geo.Resolver(None, None, {}, diags)  # (read with the policies in build())
        self.pulls: list[ir.SpecPull] = []
        self.waf_section: inspection.Section | None = None
        self.singleton_docs: dict[str, Document] = {}  # section → the policy that set it
        self.rate_limits_file = ""
        self.gateway_limits: list[ratelimits.GatewayLimit] = []
        self.global_limits = False  # some operation's limit is counted by the rate-limit service
        self.parsed: dict[Path, ApiSpec | None] = {}
        self.broken: set[tuple[str, str]] = set()  # (kind, name) of listeners and upstreams with errors
        self.providers: dict[str, ir.JwtProvider] = {}
        # (path prefix, CIDRs, listeners or None for all)
        self.ip_prefix_lists: list[tuple[str, tuple[str, ...], set[str] | None]] = []
        self._op_memo: incremental.OperationMemo | None = None  # while an API's operations are built

    # -- policies ---------------------------------------------------------------------------
    def _merge_named(
        self, kind: str, items: list[Any], doc: Document, into: dict[str, tuple[dict[str, Any], ir.Source]]
    ) -> None:
        for i, item in enumerate(items):
            if item is None:  # wrong, and reported: uses of its name are not errors too
                original = doc.data[kind][i]
                if isinstance(original, dict) and isinstance(original.get("name"), str):
                    self.broken.add((kind, original["name"]))
                continue
            src = ir.Source(doc.name, pointer(kind, i))
            prev = into.get(item["name"])
            if prev is not None:
                self.diags.error(
                    f"{kind[:-1]} {item['name']!r} is defined twice (also at {prev[1].file}#{prev[1].pointer})",
                    doc.name,
                    src.pointer + "/name",
                    "duplicate-name",
                )
                continue
            into[item["name"]] = (item, src)

    def _read_policies(self) -> list[tuple[Document, dict[str, Any]]]:
        valid = []
        singletons: dict[str, str] = {}
        for doc in self.bundle.policies:
            # A policy with errors: go on with its right parts to find the errors beyond the schema too.
            def check(found: Diagnostics, doc: Document = doc) -> bool:
                return pol.check(doc.data, doc.name, "", found)

            ok = incremental.cached_check((doc.path, doc.name, doc.digest), self.diags, check)
            data = doc.data if ok else pol.usable_policy(doc.data)
            valid.append((doc, data))
            self._merge_named("listeners", data.get("listeners", []), doc, self.listeners)
            self._merge_named("upstreams", data.get("upstreams", []), doc, self.upstreams)
            self._read_auth(doc, data)
            for key in ("gateway", "headers", "rateLimits", "mesh", "waf", "push", "reputation", "geo"):
                if key in data:
                    if key in singletons:
                        self.diags.error(
                            f"'{key}' is already set by {singletons[key]}; set it in one policy only",
                            doc.name,
                            "/" + key,
                            "duplicate-setting",
                        )
                    else:
                        singletons[key] = doc.name
                        setattr(self, key, data[key])
                        self.singleton_docs[key] = doc
                        if key == "rateLimits":
                            self.rate_limits_file = doc.name
                            self.gateway_limits = ratelimits.read_section(data[key], doc.name, self.diags)
        return valid

    def _read_auth(self, doc: Document, data: dict[str, Any]) -> None:
        for i, item in enumerate((data.get("auth") or {}).get("providers", [])):
            if item is None:
                continue
            ptr = f"/auth/providers/{i}"
            if item["name"] in self.providers:
                prev = self.providers[item["name"]].source
                self.diags.error(
                    f"auth provider {item['name']!r} is defined twice (also at {prev.file}#{prev.pointer})",
                    doc.name,
                    ptr + "/name",
                    "duplicate-name",
                )
                continue
            fetched = self.fetched.get(item["name"])
            provider = auth.provider_ir(item, doc, ptr, self.bundle.store, self.diags, fetched)
            if provider is not None:
                self.providers[item["name"]] = provider
        for i, item in enumerate(data.get("ipAllowlists", [])):
            if item is None:
                continue
            cidrs = auth.check_cidrs(item["allow"], doc.name, f"/ipAllowlists/{i}/allow", self.diags)
            listeners = set(item["listeners"]) if "listeners" in item else None
            self.ip_prefix_lists.append((item["pathPrefix"], cidrs, listeners))

    def _spec(self, doc: Document) -> ApiSpec | None:
        if doc.path not in self.parsed:
            self.parsed[doc.path] = incremental.cached_spec(self.bundle.store, doc, self.diags, parse_openapi)
        return self.parsed[doc.path]

    def _operations_cached(
        self, api: _Api, listeners: list[str], routes: dict[str, dict[str, Sequence[ir.Operation]]]
    ) -> None:
        """``_operations``, replayed from the last compile when nothing it reads has changed."""
        upstream = api.entry.get("upstream")
        key = incremental.api_key(
            api.name,
            str(api.spec.document.path),
            api.policy.name if api.policy else "",
            api.ptr,
            api.entry,
            self.upstreams[upstream][0] if upstream in self.upstreams else None,
            tuple(sorted(self.upstreams)),
            frozenset(self.broken),
            tuple(listeners),
            tuple(sorted(self.providers.items())),
            tuple((p, c, tuple(sorted(ls)) if ls is not None else None) for p, c, ls in self.ip_prefix_lists),
            [self.rate_limits_file, self.rateLimits.get("limits", [])],
            [self.waf.get("mode"), self.waf.get("onServiceFailure"), self._listener_waf(listeners)],
            self.geo_resolver.key(listeners),
            self.headers,  # (which header names routes may change)
        )
        record = incremental.cached_api(key, api.spec)
        if record is None:
            local_routes: dict[str, dict[str, list[ir.Operation]]] = {n: defaultdict(list) for n in routes}
            outer, self.diags = self.diags, Diagnostics()
            autos, used = set(self.auto_upstreams), set(self.used_upstreams)
            self._op_memo = incremental.operation_memo(api.name, key)
            try:
                self._operations(api, listeners, local_routes)
                self._op_memo.done()
            finally:
                local, self.diags = self.diags, outer
                self._op_memo = None
            built = [(n, shape, ops) for n, group in local_routes.items() for shape, ops in group.items()]
            record = incremental.ApiRecord(
                incremental.reuse_operations(api.name, built),
                [(n, u) for n, u in self.auto_upstreams.items() if n not in autos],
                sorted(self.used_upstreams - used),
                list(local.items),
            )
            incremental.store_api(key, api.spec, record)
            self.diags.extend(record.diagnostics)
            _replay(record, routes)
            return
        self.diags.extend(record.diagnostics)
        for name, auto in record.auto_upstreams:
            if name not in self.auto_upstreams and name not in self.upstreams:
                self.auto_upstreams[name] = auto
        self.used_upstreams.update(record.used_upstreams)
        _replay(record, routes)

    def _collect_apis(self, policies: list[tuple[Document, dict[str, Any]]]) -> list[_Api]:
        apis: list[_Api] = []
        names: dict[str, str] = {}
        mounted: set[Path] = set()
        for doc, data in policies:
            for i, entry in enumerate(data.get("apis", [])):
                if entry is None:
                    continue
                ptr = pointer("apis", i)
                if entry["name"] in names:
                    self.diags.error(
                        f"api {entry['name']!r} is defined twice (also in {names[entry['name']]})",
                        doc.name,
                        ptr + "/name",
                        "duplicate-name",
                    )
                    continue
                names[entry["name"]] = doc.name
                pushed = self.bundle.spec_overrides.get(entry["name"])
                if pushed is not None:  # the file the policy names is not read; nor is it unmounted
                    mounted.add((doc.path.parent / entry["spec"]).resolve())
                    self._pinned(entry, doc, ptr)
                spec_doc = (
                    self.bundle.store.load(pushed)
                    if pushed is not None
                    else self.bundle.store.load(doc.path.parent / entry["spec"], (doc, ptr + "/spec"))
                )
                if spec_doc is None:
                    continue
                if spec_version(spec_doc.data) is None:
                    self.diags.error(
                        f"{spec_doc.name} is not an OpenAPI document", doc.name, ptr + "/spec", "not-a-spec"
                    )
                    continue
                mounted.add(spec_doc.path)
                spec = self._spec(spec_doc)
                if spec is not None:
                    apis.append(_Api(entry["name"], spec, entry, doc, ptr))
                if "pull" in entry:
                    pull = push_policy.spec_pull(entry["name"], entry["pull"], doc, ptr + "/pull", self.diags)
                    self.pulls.append(pull)
        for api_name, path in self.bundle.spec_overrides.items():
            if api_name in names:
                continue
            if policies:
                self.diags.error(
                    f"a spec was pushed for api {api_name!r}, but no policy declares it (push a policy "
                    "fragment with it, or ask for it in the platform's policy)",
                    display_name(path),
                    "",
                    "push-undeclared",
                )
                continue
            spec_doc = self.bundle.store.load(path)
            if spec_doc is None:
                continue
            if spec_version(spec_doc.data) is None:
                self.diags.error("not an OpenAPI document", spec_doc.name, "", "not-a-spec")
                continue
            names[api_name] = spec_doc.name
            spec = self._spec(spec_doc)
            if spec is not None:
                apis.append(_Api(api_name, spec, {}, None, ""))
        for spec_doc in self.bundle.specs:
            if spec_doc.path in mounted:
                continue
            if policies:
                self.diags.warning(
                    "not mounted by any policy's 'apis'; not served", spec_doc.name, "", "unmounted-spec"
                )
                continue
            spec = self._spec(spec_doc)
            if spec is None:
                continue
            base = safe_name(Path(spec_doc.path.name.split(".")[0]).name)
            name, n = base, 1
            while name in names:
                n += 1
                name = f"{base}-{n}"
            names[name] = spec_doc.name
            apis.append(_Api(name, spec, {}, None, ""))
        return apis

    def _pinned(self, entry: dict[str, Any], doc: Document, ptr: str) -> None:
        """An API whose spec is pushed or pulled is mounted and sent where its policy says:
        otherwise the spec's ``servers`` would choose, and a pipeline could mount it under
        another team's paths or send it to any host."""
        for key in ("pathPrefix", "upstream"):
            if key not in entry:
                self.diags.error(
                    f"api {entry['name']!r} takes pushed or pulled specs: set its {key} here, or the spec's "
                    "servers would choose it",
                    doc.name,
                    ptr,
                    "push-unpinned",
                )

    # -- upstreams --------------------------------------------------------------------------
    def _auto_upstream(self, server: ServerUrl, src: ir.Source) -> str:
        assert server.host is not None and server.port is not None
        name = safe_name(f"{server.host}-{server.port}")
        if name not in self.auto_upstreams and name not in self.upstreams:
            self.auto_upstreams[name] = upstreams.from_server(name, server, src)
        return name

    # -- operations -------------------------------------------------------------------------
    def _header_policy(self) -> ir.HeaderPolicy:
        return edge.header_policy(self.headers, self.providers.values())

    def _listener_waf(self, listeners: list[str]) -> list[Any]:
        """The listeners' own WAF settings (a key of what an API's operations depend on)."""
        return [(n, self.listeners[n][0].get("waf")) for n in listeners if self.listeners[n][0].get("waf")]

    def _settings(
        self,
        layers: list[tuple[dict[str, Any] | None, ir.Source | None]],
        base: dict[str, Any] = DEFAULT_ROUTE_SETTINGS,
        scope: str = "",
        checked_at: ir.Source | None = None,
    ) -> dict[str, Any]:
        """Route settings merged key by key; ``rateLimits`` by limit name, each limit keeping
        ``scope`` (the API or operation whose calls share its buckets). Layers without a source
        were checked with their policy; ``checked_at`` says where they are."""
        merged = dict(base)
        for value, src in layers:
            if value is None:
                continue
            if src is not None and not pol.check(value, src.file, src.pointer, self.diags, "routeSettings"):
                continue
            where = src or checked_at
            if where is not None and "rateLimits" in value:
                limits = ratelimits.merge(merged.get("rateLimits", ()), value["rateLimits"], scope, where, self.diags)
                value = {**value, "rateLimits": limits}
            if "waf" in value and not self.waf and where is not None:
                self.diags.warning(
                    "waf settings, but no policy has a waf section: nothing is inspected",
                    where.file,
                    where.pointer + "/waf",
                    "waf-unused",
                )
            if src is not None and "ipAllow" in value:  # '198.51.100.10' → '198.51.100.10/32'; a bad one is an error
                value = {
                    **value,
                    "ipAllow": list(auth.check_cidrs(value["ipAllow"], src.file, src.pointer + "/ipAllow", self.diags)),
                }
            if "cors" in value and where is not None:  # checked once per layer; operations share the result
                value = {**value, "cors": cors.read(value["cors"], where, self.diags)}
            if where is not None:
                value = self.geo_resolver.layer(value, where)
            if where is not None and ("requestHeaders" in value or "responseHeaders" in value):
                value = header_rules.read_layer(value, where, self._header_policy(), self.diags)
            merged.update(value)
        return merged

    def _operations(self, api: _Api, listeners: list[str], routes: dict[str, dict[str, list[ir.Operation]]]) -> None:
        spec, entry = api.spec, api.entry
        pdoc = api.policy
        psrc = (lambda p: ir.Source(pdoc.name, api.ptr + p)) if pdoc else (lambda p: None)
        doc_server = spec.server
        prefix = entry.get("pathPrefix", doc_server.base_path if doc_server else "").rstrip("/")
        client_cert = tls.api_client_certificates(entry)
        policy_upstream = entry.get("upstream")
        if policy_upstream is not None:
            if policy_upstream not in self.upstreams:
                if ("upstreams", policy_upstream) in self.broken:
                    return
                self.diags.error(
                    f"no upstream named {policy_upstream!r}",
                    pdoc.name if pdoc else "",
                    api.ptr + "/upstream",
                    "unknown-upstream",
                )
                return
            self.used_upstreams.add(policy_upstream)
        elif doc_server is None or not doc_server.is_absolute:
            if not any(op.server and op.server.is_absolute for op in spec.operations):
                where = (
                    (pdoc.name, api.ptr)
                    if pdoc
                    else (spec.document.name, "/servers" if spec.version != "2.0" else "/host")
                )
                self.diags.error(
                    "no upstream: the spec has no absolute server URL; set apis[].upstream in a policy",
                    where[0],
                    where[1],
                    "no-upstream",
                )
                return
        overrides: dict[str, Any] = entry.get("operations", {})
        known = {op.key for op in spec.operations} if overrides else set()
        for key in overrides:
            if key not in known:
                self.diags.error(
                    f"the spec has no operation {key!r}",
                    pdoc.name if pdoc else "",
                    api.ptr + pointer("operations", key),
                    "unknown-operation",
                )
        up_defaults: dict[str, Any] = {}
        if policy_upstream is not None:
            up_spec = self.upstreams[policy_upstream][0]
            up_defaults = {k: up_spec[k] for k in ("timeout", "retries") if k in up_spec}
        where = (pdoc.name, api.ptr) if pdoc else (spec.document.name, "")
        auth_ctx = auth.api_auth(entry, self.providers, where, self.diags)
        if auth_ctx.rules:  # (it checks the rules' operation names: a set of every operation's names first)
            auth.check_rule_operations(auth_ctx, spec, where, self.diags)
        api_ip = (
            {"ipAllow": list(auth.check_cidrs(entry["ipAllow"], where[0], where[1] + "/ipAllow", self.diags))}
            if "ipAllow" in entry
            else None
        )
        doc_x = spec.x_gateway
        prefix_segments = parse_template(prefix) if prefix else []
        prefix_literal = all(not s.params for s in prefix_segments)
        # Operations whose model is the object of the last build (incremental.path_item_memo
        # keeps unchanged path items), with the same API context, are replayed. Not with
        # upstreams made from server URLs: building those registers them.
        memo = self._op_memo if policy_upstream is not None else None
        # Settings of operations without their own (most of them): merged once per API.
        api_layers: list[tuple[dict[str, Any] | None, ir.Source | None]] = [(up_defaults, None)]
        if doc_x:
            api_layers.append(doc_x)
        api_layers.append((api_ip, None))
        api_layers.append((entry.get("defaults"), None))
        api_settings = self._settings(api_layers, scope=api.name, checked_at=psrc("/defaults"))
        policy_host = upstreams.policy_host(self.upstreams[policy_upstream][0]) if policy_upstream is not None else None
        api_retry = _retry_and_timeout(api_settings)
        shapes: dict[tuple[int, tuple[tuple[str, str], ...]], tuple[Any, ir.PathPattern, str]] = {}
        # An operation's upstream, its path there and Host, by server object (mostly the document's).
        by_server: tuple[Any, str, str, str | None] | None = None
        for op in spec.operations:
            if memo is not None:
                hit = memo.get(op)
                if hit is not None:
                    produced, found = hit
                    self.diags.extend(found)
                    for listener, shape, iop in produced:
                        routes[listener][shape].append(iop)
                    continue
                findings = len(self.diags.items)
            # upstream and the path it expects
            if policy_upstream is not None:
                upstream = policy_upstream
                upstream_prefix = entry.get("upstreamPathPrefix", prefix or "/").rstrip("/")
                host_rewrite = policy_host
            elif by_server is not None and (op.server if op.server is not None else doc_server) is by_server[0]:
                _server, upstream, upstream_prefix, host_rewrite = by_server
            else:
                server = op.server if op.server is not None else doc_server
                if server is not None and server.usable and not server.is_absolute and doc_server is not None:
                    # a relative operation server: the document's host, another base path
                    server = dataclasses.replace(doc_server, base_path=server.base_path)
                if server is None or not server.is_absolute:
                    self.diags.warning(
                        f"{op.method} {op.path} has no usable server URL; not served (set apis[].upstream)",
                        op.source.file,
                        op.source.pointer,
                        "no-upstream",
                    )
                    continue
                upstream = self._auto_upstream(server, op.source)
                upstream_prefix = entry.get("upstreamPathPrefix", server.base_path or "/").rstrip("/")
                assert server.host is not None and server.port is not None
                host_rewrite = upstreams.host_header(server.host, server.port, server.scheme == "https")
                by_server = (server, upstream, upstream_prefix, host_rewrite)
            op_key = op.key
            override = overrides.get(op_key) if overrides else None
            if op.x_gateway or override is not None:
                op_layers: list[tuple[dict[str, Any] | None, ir.Source | None]] = [
                    (value, src) for _level, value, src in op.x_gateway
                ]
                if override is not None:
                    op_layers.append((override, psrc(pointer("operations", op_key))))
                settings = self._settings(op_layers, api_settings, f"{api.name}.{op_key}")
                retry, timeout_ms = _retry_and_timeout(settings)
            else:
                settings = api_settings
                retry, timeout_ms = api_retry
            template = prefix + op.path
            # The operations of one path item share its segments (and mostly its parameters):
            # their pattern and shape are made once.
            segments = op.segments
            regexes = tuple([(n, p.regex) for n, p in op.path_params.items()]) if op.path_params else ()
            made = shapes.get((id(segments), regexes))
            if made is None or made[0] is not segments:
                if prefix_literal and all(not s.params for s in segments):  # a literal path is its own shape
                    made = (segments, ir.new_path_pattern(template, None), template)
                else:
                    full = prefix_segments + segments
                    made = (segments, build_pattern(template, full, dict(regexes)), normalized_template(full))
                shapes[(id(segments), regexes)] = made
            pattern, shape = made[1], made[2]
            operation = ir.new_operation(  # the fields in order (positional arguments cost less)
                f"{api.name}.{op_key}",  # name
                api.name,
                op.operation_id or "",
                op.method,
                pattern,
                upstream,
                timeout_ms,
                retry,
                bool(settings.get("sensitive")),
                op.source,
                (prefix, upstream_prefix) if prefix != upstream_prefix else None,  # rewrite_prefix
                op.query,
                auth.operation_auth(auth_ctx, spec, op, settings, self.diags),
                (),  # ip_allow: per listener, below
                auth_ctx.remove_token,
                host_rewrite,
            )
            if client_cert is not None:
                operation = dataclasses.replace(operation, client_cert=client_cert)
            if settings.get("cors") is not None:
                operation = dataclasses.replace(operation, cors=cors.operation_cors(settings["cors"], op.method))
            changed_headers = header_rules.rules(settings)
            if changed_headers is not None and header_rules.check_sensitive(
                changed_headers, operation.sensitive, self.diags
            ):
                operation = dataclasses.replace(operation, header_rules=changed_headers)
            waf = inspection.operation_waf(self.waf_section, settings)
            if waf is not None:
                operation = dataclasses.replace(operation, waf=waf)
            if self.waf_section is not None:  # (resolving response schemas costs: only with a WAF)
                mask = inspection.masking(self.waf_section, settings, self.bundle.store, op, self.diags)
                if mask is not None:
                    operation = dataclasses.replace(operation, mask=mask)
            produced = []
            # (no allowlist can apply without the operation's own or a path-prefix list)
            any_ip = bool(self.ip_prefix_lists) or bool(settings.get("ipAllow"))
            own_limits = settings.get("rateLimits", ())
            any_limit = bool(self.gateway_limits) or bool(own_limits)
            for listener in listeners:
                ip_allow = auth.ip_allowlists(settings, template, self.ip_prefix_lists, listener) if any_ip else ()
                limits = (
                    ratelimits.operation_limits(operation, own_limits, self.gateway_limits, template, listener)
                    if any_limit
                    else ()
                )
                iop = (
                    dataclasses.replace(operation, ip_allow=ip_allow, rate_limits=limits)
                    if ip_allow or limits
                    else operation
                )
                listener_waf = self.listeners[listener][0].get("waf") if self.waf_section is not None else None
                if listener_waf:
                    waf = inspection.operation_waf(self.waf_section, settings, listener_waf)
                    iop = dataclasses.replace(iop, waf=waf)
                by_country = self.geo_resolver.operation_rule(settings, template, listener)
                if by_country is not None:
                    iop = dataclasses.replace(iop, geo=by_country)
                routes[listener][shape].append(iop)
                produced.append((listener, shape, iop))
            if memo is not None:
                memo.put(op, produced, self.diags.items[findings:])

    def _path_routes(self, found: dict[str, Sequence[ir.Operation]]) -> tuple[ir.PathRoute, ...]:
        """Group operations by path shape; the same method twice on one shape is a conflict."""
        out: list[tuple[Any, ir.PathRoute]] = []  # (precedence, path)
        for entries in found.values():
            cached = incremental.cached_path_route(entries)
            if cached is not None:
                out.append(cached)
                continue
            findings = len(self.diags.items)
            if len(entries) == 1:  # most paths (nothing to order, no conflict possible)
                first = entries[0]
                path_route = ir.new_path_route(first.path, (first,))
                key = ir.precedence(first.path.template)
                incremental.store_path_route(entries, path_route, key)
                out.append((key, path_route))
                continue
            ops: dict[tuple[str, tuple[tuple[str, str], ...]], ir.Operation] = {}
            for op in entries:
                prev = ops.get((op.method, op.query))
                if prev is not None:
                    same = (
                        "is declared twice"
                        if prev.path.template == op.path.template
                        else (f"conflicts with {op.method} {prev.path.template}: they match the same requests")
                    )
                    self.diags.error(
                        f"{op.method} {op.path.template} {same} (also {prev.source.file}#{prev.source.pointer})",
                        op.source.file,
                        op.source.pointer,
                        "route-conflict",
                    )
                    continue
                ops[(op.method, op.query)] = op
            # Operations that require query parameters are tried before the bare one.
            order = sorted(ops, key=lambda k: (k[0], -len(k[1]), k[1]))
            operations = tuple(ops[k] for k in order)
            path = operations[0].path
            if any(op.path is not path for op in operations):  # (mostly one object: no hashing)
                path = _union({op.path for op in operations})
            path_route = ir.new_path_route(path, operations)
            key = ir.precedence(path.template)
            if len(self.diags.items) == findings:  # a conflict is reported on every compile
                incremental.store_path_route(entries, path_route, key)
            out.append((key, path_route))
        out.sort(key=itemgetter(0))
        return tuple(pr for _key, pr in out)

    def _waf_service(self, apis: list[_Api], listeners: list[ir.Listener]) -> ir.WafService | None:
        """The WAF service with the positive model of every inspected operation; None when
        no operation is inspected."""
        if self.waf_section is None or self.waf_section.service is None:
            return None
        ops = [op for lst in listeners for pr in lst.paths for op in pr.operations]
        inspected = {op.name for op in ops if op.waf is not None}
        if not inspected and not any(op.mask is not None for op in ops):
            return None
        models = {}
        for api in apis:
            for op in api.spec.operations:
                name = f"{api.name}.{op.key}"
                if name in inspected:
                    model = request_model.operation_model(self.bundle.store, api.spec, op)
                    if model is not None:
                        models[name] = model
        return dataclasses.replace(self.waf_section.service, models=_json(models))

    # -- everything -------------------------------------------------------------------------
    def build(self) -> ir.Gateway | None:
        policies = self._read_policies()
        if self.waf:
            self.waf_section = inspection.read_section(
                self.waf, self.singleton_docs["waf"], self.bundle.store, self.diags
            )
        self.geo_resolver = geo.Resolver(self.geo, self.singleton_docs.get("geo"), self.listeners, self.diags)
        apis = self._collect_apis(policies)
        if not self.listeners:
            self.listeners["default"] = (edge.DEFAULT_LISTENER, ir.Source("<built-in>", ""))
        routes: dict[str, dict[str, Sequence[ir.Operation]]] = {name: {} for name in self.listeners}
        for api in apis:
            chosen = api.entry.get("listeners", list(self.listeners))
            missing = [n for n in chosen if n not in self.listeners]
            for n in missing:
                if ("listeners", n) in self.broken:
                    continue
                self.diags.error(
                    f"no listener named {n!r}",
                    api.policy.name if api.policy else "",
                    api.ptr + "/listeners",
                    "unknown-listener",
                )
            self._operations_cached(api, [n for n in chosen if n in self.listeners], routes)
            tls.check_api_client_certificates(
                api.entry,
                [n for n in chosen if n in self.listeners],
                self.listeners,
                api.policy.name if api.policy else "",
                api.ptr,
                self.diags,
            )
        listeners = []
        ports: dict[tuple[str, int], str] = {}
        docs = {doc.name: doc for doc in self.bundle.policies}
        g = self.gateway
        reader = tls.TlsReader(
            self.bundle.store, self.diags, g.get("certificateExpiryWarningDays", tls.DEFAULT_EXPIRY_WARNING_DAYS)
        )
        for name, (spec, src) in self.listeners.items():
            listener_tls = None
            if "tls" in spec:
                listener_tls = tls.listener_tls(
                    name, spec["tls"], spec.get("hostnames", ["*"]), docs[src.file], src.pointer + "/tls", reader
                )
            lst = edge.listener_ir(name, spec, src, self._path_routes(routes[name]), listener_tls)
            if "requestHeaders" in spec or "responseHeaders" in spec:
                read = header_rules.read_layer(spec, src, self._header_policy(), self.diags)
                lst = dataclasses.replace(lst, header_rules=header_rules.rules(read))
            if "waf" in spec and not self.waf:
                self.diags.warning(
                    "waf settings, but no policy has a waf section: nothing is inspected",
                    src.file,
                    src.pointer + "/waf",
                    "waf-unused",
                )
            edge.check_ports(lst, spec, src, ports, self.diags)
            listeners.append(lst)
        built = []
        for n, (s, src) in self.upstreams.items():
            upstream = upstreams.from_policy(n, s, src, self.diags)
            if isinstance(s.get("tls"), dict):
                fields = tls.upstream_tls(n, s["tls"], docs[src.file], src.pointer + "/tls", reader)
                if fields is not None:
                    upstream = dataclasses.replace(upstream, **fields)
            built.append(upstream)
        for name, (_s, src) in self.upstreams.items():
            if name not in self.used_upstreams:
                self.diags.warning(
                    f"upstream {name!r} is not used by any api", src.file, src.pointer, "unused-upstream"
                )
        built.extend(self.auto_upstreams.values())
        if self.rateLimits:
            known_apis = {api.name for api in apis}
            ratelimits.check_names(self.rateLimits, self.rate_limits_file, known_apis, set(self.listeners), self.diags)
        service = None
        if any(not rl.local for lst in listeners for rl in ratelimits.used(lst).values()):
            service = ratelimits.service(self.rateLimits, self.rate_limits_file, self.diags)
        mesh_ir = None
        if self.mesh:
            mesh_ir = mesh.mesh_ir(self.mesh, self.singleton_docs["mesh"], self.upstreams, reader, self.diags)
            built = mesh.with_backends(built, mesh_ir)
        tls.check_plaintext(listeners, built, g.get("requireUpstreamTls", "none"), self.diags)
        reputation_ir = None
        if self.reputation:
            doc = self.singleton_docs["reputation"]
            reputation_ir = reputation.read_section(
                self.reputation, doc, self.bundle.store, dict(self.fetched), self.diags
            )
        if self.diags.has_errors():
            return None
        headers = edge.header_policy(self.headers, self.providers.values())
        return ir.Gateway(
            listeners=tuple(listeners),
            upstreams=tuple(sorted(built, key=lambda u: u.name)),
            headers=headers,
            access_log=g.get("accessLog", True),
            max_connections=g.get("maxConnections", 50_000),
            max_heap_bytes=g.get("maxHeapBytes", 1 << 30),
            providers=tuple(sorted(self.providers.values(), key=lambda p: p.name)),
            ratelimit_service=service,
            secret_groups=tuple(g.get("secretNodeGroups", ("gateway",))),
            mesh=mesh_ir,
            waf_service=self._waf_service(apis, listeners),
            push_clients=push_policy.clients(self.push, self.singleton_docs.get("push"), self.diags),
            spec_pulls=tuple(self.pulls),
            reputation=reputation_ir,
            geo=self.geo_resolver.section,
        )


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _retry_and_timeout(settings: dict[str, Any]) -> tuple[ir.RetryPolicy | None, int]:
    retries = settings.get("retries") or {}
    attempts = retries.get("attempts", 1)
    retry = (
        ir.RetryPolicy(
            attempts=attempts,
            retry_on=tuple(retries.get("on", DEFAULT_ROUTE_SETTINGS["retries"]["on"])),
            per_try_timeout_ms=pol.duration_ms(retries["perTryTimeout"]) if "perTryTimeout" in retries else None,
            retriable_status_codes=tuple(retries.get("retriableStatusCodes", ())),
        )
        if attempts
        else None
    )
    if retry is not None:
        if len(_RETRY_POLICIES) > 1024:
            _RETRY_POLICIES.clear()
        retry = _RETRY_POLICIES.setdefault(retry, retry)
    return retry, pol.duration_ms(settings["timeout"])


def _replay(record: incremental.ApiRecord, routes: dict[str, dict[str, Sequence[ir.Operation]]]) -> None:
    """An API's operations into the listeners' paths. A path only this API has gets the
    record's tuple itself (cached path routes are found by its identity); a path several
    APIs share gets a list of all their operations, in API order."""
    for listener, shape, ops in record.groups:
        by_shape = routes[listener]
        have = by_shape.get(shape)
        by_shape[shape] = ops if have is None else [*have, *ops]


# One object per distinct retry policy, so that counting them (``routes.common_retry``)
# needs no hashing. Bounded: a policy not found here is merely counted more slowly.
_RETRY_POLICIES: dict[ir.RetryPolicy, ir.RetryPolicy] = {}


def _union(patterns: set[ir.PathPattern]) -> ir.PathPattern:
    """One pattern matching what any of ``patterns`` (all of one shape) matches."""
    if len(patterns) == 1:
        return next(iter(patterns))
    ordered = sorted(patterns, key=lambda p: (p.template, p.regex or ""))
    regexes = sorted({p.regex or re2_escape(p.template) for p in ordered})
    return ir.PathPattern(ordered[0].template, "|".join(f"(?:{r})" for r in regexes))


def build(bundle: Bundle, diags: Diagnostics, fetched: Mapping[str, str] | None = None) -> ir.Gateway | None:
    """The IR for a bundle, or None when there are errors (all of them are in ``diags``)."""
    return _Builder(bundle, diags, fetched or {}).build()


__all__ = ["build", "display_name"]
