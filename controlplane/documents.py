"""Loading YAML/JSON documents, resolving ``$ref`` across files, and finding lines.

Documents are parsed with PyYAML's C loader into plain Python objects: that is the fast
path every compile takes. Line numbers are only needed when something is wrong, so the
node tree (which knows lines) is composed lazily, once per document, on the first
request for a line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import os
import re
import sys
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urldefrag

import yaml
import yaml_rs

from .errors import Diagnostic, Diagnostics, Severity, escape_pointer_token

try:  # the C loader is several times faster; fall back so a broken libyaml is not fatal
    _BaseLoader: type[yaml.SafeLoader] = yaml.CSafeLoader  # type: ignore[assignment]
except AttributeError:  # pragma: no cover
    _BaseLoader = yaml.SafeLoader


class _Loader(_BaseLoader):  # type: ignore[misc,valid-type]
    """Safe loader with YAML 1.2 scalars: timestamps stay strings and only true/false are
    booleans, so keys such as ``on:`` (retries.on) and values such as ``no`` mean what they say."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:bool")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    """An integer, or a located error for one too long to convert (sys.get_int_max_str_digits)."""
    try:
        return yaml.SafeLoader.construct_yaml_int(loader, node)
    except ValueError:
        digits, limit = sum(c.isdigit() for c in node.value), sys.get_int_max_str_digits()
        problem = (
            f"{digits} digits is too many for a number"
            if limit and digits > limit
            else (f"{node.value!r} is not an integer")
        )
        raise yaml.constructor.ConstructorError(None, None, problem, node.start_mark) from None


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def display_name(path: Path) -> str:
    """A path as a user would like to read it: relative to the working directory if below it."""
    try:
        return os.path.relpath(path)
    except ValueError:  # pragma: no cover - different drive on Windows
        return str(path)


@dataclass
class Document:
    """One parsed file."""

    path: Path  # absolute
    name: str  # for messages
    raw: bytes
    data: Any
    _nodes: yaml.Node | None = field(default=None, repr=False)
    _digest: str | None = field(default=None, repr=False)

    @property
    def digest(self) -> str:
        if self._digest is None:
            self._digest = hashlib.sha256(self.raw).hexdigest()
        return self._digest

    def line_of(self, ptr: str) -> int | None:
        """1-based line of the value at JSON pointer ``ptr``, or of its nearest ancestor."""
        if self._nodes is None:
            try:
                self._nodes = yaml.compose(self.raw, Loader=_Loader)
            except yaml.YAMLError:  # what PyYAML does not read (some JSON escapes, odd tags): only the whole is known
                return 1
        node = self._nodes
        if node is None:
            return 1  # an empty document: the whole file
        line = node.start_mark.line + 1
        for token in split_pointer(ptr):
            child: yaml.Node | None = None
            if isinstance(node, yaml.MappingNode):
                for key, value in node.value:
                    if isinstance(key, yaml.ScalarNode) and key.value == token:
                        child = value
                        line = key.start_mark.line + 1
                        break
            elif isinstance(node, yaml.SequenceNode) and token.isdigit() and int(token) < len(node.value):
                child = node.value[int(token)]
                line = child.start_mark.line + 1
            if child is None:
                break
            node = child
        return line


def _recursive_alias(data: Any) -> str | None:
    """Pointer of a YAML alias that refers to a node containing it, if any (PyYAML builds such cycles)."""
    done: set[int] = set()
    on_path: set[int] = set()
    stack: list[tuple[Any, str, bool]] = [(data, "", False)]
    while stack:
        value, ptr, leaving = stack.pop()
        if leaving:
            on_path.discard(id(value))
            done.add(id(value))
            continue
        if not isinstance(value, (dict, list)) or id(value) in done:
            continue
        if id(value) in on_path:
            return ptr
        on_path.add(id(value))
        stack.append((value, ptr, True))
        items = value.items() if isinstance(value, dict) else enumerate(value)
        stack.extend((v, ptr + "/" + escape_pointer_token(k), False) for k, v in items)
    return None


# A YAML alias costs nothing to load (PyYAML shares the aliased object) but everything that
# walks the data walks each copy: 1 KB of nine aliases over eight levels is 43 million nodes,
# and the full OpenAPI validator spent 17.5 s of CPU on it. Legitimate anchors (a shared
# response, a repeated schema) expand a document by a small factor.
ALIAS_EXPANSION_FACTOR = 100
ALIAS_EXPANSION_FLOOR = 100_000


def _alias_expansion(data: Any) -> tuple[str, int, int] | None:
    """(pointer, expanded node count, distinct node count) when aliases expand the data
    beyond ``max(ALIAS_EXPANSION_FLOOR, ALIAS_EXPANSION_FACTOR * distinct)``; else None.

    Linear in the distinct nodes: each container's expanded size is computed once (the data
    is acyclic here: recursive aliases are refused first). The pointer is the top-level entry
    that expands most, when it alone is over the limit."""
    sizes: dict[int, int] = {}
    entered: set[int] = set()
    distinct = 0
    stack: list[tuple[Any, bool]] = [(data, False)]
    while stack:
        value, leaving = stack.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
        if children is None:
            continue
        if leaving:
            sizes[id(value)] = 1 + sum(sizes[id(c)] if isinstance(c, (dict, list)) else 1 for c in children)
            continue
        if id(value) in entered:
            continue
        entered.add(id(value))
        distinct += 1
        stack.append((value, True))
        for child in children:
            if isinstance(child, (dict, list)):
                stack.append((child, False))
            else:
                distinct += 1
    expanded = sizes.get(id(data), 1)
    limit = max(ALIAS_EXPANSION_FLOOR, ALIAS_EXPANSION_FACTOR * distinct)
    if expanded <= limit:
        return None
    items = data.items() if isinstance(data, dict) else enumerate(data)
    big = [(sizes[id(v)], k) for k, v in items if isinstance(v, (dict, list)) and sizes[id(v)] > limit]
    return ("/" + escape_pointer_token(max(big, key=lambda t: t[0])[1]) if big else ""), expanded, distinct


_UNFINISHED = {
    "a simple key": "the key that starts here has no ':' after it",
    "a quoted scalar": "the quoted string that starts here is never closed",
}


def _syntax_error(exc: yaml.MarkedYAMLError) -> tuple[str, int, int | None]:
    """(message, line, column) of a YAML syntax error, at the place to fix.

    When the scanner started a token it could not finish (a quoted string never closed, a
    key without ':'), the problem mark is where it gave up, often the next line or the end of
    the file: the place to fix is where the token starts (the context mark)."""
    problem, context = exc.problem or "", exc.context or ""
    at, started = exc.problem_mark, exc.context_mark
    unfinished = context.startswith("while scanning") and context != "while scanning for the next token"
    if started is not None and (at is None or unfinished):
        what = context.removeprefix("while scanning ")
        plain = _UNFINISHED.get(what, f"{what} that starts here is not finished")
        where = f", at line {at.line + 1}, column {at.column + 1}" if at is not None else ""
        return f"{plain} ({problem}{where})", started.line + 1, started.column + 1
    if at is None:
        return " ".join(filter(None, [context, problem])), 1, None
    if started is not None and (started.line, started.column) != (at.line, at.column):
        problem += f" ({context} that starts at line {started.line + 1}, column {started.column + 1})"
    return problem, at.line + 1, at.column + 1


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _lone_surrogate(data: Any) -> str | None:
    """Pointer of a JSON string (or of the object with a key) that is not Unicode: a lone surrogate."""
    stack: list[tuple[Any, str]] = [(data, "")]
    while stack:
        value, ptr = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return ptr
        elif isinstance(value, dict):
            for k, v in value.items():
                try:
                    k.encode("utf-8")
                except UnicodeEncodeError:
                    return ptr
                stack.append((v, ptr + "/" + escape_pointer_token(k)))
        elif isinstance(value, list):
            stack.extend((v, f"{ptr}/{i}") for i, v in enumerate(value))
    return None


# Parsed data by (path, content hash): a long-lived process (the xDS server's compile
# worker) re-reads every file on each compile but parses only the ones that changed.
# Parsed data is never modified after loading.
_PARSED: OrderedDict[tuple[Path, str], tuple[Any, Diagnostics]] = OrderedDict()
_PARSED_MAX = 20_000
_MISSING = object()


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: building large trees of fresh objects (parsed
    YAML, protos) otherwise triggers full collections that cost more than the work itself
    (measured: 64% of a 50k-operation compile). Documents cannot hold cycles (recursive
    aliases are refused), so nothing is lost; the collector runs again on exit.

    On exit, what was made inside goes straight to the oldest generation (unless the
    process keeps objects frozen, as the compile worker does): the next young collection
    would otherwise scan all of it once, only to move it up (0.1 s after a 10k-operation
    compile, which makes no reference cycles)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            if gc.get_freeze_count() == 0:
                gc.freeze()
                gc.unfreeze()
            gc.enable()


# Anchors and aliases are rare in API descriptions; documents that use them take PyYAML's
# path, which rejects aliases that contain themselves.
_ALIAS = re.compile(rb"(?:^|[\s\[{,:-])\*[A-Za-z0-9_-]+", re.M)
# Numbers Python refuses to convert from text: PyYAML reports them with their line.
_HUGE_NUMBER = re.compile(rb"[0-9]{%d,}" % (sys.get_int_max_str_digits() + 1))
# Both searches cost 13 ms on a 0.5 MB description; cheaper tests first make them rare.
_DIGITS = bytes.maketrans(b"0123456789", b"0000000000")
_DIGIT_RUN = b"0" * (sys.get_int_max_str_digits() + 1)
# A run of len(_DIGIT_RUN) digits covers two neighbouring multiples of this step and all
# bytes between them: every step-th byte is looked at first (a scan of all bytes took 4 ms
# of a 5 MB description).
_DIGIT_STEP = len(_DIGIT_RUN) // 2


def _may_have_alias(raw: bytes) -> bool:
    return b"*" in raw and _ALIAS.search(raw) is not None


def _may_have_huge_number(raw: bytes) -> bool:
    if len(raw) < len(_DIGIT_RUN):
        return False
    if _DIGIT_STEP < 2:  # no limit on digits, or a tiny one
        return _DIGIT_RUN in raw.translate(_DIGITS) and _HUGE_NUMBER.search(raw) is not None
    step = _DIGIT_STEP
    samples = raw[::step].translate(_DIGITS)
    k = samples.find(b"00")
    while k >= 0:
        if raw[k * step : (k + 1) * step + 1].isdigit():
            return _HUGE_NUMBER.search(raw) is not None
        k = samples.find(b"00", k + 1)
    return False


def _fast_yaml(raw: bytes) -> Any:
    """yaml-rs (Rust, YAML 1.2 core schema, dates kept as text): ten times faster than
    PyYAML's C loader, whose constructor is Python, and linear in size. Anything it
    refuses (syntax errors, duplicate keys…) goes to PyYAML, which locates the problem."""
    if _may_have_alias(raw) or _may_have_huge_number(raw):
        return _MISSING
    try:
        return yaml_rs.loads(raw.decode("utf-8"), parse_datetime=False)
    except Exception:
        return _MISSING


def _duplicate_keys(raw: bytes) -> list[tuple[str, int, str]]:
    """(pointer, line, key) of every key repeated in a mapping: YAML forbids it, PyYAML keeps the last."""
    try:
        root = yaml.compose(raw, Loader=_Loader)
    except yaml.YAMLError:
        return []
    out = []
    stack: list[tuple[yaml.Node, str]] = [(root, "")] if root is not None else []
    visited: set[int] = set()  # aliases make the node graph a DAG, or a cycle
    while stack:
        node, ptr = stack.pop()
        if id(node) in visited:
            continue
        visited.add(id(node))
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key, value in node.value:
                text = str(key.value) if isinstance(key, yaml.ScalarNode) else ""
                if text in seen:
                    out.append((ptr + "/" + escape_pointer_token(text), key.start_mark.line + 1, text))
                seen.add(text)
                stack.append((value, ptr + "/" + escape_pointer_token(text)))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((child, f"{ptr}/{i}") for i, child in enumerate(node.value))
    return sorted(out, key=lambda t: t[1])


def _refs_in(data: Any) -> Iterator[tuple[str, str]]:
    """(pointer to the ``$ref``, its value) for every string ``$ref`` in ``data``."""
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        ptr, value = stack.pop()
        if isinstance(value, dict):
            ref = value.get("$ref")
            if isinstance(ref, str):
                yield ptr + "/$ref", ref
            stack.extend((f"{ptr}/{escape_pointer_token(str(k))}", v) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((f"{ptr}/{i}", v) for i, v in enumerate(value))


def split_pointer(ptr: str) -> list[str]:
    if not ptr:
        return []
    return [t.replace("~1", "/").replace("~0", "~") for t in ptr.lstrip("/").split("/")]


# A $ref's parts (file, unquoted fragment, its pointer's tokens), by its text: the same few
# references ("#/components/parameters/Limit") recur thousands of times in a description.
_REFS: dict[str, tuple[str, str, tuple[str, ...]]] = {}
_REFS_MAX = 65_536


def _split_ref(ref: str) -> tuple[str, str, tuple[str, ...]]:
    file_part, fragment = urldefrag(ref)
    fragment = unquote(fragment)
    split = (file_part, fragment, tuple(split_pointer(fragment)))
    if len(_REFS) >= _REFS_MAX:
        _REFS.clear()
    _REFS[ref] = split
    return split


# Certificates, keys and CA bundles are a few KB; a system CA bundle is ~200 KB.
TEXT_FILE_LIMIT = 4 << 20


def _read_regular(path: Path, limit: int) -> bytes:
    """A regular file's bytes: a device (/dev/zero) or a FIFO would never end or never answer."""
    import os
    import stat

    with open(path, "rb", opener=lambda p, flags: os.open(p, flags | os.O_NONBLOCK)) as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ValueError("not a regular file")
        raw = f.read(limit + 1)
    if len(raw) > limit:
        raise ValueError(f"larger than {limit >> 20} MiB: not a certificate or key file")
    return raw


class DocumentStore:
    """Loads each file once and resolves references between them.

    Errors are not raised: they go to ``diagnostics`` and the caller gets ``None``.
    """

    def __init__(self, diagnostics: Diagnostics):
        self.diagnostics = diagnostics
        self._docs: dict[Path, Document | None] = {}
        self.tracking: set[Path] | None = None  # while set, every path asked for (see incremental.py)
        self.followed: list[tuple[Path, str]] | None = None  # while set, every $ref followed: (file, pointer)
        # Directories of pushed documents: what is in one may only refer to files in it, so
        # that a pipeline's spec cannot read the control plane's files or another team's.
        self.confined: tuple[Path, ...] = ()

    def __iter__(self) -> Iterator[Document]:
        return (d for d in self._docs.values() if d is not None)

    def load_text(self, path: Path, referrer: tuple[Document, str], limit: int = TEXT_FILE_LIMIT) -> Document | None:
        """A file read as it is, not parsed (PEM certificates and keys): ``data`` is its text.
        Like every document, it is watched and its content hash is part of the compile."""
        try:
            path = path.resolve()
        except (OSError, ValueError, RuntimeError):
            path = path.absolute()
        if self._escapes(path, referrer):
            return None
        if self.tracking is not None:
            self.tracking.add(path)
        if path in self._docs:
            return self._docs[path]
        name = display_name(path)
        doc: Document | None = None
        try:
            raw = _read_regular(path, limit)
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            self.diagnostics.error(f"cannot read {name}: {reason}", referrer[0].name, referrer[1], "unreadable-file")
        else:
            doc = Document(path, name, raw, raw.decode("latin-1"))
        self._docs[path] = doc
        return doc

    def load(
        self, path: Path, referrer: tuple[Document, str] | None = None, diags: Diagnostics | None = None
    ) -> Document | None:
        try:
            path = path.resolve()
        except (OSError, ValueError, RuntimeError):  # a NUL in the name, a symlink loop: reading fails below
            path = path.absolute()
        if self._escapes(path, referrer, diags):
            return None
        if self.tracking is not None:
            self.tracking.add(path)
        if path in self._docs:
            return self._docs[path]
        doc = self._read(path, referrer, self.diagnostics if diags is None else diags)
        self._docs[path] = doc
        return doc

    def _escapes(self, path: Path, referrer: tuple[Document, str] | None, diags: Diagnostics | None = None) -> bool:
        """True, once reported, when a pushed document refers outside the files pushed with it."""
        if not self.confined or referrer is None:
            return False
        doc, ptr = referrer
        root = next((r for r in self.confined if doc.path.is_relative_to(r)), None)
        if root is None or path.is_relative_to(root):
            return False
        (self.diagnostics if diags is None else diags).error(
            "a pushed document may only refer to files pushed with it", doc.name, ptr, "push-outside"
        )
        return True

    def check_confined(self) -> bool:
        """Every ``$ref`` in a pushed document, followed or not by the compile, stays within its
        files: the full validator resolves references on its own (and would fetch URLs).
        Reported as errors; True when there are none."""
        clean = True
        seen: set[Path] = set()
        pending = [d for d in self if any(d.path.is_relative_to(r) for r in self.confined)]
        while pending:
            doc = pending.pop()
            if doc.path in seen or not isinstance(doc.data, dict | list):
                continue
            seen.add(doc.path)
            for ptr, ref in _refs_in(doc.data):
                file_part = ref.split("#", 1)[0]
                if not file_part:
                    continue
                if "://" in file_part or file_part.startswith("//"):
                    self.diagnostics.error(
                        f"remote $ref {ref!r}: a pushed document may only refer to files pushed with it",
                        doc.name,
                        ptr,
                        "push-outside",
                    )
                    clean = False
                    continue
                before = len(self.diagnostics.errors)
                loaded = self.load(doc.path.parent / unquote(file_part), (doc, ptr))
                clean = clean and len(self.diagnostics.errors) == before
                if loaded is not None:
                    pending.append(loaded)
        return clean

    def _read(self, path: Path, referrer: tuple[Document, str] | None, diags: Diagnostics) -> Document | None:
        name = display_name(path)
        try:
            raw = path.read_bytes()
        except (OSError, ValueError) as exc:  # ValueError: a NUL character in the name
            reason = getattr(exc, "strerror", None) or str(exc)
            if referrer:
                doc, ptr = referrer
                diags.error(f"cannot read {name}: {reason}", doc.name, ptr, "unreadable-file")
            else:
                diags.error(f"cannot read file: {reason}", name, "", "unreadable-file")
            return None
        digest = hashlib.sha256(raw).hexdigest()
        cached = _PARSED.get((path, digest))
        if cached is not None:
            _PARSED.move_to_end((path, digest))
            data, found = cached
        else:
            found = Diagnostics()
            with gc_paused():
                data = self._parse(path, name, raw, found)
            if data is not _MISSING:
                _PARSED[(path, digest)] = (data, found)
                if len(_PARSED) > _PARSED_MAX:
                    _PARSED.popitem(last=False)
        diags.extend(found)
        if data is _MISSING:
            return None
        return Document(path, name, raw, data, _digest=digest)

    def _parse(self, path: Path, name: str, raw: bytes, diags: Diagnostics) -> Any:
        """The document's data, or ``_MISSING`` after reporting why it cannot be read."""
        kind = "json" if path.suffix.lower() == ".json" else "yaml"
        try:
            if kind == "json":
                data = json.loads(raw)
            else:
                data = _fast_yaml(raw)
                if data is _MISSING:
                    data = yaml.load(raw, Loader=_Loader)
                    for ptr, line, key in _duplicate_keys(raw):
                        diags.add(
                            Diagnostic(
                                f"duplicate key {key!r}: the last value is used",
                                name,
                                ptr,
                                line,
                                Severity.WARNING,
                                "yaml-duplicate-key",
                            )
                        )
        except yaml.MarkedYAMLError as exc:
            problem, line, column = _syntax_error(exc)
            lines = raw.split(b"\n")
            if column is not None and line <= len(lines) and lines[line - 1][column - 1 : column] == b"\t":
                problem += " (a tab: YAML indents with spaces only)"
            diags.add(Diagnostic(f"invalid YAML: {problem}", name, "", line, code="yaml", column=column))
            return _MISSING
        except yaml.reader.ReaderError as exc:  # a character YAML does not allow: no mark, a position
            line = raw[: exc.position].count(b"\n") + 1
            column = exc.position - raw.rfind(b"\n", 0, exc.position)
            diags.add(
                Diagnostic(f"invalid YAML: {str(exc).splitlines()[0]}", name, "", line, code="yaml", column=column)
            )
            return _MISSING
        except yaml.YAMLError as exc:
            diags.add(Diagnostic(f"invalid YAML: {exc}", name, "", 1, code="yaml"))
            return _MISSING
        except json.JSONDecodeError as exc:
            diags.add(Diagnostic(f"invalid JSON: {exc.msg}", name, "", exc.lineno, code="json", column=exc.colno))
            return _MISSING
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            diags.add(Diagnostic(f"unreadable document: {exc}", name, "", line, code="encoding"))
            return _MISSING
        except RecursionError:
            diags.add(Diagnostic("unreadable document: it nests too deeply", name, "", 1, code=kind))
            return _MISSING
        except ValueError as exc:  # e.g. a JSON number with more digits than Python converts
            limit = sys.get_int_max_str_digits()
            digits = re.search(rb"[0-9]{%d,}" % (limit + 1), raw) if limit else None
            line = raw[: digits.start()].count(b"\n") + 1 if digits else 1
            problem = f"{len(digits[0])} digits is too many for a number" if digits else str(exc)
            diags.add(Diagnostic(f"unreadable document: {problem}", name, "", line, code=kind))
            return _MISSING
        cycle = _recursive_alias(data) if kind == "yaml" and b"&" in raw and b"*" in raw else None
        if cycle is not None:
            diags.add(
                Diagnostic(
                    "invalid YAML: this alias refers to a node that contains it (infinite nesting)",
                    name,
                    cycle,
                    Document(path, name, raw, None).line_of(cycle),
                    code="yaml",
                )
            )
            return _MISSING
        blowup = _alias_expansion(data) if kind == "yaml" and b"&" in raw and b"*" in raw else None
        if blowup is not None:
            ptr, expanded, distinct = blowup
            diags.add(
                Diagnostic(
                    f"refused: YAML aliases expand the document's {distinct:,} nodes to {expanded:,} (the limit is "
                    f"{ALIAS_EXPANSION_FACTOR} times its own nodes, at least {ALIAS_EXPANSION_FLOOR:,}); every "
                    "tool that reads it walks each copy",
                    name,
                    ptr,
                    Document(path, name, raw, None).line_of(ptr),
                    code="yaml-alias-expansion",
                )
            )
            return _MISSING
        surrogate = _lone_surrogate(data) if kind == "json" and _SURROGATE_ESCAPE.search(raw) else None
        if surrogate is not None:
            diags.add(
                Diagnostic(
                    "invalid JSON: a \\u escape is half of a UTF-16 surrogate pair, not a character",
                    name,
                    surrogate,
                    Document(path, name, raw, None).line_of(surrogate),
                    code="json",
                )
            )
            return _MISSING
        return data

    def resolve(
        self, doc: Document, ptr: str, ref: Any, diags: Diagnostics | None = None
    ) -> tuple[Document, str, Any] | None:
        """Follow one ``$ref`` found at ``doc#ptr``; returns (document, pointer, value).

        Problems go to ``diags`` (default: the store's own diagnostics).
        """
        diags = self.diagnostics if diags is None else diags
        if not isinstance(ref, str):
            diags.error("$ref must be a string", doc.name, ptr + "/$ref", "ref")
            return None
        split = _REFS.get(ref)
        if split is None:
            split = _split_ref(ref)
        file_part, fragment, tokens = split
        if "://" in file_part:
            diags.error(f"remote $ref {ref!r} is not supported; use a local file", doc.name, ptr, "ref")
            return None
        target = doc
        if file_part:
            loaded = self.load(doc.path.parent / unquote(file_part), (doc, ptr + "/$ref"), diags)
            if loaded is None:
                return None
            target = loaded
        value = target.data
        for token in tokens:
            if isinstance(value, dict) and token in value:
                value = value[token]
            elif isinstance(value, list) and token.isdigit() and int(token) < len(value):
                value = value[int(token)]
            else:
                diags.error(
                    f"unresolvable $ref {ref!r}: {target.name} has nothing at #{fragment}",
                    doc.name,
                    ptr + "/$ref",
                    "ref",
                )
                return None
        return target, fragment, value

    def deref(
        self, doc: Document, ptr: str, value: Any, diags: Diagnostics | None = None
    ) -> tuple[Document, str, Any] | None:
        """Follow ``$ref`` chains until a value that is not a reference."""
        depth = 0
        while isinstance(value, dict) and "$ref" in value:
            depth += 1
            if depth > 32:
                (self.diagnostics if diags is None else diags).error(
                    "$ref chain is too long or circular", doc.name, ptr, "ref"
                )
                return None
            resolved = self.resolve(doc, ptr, value["$ref"], diags)
            if self.followed is not None:
                self.followed.append((resolved[0].path, resolved[1]) if resolved is not None else (Path(), "?"))
            if resolved is None:
                return None
            doc, ptr, value = resolved
        return doc, ptr, value


def locate(diagnostics: list[Diagnostic], documents: dict[str, Document]) -> list[Diagnostic]:
    """Fill in line numbers from JSON pointers for diagnostics whose file is a known document."""
    out = []
    for d in diagnostics:
        doc = documents.get(d.file)
        if d.line is None and doc is not None and d.severity is not Severity.NOTE:
            d = dataclasses.replace(d, line=doc.line_of(d.pointer))
        out.append(d)
    return out
