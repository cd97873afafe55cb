"""The ready endpoints of Kubernetes Services, from their EndpointSlices, as EDS resources.

An upstream ``service: orders.shop:8080`` names a Service port (by number or name); the
Service says which name that port has, and each of its EndpointSlices lists addresses,
their readiness and zone, and the target port of each named port. Only ready endpoints
are sent (a terminating or unready pod gets no new requests), grouped by zone (Envoy's
locality, for zone-aware routing and for seeing where traffic goes).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2

from .. import ir

Obj = dict[str, Any]
SERVICE_LABEL = "kubernetes.io/service-name"


class ServiceEndpoints:
    """Services and EndpointSlices as the informers see them (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._services: dict[tuple[str, str], Obj] = {}
        self._slices: dict[tuple[str, str], dict[str, Obj]] = defaultdict(dict)  # (ns, service) → slices
        self.version = 0  # bumped on every change (what the server republishes for)
        # Every republish asks for every Service's assignment while a change touches one: the
        # others' bytes are given again, the very same object, which the snapshot then reuses
        # without hashing it again (at 50 Services of 100 endpoints, rebuilding them all was
        # most of a republish).
        self._changes: dict[tuple[str, str], int] = defaultdict(int)  # (ns, service) → its changes
        self._built: dict[str, tuple[ir.KubeService, int, bytes]] = {}  # cluster → (service, changes, bytes)

    def service(self, event: str, obj: Obj) -> bool:
        meta = obj.get("metadata") or {}
        k = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        with self._lock:
            if event == "DELETED":
                changed = self._services.pop(k, None) is not None
            else:
                changed = self._services.get(k, {}).get("spec") != obj.get("spec")
                self._services[k] = obj
            self.version += changed
            self._changes[k] += changed
            return changed

    def slice(self, event: str, obj: Obj) -> bool:
        meta = obj.get("metadata") or {}
        svc = (meta.get("labels") or {}).get(SERVICE_LABEL)
        if not svc:
            return False
        k, name = (str(meta.get("namespace") or ""), str(svc)), str(meta.get("name") or "")
        with self._lock:
            slices = self._slices[k]
            if event == "DELETED":
                changed = slices.pop(name, None) is not None
            else:
                old = slices.get(name)
                changed = old is None or _content(old) != _content(obj)
                slices[name] = obj
            self.version += changed
            self._changes[k] += changed
            return changed

    def assignment(self, cluster: str, service: ir.KubeService) -> bytes:
        """The ClusterLoadAssignment of ``cluster`` (serialized), the Service's ready endpoints."""
        cla = endpoint_pb2.ClusterLoadAssignment(cluster_name=cluster)
        with self._lock:
            changes = self._changes[(service.namespace, service.name)]
            built = self._built.get(cluster)
            if built is not None and built[0] == service and built[1] == changes:
                return built[2]
            port_name = self._port_name(service)
            by_zone: dict[str, set[tuple[str, int]]] = defaultdict(set)
            for obj in self._slices.get((service.namespace, service.name), {}).values():
                port = next((p.get("port") for p in obj.get("ports") or [] if (p.get("name") or "") == port_name), None)
                if port_name is None or not isinstance(port, int):
                    continue
                for ep in obj.get("endpoints") or []:
                    if (ep.get("conditions") or {}).get("ready") is False:
                        continue
                    for address in ep.get("addresses") or []:
                        by_zone[str(ep.get("zone") or "")].add((str(address), port))
        for zone in sorted(by_zone):
            group = cla.endpoints.add()
            if zone:
                group.locality.CopyFrom(base_pb2.Locality(zone=zone))
            for address, port in sorted(by_zone[zone]):
                group.lb_endpoints.append(
                    endpoint_components_pb2.LbEndpoint(
                        endpoint=endpoint_components_pb2.Endpoint(
                            address=address_pb2.Address(
                                socket_address=address_pb2.SocketAddress(address=address, port_value=port)
                            )
                        )
                    )
                )
        serialized: bytes = cla.SerializeToString(deterministic=True)
        with self._lock:
            self._built[cluster] = (service, changes, serialized)  # a change meanwhile: its count moved on
        return serialized

    def _port_name(self, service: ir.KubeService) -> str | None:
        """The name (``""`` when unnamed) of the Service port the upstream means; None when
        the Service has no such port (or is unknown: a port given by name is taken as is)."""
        if not service.port.isdigit():
            return service.port
        svc = self._services.get((service.namespace, service.name))
        if svc is None:
            return None
        for port in (svc.get("spec") or {}).get("ports") or []:
            if port.get("port") == int(service.port):
                return str(port.get("name") or "")
        return None


def _content(obj: Obj) -> Any:
    return (obj.get("endpoints"), obj.get("ports"))
