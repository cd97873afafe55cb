"""The WAF service's check endpoint over real sockets: what Envoy's ext_authz (http_service)
sends, what it gets back, and that anything the service cannot judge closes the connection
instead of answering a status Envoy would hand the client as a verdict. Through a real Envoy:
test_waf.py."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import pytest

from controlplane.waf.config import Config
from controlplane.waf.http1 import CheckServer
from controlplane.waf.metrics import Metrics
from controlplane.waf.model import load_models
from controlplane.waf.rules import RuleSet
from controlplane.waf.service import Checker

MODELS = """{"shop.search": {"params": [{"in": "query", "name": "limit", "required": false,
  "schema": {"type": "integer", "maximum": 100}}], "media": null, "safe": ["query:limit"], "schema": null}}"""


class Service:
    def __init__(self, checker: Checker):
        self.loop = asyncio.new_event_loop()
        self.server = CheckServer(checker)
        self.port = 0
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.port = self.loop.run_until_complete(self.server.start("127.0.0.1", 0))
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        started.wait(10)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def exchange(self, raw: bytes) -> bytes:
        """What the service answers to ``raw`` on a new connection, b"" if it closes it."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(raw)
            s.shutdown(socket.SHUT_WR)
            out = b""
            while True:
                try:
                    got = s.recv(65536)
                except ConnectionResetError:
                    return out
                if not got:
                    return out
                out += got


@pytest.fixture(scope="module")
def service() -> Iterator[Service]:
    checker = Checker(Metrics())
    checker.use(Config("1", RuleSet.default(), 1 << 20, "test", load_models(MODELS)))
    s = Service(checker)
    yield s
    s.stop()


def check(target: str, route: str = "shop.search\tprevent", body: bytes = b"", *headers: str) -> bytes:
    lines = [f"GET {target} HTTP/1.1", "host: shop.test", f"x-waf-route: {route}", *headers]
    if body:
        lines.append(f"content-length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def test_a_clean_request_passes(service: Service) -> None:
    assert service.exchange(check("/shop/search?q=shoes&limit=3")).startswith(b"HTTP/1.1 200 OK\r\n")


def test_a_finding_is_a_403_with_the_verdict_for_envoys_metadata(service: Service) -> None:
    out = service.exchange(check("/shop/search?q=%27%20OR%201%3D1--"))
    assert out.startswith(b"HTTP/1.1 403 ")
    assert b"\r\nx-waf-verdict: refused: sqli/" in out and b"OR 1=1" not in out


def test_detect_mode_lets_it_through_and_says_what_it_saw(service: Service) -> None:
    out = service.exchange(check("/shop/search?q=%27%20OR%201%3D1--", "shop.search\tdetect"))
    assert out.startswith(b"HTTP/1.1 200 ") and b"x-waf-verdict: detected: sqli/" in out


def test_the_positive_model_names_the_parameter(service: Service) -> None:
    out = service.exchange(check("/shop/search?limit=1000"))
    assert out.startswith(b"HTTP/1.1 400 ") and b"the query parameter 'limit' must be at most 100" in out


def test_exclusions_come_from_the_route(service: Service) -> None:
    attack = "/shop/search?q=%3Cscript%3Ealert(1)%3C/script%3E"
    assert service.exchange(check(attack)).startswith(b"HTTP/1.1 403 ")
    assert service.exchange(check(attack, "shop.search\tprevent\tquery:q")).startswith(b"HTTP/1.1 200 ")
    assert service.exchange(check(attack, "shop.search\tprevent\t\txss")).startswith(b"HTTP/1.1 200 ")


def test_headers_and_a_body_in_utf8_are_inspected(service: Service) -> None:
    fullwidth = "\uff1cscript\uff1ealert(1)\uff1c/script\uff1e".encode()  # fullwidth < and >
    out = service.exchange(check("/shop/notes", "shop.notes\tprevent", b'{"t": "' + fullwidth + b'"}'))
    assert out.startswith(b"HTTP/1.1 403 "), out
    header = b"x-note: " + fullwidth
    raw = check("/shop/search").replace(b"\r\n\r\n", b"\r\n" + header + b"\r\n\r\n")
    assert service.exchange(raw).startswith(b"HTTP/1.1 403 ")


def test_requests_on_one_connection_are_answered_in_turn(service: Service) -> None:
    both = check("/shop/search?q=a") + check("/shop/search?q=%27%20OR%201%3D1--") + check("/shop/search?q=b")
    out = service.exchange(both)
    assert [line.split(b" ")[1] for line in out.split(b"\r\n") if line.startswith(b"HTTP/1.1")] == [
        b"200",
        b"403",
        b"200",
    ]


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET / HTTP/1.1\r\n bad: folded\r\n\r\n",
        b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\ncontent-length: -5\r\n\r\n",
        b"POST / HTTP/1.1\r\ncontent-length: 99999999999\r\n\r\n",
        b"GET / HTTP/1.1\r\nx: " + b"a" * (70 << 10),
    ],
    ids=["request-line", "header-line", "folded", "chunked", "negative-length", "huge-length", "huge-head"],
)
def test_what_it_cannot_read_closes_the_connection_without_a_status(service: Service, raw: bytes) -> None:
    """A status would be passed to the client as a verdict (and a 200 would let it in):
    Envoy must see a failure and apply the route's failure mode."""
    assert service.exchange(raw) == b""


def test_no_rules_yet_closes_the_connection() -> None:
    s = Service(Checker(Metrics()))
    try:
        assert s.exchange(check("/shop/search?q=shoes")) == b""
    finally:
        s.stop()
