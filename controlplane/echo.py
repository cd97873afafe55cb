"""A small echo backend: answers every request with JSON describing what it received.

Used as the sample backend of the bundled examples and by the traffic tests, which
assert on exactly what reached the backend (path, headers) through the gateway.
Run it with ``python -m controlplane.echo --port 9000``.

Tests steer one request's answer with request headers (the gateway forwards them):

- ``x-echo-status: 503`` answers with that status;
- ``x-echo-delay-ms: 500`` answers that much later (30 s at most);
- ``x-echo-hold: NAME`` answers once the test calls ``release(NAME)`` (30 s at most);
- ``x-echo-attempts: N`` applies the three above only to the first N requests with the same
  ``x-request-id``, so a retried request (Envoy keeps its id) succeeds on attempt N + 1;
- ``x-echo-response-header: Name: value`` (repeatable) adds that header to the response;
- ``x-echo-chunk-bytes: N`` sends the answer chunked (no ``Content-Length``), N bytes per
  chunk, each written on its own (``x-echo-chunk-delay-ms: M`` apart);
- ``x-echo-pad-bytes: N`` puts N bytes of padding (``"pad"``) before what was received.

With ``tls=(cert, key)`` it serves HTTPS and records the SNI name of each handshake.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import ssl
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HOLD_LIMIT_S = 30


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "EchoBackend/1.0"  # the gateway must hide this
    server: EchoServer

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        seen: dict[str, Any] = {
            "pad": "p" * min(int(self.headers.get("x-echo-pad-bytes") or 0), 64 << 20),
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "header_list": [[k.lower(), v] for k, v in self.headers.items()],
            "body": body.decode("utf-8", "replace"),
        }
        if isinstance(self.connection, ssl.SSLSocket):  # who connected (mTLS): the peer's subject
            peer: Any = self.connection.getpeercert() or {}
            seen["peer_subject"] = [v for rdn in peer.get("subject", ()) for k, v in rdn if k == "commonName"]
        self.server.received.append(seen)
        status = 200
        if self._steered():
            status = int(self.headers.get("x-echo-status") or 200)
            hold = self.headers.get("x-echo-hold")
            if hold:
                self.server.gate(hold).wait(HOLD_LIMIT_S)
            time.sleep(min(int(self.headers.get("x-echo-delay-ms") or 0) / 1000, HOLD_LIMIT_S))
        if self.path.rstrip("/").endswith("/healthz"):
            seen = {"status": "ok"}
        if not seen.get("pad"):
            seen.pop("pad", None)
        out = json.dumps(seen).encode()
        chunk = int(self.headers.get("x-echo-chunk-bytes") or 0)
        try:
            self.send_response(status)
            self.send_header("content-type", "application/json")
            if chunk > 0:
                self.send_header("transfer-encoding", "chunked")
            else:
                self.send_header("content-length", str(len(out)))
            self.send_header("x-powered-by", "EchoBackend")
            for extra in self.headers.get_all("x-echo-response-header") or []:
                name, _, value = extra.partition(":")
                self.send_header(name.strip(), value.strip())
            self.end_headers()
            if self.command == "HEAD":
                return
            if chunk <= 0:
                self.wfile.write(out)
                return
            for i in range(0, len(out), chunk):
                part = out[i : i + chunk]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.flush()
                time.sleep(min(int(self.headers.get("x-echo-chunk-delay-ms") or 0) / 1000, HOLD_LIMIT_S))
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            pass  # the gateway gave up on this attempt (a timeout): nobody reads the answer

    def _steered(self) -> bool:
        """Whether the x-echo-* controls apply to this request (see x-echo-attempts)."""
        limit = self.headers.get("x-echo-attempts")
        if limit is None:
            return True
        key = self.headers.get("x-request-id") or ""
        with self.server.lock:
            self.server.attempts[key] += 1
            return self.server.attempts[key] <= int(limit)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = do_TRACE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


class EchoServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, tls: tuple[str, str] | None = None, client_ca: str | None = None
    ):
        super().__init__((host, port), _Handler)
        self.received: list[dict[str, Any]] = []
        self.server_names: list[str | None] = []  # SNI of each TLS handshake
        self.attempts: Counter[str] = Counter()
        self.lock = threading.Lock()
        self._gates: dict[str, threading.Event] = {}
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            if client_ca is not None:  # mTLS: only clients with a certificate this CA signed
                context.verify_mode = ssl.CERT_REQUIRED
                context.load_verify_locations(client_ca)
            context.sni_callback = self._record_sni
            # the handshake runs in the request's thread, not in accept()
            self.socket = context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    def _record_sni(self, _sock: ssl.SSLObject, name: str | None, _context: ssl.SSLContext) -> None:
        self.server_names.append(name)

    def finish_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            try:
                request.do_handshake()
            except (ssl.SSLError, OSError):
                return  # the client refused our certificate
        super().finish_request(request, client_address)

    def gate(self, name: str) -> threading.Event:
        with self.lock:
            return self._gates.setdefault(name, threading.Event())

    def release(self, name: str) -> None:
        """Let every request held with ``x-echo-hold: name`` answer (and later ones at once)."""
        self.gate(name).set()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> EchoServer:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9000)
    args = p.parse_args()
    server = EchoServer(args.host, args.port)
    print(f"echo backend on http://{args.host}:{server.port}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
