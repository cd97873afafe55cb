"""Small helpers for building Envoy protos (and for the translators that build them)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from envoy.config.core.v3 import base_pb2, config_source_pb2
from google.protobuf import any_pb2, duration_pb2, wrappers_pb2
from google.protobuf.message import Message
from xds.type.matcher.v3 import regex_pb2 as xds_regex_pb2
from xds.type.matcher.v3 import string_pb2 as xds_string_pb2

from .. import ir

R = TypeVar("R")


def per_listener(fn: Callable[[ir.Listener], R]) -> Callable[[ir.Listener], R]:
    """``fn(listener)`` computed once for the last listener passed: several translators ask
    for the same facts of a listener in one compile, each a pass over all its operations."""
    last: list[Any] = [None, None]  # (listener, result); holding it keeps its id from reuse

    @functools.wraps(fn)
    def wrapper(listener: ir.Listener) -> R:
        if last[0] is not listener:
            last[:] = [listener, fn(listener)]
        return last[1]  # type: ignore[no-any-return]

    return wrapper


def packed(message: Message) -> any_pb2.Any:
    """``message`` in an Any, serialized deterministically: ``Any.Pack`` writes map entries
    (a Struct's fields, RBAC policies, JWT providers) in an order that changes from one process
    to the next, and the bytes of a resource are its version."""
    out = any_pb2.Any(type_url=_TYPE_PREFIX + message.DESCRIPTOR.full_name)
    out.value = message.SerializeToString(deterministic=True)
    return out


_TYPE_PREFIX = "type.googleapis.com/"


def duration(ms: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def uint32(value: int) -> wrappers_pb2.UInt32Value:
    return wrappers_pb2.UInt32Value(value=value)


def ads() -> config_source_pb2.ConfigSource:
    """Resources of every type come over the one aggregated stream."""
    return config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3
    )


def header(name: str, value: str, append: bool = False) -> base_pb2.HeaderValueOption:
    action = (
        base_pb2.HeaderValueOption.APPEND_IF_EXISTS_OR_ADD
        if append
        else base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    )
    return base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=name, value=value), append_action=action)


def xds_re2(regex: str) -> xds_string_pb2.StringMatcher:
    """A matcher API (xds) string matcher: the whole value matches the RE2 ``regex``."""
    return xds_string_pb2.StringMatcher(
        safe_regex=xds_regex_pb2.RegexMatcher(google_re2=xds_regex_pb2.RegexMatcher.GoogleRE2(), regex=regex)
    )
