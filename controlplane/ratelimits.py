"""Rate limits: the policy's ``rateLimits`` section and the ``rateLimits`` route setting →
the limits counted for each operation (IR).

Where a limit is declared decides which calls share its buckets:

- ``rateLimits.limits[]`` (the whole gateway, some listeners, APIs or a path prefix): one set of
  buckets for every operation it covers;
- an API's ``defaults`` or its spec document's ``x-gateway``: one set for the API;
- a path item's or an operation's ``x-gateway``, or the policy's ``apis[].operations``: one set
  per operation.

A more specific level *adds* its limits to the API's; a limit with the same ``name`` replaces
the less specific one, and ``disabled: true`` removes it. Gateway-wide limits always apply
(the platform team's floor): an API cannot lift them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from . import ir
from .auth import check_cidrs
from .errors import Diagnostics
from .model.policy import duration_ms

UNITS = ("second", "minute", "hour", "day")
DEFAULT_DOMAIN = "gateway"
DEFAULT_SERVICE = "127.0.0.1:8081"
DEFAULT_TIMEOUT_MS = 100
GATEWAY_SCOPE = "*"  # (no API is named so) limit ids: "*/<name>", "<api>/<name>", "<api>.<operation>/<name>"


@dataclass(frozen=True, slots=True)
class Declared:
    """A limit as written, with the scope whose calls share its buckets."""

    spec: Mapping[str, Any]
    scope: str
    source: ir.Source

    @property
    def name(self) -> str:
        return limit_name(self.spec)


@dataclass(frozen=True, slots=True)
class GatewayLimit:
    """A ``rateLimits.limits[]`` entry: where it applies, and the limit."""

    declared: Declared
    path_prefix: str | None
    apis: frozenset[str] | None
    listeners: frozenset[str] | None

    def covers(self, api: str, template: str, listener: str) -> bool:
        if self.listeners is not None and listener not in self.listeners:
            return False
        if self.apis is not None and api not in self.apis:
            return False
        if self.path_prefix is not None:
            base = self.path_prefix.rstrip("/")
            return template == base or template.startswith(base + "/")
        return True


def _keys(spec: Mapping[str, Any]) -> list[str]:
    by = spec.get("by", [])
    return [by] if isinstance(by, str) else list(by)


def limit_name(spec: Mapping[str, Any]) -> str:
    return str(spec.get("name") or "+".join(_keys(spec)))


def merge(
    current: tuple[Declared, ...], items: Iterable[Any], scope: str, src: ir.Source, diags: Diagnostics
) -> tuple[Declared, ...]:
    """``current`` with ``items`` (one level's ``rateLimits``) added; a name already there is replaced."""
    out = {d.name: d for d in current}
    for i, spec in enumerate(items):
        name = limit_name(spec)
        if spec.get("disabled"):
            out.pop(name, None)
        else:
            where = ir.Source(src.file, f"{src.pointer}/rateLimits/{i}")
            out[name] = Declared(_checked(spec, where, diags), scope, where)
    return tuple(out.values())


def _checked(spec: Mapping[str, Any], where: ir.Source, diags: Diagnostics) -> Mapping[str, Any]:
    """``spec`` with its exempt client ranges normalized (``10.0.0.1`` → ``10.0.0.1/32``); a bad one,
    or no window, is an error."""
    if not any(unit in spec for unit in UNITS):
        diags.error(
            "a rate limit needs at least one window: second, minute, hour or day (requests allowed in it)",
            where.file,
            where.pointer,
            "ratelimit",
        )
    clients = (spec.get("exempt") or {}).get("clients")
    if not clients:
        return spec
    ranges = check_cidrs(clients, where.file, where.pointer + "/exempt/clients", diags)
    return {**spec, "exempt": {**spec["exempt"], "clients": list(ranges)}}


def read_section(section: Mapping[str, Any], file: str, diags: Diagnostics) -> list[GatewayLimit]:
    out: list[GatewayLimit] = []
    seen: dict[str, str] = {}
    for i, spec in enumerate(section.get("limits", [])):
        ptr = f"/rateLimits/limits/{i}"
        if spec is None or "name" not in spec or "by" not in spec:  # wrong, and reported
            continue
        if spec["name"] in seen:
            diags.error(
                f"rate limit {spec['name']!r} is defined twice (also at {seen[spec['name']]})",
                file,
                ptr + "/name",
                "duplicate-name",
            )
            continue
        seen[spec["name"]] = f"{file}#{ptr}"
        where = ir.Source(file, ptr)
        out.append(
            GatewayLimit(
                Declared(_checked(spec, where, diags), GATEWAY_SCOPE, where),
                spec.get("pathPrefix"),
                frozenset(spec["apis"]) if "apis" in spec else None,
                frozenset(spec["listeners"]) if "listeners" in spec else None,
            )
        )
    return out


def check_names(section: Mapping[str, Any], file: str, apis: set[str], listeners: set[str], diags: Diagnostics) -> None:
    """Gateway-wide limits naming an API or listener that does not exist are errors: a typo
    would leave the intended calls unlimited."""
    for i, spec in enumerate(section.get("limits", [])):
        if spec is None:
            continue
        for kind, known in (("apis", apis), ("listeners", listeners)):
            for j, name in enumerate(spec.get(kind, [])):
                if name not in known:
                    where = f"/rateLimits/limits/{i}/{kind}/{j}"
                    diags.error(f"no {kind[:-1]} named {name!r}", file, where, f"unknown-{kind[:-1]}")


def _limit(declared: Declared, op: ir.Operation) -> ir.RateLimit:
    spec = declared.spec
    by: list[tuple[ir.LimitKey, str]] = []
    for key in _keys(spec):
        if key.startswith("header:"):
            by.append((ir.LimitKey.HEADER, key.partition(":")[2].lower()))
        elif key == "consumer":
            by.append((ir.LimitKey.CONSUMER, spec.get("claim", "sub")))
        else:
            by.append((ir.LimitKey(key), ""))
    name = declared.name
    exempt = spec.get("exempt") or {}
    return ir.RateLimit(
        id=f"{declared.scope}/{name}",
        name=name,
        windows=tuple((unit, int(spec[unit])) for unit in UNITS if unit in spec),
        by=tuple(by),
        source=declared.source,
        shadow=bool(spec.get("shadow", False)),
        fail_closed=spec.get("onStoreFailure", "open") == "closed",
        local=spec.get("enforcement", "global") == "local",
        provider=op.auth.provider if op.auth is not None else None,
        exempt_roles=tuple(exempt.get("roles", ())),
        exempt_scopes=tuple(exempt.get("scopes", ())),
        exempt_clients=tuple(exempt.get("clients", ())),
    )


def operation_limits(
    op: ir.Operation, declared: tuple[Declared, ...], gateway: list[GatewayLimit], template: str, listener: str
) -> tuple[ir.RateLimit, ...]:
    """Every limit counted for ``op`` on ``listener``: the gateway's first, then its own."""
    chosen = [g.declared for g in gateway if g.covers(op.api, template, listener)]
    chosen.extend(declared)
    return tuple(_limit(d, op) for d in chosen)


def used(listener: ir.Listener) -> dict[str, ir.RateLimit]:
    """The listener's limits by id (one object per id: its operations share it)."""
    out: dict[str, ir.RateLimit] = {}
    for pr in listener.paths:
        for op in pr.operations:
            for rl in op.rate_limits:
                out.setdefault(rl.id, rl)
    return out


def service(section: Mapping[str, Any], file: str, diags: Diagnostics) -> ir.RateLimitService:
    spec = section.get("service", {})
    endpoints = []
    for i, text in enumerate(spec.get("endpoints", [DEFAULT_SERVICE])):
        host, _, port = str(text).rpartition(":")
        if not 0 < int(port) < 65536:
            diags.error(f"port {port} is out of range", file, f"/rateLimits/service/endpoints/{i}", "ratelimit")
            continue
        endpoints.append(ir.Endpoint(host, int(port)))
    timeout = duration_ms(spec["timeout"]) if "timeout" in spec else DEFAULT_TIMEOUT_MS
    return ir.RateLimitService(
        domain=section.get("domain", DEFAULT_DOMAIN),
        endpoints=tuple(endpoints),
        timeout_ms=timeout,
        source=ir.Source(file, "/rateLimits") if file else ir.Source("<built-in>", ""),
    )
