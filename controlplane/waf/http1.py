"""The check endpoint: Envoy's ext_authz over plain HTTP/1.1, served by a small asyncio protocol.

Envoy (``http_service``) sends each inspected request as an HTTP/1.1 request to the service:
the client's method and target, every header of it plus the route's WAF settings in
``x-waf-route`` (from the route's metadata), and the whole body with its ``Content-Length``.
The answer is 200 to let it through, or the status the client gets (403, 400 or 415 with the
reason as the body); ``x-waf-verdict`` goes into Envoy's dynamic metadata.

Measured against the gRPC transport it replaced (``bench/waf_bench.py``): no HTTP/2 framing,
HPACK or protobuf in Python, and HTTP/1's connection per call in flight lets several service
processes share one port (SO_REUSEPORT spreads connections).

A request the service cannot take (no rules yet, a malformed request, one larger than
``MAX_BODY``) is never answered with a status, which Envoy would pass to the client as a
verdict: the connection is closed, Envoy counts a failure, and the route's failure mode
decides (refuse with 503, or let through).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable
from http import HTTPStatus
from typing import cast

from .normalize import lenient_utf8
from .service import Checker, NoRules, Verdict

log = logging.getLogger("controlplane.waf.http1")

MAX_HEAD = 64 << 10  # request line and headers
MAX_BODY = 64 << 20  # far above any waf.maxBodyBytes Envoy buffers: a bound on a broken client
ROUTE_HEADER = "x-waf-route"
# Headers Envoy adds to the check request itself: not the client's, not inspected.
ENVOY_ADDED = frozenset(
    {ROUTE_HEADER, "x-envoy-auth-partial-body", "x-envoy-internal", "x-envoy-expected-rq-timeout-ms"}
)


def answer(verdict: Verdict) -> bytes:
    body = verdict.message.encode()
    head = f"HTTP/1.1 {verdict.status} {HTTPStatus(verdict.status).phrase}\r\ncontent-length: {len(body)}\r\n"
    if verdict.metadata:
        head += f"x-waf-verdict: {verdict.metadata}\r\n"
    if verdict.message:
        head += "content-type: text/plain; charset=utf-8\r\n"
    return head.encode("latin-1", "replace") + b"\r\n" + body


class CheckProtocol(asyncio.Protocol):
    """One connection from Envoy: requests one after the other (keep-alive)."""

    def __init__(self, checker: Checker, on_close: Callable[[CheckProtocol], None]):
        self.checker = checker
        self.on_close = on_close
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.head: tuple[str, str, dict[str, str], int] | None = None  # (method, target, headers, length)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's is not a subclass)
        sock = transport.get_extra_info("socket")
        if sock is not None:  # (uvloop sets it itself)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.on_close(self)

    def _drop(self, why: str) -> None:
        log.info("closing a check connection: %s", why)
        if self.transport is not None:
            self.transport.abort()
            self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None:
            if self.head is None:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.buffer) > MAX_HEAD:
                        self._drop("request head too large")
                    return
                head = self._parse_head(bytes(self.buffer[:end]))
                del self.buffer[: end + 4]
                if head is None:
                    return
                self.head = head
            method, target, headers, length = self.head
            if len(self.buffer) < length:
                return
            body = bytes(self.buffer[:length])
            del self.buffer[:length]
            self.head = None
            route = self.checker.route(headers.pop(ROUTE_HEADER, ""))
            for name in ENVOY_ADDED:
                headers.pop(name, None)
            try:
                verdict = self.checker.check(method, target, headers, body, route)
            except NoRules:
                self._drop("no rules from the control plane yet")
                return
            except Exception:  # a failing check must not look like a verdict: Envoy's failure mode decides
                log.exception("the check of %s failed", route.operation)
                self._drop("the check failed")
                return
            self.transport.write(answer(verdict))

    def _parse_head(self, raw: bytes) -> tuple[str, str, dict[str, str], int] | None:
        try:
            text = raw.decode("utf-8")  # (the common case: one decode for the whole head)
        except UnicodeDecodeError:
            text = "\r\n".join(lenient_utf8(line)[0] for line in raw.split(b"\r\n"))
        lines = text.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self._drop("not an HTTP/1.1 request line")
            return None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                self._drop("a malformed header line")
                return None
            key = name.lower()
            value = value.strip(" \t")
            # (repeated headers reach the service joined, as Envoy joins them for the check)
            headers[key] = f"{headers[key]},{value}" if key in headers else value
        if "transfer-encoding" in headers:
            self._drop("a chunked check request (Envoy sends a Content-Length)")
            return None
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY:
            self._drop(f"a body of {headers.get('content-length')} bytes")
            return None
        return parts[0], parts[1], headers, length


class CheckServer:
    def __init__(self, checker: Checker):
        self.checker = checker
        self.server: asyncio.base_events.Server | None = None
        self.connections: set[CheckProtocol] = set()

    def _protocol(self) -> CheckProtocol:
        protocol = CheckProtocol(self.checker, self.connections.discard)
        self.connections.add(protocol)
        return protocol

    async def start(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self._protocol, host, port, reuse_port=True)
        bound: int = self.server.sockets[0].getsockname()[1]
        return bound

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for connection in list(self.connections):
                if connection.transport is not None:
                    connection.transport.close()
            await self.server.wait_closed()
