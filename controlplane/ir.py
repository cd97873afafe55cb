"""The intermediate representation: what the gateway must do, with no Envoy in sight.

Everything here is frozen and typed. Routes carry their fully resolved settings, so
translators never look back at specs or policies. ``to_dict`` gives a plain structure
for YAML dumps and golden files.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, TypeVar, cast

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Source:
    """Where a piece of configuration came from, for messages and NACK mapping."""

    file: str
    pointer: str = ""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts: int
    retry_on: tuple[str, ...]
    per_try_timeout_ms: int | None = None
    retriable_status_codes: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class HealthCheck:
    path: str
    interval_ms: int = 5000
    timeout_ms: int = 1000
    healthy_threshold: int = 2
    unhealthy_threshold: int = 3
    expected_statuses: tuple[int, ...] = (200,)


@dataclass(frozen=True, slots=True)
class CircuitBreaker:
    max_connections: int | None = None
    max_pending_requests: int | None = None
    max_requests: int | None = None
    max_retries: int | None = None


@dataclass(frozen=True, slots=True)
class OutlierDetection:
    consecutive_5xx: int = 5
    interval_ms: int = 10000
    base_ejection_time_ms: int = 30000
    max_ejection_percent: int = 50


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int

    @property
    def is_ip(self) -> bool:
        import ipaddress

        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True


class Protocol(enum.Enum):
    HTTP1 = "http1"
    HTTP2 = "http2"


# Field metadata of values that must never be printed (private keys): dumps show a placeholder.
SECRET = {"secret": True}


@dataclass(frozen=True, slots=True)
class Certificate:
    """A certificate chain and its private key, delivered to Envoys as one SDS secret.

    The PEM texts are read at compile time (the files are watched like specs), so a renewed
    file becomes a new secret version under the same name: new handshakes use it, nothing
    that references it (a listener, a cluster) changes."""

    name: str  # the secret's name: stable while the files change
    cert_file: str  # absolute paths, for messages and for static configurations
    key_file: str
    cert_pem: str
    key_pem: str = dataclasses.field(metadata=SECRET)
    source: Source = Source("")
    hostnames: tuple[str, ...] = ()  # SNI names it answers (listener certificates); () the default
    not_after: str = ""  # ISO 8601 expiry of the leaf (status, metrics)


@dataclass(frozen=True, slots=True)
class TrustBundle:
    """CA certificates that verify peers (client certificates, upstream servers), as an SDS secret."""

    name: str
    file: str
    pem: str
    source: Source = Source("")


@dataclass(frozen=True, slots=True)
class KubeService:
    """A Kubernetes Service whose ready endpoints an upstream is (``upstreams[].service``)."""

    namespace: str
    name: str
    port: str  # a number, or the name of the Service's port

    @property
    def host(self) -> str:
        return f"{self.name}.{self.namespace}.svc"


@dataclass(frozen=True, slots=True)
class Upstream:
    """A backend service: a set of endpoints with connection behaviour."""

    name: str
    endpoints: tuple[Endpoint, ...]
    source: Source
    tls: bool = False
    sni: str | None = None
    ca_file: str | None = None  # verifies the upstream's certificate; None: the system CAs
    ca: TrustBundle | None = None  # a CA bundle from the policy (over SDS); None: ca_file
    # SANs the upstream's certificate must present (Envoy's SAN matchers); () and an SNI: the SNI
    subject_alt_names: tuple[str, ...] = ()
    client_certificate: Certificate | None = None  # mTLS: what the gateway presents
    min_tls_version: str = "1.2"
    # The mesh backend whose sidecar this upstream reaches (mTLS with workload certificates).
    mesh_backend: str | None = None
    protocol: Protocol = Protocol.HTTP1
    connect_timeout_ms: int = 2000
    health_check: HealthCheck | None = None
    circuit_breaker: CircuitBreaker | None = None
    outlier_detection: OutlierDetection | None = None
    service: KubeService | None = None  # endpoints from the cluster's EndpointSlices (over EDS)

    @property
    def uses_dns(self) -> bool:
        """Endpoints given by name are resolved by Envoy; IP endpoints are sent over EDS."""
        return not all(e.is_ip for e in self.endpoints)


class SegmentKind(enum.IntEnum):
    """Ordering of path segments by specificity: lower sorts first (matches first)."""

    LITERAL = 0
    MIXED = 1  # literal text around a parameter, e.g. "{id}.csv" or "{name}:cancel"
    PARAMETER = 2


@dataclass(frozen=True, slots=True)
class PathPattern:
    """One path template as served by the gateway (mount prefix included).

    ``regex`` is an RE2 expression for the whole path, ``None`` for literal paths.
    """

    template: str
    regex: str | None

    @property
    def is_literal(self) -> bool:
        return self.regex is None

    def sort_key(self) -> bytes:
        """Precedence: segment by segment, literal before mixed before parameter, then the
        segment with more literal text, so that /orders/export wins over /orders/{id}."""
        return precedence(self.template)


def precedence(template: str) -> bytes:
    """The order of the tuple ``((kind, -literal length) per segment, template)``, as bytes
    that compare like it (a byte comparison: sorting 6,500 paths took 15 ms with tuples).

    Three bytes per segment (kind + 1, then 65535 - literal length), then a zero byte, which
    sorts a path before the longer paths it is a prefix of, then the template."""
    segment_key = _SEGMENT_KEYS.get
    keys = [segment_key(raw) or _segment_key(raw) for raw in template[1:].split("/")]
    keys.append(b"\0")
    keys.append(template.encode())
    return b"".join(keys)


# The three bytes of one segment, by its text: segments recur in thousands of paths.
_SEGMENT_KEYS: dict[str, bytes] = {}
_PARAMETER = re.compile(r"\{[^{}]*\}")


def _segment_key(raw: str) -> bytes:
    literal = _PARAMETER.sub("", raw) if "{" in raw else raw
    kind = SegmentKind.LITERAL if literal == raw else SegmentKind.PARAMETER if not literal else SegmentKind.MIXED
    key = bytes([int(kind) + 1]) + (65535 - min(len(literal), 65535)).to_bytes(2, "big")
    if len(_SEGMENT_KEYS) >= 100_000:
        _SEGMENT_KEYS.clear()
    _SEGMENT_KEYS[raw] = key
    return key


@dataclass(frozen=True, slots=True)
class JwtProvider:
    """Who issues the tokens the gateway accepts, and how to check them."""

    name: str
    issuer: str
    audiences: tuple[str, ...]
    source: Source
    jwks_uri: str | None = None  # fetched by every Envoy (remote JWKS) when jwks_json is None
    jwks_json: str | None = None  # keys given to Envoy inline (from a file, or fetched by the control plane)
    jwks_fetch: str = "envoy"  # "envoy", "controlplane", or "static" (file / inline)
    cache_duration_ms: int = 600_000
    refresh_interval_ms: int = 60_000
    timeout_ms: int = 5_000
    ca_file: str | None = None
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    clock_skew_s: int = 60
    query_parameters: tuple[str, ...] = ()
    cookies: tuple[str, ...] = ()
    claim_headers: tuple[tuple[str, str], ...] = (("sub", "x-user-id"), ("role", "x-user-role"))
    roles_claim: str = "role"
    scopes_claim: str = "scope"
    forward_token: bool = False  # the token (header, query parameter, cookie) reaches the backend
    claim_error_status: int = 403  # a claim header's claim that cannot be a header value refuses the request

    @property
    def jwks_cluster(self) -> str:
        return f"jwks.{self.name}"


@dataclass(frozen=True, slots=True)
class Auth:
    """Who may call an operation: a valid token from ``provider`` and, when ``authorize``,
    any of ``roles`` or all scopes of any of ``scope_sets``."""

    provider: str
    authorize: bool = False
    roles: tuple[str, ...] = ()
    scope_sets: tuple[tuple[str, ...], ...] = ()
    optional: bool = False  # a token is checked if present, not required (OpenAPI ``{}`` requirement)
    dry_run: bool = False  # authorization is logged, not enforced


class LimitKey(enum.Enum):
    """What one bucket of a rate limit counts: a request joins the bucket of its value."""

    CONSUMER = "consumer"  # a verified claim (``sub``); anonymous requests: the client address
    IP = "ip"  # the client address the listener trusts
    OPERATION = "operation"  # everyone calling the operation shares one bucket
    HEADER = "header"  # a request header (an API key); requests without it: the client address


# (provider whose payload is read, roles, scopes, client ranges): callers a limit does not count
Exemption = tuple[str | None, tuple[str, ...], tuple[str, ...], tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class RateLimit:
    """One limit: at most ``requests`` per window, for each ``(unit, requests)`` of ``windows``,
    per bucket of ``by``. Every operation it applies to shares its buckets."""

    id: str  # unique in the gateway; the rate-limit service and Envoy's descriptors name it
    name: str
    windows: tuple[tuple[str, int], ...]  # (second|minute|hour|day, requests), shortest first
    by: tuple[tuple[LimitKey, str], ...]  # (key, detail): the claim for CONSUMER, the header name
    source: Source
    shadow: bool = False  # counted and reported, never refused
    fail_closed: bool = False  # refused (503) when the counting store cannot answer
    local: bool = False  # counted by each Envoy alone (no service)
    provider: str | None = None  # whose verified payload the key and exemptions read (None: no token)
    # Callers not counted: any of these roles or scopes (verified), or a client in these ranges.
    exempt_roles: tuple[str, ...] = ()
    exempt_scopes: tuple[str, ...] = ()
    exempt_clients: tuple[str, ...] = ()

    @property
    def exemption(self) -> Exemption | None:
        """Who is not counted (None: everyone is): requests with equal exemptions share one check."""
        if not (self.exempt_roles or self.exempt_scopes or self.exempt_clients):
            return None
        provider = self.provider if self.exempt_roles or self.exempt_scopes else None
        return provider, self.exempt_roles, self.exempt_scopes, self.exempt_clients


WINDOW_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86_400}


@dataclass(frozen=True, slots=True)
class RateLimitService:
    """Where Envoys reach the rate-limit service, and the domain its limits live in."""

    domain: str
    endpoints: tuple[Endpoint, ...]
    timeout_ms: int
    source: Source

    @property
    def cluster(self) -> str:
        return "ratelimit-service"


@dataclass(frozen=True, slots=True)
class Waf:
    """How the WAF inspects an operation's requests."""

    prevent: bool  # refuse (403) what it finds; else log it and let the request through
    fail_open: bool  # the service cannot answer: let requests through (else 503)
    exclude_locations: tuple[str, ...] = ()  # "body:/content", "query:q": not inspected
    exclude_families: tuple[str, ...] = ()  # "xss": not looked for


@dataclass(frozen=True, slots=True)
class SpecPull:
    """An API whose spec the control plane polls from its backend (``apis[].pull``)."""

    api: str
    url: str
    interval_ms: int
    timeout_ms: int
    ca_file: str | None
    source: Source
    allow_security_changes: bool = False


@dataclass(frozen=True, slots=True)
class ReputationFeed:
    """One IP-reputation feed as the policy names it (``reputation.feeds[]``), without its entries."""

    name: str
    action: str  # "block" (403) or "soft" (X-Gateway-Risk: reputation to the backend)
    source: Source
    url: str | None = None  # fetched by the control plane; else a file read by the compile
    ca_file: str | None = None
    refresh_ms: int = 3_600_000
    timeout_ms: int = 30_000
    max_entries: int = 2_000_000
    expires: str | None = None  # RFC 3339 time, or a duration after the copy was fetched


@dataclass(frozen=True, slots=True)
class Reputation:
    """The feeds in force, merged: every listener checks a client against these ranges."""

    feeds: tuple[ReputationFeed, ...]
    block: tuple[str, ...]
    soft: tuple[str, ...]  # listed only by soft feeds
    exempt: tuple[str, ...]  # reputation.exempt (allowlisted ranges are exempt too)
    next_expiry: float | None = None  # when a feed in force expires: the compile to run then


@dataclass(frozen=True, slots=True)
class PushClient:
    """A pipeline that may push specs for some APIs (``push.clients[]``)."""

    name: str
    token_sha256: str | None
    subject_alt_names: tuple[str, ...]
    apis: tuple[str, ...]  # exact names, or prefixes ending in ``*``
    source: Source
    # What a policy fragment the client pushes may declare a new API with:
    path_prefixes: tuple[str, ...] = ()  # mounted under one of these
    upstreams: tuple[str, ...] = ()  # sent to one of these (exact, or prefixes ending in ``*``)
    allow_security_changes: bool = False  # else a push that diff flags is refused

    def owns(self, api: str) -> bool:
        return any(name_matches(p, api) for p in self.apis)


def name_matches(pattern: str, name: str) -> bool:
    """``name`` is ``pattern``, or starts with it when it ends in ``*`` (push clients' APIs,
    upstreams and certificate names)."""
    return name == pattern or (pattern.endswith("*") and name.startswith(pattern[:-1]))


@dataclass(frozen=True, slots=True)
class WafService:
    """Where Envoys reach the WAF service, and what it is given."""

    endpoints: tuple[Endpoint, ...]
    timeout_ms: int
    max_body_bytes: int  # larger bodies are refused (413): a body is inspected whole or not at all
    rules: str  # the rule set pushed to the service (JSON): the default one with the policy's changes
    source: Source
    # Each inspected operation's positive model from its OpenAPI description (JSON, by name):
    # parameters, body media types and schema, locations the schema makes safe.
    models: str = "{}"
    mask_endpoints: tuple[Endpoint, ...] = ()  # where it masks responses (ext_proc; its own port)
    max_response_bytes: int = 8 << 20  # a larger response of a masked operation is not sent (502)

    @property
    def mask_cluster(self) -> str:
        return "waf-mask-service"

    @property
    def cluster(self) -> str:
        return "waf-service"


@dataclass(frozen=True, slots=True)
class Cors:
    """Cross-origin calls to an operation from browsers (controlplane/cors.py reads the policy)."""

    # (kind, value): ("exact", "https://app.example.com") or ("regex", an RE2 matching whole origins)
    origins: tuple[tuple[str, str], ...]
    allow_headers: tuple[str, ...]
    expose_headers: tuple[str, ...]
    allow_credentials: bool
    max_age_s: int
    source: Source  # where the resolved setting was written


@dataclass(frozen=True, slots=True)
class Geo:
    """The ``geo`` section: the MaxMind-format country database every listener looks clients up in."""

    database: str  # the .mmdb file's absolute path, read by Envoy (and checked by the compile)
    unknown_allowed: bool  # what an address the database does not place gets (unknownCountry)
    source: Source


@dataclass(frozen=True, slots=True)
class GeoRule:
    """Countries allowed (``allow``) or denied by an operation (controlplane/geo.py reads the policy).
    A client the rule refuses gets 403 (``hard``) or goes on marked ``X-Gateway-Risk: geo`` (``soft``)."""

    countries: tuple[str, ...]  # ISO 3166-1 alpha-2, as the database writes them
    allow: bool
    mode: str  # "hard" or "soft"
    unknown_allowed: bool  # the geo section's unknownCountry, resolved here: routes carry the whole decision
    source: Source  # where the resolved setting was written


@dataclass(frozen=True, slots=True)
class HeaderChanges:
    """Changes to one direction's headers (controlplane/header_rules.py reads the policy).
    Names lower case; values may hold Envoy substitution variables (an allowlist)."""

    add_if_absent: tuple[tuple[str, str], ...] = ()  # the policy's ``add``
    overwrite: tuple[tuple[str, str], ...] = ()  # ``set``
    append: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()
    source: Source | None = None  # where it was written

    def any(self) -> bool:
        return bool(self.add_if_absent or self.overwrite or self.append or self.remove)


@dataclass(frozen=True, slots=True)
class HeaderRules:
    """Header changes of an operation or a listener (None: none in that direction)."""

    request: HeaderChanges | None = None
    response: HeaderChanges | None = None


@dataclass(frozen=True, slots=True)
class Operation:
    """One method on one path: a route to an upstream."""

    name: str  # unique per listener: "<api>.<operationId>"
    api: str
    operation_id: str
    method: str
    path: PathPattern  # this operation's own pattern: parameter types may differ per method
    upstream: str
    timeout_ms: int
    retry: RetryPolicy | None
    sensitive: bool
    source: Source
    # Path sent upstream: the part after ``path_prefix`` is kept, the prefix swapped.
    rewrite_prefix: tuple[str, str] | None = None
    # Query parameters (name, exact value) the request must carry to be this operation.
    query: tuple[tuple[str, str], ...] = ()
    auth: Auth | None = None  # None: public
    # Client address allowlists, checked before authentication; every list must admit the client.
    ip_allow: tuple[tuple[str, ...], ...] = ()
    # The client's Authorization header is removed before the backend: the API has a provider
    # that does not forward tokens (public operations included, where no token is checked).
    remove_token: bool = False
    # Host header sent upstream (its name and, when not the scheme's default, port): set for
    # upstreams named by host, which often serve several virtual hosts; None keeps the client's.
    host_rewrite: str | None = None
    # Limits counted for each call (after authentication and authorization).
    rate_limits: tuple[RateLimit, ...] = ()
    # A verified client certificate is required, with one of these names (its URI SAN, else
    # DNS SAN, else subject); () any certificate the listener's CA signed; None: not required.
    client_cert: tuple[str, ...] | None = None
    waf: Waf | None = None  # None: not inspected
    # Responses masked by the WAF service: card numbers, and these fields' values (None: not masked).
    mask: tuple[str, ...] | None = None
    # Browsers on these origins may call it (None: no CORS; preflights for it are refused).
    cors: Cors | None = None
    # Headers changed on its requests and responses, after the listener's (None: none).
    header_rules: HeaderRules | None = None
    # Clients refused by country (None: any country), checked after the IP allowlists and reputation.
    geo: GeoRule | None = None


@dataclass(frozen=True, slots=True)
class PathRoute:
    """Every operation declared on one path; other methods get 405 with ``Allow``.

    ``path`` matches every request any of the operations could take (the union of their
    patterns when parameter types differ by method).
    """

    path: PathPattern
    operations: tuple[Operation, ...]

    @property
    def allow(self) -> tuple[str, ...]:
        return tuple(sorted({op.method for op in self.operations}))


class EscapedSlashes(enum.Enum):
    REJECT = "reject"
    UNESCAPE_AND_REDIRECT = "unescapeAndRedirect"


@dataclass(frozen=True, slots=True)
class ListenerTimeouts:
    request_headers_ms: int = 10_000
    stream_idle_ms: int = 60_000
    request_ms: int = 300_000
    connection_idle_ms: int = 3_600_000


@dataclass(frozen=True, slots=True)
class HeaderPolicy:
    """Header hygiene shared by all listeners."""

    strip_request_headers: tuple[str, ...]  # exact names, lower case
    strip_request_header_prefixes: tuple[str, ...]  # lower case
    remove_response_headers: tuple[str, ...]
    strict_transport_security: str | None


@dataclass(frozen=True, slots=True)
class ClientCertificates:
    """Client-certificate authentication on a listener (partners, machines)."""

    ca: TrustBundle
    required: bool = True
    # SANs a client certificate must have one of ("spiffe://…", "*.partner.example", an address);
    # () any certificate the CA signed
    subject_alt_names: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ListenerTls:
    """HTTPS on a listener. Each certificate group with hostnames gets its own filter chain
    (chosen by SNI); certificates without hostnames (RSA and ECDSA side by side) are the default."""

    certificates: tuple[Certificate, ...]
    min_version: str = "1.2"
    max_version: str = "1.3"
    cipher_suites: tuple[str, ...] = ()  # TLS 1.2 suites; TLS 1.3's are fixed by BoringSSL
    alpn: tuple[str, ...] = ("h2", "http/1.1")
    redirect_port: int | None = None  # a plain-HTTP listener on this port that only redirects here
    client: ClientCertificates | None = None


@dataclass(frozen=True, slots=True)
class Listener:
    name: str
    address: str
    port: int
    hostnames: tuple[str, ...]
    paths: tuple[PathRoute, ...]  # sorted by precedence
    source: Source
    xff_num_trusted_hops: int = 0
    escaped_slashes: EscapedSlashes = EscapedSlashes.REJECT
    trust_client_request_id: bool = False
    max_request_headers_kb: int = 60
    timeouts: ListenerTimeouts = ListenerTimeouts()
    # One route configuration per first path segment ("scopes"), so an edit re-sends only its
    # scope: "auto" (large listeners), "always" or "never".
    route_scopes: str = "auto"
    tls: ListenerTls | None = None
    header_rules: HeaderRules | None = None  # applied before its operations' own


@dataclass(frozen=True, slots=True)
class Gateway:
    """The whole compiled intent: the single input of every translator."""

    listeners: tuple[Listener, ...]
    upstreams: tuple[Upstream, ...]
    headers: HeaderPolicy
    providers: tuple[JwtProvider, ...] = ()
    access_log: bool = True
    max_connections: int = 50_000
    max_heap_bytes: int = 1 << 30
    ratelimit_service: RateLimitService | None = None  # set when some limit is counted globally
    # Node groups (the organizational unit of an Envoy's xDS client certificate) that may
    # receive the gateway's certificates and keys over SDS.
    secret_groups: tuple[str, ...] = ("gateway",)
    mesh: Mesh | None = None
    waf_service: WafService | None = None  # set when some operation is inspected
    push_clients: tuple[PushClient, ...] = ()  # who may push specs, for the push API
    spec_pulls: tuple[SpecPull, ...] = ()  # APIs whose spec the control plane polls
    reputation: Reputation | None = None  # IP-reputation feeds (reputation.feeds)
    geo: Geo | None = None  # the country database (geo); operations' rules are GeoRule

    def certificates(self) -> list[Certificate]:
        """Every certificate with a private key the gateway's Envoys are given."""
        out = [c for lst in self.listeners if lst.tls for c in lst.tls.certificates]
        out.extend(u.client_certificate for u in self.upstreams if u.client_certificate)
        return out


@dataclass(frozen=True, slots=True)
class MeshBackend:
    """A backend behind a sidecar Envoy that only answers the gateway's identity."""

    name: str
    upstream: str  # the gateway's upstream whose endpoints are this sidecar's inbound listener
    address: str  # the sidecar's inbound listener
    port: int
    app: Endpoint  # where the sidecar forwards (the application, on localhost)
    source: Source

    @property
    def group(self) -> str:
        """The node group of its sidecars (the OU of their xDS client certificates)."""
        return f"backend.{self.name}"


@dataclass(frozen=True, slots=True)
class Mesh:
    """Workload identities: short-lived certificates with SPIFFE URIs, issued by the control
    plane (its built-in CA, or ``ca``) and rotated over SDS."""

    trust_domain: str
    ttl_s: int
    backends: tuple[MeshBackend, ...]
    source: Source
    ca: Certificate | None = None  # an existing CA's certificate and key; None: the built-in CA

    def gateway_uri(self, group: str) -> str:
        return f"spiffe://{self.trust_domain}/gateway/{group}"

    def backend_uri(self, name: str) -> str:
        return f"spiffe://{self.trust_domain}/backend/{name}"


MESH_CA_SECRET = "mesh/ca"  # the trust bundle every mesh member verifies peers with
MESH_GATEWAY_SECRET = "mesh/gateway"  # the gateway's workload certificate


def mesh_backend_secret(name: str) -> str:
    return f"mesh/backend/{name}"


def _quick(cls: type[T]) -> type[T]:
    """A constructor of ``cls`` (a frozen dataclass with slots) that skips the cost of frozen.

    A frozen dataclass's ``__init__`` sets each field with ``object.__setattr__``: for an
    ``Operation`` (16 fields) that was a third of the operation's IR. Here a twin dataclass,
    not frozen, with the same slots in the same order, is built (plain slot stores), then
    becomes a ``cls``: the object is an ordinary instance of ``cls`` (frozen, equal and hashed
    as any other). Typed as ``cls``, so that mypy checks the arguments against its fields.
    """
    fields = [
        (f.name, f.type, dataclasses.field(default=f.default, default_factory=f.default_factory))
        for f in dataclasses.fields(cast(Any, cls))
    ]
    twin = dataclasses.make_dataclass(f"_Quick{cls.__name__}", fields, slots=True, eq=False, repr=False)
    assert twin.__slots__ == cls.__slots__  # type: ignore[attr-defined]
    probe: Any = object.__new__(twin)
    probe.__class__ = cls  # raises TypeError if the layouts ever differ

    def make(*args: Any, **kwargs: Any) -> T:
        made: Any = twin(*args, **kwargs)
        made.__class__ = cls
        return cast(T, made)

    make.__doc__ = f"``{cls.__name__}(...)``, built faster (see ``_quick``)."
    return cast(type[T], make)


# The IR objects made once per operation or path of a large compile.
new_operation = _quick(Operation)
new_path_route = _quick(PathRoute)
new_path_pattern = _quick(PathPattern)
new_source = _quick(Source)


def from_dict(cls: type[T], data: Any) -> T:
    """Rebuild an IR object from :func:`to_dict` output (golden files are read this way)."""
    return cast(T, _from_plain(cls, data))


def _from_plain(tp: Any, data: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if data is None:
            return None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _from_plain(inner, data)
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_from_plain(args[0], v) for v in data)
        return tuple(_from_plain(a, v) for a, v in zip(args, data, strict=False))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(data)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return tp(
            **{f.name: _from_plain(hints[f.name], data[f.name]) for f in dataclasses.fields(tp) if f.name in data}
        )
    return data


REDACTED = "<redacted>"


def to_dict(value: Any) -> Any:
    """Plain data for YAML: dataclasses become mappings, enums their values, tuples lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: REDACTED if f.metadata.get("secret") else to_dict(getattr(value, f.name))
            for f in dataclasses.fields(value)
        }
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (tuple, list)):
        return [to_dict(v) for v in value]
    return value
