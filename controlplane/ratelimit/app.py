"""``python -m controlplane ratelimit``: options, and the process that ties the parts together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from ..xds.service_options import check_xds_arguments, configure_logging, run_until_signalled
from . import store
from .admin import Admin
from .clock import Clock, TestClock
from .config import Config
from .h2 import GrpcH2Server
from .metrics import Metrics
from .options import parser
from .service import Decider, ShouldRateLimit
from .xds_client import ConfigSubscriber, XdsOptions

log = logging.getLogger("controlplane.ratelimit")

# /healthz wants an answer from Redis this recent; an idle service pings it to have one.
HEALTH_WINDOW = 3.0
PING_INTERVAL = 1.0


@dataclass
class Options:
    listen: str
    xds: XdsOptions
    counter: store.Counter
    admin_address: str
    admin_port: int
    test_clock: bool


def options(argv: Sequence[str]) -> Options:
    p = parser()
    args = p.parse_args(list(argv))
    check_xds_arguments(p, args)
    if args.redis_sentinel and not args.sentinel_master:
        p.error("--redis-sentinel needs --sentinel-master NAME")
    try:
        if args.redis:
            counter = store.single(args.redis, args.redis_timeout)
        elif args.redis_cluster:
            counter = store.cluster(args.redis_cluster, args.redis_timeout)
        else:
            counter = store.sentinel(args.redis_sentinel, args.sentinel_master, args.redis_timeout)
    except ValueError as exc:
        p.error(str(exc))
    xds = XdsOptions.from_args(args, "ratelimit", args.node_cluster, tuple(dict.fromkeys(args.domains or ["gateway"])))
    configure_logging(args.log_level)
    return Options(args.listen, xds, counter, args.admin_address, args.admin_port, args.test_clock)


class Service:
    def __init__(self, opts: Options):
        self.opts = opts
        self.metrics = Metrics()
        self.clock: Clock = TestClock() if opts.test_clock else Clock()
        self.counter = opts.counter
        self.decider = Decider(self.counter, self.clock, self.metrics)
        self.subscriber = ConfigSubscriber(opts.xds, self._config, self.metrics)
        self.admin = Admin(self.metrics, self.clock, self.healthy, self._view)

    def _config(self, config: Config) -> None:
        self.decider.config = config
        self.metrics.config_served(config.version, sum(len(d.limits) for d in config.domains.values()))
        limits = ", ".join(f"{name}: {len(d.limits)}" for name, d in sorted(config.domains.items())) or "no domain"
        log.info("serving rate-limit config version %s (%s)", config.version, limits)

    def _view(self) -> tuple[Config | None, str | None]:
        return self.decider.config, self.subscriber.last_rejection

    def healthy(self) -> tuple[bool, str]:
        if self.decider.config is None:
            return False, "no config received from the control plane yet"
        if not self.counter.answering(HEALTH_WINDOW):
            return False, f"{self.counter.description} has not answered in the last {HEALTH_WINDOW:g}s"
        return True, f"config version {self.decider.config.version}; Redis answering"

    async def _keep_pinging(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if loop.time() - self.counter.last_answer >= PING_INTERVAL:
                with contextlib.suppress(store.CounterUnavailableError):
                    await self.counter.ping()
            await asyncio.sleep(PING_INTERVAL)

    async def run(self, stop: asyncio.Event) -> None:
        server = GrpcH2Server(ShouldRateLimit.METHOD, ShouldRateLimit(self.decider))
        host, _, port = self.opts.listen.rpartition(":")
        try:
            await server.start(host.strip("[]") or "0.0.0.0", int(port))
        except (OSError, ValueError) as exc:
            raise SystemExit(f"ratelimit: cannot listen on {self.opts.listen}: {exc}") from exc
        try:
            admin_port = await self.admin.start(self.opts.admin_address, self.opts.admin_port)
        except OSError as exc:
            raise SystemExit(
                f"ratelimit: cannot open the admin port {self.opts.admin_address}:{self.opts.admin_port}: {exc}"
            ) from exc
        tasks = [asyncio.create_task(self.subscriber.run()), asyncio.create_task(self._keep_pinging())]
        log.info(
            "rate-limit service on %s (admin http://%s:%d, node %s, xDS %s, %s)",
            self.opts.listen,
            self.opts.admin_address,
            admin_port,
            self.opts.xds.node_id,
            self.opts.xds.target,
            self.counter.description,
        )
        try:
            await stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await server.stop(grace=1)
            await self.admin.close()
            await self.counter.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the rate-limit service until SIGTERM or SIGINT; the exit status."""
    opts = options(sys.argv[1:] if argv is None else argv)
    return run_until_signalled(lambda stop: Service(opts).run(stop))  # made inside the event loop
