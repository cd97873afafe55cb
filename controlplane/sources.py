"""Sources: turning paths given by a user into a bundle of documents.

Files and directories are the only source today; a Kubernetes watcher or a push API
will produce the same :class:`Bundle`. A directory contributes the YAML and JSON files
directly inside it (not sub-directories: those usually hold the pieces of multi-file
specs, which are reached through ``$ref`` or a policy's ``spec``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .documents import Document, DocumentStore, display_name
from .errors import Diagnostics
from .model.openapi import spec_version
from .model.policy import is_policy

SUFFIXES = (".yaml", ".yml", ".json")


@dataclass
class Bundle:
    store: DocumentStore
    specs: list[Document] = field(default_factory=list)  # OpenAPI documents given directly
    policies: list[Document] = field(default_factory=list)


def collect(paths: list[str | Path], diags: Diagnostics) -> Bundle:
    bundle = Bundle(DocumentStore(diags))
    seen: set[Path] = set()
    for given in paths:
        path = Path(given)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
            explicit = False
        elif path.exists():
            files, explicit = [path], True
        else:
            diags.error("no such file or directory", display_name(path.absolute()), "", "missing-input")
            continue
        for file in files:
            resolved = file.resolve()
            if resolved in seen:
                continue
            seen.add(resolved)
            doc = bundle.store.load(resolved)
            if doc is None:
                continue
            if is_policy(doc.data):
                bundle.policies.append(doc)
            elif spec_version(doc.data) is not None:
                bundle.specs.append(doc)
            elif explicit:
                diags.error(
                    "neither an OpenAPI document (no 'openapi' or 'swagger' key) nor a gateway policy "
                    "(no 'kind: GatewayPolicy')",
                    doc.name,
                    "",
                    "unknown-document",
                )
    if not bundle.specs and not bundle.policies and not diags.has_errors():
        diags.error("no OpenAPI documents or gateway policies found", ", ".join(map(str, paths)), "", "no-input")
    return bundle
