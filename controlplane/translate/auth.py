"""Client address allowlists, JWT authentication and authorization (RBAC), per route.

Three HTTP filters, each configured per route; a route without a per-route config is not
affected by them (404/405 replies, public operations):

- ``ip-allowlist`` (RBAC): before any token check, so a request from elsewhere gets 403
  without a token being looked at. Large lists use the matcher API's IP trie.
- ``envoy.filters.http.jwt_authn``: verifies the token (cached), sets identity headers
  from its claims, and leaves the payload in dynamic metadata for RBAC.
- ``token-algorithm`` (RBAC): for keys Envoy fetches itself (which the control plane cannot
  pin to an algorithm), refuses a verified token whose ``alg`` is not one of the provider's.
- ``authorization`` (RBAC): roles and scopes from that payload; dry-run rules only log.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from envoy.config.core.v3 import address_pb2, base_pb2, http_uri_pb2
from envoy.config.core.v3 import extension_pb2 as core_extension_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.common.matching.v3 import extension_matcher_pb2 as matching_pb2
from envoy.extensions.filters.http.composite.v3 import composite_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.http.jwt_authn.v3 import config_pb2 as jwt_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.matching.common_inputs.network.v3 import network_inputs_pb2
from envoy.extensions.matching.input_matchers.metadata.v3 import metadata_pb2 as metadata_input_pb2
from envoy.type.matcher.v3 import metadata_pb2, number_pb2, regex_pb2, string_pb2, value_pb2
from envoy.type.v3 import range_pb2
from google.protobuf import empty_pb2, wrappers_pb2
from google.protobuf.message import Message
from xds.core.v3 import cidr_pb2, extension_pb2
from xds.type.matcher.v3 import ip_pb2, matcher_pb2

from .. import ir
from ..ir import Upstream
from ._pb import duration, packed, per_listener

IP_FILTER = "ip-allowlist"
JWT_FILTER = "envoy.filters.http.jwt_authn"
AUTHZ_FILTER = "authorization"
ALG_FILTER = "token-algorithm"
HEADER = "jwt_header"
CLAIMS_FILTER = "claim-values"
# Lists longer than this use the matcher API's IP trie instead of a list of principals
# (RBAC tries principals one by one).
IP_TRIE_THRESHOLD = 64


@dataclass(frozen=True)
class _Uses:
    ip_allowlists: bool
    providers: tuple[str, ...]
    authorization: bool
    authorizing_providers: tuple[str, ...]  # whose payload RBAC reads
    scoping_providers: tuple[str, ...]  # whose scope claim RBAC reads (normalized to a list)
    token_removal: str  # "all", "some" or "none" of the operations remove the Authorization header


@per_listener
def _uses(listener: ir.Listener) -> _Uses:
    """What the listener's operations use, in one pass over them."""
    ip, providers, authorizing, scoping = False, set(), set(), set()
    removing = total = 0
    for pr in listener.paths:
        for op in pr.operations:
            ip = ip or bool(op.ip_allow)
            removing += op.remove_token
            total += 1
            if op.auth is not None:
                providers.add(op.auth.provider)
                if op.auth.authorize:
                    authorizing.add(op.auth.provider)
                if op.auth.scope_sets:
                    scoping.add(op.auth.provider)
    removal = "all" if removing == total else "some" if removing else "none"
    return _Uses(
        ip, tuple(sorted(providers)), bool(authorizing), tuple(sorted(authorizing)), tuple(sorted(scoping)), removal
    )


def envoy_fetches(p: ir.JwtProvider) -> bool:
    """Envoy fetches these keys itself: the control plane never sees them to pin algorithms."""
    return p.jwks_json is None and p.jwks_fetch == "envoy"


# -- client address allowlists ------------------------------------------------------------


def ip_allowlist_filter(gw: ir.Gateway, listener: ir.Listener) -> hcm_pb2.HttpFilter | None:
    if not _uses(listener).ip_allowlists:
        return None
    # No rules here: only routes with a per-route config are restricted.
    return hcm_pb2.HttpFilter(name=IP_FILTER, typed_config=packed(rbac_filter_pb2.RBAC()))


def _cidr(text: str) -> address_pb2.CidrRange:
    address, _, length = text.partition("/")
    return address_pb2.CidrRange(address_prefix=address, prefix_len=wrappers_pb2.UInt32Value(value=int(length)))


def _ip_principal(cidr: str, direct: bool) -> rbac_pb2.Principal:
    return rbac_pb2.Principal(direct_remote_ip=_cidr(cidr)) if direct else rbac_pb2.Principal(remote_ip=_cidr(cidr))


def _ip_matcher(lists: tuple[tuple[str, ...], ...], direct: bool) -> matcher_pb2.Matcher:
    """Allow when the client is in every list: one IP trie per list, nested."""
    allow = rbac_pb2.Action(name="allowlisted", action=rbac_pb2.RBAC.ALLOW)
    deny = rbac_pb2.Action(name="not-allowlisted", action=rbac_pb2.RBAC.DENY)
    on_no_match = matcher_pb2.Matcher.OnMatch(
        action=extension_pb2.TypedExtensionConfig(name="deny", typed_config=packed(deny))
    )
    inner: matcher_pb2.Matcher.OnMatch = matcher_pb2.Matcher.OnMatch(
        action=extension_pb2.TypedExtensionConfig(name="allow", typed_config=packed(allow))
    )
    source = network_inputs_pb2.DirectSourceIPInput() if direct else network_inputs_pb2.SourceIPInput()
    for cidrs in reversed(lists):
        trie = ip_pb2.IPMatcher(
            range_matchers=[
                ip_pb2.IPMatcher.IPRangeMatcher(
                    ranges=[
                        cidr_pb2.CidrRange(
                            address_prefix=c.partition("/")[0],
                            prefix_len=wrappers_pb2.UInt32Value(value=int(c.partition("/")[2])),
                        )
                        for c in cidrs
                    ],
                    on_match=inner,
                )
            ]
        )
        matcher = matcher_pb2.Matcher(
            matcher_tree=matcher_pb2.Matcher.MatcherTree(
                input=extension_pb2.TypedExtensionConfig(name="client-ip", typed_config=packed(source)),
                custom_match=extension_pb2.TypedExtensionConfig(name="ip", typed_config=packed(trie)),
            ),
            on_no_match=on_no_match,
        )
        inner = matcher_pb2.Matcher.OnMatch(matcher=matcher)
    return inner.matcher


def ip_allowlist_route_config(op: ir.Operation, listener: ir.Listener) -> rbac_filter_pb2.RBACPerRoute:
    direct = listener.xff_num_trusted_hops == 0
    if any(len(cidrs) > IP_TRIE_THRESHOLD for cidrs in op.ip_allow):
        return rbac_filter_pb2.RBACPerRoute(rbac=rbac_filter_pb2.RBAC(matcher=_ip_matcher(op.ip_allow, direct)))
    principal = rbac_pb2.Principal(
        and_ids=rbac_pb2.Principal.Set(
            ids=[
                rbac_pb2.Principal(or_ids=rbac_pb2.Principal.Set(ids=[_ip_principal(c, direct) for c in cidrs]))
                for cidrs in op.ip_allow
            ]
        )
    )
    policy = rbac_pb2.Policy(permissions=[rbac_pb2.Permission(any=True)], principals=[principal])
    rules = rbac_pb2.RBAC(action=rbac_pb2.RBAC.ALLOW, policies={"allowlisted": policy})
    return rbac_filter_pb2.RBACPerRoute(rbac=rbac_filter_pb2.RBAC(rules=rules))


# -- JWT ----------------------------------------------------------------------------------


def jwt_filter(gw: ir.Gateway, listener: ir.Listener) -> hcm_pb2.HttpFilter | None:
    used = _uses(listener).providers
    if not used:
        return None
    providers = {p.name: p for p in gw.providers}
    authorizing, scoping = _uses(listener).authorizing_providers, _uses(listener).scoping_providers
    config = jwt_pb2.JwtAuthentication()
    for name in used:
        p = providers[name]
        # copying the payload into each request's metadata costs: only when RBAC or the claim check reads it
        config.providers[name].CopyFrom(_provider(p, name in scoping, name in authorizing or bool(p.claim_headers)))
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
    if envoy_fetches(p):
        out.header_in_metadata = HEADER  # for the token-algorithm check
    if not envoy_fetches(p):
        # Keys from a file, inline, or fetched by the control plane. Without keys yet (offline
        # compile of control-plane-fetched keys) no token verifies: closed, not open.
        out.local_jwks.CopyFrom(base_pb2.DataSource(inline_string=p.jwks_json or json.dumps({"keys": []})))
    else:
        assert p.jwks_uri is not None
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
        if p.jwks_fetch != "envoy" or p.jwks_json is not None or p.jwks_uri is None:
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


# -- tokens never reach backends -----------------------------------------------------------
#
# jwt_authn removes a verified token from its header only, and only where it runs: a public
# operation, an optional token left out, or a token in a query parameter or cookie would reach
# the backend. The Authorization header is removed at the router (after every filter has read
# it); query parameters and cookies by the filters below, placed after authentication.

AUTHORIZATION = "authorization"


def token_removal(listener: ir.Listener) -> str:
    """``all``: one removal for the whole route configuration; ``some``: per route."""
    return _uses(listener).token_removal


def _stripped(gw: ir.Gateway, kind: str) -> tuple[str, ...]:
    names: set[str] = set()
    for p in gw.providers:
        if not p.forward_token:
            names.update(p.query_parameters if kind == "query" else p.cookies)
    return tuple(sorted(names))


def token_query_filter(gw: ir.Gateway, listener: ir.Listener) -> hcm_pb2.HttpFilter | None:
    names = _stripped(gw, "query")
    if not names:
        return None
    config = header_mutation_pb2.HeaderMutation(
        mutations=header_mutation_pb2.Mutations(
            query_parameter_mutations=[base_pb2.KeyValueMutation(remove=n) for n in names]
        )
    )
    return hcm_pb2.HttpFilter(name="strip-token-query", typed_config=packed(config))


# Cookie values cannot be edited by Envoy's header filters; this Lua keeps every other cookie.
_COOKIE_LUA = """
local drop = {%s}
function envoy_on_request(handle)
  local headers = handle:headers()
  local n = headers:getNumValues("cookie")
  if n == 0 then return end
  local kept = {}
  for i = 0, n - 1 do
    for part in string.gmatch(headers:getAtIndex("cookie", i), "[^;]+") do
      local crumb = string.match(part, "^%%s*(.-)%%s*$")
      local name = string.match(crumb, "^([^=]*)")
      if crumb ~= "" and not drop[name] then kept[#kept + 1] = crumb end
    end
  end
  headers:remove("cookie")
  if #kept > 0 then headers:add("cookie", table.concat(kept, "; ")) end
end
"""


def token_cookie_filter(gw: ir.Gateway, listener: ir.Listener) -> hcm_pb2.HttpFilter | None:
    names = _stripped(gw, "cookie")
    if not names:
        return None
    table = ", ".join(f"[{json.dumps(n)}] = true" for n in names)
    code = _COOKIE_LUA % table
    config = lua_pb2.Lua(default_source_code=base_pb2.DataSource(inline_string=code))
    return hcm_pb2.HttpFilter(name="strip-token-cookie", typed_config=packed(config))


# -- claims that cannot be header values as they are --------------------------------------
#
# jwt_authn copies a string, number or boolean claim into its header, but a list arrives as
# base64 of its JSON and a string with CR or LF makes the upstream request invalid (503). A
# composite filter looks at each claim-header claim in the verified payload and, only when one
# is something else than a clean scalar (a list, an object, a string with control
# characters), runs a Lua filter that rewrites every claim header of that token: a list
# becomes its items joined by ",", each item a clean string, number or boolean without ","; a
# value that cannot be a header value refuses the request with the provider's
# ``claimErrorStatus`` before anything reaches the backend. The common case costs a few
# metadata lookups, not a Lua call.

# Control characters other than HTAB never make a header value.
_CLEAN = "^[^\\x00-\\x08\\x0a-\\x1f\\x7f]*$"

_CLAIMS_LUA = """
local PROVIDERS = {%(providers)s}
local BAD = "[%%z\\1-\\8\\10-\\31\\127]"

local function scalar(v, item)
  local t = type(v)
  if t == "string" then
    if string.find(v, BAD) or (item and string.find(v, ",", 1, true)) then return nil end
    return v
  elseif t == "number" then
    if v == math.floor(v) and math.abs(v) < 1e15 then return string.format("%%d", v) end
    return tostring(v)
  elseif t == "boolean" then
    return tostring(v)
  end
  return nil
end

local function render(v)
  if type(v) ~= "table" then return scalar(v, false) end
  local n = 0
  for _ in pairs(v) do n = n + 1 end
  if n ~= #v then return nil end
  local out = {}
  for i = 1, n do
    local s = scalar(v[i], true)
    if s == nil then return nil end
    out[i] = s
  end
  return table.concat(out, ",")
end

function envoy_on_request(handle)
  local md = handle:streamInfo():dynamicMetadata():get("envoy.filters.http.jwt_authn")
  if md == nil then return end
  for key, p in pairs(PROVIDERS) do
    local payload = md[key]
    if payload ~= nil then
      local values = {}
      for _, c in ipairs(p.claims) do
        local v = payload[c[1]]
        if v ~= nil then
          local s = render(v)
          if s == nil then
            handle:respond({[":status"] = p.status}, "")
            return
          end
          values[#values + 1] = {c[2], s}
        end
      end
      local headers = handle:headers()
      for _, hv in ipairs(values) do
        if hv[2] == "" then headers:remove(hv[1]) else headers:replace(hv[1], hv[2]) end
      end
    end
  end
end
"""


def _lua_string(text: str) -> str:
    return json.dumps(text)  # a JSON string of ASCII is a valid Lua string literal


def claim_values_filter(gw: ir.Gateway, listener: ir.Listener) -> hcm_pb2.HttpFilter | None:
    by_name = {p.name: p for p in gw.providers}
    providers = [by_name[n] for n in _uses(listener).providers if by_name[n].claim_headers]
    if not providers:
        return None
    entries = []
    for p in providers:
        claims = ", ".join(f"{{{_lua_string(c)}, {_lua_string(h)}}}" for c, h in p.claim_headers)
        entries.append(
            f'[{_lua_string(payload_key(p))}] = {{status = "{p.claim_error_status}", claims = {{{claims}}}}}'
        )
    lua = lua_pb2.Lua(
        default_source_code=base_pb2.DataSource(inline_string=_CLAIMS_LUA % {"providers": ", ".join(entries)})
    )
    run_lua = composite_pb2.ExecuteFilterAction(
        typed_config=core_extension_pb2.TypedExtensionConfig(name="claim-headers", typed_config=packed(lua))
    )
    clean = value_pb2.ValueMatcher(
        or_match=value_pb2.OrMatcher(
            value_matchers=[
                value_pb2.ValueMatcher(
                    string_match=string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=_CLEAN))
                ),
                value_pb2.ValueMatcher(
                    double_match=number_pb2.DoubleMatcher(range=range_pb2.DoubleRange(start=-1e308, end=1e308))
                ),
                value_pb2.ValueMatcher(bool_match=True),
                value_pb2.ValueMatcher(bool_match=False),
            ]
        )
    )
    Matcher = matcher_pb2.Matcher
    Predicate = Matcher.MatcherList.Predicate

    def on_metadata(path: list[str], value: value_pb2.ValueMatcher, invert: bool) -> Any:
        source = network_inputs_pb2.DynamicMetadataInput(
            filter=JWT_FILTER, path=[network_inputs_pb2.DynamicMetadataInput.PathSegment(key=k) for k in path]
        )
        return Predicate(
            single_predicate=Predicate.SinglePredicate(
                input=extension_pb2.TypedExtensionConfig(name="claim", typed_config=packed(source)),
                custom_match=extension_pb2.TypedExtensionConfig(
                    name="value", typed_config=packed(metadata_input_pb2.Metadata(value=value, invert=invert))
                ),
            )
        )

    matchers = []
    for p in providers:
        for claim, _header in p.claim_headers:
            path = [payload_key(p), claim]
            unclean = Predicate(
                and_matcher=Predicate.PredicateList(
                    predicate=[
                        on_metadata(path, value_pb2.ValueMatcher(present_match=True), False),
                        on_metadata(path, clean, True),
                    ]
                )
            )
            matchers.append(
                Matcher.MatcherList.FieldMatcher(
                    predicate=unclean,
                    on_match=Matcher.OnMatch(
                        action=extension_pb2.TypedExtensionConfig(name="claim-headers", typed_config=packed(run_lua))
                    ),
                )
            )
    config = matching_pb2.ExtensionWithMatcher(
        extension_config=core_extension_pb2.TypedExtensionConfig(
            name="composite", typed_config=packed(composite_pb2.Composite())
        ),
        xds_matcher=Matcher(matcher_list=Matcher.MatcherList(matchers=matchers)),
    )
    return hcm_pb2.HttpFilter(name=CLAIMS_FILTER, typed_config=packed(config))


# -- token algorithms of keys Envoy fetches ------------------------------------------------


def _remote_providers(gw: ir.Gateway, listener: ir.Listener) -> tuple[str, ...]:
    remote = {p.name for p in gw.providers if envoy_fetches(p)}
    return tuple(n for n in _uses(listener).providers if n in remote)


def token_algorithm_filter(gw: ir.Gateway, listener: ir.Listener) -> hcm_pb2.HttpFilter | None:
    if not _remote_providers(gw, listener):
        return None
    return hcm_pb2.HttpFilter(name=ALG_FILTER, typed_config=packed(rbac_filter_pb2.RBAC()))


def token_algorithm_route_config(provider: ir.JwtProvider) -> rbac_filter_pb2.RBACPerRoute:
    """Deny (as policy ``token-algorithm``, which the local reply turns into 401) a verified token
    whose header names another algorithm. No token (an optional one) leaves no header: allowed."""
    alg = [HEADER, "alg"]
    allowed = rbac_pb2.Principal(
        or_ids=rbac_pb2.Principal.Set(ids=[_metadata(alg, _exact(a)) for a in provider.algorithms])
    )
    present = _metadata(alg, value_pb2.ValueMatcher(present_match=True))
    wrong = rbac_pb2.Principal(and_ids=rbac_pb2.Principal.Set(ids=[present, rbac_pb2.Principal(not_id=allowed)]))
    policy = rbac_pb2.Policy(permissions=[rbac_pb2.Permission(any=True)], principals=[wrong])
    rules = rbac_pb2.RBAC(action=rbac_pb2.RBAC.DENY, policies={ALG_FILTER: policy})
    return rbac_filter_pb2.RBACPerRoute(rbac=rbac_filter_pb2.RBAC(rules=rules))


def jwt_route_config(op: ir.Operation) -> jwt_pb2.PerRouteConfig:
    assert op.auth is not None
    return jwt_pb2.PerRouteConfig(requirement_name=op.auth.provider + ("?" if op.auth.optional else ""))


# -- authorization ------------------------------------------------------------------------


def authorization_filter(gw: ir.Gateway, listener: ir.Listener) -> hcm_pb2.HttpFilter | None:
    if not _uses(listener).authorization:
        return None
    return hcm_pb2.HttpFilter(name=AUTHZ_FILTER, typed_config=packed(rbac_filter_pb2.RBAC()))


def _exact(value: str) -> value_pb2.ValueMatcher:
    return value_pb2.ValueMatcher(string_match=string_pb2.StringMatcher(exact=value))


def _metadata(path: list[str], value: value_pb2.ValueMatcher) -> rbac_pb2.Principal:
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


def _claim(provider: ir.JwtProvider, claim: str, value: str, in_list: bool) -> rbac_pb2.Principal:
    exact = _exact(value)
    matcher = value_pb2.ValueMatcher(list_match=value_pb2.ListMatcher(one_of=exact)) if in_list else exact
    return _metadata([payload_key(provider), claim], matcher)


def authorization_route_config(op: ir.Operation, provider: ir.JwtProvider) -> rbac_filter_pb2.RBACPerRoute:
    assert op.auth is not None
    principals = []
    for role in op.auth.roles:  # a role claim may hold one string or a list
        principals.append(
            rbac_pb2.Principal(
                or_ids=rbac_pb2.Principal.Set(
                    ids=[
                        _claim(provider, provider.roles_claim, role, False),
                        _claim(provider, provider.roles_claim, role, True),
                    ]
                )
            )
        )
    for scopes in op.auth.scope_sets:  # the scope claim is normalized to a list
        principals.append(
            rbac_pb2.Principal(
                and_ids=rbac_pb2.Principal.Set(ids=[_claim(provider, provider.scopes_claim, s, True) for s in scopes])
            )
        )
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
