"""``python -m controlplane run``: the whole gateway with one command, stopped by Ctrl-C.

The README's session and the requests ``run`` prints are executed here as written (in a
shell, with the virtualenv's ``python`` first on PATH, as in a second terminal with the
virtualenv active) against a real ``run``, and what each comment claims is checked.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.harness import free_port, raw_request
from tests.xds_harness import REPO, http_get, wait_for

pytestmark = pytest.mark.envoy


@dataclass
class Run:
    """A ``run`` process in its own process group (as a shell starts it), its output collected."""

    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    @classmethod
    def start(cls, *args: str, cwd: Path) -> Run:
        proc = subprocess.Popen(
            [sys.executable, "-m", "controlplane", "run", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=cwd,
            start_new_session=True,
        )
        run = cls(proc)
        threading.Thread(target=run._read, daemon=True).start()
        return run

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()
        with self.changed:
            self.lines.append("")  # end of output
            self.changed.notify_all()

    def wait_for_line(self, needle: str, timeout: float = 60) -> int:
        """Index of the first line containing ``needle``; fails at the end of output or timeout."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                for i, line in enumerate(self.lines):
                    if needle in line:
                        return i
                if self.lines and self.lines[-1] == "":
                    raise AssertionError(f"{needle!r} never printed:\n{self.output}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{needle!r} not printed within {timeout}s:\n{self.output}")
                self.changed.wait(remaining)

    def read_all(self, timeout: float = 30) -> str:
        """The whole output, once the process has closed it."""
        with self.changed:
            self.changed.wait_for(lambda: bool(self.lines) and self.lines[-1] == "", timeout)
        return self.output

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def ctrl_c(self) -> int:
        """What Ctrl-C in a terminal does: SIGINT to the whole process group."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                os.killpg(self.proc.pid, signal.SIGKILL)


@dataclass
class Ports:
    listener: int
    backend: int
    xds: int
    admin: int
    envoy_admin: int

    @classmethod
    def free(cls) -> Ports:
        return cls(free_port(), free_port(), free_port(), free_port(), free_port())

    def args(self) -> list[str]:
        return [
            "--backend-port",
            str(self.backend),
            "--xds-port",
            str(self.xds),
            "--admin-port",
            str(self.admin),
            "--envoy-admin-port",
            str(self.envoy_admin),
        ]


def test_run_serves_the_examples_and_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    ports = Ports.free()
    (tmp_path / "policy.yaml").write_text(
        f"""apiVersion: controlplane.dev/v1
kind: GatewayPolicy
listeners: [{{name: public, address: 127.0.0.1, port: {ports.listener}}}]
upstreams: [{{name: sample, endpoints: ["127.0.0.1:{ports.backend}"]}}]
apis: [{{name: orders, spec: {REPO}/specs/orders.openapi.yaml, upstream: sample}}]
"""
    )
    run = Run.start(str(tmp_path), *ports.args(), cwd=tmp_path)
    try:
        run.wait_for_line("gateway ready")
        assert f"http://127.0.0.1:{ports.listener}" in run.output
        resp = raw_request(ports.listener, b"GET /api/orders/42 HTTP/1.1\r\nHost: t\r\nX-User-Id: evil\r\n\r\n")
        assert resp.status == 200 and b"x-user-id" not in resp.body.lower()
        assert raw_request(ports.listener, b"GET /api/orders/abc HTTP/1.1\r\nHost: t\r\n\r\n").status == 404
        status = wait_for(lambda: http_get(ports.admin, "/status"), 10, "control plane status")
        assert b"gateway-1" in status[1] and b'"identity": "certificate"' in status[1]  # mTLS by default
    finally:
        code = run.ctrl_c()
    assert code == 0, run.output
    assert "Traceback" not in run.output and "KeyboardInterrupt" not in run.output, run.output
    for port in (ports.listener, ports.envoy_admin, ports.admin, ports.backend):
        with pytest.raises(OSError):
            http_get(port, "/")


def test_run_starts_a_sidecar_for_the_sample_backend_of_a_mesh(tmp_path: Path) -> None:
    """With mesh.backends whose application is the sample backend, run starts its sidecar: the
    gateway reaches the backend only through it, over mTLS with workload certificates."""
    ports = Ports.free()
    sidecar = free_port()
    (tmp_path / "policy.yaml").write_text(
        f"""apiVersion: controlplane.dev/v1
kind: GatewayPolicy
listeners: [{{name: public, address: 127.0.0.1, port: {ports.listener}}}]
upstreams: [{{name: sample, endpoints: ["127.0.0.1:{sidecar}"]}}]
apis: [{{name: orders, spec: {REPO}/specs/orders.openapi.yaml, upstream: sample}}]
mesh:
  trustDomain: run.local
  backends: [{{name: sample, upstream: sample, address: 127.0.0.1, port: {sidecar}, app: "127.0.0.1:{ports.backend}"}}]
"""
    )
    run = Run.start(str(tmp_path), *ports.args(), cwd=tmp_path)
    try:
        run.wait_for_line("gateway ready")
        assert "mesh: sidecar of sample" in run.output
        resp = wait_for(
            lambda: (
                (r := raw_request(ports.listener, b"GET /api/orders/42 HTTP/1.1\r\nHost: t\r\n\r\n")).status == 200
                and r
            ),
            20,
            "a request through the sidecar",
        )
        assert b"URI=spiffe://run.local/gateway/gateway" in resp.body  # the sidecar says who called
        # straight to the sidecar without the gateway's certificate: no answer
        with pytest.raises((OSError, ValueError)):
            raw_request(sidecar, b"GET /api/orders/42 HTTP/1.1\r\nHost: t\r\n\r\n")
    finally:
        code = run.ctrl_c()
    assert code == 0, run.output
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", sidecar), timeout=2)


# -- the README's session and the printed hints, executed --------------------------------------


@dataclass
class Example:
    run: Run
    ports: Ports


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Example]:
    """``run specs/`` as the README says, on free ports: a copy of specs/ whose backend
    endpoint is the sample backend's port, and ``--port`` for the gateway."""
    ports = Ports.free()
    specs = tmp_path_factory.mktemp("run") / "specs"
    shutil.copytree(REPO / "specs", specs)
    policy = specs / "gateway.policy.yaml"
    text = policy.read_text().replace("127.0.0.1:9000", f"127.0.0.1:{ports.backend}")
    policy.write_text(text.replace("127.0.0.1:18081", f"127.0.0.1:{free_port()}"))  # the rate-limit service
    run = Run.start("specs/", "--port", str(ports.listener), *ports.args(), cwd=specs.parent)
    try:
        run.wait_for_line("gateway ready")
        yield Example(run, ports)
    finally:
        run.ctrl_c()


def _shell(lines: list[str]) -> list[str]:
    """Run the lines in one bash session (as typed in a terminal with the virtualenv active);
    the output of each line, in order."""
    marker = "=====LINE-END====="
    script = "".join(f"{line}\necho; echo {marker}\n" for line in lines)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split(marker + "\n")[: len(lines)]


def _response(output: str) -> tuple[int, dict[str, str], str]:
    """(status, headers, body) from the output of ``curl -i`` (the last response)."""
    head, _, body = output.replace("\r\n", "\n").rpartition("HTTP/")[2].partition("\n\n")
    first, *rest = head.split("\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in rest)}
    return int(first.split()[1]), headers, body


def _check_claims(command: str, comment: str, output: str) -> None:
    """What a comment says about its request, checked against what happened."""
    if m := re.match(r"429 after (\d+) requests", comment):
        # (the README's session may have spent this minute's budget already: a window may also end
        # between the requests, hence at most twice the limit)
        statuses = output.split()
        assert "429" in statuses and statuses.count("200") <= 2 * int(m[1]), f"{command}\n{output}"
        return
    if not command.startswith("curl"):
        if "SYNCED" in comment:
            assert re.search(r"\bSYNCED\b", output), output
        return
    status, headers, body = _response(output)
    claims = 0
    if m := re.match(r"(\d{3})\b", comment):
        assert status == int(m[1]), f"{command}  # {comment}\n{output}"
        claims += 1
    if m := re.search(r"Allow: ([A-Z, ]+[A-Z])", comment):
        assert headers.get("allow") == m[1], f"{command}\n{output}"
        claims += 1
    if "WWW-Authenticate: Bearer" in comment:
        assert headers.get("www-authenticate", "").startswith("Bearer"), output
        claims += 1
    echoed = json.loads(body)["headers"] if "sees" in comment or "echo" in comment or "still" in comment else {}
    if m := re.search(r"(?:sees|shows) (?:X-User-Id|x-user-id): (\w+)|still (\w+)", comment):
        assert echoed.get("x-user-id") == (m[1] or m[2]), f"{command}\n{output}"
        claims += 1
    if "shows no x-user-id" in comment:
        assert "x-user-id" not in echoed, output
        claims += 1
    assert claims, f"nothing checkable in the comment of {command!r}: {comment!r}"


def _readme_session() -> list[tuple[str, str]]:
    """(command, comment) of the README's session after ``run specs/``."""
    text = (REPO / "README.md").read_text()
    block = next(b for b in re.findall(r"```sh\n(.*?)```", text, re.S) if "curl" in b and "controlplane.idp" in b)
    out = []
    for line in block.strip().splitlines():
        command, _, comment = line.partition("  # ")
        out.append((command.strip(), comment.strip()))
    return out


def test_the_readme_session_does_what_its_comments_say(example: Example) -> None:
    session = _readme_session()
    assert len([c for c, _ in session if c.startswith("curl")]) >= 8
    p = example.ports
    commands = [
        command.replace("localhost:8080", f"localhost:{p.listener}")
        .replace("127.0.0.1:18001", f"127.0.0.1:{p.admin}")
        # -i to see the status each comment names; -s keeps the progress meter out
        .replace("curl -s ", "curl -si ")
        .replace("curl -i ", "curl -si ")
        for command, _ in session
    ]
    outputs = _shell(commands)
    for (command, comment), output in zip(session, outputs, strict=True):
        if comment:
            _check_claims(command, comment, output)


def test_the_requests_run_prints_do_what_they_say(example: Example) -> None:
    lines = example.run.output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("try, in a second terminal"))
    hints = []
    for line in lines[start + 1 :]:
        if not line.startswith("  "):
            break
        command, _, comment = line.strip().partition("  # ")
        hints.append((command.strip(), comment.strip()))
    kinds = {comment[:3] for _command, comment in hints}
    assert {"200", "401", "404", "405", "429"} <= kinds, hints  # each kind of answer is shown
    assert any("TOKEN=" in command for command, _ in hints)
    outputs = _shell([c.replace("curl -i ", "curl -si ") for c, _ in hints])
    for (command, comment), output in zip(hints, outputs, strict=True):
        _check_claims(command, comment, output)


# -- readiness and ports ---------------------------------------------------------------------


def test_a_gateway_port_in_use_is_an_error_naming_it(tmp_path: Path) -> None:
    ports = Ports.free()
    (tmp_path / "policy.yaml").write_text(
        f"""apiVersion: controlplane.dev/v1
kind: GatewayPolicy
listeners: [{{name: public, address: 127.0.0.1, port: {ports.listener}}}]
upstreams: [{{name: sample, endpoints: ["127.0.0.1:{ports.backend}"]}}]
apis: [{{name: orders, spec: {REPO}/specs/orders.openapi.yaml, upstream: sample}}]
"""
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports.listener))
        taken.listen()
        run = Run.start(str(tmp_path), *ports.args(), cwd=tmp_path)
        try:
            code = run.proc.wait(60)
        finally:
            run.ctrl_c()
    output = run.read_all()
    assert code == 1, output
    assert f"run: port {ports.listener} (listener 'public' of the gateway) is in use by another program" in output
    assert "gateway ready" not in output


def test_ready_means_served_not_only_envoy_alive(tmp_path: Path) -> None:
    """Envoy is LIVE but refuses a listener it cannot bind: the gateway is not ready."""
    ports = Ports.free()
    (tmp_path / "policy.yaml").write_text(
        f"""apiVersion: controlplane.dev/v1
kind: GatewayPolicy
listeners: [{{name: public, address: 192.0.2.1, port: {ports.listener}}}]
upstreams: [{{name: sample, endpoints: ["127.0.0.1:{ports.backend}"]}}]
apis: [{{name: orders, spec: {REPO}/specs/orders.openapi.yaml, upstream: sample}}]
"""
    )
    run = Run.start(str(tmp_path), *ports.args(), cwd=tmp_path)
    try:
        refused = run.wait_for_line("Envoy refused the listeners")
        assert "cannot bind '192.0.2.1" in run.lines[refused]
        wait_for(lambda: http_get(ports.envoy_admin, "/ready")[1].strip() == b"LIVE", 30, "Envoy LIVE")
        # the banner is printed by the loop that reported the refusal, only once a request is served
        assert "gateway ready" not in run.output
    finally:
        run.ctrl_c()
