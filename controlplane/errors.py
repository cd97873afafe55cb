"""Diagnostics and the one exception hierarchy of the control plane.

::

    ControlPlaneError                 base of everything we raise on purpose
    ├── InputError                    bad specs or policies; carries every Diagnostic found
    ├── EnvoyRejectedError            Envoy refused a generated configuration
    └── CounterUnavailableError       Redis did not count (ratelimit/store.py: redis errors mapped there)

Third-party exceptions (PyYAML, json, jsonschema, protobuf) are caught at the boundary
where they arise and turned into a :class:`Diagnostic` with a location, so that a user
never sees a traceback for bad input.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Severity(enum.Enum):
    ERROR = "error"
    WARNING = "warning"
    NOTE = "note"  # information about the run (what was read), never a finding; --strict leaves it


def escape_pointer_token(token: str | int) -> str:
    """One JSON-pointer reference token (RFC 6901)."""
    return str(token).replace("~", "~0").replace("/", "~1")


def pointer(*tokens: str | int) -> str:
    return "".join("/" + escape_pointer_token(t) for t in tokens)


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One finding about one place in one input file."""

    message: str
    file: str = ""
    pointer: str = ""  # JSON pointer inside ``file`` ("" is the whole document)
    line: int | None = None  # 1-based, filled in lazily from ``pointer`` when known
    severity: Severity = Severity.ERROR
    code: str = ""  # short stable identifier, e.g. "route-conflict"
    column: int | None = None  # 1-based, when the finding is about one character (YAML syntax)

    def location(self) -> str:
        where = self.file or "<input>"
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        if self.pointer:
            where += f" (#{self.pointer})"
        return where

    def __str__(self) -> str:
        code = f" [{self.code}]" if self.code else ""
        return f"{self.location()}: {self.severity.value}{code}: {self.message}"

    def as_error(self) -> Diagnostic:
        if self.severity is Severity.NOTE:
            return self
        return Diagnostic(self.message, self.file, self.pointer, self.line, Severity.ERROR, self.code, self.column)


class WithDiagnostics:
    """``errors`` and ``warnings`` of anything that carries a ``diagnostics`` list."""

    diagnostics: list[Diagnostic]

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity is Severity.ERROR]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.diagnostics if d.severity is Severity.WARNING]


@dataclass
class Diagnostics:
    """Collects findings so that every error is reported at once."""

    items: list[Diagnostic] = field(default_factory=list)

    def error(self, message: str, file: str = "", ptr: str = "", code: str = "") -> None:
        self.items.append(Diagnostic(message, file, ptr, None, Severity.ERROR, code))

    def warning(self, message: str, file: str = "", ptr: str = "", code: str = "") -> None:
        self.items.append(Diagnostic(message, file, ptr, None, Severity.WARNING, code))

    def note(self, message: str, file: str = "", code: str = "") -> None:
        self.items.append(Diagnostic(message, file, "", None, Severity.NOTE, code))

    def add(self, diagnostic: Diagnostic) -> None:
        self.items.append(diagnostic)

    def extend(self, diagnostics: list[Diagnostic] | Diagnostics) -> None:
        self.items.extend(diagnostics.items if isinstance(diagnostics, Diagnostics) else diagnostics)

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.items if d.severity is Severity.ERROR]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.items if d.severity is Severity.WARNING]

    def has_errors(self) -> bool:
        return any(d.severity is Severity.ERROR for d in self.items)


def describe_value(value: Any, limit: int = 60) -> str:
    """A value as it may appear in a message: its repr when short, else what it is (a whole
    document printed as a Python dict helps nobody; the location says where it is)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    if isinstance(value, dict):
        # (a key with a line break or other control character is shown as repr shows it: one line)
        shown = [k if isinstance(k, str) and k.isprintable() else repr(k) for k in list(value)[:4]]
        keys = ", ".join(shown) + (", …" if len(value) > 4 else "")
        return f"an object with {len(value)} key(s) ({keys})"
    if isinstance(value, list):
        return f"a list of {len(value)} item(s)"
    if isinstance(value, str):
        return repr(value[: limit - 5]) + "…"
    return text[:limit] + "…"


def shorten_message(message: str, value: Any, limit: int = 60) -> str:
    """``message`` with a long leading repr of ``value`` (as jsonschema writes them) described instead."""
    text = repr(value)
    if len(text) > limit and message.startswith(text):
        return describe_value(value, limit) + message[len(text) :]
    return message


def grouped(diagnostics: list[Diagnostic], keep: int = 3) -> list[tuple[Diagnostic, list[Diagnostic]]]:
    """Each diagnostic with the other places of the same finding (severity, code, message)
    when it occurs more than ``keep`` times; in order of the first occurrence. One finding
    repeated once per operation (a real spec: 1,318 warnings that were two messages) is
    read once, with a count and where it starts."""
    by_key: dict[tuple[Severity, str, str], list[Diagnostic]] = {}
    for d in diagnostics:
        by_key.setdefault((d.severity, d.code, d.message), []).append(d)
    out: list[tuple[Diagnostic, list[Diagnostic]]] = []
    for d in diagnostics:
        same = by_key[(d.severity, d.code, d.message)]
        if len(same) <= keep:
            out.append((d, []))
        elif same[0] is d:
            out.append((d, same[1:]))
    return out


class ControlPlaneError(Exception):
    """Base of every error the control plane raises on purpose."""


class InputError(ControlPlaneError):
    """The inputs are wrong; ``diagnostics`` holds every finding (errors and warnings)."""

    def __init__(self, diagnostics: list[Diagnostic]):
        self.diagnostics = diagnostics
        errors = [d for d in diagnostics if d.severity is Severity.ERROR]
        super().__init__(f"{len(errors)} error(s) in the input:\n" + "\n".join(str(d) for d in errors))


class EnvoyRejectedError(ControlPlaneError):
    """Envoy refused a configuration this control plane generated."""
