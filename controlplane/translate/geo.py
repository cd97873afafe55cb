"""Geo-blocking in Envoy (controlplane/geo.py says what Envoy 1.40 does and why this shape).

On a listener of a gateway with a ``geo`` section, after the IP allowlists and reputation feeds:

1. Envoy's geoip filter with the MaxMind provider writes the client's country (ISO code) in
   ``X-Gateway-Geo-Country`` (backends may read it). It looks up the address the connection
   manager settled on (the trusted ``X-Forwarded-For`` hop when the listener trusts proxies, else
   the peer). A client-sent copy of the header never survives: the first filter strips it with
   the identity headers, so an address the database does not place arrives with no country.
2. ``geo-hard``, an RBAC filter without rules: each route with a hard rule carries a per-route
   config that denies the clients the rule refuses (403, the gateway's JSON body).
3. ``geo-soft``, a composite filter whose per-route matcher (``ExtensionWithMatcherPerRoute``)
   runs a header mutation adding ``X-Gateway-Risk: geo`` for the clients a soft rule refuses.

Decisions read the country header as it is when they run; route matching would not (the route is
chosen before the filters and the geoip filter does not clear the route cache).
"""

from __future__ import annotations

from envoy.config.core.v3 import extension_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.common.matching.v3 import extension_matcher_pb2
from envoy.extensions.filters.http.composite.v3 import composite_pb2
from envoy.extensions.filters.http.geoip.v3 import geoip_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.geoip_providers.common.v3 import common_pb2
from envoy.extensions.geoip_providers.maxmind.v3 import maxmind_pb2
from envoy.type.matcher.v3 import http_inputs_pb2, string_pb2
from xds.type.matcher.v3 import matcher_pb2

from .. import geo, ir
from ._lua import predicate
from ._pb import packed, per_listener, xds_re2
from .headers import SKIP, risk_mark

COUNTRY_HEADER = "x-gateway-geo-country"
LOOKUP_FILTER = "envoy.filters.http.geoip"
HARD_FILTER = "geo-hard"
SOFT_FILTER = "geo-soft"
POLICY = "geo"  # the RBAC policy name: a refusal's details read rbac_access_denied_matched_policy[geo]


@per_listener
def _modes(listener: ir.Listener) -> frozenset[str]:
    return frozenset(op.geo.mode for pr in listener.paths for op in pr.operations if op.geo is not None)


def lookup_filter(gw: ir.Gateway, listener: ir.Listener) -> hcm_pb2.HttpFilter | None:
    """On every listener once the gateway has a database: backends get the country even where
    no rule reads it."""
    if gw.geo is None:
        return None
    provider = maxmind_pb2.MaxMindConfig(
        country_db_path=gw.geo.database,
        common_provider_config=common_pb2.CommonGeoipProviderConfig(
            geo_field_keys=common_pb2.CommonGeoipProviderConfig.GeolocationFieldKeys(country=COUNTRY_HEADER)
        ),
    )
    config = geoip_pb2.Geoip(
        provider=extension_pb2.TypedExtensionConfig(name="envoy.geoip_providers.maxmind", typed_config=packed(provider))
    )
    return hcm_pb2.HttpFilter(name=LOOKUP_FILTER, typed_config=packed(config))


def hard_filter(gw: ir.Gateway, listener: ir.Listener) -> hcm_pb2.HttpFilter | None:
    if gw.geo is None or geo.HARD not in _modes(listener):
        return None
    # No rules here: only routes with a per-route config are restricted; its denials count apart
    # (http.<listener>.rbac.geo.denied)
    return hcm_pb2.HttpFilter(name=HARD_FILTER, typed_config=packed(rbac_filter_pb2.RBAC(rules_stat_prefix="geo")))


def _on_match(marked: bool) -> matcher_pb2.Matcher.OnMatch:
    return risk_mark(geo.RISK_VALUE) if marked else SKIP


def soft_filter(gw: ir.Gateway, listener: ir.Listener) -> hcm_pb2.HttpFilter | None:
    if gw.geo is None or geo.SOFT not in _modes(listener):
        return None
    wrapped = extension_matcher_pb2.ExtensionWithMatcher(
        xds_matcher=matcher_pb2.Matcher(on_no_match=_on_match(False)),  # routes without a soft rule
        extension_config=extension_pb2.TypedExtensionConfig(
            name="composite", typed_config=packed(composite_pb2.Composite())
        ),
    )
    return hcm_pb2.HttpFilter(name=SOFT_FILTER, typed_config=packed(wrapped))


def _codes_regex(countries: tuple[str, ...]) -> str:
    return "|".join(countries)  # ISO codes: two capital letters, nothing to escape


def _country_predicate(regex: str) -> matcher_pb2.Matcher.MatcherList.Predicate:
    return predicate(
        http_inputs_pb2.HttpRequestHeaderMatchInput(header_name=COUNTRY_HEADER), value_match=xds_re2(regex)
    )


def soft_route_config(rule: ir.GeoRule) -> extension_matcher_pb2.ExtensionWithMatcherPerRoute:
    """Marks the clients ``rule`` refuses: a listed country, a placed one not listed, no country."""
    listed = _country_predicate(_codes_regex(rule.countries))
    placed = _country_predicate("[A-Z]{2}")
    matcher = matcher_pb2.Matcher(
        matcher_list=matcher_pb2.Matcher.MatcherList(
            matchers=[
                matcher_pb2.Matcher.MatcherList.FieldMatcher(predicate=listed, on_match=_on_match(not rule.allow)),
                matcher_pb2.Matcher.MatcherList.FieldMatcher(predicate=placed, on_match=_on_match(rule.allow)),
            ]
        ),
        on_no_match=_on_match(not rule.unknown_allowed),  # no country: the database does not place it
    )
    return extension_matcher_pb2.ExtensionWithMatcherPerRoute(xds_matcher=matcher)


def _country(code: str) -> rbac_pb2.Principal:
    return rbac_pb2.Principal(
        header=rc.HeaderMatcher(name=COUNTRY_HEADER, string_match=string_pb2.StringMatcher(exact=code))
    )


def _unknown() -> rbac_pb2.Principal:
    return rbac_pb2.Principal(
        not_id=rbac_pb2.Principal(header=rc.HeaderMatcher(name=COUNTRY_HEADER, present_match=True))
    )


def hard_route_config(rule: ir.GeoRule) -> rbac_filter_pb2.RBACPerRoute:
    """A hard rule as RBAC: DENY the clients :func:`geo.refuses` refuses."""
    listed = [_country(c) for c in rule.countries]
    if rule.allow:
        # refused: a placed country not listed, and an unknown one when the policy denies those
        refused = rbac_pb2.Principal(
            and_ids=rbac_pb2.Principal.Set(
                ids=[
                    rbac_pb2.Principal(not_id=rbac_pb2.Principal(or_ids=rbac_pb2.Principal.Set(ids=listed))),
                    *([] if not rule.unknown_allowed else [rbac_pb2.Principal(not_id=_unknown())]),
                ]
            )
        )
    else:
        refused = rbac_pb2.Principal(
            or_ids=rbac_pb2.Principal.Set(ids=[*listed, *([] if rule.unknown_allowed else [_unknown()])])
        )
    policy = rbac_pb2.Policy(permissions=[rbac_pb2.Permission(any=True)], principals=[refused])
    rules = rbac_pb2.RBAC(action=rbac_pb2.RBAC.DENY, policies={POLICY: policy})
    return rbac_filter_pb2.RBACPerRoute(rbac=rbac_filter_pb2.RBAC(rules=rules, rules_stat_prefix="geo"))


def route_rest(op: ir.Operation) -> rc.Route | None:
    """The per-route config of an operation's rule (None: no rule)."""
    if op.geo is None:
        return None
    route = rc.Route()
    if op.geo.mode == geo.HARD:
        route.typed_per_filter_config[HARD_FILTER].CopyFrom(packed(hard_route_config(op.geo)))
    else:
        route.typed_per_filter_config[SOFT_FILTER].CopyFrom(packed(soft_route_config(op.geo)))
    return route


__all__ = [
    "COUNTRY_HEADER",
    "HARD_FILTER",
    "SOFT_FILTER",
    "hard_filter",
    "hard_route_config",
    "lookup_filter",
    "route_rest",
    "soft_filter",
    "soft_route_config",
]
