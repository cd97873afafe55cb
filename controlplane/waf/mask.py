"""Masking responses: card numbers (13-19 digits, spaced or dashed, with a valid Luhn check;
the last four kept) and named fields (the whole value), in JSON and text bodies.

The WAF service collects a sensitive operation's whole response (Envoy streams it, ext_proc
full duplex; see :class:`controlplane.waf.service.ResponseMasker`) before masking it, up to
``waf.maxResponseBytes``. The gateway asks backends for uncompressed responses on these operations;
a response compressed anyway is decompressed (gzip, deflate) and sent on uncompressed, and
one in an encoding the service cannot read is refused (502) rather than passed unmasked.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# 13-19 digits, single spaces or dashes between them, not inside a longer run of digits.
_CARD = re.compile(r"(?<![\d])\d(?:[ -]?\d){12,18}(?![\d])")
MASKED_FIELD = "****"
_TEXT_TYPES = ("text/", "application/xml", "application/x-www-form-urlencoded", "application/javascript")


class Unmaskable(Exception):
    """A response that cannot be read to be masked (an unknown encoding, a broken body)."""


@dataclass(frozen=True)
class Masked:
    body: bytes
    cards: int  # card numbers masked
    fields: int  # named fields masked
    decompressed: bool  # the body was compressed and is now sent as it is


def luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def mask_cards(text: str) -> tuple[str, int]:
    count = 0

    def replace(match: re.Match[str]) -> str:
        nonlocal count
        found = match.group(0)
        digits = "".join(c for c in found if c.isdigit())
        if not 13 <= len(digits) <= 19 or not luhn(digits):
            return found
        count += 1
        keep, out = 4, []
        for ch in reversed(found):
            if ch.isdigit():
                out.append(ch if keep > 0 else "*")
                keep -= 1
            else:
                out.append(ch)
        return "".join(reversed(out))

    return _CARD.sub(replace, text), count


def _walk(value: Any, fields: frozenset[str], counts: list[int]) -> Any:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if isinstance(key, str) and key.lower() in fields:
                counts[1] += 1
                out[key] = MASKED_FIELD
            else:
                out[key] = _walk(item, fields, counts)
        return out
    if isinstance(value, list):
        return [_walk(item, fields, counts) for item in value]
    if isinstance(value, str):
        masked, n = mask_cards(value)
        counts[0] += n
        return masked
    if isinstance(value, int) and not isinstance(value, bool) and 13 <= len(str(abs(value))) <= 19:
        masked, n = mask_cards(str(value))
        if n:
            counts[0] += n
            return masked  # a number that is a card number becomes a string: its digits are gone
    return value


def mask_body(body: bytes, content_type: str, encoding: str, fields: Iterable[str], max_bytes: int = 8 << 20) -> Masked:
    """``body`` with its card numbers and ``fields`` masked; :class:`Unmaskable` when it cannot
    be read (an unknown or broken encoding, or more than ``max_bytes`` once decompressed)."""
    decompressed = False
    encoding = encoding.strip().lower()
    if encoding and encoding != "identity":
        if encoding not in ("gzip", "x-gzip", "deflate"):
            raise Unmaskable(f"a response in {encoding!r} encoding cannot be masked")
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding != "deflate" else zlib.MAX_WBITS)
        try:
            body = inflater.decompress(body, max_bytes + 1)  # (a bomb stops here, not in memory)
        except zlib.error as exc:
            raise Unmaskable(f"a {encoding} response that does not decompress: {exc}") from exc
        if len(body) > max_bytes:
            raise Unmaskable(f"a {encoding} response of more than {max_bytes} bytes once decompressed")
        if not inflater.eof:
            raise Unmaskable(f"a {encoding} response that ends before its compressed stream does")
        decompressed = True
    media = content_type.split(";", 1)[0].strip().lower()
    names = frozenset(f.lower() for f in fields if f)
    if media == "application/json" or media.endswith("+json"):
        try:
            data = json.loads(body)
        except ValueError:
            data = None  # not JSON after all: masked as text below
        else:
            counts = [0, 0]
            masked = _walk(data, names, counts)
            if counts == [0, 0]:
                return Masked(body, 0, 0, decompressed)
            return Masked(json.dumps(masked, ensure_ascii=False).encode(), counts[0], counts[1], decompressed)
    if media.startswith(_TEXT_TYPES) or media.endswith("+xml") or media == "application/json" or not media:
        text, n = mask_cards(body.decode("utf-8", "surrogateescape"))
        return Masked(text.encode("utf-8", "surrogateescape") if n else body, n, 0, decompressed)
    return Masked(body, 0, 0, decompressed)  # images, archives…: no text to mask
