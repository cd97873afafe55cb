"""IP-reputation feeds: the list formats, absurd feeds, expiry, and through a real Envoy:
blocking, soft marking, allowlists winning; URL feeds fetched by the control plane."""

from __future__ import annotations

import contextlib
import json
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from controlplane import reputation
from controlplane.certs import CertificateAuthority, Issued
from controlplane.compiler import compile
from controlplane.echo import EchoServer
from controlplane.reputation import FeedError, parse
from controlplane.resources import Resources, to_dict
from controlplane.translate import reputation as translate_reputation

from .harness import Gateway, Response, _complete, free_port, parse_response
from .harness import from_address as request_from
from .xds_harness import ControlPlaneProcess, http_get, start_envoy, wait_for

pytestmark = pytest.mark.envoy

SPEC = """
openapi: 3.0.3
info: {title: things, version: "1"}
servers: [{url: /api}]
paths:
  /things:
    get: {operationId: listThings, responses: {"200": {description: ok}}}
  /office/things:
    get: {operationId: officeThings, responses: {"200": {description: ok}}}
"""

BLOCK = """\
# a malicious-IP feed
127.0.0.5
127.0.1.0/24 ; SBL 1234
127.0.0.9          # also named by the office allowlist
2001:db8::/32
"""


def policy(feeds: str, allow: str = "[127.0.0.1, 127.0.0.9]") -> str:
    return f"""
apiVersion: controlplane.dev/v1
kind: GatewayPolicy
listeners: [{{name: public, address: 127.0.0.1, port: {{{{PORT}}}}}}]
upstreams: [{{name: backend, endpoints: ["{{{{BACKEND}}}}"]}}]
ipAllowlists:
  - pathPrefix: /api/office
    allow: {allow}
reputation:
  feeds:
{feeds}
apis:
  - name: things
    spec: things.yaml
    upstream: backend
"""


FEEDS = """\
    - {name: malicious, file: bad.txt}
    - {name: tor-exits, file: tor.txt, action: soft}
    - {name: old-campaign, file: old.txt, expires: "2001-01-01T00:00:00Z"}
    - {name: new-campaign, file: new.txt, expires: "2999-01-01T00:00:00+02:00"}
"""


def from_address(gw: Gateway, source: str, path: str, headers: dict[str, str] | None = None) -> Response:
    """A GET whose TCP peer is ``source``."""
    return request_from(gw.port, source, path, headers)


@pytest.fixture(scope="module")
def gw(gateway_factory: Callable[..., Gateway]) -> Gateway:
    return gateway_factory(
        {
            "policy.yaml": policy(FEEDS),
            "things.yaml": SPEC,
            "bad.txt": BLOCK,
            # 127.0.0.5 is also blocked (blocking wins); 127.0.0.1 is allowlisted (never marked)
            "tor.txt": "127.0.0.6 # exit node\n127.0.0.5\n127.0.0.1\n",
            "old.txt": "127.0.0.7\n",
            "new.txt": "127.0.0.8\n",
        }
    )


def reached(echo: EchoServer, call: Callable[[], Response]) -> tuple[Response, dict[str, object] | None]:
    before = len(echo.received)
    resp = call()
    seen = echo.received[before:]
    return resp, (seen[0] if seen else None)


# -- through Envoy -------------------------------------------------------------------------
def test_an_unlisted_client_reaches_the_backend(gw: Gateway, echo: EchoServer) -> None:
    resp, seen = reached(echo, lambda: from_address(gw, "127.0.0.2", "/api/things"))
    assert resp.status == 200 and seen is not None


@pytest.mark.parametrize("source", ["127.0.0.5", "127.0.1.77"])
def test_a_listed_client_gets_403_with_the_gateway_body(gw: Gateway, echo: EchoServer, source: str) -> None:
    resp, seen = reached(echo, lambda: from_address(gw, source, "/api/things"))
    assert resp.status == 403, resp.body
    assert seen is None
    assert resp.header("content-type") == "application/json"
    assert json.loads(resp.body) == {"message": "forbidden", "status": 403, "request_id": resp.header("x-request-id")}


def test_an_allowlisted_range_wins_over_the_feed(gw: Gateway, echo: EchoServer) -> None:
    # 127.0.0.9 is in the malicious feed, and the office allowlist names it: never blocked by a
    # feed, on the allowlisted path and elsewhere
    for path in ("/api/office/things", "/api/things"):
        resp, seen = reached(echo, lambda path=path: from_address(gw, "127.0.0.9", path))  # type: ignore[misc]
        assert resp.status == 200, (path, resp.body)
        assert seen is not None


def test_the_allowlist_still_refuses_others_first(gw: Gateway, echo: EchoServer) -> None:
    # 127.0.0.2 is in no feed but not in the office list: the allowlist's 403
    resp, seen = reached(echo, lambda: from_address(gw, "127.0.0.2", "/api/office/things"))
    assert resp.status == 403 and seen is None


def test_a_soft_feed_marks_the_request_for_the_backend(gw: Gateway, echo: EchoServer) -> None:
    resp, seen = reached(echo, lambda: from_address(gw, "127.0.0.6", "/api/things"))
    assert resp.status == 200 and seen is not None
    assert seen["headers"].get("x-gateway-risk") == "reputation"  # type: ignore[attr-defined]
    resp, seen = reached(echo, lambda: from_address(gw, "127.0.0.1", "/api/things"))
    assert resp.status == 200 and seen is not None
    assert "x-gateway-risk" not in seen["headers"]  # type: ignore[operator]


def test_a_client_sent_risk_header_never_reaches_the_backend(gw: Gateway, echo: EchoServer) -> None:
    resp, seen = reached(
        echo, lambda: from_address(gw, "127.0.0.2", "/api/things", {"X-Gateway-Risk": "none", "x-gateway-RISK": "x"})
    )
    assert resp.status == 200 and seen is not None
    assert "x-gateway-risk" not in seen["headers"]  # type: ignore[operator]


def test_an_expired_feed_no_longer_applies(gw: Gateway, echo: EchoServer) -> None:
    resp, _ = reached(echo, lambda: from_address(gw, "127.0.0.7", "/api/things"))
    assert resp.status == 200
    resp, _ = reached(echo, lambda: from_address(gw, "127.0.0.8", "/api/things"))
    assert resp.status == 403  # the same kind of feed, not yet expired


# -- compile -------------------------------------------------------------------------------
def write(tmp_path: Path, feeds: str, files: dict[str, str]) -> Path:
    (tmp_path / "policy.yaml").write_text(policy(feeds).replace("{{PORT}}", "8080").replace("{{BACKEND}}", "x:1"))
    (tmp_path / "things.yaml").write_text(SPEC)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize("absurd", ["0.0.0.0/0", "::/0", "0.0.0.0/1\n128.0.0.0/1", "10.0.0.0/9"])
def test_an_absurd_feed_is_refused_naming_it(tmp_path: Path, absurd: str) -> None:
    result = compile([write(tmp_path, "    - {name: noisy, file: noisy.txt}\n", {"noisy.txt": absurd + "\n"})])
    assert not result.ok
    (error,) = [d for d in result.diagnostics if d.code == "feed-refused"]
    assert "'noisy'" in error.message and "not applied" in error.message
    assert error.pointer == "/reputation/feeds/0/file"


def test_a_feed_with_bad_lines_is_refused_naming_them(tmp_path: Path) -> None:
    text = "192.0.2.1\nnot-an-address\n192.0.2.300\n"
    result = compile([write(tmp_path, "    - {name: feed, file: f.txt}\n", {"f.txt": text})])
    (error,) = [d for d in result.diagnostics if d.code == "feed-refused"]
    assert "line 2: 'not-an-address'" in error.message and "line 3: '192.0.2.300'" in error.message


def test_an_expired_feed_is_a_warning(tmp_path: Path) -> None:
    feeds = '    - {name: old, file: f.txt, expires: "2001-01-01T00:00:00Z"}\n'
    result = compile([write(tmp_path, feeds, {"f.txt": "192.0.2.1\n"})])
    assert result.ok
    assert any(d.code == "feed-expired" and "'old'" in d.message for d in result.diagnostics)
    assert result.gateway is not None and result.gateway.reputation is not None
    assert result.gateway.reputation.block == ()


def test_compiles_in_a_row_follow_every_change_of_the_feeds(tmp_path: Path) -> None:
    """Parsed feeds and built tries are kept from one compile to the next (a spec pushed does
    not parse a 1M feed again): each change of a feed, its action or the exemptions shows."""

    def tries() -> dict[str, str]:
        result = compile([tmp_path])
        assert result.ok and result.resources is not None, [str(d) for d in result.errors]
        return {name: json.dumps(to_dict(config)) for name, config in result.resources.of(Resources.EXTENSION).items()}

    write(tmp_path, "    - {name: feed, file: f.txt}\n", {"f.txt": "192.0.2.1\n"})
    first = tries()
    assert list(first) == ["ip-reputation.public"] and "192.0.2.1" in first["ip-reputation.public"]
    assert tries() == first  # the same feeds: the same tries
    (tmp_path / "f.txt").write_text("198.51.100.9\n")
    changed = tries()["ip-reputation.public"]
    assert "198.51.100.9" in changed and "192.0.2.1" not in changed
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        policy.read_text().replace("{name: feed, file: f.txt}", "{name: feed, file: f.txt, action: soft}")
    )
    soft = tries()
    assert list(soft) == ["ip-reputation-soft.public"] and "198.51.100.9" in soft["ip-reputation-soft.public"]
    policy.write_text(policy.read_text().replace("reputation:\n", "reputation:\n  exempt: [203.0.113.77]\n"))
    assert "203.0.113.77" in tries()["ip-reputation-soft.public"]
    (tmp_path / "f.txt").write_text("198.51.100.9\n0.0.0.0/0\n")  # refused: never a stale copy instead
    assert not compile([tmp_path]).ok


def test_the_trie_written_as_bytes_is_the_message_built_field_by_field() -> None:
    from google.protobuf import wrappers_pb2
    from xds.core.v3 import cidr_pb2
    from xds.core.v3 import extension_pb2 as xds_extension_pb2
    from xds.type.matcher.v3 import ip_pb2, matcher_pb2

    from controlplane.translate.allowlist import ip_trie

    cidrs = ["192.0.2.0/24", "10.0.0.1/32", "0.0.0.0/0", "2001:db8::/32", "::1/128", "::/0", "203.0.113.7/31"]
    on_match = matcher_pb2.Matcher.OnMatch(action=xds_extension_pb2.TypedExtensionConfig(name="reputation"))
    built = ip_pb2.IPMatcher(
        range_matchers=[
            ip_pb2.IPMatcher.IPRangeMatcher(
                ranges=[
                    cidr_pb2.CidrRange(
                        address_prefix=c.partition("/")[0],
                        prefix_len=wrappers_pb2.UInt32Value(value=int(c.partition("/")[2])),
                    )
                    for c in cidrs
                ],
                on_match=on_match,
            )
        ]
    )
    written = ip_trie(cidrs, on_match)
    assert written == built
    assert written.SerializeToString(deterministic=True) == built.SerializeToString(deterministic=True)


# -- parsing -------------------------------------------------------------------------------
def test_parse_accepts_the_common_formats() -> None:
    text = (
        "# header comment\n"
        "; another\n"
        "\n"
        "192.0.2.1\n"
        "  198.51.100.0/24 ; SBL123\n"
        "203.0.113.7/24 # host bits cleared\n"
        "192.0.2.1\t2024-01-01\textra columns\n"
        "2001:db8::1\n"
        "2001:db8:1::/48\r\n"
    )
    parsed = parse(text, "f")
    assert parsed.cidrs == (
        "192.0.2.1/32",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "2001:db8::1/128",
        "2001:db8:1::/48",
    )
    assert parsed.addresses == {4: 1 + 256 + 256, 6: 1 + 2**80}


def test_parse_counts_overlaps_once() -> None:
    # two /11 and everything inside them: 2^22 addresses, exactly the limit
    text = "10.0.0.0/11\n10.32.0.0/11\n10.0.0.0/12\n10.1.2.3\n"
    assert parse(text, "f").addresses[4] == 2**22
    with pytest.raises(FeedError, match="IPv4"):
        parse(text + "11.0.0.1\n", "f")


def test_parse_refuses_more_entries_than_allowed() -> None:
    with pytest.raises(FeedError, match="maxEntries"):
        parse("192.0.2.1\n192.0.2.2\n192.0.2.1\n192.0.2.3\n", "f", max_entries=2)
    assert len(parse("192.0.2.1\n192.0.2.2\n192.0.2.1\n", "f", max_entries=2).cidrs) == 2


def test_parse_refuses_a_large_ipv6_share() -> None:
    with pytest.raises(FeedError, match="IPv6"):
        parse("2000::/3\n", "f")
    assert parse("2001:db8::/32\n", "f").cidrs == ("2001:db8::/32",)


def test_expiry_forms() -> None:
    assert reputation.expiry(None, 100.0) is None
    assert reputation.expiry("2h", 100.0) == 100.0 + 7200
    assert reputation.expiry("1970-01-01T00:01:40Z", 0.0) == 100.0
    assert reputation.expiry("1970-01-01T01:01:40+01:00", 0.0) == 100.0
    with pytest.raises(ValueError, match="offset"):
        reputation.expiry("1970-01-01T00:01:40", 0.0)


# -- URL feeds, fetched by the control plane -----------------------------------------------
class FeedServer(ThreadingHTTPServer):
    """An HTTPS feed whose answer the test changes: (status, body)."""

    daemon_threads = True

    def __init__(self, cert: Issued):
        super().__init__(("127.0.0.1", 0), _FeedHandler)
        self.answer: tuple[int, bytes] = (200, b"")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(cert.cert), str(cert.key))
        self.socket = context.wrap_socket(self.socket, server_side=True)


class _FeedHandler(BaseHTTPRequestHandler):
    server: FeedServer

    def do_GET(self) -> None:
        status, body = self.server.answer
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def url_feed_gateway(
    tmp_path: Path, echo: EchoServer, options: str = "", delta: bool = False
) -> Iterator[tuple[Any, Gateway, FeedServer]]:
    """A control plane process serving a policy with one URL feed (``remote``) to a real Envoy
    (``gw.envoy``), over state-of-the-world or ``delta`` ADS."""
    (tmp_path / "pki").mkdir()
    ca = CertificateAuthority(tmp_path / "pki", "feed-ca")
    feeds = FeedServer(ca.issue("localhost", ["localhost", "127.0.0.1"]))
    threading.Thread(target=feeds.serve_forever, daemon=True).start()
    feeds.answer = (200, b"# remote\n127.0.0.5\n")
    port = free_port()
    config = tmp_path / "config"
    config.mkdir()
    url = f"https://localhost:{feeds.server_address[1]}/feed.txt"
    remote = f'    - {{name: remote, url: "{url}", caFile: {ca.path}{options}}}\n'
    (config / "policy.yaml").write_text(
        policy(remote).replace("{{PORT}}", str(port)).replace("{{BACKEND}}", f"127.0.0.1:{echo.port}")
    )
    (config / "things.yaml").write_text(SPEC)
    plane = ControlPlaneProcess([config], tmp_path).start()
    envoy = None
    try:
        envoy = start_envoy(tmp_path, plane, delta=delta)
        gw = Gateway(tmp_path, {}, envoy=envoy, port=port)
        gw.wait_listening(30)
        yield plane, gw, feeds
    finally:
        if envoy is not None:
            envoy.stop()
        plane.stop()
        feeds.shutdown()


def test_a_url_feed_is_fetched_refreshed_and_kept_when_fetching_fails(tmp_path: Path, echo: EchoServer) -> None:
    with url_feed_gateway(tmp_path, echo) as (plane, gw, feeds):

        def status(source: str) -> int:
            return from_address(gw, source, "/api/things").status

        # fetched before the first configuration was served: blocked from the first request
        assert status("127.0.0.5") == 403 and status("127.0.0.6") == 200
        state = plane.status()["sources"]["reputation"]["remote"]
        assert state["state"] == "ok" and state["entries"] == 1

        feeds.answer = (200, b"127.0.0.6\n")
        assert plane.get("/refresh_reputation")["changed"] == {"remote": True}
        wait_for(lambda: status("127.0.0.6") == 403, 15, "the changed feed in force")
        assert status("127.0.0.5") == 200

        for answer, why in [((503, b"busy"), "503"), ((200, b"0.0.0.0/0\n"), "not applied")]:
            feeds.answer = answer
            assert plane.get("/refresh_reputation")["changed"] == {"remote": False}
            state = plane.status()["sources"]["reputation"]["remote"]
            assert state["state"] == "failing, last good copy kept" and why in state["error"], state
            assert state["entries"] == 1
            assert status("127.0.0.6") == 403  # the last good copy
        # and a compile after the failures (a policy edit) still has it
        compiled_at = plane.get("/compile")["at"]
        policy_file = tmp_path / "config" / "policy.yaml"
        policy_file.write_text(policy_file.read_text() + "# edited\n")
        wait_for(lambda: plane.get("/compile")["at"] > compiled_at, 15, "a compile of the edit")
        assert status("127.0.0.6") == 403
        metrics = http_get(plane.admin_port, "/metrics")[1].decode()
        assert 'controlplane_reputation_feed_fetch_failures_total{feed="remote"} 2.0' in metrics
        assert 'controlplane_reputation_feed_entries{feed="remote"} 1.0' in metrics


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_a_changed_feed_applies_to_open_connections_without_touching_the_listener(
    tmp_path: Path, echo: EchoServer, delta: bool
) -> None:
    """The tries are served on their own (ECDS): a changed feed is not a changed listener, so
    Envoy neither replaces the listener nor drains its connections: the next request on a
    connection opened before the change meets the new feed."""
    with url_feed_gateway(tmp_path, echo, delta=delta) as (plane, gw, feeds):
        assert gw.envoy is not None

        def stats() -> dict[str, int]:
            text = gw.envoy.admin("/stats?filter=^listener_manager\\.")[1]  # type: ignore[union-attr]
            pairs = (line.split(": ", 1) for line in text.splitlines())
            return {k: int(v) for k, v in pairs if v.isdigit()}

        before = stats()
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10, source_address=("127.0.0.6", 0)) as s:

            def ask() -> int:
                s.sendall(b"GET /api/things HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
                buf = b""
                while not _complete(buf, False):
                    chunk = s.recv(65536)
                    assert chunk, "the connection was closed"
                    buf += chunk
                return parse_response(buf).status

            assert ask() == 200
            feeds.answer = (200, b"127.0.0.6\n")
            assert plane.get("/refresh_reputation")["changed"] == {"remote": True}
            wait_for(lambda: ask() == 403, 15, "the changed feed in force on the open connection")
        after = stats()
        for counter in ("listener_modified", "listener_added", "listener_removed", "total_listeners_draining"):
            name = "listener_manager." + counter
            assert after[name] == before[name], (name, before, after)
        # the drift check compiles the policy with the copy the control plane fetched: no drift
        checked = subprocess.run(
            [sys.executable, "-m", "controlplane", "check", "--server", f"127.0.0.1:{plane.admin_port}", "config"],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=120,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_url_feed_expires_when_its_source_stops_answering(tmp_path: Path, echo: EchoServer) -> None:
    # expires 6s after the last good fetch: refreshed, it stays; failing, it expires and the
    # control plane compiles again then, unasked
    with url_feed_gateway(tmp_path, echo, ", expires: 6s") as (plane, gw, feeds):
        assert from_address(gw, "127.0.0.5", "/api/things").status == 403
        assert plane.get("/refresh_reputation")["changed"] == {"remote": True}  # the same list, a later expiry
        feeds.answer = (503, b"down")
        assert plane.get("/refresh_reputation")["changed"] == {"remote": False}
        assert from_address(gw, "127.0.0.5", "/api/things").status == 403
        wait_for(lambda: from_address(gw, "127.0.0.5", "/api/things").status == 200, 20, "the feed expired")
        compiled = plane.get("/compile")
        assert any("'remote' expired" in w for w in compiled["warnings"]), compiled


@pytest.mark.parametrize(
    "word", ["1.2.3", "010.1.1.1", "192.0.2.1/33", "192.0.2.1/", "192.0.2.1/2x", "2001:db8::/129", "::g"]
)
def test_parse_refuses_what_is_not_strictly_an_address(word: str) -> None:
    with pytest.raises(FeedError, match="line 2"):
        parse(f"192.0.2.1\n{word}\n", "f")


def test_a_list_longer_than_one_trie_is_split_and_every_part_applies(
    gateway_factory: Callable[..., Gateway], echo: EchoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Envoy refuses an IP matcher of more than 262,144 ranges; the same split, at 2 a trie
    monkeypatch.setattr(translate_reputation, "TRIE_LIMIT", 2)
    listed = [f"127.0.0.{i}" for i in range(20, 27)]
    gw = gateway_factory(
        {
            "policy.yaml": policy("    - {name: long, file: long.txt}\n", allow="[127.0.0.1, 127.0.0.23]"),
            "things.yaml": SPEC,
            "long.txt": "\n".join(listed) + "\n",
        }
    )
    statuses = {a: from_address(gw, a, "/api/things").status for a in [*listed, "127.0.0.27"]}
    assert statuses == {**{a: 403 for a in listed}, "127.0.0.23": 200, "127.0.0.27": 200}


def test_status_says_a_feed_is_failing_and_its_last_good_copy_kept() -> None:
    from controlplane.cli import status_table

    ok = reputation.FeedState("https://feeds.test/a.txt", entries=12, fetched_at=0.0 + 86400)
    failing = reputation.FeedState("https://feeds.test/b.txt", 3, 86400.0, "HTTP Error 503", 90000.0, 2)
    sources = {"reputation": {"a": ok.as_json(), "b": failing.as_json()}}
    text = status_table({"nodes": [], "sources": sources}, {"ok": True})
    assert "reputation feed a from https://feeds.test/a.txt: 12 entries fetched 1970-01-02T00:00:00Z" in text
    assert (
        "reputation feed b from https://feeds.test/b.txt: FAILING (2 in a row, last 1970-01-02T01:00:00Z: "
        "HTTP Error 503); 3 entries fetched 1970-01-02T00:00:00Z kept"
    ) in text


def test_envoy_counts_reputation_denials_apart(gw: Gateway) -> None:
    assert gw.envoy is not None

    def denied() -> int:
        stats = dict(line.split(": ", 1) for line in gw.envoy.admin("/stats?filter=rbac")[1].splitlines())  # type: ignore[union-attr]
        return int(stats.get("http.public.rbac.reputation.denied", "-1"))

    before = denied()
    assert from_address(gw, "127.0.0.5", "/api/things").status == 403
    assert denied() == before + 1
