"""Views of the server's state: status rows, per-node config dumps, and CSDS responses."""

from __future__ import annotations

import time
from typing import Any

from envoy.admin.v3 import config_dump_shared_pb2 as dump_pb2
from envoy.config.core.v3 import base_pb2
from envoy.service.status.v3 import csds_pb2
from google.protobuf import any_pb2, descriptor_pool, message_factory, timestamp_pb2

from ..resources import Resources, to_dict
from .cache import SnapshotCache
from .registry import Connection, Registry, Sync, sync_state
from .snapshot import TYPE_ORDER, Snapshot

SHORT = {url: short for short, url in Resources.TYPES.items()}


def type_status(conn: Connection, snapshot: Snapshot | None) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for type_url in TYPE_ORDER:
        state = conn.types.get(type_url)
        if state is None:
            continue
        current = snapshot.version_of(type_url, state.subscribed) if snapshot else ""
        row: dict[str, Any] = {
            "state": sync_state(state, current),
            "sent": state.sent_version,
            "acked": state.acked_version,
            "current": current,
            "pushes": state.pushes,
        }
        if state.nack is not None:
            row["nack"] = {
                "version": state.nack.version,
                "message": state.nack.message,
                "sources": [f"{s.file}#{s.pointer}" if s.pointer else s.file for s in state.nack.sources],
            }
        out[SHORT.get(type_url, type_url)] = row
    return out


def overall(types: dict[str, dict[str, Any]]) -> str:
    states = {row["state"] for row in types.values()}
    for s in (Sync.NACKED, Sync.STALE, Sync.NOT_SENT):
        if s in states:
            return s
    return Sync.SYNCED if states else Sync.NOT_SENT


def held_secrets(conn: Connection, snapshot: Snapshot | None) -> list[str]:
    """The secrets this node was sent and acknowledged (none when it may not have them)."""
    state = conn.types.get(Resources.SECRET)
    if snapshot is None or state is None or not state.acked_version or conn.secrets_refused:
        return []
    names = snapshot.of(Resources.SECRET)
    return sorted(n for n in (state.subscribed or names) if n in names)


def status(
    registry: Registry, cache: SnapshotCache, certificates: dict[str, tuple[str, str]] | None = None
) -> dict[str, Any]:
    """Every node's sync state; with ``certificates`` (secret → (file, expiry)), the
    certificates each node holds and their expiry."""
    certificates = certificates or {}
    nodes = []
    for conn in sorted(registry.connections.values(), key=lambda c: (c.node_id, c.stream_id)):
        if not conn.node_id:
            continue
        snapshot = cache.get(conn.group)
        types = type_status(conn, snapshot)
        nodes.append(
            {
                "node": conn.node_id,
                "group": conn.group,
                "identity": conn.identity,
                "protocol": conn.protocol,
                "peer": conn.peer,
                "envoy": conn.envoy_version,
                "connected_seconds": round(time.time() - conn.connected_at, 1),
                "state": overall(types),
                "types": types,
                "certificates": [
                    {"secret": n, "not_after": certificates[n][1]}
                    for n in held_secrets(conn, snapshot)
                    if n in certificates
                ],
            }
        )
    return {"nodes": nodes, "certificates": certificate_rows(certificates)}


def certificate_rows(certificates: dict[str, tuple[str, str]], now: float | None = None) -> list[dict[str, Any]]:
    """Served certificates with their expiry and days left (negative: expired)."""
    import datetime

    moment = datetime.datetime.fromtimestamp(now if now is not None else time.time(), datetime.UTC)
    rows = []
    for name, (file, not_after) in sorted(certificates.items()):
        left = (datetime.datetime.fromisoformat(not_after) - moment).total_seconds() / 86_400
        rows.append({"secret": name, "file": file, "not_after": not_after, "days_left": round(left, 2)})
    return rows


def _decode(type_url: str, value: bytes) -> Any:
    desc = descriptor_pool.Default().FindMessageTypeByName(type_url.rsplit("/", 1)[1])
    return message_factory.GetMessageClass(desc).FromString(value)


def sent_resources(conn: Connection, snapshot: Snapshot | None) -> dict[str, list[tuple[str, bytes]]]:
    """What this node was last sent, by type: (name, serialized resource), private keys redacted."""
    out: dict[str, list[tuple[str, bytes]]] = {}
    if snapshot is None:
        return out
    for type_url in TYPE_ORDER:
        state = conn.types.get(type_url)
        if state is None or not state.sent_version:
            continue
        entries = snapshot.of(type_url)
        names = sorted(entries) if state.subscribed is None else sorted(n for n in state.subscribed if n in entries)
        out[type_url] = [(n, entries[n].value) for n in names]
    if Resources.SECRET in out:  # views of what was sent never show a private key
        from ..translate.tls import redacted

        out[Resources.SECRET] = [
            (n, redacted(_decode(Resources.SECRET, v)).SerializeToString(deterministic=True))
            for n, v in out[Resources.SECRET]
        ]
    return out


def config_dump(registry: Registry, cache: SnapshotCache, node_id: str) -> dict[str, list[dict[str, Any]]] | None:
    """The live config of one node, in the offline dump's format (type → resources)."""
    conns = registry.by_node(node_id)
    if not conns:
        return None
    conn = conns[-1]
    resources = sent_resources(conn, cache.get(conn.group))
    return {
        short: [to_dict(_decode(url, value)) for _name, value in resources.get(url, [])]
        for short, url in Resources.TYPES.items()
    }


_CONFIG_STATUS = {
    Sync.SYNCED: csds_pb2.SYNCED,
    Sync.STALE: csds_pb2.STALE,
    Sync.NACKED: csds_pb2.ERROR,
    Sync.NOT_SENT: csds_pb2.NOT_SENT,
}


def client_configs(registry: Registry, cache: SnapshotCache, node_ids: set[str] | None) -> list[Any]:
    """CSDS ClientConfig per connected node: what it was sent, and whether it ACKed or NACKed."""
    out = []
    for conn in registry.connections.values():
        if not conn.node_id or (node_ids is not None and conn.node_id not in node_ids):
            continue
        snapshot = cache.get(conn.group)
        config = csds_pb2.ClientConfig(node=base_pb2.Node(id=conn.node_id, cluster=conn.group))
        for type_url, items in sent_resources(conn, snapshot).items():
            state = conn.types[type_url]
            current = snapshot.version_of(type_url, state.subscribed) if snapshot else ""
            sync = sync_state(state, current)
            for name, value in items:
                generic = config.generic_xds_configs.add(
                    type_url=type_url,
                    name=name,
                    version_info=state.sent_version,
                    xds_config=any_pb2.Any(type_url=type_url, value=value),
                    config_status=_CONFIG_STATUS[sync],
                    client_status=dump_pb2.NACKED
                    if sync == Sync.NACKED
                    else dump_pb2.ACKED
                    if state.acked_version == state.sent_version
                    else dump_pb2.REQUESTED,
                )
                generic.last_updated.CopyFrom(_timestamp(state.sent_at))
                if state.nack is not None and sync == Sync.NACKED:
                    generic.error_state.details = state.nack.message
                    generic.error_state.version_info = state.nack.version
                    generic.error_state.last_update_attempt.CopyFrom(_timestamp(state.nack.at))
        out.append(config)
    return out


def _timestamp(t: float) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(t * 1e9))
    return ts
