"""Counting in Redis: the key layout, the counting script, and the three ways to reach Redis.

Keys
----
A *bucket* is what one limit counts for one caller: domain + limit id + the descriptor's key
parts (``consumer=alice``, or ``anonymous=1, remote_address=203.0.113.9``). Its identity is
hashed (BLAKE2b, 128 bits, over length-prefixed parts), so any bytes a header or claim
carries make a short, safe key, and one key per window holds its count::

    rl:{<identity hash>}:<window>:<window start, epoch seconds>
    rl:{3q2-7wEBpU6hGx0W3o1Rdg}:minute:1767225600

The ``{...}`` hash tag puts every window of one bucket in one Redis Cluster slot, so one
script call sees them all atomically. Each key expires one second after its window ends.

Counting
--------
One script call per ShouldRateLimit (one per bucket on a cluster, sent concurrently):
for an enforced bucket it reads every window and, only if the hits fit in all of them,
adds the hits to all; a refused request consumes nothing, so "100 per minute and 5000 per
hour" allows exactly 5000 an hour however many were refused by the minute limit. A shadow
bucket always counts. ``bench/ratelimit_service_bench.py`` compares this with INCRBY +
EXPIRE in one pipeline (which cannot leave a refused request uncounted).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from ..errors import ControlPlaneError
from .resp import RespClient

log = logging.getLogger("controlplane.ratelimit.store")

# KEYS: the windows of every bucket, bucket after bucket.
# ARGV: per bucket: hits, enforce (1: refuse without counting when a window would pass its
#       limit; 0: shadow, always count), number of windows, then per window: limit, ttl.
# Returns per bucket: applied (1 counted, 0 refused), then each window's count (after the
# hits when applied, as it stands when refused).
COUNT_SCRIPT = """
local out = {}
local k, a = 1, 1
while a <= #ARGV do
  local hits, enforce, n = tonumber(ARGV[a]), ARGV[a + 1] == '1', tonumber(ARGV[a + 2])
  a = a + 3
  local fits = true
  local counts = {}
  if enforce then
    for i = 0, n - 1 do
      local count = tonumber(redis.call('GET', KEYS[k + i]) or '0')
      counts[i + 1] = count
      if count + hits > tonumber(ARGV[a + 2 * i]) then fits = false end
    end
  end
  if fits then
    for i = 0, n - 1 do
      local count = redis.call('INCRBY', KEYS[k + i], hits)
      if count == hits then redis.call('EXPIRE', KEYS[k + i], ARGV[a + 2 * i + 1]) end
      counts[i + 1] = count
    end
  end
  out[#out + 1] = fits and 1 or 0
  for i = 1, n do out[#out + 1] = counts[i] end
  k, a = k + n, a + 2 * n
end
return out
"""
COUNT_SCRIPT_SHA = hashlib.sha1(COUNT_SCRIPT.encode()).hexdigest()


class CounterUnavailableError(ControlPlaneError):
    """Redis did not count: unreachable, too slow, failing over, or its cluster is down.

    ``kind`` is a short label for metrics: timeout, connection, cluster, readonly, error."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


def bucket_tag(domain: str, limit_id: str, parts: Sequence[tuple[str, str]]) -> str:
    """The hash of a bucket's identity; equal exactly when domain, limit and key parts are."""
    digest = hashlib.blake2b(digest_size=16)
    for text in (domain, limit_id, *(t for pair in parts for t in pair)):
        data = text.encode("utf-8", "surrogatepass")
        # Length-prefixed: ("ab", "c") and ("a", "bc") must differ.
        digest.update(len(data).to_bytes(4, "big"))
        digest.update(data)
    return base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()


def window_key(tag: str, window: str, start: int) -> str:
    return f"rl:{{{tag}}}:{window}:{start}"


@dataclass(frozen=True, slots=True)
class Bucket:
    """The windows of one bucket this request counts in."""

    keys: tuple[str, ...]
    limits: tuple[int, ...]
    ttls: tuple[int, ...]
    hits: int
    enforce: bool


@dataclass(frozen=True, slots=True)
class Counted:
    applied: bool  # the hits were added (always for shadow buckets; for others: they fitted)
    counts: tuple[int, ...]  # per window: after the hits when applied, else as they stand


def _arguments(buckets: Sequence[Bucket]) -> list[Any]:
    keys: list[Any] = []
    args: list[Any] = []
    for b in buckets:
        keys.extend(b.keys)
        args.extend((b.hits, 1 if b.enforce else 0, len(b.keys)))
        for limit, ttl in zip(b.limits, b.ttls, strict=True):
            args.extend((limit, ttl))
    return [len(keys), *keys, *args]


def _results(buckets: Sequence[Bucket], reply: Sequence[int]) -> list[Counted]:
    out: list[Counted] = []
    i = 0
    for b in buckets:
        n = len(b.keys)
        out.append(Counted(bool(reply[i]), tuple(int(c) for c in reply[i + 1 : i + 1 + n])))
        i += 1 + n
    return out


def _kind(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | redis_errors.TimeoutError):
        return "timeout"
    if isinstance(exc, redis_errors.ClusterError | redis_errors.RedisClusterException | redis_errors.TryAgainError):
        return "cluster"
    if isinstance(exc, redis_errors.ReadOnlyError):
        return "readonly"  # a failover: the old master is now a replica
    if isinstance(exc, redis_errors.ConnectionError | OSError):
        return "connection"
    return "error"


_FAILURES = (redis_errors.RedisError, redis_errors.RedisClusterException, OSError, TimeoutError)


class _Batcher:
    """Script calls made in one turn of the event loop go to Redis in one pipeline.

    Under load, dozens of ShouldRateLimit calls are in flight at once; one write and one read
    for all of them costs the service and Redis less than a round trip each (measured in
    bench/ratelimit_service_bench.py). Each call still gets its own reply or error.
    """

    def __init__(self, client: Any):
        self.client = client
        self.pending: list[tuple[list[Any], asyncio.Future[Any]]] = []

    def call(self, arguments: list[Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self.pending:
            loop.call_soon(self._flush)
        self.pending.append((arguments, future))
        return future

    def _flush(self) -> None:
        batch, self.pending = self.pending, []
        batch = [(a, f) for a, f in batch if not f.done()]  # a caller that timed out no longer waits
        if batch:
            task = asyncio.ensure_future(self._send(batch))
            _IN_FLIGHT.add(task)
            task.add_done_callback(_IN_FLIGHT.discard)

    async def _send(self, batch: list[tuple[list[Any], asyncio.Future[Any]]]) -> None:
        try:
            replies = await self._pipeline([a for a, _ in batch])
            missing = [i for i, r in enumerate(replies) if isinstance(r, redis_errors.NoScriptError)]
            if missing:
                # A fresh, restarted or newly promoted Redis has no script cache: load, and send those again.
                await self.client.script_load(COUNT_SCRIPT)
                again = await self._pipeline([batch[i][0] for i in missing])
                for i, reply in zip(missing, again, strict=True):
                    replies[i] = reply
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for reply, (_, future) in zip(replies, batch, strict=True):
            if future.done():
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _pipeline(self, calls: list[list[Any]]) -> list[Any]:
        if isinstance(self.client, RespClient):
            return await self.client.execute([["EVALSHA", COUNT_SCRIPT_SHA, *arguments] for arguments in calls])
        pipe = self.client.pipeline(transaction=False)
        for arguments in calls:
            pipe.evalsha(COUNT_SCRIPT_SHA, *arguments)
        return list(await pipe.execute(raise_on_error=False))


_IN_FLIGHT: set[asyncio.Future[Any]] = set()  # pipelines sent and not yet answered (kept from the GC)


async def _evalsha(client: Any, arguments: list[Any]) -> Any:
    try:
        return await client.evalsha(COUNT_SCRIPT_SHA, *arguments)
    except redis_errors.NoScriptError:
        # A fresh or restarted Redis (or a newly promoted one) has no script cache.
        return await client.eval(COUNT_SCRIPT, *arguments)


class Counter:
    """Counts buckets in one Redis deployment; every failure is :class:`CounterUnavailableError`."""

    def __init__(self, client: Any, timeout: float, description: str, cluster: bool = False):
        self.client = client
        self.timeout = timeout
        self.description = description
        self.cluster = cluster
        # A cluster pipeline refuses scripts: there each call goes on its own.
        self._batcher = None if cluster else _Batcher(client)
        # time.monotonic() of the last answer and of the last failure (for /healthz).
        self.last_answer = 0.0
        self.last_failure = 0.0

    async def count(self, buckets: Sequence[Bucket]) -> list[Counted]:
        if not buckets:
            return []
        try:
            async with asyncio.timeout(self.timeout):
                if self.cluster and len(buckets) > 1:
                    # A cluster runs a script on one slot: one call per bucket, all in flight at once.
                    replies = await asyncio.gather(*(self._run([b]) for b in buckets))
                    counted = [r for reply in replies for r in reply]
                else:
                    counted = await self._run(buckets)
        except _FAILURES as exc:
            raise self._unavailable(exc) from exc
        self.last_answer = time.monotonic()
        return counted

    async def _run(self, buckets: Sequence[Bucket]) -> list[Counted]:
        arguments = _arguments(buckets)
        if self._batcher is not None:
            reply = await self._batcher.call(arguments)
        else:
            reply = await _evalsha(self.client, arguments)
        return _results(buckets, reply)

    async def ping(self) -> None:
        try:
            async with asyncio.timeout(self.timeout):
                await self.client.ping()
        except _FAILURES as exc:
            raise self._unavailable(exc) from exc
        self.last_answer = time.monotonic()

    def answering(self, within: float) -> bool:
        """Redis answered in the last ``within`` seconds, and has not failed since."""
        return self.last_answer > self.last_failure and time.monotonic() - self.last_answer < within

    def _unavailable(self, exc: BaseException) -> CounterUnavailableError:
        self.last_failure = time.monotonic()
        kind = _kind(exc)
        if kind == "timeout":
            text = f"{self.description} did not answer within {self.timeout * 1000:g} ms"
        else:
            text = f"{self.description}: {type(exc).__name__}: {exc}"
        return CounterUnavailableError(text, kind)

    async def close(self) -> None:
        await self.client.aclose()


def _no_retry() -> Retry:
    # Envoy waits for the answer: a failure is answered at once (UNAVAILABLE), never retried
    # past the timeout; the next request tries again.
    return Retry(NoBackoff(), 0)


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.strip().rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def single(url: str, timeout: float) -> Counter:
    """A single Redis: redis:// URLs through the service's own client (``resp.py``), others
    (rediss://, unix://) through redis-py."""
    client: Any
    if urlsplit(url).scheme == "redis":
        client = RespClient(url, timeout)
    else:
        client = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=_no_retry(), health_check_interval=0
        )
    return Counter(client, timeout, f"Redis at {url}")


def cluster(addresses: str, timeout: float) -> Counter:
    nodes = [ClusterNode(*_host_port(a)) for a in addresses.split(",") if a.strip()]
    if not nodes:
        raise ValueError("--redis-cluster needs at least one HOST:PORT")
    client = RedisCluster(
        startup_nodes=nodes, socket_timeout=timeout, socket_connect_timeout=timeout, retry=_no_retry()
    )
    return Counter(client, timeout, f"Redis Cluster at {addresses}", cluster=True)


def sentinel(addresses: str, master: str, timeout: float) -> Counter:
    sentinels = [_host_port(a) for a in addresses.split(",") if a.strip()]
    if not sentinels:
        raise ValueError("--redis-sentinel needs at least one HOST:PORT")
    watcher = Sentinel(  # type: ignore[no-untyped-call]
        sentinels,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout},
    )
    client = watcher.master_for(
        master, socket_timeout=timeout, socket_connect_timeout=timeout, retry=_no_retry(), health_check_interval=0
    )
    return Counter(client, timeout, f"Redis master {master!r} of sentinels {addresses}")
