"""Model → IR for authentication, authorization and client address allowlists.

Which operations need a token follows OpenAPI: the operation's ``security`` (else the
document's); ``security: []`` makes an operation public; a ``{}`` requirement makes the
token optional. Schemes the gateway checks are http ``bearer``, ``oauth2`` and
``openIdConnect`` (all JWTs, validated by the API's provider). Policy or ``x-gateway``
``public: true|false`` overrides the spec.

Authorization applies to an API as soon as it has rules (``apis[].auth.rules``) or an
operation names roles or scopes (``x-gateway`` / policy ``roles``, ``scopes``, or OAuth2
scopes in the spec): then a protected operation no rule allows is denied to everyone.
Without any of these, a valid token is enough.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any

from . import ir
from .documents import Document, DocumentStore
from .errors import Diagnostics
from .model import policy as pol
from .model.openapi import ApiSpec, OperationSpec


def provider_ir(
    spec: dict[str, Any], doc: Document, ptr: str, store: DocumentStore, diags: Diagnostics, fetched: str | None = None
) -> ir.JwtProvider | None:
    jwks = spec["jwks"]
    src = ir.Source(doc.name, ptr)
    uri = jwks.get("uri")
    jwks_json: str | None = None
    fetch = "static"
    algorithms = tuple(spec.get("algorithms", ("RS256", "ES256")))
    if "file" in jwks:
        # through the store: located errors, and the server watches it like a spec
        loaded = store.load(doc.path.parent / jwks["file"], (doc, ptr + "/jwks/file"))
        if loaded is None:
            return None
        jwks_json = _checked_jwks(loaded.data, doc, ptr + "/jwks/file", diags, algorithms)
        if jwks_json is None:
            return None
    elif "inline" in jwks:
        jwks_json = _checked_jwks(jwks["inline"], doc, ptr + "/jwks/inline", diags, algorithms)
        if jwks_json is None:
            return None
    else:
        fetch = jwks.get("fetch", "envoy")
        if fetch == "controlplane":
            jwks_json = fetched
            if fetched is None:
                diags.warning(
                    "the control plane fetches these keys when it serves; until then no token verifies",
                    doc.name,
                    ptr + "/jwks",
                    "jwks-not-fetched",
                )
    if jwks_json is not None:
        jwks_json = filter_jwks(jwks_json, algorithms)
    claim_headers = spec.get("claimHeaders", {"sub": "x-user-id", "role": "x-user-role"})
    ca_file = jwks.get("caFile")
    if ca_file is not None:
        ca_file = str((doc.path.parent / ca_file).resolve())
    return ir.JwtProvider(
        name=spec["name"],
        issuer=spec["issuer"],
        audiences=tuple(spec.get("audiences", ())),
        source=src,
        jwks_uri=uri,
        jwks_json=jwks_json,
        jwks_fetch=fetch,
        cache_duration_ms=pol.duration_ms(jwks.get("cacheDuration", "10m")),
        refresh_interval_ms=pol.duration_ms(jwks.get("refreshInterval", "1m")),
        timeout_ms=pol.duration_ms(jwks.get("timeout", "5s")),
        ca_file=ca_file,
        algorithms=algorithms,
        clock_skew_s=pol.duration_ms(spec.get("clockSkew", "60s")) // 1000,
        query_parameters=tuple(spec.get("tokenFrom", {}).get("queryParameters", ())),
        cookies=tuple(spec.get("tokenFrom", {}).get("cookies", ())),
        claim_headers=tuple((claim, header.lower()) for claim, header in claim_headers.items()),
        roles_claim=spec.get("rolesClaim", "role"),
        scopes_claim=spec.get("scopesClaim", "scope"),
        forward_token=bool(spec.get("forwardToken", False)),
        claim_error_status=int(spec.get("claimErrorStatus", 403)),
    )


def _checked_jwks(data: Any, doc: Document, ptr: str, diags: Diagnostics, algorithms: tuple[str, ...]) -> str | None:
    keys = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(keys, list) or not keys or not all(isinstance(k, dict) and "kty" in k for k in keys):
        diags.error("a JWKS needs a non-empty 'keys' list of JWKs (each with 'kty')", doc.name, ptr, "jwks")
        return None
    usable = 0
    for i, key in enumerate(keys):
        algs, why = key_algorithms(key, algorithms)
        if algs:
            usable += 1
        else:
            kid = f" {key['kid']!r}" if isinstance(key.get("kid"), str) else ""
            diags.warning(f"key{kid} is never used: {why}", doc.name, f"{ptr}/keys/{i}", "jwks-key-dropped")
    if not usable:
        diags.error(
            f"no key of this JWKS can verify tokens of the provider's algorithms ({', '.join(algorithms)})",
            doc.name,
            ptr,
            "jwks",
        )
        return None
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


# The signature algorithms each key type can verify. Symmetric keys (kty "oct") are absent on
# purpose: a JWKS is public, so an HMAC key in it lets anyone sign tokens.
_KEY_ALGORITHMS: dict[tuple[str, str | None], tuple[str, ...]] = {
    ("RSA", None): ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"),
    ("EC", "P-256"): ("ES256",),
    ("EC", "P-384"): ("ES384",),
    ("EC", "P-521"): ("ES512",),
    ("OKP", "Ed25519"): ("EdDSA",),
}


def key_algorithms(key: dict[str, Any], algorithms: tuple[str, ...]) -> tuple[tuple[str, ...], str]:
    """The provider's algorithms this key may verify, and why none when it is empty."""
    kty = key.get("kty")
    if kty == "oct":
        return (), "symmetric (kty 'oct') keys are never accepted"
    crv = key.get("crv") if kty in ("EC", "OKP") else None
    fits = _KEY_ALGORITHMS.get((str(kty), crv if isinstance(crv, str) else None))
    if fits is None:
        return (), f"unsupported key type {kty!r}" + (f" with curve {crv!r}" if crv is not None else "")
    if key.get("use", "sig") != "sig":
        return (), f"its 'use' is {key.get('use')!r}, not 'sig'"
    ops = key.get("key_ops")
    if isinstance(ops, list) and "verify" not in ops:
        return (), "its 'key_ops' does not include 'verify'"
    alg = key.get("alg")
    if alg is not None:
        if alg not in fits:
            return (), f"its 'alg' {alg!r} does not fit a {kty} key"
        if alg not in algorithms:
            return (), f"its 'alg' {alg!r} is not one of the provider's algorithms ({', '.join(algorithms)})"
        return (alg,), ""
    allowed = tuple(a for a in fits if a in algorithms)
    if not allowed:
        return (), f"a {kty} key fits none of the provider's algorithms ({', '.join(algorithms)})"
    return allowed, ""


def filter_jwks(jwks_json: str, algorithms: tuple[str, ...]) -> str:
    """The keys Envoy may use, each pinned to one algorithm of the provider.

    Envoy lets a key without ``alg`` verify any algorithm its type allows (an RSA key verifies
    RS512 and PS256 alike) and accepts HMAC keys: so symmetric and unusable keys are dropped,
    and a key without ``alg`` becomes one copy per allowed algorithm, each with ``alg`` set.
    """
    data = json.loads(jwks_json)
    keys: list[dict[str, Any]] = []
    for key in data.get("keys", []):
        if not isinstance(key, dict):
            continue
        algs, _why = key_algorithms(key, algorithms)
        keys.extend(key if key.get("alg") == alg else {**key, "alg": alg} for alg in algs)
    data["keys"] = keys
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


@dataclass
class ApiAuth:
    """An API's authentication context, resolved once per API."""

    provider: str | None
    rules: list[dict[str, Any]]
    dry_run: bool
    remove_token: bool = False  # the API's provider does not forward tokens
    warned: bool = False


def api_auth(
    entry: dict[str, Any], providers: dict[str, ir.JwtProvider], where: tuple[str, str], diags: Diagnostics
) -> ApiAuth:
    auth = entry.get("auth", {})
    name = auth.get("provider")
    if name is not None and name not in providers:
        diags.error(f"no auth provider named {name!r}", where[0], where[1] + "/auth/provider", "unknown-provider")
        name = None
    elif name is None and len(providers) == 1:
        name = next(iter(providers))
    remove_token = name is not None and not providers[name].forward_token
    return ApiAuth(name, list(auth.get("rules", [])), bool(auth.get("dryRun", False)), remove_token)


def check_rule_operations(ctx: ApiAuth, spec: ApiSpec, where: tuple[str, str], diags: Diagnostics) -> None:
    known = {op.key for op in spec.operations} | {f"{op.method} {op.path}" for op in spec.operations} | {"*"}
    for i, rule in enumerate(ctx.rules):
        for j, key in enumerate(rule["operations"]):
            if key not in known:
                diags.error(
                    f"the spec has no operation {key!r}",
                    where[0],
                    f"{where[1]}/auth/rules/{i}/operations/{j}",
                    "unknown-operation",
                )


def operation_auth(
    ctx: ApiAuth, spec: ApiSpec, op: OperationSpec, settings: dict[str, Any], diags: Diagnostics
) -> ir.Auth | None:
    requirements = op.security if op.security is not None else spec.security
    where = op.security_source or ir.Source(spec.document.name, "/security")
    public = settings.get("public")
    if public is True:
        return None
    jwt_alternatives: list[tuple[str, ...]] = []  # scopes of each requirement the gateway can check
    optional = False
    unchecked: set[str] = set()
    for req in requirements:
        if not req:
            optional = True
            continue
        kinds = []
        for name, _scopes in req:
            scheme = spec.schemes.get(name)
            if scheme is None:
                diags.error(
                    f"security requirement names an undefined scheme {name!r}", where.file, where.pointer, "security"
                )
                return None
            kinds.append(scheme.kind)
        if all(k == "jwt" for k in kinds):
            jwt_alternatives.append(tuple(s for _name, scopes in req for s in scopes))
        else:
            unchecked.update(k for k in kinds if k != "jwt")
    protected = bool(jwt_alternatives) or public is False
    if not protected:
        if unchecked and not optional:
            _unenforced(
                ctx,
                where,
                f"it requires {', '.join(sorted(unchecked))}, which the gateway cannot check",
                diags,
                error=ctx.provider is not None,
            )
        return None
    if ctx.provider is None:
        _unenforced(ctx, where, "no auth provider is configured for this API", diags, error=False)
        return None
    roles: set[str] = set(settings.get("roles", ()))
    scope_sets: set[tuple[str, ...]] = {(s,) for s in settings.get("scopes", ())}
    matching = [r for r in ctx.rules if {"*", op.key, f"{op.method} {op.path}"} & set(r["operations"])]
    for rule in matching:
        roles.update(rule.get("roles", ()))
        scope_sets.update((s,) for s in rule.get("scopes", ()))
    spec_scopes = [s for s in jwt_alternatives if s]
    if spec_scopes and all(jwt_alternatives):  # every way in needs scopes
        scope_sets.update(spec_scopes)
    authorize = (
        bool(ctx.rules)
        or bool(settings.get("roles") or settings.get("scopes"))
        or bool(spec_scopes and all(jwt_alternatives))
    )
    return ir.Auth(
        provider=ctx.provider,
        authorize=authorize,
        roles=tuple(sorted(roles)),
        scope_sets=tuple(sorted(scope_sets)),
        optional=optional and not authorize,
        dry_run=ctx.dry_run,
    )


def _unenforced(ctx: ApiAuth, where: ir.Source, why: str, diags: Diagnostics, error: bool) -> None:
    if error:
        diags.error(
            f"the operation's security is not enforced: {why}; mark it public in the policy or use "
            "bearer, oauth2 or openIdConnect",
            where.file,
            where.pointer,
            "security",
        )
    elif not ctx.warned:
        ctx.warned = True
        diags.warning(
            f"security requirements are not enforced by the gateway: {why}; the backend must authenticate requests",
            where.file,
            where.pointer,
            "security-not-enforced",
        )


def ip_allowlists(
    settings: dict[str, Any],
    template: str,
    prefix_lists: list[tuple[str, tuple[str, ...], set[str] | None]],
    listener: str,
) -> tuple[tuple[str, ...], ...]:
    """Every allowlist an operation's client must pass: its own (else its API's), then each
    path-prefix list covering its path."""
    out: list[tuple[str, ...]] = []
    if settings.get("ipAllow"):
        out.append(tuple(settings["ipAllow"]))
    for prefix, cidrs, listeners in prefix_lists:
        if listeners is not None and listener not in listeners:
            continue
        base = prefix.rstrip("/")
        if template == base or template.startswith(base + "/"):
            out.append(cidrs)
    return tuple(out)


def check_cidrs(values: list[Any], file: str, ptr: str, diags: Diagnostics) -> tuple[str, ...]:
    """Normalized CIDRs (``10.0.0.1`` → ``10.0.0.1/32``); each invalid one is an error."""
    out = []
    for i, value in enumerate(values):
        try:
            out.append(str(ipaddress.ip_network(str(value), strict=False)))
        except ValueError as exc:
            diags.error(f"{value!r} is not an IP address or CIDR range: {exc}", file, f"{ptr}/{i}", "cidr")
    return tuple(out)
