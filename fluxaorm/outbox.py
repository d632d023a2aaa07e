"""The transactional outbox: events written to MySQL with the rows they describe.

``flush.py`` adds one outbox row per (flush, MySQL pool, Redis pool) inside the
flush's transaction and deletes it once Redis has the entries; :func:`relay`
(``Engine.relay_outbox()``, also run by consumers' loops) publishes rows whose
publisher died or could not reach Redis. ``ddl.py`` creates and upgrades the table.

Times in the table are UTC (``UTC_TIMESTAMP(6)``), so no session time zone or
daylight-saving change moves a row's age. A row that cannot be read or encoded is
quarantined (kept, with ``quarantined_at`` and ``error`` set) and never retried
until an operator clears ``quarantined_at``; entries Redis refuses inside EXEC are
kept alone in their row and retried with a backoff (``retry_at``).
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Collection, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .db import Connection, MySQLPool
from .errors import DatabaseError, StreamError
from .events import EventBatch, EventRecord, StreamEncoder, stream_key
from .sql import binary_literal
from .streams import RedisPool, pack_command

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "MINE_LIMIT",
    "OUTBOX_TABLE",
    "PublishOutcome",
    "RelayResult",
    "delete_rows",
    "insert_statements",
    "keep_refused",
    "newest",
    "payload_limit",
    "publish",
    "relay",
    "upgrade_statements",
]

OUTBOX_TABLE = "_fluxaorm_outbox"
_Q = f"`{OUTBOX_TABLE}`"
CREATE_SQL = (
    f"CREATE TABLE {_Q} (\n"
    "  `id` bigint unsigned NOT NULL AUTO_INCREMENT,\n"
    "  `created_at` datetime(6) NOT NULL,\n"
    "  `redis_pool` varchar(64) NOT NULL,\n"
    "  `entries` int unsigned NOT NULL,\n"
    "  `payload` longblob NOT NULL,\n"
    "  `attempts` int unsigned NOT NULL DEFAULT 0,\n"
    "  `retry_at` datetime(6) DEFAULT NULL,\n"
    "  `quarantined_at` datetime(6) DEFAULT NULL,\n"
    "  `error` text DEFAULT NULL,\n"
    "  PRIMARY KEY (`id`),\n"
    "  KEY `created_at` (`created_at`)\n"
    ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
)
# Columns added after the first release; sync_schema() adds them to older tables.
_ADDED_COLUMNS = (
    ("attempts", "int unsigned NOT NULL DEFAULT 0"),
    ("retry_at", "datetime(6) DEFAULT NULL"),
    ("quarantined_at", "datetime(6) DEFAULT NULL"),
    ("error", "text DEFAULT NULL"),
)
_UPGRADE_HINT = (
    "the outbox table {table} of MySQL pool {pool!r} predates this fluxaorm "
    "version: run engine.sync_schema() ({detail})"
)
_RELAY_BATCH = 100
# At most this many of a process's own failed rows are named in a relay query (and
# remembered): older ones are relayed by the age rule after outbox_relay_delay.
MINE_LIMIT = 1000
# A row whose stream refused its entries waits 5, 10, 20 ... seconds, at most 300.
_BACKOFF_FIRST = 5
_BACKOFF_MAX = 300
_ERROR_LIMIT = 2000
_MULTI = pack_command("MULTI")
_EXEC = pack_command("EXEC")
_log = logging.getLogger("fluxaorm.outbox")


# -- schema ------------------------------------------------------------------------------


def upgrade_statements(live_columns: Iterable[str]) -> list[str]:
    """Return what brings an existing outbox table to this version's columns.

    A table of the first release gets the bookkeeping columns (attempts, backoff,
    quarantine) and its ``created_at`` values, written with ``NOW(6)`` in the
    session time zone, are converted to UTC (the zone of the session running
    ``sync_schema()``, the server's default, which that release's writers used).

    Args:
        live_columns: the column names the table has now.
    """
    have = {c.lower() for c in live_columns}
    missing = [(name, sql) for name, sql in _ADDED_COLUMNS if name not in have]
    if not missing:
        return []
    adds = ", ".join(f"ADD COLUMN `{name}` {sql}" for name, sql in missing)
    out = [f"ALTER TABLE {_Q} {adds}"]
    if len(missing) == len(_ADDED_COLUMNS):
        out.append(
            f"UPDATE {_Q} SET `created_at` = COALESCE(CONVERT_TZ(`created_at`, "
            "@@session.time_zone, '+00:00'), `created_at`)"
        )
    return out


def _upgrade_error(exc: DatabaseError, pool: str) -> DatabaseError | None:
    """A hint to run sync_schema() for "unknown column" (1054) on the outbox, else None."""
    if _code(exc) != 1054:
        return None
    return DatabaseError(
        _UPGRADE_HINT.format(table=_Q, pool=pool, detail=exc),
        pool=pool,
        orig=exc.orig,
    )


# -- the flush's side --------------------------------------------------------------------


def insert_statements(
    batches: Sequence[EventBatch], max_packet: int
) -> list[tuple[bytes, int]]:
    """Render the INSERTs of one outbox row per batch, as few as ``max_packet`` allows.

    The statements are ``bytes``: payloads travel as raw escaped binary literals,
    about their own size on the wire (hexadecimal would double it). ``created_at``
    is the server's UTC time.

    Returns:
        ``(statement, rows)`` pairs, in the order of ``batches``.
    """
    head = f"INSERT INTO {_Q} (`created_at`,`redis_pool`,`entries`,`payload`) VALUES ".encode()
    budget = max_packet - 8192 - len(head)
    statements: list[tuple[bytes, int]] = []
    rows: list[bytes] = []
    size = 0
    for b in batches:
        row = b"(UTC_TIMESTAMP(6),'%s',%d,%s)" % (
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


def keep_refused(
    conn: Connection,
    ident: int,
    batch: EventBatch,
    refused: Sequence[tuple[int, str]],
    error: str,
) -> int:
    """Rewrite an outbox row to hold only the entries Redis refused, and back off.

    The entries Redis accepted are never published again. Each record keeps its
    place (its event id ``<event_id>-<n>`` stays the same); only the streams that
    refused it remain. The row is retried after 5, 10, 20 ... seconds (at most 5
    minutes), counted in ``attempts``.

    Args:
        conn: a connection whose transaction holds the row (or autocommit).
        ident: the outbox row's id.
        batch: the batch the row held.
        refused: ``(record index, stream name)`` of each refused entry.
        error: why (stored in the row's ``error`` column).

    Returns:
        The number of entries left in the row.
    """
    rest = _remaining(batch, refused)
    conn.execute(
        b"UPDATE %b SET `retry_at`=UTC_TIMESTAMP(6) + INTERVAL LEAST(%d, "
        b"%d << LEAST(`attempts`, 8)) SECOND, `attempts`=`attempts`+1, `payload`=%b, "
        b"`entries`=%d, `error`=%b WHERE `id`=%d"
        % (
            _Q.encode(),
            _BACKOFF_MAX,
            _BACKOFF_FIRST,
            binary_literal(rest.dumps()),
            rest.entries,
            binary_literal(error[:_ERROR_LIMIT].encode()),
            int(ident),
        )
    )
    return rest.entries


def _remaining(batch: EventBatch, refused: Iterable[tuple[int, str]]) -> EventBatch:
    """Return ``batch`` reduced to the ``(record index, stream)`` entries in ``refused``.

    Records keep their index (so their event ids); an accepted record keeps no
    stream and no bind.
    """
    left: dict[int, list[str]] = {}
    for n, stream in refused:
        left.setdefault(n, []).append(stream)
    records = []
    for n, record in enumerate(batch.records):
        streams = left.get(n)
        if streams:
            kept = tuple(s for s in record.streams if s in streams)
            records.append(record._replace(streams=kept))
        else:
            records.append(
                EventRecord((), record.action, record.entity, record.id, b"", None)
            )
    return EventBatch(batch.redis_pool, records, batch.event_id, batch.timestamp_ms)


# -- publishing --------------------------------------------------------------------------


class PublishOutcome:
    """What :func:`publish` did with the batches it did not finish (filled in by it).

    Attributes:
        refused: batch index -> ``(record index, stream)`` of each entry Redis
            refused inside EXEC (e.g. WRONGTYPE); the batch's other entries ran.
        broken: batch index -> why it could not be encoded (nothing was sent).
        failed_pools: Redis pool -> the error that kept every batch of that pool
            out (unreachable, not registered, or the whole MULTI/EXEC refused).
    """

    __slots__ = ("broken", "failed_pools", "refused")

    def __init__(self) -> None:
        self.refused: dict[int, list[tuple[int, str]]] = {}
        self.broken: dict[int, str] = {}
        self.failed_pools: dict[str, StreamError] = {}


def publish(
    redis_pools: Mapping[str, RedisPool],
    encoder: StreamEncoder,
    batches: Sequence[EventBatch],
    *,
    outcome: PublishOutcome | None = None,
) -> tuple[set[int], list[StreamError]]:
    """Publish batches: one MULTI/EXEC round trip per Redis pool.

    A batch is done when Redis accepted every one of its entries. When a command
    fails inside EXEC (Redis has no rollback) the other batches of that pool are
    still done; the failing batch is not, and ``outcome.refused`` says which of
    its entries were refused.

    Args:
        redis_pools: the pools by name.
        encoder: packs the XADD commands.
        batches: what to publish.
        outcome: when given, filled in with the details of every batch not done,
            and a batch that cannot be encoded is reported there instead of raising.

    Returns:
        The indexes (in ``batches``) of the batches Redis accepted, and the errors of
        the pools that failed.
    """
    by_pool: dict[str, list[int]] = {}
    done: set[int] = set()
    for i, batch in enumerate(batches):
        if batch.records:
            by_pool.setdefault(batch.redis_pool, []).append(i)
        else:
            done.add(i)  # nothing to publish
    errors: list[StreamError] = []
    for pool_name, indexes in by_pool.items():
        pool = redis_pools.get(pool_name)
        if pool is None:
            error = StreamError(
                f"Redis pool {pool_name!r} is not registered; register it with "
                "registry.register_redis(url, pool=...) to publish its entries",
                pool=pool_name,
            )
            errors.append(error)
            if outcome is not None:
                outcome.failed_pools[pool_name] = error
            continue
        failure = _publish_pool(pool, encoder, batches, indexes, done, outcome)
        if failure is not None:
            errors.append(failure)
    return done, errors


def _publish_pool(
    pool: RedisPool,
    encoder: StreamEncoder,
    batches: Sequence[EventBatch],
    indexes: list[int],
    done: set[int],
    outcome: PublishOutcome | None,
) -> StreamError | None:
    parts = []
    count = 0
    sent = []
    for i in indexes:
        if outcome is None:
            payload, n = encoder.encode(batches[i])
        else:
            try:
                payload, n = encoder.encode(batches[i])
            except Exception as exc:  # whatever a corrupt batch makes the encoder raise
                outcome.broken[i] = f"cannot be encoded: {type(exc).__name__}: {exc}"
                continue
        parts.append(payload)
        count += n
        sent.append(i)
    if not count:
        done.update(sent)
        return None
    try:
        replies = pool.round_trip(
            _MULTI + b"".join(parts) + _EXEC, count + 2, "XADD", count
        )
    except StreamError as exc:
        if outcome is not None:
            outcome.failed_pools[pool.name] = exc
        return exc
    result = replies[-1]
    if not isinstance(result, list):
        first = next((r for r in replies if isinstance(r, Exception)), result)
        error = _refusal(pool, f"MULTI/EXEC refused: {_describe(first)}", first)
        if outcome is not None:
            outcome.failed_pools[pool.name] = error
        return error
    if not any(isinstance(r, Exception) for r in result):
        done.update(sent)
        return None
    return _partial(pool, batches, sent, result, done, outcome)


def _partial(
    pool: RedisPool,
    batches: Sequence[EventBatch],
    sent: list[int],
    result: list[Any],
    done: set[int],
    outcome: PublishOutcome | None,
) -> StreamError:
    """Sort the batches of an EXEC where some commands failed; describe the failure."""
    position = 0
    failed = 0
    first: tuple[str, Any] | None = None
    for i in sent:
        refused = []
        for n, record in enumerate(batches[i].records):
            for stream in record.streams:
                reply = result[position]
                position += 1
                if isinstance(reply, Exception):
                    refused.append((n, stream))
                    first = first or (stream, reply)
        if not refused:
            done.add(i)
            continue
        failed += len(refused)
        if outcome is not None:
            outcome.refused[i] = refused
    assert first is not None
    stream, reply = first
    return _refusal(
        pool,
        f"{failed} of {position} XADD refused inside MULTI/EXEC, first on "
        f"{stream_key(stream)!r}: {_describe(reply)}",
        reply,
    )


def _describe(reply: Any) -> str:
    if isinstance(reply, Exception):
        return f"{type(reply).__name__}: {reply}"
    return "EXEC aborted"


def _refusal(pool: RedisPool, what: str, reply: Any) -> StreamError:
    return StreamError(
        f"Redis pool {pool.name!r} at {pool.config.address}: {what}",
        pool=pool.name,
        orig=reply if isinstance(reply, Exception) else None,
    )


# -- the relay ---------------------------------------------------------------------------


class RelayResult:
    """What one :func:`relay` of a MySQL pool did.

    Attributes:
        published: stream entries Redis accepted.
        handled: ids of the rows this relay is done with (published, quarantined,
            or reduced to their refused entries and backed off).
        waiting: some Redis pool was down or refused every entry: rows of it
            stayed, and the relay did not look at all of them.
        errors: one error per Redis pool that failed or refused entries.
    """

    __slots__ = ("errors", "handled", "published", "waiting")

    def __init__(self) -> None:
        self.published = 0
        self.handled: set[int] = set()
        self.waiting = False
        self.errors: list[StreamError] = []


def newest(ids: Collection[int], limit: int) -> set[int]:
    """Return the ``limit`` largest ids (the youngest rows) of ``ids``."""
    if len(ids) <= limit:
        return set(ids)
    return set(heapq.nlargest(limit, ids))


def relay(
    pool: MySQLPool,
    redis_pools: Mapping[str, RedisPool],
    encoder: StreamEncoder,
    delay: float,
    mine: Collection[int],
) -> RelayResult:
    """Publish the outbox rows of one MySQL pool that are older than ``delay`` seconds.

    Rows in ``mine`` (this process's own failed publishes; the newest
    :data:`MINE_LIMIT` of them) go at once. Each pass locks up to 100 rows with
    ``FOR UPDATE SKIP LOCKED`` (READ COMMITTED: row locks only), publishes them,
    deletes those Redis took and commits, so concurrent relays never publish the
    same row. Isolation, row by row and pool by pool:

    * a row that cannot be decoded or encoded is quarantined (kept, logged once
      at ERROR, skipped from then on);
    * entries a stream refuses inside EXEC stay alone in their row, retried with
      a backoff; the entries Redis accepted are never published again;
    * a Redis pool that is down (or refuses the whole transaction) is left out of
      the rest of the walk: its rows stay untouched.

    Returns:
        What was published and handled, and the Redis errors met (not raised).

    Raises:
        DatabaseError: MySQL failed (the pass in flight rolled back).
    """
    result = RelayResult()
    down: dict[str, StreamError] = {}
    limit = max(0, min(MINE_LIMIT, (pool.info.max_allowed_packet - 8192) // 24))
    mine_sql = ",".join(str(int(i)) for i in sorted(newest(mine, limit)))
    after = 0
    retries = 0
    while True:
        sql, args = _select(after, delay, mine_sql, down)
        step = RelayResult()  # counted only once its transaction committed
        try:
            with pool.transaction("READ COMMITTED") as conn:
                rows = conn.query(sql, args)
                if rows:
                    _relay_rows(conn, rows, redis_pools, encoder, down, step)
        except DatabaseError as exc:
            if _code(exc) in (1205, 1213) and retries < 5:
                retries += 1  # the pass rolled back: run it again
                continue
            hint = _upgrade_error(exc, pool.name)
            if hint is not None:
                raise hint from exc
            raise
        result.published += step.published
        result.handled |= step.handled
        result.waiting = result.waiting or step.waiting
        result.errors += step.errors
        if len(rows) < _RELAY_BATCH:
            break
        after = int(rows[-1][0])
        retries = 0
    for error in down.values():
        _log.warning("outbox relay: %s; its rows stay for a later relay", error)
    return result


def _select(
    after: int, delay: float, mine_sql: str, down: Mapping[str, StreamError]
) -> tuple[str, list[str]]:
    """The query of one pass: lock the next rows due, skipping pools known down."""
    skip = ""
    if down:
        skip = f" AND `redis_pool` NOT IN ({','.join(['%s'] * len(down))})"
    own = f" OR `id` IN ({mine_sql})" if mine_sql else ""
    sql = (
        f"SELECT `id`,`redis_pool`,`payload` FROM {_Q} FORCE INDEX (PRIMARY) "
        f"WHERE `id` > {int(after)} AND `quarantined_at` IS NULL "
        "AND (`retry_at` IS NULL OR `retry_at` <= UTC_TIMESTAMP(6))"
        f"{skip} AND (`created_at` <= UTC_TIMESTAMP(6) - INTERVAL {float(delay):f} "
        f"SECOND{own}) ORDER BY `id` LIMIT {_RELAY_BATCH} FOR UPDATE SKIP LOCKED"
    )
    return sql, list(down)


def _relay_rows(
    conn: Connection,
    rows: Sequence[tuple[Any, ...]],
    redis_pools: Mapping[str, RedisPool],
    encoder: StreamEncoder,
    down: dict[str, StreamError],
    result: RelayResult,
) -> None:
    """Publish one pass's locked rows, then delete, rewrite or quarantine each."""
    batches: list[EventBatch] = []
    ids: list[int] = []
    for ident, redis_pool, payload in rows:
        try:
            batch = _decode(bytes(payload), str(redis_pool))
        except Exception as exc:  # any failure to decode quarantines the row
            _quarantine(
                conn, int(ident), f"cannot be read: {type(exc).__name__}: {exc}"
            )
            result.handled.add(int(ident))
            continue
        batches.append(batch)
        ids.append(int(ident))
    outcome = PublishOutcome()
    done, errors = publish(redis_pools, encoder, batches, outcome=outcome)
    finished = [ids[i] for i in sorted(done)]
    delete_rows(conn, finished)
    result.handled.update(finished)
    result.published += sum(batches[i].entries for i in done)
    for i, why in outcome.broken.items():
        _quarantine(conn, ids[i], why)
        result.handled.add(ids[i])
    kept = 0
    for i, refused in outcome.refused.items():
        error = next(e for e in errors if e.pool == batches[i].redis_pool)
        left = keep_refused(conn, ids[i], batches[i], refused, str(error))
        kept += left
        result.published += batches[i].entries - left
        result.handled.add(ids[i])
    if outcome.refused:
        _log.warning(
            "outbox relay: %d entries of %d rows refused; only they stay, retried "
            "with a backoff (see the rows' `error`): %s",
            kept,
            len(outcome.refused),
            "; ".join(str(e) for e in errors if e.pool not in outcome.failed_pools),
        )
    for name, error in outcome.failed_pools.items():
        down[name] = error
        result.waiting = True
    result.errors.extend(errors)


def _decode(payload: bytes, redis_pool: str) -> EventBatch:
    batch = EventBatch.loads(payload)
    if batch.redis_pool != redis_pool:
        raise ValueError(
            f"the payload names Redis pool {batch.redis_pool!r}, the row {redis_pool!r}"
        )
    return batch


def _quarantine(conn: Connection, ident: int, reason: str) -> None:
    _log.error(
        "outbox row %s of MySQL pool %r is quarantined: %s. It stays in %s and is "
        "skipped; once fixed, release it with UPDATE %s SET `quarantined_at`=NULL "
        "WHERE `id`=%s (or DELETE it)",
        ident,
        conn.pool,
        reason,
        _Q,
        _Q,
        ident,
    )
    conn.execute(
        b"UPDATE %b SET `quarantined_at`=UTC_TIMESTAMP(6), `error`=%b WHERE `id`=%d"
        % (_Q.encode(), binary_literal(reason[:_ERROR_LIMIT].encode()), ident)
    )


def _code(exc: DatabaseError) -> int:
    args = getattr(exc.orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else 0


# -- statistics --------------------------------------------------------------------------


def backlog(pool: MySQLPool) -> tuple[int, int, float, int]:
    """Return ``(rows, entries, oldest age in seconds, quarantined rows)`` of an outbox.

    The age is that of the oldest row still to be relayed (quarantined rows are
    counted apart), measured in UTC, never negative.
    """
    try:
        with pool.connection() as conn:
            row = conn.query(
                "SELECT COUNT(*), COALESCE(SUM(`entries`),0), COALESCE(GREATEST(0, "
                "TIMESTAMPDIFF(MICROSECOND, MIN(IF(`quarantined_at` IS NULL, "
                "`created_at`, NULL)), UTC_TIMESTAMP(6))),0), "
                f"COALESCE(SUM(`quarantined_at` IS NOT NULL),0) FROM {_Q}"
            )[0]
    except DatabaseError as exc:
        if _code(exc) == 1146:
            return 0, 0, 0.0, 0
        hint = _upgrade_error(exc, pool.name)
        if hint is not None:
            raise hint from exc
        raise
    return int(row[0]), int(row[1]), float(row[2]) / 1_000_000, int(row[3])
