"""Routes: one RouteConfiguration per listener, with a flat per-request cost.

Envoy tries the routes of a virtual host one by one, so 50k operations in one list would
cost milliseconds per request. Instead each virtual host uses the generic matcher: a
longest-prefix map on ``:path`` whose entries are short route lists.

Partitioning. Every path gets a key: the whole path when it is literal, else the text
before its first ``{``. A request selects the longest key that prefixes it, and only that
entry's list is tried (Envoy does not fall back to shorter keys), so each list holds the
paths of its key plus every templated path of a shorter key that could match a request
starting with the longer key. Within a list, paths keep the global precedence order
(literal before templated, segment by segment), each path's methods come together and are
followed by its 405 route (OpenAPI matches the path first, then the method), and a final
catch-all answers 404. Nothing reaches an upstream unless a spec declares it.
"""

from __future__ import annotations

import functools
import re
from bisect import bisect_right
from collections import Counter, OrderedDict, defaultdict
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2, scoped_route_pb2
from envoy.type.matcher.v3 import http_inputs_pb2, regex_pb2, string_pb2
from xds.core.v3 import extension_pb2
from xds.type.matcher.v3 import matcher_pb2

from .. import incremental, ir
from ..ir import SegmentKind
from ..model.paths import Segment, parse_template, python_syntax, re2_escape
from ..wire import length_delimited, varint
from . import auth, cors, geo, header_rules, ratelimit, tls, tokens, waf
from ._pb import duration, header, packed, per_listener, uint32
from .headers import security_headers

NOT_FOUND_ROUTE = "not-found"


def direct(status: int, message: str) -> rc.DirectResponseAction:
    """A reply from the gateway itself; the listener's local reply format wraps it in JSON."""
    return rc.DirectResponseAction(status=status, body=base_pb2.DataSource(inline_string=message))


def not_found_route() -> rc.Route:
    return rc.Route(
        name=NOT_FOUND_ROUTE,
        match=rc.RouteMatch(prefix="/"),
        direct_response=rc.DirectResponseAction(status=404),  # the text: headers.local_reply_config
    )


def _path_match(path: ir.PathPattern) -> rc.RouteMatch:
    if path.regex is None:
        return rc.RouteMatch(path=path.template)
    return rc.RouteMatch(safe_regex=regex_pb2.RegexMatcher(regex=path.regex))


def retry_policy(retry: ir.RetryPolicy | None) -> rc.RetryPolicy:
    if retry is None:
        return rc.RetryPolicy(num_retries=uint32(0))
    policy = rc.RetryPolicy(
        retry_on=",".join(retry.retry_on),
        num_retries=uint32(retry.attempts),
        retriable_status_codes=retry.retriable_status_codes,
    )
    if retry.per_try_timeout_ms is not None:
        policy.per_try_timeout.CopyFrom(duration(retry.per_try_timeout_ms))
    return policy


def common_retry(paths: tuple[ir.PathRoute, ...]) -> ir.RetryPolicy | None:
    """The retry policy most operations share: set once on the virtual host, not per route."""
    # Counted by object first (build.py shares equal policies): hashing 10k dataclasses
    # cost 8 ms per compile.
    by_id: Counter[int] = Counter()
    objects: dict[int, ir.RetryPolicy | None] = {}
    for pr in paths:
        for op in pr.operations:
            key = id(op.retry)
            if key not in objects:
                objects[key] = op.retry
            by_id[key] += 1
    counts: Counter[ir.RetryPolicy | None] = Counter()
    for key, n in by_id.items():
        counts[objects[key]] += n
    return counts.most_common(1)[0][0] if counts else None


# Parts most routes share, built once (passing a message to a constructor copies it). Each
# key holds everything its part is made of; the tables are emptied when they grow too big.
_METHOD_MATCHERS: dict[str, rc.HeaderMatcher] = {}
_ACTIONS: dict[tuple[Any, ...], rc.RouteAction] = {}
_ALLOW_HEADERS: dict[str, base_pb2.HeaderValueOption] = {}
_SHARED_MAX = 50_000


def _shared(table: dict[Any, Any], key: Any, make: Any) -> Any:
    part = table.get(key)
    if part is None:
        if len(table) >= _SHARED_MAX:
            table.clear()
        part = table[key] = make()
    return part


def _operation_route(op: ir.Operation, default_retry: ir.RetryPolicy | None, ctx: RouteContext) -> rc.Route:
    match = _path_match(op.path)
    match.headers.append(_shared(_METHOD_MATCHERS, op.method, lambda: _method_matcher(op.method)))
    for name, value in op.query:
        match.query_parameters.append(_query_matcher(name, value))
    action_key = _action_key(op, default_retry, ctx)
    action = _shared(_ACTIONS, action_key, lambda: _route_action(op, action_key[3], ctx))
    route = rc.Route(name=op.name, match=match, route=action)
    rest = _route_rest(op, ctx)
    if rest is not None:
        route.MergeFrom(rest)
    return route


def _route_rest(op: ir.Operation, ctx: RouteContext) -> rc.Route | None:
    """An operation's route without its match, action and name (None: nothing else)."""
    route: rc.Route | None = None
    if ctx is not None:
        for name, config in auth.route_filter_configs(op, ctx[1], ctx[0]).items():
            route = route or rc.Route()
            route.typed_per_filter_config[name].CopyFrom(packed(config))
        if op.remove_token and tokens.token_removal(ctx[1]) == "some":
            route = route or rc.Route()
            route.request_headers_to_remove.append(tokens.AUTHORIZATION)
    if op.sensitive:
        route = route or rc.Route()
        route.response_headers_to_add.append(header("cache-control", "no-store"))
    if op.mask is not None:  # the WAF service masks what it can read: ask for it uncompressed
        route = route or rc.Route()
        route.request_headers_to_remove.append("accept-encoding")
    inspected = waf.route_metadata(op)
    if inspected is not None:
        route = route or rc.Route()
        route.metadata.filter_metadata[waf.METADATA].CopyFrom(inspected)
        # Envoy overrides these on the check, so the service never sees a client's copy: the
        # backend must not either (it would be a header nobody inspected)
        route.request_headers_to_remove.extend(waf.CHECK_HEADERS)
    cross_origin = cors.route_rest(op)
    if cross_origin is not None:
        route = route or rc.Route()
        route.MergeFrom(cross_origin)
    changed = header_rules.route_rest(op)
    if changed is not None:
        route = route or rc.Route()
        route.MergeFrom(changed)
    by_country = geo.route_rest(op)
    if by_country is not None:
        route = route or rc.Route()
        route.MergeFrom(by_country)
    return route


def _action_key(op: ir.Operation, default_retry: ir.RetryPolicy | None, ctx: RouteContext) -> tuple[Any, ...]:
    # (build.py shares equal policies: mostly the same object, and then no dataclass __eq__)
    retry = _VHOST_RETRY if op.retry is default_retry or op.retry == default_retry else op.retry
    # (without a context, as without per-route auth configs: the routes alone, no rate limits)
    limits = ratelimit.action_key(op, ctx[1]) if op.rate_limits and ctx is not None else None
    return (op.upstream, op.timeout_ms, op.host_rewrite, retry, op.rewrite_prefix, limits)


def _query_matcher(name: str, value: str) -> rc.QueryParameterMatcher:
    return rc.QueryParameterMatcher(name=name, string_match=string_pb2.StringMatcher(exact=value))


# -- the same routes, encoded without building Route messages ---------------------------------
# A message is a sequence of fields and deterministic serialization writes them by number,
# so a route's bytes are its parts' encodings in field order; the parts most routes share
# are encoded once. ``path_routes`` builds the messages (tests compare the two).
def _number(message: Any, name: str) -> int:
    number: int = message.DESCRIPTOR.fields_by_name[name].number
    return number


_R_MATCH, _R_ACTION, _R_DIRECT, _R_RESPONSE_HEADERS, _R_NAME = (
    _number(rc.Route, n) for n in ("match", "route", "direct_response", "response_headers_to_add", "name")
)
_M_PATH, _M_HEADERS, _M_QUERY, _M_REGEX = (
    _number(rc.RouteMatch, n) for n in ("path", "headers", "query_parameters", "safe_regex")
)
_REGEX = _number(regex_pb2.RegexMatcher, "regex")
_R_MATCH_TAG, _R_NAME_TAG = varint((_R_MATCH << 3) | 2), varint((_R_NAME << 3) | 2)  # wire type 2
_METHOD_BYTES: dict[str, bytes] = {}
_ACTION_BYTES: dict[tuple[Any, ...], bytes] = {}
_ALLOW_BYTES: dict[str, bytes] = {}


def _path_piece(path: ir.PathPattern) -> tuple[int, bytes]:
    if path.regex is None:
        return _M_PATH, length_delimited(_M_PATH, path.template.encode())
    return _M_REGEX, length_delimited(_M_REGEX, length_delimited(_REGEX, path.regex.encode()))


def _encoded_operation(
    op: ir.Operation, path: tuple[int, bytes], default_retry: ir.RetryPolicy | None, ctx: RouteContext
) -> bytes:
    """``_operation_route(op, default_retry, ctx)``, serialized (deterministic)."""
    method = _METHOD_BYTES.get(op.method)
    if method is None:
        method = _shared(
            _METHOD_BYTES,
            op.method,
            lambda: length_delimited(_M_HEADERS, _method_matcher(op.method).SerializeToString(deterministic=True)),
        )
    if op.query:
        query = b"".join(
            length_delimited(_M_QUERY, _query_matcher(n, v).SerializeToString(deterministic=True)) for n, v in op.query
        )
        match = method + query + path[1] if path[0] > _M_QUERY else path[1] + method + query
    else:
        match = method + path[1] if path[0] > _M_QUERY else path[1] + method
    action_key = _action_key(op, default_retry, ctx)
    action = _ACTION_BYTES.get(action_key)
    if action is None:
        action = _shared(
            _ACTION_BYTES,
            action_key,
            lambda: length_delimited(
                _R_ACTION,
                _shared(_ACTIONS, action_key, lambda: _route_action(op, action_key[3], ctx)).SerializeToString(
                    deterministic=True
                ),
            ),
        )
    rest = _route_rest(op, ctx)
    name = op.name.encode()
    return b"".join(
        (
            _R_MATCH_TAG,
            varint(len(match)),
            match,
            action,
            rest.SerializeToString(deterministic=True) if rest is not None else b"",
            _R_NAME_TAG,
            varint(len(name)),
            name,
        )
    )


def _encoded_method_not_allowed(path_route: ir.PathRoute, path: tuple[int, bytes]) -> bytes:
    """``_method_not_allowed(path_route)``, serialized (deterministic)."""
    operations = path_route.operations
    allow = operations[0].method if len(operations) == 1 else ", ".join(path_route.allow)
    header_bytes = _ALLOW_BYTES.get(allow)
    if header_bytes is None:
        header_bytes = _shared(
            _ALLOW_BYTES,
            allow,
            lambda: length_delimited(_R_RESPONSE_HEADERS, header("allow", allow).SerializeToString(deterministic=True)),
        )
    match = path[1]
    return b"".join((_R_MATCH_TAG, varint(len(match)), match, _DIRECT_405_BYTES, header_bytes, _NAME_405_BYTES))


_VHOST_RETRY = object()  # the route uses its virtual host's retry policy


def _method_matcher(method: str) -> rc.HeaderMatcher:
    return rc.HeaderMatcher(name=":method", string_match=string_pb2.StringMatcher(exact=method))


def _route_action(op: ir.Operation, retry: Any, ctx: RouteContext) -> rc.RouteAction:
    """What ``_operation_route`` keys it by: upstream, timeout, host rewrite, retry, prefix rewrite,
    rate limits."""
    action = rc.RouteAction(cluster=op.upstream, timeout=duration(op.timeout_ms))
    if op.host_rewrite is not None:
        # the backend's own name, and the client's Host in X-Forwarded-Host (client copies are
        # stripped by the first filter)
        action.host_rewrite_literal = op.host_rewrite
        action.append_x_forwarded_host = True
    if retry is not _VHOST_RETRY:  # the virtual host carries the common one
        action.retry_policy.CopyFrom(retry_policy(op.retry))
    if op.rewrite_prefix is not None:
        gateway_prefix, upstream_prefix = op.rewrite_prefix
        action.regex_rewrite.CopyFrom(
            regex_pb2.RegexMatchAndSubstitute(
                pattern=regex_pb2.RegexMatcher(regex="^" + re2_escape(gateway_prefix)),
                substitution=upstream_prefix.replace("\\", "\\\\"),
            )
        )
    if op.rate_limits and ctx is not None:
        action.rate_limits.extend(ratelimit.route_rate_limits(op, ctx[1]))
    return action


def _method_not_allowed(path_route: ir.PathRoute) -> rc.Route:
    allow = ", ".join(path_route.allow)  # (the same as _encoded_method_not_allowed)
    return rc.Route(
        name="method-not-allowed",
        match=_path_match(path_route.path),
        direct_response=_DIRECT_405,  # the text: headers.local_reply_config
        response_headers_to_add=[_shared(_ALLOW_HEADERS, allow, lambda: header("allow", allow))],
    )


_DIRECT_405 = rc.DirectResponseAction(status=405)
_DIRECT_405_BYTES = length_delimited(
    _number(rc.Route, "direct_response"), _DIRECT_405.SerializeToString(deterministic=True)
)
_NAME_405_BYTES = length_delimited(_number(rc.Route, "name"), b"method-not-allowed")


# The gateway and listener routes are built for (per-route filter configs need them).
RouteContext = tuple[ir.Gateway, ir.Listener] | None


def path_routes(
    path_route: ir.PathRoute, default_retry: ir.RetryPolicy | None = None, ctx: RouteContext = None
) -> list[rc.Route]:
    routes = cors.preflight_routes(path_route, ctx)  # (a path's preflights never reach its operations)
    routes.extend(_operation_route(op, default_retry, ctx) for op in path_route.operations)
    routes.append(_method_not_allowed(path_route))
    return routes


def encoded_path_routes(
    path_route: ir.PathRoute, default_retry: ir.RetryPolicy | None = None, ctx: RouteContext = None
) -> list[bytes]:
    """``path_routes``, each serialized (deterministic), without building the messages."""
    path = _path_piece(path_route.path)
    out = [r.SerializeToString(deterministic=True) for r in cors.preflight_routes(path_route, ctx)]
    # an operation's pattern is mostly its path's own object (one shape, one set of types)
    out += [
        _encoded_operation(op, path if op.path is path_route.path else _path_piece(op.path), default_retry, ctx)
        for op in path_route.operations
    ]
    out.append(_encoded_method_not_allowed(path_route, path))
    return out


# A directory with more literal paths than this gives each its own key, so that no list
# grows with the API; below it, one key per directory keeps copies of templates rare.
WIDE_DIRECTORY = 64


def partition_keys(paths: tuple[ir.PathRoute, ...]) -> list[str]:
    """The key of each path: its directory (the text up to the ``/`` before its first
    parameter, or its last ``/`` for a literal path), or the whole literal path in a wide
    directory."""
    directories = []
    literal_dirs: dict[str, int] = {}
    for pr in paths:
        template = pr.path.template
        if pr.path.regex is None:
            directory = template[: template.rindex("/") + 1]
            literal_dirs[directory] = literal_dirs.get(directory, 0) + 1
        else:
            head = template[: template.index("{")]
            directory = head[: head.rindex("/") + 1]
        directories.append(directory)
    return [
        pr.path.template if pr.path.regex is None and literal_dirs[directory] > WIDE_DIRECTORY else directory
        for pr, directory in zip(paths, directories, strict=True)
    ]


@functools.lru_cache(maxsize=65536)
def _segment_regexes(regex: str) -> tuple[str, ...] | None:
    """Per-segment parts of a generated path regex (None when it is a union of several)."""
    if regex.startswith("(?:") and ")|(?:" in regex:
        return None
    parts, current, in_class, escaped = [], [], False, False
    for ch in regex:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            current.append(ch)
            escaped = True
        elif in_class:
            current.append(ch)
            in_class = ch != "]"
        elif ch == "[":
            current.append(ch)
            in_class = True
        elif ch == "/":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return tuple(parts[1:])


@functools.lru_cache(maxsize=65536)  # compiled when a segment is tried; parts recur ("-?[0-9]+")
def _segment_pattern(part: str) -> re.Pattern[str] | None:
    try:
        return re.compile(python_syntax(part))
    except re.error:  # pragma: no cover - generated regexes compile; be conservative if not
        return None


@functools.lru_cache(maxsize=65536)
def _segments(template: str) -> tuple[Segment, ...]:
    return tuple(parse_template(template))


def _may_extend(path: ir.PathPattern, key: str) -> bool:
    """Could ``path`` match a request whose path starts with ``key``?

    Exact for the key's whole segments (a parameter's pattern is tried on them);
    conservative for a partial last segment.
    """
    if path.regex is None:
        return path.template.startswith(key)
    segments = _segments(path.template)
    key_segments = key[1:].split("/")
    full, partial = key_segments[:-1], key_segments[-1]
    if len(segments) <= len(full):
        return False
    regexes = _segment_regexes(path.regex)
    for i, (seg, text) in enumerate(zip(segments, full, strict=False)):
        if seg.kind is SegmentKind.LITERAL:
            if seg.literal_parts[0] != text:
                return False
        else:
            pattern = _segment_pattern(regexes[i]) if regexes is not None else None
            if pattern is not None:
                if not pattern.fullmatch(text):
                    return False
            elif not (text.startswith(seg.literal_parts[0]) and text.endswith(seg.literal_parts[-1])):
                return False
    if not partial:
        return True
    seg = segments[len(full)]
    head = seg.literal_parts[0]
    if seg.kind is SegmentKind.LITERAL:
        return head.startswith(partial)
    return head.startswith(partial) or partial.startswith(head)


def partitions(paths: tuple[ir.PathRoute, ...]) -> dict[str, list[int]]:
    """Key → indexes into ``paths`` (in precedence order) of the paths tried for that key."""
    keys = partition_keys(paths)
    by_key: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(keys):
        by_key[key].append(i)
    out = {key: list(own) for key, own in by_key.items()}
    # Only a templated path can extend a longer key: a literal path under a directory key has
    # no '/' after it (a longer directory key is not its prefix), and the literal paths of a
    # wide directory are keys of their own. A templated path's key is a directory ("/a/"),
    # and the keys it may extend are the longer ones that start with it.
    templated = {
        key: extending
        for key, own in by_key.items()
        if (extending := [i for i in own if paths[i].path.regex is not None])
    }
    if templated:
        ordered = sorted(by_key)
        grown: set[str] = set()
        for short, extending in templated.items():
            j = bisect_right(ordered, short)
            while j < len(ordered) and ordered[j].startswith(short):
                key = ordered[j]
                j += 1
                for i in extending:
                    if _may_extend(paths[i].path, key):
                        out[key].append(i)
                        grown.add(key)
        for key in grown:
            out[key].sort()
    return out


# Encoded routes of a path, reused while its operations are the same objects (incremental.py
# keeps unchanged operations between compiles). The entry holds the operations, so their ids
# cannot be reused by other objects while it lives.
_ENCODED: OrderedDict[tuple[Any, ...], tuple[tuple[ir.Operation, ...], bytes]] = OrderedDict()
_ENCODED_MAX = 200_000


def clear_cache() -> None:
    for table in (_METHOD_MATCHERS, _ACTIONS, _ALLOW_HEADERS, _METHOD_BYTES, _ACTION_BYTES, _ALLOW_BYTES):
        table.clear()
    _ENCODED.clear()
    _SCOPE_CACHE.clear()


incremental.register_cache(clear_cache)  # cleared with the other compile caches


def _encoded(pr: ir.PathRoute, default_retry: ir.RetryPolicy | None, ctx: RouteContext, context: int) -> bytes:
    # the pattern by its fields, whose hashes strings keep (a dataclass hashes in Python)
    key = (pr.path.template, pr.path.regex, tuple(map(id, pr.operations)), context)
    hit = _ENCODED.get(key) if incremental.ENABLED else None
    if hit is not None and all(a is b for a, b in zip(hit[0], pr.operations, strict=True)):
        _ENCODED.move_to_end(key)
        return hit[1]
    parts: list[bytes] = []
    for route in encoded_path_routes(pr, default_retry, ctx):
        parts += (_ROUTES_TAG, varint(len(route)), route)
    data = b"".join(parts)
    _ENCODED[key] = (pr.operations, data)
    if len(_ENCODED) > _ENCODED_MAX:
        _ENCODED.popitem(last=False)
    return data


_ROUTE_LIST_URL = "type.googleapis.com/envoy.config.route.v3.RouteList"
_ROUTES_FIELD = rc.RouteList.DESCRIPTOR.fields_by_name["routes"].number
_ROUTES_TAG = varint((_ROUTES_FIELD << 3) | 2)


def virtual_host_matcher(
    paths: tuple[ir.PathRoute, ...], default_retry: ir.RetryPolicy | None = None, ctx: RouteContext = None
) -> matcher_pb2.Matcher:
    """The matcher tree. Each path's routes are serialized once; a partition's RouteList is
    the concatenation of its members' encoded routes (a message is a sequence of fields),
    so a path shared by several partitions costs bytes, not proto copies."""
    # what else the encoding depends on, hashed once rather than per path
    context = hash(
        (
            default_retry,
            (
                (
                    ctx[1].xff_num_trusted_hops,
                    ctx[0].providers,
                    tokens.token_removal(ctx[1]),
                    ctx[0].headers,  # (preflight answers carry the security headers)
                    ctx[1].tls is not None,
                )
                if ctx is not None
                else None
            ),
        )
    )
    encoded = [_encoded(pr, default_retry, ctx, context) for pr in paths]
    tree = matcher_pb2.Matcher.MatcherTree(
        input=extension_pb2.TypedExtensionConfig(
            name="request-path", typed_config=packed(http_inputs_pb2.HttpRequestHeaderMatchInput(header_name=":path"))
        )
    )
    for key, members in sorted(partitions(paths).items()):
        action = tree.prefix_match_map.map[key].action
        action.name = key
        action.typed_config.type_url = _ROUTE_LIST_URL
        action.typed_config.value = b"".join(encoded[i] for i in members)
    # Only a path that starts with no key gets here (every key starts with "/"); a request
    # whose partition has no matching route gets Envoy's no-route 404, which the local
    # reply config turns into the same JSON with the same headers.
    not_found = extension_pb2.TypedExtensionConfig(name=NOT_FOUND_ROUTE, typed_config=packed(not_found_route()))
    return matcher_pb2.Matcher(matcher_tree=tree, on_no_match=matcher_pb2.Matcher.OnMatch(action=not_found))


SCOPE_HEADER = "x-gateway-scope"
SCOPED_MIN_OPERATIONS = 200


@functools.lru_cache(maxsize=262_144)
def scope_of(template: str) -> str | None:
    """The first path segment, when it is literal (a scope key)."""
    first = template[1:].split("/", 1)[0]
    return first if first and "{" not in first else None


@per_listener
def scopes(listener: ir.Listener) -> dict[str, tuple[ir.PathRoute, ...]] | None:
    """The listener's paths by first segment, or None when its routes stay in one configuration.

    A path whose first segment is a parameter (``/{tenant}/…``) or empty (``/``) could belong
    to any scope: such listeners are not split.
    """
    if listener.route_scopes == "never":
        return None
    groups: dict[str, list[ir.PathRoute]] = defaultdict(list)
    for pr in listener.paths:
        scope = scope_of(pr.path.template)
        if scope is None:
            return None
        groups[scope].append(pr)
    operations = sum(len(pr.operations) for pr in listener.paths)
    if listener.route_scopes == "auto" and (len(groups) < 2 or operations < SCOPED_MIN_OPERATIONS):
        return None
    return {name: tuple(prs) for name, prs in sorted(groups.items())}


def scope_name(listener: ir.Listener, scope: str) -> str:
    return f"{listener.name}/{scope}"


def route_configurations(
    gw: ir.Gateway, listener: ir.Listener
) -> list[tuple[route_pb2.RouteConfiguration, tuple[ir.PathRoute, ...]]]:
    """Each route configuration with the paths it holds. For a scope that did not change,
    both are the objects of the last compile (callers may cache by their identity)."""
    default_retry = common_retry(listener.paths)
    scoped = scopes(listener)
    if scoped is None:
        return [(_route_configuration(gw, listener, listener.name, listener.paths, default_retry), listener.paths)]
    return [_scope_configuration(gw, listener, scope, paths, default_retry) for scope, paths in scoped.items()]


# Route configurations of scopes that hold the same path objects as last time (build.py
# keeps the path routes of unchanged operations): an edit rebuilds only its scope.
_SCOPE_CACHE: OrderedDict[tuple[Any, ...], tuple[tuple[ir.PathRoute, ...], route_pb2.RouteConfiguration]] = (
    OrderedDict()
)


def _scope_configuration(
    gw: ir.Gateway,
    listener: ir.Listener,
    scope: str,
    paths: tuple[ir.PathRoute, ...],
    default_retry: ir.RetryPolicy | None,
) -> tuple[route_pb2.RouteConfiguration, tuple[ir.PathRoute, ...]]:
    key = (
        listener.name,
        scope,
        tuple(map(id, paths)),
        hash(
            (
                default_retry,
                listener.hostnames,
                listener.xff_num_trusted_hops,
                gw.headers,
                gw.providers,
                tokens.token_removal(listener),
                listener.tls,
                listener.header_rules,
            )
        ),
    )
    hit = _SCOPE_CACHE.get(key) if incremental.ENABLED else None
    if hit is not None and all(a is b for a, b in zip(hit[0], paths, strict=True)):
        _SCOPE_CACHE.move_to_end(key)
        return hit[1], hit[0]
    config = _route_configuration(gw, listener, scope_name(listener, scope), paths, default_retry)
    config.request_headers_to_remove.append(SCOPE_HEADER)  # set by the gateway, not for backends
    _SCOPE_CACHE[key] = (paths, config)  # holding the paths keeps their ids from being reused
    if len(_SCOPE_CACHE) > 4096:
        _SCOPE_CACHE.popitem(last=False)
    return config, paths


def scope_configurations(listener: ir.Listener) -> list[scoped_route_pb2.ScopedRouteConfiguration]:
    """Scope key: (listener, first segment), so that each listener only matches its own scopes
    (every scope is delivered to every listener)."""
    out = []
    for scope in scopes(listener) or {}:
        name = scope_name(listener, scope)
        key = scoped_route_pb2.ScopedRouteConfiguration.Key(
            fragments=[
                scoped_route_pb2.ScopedRouteConfiguration.Key.Fragment(string_key=listener.name),
                scoped_route_pb2.ScopedRouteConfiguration.Key.Fragment(string_key=scope),
            ]
        )
        out.append(scoped_route_pb2.ScopedRouteConfiguration(name=name, route_configuration_name=name, key=key))
    return out


def _route_configuration(
    gw: ir.Gateway,
    listener: ir.Listener,
    name: str,
    paths: tuple[ir.PathRoute, ...],
    default_retry: ir.RetryPolicy | None,
) -> route_pb2.RouteConfiguration:
    headers = gw.headers
    config = route_pb2.RouteConfiguration(name=name)
    host = config.virtual_hosts.add(name=listener.name, domains=list(listener.hostnames))
    if default_retry is not None:
        host.retry_policy.CopyFrom(retry_policy(default_retry))
    host.matcher.CopyFrom(virtual_host_matcher(paths, default_retry, (gw, listener)))
    header_rules.virtual_host(config, host, listener)
    if "*" not in listener.hostnames:
        # Unknown Host headers get the gateway's JSON 404, not Envoy's empty one.
        config.virtual_hosts.add(name="unknown-host", domains=["*"], routes=[not_found_route()])
    # The backend sees exactly one X-Forwarded-For entry: the client address the gateway
    # trusts (the TCP peer, or the entry xff_num_trusted_hops selects). Client-sent
    # entries would otherwise reach naive backends as the "first" address.
    config.request_headers_to_add.append(header("x-forwarded-for", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"))
    if tokens.token_removal(listener) == "all":
        config.request_headers_to_remove.append(tokens.AUTHORIZATION)
    if listener.tls is not None and listener.tls.client is not None:
        config.request_headers_to_add.extend(header(k, v) for k, v in tls.CLIENT_CERT_HEADERS)
    config.response_headers_to_add.extend(header(k, v) for k, v in security_headers(headers, listener.tls is not None))
    config.response_headers_to_remove.extend(headers.remove_response_headers)
    return config
