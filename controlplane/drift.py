"""Drift: does every Envoy connected to a control plane serve what some inputs compile to?

``check --server ADMIN PATH...`` compiles PATH here, asks the control plane for each connected
node's state (``/status``) and for what it was sent (``/config_dump?node=ID``), and compares them
resource by resource, in the form the offline ``dump`` prints (certificates and keys
are left out). A node fails the check when it is NACKED or STALE (it is not serving what it was sent),
when a resource it holds differs from the compiled one, or when it lacks one of a type it
subscribes to; each failure names the node, the resource and the first difference (its JSON
path and both values). Fit for a CI gate after a deploy, or a Kubernetes CronJob.

Only the node groups the compiled configuration is for are compared (the gateway's Envoys):
services (rate limit, WAF) and mesh sidecars get other resources, and only their state counts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .resources import Resources, to_dict
from .translate.routes import NOT_FOUND_ROUTE

# Secrets are left out: the mesh's workload certificates are issued by the serving control plane
# at run time, and a compile here has its own; the served certificates' expiry is in ``status``.
COMPARED = ("clusters", "endpoints", "listeners", "extensions", "scopes", "routes")
# Types an Envoy asks for whole (wildcard): one the node lacks is drift. Of the others it holds
# what it subscribed to, so only what it holds is compared.
WILDCARD = frozenset({"clusters", "listeners", "scopes"})


@dataclass(frozen=True)
class Finding:
    node: str
    what: str  # "NACKED", "STALE", "differs", "missing", "extra"
    resource: str = ""  # "listeners/public"
    detail: str = ""

    def line(self) -> str:
        where = f" {self.resource}" if self.resource else ""
        return f"{self.node}: {self.what}{where}" + (f": {self.detail}" if self.detail else "")


def expected(resources: Resources) -> dict[str, dict[str, Any]]:
    """The compiled resources by type and name, as the server's dump shows them."""
    out: dict[str, dict[str, Any]] = {}
    for short in COMPARED:
        url = Resources.TYPES[short]
        messages = resources.of(url)
        out[short] = {name: to_dict(m) for name, m in sorted(messages.items())}
    return out


def _name(short: str, resource: dict[str, Any]) -> str:
    if short == "endpoints":
        return str(resource.get("cluster_name", ""))
    return str(resource.get("name", ""))


def first_difference(want: Any, got: Any, path: str = "") -> str | None:
    """The JSON path of the first place two documents differ, with both values."""
    if isinstance(want, dict) and isinstance(got, dict):
        for key in sorted(want.keys() | got.keys()):
            if key not in got:
                return f"{path}/{key}: compiled {_short(want[key])}, served nothing"
            if key not in want:
                return f"{path}/{key}: served {_short(got[key])}, compiled nothing"
            found = first_difference(want[key], got[key], f"{path}/{key}")
            if found:
                return found
        return None
    if isinstance(want, list) and isinstance(got, list):
        for i, (a, b) in enumerate(zip(want, got, strict=False)):
            found = first_difference(a, b, f"{path}/{i}")
            if found:
                return found
        if len(want) != len(got):
            return f"{path}: compiled {len(want)} items, served {len(got)}"
        return None
    if want != got:
        return f"{path or '/'}: compiled {_short(want)}, served {_short(got)}"
    return None


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def compare_node(
    node: str, want: dict[str, dict[str, Any]], dump: dict[str, list[Any]], types: set[str]
) -> list[Finding]:
    """What differs between the compiled resources and one node's dump, for the types it has."""
    out = []
    for short in COMPARED:
        if short not in types:
            continue
        served = {_name(short, r): r for r in dump.get(short, [])}
        compiled = want.get(short, {})
        for name in sorted(compiled.keys() | served.keys()):
            resource = f"{short}/{name}"
            if name not in served:
                if short in WILDCARD:
                    out.append(Finding(node, "missing", resource, "compiled here, not served to this node"))
            elif name not in compiled:
                out.append(Finding(node, "extra", resource, "served to this node, not in what PATH compiles to"))
            else:
                found = first_difference(compiled[name], served[name])
                if found:
                    out.append(Finding(node, "differs", resource, found))
    return out


def check(
    status: dict[str, Any], dumps: dict[str, dict[str, list[Any]]], want: dict[str, dict[str, Any]], group: str
) -> list[Finding]:
    """Every finding for every node of ``status``; ``dumps`` holds the dumps of the nodes of
    ``group`` (the gateway's)."""
    out: list[Finding] = []
    for node in status["nodes"]:
        name, state = node["node"], node["state"]
        if state in ("NACKED", "STALE"):
            nacks = [f"{kind}: {t['nack']['message']}" for kind, t in node["types"].items() if "nack" in t]
            out.append(Finding(name, state, "", "; ".join(nacks)))
        if node["group"] == group and name in dumps:
            out.extend(compare_node(name, want, dumps[name], set(node["types"])))
    return out


# -- traffic: calls to endpoints no spec declares ------------------------------------------------

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_NUMBER = re.compile(r"^\d+$")
_HEX = re.compile(r"^[0-9a-fA-F]{8,}$")
_TOKEN = re.compile(r"^(?=.*\d)[A-Za-z0-9_-]{12,}$")  # an id-like segment: long, with digits


def path_shape(path: str) -> str:
    """``/orders/42/items/9f1c…`` → ``/orders/{n}/items/{id}``: calls to one endpoint together."""
    segments = []
    for segment in path.split("?", 1)[0].split("/"):
        if _NUMBER.match(segment):
            segments.append("{n}")
        elif _UUID.match(segment):
            segments.append("{uuid}")
        elif _HEX.match(segment) or _TOKEN.match(segment):
            segments.append("{id}")
        else:
            segments.append(segment)
    return "/".join(segments)


def unknown_endpoints(lines: Iterable[str]) -> list[tuple[str, str, int, str]]:
    """From the gateway's JSON access log: the requests it answered 404 because no spec declares
    what they asked for (its catch-all ``not-found`` route, or Envoy's no-route flag ``NR``; a
    backend's own 404 names its operation and is left out), by method and path shape, most
    frequent first: (method, shape, count, an example path)."""
    counts: dict[tuple[str, str], list[Any]] = {}
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if not isinstance(entry, dict) or str(entry.get("status")) != "404":
            continue
        if entry.get("operation") != NOT_FOUND_ROUTE and "NR" not in str(entry.get("flags", "")):
            continue
        path = str(entry.get("path") or "")
        key = (str(entry.get("method") or ""), path_shape(path))
        row = counts.setdefault(key, [0, path])
        row[0] += 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1][0], kv[0]))
    return [(method, shape, n, example) for (method, shape), (n, example) in ranked]
