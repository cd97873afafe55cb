"""YAML and JSON output: the fast paths write exactly what PyYAML and json_format would."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from google.protobuf import any_pb2, duration_pb2, struct_pb2, wrappers_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane import compile, output
from controlplane.bootstrap import static_bootstrap
from controlplane.resources import MessageEvents, _json_format, to_dict
from tests.conftest import REPO

GOLDEN = Path(__file__).parent / "golden"

# Strings that YAML reads as something else, or that need quoting, escaping or folding.
TRICKY = [
    "",
    " ",
    " leading",
    "trailing ",
    "a: b",
    "a:b",
    "key:",
    ":",
    "# not a comment",
    "a #b",
    "a#b",
    "yes",
    "No",
    "on",
    "OFF",
    "y",
    "n",
    "true",
    "False",
    "null",
    "Null",
    "~",
    "0",
    "-1",
    "1.5",
    "1e3",
    "0x1F",
    "0o17",
    "017",
    "1_000",
    "1:20",
    ".inf",
    "-.inf",
    ".nan",
    "2001-12-14",
    "2001-12-14t21:59:43.10-05:00",
    "*alias",
    "&anchor",
    "!tag",
    "!!str",
    "%directive",
    "@at",
    "`tick`",
    "- item",
    "-",
    "? key",
    "?",
    "|",
    ">",
    "'single'",
    '"double"',
    "{a: 1}",
    "[1, 2]",
    "a, b",
    "---",
    "...",
    "<<",
    "=",
    "line\nbreak",
    "trailing newline\n",
    "\n",
    "tab\there",
    "nul\x00",
    "bell\x07",
    "del\x7f",
    "nbsp\xa0",
    "bom\ufeff",
    "é",
    "日本語",
    "emoji 🎉",
    "\u2028line separator",
    "%REQ(:PATH)%",
    "^/svc00/users007/[^/]+$",
    "x " * 80,
    "word" * 40,
    "a " + "b" * 130,
]

scalars = st.one_of(
    st.sampled_from(TRICKY),
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="ascii"), max_size=150),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
)
keys = st.one_of(st.sampled_from(TRICKY), st.text(max_size=20), st.text(min_size=120, max_size=140))
data = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(keys, children, max_size=5),
    ),
    max_leaves=40,
)


def _pyyaml(value: Any) -> str:
    """The reference: what ``to_yaml`` wrote before it had a fast path."""
    return output._pyyaml(value)


def _same(a: Any, b: Any) -> bool:
    """Equal, NaN included (NaN != NaN)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@settings(max_examples=400, deadline=None)
@given(data)
def test_yaml_is_what_pyyaml_writes_and_reads_back(value: Any) -> None:
    text = output.to_yaml(value)
    assert text == _pyyaml(value)
    assert _same(yaml.safe_load(text), value)


@pytest.mark.parametrize("value", TRICKY)
def test_each_tricky_string_as_key_and_value(value: str) -> None:
    for doc in ({value: value}, [value, {"k": [value]}], value, {"nested": {value: {value: [value]}}}):
        text = output.to_yaml(doc)
        assert text == _pyyaml(doc)
        assert yaml.safe_load(text) == doc


def test_shared_objects_and_other_types_take_pyyaml() -> None:
    shared = {"a": 1}
    for doc in ({"x": shared, "y": shared}, OrderedDict(b=[1, 2], a={"c": None})):
        assert output.to_yaml(doc) == _pyyaml(doc)
    assert "&id001" in output.to_yaml({"x": shared, "y": shared})


def _bootstraps() -> list[tuple[str, Any]]:
    out = []
    for folder in [REPO / "specs", *(p / "input" for p in sorted(GOLDEN.iterdir()) if (p / "input").is_dir())]:
        result = compile([folder])
        assert result.ok, "\n".join(map(str, result.diagnostics))
        assert result.gateway is not None and result.resources is not None
        out.append((folder.parent.name + "/" + folder.name, static_bootstrap(result.gateway, result.resources)))
    return out


BOOTSTRAPS = _bootstraps()


@pytest.mark.parametrize("boot", [b for _n, b in BOOTSTRAPS], ids=[n for n, _b in BOOTSTRAPS])
def test_to_dict_is_json_format_with_sorted_maps(boot: Any) -> None:
    fast = to_dict(boot)
    # Key order matters (it is the order of the printed YAML): compare the texts.
    assert json.dumps(fast) == json.dumps(_json_format(boot))
    assert output.to_yaml(fast) == _pyyaml(fast)
    assert output.to_yaml(fast) == _pyyaml(_json_format(boot))
    # dump --bootstrap: YAML straight from the message, no dict in between
    assert output.to_yaml(boot, MessageEvents) == _pyyaml(_json_format(boot))


def test_to_dict_of_well_known_types_maps_and_odd_values() -> None:
    """The parts left to json_format (Struct, Duration, wrappers, Any of a well-known type,
    NaN) and the ones converted here (maps of messages, enums, 64-bit integers, bytes)."""
    struct = struct_pb2.Struct()
    struct.update({"z": 1, "a": {"y": [1, "two", None, True], "b": "c"}})
    packed_duration = any_pb2.Any()
    packed_duration.Pack(duration_pb2.Duration(seconds=3, nanos=500_000_000))
    cluster = cluster_pb2.Cluster(
        name="c",
        type=cluster_pb2.Cluster.STRICT_DNS,
        connect_timeout=duration_pb2.Duration(seconds=1),
        per_connection_buffer_limit_bytes=wrappers_pb2.UInt32Value(value=32768),
        metadata=base_pb2.Metadata(
            filter_metadata={"zeta": struct, "alpha": struct},
            typed_filter_metadata={"x": packed_duration},
        ),
        lb_subset_config=cluster_pb2.Cluster.LbSubsetConfig(default_subset=struct),
        dns_refresh_rate=duration_pb2.Duration(seconds=5),
    )
    cluster.typed_extension_protocol_options["b"].CopyFrom(packed_duration)
    cluster.typed_extension_protocol_options["a"].Pack(wrappers_pb2.StringValue(value="v"))
    cluster.load_balancing_policy.policies.add().typed_extension_config.name = "p"
    cluster.common_lb_config.healthy_panic_threshold.value = float("nan")
    cluster.max_requests_per_connection.value = 7
    cluster.upstream_bind_config.source_address.address = "::"
    assert json.dumps(to_dict(cluster)) == json.dumps(_json_format(cluster))
    assert output.to_yaml(cluster, MessageEvents) == _pyyaml(_json_format(cluster))
    listed = list(to_dict(cluster)["metadata"]["filter_metadata"])
    assert listed == ["alpha", "zeta"]
