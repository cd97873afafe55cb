"""Listeners, their HTTP connection manager, and the order of HTTP filters.

Every connection manager gets Envoy's edge hardening ("Configuring Envoy as an edge
proxy"): the client address is the TCP peer unless hops are trusted, paths are normalized
before any matching, escaped slashes never pass, headers with underscores are refused,
timeouts bound slow clients, and buffers are small.
"""

from __future__ import annotations

from collections.abc import Callable

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2
from envoy.config.core.v3 import address_pb2, protocol_pb2, substitution_format_string_pb2
from envoy.config.core.v3 import extension_pb2 as core_extension_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.http_inspector.v3 import http_inspector_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.http.early_header_mutation.header_mutation.v3 import header_mutation_pb2 as early_mutation_pb2
from google.protobuf import struct_pb2

from .. import ir
from . import allowlist, auth, claims, cors, geo, headers, jwt, ratelimit, reputation, routes, tls, tokens, waf
from ._pb import ads, duration, header, packed, uint32

HCM = hcm_pb2.HttpConnectionManager
BUFFER_LIMIT_BYTES = 32 * 1024

ACCESS_LOG_FIELDS = {
    "time": "%START_TIME%",
    "request_id": "%REQ(X-REQUEST-ID)%",
    "operation": "%ROUTE_NAME%",
    "method": "%REQ(:METHOD)%",
    "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "status": "%RESPONSE_CODE%",
    "flags": "%RESPONSE_FLAGS%",
    "upstream": "%UPSTREAM_CLUSTER%",
    "upstream_host": "%UPSTREAM_HOST%",
    "duration_ms": "%DURATION%",
    "client": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    "bytes_in": "%BYTES_RECEIVED%",
    "bytes_out": "%BYTES_SENT%",
    # "denied" when dry-run authorization rules would have refused the request
    "dry_run_authorization": "%DYNAMIC_METADATA(envoy.filters.http.rbac:dry_run_shadow_engine_result)%",
    # the limit that refused the request, and shadow limits that would have (the rate-limit service)
    "rate_limit": "%DYNAMIC_METADATA(envoy.filters.http.ratelimit:limit)%",
    "rate_limit_shadow": "%DYNAMIC_METADATA(envoy.filters.http.ratelimit:shadow)%",
    # the WAF's verdict when it found something ("refused: sqli/…", "detected: xss/…"): the check's
    # x-waf-verdict header, which ext_authz keeps as dynamic metadata
    "waf": "%DYNAMIC_METADATA(envoy.filters.http.ext_authz:x-waf-verdict)%",
}


def _router(gw: ir.Gateway, listener: ir.Listener) -> hcm_pb2.HttpFilter:
    # suppress_envoy_headers: no x-envoy-upstream-service-time & co. towards clients.
    return hcm_pb2.HttpFilter(
        name="envoy.filters.http.router", typed_config=packed(router_pb2.Router(suppress_envoy_headers=True))
    )


# The order of HTTP filters, in one place. Each entry says why it stands where it does.
HTTP_FILTERS: list[
    tuple[Callable[[ir.Gateway, ir.Listener], hcm_pb2.HttpFilter | list[hcm_pb2.HttpFilter] | None], str]
] = [
    (headers.strip_identity_filter, "first: client-sent identity headers must be gone before anything reads them"),
    (allowlist.ip_allowlist_filter, "before authentication: a client from elsewhere gets 403 without a token check"),
    (reputation.block_filter, "after the allowlists (their ranges are exempt): a listed client gets 403 first"),
    (reputation.soft_filter, "after blocking: a client a soft feed lists goes on marked X-Gateway-Risk"),
    (geo.lookup_filter, "after the address lists (an allowlist or a feed decides by address first): the country"),
    (geo.hard_filter, "after the lookup: a route's hard rule refuses a country with 403 before authentication"),
    (geo.soft_filter, "after the lookup: a route's soft rule marks the request X-Gateway-Risk: geo"),
    (
        cors.cors_filter,
        "before certificates and tokens: browsers send preflights without credentials; it answers them itself",
    ),
    # (tls.misdirected_filter, inserted second in each SNI chain of a listener with several
    # certificates: a Host its certificate is not for gets 421 before anything reads the request)
    (tls.client_certificate_filter, "before authentication: an API for certificate holders refuses others first"),
    (tokens.one_token_filter, "before authentication: tokens in two places would give the backend two identities"),
    (jwt.jwt_filter, "verifies the token, sets identity headers from its claims, leaves its payload for RBAC"),
    (jwt.token_algorithm_filter, "after the token: its verified header names the algorithm (keys Envoy fetches)"),
    (claims.claim_values_filter, "after the token: claim headers that are lists or unclean are rewritten or refused"),
    (auth.authorization_filter, "after the token: roles and scopes come from its verified payload"),
    (ratelimit.exemption_filters, "after the token: exemptions by role or scope read its verified payload"),
    (
        ratelimit.local_filter(ratelimit.STAGE_LOCAL),
        "after authorization: a refused caller spends no one's budget; local buckets cost no round trip",
    ),
    (ratelimit.local_filter(ratelimit.STAGE_LOCAL_SHADOW), "beside the local limits: counts, never refuses"),
    (
        ratelimit.service_filter(ratelimit.STAGE_CLOSED),
        "after authorization: descriptors read the verified payload and the trusted client address",
    ),
    (ratelimit.service_filter(ratelimit.STAGE_OPEN), "as above; its failures let requests through"),
    (
        ratelimit.local_filter(ratelimit.STAGE_BACKSTOP),
        "after the service: bounds each Envoy while the service cannot answer (fail-open limits)",
    ),
    (
        waf.waf_filters,
        "after authorization and limits: refused and throttled callers cost no inspection; bodies whole",
    ),
    (
        tokens.token_strip_filter,
        "after authentication read them: token query parameters and cookies never reach backends",
    ),
    (_router, "last: forwards the request upstream"),
]


def access_log() -> accesslog_pb2.AccessLog:
    fmt = struct_pb2.Struct()
    fmt.update(ACCESS_LOG_FIELDS)
    return accesslog_pb2.AccessLog(
        name="envoy.access_loggers.stdout",
        typed_config=packed(
            stream_pb2.StdoutAccessLog(
                log_format=substitution_format_string_pb2.SubstitutionFormatString(json_format=fmt)
            )
        ),
    )


def connection_manager(gw: ir.Gateway, listener: ir.Listener) -> hcm_pb2.HttpConnectionManager:
    hcm = _hardened(gw, listener, listener.name, https=listener.tls is not None)
    cors.explain_refusals(hcm, gw, listener)
    if listener.tls is not None and listener.tls.client is not None:
        # Envoy's own record of the verified client certificate, for backends that read it;
        # a client-sent X-Forwarded-Client-Cert is dropped (SANITIZE, the default, on every listener).
        hcm.forward_client_cert_details = HCM.SANITIZE_SET
        hcm.set_current_client_cert_details.CopyFrom(
            HCM.SetCurrentClientCertDetails(subject=packed_bool(True), uri=True, dns=True)
        )
    if routes.scopes(listener) is None:
        hcm.rds.CopyFrom(hcm_pb2.Rds(config_source=ads(), route_config_name=listener.name))
    else:
        _scoped(hcm, listener)
    for build, _why in HTTP_FILTERS:
        f = build(gw, listener)
        if isinstance(f, list):
            hcm.http_filters.extend(f)
        elif f is not None:
            hcm.http_filters.append(f)
    if gw.access_log:
        hcm.access_log.append(access_log())
    return hcm


def _hardened(gw: ir.Gateway, listener: ir.Listener, stat_prefix: str, https: bool) -> hcm_pb2.HttpConnectionManager:
    """The connection manager's edge hardening, without routes or filters."""
    t = listener.timeouts
    return HCM(
        stat_prefix=stat_prefix,
        codec_type=HCM.AUTO,
        use_remote_address=packed_bool(True),
        xff_num_trusted_hops=listener.xff_num_trusted_hops,
        normalize_path=packed_bool(True),
        merge_slashes=True,
        path_with_escaped_slashes_action=(
            HCM.REJECT_REQUEST if listener.escaped_slashes is ir.EscapedSlashes.REJECT else HCM.UNESCAPE_AND_REDIRECT
        ),
        strip_trailing_host_dot=True,
        strip_any_host_port=True,
        server_header_transformation=HCM.PASS_THROUGH,
        generate_request_id=packed_bool(True),
        preserve_external_request_id=listener.trust_client_request_id,
        always_set_request_id_in_response=True,
        max_request_headers_kb=uint32(listener.max_request_headers_kb),
        request_headers_timeout=duration(t.request_headers_ms),
        stream_idle_timeout=duration(t.stream_idle_ms),
        request_timeout=duration(t.request_ms),
        common_http_protocol_options=protocol_pb2.HttpProtocolOptions(
            idle_timeout=duration(t.connection_idle_ms),
            headers_with_underscores_action=protocol_pb2.HttpProtocolOptions.REJECT_REQUEST,
        ),
        # Envoy 1.40's strictest HTTP/1 parsing: BalsaParser (its default; the switch back to the
        # legacy parser is deprecated), no HTTP/1.0, no chunked + Content-Length. Neither parser
        # can refuse bare-LF line ends or obs-folded lines; both rewrite them (a folded line joins
        # the header value above it, CR and LF removed), so what reaches the backend is one
        # well-formed request (tests/test_hostile_http1.py shows it).
        http_protocol_options=protocol_pb2.Http1ProtocolOptions(accept_http_10=False, allow_chunked_length=False),
        http2_protocol_options=protocol_pb2.Http2ProtocolOptions(
            max_concurrent_streams=uint32(100),
            initial_stream_window_size=uint32(64 * 1024),
            initial_connection_window_size=uint32(1024 * 1024),
        ),
        local_reply_config=headers.local_reply_config(gw.headers, stat_prefix, https=https),
    )


def _scoped(hcm: hcm_pb2.HttpConnectionManager, listener: ir.Listener) -> None:
    """Routes split by first path segment (scoped RDS). Before routing, the gateway writes
    "<listener><path without query>" into a header (overwriting any client value); its first
    two '/'-separated elements are the scope key."""
    hcm.early_header_mutation_extensions.append(
        core_extension_pb2.TypedExtensionConfig(
            name="route-scope",
            typed_config=packed(
                early_mutation_pb2.HeaderMutation(
                    mutations=[
                        mutation_rules_pb2.HeaderMutation(
                            append=header(routes.SCOPE_HEADER, f"{listener.name}%PATH(NQ)%")
                        )
                    ]
                )
            ),
        )
    )
    Builder = hcm_pb2.ScopedRoutes.ScopeKeyBuilder
    fragments = [
        Builder.FragmentBuilder(
            header_value_extractor=Builder.FragmentBuilder.HeaderValueExtractor(
                name=routes.SCOPE_HEADER, element_separator="/", index=i
            )
        )
        for i in (0, 1)
    ]
    hcm.scoped_routes.CopyFrom(
        hcm_pb2.ScopedRoutes(
            name=listener.name,
            scope_key_builder=Builder(fragments=fragments),
            rds_config_source=ads(),
            scoped_rds=hcm_pb2.ScopedRds(scoped_rds_config_source=ads()),
        )
    )


def packed_bool(value: bool):  # type: ignore[no-untyped-def]
    from google.protobuf import wrappers_pb2

    return wrappers_pb2.BoolValue(value=value)


def listener(gw: ir.Gateway, lst: ir.Listener) -> listener_pb2.Listener:
    hcm = connection_manager(gw, lst)
    out = _bound(lst.name, lst.address, lst.port, lst.timeouts.request_headers_ms, lst.tls is not None)
    if lst.tls is None:
        out.filter_chains.add(
            filters=[
                listener_components_pb2.Filter(
                    name="envoy.filters.network.http_connection_manager", typed_config=packed(hcm)
                )
            ]
        )
    else:
        # SNI-named chains first; the catch-all chain (no server_names) takes the rest
        out.filter_chains.extend(tls.filter_chains(lst.tls, hcm, lst.timeouts.request_headers_ms))
    return out


def _bound(name: str, address: str, port: int, first_bytes_ms: int, https: bool) -> listener_pb2.Listener:
    # Envoy starts the request-headers timer at a connection's first byte: a connection that
    # sends nothing would be held for the idle timeout (1 h) and count against
    # maxConnections. A listener filter that waits for the first bytes, bounded by the
    # request-headers timeout, closes it instead: the TLS inspector (which also reads the SNI
    # the filter chains match) or the HTTP inspector.
    inspector = (
        listener_components_pb2.ListenerFilter(
            name="envoy.filters.listener.tls_inspector", typed_config=packed(tls_inspector_pb2.TlsInspector())
        )
        if https
        else listener_components_pb2.ListenerFilter(
            name="envoy.filters.listener.http_inspector", typed_config=packed(http_inspector_pb2.HttpInspector())
        )
    )
    return listener_pb2.Listener(
        name=name,
        address=address_pb2.Address(socket_address=address_pb2.SocketAddress(address=address, port_value=port)),
        per_connection_buffer_limit_bytes=uint32(BUFFER_LIMIT_BYTES),
        listener_filters=[inspector],
        listener_filters_timeout=duration(first_bytes_ms),
        continue_on_listener_filters_timeout=False,
    )


def redirect_listener(gw: ir.Gateway, lst: ir.Listener) -> listener_pb2.Listener:
    """``tls.httpRedirectPort``: plain HTTP that only answers with a redirect to the HTTPS
    listener (301; no route, filter or upstream is reached), for the listener's hostnames only."""
    assert lst.tls is not None and lst.tls.redirect_port is not None
    name = f"{lst.name}-http-redirect"
    config = route_pb2.RouteConfiguration(name=name)
    redirect = route_components_pb2.RedirectAction(https_redirect=True)
    if lst.port != 443:
        redirect.port_redirect = lst.port
    host = config.virtual_hosts.add(name=name, domains=list(lst.hostnames))
    host.routes.add(match=route_components_pb2.RouteMatch(prefix="/"), redirect=redirect)
    if "*" not in lst.hostnames:
        config.virtual_hosts.add(name="unknown-host", domains=["*"], routes=[routes.not_found_route()])
    config.response_headers_to_add.extend(header(k, v) for k, v in headers.security_headers(gw.headers, False))
    hcm = _hardened(gw, lst, name, https=False)
    hcm.route_config.CopyFrom(config)
    hcm.http_filters.append(_router(gw, lst))
    if gw.access_log:
        hcm.access_log.append(access_log())
    out = _bound(name, lst.address, lst.tls.redirect_port, lst.timeouts.request_headers_ms, False)
    out.filter_chains.add(
        filters=[
            listener_components_pb2.Filter(
                name="envoy.filters.network.http_connection_manager", typed_config=packed(hcm)
            )
        ]
    )
    return out
