"""The limits of one rate-limit domain, as the control plane publishes them over xDS.

Each resource is a ``google.protobuf.Any`` holding an ``xds.type.v3.TypedStruct`` whose
``type_url`` is :data:`DOMAIN_TYPE` and whose ``value`` reads::

    {"domain": "gateway",
     "limits": {"<limit id>": {"name": "login-per-ip",
                               "source": "gateway.policy.yaml#/apis/0/rateLimits/0",
                               "shadow": false,
                               "windows": {"minute": 100, "hour": 5000}}}}

A resource that does not read so is refused as a whole, with every finding named by its
JSON pointer inside the resource, so the NACK tells the control plane's operator what to fix.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf import any_pb2, json_format
from google.protobuf.message import DecodeError
from xds.type.v3 import typed_struct_pb2

from ..errors import Diagnostic, Diagnostics, InputError, describe_value, pointer

RESOURCE_TYPE = "type.googleapis.com/xds.type.v3.TypedStruct"
DOMAIN_TYPE = "controlplane.dev/ratelimit.v1.Domain"

# Window name → seconds; fixed windows aligned to the epoch.
WINDOWS: Mapping[str, int] = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
# The envoy.service.ratelimit.v3 RateLimit.Unit of each window.
UNITS: Mapping[str, int] = {"second": 1, "minute": 2, "hour": 3, "day": 4}

_LIMIT_FIELDS = {"name", "source", "shadow", "windows"}
# Counts live in Redis as 64-bit integers; a limit past this could never be reached anyway.
MAX_LIMIT = 2**53


@dataclass(frozen=True, slots=True)
class Limit:
    id: str
    name: str
    source: str
    shadow: bool
    windows: Mapping[str, int]  # window name → requests allowed per window


@dataclass(frozen=True, slots=True)
class DomainConfig:
    domain: str
    limits: Mapping[str, Limit]  # by limit id


@dataclass(frozen=True, slots=True)
class Config:
    """What the service enforces: every domain it was sent, and the xDS version they came in."""

    version: str
    domains: Mapping[str, DomainConfig]


def encode_domain(domain: DomainConfig) -> any_pb2.Any:
    """The xDS resource of ``domain`` (what the control plane publishes, and what tests push)."""
    value = {
        "domain": domain.domain,
        "limits": {
            limit.id: {
                "name": limit.name,
                "source": limit.source,
                "shadow": limit.shadow,
                "windows": dict(limit.windows),
            }
            for limit in domain.limits.values()
        },
    }
    typed = typed_struct_pb2.TypedStruct(type_url=DOMAIN_TYPE)
    typed.value.update(value)
    resource = any_pb2.Any()
    resource.Pack(typed, type_url_prefix="type.googleapis.com/")
    return resource


def decode_resources(resources: Iterable[any_pb2.Any]) -> dict[str, DomainConfig]:
    """The domains of one xDS response, or :class:`InputError` with every finding of every resource."""
    found = Diagnostics()
    domains: dict[str, DomainConfig] = {}
    for index, resource in enumerate(resources):
        where = f"resource {index}"
        if resource.type_url != RESOURCE_TYPE:
            found.error(f"is a {resource.type_url or 'resource without type'}, expected {RESOURCE_TYPE}", where)
            continue
        typed = typed_struct_pb2.TypedStruct()
        try:
            typed.ParseFromString(resource.value)
        except DecodeError as exc:
            found.error(f"is not a TypedStruct: {exc}", where)
            continue
        if typed.type_url != DOMAIN_TYPE:
            found.error(f"TypedStruct of type {typed.type_url!r}, expected {DOMAIN_TYPE!r}", where)
            continue
        value = json_format.MessageToDict(typed.value)
        if isinstance(value.get("domain"), str) and value["domain"]:
            where = f"domain {value['domain']!r}"
        domain = _domain(value, where, found)
        if domain is not None:
            if domain.domain in domains:
                found.error(f"domain {domain.domain!r} is sent twice", where, "/domain")
            domains[domain.domain] = domain
    if found.has_errors():
        raise InputError(found.items)
    return domains


def describe(error: InputError) -> str:
    """One line per finding, for a NACK's ``error_detail`` and the log."""
    return "; ".join(_finding(d) for d in error.diagnostics)


def _finding(d: Diagnostic) -> str:
    return f"{d.file}{' at ' + d.pointer if d.pointer else ''}: {d.message}"


def _number(value: Any) -> str:
    """A value as the control plane wrote it: a Struct turns every number into a double."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return describe_value(value)


def _domain(value: dict[str, Any], where: str, found: Diagnostics) -> DomainConfig | None:
    before = len(found.errors)
    name = value.get("domain")
    if not isinstance(name, str) or not name:
        found.error(f"'domain' must be a non-empty string, got {describe_value(name)}", where, "/domain")
    raw_limits = value.get("limits", {})
    limits: dict[str, Limit] = {}
    if not isinstance(raw_limits, dict):
        found.error(f"'limits' must be an object, got {describe_value(raw_limits)}", where, "/limits")
        raw_limits = {}
    for extra in sorted(set(value) - {"domain", "limits"}):
        found.error(f"unknown field {extra!r}", where, pointer(extra))
    for limit_id, raw in raw_limits.items():
        limit = _limit(limit_id, raw, where, found)
        if limit is not None:
            limits[limit_id] = limit
    if len(found.errors) > before or not isinstance(name, str):
        return None
    return DomainConfig(name, limits)


def _limit(limit_id: str, raw: Any, where: str, found: Diagnostics) -> Limit | None:
    at = ("limits", limit_id)
    if not isinstance(raw, dict):
        found.error(f"a limit must be an object, got {describe_value(raw)}", where, pointer(*at))
        return None
    before = len(found.errors)
    for extra in sorted(set(raw) - _LIMIT_FIELDS):
        found.error(f"unknown field {extra!r}", where, pointer(*at, extra))
    name, source, shadow = raw.get("name", limit_id), raw.get("source", ""), raw.get("shadow", False)
    if not isinstance(name, str) or not name:
        found.error(f"'name' must be a non-empty string, got {describe_value(name)}", where, pointer(*at, "name"))
    if not isinstance(source, str):
        found.error(f"'source' must be a string, got {describe_value(source)}", where, pointer(*at, "source"))
    if not isinstance(shadow, bool):
        found.error(f"'shadow' must be true or false, got {describe_value(shadow)}", where, pointer(*at, "shadow"))
    raw_windows = raw.get("windows")
    windows: dict[str, int] = {}
    if not isinstance(raw_windows, dict) or not raw_windows:
        found.error(
            f"'windows' must be an object with at least one of {', '.join(WINDOWS)}, got {describe_value(raw_windows)}",
            where,
            pointer(*at, "windows"),
        )
        raw_windows = {}
    for window, count in raw_windows.items():
        if window not in WINDOWS:
            found.error(f"unknown window {window!r}: use {', '.join(WINDOWS)}", where, pointer(*at, "windows", window))
            continue
        # A Struct carries every number as a double: 100 arrives as 100.0.
        if (
            isinstance(count, bool)
            or not isinstance(count, int | float)
            or not math.isfinite(count)
            or count != int(count)
            or not 0 <= count <= MAX_LIMIT
        ):
            found.error(
                f"a window's limit must be a whole number from 0 to {MAX_LIMIT}, got {_number(count)}",
                where,
                pointer(*at, "windows", window),
            )
            continue
        windows[window] = int(count)
    if len(found.errors) > before:
        return None
    assert isinstance(name, str) and isinstance(source, str) and isinstance(shadow, bool)
    return Limit(limit_id, name, source, shadow, windows)
