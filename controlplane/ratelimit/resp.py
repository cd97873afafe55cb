"""A small Redis client for the one thing the service does on a single Redis: pipelined EVALSHA.

redis-py's asyncio pipeline costs about 250 us of CPU per call in Python (packing, its parser,
its connection pool and retry layers; ``bench/ratelimit_service_bench.py``), more than the
rest of a decision. Here one asyncio protocol per connection writes RESP commands and parses
replies (RESP2: simple strings, errors, integers, bulk strings, arrays) in the order they
come; a failed connection fails every call waiting on it, and the next call connects again.
Errors Redis returns are redis-py's exception classes (``NoScriptError``, ``ReadOnlyError``,
``ResponseError``), so the counter above treats both clients alike. Cluster and Sentinel keep
redis-py (slot maps, failover discovery).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

from redis import exceptions as redis_errors


def encode(command: Sequence[Any]) -> bytes:
    parts = [b"*%d\r\n" % len(command)]
    for arg in command:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _error(text: str) -> redis_errors.RedisError:
    if text.startswith("NOSCRIPT"):
        return redis_errors.NoScriptError(text)
    if text.startswith("READONLY"):
        return redis_errors.ReadOnlyError(text)
    if text.startswith("LOADING"):
        return redis_errors.BusyLoadingError(text)
    return redis_errors.ResponseError(text)


def parse(buf: bytearray | bytes, at: int) -> tuple[Any, int] | None:
    """One reply starting at ``at``: (value, offset after it), or None if it is not all there."""
    end = buf.find(b"\r\n", at)
    if end < 0:
        return None
    kind, line = buf[at], bytes(buf[at + 1 : end])
    after = end + 2
    if kind == 0x3A:  # ':' integer
        return int(line), after
    if kind == 0x24:  # '$' bulk string
        size = int(line)
        if size < 0:
            return None, after
        if len(buf) < after + size + 2:
            return None
        return bytes(buf[after : after + size]), after + size + 2
    if kind == 0x2A:  # '*' array
        count = int(line)
        if count < 0:
            return None, after
        items = []
        for _ in range(count):
            got = parse(buf, after)
            if got is None:
                return None
            item, after = got
            items.append(item)
        return items, after
    if kind == 0x2B:  # '+' simple string
        return line.decode(), after
    if kind == 0x2D:  # '-' error: a value (the caller decides), never raised here
        return _error(line.decode(errors="replace")), after
    raise redis_errors.InvalidResponse(f"unexpected RESP type byte {kind!r}")


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buffer
        buf += data
        at = 0
        try:
            while at < len(buf) and self.waiting:
                got = parse(buf, at)
                if got is None:
                    break
                value, at = got
                future = self.waiting.popleft()
                if not future.done():
                    future.set_result(value)
        except (ValueError, redis_errors.InvalidResponse) as exc:
            self._fail(redis_errors.InvalidResponse(f"unreadable reply from Redis: {exc}"))
            return
        del buf[:at]

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(redis_errors.ConnectionError(f"connection to Redis lost: {exc or 'closed by Redis'}"))

    def _fail(self, exc: BaseException) -> None:
        self.lost = exc
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(exc)
        if self.transport is not None:
            self.transport.close()

    def send(self, commands: Sequence[Sequence[Any]]) -> list[asyncio.Future[Any]]:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in commands]
        self.waiting.extend(futures)
        self.transport.write(b"".join(encode(c) for c in commands))
        return futures


class RespClient:
    """One connection to one Redis (``redis://[:password@]host:port/db``), made when first needed."""

    def __init__(self, url: str, timeout: float):
        parts = urlsplit(url)
        if parts.scheme != "redis" or not parts.hostname:
            raise ValueError(f"expected redis://HOST:PORT/DB, got {url!r}")
        self.host, self.port = parts.hostname, parts.port or 6379
        self.db = int(parts.path.strip("/") or 0)
        self.password = unquote(parts.password) if parts.password else None
        self.username = unquote(parts.username) if parts.username else None
        self.timeout = timeout
        self._conn: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None

    async def _connection(self) -> _Connection:
        conn = self._conn
        if conn is not None and conn.lost is None:
            return conn
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        try:
            return await asyncio.shield(self._connecting)
        finally:
            if self._connecting is not None and self._connecting.done():
                self._connecting = None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _transport, conn = await asyncio.wait_for(
            loop.create_connection(_Connection, self.host, self.port), self.timeout
        )
        setup: list[list[Any]] = []
        if self.password is not None:
            setup.append(["AUTH", *([self.username] if self.username else []), self.password])
        if self.db:
            setup.append(["SELECT", self.db])
        if setup:
            for reply in await asyncio.gather(*conn.send(setup)):
                if isinstance(reply, Exception):
                    conn._fail(reply)
                    raise reply
        self._conn = conn
        return conn

    async def execute(self, commands: Sequence[Sequence[Any]]) -> list[Any]:
        """The replies in order; a reply Redis made an error is its exception (not raised)."""
        conn = await self._connection()
        return list(await asyncio.gather(*conn.send(commands)))

    async def _one(self, *command: Any) -> Any:
        (reply,) = await self.execute([command])
        if isinstance(reply, Exception):
            raise reply
        return reply

    # What the counter asks of a client besides ``execute`` (redis-py's names).
    async def ping(self) -> Any:
        return await self._one("PING")

    async def script_load(self, script: str) -> Any:
        return await self._one("SCRIPT", "LOAD", script)

    async def aclose(self) -> None:
        if self._conn is not None and self._conn.transport is not None:
            self._conn.transport.close()
        self._conn = None
