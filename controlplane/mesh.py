"""Model → IR for the policy's ``mesh``: the backends behind sidecars that only answer the
gateway, the trust domain, and the CA that issues workload certificates."""

from __future__ import annotations

import dataclasses
from typing import Any

from . import ir
from .documents import Document
from .errors import Diagnostics
from .model import policy as pol
from .tls import TlsReader

MIN_TTL_S = 10
DEFAULT_TTL = "24h"


def mesh_ir(
    spec: dict[str, Any],
    doc: Document,
    upstreams: dict[str, tuple[dict[str, Any], ir.Source]],
    reader: TlsReader,
    diags: Diagnostics,
) -> ir.Mesh | None:
    ttl_ms = pol.duration_ms(spec.get("certificateTtl", DEFAULT_TTL))
    if ttl_ms < MIN_TTL_S * 1000:
        diags.error(
            f"certificateTtl must be at least {MIN_TTL_S}s (a certificate is renewed when half of it is left)",
            doc.name,
            "/mesh/certificateTtl",
            "mesh-ttl",
        )
    ca = None
    if "ca" in spec:
        ca = reader.certificate("mesh/issuer", spec["ca"], doc, "/mesh/ca", purpose=None)
        if ca is None:
            return None
    backends = []
    seen: dict[str, int] = {}
    claimed: dict[str, str] = {}
    for i, item in enumerate(spec.get("backends", ())):
        ptr = f"/mesh/backends/{i}"
        name, upstream = item["name"], item["upstream"]
        if name in seen:
            diags.error(
                f"backend {name!r} is defined twice (also at /mesh/backends/{seen[name]})",
                doc.name,
                ptr + "/name",
                "duplicate-name",
            )
            continue
        seen[name] = i
        if upstream not in upstreams:
            diags.error(f"no upstream named {upstream!r}", doc.name, ptr + "/upstream", "unknown-upstream")
            continue
        if upstream in claimed:
            diags.error(
                f"upstream {upstream!r} already reaches backend {claimed[upstream]!r}",
                doc.name,
                ptr + "/upstream",
                "mesh-upstream",
            )
            continue
        claimed[upstream] = name
        upstream_spec, upstream_src = upstreams[upstream]
        if "tls" in upstream_spec or "url" in upstream_spec:
            diags.error(
                f"upstream {upstream!r} reaches a mesh backend: the gateway's workload certificate is its TLS, "
                "so it takes endpoints (the sidecars' inbound listeners) and no tls or url",
                upstream_src.file,
                upstream_src.pointer,
                "mesh-upstream",
            )
            continue
        host, _, port = item["app"].rpartition(":")
        backends.append(
            ir.MeshBackend(
                name=name,
                upstream=upstream,
                address=item.get("address", "0.0.0.0"),
                port=item["port"],
                app=ir.Endpoint(host.strip("[]"), int(port)),
                source=ir.Source(doc.name, ptr),
            )
        )
    return ir.Mesh(
        trust_domain=spec.get("trustDomain", "gateway.local"),
        ttl_s=max(ttl_ms // 1000, MIN_TTL_S),
        backends=tuple(backends),
        source=ir.Source(doc.name, "/mesh"),
        ca=ca,
    )


def with_backends(upstreams: list[ir.Upstream], mesh: ir.Mesh | None) -> list[ir.Upstream]:
    """Upstreams that reach a mesh backend: TLS with the gateway's workload certificate."""
    if mesh is None:
        return upstreams
    behind = {b.upstream: b.name for b in mesh.backends}
    return [
        dataclasses.replace(
            u, tls=True, sni=None, subject_alt_names=(mesh.backend_uri(behind[u.name]),), mesh_backend=behind[u.name]
        )
        if u.name in behind
        else u
        for u in upstreams
    ]
