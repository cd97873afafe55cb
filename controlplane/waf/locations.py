"""How names appear in a location (``body:/items/0/name``, ``query:limit``, ``header:x-page``):
one spelling for the inspector that reports findings and for the control plane that writes the
places a schema makes safe, so that the two always meet.

A location's structure is made of ``/ [ ] # :``; inside a name these (and ``%``) are
percent-encoded, so that a client's key ``price#x``, parameter ``limit[]`` or header
``X-Page#x`` never spells a place under ``body:/price``, ``query:limit`` or ``header:x-page``.
"""

from __future__ import annotations

STRUCTURE = str.maketrans({"%": "%25", "/": "%2F", "[": "%5B", "]": "%5D", "#": "%23", ":": "%3A"})
STRUCTURAL = frozenset("%/[]#:~")


def escape_name(name: str) -> str:
    """A parameter, header, cookie or part name with its structural characters percent-encoded."""
    return name.translate(STRUCTURE)


def pointer_token(name: str) -> str:
    """A JSON member name in a pointer: ``~`` and ``/`` as JSON pointers write them, then the
    other structural characters percent-encoded."""
    return escape_name(name.replace("~", "~0").replace("/", "~1"))
