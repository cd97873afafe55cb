"""Geo-blocking policy (issue 12): the ``geo`` section and route setting, read and checked.

Policy shape:

- a top-level ``geo`` section: ``database`` (a MaxMind-format ``.mmdb`` file, relative to the
  policy; Envoy reads the same path, so it must be where the Envoys run too) and
  ``unknownCountry: allow | deny`` (an address the database does not place; ``allow`` by default);
- a ``geo`` setting on a listener, an API (``defaults``), a path or an operation (``x-gateway``,
  ``operations``; the most specific wins, ``false`` removes a less specific one): ``allow: [ISO
  codes]`` or ``deny: [ISO codes]``, never both, and ``mode``: ``soft`` (the default: the request
  goes on with ``X-Gateway-Risk: geo`` for the backend to challenge) or ``hard`` (403).

What Envoy 1.40 does (checked against a real Envoy, not the documentation alone):

- ``envoy.filters.http.geoip`` with ``envoy.geoip_providers.maxmind`` writes the country under
  ``common_provider_config.geo_field_keys.country`` (``geo_headers_to_add`` is deprecated); the
  country comes from ``country_db_path`` (a GeoLite2-Country/GeoIP2-Country file) or
  ``city_db_path``. An address not in the database leaves no header, and a client-sent copy of
  the header stays: the first filter (the identity strip) removes it, with ``X-Gateway-Risk``.
- The connection manager picks the route before the filters run and the geoip filter does not
  clear the route cache, so route matching on the country header would see the client's copy:
  decisions are made by filters after geoip, which read headers as they are, with per-route
  configs: RBAC for hard rules, a composite filter whose per-route matcher marks the request for
  soft ones.
- The provider reloads the file when it is replaced by a rename (inotify MovedTo; stat
  ``maxmind.country_db.<path>.db_reload_success``), not when it is rewritten in place: no restart
  or config push is needed for a database swapped atomically.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import maxminddb

from . import ir
from .errors import Diagnostics

HARD, SOFT = "hard", "soft"
RISK_VALUE = "geo"  # X-Gateway-Risk: geo on a request a soft rule refuses
_ISO = re.compile(r"[A-Z]{2}")
# ISO 3166-1 codes that MaxMind never returns for a country: user-assigned and reserved ones
_NOT_COUNTRIES = frozenset({"AA", "ZZ", "XX", "QM", "QN", "QO", "QP", "QQ", "QR", "QS", "QT", "QU"})


@dataclass(frozen=True, slots=True)
class Setting:
    """A checked ``geo`` route setting, before the section's unknownCountry joins it."""

    countries: tuple[str, ...]
    allow: bool
    mode: str
    source: ir.Source


def read_section(value: Any, base: Path, src: ir.Source, diags: Diagnostics) -> ir.Geo | None:
    """The top-level ``geo`` section at ``src`` (None after reporting errors)."""
    file, ptr = src.file, src.pointer
    if not isinstance(value, dict):
        diags.error("geo must be a mapping with a database", file, ptr, "geo-section")
        return None
    found = len(diags.items)
    database = value.get("database")
    # absolute, links kept: Envoy must watch the path the policy names (a link resolved here
    # would name one pod's kubelet directory, which the next volume update deletes)
    path = Path(os.path.abspath(base / database)) if isinstance(database, str) else None
    if path is None:
        diags.error("geo needs a database (a MaxMind-format .mmdb file)", file, ptr, "geo-database")
    elif not path.name.endswith(".mmdb"):
        diags.error(
            f"{database!r}: Envoy's MaxMind provider reads .mmdb files", file, f"{ptr}/database", "geo-database"
        )
    elif not path.is_file():
        diags.error(f"{database!r}: no such file (next to the policy: {path})", file, f"{ptr}/database", "geo-database")
    else:
        problem = _database_problem(path)
        if problem is not None:
            diags.error(f"{database!r}: {problem}", file, f"{ptr}/database", "geo-database")
    unknown = value.get("unknownCountry", "allow")
    if unknown not in ("allow", "deny"):
        diags.error(f"unknownCountry {unknown!r}: allow or deny", file, f"{ptr}/unknownCountry", "geo-unknown")
    if len(diags.items) != found or path is None:
        return None
    if path.is_symlink():
        diags.warning(
            f"{database!r} is a symbolic link: Envoy reloads the database when a file is renamed over this "
            "path, not when a link it goes through changes (a Kubernetes ConfigMap or Secret volume); copy "
            "such a volume with `python -m controlplane sync-files` (the Helm chart does)",
            file,
            f"{ptr}/database",
            "geo-database-link",
        )
    return ir.Geo(database=str(path), unknown_allowed=unknown == "allow", source=src)


def _database_problem(path: Path) -> str | None:
    """Why Envoy could not use ``path`` as its country database, or None. Envoy refuses a
    listener whose database does not open; a City database has the country too."""
    try:
        with maxminddb.open_database(str(path)) as reader:  # (mapped: only the metadata is read)
            kind = reader.metadata().database_type
    except (OSError, ValueError, maxminddb.InvalidDatabaseError) as exc:
        return f"not a MaxMind-format database ({exc})"
    if "Country" not in kind and "City" not in kind:
        return f"a {kind!r} database; Envoy reads countries from a Country or City database"
    return None


def _codes(values: Any, file: str, ptr: str, diags: Diagnostics) -> tuple[str, ...]:
    out: list[str] = []
    if not isinstance(values, list) or not values:
        diags.error("a non-empty list of ISO 3166-1 alpha-2 country codes", file, ptr, "geo-country")
        return ()
    for i, code in enumerate(values):
        if not isinstance(code, str) or not _ISO.fullmatch(code) or code in _NOT_COUNTRIES:
            hint = f": write {code.upper()!r}" if isinstance(code, str) and _ISO.fullmatch(code.upper()) else ""
            diags.error(
                f"{code!r} is not an ISO 3166-1 alpha-2 country code (what the database writes){hint}",
                file,
                f"{ptr}/{i}",
                "geo-country",
            )
        elif code not in out:
            out.append(code)
    return tuple(out)


def read_setting(value: Any, src: ir.Source, diags: Diagnostics) -> Setting | None:
    """A ``geo`` route setting at ``src`` (None for ``false`` and after reporting errors)."""
    file, ptr = src.file, src.pointer
    if value is False:
        return None
    if not isinstance(value, dict):
        diags.error("geo must be allow or deny (a list of countries), with a mode", file, ptr, "geo-setting")
        return None
    found = len(diags.items)
    if "allow" in value and "deny" in value:
        diags.error(
            "geo takes allow or deny, not both: with an allow list every other country is denied already",
            file,
            ptr,
            "geo-setting",
        )
        return None
    if "allow" not in value and "deny" not in value:
        diags.error("geo needs allow or deny (a list of countries)", file, ptr, "geo-setting")
        return None
    key = "allow" if "allow" in value else "deny"
    countries = _codes(value[key], file, f"{ptr}/{key}", diags)
    mode = value.get("mode", SOFT)
    if mode not in (HARD, SOFT):
        diags.error(f"mode {mode!r}: hard (403) or soft (X-Gateway-Risk: geo)", file, f"{ptr}/mode", "geo-mode")
    if len(diags.items) != found:
        return None
    return Setting(countries=countries, allow=key == "allow", mode=mode, source=src)


@dataclass(frozen=True, slots=True)
class PrefixRule:
    """``geo.rules[]``: a rule for the operations under a gateway path prefix."""

    prefix: str  # without a trailing slash
    listeners: frozenset[str] | None  # None: every listener
    setting: Setting


def read_rules(value: Any, file: str, known: set[str], diags: Diagnostics) -> tuple[PrefixRule, ...]:
    """``geo.rules`` (each rule's errors at its pointer; a wrong rule is left out). ``known``:
    the listeners' names (a rule for a listener that does not exist would silently do nothing)."""
    out = []
    for i, item in enumerate(value if isinstance(value, list) else []):
        if not isinstance(item, dict) or not isinstance(item.get("pathPrefix"), str):
            continue  # (the schema says why)
        where = ir.Source(file, f"/geo/rules/{i}")
        for j, name in enumerate(item.get("listeners", [])):
            if name not in known:
                diags.error(f"no listener named {name!r}", file, f"{where.pointer}/listeners/{j}", "unknown-listener")
        setting = read_setting({k: v for k, v in item.items() if k not in ("pathPrefix", "listeners")}, where, diags)
        if setting is not None:
            listeners = frozenset(item["listeners"]) if "listeners" in item else None
            out.append(PrefixRule(item["pathPrefix"].rstrip("/"), listeners, setting))
    return tuple(out)


def prefix_setting(rules: tuple[PrefixRule, ...], template: str, listener: str) -> Setting | None:
    """The setting of the longest prefix rule covering ``template`` (whole segments) on ``listener``."""
    best: PrefixRule | None = None
    for r in rules:
        if r.listeners is not None and listener not in r.listeners:
            continue
        if (template == r.prefix or template.startswith(r.prefix + "/")) and (
            best is None or len(r.prefix) > len(best.prefix)
        ):
            best = r
    return best.setting if best is not None else None


def check_layer(value: dict[str, Any], src: ir.Source, section: ir.Geo | None, diags: Diagnostics) -> dict[str, Any]:
    """A settings layer with its ``geo`` checked (a Setting, or False); a rule needs the section."""
    where = ir.Source(src.file, src.pointer + "/geo")
    setting = read_setting(value["geo"], where, diags)
    if setting is not None and section is None:
        diags.error(
            "a geo rule needs the policy's geo section (the country database)", where.file, where.pointer, "geo-section"
        )
    return {**value, "geo": setting or False}


def rule(setting: Any, section: ir.Geo | None) -> ir.GeoRule | None:
    """The operation's rule from its merged ``geo`` setting (a Setting, False or absent)."""
    if not isinstance(setting, Setting) or section is None:
        return None
    return ir.GeoRule(setting.countries, setting.allow, setting.mode, section.unknown_allowed, setting.source)


class Resolver:
    """Geo for the build: the section, the listeners' rules and the path-prefix rules read
    once, then each operation's rule on each listener (build.py calls these three hooks)."""

    def __init__(
        self,
        section: dict[str, Any] | None,
        doc: Any,
        listeners: dict[str, tuple[dict[str, Any], ir.Source]],
        diags: Diagnostics,
    ) -> None:
        self.diags = diags
        self.section: ir.Geo | None = None
        self.rules: tuple[PrefixRule, ...] = ()
        if section:
            self.section = read_section(section, doc.path.parent, ir.Source(doc.name, "/geo"), diags)
            known = set(listeners) or {"default"}  # (the built-in listener when the policies have none)
            self.rules = read_rules(section.get("rules"), doc.name, known, diags)
        self.by_listener: dict[str, Any] = {
            name: check_layer(spec, src, self.section, diags)["geo"]
            for name, (spec, src) in listeners.items()
            if "geo" in spec
        }

    def key(self, listeners: list[str]) -> list[Any]:
        """What an API's operations read of geo (a part of its build cache key)."""
        return [self.section, self.rules, [(n, self.by_listener.get(n)) for n in listeners]]

    def layer(self, value: dict[str, Any], src: ir.Source) -> dict[str, Any]:
        """A route settings layer with its ``geo`` checked."""
        return check_layer(value, src, self.section, self.diags) if "geo" in value else value

    def operation_rule(self, settings: dict[str, Any], template: str, listener: str) -> ir.GeoRule | None:
        """The rule of an operation on a listener: its own settings' (an API's, path's or its
        own), else the longest path-prefix rule's, else the listener's."""
        if self.section is None:
            return None
        if "geo" in settings:
            return rule(settings["geo"], self.section)
        return rule(prefix_setting(self.rules, template, listener) or self.by_listener.get(listener), self.section)


def refuses(rule: ir.GeoRule, country: str | None) -> bool:
    """Whether ``rule`` refuses a client in ``country`` (None: not in the database)."""
    if country is None:
        return not rule.unknown_allowed
    return (country in rule.countries) != rule.allow


def country(section: ir.Geo, address: str) -> str | None:
    """The ISO code the database gives ``address`` (what Envoy's lookup writes), or None."""
    with maxminddb.open_database(section.database) as reader:
        record = reader.get(address)
    found = record.get("country") if isinstance(record, dict) else None
    code = found.get("iso_code") if isinstance(found, dict) else None
    return code if isinstance(code, str) else None


def describe(rule: ir.GeoRule) -> str:
    """``deny KP, IR (hard)``: a rule in a line, for explain and diff."""
    return f"{'allow' if rule.allow else 'deny'} {', '.join(rule.countries)} ({rule.mode})"


def changes(a: ir.GeoRule | None, b: ir.GeoRule | None) -> Iterator[tuple[str, bool]]:
    """What changed between two operations' rules, and whether it lets more clients through
    unmarked (security-relevant): a rule removed, hard turned soft, an allowed country added,
    a denied country dropped, unknown addresses allowed."""
    if a == b or (a is not None and b is not None and _same(a, b)):
        return
    if b is None:
        assert a is not None
        yield f"geo rule removed (was {describe(a)})", True
        return
    if a is None:
        yield f"geo rule added: {describe(b)}", False
        return
    looser = (
        (a.mode == HARD and b.mode == SOFT)
        or (a.allow and b.allow and not set(b.countries) <= set(a.countries))
        or (not a.allow and not b.allow and not set(a.countries) <= set(b.countries))
        or (a.allow != b.allow)
        or (b.unknown_allowed and not a.unknown_allowed)
    )
    yield f"geo rule {describe(a)} → {describe(b)}", looser


def _same(a: ir.GeoRule, b: ir.GeoRule) -> bool:
    def key(r: ir.GeoRule) -> tuple[Any, ...]:
        return set(r.countries), r.allow, r.mode, r.unknown_allowed

    return key(a) == key(b)


__all__ = [
    "HARD",
    "RISK_VALUE",
    "SOFT",
    "PrefixRule",
    "Resolver",
    "Setting",
    "changes",
    "check_layer",
    "country",
    "describe",
    "prefix_setting",
    "read_rules",
    "read_section",
    "read_setting",
    "refuses",
    "rule",
]
