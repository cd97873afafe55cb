"""Header hygiene: identity headers stripped on the way in, internals stripped on the way out."""

from __future__ import annotations

import re

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2 as mr
from envoy.config.core.v3 import base_pb2, extension_pb2, substitution_format_string_pb2
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2
from envoy.extensions.filters.common.matcher.action.v3 import skip_action_pb2
from envoy.extensions.filters.http.composite.v3 import composite_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2 as hm
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from google.protobuf import struct_pb2, wrappers_pb2
from xds.core.v3 import extension_pb2 as xds_extension_pb2
from xds.type.matcher.v3 import matcher_pb2

from .. import ir
from ._pb import header, packed


def _any_separator(name: str) -> str:
    """RE2 for ``name`` with any punctuation between its words: CGI and PHP backends map every
    non-alphanumeric character of a header name to '_', so ``X-User.Id`` is their X_USER_ID."""
    return "[^a-z0-9]".join(re.escape(word) for word in re.split(r"[^a-z0-9]", name.lower()))


def strip_identity_filter(gw: ir.Gateway, listener: ir.Listener) -> hcm_pb2.HttpFilter:
    """The first HTTP filter: removes every header only the gateway may set.

    Route-level ``request_headers_to_remove`` would run at the router, after JWT and RBAC
    have already read the request; this runs before them. Envoy lower-cases header names,
    so case variants are covered; underscore variants are refused by the connection manager,
    and variants with other punctuation (``X-User.Id``) match here. One regular expression
    over the request's headers costs no more than a removal per name.
    """
    names = [_any_separator(n) for n in gw.headers.strip_request_headers]
    prefixes = [
        _any_separator(p.rstrip("-")) + "[^a-z0-9].*" if p.endswith("-") else _any_separator(p) + ".*"
        for p in gw.headers.strip_request_header_prefixes
    ]
    regex = "|".join([*names, *prefixes, _XFCC_VARIANTS])
    mutations = (
        [
            mr.HeaderMutation(
                remove_on_match=mr.HeaderMutation.RemoveOnMatch(
                    key_matcher=string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=f"(?i)(?:{regex})"))
                )
            )
        ]
        if regex
        else []
    )
    config = hm.HeaderMutation(mutations=hm.Mutations(request_mutations=mutations))
    return hcm_pb2.HttpFilter(name="envoy.filters.http.header_mutation", typed_config=packed(config))


# Envoy sets X-Forwarded-Client-Cert itself (client-sent copies dropped by SANITIZE, by that
# exact name, before any filter); spellings with other punctuation (X-Forwarded-Client.Cert,
# which CGI reads as HTTP_X_FORWARDED_CLIENT_CERT) are removed here, Envoy's own is kept: at
# least one separator is not '-'.
_XFCC_VARIANTS = "|".join(
    "x"
    + "".join(
        ("[^a-z0-9-]" if i == odd else "[^a-z0-9]") + word for i, word in enumerate(("forwarded", "client", "cert"))
    )
    for odd in range(3)
)


# X-Gateway-Risk: what soft decisions (reputation feeds, geo rules) tell the backend. Clients'
# copies never reach it: the first filter strips it with the identity headers (edge.GATEWAY_SIGNAL_HEADERS).
RISK_HEADER = "x-gateway-risk"
# The composite filter's action for a request a soft decision lets through unmarked.
SKIP = matcher_pb2.Matcher.OnMatch(
    action=xds_extension_pb2.TypedExtensionConfig(name="skip", typed_config=packed(skip_action_pb2.SkipFilter()))
)


def risk_mark(value: str) -> matcher_pb2.Matcher.OnMatch:
    """The composite filter's action adding ``X-Gateway-Risk: value`` (after any value another
    check added: one each)."""
    mark = hm.HeaderMutation(
        mutations=hm.Mutations(
            request_mutations=[
                mr.HeaderMutation(
                    append=base_pb2.HeaderValueOption(
                        header=base_pb2.HeaderValue(key=RISK_HEADER, value=value),
                        append_action=base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD,
                    )
                )
            ]
        )
    )
    execute = composite_pb2.ExecuteFilterAction(
        typed_config=extension_pb2.TypedExtensionConfig(name=f"mark-risk-{value}", typed_config=packed(mark))
    )
    return matcher_pb2.Matcher.OnMatch(
        action=xds_extension_pb2.TypedExtensionConfig(name="mark", typed_config=packed(execute))
    )


def security_headers(policy: ir.HeaderPolicy, https: bool) -> list[tuple[str, str]]:
    """Response headers every reply carries, the gateway's own included. Strict-Transport-Security
    only over HTTPS (RFC 6797 §7.2: a browser ignores it over plain HTTP)."""
    out = [("x-content-type-options", "nosniff"), ("x-frame-options", "DENY")]
    if policy.strict_transport_security and https:
        out.insert(0, ("strict-transport-security", policy.strict_transport_security))
    return out


METHOD_NOT_ALLOWED = "method not allowed: see the Allow header"
NOT_FOUND = "no API operation is declared at this path"


def _cel(expression: str) -> accesslog_pb2.AccessLogFilter:
    return accesslog_pb2.AccessLogFilter(
        extension_filter=accesslog_pb2.ExtensionFilter(
            name="envoy.access_loggers.extension_filters.cel",
            typed_config=packed(cel_pb2.ExpressionFilter(expression=expression)),
        )
    )


def _status(status: int) -> accesslog_pb2.AccessLogFilter:
    return accesslog_pb2.AccessLogFilter(
        status_code_filter=accesslog_pb2.StatusCodeFilter(
            comparison=accesslog_pb2.ComparisonFilter(
                op=accesslog_pb2.ComparisonFilter.EQ,
                value=base_pb2.RuntimeUInt32(default_value=status, runtime_key=f"controlplane.reply_{status}"),
            )
        )
    )


AUTHENTICATION_REQUIRED = "authentication required"
WAF_REFUSED = "refused: the request looks like an attack (the gateway's logs say why, by request id)"
WAF_UNAVAILABLE = "the request cannot be inspected now; try again shortly"
MISDIRECTED = "misdirected request: this connection's certificate is not for this host"
TOO_MANY_REQUESTS = "too many requests"
LIMITS_UNAVAILABLE = "rate limits cannot be checked now; try again shortly"
RETRY_SOON = header("retry-after", "1")


def local_reply_config(policy: ir.HeaderPolicy, realm: str, https: bool) -> hcm_pb2.LocalReplyConfig:
    """Every reply the gateway makes itself, as small JSON with the request id.

    This covers direct responses (405), requests no route matches (404), and Envoy's own
    errors (400 on bad headers, 503 no healthy upstream, 504 timeout…); ``message`` is
    their text, never internals. Replies made before any route is chosen get the security
    headers here, since route configuration headers never apply to them.

    Nothing of the request is echoed: jwt_authn's ``WWW-Authenticate: Bearer realm="<request
    URL>"`` would hand back a secret sent in the query string, so every 401 gets a fixed realm
    (the listener's name) instead.
    """
    fmt = struct_pb2.Struct()
    fmt.update({"status": "%RESPONSE_CODE%", "message": "%LOCAL_REPLY_BODY%", "request_id": "%REQ(X-REQUEST-ID)%"})
    added = [header(k, v) for k, v in security_headers(policy, https)]
    challenge = [*added, header("www-authenticate", f'Bearer realm="{realm}"')]
    invalid = [*added, header("www-authenticate", f'Bearer realm="{realm}", error="invalid_token"')]
    every_reply = hcm_pb2.ResponseMapper(
        filter=accesslog_pb2.AccessLogFilter(not_health_check_filter=accesslog_pb2.NotHealthCheckFilter()),
        headers_to_add=added,
    )

    def mapper(
        match: accesslog_pb2.AccessLogFilter, message: str, headers: list[base_pb2.HeaderValueOption], status: int = 0
    ) -> hcm_pb2.ResponseMapper:
        out = hcm_pb2.ResponseMapper(
            filter=match, body=base_pb2.DataSource(inline_string=message), headers_to_add=headers
        )
        if status:
            out.status_code.CopyFrom(wrappers_pb2.UInt32Value(value=status))
        return out

    # Only the first matching mapper applies, so each carries the security headers too. Token
    # and permission failures say what, never why (no verification details). The 405 text is
    # here rather than in each path's 405 route: 40 bytes less per path (11% of a large route
    # table).
    mappers = [
        # a verified token signed with an algorithm its provider does not allow is an invalid token
        mapper(
            _cel("response.code_details == 'rbac_access_denied_matched_policy[token-algorithm]'"),
            AUTHENTICATION_REQUIRED,
            invalid,
            401,
        ),
        # tokens in two places (RFC 6750: one method per request)
        mapper(
            _cel("response.code_details == 'rbac_access_denied_matched_policy[one-token]'"),
            "send one token, in one place",
            added,
            400,
        ),
        # jwt_authn answers a token for another audience with 403; an invalid token is a 401 (RFC 6750)
        mapper(
            _cel("response.code == 403 && response.code_details.startsWith('jwt_authn_access_denied')"),
            AUTHENTICATION_REQUIRED,
            invalid,
            401,
        ),
        mapper(
            _cel("response.code == 401 && response.code_details == 'jwt_authn_access_denied{Jwt_is_missing}'"),
            AUTHENTICATION_REQUIRED,
            challenge,
        ),
        mapper(_status(401), AUTHENTICATION_REQUIRED, invalid),
        # a Host the connection's certificate (chosen by SNI) is not for: RFC 9110 §15.5.20
        mapper(
            _cel("response.code_details == 'rbac_access_denied_matched_policy[misdirected]'"),
            MISDIRECTED,
            added,
            421,
        ),
        # the WAF refused it: what it found is in the gateway's logs under the request id
        mapper(_cel("response.code == 403 && response.code_details == 'ext_authz_denied'"), WAF_REFUSED, added, 403),
        # the WAF service cannot answer and the operation fails closed
        mapper(_cel("response.code_details == 'ext_authz_error'"), WAF_UNAVAILABLE, [*added, RETRY_SOON], 503),
        mapper(_status(403), "forbidden", added),
        mapper(_status(413), "request body too large", added),
        mapper(_status(405), METHOD_NOT_ALLOWED, added),
        # Envoy's own "no route" 404 (a path under a known prefix, a value that does not fit a
        # typed parameter) has no text of its own
        mapper(_status(404), NOT_FOUND, added),
        # a rate limit refused it: the service's Retry-After comes with its reply; a local bucket
        # says when it refills in X-RateLimit-Reset (added after this mapper runs)
        mapper(_status(429), TOO_MANY_REQUESTS, added),
        # a fail-closed limit whose counting store (or service) cannot answer
        mapper(_cel("response.code_details == 'rate_limiter_error'"), LIMITS_UNAVAILABLE, [*added, RETRY_SOON], 503),
    ]
    return hcm_pb2.LocalReplyConfig(
        mappers=[*mappers, every_reply],
        body_format=substitution_format_string_pb2.SubstitutionFormatString(json_format=fmt),
    )
