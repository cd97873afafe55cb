"""What a change of specs and policies does to the gateway: operations added, removed and
changed, the security-relevant changes first.

Both sides are compiled to the IR (what Envoy's configuration is made from), and operations are
matched by listener, method and path template, so a change is what a client would see, not what
a file diff shows: a moved file or a reordered policy is no change, and an edited ``$ref``d
schema is. A change is **security-relevant** when it lets more requests through than before:

- an operation becoming public (or its token optional), a new public operation, a role or scope
  requirement lost or loosened, a new token provider, authorization turned to dry run;
- a rate limit removed, raised, put in shadow mode, failing open, or with more exemptions;
- a client address allowlist widened or removed; a client certificate no longer required;
- WAF inspection turned off, lowered to detect, failing open, or with more exclusions; masking
  removed; a sensitive operation no longer so;
- TLS turned off (or its minimum version lowered) on a listener or to an upstream.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from . import cors, geo, header_rules, ir

_WINDOW_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


@dataclass(frozen=True)
class Change:
    kind: str  # "added", "removed", "changed"
    subject: str  # "listener public: POST /orders (shop.createOrder)", "upstream backend"
    what: str  # what changed, in words
    security: bool  # it lets more through than before
    source: str = ""  # the spec or policy place behind it (the new side's; the old one's when removed)

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "subject": self.subject,
            "change": self.what,
            "security": self.security,
            "source": self.source,
        }


@dataclass
class Report:
    changes: list[Change] = field(default_factory=list)

    @property
    def security(self) -> list[Change]:
        return [c for c in self.changes if c.security]

    @property
    def other(self) -> list[Change]:
        return [c for c in self.changes if not c.security]

    def add(self, kind: str, subject: str, what: str, security: bool, source: ir.Source | None) -> None:
        where = "" if source is None else f"{source.file}#{source.pointer}" if source.pointer else source.file
        self.changes.append(Change(kind, subject, what, security, where))


def diff(old: ir.Gateway, new: ir.Gateway) -> Report:
    report = Report()
    _listeners(old, new, report)
    _upstreams(old, new, report)
    _push_clients(old, new, report)
    before, after = _operations(old), _operations(new)
    for key in sorted(before.keys() | after.keys()):
        a, b = before.get(key), after.get(key)
        subject = f"listener {key[0]}: {key[1]} {key[2]}" + (f"?{key[3]}" if key[3] else "")
        if a is None and b is not None:
            public = b.auth is None or b.auth.optional
            what = "new operation" + (", public: no token needed" if public else "")
            report.add("added", f"{subject} ({b.name})", what, public, b.source)
        elif b is None and a is not None:
            report.add("removed", f"{subject} ({a.name})", "operation removed", False, a.source)
        elif a is not None and b is not None:
            for what, security, source in _operation_changes(a, b):
                report.add("changed", f"{subject} ({b.name})", what, security, source or b.source)
    report.changes = _grouped(report.changes)
    report.changes.sort(key=lambda c: (not c.security, c.subject))
    return report


def _grouped(changes: list[Change]) -> list[Change]:
    """One line for the same change to many operations (a gateway-wide limit, an API's
    allowlist, a role added to a rule): how many operations, and where it was made when that
    is one place."""
    by: dict[tuple[str, str, bool], list[Change]] = {}
    for c in changes:
        by.setdefault((c.kind, c.what, c.security), []).append(c)
    out = []
    for (kind, what, security), group in by.items():
        if len(group) == 1 or kind != "changed":
            out.extend(group)
            continue
        names = sorted(c.subject.rsplit("(", 1)[-1].rstrip(")") for c in group)
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        sources = sorted({c.source for c in group})
        source = sources[0] if len(sources) == 1 else f"{sources[0]} and {len(sources) - 1} more places"
        out.append(Change(kind, f"{len(group)} operations ({shown})", what, security, source))
    return out


def _operations(gw: ir.Gateway) -> dict[tuple[str, str, str, str], ir.Operation]:
    out = {}
    for lst in gw.listeners:
        for pr in lst.paths:
            for op in pr.operations:
                query = "&".join(f"{k}={v}" for k, v in op.query)
                out[(lst.name, op.method, op.path.template, query)] = op
    return out


def _operation_changes(a: ir.Operation, b: ir.Operation) -> Iterable[tuple[str, bool, ir.Source | None]]:
    """(what, security-relevant, the place it was made when not the operation itself)."""
    for what, security in _auth_changes(a.auth, b.auth):
        yield what, security, None
    yield from _limit_changes(a.rate_limits, b.rate_limits)
    for what, security in _allowlist_changes(a.ip_allow, b.ip_allow):
        yield what, security, None
    for what, security in _own_changes(a, b):
        yield what, security, None


def _own_changes(a: ir.Operation, b: ir.Operation) -> Iterable[tuple[str, bool]]:
    if a.client_cert is not None and b.client_cert is None:
        yield "a client certificate is no longer required", True
    elif a.client_cert is not None and b.client_cert is not None and set(b.client_cert) - set(a.client_cert):
        names = ", ".join(sorted(set(b.client_cert) - set(a.client_cert)))
        yield f"client certificates now also accepted for: {names}", True
    elif a.client_cert is None and b.client_cert is not None:
        yield "a client certificate is now required", False
    yield from _waf_changes(a, b)
    yield from cors.changes(a.cors, b.cors)
    yield from header_rules.changes(a.header_rules, b.header_rules)
    yield from geo.changes(a.geo, b.geo)
    if a.sensitive and not b.sensitive:
        yield "no longer sensitive (responses cacheable, card numbers not masked)", True
    elif b.sensitive and not a.sensitive:
        yield "now sensitive", False
    if a.upstream != b.upstream:
        yield f"upstream {a.upstream} → {b.upstream}", False
    if a.timeout_ms != b.timeout_ms:
        yield f"timeout {a.timeout_ms} ms → {b.timeout_ms} ms", False
    if a.retry != b.retry:
        yield "retry policy changed", False
    if a.rewrite_prefix != b.rewrite_prefix:
        yield f"upstream path prefix {a.rewrite_prefix} → {b.rewrite_prefix}", False


def _auth_changes(a: ir.Auth | None, b: ir.Auth | None) -> Iterable[tuple[str, bool]]:
    if a is not None and b is None:
        yield "now public: no token needed (it needed a token from " + a.provider + ")", True
        return
    if a is None and b is not None:
        yield f"now needs a token from {b.provider}", False
        return
    if a is None or b is None:
        return
    if a.provider != b.provider:
        yield f"token provider {a.provider} → {b.provider}", True
    if b.optional and not a.optional:
        yield "the token is now optional", True
    elif a.optional and not b.optional:
        yield "the token is now required", False
    if a.authorize and not b.authorize:
        yield "roles and scopes no longer checked", True
    elif b.authorize and not a.authorize:
        yield "roles or scopes now checked", False
    elif a.authorize and b.authorize:
        more_roles = sorted(set(b.roles) - set(a.roles))
        if more_roles:
            yield f"role(s) now also allowed: {', '.join(more_roles)}", True
        # a scope set of the new side that no old set is contained in admits callers that
        # could not call before
        looser = [s for s in b.scope_sets if not any(set(o) <= set(s) for o in a.scope_sets)]
        if looser:
            yield "scope requirement loosened: " + " or ".join("+".join(s) or "(none)" for s in looser), True
        narrowed = set(a.roles) != set(b.roles) or set(a.scope_sets) != set(b.scope_sets)
        if narrowed and not more_roles and not looser:
            yield "roles or scopes narrowed", False
    if b.dry_run and not a.dry_run:
        yield "authorization in dry run: logged, not enforced", True


def _limit_changes(
    a: tuple[ir.RateLimit, ...], b: tuple[ir.RateLimit, ...]
) -> Iterable[tuple[str, bool, ir.Source | None]]:
    before, after = {r.name: r for r in a}, {r.name: r for r in b}
    for name in sorted(before.keys() - after.keys()):
        yield f"rate limit {name} removed", True, None
    for name in sorted(after.keys() - before.keys()):
        yield f"rate limit {name} added", False, after[name].source
    for name in sorted(before.keys() & after.keys()):
        old, new = before[name], after[name]
        for what, security in _limit_change(name, old, new):
            yield what, security, new.source


def _limit_change(name: str, old: ir.RateLimit, new: ir.RateLimit) -> Iterable[tuple[str, bool]]:
    was, now = dict(old.windows), dict(new.windows)
    for unit in sorted(was.keys() | now.keys(), key=lambda u: _WINDOW_SECONDS.get(u, 0)):
        if unit not in now:
            yield f"rate limit {name}: its {unit} window removed ({was[unit]} a {unit})", True
        elif unit not in was:
            yield f"rate limit {name}: a {unit} window added ({now[unit]} a {unit})", False
        elif now[unit] > was[unit]:
            yield f"rate limit {name} raised: {was[unit]} → {now[unit]} a {unit}", True
        elif now[unit] < was[unit]:
            yield f"rate limit {name} lowered: {was[unit]} → {now[unit]} a {unit}", False
    if new.shadow and not old.shadow:
        yield f"rate limit {name} in shadow mode: counted, never refused", True
    if old.fail_closed and not new.fail_closed:
        yield f"rate limit {name} now lets requests through when its store cannot answer", True
    if old.local != new.local:
        yield f"rate limit {name} now counted {'by each Envoy alone' if new.local else 'by the service'}", new.local
    if old.by != new.by:
        yield f"rate limit {name} now counts per {_keys(new.by)} (was per {_keys(old.by)})", True
    exempt = (
        set(new.exempt_roles) - set(old.exempt_roles),
        set(new.exempt_scopes) - set(old.exempt_scopes),
        not _covered(new.exempt_clients, old.exempt_clients),
    )
    if any(exempt):
        yield f"rate limit {name}: more callers exempt", True


def _keys(by: tuple[tuple[ir.LimitKey, str], ...]) -> str:
    return "+".join(key.value + (f":{detail}" if detail else "") for key, detail in by) or "nothing"


def _covered(cidrs: Iterable[str], by: Iterable[str]) -> bool:
    """Is every range of ``cidrs`` inside one of ``by``?"""
    nets = [ipaddress.ip_network(c, strict=False) for c in by]
    for text in cidrs:
        net = ipaddress.ip_network(text, strict=False)
        if not any(net.version == n.version and net.subnet_of(n) for n in nets):  # type: ignore[arg-type]
            return False
    return True


def _allowlist_changes(a: tuple[tuple[str, ...], ...], b: tuple[tuple[str, ...], ...]) -> Iterable[tuple[str, bool]]:
    if a == b:
        return
    if a and not b:
        yield "client address allowlist removed: any address may call", True
        return
    if b and not a:
        yield "client address allowlist added", False
        return
    # every old list must still be at least as strict: each new list inside some old one
    widened = [lst for lst in b if not any(_covered(lst, old) for old in a)] or (len(b) < len(a))
    if widened:
        yield "client address allowlist widened: " + "; ".join(", ".join(lst) for lst in b), True
    else:
        yield "client address allowlist narrowed", False


def _waf_changes(a: ir.Operation, b: ir.Operation) -> Iterable[tuple[str, bool]]:
    if a.waf is not None and b.waf is None:
        yield "WAF inspection turned off", True
    elif a.waf is None and b.waf is not None:
        yield f"WAF inspection on ({'prevent' if b.waf.prevent else 'detect'})", False
    elif a.waf is not None and b.waf is not None:
        if a.waf.prevent and not b.waf.prevent:
            yield "WAF lowered to detect: attacks are logged, not refused", True
        elif b.waf.prevent and not a.waf.prevent:
            yield "WAF raised to prevent", False
        if b.waf.fail_open and not a.waf.fail_open:
            yield "WAF now lets requests through when its service cannot answer", True
        more = sorted(set(b.waf.exclude_locations) - set(a.waf.exclude_locations)) + sorted(
            set(b.waf.exclude_families) - set(a.waf.exclude_families)
        )
        if more:
            yield f"WAF exclusions added: {', '.join(more)}", True
    if a.mask is not None and b.mask is None:
        yield "responses no longer masked", True
    elif a.mask is not None and b.mask is not None and set(a.mask) - set(b.mask):
        yield f"fields no longer masked: {', '.join(sorted(set(a.mask) - set(b.mask)))}", True


def _tls_order(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def _listeners(old: ir.Gateway, new: ir.Gateway, report: Report) -> None:
    before, after = {lst.name: lst for lst in old.listeners}, {lst.name: lst for lst in new.listeners}
    for name in sorted(after.keys() - before.keys()):
        lst = after[name]
        report.add("added", f"listener {name}", f"new listener on {lst.address}:{lst.port}", False, lst.source)
    for name in sorted(before.keys() - after.keys()):
        report.add("removed", f"listener {name}", "listener removed", False, before[name].source)
    for name in sorted(before.keys() & after.keys()):
        a, b = before[name], after[name]
        if a.tls is not None and b.tls is None:
            report.add("changed", f"listener {name}", "TLS turned off: plain HTTP", True, b.source)
        elif a.tls is not None and b.tls is not None:
            if _tls_order(b.tls.min_version) < _tls_order(a.tls.min_version):
                what = f"minimum TLS version lowered: {a.tls.min_version} → {b.tls.min_version}"
                report.add("changed", f"listener {name}", what, True, b.source)
            if a.tls.client is not None and b.tls.client is None:
                report.add("changed", f"listener {name}", "client certificates no longer asked for", True, b.source)
            elif a.tls.client is not None and b.tls.client is not None:
                if a.tls.client.required and not b.tls.client.required:
                    what = "client certificates now optional"
                    report.add("changed", f"listener {name}", what, True, b.source)
        elif a.tls is None and b.tls is not None:
            report.add("changed", f"listener {name}", "TLS turned on", False, b.source)
        if (a.address, a.port) != (b.address, b.port):
            what = f"now on {b.address}:{b.port} (was {a.address}:{a.port})"
            report.add("changed", f"listener {name}", what, False, b.source)
        for what, security in header_rules.changes(a.header_rules, b.header_rules):
            report.add("changed", f"listener {name}", what, security, b.source)


def _upstreams(old: ir.Gateway, new: ir.Gateway, report: Report) -> None:
    before, after = {u.name: u for u in old.upstreams}, {u.name: u for u in new.upstreams}
    for name in sorted(before.keys() & after.keys()):
        a, b = before[name], after[name]
        if a.tls and not b.tls:
            report.add("changed", f"upstream {name}", "TLS to the upstream turned off", True, b.source)
        elif a.tls and b.tls:
            if _tls_order(b.min_tls_version) < _tls_order(a.min_tls_version):
                what = f"minimum TLS version lowered: {a.min_tls_version} → {b.min_tls_version}"
                report.add("changed", f"upstream {name}", what, True, b.source)
            if a.subject_alt_names and not b.subject_alt_names:
                what = "the upstream's certificate names are no longer checked"
                report.add("changed", f"upstream {name}", what, True, b.source)
        elif b.tls and not a.tls:
            report.add("changed", f"upstream {name}", "TLS to the upstream turned on", False, b.source)


def _push_clients(old: ir.Gateway, new: ir.Gateway, report: Report) -> None:
    """Who may push specs: a new client, a client owning more APIs or recognised by more
    certificate names, is more people who can change the gateway."""
    before, after = {c.name: c for c in old.push_clients}, {c.name: c for c in new.push_clients}
    for name in sorted(after.keys() - before.keys()):
        c = after[name]
        report.add("added", f"push client {name}", f"may push apis {', '.join(c.apis)}", True, c.source)
    for name in sorted(before.keys() - after.keys()):
        report.add("removed", f"push client {name}", "may no longer push", False, before[name].source)
    for name in sorted(before.keys() & after.keys()):
        a, b = before[name], after[name]
        gained = sorted(set(b.apis) - set(a.apis))
        if gained:
            report.add("changed", f"push client {name}", f"may now push apis {', '.join(gained)}", True, b.source)
        if set(b.subject_alt_names) - set(a.subject_alt_names):
            what = "recognised by more client certificate names"
            report.add("changed", f"push client {name}", what, True, b.source)
        if a.token_sha256 != b.token_sha256:
            what = "token added" if a.token_sha256 is None else "token changed" if b.token_sha256 else "token removed"
            report.add("changed", f"push client {name}", what, a.token_sha256 is None, b.source)


# -- output --------------------------------------------------------------------------------------


def text(report: Report) -> str:
    if not report.changes:
        return "no change"
    lines = []
    security = report.security
    if security:
        lines.append(f"SECURITY-RELEVANT ({len(security)}): review before merging")
        lines.extend(f"  ! {c.subject}: {c.what}" + (f"  [{c.source}]" if c.source else "") for c in security)
    rest = report.other
    if rest:
        lines.append(f"other changes ({len(rest)})")
        lines.extend(f"  {_SIGN[c.kind]} {c.subject}: {c.what}" + (f"  [{c.source}]" if c.source else "") for c in rest)
    return "\n".join(lines)


_SIGN = {"added": "+", "removed": "-", "changed": "~"}


def markdown(report: Report) -> str:
    """For a pull-request comment: a table of the security-relevant changes, then the rest."""
    if not report.changes:
        return "**Gateway diff:** no change."
    out = []
    security = report.security
    if security:
        out.append(f"### :warning: {len(security)} security-relevant change(s): review required\n")
        out.append("| where | change | source |\n|---|---|---|")
        out.extend(f"| {_md(c.subject)} | {_md(c.what)} | `{_md(c.source)}` |" for c in security)
        out.append("")
    rest = report.other
    if rest:
        out.append(f"<details><summary>{len(rest)} other change(s)</summary>\n")
        out.append("| | where | change |\n|---|---|---|")
        out.extend(f"| {c.kind} | {_md(c.subject)} | {_md(c.what)} |" for c in rest)
        out.append("\n</details>")
    return "\n".join(out)


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
