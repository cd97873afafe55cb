"""``python -m controlplane run``: the whole gateway with one command, stopped by Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.harness import free_port, raw_request
from tests.xds_harness import REPO, http_get, wait_for

pytestmark = pytest.mark.envoy


def test_run_serves_the_examples_and_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    listener, backend, envoy_admin = free_port(), free_port(), free_port()
    xds, admin = free_port(), free_port()
    (tmp_path / "policy.yaml").write_text(
        f"""apiVersion: controlplane.dev/v1
kind: GatewayPolicy
listeners: [{{name: public, address: 127.0.0.1, port: {listener}}}]
upstreams: [{{name: sample, endpoints: ["127.0.0.1:{backend}"]}}]
apis: [{{name: orders, spec: {REPO}/specs/orders.openapi.yaml, upstream: sample}}]
"""
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "controlplane",
            "run",
            str(tmp_path),
            "--backend-port",
            str(backend),
            "--xds-port",
            str(xds),
            "--admin-port",
            str(admin),
            "--envoy-admin-port",
            str(envoy_admin),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "gateway ready" in line or not line:
                break
        assert any("gateway ready" in line for line in lines), "".join(lines)
        assert f"http://127.0.0.1:{listener}" in "".join(lines)
        resp = raw_request(listener, b"GET /api/orders/42 HTTP/1.1\r\nHost: t\r\nX-User-Id: evil\r\n\r\n")
        assert resp.status == 200 and b"x-user-id" not in resp.body.lower()
        assert raw_request(listener, b"GET /api/orders/abc HTTP/1.1\r\nHost: t\r\n\r\n").status == 404
        status = wait_for(lambda: http_get(admin, "/status"), 10, "control plane status")
        assert b"gateway-1" in status[1] and b'"identity": "certificate"' in status[1]  # mTLS by default
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, "".join(lines) + out
    for port in (listener, envoy_admin, admin, backend):
        with pytest.raises(OSError):
            http_get(port, "/")
