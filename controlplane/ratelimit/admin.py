"""The service's admin HTTP port.

| request | answer |
|---|---|
| ``GET /healthz``, ``GET /ready`` | 200 when a config is held and Redis answered in the last few seconds, else 503 |
| ``GET /metrics`` | Prometheus text format |
| ``GET /config`` | JSON: the config served (xDS version, domains, limits) and the last rejected one |
| ``POST /clock?advance=SECONDS`` | only with ``--test-clock`` (403 otherwise): moves the service's clock |
| ``POST /clock?set=EPOCH_SECONDS`` | likewise, to an instant (tests align windows with it) |
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..xds.admin import AdminServer, Handler, json_answer
from .clock import Clock, TestClock
from .config import Config
from .metrics import Metrics

log = logging.getLogger("controlplane.ratelimit.admin")

Answer = tuple[int, str, bytes]
_json = json_answer


def config_view(config: Config | None) -> dict[str, Any] | None:
    if config is None:
        return None
    return {
        "version": config.version,
        "domains": {
            name: {limit_id: asdict(limit) for limit_id, limit in domain.limits.items()}
            for name, domain in config.domains.items()
        },
    }


class Admin:
    def __init__(
        self,
        metrics: Metrics,
        clock: Clock,
        healthy: Callable[[], tuple[bool, str]],
        config: Callable[[], tuple[Config | None, str | None]],
    ):
        self.metrics = metrics
        self.clock = clock
        self.healthy = healthy
        self.config = config
        paths = ("/healthz", "/ready", "/metrics", "/config", "/clock")
        get: dict[str, Handler] = {path: functools.partial(self._get, path) for path in paths}
        self.server = AdminServer(get, post={"/clock": functools.partial(self._clock, "POST")})

    async def start(self, host: str, port: int) -> int:
        return await self.server.start(host, port)

    async def close(self) -> None:
        await self.server.close()

    def _get(self, path: str, query: dict[str, list[str]]) -> Answer:
        return self.answer("GET", path, query)

    def answer(self, method: str, path: str, query: dict[str, list[str]]) -> Answer:
        if path in ("/healthz", "/ready"):
            ok, why = self.healthy()
            return _json(200 if ok else 503, {"ok": ok, "detail": why})
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.metrics.registry)
        if path == "/config":
            config, rejected = self.config()
            return _json(200, {"config": config_view(config), "last_rejected": rejected})
        if path == "/clock":
            return self._clock(method, query)
        return _json(404, {"error": "no such endpoint; try /healthz /ready /metrics /config /clock"})

    def _clock(self, method: str, query: dict[str, list[str]]) -> Answer:
        if method == "GET":
            return _json(200, {"now": self.clock.now(), "test_clock": isinstance(self.clock, TestClock)})
        if method != "POST":
            return _json(405, {"error": "GET or POST"})
        if not isinstance(self.clock, TestClock):
            return _json(403, {"error": "the clock moves only in a service started with --test-clock"})
        try:
            if "advance" in query:
                seconds = float(query["advance"][0])
                if not math.isfinite(seconds) or seconds < 0:
                    raise ValueError("advance must be a finite number of seconds, 0 or more")
                now = self.clock.advance(seconds)
            elif "set" in query:
                when = float(query["set"][0])
                if not math.isfinite(when) or when < 0:
                    raise ValueError("set must be a finite time in seconds since the epoch")
                now = self.clock.set(when)
            else:
                raise ValueError("give ?advance=SECONDS or ?set=EPOCH_SECONDS")
        except ValueError as exc:
            return _json(400, {"error": str(exc)})
        log.info("test clock now %.3f", now)
        return _json(200, {"now": now})
