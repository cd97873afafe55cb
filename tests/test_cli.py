"""The command line, run as users run it: a subprocess, exit codes, stdout and stderr."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controlplane", *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_validate_ok_prints_a_summary() -> None:
    proc = run("validate", "specs/")
    assert proc.returncode == 0, proc.stderr
    assert "ok: 1 listener(s), 22 operation route(s), 1 upstream(s)" in proc.stderr


@pytest.mark.envoy
def test_validate_with_envoy() -> None:
    proc = run("validate", "specs/", "--envoy")
    assert proc.returncode == 0, proc.stderr
    assert "envoy accepts the generated configuration" in proc.stderr


def test_validate_reports_every_error_with_location_and_exits_1(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        "apiVersion: controlplane.dev/v1\nkind: GatewayPolicy\nlisteners:\n  - name: l\n    port: 80\n    colour: red\n"
        "apis:\n  - name: a\n    spec: missing.yaml\n"
    )
    proc = run("validate", str(tmp_path / "p.yaml"), cwd=tmp_path)
    assert proc.returncode == 1
    assert "p.yaml:6 (#/listeners/0/colour): error [policy-schema]: unknown key 'colour'" in proc.stderr
    assert "p.yaml:9 (#/apis/0/spec): error [unreadable-file]: cannot read missing.yaml" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("kind", "field"),
    [
        ("listeners", "filter_chains"),
        ("routes", "virtual_hosts"),
        ("clusters", "connect_timeout"),
        ("endpoints", "cluster_name"),
    ],
)
def test_dump_one_type(kind: str, field: str) -> None:
    proc = run("dump", "specs/", "--type", kind, "-o", "json")
    assert proc.returncode == 0, proc.stderr
    resources = json.loads(proc.stdout)
    assert resources and all(field in r for r in resources)


def test_dump_all_types_as_yaml() -> None:
    proc = run("dump", "specs/")
    assert proc.returncode == 0, proc.stderr
    data = yaml.safe_load(proc.stdout)
    assert list(data) == ["clusters", "endpoints", "listeners", "extensions", "scopes", "routes", "services", "secrets"]


def test_dump_ir_shows_resolved_settings_and_sources() -> None:
    proc = run("dump", "specs/", "--ir")
    data = yaml.safe_load(proc.stdout)
    ops = {op["name"]: op for lst in data["listeners"] for p in lst["paths"] for op in p["operations"]}
    assert ops["orders.exportOrders"]["timeout_ms"] == 120_000  # policy beats x-gateway (60s)
    assert ops["orders.createOrder"]["timeout_ms"] == 5_000  # x-gateway beats the upstream's 15s
    assert ops["orders.getOrder"]["source"] == {
        "file": "specs/orders.openapi.yaml",
        "pointer": "/paths/~1orders~1{orderId}/get",
    }


def test_bootstrap_needs_tls_or_insecure() -> None:
    proc = run("bootstrap", "--node-id", "n1", "--xds-address", "127.0.0.1:18000")
    assert proc.returncode == 2 and "--insecure" in proc.stderr
    bad = run("bootstrap", "--node-id", "n1", "--xds-address", "nonsense", "--insecure")
    assert bad.returncode == 2 and "HOST:PORT" in bad.stderr


@pytest.mark.envoy
def test_bootstrap_with_mtls_is_accepted_by_envoy(tmp_path: Path) -> None:
    from controlplane.certs import CertificateAuthority
    from tests.harness import envoy_validate_file

    ca = CertificateAuthority(tmp_path)
    client = ca.issue("gateway-1", client=True)
    proc = run(
        "bootstrap",
        "--node-id",
        "n1",
        "--xds-address",
        "xds.internal:18000",
        "--delta",
        "--tls-cert",
        str(client.cert),
        "--tls-key",
        str(client.key),
        "--tls-ca",
        str(ca.path),
    )
    assert proc.returncode == 0, proc.stderr
    config = yaml.safe_load(proc.stdout)
    ads = config["dynamic_resources"]["ads_config"]
    assert ads["api_type"] == "DELTA_GRPC"
    xds = config["static_resources"]["clusters"][0]
    assert xds["transport_socket"]["typed_config"]["sni"] == "xds.internal"
    path = tmp_path / "b.yaml"
    path.write_text(proc.stdout)
    assert envoy_validate_file(path).returncode == 0


def test_console_script_and_module_agree() -> None:
    script = Path(sys.executable).parent / "controlplane"
    assert script.exists(), "pip install -e . creates the controlplane console script"
    a = subprocess.run([str(script), "dump", "specs/", "--type", "routes"], cwd=REPO, capture_output=True, text=True)
    b = run("dump", "specs/", "--type", "routes")
    assert a.returncode == 0 and a.stdout == b.stdout
