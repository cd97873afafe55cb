"""``requestHeaders`` and ``responseHeaders``: header changes a policy asks for, read and checked.

Both are route settings (``apis[].defaults``, ``apis[].operations``, ``x-gateway``) and
listener settings. Each is ``{add, set, append, remove}``; values are literal text in which
``%%`` is a percent sign and ``%…%`` one of a few of Envoy's substitution variables
(:data:`VARIABLES`). Anything else between percent signs is an error: ``%REQ(authorization)%``
or ``%DYNAMIC_METADATA(…)%`` would copy a secret (a token, a verified claim) into another
header, where no one strips or masks it.

Some names are the gateway's own and cannot be targets (:func:`refusal`): identity and
override headers (a backend trusts them because the gateway strips clients' copies), the
forwarding headers, the framing and hop-by-hop headers, Envoy's and the gateway's internal
headers, and on responses the security headers, CORS and the token challenge. A name is
compared with each of them with any punctuation standing for a dash, as CGI and PHP backends
read ``X-User.Id`` and ``X_User_Id`` as ``X-User-Id``.
"""

from __future__ import annotations

import re
from typing import Any

from . import ir
from .edge import OVERRIDE_HEADERS
from .errors import Diagnostics, pointer

# Envoy's substitution variables a value may use, and whether they exist on requests.
# The trusted client address is the one X-Forwarded-For gets (xffNumTrustedHops applied).
VARIABLES: dict[str, bool] = {
    "REQ(x-request-id)": True,  # the request id Envoy generated (or kept: trustClientRequestId)
    "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": True,
    "DOWNSTREAM_REMOTE_ADDRESS": True,
    "ROUTE_NAME": True,  # <api>.<operationId>
    "START_TIME": True,
    "PROTOCOL": True,  # HTTP/1.1, HTTP/2, HTTP/3
    "REQUESTED_SERVER_NAME": True,  # the TLS SNI
    "DOWNSTREAM_TLS_VERSION": True,
    "RESPONSE_CODE": False,  # responses only
}
_VARIABLE = re.compile(r"([A-Z_]+)(?:\(([^()%]*)\))?")
_TOKEN = re.compile(r"[!#$%&'*+.^`|~0-9a-z-]+")  # RFC 9110 token, lower case, without '_'
_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")  # RFC 9110 field value: no control characters

# Request and response: framing, hop-by-hop (RFC 9110 §7.6.1) and what Envoy owns.
_NEVER = ("host", "content-length", "transfer-encoding", "connection", "keep-alive", "proxy-connection", "te",
          "trailer", "upgrade", "x-request-id")  # fmt: skip
_NEVER_PREFIXES = ("x-envoy-",)
# Requests: the client address chain (Envoy and the gateway set it), and the gateway's internals
# (the route scope key, the WAF check's headers, the verified client certificate's record).
_REQUEST = ("forwarded", "x-real-ip", "x-gateway-scope", "x-waf-route", "x-envoy-auth-partial-body",
            "x-forwarded-client-cert")  # fmt: skip
_REQUEST_PREFIXES = ("x-forwarded-", "x-client-cert-")
# Responses: what the gateway sets on every reply (security headers, the 401's challenge, its
# rate-limit headers) and CORS, which answers for the operation's policy alone.
_RESPONSE = ("strict-transport-security", "x-content-type-options", "x-frame-options", "www-authenticate")
_RESPONSE_PREFIXES = ("access-control-", "x-ratelimit-")


def _dashed(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "-", name.lower())


def refusal(name: str, response: bool, policy: ir.HeaderPolicy, removing: bool = False) -> str | None:
    """Why ``name`` (lower case) cannot be changed this way (``removing``: removed rather than
    given a value), or None when it can."""
    if name.startswith(":"):
        return "a pseudo-header (Envoy's, from the request line and status)"
    dashed = _dashed(name)

    def among(names: tuple[str, ...], prefixes: tuple[str, ...] = ()) -> bool:
        return dashed in {_dashed(n) for n in names} or any(dashed.startswith(_dashed(p)) for p in prefixes)

    if among(_NEVER, _NEVER_PREFIXES):
        return "Envoy sets it (framing, hop-by-hop, request id or its own x-envoy- headers)"
    if response:
        if among(_RESPONSE, _RESPONSE_PREFIXES):
            return "the gateway sets it on every reply (security headers, CORS, its token challenge, rate limits)"
        if name == "set-cookie" and not removing:
            return "a cookie the gateway set would be every API's on the host (it may be removed)"
        if among(policy.remove_response_headers) and not removing:
            return "headers.removeResponseHeaders removes it from every response (it tells what runs behind)"
        return None
    if among(OVERRIDE_HEADERS):  # even those allowOverrideHeaders lets clients send
        return "an override header: backends would change the method, path or host they see"
    if among(policy.strip_request_headers, policy.strip_request_header_prefixes):
        return "an identity header (headers.identityHeaders, identityHeaderPrefixes, claims): only the gateway sets it"
    if among(_REQUEST, _REQUEST_PREFIXES):
        return "the gateway sets it (the client address chain or its internal headers)"
    return None


def _value(text: str, response: bool) -> str:
    """The value with its variables as Envoy spells them; ValueError says what is wrong."""
    out = []
    i = 0
    while i < len(text):
        start = text.find("%", i)
        if start < 0:
            out.append(text[i:])
            break
        out.append(text[i:start])
        if text.startswith("%%", start):
            out.append("%%")
            i = start + 2
            continue
        end = text.find("%", start + 1)
        m = _VARIABLE.fullmatch(text, start + 1, end) if end > 0 else None
        if m is None:
            raise ValueError(f"a lone '%' at {start} (write %% for a percent sign)")
        key = m.group(1) + (f"({m.group(2).lower()})" if m.group(2) is not None else "")
        if key not in VARIABLES:
            raise ValueError(
                f"%{text[start + 1 : end]}% is not one of the variables a header may carry "
                f"({', '.join('%' + v + '%' for v in VARIABLES)}): others would copy what the client or the "
                "gateway must keep (tokens, claims, metadata) into another header"
            )
        if not response and not VARIABLES[key]:
            raise ValueError(f"%{key}% exists only on responses")
        out.append(f"%{key}%")
        i = end + 1
    return "".join(out)


def read(
    value: Any, where: ir.Source, key: str, policy: ir.HeaderPolicy, diags: Diagnostics
) -> ir.HeaderChanges | None:
    """One layer's ``requestHeaders`` or ``responseHeaders`` (``key``), already valid against
    the schema: None after reporting every error (pointers under ``where``)."""
    if not isinstance(value, dict):
        return None
    response = key == "responseHeaders"
    base = f"{where.pointer}/{key}"
    found = len(diags.items)
    seen: dict[str, str] = {}
    out: dict[str, list[Any]] = {"add": [], "set": [], "append": [], "remove": []}

    def name_ok(raw: str, ptr: str, removing: bool = False) -> str | None:
        name = raw.lower()
        if not _TOKEN.fullmatch(name) and not name.startswith(":"):
            why = " ('_' is refused from clients, and CGI backends read it as '-')" if "_" in name else ""
            diags.error(f"{raw!r} is not a header name{why}", where.file, ptr, "header-name")
            return None
        reason = refusal(name, response, policy, removing)
        if reason is not None:
            what = "response" if response else "request"
            diags.error(f"{raw!r} cannot be changed by {key} ({what}): {reason}", where.file, ptr, "header-refused")
            return None
        if name in seen:
            diags.error(f"{raw!r} is already in {seen[name]}: one change per header", where.file, ptr, "header-twice")
            return None
        return name

    for action in ("remove", "add", "set", "append"):
        if action == "remove":
            for i, raw in enumerate(value.get("remove", [])):
                ptr = f"{base}/remove/{i}"
                name = name_ok(raw, ptr, removing=True)
                if name is not None:
                    seen[name] = "remove"
                    out["remove"].append(name)
            continue
        for raw, text in value.get(action, {}).items():
            ptr = base + pointer(action, raw)
            name = name_ok(raw, ptr)
            if name is None:
                continue
            seen[name] = action
            if not _VALUE.fullmatch(text):
                diags.error(f"the value of {raw!r} has control characters", where.file, ptr, "header-value")
                continue
            try:
                out[action].append((name, _value(text, response)))
            except ValueError as e:
                diags.error(f"the value of {raw!r}: {e}", where.file, ptr, "header-value")
    if len(diags.items) != found:
        return None
    return ir.HeaderChanges(
        add_if_absent=tuple(out["add"]),
        overwrite=tuple(out["set"]),
        append=tuple(out["append"]),
        remove=tuple(out["remove"]),
        source=ir.Source(where.file, base),
    )


def read_layer(value: dict[str, Any], where: ir.Source, policy: ir.HeaderPolicy, diags: Diagnostics) -> dict[str, Any]:
    """A layer of settings (route or listener) with its header changes read (checked once per
    layer; the operations under it share the result)."""
    keys = [k for k in ("requestHeaders", "responseHeaders") if k in value]
    return {**value, **{k: read(value[k], where, k, policy, diags) for k in keys}} if keys else value


def check_sensitive(rules: ir.HeaderRules, sensitive: bool, diags: Diagnostics) -> bool:
    """A sensitive operation's responses carry ``Cache-Control: no-store``: its own response
    changes may not touch the header (they would come after it). False after reporting."""
    changes = rules.response
    if not sensitive or changes is None or changes.source is None:
        return True
    named = [n for n, _v in (*changes.add_if_absent, *changes.overwrite, *changes.append)] + list(changes.remove)
    if "cache-control" not in named:
        return True
    where = changes.source
    if any(d.file == where.file and d.pointer == where.pointer and d.code == "header-sensitive" for d in diags.items):
        return False  # (said once for the operations sharing the setting)
    diags.error(
        "cache-control cannot be changed on a sensitive operation (its responses must not be cached)",
        where.file,
        where.pointer,
        "header-sensitive",
    )
    return False


def rules(settings: dict[str, Any]) -> ir.HeaderRules | None:
    """The header changes of merged settings (None: none)."""
    request, response = (
        c if isinstance(c, ir.HeaderChanges) and c.any() else None
        for c in (settings.get("requestHeaders"), settings.get("responseHeaders"))
    )
    return ir.HeaderRules(request, response) if request is not None or response is not None else None


__all__ = ["VARIABLES", "changes", "check_sensitive", "described", "read", "read_layer", "refusal", "rules"]


# -- diff ----------------------------------------------------------------------------------------


def described(c: ir.HeaderChanges | None) -> dict[str, str]:
    """Each header's change in words (``{'x-api-version': "set '2'"}``), for diff and explain."""
    if c is None:
        return {}
    out = {n: f"add {v!r}" for n, v in c.add_if_absent}
    out.update({n: f"set {v!r}" for n, v in c.overwrite})
    out.update({n: f"append {v!r}" for n, v in c.append})
    out.update({n: "remove" for n in c.remove})
    return out


def changes(a: ir.HeaderRules | None, b: ir.HeaderRules | None) -> list[tuple[str, bool]]:
    """What changed in the headers a route changes; never security-relevant, since the names
    that matter to security (identity, forwarding, security headers, CORS) cannot be targets."""
    if a == b:
        return []
    out = []
    for direction in ("request", "response"):
        old = described(getattr(a, direction) if a is not None else None)
        new = described(getattr(b, direction) if b is not None else None)
        for name in sorted(old.keys() | new.keys()):
            if old.get(name) != new.get(name):
                now = new.get(name, "no change")
                out.append((f"{direction} header {name}: {old.get(name, 'no change')} → {now}", False))
    return out
