"""Tokens never reach backends: the Authorization header, token query parameters and token
cookies are removed after authentication has read them.
"""

from __future__ import annotations

import json

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.header_mutation.v3 import header_mutation_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

from .. import ir
from ._authfacts import uses
from ._pb import packed

# -- tokens never reach backends -----------------------------------------------------------
#
# jwt_authn removes a verified token from its header only, and only where it runs: a public
# operation, an optional token left out, or a token in a query parameter or cookie would reach
# the backend. The Authorization header is removed at the router (after every filter has read
# it); query parameters and cookies by the filters below, placed after authentication.

AUTHORIZATION = "authorization"


def token_removal(listener: ir.Listener) -> str:
    """``all``: one removal for the whole route configuration; ``some``: per route."""
    return uses(listener).token_removal


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
