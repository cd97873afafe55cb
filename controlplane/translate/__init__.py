"""IR → Envoy resources. One module per feature; this module only assembles them."""

from __future__ import annotations

from .. import ir
from ..resources import Resources
from . import clusters, jwt, listener, mesh, ratelimit, reputation, routes, tls, waf


def translate(gw: ir.Gateway) -> Resources:
    out = Resources()
    for lst in gw.listeners:
        out.add(Resources.LISTENER, listener.listener(gw, lst), lst.source)
        if lst.tls is not None and lst.tls.redirect_port is not None:
            out.add(Resources.LISTENER, listener.redirect_listener(gw, lst), lst.source)
        for config, paths in routes.route_configurations(gw, lst):
            out.add(Resources.ROUTE, config, lst.source)
            out.path_groups[config.name] = paths
        for scope in routes.scope_configurations(lst):
            out.add(Resources.SCOPED_ROUTE, scope, lst.source)
        for extension in reputation.extension_configs(gw, lst):
            out.add(Resources.EXTENSION, extension, reputation.section_source(gw))
    for secret, source in tls.secrets(gw):
        out.add(Resources.SECRET, secret, source)
    config = ratelimit.service_config(gw)
    if config is not None:
        out.add(ratelimit.RESOURCE_TYPE, config, gw.ratelimit_service.source, name=gw.ratelimit_service.domain)  # type: ignore[union-attr]
    waf_config = waf.service_config(gw)
    if waf_config is not None:
        out.add(Resources.SERVICES, waf_config, gw.waf_service.source, name=waf.CONFIG_NAME)  # type: ignore[union-attr]
    for upstream in (
        *gw.upstreams,
        *jwt.jwks_upstreams(gw),
        *ratelimit.service_upstreams(gw),
        *waf.service_upstreams(gw),
    ):
        out.add(Resources.CLUSTER, clusters.cluster(upstream), upstream.source)
        if not upstream.uses_dns:
            out.add(Resources.ENDPOINT, clusters.load_assignment(upstream), upstream.source)
    if gw.mesh is not None:
        for backend in gw.mesh.backends:
            out.groups[backend.group] = mesh.sidecar_resources(gw.mesh, backend)
    return out


__all__ = ["translate"]
