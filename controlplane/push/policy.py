"""``push.clients`` of the platform policy: the pipelines that may push, and what they own."""

from __future__ import annotations

from typing import Any

from .. import ir
from ..documents import Document
from ..errors import Diagnostics, pointer
from ..model.policy import duration_ms


def clients(section: dict[str, Any], doc: Document | None, diags: Diagnostics) -> tuple[ir.PushClient, ...]:
    if not section or doc is None:
        return ()
    out: list[ir.PushClient] = []
    seen: dict[str, str] = {}
    tokens: dict[str, str] = {}
    for i, item in enumerate(section.get("clients", [])):
        ptr = pointer("push", "clients", i)
        if item["name"] in seen:
            diags.error(
                f"push client {item['name']!r} is defined twice (also at {seen[item['name']]})",
                doc.name,
                ptr + "/name",
                "duplicate-name",
            )
            continue
        seen[item["name"]] = ptr
        token = item.get("tokenSha256")
        if token is not None and token in tokens:
            # one token, two clients: which APIs it may push would depend on the order
            diags.error(
                f"push client {item['name']!r} has the same token as {tokens[token]!r}",
                doc.name,
                ptr + "/tokenSha256",
                "duplicate-token",
            )
            continue
        if token is not None:
            tokens[token] = item["name"]
        out.append(
            ir.PushClient(
                item["name"],
                token,
                tuple(item.get("subjectAltNames", ())),
                tuple(item["apis"]),
                ir.Source(doc.name, ptr),
                tuple(item.get("pathPrefixes", ())),
                tuple(item.get("upstreams", ())),
                item.get("allowSecurityChanges", False),
            )
        )
    return tuple(out)


def spec_pull(api: str, spec: dict[str, Any], doc: Document, ptr: str, diags: Diagnostics) -> ir.SpecPull:
    ca = spec.get("caFile")
    ca_file = None
    if ca is not None:
        path = (doc.path.parent / ca).resolve()
        if not path.is_file():
            diags.error(f"no such file: {path}", doc.name, ptr + "/caFile", "missing-file")
        ca_file = str(path)
    interval = duration_ms(spec.get("interval", "60s"))
    if interval < 1000:
        diags.error("polling more often than once a second is refused", doc.name, ptr + "/interval", "pull-interval")
    return ir.SpecPull(
        api,
        spec["url"],
        interval,
        duration_ms(spec.get("timeout", "10s")),
        ca_file,
        ir.Source(doc.name, ptr),
        spec.get("allowSecurityChanges", False),
    )
