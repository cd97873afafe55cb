"""Tokens never reach backends, and a request carries one token.

jwt_authn removes a verified token from its header only, and only where it runs: a public
operation, an optional token left out, or a token in a query parameter or cookie would reach
the backend. So:

- the Authorization header is removed at the router, after every filter has read it (route
  configuration or per route, see ``token_removal``);
- ``strip-token``: a composite filter that, only for a request whose query or cookies carry a
  token parameter, runs a Lua filter removing those parameters and cookies byte for byte,
  leaving every other parameter and cookie exactly as sent (Envoy's own query parameter
  mutation decodes the query and writes it back unencoded: ``q=a%26admin%3Dtrue`` would reach
  the backend as ``q=a&admin=true``);
- ``one-token``: RBAC before authentication refusing (400) a request with tokens in more than
  one place. jwt_authn verifies every token it finds and copies the claims of each into the
  identity headers, so two valid tokens would hand the backend two identities.

Query parameter names are compared after percent-decoding, as jwt_authn reads them; a name
with a percent-escape counts as a token parameter wherever one is looked for.
"""

from __future__ import annotations

import re
from typing import Any

from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.type.matcher.v3 import http_inputs_pb2, regex_pb2, string_pb2

from .. import ir
from ._authfacts import uses
from ._lua import lua_string, lua_when, predicate
from ._pb import packed, xds_re2

AUTHORIZATION = "authorization"
ONE_TOKEN = "one-token"


def token_removal(listener: ir.Listener) -> str:
    """``all``: one removal for the whole route configuration; ``some``: per route."""
    return uses(listener).token_removal


def _names(gw: ir.Gateway, kind: str, stripped_only: bool) -> tuple[str, ...]:
    names: set[str] = set()
    for p in gw.providers:
        if not (stripped_only and p.forward_token):
            names.update(p.query_parameters if kind == "query" else p.cookies)
    return tuple(sorted(names))


def _alternatives(names: tuple[str, ...]) -> str:
    return "|".join(re.escape(n) for n in names)


def _query_regex(names: tuple[str, ...], times: int = 1) -> str:
    """``:path`` with ``times`` token parameters (a name of ``names``, or any with a %-escape)."""
    param = f"[?&](?:{_alternatives(names)}|[^=&#]*%[^=&#]*)="
    return ".*" + ".*".join([param] * times) + ".*"


def _cookie_regex(names: tuple[str, ...], times: int = 1) -> str:
    """A Cookie header with ``times`` token cookies. (RBAC reads the first of several Cookie
    headers only: two token cookies in two headers are not seen; jwt_authn, too, reads the
    first token cookie only, and the strip filter removes both.)"""
    crumb = f"(?:^|[;,])\\s*(?:{_alternatives(names)})\\s*="  # RFC 6265 parsers trim the name
    return "(?:.*" + ".*".join([crumb] * times) + ").*"


# -- one token per request ------------------------------------------------------------------


def one_token_filter(gw: ir.Gateway, listener: ir.Listener) -> hcm_pb2.HttpFilter | None:
    query, cookies = _names(gw, "query", False), _names(gw, "cookie", False)
    if not uses(listener).providers or not (query or cookies):
        return None

    def header(name: str, **match: Any) -> rbac_pb2.Principal:
        return rbac_pb2.Principal(header=rc.HeaderMatcher(name=name, string_match=string_pb2.StringMatcher(**match)))

    def regex(name: str, text: str) -> rbac_pb2.Principal:
        return header(name, safe_regex=regex_pb2.RegexMatcher(regex=text))

    def both(a: rbac_pb2.Principal, b: rbac_pb2.Principal) -> rbac_pb2.Principal:
        return rbac_pb2.Principal(and_ids=rbac_pb2.Principal.Set(ids=[a, b]))

    bearer = regex(AUTHORIZATION, ".*Bearer .*")  # jwt_authn finds "Bearer " anywhere in the value
    places = [bearer]
    if query:
        places.append(regex(":path", _query_regex(query)))
    if cookies:
        places.append(regex("cookie", _cookie_regex(cookies)))
    principals = [both(a, b) for i, a in enumerate(places) for b in places[i + 1 :]]
    if query:
        principals.append(regex(":path", _query_regex(query, 2)))
    if cookies:
        principals.append(regex("cookie", _cookie_regex(cookies, 2)))
    policy = rbac_pb2.Policy(permissions=[rbac_pb2.Permission(any=True)], principals=principals)
    rules = rbac_pb2.RBAC(action=rbac_pb2.RBAC.DENY, policies={ONE_TOKEN: policy})
    return hcm_pb2.HttpFilter(name=ONE_TOKEN, typed_config=packed(rbac_filter_pb2.RBAC(rules=rules)))


# -- token query parameters and cookies -----------------------------------------------------

_STRIP_LUA = """
local QUERY = {%(query)s}
local COOKIES = {%(cookies)s}

local function unescape(s)
  return (string.gsub(s, "%%%%(%%x%%x)", function(h) return string.char(tonumber(h, 16)) end))
end

function envoy_on_request(handle)
  local headers = handle:headers()
  local path = headers:get(":path")
  local q = path and string.find(path, "?", 1, true)
  if q and next(QUERY) then
    local kept, removed = {}, false
    for pair in string.gmatch(string.sub(path, q + 1), "[^&]+") do
      if QUERY[unescape(string.match(pair, "^[^=]*"))] then removed = true else kept[#kept + 1] = pair end
    end
    if removed then
      local base = string.sub(path, 1, q - 1)
      headers:replace(":path", #kept > 0 and (base .. "?" .. table.concat(kept, "&")) or base)
    end
  end
  local n = headers:getNumValues("cookie")
  if n > 0 and next(COOKIES) then
    local kept, removed = {}, false
    for i = 0, n - 1 do
      for part in string.gmatch(headers:getAtIndex("cookie", i), "[^;]+") do
        local crumb = string.match(part, "^%%s*(.-)%%s*$")
        if COOKIES[string.match(crumb, "^([^=]-)%%s*=")] then removed = true
        elseif crumb ~= "" then kept[#kept + 1] = crumb end
      end
    end
    if removed then
      headers:remove("cookie")
      if #kept > 0 then headers:add("cookie", table.concat(kept, "; ")) end
    end
  end
end
"""


def _lua_set(names: tuple[str, ...]) -> str:
    return ", ".join(f"[{lua_string(n)}] = true" for n in names)


def token_strip_filter(gw: ir.Gateway, listener: ir.Listener) -> hcm_pb2.HttpFilter | None:
    query, cookies = _names(gw, "query", True), _names(gw, "cookie", True)
    if not (query or cookies):
        return None

    def carries(header: str, regex: str) -> Any:
        return predicate(
            http_inputs_pb2.HttpRequestHeaderMatchInput(header_name=header),
            value_match=xds_re2(regex),
        )

    predicates = []
    if query:
        predicates.append(carries(":path", _query_regex(query)))
    if cookies:
        predicates.append(carries("cookie", _cookie_regex(cookies)))
    code = _STRIP_LUA % {"query": _lua_set(query), "cookies": _lua_set(cookies)}
    return lua_when("strip-token", code, predicates)
