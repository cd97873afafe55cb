"""``ShouldRateLimit`` over gRPC on cleartext HTTP/2, served by a small asyncio protocol.

grpcio's server costs about 280 us of CPU per call in Python whatever the method does (a
bare server answering an empty message, measured in ``bench/ratelimit_service_bench.py``):
more than the decision and its Redis round trip together. The service answers one unary
method to one kind of client (Envoy's gRPC client; grpcio's works too), so the part of
HTTP/2 and gRPC it needs is small:

- frames are read from one buffer per connection; request header blocks are decoded (HPACK,
  the ``hpack`` package) to check the method, response header blocks are constant bytes
  (static-table and literal fields only, so the peer's decoder state never depends on ours);
- flow control: the service opens its receive windows wide at the start and tops them up as
  data arrives; what it sends is a few hundred bytes per call, held back only if the peer's
  window is ever smaller (then sent as the window opens, in frames no larger than the peer's
  SETTINGS_MAX_FRAME_SIZE);
- each request stream's body is one length-prefixed gRPC message (uncompressed); its answer
  is HEADERS, DATA (one frame unless flow control splits it), and trailers with ``grpc-status``;
- PING is answered, SETTINGS acknowledged, RST_STREAM cancels the stream's decision, GOAWAY
  ends the connection once its streams are answered. Anything else is a protocol error:
  GOAWAY and close.

TLS is not offered: Envoy reaches the service inside the cluster (network policy), as with
grpcio's insecure port before.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import quote

from hpack import Decoder
from hpack.exceptions import HPACKError

log = logging.getLogger("controlplane.ratelimit.h2")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE = 0x4, 0x5
PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR, ENHANCE_YOUR_CALM = 0x1, 0x3, 0x6, 0xB
DEFAULT_WINDOW = 65_535
OPEN_WINDOW = (1 << 31) - 1
MAX_MESSAGE = 4 << 20  # a request larger than this is refused (RESOURCE_EXHAUSTED)
# Per connection: streams open at once (advertised; more are refused with REFUSED_STREAM), and
# request bytes held for them (past it, the stream that would add more gets RESOURCE_EXHAUSTED).
MAX_STREAMS = 1000
MAX_BUFFERED = 16 << 20
SETTINGS_MAX_CONCURRENT_STREAMS, REFUSED_STREAM = 0x3, 0x7
MAX_FRAME = 16_384  # the largest frame taken in: the default, as no SETTINGS_MAX_FRAME_SIZE is sent
MAX_HEADER_BLOCK = 64 << 10  # a longer header block (HEADERS + CONTINUATION) ends the connection

OK, UNIMPLEMENTED, RESOURCE_EXHAUSTED, INTERNAL, UNAVAILABLE = 0, 12, 8, 13, 14

_HEAD = struct.Struct(">I")  # (a frame header: 24-bit length, type, flags, stream id)


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return _HEAD.pack(len(payload))[1:] + bytes((kind, flags)) + _HEAD.pack(stream) + payload


def _literal(name: bytes, value: bytes) -> bytes:
    """A header field as a literal without indexing, with a new name (HPACK 6.2.2)."""
    assert len(name) < 127 and len(value) < 127
    return b"\x00" + bytes((len(name),)) + name + bytes((len(value),)) + value


# :status 200 (static index 8), content-type: application/grpc (static name 31, literal value)
RESPONSE_HEADERS = b"\x88" + b"\x0f\x10" + bytes((len(b"application/grpc"),)) + b"application/grpc"
TRAILERS_OK = _literal(b"grpc-status", b"0")


def trailers(status: int, message: str) -> bytes:
    """The trailers of a failed call (``grpc-message`` percent-encoded, as gRPC wants)."""
    text = quote(message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")[:120].encode()
    return _literal(b"grpc-status", str(status).encode()) + _literal(b"grpc-message", text)


# (gRPC status, message, response message bytes) for one request's bytes
Handler = Callable[[bytes], Awaitable[tuple[int, str, bytes]]]


@dataclass
class _Stream:
    headers: bytearray = field(default_factory=bytearray)
    headers_done: bool = False
    ended: bool = False  # the client has sent END_STREAM
    refused: bool = False  # past MAX_STREAMS: answered with RST_STREAM once its headers are read
    path: str = ""
    body: bytearray = field(default_factory=bytearray)
    task: asyncio.Task[None] | None = None


class GrpcH2Protocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, method: str, handler: Handler, on_close: Callable[[GrpcH2Protocol], None]):
        self.method = method
        self.handler = handler
        self.on_close = on_close
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.preface = False
        self.decoder = Decoder()
        self.streams: dict[int, _Stream] = {}
        self.continuing: int | None = None  # a stream whose header block goes on in CONTINUATION frames
        self.peer_window = DEFAULT_WINDOW  # connection-level send window
        self.peer_initial = DEFAULT_WINDOW  # each new stream's send window
        self.stream_windows: dict[int, int] = {}
        self.pending: dict[int, tuple[bytes, bytes]] = {}  # stream: (DATA left to send, trailers) held by flow control
        self.max_frame = 16_384  # the largest frame the peer takes
        self.failed = False  # a protocol error: nothing more is read
        self.received = 0  # bytes of DATA taken in since the last connection WINDOW_UPDATE
        self.closing = False
        self.buffered = 0  # request body bytes held, all streams together
        self.indexed_paths: dict[bytes, str] = {}  # header blocks of indexed fields only → their :path
        # Answers made in one turn of the event loop leave in one write (one system call for
        # the dozens of calls a busy Envoy has in flight).
        self.out: list[bytes] = []

    # -- connection ----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        settings = struct.pack(
            ">HIHI", SETTINGS_INITIAL_WINDOW_SIZE, OPEN_WINDOW, SETTINGS_MAX_CONCURRENT_STREAMS, MAX_STREAMS
        )
        transport.write(
            frame(SETTINGS, 0, 0, settings) + frame(WINDOW_UPDATE, 0, 0, _HEAD.pack(OPEN_WINDOW - DEFAULT_WINDOW))
        )

    def connection_lost(self, exc: Exception | None) -> None:
        for stream in self.streams.values():
            if stream.task is not None:
                stream.task.cancel()
        self.streams.clear()
        self.on_close(self)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.preface:
            head = bytes(self.buffer[: len(PREFACE)])
            if not PREFACE.startswith(head):
                self._fail(PROTOCOL_ERROR, "not an HTTP/2 client (no connection preface)")
                return
            if len(head) < len(PREFACE):
                return
            del self.buffer[: len(PREFACE)]
            self.preface = True
        buf = self.buffer
        offset = 0
        size = len(buf)
        # (a closing connection still reads: its streams' data, WINDOW_UPDATEs and RST_STREAMs)
        while size - offset >= 9 and not self.failed:
            length = int.from_bytes(buf[offset : offset + 3], "big")
            if length > MAX_FRAME:
                self._fail(FRAME_SIZE_ERROR, f"frame of {length} bytes")
                return
            end = offset + 9 + length
            if end > size:
                break
            kind, flags = buf[offset + 3], buf[offset + 4]
            stream = int.from_bytes(buf[offset + 5 : offset + 9], "big") & 0x7FFF_FFFF
            self._frame(kind, flags, stream, bytes(buf[offset + 9 : end]))
            offset = end
        del buf[:offset]
        if self.received >= OPEN_WINDOW // 2 and self.transport is not None:
            self.transport.write(frame(WINDOW_UPDATE, 0, 0, _HEAD.pack(self.received)))
            self.received = 0

    def _write(self, data: bytes) -> None:
        if not self.out:
            asyncio.get_running_loop().call_soon(self._flush_out)
        self.out.append(data)

    def _flush_out(self) -> None:
        data, self.out = b"".join(self.out), []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
        self._maybe_close()

    def _fail(self, code: int, why: str) -> None:
        log.info("closing an HTTP/2 connection: %s", why)
        self.closing = self.failed = True
        if self.transport is not None:
            self.transport.write(frame(GOAWAY, 0, 0, struct.pack(">II", 0, code) + why.encode()[:100]))
            self.transport.close()

    # -- frames --------------------------------------------------------------------------------
    def _frame(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if self.continuing is not None and kind != CONTINUATION:
            self._fail(PROTOCOL_ERROR, "a header block was interrupted")
            return
        if kind == HEADERS:
            self._headers(flags, stream_id, payload)
        elif kind == CONTINUATION:
            stream = self.streams.get(stream_id)
            if stream_id != self.continuing or stream is None:
                self._fail(PROTOCOL_ERROR, "CONTINUATION without HEADERS")
                return
            stream.headers += payload
            if len(stream.headers) > MAX_HEADER_BLOCK:
                self._fail(ENHANCE_YOUR_CALM, f"a header block over {MAX_HEADER_BLOCK} bytes")
                return
            if flags & END_HEADERS:
                self.continuing = None
                self._header_block(stream)
                if stream.refused:
                    self._refuse(stream_id)
                elif stream.ended:
                    self._complete(stream_id, stream)
        elif kind == DATA:
            self._data(flags, stream_id, payload)
        elif kind == SETTINGS:
            if not flags & ACK:
                self._settings(payload)
        elif kind == PING:
            if not flags & ACK and self.transport is not None:
                self.transport.write(frame(PING, ACK, 0, payload))
        elif kind == WINDOW_UPDATE:
            increment = int.from_bytes(payload[:4], "big") & 0x7FFF_FFFF
            if stream_id == 0:
                self.peer_window += increment
            elif stream_id in self.stream_windows:
                self.stream_windows[stream_id] += increment
            self._flush_pending()
        elif kind == RST_STREAM:
            stream = self._drop(stream_id)
            self.stream_windows.pop(stream_id, None)
            self.pending.pop(stream_id, None)
            if stream is not None and stream.task is not None:
                stream.task.cancel()
            self._maybe_close()
        elif kind == GOAWAY:
            self.closing = True
            self._maybe_close()
        elif kind == PUSH_PROMISE:
            self._fail(PROTOCOL_ERROR, "a client may not push")
        # PRIORITY and unknown types are ignored, as RFC 9113 says

    def _settings(self, payload: bytes) -> None:
        for i in range(0, len(payload) - 5, 6):
            ident, value = struct.unpack_from(">HI", payload, i)
            if ident == SETTINGS_INITIAL_WINDOW_SIZE:
                delta = value - self.peer_initial
                self.peer_initial = value
                for sid in self.stream_windows:
                    self.stream_windows[sid] += delta
            elif ident == SETTINGS_MAX_FRAME_SIZE:
                if not 16_384 <= value < 1 << 24:
                    self._fail(PROTOCOL_ERROR, f"SETTINGS_MAX_FRAME_SIZE {value}")
                    return
                self.max_frame = value
        if self.transport is not None:
            self.transport.write(frame(SETTINGS, ACK, 0))
        self._flush_pending()

    def _headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0 or stream_id % 2 == 0:
            self._fail(PROTOCOL_ERROR, f"HEADERS on stream {stream_id}")
            return
        start = 0
        end = len(payload)
        if flags & PADDED:
            if not payload:
                self._fail(PROTOCOL_ERROR, "PADDED HEADERS without a pad length")
                return
            start, end = 1, end - payload[0]
        if flags & PRIORITY_FLAG:
            start += 5
        if start > end:
            self._fail(PROTOCOL_ERROR, "bad padding")
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            stream = self.streams[stream_id] = _Stream(refused=len(self.streams) >= MAX_STREAMS)
            self.stream_windows[stream_id] = self.peer_initial
        stream.headers = bytearray(payload[start:end])
        stream.ended = bool(flags & END_STREAM)
        if not flags & END_HEADERS:
            self.continuing = stream_id
            return
        self._header_block(stream)
        if stream.refused:
            self._refuse(stream_id)
        elif stream.ended:
            self._complete(stream_id, stream)

    def _refuse(self, stream_id: int) -> None:
        """A stream past MAX_STREAMS (its header block decoded all the same: HPACK state)."""
        self._drop(stream_id)
        self._write(frame(RST_STREAM, 0, stream_id, _HEAD.pack(REFUSED_STREAM)))

    def _drop(self, stream_id: int) -> _Stream | None:
        stream = self.streams.pop(stream_id, None)
        if stream is not None:
            self.buffered -= len(stream.body)
        return stream

    def _header_block(self, stream: _Stream) -> None:
        """Every block that can change the decoder's table is decoded (the table must follow the
        client's); the first block of a stream gives the method, a second one is its trailers.

        A client repeating a request sends, after the first time, a block of indexed fields
        only (each one byte, high bit set: a table entry, and no change to the table). Such a
        block means the same fields as long as the table has not changed, so its method is
        remembered until a block that may change the table is decoded (a sixth of the
        service's CPU per call went to decoding the same few bytes)."""
        block = bytes(stream.headers)
        stream.headers = bytearray()
        indexed = all(byte & 0x80 for byte in block)
        path = self.indexed_paths.get(block) if indexed else None
        if path is None:
            try:
                fields = self.decoder.decode(block, raw=True)
            except HPACKError as exc:  # the decoder's state is lost: the connection cannot go on
                self._fail(PROTOCOL_ERROR, f"bad header block: {exc}")
                return
            path = next((v.decode("latin-1") for k, v in fields if k == b":path"), "")
            if not indexed:
                self.indexed_paths.clear()  # the table may have changed: an index may mean another field now
            elif len(self.indexed_paths) < 256:
                self.indexed_paths[block] = path
        if not stream.headers_done:
            stream.path = path
        stream.headers_done = True

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        stream = self.streams.get(stream_id)
        self.received += len(payload)
        if stream is None:  # a stream already answered or reset: its data is dropped (windows still count)
            return
        body = payload
        if flags & PADDED and payload:
            body = payload[1 : len(payload) - payload[0]]
        if len(stream.body) + len(body) > MAX_MESSAGE + 5:
            self._answer(stream_id, RESOURCE_EXHAUSTED, "request too large", b"")
            return
        if self.buffered + len(body) > MAX_BUFFERED:
            self._answer(stream_id, RESOURCE_EXHAUSTED, "too many request bytes in flight on this connection", b"")
            return
        self.buffered += len(body)
        stream.body += body  # (each stream may take OPEN_WINDOW bytes: no stream window update needed)
        if flags & END_STREAM:
            stream.ended = True
            self._complete(stream_id, stream)

    # -- calls ---------------------------------------------------------------------------------
    def _complete(self, stream_id: int, stream: _Stream) -> None:
        if not stream.headers_done or stream.task is not None:
            return
        if stream.path != self.method:
            self._answer(stream_id, UNIMPLEMENTED, f"unknown method {stream.path}", b"")
            return
        body = bytes(stream.body)
        self.buffered -= len(stream.body)
        stream.body = bytearray()
        if len(body) < 5 or body[0] != 0 or int.from_bytes(body[1:5], "big") != len(body) - 5:
            status = UNIMPLEMENTED if body[:1] == b"\x01" else INTERNAL
            self._answer(stream_id, status, "one uncompressed message expected", b"")
            return
        stream.task = asyncio.ensure_future(self._call(stream_id, body[5:]))

    async def _call(self, stream_id: int, message: bytes) -> None:
        try:
            status, text, response = await self.handler(message)
        except asyncio.CancelledError:
            return
        except Exception as exc:  # a handler failing answers INTERNAL, the connection stays
            log.exception("%s failed", self.method)
            status, text, response = INTERNAL, str(exc), b""
        if stream_id in self.streams:
            self._answer(stream_id, status, text, response)

    def _answer(self, stream_id: int, status: int, text: str, response: bytes) -> None:
        self._drop(stream_id)
        if self.transport is None or self.transport.is_closing():
            return
        end = TRAILERS_OK if status == OK else trailers(status, text)
        if status != OK:
            self._send_trailers_only(stream_id, end)
            return
        payload = b"\x00" + _HEAD.pack(len(response)) + response
        window = self.stream_windows.get(stream_id, self.peer_initial)
        if len(payload) <= min(self.peer_window, window, self.max_frame):
            self._send(stream_id, payload, end, headers=True)
            return
        self._write(frame(HEADERS, END_HEADERS, stream_id, RESPONSE_HEADERS))
        self.pending[stream_id] = (payload, end)
        self._flush_pending()

    def _send_trailers_only(self, stream_id: int, end: bytes) -> None:
        assert self.transport is not None
        self.stream_windows.pop(stream_id, None)
        self._write(frame(HEADERS, END_HEADERS | END_STREAM, stream_id, RESPONSE_HEADERS + end))

    def _send(self, stream_id: int, payload: bytes, end: bytes, headers: bool) -> None:
        assert self.transport is not None
        self.peer_window -= len(payload)
        self.stream_windows.pop(stream_id, None)
        out = frame(HEADERS, END_HEADERS, stream_id, RESPONSE_HEADERS) if headers else b""
        out += frame(DATA, 0, stream_id, payload) + frame(HEADERS, END_HEADERS | END_STREAM, stream_id, end)
        self._write(out)

    def _flush_pending(self) -> None:
        """Sends what the windows allow of each held answer (one stream's closed window holds no other)."""
        for stream_id, (payload, end) in list(self.pending.items()):
            window = min(self.peer_window, self.stream_windows.get(stream_id, self.peer_initial))
            if window <= 0:
                continue
            now, rest = payload[:window], payload[window:]
            self.peer_window -= len(now)
            self.stream_windows[stream_id] = self.stream_windows.get(stream_id, self.peer_initial) - len(now)
            step = self.max_frame
            out = b"".join(frame(DATA, 0, stream_id, now[i : i + step]) for i in range(0, len(now), step))
            if rest:
                self.pending[stream_id] = (rest, end)
            else:
                del self.pending[stream_id]
                self.stream_windows.pop(stream_id, None)
                out += frame(HEADERS, END_HEADERS | END_STREAM, stream_id, end)
            self._write(out)

    def _maybe_close(self) -> None:
        if self.closing and not self.streams and not self.pending and not self.out and self.transport is not None:
            self.transport.close()


class GrpcH2Server:
    """Listens on ``host:port`` and answers ``method`` (``/package.Service/Method``) with ``handler``."""

    def __init__(self, method: str, handler: Handler):
        self.method = method
        self.handler = handler
        self.server: asyncio.Server | None = None
        self.connections: set[GrpcH2Protocol] = set()

    def _protocol(self) -> GrpcH2Protocol:
        made = GrpcH2Protocol(self.method, self.handler, self.connections.discard)
        self.connections.add(made)
        return made

    async def start(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        # several processes may listen on one port: the kernel spreads connections over them
        self.server = await loop.create_server(self._protocol, host, port, reuse_port=True)
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self, grace: float = 1.0) -> None:
        """Stops accepting, tells each client to go away, and closes once its calls are answered
        (or after ``grace`` seconds)."""
        if self.server is None:
            return
        self.server.close()
        for conn in list(self.connections):
            conn.closing = True
            if conn.transport is not None and not conn.transport.is_closing():
                conn.transport.write(frame(GOAWAY, 0, 0, struct.pack(">II", 0x7FFF_FFFF, 0)))
                conn._maybe_close()
        deadline = asyncio.get_running_loop().time() + grace
        while self.connections and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        await self.server.wait_closed()
