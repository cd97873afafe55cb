"""Geo-blocking in Envoy (controlplane/geo.py says what Envoy 1.40 does and why this shape).

Three pieces, in this order in a listener's HTTP filters:

1. a header_mutation that removes client-sent copies of the country header (an address the
   database does not place leaves the header as it came, which would be the client's choice);
2. Envoy's geoip filter with the MaxMind provider, writing the country (ISO code) there; it
   looks up the address the connection manager already settled on (the trusted
   ``X-Forwarded-For`` hop when the listener trusts proxies, else the peer), so no
   ``xff_config`` of its own;
3. an RBAC filter without rules: each route with a ``geo`` rule carries a per-route config.
   RBAC reads the headers as they are when it runs; route matching would not (the route is
   chosen before the filters and the geoip filter does not clear the route cache).
"""

from __future__ import annotations

from envoy.config.common.mutation_rules.v3 import mutation_rules_pb2 as mr
from envoy.config.core.v3 import extension_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.geoip.v3 import geoip_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2 as hm
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.geoip_providers.common.v3 import common_pb2
from envoy.extensions.geoip_providers.maxmind.v3 import maxmind_pb2
from envoy.type.matcher.v3 import string_pb2

from .. import geo
from ._pb import packed

COUNTRY_HEADER = "x-gateway-geo-country"
STRIP_FILTER = "geo-strip"
LOOKUP_FILTER = "envoy.filters.http.geoip"
DECISION_FILTER = "geo-decision"
POLICY = "geo"  # the RBAC policy name: a refusal's details read rbac_access_denied_matched_policy[geo]


def strip_filter() -> hcm_pb2.HttpFilter:
    removal = hm.Mutations(request_mutations=[mr.HeaderMutation(remove=COUNTRY_HEADER)])
    return hcm_pb2.HttpFilter(name=STRIP_FILTER, typed_config=packed(hm.HeaderMutation(mutations=removal)))


def lookup_filter(db: geo.Database) -> hcm_pb2.HttpFilter:
    provider = maxmind_pb2.MaxMindConfig(
        country_db_path=str(db.path),
        common_provider_config=common_pb2.CommonGeoipProviderConfig(
            geo_field_keys=common_pb2.CommonGeoipProviderConfig.GeolocationFieldKeys(country=COUNTRY_HEADER)
        ),
    )
    config = geoip_pb2.Geoip(
        provider=extension_pb2.TypedExtensionConfig(name="envoy.geoip_providers.maxmind", typed_config=packed(provider))
    )
    return hcm_pb2.HttpFilter(name=LOOKUP_FILTER, typed_config=packed(config))


def decision_filter() -> hcm_pb2.HttpFilter:
    # No rules here: only routes with a per-route config are restricted.
    return hcm_pb2.HttpFilter(name=DECISION_FILTER, typed_config=packed(rbac_filter_pb2.RBAC()))


def filters(db: geo.Database) -> list[hcm_pb2.HttpFilter]:
    """The three filters, in order (before authentication: a refused country gets 403 first)."""
    return [strip_filter(), lookup_filter(db), decision_filter()]


def _country(code: str) -> rbac_pb2.Principal:
    return rbac_pb2.Principal(
        header=rc.HeaderMatcher(name=COUNTRY_HEADER, string_match=string_pb2.StringMatcher(exact=code))
    )


def _unknown() -> rbac_pb2.Principal:
    return rbac_pb2.Principal(
        not_id=rbac_pb2.Principal(header=rc.HeaderMatcher(name=COUNTRY_HEADER, present_match=True))
    )


def route_config(rule: geo.Rule, db: geo.Database) -> rbac_filter_pb2.RBACPerRoute:
    """A hard rule as RBAC: DENY the clients :func:`geo.decision` refuses."""
    listed = [_country(c) for c in rule.countries]
    if rule.allow:
        # refused: a placed country not listed, and an unknown one when the policy denies those
        refused = rbac_pb2.Principal(
            and_ids=rbac_pb2.Principal.Set(
                ids=[
                    rbac_pb2.Principal(not_id=rbac_pb2.Principal(or_ids=rbac_pb2.Principal.Set(ids=listed))),
                    *([] if not db.unknown_allowed else [rbac_pb2.Principal(not_id=_unknown())]),
                ]
            )
        )
    else:
        refused = rbac_pb2.Principal(
            or_ids=rbac_pb2.Principal.Set(ids=[*listed, *([] if db.unknown_allowed else [_unknown()])])
        )
    policy = rbac_pb2.Policy(permissions=[rbac_pb2.Permission(any=True)], principals=[refused])
    rules = rbac_pb2.RBAC(action=rbac_pb2.RBAC.DENY, policies={POLICY: policy})
    return rbac_filter_pb2.RBACPerRoute(rbac=rbac_filter_pb2.RBAC(rules=rules))


__all__ = ["COUNTRY_HEADER", "DECISION_FILTER", "filters", "route_config"]
