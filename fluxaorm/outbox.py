"""The transactional outbox: events written to MySQL with the rows they describe.

``flush.py`` adds one outbox row per (flush, MySQL pool, Redis pool) inside the
flush's transaction and deletes it once Redis has the entries; :func:`relay`
(``Engine.relay_outbox()``, also run by consumers' loops) publishes rows whose
publisher died or could not reach Redis. ``ddl.py`` creates the table.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .db import Connection, MySQLPool
from .errors import DatabaseError, StreamError
from .events import EventBatch, StreamEncoder
from .sql import binary_literal
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
) -> list[tuple[bytes, int]]:
    """Render the INSERTs of one outbox row per batch, as few as ``max_packet`` allows.

    The statements are ``bytes``: payloads travel as raw escaped binary literals,
    about their own size on the wire (hexadecimal would double it).

    Returns:
        ``(statement, rows)`` pairs, in the order of ``batches``.
    """
    head = f"INSERT INTO {_Q} (`created_at`,`redis_pool`,`entries`,`payload`) VALUES ".encode()
    budget = max_packet - 8192 - len(head)
    statements: list[tuple[bytes, int]] = []
    rows: list[bytes] = []
    size = 0
    for b in batches:
        row = b"(NOW(6),'%s',%d,%s)" % (
            b.redis_pool.encode(),
            b.entries,
            binary_literal(b.dumps()),
        )
        if rows and size + len(row) + 1 > budget:
            statements.append((head + b",".join(rows), len(rows)))
            rows, size = [], 0
        rows.append(row)
        size += len(row) + 1
    if rows:
        statements.append((head + b",".join(rows), len(rows)))
    return statements


def payload_limit(max_packet: int) -> int:
    """The payload a batch may carry so its escaped outbox row fits one packet."""
    return max(4096, (max_packet - 16384) * 3 // 4)


def delete_rows(conn: Connection, ids: Iterable[int]) -> None:
    """Delete published outbox rows, one primary-key lookup each.

    ``WHERE id IN (...)`` on the (usually tiny) outbox table is often run as a
    full scan, which waits on rows other relays hold and deadlocks; a lookup by
    primary key touches only the row it deletes, which its caller has locked.
    """
    for ident in ids:
        conn.execute(f"DELETE FROM {_Q} WHERE `id`={int(ident)}")


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
    done: set[int] = set()
    errors: list[StreamError] = []
    for pool_name, indexes in by_pool.items():
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

    Rows in ``mine`` (this process's own failed publishes) go at once. Each pass
    locks up to 100 rows with ``FOR UPDATE SKIP LOCKED`` (READ COMMITTED: row locks
    only), deletes them, publishes them and commits, so concurrent relays never
    publish the same row and a deadlock can only strike before anything reached
    Redis (the pass is then retried). Rows that cannot be read, or whose Redis
    pool refuses them, stay in place and the walk goes on past them.

    Returns:
        How many stream entries were published, and the ids of the rows handled.

    Raises:
        StreamError: some rows could not be published (they stay for later).
    """
    published = 0
    handled: set[int] = set()
    after = 0
    failures: list[StreamError] = []
    retries = 0
    while True:
        mine_sql = (
            f" OR `id` IN ({','.join(str(i) for i in sorted(mine))})" if mine else ""
        )
        try:
            with pool.transaction("READ COMMITTED") as conn:
                rows = conn.query(
                    f"SELECT `id`,`payload` FROM {_Q} FORCE INDEX (PRIMARY) "
                    f"WHERE `id` > {after} AND (`created_at` <= NOW(6) - INTERVAL "
                    f"{float(delay):f} SECOND{mine_sql}) "
                    f"ORDER BY `id` LIMIT {_RELAY_BATCH} FOR UPDATE SKIP LOCKED"
                )
                if not rows:
                    break
                batches, ids = _readable(rows)
                delete_rows(conn, ids)
                done, errors = publish(redis_pools, encoder, batches)
                if errors:
                    # Put every row back, then drop those Redis did take.
                    raise _PartialPublishError(done, errors)
        except _PartialPublishError as partial:
            finished = [ids[i] for i in sorted(partial.done)]
            with pool.connection() as conn:
                delete_rows(conn, finished)
            for error in partial.errors:
                _log.warning(
                    "outbox relay: %s; the rows stay for the next relay", error
                )
            failures.extend(partial.errors)
            done = partial.done
        except DatabaseError as exc:
            if _code(exc) in (1205, 1213) and retries < 5:
                retries += 1  # nothing was published: run the same pass again
                continue
            raise
        finished = [ids[i] for i in sorted(done)]
        published += sum(batches[i].entries for i in done)
        handled.update(finished)
        mine.difference_update(finished)
        after = int(rows[-1][0])
        retries = 0
        if len(rows) < _RELAY_BATCH:
            break
    if failures:
        raise failures[0]
    return published, handled


class _PartialPublishError(Exception):
    """Some batches of a relay pass were refused by Redis (internal control flow)."""

    def __init__(self, done: set[int], errors: list[StreamError]):
        super().__init__("partial publish")
        self.done = done
        self.errors = errors


def _readable(rows: Sequence[tuple[Any, ...]]) -> tuple[list[EventBatch], list[int]]:
    batches: list[EventBatch] = []
    ids: list[int] = []
    for ident, payload in rows:
        try:
            batches.append(EventBatch.loads(bytes(payload)))
        except (ValueError, TypeError) as exc:
            _log.error(
                "outbox row %s cannot be read (%s); it is left in place", ident, exc
            )
            continue
        ids.append(int(ident))
    return batches, ids


def _code(exc: DatabaseError) -> int:
    args = getattr(exc.orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else 0


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
