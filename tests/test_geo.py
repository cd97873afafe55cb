"""Geo-blocking policy (controlplane/geo.py): the section and the route setting, their errors
with pointers, and the decision a rule makes for a country (or an address the database does not
place). Through-Envoy tests come with the wiring (see the module's docstring)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from controlplane import geo
from controlplane.errors import Diagnostics


def write_database(path: Path, countries: dict[str, str]) -> None:
    """A MaxMind-format country database placing these networks (CIDR → ISO code)."""
    writer = MMDBWriter(ip_version=4, database_type="GeoLite2-Country", languages=["en"])
    for network, code in countries.items():
        writer.insert_network(IPSet([network]), {"country": {"iso_code": code, "names": {"en": code}}})
    writer.to_db_file(str(path))


def errors(diags: Diagnostics) -> list[tuple[str, str]]:
    return [(d.pointer, d.message) for d in diags.items]


def test_section_reads_a_database_next_to_the_policy(tmp_path: Path) -> None:
    write_database(tmp_path / "geo.mmdb", {"127.0.0.2/32": "US"})
    diags = Diagnostics()
    db = geo.read_section({"database": "geo.mmdb", "unknownCountry": "deny"}, tmp_path, "policy.yaml", "/geo", diags)
    assert errors(diags) == []
    assert db == geo.Database(path=tmp_path / "geo.mmdb", unknown_allowed=False)
    assert geo.read_section({"database": "geo.mmdb"}, tmp_path, "policy.yaml", "/geo", diags) == geo.Database(
        path=tmp_path / "geo.mmdb", unknown_allowed=True
    )


@pytest.mark.parametrize(
    ("value", "pointer", "text"),
    [
        ({"database": "missing.mmdb"}, "/geo/database", "no such file"),
        ({"database": "geo.csv"}, "/geo/database", ".mmdb"),
        ({}, "/geo", "needs a database"),
        ({"database": "geo.mmdb", "unknownCountry": "maybe"}, "/geo/unknownCountry", "allow or deny"),
    ],
)
def test_section_errors_have_pointers(tmp_path: Path, value: dict[str, Any], pointer: str, text: str) -> None:
    write_database(tmp_path / "geo.mmdb", {"127.0.0.2/32": "US"})
    (tmp_path / "geo.csv").write_text("x")
    diags = Diagnostics()
    assert geo.read_section(value, tmp_path, "policy.yaml", "/geo", diags) is None
    [(where, message)] = errors(diags)
    assert where == pointer and text in message


def test_setting_reads_allow_and_deny_with_soft_by_default() -> None:
    diags = Diagnostics()
    assert geo.read_setting({"allow": ["US", "DE", "US"]}, "p.yaml", "/x/geo", diags) == geo.Rule(
        ("US", "DE"), allow=True, mode=geo.SOFT
    )
    assert geo.read_setting({"deny": ["KP"], "mode": "hard"}, "p.yaml", "/x/geo", diags) == geo.Rule(
        ("KP",), allow=False, mode=geo.HARD
    )
    assert geo.read_setting(False, "p.yaml", "/x/geo", diags) is None
    assert errors(diags) == []


@pytest.mark.parametrize(
    ("value", "pointers", "text"),
    [
        ({"allow": ["US"], "deny": ["FR"]}, ["/x/geo"], "not both"),
        ({"mode": "hard"}, ["/x/geo"], "needs allow or deny"),
        ({"deny": ["us", "USA", "ZZ"]}, ["/x/geo/deny/0", "/x/geo/deny/1", "/x/geo/deny/2"], "ISO 3166-1"),
        ({"deny": []}, ["/x/geo/deny"], "non-empty"),
        ({"deny": ["FR"], "mode": "block"}, ["/x/geo/mode"], "hard (403) or soft"),
    ],
)
def test_setting_errors_are_all_reported_with_pointers(value: dict[str, Any], pointers: list[str], text: str) -> None:
    diags = Diagnostics()
    assert geo.read_setting(value, "p.yaml", "/x/geo", diags) is None
    found = errors(diags)
    assert [p for p, _m in found] == pointers
    assert all(text in m for _p, m in found)
    if value.get("deny") == ["us", "USA", "ZZ"]:
        assert "write 'US'" in found[0][1]  # lower case gets its fix


@pytest.mark.parametrize(
    ("rule", "unknown_allowed", "expected"),
    [
        (geo.Rule(("US",), allow=True, mode=geo.HARD), True, {"US": True, "FR": False, None: True}),
        (geo.Rule(("US",), allow=True, mode=geo.HARD), False, {"US": True, "FR": False, None: False}),
        (geo.Rule(("US",), allow=False, mode=geo.HARD), True, {"US": False, "FR": True, None: True}),
        (geo.Rule(("US",), allow=False, mode=geo.HARD), False, {"US": False, "FR": True, None: False}),
    ],
)
def test_decision_covers_unknown_country_on_its_own(
    tmp_path: Path, rule: geo.Rule, unknown_allowed: bool, expected: dict[str | None, bool]
) -> None:
    db = geo.Database(tmp_path / "geo.mmdb", unknown_allowed)
    assert {c: geo.decision(rule, db, c) for c in expected} == expected
