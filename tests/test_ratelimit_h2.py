"""The rate-limit service's own HTTP/2 server (controlplane/ratelimit/h2.py) against hostile and
unusual clients: raw TCP sockets speaking frames built here (hyperframe, hpack), to the real
service process with a real Redis behind it.

Nothing here sleeps to see that something did not happen. Where a test must show that a frame was
*not* sent, it waits for a PING acknowledgement written after it would have been (see
:meth:`Peer.sync`), or for another stream's answer that Redis's in-order replies put after it.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from envoy.service.ratelimit.v3 import rls_pb2
from hpack import Decoder, Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

pytest_plugins = ["tests.redis_harness"]

from tests.redis_harness import (  # noqa: E402
    FakeAds,
    RateLimitService,
    RedisServer,
    descriptor,
    domain_resource,
)

METHOD = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, END_HEADERS, PADDED = 0x1, 0x4, 0x8
PROTOCOL_ERROR, FRAME_SIZE_ERROR, CANCEL, ENHANCE_YOUR_CALM = 0x1, 0x6, 0x8, 0xB
GRPC_OK, RESOURCE_EXHAUSTED, UNIMPLEMENTED, INTERNAL = 0, 8, 12, 13
OK = rls_pb2.RateLimitResponse.Code.OK
LIMIT = 1_000_000  # per minute: never reached, so limit_remaining tells which request an answer is for
TIMEOUT = 5.0


def raw(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    """A frame as bytes, for the frames hyperframe refuses to build (HEADERS on stream 0, ...)."""
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload


def grpc_body(request: Any, flag: int = 0) -> bytes:
    message = request.SerializeToString()
    return bytes((flag,)) + len(message).to_bytes(4, "big") + message


def ask(consumer: str, hits: int = 1) -> Any:
    return rls_pb2.RateLimitRequest(
        domain="gateway", descriptors=[descriptor("h2", "minute", ("consumer", consumer))], hits_addend=hits
    )


@dataclass
class Answer:
    headers: dict[str, str]  # the first HEADERS (the trailers too, in a trailers-only answer)
    trailers: dict[str, str]
    data: bytes  # every DATA payload of the stream, joined
    frames: list[Frame]

    @property
    def status(self) -> int:
        return int(self.trailers["grpc-status"])

    def response(self) -> Any:
        assert self.status == GRPC_OK, self.trailers
        assert self.data[0] == 0 and int.from_bytes(self.data[1:5], "big") == len(self.data) - 5, self.data[:5]
        return rls_pb2.RateLimitResponse.FromString(self.data[5:])

    def remaining(self) -> int:
        response = self.response()
        assert response.overall_code == OK
        return int(response.statuses[0].limit_remaining)


class Peer:
    """One HTTP/2 client connection that sends whatever a test builds and keeps every frame it receives."""

    def __init__(self, address: str, settings: dict[int, int] | None = None, preface: bytes | None = PREFACE):
        host, _, port = address.rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=TIMEOUT)
        self.encoder = Encoder()
        self.decoder = Decoder()
        self.buffer = b""
        self.frames: list[Frame] = []
        self.fields: dict[int, dict[str, str]] = {}  # decoded HEADERS, by position in ``frames``
        self.eof = False
        self.pings = 0
        if preface is not None:
            self.sock.sendall(preface + SettingsFrame(0, settings=settings or {}).serialize())

    def close(self) -> None:
        self.sock.close()

    def send(self, *frames: Frame | bytes) -> None:
        self.sock.sendall(b"".join(f if isinstance(f, bytes) else f.serialize() for f in frames))

    def block(self, path: str = METHOD, **extra: str) -> bytes:
        """A request's header block, HPACK-encoded with indexing (the server's decoder must follow)."""
        fields = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", path),
            (":authority", "ratelimit"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *extra.items(),
        ]
        return bytes(self.encoder.encode(fields))

    def request(self, stream: int, body: bytes, path: str = METHOD) -> None:
        pieces = [body[i : i + 16_384] for i in range(0, len(body), 16_384)] or [b""]
        self.send(
            HeadersFrame(stream, self.block(path), flags=["END_HEADERS"]),
            *(DataFrame(stream, piece) for piece in pieces[:-1]),
            DataFrame(stream, pieces[-1], flags=["END_STREAM"]),
        )

    # -- receiving -------------------------------------------------------------------------------
    def receive(self, deadline: float) -> None:
        """Reads until one more frame has arrived, or the connection has ended (``eof``)."""
        while True:
            if len(self.buffer) >= 9:
                length = int.from_bytes(self.buffer[:3], "big")
                if len(self.buffer) >= 9 + length:
                    frame, _ = Frame.parse_frame_header(memoryview(self.buffer[:9]))
                    frame.parse_body(memoryview(self.buffer[9 : 9 + length]))
                    self.buffer = self.buffer[9 + length :]
                    if isinstance(frame, HeadersFrame):
                        decoded = self.decoder.decode(frame.data)
                        self.fields[len(self.frames)] = {str(k): str(v) for k, v in decoded}
                    self.frames.append(frame)
                    return
            left = deadline - time.monotonic()
            if self.eof or left <= 0:
                raise AssertionError(
                    f"{'connection closed' if self.eof else 'timed out'}; frames so far: {self.frames[-20:]}"
                )
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(1 << 16)
            except TimeoutError:
                continue
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                self.eof = True
            self.buffer += chunk

    def wait(self, predicate: Callable[[Frame], bool], timeout: float = TIMEOUT) -> int:
        """The position in ``frames`` of the first frame ``predicate`` accepts, reading until one comes."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for i in range(seen, len(self.frames)):
                if predicate(self.frames[i]):
                    return i
            seen = len(self.frames)
            self.receive(deadline)

    def sync(self) -> int:
        """A barrier: the position of a PING acknowledgement the server wrote after everything the
        frames sent so far made it write. (Two round trips: the service writes answers made while
        reading one batch of frames at the next turn of its loop, before it reads the next batch.)"""
        for _ in range(2):
            self.pings += 1
            opaque = self.pings.to_bytes(8, "big")
            self.send(PingFrame(0, opaque))
            at = self.wait(lambda f, o=opaque: isinstance(f, PingFrame) and "ACK" in f.flags and f.opaque_data == o)
        return at

    def answer(self, stream: int, timeout: float = TIMEOUT) -> Answer:
        end = self.wait(
            lambda f: isinstance(f, HeadersFrame) and f.stream_id == stream and "END_STREAM" in f.flags, timeout
        )
        mine = [i for i in range(end + 1) if self.frames[i].stream_id == stream]
        heads = [i for i in mine if isinstance(self.frames[i], HeadersFrame)]
        data = b"".join(f.data for f in (self.frames[i] for i in mine) if isinstance(f, DataFrame))
        return Answer(self.fields[heads[0]], self.fields[heads[-1]], data, [self.frames[i] for i in mine])

    def on(self, stream: int, before: int | None = None) -> list[Frame]:
        """The frames received on ``stream`` (before position ``before``)."""
        return [f for f in self.frames[:before] if f.stream_id == stream]

    def wait_closed(self, timeout: float = TIMEOUT) -> GoAwayFrame | None:
        """Reads to the end of the connection; the server's GOAWAY if it sent one."""
        deadline = time.monotonic() + timeout
        while not self.eof or len(self.buffer) >= 9:
            try:
                self.receive(deadline)
            except AssertionError:
                if not self.eof:
                    raise
        goaways = [f for f in self.frames if isinstance(f, GoAwayFrame)]
        return goaways[-1] if goaways else None


def rss(pid: int) -> int:
    """Resident memory of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# -- one control plane, one Redis, one service for the module -----------------------------------


@pytest.fixture(scope="module")
def ads() -> Iterator[FakeAds]:
    server = FakeAds()
    server.push([domain_resource("gateway", {"h2": {"windows": {"minute": LIMIT}}})], "v1")
    yield server
    server.close()


def start_service(workdir: Path, ads: FakeAds, redis: RedisServer) -> RateLimitService:
    # Redis is paused in some tests to keep a decision pending: a long timeout keeps it pending.
    service = RateLimitService(workdir, ads.address, ["--redis", redis.url], extra=["--redis-timeout", "20000"])
    # One call first loads the counting script, so that under a pause the counts follow the calls' order.
    still_serving(service.start(), "warm-up")
    return service


@pytest.fixture(scope="module")
def service(
    tmp_path_factory: pytest.TempPathFactory, ads: FakeAds, shared_redis: RedisServer
) -> Iterator[RateLimitService]:
    started = start_service(tmp_path_factory.mktemp("ratelimit-h2"), ads, shared_redis)
    yield started
    started.stop()


@pytest.fixture
def peer(service: RateLimitService) -> Iterator[Peer]:
    made = Peer(service.address)
    yield made
    made.close()


def still_serving(service: RateLimitService, consumer: str) -> None:
    other = Peer(service.address)
    try:
        other.request(1, grpc_body(ask(consumer, hits=3)))
        assert other.answer(1).remaining() == LIMIT - 3
    finally:
        other.close()


# -- the connection ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [b"GET / HTTP/1.1\r\nHost: ratelimit\r\n\r\n", b"HELLO\r\n"],
    ids=["http1-request", "short-garbage"],
)
def test_a_client_without_the_preface_gets_goaway_and_others_are_still_served(
    service: RateLimitService, garbage: bytes
) -> None:
    bad = Peer(service.address, preface=None)
    try:
        bad.send(garbage)  # shorter than the preface too: no need to wait for 24 bytes to know
        goaway = bad.wait_closed()
        assert goaway is not None and goaway.error_code == PROTOCOL_ERROR, bad.frames
        assert b"preface" in goaway.additional_data
    finally:
        bad.close()
    still_serving(service, f"after-{len(garbage)}-bytes-of-garbage")


def test_ping_is_answered_with_its_payload_and_settings_acknowledged(peer: Peer) -> None:
    def acks() -> int:
        return sum(isinstance(f, SettingsFrame) and "ACK" in f.flags for f in peer.frames)

    peer.wait(lambda f: acks() == 1)  # of the SETTINGS sent with the preface
    peer.send(PingFrame(0, b"\x01\x02\x03\x04hey!"))
    pong = peer.frames[peer.wait(lambda f: isinstance(f, PingFrame))]
    assert ("ACK" in pong.flags, pong.opaque_data) == (True, b"\x01\x02\x03\x04hey!")
    peer.send(SettingsFrame(0, settings={SettingsFrame.MAX_CONCURRENT_STREAMS: 7}))
    peer.wait(lambda f: acks() == 2)
    # The server's own SETTINGS came first, opening our stream windows wide.
    first = next(f for f in peer.frames if isinstance(f, SettingsFrame))
    assert "ACK" not in first.flags and first.settings[SettingsFrame.INITIAL_WINDOW_SIZE] == (1 << 31) - 1


def inside_header_block(peer: Peer) -> bytes:
    block = peer.block()
    return raw(HEADERS, 0, 1, block[:4]) + raw(PING, 0, 0, b"\0" * 8)


PROTOCOL_ERRORS: dict[str, tuple[Callable[[Peer], bytes], int]] = {
    "continuation-without-headers": (lambda p: raw(CONTINUATION, END_HEADERS, 1, p.block()), PROTOCOL_ERROR),
    "continuation-after-a-whole-header-block": (
        lambda p: raw(HEADERS, END_HEADERS, 1, p.block()) + raw(CONTINUATION, END_HEADERS, 1),
        PROTOCOL_ERROR,
    ),
    "continuation-on-another-stream": (
        lambda p: (
            raw(HEADERS, END_HEADERS, 1, p.block())
            + raw(HEADERS, END_STREAM, 3, (b := p.block())[:3])
            + raw(CONTINUATION, END_HEADERS, 1, b[3:])
        ),
        PROTOCOL_ERROR,
    ),
    "frame-inside-a-header-block": (inside_header_block, PROTOCOL_ERROR),
    "headers-on-stream-0": (lambda p: raw(HEADERS, END_HEADERS | END_STREAM, 0, p.block()), PROTOCOL_ERROR),
    "headers-on-an-even-stream": (lambda p: raw(HEADERS, END_HEADERS | END_STREAM, 2, p.block()), PROTOCOL_ERROR),
    "push-promise": (lambda p: raw(PUSH_PROMISE, END_HEADERS, 1, b"\0\0\0\2" + p.block()), PROTOCOL_ERROR),
    "padded-headers-without-pad-length": (lambda p: raw(HEADERS, END_HEADERS | PADDED, 1), PROTOCOL_ERROR),
    "padding-longer-than-the-frame": (
        lambda p: raw(HEADERS, END_HEADERS | PADDED | END_STREAM, 1, b"\xff" + p.block()),
        PROTOCOL_ERROR,
    ),
    "undecodable-header-block": (
        lambda p: raw(HEADERS, END_HEADERS | END_STREAM, 1, b"\xff\xff\xff\xff\x7f"),
        PROTOCOL_ERROR,
    ),
    "max-frame-size-setting-below-16-KiB": (
        lambda p: SettingsFrame(0, settings={SettingsFrame.MAX_FRAME_SIZE: 100}).serialize(),
        PROTOCOL_ERROR,
    ),
    # Our limit is the default 16 KiB whatever the peer's own SETTINGS_MAX_FRAME_SIZE says; the
    # frame header alone is enough to refuse it.
    "frame-over-16-KiB": (
        lambda p: (
            SettingsFrame(0, settings={SettingsFrame.MAX_FRAME_SIZE: 1 << 20}).serialize()
            + (20_000).to_bytes(3, "big")
            + raw(DATA, 0, 1)[3:]
        ),
        FRAME_SIZE_ERROR,
    ),
}


@pytest.mark.parametrize("case", list(PROTOCOL_ERRORS))
def test_protocol_errors_get_goaway_and_close_and_others_are_still_served(service: RateLimitService, case: str) -> None:
    build, code = PROTOCOL_ERRORS[case]
    bad = Peer(service.address)
    try:
        bad.send(build(bad))
        goaway = bad.wait_closed()
        assert goaway is not None, f"closed without GOAWAY: {bad.frames}"
        assert goaway.error_code == code, goaway
    finally:
        bad.close()
    still_serving(service, f"after-{case}")


def test_an_endless_header_block_is_cut_off(service: RateLimitService) -> None:
    """CONTINUATION frames that never end the block must not grow the server's memory without bound."""
    bad = Peer(service.address)
    try:
        bad.send(raw(HEADERS, END_STREAM, 1, b"a" * 100))
        # 64 KiB of header block in all, the last frame past it (so the server has read everything it closes on)
        for _ in range(4):
            bad.send(raw(CONTINUATION, 0, 1, b"a" * 16_384))
        goaway = bad.wait_closed()
        assert goaway is not None and goaway.error_code == ENHANCE_YOUR_CALM, bad.frames
    finally:
        bad.close()
    still_serving(service, "after-an-endless-header-block")


# -- gRPC over one stream ---------------------------------------------------------------------------


def test_grpc_errors_are_trailers_only_answers_and_the_connection_goes_on(peer: Peer) -> None:
    message = ask("errors").SerializeToString()
    other = "/envoy.service.ratelimit.v3.RateLimitService/Other"
    cases = {
        1: (other, grpc_body(ask("errors")), UNIMPLEMENTED),
        3: (METHOD, grpc_body(ask("errors"), flag=1), UNIMPLEMENTED),  # compressed: no encoding was agreed
        5: (METHOD, b"\0\0\0", INTERNAL),  # a length prefix cut short
        # the prefix promises more than the body holds
        7: (METHOD, b"\0" + (len(message) + 10).to_bytes(4, "big") + message, INTERNAL),
        9: (METHOD, grpc_body(ask("errors")) * 2, INTERNAL),  # two messages on a unary call
        11: (METHOD, b"\0\0\0\0\x03\xff\xff\xff", INTERNAL),  # framed, but not a RateLimitRequest
    }
    for stream, (path, body, _) in cases.items():
        peer.request(stream, body, path)
    peer.send(HeadersFrame(13, peer.block(), flags=["END_HEADERS", "END_STREAM"]))  # no body at all
    for stream, (_, _, status) in [*cases.items(), (13, (METHOD, b"", INTERNAL))]:
        answer = peer.answer(stream)
        assert answer.status == status, (stream, answer.trailers)
        # trailers-only: one HEADERS frame, no DATA
        assert [type(f) for f in answer.frames] == [HeadersFrame], (stream, answer.frames)
        assert answer.headers[":status"] == "200" and answer.headers["content-type"] == "application/grpc"
        assert answer.headers["grpc-message"]
    assert "Other" in peer.answer(1).trailers["grpc-message"]
    peer.request(15, grpc_body(ask("errors", hits=2)))
    assert peer.answer(15).remaining() == LIMIT - 2


def test_a_message_over_4_MiB_is_refused_and_what_follows_dropped(service: RateLimitService, peer: Peer) -> None:
    assert service.proc is not None
    peer.request(1, grpc_body(ask("before-the-flood")))
    peer.answer(1)
    before = rss(service.proc.pid)
    chunk = b"\0" * 16_384
    peer.send(HeadersFrame(3, peer.block(), flags=["END_HEADERS"]), DataFrame(3, b"\0\x00\x50\x00\x00"))
    peer.send(*(DataFrame(3, chunk) for _ in range(257)))  # 4 MiB + 16 KiB, no END_STREAM
    refused = peer.answer(3)
    assert refused.status == RESOURCE_EXHAUSTED and [type(f) for f in refused.frames] == [HeadersFrame]
    # The client goes on sending on the refused stream: 48 MiB more, read and dropped.
    for _ in range(48):
        peer.send(*(DataFrame(3, chunk) for _ in range(64)))
    peer.sync()
    grown = rss(service.proc.pid) - before
    assert grown < 16 << 20, f"the service grew by {grown >> 20} MiB"
    peer.request(5, grpc_body(ask("after-the-flood", hits=4)))
    assert peer.answer(5).remaining() == LIMIT - 4


def test_header_block_split_over_continuation_frames(peer: Peer) -> None:
    block = peer.block(**{"x-trace": "split" * 20})
    a, b = len(block) // 3, 2 * len(block) // 3  # cut inside fields: HPACK allows any cut
    peer.send(
        HeadersFrame(1, block[:a]),
        ContinuationFrame(1, block[a:b]),
        ContinuationFrame(1, block[b:], flags=["END_HEADERS"]),
        DataFrame(1, grpc_body(ask("continued", hits=5)), flags=["END_STREAM"]),
    )
    assert peer.answer(1).remaining() == LIMIT - 5
    # END_STREAM on the HEADERS, the block ends later: the request (empty, so INTERNAL) is
    # answered once the block is whole, by the method its last fragment names.
    block = peer.block(**{"x-trace": "again"})
    peer.send(
        HeadersFrame(3, block[:2], flags=["END_STREAM"]),
        ContinuationFrame(3, block[2:], flags=["END_HEADERS"]),
    )
    late = peer.answer(3)
    assert late.status == INTERNAL and "one uncompressed message" in late.trailers["grpc-message"], late.trailers
    other = peer.block("/envoy.service.ratelimit.v3.RateLimitService/Other")
    peer.send(HeadersFrame(5, other[:1], flags=["END_STREAM"]), ContinuationFrame(5, other[1:], flags=["END_HEADERS"]))
    assert peer.answer(5).status == UNIMPLEMENTED


def test_padding_priority_and_a_message_over_several_data_frames(peer: Peer) -> None:
    body = grpc_body(ask("padded", hits=6))
    peer.send(
        HeadersFrame(
            1, peer.block(), flags=["END_HEADERS", "PADDED", "PRIORITY"], pad_length=17, depends_on=0, stream_weight=200
        ),
        DataFrame(1, body[:3], flags=["PADDED"], pad_length=30),
        DataFrame(1, body[3:9]),
        DataFrame(1, body[9:], flags=["PADDED"], pad_length=0),
        DataFrame(1, b"", flags=["END_STREAM", "PADDED"], pad_length=5),
        raw(PRIORITY, 0, 3, b"\0\0\0\1\x10"),  # ignored, as RFC 9113 allows
    )
    assert peer.answer(1).remaining() == LIMIT - 6


# -- flow control ---------------------------------------------------------------------------------------


def test_answers_wait_for_the_peers_window(service: RateLimitService) -> None:
    peer = Peer(service.address, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 0})
    try:
        peer.request(1, grpc_body(ask("window", hits=7)))
        peer.wait(lambda f: isinstance(f, HeadersFrame) and f.stream_id == 1)  # the answer is made...
        at = peer.sync()
        assert [type(f) for f in peer.on(1, at)] == [HeadersFrame], "sent DATA into a closed window"
        peer.send(WindowUpdateFrame(1, window_increment=7))
        at = peer.sync()
        sent = peer.on(1, at)
        assert sum(len(f.data) for f in sent if isinstance(f, DataFrame)) <= 7, sent
        assert not any("END_STREAM" in f.flags for f in sent), sent
        peer.send(WindowUpdateFrame(1, window_increment=10_000))
        assert peer.answer(1).remaining() == LIMIT - 7

        # Raising SETTINGS_INITIAL_WINDOW_SIZE opens the window of a stream already waiting.
        peer.request(3, grpc_body(ask("window", hits=8)))
        peer.wait(lambda f: isinstance(f, HeadersFrame) and f.stream_id == 3)
        peer.send(SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 65_535}))
        assert peer.answer(3).remaining() == LIMIT - 15
    finally:
        peer.close()


def test_an_answer_larger_than_a_frame_and_the_window_is_split_and_paced(service: RateLimitService) -> None:
    """20 000 descriptors (malformed: each answered OK): the answer (20 000 statuses, 80 KB) is more
    than one 16 KiB frame and more than the connection's 65 535-byte window, which paces it here
    (the stream's window is 1 MiB)."""
    from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2

    peer = Peer(service.address, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 1 << 20})
    try:
        peer.request(1, grpc_body(ask("before-a-large-answer")))  # takes its bytes of the window too
        peer.answer(1)
        many = rls_pb2.RateLimitRequest(
            domain="gateway", descriptors=[ratelimit_pb2.RateLimitDescriptor() for _ in range(20_000)]
        )
        peer.request(3, grpc_body(many))

        def received() -> int:
            return sum(len(f.data) for f in peer.frames if isinstance(f, DataFrame))

        peer.wait(lambda f: received() >= 65_535)
        at = peer.sync()
        assert sum(len(f.data) for f in peer.frames[:at] if isinstance(f, DataFrame)) == 65_535
        assert not any("END_STREAM" in f.flags for f in peer.on(3, at)), "the whole answer went past the window"
        peer.send(WindowUpdateFrame(0, window_increment=100_000))
        response = peer.answer(3).response()
        assert len(response.statuses) == 20_000 and {s.code for s in response.statuses} == {OK}
        sizes = [len(f.data) for f in peer.frames if isinstance(f, DataFrame)]
        assert max(sizes) <= 16_384, sizes
    finally:
        peer.close()


def test_rst_stream_on_an_answer_held_by_flow_control_frees_the_connection(service: RateLimitService) -> None:
    peer = Peer(service.address, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 0})
    try:
        peer.request(1, grpc_body(ask("held-then-reset")))
        peer.wait(lambda f: isinstance(f, HeadersFrame) and f.stream_id == 1)
        peer.send(RstStreamFrame(1, error_code=CANCEL))
        peer.request(3, grpc_body(ask("held-then-reset", hits=2)))
        peer.wait(lambda f: isinstance(f, HeadersFrame) and f.stream_id == 3)
        peer.send(WindowUpdateFrame(3, window_increment=10_000))
        assert peer.answer(3).remaining() == LIMIT - 3
        # Every stream's window opens: the reset stream still gets nothing.
        peer.send(SettingsFrame(0, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 65_535}))
        assert [type(f) for f in peer.on(1, peer.sync())] == [HeadersFrame]
    finally:
        peer.close()


# -- streams, cancellation, going away ----------------------------------------------------------------


def test_many_interleaved_streams_each_get_their_own_answer(peer: Peer) -> None:
    streams = list(range(1, 121, 2))
    bodies = {s: grpc_body(ask(f"interleaved-{s}", hits=s)) for s in streams}
    # The headers of every stream (each with its own header, so the HPACK table keeps changing),
    # then half of each body in reverse order, then the rest in another order.
    peer.send(*(HeadersFrame(s, peer.block(**{"x-stream": str(s)}), flags=["END_HEADERS"]) for s in streams))
    peer.send(*(DataFrame(s, bodies[s][:7]) for s in reversed(streams)))
    order = streams[1::2] + streams[::2]
    peer.send(*(DataFrame(s, bodies[s][7:], flags=["END_STREAM"]) for s in order))
    for s in streams:
        assert peer.answer(s).remaining() == LIMIT - s, s


def test_rst_stream_cancels_a_pending_decision(shared_redis: RedisServer, peer: Peer) -> None:
    shared_redis.pause()
    try:
        peer.request(1, grpc_body(ask("reset", hits=1)))
        peer.request(3, grpc_body(ask("kept", hits=2)))
        peer.sync()  # both decisions wait on Redis
        peer.send(RstStreamFrame(1, error_code=CANCEL))
        peer.sync()
    finally:
        shared_redis.resume()
    # Redis answers in order: had stream 1's decision gone on, its answer would come first.
    assert peer.answer(3).remaining() == LIMIT - 2
    assert peer.on(1) == [], peer.on(1)
    peer.request(5, grpc_body(ask("kept", hits=3)))
    assert peer.answer(5).remaining() == LIMIT - 5


def test_client_goaway_lets_calls_in_flight_finish_then_closes(shared_redis: RedisServer, peer: Peer) -> None:
    shared_redis.pause()
    try:
        peer.request(1, grpc_body(ask("goaway-pending", hits=2)))
        peer.send(HeadersFrame(3, peer.block(), flags=["END_HEADERS"]))  # its body comes after the GOAWAY
        peer.sync()
        peer.send(GoAwayFrame(0, last_stream_id=0, error_code=0))
        peer.send(DataFrame(3, grpc_body(ask("goaway-pending", hits=3)), flags=["END_STREAM"]))
        peer.sync()
    finally:
        shared_redis.resume()
    # (Redis counts in the order the decisions were made)
    assert (peer.answer(1).remaining(), peer.answer(3).remaining()) == (LIMIT - 2, LIMIT - 5)
    assert peer.wait_closed() is None and peer.eof


def test_client_goaway_then_reset_of_its_last_call_closes(shared_redis: RedisServer, service: RateLimitService) -> None:
    # The last call pending on Redis...
    peer = Peer(service.address)
    try:
        shared_redis.pause()
        try:
            peer.request(1, grpc_body(ask("goaway-reset")))
            peer.send(GoAwayFrame(0, last_stream_id=0, error_code=0))
            peer.sync()
            peer.send(RstStreamFrame(1, error_code=CANCEL))
            assert peer.wait_closed() is None and peer.eof
        finally:
            shared_redis.resume()
    finally:
        peer.close()
    # ...or held by flow control.
    peer = Peer(service.address, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 0})
    try:
        peer.request(1, grpc_body(ask("goaway-reset")))
        peer.wait(lambda f: isinstance(f, HeadersFrame) and f.stream_id == 1)
        peer.send(GoAwayFrame(0, last_stream_id=0, error_code=0))
        peer.sync()
        peer.send(RstStreamFrame(1, error_code=CANCEL))
        assert peer.wait_closed() is None and peer.eof
        assert [type(f) for f in peer.on(1)] == [HeadersFrame]
    finally:
        peer.close()


def test_client_goaway_after_an_answer_is_made_still_delivers_it(service: RateLimitService) -> None:
    # An answer made in the same read as the GOAWAY.
    peer = Peer(service.address)
    try:
        peer.send(
            HeadersFrame(1, peer.block("/nowhere"), flags=["END_HEADERS", "END_STREAM"]),
            GoAwayFrame(0, last_stream_id=0, error_code=0),
        )
        assert peer.answer(1).status == UNIMPLEMENTED
        assert peer.wait_closed() is None and peer.eof
    finally:
        peer.close()
    # An answer held by flow control when the GOAWAY comes: the window opens after it.
    peer = Peer(service.address, settings={SettingsFrame.INITIAL_WINDOW_SIZE: 0})
    try:
        peer.request(1, grpc_body(ask("goaway-held", hits=9)))
        peer.wait(lambda f: isinstance(f, HeadersFrame) and f.stream_id == 1)
        peer.send(GoAwayFrame(0, last_stream_id=0, error_code=0), WindowUpdateFrame(1, window_increment=10_000))
        assert peer.answer(1).remaining() == LIMIT - 9
        assert peer.wait_closed() is None and peer.eof
    finally:
        peer.close()


def test_sigterm_answers_calls_in_flight_then_exits(tmp_path: Path, ads: FakeAds, redis_server: RedisServer) -> None:
    service = start_service(tmp_path, ads, redis_server)
    assert service.proc is not None
    peer = Peer(service.address)
    try:
        redis_server.pause()
        try:
            peer.request(1, grpc_body(ask("sigterm", hits=2)))
            peer.send(HeadersFrame(3, peer.block(), flags=["END_HEADERS"]))
            peer.sync()
            os.kill(service.proc.pid, signal.SIGTERM)
            goaway = peer.frames[peer.wait(lambda f: isinstance(f, GoAwayFrame))]
            assert goaway.error_code == 0 and goaway.last_stream_id >= 3, goaway
            # stream 3 was opened before the GOAWAY: its body is still taken
            peer.send(DataFrame(3, grpc_body(ask("sigterm", hits=3)), flags=["END_STREAM"]))
            peer.sync()
        finally:
            redis_server.resume()
        assert (peer.answer(1).remaining(), peer.answer(3).remaining()) == (LIMIT - 2, LIMIT - 5)
        peer.wait_closed()
        assert service.proc.wait(10) == 0
    finally:
        peer.close()
        service.stop()


def test_streams_past_the_advertised_maximum_are_refused_and_the_connection_goes_on(peer: Peer) -> None:
    settings = peer.wait(lambda f: isinstance(f, SettingsFrame) and "ACK" not in f.flags)
    assert peer.frames[settings].settings.get(SettingsFrame.MAX_CONCURRENT_STREAMS) == 1000
    # 1000 streams opened and left waiting for their bodies, then one more
    opened = [1 + 2 * i for i in range(1000)]
    peer.send(*(HeadersFrame(s, peer.block(), flags=["END_HEADERS"]) for s in opened))
    extra = 1 + 2 * 1000
    peer.send(HeadersFrame(extra, peer.block(), flags=["END_HEADERS"]))
    at = peer.wait(lambda f: isinstance(f, RstStreamFrame) and f.stream_id == extra)
    assert peer.frames[at].error_code == 0x7  # REFUSED_STREAM: the client may retry it
    assert not any(isinstance(f, RstStreamFrame) and f.stream_id in opened for f in peer.frames)
    # an open stream still completes, and once it has, a new stream is taken again
    peer.send(DataFrame(opened[0], grpc_body(ask("under-the-cap")), flags=["END_STREAM"]))
    assert peer.answer(opened[0]).status == GRPC_OK
    peer.request(extra + 2, grpc_body(ask("after-the-cap", hits=3)))
    assert peer.answer(extra + 2).remaining() == LIMIT - 3


def test_request_bytes_held_per_connection_are_bounded(service: RateLimitService, peer: Peer) -> None:
    assert service.proc is not None
    before = rss(service.proc.pid)
    chunk = b"\0" * 16_384
    # streams each holding just under 4 MiB of an unfinished message: the fifth passes 16 MiB
    for stream in (1, 3, 5, 7, 9):
        peer.send(HeadersFrame(stream, peer.block(), flags=["END_HEADERS"]), DataFrame(stream, b"\0\x00\x40\x00\x00"))
        peer.send(*(DataFrame(stream, chunk) for _ in range(255)))
    refused = peer.answer(9)
    assert refused.status == RESOURCE_EXHAUSTED and "in flight" in refused.trailers.get("grpc-message", "")
    grown = rss(service.proc.pid) - before
    assert grown < 40 << 20, f"the service grew by {grown >> 20} MiB"
    # resetting the held streams frees their bytes: a new request is served
    peer.send(*(RstStreamFrame(s, error_code=0x8) for s in (1, 3, 5, 7)))
    peer.request(11, grpc_body(ask("after-the-hoard", hits=2)))
    assert peer.answer(11).remaining() == LIMIT - 2


def test_repeated_indexed_header_blocks_are_reread_after_the_table_changes(peer: Peer) -> None:
    """The service remembers the method of a block made of indexed fields only; a block that adds
    to the table shifts every index, and the same bytes then mean other fields."""
    peer.request(1, grpc_body(ask("first")))  # literals: the fields enter both tables
    assert peer.answer(1).status == GRPC_OK
    repeated = peer.block()  # the same fields again: indexed only
    assert all(byte & 0x80 for byte in repeated), repeated
    peer.send(
        HeadersFrame(3, repeated, flags=["END_HEADERS"]), DataFrame(3, grpc_body(ask("second")), flags=["END_STREAM"])
    )
    assert peer.answer(3).status == GRPC_OK
    # another path enters the tables: every dynamic index moves by one
    peer.request(5, grpc_body(ask("third")), path="/other.Service/Method")
    assert peer.answer(5).status == UNIMPLEMENTED
    # the old bytes now name other fields: not the method any more
    peer.send(
        HeadersFrame(7, repeated, flags=["END_HEADERS"]), DataFrame(7, grpc_body(ask("fourth")), flags=["END_STREAM"])
    )
    assert peer.answer(7).status == UNIMPLEMENTED
