"""Protobuf wire format, by hand, for the few places that assemble messages from bytes."""

from __future__ import annotations

_SMALL = [bytes([n]) for n in range(128)]  # lengths and tags are mostly one byte


def varint(n: int) -> bytes:
    if n < 128:
        return _SMALL[n]
    if n < 16384:  # most routes' lengths
        return bytes(((n & 0x7F) | 0x80, n >> 7))
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def length_delimited(number: int, payload: bytes) -> bytes:
    """One field of wire type 2 (strings, bytes, messages).

    A message is a sequence of fields, so concatenating encoded fields encodes a message,
    and a repeated message field is the concatenation of its entries.
    """
    return varint((number << 3) | 2) + varint(len(payload)) + payload
