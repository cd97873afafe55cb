"""A minimal fast HTTP/1.1 backend and a keep-alive load client, each run as its own process.

Backend: ``python bench/_http.py backend PORT`` answers every request with a fixed 200
(Content-Length bodies are skipped; nothing is parsed beyond what framing needs).

Client: ``python bench/_http.py client PORT CONNECTIONS`` keeps CONNECTIONS connections
open and reads one JSON command a line on stdin::

    {"request": "GET /x HTTP/1.1\\r\\nHost: b\\r\\n\\r\\n", "count": 10000}

(or ``"requests": [...]`` to send them in turn), sends ``count`` requests (one in flight per
connection, no pipelining), then prints
``{"statuses": {...}, "wall": s, "reconnects": n, "sample": "<first response head>"}``.
Connections stay open between commands, so a measured run contains no connection setup.
"""

from __future__ import annotations

import asyncio
import json
import selectors
import socket
import sys
import time

RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok"


# -- backend -----------------------------------------------------------------------------------
class _Backend(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        answers = 0
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            length = _content_length(buf, end)
            if len(buf) < end + 4 + length:
                break
            buf = buf[end + 4 + length :]
            answers += 1
        self.buf = buf
        if answers:
            self.transport.write(RESPONSE * answers)  # type: ignore[attr-defined]


def _content_length(buf: bytes, end: int) -> int:
    i = buf.find(b"ontent-length:", 0, end)  # any case of the 'C'; Envoy sends lower case
    if i < 0:
        return 0
    j = buf.find(b"\r\n", i, end + 2)
    return int(buf[i + 14 : j])


def backend(port: int) -> None:
    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_Backend, "127.0.0.1", port, backlog=1024, reuse_address=True)
        print("ready", flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


# -- client ------------------------------------------------------------------------------------
def _response_end(buf: bytes) -> tuple[int, int] | None:
    """(status, length of the first complete response in buf), or None if incomplete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    status = int(buf[9:12])
    head = buf[:end].lower()
    i = head.find(b"content-length:")
    if i >= 0:
        j = head.find(b"\r\n", i)
        length = int(head[i + 15 : j if j >= 0 else end])
        total = end + 4 + length
        return (status, total) if len(buf) >= total else None
    if b"transfer-encoding: chunked" in head:
        k = buf.find(b"0\r\n\r\n", end + 4)
        return (status, k + 5) if k >= 0 else None
    return status, end + 4


class _Client:
    def __init__(self, port: int, connections: int):
        self.port = port
        self.sel = selectors.DefaultSelector()
        self.socks: list[socket.socket] = []
        self.reconnects = 0
        for _ in range(connections):
            self.socks.append(self._connect())

    def _connect(self) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sel.register(s, selectors.EVENT_READ)
        return s

    def run(self, request: bytes | list[bytes], count: int) -> dict[str, object]:
        """Send ``count`` requests: ``request`` each time, or the list's entries in turn."""
        requests = request if isinstance(request, list) else [request]
        turn = 0

        def next_request() -> bytes:
            nonlocal turn
            turn += 1
            return requests[(turn - 1) % len(requests)]

        statuses: dict[int, int] = {}
        bufs = {s: b"" for s in self.socks}
        busy = {s: False for s in self.socks}
        sent = 0
        done = 0
        sample = None
        t0 = time.perf_counter()
        for s in list(self.socks):
            if sent < count:
                s.sendall(next_request())
                busy[s] = True
                sent += 1
        while done < count:
            for key, _ in self.sel.select():
                s = key.fileobj
                assert isinstance(s, socket.socket)
                data = s.recv(262144)
                if not data:  # closed by the server: reconnect and resend what was in flight
                    self.sel.unregister(s)
                    s.close()
                    n = self._connect()
                    self.socks[self.socks.index(s)] = n
                    del bufs[s]
                    bufs[n] = b""
                    busy[n] = busy.pop(s)
                    self.reconnects += 1
                    if busy[n]:
                        n.sendall(next_request())
                    continue
                buf = bufs[s] + data
                while True:
                    found = _response_end(buf)
                    if found is None:
                        break
                    status, length = found
                    if sample is None:
                        sample = buf[:length].decode("latin-1")
                    buf = buf[length:]
                    statuses[status] = statuses.get(status, 0) + 1
                    done += 1
                    busy[s] = False
                    if sent < count:
                        s.sendall(next_request())
                        busy[s] = True
                        sent += 1
                bufs[s] = buf
        return {"statuses": statuses, "wall": time.perf_counter() - t0, "reconnects": self.reconnects, "sample": sample}


def client(port: int, connections: int) -> None:
    c = _Client(port, connections)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        request = (
            [r.encode("latin-1") for r in cmd["requests"]] if "requests" in cmd else cmd["request"].encode("latin-1")
        )
        out = c.run(request, int(cmd["count"]))
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "backend":
        backend(int(sys.argv[2]))
    elif sys.argv[1] == "client":
        client(int(sys.argv[2]), int(sys.argv[3]))
    else:
        raise SystemExit(__doc__)
