"""Model → IR for what the listeners are and share: each listener's settings, and the header
hygiene every listener applies."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from . import ir
from .errors import Diagnostics
from .model import policy as pol

DEFAULT_LISTENER = {"name": "default", "address": "0.0.0.0", "port": 8080}
# Headers only the gateway may set. Later features (JWT claims…) add the ones they fill.
BUILTIN_IDENTITY_HEADERS = ("x-user-id", "x-user-role", "x-user-email", "x-user-scopes", "x-real-ip", "forwarded")
BUILTIN_IDENTITY_PREFIXES = ("x-user-",)
# What the gateway tells backends about a client (its country; X-Gateway-Risk from soft
# reputation and geo rules): only ever the gateway's, removed from requests with identity headers
GATEWAY_SIGNAL_HEADERS = ("x-gateway-geo-country", "x-gateway-risk")
# The verified client certificate's subject, SANs and fingerprint (listeners with client
# certificates): always the gateway's, whatever ``identityHeaderPrefixes`` says.
CLIENT_CERT_PREFIX = "x-client-cert-"
# Headers many frameworks honour to change the method, path or host they see: behind the
# gateway's back they would turn an allowed request into another one. Removed like identity
# headers unless ``headers.allowOverrideHeaders`` names them.
OVERRIDE_HEADERS = (
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-method",
    "x-original-url",
    "x-rewrite-url",
    "x-forwarded-host",
    "x-forwarded-prefix",
    "x-forwarded-port",
)
BUILTIN_REMOVED_RESPONSE_HEADERS = (
    "server",
    "x-powered-by",
    "x-aspnet-version",
    "x-aspnetmvc-version",
    "x-envoy-upstream-service-time",
)
DEFAULT_HSTS = "max-age=31536000; includeSubDomains"


def listener_ir(
    name: str, spec: dict[str, Any], src: ir.Source, paths: tuple[ir.PathRoute, ...], tls: ir.ListenerTls | None = None
) -> ir.Listener:
    timeouts = spec.get("timeouts", {})
    defaults = ir.ListenerTimeouts()
    return ir.Listener(
        name=name,
        address=spec.get("address", "0.0.0.0"),
        port=spec["port"],
        hostnames=tuple(spec.get("hostnames", ["*"])),
        paths=paths,
        source=src,
        xff_num_trusted_hops=spec.get("xffNumTrustedHops", 0),
        escaped_slashes=ir.EscapedSlashes(spec.get("escapedSlashes", "reject")),
        trust_client_request_id=spec.get("trustClientRequestId", False),
        max_request_headers_kb=spec.get("maxRequestHeadersKb", 60),
        route_scopes=spec.get("routeScopes", "auto"),
        tls=tls,
        timeouts=ir.ListenerTimeouts(
            request_headers_ms=_ms(timeouts.get("requestHeaders"), defaults.request_headers_ms),
            stream_idle_ms=_ms(timeouts.get("streamIdle"), defaults.stream_idle_ms),
            request_ms=_ms(timeouts.get("request"), defaults.request_ms),
            connection_idle_ms=_ms(timeouts.get("connectionIdle"), defaults.connection_idle_ms),
        ),
    )


def header_policy(h: dict[str, Any], providers: Iterable[ir.JwtProvider]) -> ir.HeaderPolicy:
    """The policy's ``headers`` (or their defaults), with every header a provider's claims set."""
    hsts = h.get("strictTransportSecurity", DEFAULT_HSTS)
    allowed = {n.lower() for n in h.get("allowOverrideHeaders", [])}
    return ir.HeaderPolicy(
        strip_request_headers=_lower_unique(
            BUILTIN_IDENTITY_HEADERS,
            GATEWAY_SIGNAL_HEADERS,
            [n for n in OVERRIDE_HEADERS if n not in allowed],
            h.get("identityHeaders", []),
            # headers set from verified claims are identity headers whatever their names
            sorted({header for p in providers for _claim, header in p.claim_headers}),
        ),
        strip_request_header_prefixes=_lower_unique(
            h.get("identityHeaderPrefixes", BUILTIN_IDENTITY_PREFIXES), [CLIENT_CERT_PREFIX]
        ),
        remove_response_headers=_lower_unique(BUILTIN_REMOVED_RESPONSE_HEADERS, h.get("removeResponseHeaders", [])),
        strict_transport_security=hsts or None,
    )


def _ms(value: str | None, default: int) -> int:
    return pol.duration_ms(value) if value else default


def _lower_unique(*groups: Any) -> tuple[str, ...]:
    out: dict[str, None] = {}
    for group in groups:
        for name in group:
            out[name.lower()] = None
    return tuple(out)


def check_ports(
    lst: ir.Listener, spec: dict[str, Any], src: ir.Source, ports: dict[tuple[str, int], str], diags: Diagnostics
) -> None:
    """A listener's address and ports (its own, its HTTPS redirect's) taken by no other listener
    before it (``ports``: taken so far → by which listener; this one's are added)."""
    bound = [(lst.port, "/port")]
    if "tls" in spec and "httpRedirectPort" in spec["tls"]:
        bound.append((spec["tls"]["httpRedirectPort"], "/tls/httpRedirectPort"))
    for port, where in bound:
        key = (lst.address, port)
        if key in ports:
            other = "its port too" if ports[key] == lst.name else f"listener {ports[key]!r}"
            diags.error(
                f"listener {lst.name!r} uses {lst.address}:{port} like {other}",
                src.file,
                src.pointer + where,
                "port-conflict",
            )
        ports[key] = lst.name
