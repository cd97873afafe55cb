"""The grpc.aio binding: ADS (SotW and delta), the per-type services, and CSDS.

Responses are pre-encoded bytes (see ``snapshot.py``), so the response serializer is the
identity. With mTLS, a node's identity is its client certificate's common name (and its
group the certificate's organizational unit, else the default group), not what it declares.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.status.v3 import csds_pb2

from ..resources import Resources
from .cache import DEFAULT_GROUP
from .protocol import XdsContext, serve_delta, serve_sotw
from .status import client_configs

log = logging.getLogger("controlplane.xds")

# service → (SotW method, delta method, fixed type or None for ADS)
SERVICES = {
    "envoy.service.discovery.v3.AggregatedDiscoveryService": (
        "StreamAggregatedResources",
        "DeltaAggregatedResources",
        None,
    ),
    "envoy.service.listener.v3.ListenerDiscoveryService": ("StreamListeners", "DeltaListeners", Resources.LISTENER),
    "envoy.service.route.v3.RouteDiscoveryService": ("StreamRoutes", "DeltaRoutes", Resources.ROUTE),
    "envoy.service.route.v3.ScopedRoutesDiscoveryService": (
        "StreamScopedRoutes",
        "DeltaScopedRoutes",
        Resources.SCOPED_ROUTE,
    ),
    "envoy.service.cluster.v3.ClusterDiscoveryService": ("StreamClusters", "DeltaClusters", Resources.CLUSTER),
    "envoy.service.endpoint.v3.EndpointDiscoveryService": ("StreamEndpoints", "DeltaEndpoints", Resources.ENDPOINT),
    "envoy.service.extension.v3.ExtensionConfigDiscoveryService": (
        "StreamExtensionConfigs",
        "DeltaExtensionConfigs",
        Resources.EXTENSION,
    ),
}
CSDS = "envoy.service.status.v3.ClientStatusDiscoveryService"


@dataclass(frozen=True)
class TlsFiles:
    cert: str
    key: str
    client_ca: str


class _GrpcStream:
    def __init__(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext, tls: bool):
        self._requests = requests.__aiter__()
        self._context = context
        self.peer = context.peer()
        self.identity = certificate_identity(context) if tls else None

    async def recv(self) -> Any:
        try:
            return await self._requests.__anext__()
        except StopAsyncIteration:
            return None

    async def send(self, data: bytes) -> None:
        await self._context.write(data)


def certificate_identity(context: grpc.aio.ServicerContext) -> tuple[str, str] | None:
    auth = context.auth_context()
    names = auth.get("x509_common_name") or []
    if not names:
        return None
    node_id = names[0].decode()
    group = DEFAULT_GROUP
    pem = (auth.get("x509_pem_cert") or [b""])[0]
    if pem:
        unit = _organizational_unit(pem)
        if unit:
            group = unit
    return node_id, group


def _organizational_unit(pem: bytes) -> str | None:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        subject = x509.load_pem_x509_certificate(pem).subject
    except ValueError:
        return None
    for attribute in subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME):
        value = str(attribute.value)
        if re.fullmatch(r"[\w.-]+", value):
            return value
    return None


def _stream_handler(ctx: XdsContext, delta: bool, fixed_type: str | None, tls: bool) -> grpc.RpcMethodHandler:
    request_type = discovery_pb2.DeltaDiscoveryRequest if delta else discovery_pb2.DiscoveryRequest
    serve = serve_delta if delta else serve_sotw

    async def behavior(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> None:
        stream = _GrpcStream(requests, context, tls)
        try:
            await serve(stream, ctx, fixed_type)
        except Exception:  # a broken stream must not take the server down
            log.exception("xDS stream from %s failed", stream.peer)
            raise

    return grpc.stream_stream_rpc_method_handler(
        behavior, request_deserializer=request_type.FromString, response_serializer=lambda b: b
    )


def _csds_handlers(ctx: XdsContext) -> dict[str, grpc.RpcMethodHandler]:
    def answer(request: Any) -> csds_pb2.ClientStatusResponse:
        ids = {m.id.exact for m in request.node_matchers if m.id.exact} or None
        if request.node.id:
            ids = (ids or set()) | {request.node.id}
        return csds_pb2.ClientStatusResponse(config=client_configs(ctx.registry, ctx.cache, ids))

    async def fetch(request: Any, context: grpc.aio.ServicerContext) -> csds_pb2.ClientStatusResponse:
        return answer(request)

    async def stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for request in requests:
            yield answer(request)

    return {
        "FetchClientStatus": grpc.unary_unary_rpc_method_handler(
            fetch,
            request_deserializer=csds_pb2.ClientStatusRequest.FromString,
            response_serializer=csds_pb2.ClientStatusResponse.SerializeToString,
        ),
        "StreamClientStatus": grpc.stream_stream_rpc_method_handler(
            stream,
            request_deserializer=csds_pb2.ClientStatusRequest.FromString,
            response_serializer=csds_pb2.ClientStatusResponse.SerializeToString,
        ),
    }


def build_server(ctx: XdsContext, address: str, tls: TlsFiles | None) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server(
        options=[
            ("grpc.max_send_message_length", 256 * 1024 * 1024),
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ]
    )
    handlers = []
    for service, (sotw_method, delta_method, fixed) in SERVICES.items():
        handlers.append(
            grpc.method_handlers_generic_handler(
                service,
                {
                    sotw_method: _stream_handler(ctx, False, fixed, tls is not None),
                    delta_method: _stream_handler(ctx, True, fixed, tls is not None),
                },
            )
        )
    handlers.append(grpc.method_handlers_generic_handler(CSDS, _csds_handlers(ctx)))
    server.add_generic_rpc_handlers(handlers)
    if tls is None:
        port = server.add_insecure_port(address)
    else:
        with open(tls.key, "rb") as k, open(tls.cert, "rb") as c, open(tls.client_ca, "rb") as ca:
            credentials = grpc.ssl_server_credentials(
                [(k.read(), c.read())], root_certificates=ca.read(), require_client_auth=True
            )
        port = server.add_secure_port(address, credentials)
    return server, port
