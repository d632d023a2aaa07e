"""The transactional outbox: events written to MySQL with the rows they describe.

``flush.py`` adds one outbox row per (flush, MySQL pool, Redis pool) inside the
flush's transaction and deletes it once Redis has the entries; :func:`relay`
(``Engine.relay_outbox()``, also run by consumers' loops) publishes rows whose
publisher died or could not reach Redis. ``ddl.py`` creates the table.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from .db import Connection, MySQLPool
from .errors import DatabaseError, StreamError
from .events import EventBatch, StreamEncoder
from .sql import bytes_literal
from .streams import RedisPool

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["OUTBOX_TABLE", "delete_rows", "insert_statements", "payload_limit", "relay"]

OUTBOX_TABLE = "_fluxaorm_outbox"
_Q = f"`{OUTBOX_TABLE}`"
CREATE_SQL = (
    f"CREATE TABLE {_Q} (\n"
    "  `id` bigint unsigned NOT NULL AUTO_INCREMENT,\n"
    "  `created_at` datetime(6) NOT NULL,\n"
    "  `redis_pool` varchar(64) NOT NULL,\n"
    "  `entries` int unsigned NOT NULL,\n"
    "  `payload` longblob NOT NULL,\n"
    "  PRIMARY KEY (`id`),\n"
    "  KEY `created_at` (`created_at`)\n"
    ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
)
_RELAY_BATCH = 100
_log = logging.getLogger("fluxaorm.outbox")


def insert_statements(
    batches: Sequence[EventBatch], max_packet: int
) -> list[tuple[str, int]]:
    """Render the INSERTs of one outbox row per batch, as few as ``max_packet`` allows.

    Returns:
        ``(statement, rows)`` pairs, in the order of ``batches``.
    """
    head = f"INSERT INTO {_Q} (`created_at`,`redis_pool`,`entries`,`payload`) VALUES "
    budget = max_packet - 8192 - len(head)
    statements: list[tuple[str, int]] = []
    rows: list[str] = []
    size = 0
    for b in batches:
        row = f"(NOW(6),'{b.redis_pool}',{b.entries},{bytes_literal(b.dumps())})"
        if rows and size + len(row) + 1 > budget:
            statements.append((head + ",".join(rows), len(rows)))
            rows, size = [], 0
        rows.append(row)
        size += len(row) + 1
    if rows:
        statements.append((head + ",".join(rows), len(rows)))
    return statements


def payload_limit(max_packet: int) -> int:
    """The largest batch payload one outbox row can carry (hex doubles it)."""
    return max(4096, (max_packet - 16384) // 2)


def delete_rows(conn: Connection, ids: Iterable[int]) -> None:
    """Delete published outbox rows."""
    listed = ",".join(str(i) for i in ids)
    if listed:
        conn.execute(f"DELETE FROM {_Q} WHERE `id` IN ({listed})")


def publish(
    redis_pools: Mapping[str, RedisPool],
    encoder: StreamEncoder,
    batches: Sequence[EventBatch],
) -> tuple[set[int], list[StreamError]]:
    """Publish batches: one MULTI/EXEC round trip per Redis pool.

    Returns:
        The indexes (in ``batches``) of the batches Redis accepted, and the errors of
        the pools that failed.
    """
    by_pool: dict[str, list[int]] = {}
    for i, batch in enumerate(batches):
        if batch.records:
            by_pool.setdefault(batch.redis_pool, []).append(i)
        else:
            by_pool.setdefault(batch.redis_pool, [])
    done: set[int] = set()
    errors: list[StreamError] = []
    for pool_name, indexes in by_pool.items():
        if not indexes:
            continue
        parts = []
        count = 0
        for i in indexes:
            payload, n = encoder.encode(batches[i])
            parts.append(payload)
            count += n
        pool = redis_pools.get(pool_name)
        if pool is None:
            errors.append(
                StreamError(
                    f"Redis pool {pool_name!r} is not registered", pool=pool_name
                )
            )
            continue
        try:
            pool.transaction(b"".join(parts), count, "XADD")
        except StreamError as exc:
            errors.append(exc)
            continue
        done.update(indexes)
    return done, errors


def relay(
    pool: MySQLPool,
    redis_pools: Mapping[str, RedisPool],
    encoder: StreamEncoder,
    delay: float,
    mine: set[int],
) -> tuple[int, set[int]]:
    """Publish the outbox rows of one MySQL pool that are older than ``delay`` seconds.

    Rows in ``mine`` (this process's own failed publishes) go at once. Rows are
    locked with ``FOR UPDATE SKIP LOCKED`` while they are published and deleted in
    the same transaction, so concurrent relays never publish the same row.

    Returns:
        How many stream entries were published, and the ids of the rows handled.
    """
    published = 0
    handled: set[int] = set()
    while True:
        mine_sql = (
            f" OR `id` IN ({','.join(str(i) for i in sorted(mine))})" if mine else ""
        )
        # READ COMMITTED: row locks only, no gap locks, so concurrent relays (and
        # flushes inserting new outbox rows) never deadlock on the scanned range.
        with pool.transaction("READ COMMITTED") as conn:
            rows = conn.query(
                f"SELECT `id`,`redis_pool`,`payload` FROM {_Q} "
                f"WHERE `created_at` <= NOW(6) - INTERVAL {float(delay):f} SECOND{mine_sql} "
                f"ORDER BY `id` LIMIT {_RELAY_BATCH} FOR UPDATE SKIP LOCKED"
            )
            if not rows:
                return published, handled
            batches: list[EventBatch] = []
            ids: list[int] = []
            for ident, _pool_name, payload in rows:
                try:
                    batches.append(EventBatch.loads(bytes(payload)))
                except (ValueError, TypeError) as exc:
                    _log.error(
                        "outbox row %s cannot be read (%s); it is left in place",
                        ident,
                        exc,
                    )
                    continue
                ids.append(int(ident))
            done, errors = publish(redis_pools, encoder, batches)
            for error in errors:
                _log.warning(
                    "outbox relay: %s; the rows stay for the next relay", error
                )
            finished = [ids[i] for i in sorted(done)]
            delete_rows(conn, finished)
            published += sum(batches[i].entries for i in done)
            handled.update(finished)
            mine.difference_update(finished)
        if errors:
            raise errors[0]
        if len(rows) < _RELAY_BATCH:
            return published, handled


def backlog(pool: MySQLPool) -> tuple[int, int, float]:
    """Return ``(rows, entries, oldest age in seconds)`` of a pool's outbox."""
    try:
        with pool.connection() as conn:
            row = conn.query(
                f"SELECT COUNT(*), COALESCE(SUM(`entries`),0), "
                f"COALESCE(TIMESTAMPDIFF(MICROSECOND, MIN(`created_at`), NOW(6)),0) FROM {_Q}"
            )[0]
    except DatabaseError as exc:
        if exc.orig is not None and getattr(exc.orig, "args", (0,))[0] == 1146:
            return 0, 0, 0.0
        raise
    return int(row[0]), int(row[1]), float(row[2]) / 1_000_000
