"""Why a request gets the answer it gets: ``explain METHOD URL``.

Computed from the same compile Envoy's configuration is made from (the IR), in the order of
Envoy's filter chain (``translate/listener.py`` ``HTTP_FILTERS``): the listener and the Host,
the path as Envoy normalizes it, the route (or the gateway's 404/405), then for an operation
the client address checks (allowlists, reputation feeds, the country in the geo database),
the token (its signature checked against the provider's keys when the compile holds them),
roles and scopes, rate limits (which apply; their remaining budget is only known to the
counters), the WAF (the service's own positive model and rules, run here), and the upstream.
Each decision names the spec or policy place that made it.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import posixpath
import re
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import re2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from . import cors, geo, header_rules, ir
from .translate.reputation import exempt_ranges, section_source


@dataclass(frozen=True)
class Step:
    stage: str
    decision: str
    source: str = ""


@dataclass
class Explanation:
    status: int = 0
    operation: str | None = None
    steps: list[Step] = field(default_factory=list)

    def step(self, stage: str, decision: str, source: ir.Source | None = None) -> None:
        where = "" if source is None else f"{source.file}#{source.pointer}" if source.pointer else source.file
        self.steps.append(Step(stage, decision, where))

    def end(self, status: int, stage: str, decision: str, source: ir.Source | None = None) -> Explanation:
        self.step(stage, decision, source)
        self.status = status
        return self

    def as_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "operation": self.operation,
            "steps": [{"stage": s.stage, "decision": s.decision, "source": s.source} for s in self.steps],
        }

    def text(self) -> str:
        width = max((len(s.stage) for s in self.steps), default=0)
        lines = [f"{s.stage:<{width}}  {s.decision}" + (f"  [{s.source}]" if s.source else "") for s in self.steps]
        return "\n".join([*lines, f"=> {self.status}"])


@dataclass(frozen=True)
class Caller:
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    client_ip: str | None = None
    token: str | None = None  # a JWT to verify (else the Authorization header's bearer token)
    claims: dict[str, Any] | None = None  # or claims taken as verified
    body: bytes = b""
    now: float | None = None


_ESCAPED_SLASH = re.compile(r"%2f|%5c", re.IGNORECASE)
_DOT_ESCAPES = re.compile(r"%2e", re.IGNORECASE)


def normalize(path: str) -> str:
    """The path as Envoy routes it (``normalize_path``, ``merge_slashes``): ``%2e`` is a dot,
    dot segments are resolved, repeated slashes are one."""
    text = _DOT_ESCAPES.sub(".", path)
    text = re.sub("/{2,}", "/", text)
    trailing = text.endswith("/") and text != "/"
    out = posixpath.normpath(text) if text else "/"
    out = "/" + out.lstrip("/")
    return out + "/" if trailing and not out.endswith("/") else out


def _host_matches(patterns: tuple[str, ...], host: str) -> bool:
    for pattern in patterns:
        if pattern == "*" or pattern == host:
            return True
        if pattern.startswith("*.") and host.endswith(pattern[1:]):
            return True
    return False


def explain(gw: ir.Gateway, method: str, url: str, caller: Caller) -> Explanation:
    out = Explanation()
    parts = urlsplit(url if "://" in url else f"http://{url}")
    host = (caller.headers.get("host") or parts.hostname or "").split(":")[0].lower()
    port = parts.port or (443 if parts.scheme == "https" else 80)
    listeners = [lst for lst in gw.listeners if lst.port == port] or (gw.listeners if len(gw.listeners) == 1 else [])
    if not listeners:
        return out.end(0, "listener", f"no listener on port {port}: the connection is refused")
    listener = listeners[0]
    out.step("listener", f"{listener.name} ({listener.address}:{listener.port})", listener.source)
    if not _host_matches(listener.hostnames, host):
        return out.end(404, "host", f"Host {host!r} is not among {', '.join(listener.hostnames)}: the gateway's 404")
    raw_path = parts.path or "/"
    if _ESCAPED_SLASH.search(raw_path):
        if listener.escaped_slashes is ir.EscapedSlashes.REJECT:
            return out.end(400, "path", "an escaped slash (%2F or %5C) in the path is refused", listener.source)
    path = normalize(raw_path)
    if path != raw_path:
        out.step("path", f"normalized {raw_path} → {path}")
    query = parts.query
    route, op = _route(listener, method, path, query)
    if route is None:
        return out.end(404, "route", f"no operation of any spec has the path {path}: the gateway's 404")
    if method == "OPTIONS" and "origin" in caller.headers and "access-control-request-method" in caller.headers:
        preflight = cors.preflight_decision(route, caller.headers, query)
        if preflight is not None:  # (a client outside the operation's ipAllow gets its 403 first: not shown)
            return out.end(preflight[0], "cors", preflight[1], preflight[2])
    if op is None:
        allow = ", ".join(route.allow)
        return out.end(405, "route", f"{path} is {route.path.template}, which allows {allow}; not {method}")
    out.operation = op.name
    out.step("route", f"{op.name}: {op.method} {op.path.template}", op.source)
    if op.cors is not None and "origin" in caller.headers:
        cross = cors.origin_allowed(op.cors, caller.headers["origin"])
        seen = "allowed: the response gets Access-Control-Allow-Origin" if cross else "not allowed: no CORS headers"
        out.step("cors", f"origin {caller.headers['origin']} {seen}", op.cors.source)
    for i, allowed in enumerate(op.ip_allow):
        if caller.client_ip is None:
            out.step("allowlist", f"only {', '.join(allowed)} (no --client-ip given: assumed inside)")
            continue
        ip = ipaddress.ip_address(caller.client_ip)
        if not _in(ip, allowed):
            return out.end(403, "allowlist", f"{caller.client_ip} is not in {', '.join(allowed)} (list {i + 1})")
        out.step("allowlist", f"{caller.client_ip} is in {', '.join(allowed)}")
    if _reputation(gw, listener, caller, out) or _country(gw, op, caller, out):
        return out
    if op.auth is not None:
        status = _token(gw, op, caller, out)
        if status:
            return out
    else:
        out.step("token", "public operation: no token needed")
    for limit in op.rate_limits:
        windows = ", ".join(f"{n} a {unit}" for unit, n in limit.windows)
        mode = " (shadow: never refuses)" if limit.shadow else ""
        out.step(
            "rate limit",
            f"{limit.name}: {windows} per {_keys(limit)}{mode}; a 429 once spent (the budget is in the counters)",
            limit.source,
        )
    if op.waf is not None and gw.waf_service is not None:
        status = _waf(gw.waf_service, op, method, path, query, caller, out)
        if status:
            return out
    for rules, whose in ((listener.header_rules, f"listener {listener.name}"), (op.header_rules, "operation")):
        for direction in ("request", "response"):
            changes = getattr(rules, direction) if rules is not None else None
            if changes is not None and changes.any():
                said = ", ".join(f"{name}: {what}" for name, what in header_rules.described(changes).items())
                out.step("headers", f"{direction} ({whose}): {said}", changes.source)
    target = op.upstream
    upstream_path = path
    if op.rewrite_prefix is not None:
        mount, upstream_prefix = op.rewrite_prefix
        upstream_path = upstream_prefix + path[len(mount) :] if path.startswith(mount) else path
    return out.end(
        200, "upstream", f"forwarded to {target} as {method} {upstream_path or '/'}; its answer is the client's"
    )


def _in(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, cidrs: tuple[str, ...]) -> bool:
    return any(ip in ipaddress.ip_network(c, strict=False) for c in cidrs)


def _reputation(gw: ir.Gateway, listener: ir.Listener, caller: Caller, out: Explanation) -> bool:
    """The feeds' decision (True: the request ends here)."""
    rep = gw.reputation
    if rep is None or not (rep.block or rep.soft):
        return False
    feeds = ", ".join(f.name for f in rep.feeds)
    source = section_source(gw)
    if caller.client_ip is None:
        out.step("reputation", f"feeds {feeds} (no --client-ip given: assumed on none)", source)
        return False
    ip = ipaddress.ip_address(caller.client_ip)
    if _in(ip, exempt_ranges(gw, listener)):
        out.step("reputation", f"{caller.client_ip} is allowlisted: no feed blocks or marks it", source)
    elif _in(ip, rep.block):
        out.end(403, "reputation", f"{caller.client_ip} is on a blocking feed ({feeds})", source)
        return True
    elif _in(ip, rep.soft):
        out.step(
            "reputation", f"{caller.client_ip} is on a soft feed: forwarded with X-Gateway-Risk: reputation", source
        )
    else:
        out.step("reputation", f"{caller.client_ip} is on no feed", source)
    return False


def _country(gw: ir.Gateway, op: ir.Operation, caller: Caller, out: Explanation) -> bool:
    """The operation's geo rule's decision (True: the request ends here)."""
    rule = op.geo
    if rule is None or gw.geo is None:
        return False
    if caller.client_ip is None:
        out.step("geo", f"{geo.describe(rule)} (no --client-ip given: assumed to pass)", rule.source)
        return False
    country = geo.country(gw.geo, caller.client_ip)
    where = f"{caller.client_ip} is in {country}" if country else f"{caller.client_ip} is in no country of the database"
    if not geo.refuses(rule, country):
        out.step("geo", f"{where}: passes {geo.describe(rule)}", rule.source)
    elif rule.mode == geo.HARD:
        out.end(403, "geo", f"{where}: refused by {geo.describe(rule)}", rule.source)
        return True
    else:
        out.step("geo", f"{where}: {geo.describe(rule)} marks it: forwarded with X-Gateway-Risk: geo", rule.source)
    return False


def _route(
    listener: ir.Listener, method: str, path: str, query: str
) -> tuple[ir.PathRoute | None, ir.Operation | None]:
    params = dict(p.partition("=")[::2] for p in query.split("&") if p)
    for pr in sorted(listener.paths, key=lambda p: p.path.sort_key()):
        pattern = pr.path
        if pattern.regex is None:
            if pattern.template != path:
                continue
        elif not re2.fullmatch(pattern.regex, path):
            continue
        for op in pr.operations:
            if op.method == method and all(params.get(k) == v for k, v in op.query):
                if op.path.regex is None or re2.fullmatch(op.path.regex, path):
                    return pr, op
        return pr, None
    return None, None


def _keys(limit: ir.RateLimit) -> str:
    return " + ".join(key.value + (f" {detail}" if detail else "") for key, detail in limit.by)


# -- the token ----------------------------------------------------------------------------------


def _token(gw: ir.Gateway, op: ir.Operation, caller: Caller, out: Explanation) -> int:
    """Its verdict's status, or 0 when the request goes on."""
    auth = op.auth
    assert auth is not None
    provider = next(p for p in gw.providers if p.name == auth.provider)
    claims = caller.claims
    if claims is not None:
        out.step("token", f"claims given as verified ({provider.name}): {json.dumps(claims, sort_keys=True)}")
    else:
        token = caller.token
        bearer = caller.headers.get("authorization", "")
        if token is None and bearer.lower().startswith("bearer "):
            token = bearer[7:].strip()
        if token is None:
            if auth.optional:
                out.step("token", "none; it is optional here: the request goes on as anonymous", provider.source)
                return 0
            out.end(401, "token", f"missing: a token from {provider.name} is required", provider.source)
            return 401
        verified, why = _verify(provider, token, caller.now)
        if verified is None:
            out.end(401, "token", f"refused: {why}", provider.source)
            return 401
        claims = verified
        out.step("token", f"valid ({why}); sub {claims.get('sub')!r}", provider.source)
    if not auth.authorize:
        return 0
    roles = claims.get(provider.roles_claim)
    held_roles = {roles} if isinstance(roles, str) else set(roles) if isinstance(roles, list) else set()
    scopes = claims.get(provider.scopes_claim)
    held_scopes = set(scopes.split()) if isinstance(scopes, str) else set(scopes) if isinstance(scopes, list) else set()
    by_role = sorted(held_roles & set(auth.roles))
    by_scope = [s for s in auth.scope_sets if set(s) <= held_scopes]
    needed = (
        " or ".join([*(f"role {r}" for r in auth.roles), *("scopes " + "+".join(s) for s in auth.scope_sets)])
        or "(nobody)"
    )
    if by_role or by_scope:
        granted = f"role {by_role[0]}" if by_role else "scopes " + "+".join(by_scope[0])
        out.step("authorization", f"allowed: {granted} (needs {needed})", op.source)
        return 0
    if auth.dry_run:
        out.step("authorization", f"would refuse (needs {needed}); dry run: logged, let through", op.source)
        return 0
    out.end(403, "authorization", f"refused: needs {needed}; the token has roles {sorted(held_roles)}", op.source)
    return 403


def _b64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _verify(provider: ir.JwtProvider, token: str, now: float | None) -> tuple[dict[str, Any] | None, str]:
    """(claims, how it was checked) or (None, why it is refused)."""
    try:
        head_b64, payload_b64, sig_b64 = token.split(".")
        header = json.loads(_b64(head_b64))
        claims = json.loads(_b64(payload_b64))
        signature = _b64(sig_b64)
    except (ValueError, binascii.Error):
        return None, "not a JWT"
    if not isinstance(claims, dict) or not isinstance(header, dict):
        return None, "not a JWT"
    alg = header.get("alg")
    if alg not in provider.algorithms:
        return None, f"algorithm {alg!r} is not one of {', '.join(provider.algorithms)}"
    if claims.get("iss") != provider.issuer:
        return None, f"issuer {claims.get('iss')!r}, not {provider.issuer!r}"
    audiences = claims.get("aud")
    audiences = [audiences] if isinstance(audiences, str) else audiences or []
    if provider.audiences and not set(audiences) & set(provider.audiences):
        return None, f"audience {audiences}, not one of {', '.join(provider.audiences)}"
    moment = time.time() if now is None else now
    if isinstance(claims.get("exp"), int | float) and moment > claims["exp"] + provider.clock_skew_s:
        return None, "expired"
    if isinstance(claims.get("nbf"), int | float) and moment < claims["nbf"] - provider.clock_skew_s:
        return None, "not valid yet"
    if provider.jwks_json is None:
        return claims, "signature not checked here: Envoy fetches this provider's keys"
    keys = [k for k in json.loads(provider.jwks_json).get("keys", []) if header.get("kid") in (None, k.get("kid"))]
    signed = f"{head_b64}.{payload_b64}".encode()
    for jwk in keys:
        if _signature_ok(jwk, str(alg), signed, signature):
            return claims, f"signature checked with key {jwk.get('kid')!r}"
    return None, "the signature matches no key of the provider"


def _signature_ok(jwk: dict[str, Any], alg: str, signed: bytes, signature: bytes) -> bool:
    digest = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}.get(alg[2:])
    if digest is None:
        return False
    try:
        if jwk.get("kty") == "RSA" and alg.startswith(("RS", "PS")):
            numbers = rsa.RSAPublicNumbers(int.from_bytes(_b64(jwk["e"]), "big"), int.from_bytes(_b64(jwk["n"]), "big"))
            pad = padding.PKCS1v15() if alg.startswith("RS") else padding.PSS(padding.MGF1(digest), digest.digest_size)
            numbers.public_key().verify(signature, signed, pad, digest)
            return True
        if jwk.get("kty") == "EC" and alg.startswith("ES"):
            curve = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}[jwk["crv"]]
            point = ec.EllipticCurvePublicNumbers(
                int.from_bytes(_b64(jwk["x"]), "big"), int.from_bytes(_b64(jwk["y"]), "big"), curve
            )
            half = len(signature) // 2
            der = utils.encode_dss_signature(
                int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big")
            )
            point.public_key().verify(der, signed, ec.ECDSA(digest))
            return True
    except (InvalidSignature, KeyError, ValueError):
        return False
    return False


# -- the WAF --------------------------------------------------------------------------------------


def _waf(
    svc: ir.WafService, op: ir.Operation, method: str, path: str, query: str, caller: Caller, out: Explanation
) -> int:
    from .waf.config import rule_set
    from .waf.inspect import Exclusions, Inspector, Request
    from .waf.model import load_models

    waf = op.waf
    assert waf is not None
    rules = rule_set(svc.rules)
    target = path + (f"?{query}" if query else "")
    headers = {k: v for k, v in caller.headers.items()}
    if len(caller.body) > svc.max_body_bytes:
        out.end(
            413, "waf", f"a body of {len(caller.body)} bytes, over waf.maxBodyBytes {svc.max_body_bytes}", svc.source
        )
        return 413
    mode = "prevent" if waf.prevent else "detect"
    model = load_models(svc.models).get(op.name)
    safe: frozenset[str] = frozenset()
    if model is not None:
        violation, _document = model.check(target, headers, caller.body)
        if violation is not None:
            if waf.prevent:
                out.end(violation.status, "waf", f"outside the description: {violation.message}", op.source)
                return violation.status
            out.step("waf", f"outside the description (detect: let through): {violation.message}", op.source)
        safe = model.safe
    findings = Inspector(rules).inspect(
        Request(method, target, tuple(headers.items()), caller.body),
        Exclusions(locations=waf.exclude_locations, families=waf.exclude_families),
        safe_locations=safe,
    )
    if not findings:
        out.step("waf", f"inspected ({mode}, rules {rules.version}): nothing found", svc.source)
        return 0
    found = ", ".join(f"{f.family}/{f.rule} at {f.location}" for f in findings)
    if waf.prevent:
        out.end(403, "waf", f"refused: {found}", svc.source)
        return 403
    out.step("waf", f"found {found} (detect: logged, let through)", svc.source)
    return 0
