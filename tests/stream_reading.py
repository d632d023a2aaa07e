"""Read dirty streams the way consumers do, for the stream, event, outbox and broker tests.

Raw entries come from redis-py's XRANGE and are decoded with
``fluxaorm.events.decode_entry`` and the engine's unwirer, the same path
consumers take, so a test sees exactly what a consumer would be handed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import redis
import redis.cluster

import fluxaorm
from fluxaorm.events import DirtyStreamEvent, EventBatch, decode_entry
from fluxaorm.outbox import record_key

Raw = tuple[str, dict[bytes, bytes]]
Summary = tuple[str, fluxaorm.Operation, int, dict[str, Any]]


def raw_entries(client: redis.Redis, name: str) -> list[Raw]:
    """Return every entry of the dirty stream ``name`` as ``(id, fields)``."""
    return [
        (ident.decode(), dict(fields))
        for ident, fields in client.xrange(f"dirty_{name}")
    ]


def read_events(
    client: redis.Redis, engine: fluxaorm.Engine, name: str
) -> list[DirtyStreamEvent]:
    """Return every entry of the dirty stream ``name`` decoded into events."""
    return [
        decode_entry(name, ident, fields, engine.unwirer)
        for ident, fields in raw_entries(client, name)
    ]


def summarize(events: Iterable[DirtyStreamEvent]) -> list[Summary]:
    """Return ``(class name, operation, id, bind)`` per event, in stream order."""
    return [
        (e.entity_name.rsplit(".", 1)[-1], e.operation, e.id, e.bind) for e in events
    ]


def stream_contents(
    client: redis.Redis, engine: fluxaorm.Engine
) -> dict[str, list[Summary]]:
    """Return the summarized events of every non-empty ``dirty_*`` key, by stream name."""
    out: dict[str, list[Summary]] = {}
    for key in sorted(k.decode() for k in stream_keys(client)):
        name = key[len("dirty_") :]
        found = summarize(read_events(client, engine, name))
        if found:
            out[name] = found
    return out


def eid_counts(client: redis.Redis, names: Iterable[str]) -> Counter[tuple[str, str]]:
    """Count the entries carrying each ``(stream, eid)`` pair."""
    counts: Counter[tuple[str, str]] = Counter()
    for name in names:
        for _, fields in raw_entries(client, name):
            counts[(name, fields[b"eid"].decode())] += 1
    return counts


def all_keys(client: Any, pattern: str) -> list[bytes]:
    """KEYS ``pattern`` on one server, or on every master of a cluster client."""
    if isinstance(client, redis.cluster.RedisCluster):
        found = client.keys(pattern, target_nodes=redis.cluster.RedisCluster.PRIMARIES)
        return list(found)
    return list(client.keys(pattern))


def stream_keys(client: redis.Redis) -> list[bytes]:
    """The dirty streams' keys (and dead letters'), not the outbox records beside them."""
    return sorted(k for k in all_keys(client, "dirty_*") if b"{" not in k)


def outbox_rows(mysql_conn: Any, redis_client: Any = None) -> tuple[int, int]:
    """Return ``(rows, entries)`` in the outbox table (0, 0 when it is missing).

    With ``redis_client``, only what still waits to be published: a row (or the
    part of it) that Redis records as published, waiting for its cleanup by the
    writer's next flush, is left out.
    """
    cursor = mysql_conn.cursor()
    cursor.execute(
        "SELECT COUNT(*) FROM information_schema.TABLES "
        "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '_fluxaorm_outbox'"
    )
    if not cursor.fetchone()[0]:
        return 0, 0
    cursor.execute("SELECT `entries`, `payload` FROM `_fluxaorm_outbox`")
    rows = entries = 0
    for count, payload in cursor.fetchall():
        left = int(count)
        if redis_client is not None:
            batch = EventBatch.loads(bytes(payload))
            member = batch.event_id.encode()
            done = {
                s
                for r in batch.records
                for s in r.streams
                if redis_client.zscore(record_key(s), member) is not None
            }
            left -= sum(1 for r in batch.records for s in r.streams if s in done)
        if left:
            rows += 1
            entries += left
    return rows, entries
