"""What a listener's operations use of authentication, computed once per listener for every
auth translator.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import ir
from ._pb import per_listener


@dataclass(frozen=True)
class Uses:
    ip_allowlists: bool
    providers: tuple[str, ...]
    authorization: bool
    authorizing_providers: tuple[str, ...]  # whose payload RBAC reads
    scoping_providers: tuple[str, ...]  # whose scope claim RBAC reads (normalized to a list)
    token_removal: str  # "all", "some" or "none" of the operations remove the Authorization header
    limiting_providers: tuple[str, ...] = ()  # whose payload rate limits read (consumer keys, exemptions)
    client_certificates: bool = False  # some operation requires a verified client certificate


@per_listener
def uses(listener: ir.Listener) -> Uses:
    """What the listener's operations use, in one pass over them."""
    ip, certs, providers, authorizing, scoping, limiting = False, False, set(), set(), set(), set()
    removing = total = 0
    for pr in listener.paths:
        for op in pr.operations:
            ip = ip or bool(op.ip_allow)
            certs = certs or op.client_cert is not None
            removing += op.remove_token
            total += 1
            if op.auth is not None:
                providers.add(op.auth.provider)
                if op.auth.authorize:
                    authorizing.add(op.auth.provider)
                if op.auth.scope_sets:
                    scoping.add(op.auth.provider)
            for rl in op.rate_limits:
                if rl.provider is not None and (
                    rl.exempt_roles or rl.exempt_scopes or any(k is ir.LimitKey.CONSUMER for k, _ in rl.by)
                ):
                    limiting.add(rl.provider)
                    if rl.exempt_scopes:
                        scoping.add(rl.provider)
    removal = "all" if removing == total else "some" if removing else "none"
    return Uses(
        ip,
        tuple(sorted(providers)),
        bool(authorizing),
        tuple(sorted(authorizing)),
        tuple(sorted(scoping)),
        removal,
        tuple(sorted(limiting)),
        certs,
    )


def envoy_fetches(p: ir.JwtProvider) -> bool:
    """Envoy fetches these keys itself: the control plane never sees them to pin algorithms."""
    return p.jwks_json is None and p.jwks_fetch == "envoy"
