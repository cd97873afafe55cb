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

from collections import defaultdict

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2
from envoy.type.matcher.v3 import http_inputs_pb2, regex_pb2, string_pb2
from xds.core.v3 import extension_pb2
from xds.type.matcher.v3 import matcher_pb2

from .. import ir
from ..ir import SegmentKind
from ..model.paths import parse_template, re2_escape
from ._pb import duration, header, packed, uint32

NOT_FOUND_ROUTE = "not-found"


def direct(status: int, message: str) -> rc.DirectResponseAction:
    """A reply from the gateway itself; the listener's local reply format wraps it in JSON."""
    return rc.DirectResponseAction(status=status, body=base_pb2.DataSource(inline_string=message))


def not_found_route() -> rc.Route:
    return rc.Route(
        name=NOT_FOUND_ROUTE,
        match=rc.RouteMatch(prefix="/"),
        direct_response=direct(404, "no API operation is declared at this path"),
    )


def _path_match(path: ir.PathPattern) -> rc.RouteMatch:
    if path.regex is None:
        return rc.RouteMatch(path=path.template)
    return rc.RouteMatch(safe_regex=regex_pb2.RegexMatcher(regex=path.regex))


def _operation_route(op: ir.Operation) -> rc.Route:
    match = _path_match(op.path)
    match.headers.append(rc.HeaderMatcher(name=":method", string_match=string_pb2.StringMatcher(exact=op.method)))
    for name, value in op.query:
        match.query_parameters.append(
            rc.QueryParameterMatcher(name=name, string_match=string_pb2.StringMatcher(exact=value))
        )
    action = rc.RouteAction(cluster=op.upstream, timeout=duration(op.timeout_ms))
    if op.retry is not None:
        action.retry_policy.CopyFrom(
            rc.RetryPolicy(
                retry_on=",".join(op.retry.retry_on),
                num_retries=uint32(op.retry.attempts),
                retriable_status_codes=op.retry.retriable_status_codes,
            )
        )
        if op.retry.per_try_timeout_ms is not None:
            action.retry_policy.per_try_timeout.CopyFrom(duration(op.retry.per_try_timeout_ms))
    if op.rewrite_prefix is not None:
        gateway_prefix, upstream_prefix = op.rewrite_prefix
        action.regex_rewrite.CopyFrom(
            regex_pb2.RegexMatchAndSubstitute(
                pattern=regex_pb2.RegexMatcher(regex="^" + re2_escape(gateway_prefix)),
                substitution=upstream_prefix.replace("\\", "\\\\"),
            )
        )
    route = rc.Route(name=op.name, match=match, route=action)
    if op.sensitive:
        route.response_headers_to_add.append(header("cache-control", "no-store"))
    return route


def _method_not_allowed(path_route: ir.PathRoute) -> rc.Route:
    allow = path_route.allow
    return rc.Route(
        name=f"method-not-allowed {path_route.path.template}",
        match=_path_match(path_route.path),
        direct_response=direct(405, f"method not declared for this path; allowed: {', '.join(allow)}"),
        response_headers_to_add=[header("allow", ", ".join(allow))],
    )


def path_routes(path_route: ir.PathRoute) -> list[rc.Route]:
    routes = [_operation_route(op) for op in path_route.operations]
    routes.append(_method_not_allowed(path_route))
    return routes


def partition_key(path: ir.PathPattern) -> str:
    if path.regex is None:
        return path.template
    return path.template[: path.template.index("{")]


def _may_extend(path: ir.PathPattern, key: str) -> bool:
    """Could ``path`` (templated) match a request whose path starts with ``key``?

    Conservative: True unless a literal part of the template contradicts the key.
    """
    segments = parse_template(path.template)
    key_segments = key[1:].split("/")
    full, partial = key_segments[:-1], key_segments[-1]
    if len(segments) <= len(full):
        return False
    for seg, text in zip(segments, full, strict=False):
        if seg.kind is SegmentKind.LITERAL:
            if seg.literal_parts[0] != text:
                return False
        elif not (text.startswith(seg.literal_parts[0]) and text.endswith(seg.literal_parts[-1])):
            return False
    seg = segments[len(full)]
    head = seg.literal_parts[0]
    if seg.kind is SegmentKind.LITERAL:
        return head.startswith(partial)
    return head.startswith(partial) or partial.startswith(head)


def partitions(paths: tuple[ir.PathRoute, ...]) -> dict[str, list[int]]:
    """Key → indexes into ``paths`` (in precedence order) of the paths tried for that key."""
    by_key: dict[str, list[int]] = defaultdict(list)
    templated_by_key: dict[str, list[int]] = defaultdict(list)
    for i, pr in enumerate(paths):
        key = partition_key(pr.path)
        by_key[key].append(i)
        if pr.path.regex is not None:
            templated_by_key[key].append(i)
    out: dict[str, list[int]] = {}
    for key, own in by_key.items():
        members = list(own)
        for cut in range(len(key)):
            ancestor = key[:cut]
            for i in templated_by_key.get(ancestor, ()):
                if _may_extend(paths[i].path, key):
                    members.append(i)
        out[key] = sorted(members)
    return out


def _action(name: str, message: rc.Route | rc.RouteList) -> extension_pb2.TypedExtensionConfig:
    return extension_pb2.TypedExtensionConfig(name=name, typed_config=packed(message))


def virtual_host_matcher(paths: tuple[ir.PathRoute, ...]) -> matcher_pb2.Matcher:
    built = [path_routes(pr) for pr in paths]
    tree = matcher_pb2.Matcher.MatcherTree(
        input=extension_pb2.TypedExtensionConfig(
            name="request-path", typed_config=packed(http_inputs_pb2.HttpRequestHeaderMatchInput(header_name=":path"))
        )
    )
    catch_all = not_found_route()
    for key, members in sorted(partitions(paths).items()):
        route_list = rc.RouteList()
        for i in members:
            route_list.routes.extend(built[i])
        route_list.routes.append(catch_all)
        tree.prefix_match_map.map[key].action.CopyFrom(_action(key, route_list))
    return matcher_pb2.Matcher(
        matcher_tree=tree, on_no_match=matcher_pb2.Matcher.OnMatch(action=_action(NOT_FOUND_ROUTE, catch_all))
    )


def route_configuration(listener: ir.Listener, headers: ir.HeaderPolicy) -> route_pb2.RouteConfiguration:
    config = route_pb2.RouteConfiguration(name=listener.name)
    host = config.virtual_hosts.add(name=listener.name, domains=list(listener.hostnames))
    host.matcher.CopyFrom(virtual_host_matcher(listener.paths))
    if "*" not in listener.hostnames:
        # Unknown Host headers get the gateway's JSON 404, not Envoy's empty one.
        config.virtual_hosts.add(name="unknown-host", domains=["*"], routes=[not_found_route()])
    # The backend sees exactly one X-Forwarded-For entry: the client address the gateway
    # trusts (the TCP peer, or the entry xff_num_trusted_hops selects). Client-sent
    # entries would otherwise reach naive backends as the "first" address.
    config.request_headers_to_add.append(header("x-forwarded-for", "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"))
    security = [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
    ]
    if headers.strict_transport_security:
        security.insert(0, ("strict-transport-security", headers.strict_transport_security))
    config.response_headers_to_add.extend(header(k, v) for k, v in security)
    config.response_headers_to_remove.extend(headers.remove_response_headers)
    return config
