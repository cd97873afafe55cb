"""Printing data as YAML or JSON, the same way everywhere (CLI, goldens, status)."""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any, TextIO

import yaml


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    """YAML for humans: protobuf's OrderedDicts as plain mappings, key order kept."""


_Dumper.add_representer(OrderedDict, lambda d, v: d.represent_dict(v.items()))


def to_yaml(data: Any) -> str:
    text: str = yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)
    return text


def write(data: Any, fmt: str, out: TextIO) -> None:
    if fmt == "json":
        json.dump(data, out, indent=2)
        out.write("\n")
    else:
        out.write(to_yaml(data))
