"""IP-reputation feeds (``reputation.feeds[]``): reading the common list formats, refusing
absurd feeds, expiry, and fetching URL feeds for the control plane.

A feed is text, one address or CIDR range a line. Comments start with ``#`` or ``;`` (also
after an entry: ``192.0.2.0/24 ; SBL123``, Spamhaus DROP style); anything after the first
word is ignored (some feeds add columns). Host bits in a range are cleared (``192.0.2.7/24`` is
``192.0.2.0/24``). A line that is not an address refuses the whole feed: a half-read list is
worse than the last good one.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import socket
import ssl
import time
import urllib.request
from dataclasses import dataclass, field

from . import ir
from .documents import Document, DocumentStore, gc_paused
from .errors import Diagnostics
from .model import policy as pol

# A feed whose ranges together cover more than this share of an address family is refused:
# 1/1024 of IPv4 is 4,194,304 addresses (a /10, bigger than any single hosting provider's
# block a reputation list should name); for IPv6, 2^-20 of the space (a /20, bigger than any
# regional registry's allocation to one network).
MAX_SHARE = {4: 2.0**-10, 6: 2.0**-20}
MAX_ENTRIES = 2_000_000  # the default; a feed may lower it (maxEntries)
MAX_FEED_BYTES = 64 << 20
# Fetched copies are handed to the compile as text under this prefix (no provider name has
# a colon, so they never meet the JWKS the same mapping carries).
FETCHED_PREFIX = "reputation:"
_MAX_LINE_ERRORS = 5


class FeedError(ValueError):
    """The feed is refused; the message names the feed and, for bad lines, their numbers."""


@dataclass(frozen=True, slots=True)
class Parsed:
    cidrs: tuple[str, ...]  # normalized, deduplicated, sorted
    addresses: dict[int, int]  # family → addresses covered by the union of the ranges


def parse(text: str, feed: str, max_entries: int = MAX_ENTRIES) -> Parsed:
    """The feed's ranges; raises FeedError for bad lines, too many entries or an absurd union."""
    with gc_paused():  # a million fresh tuples, no cycles: collections would cost more than the parse
        return _parse(text, feed, max_entries)


class _InForce:
    """What the last compile parsed and merged, kept for the next one: a 1M-line feed takes
    seconds to parse and merge, and most compiles (a spec pushed, a policy edited) have the
    same feeds. Only the feeds in force at the last compile are kept (their memory is the
    served configuration's anyway)."""

    def __init__(self) -> None:
        self.parsed: dict[tuple[str, str, int], Parsed] = {}  # (text digest, feed, maxEntries)
        self.merged: tuple[list[tuple[Parsed, bool]], tuple[str, ...], tuple[str, ...]] | None = None

    def parse(self, text: str, feed: str, max_entries: int, used: dict[tuple[str, str, int], Parsed]) -> Parsed:
        key = (hashlib.sha256(text.encode()).hexdigest(), feed, max_entries)
        hit = self.parsed.get(key) or used.get(key) or parse(text, feed, max_entries)
        used[key] = hit
        return hit

    def merge(self, lists: list[tuple[Parsed, bool]]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(blocked, soft only), each sorted: the union of the lists (``True``: a blocking one)."""
        last = self.merged
        if (
            last is not None
            and len(last[0]) == len(lists)
            and all(a is b and x == y for (a, x), (b, y) in zip(last[0], lists, strict=True))
        ):
            return last[1], last[2]
        block: set[str] = set()
        soft: set[str] = set()
        for parsed, blocking in lists:
            (block if blocking else soft).update(parsed.cidrs)
        out = tuple(sorted(block)), tuple(sorted(soft - block))
        self.merged = (lists, *out)
        return out


_IN_FORCE = _InForce()


def _parse(text: str, feed: str, max_entries: int) -> Parsed:
    entries: set[tuple[int, int, int]] = set()  # (family, first address, prefix length)
    bad: list[str] = []
    bad_count = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        word = line.split(None, 1)[0]
        entry = _entry(word)
        if entry is None:
            bad_count += 1
            if len(bad) < _MAX_LINE_ERRORS:
                bad.append(f"line {number}: {word[:60]!r}")
        else:
            entries.add(entry)
    if bad:
        more = f" and {bad_count - len(bad)} more" if bad_count > len(bad) else ""
        raise FeedError(f"feed {feed!r}: not an IP address or CIDR range: {', '.join(bad)}{more}")
    if len(entries) > max_entries:
        raise FeedError(f"feed {feed!r} has {len(entries)} entries, more than its maxEntries ({max_entries})")
    ordered = sorted(entries, key=_order)
    covered = {4: _union_size(ordered, 4), 6: _union_size(ordered, 6)}
    for family, share in MAX_SHARE.items():
        total = 2 ** _BITS[family]
        if covered[family] > share * total:
            raise FeedError(
                f"feed {feed!r} covers {covered[family] / total:.4%} of the IPv{family} address space, more "
                f"than the {share:.4%} a reputation feed may block (a mistake such as 0.0.0.0/0?); not applied"
            )
    return Parsed(tuple(_text(e) for e in ordered), covered)


_BITS = {4: 32, 6: 128}
_FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}


def _entry(word: str) -> tuple[int, int, int] | None:
    """(family, first address, prefix length), host bits cleared; None if not an address.
    inet_pton is strict (no shortened or zero-padded IPv4, as ``ipaddress``) and ten times
    faster than ``ipaddress`` on a feed of a million lines."""
    address, slash, length = word.partition("/")
    family = 6 if ":" in address else 4
    try:
        value = int.from_bytes(socket.inet_pton(_FAMILY[family], address), "big")
    except (OSError, ValueError):
        return None
    bits = _BITS[family]
    if not slash:
        return family, value, bits
    if not length.isascii() or not length.isdigit() or int(length) > bits:
        return None
    prefix = int(length)
    host = bits - prefix
    return family, value >> host << host, prefix


def _order(entry: tuple[int, int, int]) -> int:
    """The entries' tuple order as one integer: a million of them sort in a third of the time."""
    family, value, prefix = entry
    return (family << 136) | (value << 8) | prefix


def _text(entry: tuple[int, int, int]) -> str:
    family, value, prefix = entry
    packed = value.to_bytes(_BITS[family] // 8, "big")
    return f"{socket.inet_ntop(_FAMILY[family], packed)}/{prefix}"


def _union_size(ordered: list[tuple[int, int, int]], family: int) -> int:
    """Addresses in the union of the ranges (overlaps counted once); ``ordered`` sorted."""
    bits = _BITS[family]
    total, end = 0, -1
    for fam, first, prefix in ordered:
        if fam != family:
            continue
        last = first + (1 << (bits - prefix)) - 1
        if last <= end:
            continue
        total += last - max(first, end + 1) + 1
        end = last
    return total


def expiry(text: str | None, fetched_at: float) -> float | None:
    """When a feed stops applying: an RFC 3339 time, or a duration after it was fetched (or
    its file last changed)."""
    if text is None:
        return None
    if not counts_from_fetch(text):
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        if moment.tzinfo is None:
            raise ValueError("an RFC 3339 time needs its offset (Z or +hh:mm)")
        return moment.timestamp()
    return fetched_at + pol.duration_ms(text) / 1000


def counts_from_fetch(text: str | None) -> bool:
    """An expiry that is a duration after the last good fetch (not a fixed time): every good
    fetch, even of the same list, moves it (the compile that follows pushes nothing new)."""
    return text is not None and not (text[-1].isdigit() or text[-1] in "Zz")  # RFC 3339 ends so


def rfc3339(epoch: float) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# -- fetched copies --------------------------------------------------------------------------
def fetched_text(text: str, fetched_at: float) -> str:
    """What the control plane hands the compile: the feed and when it was fetched."""
    return f"# fetched-at: {fetched_at!r}\n{text}"


def split_fetched(text: str) -> tuple[str, float]:
    head, _, body = text.partition("\n")
    return body, float(head.removeprefix("# fetched-at: "))


def download(feed: ir.ReputationFeed) -> tuple[str, Parsed]:
    """The feed's text, checked; raises OSError or FeedError. The control plane keeps its last
    good copy when this fails."""
    assert feed.url is not None
    context = ssl.create_default_context(cafile=feed.ca_file)
    with urllib.request.urlopen(feed.url, timeout=feed.timeout_ms / 1000, context=context) as resp:
        body: bytes = resp.read(MAX_FEED_BYTES + 1)
    if len(body) > MAX_FEED_BYTES:
        raise FeedError(f"feed {feed.name!r} is larger than {MAX_FEED_BYTES >> 20} MiB")
    text = body.decode("utf-8", errors="replace")
    return text, parse(text, feed.name, feed.max_entries)


@dataclass
class FeedState:
    """What ``status`` says of a URL feed."""

    url: str
    entries: int | None = None
    fetched_at: float | None = None  # the last good copy
    error: str | None = None
    failed_at: float | None = None
    failures: int = 0

    def as_json(self) -> dict[str, object]:
        return {
            "url": self.url,
            "entries": self.entries,
            "fetchedAt": rfc3339(self.fetched_at) if self.fetched_at else None,
            "error": self.error,
            "failedAt": rfc3339(self.failed_at) if self.failed_at else None,
            "consecutiveFailures": self.failures,
            "state": "failing, last good copy kept"
            if self.error and self.fetched_at
            else "failing, nothing fetched yet"
            if self.error
            else "ok",
        }


@dataclass
class Fetched:
    """The control plane's copies of URL feeds: name → text for the compile, and their states."""

    texts: dict[str, str] = field(default_factory=dict)
    states: dict[str, FeedState] = field(default_factory=dict)

    def fetch(self, feed: ir.ReputationFeed) -> bool:
        """Fetch one feed (blocking); True when its copy changed."""
        state = self.states.setdefault(feed.name, FeedState(feed.url or ""))
        try:
            text, parsed = download(feed)
        except (OSError, ValueError) as exc:
            state.error, state.failed_at = str(exc), time.time()
            state.failures += 1
            return False
        state.error, state.failures = None, 0
        state.entries, state.fetched_at = len(parsed.cidrs), time.time()
        key = FETCHED_PREFIX + feed.name
        old = self.texts.get(key)
        if old is not None and split_fetched(old)[0] == text and not counts_from_fetch(feed.expires):
            return False  # the same list: nothing to compile
        self.texts[key] = fetched_text(text, state.fetched_at)
        return True


# -- the policy section ----------------------------------------------------------------------
def read_section(
    section: dict[str, object],
    doc: Document,
    store: DocumentStore,
    fetched: dict[str, str] | None,
    diags: Diagnostics,
    now: float | None = None,
) -> ir.Reputation:
    """The feeds in force: each parsed, refused ones reported as errors naming the feed."""
    now = time.time() if now is None else now
    file, base = doc.name, doc.path.parent
    fetched = fetched or {}
    specs: list[ir.ReputationFeed] = []
    lists: list[tuple[Parsed, bool]] = []
    used: dict[tuple[str, str, int], Parsed] = {}
    expiries: list[float] = []
    feeds = section.get("feeds", [])
    assert isinstance(feeds, list)
    names: set[str] = set()
    for i, item in enumerate(feeds):
        ptr = f"/reputation/feeds/{i}"
        name = item["name"]
        if name in names:
            diags.error(f"reputation feed {name!r} is defined twice", file, ptr + "/name", "duplicate-name")
            continue
        names.add(name)
        feed = ir.ReputationFeed(
            name=name,
            action=item.get("action", "block"),
            source=ir.Source(file, ptr),
            url=item.get("url"),
            ca_file=str(base / item["caFile"]) if "caFile" in item else None,
            refresh_ms=pol.duration_ms(item.get("refresh", "1h")),
            timeout_ms=pol.duration_ms(item.get("timeout", "30s")),
            max_entries=item.get("maxEntries", MAX_ENTRIES),
            expires=item.get("expires"),
        )
        specs.append(feed)
        text: str | None = None
        if "file" in item:
            loaded = store.load_text(base / item["file"], (doc, ptr + "/file"), MAX_FEED_BYTES)
            if loaded is None:
                continue
            text = loaded.raw.decode("utf-8", errors="replace")
            loaded_at = loaded.path.stat().st_mtime
        else:
            copy = fetched.get(FETCHED_PREFIX + name)
            if copy is None:
                continue  # not fetched yet (or never fetched well): nothing to apply
            text, loaded_at = split_fetched(copy)
        try:
            ends = expiry(feed.expires, loaded_at)
        except ValueError as exc:
            diags.error(f"reputation feed {name!r}: expires: {exc}", file, ptr + "/expires", "feed-expiry")
            continue
        if ends is not None and ends <= now:
            diags.warning(
                f"reputation feed {name!r} expired at {rfc3339(ends)}: not applied",
                file,
                ptr + "/expires",
                "feed-expired",
            )
            continue
        try:
            parsed = _IN_FORCE.parse(text, name, feed.max_entries, used)
        except FeedError as exc:
            # A fetched copy was checked when fetched; it fails here only if maxEntries was lowered since.
            diags.error(str(exc), file, ptr + ("/file" if "file" in item else "/maxEntries"), "feed-refused")
            continue
        if ends is not None:
            expiries.append(ends)
        lists.append((parsed, feed.action == "block"))
    _IN_FORCE.parsed = used
    block, soft = _IN_FORCE.merge(lists)
    exempt = tuple(str(n) for n in _check_exempt(section.get("exempt", []), file, diags))
    return ir.Reputation(
        feeds=tuple(specs),
        block=block,
        soft=soft,
        exempt=exempt,
        next_expiry=min(expiries) if expiries else None,
    )


def _check_exempt(values: object, file: str, diags: Diagnostics) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    out = []
    assert isinstance(values, list)
    for i, value in enumerate(values):
        try:
            out.append(ipaddress.ip_network(str(value), strict=False))
        except ValueError as exc:
            diags.error(f"{value!r} is not an IP address or CIDR range: {exc}", file, f"/reputation/exempt/{i}", "cidr")
    return out
