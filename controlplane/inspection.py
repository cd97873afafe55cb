"""Model → IR for the WAF: the policy's ``waf`` section (the service, the default mode, the
rules pushed to the service) and each operation's inspection settings (route settings ``waf``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from . import ir, request_model
from .documents import Document, DocumentStore
from .errors import Diagnostics
from .model import policy as pol
from .model.openapi import OperationSpec

DEFAULT_ENDPOINT = "127.0.0.1:8082"
DEFAULT_MAX_BODY = 1 << 20
DEFAULT_MAX_RESPONSE = 8 << 20
DEFAULT_TIMEOUT = "500ms"


@dataclass(frozen=True)
class Section:
    """The policy's ``waf``, read once per compile."""

    mode: str
    fail: str | None  # "open", "closed", or None: by mode
    service: ir.WafService | None  # None when the rules are unusable (reported)


def read_section(spec: dict[str, Any], doc: Document, store: DocumentStore, diags: Diagnostics) -> Section:
    service_spec = spec.get("service", {})
    endpoints = []
    for i, text in enumerate(service_spec.get("endpoints", [DEFAULT_ENDPOINT])):
        host, _, port = text.rpartition(":")
        if not 0 < int(port) < 65536:
            diags.error(f"port {port} is out of range", doc.name, f"/waf/service/endpoints/{i}", "waf")
        endpoints.append(ir.Endpoint(host.strip("[]"), int(port)))
    masks = [
        ir.Endpoint(text.rpartition(":")[0].strip("[]"), int(text.rpartition(":")[2]))
        for text in service_spec.get("maskEndpoints", ())
    ] or [ir.Endpoint(e.host, e.port + 1) for e in endpoints]
    rules = _rules(spec, doc, store, diags)
    service = None
    if rules is not None:
        service = ir.WafService(
            endpoints=tuple(endpoints),
            timeout_ms=pol.duration_ms(service_spec.get("timeout", DEFAULT_TIMEOUT)),
            max_body_bytes=spec.get("maxBodyBytes", DEFAULT_MAX_BODY),
            rules=rules,
            source=ir.Source(doc.name, "/waf"),
            mask_endpoints=tuple(masks),
            max_response_bytes=spec.get("maxResponseBytes", DEFAULT_MAX_RESPONSE),
        )
    return Section(spec.get("mode", "prevent"), spec.get("onServiceFailure"), service)


def _rules(spec: dict[str, Any], doc: Document, store: DocumentStore, diags: Diagnostics) -> str | None:
    """The rule set the service is given, as canonical JSON; None (reported) when unusable."""
    from .waf.rules import RuleSet, default_rules_data

    if "rulesFile" in spec:
        loaded = store.load(doc.path.parent / spec["rulesFile"], (doc, "/waf/rulesFile"))
        if loaded is None:
            return None
        data, where = loaded.data, "/waf/rulesFile"
    else:
        data, where = default_rules_data(), "/waf"
    disabled = spec.get("disabledRules", [])
    try:
        rules = RuleSet.from_data(data)
        unknown = sorted(set(disabled) - set(rules.ids()))
        if unknown:
            diags.error(f"no rule with the id(s) {', '.join(unknown)}", doc.name, "/waf/disabledRules", "waf-rules")
            return None
    except ValueError as exc:
        diags.error(f"the rules are not usable: {exc}", doc.name, where, "waf-rules")
        return None
    return json.dumps({"rules": data, "disabled": sorted(disabled)}, sort_keys=True, separators=(",", ":"))


def operation_waf(
    section: Section | None, settings: dict[str, Any], listener: dict[str, Any] | None = None
) -> ir.Waf | None:
    """An operation's inspection on one listener: its route settings' mode and failure mode
    (operation, API, policy defaults), else the listener's (``listeners[].waf``), else the
    section's: so that an internal listener can run the WAF in detect mode while the public
    one refuses, and an operation that must never be inspected (or always) says so once."""
    if section is None:
        return None
    own = settings.get("waf") or {}
    around = listener or {}
    mode = own.get("mode", around.get("mode", section.mode))
    if mode == "off":
        return None
    prevent = mode == "prevent"
    fail = own.get("onServiceFailure", around.get("onServiceFailure", section.fail))
    exclude = own.get("exclude", {})
    return ir.Waf(
        prevent=prevent,
        fail_open=(fail == "open") if fail is not None else not prevent,
        exclude_locations=tuple(exclude.get("locations", ())),
        exclude_families=tuple(exclude.get("families", ())),
    )


def masking(
    section: Section, settings: dict[str, Any], store: DocumentStore, op: OperationSpec, diags: Diagnostics
) -> tuple[str, ...] | None:
    """What the WAF service masks in an operation's responses (:func:`operation_mask`), with a
    warning when they are endless streams (each response is held until it ends)."""
    mask = operation_mask(section, settings, request_model.masked_fields(store, op))
    if mask is not None:
        streamed = request_model.streamed_responses(store, op)
        if streamed:
            diags.warning(
                f"{op.method} {op.path} answers with {', '.join(streamed)}, and its responses are masked:"
                " each is held until it ends, so an endless stream never reaches the client",
                op.source.file,
                op.source.pointer,
                "waf-mask-stream",
            )
    return mask


def operation_mask(
    section: Section | None, settings: dict[str, Any], schema_fields: tuple[str, ...]
) -> tuple[str, ...] | None:
    """What the WAF service masks in the operation's responses: card numbers when it is
    sensitive, and the fields the policy names or its response schema marks ``x-gateway-mask``."""
    if section is None or section.service is None:
        return None
    fields = tuple(sorted({*settings.get("maskFields", ()), *schema_fields}))
    if not fields and not settings.get("sensitive"):
        return None
    return fields
