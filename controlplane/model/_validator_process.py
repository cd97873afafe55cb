"""The full OpenAPI validator, run in a child process that the parent can kill.

openapi-spec-validator walks every copy of every aliased node and runs the patterns of a
spec against its own default values: a small document can keep it busy for minutes (a
1 KB alias bomb: 17.5 s; a backtracking pattern: longer), and no check inside the process
can interrupt a regular expression. So the parent (``validation.py``) sends each document
here and kills this process when a document takes longer than its time limit.

Run as a script (``python _validator_process.py``), not as part of the package: importing
the package would cost the child 0.2 s. It reads requests from stdin and writes answers to
stdout, each a length-prefixed pickle::

    request  (version, data, base_uri)         version: "2.0", "3.0" or "3.1"
    answer   (findings, stopped, broken)
             findings: [(logical path, message)]   the path from the root through $refs
             stopped:  why validation stopped early (a message), or None
             broken:   (document uri, value) the validator choked on, or None
"""

from __future__ import annotations

import os
import pickle
import struct
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any, BinaryIO

Finding = tuple[tuple[Any, ...], str]

_DESCRIBE_LIMIT = 60


def _describe(value: Any) -> str:
    """A value for a message: its repr when short, else what it is (a whole document printed
    as a Python dict helps nobody; the location says where it is). The same as
    ``controlplane.errors.describe_value``, kept here because this script does not import the
    package (see the module docstring)."""
    text = repr(value)
    if len(text) <= _DESCRIBE_LIMIT:
        return text
    if isinstance(value, dict):
        keys = ", ".join(map(str, list(value)[:4])) + (", …" if len(value) > 4 else "")
        return f"an object with {len(value)} key(s) ({keys})"
    if isinstance(value, list):
        return f"a list of {len(value)} item(s)"
    if isinstance(value, str):
        return repr(value[: _DESCRIBE_LIMIT - 5]) + "…"
    return text[:_DESCRIBE_LIMIT] + "…"


def message_of(err: Any) -> str:
    """jsonschema's message with a long leading repr of the checked value described instead."""
    message: str = err.message
    try:
        text = repr(err.instance)
    except Exception:  # pragma: no cover - an instance whose repr fails
        return message
    if len(text) > _DESCRIBE_LIMIT and message.startswith(text):
        return _describe(err.instance) + message[len(text) :]
    return message


def _validator_class(version: str) -> Any:
    from jsonschema_path import SchemaPath
    from openapi_spec_validator import OpenAPIV2SpecValidator, OpenAPIV30SpecValidator, OpenAPIV31SpecValidator
    from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

    base = {"2.0": OpenAPIV2SpecValidator, "3.0": OpenAPIV30SpecValidator, "3.1": OpenAPIV31SpecValidator}[version]

    def annotating(keyword: str, cls: type) -> type:
        """A keyword validator that tags each error with the logical path it checked."""

        def __call__(self: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
            node = next((a for a in args if isinstance(a, SchemaPath)), None)
            for err in cls.__call__(self, *args, **kwargs):
                if node is not None and not hasattr(err, "_cp_parts"):
                    if not isinstance(err, OpenAPIValidationError):
                        # the validator rewraps other errors into new objects, losing the tag
                        err = OpenAPIValidationError.create_from(err)
                    # the default validator gets the schema that holds the default, not the value
                    parts = (*node.parts, "default") if keyword == "default" else tuple(node.parts)
                    setattr(err, "_cp_parts", parts)  # noqa: B010 - a tag the validator's class does not declare
                yield err

        return type(cls.__name__, (cls,), {"__call__": __call__})

    return type(
        "Located" + base.__name__,
        (base,),
        {"keyword_validators": {k: annotating(k, v) for k, v in base.keyword_validators.items()}},
    )


def _broken_value(tb: Any) -> tuple[str, Any] | None:
    """(document uri, value) the reference resolver choked on: it crawls a document for
    sub-schemas and fails on one that is not a schema (``properties: {$ref: …}``)."""
    found = None
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "crawl" and "uri" in frame.f_locals and "resource" in frame.f_locals:
            uri, resource = frame.f_locals["uri"], frame.f_locals["resource"]
            found = (str(uri), getattr(resource, "contents", None))
        tb = tb.tb_next
    return found


def run(version: str, data: Any, base_uri: str) -> tuple[list[Finding], str | None, Any]:
    out: list[Finding] = []
    stopped = None
    broken = None
    try:
        validator = _validator_class(version)(data, base_uri=base_uri)
        for err in validator.iter_errors():
            parts = getattr(err, "_cp_parts", ())
            out.append((tuple(parts) + tuple(err.absolute_path), message_of(err)))
    except RecursionError:
        stopped = "the document nests too deeply"
    except Exception as exc:  # the validator itself failed on this input; say so, keep what it found
        broken = _broken_value(exc.__traceback__)
        stopped = f"the validator failed ({type(exc).__name__}: {exc})"
    return out, stopped, broken


def _read(stream: BinaryIO) -> Any:
    head = stream.read(8)
    if len(head) < 8:
        return None
    (size,) = struct.unpack("!Q", head)
    return pickle.loads(stream.read(size))


def _write(stream: BinaryIO, value: Any) -> None:
    body = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(struct.pack("!Q", len(body)) + body)
    stream.flush()


def _follow_parent(parent: int) -> None:
    """Die with the parent even in the middle of a long validation (nobody waits for it)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def main() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent, which stops this process
    _follow_parent(os.getppid())
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # anything printed by a library must not corrupt the answers
    while True:
        request = _read(stdin)
        if request is None:
            return
        _write(stdout, run(*request))


if __name__ == "__main__":
    main()
