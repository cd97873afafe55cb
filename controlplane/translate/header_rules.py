"""A policy's header changes: the listener's on its virtual host, an operation's on its route.

The route configuration of a listener with changes of its own sets
``most_specific_header_mutations_wins``: Envoy then applies the route configuration's headers
(the gateway's: X-Forwarded-For, security headers), then the virtual host's (the listener's),
then the route's (the API's or operation's), each level removing before it adds. An
operation's ``set`` or ``remove`` thus has the last word over its listener's, its ``add``
adds only what neither the client nor the listener did. The names the gateway itself sets at
the route configuration level cannot be targets (controlplane/header_rules.py), so the order
changes nothing of its own headers.
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.config.route.v3 import route_pb2

from .. import ir

_ADD_IF_ABSENT = base_pb2.HeaderValueOption.ADD_IF_ABSENT
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_APPEND = base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD


def _options(changes: ir.HeaderChanges) -> list[base_pb2.HeaderValueOption]:
    return [
        base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=name, value=value), append_action=action)
        for action, pairs in (
            (_ADD_IF_ABSENT, changes.add_if_absent),
            (_OVERWRITE, changes.overwrite),
            (_APPEND, changes.append),
        )
        for name, value in pairs
    ]


def _apply(target: rc.Route | rc.VirtualHost, rules: ir.HeaderRules) -> None:
    if rules.request is not None:
        target.request_headers_to_add.extend(_options(rules.request))
        target.request_headers_to_remove.extend(rules.request.remove)
    if rules.response is not None:
        target.response_headers_to_add.extend(_options(rules.response))
        target.response_headers_to_remove.extend(rules.response.remove)


def route_rest(op: ir.Operation) -> rc.Route | None:
    """What an operation's route gets for its own header changes (None: none)."""
    if op.header_rules is None:
        return None
    route = rc.Route()
    _apply(route, op.header_rules)
    return route


def virtual_host(config: route_pb2.RouteConfiguration, host: rc.VirtualHost, listener: ir.Listener) -> None:
    """The listener's changes, on the virtual host serving its hostnames (not on the one that
    answers unknown hosts with 404)."""
    if listener.header_rules is None:
        return
    _apply(host, listener.header_rules)
    config.most_specific_header_mutations_wins = True


__all__ = ["route_rest", "virtual_host"]
