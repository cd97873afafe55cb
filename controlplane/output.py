"""Printing data as YAML or JSON, the same way everywhere (CLI, goldens, status).

``yaml.dump`` with PyYAML's C dumper still represents every value in Python (representer,
resolver, node graph) and only emits in C: 4.2 s of a 10k-operation ``dump --bootstrap``.
Here plain data (dict, list, str, int, float, bool, None) is walked once and handed to
libyaml's emitter as events, with the resolver's verdict remembered per distinct string.
The text is byte for byte what ``yaml.dump`` writes (a test compares them); anything else
(another type, an object reached twice, which PyYAML writes as an anchor) takes
``yaml.dump``.
"""

from __future__ import annotations

import io
import json
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TextIO

import yaml
from yaml.events import (
    DocumentEndEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
    StreamStartEvent,
)
from yaml.nodes import ScalarNode

from .documents import gc_paused

_C_DUMPER = getattr(yaml, "CSafeDumper", None)


class _Dumper(_C_DUMPER or yaml.SafeDumper):  # type: ignore[misc]
    """YAML for humans: protobuf's OrderedDicts as plain mappings, key order kept."""


_Dumper.add_representer(OrderedDict, lambda d, v: d.represent_dict(v.items()))

_OPTIONS: dict[str, Any] = {"sort_keys": False, "default_flow_style": False, "width": 120}

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"


class _Unsupported(Exception):
    """The data holds something only ``yaml.dump`` writes the same way."""


def _pyyaml(data: Any) -> str:
    text: str = yaml.dump(data, Dumper=_Dumper, **_OPTIONS)
    return text


def to_yaml(data: Any, events: type[_Events] | None = None) -> str:
    """``data`` as YAML; ``events`` walks what ``data`` is (plain data by default)."""
    walker = events or _Events
    if _C_DUMPER is None:
        return _pyyaml(walker.plain(data))
    out = io.StringIO()
    dumper = _Dumper(out, **_OPTIONS)
    try:
        with gc_paused():  # the events kept for repeated strings are many young objects
            walker(dumper).document(data)
    except _Unsupported:
        return _pyyaml(walker.plain(data))
    finally:
        dumper.dispose()
    return out.getvalue()


class _Events:
    """The events PyYAML's representer and serializer would produce for ``data``."""

    def __init__(self, dumper: Any):
        self.emit: Callable[[Any], None] = dumper.emit
        self.resolve: Callable[..., str] = dumper.resolve
        self.represent_float: Callable[[float], Any] = dumper.represent_float
        self.strings: dict[str, ScalarEvent] = {}
        # First characters of the texts YAML could read as something else (numbers, booleans,
        # null, dates…): other strings need no resolver to be written plain.
        self.resolved_first = frozenset(dumper.yaml_implicit_resolvers)
        self.ints: dict[int, ScalarEvent] = {}
        self.seen: set[int] = set()
        self.true = self._scalar(_BOOL, "true")
        self.false = self._scalar(_BOOL, "false")
        self.null = self._scalar(_NULL, "null")
        # The representer sets every collection's flow style to default_flow_style (False);
        # libyaml still writes an empty one as {} or [].
        self.map_start = MappingStartEvent(None, None, True, flow_style=False)
        self.map_end = MappingEndEvent()
        self.seq_start = SequenceStartEvent(None, None, True, flow_style=False)
        self.seq_end = SequenceEndEvent()

    @staticmethod
    def plain(data: Any) -> Any:
        """What ``yaml.dump`` is given when this walk cannot do it."""
        return data

    def _scalar(self, tag: str, value: str) -> ScalarEvent:
        # What the serializer computes: is the tag implied by the plain text, by quoted text?
        implicit = (
            self.resolve(ScalarNode, value, (True, False)) == tag,
            self.resolve(ScalarNode, value, (False, True)) == tag,
        )
        return ScalarEvent(None, tag, implicit, value)

    def document(self, data: Any) -> None:
        self.emit(StreamStartEvent())
        self.emit(DocumentStartEvent(explicit=False))
        self.node(data)
        self.emit(DocumentEndEvent(explicit=False))
        self.emit(StreamEndEvent())

    def node(self, value: Any) -> None:
        kind = type(value)
        emit = self.emit
        if kind is str:
            event = self.strings.get(value)
            if event is None:
                if value and value[0] not in self.resolved_first:
                    event = ScalarEvent(None, _STR, (True, True), value)
                else:
                    event = self._scalar(_STR, value)
                self.strings[value] = event
            emit(event)
        elif kind is dict or kind is OrderedDict:
            self._once(value)
            emit(self.map_start)
            node = self.node
            for k, v in value.items():
                node(k)
                node(v)
            emit(self.map_end)
        elif kind is list:
            self._once(value)
            emit(self.seq_start)
            node = self.node
            for v in value:
                node(v)
            emit(self.seq_end)
        elif kind is bool:
            emit(self.true if value else self.false)
        elif kind is int:
            event = self.ints.get(value)
            if event is None:
                event = self.ints[value] = self._scalar(_INT, str(value))
            emit(event)
        elif value is None:
            emit(self.null)
        elif kind is float:
            emit(self._scalar(_FLOAT, self.represent_float(value).value))
        else:
            raise _Unsupported

    def _once(self, value: Any) -> None:
        # PyYAML writes a collection met twice as an anchor and an alias.
        key = id(value)
        if key in self.seen:
            raise _Unsupported
        self.seen.add(key)


def write(data: Any, fmt: str, out: TextIO) -> None:
    """Plain data as JSON or YAML (a protobuf message: ``resources.write_message``)."""
    if fmt == "json":
        # One string, one write: json.dump writes each of its ~10^6 pieces to the stream.
        out.write(json.dumps(data, indent=2))
        out.write("\n")
    else:
        out.write(to_yaml(data))
