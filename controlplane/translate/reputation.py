"""IP-reputation feeds on every listener, right after the client address allowlists.

Order of the address checks: (1) an address in a range some allowlist names (``ipAllowlists``,
``ipAllow``) or in ``reputation.exempt`` is never blocked nor marked by a feed — the office is
not locked out by a noisy list; the allowlists themselves still apply to their routes first;
(2) a blocking feed: 403; (3) a soft feed: the request goes on with ``X-Gateway-Risk:
reputation``. Each list is one IP trie (the matcher API's ``IPMatcher``) in the listener's
connection manager: one copy per listener, never one per route.
"""

from __future__ import annotations

from typing import Any

from envoy.config.core.v3 import config_source_pb2
from envoy.config.core.v3 import extension_pb2 as extension_cfg_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.extensions.common.matching.v3 import extension_matcher_pb2
from envoy.extensions.filters.http.composite.v3 import composite_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.matching.common_inputs.network.v3 import network_inputs_pb2
from google.protobuf import any_pb2, message
from xds.core.v3 import extension_pb2
from xds.type.matcher.v3 import matcher_pb2

from .. import ir
from ._pb import ads, packed
from .allowlist import ip_trie
from .headers import SKIP, risk_mark

BLOCK_FILTER = "ip-reputation"
SOFT_FILTER = "ip-reputation-soft"
RISK_VALUE = "reputation"
# Envoy's IP matcher builds one LC-trie per IPMatcher, and refuses more than 262,144 ranges in
# one ("LC-Trie can only support '262144' CIDR ranges with the specified fill factor"), which
# would have the whole listener refused: a longer list is split into tries tried one after the other.
TRIE_LIMIT = 250_000


def exempt_ranges(gw: ir.Gateway, listener: ir.Listener) -> tuple[str, ...]:
    """Every range an allowlist of the listener's operations names, and reputation.exempt."""
    assert gw.reputation is not None
    ranges = set(gw.reputation.exempt)
    for pr in listener.paths:
        for op in pr.operations:
            for cidrs in op.ip_allow:
                ranges.update(cidrs)
    return tuple(sorted(ranges))


def _chain(
    listener: ir.Listener,
    steps: list[tuple[tuple[str, ...], matcher_pb2.Matcher.OnMatch]],
    otherwise: matcher_pb2.Matcher.OnMatch,
) -> matcher_pb2.Matcher:
    """Try each (ranges, action) in order on the client address; ``otherwise`` when none holds it."""
    # The address the listener trusts: the TCP peer, or what its trusted proxy hops report.
    source: message.Message = (
        network_inputs_pb2.DirectSourceIPInput()
        if listener.xff_num_trusted_hops == 0
        else network_inputs_pb2.SourceIPInput()
    )
    result = otherwise
    chunks = [
        (cidrs[i : i + TRIE_LIMIT], on_match) for cidrs, on_match in steps for i in range(0, len(cidrs), TRIE_LIMIT)
    ]
    for cidrs, on_match in reversed(chunks):
        result = matcher_pb2.Matcher.OnMatch(
            matcher=matcher_pb2.Matcher(
                matcher_tree=matcher_pb2.Matcher.MatcherTree(
                    input=extension_pb2.TypedExtensionConfig(name="client-ip", typed_config=packed(source)),
                    custom_match=extension_pb2.TypedExtensionConfig(
                        name="ip", typed_config=packed(ip_trie(cidrs, on_match))
                    ),
                ),
                on_no_match=result,
            )
        )
    assert result.HasField("matcher")
    return result.matcher


def _rbac(name: str, action: rbac_pb2.RBAC.Action.ValueType) -> matcher_pb2.Matcher.OnMatch:
    typed = rbac_pb2.Action(name=name, action=action)
    return matcher_pb2.Matcher.OnMatch(action=extension_pb2.TypedExtensionConfig(name=name, typed_config=packed(typed)))


def _block_config(gw: ir.Gateway, listener: ir.Listener, exempt: tuple[str, ...]) -> rbac_filter_pb2.RBAC:
    assert gw.reputation is not None
    allow = rbac_pb2.RBAC.ALLOW
    matcher = _chain(
        listener,
        [(exempt, _rbac("allowlisted", allow)), (gw.reputation.block, _rbac("reputation", rbac_pb2.RBAC.DENY))],
        _rbac("not-listed", allow),
    )
    # its denials count apart from the allowlists': http.<listener>.rbac.reputation.denied
    return rbac_filter_pb2.RBAC(matcher=matcher, rules_stat_prefix="reputation")


def _soft_config(
    gw: ir.Gateway, listener: ir.Listener, exempt: tuple[str, ...]
) -> extension_matcher_pb2.ExtensionWithMatcher:
    """A client a soft feed lists (and no allowlist names) reaches the backend with
    ``X-Gateway-Risk: reputation``; a client-sent X-Gateway-Risk never does (the first filter
    strips it with the identity headers)."""
    assert gw.reputation is not None
    matcher = _chain(listener, [(exempt, SKIP), (gw.reputation.soft, risk_mark(RISK_VALUE))], SKIP)
    return extension_matcher_pb2.ExtensionWithMatcher(
        xds_matcher=matcher,
        extension_config=extension_cfg_pb2.TypedExtensionConfig(
            name="composite", typed_config=packed(composite_pb2.Composite())
        ),
    )


def _discovered(name: str, listener: ir.Listener, config_type: type[message.Message]) -> hcm_pb2.HttpFilter:
    """A filter whose configuration comes on its own (ECDS), named for its listener: a feed
    changed is one resource sent, and the listener, its connections and the requests in flight
    are left alone (a configuration in the listener would replace it and drain its connections).
    Without a default, the listener is not served before the configuration has arrived."""
    return hcm_pb2.HttpFilter(
        name=f"{name}.{listener.name}",
        config_discovery=config_source_pb2.ExtensionConfigSource(
            config_source=ads(), type_urls=["type.googleapis.com/" + config_type.DESCRIPTOR.full_name]
        ),
    )


def block_filter(gw: ir.Gateway, listener: ir.Listener) -> hcm_pb2.HttpFilter | None:
    if gw.reputation is None or not gw.reputation.block:
        return None
    return _discovered(BLOCK_FILTER, listener, rbac_filter_pb2.RBAC)


def soft_filter(gw: ir.Gateway, listener: ir.Listener) -> hcm_pb2.HttpFilter | None:
    if gw.reputation is None or not gw.reputation.soft:
        return None
    return _discovered(SOFT_FILTER, listener, extension_matcher_pb2.ExtensionWithMatcher)


def section_source(gw: ir.Gateway) -> ir.Source:
    """Where the feeds are written: what an Envoy's refusal of their configuration names."""
    assert gw.reputation is not None and gw.reputation.feeds
    return ir.Source(gw.reputation.feeds[0].source.file, "/reputation")


# Built tries, by what they are made of: a compile with the same feeds (most compiles: a spec
# pushed, a policy edited) reuses them; building a 1M-range trie's messages takes seconds.
# (kind, trusted hops or not, exempt ranges) → (the list they were built from, the configuration)
_BUILT: dict[tuple[str, bool, tuple[str, ...]], tuple[tuple[str, ...], any_pb2.Any]] = {}


def _built(
    kind: str, listener: ir.Listener, exempt: tuple[str, ...], listed: tuple[str, ...], make: Any
) -> any_pb2.Any:
    key = (kind, listener.xff_num_trusted_hops == 0, exempt)
    hit = _BUILT.get(key)
    if hit is not None and hit[0] is listed:  # (reputation.read_section keeps the same tuple for the same feeds)
        return hit[1]
    if len(_BUILT) >= 64:
        _BUILT.clear()
    config = packed(make())
    _BUILT[key] = (listed, config)
    return config


def extension_configs(gw: ir.Gateway, listener: ir.Listener) -> list[extension_cfg_pb2.TypedExtensionConfig]:
    """The configurations of the listener's reputation filters (ECDS resources), by filter name."""
    rep = gw.reputation
    if rep is None:
        return []
    exempt = exempt_ranges(gw, listener)
    out = []
    if rep.block:
        out.append(
            (BLOCK_FILTER, _built("block", listener, exempt, rep.block, lambda: _block_config(gw, listener, exempt)))
        )
    if rep.soft:
        out.append(
            (SOFT_FILTER, _built("soft", listener, exempt, rep.soft, lambda: _soft_config(gw, listener, exempt)))
        )
    return [extension_cfg_pb2.TypedExtensionConfig(name=f"{name}.{listener.name}", typed_config=c) for name, c in out]
