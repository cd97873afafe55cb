"""The configuration of a backend's sidecar Envoy: one inbound listener that requires mTLS
from a gateway identity and forwards to the application on localhost. Nothing else listens.

Its certificates (the backend's workload certificate and the mesh CA bundle) are SDS
secrets the control plane issues and rotates at run time (``controlplane/workloads.py``).
"""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2, protocol_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf import wrappers_pb2

from .. import ir
from ..resources import Resources
from . import clusters, listener, tls
from ._pb import duration, packed

HCM = hcm_pb2.HttpConnectionManager
APP_CLUSTER = "app"
INBOUND = "inbound"


def sidecar_resources(mesh: ir.Mesh, backend: ir.MeshBackend) -> Resources:
    out = Resources()
    out.add(Resources.LISTENER, inbound_listener(mesh, backend), backend.source)
    app = ir.Upstream(APP_CLUSTER, (backend.app,), backend.source, connect_timeout_ms=1000)
    out.add(Resources.CLUSTER, clusters.cluster(app), backend.source)
    if not app.uses_dns:
        out.add(Resources.ENDPOINT, clusters.load_assignment(app), backend.source)
    return out


def inbound_listener(mesh: ir.Mesh, backend: ir.MeshBackend) -> listener_pb2.Listener:
    common = tls_pb2.CommonTlsContext(
        # both ends are Envoys of this control plane: TLS 1.3 only
        tls_params=tls.tls_params("1.3", "1.3"),
        tls_certificate_sds_secret_configs=[tls.sds(ir.mesh_backend_secret(backend.name))],
        alpn_protocols=["h2", "http/1.1"],
    )
    # only the gateway's identities (any of its node groups); another backend's is refused
    tls.peer_validation(common, ir.MESH_CA_SECRET, (mesh.gateway_uri("*"),))
    context = tls_pb2.DownstreamTlsContext(
        common_tls_context=common, require_client_certificate=wrappers_pb2.BoolValue(value=True)
    )
    config = route_pb2.RouteConfiguration(name=INBOUND)
    host = config.virtual_hosts.add(name=INBOUND, domains=["*"])
    host.routes.add(
        match=route_components_pb2.RouteMatch(prefix="/"),
        route=route_components_pb2.RouteAction(cluster=APP_CLUSTER, timeout=duration(300_000)),
    )
    hcm = HCM(
        stat_prefix=INBOUND,
        codec_type=HCM.AUTO,
        use_remote_address=wrappers_pb2.BoolValue(value=True),
        normalize_path=wrappers_pb2.BoolValue(value=True),
        merge_slashes=True,
        path_with_escaped_slashes_action=HCM.REJECT_REQUEST,
        # the application learns which gateway identity called (client-sent copies dropped)
        forward_client_cert_details=HCM.SANITIZE_SET,
        set_current_client_cert_details=HCM.SetCurrentClientCertDetails(uri=True),
        request_headers_timeout=duration(10_000),
        stream_idle_timeout=duration(300_000),
        common_http_protocol_options=protocol_pb2.HttpProtocolOptions(
            headers_with_underscores_action=protocol_pb2.HttpProtocolOptions.REJECT_REQUEST
        ),
        route_config=config,
        http_filters=[
            hcm_pb2.HttpFilter(
                name="envoy.filters.http.router", typed_config=packed(router_pb2.Router(suppress_envoy_headers=True))
            )
        ],
    )
    out = listener._bound(INBOUND, backend.address, backend.port, 10_000, True)
    out.filter_chains.add(
        filters=[
            listener_components_pb2.Filter(
                name="envoy.filters.network.http_connection_manager", typed_config=packed(hcm)
            )
        ],
        transport_socket=base_pb2.TransportSocket(name=tls.TRANSPORT_SOCKET, typed_config=packed(context)),
    )
    return out
