"""TLS: SDS secrets, the listener's TLS contexts (one filter chain per SNI group), the
plain-HTTP listener that redirects to HTTPS, and upstream TLS/mTLS.

Certificates, keys and CA bundles are SDS secrets on the ADS stream, never inside a listener
or cluster: a renewed certificate is a new version of its secret, so Envoy uses it for new
handshakes without touching the listener (no drain, no dropped connection). The static
bootstrap inlines them instead (``bootstrap.static_bootstrap``).
"""

from __future__ import annotations

import ipaddress
import re

from envoy.config.core.v3 import base_pb2
from envoy.config.listener.v3 import listener_components_pb2
from envoy.config.rbac.v3 import rbac_pb2
from envoy.config.route.v3 import route_components_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as rbac_filter_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2, tls_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from google.protobuf import wrappers_pb2

from .. import ir
from ._authfacts import uses
from ._pb import ads, duration, packed

TRANSPORT_SOCKET = "envoy.transport_sockets.tls"
_VERSIONS = {"1.2": common_pb2.TlsParameters.TLSv1_2, "1.3": common_pb2.TlsParameters.TLSv1_3}
# Headers the gateway sets from a verified client certificate (client-sent copies are removed
# by the first HTTP filter: ``edge.CLIENT_CERT_PREFIX``). Empty values are not added.
CLIENT_CERT_HEADERS = (
    ("x-client-cert-subject", "%DOWNSTREAM_PEER_SUBJECT%"),
    ("x-client-cert-uri-san", "%DOWNSTREAM_PEER_URI_SAN%"),
    ("x-client-cert-dns-san", "%DOWNSTREAM_PEER_DNS_SAN%"),
    ("x-client-cert-sha256", "%DOWNSTREAM_PEER_FINGERPRINT_256%"),
)


def secrets(gw: ir.Gateway) -> list[tuple[secret_pb2.Secret, ir.Source]]:
    """Every certificate and CA bundle the gateway's listeners and clusters reference."""
    out: dict[str, tuple[secret_pb2.Secret, ir.Source]] = {}
    for cert in gw.certificates():
        out[cert.name] = (certificate_secret(cert), cert.source)
    bundles = [lst.tls.client.ca for lst in gw.listeners if lst.tls and lst.tls.client]
    bundles.extend(u.ca for u in gw.upstreams if u.ca)
    for bundle in bundles:
        out[bundle.name] = (bundle_secret(bundle), bundle.source)
    return [out[name] for name in sorted(out)]


def certificate_secret(cert: ir.Certificate) -> secret_pb2.Secret:
    return secret_pb2.Secret(
        name=cert.name,
        tls_certificate=common_pb2.TlsCertificate(
            certificate_chain=base_pb2.DataSource(inline_bytes=cert.cert_pem.encode("latin-1")),
            private_key=base_pb2.DataSource(inline_bytes=cert.key_pem.encode("latin-1")),
        ),
    )


def bundle_secret(bundle: ir.TrustBundle) -> secret_pb2.Secret:
    return secret_pb2.Secret(
        name=bundle.name,
        validation_context=common_pb2.CertificateValidationContext(
            trusted_ca=base_pb2.DataSource(inline_bytes=bundle.pem.encode("latin-1"))
        ),
    )


def sds(name: str) -> secret_pb2.SdsSecretConfig:
    return secret_pb2.SdsSecretConfig(name=name, sds_config=ads())


def san_matchers(names: tuple[str, ...]) -> list[common_pb2.SubjectAltNameMatcher]:
    """Policy SAN forms → Envoy's typed SAN matchers: ``scheme://…`` a URI (a trailing ``*``
    is a prefix), ``*.example.com`` any DNS name under it, ``a@b`` an e-mail, else an
    address or an exact DNS name."""
    M = common_pb2.SubjectAltNameMatcher
    out = []
    for name in names:
        if "://" in name:
            matcher = (
                string_pb2.StringMatcher(prefix=name[:-1])
                if name.endswith("*")
                else string_pb2.StringMatcher(exact=name)
            )
            out.append(M(san_type=M.URI, matcher=matcher))
        elif name.startswith("*."):
            out.append(M(san_type=M.DNS, matcher=string_pb2.StringMatcher(suffix=name[1:])))
        elif "@" in name:
            out.append(M(san_type=M.EMAIL, matcher=string_pb2.StringMatcher(exact=name)))
        else:
            try:
                ipaddress.ip_address(name)
                out.append(M(san_type=M.IP_ADDRESS, matcher=string_pb2.StringMatcher(exact=name)))
            except ValueError:
                out.append(M(san_type=M.DNS, matcher=string_pb2.StringMatcher(exact=name)))
    return out


def peer_validation(
    common: tls_pb2.CommonTlsContext, bundle: str | None, sans: tuple[str, ...], system_ca: str | None = None
) -> None:
    """Peers verified by ``bundle`` (an SDS secret) or the system CAs, with SAN matchers inline."""
    matchers = common_pb2.CertificateValidationContext(match_typed_subject_alt_names=san_matchers(sans))
    if bundle is None:
        if system_ca is not None:
            matchers.trusted_ca.filename = system_ca
        common.validation_context.CopyFrom(matchers)
        return
    common.combined_validation_context.CopyFrom(
        tls_pb2.CommonTlsContext.CombinedCertificateValidationContext(
            default_validation_context=matchers, validation_context_sds_secret_config=sds(bundle)
        )
    )


def tls_params(low: str, high: str, ciphers: tuple[str, ...] = ()) -> common_pb2.TlsParameters:
    return common_pb2.TlsParameters(
        tls_minimum_protocol_version=_VERSIONS[low], tls_maximum_protocol_version=_VERSIONS[high], cipher_suites=ciphers
    )


def downstream_context(tls: ir.ListenerTls, certificates: list[ir.Certificate]) -> tls_pb2.DownstreamTlsContext:
    common = tls_pb2.CommonTlsContext(
        tls_params=tls_params(tls.min_version, tls.max_version, tls.cipher_suites),
        tls_certificate_sds_secret_configs=[sds(c.name) for c in certificates],
        alpn_protocols=list(tls.alpn),
    )
    context = tls_pb2.DownstreamTlsContext(common_tls_context=common)  # a copy of ``common``
    if tls.client is not None:
        peer_validation(context.common_tls_context, tls.client.ca.name, tls.client.subject_alt_names)
        context.require_client_certificate.CopyFrom(wrappers_pb2.BoolValue(value=tls.client.required))
    return context


def filter_chains(
    tls: ir.ListenerTls,
    hcm: hcm_pb2.HttpConnectionManager,
    handshake_timeout_ms: int,
) -> list[listener_components_pb2.FilterChain]:
    """Chains chosen by SNI, then the catch-all chain. Certificates without hostnames serve the
    catch-all chain (RSA and ECDSA side by side: Envoy picks what the client supports); when
    every certificate names hosts, the first group is also the catch-all's, so a client that
    sends no SNI (or an unknown name) still gets a certificate rather than a closed connection.

    With several chains, each answers only the hosts its certificate is for: a request on a
    connection whose SNI chose another certificate (domain fronting; a browser coalescing
    HTTP/2 connections) gets 421, so that the SNI a client verified and the Host the gateway
    routes by always agree."""
    groups: dict[tuple[str, ...], list[ir.Certificate]] = {}
    for cert in tls.certificates:
        groups.setdefault(cert.hostnames, []).append(cert)
    default_names = () if () in groups else next(iter(groups))
    others = tuple(h for names in groups if names != default_names for h in names)

    def chain(
        name: str, certs: list[ir.Certificate], hostnames: tuple[str, ...] = ()
    ) -> listener_components_pb2.FilterChain:
        manager = hcm
        if len(groups) > 1:
            manager = hcm_pb2.HttpConnectionManager()
            manager.CopyFrom(hcm)
            # after the identity strip (first), before anything reads the request
            manager.http_filters.insert(1, misdirected_filter(hostnames, others if not hostnames else ()))
        out = listener_components_pb2.FilterChain(
            name=name,
            filters=[
                listener_components_pb2.Filter(
                    name="envoy.filters.network.http_connection_manager", typed_config=packed(manager)
                )
            ],
            transport_socket=base_pb2.TransportSocket(
                name=TRANSPORT_SOCKET, typed_config=packed(downstream_context(tls, certs))
            ),
            # a client that stops inside the handshake (after its ClientHello) is closed
            transport_socket_connect_timeout=duration(handshake_timeout_ms),
        )
        if hostnames:
            out.filter_chain_match.server_names.extend(hostnames)
        return out

    named = [chain("sni:" + ",".join(h), certs, h) for h, certs in groups.items() if h]
    return [*named, chain("default", groups[default_names])]


MISDIRECTED_FILTER = "misdirected-host"
MISDIRECTED_POLICY = "misdirected"


def _hosts_regex(hostnames: tuple[str, ...]) -> str:
    parts = ["[^.]+" + re.escape(h[1:]) if h.startswith("*.") else re.escape(h) for h in hostnames]
    return "(?i)(?:" + "|".join(parts) + ")"


def misdirected_filter(own: tuple[str, ...], others: tuple[str, ...]) -> hcm_pb2.HttpFilter:
    """Refuse (421, see ``headers.local_reply_config``) a Host outside ``own`` (an SNI chain),
    or inside ``others`` (the catch-all chain: those hosts have certificates of their own)."""

    def host_is(hostnames: tuple[str, ...]) -> rbac_pb2.Permission:
        return rbac_pb2.Permission(
            header=route_components_pb2.HeaderMatcher(
                name=":authority",
                string_match=string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=_hosts_regex(hostnames))),
            )
        )

    permission = rbac_pb2.Permission(not_rule=host_is(own)) if own else host_is(others)
    if not own and not others:
        permission = rbac_pb2.Permission(not_rule=rbac_pb2.Permission(any=True))
    policy = rbac_pb2.Policy(permissions=[permission], principals=[rbac_pb2.Principal(any=True)])
    rules = rbac_pb2.RBAC(action=rbac_pb2.RBAC.DENY, policies={MISDIRECTED_POLICY: policy})
    return hcm_pb2.HttpFilter(name=MISDIRECTED_FILTER, typed_config=packed(rbac_filter_pb2.RBAC(rules=rules)))


def upstream_socket(upstream: ir.Upstream, system_ca: str) -> base_pb2.TransportSocket:
    common = tls_pb2.CommonTlsContext(tls_params=tls_params(upstream.min_tls_version, "1.3"))
    sans = upstream.subject_alt_names or ((upstream.sni,) if upstream.sni else ())
    if upstream.mesh_backend is not None:
        # a sidecar: the gateway's workload certificate, and the backend's SPIFFE identity
        peer_validation(common, ir.MESH_CA_SECRET, sans)
        common.tls_certificate_sds_secret_configs.append(sds(ir.MESH_GATEWAY_SECRET))
    elif upstream.ca is not None:
        peer_validation(common, upstream.ca.name, sans)
    else:
        peer_validation(common, None, sans, upstream.ca_file or system_ca)
    if upstream.client_certificate is not None:
        common.tls_certificate_sds_secret_configs.append(sds(upstream.client_certificate.name))
    if upstream.protocol is ir.Protocol.HTTP2:
        common.alpn_protocols.append("h2")
    context = tls_pb2.UpstreamTlsContext(common_tls_context=common, sni=upstream.sni or "")
    return base_pb2.TransportSocket(name=TRANSPORT_SOCKET, typed_config=packed(context))


def _contexts(socket: base_pb2.TransportSocket) -> tls_pb2.DownstreamTlsContext | tls_pb2.UpstreamTlsContext | None:
    if socket.name != TRANSPORT_SOCKET:
        return None
    url = socket.typed_config.type_url
    context = tls_pb2.DownstreamTlsContext() if url.endswith("DownstreamTlsContext") else tls_pb2.UpstreamTlsContext()
    socket.typed_config.Unpack(context)
    return context


def _secret_configs(common: tls_pb2.CommonTlsContext) -> list[secret_pb2.SdsSecretConfig]:
    out = list(common.tls_certificate_sds_secret_configs)
    if common.HasField("combined_validation_context"):
        out.append(common.combined_validation_context.validation_context_sds_secret_config)
    return out


def referenced_secrets(sockets: list[base_pb2.TransportSocket]) -> set[str]:
    """The SDS secrets these transport sockets name (the snapshot's consistency check)."""
    out: set[str] = set()
    for socket in sockets:
        context = _contexts(socket)
        if context is not None:
            out.update(c.name for c in _secret_configs(context.common_tls_context))
    return out


def static_references(socket: base_pb2.TransportSocket) -> None:
    """Point the socket's SDS references at static secrets (``static_resources.secrets``):
    Envoy 1.40 crashes on SDS-over-ADS references inside a static bootstrap's clusters."""
    context = _contexts(socket)
    if context is None:
        return
    configs = _secret_configs(context.common_tls_context)
    if not configs:
        return
    for config in configs:
        config.ClearField("sds_config")
    socket.typed_config.CopyFrom(packed(context))


def static_secret(secret: secret_pb2.Secret, key_files: dict[str, str], show_secrets: bool) -> secret_pb2.Secret:
    """A secret for a static configuration: its private key read by Envoy from the policy's
    key file (the configuration never holds the key), unless ``show_secrets``."""
    out = secret_pb2.Secret()
    out.CopyFrom(secret)
    if out.HasField("tls_certificate") and not show_secrets and secret.name in key_files:
        out.tls_certificate.private_key.CopyFrom(base_pb2.DataSource(filename=key_files[secret.name]))
    return out


REDACTED = "<redacted: private key>"


def redacted(secret: secret_pb2.Secret) -> secret_pb2.Secret:
    """The secret as dumps and status show it: no private key."""
    if not secret.HasField("tls_certificate") or not secret.tls_certificate.HasField("private_key"):
        return secret
    out = secret_pb2.Secret()
    out.CopyFrom(secret)
    out.tls_certificate.private_key.CopyFrom(base_pb2.DataSource(inline_string=REDACTED))
    return out


CLIENT_CERT_FILTER = "client-certificate"


def client_certificate_filter(gw: ir.Gateway, listener: ir.Listener) -> hcm_pb2.HttpFilter | None:
    """``apis[].clientCertificate``: no rules here; the operations that need a certificate
    carry them (per-route RBAC on the connection's verified certificate)."""
    if not uses(listener).client_certificates:
        return None
    return hcm_pb2.HttpFilter(name=CLIENT_CERT_FILTER, typed_config=packed(rbac_filter_pb2.RBAC()))


def _name_matcher(name: str) -> string_pb2.StringMatcher:
    if name.endswith("*"):
        return string_pb2.StringMatcher(prefix=name[:-1])
    if name.startswith("*."):
        return string_pb2.StringMatcher(suffix=name[1:])
    return string_pb2.StringMatcher(exact=name)


def client_certificate_route_config(op: ir.Operation) -> rbac_filter_pb2.RBACPerRoute:
    Principal = rbac_pb2.Principal
    names = op.client_cert or ()
    if names:
        principal = Principal(
            or_ids=Principal.Set(
                ids=[Principal(authenticated=Principal.Authenticated(principal_name=_name_matcher(n))) for n in names]
            )
        )
    else:
        principal = Principal(authenticated=Principal.Authenticated())
    policy = rbac_pb2.Policy(permissions=[rbac_pb2.Permission(any=True)], principals=[principal])
    rules = rbac_pb2.RBAC(action=rbac_pb2.RBAC.ALLOW, policies={"client-certificate": policy})
    return rbac_filter_pb2.RBACPerRoute(rbac=rbac_filter_pb2.RBAC(rules=rules))
