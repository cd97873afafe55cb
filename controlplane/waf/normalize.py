"""Peel off the encodings an attacker hides a payload under, until the value stops changing.

One decoding pass undoes, in order: percent encoding (``%27``, ``%u0027``, with overlong UTF-8
sequences such as ``%c0%ae`` decoded to the character they spell, and ``%c0%2e`` read as the
``.`` old decoders read there), HTML character references (``&#x3c;``, ``&lt``), JavaScript/JSON
escapes (``\\u003c``, ``\\u{3c}``, ``\\x3c``), Unicode compatibility forms (NFKC: fullwidth
``\\uff1c`` is ``<``) plus the look-alike quotes, slashes and angle brackets NFKC leaves alone,
and it drops NUL and invisible characters (zero-width, soft hyphen, bidi controls). Passes
repeat until a pass changes nothing; double and triple encodings therefore fall out, and a value
still changing after ``max_passes`` is reported by the caller.

On top of the decoded text, the *views* give each family the spelling its interpreter sees: SQL
without comments and with any run of whitespace as one space, shell without quotes, backslashes,
``${IFS}`` and brace lists. Everything is linear in the value's length: the regular expressions
here run on RE2 or have no nested or overlapping repetition.
"""

from __future__ import annotations

import html
import re
import string
import unicodedata

import re2

__all__ = [
    "NUL",
    "OVERLONG",
    "decode_pass",
    "escape_control",
    "lenient_utf8",
    "normalize",
    "shell_view",
    "sql_view",
]

_PERCENT_BYTES = re.compile(r"(?:%[0-9A-Fa-f]{2})+")
_PERCENT_U = re.compile(r"%[uU]([0-9A-Fa-f]{4})")
_JS_ESCAPE = re.compile(r"\\(?:u\{([0-9A-Fa-f]{1,6})\}|u([0-9A-Fa-f]{4})|x([0-9A-Fa-f]{2}))")

# Characters NFKC keeps but that some stack on the way ("best fit" code-page conversion, a
# database collation) turns into the ASCII character an attack needs.
_LOOKALIKES = str.maketrans(
    {
        **dict.fromkeys("\u2018\u2019\u201a\u201b\u2032\u2035\u02b9\u02bc\u02c8", "'"),
        **dict.fromkeys("\u201c\u201d\u201e\u201f\u2033\u2036\u02ba", '"'),
        **dict.fromkeys("\u2215\u2044\u29f8", "/"),
        **dict.fromkeys("\u29f5\u29f9", "\\"),
        **dict.fromkeys("\u2039\u02c2\u3008\u27e8", "<"),
        **dict.fromkeys("\u203a\u02c3\u3009\u27e9", ">"),
        # invisible characters an attacker slips inside a keyword
        **dict.fromkeys(
            "\x00\u00ad\u034f\u180e\u200b\u200c\u200d\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
            "\u2060\u2061\u2062\u2063\u2064\u2066\u2067\u2068\u2069\ufeff",
            None,
        ),
    }
)


NUL = 1  # a decoded NUL was dropped
OVERLONG = 2  # an overlong UTF-8 sequence was decoded


# str.translate looks every character up: find first whether there is anything to translate
_LOOKALIKE_CHARS = re.compile("[" + re.escape("".join(chr(c) for c in _LOOKALIKES)) + "]")


def lenient_utf8(data: bytes) -> tuple[str, bool]:
    """Decode UTF-8 the way a careless decoder does, and say whether it had to: overlong forms
    (``C0 AE`` for ``.``) give the character they spell, and so does a lead byte whose tail is
    no continuation when a decoder blind to that reads punctuation in it (``C0 2E`` for ``.``,
    :func:`_lax_ascii`); the flag is then True. Any other byte that starts no sequence stands
    for itself (Latin-1), so a quote behind a stray lead byte (``%bf%27``) survives."""
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        pass
    out: list[str] = []
    overlong = False
    i, n = 0, len(data)
    while i < n:
        b = data[i]
        if b < 0x80:
            out.append(chr(b))
            i += 1
            continue
        if 0xC0 <= b <= 0xDF:
            need, code, smallest = 1, b & 0x1F, 0x80
        elif 0xE0 <= b <= 0xEF:
            need, code, smallest = 2, b & 0x0F, 0x800
        elif 0xF0 <= b <= 0xF7:
            need, code, smallest = 3, b & 0x07, 0x10000
        else:
            out.append(chr(b))
            i += 1
            continue
        tail = data[i + 1 : i + 1 + need]
        if len(tail) < need or any(t & 0xC0 != 0x80 for t in tail):
            lax = _lax_ascii(code, tail) if len(tail) == need else None
            if lax is None:
                out.append(chr(b))
                i += 1
                continue
            out.append(lax)
            overlong = True
            i += 1 + need
            continue
        for t in tail:
            code = (code << 6) | (t & 0x3F)
        overlong = overlong or code < smallest
        out.append(chr(code) if code <= 0x10FFFF else "\ufffd")
        i += 1 + need
    return _fix_surrogates("".join(out)), overlong


_PUNCTUATION = frozenset(string.punctuation)


def _lax_ascii(code: int, tail: bytes) -> str | None:
    """What an old decoder that never checks continuation bytes (IIS before 2001, and the
    libraries that copied it) reads in a lead byte whose tail is not one: it keeps the low six
    bits of each byte, so ``C0 2E`` is ``.``, ``C0 2F`` ``/``, ``C1 1C`` ``\\``, ``E0 80 2E`` ``.``.
    Only ASCII punctuation is taken so: that is what such a sequence smuggles past a filter, while
    a Latin-1 ``À`` or ``Á`` before a space, a digit or a letter (``%C1lvaro``) stays itself."""
    for t in tail:
        code = (code << 6) | (t & 0x3F)
    char = chr(code) if code < 0x80 else ""
    return char if char in _PUNCTUATION else None


def _fix_surrogates(text: str) -> str:
    """Pair up UTF-16 surrogates (``%uD83D%uDE00``) and replace the lone ones: a str holding
    a lone surrogate cannot be encoded for RE2 or libinjection."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


def _js_char(match: re.Match[str]) -> str:
    digits = match.group(1) or match.group(2) or match.group(3)
    code = int(digits, 16)
    return chr(code) if code <= 0x10FFFF else "\ufffd"


def decode_pass(value: str) -> tuple[str, int]:
    """One pass of every decoding, and the flags (NUL, OVERLONG) of what it met; the caller
    repeats it until nothing changes."""
    flags = 0
    if "%" in value:
        value = _PERCENT_U.sub(lambda m: chr(int(m.group(1), 16)), value)
        if "%" in value:
            overlong = False

            def percent_bytes(match: re.Match[str]) -> str:
                nonlocal overlong
                text, bad = lenient_utf8(bytes.fromhex(match.group(0).replace("%", "")))
                overlong = overlong or bad
                return text

            value = _PERCENT_BYTES.sub(percent_bytes, value)
            if overlong:
                flags |= OVERLONG
    if "&" in value:
        value = html.unescape(value)
    if "\\" in value:
        value = _JS_ESCAPE.sub(_js_char, value)
    if "\x00" in value:
        flags |= NUL
    if not value.isascii():
        value = _fix_surrogates(value)
        if not unicodedata.is_normalized("NFKC", value):
            value = unicodedata.normalize("NFKC", value)
        if _LOOKALIKE_CHARS.search(value):
            value = value.translate(_LOOKALIKES)
    elif flags & NUL:
        value = value.replace("\x00", "")
    return value, flags


def normalize(value: str, max_passes: int) -> tuple[str, bool, int]:
    """``(decoded, stable, flags)``: ``stable`` is False when the value still changed on the
    last of ``max_passes`` passes (more encoding layers than any client needs: the caller
    reports it); ``flags`` ORs what the passes met (NUL, OVERLONG)."""
    flags = 0
    if "\x00" in value:
        flags = NUL
    for _ in range(max_passes):
        decoded, met = decode_pass(value)
        flags |= met
        if decoded == value:
            return value, True, flags
        value = decoded
    decoded, met = decode_pass(value)
    return value, decoded == value, flags | met


# --- views -----------------------------------------------------------------------------------

_SQL_VERSIONED_COMMENT = re2.compile(r"/\*!\d{0,6}")
_SQL_LINE_COMMENT = re2.compile(r"(?:--|#)[^\n]*\n")


def _strip_block_comments(text: str) -> str:
    """``/* … */`` becomes one space (``UNION/**/SELECT`` is ``UNION SELECT`` to MySQL); an
    unterminated comment runs to the end, as it does for the database."""
    if "/*" not in text:
        return text
    out: list[str] = []
    pos = 0
    while True:
        start = text.find("/*", pos)
        if start < 0:
            out.append(text[pos:])
            break
        out.append(text[pos:start])
        out.append(" ")
        end = text.find("*/", start + 2)
        if end < 0:
            break
        pos = end + 2
    return "".join(out)


def sql_view(low: str) -> str:
    """The value as a SQL tokenizer sees it: comments, ``+`` and every kind of
    whitespace (tab, VT, FF, NBSP, newline) collapse to one space; MySQL's versioned comments
    ``/*!50000union*/`` keep their content."""
    if "/*" in low:
        low = _SQL_VERSIONED_COMMENT.sub(" ", low)
        low = _strip_block_comments(low).replace("*/", " ")
    if "\n" in low and ("#" in low or "--" in low):
        low = _SQL_LINE_COMMENT.sub(" ", low)
    return " ".join(low.replace("+", " ").split())


_SHELL_IFS = re2.compile(r"(?i)\$\{ifs[^}]{0,16}\}|\$ifs")
_SHELL_EMPTY = re2.compile(r"(?i)\$[@*#0-9]|\$\{[a-z_]{0,2}\}|\$\(\s*\)")
_SHELL_BRACES = re2.compile(r"\{([^{}\s]{0,200},[^{}\s]{0,200})\}")
_SHELL_VAR = re2.compile(r"(?i)\$(?:\{[a-z_][a-z0-9_]{0,31}\}|[a-z_][a-z0-9_]{0,31})")


def shell_view(low: str) -> str:
    """The value as a shell runs it: quotes and backslashes vanish (``c'a't``,
    ``c\\at``), ``${IFS}`` and friends are a space, empty expansions (``$@``, ``$9``) vanish,
    ``{cat,/etc/passwd}`` is ``cat /etc/passwd``, the Windows caret (``w^hoami``) vanishes."""
    if "$" in low:
        low = _SHELL_IFS.sub(" ", low)
        low = _SHELL_EMPTY.sub("", low)
        # an unset variable expands to nothing: ``c$u'a't`` is ``cat``
        low = _SHELL_VAR.sub("", low)
    if "\\" in low:
        low = low.replace("\\\n", "").replace("\\", "")
    low = low.replace("'", "").replace('"', "").replace("^", "")
    if "{" in low:
        low = _SHELL_BRACES.sub(lambda m: m.group(1).replace(",", " "), low)
    if "``" in low:
        low = low.replace("``", "")
    return low


def escape_control(text: str) -> str:
    """Printable characters as they are, every other one as a Python escape (for logs)."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)
