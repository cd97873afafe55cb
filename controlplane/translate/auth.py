"""Authorization (RBAC on the verified payload: roles and scopes; dry-run rules only log), and
the per-route configs of every auth filter an operation's route carries.

The filters, in the order HTTP_FILTERS (listener.py) puts them: ``ip-allowlist``
(allowlist.py), ``envoy.filters.http.jwt_authn`` and ``token-algorithm`` (jwt.py),
``claim-values`` (claims.py), ``authorization`` (here), then the token removal filters
(tokens.py). A route without a per-route config is not affected by the per-route ones (404/405
replies, public operations).
"""

from __future__ import annotations

from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.type.matcher.v3 import value_pb2
from google.protobuf.message import Message

from .. import ir
from . import tls, waf
from ._authfacts import envoy_fetches, uses
from ._pb import packed
from .allowlist import IP_FILTER, ip_allowlist_route_config
from .jwt import (
    ALG_FILTER,
    JWT_FILTER,
    exact_value,
    jwt_route_config,
    metadata_principal,
    payload_key,
    token_algorithm_route_config,
)

AUTHZ_FILTER = "authorization"


def authorization_filter(gw: ir.Gateway, listener: ir.Listener) -> hcm_pb2.HttpFilter | None:
    if not uses(listener).authorization:
        return None
    return hcm_pb2.HttpFilter(name=AUTHZ_FILTER, typed_config=packed(rbac_filter_pb2.RBAC()))


def _claim(provider: ir.JwtProvider, claim: str, value: str, in_list: bool) -> rbac_pb2.Principal:
    exact = exact_value(value)
    matcher = value_pb2.ValueMatcher(list_match=value_pb2.ListMatcher(one_of=exact)) if in_list else exact
    return metadata_principal([payload_key(provider), claim], matcher)


def role_principal(provider: ir.JwtProvider, role: str) -> rbac_pb2.Principal:
    """A verified token with this role (its role claim may hold one string or a list)."""
    claim = provider.roles_claim
    return rbac_pb2.Principal(
        or_ids=rbac_pb2.Principal.Set(ids=[_claim(provider, claim, role, False), _claim(provider, claim, role, True)])
    )


def scope_principal(provider: ir.JwtProvider, scopes: tuple[str, ...]) -> rbac_pb2.Principal:
    """A verified token with all these scopes (the scope claim is normalized to a list)."""
    return rbac_pb2.Principal(
        and_ids=rbac_pb2.Principal.Set(ids=[_claim(provider, provider.scopes_claim, s, True) for s in scopes])
    )


def authorization_route_config(op: ir.Operation, provider: ir.JwtProvider) -> rbac_filter_pb2.RBACPerRoute:
    assert op.auth is not None
    principals = [role_principal(provider, role) for role in op.auth.roles]
    principals.extend(scope_principal(provider, scopes) for scopes in op.auth.scope_sets)
    policies = {}
    if principals:  # no principal: no policy, and an ALLOW list with no policy denies everyone
        policies["allowed"] = rbac_pb2.Policy(permissions=[rbac_pb2.Permission(any=True)], principals=principals)
    rules = rbac_pb2.RBAC(action=rbac_pb2.RBAC.ALLOW, policies=policies)
    if op.auth.dry_run:
        return rbac_filter_pb2.RBACPerRoute(
            rbac=rbac_filter_pb2.RBAC(shadow_rules=rules, shadow_rules_stat_prefix="dry_run_")
        )
    return rbac_filter_pb2.RBACPerRoute(rbac=rbac_filter_pb2.RBAC(rules=rules))


def route_filter_configs(op: ir.Operation, listener: ir.Listener, gw: ir.Gateway) -> dict[str, Message]:
    """The per-route configs an operation's route carries, by filter name."""
    out: dict[str, Message] = {}
    if op.client_cert is not None:
        out[tls.CLIENT_CERT_FILTER] = tls.client_certificate_route_config(op)
    inspected = waf.route_config(op)
    if inspected is not None:
        out[inspected[0]] = inspected[1]
    masked = waf.mask_route_config(op)
    if masked is not None:
        out[waf.FILTER_MASK] = masked
    if op.ip_allow:
        out[IP_FILTER] = ip_allowlist_route_config(op, listener)
    if op.auth is not None:
        out[JWT_FILTER] = jwt_route_config(op)
        provider = next(p for p in gw.providers if p.name == op.auth.provider)
        if envoy_fetches(provider):
            out[ALG_FILTER] = token_algorithm_route_config(provider)
        if op.auth.authorize:
            out[AUTHZ_FILTER] = authorization_route_config(op, provider)
    return out
