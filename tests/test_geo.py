"""Geo-blocking: the ``geo`` section and route settings (errors with pointers, the decision a
rule makes), and through a real Envoy: hard (403) and soft (``X-Gateway-Risk: geo``) rules on a
listener, an API's path and an operation, the most specific winning; spoofed country headers;
unknown addresses; the order of the address checks (allowlist, reputation, geo); a database
replaced without a restart; ``explain`` agreeing with Envoy; ``diff`` flagging a looser rule.

The database is a real MaxMind-format file (``mmdb-writer``) placing loopback addresses
(Linux answers all of 127/8) in countries; requests leave from those addresses."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from controlplane import geo, ir
from controlplane.compiler import compile
from controlplane.diff import diff
from controlplane.echo import EchoServer
from controlplane.errors import Diagnostics
from controlplane.explain import Caller, explain

from .harness import Gateway, Response
from .harness import from_address as request_from

US, FR, CN, UNKNOWN = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"
OFFICE_CN = "127.0.0.6"  # in China, and on the office allowlist
BLOCKED_FR = "127.0.0.7"  # in France, and on a blocking reputation feed
PROXY_US = "127.0.0.8"  # in the United States, and on a soft reputation feed
PLACES = {US: "US", FR: "FR", CN: "CN", OFFICE_CN: "CN", BLOCKED_FR: "FR", PROXY_US: "US"}


def database(countries: dict[str, str], kind: str = "GeoLite2-Country") -> bytes:
    """A MaxMind-format database placing these addresses or networks (→ ISO code)."""
    writer = MMDBWriter(ip_version=4, database_type=kind, languages=["en"])
    for network, code in countries.items():
        writer.insert_network(IPSet([network]), {"country": {"iso_code": code, "names": {"en": code}}})
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.mmdb"
        writer.to_db_file(str(path))
        return path.read_bytes()


SPEC = """
openapi: 3.0.3
info: {title: things, version: "1"}
servers: [{url: /api}]
paths:
  /open:
    get: {operationId: open, responses: {"200": {description: ok}}}
  /everyone:
    x-gateway: {geo: false}
    get: {operationId: everyone, responses: {"200": {description: ok}}}
  /us-denied:
    get: {operationId: usDenied, responses: {"200": {description: ok}}}
  /fr-only:
    get:
      operationId: frOnly
      x-gateway: {geo: {allow: [FR]}}
      responses: {"200": {description: ok}}
  /office/things:
    get: {operationId: officeThings, responses: {"200": {description: ok}}}
  /admin/stats:
    get: {operationId: adminStats, responses: {"200": {description: ok}}}
"""

POLICY = """
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
listeners:
  - {name: public, address: 127.0.0.1, port: {{PORT}}, geo: {deny: [CN], mode: hard}}
upstreams: [{name: backend, endpoints: ["{{BACKEND}}"]}]
geo:
  database: countries.mmdb
  rules:
    - {pathPrefix: /api/admin, allow: [US, CN], mode: hard, listeners: [public]}
    - {pathPrefix: /api/everyone, deny: [FR], mode: hard}    # its path says geo: false
ipAllowlists:
  - pathPrefix: /api/office
    allow: [127.0.0.6, 127.0.0.3]
reputation:
  feeds:
    - {name: malicious, file: bad.txt}
    - {name: proxies, file: proxies.txt, action: soft}
apis:
  - name: things
    spec: things.yaml
    upstream: backend
    operations:
      usDenied: {geo: {deny: [US], mode: hard}}
"""


def files(policy: str = POLICY, places: dict[str, str] | None = None) -> dict[str, str | bytes]:
    return {
        "policy.yaml": policy,
        "things.yaml": SPEC,
        "countries.mmdb": database({f"{a}/32": c for a, c in (places or PLACES).items()}),
        "bad.txt": f"{BLOCKED_FR}\n",
        "proxies.txt": f"{PROXY_US}\n",
    }


def from_address(gw: Gateway, source: str, path: str, headers: dict[str, str] | None = None) -> Response:
    return request_from(gw.port, source, path, headers)


def reached(
    gw: Gateway, echo: EchoServer, source: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, list[list[str]] | None]:
    """The status, and the headers the backend received (None: it received nothing)."""
    before = len(echo.received)
    resp = from_address(gw, source, path, headers)
    seen = echo.received[before:]
    if resp.status == 403:
        assert json.loads(resp.body) == {
            "message": "forbidden",
            "status": 403,
            "request_id": resp.header("x-request-id"),
        }
    return resp.status, (seen[0]["header_list"] if seen else None)


def values(header_list: list[list[str]] | None, name: str) -> list[str]:
    assert header_list is not None
    return [v for k, v in header_list if k == name]


def risk(header_list: list[list[str]] | None) -> list[str]:
    return [part.strip() for v in values(header_list, "x-gateway-risk") for part in v.split(",")]


@pytest.fixture(scope="module")
def gw(gateway_factory: Callable[..., Gateway]) -> Gateway:
    return gateway_factory(files())


def counter(gw: Gateway, name: str) -> int:
    assert gw.envoy is not None
    stats = dict(line.split(": ", 1) for line in gw.envoy.admin("/stats?filter=rbac")[1].splitlines())
    return int(stats.get(name, "0"))


# -- through Envoy ---------------------------------------------------------------------------------
@pytest.mark.envoy
@pytest.mark.parametrize(
    ("path", "expected"),
    [
        # the listener's rule (deny CN, hard) on routes without their own
        ("/api/open", {US: 200, FR: 200, CN: 403, UNKNOWN: 200}),
        # geo: false on the path: no rule at all
        ("/api/everyone", {US: 200, FR: 200, CN: 200, UNKNOWN: 200}),
        # the operation's own rule (deny US, hard) replaces the listener's
        ("/api/us-denied", {US: 403, FR: 200, CN: 200, UNKNOWN: 200}),
        # a soft rule never refuses
        ("/api/fr-only", {US: 200, FR: 200, CN: 200, UNKNOWN: 200}),
        # a path-prefix rule (geo.rules: allow US and CN, hard) replaces the listener's
        ("/api/admin/stats", {US: 200, FR: 403, CN: 200, UNKNOWN: 200}),
    ],
)
def test_the_most_specific_rule_decides(gw: Gateway, echo: EchoServer, path: str, expected: dict[str, int]) -> None:
    got = {ip: reached(gw, echo, ip, path)[0] for ip in expected}
    assert got == expected
    for ip, status in got.items():  # a refused client's request never reaches the backend
        if status == 403:
            assert reached(gw, echo, ip, path)[1] is None


@pytest.mark.envoy
def test_a_soft_rule_marks_the_refused_clients_for_the_backend(gw: Gateway, echo: EchoServer) -> None:
    marked = {ip: risk(reached(gw, echo, ip, "/api/fr-only")[1]) for ip in (US, FR, CN, UNKNOWN)}
    assert marked == {US: ["geo"], FR: [], CN: ["geo"], UNKNOWN: []}  # unknown: allowed by default
    # the backend learns the country the gateway found
    assert values(reached(gw, echo, CN, "/api/fr-only")[1], "x-gateway-geo-country") == ["CN"]


@pytest.mark.envoy
@pytest.mark.parametrize("name", ["X-Gateway-Geo-Country", "x-gateway-geo.country", "X-Gateway-Risk"])
def test_client_sent_geo_headers_are_stripped_before_the_lookup(gw: Gateway, echo: EchoServer, name: str) -> None:
    # a refused country claiming an allowed one, an unplaced address claiming one
    assert reached(gw, echo, US, "/api/us-denied", {name: "FR"})[0] == 403
    assert risk(reached(gw, echo, US, "/api/fr-only", {name: "FR"})[1]) == ["geo"]
    status, seen = reached(gw, echo, UNKNOWN, "/api/everyone", {name: "FR"})
    assert status == 200
    assert values(seen, "x-gateway-geo-country") == [] and risk(seen) == []
    assert not any(k.replace("_", "-").replace(".", "-") == name.lower().replace(".", "-") for k, _ in seen or [])


@pytest.mark.envoy
@pytest.mark.parametrize(
    "claim",
    [{"X-Forwarded-For": FR}, {"X-Forwarded-For": f"{FR}, {FR}"}, {"Forwarded": f"for={FR}"}, {"X-Real-IP": FR}],
)
def test_a_client_cannot_claim_another_address(gw: Gateway, echo: EchoServer, claim: dict[str, str]) -> None:
    # the listener trusts no proxy hop: the country is the TCP peer's
    assert reached(gw, echo, CN, "/api/open", claim)[0] == 403
    assert risk(reached(gw, echo, US, "/api/fr-only", claim)[1]) == ["geo"]


@pytest.mark.envoy
def test_behind_a_trusted_proxy_the_hop_it_reports_is_looked_up(
    gateway_factory: Callable[..., Gateway], echo: EchoServer
) -> None:
    proxied = gateway_factory(files(POLICY.replace("port: {{PORT}},", "port: {{PORT}}, xffNumTrustedHops: 1,")))
    # the proxy (127.0.0.1, in no country) reports the client as the last X-Forwarded-For
    # element; what the client wrote before it is not trusted
    assert reached(proxied, echo, "127.0.0.1", "/api/open", {"X-Forwarded-For": f"{FR}, {CN}"})[0] == 403
    assert reached(proxied, echo, "127.0.0.1", "/api/open", {"X-Forwarded-For": f"{CN}, {FR}"})[0] == 200
    status, seen = reached(proxied, echo, "127.0.0.1", "/api/fr-only", {"X-Forwarded-For": f"{FR}, {US}"})
    assert status == 200 and risk(seen) == ["geo"] and values(seen, "x-gateway-geo-country") == ["US"]


@pytest.mark.envoy
def test_address_checks_run_allowlist_then_reputation_then_geo(gw: Gateway, echo: EchoServer) -> None:
    def refused_by(source: str, path: str) -> tuple[int, dict[str, int]]:
        names = {
            "allowlist": "http.public.rbac.denied",
            "reputation": "http.public.rbac.reputation.denied",
            "geo": "http.public.rbac.geo.denied",
        }
        before = {k: counter(gw, n) for k, n in names.items()}
        status = reached(gw, echo, source, path)[0]
        return status, {k: counter(gw, n) - before[k] for k, n in names.items() if counter(gw, n) != before[k]}

    # 1. the allowlist first: a US client off the office list never reaches the geo check
    assert refused_by(US, "/api/office/things") == (403, {"allowlist": 1})
    # an allowlisted address is exempt from reputation feeds, not from geo rules: the office in
    # China is refused by the listener's hard rule; the office in France passes
    assert refused_by(OFFICE_CN, "/api/office/things") == (403, {"geo": 1})
    assert refused_by(FR, "/api/office/things") == (200, {})
    # 2. a blocking feed before geo: a French (allowed) address on it gets the feed's 403
    assert refused_by(BLOCKED_FR, "/api/open") == (403, {"reputation": 1})
    # 3. soft marks add up: a soft feed's and a soft geo rule's
    assert sorted(risk(reached(gw, echo, PROXY_US, "/api/fr-only")[1])) == ["geo", "reputation"]


@pytest.mark.envoy
def test_a_hard_rule_refuses_preflights_too(gateway_factory: Callable[..., Gateway], echo: EchoServer) -> None:
    # the CORS filter answers preflights itself, after the geo filters: a refused country gets
    # the rule's 403 before it, an allowed one the preflight's 200; a soft rule never refuses
    policy = POLICY.replace(
        "usDenied: {geo: {deny: [US], mode: hard}}",
        "usDenied: {geo: {deny: [US], mode: hard}, cors: {allowOrigins: ['https://app.example']}}\n"
        "      frOnly: {cors: {allowOrigins: ['https://app.example']}}",
    )
    browser = gateway_factory(files(policy))
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "GET"}

    def ask(source: str, path: str) -> Response:
        return request_from(browser.port, source, path, preflight, method="OPTIONS")

    before = len(echo.received)
    assert ask(US, "/api/us-denied").status == 403
    allowed = ask(FR, "/api/us-denied")
    assert allowed.status == 200 and allowed.header("access-control-allow-origin") == "https://app.example"
    assert ask(US, "/api/fr-only").status == 200  # soft
    assert len(echo.received) == before  # preflights never reach the backend


@pytest.mark.envoy
def test_unknown_country_can_be_denied(gateway_factory: Callable[..., Gateway], echo: EchoServer) -> None:
    policy = POLICY.replace("  database: countries.mmdb\n", "  database: countries.mmdb\n  unknownCountry: deny\n")
    strict = gateway_factory(files(policy))
    assert reached(strict, echo, UNKNOWN, "/api/open")[0] == 403  # the listener's hard rule
    assert reached(strict, echo, UNKNOWN, "/api/us-denied")[0] == 403
    assert reached(strict, echo, FR, "/api/open")[0] == 200
    assert risk(reached(strict, echo, UNKNOWN, "/api/fr-only")[1]) == ["geo"]  # soft: marked
    assert reached(strict, echo, UNKNOWN, "/api/everyone")[0] == 200  # no rule, no decision


@pytest.mark.envoy
def test_a_replaced_database_takes_effect_without_a_restart(
    gateway_factory: Callable[..., Gateway], echo: EchoServer
) -> None:
    own = gateway_factory(files())
    assert own.envoy is not None
    assert reached(own, echo, US, "/api/us-denied")[0] == 403
    fresh = own.workdir / "fresh.mmdb"
    fresh.write_bytes(database({f"{US}/32": "FR", f"{FR}/32": "US"}))
    os.replace(fresh, own.workdir / "countries.mmdb")  # as geoipupdate and a Kubernetes volume do
    deadline = time.monotonic() + 10
    while reached(own, echo, US, "/api/us-denied")[0] != 200:  # the new answer, not a sleep
        assert time.monotonic() < deadline, own.envoy.logs()
        time.sleep(0.05)
    assert reached(own, echo, FR, "/api/us-denied")[0] == 403
    assert own.envoy.proc.poll() is None  # the same Envoy, no push


def test_a_database_in_a_kubernetes_volume_reaches_envoy_through_sync_files(
    gateway_factory: Callable[..., Gateway], echo: EchoServer, tmp_path: Path
) -> None:
    """ConfigMap, Secret and projected volumes update by a second symbolic link: the file is
    ``countries.mmdb -> ..data/countries.mmdb``, and an update points ``..data`` at a new
    directory, so the path of the file is never renamed and Envoy would not see it.
    ``sync-files`` keeps a copy that is replaced by a rename, which Envoy does see."""
    own = gateway_factory(files())
    assert own.envoy is not None
    volume = tmp_path / "volume"  # as the kubelet lays it out
    (volume / "..v1").mkdir(parents=True)
    (volume / "..v1" / "countries.mmdb").write_bytes(database({f"{US}/32": "FR", f"{FR}/32": "US"}))
    os.symlink("..v1", volume / "..data")
    os.symlink("..data/countries.mmdb", volume / "countries.mmdb")

    def until(status: int, source: str) -> None:
        deadline = time.monotonic() + 10
        while reached(own, echo, source, "/api/us-denied")[0] != status:  # the new answer, not a sleep
            assert time.monotonic() < deadline, own.envoy.logs() if own.envoy else ""
            time.sleep(0.05)

    assert reached(own, echo, US, "/api/us-denied")[0] == 403
    sync = subprocess.Popen(
        [sys.executable, "-m", "controlplane", "sync-files", str(volume), str(own.workdir), "--interval", "0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        until(200, US)  # the volume's database, copied over the one Envoy read
        # an update of the ConfigMap: a new directory, ..data swapped, the old directory removed
        (volume / "..v2").mkdir()
        (volume / "..v2" / "countries.mmdb").write_bytes(database({f"{US}/32": "US", f"{FR}/32": "FR"}))
        os.symlink("..v2", volume / "..data_tmp")
        os.replace(volume / "..data_tmp", volume / "..data")
        shutil.rmtree(volume / "..v1")
        until(403, US)
        assert reached(own, echo, FR, "/api/us-denied")[0] == 200
        assert own.envoy.proc.poll() is None  # the same Envoy, no push
    finally:
        sync.send_signal(signal.SIGTERM)
        out, _ = sync.communicate(timeout=10)
    assert sync.returncode == 0, out
    assert not (own.workdir / "..data").exists()  # the kubelet's own names are not copied


def test_sync_files_copies_by_rename_only_what_changed(tmp_path: Path) -> None:
    from controlplane.filesync import sync

    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "..v1" / "sub").mkdir(parents=True)
    (src / "..v1" / "a.mmdb").write_bytes(b"one")
    (src / "..v1" / "sub" / "b.txt").write_bytes(b"two")
    os.symlink("..v1", src / "..data")
    os.symlink("..data/a.mmdb", src / "a.mmdb")
    os.symlink("..data/sub", src / "sub")
    dst.mkdir()
    known: dict[str, str] = {}
    seen: dict[str, tuple[int, ...]] = {}
    assert sorted(sync(src, dst, known, seen)) == ["a.mmdb", "sub/b.txt"]
    assert (dst / "a.mmdb").read_bytes() == b"one" and not (dst / "a.mmdb").is_symlink()
    inode = (dst / "a.mmdb").stat().st_ino
    assert sync(src, dst, known, seen) == []  # nothing changed: nothing written
    assert (dst / "a.mmdb").stat().st_ino == inode
    (src / "..v2").mkdir()
    (src / "..v2" / "a.mmdb").write_bytes(b"three")
    os.symlink("..v2", src / "..data_tmp")
    os.replace(src / "..data_tmp", src / "..data")
    assert sync(src, dst, known, seen) == ["a.mmdb"]
    assert (dst / "a.mmdb").read_bytes() == b"three"
    assert (dst / "a.mmdb").stat().st_ino != inode  # a new file renamed over the copy
    assert (dst / "sub" / "b.txt").read_bytes() == b"two"  # gone from the volume: the copy stays
    assert sorted(p.name for p in dst.iterdir()) == ["a.mmdb", "sub"]  # no temporary file left
    # a fresh start over existing copies rewrites nothing that is the same
    assert sync(src, dst, {}) == []


def test_a_database_behind_a_link_is_named_as_linked_with_a_warning(tmp_path: Path) -> None:
    root = write(tmp_path, POLICY)
    (root / "..v1").mkdir()
    os.replace(root / "countries.mmdb", root / "..v1" / "countries.mmdb")
    os.symlink("..v1/countries.mmdb", root / "countries.mmdb")
    result = compile([root])
    assert result.ok and result.gateway is not None and result.gateway.geo is not None
    assert result.gateway.geo.database == str(root / "countries.mmdb")  # what Envoy watches: the link's path
    (warning,) = [w for w in result.warnings if w.code == "geo-database-link"]
    assert "sync-files" in warning.message and warning.pointer == "/geo/database"


@pytest.mark.envoy
@pytest.mark.parametrize("source", [US, FR, CN, UNKNOWN, OFFICE_CN, BLOCKED_FR, PROXY_US])
def test_explain_agrees_with_envoy(gw: Gateway, echo: EchoServer, source: str) -> None:
    result = compile([gw.workdir])
    assert result.ok and result.gateway is not None
    for path in (
        "/api/open",
        "/api/everyone",
        "/api/us-denied",
        "/api/fr-only",
        "/api/office/things",
        "/api/admin/stats",
    ):
        status, seen = reached(gw, echo, source, path)
        said = explain(result.gateway, "GET", f"http://gateway.test:{gw.port}{path}", Caller(client_ip=source))
        assert said.status == status, (path, said.text())
        if status == 200:  # the marks explain names are the ones the backend received
            marks = sorted(s.decision.rsplit(": ", 1)[1] for s in said.steps if "X-Gateway-Risk" in s.decision)
            assert marks == sorted(risk(seen)), (path, said.text())


# -- compile ---------------------------------------------------------------------------------------
def write(tmp_path: Path, policy: str, extra: dict[str, str | bytes] | None = None) -> Path:
    for name, text in {**files(policy), **(extra or {})}.items():
        path = tmp_path / name
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text.replace("{{PORT}}", "8080").replace("{{BACKEND}}", "127.0.0.1:9"))
    return tmp_path


def problems(tmp_path: Path) -> list[tuple[str, str, str]]:
    result = compile([tmp_path])
    return [(d.file.split("/")[-1], d.pointer, d.message) for d in result.errors]


def test_a_rule_without_a_database_is_an_error_at_the_rule(tmp_path: Path) -> None:
    policy = POLICY[: POLICY.index("geo:\n")] + POLICY[POLICY.index("ipAllowlists:") :]
    found = problems(write(tmp_path, policy))
    where = {(f, p) for f, p, m in found if "needs the policy's geo section" in m}
    assert where == {
        ("policy.yaml", "/listeners/0/geo"),
        ("policy.yaml", "/apis/0/operations/usDenied/geo"),
        ("things.yaml", "/paths/~1fr-only/get/x-gateway/geo"),
    }


@pytest.mark.parametrize(
    ("content", "text"),
    [
        (b"not a database", "not a MaxMind-format database"),
        (database({"127.0.0.2/32": "US"}, kind="GeoLite2-ASN"), "Country or City"),
    ],
)
def test_a_database_envoy_could_not_read_is_refused(tmp_path: Path, content: bytes, text: str) -> None:
    found = problems(write(tmp_path, POLICY, {"countries.mmdb": content}))
    assert [(f, p) for f, p, m in found if text in m] == [("policy.yaml", "/geo/database")], found


def test_path_prefix_rules_are_checked_with_pointers(tmp_path: Path) -> None:
    policy = POLICY.replace("mode: hard, listeners: [public]}", "mode: hard, listeners: [public, internal]}")
    policy = policy.replace(
        "{pathPrefix: /api/everyone, deny: [FR], mode: hard}", "{pathPrefix: /api/everyone, deny: [fr]}"
    )
    found = {(p, m) for _f, p, m in problems(write(tmp_path, policy))}
    assert {p for p, _m in found} == {"/geo/rules/0/listeners/1", "/geo/rules/1/deny/0"}, found
    assert any("no listener named 'internal'" in m for _p, m in found)


def test_the_longest_prefix_wins() -> None:
    src = ir.Source("p.yaml", "/geo/rules/0")
    api, admin = (geo.Setting((c,), True, geo.HARD, src) for c in ("US", "DE"))
    rules = (geo.PrefixRule("/api", None, api), geo.PrefixRule("/api/admin", frozenset({"public"}), admin))
    assert geo.prefix_setting(rules, "/api/admin/stats", "public") is admin
    assert geo.prefix_setting(rules, "/api/admin/stats", "internal") is api  # not on that listener
    assert geo.prefix_setting(rules, "/api/administrator", "public") is api  # whole segments
    assert geo.prefix_setting(rules, "/apis", "public") is None


def test_a_city_database_is_accepted(tmp_path: Path) -> None:
    assert problems(write(tmp_path, POLICY, {"countries.mmdb": database(PLACES, kind="GeoIP2-City")})) == []


def test_every_rule_error_at_once_with_pointers(tmp_path: Path) -> None:
    policy = POLICY.replace(
        "usDenied: {geo: {deny: [US], mode: hard}}", "usDenied: {geo: {deny: [us, USA], mode: block}}"
    )
    policy = policy.replace("geo: {deny: [CN], mode: hard}", "geo: {allow: [FR], deny: [CN]}")
    found = {(p, m.split(":")[0]) for _f, p, m in problems(write(tmp_path, policy))}
    pointers = sorted(p for p, _m in found)
    assert pointers == [
        "/apis/0/operations/usDenied/geo/deny/0",
        "/apis/0/operations/usDenied/geo/deny/1",
        "/apis/0/operations/usDenied/geo/mode",
        "/listeners/0/geo",
    ]


def test_section_and_setting_read_with_pointers(tmp_path: Path) -> None:
    (tmp_path / "geo.mmdb").write_bytes(database({"127.0.0.2/32": "US"}))
    (tmp_path / "geo.csv").write_text("x")
    src = ir.Source("policy.yaml", "/geo")
    diags = Diagnostics()
    section = geo.read_section({"database": "geo.mmdb", "unknownCountry": "deny"}, tmp_path, src, diags)
    assert section == ir.Geo(str((tmp_path / "geo.mmdb").resolve()), False, src)
    for value, pointer, text in [
        ({"database": "missing.mmdb"}, "/geo/database", "no such file"),
        ({"database": "geo.csv"}, "/geo/database", ".mmdb"),
        ({}, "/geo", "needs a database"),
        ({"database": "geo.mmdb", "unknownCountry": "maybe"}, "/geo/unknownCountry", "allow or deny"),
    ]:
        found = Diagnostics()
        assert geo.read_section(value, tmp_path, src, found) is None
        assert [(d.pointer, text in d.message) for d in found.items] == [(pointer, True)]
    setting = geo.read_setting({"allow": ["US", "DE", "US"]}, ir.Source("p.yaml", "/x/geo"), diags)
    assert setting is not None and setting.countries == ("US", "DE") and setting.mode == geo.SOFT
    assert diags.items == []
    lower = Diagnostics()
    geo.read_setting({"deny": ["us"]}, ir.Source("p.yaml", "/x/geo"), lower)
    assert "write 'US'" in lower.items[0].message


@pytest.mark.parametrize(
    ("allow", "unknown_allowed", "expected"),
    [
        (True, True, {"US": False, "FR": True, None: False}),
        (True, False, {"US": False, "FR": True, None: True}),
        (False, True, {"US": True, "FR": False, None: False}),
        (False, False, {"US": True, "FR": False, None: True}),
    ],
)
def test_refuses_covers_unknown_country_on_its_own(
    allow: bool, unknown_allowed: bool, expected: dict[str | None, bool]
) -> None:
    rule = ir.GeoRule(("US",), allow, geo.HARD, unknown_allowed, ir.Source("p.yaml", "/geo"))
    assert {c: geo.refuses(rule, c) for c in expected} == expected


def test_diff_flags_a_looser_rule(tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    old = compile([write(tmp_path / "old", POLICY)])
    loose = POLICY.replace("usDenied: {geo: {deny: [US], mode: hard}}", "usDenied: {geo: {deny: [US]}}")
    loose = loose.replace("geo: {deny: [CN], mode: hard}}", "geo: {deny: [CN, RU], mode: hard}}")
    (tmp_path / "new").mkdir()
    new = compile([write(tmp_path / "new", loose)])
    assert old.gateway is not None and new.gateway is not None
    report = diff(old.gateway, new.gateway)
    changes: dict[str, Any] = {c.subject + ": " + c.what: c.security for c in report.changes}
    turned_soft = [k for k in changes if "usDenied" in k and "geo rule" in k]
    assert turned_soft and all(changes[k] for k in turned_soft), changes
    stricter = [k for k in changes if "open" in k and "geo rule" in k]
    assert stricter and not any(changes[k] for k in stricter), changes
