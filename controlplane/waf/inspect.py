"""What the WAF service decides: is there an attack in this request, and where?

:class:`Inspector` takes one HTTP request (method, raw target, headers, whole body) and returns
its :class:`Finding` s: family, rule id, location and a short escaped snippet. It knows nothing
of Envoy or gRPC; the service turns findings into a verdict (detect or prevent).

Where it looks (locations are what exclusions and logs name):

- ``path``: the whole decoded path (traversal spans segments) and each segment that is not
  plain ``[A-Za-z0-9._~-]``.
- ``query:q``: each parameter value; a repeated one is ``query:q[1]``, ``query:q[2]`` …, and
  all of them joined with commas is ``query:q[*]`` (what ASP.NET and others hand the
  application, so ``q=1' or&q=1=1`` cannot split an attack). The name is ``query:q#name``.
- ``header:user-agent`` …: every header except: ``:path``/``:method``/``:scheme`` (the
  request line is inspected as such); ``Cookie`` (each cookie instead: ``cookie:session``,
  name ``cookie:session#name``); ``Authorization`` and ``Proxy-Authorization`` when they are a
  scheme and a token68 credential (their secret part is never inspected nor logged; for Basic
  the user name is, as ``header:authorization:username``; a value of any other shape is
  inspected whole); and a few headers whose value fully matches their strict grammar
  (``Content-Length`` digits, media types in ``Accept``/``Content-Type`` …; see
  ``_PLAIN_HEADERS``), which cannot hold an attack that way and are common enough to matter.
  ``:authority`` is ``header:host``.
- the body by its ``Content-Type`` (and ``Content-Encoding`` gzip/deflate undone first):
  JSON, every string and key (``body:/items/0/name``, key ``body:/items/0/name#key``);
  form (``body:form:comment``); multipart (``body:part:file1`` for a text part,
  ``body:part:file1#name``, ``…#filename``, JSON and XML parts as below under
  ``body:part:meta:/…``; binary parts are not inspected); XML (any DOCTYPE or ENTITY is
  ``xxe``; element text ``body:xml:/order/note``, attributes ``body:xml:/order/@id``);
  anything else as text (``body``). A body that starts like XML is treated as XML whatever it
  declares. A body that does not parse as its type is a ``protocol`` finding, and is then
  inspected as text so its payload still gets its family.

Bounds (:class:`rules.Limits`): a value, header, body, nesting depth, value count, part count
or decoding depth past its limit is a ``protocol.limits`` finding, never a pass.

Exclusions and safe locations are location patterns: a pattern covers the location it names
and everything under it (``query:q`` covers ``query:q[1]`` and ``query:q#name``;
``body:/content`` covers ``body:/content/0``); a ``*`` segment matches any one JSON pointer
token (``body:/items/*/description``). An excluded or safe location is not inspected for
attack families; ``protocol`` findings (limits, NUL, overlong UTF-8) still apply unless the
``protocol`` family itself is excluded.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import contextlib
import ctypes
import functools
import json
import re
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus, unquote_plus, unquote_to_bytes
from xml.parsers import expat

import libinjection
import re2

from .locations import STRUCTURAL, escape_name, pointer_token
from .normalize import NUL, OVERLONG, escape_control, lenient_utf8, normalize, shell_view, sql_view
from .rules import FAMILIES, Limits, Rule, RuleSet

__all__ = ["FAMILIES", "Exclusions", "Finding", "Inspector", "Request"]

SNIPPET_CHARS = 40
_LABEL_CHARS = 40  # a name inside a location (a parameter, key, header) is cut there


@dataclass(frozen=True)
class Finding:
    family: str
    rule: str
    location: str
    snippet: str  # ≤ ~40 characters of the decoded value around the match, control chars escaped


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # the raw request target, query included
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""
    # The body's JSON as the positive model already read it (dicts: it refuses a member named
    # twice), so that it is not parsed again; ``parsed`` says whether it was.
    document: Any = None
    parsed: bool = False


@dataclass(frozen=True)
class Exclusions:
    """Per-operation exceptions from the policy. ``locations`` are not inspected for attack
    families; ``families`` are not looked for anywhere; ``location_families`` pairs
    (location pattern, family) exclude one family at one place (a rich-text field that must
    accept HTML: ``("body:/content", "xss")``); ``rules`` are rule ids not applied."""

    locations: tuple[str, ...] = ()
    families: tuple[str, ...] = ()
    location_families: tuple[tuple[str, str], ...] = ()
    rules: tuple[str, ...] = ()


NO_EXCLUSIONS = Exclusions()
_ATTACK_FAMILIES = frozenset(FAMILIES) - {"protocol"}

# --- location patterns -------------------------------------------------------------------------

_BOUNDARY = "/[#:"  # what may follow a pattern for it to cover a longer location


class _LocationMatcher:
    """Does a location fall under any of some patterns (itself or below it, ``*`` for one
    JSON pointer token)?"""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.exact: set[str] = set()
        self.prefixes: list[str] = []
        wildcards: list[str] = []
        for pattern in patterns:
            if "*" in pattern:
                wildcards.append(re.escape(pattern).replace(r"\*", r"[^/\[#:]*") + r"(?:$|[/\[#:])")
            else:
                self.exact.add(pattern)
                self.prefixes.append(pattern)
        self.wildcard = re.compile("|".join(f"(?:{w})" for w in wildcards)) if wildcards else None

    def __bool__(self) -> bool:
        return bool(self.exact) or self.wildcard is not None

    def covers(self, location: str) -> bool:
        if location in self.exact:
            return True
        for prefix in self.prefixes:
            if location.startswith(prefix) and location[len(prefix)] in _BOUNDARY:
                return True
        return self.wildcard is not None and self.wildcard.match(location) is not None


# --- small helpers -------------------------------------------------------------------------------


def _cut(name: str) -> str:
    """Control characters escaped, and cut (an attack in a parameter name must not reach the
    logs whole through the location)."""
    name = escape_control(name)
    return name if len(name) <= _LABEL_CHARS else name[: _LABEL_CHARS - 1] + "…"


def _label(name: str) -> str:
    """A name as it appears inside a location (:mod:`.locations`), fit for the logs."""
    return _cut(escape_name(name))


@functools.lru_cache(maxsize=4096)
def _pointer_token(token: str) -> str:
    """A JSON member name in a pointer (:mod:`.locations`), fit for the logs."""
    if len(token) <= _LABEL_CHARS and token.isprintable() and STRUCTURAL.isdisjoint(token):
        return token
    return _cut(pointer_token(token))


def snippet(text: str, start: int, end: int) -> str:
    """At most SNIPPET_CHARS of ``text`` around ``[start, end)``, with … where it was cut."""
    if end - start >= SNIPPET_CHARS:
        first, last = start, start + SNIPPET_CHARS
    else:
        pad = (SNIPPET_CHARS - (end - start)) // 2
        first = max(0, start - pad)
        last = min(len(text), first + SNIPPET_CHARS)
        first = max(0, last - SNIPPET_CHARS)
    cut = escape_control(text[first:last])
    return ("…" if first > 0 else "") + cut + ("…" if last < len(text) else "")


def _media_type(value: str) -> tuple[str, dict[str, str]]:
    """``text/plain; charset="utf-8"`` → (``text/plain``, {``charset``: ``utf-8``})."""
    kind, _, rest = value.partition(";")
    params: dict[str, str] = {}
    for item in re.finditer(r'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)', rest):
        key, raw = item.group(1).lower(), item.group(2).strip()
        if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
            # only \" is unescaped: browsers send a file name's backslashes as they are
            raw = raw[1:-1].replace('\\"', '"')
        params.setdefault(key, raw)
    return kind.strip().lower(), params


def _is_json_type(kind: str) -> bool:
    return kind == "application/json" or kind.endswith("+json") or (kind.startswith("application/") and "json" in kind)


def _is_xml_type(kind: str) -> bool:
    return kind in ("application/xml", "text/xml") or kind.endswith("+xml")


_BINARY_PREFIXES = ("image/", "audio/", "video/", "font/")
_BINARY_TYPES = {
    "application/octet-stream",
    "application/pdf",
    "application/zip",
    "application/gzip",
    "application/x-tar",
    "application/x-7z-compressed",
    "application/vnd.ms-excel",
    "application/msword",
    "application/protobuf",
    "application/x-protobuf",
    "application/grpc",
}
_XML_START = re.compile(rb"^(?:\xef\xbb\xbf)?\s*<(?:\?xml|!doctype|!entity)", re.IGNORECASE)
_UTF16_XML = (b"\xff\xfe<\x00", b"\xfe\xff\x00<", b"<\x00?\x00", b"\x00<\x00?")


def _whole(pattern: str) -> Callable[[str], bool]:
    """Does a whole string match ``pattern``? An RE2 set of one: it answers without the
    match positions the ``re2`` module converts to character offsets on every call."""
    matcher = re2.Set.FullMatchSet()
    matcher.Add(pattern)
    matcher.Compile()
    return lambda text: matcher.Match(text) is not None


# A header value fully matching its grammar here holds no attack in any family (no spaces
# between words, no quotes, no ``..``): it is skipped, saving most of a browser's headers.
# (a quoted parameter value without spaces: 'x="1 or 1=1 -- "' is no media type, and is inspected)
_MEDIA_RANGE = r"(?:[\w.+*-]+/[\w.+*-]+|[\w.*-]+)(?:\s*;\s*[\w.-]+=(?:[\w.+/-]+|\"[\w.+/=-]*\"))*"
_MEDIA_LIST = _whole(rf"^\s*{_MEDIA_RANGE}(?:\s*,\s*{_MEDIA_RANGE})*\s*$")
_TOKEN = _whole(r"^[\w-]{1,64}$")
_TOKEN_LIST = _whole(r"^\s*[\w-]+(?:\s*,\s*[\w-]+)*\s*$")
_BRAND = r'"[\w .;()-]{0,64}"\s*;\s*v\s*=\s*"[\d.]{0,16}"'
_PLAIN_HEADERS: dict[str, Callable[[str], bool]] = {
    "content-length": _whole(r"^\d{1,19}$"),
    "accept": _MEDIA_LIST,
    "accept-encoding": _MEDIA_LIST,
    "accept-language": _MEDIA_LIST,
    "accept-charset": _MEDIA_LIST,
    "content-type": _MEDIA_LIST,
    "content-encoding": _TOKEN_LIST,
    "te": _TOKEN_LIST,
    "connection": _TOKEN_LIST,
    "upgrade-insecure-requests": _TOKEN,
    "dnt": _TOKEN,
    "sec-fetch-dest": _TOKEN,
    "sec-fetch-mode": _TOKEN,
    "sec-fetch-site": _TOKEN,
    "sec-fetch-user": _whole(r"^\?[01]$"),
    "sec-ch-ua-mobile": _whole(r"^\?[01]$"),
    "sec-ch-ua-platform": _whole(r'^"[\w .-]{0,32}"$'),
    "sec-ch-ua": _whole(rf"^\s*{_BRAND}(?:\s*,\s*{_BRAND})*\s*$"),
    "x-forwarded-proto": _whole(r"^https?$"),
    "priority": _whole(r"^\s*u=\d(?:\s*,\s*i)?\s*$|^\s*i(?:\s*,\s*u=\d)?\s*$"),
}
_CREDENTIAL = re2.compile(r"^\s*([A-Za-z][\w-]{0,31})\s+([A-Za-z0-9._~+/-]+=*)\s*$")
_SKIPPED_PSEUDO = frozenset({":path", ":method", ":scheme"})
_PLAIN_SEGMENT = _whole(r"^[A-Za-z0-9._~-]*$")
_METHOD = _whole(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,32}$")
_LOG4J_INNER = re2.compile(r"\$\{([^${}]{0,256})\}")
_QUOTES = re.compile(r"['\"`]")
# libinjection fingerprints made of words (and comments) alone ("I like to drop tables from the
# list", "select name from users where id", "path/to/css/*") are prose or a whole statement, not
# an injection into one.
_WORDY_FINGERPRINT = frozenset("nkETtBAc")


# (families, rule ids, locations with every family, (family, locations) pairs) not inspected
_Skips = tuple[frozenset[str], frozenset[str], "_LocationMatcher | None", tuple[tuple[str, "_LocationMatcher"], ...]]


class _Stop(Exception):
    """Enough findings; inspection ends."""


class _XMLRefused(Exception):
    def __init__(self, rule: str, what: str) -> None:
        super().__init__(what)
        self.rule = rule
        self.what = what


# --- the inspector -----------------------------------------------------------------------------


_Match = tuple[Rule, str, int, int]  # rule, the text it matched in, span


class Inspector:
    """Reusable and thread-safe: all request state lives in one ``_Scan`` per call.

    What the rules find in one value depends on the value and its target only, so short
    values (JSON keys, header values, enum-like fields) are remembered, in two generations of
    up to ``cache_size`` each (a value used in the last generation moves to the new one; the
    rest is dropped at the turn): a cache that an attacker can only flush, never poison, since
    an entry is what a full inspection returned."""

    def __init__(self, rules: RuleSet, cache_size: int = 4096) -> None:
        self.rules = rules
        self.limits: Limits = rules.limits
        self._all = rules.view_set("all")
        self._base = rules.view_set("base")
        self._sql = rules.view_set("sql")
        self._shell = rules.view_set("shell")
        self._base_sql = rules.view_set("base+sql")
        self._base_shell = rules.view_set("base+shell")
        self._sqli = rules.detector("libinjection-sqli")
        self._xss = rules.detector("libinjection-xss")
        self._log4j = rules.detector("log4j-lookup")
        self._xml_dtd = rules.detector("xml-dtd")
        self._xinclude = rules.detector("xml-xinclude")
        self._unparsable = rules.detector("body-unparsable")
        self._encoding = rules.detector("content-encoding")
        self._nul = rules.detector("nul-byte")
        self._overlong = rules.detector("overlong-utf8")
        self._limit = rules.detector("limits")
        self._young: dict[tuple[str, str], tuple[_Match, ...]] = {}
        self._old: dict[tuple[str, str], tuple[_Match, ...]] = {}
        self._cache_size = cache_size
        self._skips: dict[tuple[Exclusions, frozenset[str]], _Skips] = {}

    def skips(self, exclusions: Exclusions, safe: frozenset[str]) -> _Skips:
        """What one request does not inspect, compiled once per route's exclusions (the same
        few on every request of an operation)."""
        key = (exclusions, safe)
        skips = self._skips.get(key)
        if skips is None:
            matcher = _LocationMatcher([*exclusions.locations, *safe])
            by_family: dict[str, list[str]] = {}
            for pattern, family in exclusions.location_families:
                by_family.setdefault(family, []).append(pattern)
            skips = (
                frozenset(exclusions.families),
                frozenset(exclusions.rules),
                matcher if matcher else None,
                tuple((family, _LocationMatcher(patterns)) for family, patterns in by_family.items()),
            )
            if len(self._skips) >= 1024:
                self._skips.clear()
            self._skips[key] = skips
        return skips

    def inspect(
        self,
        request: Request,
        exclusions: Exclusions = NO_EXCLUSIONS,
        safe_locations: frozenset[str] = frozenset(),
    ) -> list[Finding]:
        scan = _Scan(self, exclusions, safe_locations)
        with contextlib.suppress(_Stop):
            scan.request(request)
        return scan.findings

    def analyse(self, raw: str, target: str) -> tuple[_Match, ...]:
        """Every rule's match in one value, before exclusions."""
        if not self._cache_size or len(raw) > _CACHED_CHARS:
            return self._analyse(raw, target)
        key = (target, raw)
        found = self._young.get(key)
        if found is None:
            found = self._old.get(key)
            if found is None:
                found = self._analyse(raw, target)
            self._young[key] = found
            if len(self._young) >= self._cache_size:
                # two generations: what was used since the last turn survives the next one
                self._old, self._young = self._young, {}
        return found

    def remember_clean(self, target: str, raw: str) -> None:
        """A value known to hold nothing without running the rules (a header that fits its
        grammar), cached like a full inspection's empty answer."""
        self._young[(target, raw)] = ()
        if len(self._young) >= self._cache_size:
            self._old, self._young = self._young, {}

    def _analyse(self, raw: str, target: str) -> tuple[_Match, ...]:
        found: list[_Match] = []
        passes = self.limits.max_decode_passes
        text, stable, flags = normalize(raw, passes)
        if not stable and self._limit is not None:
            what = f"still changing after {passes} decoding passes"
            found.append((self._limit, what, 0, len(what)))
        if flags & NUL and self._nul is not None:
            found.append((self._nul, text, 0, 0))
        if flags & OVERLONG and self._overlong is not None:
            found.append((self._overlong, text, 0, 0))
        data = text.encode("utf-8")
        if _VIEW_TRIGGERS.search(text) is None:
            _scan(self._all, text, data, target, found)
        else:
            sql, shell = sql_view(text), shell_view(text)
            if sql == text and shell == text:
                _scan(self._all, text, data, target, found)
            elif sql == text:
                _scan(self._base_sql, text, data, target, found)
                _scan(self._shell, shell, None, target, found)
            elif shell == text:
                _scan(self._base_shell, text, data, target, found)
                _scan(self._sql, sql, None, target, found)
            else:
                _scan(self._base, text, data, target, found)
                _scan(self._sql, sql, None, target, found)
                _scan(self._shell, shell, None, target, found)
        if self._sqli is not None and not _ONE_WORD(text):
            at = _sqli_at(data)
            if at is not None:
                at = len(data[:at].decode("utf-8", "ignore"))
                found.append((self._sqli, text, at, at + 1))
        if self._xss is not None and _may_be_html(text) and _LIBINJECTION.xss(data):
            at = min((i for i in (text.find("<"), text.find('"'), text.find("'")) if i >= 0), default=0)
            found.append((self._xss, text, at, at + 1))
        if self._log4j is not None and "${" in text:
            low = text.lower()
            at = _log4j_at(low)
            if at is not None:
                found.append((self._log4j, low, at, at + 2))
        return tuple(found)


_CACHED_CHARS = 256
_ONE_WORD = re.compile(r"\w*", re.ASCII).fullmatch  # one bareword or number: no SQL fingerprint to find


# Characters without which the SQL and shell views are the text itself (comments, other
# whitespace than one space, +, quotes, escapes, expansions, braces, carets).
_VIEW_TRIGGERS = re.compile(r"[^\S ]|  |[-+#/$\\'\"^{`]")


def _scan(patterns: Any, subject: str, data: bytes | None, target: str, found: list[_Match]) -> None:
    """Run one compiled set on ``subject`` (``data`` is its UTF-8, when already encoded)."""
    if patterns is None:
        return
    hits = patterns.matcher.Match(subject if data is None else data)
    if not hits:
        return
    for index in sorted(hits):
        rule = patterns.rules[index]
        if target in rule.targets:
            where = patterns.regexes[index].search(subject)
            start, end = where.span() if where is not None else (0, 0)
            found.append((rule, subject, start, end))


class _Scan:
    def __init__(self, inspector: Inspector, exclusions: Exclusions, safe: frozenset[str]) -> None:
        self.ins = inspector
        self.limits = inspector.limits
        self.findings: list[Finding] = []
        self.seen: set[tuple[str, str]] = set()
        self.values = 0
        self.short = min(_CACHED_CHARS, self.limits.max_value_chars)  # no limit to check below it
        self.skip_families, self.skip_rules, self.skip_locations, self.skip_at = inspector.skips(exclusions, safe)
        self.parsed: tuple[bytes, Any] | None = None  # (the request's body, its JSON as the model read it)

    # --- findings ------------------------------------------------------------------------

    def report(self, rule: Rule | None, location: str, text: str, start: int = 0, end: int = 0) -> None:
        if rule is None or rule.id in self.skip_rules or rule.family in self.skip_families:
            return
        key = (rule.id, location)
        if key in self.seen:
            return
        self.seen.add(key)
        self.findings.append(Finding(rule.family, rule.id, location, snippet(text, start, end)))
        if len(self.findings) >= self.limits.max_findings:
            raise _Stop

    def limit(self, location: str, what: str) -> None:
        self.report(self.ins._limit, location, what, 0, len(what))

    def skipped_families(self, location: str) -> frozenset[str]:
        skipped: set[str] = set()
        if self.skip_locations is not None and self.skip_locations.covers(location):
            skipped |= _ATTACK_FAMILIES
        for family, matcher in self.skip_at:
            if matcher.covers(location):
                skipped.add(family)
        return frozenset(skipped)

    # --- one value -----------------------------------------------------------------------

    def value(self, raw: str, target: str, location: str, max_chars: int = 0) -> None:
        """Run every rule on ``raw`` and report what the exclusions leave. ``target`` is
        what rules' ``targets`` name (path, query, header, cookie, body, name)."""
        if not raw:
            return
        self.values += 1
        if self.values > self.limits.max_values:
            self.limit("request", f"more than {self.limits.max_values} values to inspect")
            raise _Stop
        if len(raw) <= self.short:
            # the common case inline: a value the cache's young generation holds
            found = self.ins._young.get((target, raw))
            if found is None:
                found = self.ins.analyse(raw, target)
        else:
            limit = max_chars or self.limits.max_value_chars
            if len(raw) > limit:
                self.limit(location, f"value of {len(raw)} characters, limit {limit}")
                return
            found = self.ins.analyse(raw, target)
        if not found:
            return
        skipped = self.skipped_families(location) if (self.skip_locations or self.skip_at) else frozenset()
        for rule, subject, start, end in found:
            if rule.family not in skipped:
                self.report(rule, location, subject, start, end)

    # --- the request -----------------------------------------------------------------------

    def request(self, request: Request) -> None:
        if not _METHOD(request.method):
            self.report(self.ins._unparsable, "method", request.method[:40])
        target, _, _fragment = request.path.partition("#")
        path, _, query = target.partition("?")
        self.path(path)
        if query:
            self.params(query, "query", "query:")
        self.headers(request.headers)
        if request.body:
            if request.parsed:
                self.parsed = (request.body, request.document)
            self.body(request.body, _header_map(request.headers))

    def path(self, path: str) -> None:
        self.value(path, "path", "path")
        for segment in path.split("/"):
            if segment and not _PLAIN_SEGMENT(segment):
                self.value(segment, "path", "path")

    def params(self, raw: str, target: str, prefix: str) -> None:
        """``a=1&b=2`` (a query or a form body): each value, each name, and each repeated
        name's values joined."""
        seen: dict[str, list[str]] = {}
        for item in raw.split("&"):
            if not item:
                continue
            name, _, value = item.partition("=")
            name, value = name.replace("+", " "), value.replace("+", " ")
            label = _label(unquote_plus(name, errors="replace"))
            values = seen.setdefault(label, [])
            location = prefix + label + (f"[{len(values)}]" if values else "")
            values.append(value)
            if name:
                self.value(name, "name", location + "#name")
            self.value(value, target, location)
        for label, values in seen.items():
            if len(values) > 1:
                self.value(",".join(values), target, f"{prefix}{label}[*]")

    def headers(self, headers: tuple[tuple[str, str], ...]) -> None:
        if len(headers) > self.limits.max_headers:
            self.limit("header", f"{len(headers)} headers, limit {self.limits.max_headers}")
        young, max_values = self.ins._young, self.limits.max_values
        for name, value in headers:
            lname = name.lower()
            if lname in _SKIPPED_PSEUDO:
                continue
            if len(value) > self.limits.max_header_chars:
                self.limit(f"header:{_label(lname)}", f"header of {len(value)} characters")
                continue
            if lname == "cookie":
                self.cookies(value)
                continue
            if lname in ("authorization", "proxy-authorization"):
                self.credentials(lname, value)
                continue
            if young.get(("header", value)) == () and self.values < max_values:
                self.values += 1  # known clean (a browser sends the same headers on every request)
                continue
            plain = _PLAIN_HEADERS.get(lname)
            if plain is not None and ".." not in value and plain(value):
                if len(value) <= self.short:
                    self.ins.remember_clean("header", value)  # its grammar admits no attack in any family
                continue
            self.value(value, "header", "header:host" if lname == ":authority" else f"header:{_label(lname)}")

    def cookies(self, header: str) -> None:
        seen: dict[str, int] = {}
        for item in header.split(";"):
            name, _, value = item.strip().partition("=")
            if not name and not value:
                continue
            label = _label(name)
            count = seen.get(label, 0)
            seen[label] = count + 1
            location = f"cookie:{label}" + (f"[{count}]" if count else "")
            self.value(name, "name", location + "#name")
            self.value(value.strip(), "cookie", location)

    def credentials(self, lname: str, value: str) -> None:
        shape = _CREDENTIAL.match(value)
        if shape is None:
            self.value(value, "header", f"header:{lname}")
            return
        if shape.group(1).lower() == "basic":
            try:
                decoded = base64.b64decode(shape.group(2), validate=True)
            except (binascii.Error, ValueError):
                self.report(self.ins._unparsable, f"header:{lname}", "Basic credentials are not base64")
                return
            user, _ = lenient_utf8(decoded.partition(b":")[0])
            self.value(user, "header", f"header:{lname}:username")

    # --- bodies ----------------------------------------------------------------------------

    def body(self, body: bytes, headers: dict[str, str]) -> None:
        """A body that cannot be read as it says it is (a charset or encoding no decoder here
        takes) is a finding: never an error, which would hand the request to the failure mode."""
        try:
            self._body(body, headers)
        except (LookupError, UnicodeError, ValueError) as exc:
            self.unparsable(body, "body", f"cannot be read: {str(exc)[:80]}")

    def _body(self, body: bytes, headers: dict[str, str]) -> None:
        limits = self.limits
        if len(body) > limits.max_body_bytes:
            self.limit("body", f"body of {len(body)} bytes, limit {limits.max_body_bytes}")
            return
        encoding = headers.get("content-encoding", "").strip().lower()
        if encoding and encoding != "identity":
            inflated = self.inflate(body, encoding)
            if inflated is None:
                return
            body = inflated
        kind, params = _media_type(headers.get("content-type", ""))
        if _XML_START.match(body) or body.startswith(_UTF16_XML):
            self.xml(body, "body:xml")
        elif _is_json_type(kind):
            self.json(body, "body")
        elif kind == "application/x-www-form-urlencoded":
            charset = params.get("charset", "").strip().lower()
            if charset and charset not in ("utf-8", "utf8", "us-ascii", "ascii"):
                # what a backend that honours the charset decodes: each name and value read in
                # it, then inspected as UTF-8 (an attack in EBCDIC is an attack)
                body = _form_in_utf8(body, charset)
            text, overlong = lenient_utf8(body)
            if overlong:
                self.report(self.ins._overlong, "body", text)
            self.params(text, "body", "body:form:")
        elif kind.startswith("multipart/"):
            self.multipart(body, params.get("boundary", ""))
        elif _is_xml_type(kind):
            self.xml(body, "body:xml")
        elif kind in _BINARY_TYPES or kind.startswith(_BINARY_PREFIXES):
            self.binary(body, "body")
        else:
            self.text(body, params.get("charset", ""), "body")

    def inflate(self, body: bytes, encoding: str) -> bytes | None:
        """Undo gzip/deflate (in the order they were applied, last first), refusing to grow
        past the body limit: a decompression bomb costs the limit, not the memory."""
        limit = self.limits.max_body_bytes
        for coding in reversed([c.strip() for c in encoding.split(",") if c.strip()]):
            if coding in ("gzip", "x-gzip"):
                wbits = 16 + zlib.MAX_WBITS
            elif coding == "deflate":
                wbits = zlib.MAX_WBITS if body[:1] == b"\x78" else -zlib.MAX_WBITS
            elif coding == "identity":
                continue
            else:
                self.report(self.ins._encoding, "body", f"content-encoding {coding} is not inspected")
                return None
            inflater = zlib.decompressobj(wbits)
            try:
                out = inflater.decompress(body, limit + 1)
            except zlib.error as exc:
                self.report(self.ins._encoding, "body", f"{coding}: {exc}")
                return None
            if len(out) > limit or inflater.unconsumed_tail:
                self.limit("body", f"{coding} body inflates past {limit} bytes")
                return None
            if not inflater.eof:
                self.report(self.ins._encoding, "body", f"{coding} stream is truncated")
                return None
            body = out
        return body

    def unparsable(self, body: bytes, location: str, why: str) -> None:
        """A protocol finding, then the body as text so that its payload still gets its
        family (a broken XML body carrying a DOCTYPE is still XXE)."""
        self.report(self.ins._unparsable, location, why)
        self.text(body, "", location)

    def text(self, body: bytes, charset: str, location: str) -> None:
        text = self.decode(body, charset, location)
        if text is not None:
            self.value(text, "body", location, max_chars=self.limits.max_body_bytes)

    def binary(self, body: bytes, location: str) -> None:
        """A binary type is inspected only when it is text after all (a script sent as
        application/octet-stream); real binary data would only give false positives."""
        head = body[:1024]
        if b"\x00" in head:
            return
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return
        self.value(text, "body", location, max_chars=self.limits.max_body_bytes)

    def decode(self, body: bytes, charset: str, location: str) -> str | None:
        charset = charset.strip().lower()
        if charset in ("", "utf-8", "utf8", "us-ascii", "ascii"):
            if body.startswith((b"\xff\xfe", b"\xfe\xff")):
                charset = "utf-16"
            else:
                text, overlong = lenient_utf8(body)
                if overlong:
                    self.report(self.ins._overlong, location, text)
                return text
        try:
            return body.decode(charset)
        except (LookupError, UnicodeError, ValueError) as exc:  # (idna, utf-7, unknown names…)
            self.report(self.ins._unparsable, location, f"charset {charset}: {str(exc)[:80]}")
            return None

    def json(self, body: bytes, location: str) -> None:
        if self.parsed is not None and self.parsed[0] is body:  # the request's own body, read already
            self.walk(self.parsed[1], location)
            return
        try:
            document = json.loads(body, object_pairs_hook=_Pairs)
        except RecursionError:
            self.limit(location, "JSON nested deeper than the parser goes")
            return
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, int digit limits
            self.unparsable(body, location, f"not JSON: {str(exc)[:80]}")
            return
        self.walk(document, location)

    def walk(self, document: Any, location: str) -> None:
        """Every string and key of a JSON document. A value's place (its JSON pointer) is
        written out only when something is found there: most values are clean and already
        known to be (the cache), and spelling out each pointer cost a third of the walk."""
        max_depth, max_values = self.limits.max_depth, self.limits.max_values
        young, short = self.ins._young, self.short
        stack: list[tuple[Any, _Path, int]] = [(document, None, 0)]
        while stack:
            node, path, depth = stack.pop()
            kind = type(node)  # (json.loads makes exactly these types: no subclasses to allow for)
            if kind is str:
                if node and len(node) <= short and young.get(("body", node)) == () and self.values < max_values:
                    self.values += 1  # known clean: what value() would conclude, without the place
                    continue
                self.value(node, "body", _json_location(location, path))
            elif kind is _Pairs or kind is list or kind is dict:
                if depth >= max_depth:
                    self.limit(_json_location(location, path), f"JSON nested deeper than {max_depth}")
                    continue
                children: list[tuple[Any, _Path, int]]
                if kind is not list:
                    children = []
                    for key, child in node.items() if kind is dict else node:
                        child_path: _Path = (path, key)
                        if key and len(key) <= short and young.get(("name", key)) == () and self.values < max_values:
                            self.values += 1
                        else:
                            self.value(key, "name", _json_location(location, child_path) + "#key")
                        children.append((child, child_path, depth + 1))
                else:
                    children = [(child, (path, i), depth + 1) for i, child in enumerate(node)]
                stack.extend(reversed(children))

    def multipart(self, body: bytes, boundary: str) -> None:
        if not boundary:
            self.unparsable(body, "body", "multipart body without a boundary parameter")
            return
        delimiter = b"--" + boundary.encode("latin-1", "replace")
        start = body.find(delimiter)
        if start < 0:
            self.unparsable(body, "body", "multipart body without its boundary")
            return
        pos = start + len(delimiter)
        names: dict[str, int] = {}
        parts = 0
        while True:
            if body.startswith(b"--", pos):
                return  # the close delimiter
            line_end = body.find(b"\n", pos)
            if line_end < 0:
                break
            pos = line_end + 1
            following = body.find(b"\n" + delimiter, pos)
            if following < 0:
                break
            part = body[pos:following]
            if part.endswith(b"\r"):
                part = part[:-1]
            parts += 1
            if parts > self.limits.max_parts:
                self.limit("body", f"more than {self.limits.max_parts} multipart parts")
                return
            self.part(part, names)
            pos = following + 1 + len(delimiter)
        self.unparsable(body[pos:], "body", "multipart body without its close delimiter")

    def part(self, part: bytes, names: dict[str, int]) -> None:
        head_end = part.find(b"\r\n\r\n")
        sep = 4
        if head_end < 0:
            head_end, sep = part.find(b"\n\n"), 2
        if head_end < 0:
            self.report(self.ins._unparsable, "body", "multipart part without a header block")
            return
        head, content = lenient_utf8(part[:head_end])[0], part[head_end + sep :]
        headers: dict[str, str] = {}
        for line in re.split(r"\r?\n", head):
            key, colon, val = line.partition(":")
            if colon:
                headers[key.strip().lower()] = val.strip()
        disposition, dparams = _media_type(headers.get("content-disposition", ""))
        if disposition != "form-data" or "name" not in dparams:
            self.report(self.ins._unparsable, "body", "multipart part without Content-Disposition: form-data; name")
            return
        name = dparams["name"]
        label = _label(name)
        count = names.get(label, 0)
        names[label] = count + 1
        location = f"body:part:{label}" + (f"[{count}]" if count else "")
        self.value(name, "name", location + "#name")
        for key in ("filename", "filename*"):
            if key in dparams:
                filename = dparams[key]
                if key == "filename*":  # RFC 5987: charset'language'percent-encoded
                    filename = filename.split("'", 2)[-1]
                self.value(filename, "body", location + "#filename")
        transfer = headers.get("content-transfer-encoding", "").lower()
        if transfer == "base64":
            try:
                content = base64.b64decode(re.sub(rb"\s+", b"", content), validate=True)
            except (binascii.Error, ValueError):
                self.report(self.ins._unparsable, location, "part is not base64")
                return
        elif transfer == "quoted-printable":
            content = binascii.a2b_qp(content)
        kind, params = _media_type(headers.get("content-type", "text/plain"))
        is_file = "filename" in dparams or "filename*" in dparams
        if _XML_START.match(content) or content.startswith(_UTF16_XML) or _is_xml_type(kind):
            self.xml(content, location + ":xml")
        elif _is_json_type(kind):
            self.json(content, location)
        elif is_file and (kind in _BINARY_TYPES or kind.startswith(_BINARY_PREFIXES)):
            # (a part without a file name is a form field to the backend, whatever its type says)
            self.binary(content, location)
        else:
            self.text(content, params.get("charset", ""), location)

    def xml(self, body: bytes, location: str) -> None:
        ins = self.ins
        parser = expat.ParserCreate(namespace_separator=" ")
        max_depth = self.limits.max_depth
        path: list[str] = []
        texts: list[list[str]] = []
        values: list[tuple[str, str]] = []

        def doctype(*_args: Any) -> None:
            raise _XMLRefused("dtd", "DOCTYPE declaration")

        def entity(*_args: Any) -> None:
            raise _XMLRefused("dtd", "ENTITY declaration")

        def start(name: str, attrs: dict[str, str]) -> None:
            namespace, _, local = name.rpartition(" ")
            if namespace in ("http://www.w3.org/2001/XInclude", "http://www.w3.org/2003/XInclude"):
                raise _XMLRefused("xinclude", f"XInclude element {local}")
            if len(path) >= max_depth:
                raise _XMLRefused("depth", f"XML nested deeper than {max_depth}")
            path.append(_label(local))
            texts.append([])
            element = "/" + "/".join(path)
            for attr, value in attrs.items():
                values.append((value, f"{location}:{element}/@{_label(attr.rpartition(' ')[2])}"))

        def end(_name: str) -> None:
            text = "".join(texts.pop()).strip()
            if text:
                values.append((text, f"{location}:/" + "/".join(path)))
            path.pop()

        def characters(data: str) -> None:
            if texts:
                texts[-1].append(data)

        parser.StartDoctypeDeclHandler = doctype
        parser.EntityDeclHandler = entity
        parser.StartElementHandler = start
        parser.EndElementHandler = end
        parser.CharacterDataHandler = characters
        try:
            parser.Parse(body, True)
        except _XMLRefused as refused:
            if refused.rule == "depth":
                self.limit(location, refused.what)
            else:
                rule = ins._xml_dtd if refused.rule == "dtd" else ins._xinclude
                skipped = self.skipped_families(location) if (self.skip_locations or self.skip_at) else frozenset()
                if "xxe" not in skipped:
                    self.report(rule, location, refused.what)
            self.text(body, "", location)
            return
        except expat.ExpatError as exc:
            self.unparsable(body, location, f"not XML: {exc}")
            return
        for value, where in values:
            self.value(value, "body", where)


# A place in a JSON document, from the root: (parent, member name or index), None at the root.
_Path = tuple[Any, "str | int"] | None


def _json_location(location: str, path: _Path) -> str:
    tokens: list[str] = []
    while path is not None:
        path, token = path
        tokens.append(_pointer_token(token) if isinstance(token, str) else str(token))
    return f"{location}:/{'/'.join(reversed(tokens))}" if tokens else location


def _form_in_utf8(body: bytes, charset: str) -> bytes:
    """A form body in ``charset`` as the same form in UTF-8 (LookupError: no such charset)."""
    codecs.lookup(charset)
    out = []
    for item in body.split(b"&"):
        pieces = [
            quote_plus(unquote_to_bytes(piece.replace(b"+", b" ")).decode(charset, "replace"))
            for piece in item.split(b"=", 1)
        ]
        out.append("=".join(pieces))
    return "&".join(out).encode()


class _Pairs(list[tuple[str, Any]]):
    """A JSON object as its key/value pairs, duplicates kept: a backend that takes the first
    of two equal keys must not see one the inspector never did."""


def _header_map(headers: tuple[tuple[str, str], ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers:
        lname = name.lower()
        out[lname] = f"{out[lname]}, {value}" if lname in out else value
    return out


class _LibInjection:
    """libinjection's C entry points, ``libinjection_sqli`` and ``libinjection_xss``, called
    directly: the Python wrapper builds a dict of every token on each call, which costs more
    than the scan itself (2.7 µs against 1.5 µs for a sentence). Falls back to the wrapper
    where the symbols are not exported."""

    def __init__(self) -> None:
        self._sqli: Any = None
        self._xss: Any = None
        try:
            # PyDLL keeps the GIL: the fingerprint buffer is shared by all threads
            lib = ctypes.PyDLL(libinjection.__file__)
            self._sqli = lib.libinjection_sqli
            self._sqli.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p]
            self._sqli.restype = ctypes.c_int
            self._xss = lib.libinjection_xss
            self._xss.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
            self._xss.restype = ctypes.c_int
        except (OSError, AttributeError):
            self._sqli = self._xss = None
        self._fingerprint = ctypes.create_string_buffer(8)

    def sqli(self, data: bytes) -> str | None:
        """The fingerprint when ``data`` is SQL injection, else None."""
        if self._sqli is not None:
            if self._sqli(data, len(data), self._fingerprint):
                return self._fingerprint.value.decode("ascii", "replace")
            return None
        result = libinjection.is_sql_injection(data.decode("utf-8", "replace"))
        return str(result["fingerprint"]) if result["is_sqli"] else None

    def xss(self, data: bytes) -> bool:
        if self._xss is not None:
            return bool(self._xss(data, len(data)))
        return bool(libinjection.is_xss(data.decode("utf-8", "replace"))["is_xss"])


_LIBINJECTION = _LibInjection()
# A quote to read libinjection again from: not an apostrophe inside a word (it's, O'Brien; an
# injection written so, x'or'1'='1, has other quotes the patterns see), and followed by what
# continues a query after a closed string: an operator, a comment, a parenthesis, a keyword.
_SQL_AFTER_QUOTE = (
    rb"(?=[\s)]*(?:[-#/;=<>|&+!,)]|(?i:or|and|xor|not|is|in|like|rlike|regexp|between|sounds|div|mod"
    rb"|union|select|having|group|order|limit|offset|procedure|into|waitfor|where|from|collate|escape"
    rb"|then|when|else|end|case|as|exec|execute|declare|shutdown|drop|insert|update|delete)\b))"
)
_QUOTE_BYTES = re.compile(rb"(?:(?<![A-Za-z])['\"`]|['\"`](?![A-Za-z]))" + _SQL_AFTER_QUOTE)


def _sqli_at(data: bytes) -> int | None:
    """Where libinjection finds SQL injection (a byte offset): from the start (libinjection
    also reads the value as if inside a quoted string), or from one of the first quotes (an
    injection after prose that has apostrophes of its own)."""
    if _meaningful(_LIBINJECTION.sqli(data)):
        return 0
    tried = 0
    for quote in _QUOTE_BYTES.finditer(data):
        at = quote.start()
        if at == 0:
            continue
        tried += 1
        if tried > 16:
            break
        if _meaningful(_LIBINJECTION.sqli(data[at : at + 512])):
            return at
    return None


def _meaningful(fingerprint: str | None) -> bool:
    return fingerprint is not None and not set(fingerprint) <= _WORDY_FINGERPRINT


def _may_be_html(text: str) -> bool:
    """libinjection finds a tag (``<``) or an attribute (``=``); nothing else."""
    return "<" in text or "=" in text


def _log4j_at(low: str) -> int | None:
    """Resolve Log4j's lookups from the innermost out (``${lower:j}`` is ``j``, ``${::-j}``
    and ``${env:NONE:-j}`` are their default ``j``) until a ``${jndi:`` appears or nothing
    is left to resolve."""
    first = low.find("${")
    found = False

    def resolve(match: Any) -> str:
        nonlocal found
        body = str(match.group(1))
        if body.lstrip().startswith("jndi:"):
            found = True
            return ""
        prefix, colon, rest = body.partition(":")
        if not colon:
            return ""
        if prefix in ("lower", "upper"):
            return rest.upper().lower() if prefix == "upper" else rest
        _, dash, default = body.partition(":-")
        if dash:
            return default
        if prefix == "date":
            return rest.strip("'")
        return ""

    text = low
    for _ in range(16):
        text, count = _LOG4J_INNER.subn(resolve, text)
        if found:
            return first
        if not count or "${" not in text:
            return None
    return first
