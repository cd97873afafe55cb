"""What the control plane gives the WAF service over xDS: the rules, and the body limit.

One resource named ``waf``: a ``google.protobuf.Any`` holding an ``xds.type.v3.TypedStruct``
whose ``type_url`` is :data:`CONFIG_TYPE` and whose ``value`` reads
``{"rules": "<the rule set, JSON>", "models": "<each operation's positive model, JSON>",
"maxBodyBytes": 1048576, "maxResponseBytes": 8388608, "source": "<policy file>"}``.
A resource that does not read so, or whose rules do not compile, is refused (NACK) and the
last good rules keep serving.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import jsonschema
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from xds.type.v3 import typed_struct_pb2

from ..errors import Diagnostic, InputError
from .model import OperationModel, load_models
from .rules import RuleSet

RESOURCE_TYPE = "type.googleapis.com/xds.type.v3.TypedStruct"
CONFIG_TYPE = "controlplane.dev/waf.v1.Config"
NAME = "waf"


@dataclass(frozen=True)
class Config:
    version: str
    rules: RuleSet
    max_body_bytes: int
    source: str
    models: dict[str, OperationModel] = field(default_factory=dict)  # by operation name
    max_response_bytes: int = 8 << 20  # a masked response larger than this is refused (502)


def rule_set(text: str) -> RuleSet:
    """The rule set the control plane compiled (``WafService.rules``: the rules and the ids the
    policy disables, JSON) as the service runs it."""
    data = json.loads(text)
    rules = RuleSet.from_data(data["rules"])
    for rule_id in data.get("disabled", ()):
        rules = rules.without(rule_id)
    return rules


def decode(version: str, resources: Sequence[Any]) -> Config:
    """The config in a response, or :class:`InputError` saying what is wrong with it."""
    for resource in resources:
        typed = typed_struct_pb2.TypedStruct()
        try:
            if not resource.Unpack(typed):
                raise DecodeError(f"not a TypedStruct: {resource.type_url}")
        except DecodeError as exc:
            raise InputError([Diagnostic(f"cannot decode: {exc}", "waf")]) from exc
        if typed.type_url != CONFIG_TYPE:
            continue
        value = json_format.MessageToDict(typed.value)
        try:
            rules = rule_set(value["rules"])
            max_body = int(value.get("maxBodyBytes", 1 << 20))
            max_response = int(value.get("maxResponseBytes", 8 << 20))
            models = load_models(str(value.get("models", "{}")))
        except (KeyError, TypeError, ValueError, jsonschema.SchemaError) as exc:
            raise InputError([Diagnostic(f"unusable WAF config: {exc}", str(value.get("source", "waf")))]) from exc
        return Config(version, rules, max_body, str(value.get("source", "")), models, max_response)
    raise InputError([Diagnostic(f"no {CONFIG_TYPE} resource named {NAME!r} in the response", "waf")])
