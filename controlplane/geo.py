"""Geo-blocking policy (issue 12), read and checked: not yet wired into the build.

Policy shape:

- a top-level ``geo`` section: ``database`` (a MaxMind-format ``.mmdb`` file, relative to the
  policy) and ``unknownCountry: allow | deny`` (an address the database does not place;
  ``allow`` by default);
- a ``geo`` route setting (defaults, operations, ``x-gateway``): ``allow: [ISO codes]`` or
  ``deny: [ISO codes]``, never both, and ``mode: hard | soft``.

What Envoy 1.40 does (checked against a real Envoy, not the documentation alone):

- ``envoy.filters.http.geoip`` with ``envoy.geoip_providers.maxmind`` writes the country under
  ``common_provider_config.geo_field_keys.country`` (``geo_headers_to_add`` is deprecated); the
  country comes from ``country_db_path`` (a GeoLite2-Country/GeoIP2-Country file) or
  ``city_db_path``. An address not in the database leaves no header, and a client-sent copy of
  the header stays: a header_mutation removal must run before the geoip filter.
- The connection manager picks the route before the filters run and the geoip filter does not
  clear the route cache, so route matching on the country header would see the client's copy:
  decisions are RBAC (per-route config on a filter after geoip), which reads headers as they are.
- The provider reloads the file when it is replaced by a rename (inotify MovedTo; stat
  ``maxmind.country_db.<path>.db_reload_success``), not when it is rewritten in place: no restart
  or config push is needed for a database swapped atomically.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import Diagnostics

HARD, SOFT = "hard", "soft"
_ISO = re.compile(r"[A-Z]{2}")
# ISO 3166-1 codes that MaxMind never returns for a country: user-assigned and reserved ones
_NOT_COUNTRIES = frozenset({"AA", "ZZ", "XX", "QM", "QN", "QO", "QP", "QQ", "QR", "QS", "QT", "QU"})


@dataclass(frozen=True, slots=True)
class Database:
    """The ``geo`` section: where the database is, and what an address it does not place gets."""

    path: Path
    unknown_allowed: bool


@dataclass(frozen=True, slots=True)
class Rule:
    """A checked ``geo`` route setting: ``countries`` allowed (``allow``) or denied."""

    countries: tuple[str, ...]
    allow: bool
    mode: str


def read_section(value: Any, base: Path, file: str, ptr: str, diags: Diagnostics) -> Database | None:
    """The top-level ``geo`` section (None after reporting errors under ``ptr``)."""
    if not isinstance(value, dict):
        diags.error("geo must be a mapping with a database", file, ptr, "geo-section")
        return None
    found = len(diags.items)
    database = value.get("database")
    path = base / database if isinstance(database, str) else None
    if path is None:
        diags.error("geo needs a database (a MaxMind-format .mmdb file)", file, ptr, "geo-database")
    elif not path.name.endswith(".mmdb"):
        diags.error(
            f"{database!r}: Envoy's MaxMind provider reads .mmdb files", file, f"{ptr}/database", "geo-database"
        )
    elif not path.is_file():
        diags.error(f"{database!r}: no such file (next to the policy: {path})", file, f"{ptr}/database", "geo-database")
    unknown = value.get("unknownCountry", "allow")
    if unknown not in ("allow", "deny"):
        diags.error(f"unknownCountry {unknown!r}: allow or deny", file, f"{ptr}/unknownCountry", "geo-unknown")
    if len(diags.items) != found or path is None:
        return None
    return Database(path=path, unknown_allowed=unknown == "allow")


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


def read_setting(value: Any, file: str, ptr: str, diags: Diagnostics) -> Rule | None:
    """A ``geo`` route setting at ``ptr`` (None for ``false`` and after reporting errors)."""
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
        diags.error(f"mode {mode!r}: hard (403) or soft", file, f"{ptr}/mode", "geo-mode")
    if len(diags.items) != found:
        return None
    return Rule(countries=countries, allow=key == "allow", mode=mode)


def decision(rule: Rule, db: Database, country: str | None) -> bool:
    """Whether a client in ``country`` (None: not in the database) passes ``rule``."""
    if country is None:
        return db.unknown_allowed
    return (country in rule.countries) == rule.allow


__all__ = ["HARD", "SOFT", "Database", "Rule", "decision", "read_section", "read_setting"]
