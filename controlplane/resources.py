"""The resource table: xDS type URL → resource name → message, plus where each came from."""

from __future__ import annotations

import base64
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from google.protobuf import descriptor, descriptor_pool, json_format, message_factory
from google.protobuf.message import Message
from yaml.events import DocumentEndEvent, DocumentStartEvent, StreamEndEvent, StreamStartEvent

from .documents import gc_paused
from .ir import Operation, PathRoute, Source
from .output import _Events, to_yaml, write

_PREFIX = "type.googleapis.com/"


@dataclass
class Resources:
    LISTENER = _PREFIX + "envoy.config.listener.v3.Listener"
    ROUTE = _PREFIX + "envoy.config.route.v3.RouteConfiguration"
    SCOPED_ROUTE = _PREFIX + "envoy.config.route.v3.ScopedRouteConfiguration"
    CLUSTER = _PREFIX + "envoy.config.cluster.v3.Cluster"
    ENDPOINT = _PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
    # Short names used by the CLI, in the order Envoy wants them over ADS.
    # The configuration of the services beside Envoy: the rate-limit service's by domain, the
    # WAF service's (named "waf").
    RATELIMIT = SERVICES = _PREFIX + "xds.type.v3.TypedStruct"
    SECRET = _PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"
    # HTTP filter configurations served on their own (ECDS): what changes often and is large
    # (reputation feeds' tries) changes without touching its listener.
    EXTENSION = _PREFIX + "envoy.config.core.v3.TypedExtensionConfig"
    TYPES = {
        "clusters": CLUSTER,
        "endpoints": ENDPOINT,
        "listeners": LISTENER,
        "extensions": EXTENSION,
        "scopes": SCOPED_ROUTE,
        "routes": ROUTE,
        "services": SERVICES,
        "secrets": SECRET,
    }

    by_type: dict[str, dict[str, Message]] = field(default_factory=dict)
    sources: dict[tuple[str, str], Source] = field(default_factory=dict)
    # The paths of each route configuration: their operations' route names, path regexes
    # and templates appear in Envoy's errors about routes (``details``).
    path_groups: dict[str, tuple[PathRoute, ...]] = field(default_factory=dict)  # by route configuration
    # Other node groups' own resources (a mesh backend's sidecars), by group.
    groups: dict[str, Resources] = field(default_factory=dict)

    def add(self, type_url: str, message: Message, source: Source, name: str = "") -> None:
        name = name or getattr(message, "name", "") or getattr(message, "cluster_name", "")
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
    with gc_paused():  # hundreds of thousands of fresh dicts and lists for a large bootstrap
        out: dict[str, Any] = _Converter().message(message)
    return out


def _json_format(message: Message) -> dict[str, Any]:
    """What ``to_dict`` gives, by protobuf's ``json_format`` (Python; 3x slower)."""
    out = json_format.MessageToDict(message, preserving_proto_field_name=True)
    _sort_maps(message, out)
    return out


class _Slow(Exception):
    """Something in this message is left to ``json_format``."""


# How each field of a message type becomes JSON: (name, kind, detail). Kinds: the value as
# it is, str() of it (64-bit integers), an enum name, base64 of bytes, a double (finite),
# a message, a map; repeated fields add ``_REPEATED``. None for a message type that
# json_format converts (well-known types, wrappers, float fields, enums with JSON options).
_AS_IS, _STRING, _ENUM, _BYTES, _DOUBLE, _MESSAGE, _MAP = range(7)
_REPEATED = 8
_ANY = "google.protobuf.Any"
_FieldPlan = tuple[str, int, Any]
_PLANS: dict[Any, dict[Any, _FieldPlan] | None] = {}
_CLASSES: dict[str, Any] = {}
_FD = descriptor.FieldDescriptor
_KINDS = {
    _FD.CPPTYPE_STRING: _AS_IS,
    _FD.CPPTYPE_BOOL: _AS_IS,
    _FD.CPPTYPE_INT32: _AS_IS,
    _FD.CPPTYPE_UINT32: _AS_IS,
    _FD.CPPTYPE_INT64: _STRING,
    _FD.CPPTYPE_UINT64: _STRING,
    _FD.CPPTYPE_DOUBLE: _DOUBLE,
    _FD.CPPTYPE_ENUM: _ENUM,
    _FD.CPPTYPE_MESSAGE: _MESSAGE,
}


def _plan_of(desc: Any) -> dict[Any, _FieldPlan] | None:
    try:
        return _PLANS[desc]
    except KeyError:
        plan = _PLANS[desc] = _plan(desc)
        return plan


def _plan(desc: Any) -> dict[Any, _FieldPlan] | None:
    if desc.full_name in _SPECIAL or desc.file.name == "google/protobuf/wrappers.proto":
        return None
    plan: dict[Any, _FieldPlan] = {}
    for fd in desc.fields:
        kind = _KINDS.get(fd.cpp_type)
        detail: Any = None
        if fd.type == _FD.TYPE_BYTES:
            kind = _BYTES
        elif kind == _ENUM:
            if fd.enum_type.full_name == "google.protobuf.NullValue":
                return None
            if any(v.has_options for v in fd.enum_type.values):
                return None
            detail = {v.number: v.name for v in fd.enum_type.values}
        elif kind == _MESSAGE and fd.message_type.GetOptions().map_entry:
            key, value = fd.message_type.fields_by_name["key"], fd.message_type.fields_by_name["value"]
            if key.cpp_type == _FD.CPPTYPE_BOOL:
                return None
            if value.cpp_type != _FD.CPPTYPE_MESSAGE:
                inner = _plan_scalar(value)
                if inner is None:
                    return None
            kind, detail = _MAP, None if value.cpp_type == _FD.CPPTYPE_MESSAGE else value
        if kind is None:
            return None
        if fd.is_repeated and kind != _MAP:
            kind |= _REPEATED
        plan[fd] = (fd.name, kind, detail)
    return plan


def _plan_scalar(fd: Any) -> int | None:
    kind = _KINDS.get(fd.cpp_type)
    return None if kind in (None, _ENUM, _MESSAGE) or fd.type == _FD.TYPE_BYTES else kind


_SPECIAL = {
    "google.protobuf.Duration",
    "google.protobuf.FieldMask",
    "google.protobuf.ListValue",
    "google.protobuf.Struct",
    "google.protobuf.Timestamp",
    "google.protobuf.Value",
}


class _Converter:
    """``json_format.MessageToDict`` with proto field names, and maps sorted, for the
    message types Envoy configurations are made of; the rest is left to json_format."""

    def message(self, msg: Message) -> Any:
        desc = msg.DESCRIPTOR
        if desc.full_name == _ANY:
            return self._any(msg)
        plan = _plan_of(desc)
        if plan is None:
            return _json_format(msg)
        try:
            return self._fields(msg, plan, {})
        except _Slow:
            return _json_format(msg)

    def _any(self, msg: Message) -> Any:
        if not msg.ListFields():
            return {}
        url = msg.type_url  # type: ignore[attr-defined]
        inner = _unpack(msg)
        plan = _plan_of(inner.DESCRIPTOR)
        if plan is None or inner.DESCRIPTOR.full_name == _ANY:
            return _json_format(msg)
        try:
            return self._fields(inner, plan, {"@type": url})
        except _Slow:
            return _json_format(msg)

    def _fields(self, msg: Message, plan: dict[Any, _FieldPlan], out: dict[str, Any]) -> dict[str, Any]:
        for fd, value in msg.ListFields():
            entry = plan.get(fd)
            if entry is None:  # an extension
                raise _Slow
            name, kind, detail = entry
            if kind == _AS_IS:
                out[name] = value
            elif kind == _MESSAGE:
                out[name] = self.message(value)
            elif kind == _AS_IS | _REPEATED:
                out[name] = list(value)
            elif kind == _MESSAGE | _REPEATED:
                out[name] = [self.message(v) for v in value]
            elif kind == _ENUM:
                out[name] = _enum(detail, value)
            elif kind == _STRING:
                out[name] = str(value)
            elif kind == _MAP:
                keys = sorted(value, key=str)
                if detail is None:
                    out[name] = {str(k): self.message(value[k]) for k in keys}
                else:
                    out[name] = {str(k): _scalar(detail, value[k]) for k in keys}
            else:
                out[name] = _other(kind, detail, value)
        return out


class MessageEvents(_Events):
    """YAML events for a message, the same as for ``to_dict`` of it, without the dict."""

    @staticmethod
    def plain(data: Any) -> Any:
        return to_dict(data)

    def _converted(self, msg: Message) -> None:
        value = _json_format(msg)
        self.kept.append(value)  # alive to the end: the walk tells objects apart by id
        self.node(value)

    def document(self, data: Any) -> None:
        self.kept: list[Any] = []
        self.emit(StreamStartEvent())
        self.emit(DocumentStartEvent(explicit=False))
        self.message(data)
        self.emit(DocumentEndEvent(explicit=False))
        self.emit(StreamEndEvent())

    def message(self, msg: Message, url: str | None = None) -> None:
        desc = msg.DESCRIPTOR
        if desc.full_name == _ANY:
            self._any(msg)
            return
        plan = _plan_of(desc)
        fields = msg.ListFields() if plan is not None else []
        if plan is None or not _plain(plan, fields):
            self._converted(msg)
            return
        emit, node = self.emit, self.node
        emit(self.map_start)
        if url is not None:
            node("@type")
            node(url)
        for fd, value in fields:
            name, kind, detail = plan[fd]
            node(name)
            if kind == _AS_IS:
                node(value)
            elif kind == _MESSAGE:
                self.message(value)
            elif kind == _MESSAGE | _REPEATED:
                emit(self.seq_start)
                for v in value:
                    self.message(v)
                emit(self.seq_end)
            elif kind == _MAP:
                emit(self.map_start)
                for k in sorted(value, key=str):
                    node(str(k))
                    if detail is None:
                        self.message(value[k])
                    else:
                        node(_scalar(detail, value[k]))
                emit(self.map_end)
            elif kind & _REPEATED:
                emit(self.seq_start)
                for v in value if kind == _AS_IS | _REPEATED else _other(kind, detail, value):
                    node(v)
                emit(self.seq_end)
            elif kind == _ENUM:
                node(detail[value])
            else:
                node(_other(kind, detail, value))
        emit(self.map_end)

    def _any(self, msg: Message) -> None:
        if not msg.ListFields():
            self.emit(self.map_start)
            self.emit(self.map_end)
            return
        inner = _unpack(msg)
        plan = _plan_of(inner.DESCRIPTOR)
        if plan is None or inner.DESCRIPTOR.full_name == _ANY or not _plain(plan, inner.ListFields()):
            self._converted(msg)
            return
        self.message(inner, msg.type_url)  # type: ignore[attr-defined]


def _plain(plan: dict[Any, _FieldPlan], fields: Sequence[tuple[Any, Any]]) -> bool:
    """No field of this message needs json_format (an extension, an enum number the enum
    does not name, a double that is not finite): checked before its first event."""
    for fd, value in fields:
        entry = plan.get(fd)
        if entry is None:
            return False
        kind = entry[1] & ~_REPEATED
        if kind in (_ENUM, _DOUBLE):
            try:
                _other(entry[1], entry[2], value)
            except _Slow:
                return False
    return True


def _unpack(msg: Message) -> Message:
    url = msg.type_url  # type: ignore[attr-defined]
    cls = _CLASSES.get(url)
    if cls is None:
        name = url.rpartition("/")[2]
        cls = _CLASSES[url] = message_factory.GetMessageClass(descriptor_pool.Default().FindMessageTypeByName(name))
    inner: Message = cls.FromString(msg.value)  # type: ignore[attr-defined]
    return inner


def _enum(names: dict[int, str], number: int) -> str:
    name = names.get(number)
    if name is None:  # a number the enum does not define: json_format decides
        raise _Slow
    return name


def _double(value: float) -> float:
    if not math.isfinite(value):
        raise _Slow
    return value


def _other(kind: int, detail: Any, value: Any) -> Any:
    single = kind & ~_REPEATED
    convert: Callable[[Any], Any]
    if single == _ENUM:
        convert = lambda v: _enum(detail, v)  # noqa: E731
    elif single == _STRING:
        convert = str
    elif single == _BYTES:
        convert = lambda v: base64.b64encode(v).decode("utf-8")  # noqa: E731
    elif single == _DOUBLE:
        convert = _double
    else:
        raise _Slow
    return [convert(v) for v in value] if kind & _REPEATED else convert(value)


def _scalar(fd: Any, value: Any) -> Any:
    kind = _plan_scalar(fd)
    return value if kind == _AS_IS else _other(kind or -1, None, value)


def _sort_struct(out: Any) -> None:
    """A Struct's JSON with every object's keys sorted, nested ones too."""
    if isinstance(out, list):
        for item in out:
            _sort_struct(item)
    elif isinstance(out, dict):
        ordered = {k: out[k] for k in sorted(out)}
        out.clear()
        out.update(ordered)
        for value in out.values():
            _sort_struct(value)


def _sort_maps(message: Message, out: Any) -> None:
    if not isinstance(out, dict):
        return
    if message.DESCRIPTOR.full_name == "google.protobuf.Struct":
        _sort_struct(out)
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


def write_message(message: Message, fmt: str, out: TextIO) -> None:
    """A message as ``to_dict`` gives it. YAML is written straight from the message, with no
    dict of it in between (a third of the memory and of the time of a 50k-operation bootstrap)."""
    if fmt == "json":
        write(to_dict(message), fmt, out)
    else:
        out.write(to_yaml(message, MessageEvents))
