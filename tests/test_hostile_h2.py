"""The outside attacker of test_hostile_edge.py, over HTTP/2 (h2c with prior knowledge, which
every listener accepts): frames are built by hand (hyperframe, hpack) so that nothing a client
library would refuse to send is out of reach — upper-case names, connection-specific headers,
pseudo-headers twice or late, CR/LF/NUL, smuggled bodies, too many streams, endless headers.

What counts is what the recording backend received; a refused request is a 4xx, a reset stream
or a closed connection, and then nothing of it reached the backend.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
from hpack import Decoder, Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from controlplane.echo import EchoServer
from tests.harness import Gateway
from tests.test_hostile_edge import ADMIN_SPELLINGS, ALLOWED_IP, NAMED_HOST, Target, start_target
from tests.xds_harness import wait_for

pytestmark = pytest.mark.envoy

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
REFUSED_STREAM = 0x7
Headers = list[tuple[str, str]]


@dataclass
class Stream:
    status: int | None = None
    headers: Headers = field(default_factory=list)
    body: bytes = b""
    reset: int | None = None
    ended: bool = False

    @property
    def done(self) -> bool:
        return self.ended or self.reset is not None


class H2:
    """One h2c connection, spoken frame by frame. ``ack=False``: Envoy's SETTINGS are never
    acknowledged, so its stream limit is not yet binding on the client (RFC 9113, 6.5.3)."""

    def __init__(self, port: int, timeout: float = 10, ack: bool = True):
        self.ack = ack
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.encoder = Encoder()
        self.decoder = Decoder()
        self.streams: dict[int, Stream] = {}
        self.settings: dict[int, int] = {}
        self.window_increments: list[int] = []
        self.goaway: int | None = None
        self.last_stream_id: int | None = None  # of a GOAWAY: streams above it were not processed
        self.closed = False
        self._buf = b""
        self._block: tuple[int, bytes, bool] | None = None  # a header block awaiting CONTINUATION
        self.sock.sendall(PREFACE + SettingsFrame(0).serialize())
        if ack:
            # now: an ACK sent later could land inside a header block sent in pieces, which is
            # a protocol error
            self.read(lambda: bool(self.settings))

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> H2:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def block(self, headers: Headers) -> bytes:
        return bytes(self.encoder.encode([(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]))

    def send(self, *frames: Frame) -> None:
        try:
            self.sock.sendall(b"".join(f.serialize() for f in frames))
        except OSError:
            self.closed = True

    def headers_frame(self, sid: int, block: bytes, end_stream: bool = True, end_headers: bool = True) -> Frame:
        self.streams.setdefault(sid, Stream())
        frame = HeadersFrame(sid)
        frame.data = block
        if end_headers:
            frame.flags.add("END_HEADERS")
        if end_stream:
            frame.flags.add("END_STREAM")
        return frame

    def request(self, sid: int, headers: Headers, body: bytes = b"", trailers: Headers | None = None) -> None:
        frames = [self.headers_frame(sid, self.block(headers), end_stream=not body and not trailers)]
        if body:
            data = DataFrame(sid)
            data.data = body
            if not trailers:
                data.flags.add("END_STREAM")
            frames.append(data)
        if trailers:
            frames.append(self.headers_frame(sid, self.block(trailers)))
        self.send(*frames)

    def read(self, until: Callable[[], bool], timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        self.sock.settimeout(0.2)
        while not until() and not self.closed and time.monotonic() < deadline:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                data = b""
            if not data:
                self.closed = True
                break
            self._buf += data
            self._frames()

    def _frames(self) -> None:
        while len(self._buf) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(self._buf[:9]))
            if len(self._buf) < 9 + length:
                return
            frame.parse_body(memoryview(self._buf[9 : 9 + length]))
            self._buf = self._buf[9 + length :]
            self._on(frame)

    def _on(self, frame: Frame) -> None:
        if isinstance(frame, SettingsFrame) and "ACK" not in frame.flags:
            self.settings.update(frame.settings)
            if self.ack:
                self.send(SettingsFrame(0, flags=["ACK"]))
        elif isinstance(frame, WindowUpdateFrame) and frame.stream_id == 0:
            self.window_increments.append(frame.window_increment)
        elif isinstance(frame, PingFrame) and "ACK" not in frame.flags:
            self.send(PingFrame(0, opaque_data=frame.opaque_data, flags=["ACK"]))
        elif isinstance(frame, GoAwayFrame):
            self.goaway = frame.error_code
            self.last_stream_id = frame.last_stream_id
        elif isinstance(frame, RstStreamFrame):
            self.streams.setdefault(frame.stream_id, Stream()).reset = frame.error_code
        elif isinstance(frame, (HeadersFrame, ContinuationFrame)):
            sid = frame.stream_id
            prior = self._block[1] if self._block else b""
            ends = (
                "END_STREAM" in frame.flags if isinstance(frame, HeadersFrame) else bool(self._block and self._block[2])
            )
            self._block = (sid, prior + frame.data, ends)
            if "END_HEADERS" in frame.flags:
                stream = self.streams.setdefault(sid, Stream())
                decoded = [
                    (k.decode() if isinstance(k, bytes) else k, v.decode() if isinstance(v, bytes) else v)
                    for k, v in self.decoder.decode(self._block[1])
                ]
                if stream.status is None:
                    stream.status = int(dict(decoded)[":status"])
                    stream.headers = decoded
                stream.ended = stream.ended or self._block[2]
                self._block = None
        elif isinstance(frame, DataFrame):
            stream = self.streams.setdefault(frame.stream_id, Stream())
            stream.body += frame.data
            stream.ended = stream.ended or "END_STREAM" in frame.flags
            if frame.flow_controlled_length:
                update = WindowUpdateFrame(0)
                update.window_increment = frame.flow_controlled_length
                self.send(update)


def pseudo(path: str = "/public", method: str = "GET", authority: str = "gateway.test") -> Headers:
    return [(":method", method), (":path", path), (":scheme", "http"), (":authority", authority)]


class DeepBacklogEcho(EchoServer):
    """Envoy opens one upstream connection per concurrent stream: 100 at once overflow the
    default listen backlog of 5 (SYNs dropped, connect timeouts, retries)."""

    request_queue_size = 256


@pytest.fixture(scope="module")
def echo() -> Iterator[EchoServer]:
    server = DeepBacklogEcho().start()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def target(gateway_factory: Callable[..., Gateway], echo: EchoServer) -> Target:
    return start_target(gateway_factory, echo)


def exchange(
    target: Target,
    headers: Headers,
    body: bytes = b"",
    trailers: Headers | None = None,
    listener: str = "edge",
) -> tuple[Stream, list[dict[str, Any]]]:
    """One request on a fresh connection; the stream as answered and what the backend received."""
    before = len(target.echo.received)
    with H2(target.ports[listener]) as conn:
        conn.request(1, headers, body, trailers)
        # a GOAWAY below stream 1 says Envoy never processed it: no need to wait for the close
        conn.read(lambda: conn.streams[1].done or (conn.last_stream_id is not None and conn.last_stream_id < 1))
        return conn.streams[1], target.echo.received[before:]


Result = tuple[Stream, list[dict[str, Any]]]


def exchange_all(target: Target, requests: dict[str, tuple[Headers, bytes, Headers | None]]) -> dict[str, Result]:
    """Many requests at once, each on its own connection and tagged with an ``x-case`` header so
    that what reached the backend is told apart. Envoy closes the connection of a malformed
    request a second after refusing it (its delayed close), without a GOAWAY: in parallel, the
    whole set costs that second once."""

    def one(name: str) -> Stream:
        headers, body, trailers = requests[name]
        with H2(target.ports["edge"]) as conn:
            conn.request(1, [*headers, ("x-case", name)], body, trailers)
            conn.read(lambda: conn.streams[1].done)
            return conn.streams[1]

    with ThreadPoolExecutor(max_workers=32) as pool:
        streams = dict(zip(requests, pool.map(one, requests), strict=True))
    # every exchange above ended (an answer, a reset or a close): the backend has seen all it will
    seen: dict[str, list[dict[str, Any]]] = {name: [] for name in requests}
    for r in target.echo.received:
        if r["headers"].get("x-case") in seen:
            seen[r["headers"]["x-case"]].append(r)
    return {name: (streams[name], seen[name]) for name in requests}


def refused(stream: Stream) -> bool:
    return stream.status is None or 400 <= stream.status < 500


def test_prior_knowledge_h2c_is_served(target: Target) -> None:
    """The control for everything below: a clean request goes through."""
    stream, seen = exchange(target, pseudo())
    assert stream.status == 200 and [s["path"] for s in seen] == ["/public"]


# -- header smuggling ---------------------------------------------------------------------

MALFORMED: dict[str, Headers] = {
    "upper-case name": [*pseudo(), ("X-User-Id", "root")],
    "mixed-case name": [*pseudo(), ("x-User-id", "root")],
    "connection": [*pseudo(), ("connection", "close")],
    "keep-alive": [*pseudo(), ("keep-alive", "timeout=5")],
    "proxy-connection": [*pseudo(), ("proxy-connection", "keep-alive")],
    "transfer-encoding": [*pseudo("/public", "POST"), ("transfer-encoding", "chunked")],
    "upgrade": [*pseudo(), ("upgrade", "websocket")],
    "te other than trailers": [*pseudo(), ("te", "gzip")],
    "CR LF in a value": [*pseudo(), ("x-a", "a\r\nx-user-id: root")],
    "LF in a value": [*pseudo(), ("x-a", "a\nx-user-id: root")],
    "NUL in a value": [*pseudo(), ("x-a", "a\x00b")],
    "space in a name": [*pseudo(), ("x-user-id ", "root")],
    "colon in a name": [*pseudo(), ("x-user-id:", "root")],
    "empty name": [*pseudo(), ("", "root")],
    "underscore in a name": [*pseudo(), ("x_user_id", "root")],
    ":path twice": [
        (":method", "GET"),
        (":path", "/public"),
        (":path", "/admin/users"),
        (":scheme", "http"),
        (":authority", "g"),
    ],
    ":path twice, protected first": [
        (":method", "GET"),
        (":path", "/admin/users"),
        (":path", "/public"),
        (":scheme", "http"),
        (":authority", "g"),
    ],
    ":method twice": [
        (":method", "GET"),
        (":method", "DELETE"),
        (":path", "/items/1"),
        (":scheme", "http"),
        (":authority", "g"),
    ],
    ":authority twice": [*pseudo(), (":authority", "evil.test")],
    "pseudo-header after a regular one": [
        (":method", "GET"),
        (":scheme", "http"),
        ("x-a", "1"),
        (":path", "/public"),
        (":authority", "g"),
    ],
    "unknown pseudo-header": [*pseudo(), (":foo", "bar")],
    ":protocol without CONNECT": [*pseudo(), (":protocol", "websocket")],
    "no :path": [(":method", "GET"), (":scheme", "http"), (":authority", "g")],
    "no :method": [(":path", "/public"), (":scheme", "http"), (":authority", "g")],
    "empty :path": pseudo(""),
    ":path without a slash": pseudo("public"),
    ":path with a space": pseudo("/public /admin/users"),
    ":path with CR LF": pseudo("/public\r\nx-user-id: root"),
    ":path absolute": pseudo("http://gateway.test/admin/users"),
    ":method with a space": pseudo("/public", "GET /admin/users"),
    "empty :method": pseudo("/public", ""),
    "extended CONNECT": [
        (":method", "CONNECT"),
        (":protocol", "websocket"),
        (":path", "/public"),
        (":scheme", "http"),
        (":authority", "g"),
    ],
    "request pseudo-header in trailers": [],  # built in the test
}


@pytest.fixture(scope="module")
def malformed(target: Target) -> dict[str, Result]:
    token = [("authorization", f"Bearer {target.token('customer')}")]
    requests: dict[str, tuple[Headers, bytes, Headers | None]] = {
        name: ([*headers, *token], b"", None) for name, headers in MALFORMED.items()
    }
    requests["request pseudo-header in trailers"] = (pseudo("/public", "POST"), b"x", [(":path", "/admin/users")])
    return exchange_all(target, requests)


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_requests_are_refused(malformed: dict[str, Result], name: str) -> None:
    stream, seen = malformed[name]
    if name == "request pseudo-header in trailers":
        # the request's headers may have gone upstream before its trailers arrived: it is reset
        seen = [s for s in seen if s["path"] != "/public"]
    assert refused(stream), (name, stream.status, stream.body)
    assert seen == [], (name, [(s["method"], s["path"]) for s in seen])


def test_te_trailers_is_the_one_te_allowed(target: Target) -> None:
    stream, seen = exchange(target, [*pseudo(), ("te", "trailers")])
    assert stream.status == 200 and len(seen) == 1


def test_a_lower_case_method_is_not_get(target: Target) -> None:
    stream, seen = exchange(target, pseudo("/public", "get"))
    assert stream.status == 405 and seen == []


@pytest.fixture(scope="module")
def admin_spellings(target: Target) -> dict[str, Result]:
    token = [("authorization", f"Bearer {target.token('customer')}")]
    return exchange_all(target, {path: ([*pseudo(path), *token], b"", None) for path in ADMIN_SPELLINGS})


@pytest.mark.parametrize("path", ADMIN_SPELLINGS)
def test_no_spelling_of_an_admin_path_lets_a_customer_in(admin_spellings: dict[str, Result], path: str) -> None:
    stream, seen = admin_spellings[path]
    assert seen == [], (path, [s["path"] for s in seen])
    assert refused(stream), (path, stream.status)


# -- hosts --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authority", "host", "served"),
    [
        (NAMED_HOST, None, True),
        (NAMED_HOST, "evil.test", True),  # :authority is the request's host
        ("evil.test", NAMED_HOST, False),
        (None, NAMED_HOST, True),
        (None, "evil.test", False),
        (f"{NAMED_HOST}:8443", None, True),
        (f"evil@{NAMED_HOST}", None, False),
        (f"{NAMED_HOST}@evil.test", None, False),
    ],
)
def test_only_the_listeners_hostname_is_served(
    target: Target, authority: str | None, host: str | None, served: bool
) -> None:
    headers: Headers = [(":method", "GET"), (":path", "/public"), (":scheme", "http")]
    if authority is not None:
        headers.append((":authority", authority))
    if host is not None:
        headers.append(("host", host))
    stream, seen = exchange(target, headers, listener="named")
    if served:
        assert stream.status == 200 and len(seen) == 1
        assert seen[0]["headers"]["host"].split(":")[0] == NAMED_HOST
    else:
        assert refused(stream) and seen == [], (authority, host, stream.status)


# -- identity -----------------------------------------------------------------------------


def test_identity_headers_and_tokens_are_stripped(target: Target) -> None:
    token = target.token("customer")
    headers = [
        *pseudo("/me"),
        ("authorization", f"Bearer {token}"),
        ("x-user-id", "root"),
        ("x-user-role", "admin"),
        ("x-real-ip", ALLOWED_IP),
        ("forwarded", f"for={ALLOWED_IP}"),
        ("x-forwarded-for", ALLOWED_IP),
        ("x-http-method-override", "DELETE"),
        ("x-envoy-internal", "true"),
        ("x-envoy-original-path", "/admin/users"),
        ("x-request-id", "client-chosen"),
    ]
    stream, seen = exchange(target, headers)
    assert stream.status == 200 and len(seen) == 1
    received = seen[0]["header_list"]
    assert [(k, v) for k, v in received if k.startswith("x-user")] == [
        ("x-user-id", "alice"),
        ("x-user-role", "customer"),
    ]
    names = {k for k, _v in received}
    assert not names & {
        "authorization",
        "x-real-ip",
        "forwarded",
        "x-http-method-override",
        "x-envoy-internal",
        "x-envoy-original-path",
    }
    assert seen[0]["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert seen[0]["headers"]["x-request-id"] not in ("client-chosen", None)


@pytest.mark.parametrize("path", ["/public", "/me"])
def test_a_session_cookie_among_cookie_headers_is_stripped(target: Target, path: str) -> None:
    """h2 clients send each cookie in its own header (RFC 9113, 8.2.3)."""
    token = target.token("customer")
    cookies = [("cookie", "a=1"), ("cookie", f"session={token}"), ("cookie", "b=2")]
    stream, seen = exchange(target, [*pseudo(path), *cookies])
    assert stream.status == 200 and len(seen) == 1
    assert seen[0]["headers"]["cookie"] == "a=1; b=2"
    if path == "/me":
        assert [(k, v) for k, v in seen[0]["header_list"] if k == "x-user-id"] == [("x-user-id", "alice")]


@pytest.mark.parametrize(
    "how",
    [
        "two cookie crumbs",
        "Bearer and a crumb",
        "Bearer behind another scheme, and a crumb",
    ],
)
def test_two_tokens_are_refused(target: Target, how: str) -> None:
    admin, customer = target.token("admin", sub="root"), target.token("customer", sub="carol")
    headers = {
        "two cookie crumbs": [("cookie", f"session={admin}"), ("cookie", f"session={customer}")],
        "Bearer and a crumb": [
            ("authorization", f"Bearer {admin}"),
            ("cookie", "x=1"),
            ("cookie", f"session={customer}"),
        ],
        "Bearer behind another scheme, and a crumb": [
            ("authorization", f"Token Bearer {admin}"),
            ("cookie", f"session={customer}"),
        ],
    }[how]
    stream, seen = exchange(target, [*pseudo("/admin/users"), *headers])
    assert stream.status == 400 and seen == [], (how, stream.status, [s["header_list"] for s in seen])


def test_trailers_carry_nothing_to_the_backend(target: Target) -> None:
    trailers = [("x-user-id", "root"), ("authorization", "Bearer x"), ("x-forwarded-for", ALLOWED_IP)]
    stream, seen = exchange(target, [*pseudo("/public", "POST"), ("content-length", "3")], b"abc", trailers)
    assert stream.status == 200 and len(seen) == 1
    assert seen[0]["body"] == "abc"
    assert not {k for k, _v in seen[0]["header_list"]} & {"x-user-id", "authorization"}
    assert seen[0]["headers"]["x-forwarded-for"] == "127.0.0.1"


@pytest.mark.parametrize(
    ("values", "allowed"),
    [(["10.0.0.1", ALLOWED_IP], True), ([ALLOWED_IP, "10.0.0.1"], False), ([f"{ALLOWED_IP}, 10.0.0.1"], False)],
)
def test_behind_one_proxy_the_rightmost_entry_is_the_client(target: Target, values: list[str], allowed: bool) -> None:
    headers = [*pseudo("/internal/stats"), *[("x-forwarded-for", v) for v in values]]
    stream, seen = exchange(target, headers, listener="proxied")
    assert stream.status == (200 if allowed else 403) and len(seen) == int(allowed)


# -- bodies: the framing the gateway saw is the one the backend gets ------------------------

SMUGGLED = b"GET /admin/users HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"


@pytest.mark.parametrize(
    ("content_length", "body"),
    [("0", SMUGGLED), ("5", b"abcde" + SMUGGLED), ("500", b"abcde"), ("-1", b"abc"), ("5, 5", b"abcde")],
)
def test_a_body_that_contradicts_its_length_smuggles_nothing(target: Target, content_length: str, body: bytes) -> None:
    stream, seen = exchange(target, [*pseudo("/public", "POST"), ("content-length", content_length)], body)
    assert refused(stream), (content_length, stream.status)
    assert all(s["path"] == "/public" and s["body"] == "" for s in seen), [(s["path"], s["body"]) for s in seen]


def test_a_get_with_a_body_is_one_request(target: Target) -> None:
    stream, seen = exchange(target, [*pseudo(), ("content-length", str(len(SMUGGLED)))], SMUGGLED)
    assert stream.status == 200 and [(s["method"], s["path"]) for s in seen] == [("GET", "/public")]


# -- resource limits ----------------------------------------------------------------------


def test_the_advertised_windows_and_stream_limit(target: Target) -> None:
    with H2(target.ports["edge"]) as conn:
        conn.read(lambda: bool(conn.settings) and bool(conn.window_increments))
        assert conn.settings[SettingsFrame.MAX_CONCURRENT_STREAMS] == 100
        assert conn.settings[SettingsFrame.INITIAL_WINDOW_SIZE] == 64 * 1024
        assert 65535 + sum(conn.window_increments) == 1024 * 1024


def test_streams_beyond_the_hundredth_are_refused(target: Target) -> None:
    """110 requests held by the backend on one connection whose limit the client has not
    acknowledged yet: 100 reach the backend, 10 are refused (REFUSED_STREAM, safe to retry) and
    never do, and the 100 complete once the backend lets them go."""
    hold = "h2-concurrency"
    before = len(target.echo.received)
    held = [*pseudo(), ("x-echo-hold", hold)]
    with H2(target.ports["edge"], ack=False) as conn:
        conn.send(*[conn.headers_frame(1 + 2 * i, conn.block(held)) for i in range(110)])
        try:
            conn.read(lambda: sum(s.reset == REFUSED_STREAM for s in conn.streams.values()) == 10)
            refused_ids = sorted(sid for sid, s in conn.streams.items() if s.reset == REFUSED_STREAM)
            assert refused_ids == [1 + 2 * i for i in range(100, 110)], refused_ids
            wait_for(lambda: len(target.echo.received) - before >= 100, 30, "100 held requests at the backend")
        finally:
            target.echo.release(hold)
        conn.read(lambda: all(conn.streams[1 + 2 * i].done for i in range(100)), timeout=30)
        assert [conn.streams[1 + 2 * i].status for i in range(100)] == [200] * 100
    arrived = target.echo.received[before:]
    assert len(arrived) == 100 and all(r["headers"].get("x-echo-hold") == hold for r in arrived)


def test_a_client_that_ignores_the_acknowledged_limit_loses_the_connection(target: Target) -> None:
    hold = "h2-over-limit"
    before = len(target.echo.received)
    held = [*pseudo(), ("x-echo-hold", hold)]
    try:
        with H2(target.ports["edge"]) as conn:
            conn.send(*[conn.headers_frame(1 + 2 * i, conn.block(held)) for i in range(101)])
            conn.read(lambda: False, timeout=5)
            assert conn.closed or conn.goaway is not None
    finally:
        target.echo.release(hold)
    assert len(target.echo.received) - before <= 100


def test_rapid_reset_closes_the_connection(target: Target) -> None:
    """CVE-2023-44487: streams opened and reset at once cost the client nothing and the gateway
    a request each; Envoy ends such a connection long before the flood ends."""
    before = len(target.echo.received)
    with H2(target.ports["edge"]) as conn:
        headers = conn.block([*pseudo(), ("x-echo-delay-ms", "50")])
        sent = 0
        for i in range(5000):
            if conn.closed:
                break
            reset = RstStreamFrame(1 + 2 * i)
            reset.error_code = 0x8  # CANCEL
            conn.send(conn.headers_frame(1 + 2 * i, headers), reset)
            sent += 1
        conn.read(lambda: False, timeout=5)
        assert conn.closed or conn.goaway is not None
    assert sent < 5000
    assert len(target.echo.received) - before < 100


def _ping(i: int) -> Frame:
    return PingFrame(0, opaque_data=i.to_bytes(8, "big"))


def _settings(_i: int) -> Frame:
    return SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 65535})


def _priority(i: int) -> Frame:
    frame = PriorityFrame(1 + 2 * i)
    frame.depends_on = 0
    frame.stream_weight = 1
    return frame


def _empty_data(_i: int) -> Frame:
    return DataFrame(1)  # on the open stream 1 (see below)


def _window_update(_i: int) -> Frame:
    update = WindowUpdateFrame(0)
    update.window_increment = 1
    return update


@pytest.mark.parametrize("flood", [_ping, _settings, _priority, _empty_data, _window_update])
def test_a_control_frame_flood_ends_the_connection(target: Target, flood: Callable[[int], Frame]) -> None:
    """CVE-2019-9512/9515/9513/9518-style floods: frames that cost the client nothing and the
    gateway an answer or some state each. The client never reads, so answers pile up."""
    with H2(target.ports["edge"]) as conn:
        conn.send(conn.headers_frame(1, conn.block(pseudo("/public", "POST")), end_stream=False))
        for i in range(20000):
            conn.send(flood(i))
            if conn.closed:
                break
        conn.read(lambda: False, timeout=10)
        assert conn.closed


def test_an_hpack_bomb_is_refused(target: Target) -> None:
    """A 3 KB header put in the HPACK table once, then referenced 200 times in one block (one byte
    each): 600 KB of headers from a 250-byte frame, ten times maxRequestHeadersKb."""
    before = len(target.echo.received)
    with H2(target.ports["edge"]) as conn:
        first = bytes(conn.encoder.encode([*pseudo(), ("x-bomb", "a" * 3000)], huffman=False))
        bomb = conn.block(pseudo()) + bytes([0x80 | 62]) * 200  # 62: the newest dynamic table entry
        conn.send(conn.headers_frame(1, first), conn.headers_frame(3, bomb))
        conn.read(lambda: conn.streams[1].done and (conn.streams[3].done or conn.goaway is not None))
        assert conn.streams[1].status == 200 and conn.streams[3].status is None
    assert [len(s["headers"].get("x-bomb", "")) for s in target.echo.received[before:]] == [3000]


def test_an_endless_header_block_is_cut_off(target: Target) -> None:
    """CONTINUATION flood: a header block that never ends, faster than any timeout."""
    before = len(target.echo.received)
    with H2(target.ports["edge"]) as conn:
        conn.send(conn.headers_frame(1, conn.block(pseudo()), end_headers=False))
        for i in range(3000):
            if conn.closed:
                break
            more = ContinuationFrame(1)
            more.data = conn.block([(f"x-pad-{i}", "v" * 100)])
            conn.send(more)
        conn.read(lambda: conn.streams[1].done or conn.goaway is not None)
        assert conn.streams[1].status is None and (conn.streams[1].reset is not None or conn.goaway is not None)
    assert target.echo.received[before:] == []


def test_a_header_block_trickled_in_frames_is_cut_off(target: Target) -> None:
    """Slowloris over h2: requestHeaders (1 s on this listener) bounds a stream's header block too."""
    before = target.stat("http.edge.downstream_rq_header_timeout")
    with H2(target.ports["edge"]) as conn:
        conn.send(conn.headers_frame(1, conn.block(pseudo()), end_headers=False))
        deadline = time.monotonic() + 15
        i = 0
        while conn.streams[1].status is None and not conn.streams[1].done:
            assert time.monotonic() < deadline, "the request headers timeout never fired"
            more = ContinuationFrame(1)
            more.data = conn.block([(f"x-slow-{i}", "1")])
            conn.send(more)
            i += 1
            conn.read(lambda: conn.streams[1].status is not None, timeout=0.2)
        assert conn.streams[1].status == 408
    wait_for(lambda: target.stat("http.edge.downstream_rq_header_timeout") == before + 1, 10, "the headers timeout")
