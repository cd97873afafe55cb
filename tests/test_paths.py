"""Path templates, parameter patterns and route partitioning, checked without Envoy.

The partition property test is the safety net of the flat-cost route table: whatever the
paths, choosing the longest matching key and trying only that key's list must give the
same answer as trying every path in precedence order.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controlplane import ir
from controlplane.model.paths import (
    ANY_SEGMENT,
    TemplateError,
    build_pattern,
    ecma_to_segment_re2,
    parameter_regex,
    parse_template,
)
from controlplane.translate import routes
from controlplane.translate.routes import partition_keys, partitions


@pytest.mark.parametrize(
    ("pattern", "matches", "rejects"),
    [
        ("^[a-z]+$", ["abc"], ["", "ab1", "a/b"]),
        ("^ord-\\d+$", ["ord-12"], ["ord-", "xord-1"]),
        ("[0-9]{3}", ["123", "a123b"], ["12", "1/23"]),  # unanchored: contains a match
        ("^[^/]+$", ["a.b"], ["a/b"]),
        ("^.+$", ["x"], ["a/b"]),
        ("^\\D+$", ["abc"], ["a1", "a/"]),
        ("^[ -~]+$", ["a b"], ["a/b"]),  # a range spanning '/' is split around it
        ("^(ab)+$", ["abab"], ["aba"]),
        ("^[\\w.-]+$", ["a_b.c-d"], ["a/b", "a b"]),
        ("^(?:red|green)$", ["red"], ["blue", "redgreen"]),
    ],
)
def test_ecma_patterns_become_single_segment_re2(pattern: str, matches: list[str], rejects: list[str]) -> None:
    regex = ecma_to_segment_re2(pattern)
    assert regex is not None
    for value in matches:
        assert re.fullmatch(regex, value), (regex, value)
    for value in rejects:
        assert not re.fullmatch(regex, value), (regex, value)


@pytest.mark.parametrize(
    "pattern", ["^(?!admin).*$", "(a)\\1", "^(?<=x)y$", "(?i)abc", "[", "a{2000}", "^(?:[a-z]{100}){20}$"]
)
def test_patterns_re2_cannot_express_are_refused(pattern: str) -> None:
    assert ecma_to_segment_re2(pattern) is None
    regex, warning = parameter_regex({"type": "string", "pattern": pattern})
    assert regex == ANY_SEGMENT and warning


@pytest.mark.parametrize(
    ("schema", "matches", "rejects"),
    [
        ({"type": "integer"}, ["0", "-5", "42"], ["abc", "1.5", ""]),
        ({"type": "integer", "minimum": 0}, ["0", "7"], ["-1"]),
        ({"type": "integer", "minimum": 1}, ["1", "10", "007"], ["0", "-1", "00"]),
        ({"type": "integer", "minimum": 0, "exclusiveMinimum": True}, ["1"], ["0"]),
        ({"type": "integer", "exclusiveMinimum": 0}, ["1"], ["0"]),
        ({"type": "number"}, ["1", "-1.5", "2e10"], ["1.", "abc"]),
        ({"type": "boolean"}, ["true", "false"], ["yes", "1"]),
        ({"type": "string", "format": "uuid"}, ["123e4567-e89b-12d3-a456-426614174000"], ["123"]),
        ({"type": "string", "enum": ["csv", "json"]}, ["csv"], ["xml", "csvjson"]),
        ({"type": ["integer", "null"]}, ["5"], ["x"]),
        ({"anyOf": [{"type": "integer"}, {"type": "string"}]}, ["5", "slug"], [""]),
        (None, ["anything"], ["", "a/b"]),
    ],
)
def test_parameter_types_narrow_what_a_segment_matches(schema: object, matches: list[str], rejects: list[str]) -> None:
    regex, warning = parameter_regex(schema)  # type: ignore[arg-type]
    assert warning is None
    for value in matches:
        assert re.fullmatch(regex, value), (regex, value)
    for value in rejects:
        assert not re.fullmatch(regex, value), (regex, value)


@pytest.mark.parametrize("template", ["orders", "/a/{", "/a/}", "/a/{}", "/a/{x}{y}", "/a#b"])
def test_malformed_templates_are_refused(template: str) -> None:
    with pytest.raises(TemplateError):
        parse_template(template)


def test_templates_inside_segments_and_custom_verbs() -> None:
    p = build_pattern("/reports/{id}.csv", parse_template("/reports/{id}.csv"), {"id": "[0-9]+"})
    assert p.regex == "/reports/(?:[0-9]+)\\.csv"
    assert re.fullmatch(p.regex, "/reports/12.csv") and not re.fullmatch(p.regex, "/reports/12xcsv")
    v = build_pattern("/v1/{name}:cancel", parse_template("/v1/{name}:cancel"), {})
    assert re.fullmatch(v.regex or "", "/v1/op-1:cancel")
    literal = build_pattern("/v1/accounts:batchGet", parse_template("/v1/accounts:batchGet"), {})
    assert literal.regex is None


def test_precedence_literal_then_mixed_then_parameter() -> None:
    templates = ["/o/{id}", "/o/{id}.csv", "/o/export", "/{x}/export", "/o/{id}/items"]
    patterns = [build_pattern(t, parse_template(t), {}) for t in templates]
    ordered = [p.template for p in sorted(patterns, key=ir.PathPattern.sort_key)]
    assert ordered == ["/o/export", "/o/{id}.csv", "/o/{id}", "/o/{id}/items", "/{x}/export"]


# -- partitions -------------------------------------------------------------------------------

LITERALS = ["a", "b", "ab", "export", "v1", "x.csv"]
PARAM_REGEX = {"s": ANY_SEGMENT, "n": "-?[0-9]+", "e": "(?:a|ab)"}
segment = st.one_of(
    st.sampled_from(LITERALS),
    st.sampled_from(["{s}", "{n}", "{e}", "{s}.csv", "x{n}", "{s}:go"]),
)
templates = st.lists(st.lists(segment, min_size=1, max_size=4), min_size=1, max_size=25)
request_segment = st.one_of(
    st.sampled_from([*LITERALS, "12", "-3", "abc", "1.csv", "x7", "q:go", "", "x"]), st.text("abx01.:-", max_size=4)
)
requests = st.lists(st.lists(request_segment, min_size=1, max_size=5), min_size=1, max_size=40)


def _path_routes(raw: list[list[str]]) -> tuple[ir.PathRoute, ...]:
    seen: dict[str, ir.PathRoute] = {}
    for segs in raw:
        # one name per parameter occurrence, typed by the letter
        counter = iter(range(100))

        def numbered(m: re.Match[str], counter: object = counter) -> str:
            return "{" + m.group(1) + str(next(counter)) + "}"  # type: ignore[call-overload]

        text = "/" + "/".join(re.sub(r"\{(\w)\}", numbered, s) for s in segs)
        segments = parse_template(text)
        regexes = {name: PARAM_REGEX[name[0]] for seg in segments for name in seg.params}
        pattern = build_pattern(text, segments, regexes)
        seen.setdefault(re.sub(r"\{(\w)\d+\}", r"{\1}", text), ir.PathRoute(pattern, ()))
    return tuple(sorted(seen.values(), key=lambda r: r.path.sort_key()))


def _matches(route: ir.PathRoute, path: str) -> bool:
    p = route.path
    return path == p.template if p.regex is None else re.fullmatch(p.regex, path) is not None


@settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(templates, requests, st.booleans(), st.sampled_from([1, 3, 64]))
def test_longest_key_partition_answers_like_the_flat_list(
    raw: list[list[str]], reqs: list[list[str]], with_query: bool, wide: int
) -> None:
    paths = _path_routes(raw)
    saved, routes.WIDE_DIRECTORY = routes.WIDE_DIRECTORY, wide  # small values exercise per-path keys
    try:
        parts = partitions(paths)
    finally:
        routes.WIDE_DIRECTORY = saved
    for segs in reqs:
        path = "/" + "/".join(segs)
        target = path + ("?q=1" if with_query else "")  # the matcher's input includes the query
        expected = next((i for i, r in enumerate(paths) if _matches(r, path)), None)
        keys = [k for k in parts if target.startswith(k)]
        if not keys:
            assert expected is None, (path, paths[expected].path.template if expected is not None else None)
            continue
        chosen = parts[max(keys, key=len)]
        actual = next((i for i in chosen if _matches(paths[i], path)), None)
        assert actual == expected, (path, [paths[i].path.template for i in chosen])


def test_partition_keys_are_directories_unless_a_directory_is_wide() -> None:
    def route(t: str) -> ir.PathRoute:
        return ir.PathRoute(build_pattern(t, parse_template(t), {}), ())

    paths = (route("/orders"), route("/orders/export"), route("/orders/{id}/items"), route("/r/x{id}.csv"))
    assert partition_keys(paths) == ["/", "/orders/", "/orders/", "/r/"]
    wide = tuple(route(f"/w/item{i}") for i in range(routes.WIDE_DIRECTORY + 1))
    assert partition_keys(wide)[:2] == ["/w/item0", "/w/item1"]
