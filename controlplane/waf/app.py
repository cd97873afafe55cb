"""``python -m controlplane waf``: options, and the process that ties the parts together."""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..xds.admin import AdminServer, Handler, json_answer
from ..xds.service_options import check_xds_arguments, configure_logging, run_until_signalled
from ..xds.subscriber import XdsOptions
from .config import Config
from .http1 import CheckServer
from .metrics import Metrics
from .options import parser
from .service import MASK_METHOD, Checker, ResponseMasker
from .xds_client import RulesSubscriber

log = logging.getLogger("controlplane.waf")


@dataclass
class Options:
    listen: str
    mask_listen: str
    xds: XdsOptions
    admin_address: str
    admin_port: int


def options(argv: Sequence[str]) -> Options:
    p = parser()
    args = p.parse_args(list(argv))
    check_xds_arguments(p, args)
    xds = XdsOptions.from_args(args, "waf", "waf", ("waf",))
    configure_logging(args.log_level)
    host, _, port = args.listen.rpartition(":")
    mask_listen = args.mask_listen or f"{host}:{int(port) + 1}"
    return Options(args.listen, mask_listen, xds, args.admin_address, args.admin_port)


class Service:
    def __init__(self, opts: Options):
        self.opts = opts
        self.metrics = Metrics()
        self.checker = Checker(self.metrics)
        self.subscriber = RulesSubscriber(opts.xds, self._config, self.metrics)
        get: dict[str, Handler] = {
            p: functools.partial(self._admin, p) for p in ("/healthz", "/ready", "/metrics", "/config")
        }
        self.admin = AdminServer(get)

    def _config(self, config: Config) -> None:
        self.checker.use(config)
        self.metrics.rules_version.clear()
        self.metrics.rules_version.labels(config.rules.version).set(1)
        log.info(
            "serving WAF config version %s (rules %s from %s)", config.version, config.rules.version, config.source
        )

    def _admin(self, path: str, _query: dict[str, list[str]]) -> tuple[int, str, bytes]:
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.metrics.registry)
        config = self.checker.config
        if path == "/config":
            return json_answer(
                200,
                {
                    "version": config.version if config else None,
                    "rules": config.rules.version if config else None,
                    "max_body_bytes": config.max_body_bytes if config else None,
                    "last_rejection": self.subscriber.last_rejection,
                },
            )
        ready = config is not None
        return json_answer(200 if ready else 503, {"ready": ready, "version": config.version if config else None})

    async def _process(self, requests: Any, context: Any) -> Any:
        metadata = dict(context.invocation_metadata())
        config = self.checker.config
        masker = ResponseMasker(
            self.metrics,
            metadata.get("x-waf-operation", ""),
            metadata.get("x-waf-mask-fields", "").split(","),
            config.max_response_bytes if config is not None else 8 << 20,
        )
        async for request in requests:
            for response in masker.answer(request):
                yield response

    async def run(self, stop: asyncio.Event) -> None:
        checks = CheckServer(self.checker)
        host, _, port = self.opts.listen.rpartition(":")
        try:
            await checks.start(host.strip("[]") or "0.0.0.0", int(port))
        except (OSError, ValueError) as exc:
            raise SystemExit(f"waf: cannot listen on {self.opts.listen}: {exc}") from exc
        masks = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
        masking = grpc.stream_stream_rpc_method_handler(
            self._process,
            request_deserializer=external_processor_pb2.ProcessingRequest.FromString,
            response_serializer=external_processor_pb2.ProcessingResponse.SerializeToString,
        )
        service, method = MASK_METHOD.strip("/").split("/")
        masks.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(service, {method: masking})])
        try:
            masks.add_insecure_port(self.opts.mask_listen)
        except RuntimeError as exc:
            raise SystemExit(f"waf: cannot listen on {self.opts.mask_listen}: {exc}") from exc
        await masks.start()
        try:
            admin_port = await self.admin.start(self.opts.admin_address, self.opts.admin_port)
        except OSError as exc:
            raise SystemExit(f"waf: cannot open the admin port {self.opts.admin_port}: {exc}") from exc
        task = asyncio.create_task(self.subscriber.run())
        log.info(
            "WAF service on %s, masking on %s (admin http://%s:%d, node %s, xDS %s)",
            self.opts.listen,
            self.opts.mask_listen,
            self.opts.admin_address,
            admin_port,
            self.opts.xds.node_id,
            self.opts.xds.target,
        )
        try:
            await stop.wait()
        finally:
            task.cancel()
            await checks.stop()
            await masks.stop(grace=1)
            await self.admin.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the WAF service until SIGTERM or SIGINT; the exit status."""
    opts = options(sys.argv[1:] if argv is None else argv)
    return run_until_signalled(lambda stop: Service(opts).run(stop), uvloop=True)  # made inside the event loop
