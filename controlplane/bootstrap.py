"""Envoy bootstrap configurations: static (everything inline) and dynamic (xDS over ADS)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, grpc_service_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.overload.v3 import overload_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.resource_monitors.downstream_connections.v3 import downstream_connections_pb2
from envoy.extensions.resource_monitors.fixed_heap.v3 import fixed_heap_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as upstream_http
from google.protobuf import struct_pb2
from google.protobuf.message import Message

from . import ir
from .resources import Resources
from .translate import tls
from .translate._pb import duration, packed

HCM_NAME = "envoy.filters.network.http_connection_manager"
XDS_CLUSTER = "xds"


@dataclass(frozen=True)
class AdminOptions:
    address: str = "127.0.0.1"
    port: int = 9901


def _admin(options: AdminOptions) -> bootstrap_pb2.Admin:
    return bootstrap_pb2.Admin(
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address=options.address, port_value=options.port)
        )
    )


def overload_manager(max_connections: int, max_heap_bytes: int) -> overload_pb2.OverloadManager:
    """Shed load before memory runs out, and cap downstream connections across listeners."""

    def trigger(value: float) -> overload_pb2.Trigger:
        return overload_pb2.Trigger(
            name="envoy.resource_monitors.fixed_heap", threshold=overload_pb2.ThresholdTrigger(value=value)
        )

    return overload_pb2.OverloadManager(
        refresh_interval=duration(250),
        resource_monitors=[
            overload_pb2.ResourceMonitor(
                name="envoy.resource_monitors.fixed_heap",
                typed_config=packed(fixed_heap_pb2.FixedHeapConfig(max_heap_size_bytes=max_heap_bytes)),
            ),
            overload_pb2.ResourceMonitor(
                name="envoy.resource_monitors.global_downstream_max_connections",
                typed_config=packed(
                    downstream_connections_pb2.DownstreamConnectionsConfig(
                        max_active_downstream_connections=max_connections
                    )
                ),
            ),
        ],
        actions=[
            overload_pb2.OverloadAction(name="envoy.overload_actions.shrink_heap", triggers=[trigger(0.95)]),
            overload_pb2.OverloadAction(
                name="envoy.overload_actions.stop_accepting_requests", triggers=[trigger(0.98)]
            ),
        ],
    )


# Path parameter patterns such as "[a-z0-9-]{1,62}" compile to RE2 programs of a few
# hundred instructions; Envoy refuses programs above 100 unless told otherwise.
RE2_MAX_PROGRAM_SIZE = 5000


def runtime() -> bootstrap_pb2.LayeredRuntime:
    layer = struct_pb2.Struct()
    layer.update(
        {
            "re2.max_program_size.error_level": RE2_MAX_PROGRAM_SIZE,
            "re2.max_program_size.warn_level": RE2_MAX_PROGRAM_SIZE,
        }
    )
    return bootstrap_pb2.LayeredRuntime(
        layers=[
            bootstrap_pb2.RuntimeLayer(name="static", static_layer=layer),
            bootstrap_pb2.RuntimeLayer(name="admin", admin_layer=bootstrap_pb2.RuntimeLayer.AdminLayer()),
        ]
    )


def _inline(
    listener: listener_pb2.Listener,
    routes: Mapping[str, Message],
    scopes: Mapping[str, Message],
    extensions: Mapping[str, Message],
) -> None:
    """Routes, scopes and HTTP filter configurations (ECDS) written into the listener."""
    for chain in listener.filter_chains:
        for f in chain.filters:
            if f.name != HCM_NAME:
                continue
            hcm = hcm_pb2.HttpConnectionManager()
            f.typed_config.Unpack(hcm)
            for http_filter in hcm.http_filters:
                if http_filter.HasField("config_discovery"):
                    http_filter.typed_config.CopyFrom(extensions[http_filter.name].typed_config)  # type: ignore[attr-defined]
            if hcm.HasField("rds"):
                hcm.route_config.CopyFrom(routes[hcm.rds.route_config_name])
            elif hcm.HasField("scoped_routes"):
                scoped = hcm.scoped_routes
                scoped.ClearField("scoped_rds")
                for scope in scopes.values():
                    if scope.route_configuration_name not in routes:  # type: ignore[attr-defined]
                        continue
                    key = scope.key.fragments[0].string_key  # type: ignore[attr-defined]
                    if key != listener.name:
                        continue
                    inline = scoped.scoped_route_configurations_list.scoped_route_configurations.add()
                    inline.CopyFrom(scope)
                    inline.ClearField("route_configuration_name")
                    inline.route_configuration.CopyFrom(routes[scope.route_configuration_name])  # type: ignore[attr-defined]
            f.typed_config.CopyFrom(packed(hcm))


def static_bootstrap(
    gw: ir.Gateway,
    resources: Resources,
    admin: AdminOptions = AdminOptions(),
    node_id: str = "gateway",
    show_secrets: bool = False,
) -> bootstrap_pb2.Bootstrap:
    """Everything inline: what ``dump --bootstrap`` prints and ``envoy -c`` serves.

    Certificates are static secrets; their private keys are read by Envoy from the files the
    policy names, so the printed configuration holds no key (``show_secrets`` inlines them)."""
    boot = bootstrap_pb2.Bootstrap(
        node=base_pb2.Node(id=node_id, cluster="gateway"),
        admin=_admin(admin),
        overload_manager=overload_manager(gw.max_connections, gw.max_heap_bytes),
        layered_runtime=runtime(),
    )
    routes = resources.of(Resources.ROUTE)
    for msg in resources.of(Resources.LISTENER).values():
        lst = boot.static_resources.listeners.add()
        lst.CopyFrom(msg)
        _inline(lst, routes, resources.of(Resources.SCOPED_ROUTE), resources.of(Resources.EXTENSION))
        for chain in lst.filter_chains:
            tls.static_references(chain.transport_socket)
    key_files = {c.name: c.key_file for c in gw.certificates()}
    for secret in resources.of(Resources.SECRET).values():
        assert isinstance(secret, secret_pb2.Secret)
        boot.static_resources.secrets.append(tls.static_secret(secret, key_files, show_secrets))
    if gw.mesh is not None:
        # Workload certificates are issued by the serving control plane; a static configuration
        # gets ones of a CA made for it alone (mesh.ca's when given), keys shown only on request.
        from .workloads import WorkloadIdentities

        issued, _sidecars = WorkloadIdentities().secrets(gw.mesh, gw.secret_groups[0])
        for data in issued.values():
            secret = secret_pb2.Secret.FromString(data)
            boot.static_resources.secrets.append(secret if show_secrets else tls.redacted(secret))
    endpoints = resources.of(Resources.ENDPOINT)
    for msg in resources.of(Resources.CLUSTER).values():
        c = boot.static_resources.clusters.add()
        c.CopyFrom(msg)
        if c.type == cluster_pb2.Cluster.EDS:
            c.ClearField("eds_cluster_config")
            c.type = cluster_pb2.Cluster.STATIC
            cla = endpoints[c.name]
            assert isinstance(cla, endpoint_pb2.ClusterLoadAssignment)
            c.load_assignment.CopyFrom(cla)
        tls.static_references(c.transport_socket)
    return boot


@dataclass(frozen=True)
class XdsOptions:
    node_id: str
    host: str
    port: int
    cluster: str = "gateway"
    delta: bool = False
    insecure: bool = False
    cert_file: str | None = None
    key_file: str | None = None
    ca_file: str | None = None
    server_name: str | None = None
    max_connections: int = 50_000
    max_heap_bytes: int = 1 << 30


def dynamic_bootstrap(options: XdsOptions, admin: AdminOptions = AdminOptions()) -> bootstrap_pb2.Bootstrap:
    """The bootstrap of a gateway Envoy that gets everything else from the xDS server."""
    api_type = config_source_pb2.ApiConfigSource.DELTA_GRPC if options.delta else config_source_pb2.ApiConfigSource.GRPC
    ads_source = config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3
    )
    boot = bootstrap_pb2.Bootstrap(
        node=base_pb2.Node(id=options.node_id, cluster=options.cluster),
        admin=_admin(admin),
        overload_manager=overload_manager(options.max_connections, options.max_heap_bytes),
        layered_runtime=runtime(),
        dynamic_resources=bootstrap_pb2.Bootstrap.DynamicResources(
            ads_config=config_source_pb2.ApiConfigSource(
                api_type=api_type,
                transport_api_version=config_source_pb2.V3,
                set_node_on_first_message_only=True,
                grpc_services=[
                    grpc_service_pb2.GrpcService(
                        envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=XDS_CLUSTER)
                    )
                ],
            ),
            lds_config=ads_source,
            cds_config=ads_source,
        ),
    )
    xds = boot.static_resources.clusters.add(
        name=XDS_CLUSTER,
        type=cluster_pb2.Cluster.STRICT_DNS,
        connect_timeout=duration(1000),
        dns_lookup_family=cluster_pb2.Cluster.V4_PREFERRED,
    )
    xds.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].CopyFrom(
        packed(
            upstream_http.HttpProtocolOptions(
                explicit_http_config=upstream_http.HttpProtocolOptions.ExplicitHttpConfig(
                    http2_protocol_options=protocol_pb2.Http2ProtocolOptions(
                        connection_keepalive=protocol_pb2.KeepaliveSettings(
                            interval=duration(30_000), timeout=duration(5_000)
                        )
                    )
                )
            )
        )
    )
    endpoint = xds.load_assignment.endpoints.add().lb_endpoints.add().endpoint
    endpoint.address.socket_address.address = options.host
    endpoint.address.socket_address.port_value = options.port
    xds.load_assignment.cluster_name = XDS_CLUSTER
    if not options.insecure:
        assert options.cert_file and options.key_file and options.ca_file
        context = tls_pb2.UpstreamTlsContext(
            sni=options.server_name or options.host,
            common_tls_context=tls_pb2.CommonTlsContext(
                alpn_protocols=["h2"],
                tls_certificates=[
                    common_pb2.TlsCertificate(
                        certificate_chain=base_pb2.DataSource(filename=options.cert_file),
                        private_key=base_pb2.DataSource(filename=options.key_file),
                    )
                ],
                validation_context=common_pb2.CertificateValidationContext(
                    trusted_ca=base_pb2.DataSource(filename=options.ca_file)
                ),
            ),
        )
        xds.transport_socket.CopyFrom(
            base_pb2.TransportSocket(name="envoy.transport_sockets.tls", typed_config=packed(context))
        )
    return boot
