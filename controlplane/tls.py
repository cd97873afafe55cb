"""Model → IR for TLS: listener certificates (SNI, versions, ciphers, client certificates),
upstream TLS and mTLS, and the checks ``validate`` makes on every certificate it reads.

Certificate and key files are read through the document store, so the server watches them
like specs: a renewed file is a new compile, whose only change is the secret's content.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from . import certcheck, ir
from .documents import Document, DocumentStore
from .errors import Diagnostics

# TLS 1.2 suites offered by default: forward secrecy and AEAD only (TLS 1.3's suites are
# fixed by BoringSSL and always modern).
MODERN_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
)
DEFAULT_EXPIRY_WARNING_DAYS = 30


class TlsReader:
    """Reads the certificate, key and CA files a policy names, relative to the policy."""

    def __init__(self, store: DocumentStore, diags: Diagnostics, warn_days: int = DEFAULT_EXPIRY_WARNING_DAYS):
        self.store = store
        self.diags = diags
        self.warn_days = warn_days

    def _text(self, doc: Document, ptr: str, name: str) -> tuple[str, str] | None:
        loaded = self.store.load_text(doc.path.parent / name, (doc, ptr))
        if loaded is None:
            return None
        return str(loaded.path), str(loaded.data)

    def certificate(
        self,
        secret: str,
        spec: dict[str, Any],
        doc: Document,
        ptr: str,
        hostnames: Sequence[str] = (),
        purpose: Literal["server", "client"] | None = "server",
    ) -> ir.Certificate | None:
        """``{certFile, keyFile}`` at ``ptr``; None (reported) when unreadable or unusable."""
        cert = self._text(doc, ptr + "/certFile", spec["certFile"])
        key = self._text(doc, ptr + "/keyFile", spec["keyFile"])
        if cert is None or key is None:
            return None
        found = Diagnostics()
        info = certcheck.check_certificate(
            cert[1].encode("latin-1"),
            key[1].encode("latin-1"),
            found,
            doc.name,
            ptr + "/certFile",
            hostnames=[h for h in hostnames if h != "*"],
            warn_days=self.warn_days,
            cert_path=cert[0],
            key_path=key[0],
            key_pointer=ptr + "/keyFile",
            purpose=purpose,
        )
        self.diags.extend(found)
        if info is None or found.has_errors():
            return None
        return ir.Certificate(
            name=secret,
            cert_file=cert[0],
            key_file=key[0],
            cert_pem=cert[1],
            key_pem=key[1],
            source=ir.Source(doc.name, ptr),
            hostnames=tuple(spec.get("hostnames", ())),
            not_after=info.not_after.isoformat(),
        )

    def bundle(self, secret: str, file: str, doc: Document, ptr: str) -> ir.TrustBundle | None:
        text = self._text(doc, ptr, file)
        if text is None:
            return None
        try:
            certcheck.read_certificates(text[1].encode("latin-1"))
        except ValueError as exc:
            self.diags.error(f"{Path(text[0]).name}: {exc}", doc.name, ptr, "tls-ca")
            return None
        return ir.TrustBundle(secret, text[0], text[1], ir.Source(doc.name, ptr))


def _version(value: Any) -> str:
    return f"{float(value):.1f}"


def listener_tls(
    listener: str, spec: dict[str, Any], hostnames: Sequence[str], doc: Document, ptr: str, reader: TlsReader
) -> ir.ListenerTls | None:
    """A listener's ``tls`` section (``ptr`` points at it); None when a file is unusable."""
    diags = reader.diags
    certs: list[ir.Certificate] = []
    ok = True
    # a default certificate answers the hostnames no SNI-specific certificate names
    named = {h for item in spec["certificates"] for h in item.get("hostnames", ())}
    unnamed = [h for h in hostnames if h not in named]
    for i, item in enumerate(spec["certificates"]):
        names = item.get("hostnames") or unnamed
        cert = reader.certificate(f"{listener}/cert-{i}", item, doc, f"{ptr}/certificates/{i}", names)
        ok = ok and cert is not None
        if cert is not None:
            certs.append(cert)
        for host in item.get("hostnames", ()):
            if "*" not in hostnames and not any(_covers(h, host) for h in hostnames):
                diags.error(
                    f"{host!r} is not one of the listener's hostnames ({', '.join(hostnames)})",
                    doc.name,
                    f"{ptr}/certificates/{i}/hostnames",
                    "tls-hostname",
                )
    low, high = _version(spec.get("minVersion", "1.2")), _version(spec.get("maxVersion", "1.3"))
    if low > high:
        diags.error(f"minVersion {low} is above maxVersion {high}", doc.name, ptr + "/minVersion", "tls-version")
    if low == "1.3" and "cipherSuites" in spec:
        diags.warning(
            "cipherSuites only choose TLS 1.2 suites; with minVersion 1.3 they are never used",
            doc.name,
            ptr + "/cipherSuites",
            "tls-ciphers",
        )
    client = None
    if "clientCertificate" in spec:
        cc = spec["clientCertificate"]
        ca = reader.bundle(f"{listener}/client-ca", cc["caFile"], doc, ptr + "/clientCertificate/caFile")
        ok = ok and ca is not None
        if ca is not None:
            client = ir.ClientCertificates(
                ca, cc.get("mode", "required") == "required", tuple(cc.get("subjectAltNames", ()))
            )
    if not ok:
        return None
    return ir.ListenerTls(
        certificates=tuple(certs),
        min_version=low,
        max_version=high,
        cipher_suites=tuple(spec.get("cipherSuites", MODERN_CIPHERS)),
        alpn=tuple(spec.get("alpn", ("h2", "http/1.1"))),
        redirect_port=spec.get("httpRedirectPort"),
        client=client,
    )


def _covers(pattern: str, host: str) -> bool:
    """A listener hostname (``*.example.com`` or exact, maybe with a port) covers ``host``."""
    pattern = pattern.rsplit(":", 1)[0].lower() if pattern.count(":") == 1 else pattern.lower()
    host = host.lower()
    if pattern == host:
        return True
    return pattern.startswith("*.") and host.endswith(pattern[1:]) and host != pattern[2:]


def upstream_tls(name: str, spec: Any, doc: Document, ptr: str, reader: TlsReader) -> dict[str, Any] | None:
    """The ``ir.Upstream`` fields of an upstream's ``tls`` object (``ptr`` points at it)."""
    if not isinstance(spec, dict):
        return {}
    out: dict[str, Any] = {"min_tls_version": _version(spec.get("minVersion", "1.2"))}
    ok = True
    if "sni" in spec:
        out["sni"] = spec["sni"]
    if "subjectAltNames" in spec:
        out["subject_alt_names"] = tuple(spec["subjectAltNames"])
    if "caFile" in spec:
        out["ca"] = reader.bundle(f"upstream/{name}/ca", spec["caFile"], doc, ptr + "/caFile")
        ok = out["ca"] is not None
    if "clientCertificate" in spec:
        out["client_certificate"] = reader.certificate(
            f"upstream/{name}/client", spec["clientCertificate"], doc, ptr + "/clientCertificate", purpose="client"
        )
        ok = ok and out["client_certificate"] is not None
    return out if ok else None


def check_plaintext(
    gw_listeners: Sequence[ir.Listener], upstreams: Sequence[ir.Upstream], mode: str, diags: Diagnostics
) -> None:
    """``gateway.requireUpstreamTls``: ``sensitive`` makes a plain-HTTP upstream of a sensitive
    operation an error, ``all`` any plain-HTTP upstream. One error per (API, upstream)."""
    if mode not in ("sensitive", "all"):
        return
    plain = {u.name: u for u in upstreams if not u.tls}
    seen: set[tuple[str, str]] = set()
    for lst in gw_listeners:
        for pr in lst.paths:
            for op in pr.operations:
                if op.upstream in plain and (mode == "all" or op.sensitive) and (op.api, op.upstream) not in seen:
                    seen.add((op.api, op.upstream))
                    what = "sensitive operations of API" if mode == "sensitive" else "API"
                    verb = "reach" if mode == "sensitive" else "reaches"
                    # the place to change: the policy's upstreams[] entry (a spec's server URL otherwise)
                    where = plain[op.upstream].source
                    if not where.pointer.startswith("/upstreams/"):
                        where = op.source
                    diags.error(
                        f"{what} {op.api!r} {verb} upstream {op.upstream!r} over plain HTTP "
                        f"(gateway.requireUpstreamTls: {mode}); give the upstream tls",
                        where.file,
                        where.pointer,
                        "plaintext-upstream",
                    )


def api_client_certificates(entry: dict[str, Any]) -> tuple[str, ...] | None:
    """``apis[].clientCertificate``: every operation of the API needs a verified client
    certificate (with one of these names, when given)."""
    if "clientCertificate" not in entry:
        return None
    return tuple(entry["clientCertificate"].get("subjectAltNames", ()))


def check_api_client_certificates(
    entry: dict[str, Any],
    listeners: Sequence[str],
    specs: dict[str, tuple[dict[str, Any], ir.Source]],
    file: str,
    ptr: str,
    diags: Diagnostics,
) -> None:
    """Only a listener with ``tls.clientCertificate`` can ask its clients for a certificate."""
    if "clientCertificate" not in entry:
        return
    for name in listeners:
        spec = specs.get(name, ({}, None))[0]
        if "clientCertificate" not in spec.get("tls", {}):
            diags.error(
                f"listener {name!r} asks for no client certificate (tls.clientCertificate): "
                "its clients could never present one",
                file,
                ptr + "/clientCertificate",
                "client-certificate",
            )
