"""``diff``: what a change of specs and policies does, security-relevant changes flagged first
and in the exit status. Each case edits a copy of the bundled examples (specs/) and compares it
with the untouched copy, as a CI job compares a pull request with main."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from controlplane import diff
from controlplane.compiler import compile

REPO = Path(__file__).resolve().parent.parent


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))


POLICY = "gateway.policy.yaml"
ORDERS = "orders.openapi.yaml"

# (what, the edit, a phrase the change must say, security-relevant)
CASES: list[tuple[str, Callable[[Path], None], str, bool]] = [
    (
        "public",
        lambda d: _replace(
            d / ORDERS, "operationId: exportOrders\n", "operationId: exportOrders\n      security: []\n"
        ),
        "now public: no token needed",
        True,
    ),
    (
        "role",
        lambda d: _replace(d / POLICY, "- roles: [customer]", "- roles: [customer, guest]"),
        "role(s) now also allowed: guest",
        True,
    ),
    (
        "authorization",
        lambda d: _replace(
            d / POLICY, '          operations: ["*"]\n', '          operations: ["*"]\n      dryRun: true\n'
        ),
        "authorization in dry run",
        True,
    ),
    (
        "limit-removed",
        lambda d: _replace(
            d / POLICY, "        rateLimits: [{name: search, by: ip, minute: 5}]", "        timeout: 5s"
        ),
        "rate limit search removed",
        True,
    ),
    (
        "limit-raised",
        lambda d: _replace(d / POLICY, "minute: 100, hour: 5000", "minute: 1000, hour: 5000"),
        "rate limit consumer raised: 100 → 1000 a minute",
        True,
    ),
    (
        "limit-lowered",
        lambda d: _replace(d / POLICY, "minute: 100, hour: 5000", "minute: 10, hour: 5000"),
        "rate limit consumer lowered: 100 → 10 a minute",
        False,
    ),
    (
        "allowlist-widened",
        lambda d: _replace(d / POLICY, "allow: [127.0.0.0/8, 203.0.113.0/24, 198.51.100.10]", "allow: [0.0.0.0/0]"),
        "client address allowlist widened: 0.0.0.0/0",
        True,
    ),
    (
        "allowlist-narrowed",
        lambda d: _replace(d / POLICY, "allow: [127.0.0.0/8, 203.0.113.0/24, 198.51.100.10]", "allow: [127.0.0.0/8]"),
        "client address allowlist narrowed",
        False,
    ),
    (
        "new-public-operation",
        lambda d: _replace(
            d / ORDERS,
            "  /orders/export:\n",
            "  /orders/debug:\n"
            "    get: {operationId: debugOrders, security: [], responses: {'200': {description: ok}}}\n"
            "  /orders/export:\n",
        ),
        "new operation, public: no token needed",
        True,
    ),
    (
        "timeout",
        lambda d: _replace(d / POLICY, "exportOrders: {timeout: 120s}", "exportOrders: {timeout: 90s}"),
        "timeout 120000 ms → 90000 ms",
        False,
    ),
    (
        "not-sensitive",
        lambda d: _replace(d / POLICY, "deleteAllOrders: {sensitive: true, ", "deleteAllOrders: {"),
        "no longer sensitive",
        True,
    ),
]


def copies(tmp_path: Path) -> tuple[Path, Path]:
    old, new = tmp_path / "old", tmp_path / "new"
    shutil.copytree(REPO / "specs", old)
    shutil.copytree(REPO / "specs", new)
    return old, new


def report_of(old: Path, new: Path) -> diff.Report:
    a, b = compile([str(old)]), compile([str(new)])
    assert a.ok and b.ok and a.gateway is not None and b.gateway is not None, (a.diagnostics, b.diagnostics)
    return diff.diff(a.gateway, b.gateway)


@pytest.mark.parametrize(("name", "edit", "phrase", "security"), CASES, ids=[c[0] for c in CASES])
def test_each_change_is_said_and_flagged_when_it_lets_more_through(
    tmp_path: Path, name: str, edit: Callable[[Path], None], phrase: str, security: bool
) -> None:
    old, new = copies(tmp_path)
    edit(new)
    report = report_of(old, new)
    said = [c for c in report.changes if phrase in c.what]
    assert said, [c.what for c in report.changes]
    assert all(c.security == security for c in said), said
    assert bool(report.security) == security, [c.what for c in report.security]


def test_waf_and_upstream_tls_changes(tmp_path: Path) -> None:
    old, new = copies(tmp_path)
    for side in (old, new):
        _replace(side / POLICY, "\napis:\n", "\nwaf: {mode: prevent}\n\napis:\n")
    _replace(
        new / POLICY, "      exportOrders: {timeout: 120s}", "      exportOrders: {timeout: 120s, waf: {mode: detect}}"
    )
    _replace(
        new / POLICY, "      searchCatalog:\n", "      searchCatalog:\n        waf: {exclude: {families: [sqli]}}\n"
    )
    report = report_of(old, new)
    flagged = {c.what for c in report.security}
    assert "WAF lowered to detect: attacks are logged, not refused" in flagged
    assert "WAF exclusions added: sqli" in flagged


def test_who_may_push_specs_widening_is_security_relevant(tmp_path: Path) -> None:
    old, new = copies(tmp_path)
    token = "a" * 64
    _replace(
        old / POLICY,
        "\napis:\n",
        f"\npush:\n  clients:\n    - {{name: ci, tokenSha256: {token}, apis: [orders]}}\n\napis:\n",
    )
    _replace(
        new / POLICY,
        "\napis:\n",
        f"\npush:\n  clients:\n    - {{name: ci, tokenSha256: {token}, apis: [orders, 'cat*']}}\n"
        f"    - {{name: other, subjectAltNames: [spiffe://x/y], apis: [orders]}}\n\napis:\n",
    )
    report = report_of(old, new)
    flagged = {(c.subject, c.what) for c in report.security}
    assert ("push client ci", "may now push apis cat*") in flagged
    assert ("push client other", "may push apis orders") in flagged
    narrowed = report_of(new, old)
    assert not narrowed.security and {c.what for c in narrowed.other} >= {"may no longer push"}


def test_the_same_inputs_moved_and_reordered_are_no_change(tmp_path: Path) -> None:
    old, new = copies(tmp_path)
    shutil.move(new / ORDERS, new / "catalog" / ORDERS)
    _replace(new / POLICY, f"spec: {ORDERS}", f"spec: catalog/{ORDERS}")
    assert report_of(old, new).changes == []


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controlplane", "diff", *args], capture_output=True, text=True, cwd=REPO, timeout=120
    )


def test_the_command_exits_1_on_security_relevant_changes_with_each_output(tmp_path: Path) -> None:
    old, new = copies(tmp_path)
    _replace(new / POLICY, "- roles: [customer]", "- roles: [customer, guest]")
    _replace(new / POLICY, "exportOrders: {timeout: 120s}", "exportOrders: {timeout: 90s}")
    text = run(str(old), "--", str(new))
    assert text.returncode == 1, text.stderr
    first, *rest = text.stdout.splitlines()
    # the rule's six operations in one line
    assert first.startswith("SECURITY-RELEVANT (1)") and "6 operations (orders.createOrder" in rest[0], text.stdout
    assert "role(s) now also allowed: guest" in rest[0] and "orders.openapi.yaml#/paths/" in rest[0]
    assert any(line.startswith("other changes") for line in rest)
    data = json.loads(run(str(old), "--", str(new), "-o", "json").stdout)
    assert data["security_relevant"] == 1
    assert {(c["security"], c["kind"]) for c in data["changes"]} == {(True, "changed"), (False, "changed")}
    md = run(str(old), "--", str(new), "-o", "markdown").stdout
    assert md.startswith("### :warning: 1 security-relevant change(s)") and "<details>" in md


def test_the_command_exits_0_without_security_relevant_changes(tmp_path: Path) -> None:
    old, new = copies(tmp_path)
    _replace(new / POLICY, "exportOrders: {timeout: 120s}", "exportOrders: {timeout: 90s}")
    proc = run(str(old), "--", str(new))
    assert proc.returncode == 0 and proc.stdout.startswith("other changes (1)"), proc.stdout
    assert run(str(old), "--", str(old)).stdout.strip() == "no change"


def test_inputs_that_do_not_compile_or_no_separator_exit_2(tmp_path: Path) -> None:
    old, new = copies(tmp_path)
    _replace(new / POLICY, "minute: 100, hour: 5000", "minute: many")
    broken = run(str(old), "--", str(new))
    assert broken.returncode == 2 and "the new inputs do not compile" in broken.stderr
    assert "gateway.policy.yaml" in broken.stderr  # the error is located
    assert run(str(old), str(new)).returncode == 2
