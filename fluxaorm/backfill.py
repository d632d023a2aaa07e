"""Backfill: publish a table's existing rows to one dirty stream, resumably.

``Engine.backfill()`` calls :func:`backfill`, and the ``fluxaorm backfill``
command calls that. Rows are read in chunks by id, never the whole table. Each
chunk's XADDs and the checkpoint (the last id published) travel in one
MULTI/EXEC, so a process killed at any point leaves a checkpoint that matches
what the stream received, and the next run starts right after it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError, StreamError
from .events import EventBatch, EventRecord, pack_bind
from .streams import RedisPool, pack_command, parse_entries

if TYPE_CHECKING:
    from .engine import Engine, StreamInfo
    from .schema import EntitySchema

__all__ = ["BackfillProgress", "backfill", "checkpoint_key"]

# Called with (rows published so far, rows in all, last id published).
BackfillProgress = Callable[[int, int, int], None]
_CHECKPOINT = ":backfill:"


def checkpoint_key(stream_key: str, entity_name: str) -> str:
    """The Redis key of a backfill's checkpoint (``dirty_{dirty_<Name>}:backfill:<entity>``).

    A stream holding at most one entry: the last id published and the rows
    published so far. It lives beside the stream (the ACL pattern ``dirty_*``
    covers it; the hash tag puts it in the stream's slot of a Redis Cluster, so
    one MULTI/EXEC holds both) and is deleted when the backfill completes.
    """
    return "dirty_{" + stream_key + "}" + _CHECKPOINT + entity_name


def backfill(
    engine: Engine,
    entity: type,
    stream: str,
    *,
    chunk: int = 1000,
    restart: bool = False,
    progress: BackfillProgress | None = None,
) -> int:
    """Publish every row of ``entity`` to ``stream`` as an Update event, in id order.

    See :meth:`fluxaorm.Engine.backfill`.
    """
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
        raise ConfigurationError(
            f"backfill: chunk must be 1 or more rows, not {chunk!r}"
        )
    schema = engine.schema(entity)
    info = engine.stream(stream)
    if info.name not in schema.streams:
        fed = ", ".join(f"dirty_{s}" for s in schema.streams) or "none"
        raise ConfigurationError(
            f"backfill: {schema.label} does not feed the dirty stream {info.key} "
            f"(it feeds: {fed}); pick one of those"
        )
    pool = engine.redis_pool(info.redis_pool)
    key = checkpoint_key(info.key, schema.name)
    # Fails at once (WRONGTYPE, NOPERM, unreachable) before anything is read.
    pool.execute("XLEN", info.key)
    if restart:
        _clear(pool, key)
    last, done = _read_checkpoint(pool, key)
    alive = f" AND {schema.alive_sql}" if schema.alive_sql else ""
    select = f"{schema.select_sql} WHERE `id` > %s{alive} ORDER BY `id` LIMIT %s"
    mysql = engine.mysql_pool(schema.mysql_pool)
    with mysql.connection() as conn:
        remaining = int(
            conn.query(
                f"SELECT COUNT(*) FROM {schema.quoted_table} WHERE `id` > %s{alive}",
                (last,),
            )[0][0]
        )
    total = done + remaining
    if progress is not None:
        progress(done, total, last)
    published = 0
    while True:
        with mysql.connection() as conn:
            rows = conn.query(select, (last, chunk))
        if not rows:
            break
        batch = _batch(schema, info, rows)
        ident = batch.records[-1].id
        _publish(
            engine, pool, info, key, batch, (last, done), (ident, done + len(rows))
        )
        last, done = ident, done + len(rows)
        published += len(rows)
        if progress is not None:
            progress(done, max(total, done), last)
        if len(rows) < chunk:
            break
    _clear(pool, key)
    return published


def _batch(schema: EntitySchema, info: StreamInfo, rows: Any) -> EventBatch:
    """The Update events (every field, ``id`` included) of one chunk of rows."""
    streams = (info.name,)
    load, values_of, wire = schema.load, schema.get_values, schema.wire_values
    records = []
    for row in rows:
        values = values_of(load(row))
        records.append(
            EventRecord(
                streams, "edit", schema.name, int(row[0]), pack_bind(wire(values)), None
            )
        )
    return EventBatch(info.redis_pool, records)


def _clear(pool: RedisPool, key: str) -> None:
    """Delete a checkpoint (or empty it, for an ACL user that may not DEL)."""
    if isinstance(pool.pipeline([("DEL", key)], "DEL")[0], Exception):
        pool.execute("XTRIM", key, "MAXLEN", "0")


def _read_checkpoint(pool: RedisPool, key: str) -> tuple[int, int]:
    """Return ``(last id published, rows published)``; ``(0, 0)`` when none."""
    entries = parse_entries(pool.execute("XREVRANGE", key, "+", "-", "COUNT", 1))
    if not entries or entries[0][1] is None:
        return 0, 0
    fields = entries[0][1]
    try:
        return int(fields[b"last_id"]), int(fields[b"published"])
    except (KeyError, ValueError):
        raise ConfigurationError(
            f"backfill: the checkpoint {key} does not hold a last id; delete it "
            "(or pass restart=True / --restart) to start from the first row"
        ) from None


def _checkpoint(key: str, entity: str, last: int, done: int) -> tuple[Any, ...]:
    """The XADD that records a checkpoint (the key keeps only its last entry)."""
    return (
        "XADD", key, "MAXLEN", "1", "*",
        "entity", entity, "last_id", last, "published", done,
    )  # fmt: skip


def _publish(
    engine: Engine,
    pool: RedisPool,
    info: StreamInfo,
    key: str,
    batch: EventBatch,
    before: tuple[int, int],
    after: tuple[int, int],
) -> None:
    """XADD one chunk and move the checkpoint in one MULTI/EXEC.

    When Redis ran the transaction but refused some XADDs (a key of another
    type), the checkpoint is put back where it was, so the next run publishes
    that chunk again rather than skip it.
    """
    entity = batch.records[0].entity
    payload, commands = engine.encoder.encode(batch)
    payload += pack_command(*_checkpoint(key, entity, *after))
    try:
        pool.transaction(payload, commands + 1, "backfill")
    except StreamError as exc:
        if not exc.connection_lost:
            # A lost connection ran all of the transaction or none of it; any
            # other failure may have moved the checkpoint past refused entries.
            if before[0]:
                pool.execute(*_checkpoint(key, entity, *before))
            else:
                _clear(pool, key)
        raise StreamError(
            f"backfill of {entity} to {info.key} stopped after id {before[0]} "
            f"({before[1]} rows published): {exc}; run it again to resume",
            pool=exc.pool,
            orig=exc.orig,
            connection_lost=exc.connection_lost,
            permanent=exc.permanent,
        ) from exc


def read_checkpoint(engine: Engine, entity: type, stream: str) -> tuple[int, int]:
    """Return ``(last id published, rows published)`` of an unfinished backfill.

    ``(0, 0)`` when none is under way (never started, or completed).
    """
    schema = engine.schema(entity)
    info = engine.stream(stream)
    pool = engine.redis_pool(info.redis_pool)
    return _read_checkpoint(pool, checkpoint_key(info.key, schema.name))
