"""Client address allowlists: an RBAC filter before any token check, so a request from
elsewhere gets 403 without a token being looked at. Large lists use the matcher API's IP trie.
"""

from __future__ import annotations

from envoy.config.core.v3 import address_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.matching.common_inputs.network.v3 import network_inputs_pb2
from google.protobuf import wrappers_pb2
from xds.core.v3 import extension_pb2
from xds.type.matcher.v3 import ip_pb2, matcher_pb2

from .. import ir
from ..wire import length_delimited, varint
from ._authfacts import uses
from ._pb import packed

IP_FILTER = "ip-allowlist"
# Lists longer than this use the matcher API's IP trie instead of a list of principals
# (RBAC tries principals one by one).
IP_TRIE_THRESHOLD = 64


def ip_trie(cidrs: tuple[str, ...] | list[str], on_match: matcher_pb2.Matcher.OnMatch) -> ip_pb2.IPMatcher:
    """One IP trie (Envoy's IP matcher) of ``cidrs`` ("a.b.c.d/n"), ``on_match`` when one holds.

    The ranges are written in the wire format and parsed once: a million ``CidrRange`` messages
    made one by one take seconds in Python, their bytes a fraction of that (the same message:
    tests/test_reputation.py checks them against ones built field by field)."""
    ranges = b"".join([_range_bytes(c) for c in cidrs])
    matcher = ranges + length_delimited(2, on_match.SerializeToString())  # an IPRangeMatcher
    return ip_pb2.IPMatcher.FromString(length_delimited(1, matcher))


# CidrRange field 2, prefix_len (a UInt32Value), by length: 0..128
_PREFIX_LEN = [length_delimited(2, b"\x08" + varint(n) if n else b"") for n in range(129)]


def _range_bytes(cidr: str) -> bytes:
    """A repeated ``ranges`` entry (IPRangeMatcher field 1): CidrRange{address_prefix, prefix_len}."""
    address, _, length = cidr.partition("/")
    body = length_delimited(1, address.encode()) + _PREFIX_LEN[int(length)]
    return length_delimited(1, body)


def ip_allowlist_filter(gw: ir.Gateway, listener: ir.Listener) -> hcm_pb2.HttpFilter | None:
    if not uses(listener).ip_allowlists:
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
        trie = ip_trie(cidrs, inner)
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
