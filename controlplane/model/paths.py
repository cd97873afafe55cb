"""OpenAPI path templates → RE2 expressions Envoy can match.

A path parameter is one segment (``/`` is never part of a value). Its type narrows what it
matches where RE2 can say so: an ``integer`` ``{orderId}`` does not match ``/orders/abc``.
ECMA ``pattern``s are translated through Python's regex parser into RE2 with ``/``
excluded from every character class; constructs RE2 lacks (look-around, back-references)
leave the parameter unconstrained and produce a warning.
"""

from __future__ import annotations

import functools
import re
import re._constants as sre_c  # Python's own regex parser: ECMA patterns are parsed, not guessed
import re._parser as sre_p
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..ir import PathPattern, SegmentKind, new_path_pattern

# Any value of one path segment, except a dot-segment with parameters (".;x", "..;"): Envoy
# decodes "%2e" after it removes dot-segments, so "/files/%2e%2e;" reaches a backend as
# "/files/..;", which Tomcat and Spring (and Envoy itself, sent as is) read as the parent.
ANY_SEGMENT = "(?:[^/.][^/]*|\\.[^/.;][^/]*|\\.\\.[^/;][^/]*)"
ANY_OR_EMPTY = ANY_SEGMENT + "?"  # a string parameter whose schema says ``minLength: 0``
_INTEGER = "-?[0-9]+"
_UNSIGNED = "[0-9]+"
_POSITIVE = "0*[1-9][0-9]*"
_NUMBER = "-?[0-9]+(?:\\.[0-9]+)?(?:[eE][-+]?[0-9]+)?"
_BOOLEAN = "(?:true|false)"
_UUID = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_RE2_SPECIAL = set("\\.+*?()|[]{}^$")
# Characters that may appear raw in a path segment (RFC 3986 pchar, without pct-encoding).
_PCHAR = re.compile(r"^[A-Za-z0-9\-._~!$&'()*+,;=:@]*$")
_PARAM = re.compile(r"\{([^{}/]*)\}")


class TemplateError(ValueError):
    """The path template itself is malformed."""


_RE2_ESCAPES = str.maketrans({c: "\\" + c for c in _RE2_SPECIAL})


def re2_escape(text: str) -> str:
    return text.translate(_RE2_ESCAPES)


@dataclass(frozen=True, slots=True)
class Segment:
    literal_parts: tuple[str, ...]  # texts around parameters: len == len(params) + 1
    params: tuple[str, ...]

    @property
    def kind(self) -> SegmentKind:
        if not self.params:
            return SegmentKind.LITERAL
        if any(self.literal_parts):
            return SegmentKind.MIXED
        return SegmentKind.PARAMETER


# Segments ("svc00", "settings", "{ordersId}") recur in thousands of paths; a Segment is immutable.
_SEGMENTS: dict[str, Segment] = {}
_SEGMENTS_MAX = 100_000


def parse_template(template: str) -> list[Segment]:
    """Split ``/a/{b}.csv`` into segments; raises TemplateError on malformed templates."""
    if not template.startswith("/"):
        raise TemplateError("a path must start with '/'")
    if "?" in template or "#" in template:
        raise TemplateError("a path must not contain '?' or '#'")
    known = _SEGMENTS.get
    segments = []
    for raw in template[1:].split("/"):
        segment = known(raw)
        if segment is None:
            segment = _segment(raw)
            if len(_SEGMENTS) >= _SEGMENTS_MAX:
                _SEGMENTS.clear()
            _SEGMENTS[raw] = segment
        segments.append(segment)
    return segments


def _segment(raw: str) -> Segment:
    """One segment of a template; raises TemplateError."""
    if "{" not in raw and "}" not in raw:
        return Segment((raw,), ())
    parts: list[str] = []
    params: list[str] = []
    pos = 0
    for m in _PARAM.finditer(raw):
        parts.append(raw[pos : m.start()])
        name = m.group(1)
        if not name:
            raise TemplateError("empty parameter name '{}'")
        params.append(name)
        pos = m.end()
    parts.append(raw[pos:])
    for text in parts:
        if "{" in text or "}" in text:
            raise TemplateError(f"unbalanced brace in segment {raw!r}")
    for a, b in zip(parts[1:-1], params[1:], strict=True):
        if a == "" and b:
            raise TemplateError(f"two adjacent parameters in segment {raw!r} cannot be told apart")
    return Segment(tuple(parts), tuple(params))


def template_params(segments: list[Segment]) -> list[str]:
    return [p for s in segments for p in s.params]


def normalized_template(segments: list[Segment]) -> str:
    """The template with parameter names erased: equal for templates that match the same paths."""
    return "/" + "/".join("{}".join(s.literal_parts) for s in segments)


def build_pattern(template: str, segments: list[Segment], param_regex: Mapping[str, str]) -> PathPattern:
    """A PathPattern for ``template``; ``param_regex`` maps parameter names to segment RE2."""
    if not any(s.params for s in segments):
        return new_path_pattern(template, None)
    out = []
    for seg in segments:
        pieces = [re2_escape(seg.literal_parts[0])]
        for name, after in zip(seg.params, seg.literal_parts[1:], strict=True):
            regex = param_regex.get(name, ANY_SEGMENT)
            pieces.append(regex if regex == ANY_SEGMENT else "(?:" + regex + ")")
            pieces.append(re2_escape(after))
        out.append("".join(pieces))
    return new_path_pattern(template, "/" + "/".join(out))


def parameter_regex(schema: Mapping[str, Any] | None) -> tuple[str, str | None]:
    """RE2 for one path parameter value from its (resolved) schema; and a warning, if any."""
    if not isinstance(schema, dict) and not isinstance(schema, Mapping):  # (an ABC check is slow)
        return ANY_SEGMENT, None
    types = schema.get("type")
    if isinstance(types, list):
        concrete = [t for t in types if t != "null"]
        types = concrete[0] if len(concrete) == 1 else None
    enum_values = schema.get("enum")
    if isinstance(enum_values, list) and enum_values and types in (None, "string", "integer", "number"):
        texts = [str(v).lower() if isinstance(v, bool) else str(v) for v in enum_values if v is not None]
        if texts and all(_PCHAR.match(t) and t for t in texts):
            return "(?:" + "|".join(re2_escape(t) for t in sorted(set(texts))) + ")", None
    if types == "integer":
        minimum = schema.get("minimum")
        if isinstance(minimum, (int, float)) and not isinstance(minimum, bool):
            exclusive = schema.get("exclusiveMinimum") is True  # OpenAPI 3.0 / 2.0 boolean form
            if minimum > 0 or (minimum == 0 and exclusive):
                return _POSITIVE, None
            if minimum == 0:
                return _UNSIGNED, None
        if isinstance(schema.get("exclusiveMinimum"), (int, float)) and schema["exclusiveMinimum"] >= 0:
            return _POSITIVE, None  # OpenAPI 3.1 numeric form
        return _INTEGER, None
    if types == "number":
        return _NUMBER, None
    if types == "boolean":
        return _BOOLEAN, None
    if types in (None, "string"):
        # A path parameter is not empty unless its schema says so (an OData key inside a
        # segment: ``(Warehouse='{w}')``).
        any_value = ANY_OR_EMPTY if schema.get("minLength") == 0 else ANY_SEGMENT
        pattern = schema.get("pattern")
        if isinstance(pattern, str):
            translated = ecma_to_segment_re2(pattern)
            if translated is None:
                return any_value, f"pattern {pattern!r} cannot be expressed in RE2; the gateway matches any value"
            return (any_value if translated == ANY_SEGMENT else translated), None
        if schema.get("format") == "uuid":
            return _UUID, None
        return any_value, None
    return ANY_SEGMENT, None


class _Untranslatable(Exception):
    pass


_CATEGORY_IN_CLASS = {
    sre_c.CATEGORY_DIGIT: "0-9",
    sre_c.CATEGORY_WORD: "A-Za-z0-9_",
    sre_c.CATEGORY_SPACE: "\\t\\n\\v\\f\\r ",
}
_CATEGORY_ALONE = {
    sre_c.CATEGORY_DIGIT: "[0-9]",
    sre_c.CATEGORY_WORD: "[A-Za-z0-9_]",
    sre_c.CATEGORY_SPACE: "[\\t\\n\\v\\f\\r ]",
    sre_c.CATEGORY_NOT_DIGIT: "[^0-9/]",
    sre_c.CATEGORY_NOT_WORD: "[^A-Za-z0-9_/]",
    sre_c.CATEGORY_NOT_SPACE: "[^\\t\\n\\v\\f\\r /]",
}


def _class_char(code: int) -> str:
    c = chr(code)
    if c in "\\]^-[":
        return "\\" + c
    if code < 0x20 or code > 0x7E:
        return f"\\x{{{code:x}}}"
    return c


def _emit_class(items: list[tuple[Any, Any]]) -> str:
    if len(items) == 1 and items[0][0] is sre_c.CATEGORY and items[0][1] in _CATEGORY_ALONE:
        return _CATEGORY_ALONE[items[0][1]]
    negate = False
    parts: list[str] = []
    for op, av in items:
        if op is sre_c.NEGATE:
            negate = True
        elif op is sre_c.LITERAL:
            if av == 0x2F:
                continue  # '/' never occurs inside a segment; negated classes get it below
            parts.append(_class_char(av))
        elif op is sre_c.RANGE:
            lo, hi = av
            if not negate and lo <= 0x2F <= hi:  # split around '/'
                if lo <= 0x2E:
                    parts.append(_class_char(lo) + "-" + _class_char(0x2E))
                if hi >= 0x30:
                    parts.append(_class_char(0x30) + "-" + _class_char(hi))
            else:
                parts.append(_class_char(lo) + "-" + _class_char(hi))
        elif op is sre_c.CATEGORY and av in _CATEGORY_IN_CLASS:
            parts.append(_CATEGORY_IN_CLASS[av])
        else:
            raise _Untranslatable(str(op))
    if negate:
        return "[^" + "".join(parts) + "/]"
    if not parts:
        raise _Untranslatable("empty class")
    return "[" + "".join(parts) + "]"


_ATOMIC = (sre_c.LITERAL, sre_c.NOT_LITERAL, sre_c.ANY, sre_c.IN, sre_c.CATEGORY, sre_c.SUBPATTERN, sre_c.BRANCH)


def _emit(items: Any, repeat: int = 1) -> str:
    """RE2 for parsed items; ``repeat`` is the product of the enclosing repetition counts."""
    out = []
    for op, av in items:
        if op is sre_c.LITERAL:
            if av == 0x2F:
                raise _Untranslatable("'/' in a segment pattern")
            c = chr(av)
            out.append("\\" + c if c in _RE2_SPECIAL else (c if 0x20 <= av <= 0x7E else f"\\x{{{av:x}}}"))
        elif op is sre_c.NOT_LITERAL:
            out.append("[^/]" if av == 0x2F else "[^" + _class_char(av) + "/]")
        elif op is sre_c.ANY:
            out.append("[^/]")
        elif op is sre_c.IN:
            out.append(_emit_class(av))
        elif op is sre_c.CATEGORY:
            if av not in _CATEGORY_ALONE:
                raise _Untranslatable(str(av))
            out.append(_CATEGORY_ALONE[av])
        elif op is sre_c.BRANCH:
            out.append("(?:" + "|".join(_emit(b, repeat) for b in av[1]) + ")")
        elif op is sre_c.SUBPATTERN:
            _group, add_flags, del_flags, sub = av
            if add_flags or del_flags:
                raise _Untranslatable("inline flags")
            out.append("(?:" + _emit(sub, repeat) + ")")
        elif op in (sre_c.MAX_REPEAT, sre_c.MIN_REPEAT):
            lo, hi, sub = av
            count = repeat * max(lo, 0 if hi is sre_c.MAXREPEAT else hi, 1)
            if count > 1000:  # RE2 refuses repetition counts (nested ones multiplied) above 1000
                raise _Untranslatable("repeat count above RE2's limit")
            inner = _emit(sub, count)
            atomic = len(sub) == 1 and sub[0][0] in _ATOMIC
            body = inner if atomic else "(?:" + inner + ")"
            if hi is sre_c.MAXREPEAT:
                rep = "*" if lo == 0 else "+" if lo == 1 else f"{{{lo},}}"
            elif lo == 0 and hi == 1:
                rep = "?"
            elif lo == hi:
                rep = f"{{{lo}}}"
            else:
                rep = f"{{{lo},{hi}}}"
            out.append(body + rep + ("?" if op is sre_c.MIN_REPEAT else ""))
        elif op is sre_c.AT and av in (sre_c.AT_BOUNDARY, sre_c.AT_NON_BOUNDARY):
            out.append("\\b" if av is sre_c.AT_BOUNDARY else "\\B")
        else:
            raise _Untranslatable(str(op))
    return "".join(out)


@functools.lru_cache(maxsize=4096)  # a pattern recurs with its parameter in many path items
def ecma_to_segment_re2(pattern: str) -> str | None:
    """Translate an OpenAPI (ECMA-262) ``pattern`` to RE2 matching within one path segment.

    ``pattern`` is unanchored in JSON Schema: the value must *contain* a match. Only
    leading ``^`` and trailing ``$`` anchors are supported; anything else returns None.
    """
    try:
        parsed = sre_p.parse(pattern)
    except (re.error, RecursionError, OverflowError, ValueError):
        return None
    if parsed.state.flags & ~(sre_c.SRE_FLAG_UNICODE):
        return None
    items = list(parsed)
    anchored_start = bool(items) and items[0] == (sre_c.AT, sre_c.AT_BEGINNING)
    anchored_end = bool(items) and items[-1][0] is sre_c.AT and items[-1][1] in (sre_c.AT_END, sre_c.AT_END_STRING)
    if anchored_start:
        items = items[1:]
    if anchored_end and items:
        items = items[:-1]
    try:
        body = _emit(items)
    except (_Untranslatable, RecursionError):
        return None
    if re.fullmatch(python_syntax(body), "") and not (anchored_start and anchored_end):
        return ANY_SEGMENT  # every non-empty value contains an empty match
    prefix = "" if anchored_start else "[^/]*"
    suffix = "" if anchored_end else "[^/]*"
    if not body:
        return None
    regex = f"{prefix}(?:{body}){suffix}" if prefix or suffix else body
    try:  # the emitted subset of RE2 is also Python syntax; a failure here means a bug, not bad input
        re.compile(python_syntax(regex))
    except re.error:  # pragma: no cover
        return None
    return regex


def python_syntax(regex: str) -> str:
    """The emitted RE2 in Python's syntax: RE2's ``\\x{e9}`` escapes are ``\\U000000e9`` there."""
    return re.sub(r"\\x\{([0-9a-f]+)\}", lambda m: f"\\U{int(m.group(1), 16):08x}", regex)
