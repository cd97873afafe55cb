"""Lua filters that run only for the requests that need them.

A Lua filter costs Envoy ~40k instructions per request (a coroutine and the crossing into Lua),
a fifth of a proxied request. Where Lua is only needed for rare requests (a token in a query
parameter, a claim that is a list), a composite filter looks at the request with Envoy's
matchers (a few thousand instructions) and runs the Lua filter for the matching ones only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.config.core.v3 import extension_pb2 as core_extension_pb2
from envoy.extensions.common.matching.v3 import extension_matcher_pb2 as matching_pb2
from envoy.extensions.filters.http.composite.v3 import composite_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from google.protobuf import wrappers_pb2
from xds.core.v3 import extension_pb2
from xds.type.matcher.v3 import matcher_pb2

from ._pb import packed

Predicate = matcher_pb2.Matcher.MatcherList.Predicate


def lua_string(text: str) -> str:
    """A Lua string literal (a JSON string of ASCII is one)."""
    return json.dumps(text)


def predicate(input: Any, **match: Any) -> Any:
    """A predicate on one input (``value_match=`` a string matcher, or ``custom_match=``)."""
    return Predicate(
        single_predicate=Predicate.SinglePredicate(
            input=extension_pb2.TypedExtensionConfig(name="input", typed_config=packed(input)), **match
        )
    )


def lua_when(name: str, code: str, predicates: Sequence[Any]) -> hcm_pb2.HttpFilter:
    """An HTTP filter named ``name`` running ``code`` for requests any of ``predicates`` matches.
    The Lua keeps the route already chosen: the route authorized is the route taken."""
    lua = lua_pb2.Lua(
        default_source_code=base_pb2.DataSource(inline_string=code),
        clear_route_cache=wrappers_pb2.BoolValue(value=False),
    )
    run_lua = composite_pb2.ExecuteFilterAction(
        typed_config=core_extension_pb2.TypedExtensionConfig(name=f"{name}-lua", typed_config=packed(lua))
    )
    any_of = (
        predicates[0] if len(predicates) == 1 else Predicate(or_matcher=Predicate.PredicateList(predicate=predicates))
    )
    Matcher = matcher_pb2.Matcher
    matcher = Matcher(
        matcher_list=Matcher.MatcherList(
            matchers=[
                Matcher.MatcherList.FieldMatcher(
                    predicate=any_of,
                    on_match=Matcher.OnMatch(
                        action=extension_pb2.TypedExtensionConfig(name=name, typed_config=packed(run_lua))
                    ),
                )
            ]
        )
    )
    config = matching_pb2.ExtensionWithMatcher(
        extension_config=core_extension_pb2.TypedExtensionConfig(
            name="composite", typed_config=packed(composite_pb2.Composite())
        ),
        xds_matcher=matcher,
    )
    return hcm_pb2.HttpFilter(name=name, typed_config=packed(config))
