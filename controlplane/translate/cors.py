"""CORS: Envoy's CORS filter, the routes that answer preflights, and the per-route policies.

A preflight (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) on a path
where some operation allows cross-origin calls never reaches a backend:

- ``cors-preflight`` routes, one per such operation, match the path, the requested method and
  an allowed ``Origin``; Envoy's CORS filter (before authentication: a preflight carries no
  token) answers them 200 with the operation's policy. Its ``Allow-Methods`` are the path's
  methods whose operations share that policy. The filter answers only routes with an action
  (not direct responses), so these route to the operation's upstream, which the filter never
  lets them reach (``forward_not_matching_preflights: false`` besides).
- one ``cors-preflight-refused`` route per path takes every other preflight (an origin not
  allowed, a method without CORS): 403, so that refusals are plain in logs and to developers,
  where Envoy alone would answer 200 without CORS headers.

The filter's own answer is not a local reply and comes before the router, so neither the
route configuration's response headers nor the local reply mappers reach it: the preflight
route gives the first filter (header_mutation) a per-route config that adds the security
response headers. Actual calls get the CORS headers on their responses (the gateway's own
401/403 included) and ``Vary: Origin`` for caches, since the allowed origin is echoed.
"""

from __future__ import annotations

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2 as mr
from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2
from envoy.extensions.filters.http.cors.v3 import cors_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2 as hm
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from google.protobuf import wrappers_pb2

from .. import cors as cors_model
from .. import geo as geo_model
from .. import ir
from . import geo
from ._pb import header, packed, per_listener
from .allowlist import IP_FILTER, ip_allowlist_route_config
from .headers import security_headers

FILTER = "envoy.filters.http.cors"
HEADER_MUTATION_FILTER = "envoy.filters.http.header_mutation"  # the first filter (headers.strip_identity_filter)
PREFLIGHT_ROUTE = "cors-preflight"
REFUSED_ROUTE = "cors-preflight-refused"
REQUEST_METHOD = "access-control-request-method"


@per_listener
def uses_cors(listener: ir.Listener) -> bool:
    return any(op.cors is not None for pr in listener.paths for op in pr.operations)


def cors_filter(gw: ir.Gateway, listener: ir.Listener) -> hcm_pb2.HttpFilter | None:
    if not uses_cors(listener):
        return None
    return hcm_pb2.HttpFilter(name=FILTER, typed_config=packed(cors_pb2.Cors()))


def _origin_matcher(kind: str, value: str) -> string_pb2.StringMatcher:
    if kind == "exact":
        return string_pb2.StringMatcher(exact=value)
    return string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=".+" if kind == cors_model.ANY else value))


def policy(cors: ir.Cors, methods: tuple[str, ...] = ()) -> cors_pb2.CorsPolicy:
    out = cors_pb2.CorsPolicy(
        allow_origin_string_match=[_origin_matcher(k, v) for k, v in cors.origins],
        allow_methods=", ".join(methods),
        allow_headers=", ".join(cors.allow_headers),
        expose_headers=", ".join(cors.expose_headers),
        max_age=str(cors.max_age_s),
        forward_not_matching_preflights=wrappers_pb2.BoolValue(value=False),
    )
    if cors.allow_credentials:
        out.allow_credentials.CopyFrom(wrappers_pb2.BoolValue(value=True))
    return out


def route_rest(op: ir.Operation) -> rc.Route | None:
    """What an operation's own route gets for actual cross-origin calls (None: no CORS)."""
    if op.cors is None:
        return None
    route = rc.Route(response_headers_to_add=[header("vary", "origin", append=True)])
    route.typed_per_filter_config[FILTER].CopyFrom(packed(policy(op.cors)))
    return route


def _exact(name: str, value: str) -> rc.HeaderMatcher:
    return rc.HeaderMatcher(name=name, string_match=string_pb2.StringMatcher(exact=value))


def _present(name: str) -> rc.HeaderMatcher:
    return rc.HeaderMatcher(name=name, present_match=True)


def _path(path: ir.PathPattern) -> rc.RouteMatch:
    if path.regex is None:
        return rc.RouteMatch(path=path.template)
    return rc.RouteMatch(safe_regex=regex_pb2.RegexMatcher(regex=path.regex))


def _security_headers(gw: ir.Gateway, listener: ir.Listener) -> hm.HeaderMutationPerRoute:
    return hm.HeaderMutationPerRoute(
        mutations=hm.Mutations(
            response_mutations=[
                mr.HeaderMutation(append=header(k, v))
                for k, v in security_headers(gw.headers, listener.tls is not None)
            ]
        )
    )


def preflight_routes(path_route: ir.PathRoute, ctx: tuple[ir.Gateway, ir.Listener] | None) -> list[rc.Route]:
    """The routes that answer a path's preflights, tried before its operations ([] when no
    operation of the path has CORS)."""
    with_cors = [op for op in path_route.operations if op.cors is not None]
    if not with_cors:
        return []
    out = []
    for op in with_cors:
        assert op.cors is not None
        methods = tuple(sorted({o.method for o in with_cors if o.cors == op.cors}))
        match = _path(op.path)
        match.headers.extend(
            [
                _exact(":method", "OPTIONS"),
                _exact(REQUEST_METHOD, op.method),
                rc.HeaderMatcher(
                    name="origin",
                    string_match=string_pb2.StringMatcher(
                        safe_regex=regex_pb2.RegexMatcher(regex=cors_model.origin_regex(op.cors))
                    ),
                ),
            ]
        )
        match.query_parameters.extend(
            rc.QueryParameterMatcher(name=n, string_match=string_pb2.StringMatcher(exact=v)) for n, v in op.query
        )
        # The CORS filter answers before the router: nothing is sent to this cluster.
        route = rc.Route(name=PREFLIGHT_ROUTE, match=match, route=rc.RouteAction(cluster=op.upstream))
        route.typed_per_filter_config[FILTER].CopyFrom(packed(policy(op.cors, methods)))
        if ctx is not None:
            gw, listener = ctx
            route.typed_per_filter_config[HEADER_MUTATION_FILTER].CopyFrom(packed(_security_headers(gw, listener)))
            if op.ip_allow:  # the allowlist filter runs before the CORS filter: the same clients only
                route.typed_per_filter_config[IP_FILTER].CopyFrom(packed(ip_allowlist_route_config(op, listener)))
            if op.geo is not None and op.geo.mode == geo_model.HARD:  # (before the CORS filter too)
                route.typed_per_filter_config[geo.HARD_FILTER].CopyFrom(packed(geo.hard_route_config(op.geo)))
        out.append(route)
    refused = _path(path_route.path)
    refused.headers.extend([_exact(":method", "OPTIONS"), _present("origin"), _present(REQUEST_METHOD)])
    out.append(rc.Route(name=REFUSED_ROUTE, match=refused, direct_response=rc.DirectResponseAction(status=403)))
    return out


REFUSED = "CORS preflight refused: this origin may not call this method on this path"


def explain_refusals(hcm: hcm_pb2.HttpConnectionManager, gw: ir.Gateway, listener: ir.Listener) -> None:
    """A refused preflight's 403 says why (a developer reads it in the browser's console), with
    the security headers every local reply carries; first, since only the first mapper applies."""
    if not uses_cors(listener):
        return
    mapper = hcm_pb2.ResponseMapper(
        filter=accesslog_pb2.AccessLogFilter(
            extension_filter=accesslog_pb2.ExtensionFilter(
                name="envoy.access_loggers.extension_filters.cel",
                typed_config=packed(cel_pb2.ExpressionFilter(expression=f"xds.route_name == '{REFUSED_ROUTE}'")),
            )
        ),
        body=base_pb2.DataSource(inline_string=REFUSED),
        headers_to_add=[header(k, v) for k, v in security_headers(gw.headers, listener.tls is not None)],
    )
    hcm.local_reply_config.mappers.insert(0, mapper)


__all__ = ["cors_filter", "explain_refusals", "policy", "preflight_routes", "route_rest", "uses_cors"]
