"""The control plane's own HTTP endpoints: liveness, readiness, metrics, status, config dumps.

| path | answer |
|---|---|
| ``/healthz`` | 200 while the process runs |
| ``/readyz`` | 200 once the first complete compile is served, else 503 |
| ``/metrics`` | Prometheus text format |
| ``/status`` | JSON: every connected Envoy, per type SYNCED / STALE / NACKED, NACK errors and sources |
| ``/config_dump?node=ID`` | JSON: what that node was sent, in ``dump``'s format |
| ``/compile`` | JSON: the last compile (ok, when, errors and warnings with locations) |
| ``/refresh_jwks`` | fetches the keys of ``jwks.fetch: controlplane`` providers now; JSON result |
| ``/pulls`` | JSON: each pulled API (``apis[].pull``): when it was last checked, the version pushed, what went wrong |
| ``/inputs`` | JSON: the files and pushed APIs the served version was compiled from, keys withheld (``inputs.py``) |
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger("controlplane.admin")

Answer = tuple[int, str, bytes]
Handler = Callable[[dict[str, list[str]]], Answer | Awaitable[Answer]]


_REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    503: "Service Unavailable",
}


def json_answer(status: int, data: Any) -> tuple[int, str, bytes]:
    return status, "application/json", (json.dumps(data, indent=2) + "\n").encode()


class AdminServer:
    """A small HTTP/1.1 server for admin endpoints: ``routes`` answer GET (and HEAD), ``post``
    routes answer POST. The control plane's and the rate-limit service's admin ports."""

    def __init__(self, routes: dict[str, Handler], post: dict[str, Handler] | None = None):
        self.routes = routes
        self.post = post or {}
        self.server: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int) -> int:
        self.server = await asyncio.start_server(self._serve, host, port)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            while (await asyncio.wait_for(reader.readline(), 10)) not in (b"\r\n", b"\n", b""):
                pass
            parts = line.decode("latin-1").split()
            if len(parts) < 2:
                return
            method, target = parts[0], parts[1]
            url = urlsplit(target)
            handler = (self.post if method == "POST" else self.routes).get(url.path)
            if method not in ("GET", "HEAD", "POST") or (method == "POST" and not self.post):
                status, ctype, body = json_answer(405, {"error": "GET or HEAD" + (", POST" if self.post else "")})
            elif handler is None:
                endpoints = sorted(self.routes) + [f"POST {p}" for p in sorted(self.post)]
                status, ctype, body = json_answer(404, {"error": f"no such endpoint; try {endpoints}"})
            else:
                try:
                    answer = handler(parse_qs(url.query))
                    if inspect.isawaitable(answer):
                        answer = await answer
                    status, ctype, body = answer
                except Exception as exc:  # an endpoint failing must not kill the admin server
                    log.exception("admin endpoint %s failed", url.path)
                    status, ctype, body = json_answer(500, {"error": str(exc)})
            reason = _REASONS.get(status, "Error")
            head = f"HTTP/1.1 {status} {reason}\r\ncontent-type: {ctype}\r\ncontent-length: {len(body)}\r\n"
            writer.write((head + "connection: close\r\n\r\n").encode() + (b"" if method == "HEAD" else body))
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()


def metrics_handler(registry: Any) -> Handler:
    def handle(_query: dict[str, list[str]]) -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE_LATEST, generate_latest(registry)

    return handle
