"""Geo-blocking policy (controlplane/geo.py): the section and the route setting, their errors
with pointers, and the decision a rule makes for a country (or an address the database does not
place). Through-Envoy tests come with the wiring (see the module's docstring)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from controlplane import geo
from controlplane.echo import EchoServer
from controlplane.errors import Diagnostics
from tests.harness import EnvoyProcess, Response, free_port, parse_response


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


# -- through a real Envoy: the filters and per-route rules of controlplane/translate/geo.py ----------

US, FR, UNKNOWN = "127.0.0.2", "127.0.0.3", "127.0.0.4"  # loopback answers the whole 127/8


def _listener_config(
    port: int, admin_port: int, echo_port: int, db: geo.Database, rules: dict[str, geo.Rule]
) -> dict[str, Any]:
    from envoy.config.bootstrap.v3 import bootstrap_pb2
    from envoy.config.cluster.v3 import cluster_pb2
    from envoy.config.core.v3 import address_pb2
    from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
    from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
    from envoy.config.route.v3 import route_components_pb2 as rc
    from envoy.config.route.v3 import route_pb2
    from envoy.extensions.filters.http.router.v3 import router_pb2
    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

    from controlplane.resources import to_dict
    from controlplane.translate import geo as geo_envoy
    from controlplane.translate._pb import packed

    def address(host: str, p: int) -> address_pb2.Address:
        return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=host, port_value=p))

    routes = []
    for prefix, rule in rules.items():
        route = rc.Route(match=rc.RouteMatch(prefix=prefix), route=rc.RouteAction(cluster="echo"))
        route.typed_per_filter_config[geo_envoy.DECISION_FILTER].CopyFrom(packed(geo_envoy.route_config(rule, db)))
        routes.append(route)
    routes.append(rc.Route(match=rc.RouteMatch(prefix="/"), route=rc.RouteAction(cluster="echo")))
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix="geo",
        route_config=route_pb2.RouteConfiguration(
            virtual_hosts=[rc.VirtualHost(name="all", domains=["*"], routes=routes)]
        ),
        http_filters=[
            *geo_envoy.filters(db),
            hcm_pb2.HttpFilter(name="envoy.filters.http.router", typed_config=packed(router_pb2.Router())),
        ],
    )
    listener = listener_pb2.Listener(
        name="geo",
        address=address("127.0.0.1", port),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[listener_components_pb2.Filter(name="hcm", typed_config=packed(hcm))]
            )
        ],
    )
    cluster = cluster_pb2.Cluster(
        name="echo",
        type=cluster_pb2.Cluster.STATIC,
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name="echo",
            endpoints=[
                endpoint_components_pb2.LocalityLbEndpoints(
                    lb_endpoints=[
                        endpoint_components_pb2.LbEndpoint(
                            endpoint=endpoint_components_pb2.Endpoint(address=address("127.0.0.1", echo_port))
                        )
                    ]
                )
            ],
        ),
    )
    bootstrap = bootstrap_pb2.Bootstrap(
        admin=bootstrap_pb2.Admin(address=address("127.0.0.1", admin_port)),
        static_resources=bootstrap_pb2.Bootstrap.StaticResources(listeners=[listener], clusters=[cluster]),
    )
    return to_dict(bootstrap)


def request_from(source: str, port: int, path: str, headers: dict[str, str] | None = None) -> Response:
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    raw = f"GET {path} HTTP/1.1\r\nHost: geo.test\r\n{extra}Connection: close\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as s:
        s.sendall(raw)
        buf = b""
        while chunk := s.recv(65536):
            buf += chunk
    return parse_response(buf)


@pytest.fixture
def envoy_geo(tmp_path: Path, echo: EchoServer) -> Iterator[tuple[int, EnvoyProcess, Path]]:
    path = tmp_path / "geo.mmdb"
    write_database(path, {f"{US}/32": "US", f"{FR}/32": "FR"})
    db_allow_unknown = geo.Database(path, unknown_allowed=True)
    db_deny_unknown = geo.Database(path, unknown_allowed=False)
    port, admin_port = free_port(), free_port()
    rules = {
        "/allow-us": (geo.Rule(("US",), allow=True, mode=geo.HARD), db_allow_unknown),
        "/deny-us": (geo.Rule(("US",), allow=False, mode=geo.HARD), db_allow_unknown),
        "/strict/deny-us": (geo.Rule(("US",), allow=False, mode=geo.HARD), db_deny_unknown),
    }
    # one database for the listener; the unknown-country choice is in each route's rule
    config = _listener_config(port, admin_port, echo.port, db_allow_unknown, {k: r for k, (r, _d) in rules.items()})
    for prefix, (rule, db) in rules.items():  # (per-route configs built with their own unknown choice)
        _set_route(config, prefix, rule, db)
    proc = EnvoyProcess(config, tmp_path, admin_port)
    yield port, proc, path
    proc.stop()


def _set_route(config: dict[str, Any], prefix: str, rule: geo.Rule, db: geo.Database) -> None:
    from controlplane.resources import to_dict
    from controlplane.translate import geo as geo_envoy

    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    for route in hcm["route_config"]["virtual_hosts"][0]["routes"]:
        if route["match"].get("prefix") == prefix:
            per_route = to_dict(geo_envoy.route_config(rule, db))
            per_route["@type"] = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
            route["typed_per_filter_config"][geo_envoy.DECISION_FILTER] = per_route


@pytest.mark.envoy
@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/allow-us", {US: 200, FR: 403, UNKNOWN: 200}),
        ("/deny-us", {US: 403, FR: 200, UNKNOWN: 200}),
        ("/strict/deny-us", {US: 403, FR: 200, UNKNOWN: 403}),
        ("/open", {US: 200, FR: 200, UNKNOWN: 200}),
    ],
)
def test_hard_rules_decide_on_the_looked_up_country(
    envoy_geo: tuple[int, EnvoyProcess, Path], path: str, expected: dict[str, int]
) -> None:
    port, _proc, _db = envoy_geo
    assert {ip: request_from(ip, port, path).status for ip in expected} == expected


@pytest.mark.envoy
def test_a_client_sent_country_is_stripped_before_the_lookup(
    envoy_geo: tuple[int, EnvoyProcess, Path], echo: EchoServer
) -> None:
    port, _proc, _db = envoy_geo
    # a denied country claiming another; an unplaced address claiming the denied one
    assert request_from(US, port, "/deny-us", {"X-Gateway-Geo-Country": "FR"}).status == 403
    assert request_from(UNKNOWN, port, "/strict/deny-us", {"X-Gateway-Geo-Country": "FR"}).status == 403
    before = len(echo.received)
    assert request_from(UNKNOWN, port, "/open", {"X-Gateway-Geo-Country": "FR"}).status == 200
    assert "x-gateway-geo-country" not in echo.received[before]["headers"]  # unplaced: no country at all
    assert request_from(FR, port, "/open", {"X-Gateway-Geo-Country": "US"}).status == 200
    assert echo.received[-1]["headers"]["x-gateway-geo-country"] == "FR"


@pytest.mark.envoy
def test_a_database_replaced_by_rename_takes_effect_without_a_restart(
    envoy_geo: tuple[int, EnvoyProcess, Path],
) -> None:
    port, proc, path = envoy_geo
    assert request_from(US, port, "/deny-us").status == 403
    fresh = path.with_name("fresh.mmdb")
    write_database(fresh, {f"{US}/32": "FR", f"{FR}/32": "US"})
    os.replace(fresh, path)  # what geoipupdate and a Kubernetes volume do: a new file in place
    deadline = time.monotonic() + 10
    while request_from(US, port, "/deny-us").status != 200:  # positive signal: the new answer
        assert time.monotonic() < deadline, proc.logs()
        time.sleep(0.05)
    assert request_from(FR, port, "/deny-us").status == 403
    assert proc.proc.poll() is None  # the same Envoy
