"""The resource table: xDS type URL → resource name → message, plus where each came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from google.protobuf import descriptor_pool, json_format, message_factory
from google.protobuf.message import Message

from .ir import Operation, PathRoute, Source

_PREFIX = "type.googleapis.com/"


@dataclass
class Resources:
    LISTENER = _PREFIX + "envoy.config.listener.v3.Listener"
    ROUTE = _PREFIX + "envoy.config.route.v3.RouteConfiguration"
    SCOPED_ROUTE = _PREFIX + "envoy.config.route.v3.ScopedRouteConfiguration"
    CLUSTER = _PREFIX + "envoy.config.cluster.v3.Cluster"
    ENDPOINT = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
    # Short names used by the CLI, in the order Envoy wants them over ADS.
    TYPES = {"clusters": CLUSTER, "endpoints": ENDPOINT, "listeners": LISTENER, "scopes": SCOPED_ROUTE, "routes": ROUTE}

    by_type: dict[str, dict[str, Message]] = field(default_factory=dict)
    sources: dict[tuple[str, str], Source] = field(default_factory=dict)
    # The paths of each route configuration: their operations' route names, path regexes
    # and templates appear in Envoy's errors about routes (``details``).
    path_groups: dict[str, tuple[PathRoute, ...]] = field(default_factory=dict)  # by route configuration

    def add(self, type_url: str, message: Message, source: Source) -> None:
        name = getattr(message, "name", "") or getattr(message, "cluster_name", "")
        self.by_type.setdefault(type_url, {})[name] = message
        self.sources[(type_url, name)] = source

    def of(self, type_url: str) -> dict[str, Message]:
        return self.by_type.get(type_url, {})

    @property
    def details(self) -> dict[str, list[tuple[str, Source]]]:
        """Finer places inside resources (route names, path regexes) → where they came from,
        so that an error Envoy reports about one route can name the operation."""
        groups = self.path_groups
        ops = (op for name in sorted(groups) for pr in groups[name] for op in pr.operations)
        return {self.ROUTE: [pair for op in ops for pair in operation_details(op)]}


def operation_details(op: Operation) -> list[tuple[str, Source]]:
    return [(needle, op.source) for needle in (op.name, op.path.regex, op.path.template) if needle]


def to_dict(message: Message) -> dict[str, Any]:
    """A message in Envoy's own JSON/YAML form (proto field names, Any as @type).

    Protobuf maps iterate in no fixed order; their keys are sorted so that dumps and
    golden files are stable.
    """
    out = json_format.MessageToDict(message, preserving_proto_field_name=True)
    _sort_maps(message, out)
    return out


def _sort_maps(message: Message, out: Any) -> None:
    if not isinstance(out, dict):
        return
    if message.DESCRIPTOR.full_name == "google.protobuf.Struct":
        ordered = {k: out[k] for k in sorted(out)}
        out.clear()
        out.update(ordered)
        return
    if message.DESCRIPTOR.full_name == "google.protobuf.Any":
        type_name = message.type_url.rpartition("/")[2]  # type: ignore[attr-defined]
        inner = message_factory.GetMessageClass(descriptor_pool.Default().FindMessageTypeByName(type_name))()
        message.Unpack(inner)  # type: ignore[attr-defined]
        _sort_maps(inner, out)
        return
    for fd, value in message.ListFields():
        if fd.message_type is None or fd.name not in out:
            continue
        sub = out[fd.name]
        if fd.message_type.GetOptions().map_entry:
            if isinstance(sub, dict):
                out[fd.name] = sub = {k: sub[k] for k in sorted(sub)}
                if fd.message_type.fields_by_name["value"].message_type is not None:
                    for k, v in value.items():
                        _sort_maps(v, sub.get(str(k)))
        elif fd.is_repeated:
            if isinstance(sub, list):
                for m, d in zip(value, sub, strict=False):
                    _sort_maps(m, d)
        else:
            _sort_maps(value, sub)
