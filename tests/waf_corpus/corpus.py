"""The WAF's development corpus: attacks with every evasion, and benign traffic that looks
dangerous, as :class:`controlplane.waf.inspect.Request` s.

- ``attacks.yaml``: base payloads per family. Each is transformed by every evasion of its
  family (:data:`EVASIONS`; an evasion that does not apply to a payload is skipped) and placed
  in every placement of its family (:data:`PLACEMENTS`).
- ``benign.yaml``: values placed the same ways, values that need an operation's exclusion
  (rich text, code in a documentation field), plus :func:`benign_requests` (whole requests:
  browsers, API clients, uploads, XML, compressed bodies) and, when ``../shared/real-specs``
  is there, every JSON example and string example of the real OpenAPI descriptions.

Everything is deterministic (no randomness without a fixed seed), so that rates are
comparable from run to run. ``python -m tests.waf_corpus.corpus`` prints the counts.
"""

from __future__ import annotations

import base64
import gzip
import json
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from controlplane.waf.inspect import Exclusions, Request

HERE = Path(__file__).resolve().parent
REAL_SPECS = HERE.parents[2] / "shared" / "real-specs"


@dataclass(frozen=True)
class Case:
    kind: str  # "attack" | "benign" | "excluded"
    family: str  # the attack family, or the benign category
    evasion: str
    placement: str
    payload: str  # what was sent, before placement
    request: Request
    exclusions: Exclusions = field(default_factory=Exclusions)


# --- evasions: a payload → what the client sends (None: does not apply) -------------------------

SPECIALS = set("'\"<>;|&`$(){}[]=/\\:#%*,!?@.-+ ~^")


def _each_special(payload: str, encode: Callable[[str, int], str]) -> str | None:
    out = "".join(encode(ch, i) if ch in SPECIALS else ch for i, ch in enumerate(payload))
    return out if out != payload else None


def _html_entity(payload: str, i: int) -> str:
    """One of the spellings a browser decodes; the one without a semicolon only where the
    next character cannot be read as part of the number."""
    ch = payload[i]
    following = payload[i + 1 : i + 2]
    form = i % 4
    if form == 2 and following and following.isalnum():
        form = 0
    if form == 0:
        return f"&#x{ord(ch):x};"
    if form == 1:
        return f"&#{ord(ch)};"
    if form == 2:
        return f"&#x{ord(ch):04X}"
    return {"<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&apos;", "&": "&amp;"}.get(ch, f"&#{ord(ch):05d};")


def url_all(payload: str) -> str | None:
    """Every character percent-encoded, letters included."""
    return "".join(f"%{b:02X}" for b in payload.encode("utf-8"))


def double_url(payload: str) -> str | None:
    once = quote(payload, safe="")
    return quote(once, safe="") if once != payload else None


def percent_u(payload: str) -> str | None:
    return _each_special(payload, lambda ch, _i: f"%u{ord(ch):04X}")


def overlong(payload: str) -> str | None:
    """ASCII punctuation as two-byte overlong UTF-8 (``/`` is ``%c0%af``)."""
    return _each_special(payload, lambda ch, _i: f"%{0xC0 | ord(ch) >> 6:02x}%{0x80 | ord(ch) & 0x3F:02x}")


def html_entities(payload: str) -> str | None:
    return _each_special(payload, lambda _ch, i: _html_entity(payload, i))


def js_escape(payload: str) -> str | None:
    return _each_special(payload, lambda ch, i: f"\\u{ord(ch):04x}" if i % 2 else f"\\x{ord(ch):02x}")


def fullwidth(payload: str) -> str | None:
    """Fullwidth forms (NFKC folds them back): punctuation and letters."""
    out = "".join(chr(ord(ch) + 0xFEE0) if "!" <= ch <= "~" else ch for ch in payload)
    return out if out != payload else None


def mixed_case(payload: str) -> str | None:
    rng = random.Random(payload)
    out = "".join(ch.upper() if rng.random() < 0.5 else ch.lower() for ch in payload)
    return out if out != payload else None


def sql_comments(payload: str) -> str | None:
    out = re.sub(r"\b(union|select|from|where|and|or)\b", r"/*!50000\1*/", payload, flags=re.IGNORECASE)
    out = out.replace(" ", "/**/")
    return out if out != payload else None


def sql_whitespace(payload: str) -> str | None:
    spaces = ["\t", "\n", "\r\n", "\x0b", "\x0c", "\xa0", "  \t "]
    count = 0

    def space(_match: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return spaces[count % len(spaces)]

    out = re.sub(" ", space, payload)
    return out if out != payload else None


def tag_whitespace(payload: str) -> str | None:
    """Inside tags, a slash, tab or newline instead of a space (``<img/src=x/onerror=…>``)."""
    seps = ["/", "\t", "\n", "\x0c"]
    count = 0

    def inside(match: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return match.group(0).replace(" ", seps[count % len(seps)])

    out = re.sub(r"<[^>]*>", inside, payload)
    out = re.sub(r"^(\"|')\s+on", lambda m: m.group(1) + "/on", out)
    return out if out != payload else None


def scheme_tab(payload: str) -> str | None:
    if "javascript" not in payload.lower():
        return None
    return re.sub("javascript", "jav&#x09;as&#10;cript", payload, flags=re.IGNORECASE)


def prefix(payload: str) -> str | None:
    return "red running shoes size 42 " + payload


def quoted_prefix(payload: str) -> str | None:
    """For SQL: only an injection that closes a quote still works after other text (a
    numeric-context one becomes part of the string)."""
    return prefix(payload) if "'" in payload or '"' in payload else None


_PADDING = (
    "This is a long and perfectly ordinary review of the product. The fabric is soft, the fit is "
    "true to size and the colour matches the photos. Shipping took four days. "
)


def padding(payload: str) -> str | None:
    """4 KB of ordinary text first: an inspector that reads only the start misses the rest."""
    text = (_PADDING * (4096 // len(_PADDING) + 1))[:4096]
    return text[: text.rindex(" ") + 1] + payload


def quoted_padding(payload: str) -> str | None:
    return padding(payload) if "'" in payload or '"' in payload else None


_COMMAND = re.compile(
    r"\b(cat|whoami|id|uname|ls|ping|curl|wget|nc|bash|sleep|echo|base64|sh|powershell|python3|rm|type|nslookup|cmd)\b"
)


def shell_quoting(payload: str) -> str | None:
    forms = (
        lambda w: w[0] + "''" + w[1:],
        lambda w: w[0] + "\\" + w[1:],
        lambda w: '"' + w[:1] + '"' + w[1:],
        lambda w: w[0] + "$@" + w[1:],
    )
    count = 0

    def quote_word(match: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return forms[count % len(forms)](match.group(1))

    out = _COMMAND.sub(quote_word, payload)
    return out if out != payload else None


def ifs(payload: str) -> str | None:
    forms = ("${IFS}", "$IFS$9", "${IFS%??}")
    count = 0

    def space(_match: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return forms[count % len(forms)]

    out = re.sub(r"(?<=\S) (?=\S)", space, payload)
    return out if out != payload else None


def newline_separator(payload: str) -> str | None:
    out = re.sub(r"\s*(?:;|&&|\|\||&|\|)\s*", "\n", payload, count=1)
    return out if out != payload and not out.startswith("\n" + "\n") else None


def brace_expansion(payload: str) -> str | None:
    out = re.sub(r"([;&|(`]\s*)([\w/.-]+) ([^\s;|&`)]+)", r"\1{\2,\3}", payload, count=1)
    return out if out != payload else None


def backslashes(payload: str) -> str | None:
    out = payload.replace("/", "\\")
    return out if out != payload else None


def dot_semicolon(payload: str) -> str | None:
    out = payload.replace("../", "..;/")
    return out if out != payload else None


def strip_bypass(payload: str) -> str | None:
    out = payload.replace("../", "....//").replace("..\\", "....\\\\")
    return out if out != payload else None


def nul_suffix(payload: str) -> str | None:
    return payload + "%00.png"


_NESTED_JNDI = (
    "${${lower:j}ndi:",
    "${${::-j}${::-n}${::-d}${::-i}:",
    "${${env:NaN:-j}ndi${env:NaN:-:}",
    "${j${k8s:k5:-ND}i:",
    "${${upper:j}${upper:n}${lower:d}i:",
    "${${lower:jn}di:",
)


def log4j_nested(payload: str) -> str | None:
    if "${jndi:" not in payload.lower():
        return None
    index = sum(map(ord, payload)) % len(_NESTED_JNDI)
    return re.sub(r"\$\{jndi:", lambda _m: _NESTED_JNDI[index], payload, count=1, flags=re.IGNORECASE)


def chain(*steps: Callable[[str], str | None]) -> Callable[[str], str | None]:
    def apply(payload: str) -> str | None:
        out = payload
        for step in steps:
            out = step(out) or out
        return out if out != payload else None

    return apply


COMMON = {
    "plain": lambda p: p,
    "url": url_all,
    "double-url": double_url,
    "percent-u": percent_u,
    "overlong-utf8": overlong,
    "html-entities": html_entities,
    "js-escape": js_escape,
    "unicode-fullwidth": fullwidth,
}
EVASIONS: dict[str, dict[str, Callable[[str], str | None]]] = {
    "sqli": {
        **COMMON,
        "case": mixed_case,
        "sql-comments": sql_comments,
        "whitespace": sql_whitespace,
        "prefix": quoted_prefix,
        "padding": quoted_padding,
        "mixed": chain(mixed_case, sql_comments, double_url),
    },
    "xss": {
        **COMMON,
        "case": mixed_case,
        "whitespace": tag_whitespace,
        "scheme-tab": scheme_tab,
        "prefix": prefix,
        "padding": padding,
        "mixed": chain(mixed_case, tag_whitespace, html_entities, url_all),
    },
    "cmdi": {
        **COMMON,
        "shell-quoting": shell_quoting,
        "ifs": ifs,
        "newline": newline_separator,
        "brace": brace_expansion,
        "prefix": prefix,
        "padding": padding,
        "mixed": chain(shell_quoting, ifs, double_url),
    },
    "traversal": {
        **COMMON,
        "backslash": backslashes,
        "dot-semicolon": dot_semicolon,
        "strip-bypass": strip_bypass,
        "nul-suffix": nul_suffix,
        "mixed": chain(strip_bypass, backslashes, overlong, double_url),
    },
    "exploit": {
        **COMMON,
        "case": mixed_case,
        "log4j-nested": log4j_nested,
        "padding": padding,
        "mixed": chain(log4j_nested, js_escape, double_url),
    },
}

# --- placements: a value → a request -------------------------------------------------------------

_UNSAFE_IN_QUERY = re.compile(r"[\x00-\x20\x7f&#+]|[^\x00-\x7f]")
_UNSAFE_IN_PATH = re.compile(r"[\x00-\x20\x7f/?#]|[^\x00-\x7f]")
_UNSAFE_IN_HEADER = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_UNSAFE_IN_COOKIE = re.compile(r"[\x00-\x20\x7f;,]|[^\x00-\x7f]")


def _escape(pattern: re.Pattern[str], value: str) -> str:
    """Percent-encode only what the transport forbids; a ``%`` an evasion wrote stays."""
    return pattern.sub(lambda m: quote(m.group(0), safe=""), value)


BROWSER = (
    ("host", "shop.example.com"),
    ("user-agent", "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0"),
    ("accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
    ("accept-language", "en-US,en;q=0.5"),
    ("accept-encoding", "gzip, deflate, br"),
)
_HEADERS_FOR_VALUES = ("user-agent", "referer", "x-forwarded-for", "x-customer-note")


def _get(path: str, extra: tuple[tuple[str, str], ...] = ()) -> Request:
    return Request("GET", path, BROWSER + extra)


def _post(body: bytes, content_type: str, path: str = "/api/items") -> Request:
    return Request("POST", path, (*BROWSER, ("content-type", content_type)), body)


def _xml_text(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _multipart(
    fields: list[tuple[str, str | None, str | None, bytes]], boundary: str = "----corpus7MA4YWxkTrZu0gW"
) -> bytes:
    out = b""
    for name, filename, ctype, content in fields:
        out += f"--{boundary}\r\n".encode()
        disposition = f'Content-Disposition: form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += disposition.encode() + b"\r\n"
        if ctype:
            out += f"Content-Type: {ctype}\r\n".encode()
        out += b"\r\n" + content + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


MULTIPART_TYPE = "multipart/form-data; boundary=----corpus7MA4YWxkTrZu0gW"


def place(placement: str, value: str, index: int = 0) -> Request | None:
    """``value`` (what the client means to send, evasions applied) in one place of a request."""
    if placement == "query":
        return _get(f"/search?category=shoes&q={_escape(_UNSAFE_IN_QUERY, value)}&page=1")
    if placement == "path":
        return _get(f"/api/items/{_escape(_UNSAFE_IN_PATH, value)}/reviews")
    if placement == "query-name":
        return _get(f"/api/items?{_escape(_UNSAFE_IN_QUERY, value).replace('=', '%3D')}=x")
    if placement == "query-name-suffix":
        return _get(f"/login?username{_escape(_UNSAFE_IN_QUERY, value).replace('=', '%3D')}=admin&password[$ne]=")
    if placement == "header":
        name = _HEADERS_FOR_VALUES[index % len(_HEADERS_FOR_VALUES)]
        return _get("/api/items", ((name, _escape(_UNSAFE_IN_HEADER, value)),))
    if placement == "cookie":
        return _get(
            "/account", (("cookie", f"session=9f8e7d6c5b4a; pref={_escape(_UNSAFE_IN_COOKIE, value)}; theme=dark"),)
        )
    if placement == "json":
        return _post(json.dumps({"name": "widget", "quantity": 2, "comment": value}).encode(), "application/json")
    if placement == "json-key":
        return _post(json.dumps({"username": "admin", "password": {value: "1"}}).encode(), "application/json")
    if placement == "form":
        body = f"name=widget&quantity=2&comment={_escape(_UNSAFE_IN_QUERY, value)}"
        return _post(body.encode(), "application/x-www-form-urlencoded")
    if placement == "form-name":
        body = f"name=widget&{_escape(_UNSAFE_IN_QUERY, value).replace('=', '%3D')}=x"
        return _post(body.encode(), "application/x-www-form-urlencoded")
    if placement == "multipart":
        body = _multipart([("title", None, None, b"holiday"), ("comment", None, None, value.encode())])
        return _post(body, MULTIPART_TYPE)
    if placement == "multipart-filename":
        filename = value.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")
        body = _multipart([("upload", filename, "image/png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")])
        return _post(body, MULTIPART_TYPE)
    if placement == "xml":
        return _post(
            f"<order><item>widget</item><comment>{_xml_text(value)}</comment></order>".encode(), "application/xml"
        )
    raise ValueError(f"unknown placement {placement}")


PLACEMENTS = {
    "sqli": ("query", "path", "json", "form", "cookie", "header", "multipart", "xml"),
    "xss": ("query", "path", "json", "form", "cookie", "header", "multipart", "xml"),
    "cmdi": ("query", "json", "form", "cookie", "header", "multipart"),
    "traversal": ("query", "path", "json", "form", "cookie", "header", "multipart-filename"),
    "exploit": ("query", "json", "form", "cookie", "header"),
}

# --- XXE: ways to get a document parsed --------------------------------------------------------


def _xxe_cases(document: str) -> Iterator[tuple[str, str, Request]]:
    data = document.encode()
    yield "xml-body", "body", _post(data, "application/xml")
    yield "text-xml", "body", _post(data, "text/xml; charset=utf-8")
    yield "soap-xml", "body", _post(data, "application/soap+xml")
    yield "declared-json", "body", _post(data, "application/json")
    yield "declared-text", "body", _post(data, "text/plain")
    yield "no-content-type", "body", Request("POST", "/api/items", BROWSER, data)
    yield (
        "utf-16",
        "body",
        _post(
            document.replace('version="1.0"?>', 'version="1.0" encoding="UTF-16"?>').encode("utf-16"), "application/xml"
        ),
    )
    yield "in-json", "json", _post(json.dumps({"document": document}).encode(), "application/json")
    yield "in-form", "form", place("form", quote(document, safe="")) or _get("/")
    yield "svg-upload", "multipart", _post(_multipart([("avatar", "me.svg", "image/svg+xml", data)]), MULTIPART_TYPE)
    yield "query-url", "query", _get(f"/import?doc={quote(document, safe='')}")
    yield "double-url", "query", _get(f"/import?doc={quote(quote(document, safe=''), safe='')}")
    yield (
        "gzip-body",
        "body",
        Request(
            "POST",
            "/api/items",
            (*BROWSER, ("content-type", "application/xml"), ("content-encoding", "gzip")),
            gzip.compress(data, mtime=0),
        ),
    )


# --- building the corpus -----------------------------------------------------------------------


def _load(name: str) -> Any:
    return yaml.safe_load((HERE / name).read_text(encoding="utf-8"))


def attacks(source: str = "attacks.yaml") -> list[Case]:
    """The attack requests of ``source`` (``attacks.yaml``, or ``holdout.yaml``)."""
    cases: list[Case] = []
    for family, entries in _load(source).items():
        for number, entry in enumerate(entries):
            payload = entry["payload"]
            if family == "xxe":
                for evasion, placement, request in _xxe_cases(payload):
                    cases.append(Case("attack", family, evasion, placement, payload, request))
                continue
            evasions = EVASIONS[family]
            names = entry.get("evasions") or [e for e in evasions if e != "case" or entry.get("case")]
            if not entry.get("log4j"):
                names = [n for n in names if n != "log4j-nested"]
            if entry.get("anchored"):
                names = [n for n in names if n not in ("prefix", "padding")]
            for evasion in names:
                sent = evasions[evasion](payload) if evasion in evasions else COMMON[evasion](payload)
                if sent is None:
                    continue
                for i, placement in enumerate(entry.get("placements") or PLACEMENTS[family]):
                    request = place(placement, sent, number + i)
                    if request is not None:
                        cases.append(Case("attack", family, evasion, placement, sent, request))
    return cases


VALUE_PLACEMENTS = ("query", "json", "form", "multipart", "xml", "header", "cookie")


def benign(real_specs: bool = True) -> list[Case]:
    data = _load("benign.yaml")
    cases: list[Case] = []
    for category, values in data["values"].items():
        for number, value in enumerate(values):
            value = str(value)
            for i, placement in enumerate(VALUE_PLACEMENTS):
                request = place(placement, value, number + i)
                if request is not None:
                    cases.append(Case("benign", category, "-", placement, value, request))
    for category, request in benign_requests():
        cases.append(Case("benign", category, "-", "request", "", request))
    if real_specs and REAL_SPECS.is_dir():
        cases.extend(real_spec_cases())
    return cases


def excluded() -> list[Case]:
    """Rich text and code in a field the operation excludes (``body:/content``)."""
    cases: list[Case] = []
    for category, spec in _load("benign.yaml")["excluded"].items():
        raw = spec["exclusions"]
        exclusions = Exclusions(
            locations=tuple(raw.get("locations", ())),
            location_families=tuple(tuple(pair) for pair in raw.get("location_families", ())),  # type: ignore[misc]
        )
        for value in spec["values"]:
            body = json.dumps({"title": "Release notes", "content": value}).encode()
            cases.append(
                Case(
                    "excluded", category, "-", "json", value, _post(body, "application/json", "/api/pages"), exclusions
                )
            )
    return cases


def benign_requests() -> Iterator[tuple[str, Request]]:
    """Whole requests of the kinds a gateway sees all day."""
    chrome = (
        ("host", "shop.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/124.0.0.0 Safari/537.36",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8,application/signed-exchange;v=b3;q=0.7",
        ),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("accept-language", "en-GB,en-US;q=0.9,en;q=0.8,de;q=0.7"),
        ("sec-ch-ua", '"Chromium";v="124", "Google Chrome";v="124", "Not-A.Brand";v="99"'),
        ("sec-ch-ua-mobile", "?0"),
        ("sec-ch-ua-platform", '"Windows"'),
        ("sec-fetch-dest", "document"),
        ("sec-fetch-mode", "navigate"),
        ("sec-fetch-site", "same-origin"),
        ("sec-fetch-user", "?1"),
        ("upgrade-insecure-requests", "1"),
        ("referer", "https://shop.example.com/search?q=union+jack+pillow&sort=price_asc"),
        (
            "cookie",
            "_ga=GA1.2.1234567890.1700000000; _gid=GA1.2.987654321.1700000000;"
            " session=eyJ1aWQiOjQyfQ.ZkXz1A.abc-def_ghi; cart=%7B%22items%22%3A%5B42%2C7%5D%7D;"
            " consent=necessary%2Canalytics",
        ),
        ("x-forwarded-for", "203.0.113.7, 10.0.0.2"),
        ("x-request-id", "3f2b6c1e-8a4d-4f3a-9b1c-2d7e6f5a4b3c"),
    )
    paths = [
        "/",
        "/products/red-running-shoes-size-42",
        "/search?q=men%27s+jackets&size=L&color=navy&sort=price_asc&page=2",
        "/search?q=O%27Reilly+%22Learning+SQL%22",
        "/search?q=select+union+drop&category=all",
        "/static/js/app.3f2b6c1e.min.js",
        "/static/css/main.v2.1.0.css",
        "/files/report.final.v2.pdf",
        "/api/v1/users/42/orders?status=shipped&since=2024-01-01T00%3A00%3A00Z",
        "/api/v1/items?ids=1,2,3&fields=name,price,stock",
        "/api/v1/items?filter[name]=widget&filter[price][lt]=50&sort=-created_at",
        "/api/v1/geo?bbox=-0.489,51.28,0.236,51.686&zoom=12",
        "/.well-known/openid-configuration",
        "/oauth/callback?code=SplxlOBeZQQYbYS6WxSbIA&state=af0ifjsldkj%3D%3D",
        "/redirect?next=%2Faccount%2Forders%3Fpage%3D2",
        "/api/v1/docs/getting-started.md",
        "/wiki/Rock_%27n%27_roll",
        "/wiki/C%2B%2B",
        "/blog/2024/02/29/what%E2%80%99s-new-in-v2",
        "/search?q=%E6%97%A5%E6%9C%AC%E8%AA%9E",
        "/track?utm_source=newsletter&utm_medium=email&utm_campaign=spring_sale-2024",
        "/api/v1/reports?from=2024-01-01&to=2024-01-31&group_by=day&tz=Europe%2FLondon",
    ]
    for path in paths:
        yield "browser", Request("GET", path, chrome)
    api = (
        ("host", "api.example.com"),
        ("user-agent", "python-requests/2.31.0"),
        ("accept", "application/json"),
        (
            "authorization",
            "Bearer eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ.eyJzdWIiOiI0MiIsInNjb3BlIjoicmVhZCB3cml0ZSJ9"
            ".c2lnbmF0dXJlLWJ5dGVz",
        ),
        ("x-api-version", "2024-02-01"),
        ("idempotency-key", "8e03978e-40d5-43e8-bc93-6894a57f9324"),
    )
    bodies = [
        {
            "name": "O'Brien's Pub",
            "address": {"street": "12 O'Connell St.", "city": "Dublin"},
            "tags": ["bar", "food & drink"],
        },
        {"query": "select * where price < 50", "note": "saved search"},
        {"title": "Drop table", "description": "A drop-leaf table, solid oak, seats 4-6.", "price": 349.0},
        {"comment": "Use the union of both lists; then select the top 10.", "rating": 4},
        {"items": [{"sku": "SKU-1", "qty": 1}, {"sku": "SKU-2", "qty": 3}], "coupon": None, "gift": True},
        {"email": "jane.o'hara@example.com", "password_hint": "my dog's name", "newsletter": False},
        {
            "search": {
                "and": [{"field": "name", "op": "=", "value": "widget"}, {"field": "price", "op": "<", "value": 10}]
            }
        },
        {"message": "Hi! Can you check order #4521? It's been 10 days :(", "attachments": []},
        {"path": "docs/guide/getting-started.md", "branch": "main", "message": "fix typo in 'select' example"},
        {"script": "backup.sh", "schedule": "0 3 * * *", "enabled": True},
    ]
    for body in bodies:
        yield (
            "api-json",
            Request("POST", "/api/v1/things", (*api, ("content-type", "application/json")), json.dumps(body).encode()),
        )
    yield (
        "api-json",
        Request(
            "PATCH",
            "/api/v1/things/42",
            (*api, ("content-type", "application/merge-patch+json")),
            b'{"name":"Ben & Jerry\'s"}',
        ),
    )
    yield (
        "api-basic-auth",
        Request(
            "GET",
            "/api/v1/me",
            (
                ("host", "api.example.com"),
                ("authorization", "Basic " + base64.b64encode(b"jane.o'hara:p@ss' or 1=1--").decode()),
            ),
        ),
    )
    yield (
        "form",
        Request(
            "POST",
            "/contact",
            (*chrome, ("content-type", "application/x-www-form-urlencoded")),
            b"name=Se%C3%A1n+O%27Sullivan&email=sean%40example.ie&message=I%27d+like+to+select+a+different+size%3B+thanks%21",
        ),
    )
    png = (
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10\x00\x00\x00\x10\x08\x06\x00\x00\x00\x1f\xf3\xffa"
        + bytes(range(256)) * 4
    )
    yield (
        "upload",
        Request(
            "POST",
            "/api/v1/photos",
            (*api, ("content-type", MULTIPART_TYPE)),
            _multipart(
                [
                    ("caption", None, None, b"Me & my dog's first day at the beach"),
                    ("photo", "beach (1).png", "image/png", png),
                ]
            ),
        ),
    )
    yield (
        "upload",
        Request(
            "POST",
            "/api/v1/docs",
            (*api, ("content-type", MULTIPART_TYPE)),
            _multipart(
                [
                    ("meta", None, "application/json", b'{"title":"Q3 report","tags":["finance"]}'),
                    ("file", "q3-report.final.pdf", "application/pdf", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + bytes(200)),
                ]
            ),
        ),
    )
    yield (
        "xml",
        Request(
            "POST",
            "/api/v1/orders",
            (*api, ("content-type", "application/xml")),
            b'<?xml version="1.0" encoding="UTF-8"?><order id="42"><customer>O\'Brien &amp; Sons</customer><note>Leave'
            b' at the back door; ring twice.</note><item sku="SKU-1" qty="2"/></order>',
        ),
    )
    yield (
        "xml",
        Request(
            "POST",
            "/soap",
            (*api, ("content-type", "text/xml; charset=utf-8"), ("soapaction", '"urn:GetQuote"')),
            b'<?xml version="1.0"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><GetQuote><symbol>AT&amp;T</symbol></GetQuote></soap:Body></soap:Envelope>',
        ),
    )
    yield (
        "compressed",
        Request(
            "POST",
            "/api/v1/events",
            (*api, ("content-type", "application/json"), ("content-encoding", "gzip")),
            gzip.compress(
                json.dumps([{"event": "click", "target": "select#size", "ts": i} for i in range(50)]).encode(), mtime=0
            ),
        ),
    )
    yield (
        "text",
        Request(
            "POST",
            "/api/v1/notes",
            (*api, ("content-type", "text/plain; charset=utf-8")),
            b"Shopping list:\n- milk\n- eggs & bacon\n- O'Doyle's bread\n",
        ),
    )
    yield (
        "text",
        Request(
            "POST",
            "/api/v1/logs",
            (*api, ("content-type", "text/plain")),
            b"2024-02-29 12:00:01 INFO GET /api/v1/items 200 12ms\n2024-02-29 12:00:02 WARN retry 1/3\n",
        ),
    )


def real_spec_cases() -> list[Case]:
    """Every JSON example (request and response bodies, as a POST body) and every string
    example (as a query parameter named after its property) of the real OpenAPI files."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    bodies: list[Any] = []
    strings: list[tuple[str, str]] = []

    def walk(node: Any, key: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "example" and isinstance(v, dict | list):
                    bodies.append(v)
                elif k == "example" and isinstance(v, str):
                    if v.lstrip().startswith(("{", "[")):
                        try:
                            bodies.append(json.loads(v))
                            continue
                        except ValueError:
                            pass
                    strings.append((key, v))
                elif k == "examples" and isinstance(v, dict):
                    for ex in v.values():
                        if isinstance(ex, dict) and isinstance(ex.get("value"), dict | list):
                            bodies.append(ex["value"])
                walk(v, str(k))
        elif isinstance(node, list):
            for v in node:
                walk(v, key)

    files = [*sorted(REAL_SPECS.glob("digitalocean/specification/**/*.yml")), REAL_SPECS / "openai" / "openapi.yaml"]
    for path in files:
        if path.is_file():
            walk(yaml.load(path.read_text(encoding="utf-8"), Loader=loader), "")
    cases: list[Case] = []
    seen: set[str] = set()
    for body in bodies:
        raw = json.dumps(body, default=str)
        if raw not in seen:
            seen.add(raw)
            cases.append(
                Case("benign", "real-spec-json", "-", "json", "", _post(raw.encode(), "application/json", "/v2/things"))
            )
    for key, value in strings:
        if f"{key}={value}" not in seen:
            seen.add(f"{key}={value}")
            name = re.sub(r"[^\w.-]", "_", key or "value")
            cases.append(
                Case(
                    "benign",
                    "real-spec-value",
                    "-",
                    "query",
                    value,
                    _get(f"/v2/things?{name}={_escape(_UNSAFE_IN_QUERY, value)}"),
                )
            )
    return cases


if __name__ == "__main__":
    from collections import Counter

    print(Counter(c.family for c in attacks()))
    print(Counter(c.family for c in benign()))
    print(len(excluded()))
