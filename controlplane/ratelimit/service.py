"""``ShouldRateLimit``: descriptors in, one Redis round trip, a decision out.

Each descriptor Envoy sends reads ``("limit", <id>), ("window", <unit>), <key parts>...``.
The bucket is domain + limit id + key parts; the window picks the count allowed from the
config. A descriptor naming a limit or window the config does not have (the config changed
under Envoy's feet) is answered OK and counted in ``ratelimit_unknown_descriptors_total``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.ratelimit.v3 import rls_pb2
from google.protobuf import duration_pb2, struct_pb2
from google.protobuf.message import DecodeError

from . import h2
from .clock import Clock
from .config import UNITS, WINDOWS, Config, Limit
from .metrics import Metrics
from .store import Bucket, Counter, CounterUnavailableError, bucket_tag, window_key

log = logging.getLogger("controlplane.ratelimit")

OK = rls_pb2.RateLimitResponse.Code.OK
OVER_LIMIT = rls_pb2.RateLimitResponse.Code.OVER_LIMIT


class LogThrottle:
    """At most one line per key per ``interval`` seconds; the lines held back are counted in the next."""

    def __init__(self, interval: float = 1.0):
        self.interval = interval
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        """None to stay quiet, else how many lines were held back since the last one."""
        now = time.monotonic()
        if now - self._last.get(key, -math.inf) < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last[key] = now
        return self._held.pop(key, 0)


@dataclass
class _Window:
    """One window of one bucket, and the descriptors (by index) that asked about it."""

    name: str
    limit: int
    reset: float  # seconds until the window ends
    descriptors: list[int] = field(default_factory=list)


@dataclass
class _Bucket:
    limit: Limit
    parts: tuple[tuple[str, str], ...]
    hits: int
    windows: dict[str, _Window] = field(default_factory=dict)


@dataclass
class _Over:
    limit: Limit
    window: str
    reset: float


def _parse(descriptor: Any) -> tuple[str, str, tuple[tuple[str, str], ...]] | None:
    entries = descriptor.entries
    if len(entries) < 2 or entries[0].key != "limit" or entries[1].key != "window":
        return None
    return entries[0].value, entries[1].value, tuple((e.key, e.value) for e in entries[2:])


class Decider:
    """The decision, apart from gRPC (the servicer below adds the status codes)."""

    def __init__(self, counter: Counter, clock: Clock, metrics: Metrics):
        self.counter = counter
        self.clock = clock
        self.metrics = metrics
        self.config: Config | None = None
        self.shadow_log = LogThrottle()

    def _buckets(self, request: Any, config: Config, now: float) -> tuple[dict[tuple[Any, ...], _Bucket], int]:
        domain = config.domains.get(request.domain)
        default_hits = request.hits_addend or 1
        buckets: dict[tuple[Any, ...], _Bucket] = {}
        if domain is None:
            self._unknown("domain", request.domain, len(request.descriptors))
            return buckets, 0
        for index, descriptor in enumerate(request.descriptors):
            parsed = _parse(descriptor)
            if parsed is None:
                self._unknown("malformed", [(e.key, e.value) for e in descriptor.entries])
                continue
            limit_id, window, parts = parsed
            limit = domain.limits.get(limit_id)
            if limit is None:
                self._unknown("limit", limit_id)
                continue
            allowed = limit.windows.get(window)
            if allowed is None:
                self._unknown("window", f"{limit_id}/{window}")
                continue
            hits = descriptor.hits_addend.value if descriptor.HasField("hits_addend") else default_hits
            key = (limit_id, parts, hits)
            bucket = buckets.get(key)
            if bucket is None:
                bucket = buckets[key] = _Bucket(limit, parts, hits)
            slot = bucket.windows.get(window)
            if slot is None:
                length = WINDOWS[window]
                reset = (math.floor(now / length) + 1) * length - now
                slot = bucket.windows[window] = _Window(window, allowed, reset)
            slot.descriptors.append(index)
        return buckets, len(request.descriptors)

    def _unknown(self, reason: str, what: Any, count: int = 1) -> None:
        self.metrics.unknown.labels(reason=reason).inc(count)
        log.debug("descriptor answered OK: unknown %s %r", reason, what)

    async def decide(self, request: Any) -> rls_pb2.RateLimitResponse:
        """The answer to ``request``; :class:`CounterUnavailableError` when Redis did not count."""
        config = self.config
        assert config is not None
        now = self.clock.now()
        buckets, count = self._buckets(request, config, now)
        statuses = [rls_pb2.RateLimitResponse.DescriptorStatus(code=OK) for _ in range(count)]
        if not buckets:
            return rls_pb2.RateLimitResponse(overall_code=OK, statuses=statuses)
        plan = list(buckets.values())
        counted = await self.counter.count([self._bucket(request.domain, b, now) for b in plan])
        refusals: list[_Over] = []
        shadows: list[str] = []
        for bucket, result in zip(plan, counted, strict=True):
            limit = bucket.limit
            for window, current in zip(bucket.windows.values(), result.counts, strict=True):
                over = current > window.limit if result.applied else current + bucket.hits > window.limit
                outcome = "ok"
                if over and limit.shadow:
                    outcome = "shadow_over"
                    if limit.name not in shadows:
                        shadows.append(limit.name)
                    self._log_shadow(limit, window, current, bucket.parts)
                elif over:
                    outcome = "over"
                    refusals.append(_Over(limit, window.name, window.reset))
                for index in window.descriptors:
                    self.metrics.decisions.labels(limit=limit.name, outcome=outcome).inc()
                    status = statuses[index]
                    status.code = OVER_LIMIT if outcome == "over" else OK
                    status.current_limit.requests_per_unit = window.limit
                    status.current_limit.unit = UNITS[window.name]
                    status.current_limit.name = limit.name
                    status.limit_remaining = max(0, window.limit - current)
                    status.duration_until_reset.CopyFrom(duration_pb2.Duration(seconds=math.ceil(window.reset)))
        response = rls_pb2.RateLimitResponse(overall_code=OVER_LIMIT if refusals else OK, statuses=statuses)
        if refusals:
            # The window that frees last is the one the client must wait for.
            last = max(refusals, key=lambda o: o.reset)
            response.response_headers_to_add.append(
                base_pb2.HeaderValue(key="retry-after", value=str(max(1, math.ceil(last.reset))))
            )
        if refusals or shadows:
            response.dynamic_metadata.CopyFrom(_metadata(refusals, shadows))
        return response

    @staticmethod
    def _bucket(domain: str, bucket: _Bucket, now: float) -> Bucket:
        tag = bucket_tag(domain, bucket.limit.id, bucket.parts)
        keys, limits, ttls = [], [], []
        for window in bucket.windows.values():
            length = WINDOWS[window.name]
            keys.append(window_key(tag, window.name, math.floor(now / length) * length))
            limits.append(window.limit)
            # One second past the window's end: another replica's clock may run a little behind.
            ttls.append(math.ceil(window.reset) + 1)
        return Bucket(tuple(keys), tuple(limits), tuple(ttls), bucket.hits, not bucket.limit.shadow)

    def _log_shadow(self, limit: Limit, window: _Window, current: int, parts: Sequence[tuple[str, str]]) -> None:
        held = self.shadow_log.allow(limit.id)
        if held is None:
            return
        key = ", ".join(f"{k}={v!r}" for k, v in parts) or "(shared)"
        more = f" ({held} more shadow hits of this limit since the last line)" if held else ""
        log.info(
            "shadow limit %s (%s) over: %d of %d per %s for %s%s",
            limit.name,
            limit.source,
            current,
            window.limit,
            window.name,
            key,
            more,
        )


def _metadata(refusals: list[_Over], shadows: list[str]) -> struct_pb2.Struct:
    data: dict[str, Any] = {}
    if refusals:
        first = max(refusals, key=lambda o: o.reset)
        data.update(limit=first.limit.name, source=first.limit.source, window=first.window)
    data["shadow"] = shadows
    metadata = struct_pb2.Struct()
    metadata.update(data)
    return metadata


class ShouldRateLimit:
    """The method, apart from its transport (``h2.GrpcH2Server``): request bytes in, (gRPC status,
    message, response bytes) out. UNAVAILABLE until the first config and whenever Redis did not
    count: Envoy then applies each limit's fail-open or fail-closed choice."""

    METHOD = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"

    def __init__(self, decider: Decider):
        self.decider = decider
        self.metrics = decider.metrics
        self.unavailable_log = LogThrottle()

    async def __call__(self, message: bytes) -> tuple[int, str, bytes]:
        started = time.perf_counter()
        metrics = self.metrics
        if self.decider.config is None:
            metrics.requests.labels(answer="unavailable").inc()
            return h2.UNAVAILABLE, "no rate-limit configuration received yet", b""
        try:
            request = rls_pb2.RateLimitRequest.FromString(message)
        except DecodeError:
            return h2.INTERNAL, "the request is not a RateLimitRequest", b""
        try:
            response = await self.decider.decide(request)
        except CounterUnavailableError as exc:
            metrics.redis_errors.labels(kind=exc.kind).inc()
            metrics.requests.labels(answer="unavailable").inc()
            held = self.unavailable_log.allow(exc.kind)
            if held is not None:
                log.warning("answering UNAVAILABLE: %s%s", exc, f" ({held} more since the last line)" if held else "")
            return h2.UNAVAILABLE, str(exc), b""
        metrics.requests.labels(answer="over_limit" if response.overall_code == OVER_LIMIT else "ok").inc()
        metrics.decision_seconds.observe(time.perf_counter() - started)
        return h2.OK, "", response.SerializeToString()
