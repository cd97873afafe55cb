"""A push's dry run, in the compile worker: would it compile, and what would it change."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .. import diff
from ..compiler import compile
from ..sources import Pushed


def preview(
    paths: Sequence[str],
    served: Sequence[Pushed],
    candidate: Sequence[Pushed],
    jwks: dict[str, str],
    listener_port: int | None,
) -> dict[str, Any]:
    """``{"ok", "errors", "warnings", "diff"}``: the candidate's compile, and its changes from
    what is served (``diff``'s JSON, with the text and Markdown forms for people and PRs)."""
    new = compile(paths, fetched=jwks, listener_port=listener_port, pushed=candidate)
    out: dict[str, Any] = {
        "ok": new.ok,
        "errors": [str(d) for d in new.errors],
        "warnings": [str(d) for d in new.warnings],
        "diff": None,
    }
    if not new.ok or new.gateway is None:
        return out
    old = compile(paths, fetched=jwks, listener_port=listener_port, pushed=served)
    if old.gateway is None:  # what is served no longer compiles from the files: no base to compare
        return out
    report = diff.diff(old.gateway, new.gateway)
    out["diff"] = {
        "security_relevant": len(report.security),
        "changes": [c.as_json() for c in report.changes],
        "text": diff.text(report),
        "markdown": diff.markdown(report),
    }
    return out
