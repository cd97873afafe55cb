"""``compile()``: the one path from input files to Envoy resources.

The CLI and the xDS server both call it; neither adds logic of its own.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import ir
from .build import build
from .documents import Document, gc_paused, locate
from .errors import Diagnostic, Diagnostics, InputError, Severity, WithDiagnostics
from .resources import Resources
from .sources import Pushed, collect
from .translate import translate


@dataclass(frozen=True)
class CompileResult(WithDiagnostics):
    gateway: ir.Gateway | None
    resources: Resources | None
    diagnostics: list[Diagnostic] = field(default_factory=list)
    documents: tuple[Document, ...] = ()

    @property
    def ok(self) -> bool:
        return self.resources is not None

    def raise_for_errors(self) -> None:
        if not self.ok:
            raise InputError(self.diagnostics)


def _finish(diags: Diagnostics, docs: list[Document], strict: bool) -> list[Diagnostic]:
    items = [d.as_error() if strict else d for d in diags.items]
    items = locate(items, {d.name: d for d in docs})
    unique = list(dict.fromkeys(items))
    unique.sort(key=lambda d: (d.severity is not Severity.ERROR, d.file, d.line or 0, d.pointer, d.message))
    return unique


def compile(
    paths: Sequence[str | Path],
    *,
    strict: bool = False,
    full_validation: bool = False,
    use_cache: bool = True,
    fetched: Mapping[str, str] | None = None,
    listener_port: int | None = None,
    pushed: Sequence[Pushed] = (),
) -> CompileResult:
    """Compile specs and policies into Envoy resources.

    ``full_validation`` also runs openapi-spec-validator over every served spec (cached by
    content hash); ``strict`` implies it and turns every finding into an error.
    ``fetched`` are the texts the control plane fetched itself: the keys of providers with
    ``jwks.fetch: controlplane`` (provider name → JWKS JSON) and the last good copy of each URL
    reputation feed (``reputation:<feed>`` → the list; provider names have no colon). ``listener_port`` moves the
    one listener the inputs define to that port (``run --port``). ``pushed``: the APIs
    pipelines pushed (``controlplane.push``), which replace the specs the policies name.
    """
    with gc_paused():
        return _compile(paths, strict, full_validation, use_cache, fetched or {}, listener_port, pushed)


def _on_port(gateway: ir.Gateway, port: int, diags: Diagnostics) -> ir.Gateway:
    if len(gateway.listeners) != 1:
        names = ", ".join(lst.name for lst in gateway.listeners)
        diags.error(f"--port needs one listener; the inputs define {len(gateway.listeners)} ({names})", "--port")
        return gateway
    return dataclasses.replace(gateway, listeners=(dataclasses.replace(gateway.listeners[0], port=port),))


def _compile(
    paths: Sequence[str | Path],
    strict: bool,
    full_validation: bool,
    use_cache: bool,
    jwks: Mapping[str, str],
    listener_port: int | None = None,
    pushed: Sequence[Pushed] = (),
) -> CompileResult:
    diags = Diagnostics()
    bundle = collect(list(paths), diags, pushed)
    gateway = build(bundle, diags, jwks)
    if gateway is not None and listener_port is not None:
        gateway = _on_port(gateway, listener_port, diags)
    # Pushed specs are always validated fully (cached by content: once per version pushed):
    # a pipeline learns of a schema error from its push, not from a later background check.
    confined = bundle.store.confined
    # A pushed document referring outside its files is an error, and then nothing is
    # validated: the validator resolves references itself and must not read (or fetch) them.
    escaped = bool(confined) and not bundle.store.check_confined()
    if (strict or full_validation or confined) and not escaped:
        from .model.openapi import spec_version
        from .model.validation import validate

        roots = [d for d in bundle.store if spec_version(d.data) not in (None, "unsupported")]
        if not (strict or full_validation):
            roots = [d for d in roots if any(d.path.is_relative_to(r) for r in confined)]
        lineages = {p.root.resolve(): f"push:{p.api}" for p in pushed}
        for doc in sorted(roots, key=lambda d: d.name):
            lineage = next((name for r, name in lineages.items() if doc.path.is_relative_to(r)), None)
            diags.extend(validate(bundle.store, doc, use_cache=use_cache, lineage=lineage))
    docs = list(bundle.store)
    located = _finish(diags, docs, strict)
    if any(d.severity is Severity.ERROR for d in located) or gateway is None:
        return CompileResult(None, None, located, tuple(docs))
    return CompileResult(gateway, translate(gateway), located, tuple(docs))
