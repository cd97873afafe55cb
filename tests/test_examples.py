"""The bundled examples (specs/) and the example bootstraps (envoy/) stay true."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from controlplane import compile
from tests.conftest import REPO
from tests.harness import envoy_validate_file

# envoy/<file> ← the command that produces it (run from the repository root)
EXAMPLE_BOOTSTRAPS = {
    "gateway.static.yaml": ["dump", "--bootstrap", "specs/"],
    "gateway.xds.yaml": [
        "bootstrap",
        "--node-id",
        "gateway-1",
        "--cluster",
        "gateway",
        "--xds-address",
        "127.0.0.1:18000",
        "--insecure",
    ],
}


def test_examples_are_clean_even_in_strict_mode() -> None:
    result = compile([REPO / "specs"], strict=True)
    assert result.ok, "\n".join(map(str, result.diagnostics))
    assert not result.errors + result.warnings  # only the note of what was read
    gw = result.gateway
    assert gw is not None
    apis = {op.api for lst in gw.listeners for p in lst.paths for op in p.operations}
    assert apis == {"orders", "petstore", "catalog"}


@pytest.mark.envoy
@pytest.mark.parametrize("name", sorted(EXAMPLE_BOOTSTRAPS))
def test_example_bootstraps_are_current_and_valid(name: str, request: pytest.FixtureRequest) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "controlplane", *EXAMPLE_BOOTSTRAPS[name]],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = REPO / "envoy" / name
    if request.config.getoption("--update-goldens"):
        path.write_text(out)
    assert path.read_text() == out, f"envoy/{name} is stale: run pytest --update-goldens"
    proc = envoy_validate_file(path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_example_file_is_used() -> None:
    result = compile([REPO / "specs"])
    used = {Path(d.path) for d in result.documents}
    files = {p.resolve() for p in (REPO / "specs").rglob("*") if p.suffix in (".yaml", ".yml", ".json")}
    assert files <= used, sorted(map(str, files - used))
