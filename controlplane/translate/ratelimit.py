"""Rate limits → Envoy: descriptors on each route, the filters that count them, the rate-limit
service's cluster, and the service's own configuration (an xDS resource it subscribes to).

Every descriptor starts with ``("limit", <id>), ("window", <unit>)``; then its key parts:

- ``consumer``: ``("consumer:<provider>:<claim>", value)`` from the payload jwt_authn verified
  (dynamic metadata, never a header). A request without a token (a public operation, an
  optional token left out) counts by ``("anonymous", "1"), ("remote_address", <address>)``
  instead, never in one shared anonymous bucket;
- ``ip``: ``("remote_address", <address>)``, the address the listener trusts
  (``xffNumTrustedHops``), never a client-sent header;
- ``header:<name>``: ``("header:<name>", value)``; without the header, by client address;
- ``operation``: ``("operation", <route name>)``.

A limit with several windows sends one descriptor per window: each holds on its own.

Stages (each counting filter reads the route's descriptors of its stage):

- 0: the rate-limit service, failing open (the default);
- 1: the rate-limit service, failing closed (503 when it cannot answer);
- 2: limits each Envoy counts alone (``enforcement: local``);
- 3: the backstop of stage 0 in each Envoy, at twice the limit: it refuses nothing the service
  would allow (a client can pass the limit twice within one window span only across two
  windows), and bounds each Envoy while the service or its store is down.
Shadow limits are counted by the service (stage 0) and reported, never refused; local shadow
limits go to a filter that counts without enforcing (stage 4, its own statistics).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from typing import Any

from envoy.config.core.v3 import address_pb2 as core_address_pb2
from envoy.config.core.v3 import base_pb2, config_source_pb2, grpc_service_pb2
from envoy.config.core.v3 import extension_pb2 as core_extension_pb2
from envoy.config.ratelimit.v3 import rls_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2 as rc
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2 as common_pb2
from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2 as local_pb2
from envoy.extensions.filters.http.ratelimit.v3 import rate_limit_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.rate_limit_descriptors.expr.v3 import expr_pb2
from envoy.type.metadata.v3 import metadata_pb2 as metadata_key_pb2
from envoy.type.v3 import http_status_pb2, percent_pb2, token_bucket_pb2
from google.protobuf import struct_pb2, wrappers_pb2
from xds.type.v3 import typed_struct_pb2

from .. import ir
from ..ratelimits import used
from ..resources import Resources
from ._pb import duration, packed, per_listener, uint32
from .auth import role_principal, scope_principal
from .jwt import JWT_FILTER, payload_key

STAGE_OPEN, STAGE_CLOSED, STAGE_LOCAL, STAGE_BACKSTOP, STAGE_LOCAL_SHADOW = 0, 1, 2, 3, 4
SERVICE_FILTER = "envoy.filters.http.ratelimit"
LOCAL_FILTER = "envoy.filters.http.local_ratelimit"
CONFIG_TYPE = "controlplane.dev/ratelimit.v1.Domain"  # the TypedStruct the service reads
RESOURCE_TYPE = Resources.RATELIMIT
BACKSTOP_FACTOR = 2
# Per-value local buckets (a consumer, an address) are kept for this many values per filter,
# least recently used first out: a client churning values can get fresh buckets. Security
# limits belong to the service, which counts every value.
MAX_DYNAMIC_DESCRIPTORS = 20_000

Entry = tuple[str, str | None]  # (descriptor key, fixed value or None: the request's value)


# -- what a limit's descriptors carry ---------------------------------------------------------


def _key_variants(
    key: ir.LimitKey, detail: str, provider: str | None, op: ir.Operation
) -> list[list[tuple[rc.RateLimit.Action, Entry]]]:
    """The ways one key part can be filled: each a list of (action, entry) — a request makes
    exactly one of them."""
    address: tuple[rc.RateLimit.Action, Entry] = (
        rc.RateLimit.Action(remote_address=rc.RateLimit.Action.RemoteAddress()),
        ("remote_address", None),
    )
    if key is ir.LimitKey.IP:
        return [[address]]
    if key is ir.LimitKey.OPERATION:
        return [[(_generic("operation", op.name), ("operation", op.name))]]
    if key is ir.LimitKey.HEADER:
        with_header = rc.RateLimit.Action(
            request_headers=rc.RateLimit.Action.RequestHeaders(header_name=detail, descriptor_key=f"header:{detail}")
        )
        without = _absent("anonymous", [rc.HeaderMatcher(name=detail, present_match=True)])
        return [[(with_header, (f"header:{detail}", None))], [without, address]]
    # consumer
    if provider is None or op.auth is None:
        return [[_absent_marker(), address]]
    entry_key = f"consumer:{provider}:{detail}"
    consumer = rc.RateLimit.Action(
        metadata=rc.RateLimit.Action.MetaData(
            descriptor_key=entry_key,
            metadata_key=metadata_key_pb2.MetadataKey(
                key=JWT_FILTER,
                path=[
                    metadata_key_pb2.MetadataKey.PathSegment(key=payload_key(provider)),
                    metadata_key_pb2.MetadataKey.PathSegment(key=detail),
                ],
            ),
            source=rc.RateLimit.Action.MetaData.DYNAMIC,
        )
    )
    variants: list[list[tuple[rc.RateLimit.Action, Entry]]] = [[(consumer, (entry_key, None))]]
    if op.auth.optional:
        # no verified payload (no token sent: one that fails verification never gets here).
        # jwt_authn has removed a verified token's header by now, so its absence proves
        # nothing; the expression errs (and the descriptor is not made) for a verified caller.
        ns, k = json.dumps(JWT_FILTER), json.dumps(payload_key(provider))  # (JSON strings of ASCII are CEL's)
        verified = f"{ns} in metadata.filter_metadata && {k} in metadata.filter_metadata[{ns}]"
        anonymous = rc.RateLimit.Action(
            extension=core_extension_pb2.TypedExtensionConfig(
                name="envoy.rate_limit_descriptors.expr",
                typed_config=packed(
                    expr_pb2.Descriptor(descriptor_key="anonymous", text=f"{verified} ? [''][1] : '1'")
                ),
            )
        )
        variants.append([(anonymous, ("anonymous", "1")), address])
    return variants


def _generic(key: str, value: str) -> rc.RateLimit.Action:
    return rc.RateLimit.Action(generic_key=rc.RateLimit.Action.GenericKey(descriptor_key=key, descriptor_value=value))


def _absent_marker() -> tuple[rc.RateLimit.Action, Entry]:
    return _generic("anonymous", "1"), ("anonymous", "1")


def _absent(key: str, headers: list[rc.HeaderMatcher]) -> tuple[rc.RateLimit.Action, Entry]:
    """An entry ``(key, "1")`` made only when the headers do not all match."""
    action = rc.RateLimit.Action(
        header_value_match=rc.RateLimit.Action.HeaderValueMatch(
            descriptor_key=key, descriptor_value="1", expect_match=wrappers_pb2.BoolValue(value=False), headers=headers
        )
    )
    return action, (key, "1")


def _descriptors(
    rl: ir.RateLimit, op: ir.Operation, listener: ir.Listener
) -> Iterator[tuple[str, list[rc.RateLimit.Action], list[Entry]]]:
    """(window, actions, entries) of every descriptor ``rl`` makes for ``op``."""
    parts = [_key_variants(key, detail, rl.provider, op) for key, detail in rl.by]
    exemption = rl.exemption
    if exemption is not None:
        # made only for a caller its exemption check did not pass (see ``exemption_filters``)
        parts.append([[(_counted(_exemptions(listener)[exemption]), (COUNTED, COUNTED))]])
    for unit, _requests in rl.windows:
        head = [(_generic("limit", rl.id), ("limit", rl.id)), (_generic("window", unit), ("window", unit))]
        for combo in itertools.product(*parts):
            pairs = head + [pair for variant in combo for pair in variant]
            yield unit, [a for a, _e in pairs], [e for _a, e in pairs]


def _stages(rl: ir.RateLimit) -> tuple[int, ...]:
    if rl.local:
        return (STAGE_LOCAL_SHADOW,) if rl.shadow else (STAGE_LOCAL,)
    if rl.fail_closed and not rl.shadow:
        return (STAGE_CLOSED,)
    return (STAGE_OPEN,) if rl.shadow else (STAGE_OPEN, STAGE_BACKSTOP)


def action_key(op: ir.Operation, listener: ir.Listener) -> tuple[object, ...] | None:
    """What ``route_rate_limits`` reads of ``op``, for sharing route actions (None: no limits)."""
    if not op.rate_limits:
        return None
    checks = _exemptions(listener)
    exemptions = tuple(checks.get(rl.exemption) for rl in op.rate_limits if rl.exemption is not None)
    return (op.name, op.rate_limits, op.auth.optional if op.auth else None, exemptions)


def route_rate_limits(op: ir.Operation, listener: ir.Listener) -> list[rc.RateLimit]:
    """The descriptors of ``op``'s limits, for its route action."""
    out = []
    for rl in op.rate_limits:
        stages = _stages(rl)
        for _unit, actions, _entries in _descriptors(rl, op, listener):
            for stage in stages:
                out.append(rc.RateLimit(stage=uint32(stage), actions=actions))
    return out


# -- exemptions -------------------------------------------------------------------------------
# Each distinct exemption of a listener's limits is one RBAC filter in shadow mode (it never
# refuses): its one DENY policy, ``counted``, matches callers who are NOT exempt, so the policy
# id lands in the request's metadata for them alone; a limit's descriptors require that id
# (a ``metadata`` action), so an exempt caller makes none of them and is not counted.

EXEMPT_FILTER = "ratelimit-exempt"
RBAC_FILTER = "envoy.filters.http.rbac"  # (the namespace of every RBAC filter's metadata, whatever its name)
COUNTED = "counted"


@per_listener
def _exemptions(listener: ir.Listener) -> dict[ir.Exemption, int]:
    """Each distinct exemption of the listener's limits, numbered in order of first use."""
    found: dict[ir.Exemption, int] = {}
    for pr in listener.paths:
        for op in pr.operations:
            for rl in op.rate_limits:
                key = rl.exemption
                if key is not None and key not in found:
                    found[key] = len(found)
    return found


def _prefix(index: int) -> str:
    return f"ratelimit_exempt_{index}_"


def _counted(index: int) -> rc.RateLimit.Action:
    return rc.RateLimit.Action(
        metadata=rc.RateLimit.Action.MetaData(
            descriptor_key=COUNTED,
            metadata_key=metadata_key_pb2.MetadataKey(
                key=RBAC_FILTER,
                path=[metadata_key_pb2.MetadataKey.PathSegment(key=_prefix(index) + "shadow_effective_policy_id")],
            ),
            source=rc.RateLimit.Action.MetaData.DYNAMIC,
        )
    )


def exemption_filters(gw: ir.Gateway, listener: ir.Listener) -> list[hcm_pb2.HttpFilter]:
    providers = {p.name: p for p in gw.providers}
    out = []
    for (provider_name, roles, scopes, clients), index in _exemptions(listener).items():
        exempt: list[rbac_pb2.Principal] = [
            rbac_pb2.Principal(remote_ip=core_address_pb2.CidrRange(address_prefix=a, prefix_len=uint32(int(n))))
            for a, n in (c.split("/") for c in clients)
        ]
        provider = providers.get(provider_name) if provider_name else None
        if provider is not None:
            exempt.extend(role_principal(provider, role) for role in roles)
            exempt.extend(scope_principal(provider, (scope,)) for scope in scopes)
        counted = rbac_pb2.Policy(
            permissions=[rbac_pb2.Permission(any=True)],
            principals=[rbac_pb2.Principal(not_id=rbac_pb2.Principal(or_ids=rbac_pb2.Principal.Set(ids=exempt)))]
            if exempt
            else [rbac_pb2.Principal(any=True)],
        )
        config = rbac_filter_pb2.RBAC(
            shadow_rules=rbac_pb2.RBAC(action=rbac_pb2.RBAC.DENY, policies={COUNTED: counted}),
            shadow_rules_stat_prefix=_prefix(index),
        )
        out.append(hcm_pb2.HttpFilter(name=f"{EXEMPT_FILTER}-{index}", typed_config=packed(config)))
    return out


# -- the filters ------------------------------------------------------------------------------


@per_listener
def _limits(listener: ir.Listener) -> dict[str, ir.RateLimit]:
    return used(listener)


def service_filter(stage: int) -> Callable[[ir.Gateway, ir.Listener], hcm_pb2.HttpFilter | None]:
    def build(gw: ir.Gateway, listener: ir.Listener) -> hcm_pb2.HttpFilter | None:
        if not any(stage in _stages(rl) for rl in _limits(listener).values()):
            return None
        svc = gw.ratelimit_service
        assert svc is not None  # build.py sets it when a limit is counted by the service
        config = rate_limit_pb2.RateLimit(
            domain=svc.domain,
            stage=stage,
            timeout=duration(svc.timeout_ms),
            failure_mode_deny=stage == STAGE_CLOSED,
            enable_x_ratelimit_headers=rate_limit_pb2.RateLimit.DRAFT_VERSION_03,
            disable_x_envoy_ratelimited_header=True,
            stat_prefix="fail_closed" if stage == STAGE_CLOSED else "fail_open",
            rate_limit_service=rls_pb2.RateLimitServiceConfig(
                grpc_service=grpc_service_pb2.GrpcService(
                    envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=svc.cluster)
                ),
                transport_api_version=config_source_pb2.V3,
            ),
        )
        if stage == STAGE_CLOSED:
            config.status_on_error.CopyFrom(http_status_pb2.HttpStatus(code=http_status_pb2.ServiceUnavailable))
        return hcm_pb2.HttpFilter(name=f"{SERVICE_FILTER}.{config.stat_prefix}", typed_config=packed(config))

    return build


def _bucket(requests: int, unit: str) -> token_bucket_pb2.TokenBucket:
    return token_bucket_pb2.TokenBucket(
        max_tokens=requests, tokens_per_fill=uint32(requests), fill_interval=duration(ir.WINDOW_SECONDS[unit] * 1000)
    )


@per_listener
def _local_descriptors(listener: ir.Listener) -> dict[int, list[common_pb2.LocalRateLimitDescriptor]]:
    """By stage, a bucket for every shape of descriptor the listener's operations make for the
    limits Envoy counts itself (one pass for the three local stages)."""
    out: dict[int, list[common_pb2.LocalRateLimitDescriptor]] = {}
    seen: set[tuple[int, tuple[Entry, ...]]] = set()
    for pr in listener.paths:
        for op in pr.operations:
            for rl in op.rate_limits:
                stages = [stage for stage in _stages(rl) if stage in _LOCAL_PREFIXES]
                if not stages:
                    continue
                windows = dict(rl.windows)
                for unit, _actions, entries in _descriptors(rl, op, listener):
                    for stage in stages:
                        if (stage, shape := tuple(entries)) in seen:
                            continue
                        seen.add((stage, shape))
                        factor = BACKSTOP_FACTOR if stage == STAGE_BACKSTOP else 1
                        out.setdefault(stage, []).append(
                            common_pb2.LocalRateLimitDescriptor(
                                entries=[common_pb2.RateLimitDescriptor.Entry(key=k, value=v or "") for k, v in shape],
                                token_bucket=_bucket(windows[unit] * factor, unit),
                            )
                        )
    return out


_LOCAL_PREFIXES = {STAGE_LOCAL: "local", STAGE_BACKSTOP: "backstop", STAGE_LOCAL_SHADOW: "local_shadow"}


def local_filter(stage: int) -> Callable[[ir.Gateway, ir.Listener], hcm_pb2.HttpFilter | None]:
    def build(gw: ir.Gateway, listener: ir.Listener) -> hcm_pb2.HttpFilter | None:
        descriptors = _local_descriptors(listener).get(stage)
        if not descriptors:
            return None
        config = local_pb2.LocalRateLimit(
            stat_prefix=_LOCAL_PREFIXES[stage],
            stage=stage,
            max_dynamic_descriptors=uint32(MAX_DYNAMIC_DESCRIPTORS),
            filter_enabled=_percent(100),
            filter_enforced=_percent(0 if stage == STAGE_LOCAL_SHADOW else 100),
            descriptors=descriptors,
        )
        if stage == STAGE_LOCAL:
            config.enable_x_ratelimit_headers = common_pb2.DRAFT_VERSION_03
        return hcm_pb2.HttpFilter(name=f"{LOCAL_FILTER}.{config.stat_prefix}", typed_config=packed(config))

    return build


def _percent(value: int) -> base_pb2.RuntimeFractionalPercent:
    return base_pb2.RuntimeFractionalPercent(default_value=percent_pb2.FractionalPercent(numerator=value))


# -- the service: its cluster and configuration ---------------------------------------------------


def service_upstreams(gw: ir.Gateway) -> list[ir.Upstream]:
    svc = gw.ratelimit_service
    if svc is None:
        return []
    return [ir.Upstream(svc.cluster, svc.endpoints, svc.source, protocol=ir.Protocol.HTTP2, connect_timeout_ms=1000)]


def service_config(gw: ir.Gateway) -> typed_struct_pb2.TypedStruct | None:
    """The limits the service counts, by id: what the service needs, nothing else."""
    svc = gw.ratelimit_service
    if svc is None:
        return None
    limits: dict[str, Any] = {}
    for lst in gw.listeners:
        for rl_id, rl in used(lst).items():
            if rl.local or rl_id in limits:
                continue
            limits[rl_id] = {
                "name": rl.name,
                "source": f"{rl.source.file}#{rl.source.pointer}",
                "shadow": rl.shadow,
                "windows": dict(rl.windows),
            }
    value = struct_pb2.Struct()
    value.update({"domain": svc.domain, "limits": limits})
    return typed_struct_pb2.TypedStruct(type_url=CONFIG_TYPE, value=value)


__all__ = [
    "RESOURCE_TYPE",
    "local_filter",
    "route_rate_limits",
    "service_config",
    "service_filter",
    "service_upstreams",
]
