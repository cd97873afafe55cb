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

import asyncio
import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .clock import Clock, TestClock
from .config import Config
from .metrics import Metrics

log = logging.getLogger("controlplane.ratelimit.admin")

Answer = tuple[int, str, bytes]
_REASONS = {200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed"}


def _json(status: int, data: Any) -> Answer:
    return status, "application/json", (json.dumps(data, indent=2) + "\n").encode()


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
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        self.server = await asyncio.start_server(self._serve, host, port)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

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

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            while (await asyncio.wait_for(reader.readline(), 10)) not in (b"\r\n", b"\n", b""):
                pass
            parts = line.decode("latin-1").split()
            if len(parts) < 2:
                return
            method, url = parts[0], urlsplit(parts[1])
            if method not in ("GET", "HEAD", "POST"):
                status, ctype, body = _json(405, {"error": "GET, HEAD or POST"})
            else:
                try:
                    status, ctype, body = self.answer(method, url.path, parse_qs(url.query))
                except Exception as exc:  # an endpoint failing must not take the admin port down
                    log.exception("admin endpoint %s failed", url.path)
                    status, ctype, body = _json(500, {"error": str(exc)})
            reason = _REASONS.get(status, "Service Unavailable" if status == 503 else "Error")
            head = f"HTTP/1.1 {status} {reason}\r\ncontent-type: {ctype}\r\ncontent-length: {len(body)}\r\n"
            writer.write((head + "connection: close\r\n\r\n").encode() + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
