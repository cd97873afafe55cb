"""The same inputs give the same bytes in every process: a resource's bytes are its version, so
a restarted control plane must publish the versions its Envoys already have (and goldens must
not depend on the run)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

_DIGESTS = r"""
import hashlib, sys
from controlplane import compile
result = compile(sys.argv[1:])
for type_url, messages in sorted(result.resources.by_type.items()):
    for name, message in sorted(messages.items()):
        print(type_url, name, hashlib.sha256(message.SerializeToString(deterministic=True)).hexdigest())
"""


def _digests(*paths: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", _DIGESTS, *paths], capture_output=True, text=True, check=True, cwd=REPO, timeout=120
    )
    return proc.stdout


def test_every_resource_has_the_same_bytes_in_every_process() -> None:
    inputs = ("specs", "tests/golden/listener-options/input")
    first = [_digests(p) for p in inputs]
    for _ in range(3):  # the order of map entries packed into an Any varied from one process to the next
        assert [_digests(p) for p in inputs] == first
    assert "Listener" in first[0]
