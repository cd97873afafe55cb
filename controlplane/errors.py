"""Diagnostics and the one exception hierarchy of the control plane.

::

    ControlPlaneError                 base of everything we raise on purpose
    ├── InputError                    bad specs or policies; carries every Diagnostic found
    └── EnvoyRejectedError            Envoy refused a generated configuration

Third-party exceptions (PyYAML, json, jsonschema, protobuf) are caught at the boundary
where they arise and turned into a :class:`Diagnostic` with a location, so that a user
never sees a traceback for bad input.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Severity(enum.Enum):
    ERROR = "error"
    WARNING = "warning"


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

    def location(self) -> str:
        where = self.file or "<input>"
        if self.line is not None:
            where += f":{self.line}"
        if self.pointer:
            where += f" (#{self.pointer})"
        return where

    def __str__(self) -> str:
        code = f" [{self.code}]" if self.code else ""
        return f"{self.location()}: {self.severity.value}{code}: {self.message}"

    def as_error(self) -> Diagnostic:
        return Diagnostic(self.message, self.file, self.pointer, self.line, Severity.ERROR, self.code)


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
