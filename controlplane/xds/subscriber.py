"""A service's ADS stream to the control plane: where a service beside Envoy (the rate-limit
service, the WAF service) gets its configuration.

State of the world over ``AggregatedDiscoveryService.StreamAggregatedResources``, subscribed
to one resource type by name. A response is ACKed when the subclass's :meth:`Subscriber.apply`
accepts it, else NACKed with what is wrong, and the last good config keeps serving. The stream
is reopened with backoff whenever it drops; the reconnect request carries the version held,
so an unchanged control plane need not resend.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import code_pb2, status_pb2

from ..errors import Diagnostic, InputError

log = logging.getLogger("controlplane.xds.subscriber")

ADS_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"


class Versioned(Protocol):
    @property
    def version(self) -> str: ...


C = TypeVar("C", bound=Versioned)


@dataclass(frozen=True)
class XdsOptions:
    target: str  # HOST:PORT of the control plane's xDS server
    node_id: str
    node_cluster: str = "ratelimit"
    domains: tuple[str, ...] = ("gateway",)  # the resource names subscribed to
    insecure: bool = False
    ca: str | None = None  # CA that signed the control plane's certificate
    cert: str | None = None  # this service's client certificate and key (mTLS)
    key: str | None = None
    server_name: str | None = None  # name expected in the server's certificate, if not its host
    initial_backoff: float = 0.1
    max_backoff: float = 5.0

    @classmethod
    def from_args(cls, args: Any, node: str, cluster: str, names: tuple[str, ...]) -> XdsOptions:
        """From a service's command line (``service_options.add_xds_arguments``)."""
        return cls(
            target=args.xds,
            node_id=args.node_id or f"{node}-{socket.gethostname()}-{os.getpid()}",
            node_cluster=cluster,
            domains=names,
            insecure=args.insecure,
            ca=args.xds_ca,
            cert=args.xds_cert,
            key=args.xds_key,
            server_name=args.xds_server_name,
        )


def channel(options: XdsOptions) -> grpc.aio.Channel:
    settings: list[tuple[str, Any]] = [
        # A silent control plane (host gone, partition) is noticed and the stream reopened.
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ]
    if options.insecure:
        return grpc.aio.insecure_channel(options.target, options=settings)
    assert options.ca and options.cert and options.key
    credentials = grpc.ssl_channel_credentials(
        root_certificates=Path(options.ca).read_bytes(),
        private_key=Path(options.key).read_bytes(),
        certificate_chain=Path(options.cert).read_bytes(),
    )
    if options.server_name:
        settings.append(("grpc.ssl_target_name_override", options.server_name))
    return grpc.aio.secure_channel(options.target, credentials, options=settings)


class SubscriberMetrics(Protocol):
    xds_connected: Any  # a Gauge
    config_updates: Any  # a Counter labelled by result


class Subscriber(Generic[C]):
    """Keeps :attr:`config` up to date from the control plane; ``on_config`` hears every
    accepted one. Subclasses name the type and turn responses into their config."""

    RESOURCE_TYPE = ""
    USER_AGENT = ""
    WHAT = "config"  # in log lines

    def __init__(self, options: XdsOptions, on_config: Callable[[C], None], metrics: SubscriberMetrics):
        self.options = options
        self.on_config = on_config
        self.metrics = metrics
        self.config: C | None = None
        self.last_rejection: str | None = None
        self._node = base_pb2.Node(id=options.node_id, cluster=options.node_cluster, user_agent_name=self.USER_AGENT)

    def version(self) -> str:
        return self.config.version if self.config is not None else ""

    def apply(self, type_url: str, version: str, resources: Sequence[Any]) -> C:
        """The config after a response, or :class:`InputError` naming what is wrong with it."""
        if type_url != self.RESOURCE_TYPE:
            raise InputError(
                [Diagnostic(f"a response of type {type_url!r}; subscribed to {self.RESOURCE_TYPE}", "response")]
            )
        return self.decode(version, resources)

    def decode(self, version: str, resources: Sequence[Any]) -> C:
        """The config a response of the subscribed type makes (the subclass's part)."""
        raise NotImplementedError

    async def run(self) -> None:
        """Forever: open the stream, follow it, and reopen it with backoff when it ends."""
        backoff = self.options.initial_backoff
        chan = channel(self.options)
        try:
            while True:
                answered = False
                try:
                    answered = await self._follow(chan)
                    reason = "the control plane closed the stream"
                except grpc.aio.AioRpcError as exc:
                    reason = f"{exc.code().name}: {exc.details()}"
                finally:
                    self.metrics.xds_connected.set(0)
                if answered:
                    backoff = self.options.initial_backoff
                # Jitter: replicas that lost the same control plane do not all return at once.
                delay = backoff * random.uniform(0.5, 1.0)
                log.warning(
                    "xDS stream to %s ended (%s); serving %s; retrying in %.2fs",
                    self.options.target,
                    reason,
                    f"config version {self.version()}" if self.config is not None else "no config yet",
                    delay,
                )
                await asyncio.sleep(delay)
                backoff = min(self.options.max_backoff, backoff * 2)
        finally:
            await chan.close()

    async def _follow(self, chan: grpc.aio.Channel) -> bool:
        """One stream until it ends; True if the control plane sent anything on it."""
        call = chan.stream_stream(
            ADS_METHOD,
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
        )()
        answered = False
        try:
            await call.write(self._request(version=self.version() if self.config is not None else ""))
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    return answered
                if not answered:
                    log.info("xDS stream to %s open", self.options.target)
                    self.metrics.xds_connected.set(1)
                answered = True
                await call.write(self._answer(response))
        finally:
            call.cancel()

    def _request(self, version: str, nonce: str = "", error: str | None = None) -> discovery_pb2.DiscoveryRequest:
        request = discovery_pb2.DiscoveryRequest(
            version_info=version,
            node=self._node,
            resource_names=list(self.options.domains),
            type_url=self.RESOURCE_TYPE,
            response_nonce=nonce,
        )
        if error is not None:
            request.error_detail.CopyFrom(status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=error))
        return request

    def _answer(self, response: discovery_pb2.DiscoveryResponse) -> discovery_pb2.DiscoveryRequest:
        """Apply ``response`` if it is good, and the ACK or NACK that says so."""
        held = self.version() if self.config is not None else ""
        try:
            config = self.apply(response.type_url, response.version_info, response.resources)
        except InputError as exc:
            message = describe(exc)
            self.last_rejection = f"version {response.version_info}: {message}"
            self.metrics.config_updates.labels(result="rejected").inc()
            log.error(
                "rejected %s version %s (NACK; still serving %s): %s",
                self.WHAT,
                response.version_info,
                held or "nothing",
                message,
            )
            return self._request(held, response.nonce, message)
        self.metrics.config_updates.labels(result="accepted").inc()
        self.config = config
        self.on_config(config)
        return self._request(self.version(), response.nonce)


def describe(error: InputError) -> str:
    """One line per finding, for a NACK's ``error_detail`` and the log."""
    return "; ".join(f"{d.file}{' at ' + d.pointer if d.pointer else ''}: {d.message}" for d in error.diagnostics)
