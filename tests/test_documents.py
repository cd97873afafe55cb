"""Loading documents: the fast YAML path and PyYAML agree; duplicate keys are reported."""

from __future__ import annotations

from pathlib import Path

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane import compile
from controlplane.documents import _MISSING, _fast_yaml, _Loader

# YAML 1.1 (PyYAML) and 1.2 differ on exotic line breaks (NEL, LS, PS) and control
# characters; descriptions do not rely on them in keys, so they are left out here.
text = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters="\x85\ufeff"),
    max_size=20,
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    text,
    st.sampled_from(["on", "off", "yes", "no", "2020-01-01", "1_000", "0x1F", "~", "null", "True", "12:30"]),
)
documents = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(text, children, max_size=4)),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(documents)
def test_fast_path_and_pyyaml_read_the_same_data(data: object) -> None:
    raw = yaml.safe_dump({"doc": data}, allow_unicode=True).encode()
    fast = _fast_yaml(raw)
    assert fast is not _MISSING
    assert fast == yaml.load(raw, Loader=_Loader)


def test_yaml_12_scalars_on_both_paths() -> None:
    text = b"a: on\nb: yes\nc: 2020-01-01\nd: true\ne: 12\n"
    expected = {"a": "on", "b": "yes", "c": "2020-01-01", "d": True, "e": 12}
    assert _fast_yaml(text) == expected
    assert yaml.load(text + b"f: &x 1\ng: *x\n", Loader=_Loader) == {**expected, "f": 1, "g": 1}


def test_duplicate_keys_are_reported_with_their_line(tmp_path: Path) -> None:
    spec = tmp_path / "api.yaml"
    spec.write_text(
        "openapi: 3.0.3\ninfo: {title: t, version: '1'}\nservers: [{url: 'http://127.0.0.1:9'}]\n"
        "paths:\n  /a:\n    get: {operationId: first}\n  /a:\n    get: {operationId: second}\n"
    )
    result = compile([spec])
    assert result.ok
    (dup,) = [d for d in result.warnings if d.code == "yaml-duplicate-key"]
    assert dup.pointer == "/paths/~1a" and dup.line == 7
    ops = [op.operation_id for lst in result.gateway.listeners for p in lst.paths for op in p.operations]  # type: ignore[union-attr]
    assert ops == ["second"]
