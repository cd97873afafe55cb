"""The Envoys of the other control-plane replicas, for a push's rollout.

With the versions in the cluster (``push.cluster``), a push to one replica is served by all,
each to its own Envoys. ``serve --push-peers HOST:PORT,...`` names the replicas' admin
addresses (a headless Service's name resolves to every replica); the replica that took the
push then asks each one's ``/rollout`` until it serves the new live map and its Envoys have
ACKed it, or one NACKed it. Its own answer is recognised by its instance id and skipped.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import time
import urllib.request
from typing import Any

from .rollout import Rollout

INSTANCE = secrets.token_hex(8)  # this process, in its /rollout answers
POLL_S = 0.025  # while a rollout is watched only: the lag it adds to an answer, against requests
REQUEST_TIMEOUT_S = 2.0


def answer(live: dict[str, int], state: Rollout) -> dict[str, Any]:
    """What ``/rollout`` says: which live map this replica serves, and where its Envoys are."""
    return {"instance": INSTANCE, "live": live, "rollout": state.as_json()}


def addresses(peers: tuple[str, ...]) -> list[tuple[str, int]]:
    """Every address the names resolve to now (replicas come and go)."""
    out: set[tuple[str, int]] = set()
    for peer in peers:
        host, _, port = peer.rpartition(":")
        try:
            infos = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
        except (OSError, ValueError):
            out.add((host, int(port) if port.isdigit() else 0))  # reported as unreachable
            continue
        out.update((str(info[4][0]), int(info[4][1])) for info in infos)
    return sorted(out)


def _ask(host: str, port: int) -> dict[str, Any]:
    shown = f"[{host}]" if ":" in host else host
    with urllib.request.urlopen(f"http://{shown}:{port}/rollout", timeout=REQUEST_TIMEOUT_S) as resp:
        data: dict[str, Any] = json.loads(resp.read())
    return data


async def wait(peers: tuple[str, ...], live: dict[str, int], mine: Rollout, timeout: float) -> Rollout:
    """``mine`` (this replica's rollout) with the other replicas' Envoys: until each replica
    serves ``live`` and its Envoys ACKed it, one NACKed it, or ``timeout``."""
    started = time.monotonic()
    while True:
        merged = Rollout(mine.version, list(mine.synced), list(mine.pending), list(mine.nacks))
        for host, port in await asyncio.to_thread(addresses, peers):
            try:
                peer = await asyncio.to_thread(_ask, host, port)
            except (OSError, ValueError) as exc:
                merged.pending.append(f"control plane {host}:{port} (not answering: {exc})")
                continue
            if peer.get("instance") == INSTANCE:
                continue
            if peer.get("live") != live:
                merged.pending.append(f"control plane {host}:{port} (not yet serving the new live map)")
                continue
            state = peer.get("rollout") or {}
            merged.synced.extend(state.get("acked") or [])
            merged.pending.extend(state.get("pending") or [])
            merged.nacks.extend(state.get("nacks") or [])
        remaining = timeout - (time.monotonic() - started)
        if merged.done or remaining <= 0:
            merged.seconds = mine.seconds + time.monotonic() - started
            return merged
        await asyncio.sleep(min(POLL_S, remaining))
