"""The ``cors`` route setting: which browser origins may call an operation, read and checked.

An origin is what a browser sends in ``Origin``: ``scheme://host[:port]``, lower case, the
default port left out, never a path. The policy writes exact origins, patterns whose first
host label is ``*`` (one DNS label, as in a wildcard certificate: ``https://*.example.com``
allows ``https://app.example.com``, not ``https://a.b.example.com`` nor
``https://example.com``), or ``*`` (any origin, refused with credentials). Patterns become
RE2 expressions that Envoy matches against the whole header value (its string matchers are
anchored), and that :func:`origin_allowed` matches the same way.

What is not a browser's origin would never match: it is an error (file, line, pointer), not a
setting that silently allows nothing.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

from . import ir
from .errors import Diagnostics
from .model import policy as pol
from .model.paths import re2_escape

DEFAULT_ALLOW_HEADERS = ("authorization", "content-type")
DEFAULT_MAX_AGE_S = 600
ANY = "any"  # the kind of the origin "*"
# one DNS label, as the pattern's "*" matches it (RFC 1123: letters, digits, inner hyphens)
LABEL_RE2 = "[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
_ORIGIN = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<host>\[[0-9a-f:.]+\]|[^/:?#@\[\]]+)(?::(?P<port>[0-9]+))?")
_LABEL = re.compile(LABEL_RE2 + "$")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9a-z-]+$")  # RFC 9110 token (a header name or a method)
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class Setting:
    """A checked ``cors`` setting: the IR every operation it reaches shares, and the methods
    it applies to (None: every method)."""

    cors: ir.Cors
    methods: tuple[str, ...] | None


def _origin(text: str, credentials: bool, file: str, ptr: str, diags: Diagnostics) -> tuple[str, str] | None:
    """``(kind, value)`` of one ``allowOrigins`` entry, or None after reporting why it is wrong."""
    if text == "*":
        if credentials:
            diags.error(
                "'*' (any origin) cannot go with allowCredentials: true: every site on the web could call with "
                "the user's cookies (browsers refuse it too); list the origins",
                file,
                ptr,
                "cors-origin",
            )
            return None
        return ANY, "*"
    if text.lower() == "null":
        diags.error(
            "'null' is the origin of sandboxed frames, file: pages and redirects: allowing it allows any of them",
            file,
            ptr,
            "cors-origin",
        )
        return None
    lowered = text.lower()
    m = _ORIGIN.fullmatch(lowered)
    if m is None:
        whole = _ORIGIN.match(lowered)
        hint = f": write {whole.group(0)!r}" if whole is not None and whole.group("scheme") in _DEFAULT_PORTS else ""
        diags.error(
            f"{text!r} is not an origin: browsers send scheme://host[:port], without a path, query or user{hint}",
            file,
            ptr,
            "cors-origin",
        )
        return None
    scheme, host, port = m.group("scheme"), m.group("host"), m.group("port")
    if scheme not in _DEFAULT_PORTS:
        diags.error(f"{text!r}: the scheme of a web origin is http or https", file, ptr, "cors-origin")
        return None
    if port is not None and (int(port) == _DEFAULT_PORTS[scheme] or not 0 < int(port) < 65536 or port[0] == "0"):
        shown = f"{scheme}://{host}"
        why = (
            f"browsers send {shown!r} (the default port is left out)"
            if int(port) == _DEFAULT_PORTS[scheme]
            else "a bad port"
        )
        diags.error(f"{text!r}: {why}", file, ptr, "cors-origin")
        return None
    suffix = f":{port}" if port is not None else ""
    labels = host.split(".")
    if "*" in host:
        if labels[0] != "*" or any("*" in label for label in labels[1:]):
            diags.error(
                f"{text!r}: '*' stands only for the whole first label of the host ('https://*.example.com')",
                file,
                ptr,
                "cors-origin",
            )
            return None
        if len(labels) < 3 or not all(_LABEL.match(label) for label in labels[1:]):
            diags.error(
                f"{text!r}: '*.' must be followed by a domain of at least two labels (not a top-level domain)",
                file,
                ptr,
                "cors-origin",
            )
            return None
        return "regex", re2_escape(f"{scheme}://") + LABEL_RE2 + re2_escape("." + ".".join(labels[1:]) + suffix)
    if not _is_host(host):
        diags.error(f"{text!r}: {host!r} is not a host name or address", file, ptr, "cors-origin")
        return None
    return "exact", f"{scheme}://{host}{suffix}"


def _is_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host[1:-1] if host.startswith("[") else host)
        return True
    except ValueError:
        pass
    return not host.startswith("[") and all(_LABEL.match(label) for label in host.split("."))


def _names(values: list[str], credentials: bool, file: str, ptr: str, diags: Diagnostics, what: str) -> tuple[str, ...]:
    out = []
    for i, value in enumerate(values):
        name = value.lower()
        if name == "*" and credentials:
            diags.error(
                f"'*' in {what} cannot go with allowCredentials: true (browsers read it as a header named '*'); "
                "list the headers",
                file,
                f"{ptr}/{i}",
                "cors-header",
            )
        elif name != "*" and not _TOKEN.match(name):
            diags.error(f"{value!r} is not a header name", file, f"{ptr}/{i}", "cors-header")
        else:
            out.append(name)
    return tuple(out)


def read(value: Any, where: ir.Source, diags: Diagnostics) -> Setting | None:
    """A layer's ``cors`` (already valid against the schema) checked: None for ``false`` and
    after reporting errors (with pointers under ``where``)."""
    file, ptr = where.file, where.pointer + "/cors"
    if value is True:  # (the schema admits booleans for false)
        diags.error("cors: true says nothing: give allowOrigins (or false for no CORS)", file, ptr, "cors-setting")
        return None
    if value is False or not isinstance(value, dict):
        return None
    found = len(diags.items)
    credentials = bool(value.get("allowCredentials", False))
    origins = [
        _origin(o, credentials, file, f"{ptr}/allowOrigins/{i}", diags) for i, o in enumerate(value["allowOrigins"])
    ]
    methods = None
    if "allowMethods" in value:
        methods = []
        for i, method in enumerate(value["allowMethods"]):
            if not _TOKEN.match(method.lower()):
                diags.error(f"{method!r} is not a method", file, f"{ptr}/allowMethods/{i}", "cors-method")
            methods.append(method.upper())
    allow_headers = _names(
        value.get("allowHeaders", list(DEFAULT_ALLOW_HEADERS)),
        credentials,
        file,
        f"{ptr}/allowHeaders",
        diags,
        "allowHeaders",
    )
    expose_headers = _names(
        value.get("exposeHeaders", []), credentials, file, f"{ptr}/exposeHeaders", diags, "exposeHeaders"
    )
    max_age_s = DEFAULT_MAX_AGE_S
    if "maxAge" in value:
        ms = pol.duration_ms(value["maxAge"])
        if ms % 1000:
            diags.error(
                f"maxAge {value['maxAge']!r}: Access-Control-Max-Age counts whole seconds",
                file,
                f"{ptr}/maxAge",
                "cors-max-age",
            )
        max_age_s = ms // 1000
    if len(diags.items) != found:  # (only errors are reported here)
        return None
    checked = tuple(o for o in origins if o is not None)
    cors = ir.Cors(
        origins=tuple(sorted(set(checked), key=checked.index)),
        allow_headers=allow_headers,
        expose_headers=expose_headers,
        allow_credentials=credentials,
        max_age_s=max_age_s,
        source=ir.Source(file, ptr),
    )
    return Setting(cors, tuple(methods) if methods is not None else None)


def operation_cors(setting: Any, method: str) -> ir.Cors | None:
    """The CORS of one operation under its merged settings' ``cors`` (a :class:`Setting`, or
    None): none when its method is not among ``allowMethods``."""
    if not isinstance(setting, Setting):
        return None
    if setting.methods is not None and method not in setting.methods:
        return None
    return setting.cors


def origin_allowed(cors: ir.Cors, origin: str) -> bool:
    """What Envoy's CORS filter (and the preflight route's ``Origin`` matcher) decides."""
    for kind, value in cors.origins:
        if kind == ANY or (kind == "exact" and origin == value):
            return True
        if kind == "regex" and re.fullmatch(value, origin):
            return True
    return False


def origin_regex(cors: ir.Cors) -> str:
    """One RE2 expression matching every allowed origin (whole value)."""
    if any(kind == ANY for kind, _v in cors.origins):
        return ".+"
    return "|".join(value if kind == "regex" else re2_escape(value) for kind, value in cors.origins)


__all__ = ["Setting", "operation_cors", "origin_allowed", "origin_regex", "read"]


# -- diff and explain ----------------------------------------------------------------------------


def _shown(origins: Any) -> str:
    return ", ".join("any origin (*)" if kind == ANY else value for kind, value in sorted(origins))


def changes(a: ir.Cors | None, b: ir.Cors | None) -> list[tuple[str, bool]]:
    """What changed in an operation's CORS, and whether it is security-relevant: pages on more
    origins, with credentials, or reading more of the response."""
    if a == b:
        return []
    if b is None:
        return [("no longer callable cross-origin (CORS removed)", False)]
    if a is None:
        with_credentials = " with credentials" if b.allow_credentials else ""
        return [(f"now callable cross-origin{with_credentials} from {_shown(b.origins)}", True)]
    out = []
    added, removed = set(b.origins) - set(a.origins), set(a.origins) - set(b.origins)
    if added:
        out.append((f"CORS now also allows {_shown(added)}", True))
    if removed:
        out.append((f"CORS no longer allows {_shown(removed)}", False))
    if b.allow_credentials != a.allow_credentials:
        out.append(
            (
                "CORS now allows credentials" if b.allow_credentials else "CORS no longer allows credentials",
                b.allow_credentials,
            )
        )
    exposed = set(b.expose_headers) - set(a.expose_headers)
    if exposed:
        out.append((f"CORS now exposes response headers {', '.join(sorted(exposed))}", True))
    if set(b.allow_headers) != set(a.allow_headers) or set(b.expose_headers) < set(a.expose_headers):
        out.append(("CORS request or exposed headers changed", False))
    if b.max_age_s != a.max_age_s:
        out.append((f"CORS preflight max age {a.max_age_s} s → {b.max_age_s} s", False))
    return out


def preflight_decision(
    path_route: ir.PathRoute, headers: dict[str, str], query: str
) -> tuple[int, str, ir.Source | None] | None:
    """How the gateway answers a preflight on this path (None: the path has no CORS, the
    ``OPTIONS`` is routed like any other request)."""
    with_cors = [op for op in path_route.operations if op.cors is not None]
    if not with_cors:
        return None
    origin, method = headers.get("origin", ""), headers.get("access-control-request-method", "")
    params = dict(p.partition("=")[::2] for p in query.split("&") if p)
    for op in with_cors:
        assert op.cors is not None
        if op.method != method or not all(params.get(k) == v for k, v in op.query):
            continue
        if not origin_allowed(op.cors, origin):
            break
        methods = ", ".join(sorted({o.method for o in with_cors if o.cors == op.cors}))
        return (
            200,
            f"CORS preflight answered by the gateway for {op.name}: origin {origin} allowed, methods {methods}; "
            "no token needed, nothing reaches the backend",
            op.cors.source,
        )
    return (
        403,
        f"CORS preflight refused by the gateway: origin {origin!r} may not call {method} "
        f"{path_route.path.template}; nothing reaches the backend",
        None,
    )
