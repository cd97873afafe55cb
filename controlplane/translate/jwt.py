"""Token verification: Envoy's jwt_authn per listener and route, the clusters it fetches
remote keys through, and the token-algorithm check for keys Envoy fetches itself (which the
control plane cannot pin to an algorithm): an RBAC filter refusing a verified token whose
``alg`` is not one of the provider's.
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from envoy.config.core.v3 import base_pb2, http_uri_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.type.matcher.v3 import metadata_pb2, string_pb2, value_pb2
from google.protobuf import empty_pb2

from .. import ir
from ..ir import Upstream
from ._authfacts import envoy_fetches, uses
from ._pb import duration, packed

JWT_FILTER = "envoy.filters.http.jwt_authn"
ALG_FILTER = "token-algorithm"
HEADER = "jwt_header"  # where jwt_authn leaves a verified token's header (keys Envoy fetches)


def jwt_filter(gw: ir.Gateway, listener: ir.Listener) -> hcm_pb2.HttpFilter | None:
    used = uses(listener).providers
    if not used:
        return None
    providers = {p.name: p for p in gw.providers}
    authorizing, scoping = uses(listener).authorizing_providers, uses(listener).scoping_providers
    limiting = uses(listener).limiting_providers
    config = jwt_pb2.JwtAuthentication()
    for name in used:
        p = providers[name]
        # copying the payload into each request's metadata costs: only when RBAC, the claim check or a
        # rate limit reads it
        payload = name in authorizing or name in limiting or bool(p.claim_headers)
        config.providers[name].CopyFrom(_provider(p, name in scoping, payload))
        config.requirement_map[name].CopyFrom(jwt_pb2.JwtRequirement(provider_name=name))
        config.requirement_map[name + "?"].CopyFrom(
            jwt_pb2.JwtRequirement(
                requires_any=jwt_pb2.JwtRequirementOrList(
                    requirements=[
                        jwt_pb2.JwtRequirement(provider_name=name),
                        jwt_pb2.JwtRequirement(allow_missing=empty_pb2.Empty()),
                    ]
                )
            )
        )
    return hcm_pb2.HttpFilter(name=JWT_FILTER, typed_config=packed(config))


def payload_key(p: ir.JwtProvider | str) -> str:
    """Where a provider's verified payload lies in jwt_authn's dynamic metadata: one key per
    provider, so that the claim check knows which provider's claim headers apply."""
    return f"payload.{p if isinstance(p, str) else p.name}"


def _provider(p: ir.JwtProvider, scoping: bool, payload: bool) -> jwt_pb2.JwtProvider:
    out = jwt_pb2.JwtProvider(
        issuer=p.issuer,
        audiences=list(p.audiences),
        forward=p.forward_token,  # by default the backend gets verified headers, not the token
        from_headers=[jwt_pb2.JwtHeader(name="Authorization", value_prefix="Bearer ")],
        from_params=list(p.query_parameters),
        from_cookies=list(p.cookies),
        clock_skew_seconds=p.clock_skew_s,
        require_expiration=True,
        jwt_cache_config=jwt_pb2.JwtCacheConfig(jwt_cache_size=10_000),
        claim_to_headers=[jwt_pb2.JwtClaimToHeader(header_name=h, claim_name=c) for c, h in p.claim_headers],
    )
    if payload:
        out.payload_in_metadata = payload_key(p)
    if scoping:  # a space-separated scope string becomes a list for RBAC (costs on every request)
        out.normalize_payload_in_metadata.space_delimited_claims.append(p.scopes_claim)
    if not envoy_fetches(p):
        # Keys from a file, inline, or fetched by the control plane. Without keys yet (offline
        # compile of control-plane-fetched keys) no token verifies: closed, not open.
        out.local_jwks.CopyFrom(base_pb2.DataSource(inline_string=p.jwks_json or json.dumps({"keys": []})))
    else:
        assert p.jwks_uri is not None
        out.header_in_metadata = HEADER  # for the token-algorithm check
        out.remote_jwks.CopyFrom(
            jwt_pb2.RemoteJwks(
                http_uri=http_uri_pb2.HttpUri(uri=p.jwks_uri, cluster=p.jwks_cluster, timeout=duration(p.timeout_ms)),
                cache_duration=duration(p.cache_duration_ms),
                # listeners do not wait for the keys; requests before the first fetch get 401
                async_fetch=jwt_pb2.JwksAsyncFetch(fast_listener=True),
            )
        )
    return out


def jwks_upstreams(gw: ir.Gateway) -> list[Upstream]:
    """Clusters Envoy uses to fetch remote JWKS (TLS for https, verified against the CA)."""
    out = []
    for p in gw.providers:
        if not envoy_fetches(p) or p.jwks_uri is None:
            continue
        url = urlsplit(p.jwks_uri)
        tls = url.scheme == "https"
        host = url.hostname or ""
        port = url.port or (443 if tls else 80)
        out.append(
            Upstream(
                name=p.jwks_cluster,
                endpoints=(ir.Endpoint(host, port),),
                source=p.source,
                tls=tls,
                sni=host if tls else None,
                ca_file=p.ca_file,
                connect_timeout_ms=min(p.timeout_ms, 5000),
            )
        )
    return out


# -- token algorithms of keys Envoy fetches ------------------------------------------------


def _remote_providers(gw: ir.Gateway, listener: ir.Listener) -> tuple[str, ...]:
    remote = {p.name for p in gw.providers if envoy_fetches(p)}
    return tuple(n for n in uses(listener).providers if n in remote)


def token_algorithm_filter(gw: ir.Gateway, listener: ir.Listener) -> hcm_pb2.HttpFilter | None:
    if not _remote_providers(gw, listener):
        return None
    return hcm_pb2.HttpFilter(name=ALG_FILTER, typed_config=packed(rbac_filter_pb2.RBAC()))


def token_algorithm_route_config(provider: ir.JwtProvider) -> rbac_filter_pb2.RBACPerRoute:
    """Deny (as policy ``token-algorithm``, which the local reply turns into 401) a verified token
    whose header names another algorithm. No token (an optional one) leaves no header: allowed."""
    alg = [HEADER, "alg"]
    allowed = rbac_pb2.Principal(
        or_ids=rbac_pb2.Principal.Set(ids=[metadata_principal(alg, exact_value(a)) for a in provider.algorithms])
    )
    present = metadata_principal(alg, value_pb2.ValueMatcher(present_match=True))
    wrong = rbac_pb2.Principal(and_ids=rbac_pb2.Principal.Set(ids=[present, rbac_pb2.Principal(not_id=allowed)]))
    policy = rbac_pb2.Policy(permissions=[rbac_pb2.Permission(any=True)], principals=[wrong])
    rules = rbac_pb2.RBAC(action=rbac_pb2.RBAC.DENY, policies={ALG_FILTER: policy})
    return rbac_filter_pb2.RBACPerRoute(rbac=rbac_filter_pb2.RBAC(rules=rules))


def jwt_route_config(op: ir.Operation) -> jwt_pb2.PerRouteConfig:
    assert op.auth is not None
    return jwt_pb2.PerRouteConfig(requirement_name=op.auth.provider + ("?" if op.auth.optional else ""))


def exact_value(value: str) -> value_pb2.ValueMatcher:
    return value_pb2.ValueMatcher(string_match=string_pb2.StringMatcher(exact=value))


def metadata_principal(path: list[str], value: value_pb2.ValueMatcher) -> rbac_pb2.Principal:
    """A match on what jwt_authn left in the request's dynamic metadata."""
    return rbac_pb2.Principal(
        sourced_metadata=rbac_pb2.SourcedMetadata(
            metadata_matcher=metadata_pb2.MetadataMatcher(
                filter=JWT_FILTER,
                path=[metadata_pb2.MetadataMatcher.PathSegment(key=k) for k in path],
                value=value,
            )
        )
    )
