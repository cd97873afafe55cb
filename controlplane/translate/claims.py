"""Claim headers that jwt_authn cannot make right: lists and values that are no header values."""

from __future__ import annotations

from typing import Any

from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.matching.common_inputs.network.v3 import network_inputs_pb2
from envoy.extensions.matching.input_matchers.metadata.v3 import metadata_pb2 as metadata_input_pb2
from envoy.type.matcher.v3 import number_pb2, regex_pb2, string_pb2, value_pb2
from envoy.type.v3 import range_pb2
from xds.core.v3 import extension_pb2

from .. import ir
from ._authfacts import uses
from ._lua import Predicate, lua_string, lua_when, predicate
from ._pb import packed
from .jwt import JWT_FILTER, payload_key

CLAIMS_FILTER = "claim-values"


# -- claims that cannot be header values as they are --------------------------------------
#
# jwt_authn copies a string, number or boolean claim into its header, but a list arrives as
# base64 of its JSON and a string with CR or LF makes the upstream request invalid (503). A
# composite filter looks at each claim-header claim in the verified payload and, only when one
# is something else than a clean scalar (a list, an object, a string with control
# characters or with whitespace at either end), runs a Lua filter that rewrites every claim header of that token: a list
# becomes its items joined by ",", each item a clean string, number or boolean without ","; a
# value that cannot be a header value refuses the request with the provider's
# ``claimErrorStatus`` before anything reaches the backend. The common case costs a few
# metadata lookups, not a Lua call.

# A value that is a header value as it is: no control character but HTAB, and no space or HTAB
# at either end (HTTP parsers trim them: the backend would see another value).
_CLEAN = "^(?:[^\\s\\x00-\\x08\\x0a-\\x1f\\x7f](?:[^\\x00-\\x08\\x0a-\\x1f\\x7f]*[^\\s\\x00-\\x08\\x0a-\\x1f\\x7f])?)?$"

_CLAIMS_LUA = """
local PROVIDERS = {%(providers)s}
local BAD = "[%%z\\1-\\8\\10-\\31\\127]"

local function scalar(v, item)
  local t = type(v)
  if t == "string" then
    if string.find(v, BAD) or string.find(v, "^%%s") or string.find(v, "%%s$") then return nil end
    if item and string.find(v, ",", 1, true) then return nil end
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


def claim_values_filter(gw: ir.Gateway, listener: ir.Listener) -> hcm_pb2.HttpFilter | None:
    by_name = {p.name: p for p in gw.providers}
    providers = [by_name[n] for n in uses(listener).providers if by_name[n].claim_headers]
    if not providers:
        return None
    entries = []
    for p in providers:
        claims = ", ".join(f"{{{lua_string(c)}, {lua_string(h)}}}" for c, h in p.claim_headers)
        entries.append(f'[{lua_string(payload_key(p))}] = {{status = "{p.claim_error_status}", claims = {{{claims}}}}}')
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

    def on_metadata(path: list[str], value: value_pb2.ValueMatcher, invert: bool) -> Any:
        source = network_inputs_pb2.DynamicMetadataInput(
            filter=JWT_FILTER, path=[network_inputs_pb2.DynamicMetadataInput.PathSegment(key=k) for k in path]
        )
        matcher = metadata_input_pb2.Metadata(value=value, invert=invert)
        return predicate(
            source, custom_match=extension_pb2.TypedExtensionConfig(name="value", typed_config=packed(matcher))
        )

    unclean = [
        Predicate(
            and_matcher=Predicate.PredicateList(
                predicate=[
                    on_metadata([payload_key(p), claim], value_pb2.ValueMatcher(present_match=True), False),
                    on_metadata([payload_key(p), claim], clean, True),
                ]
            )
        )
        for p in providers
        for claim, _header in p.claim_headers
    ]
    return lua_when(CLAIMS_FILTER, _CLAIMS_LUA % {"providers": ", ".join(entries)}, unclean)
