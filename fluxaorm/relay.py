"""The outbox relay: publish committed changes whose publish failed or never ran.

``Engine.relay_outbox()`` (and consumers' ``run()`` loops, through it) calls
:func:`relay` for each MySQL pool; ``broker.py`` calls :func:`backlog` for the
statistics. Rows, records and publishing are ``outbox.py``'s.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from .cluster_outbox import confirmed_records
from .db import Connection, MySQLPool, error_code
from .errors import DatabaseError, StreamError
from .events import EventBatch, StreamEncoder
from .outbox import (
    ERROR_LIMIT,
    MINE_LIMIT,
    OUTBOX_Q,
    Publication,
    PublishOutcome,
    delete_rows,
    keep_refused,
    publish,
    recorded,
    upgrade_error,
    without_streams,
)
from .sql import binary_literal, packet_budget
from .streams import RedisPool

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .observe import Observer

__all__ = ["RelayResult", "backlog", "newest", "relay"]

_RELAY_BATCH = 100
# Rows the statistics check against Redis's records of published rows.
_BACKLOG_CHECKED = 1000
_log = logging.getLogger("fluxaorm.outbox")
_Q = OUTBOX_Q


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
    observer: Observer | None = None,
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

    ``observer`` (the engine's, when metrics or tracing are on) sees each publish.

    Returns:
        What was published and handled, and the Redis errors met (not raised).

    Raises:
        DatabaseError: MySQL failed (the pass in flight rolled back).
    """
    result = RelayResult()
    down: dict[str, StreamError] = {}
    # Each id named costs at most 24 bytes of the query.
    limit = max(0, min(MINE_LIMIT, packet_budget(pool.info.max_allowed_packet) // 24))
    mine_sql = ",".join(str(int(i)) for i in sorted(newest(mine, limit)))
    # Most calls find nothing due (run() relays every second): one unlocked look
    # first, one round trip, instead of a locking pass in a transaction (four).
    sql, args = _select(0, delay, mine_sql, down, probe=True)
    with pool.connection() as conn:
        try:
            if not conn.query(sql, args):
                return result
        except DatabaseError as exc:
            _raise_hinted(exc, pool.name)
    after = 0
    retries = 0
    while True:
        sql, args = _select(after, delay, mine_sql, down)
        step = RelayResult()  # counted only once its transaction committed
        try:
            with pool.transaction("READ COMMITTED") as conn:
                rows = conn.query(sql, args)
                if rows:
                    _relay_rows(
                        conn,
                        rows,
                        redis_pools,
                        encoder,
                        down,
                        step,
                        observer,
                        pool.packets,
                    )
        except DatabaseError as exc:
            if error_code(exc) in (1205, 1213) and retries < 5:
                retries += 1  # the pass rolled back: run it again
                continue
            _raise_hinted(exc, pool.name)
        result.published += step.published
        result.handled |= step.handled
        result.waiting = result.waiting or step.waiting
        result.errors += step.errors
        if len(rows) < _RELAY_BATCH:
            break
        after = int(rows[-1][0])
        retries = 0
    for error in down.values():
        if error.permanent:
            _log.error(
                "outbox relay: %s; its rows stay in the outbox: fix the Redis "
                "configuration (engine.check() tells what is wrong)",
                error,
            )
        else:
            _log.warning("outbox relay: %s; its rows stay for a later relay", error)
    return result


def _raise_hinted(exc: DatabaseError, pool: str) -> NoReturn:
    """Raise ``exc`` (being handled), or for an outbox table of an older release
    (unknown column) the error that says to run sync_schema()."""
    hint = upgrade_error(exc, pool)
    if hint is not None:
        raise hint from exc
    raise exc


def _select(
    after: int,
    delay: float,
    mine_sql: str,
    down: Mapping[str, StreamError],
    probe: bool = False,
) -> tuple[str, list[str]]:
    """The query of one pass: lock the next rows due, skipping pools known down.

    ``probe``: only whether one row is due, without locking it.
    """
    skip = ""
    if down:
        skip = f" AND `redis_pool` NOT IN ({','.join(['%s'] * len(down))})"
    own = f" OR `id` IN ({mine_sql})" if mine_sql else ""
    what, tail = (
        ("1", "LIMIT 1")
        if probe
        else (
            "`id`,`redis_pool`,`payload`",
            f"ORDER BY `id` LIMIT {_RELAY_BATCH} FOR UPDATE SKIP LOCKED",
        )
    )
    sql = (
        f"SELECT {what} FROM {_Q} FORCE INDEX (PRIMARY) "
        f"WHERE `id` > {int(after)} AND `quarantined_at` IS NULL "
        "AND (`retry_at` IS NULL OR `retry_at` <= UTC_TIMESTAMP(6))"
        f"{skip} AND (`created_at` <= UTC_TIMESTAMP(6) - INTERVAL {float(delay):f} "
        f"SECOND{own}) {tail}"
    )
    return sql, list(down)


def _relay_rows(
    conn: Connection,
    rows: Sequence[tuple[Any, ...]],
    redis_pools: Mapping[str, RedisPool],
    encoder: StreamEncoder,
    down: dict[str, StreamError],
    result: RelayResult,
    observer: Observer | None = None,
    packets: bool = False,
) -> None:
    """Publish one pass's locked rows, then delete, rewrite or quarantine each.

    ``packets``: the pool may send several statements in one packet (the
    deletes then take one round trip).

    A row whose streams all recorded its entries (a flush published it, then
    its cleanup never came: the process died or went idle) is deleted without
    publishing; a row some of whose streams recorded it is published only to
    the others.
    """
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
    known_down = set(down)
    batches, ids, already, held = _unrecorded(batches, ids, redis_pools, down)
    delete_rows(conn, already, packets)
    result.handled.update(already)
    if held:
        # Published, but no replica has confirmed the entries yet: the rows stay.
        result.waiting = True
        result.errors.append(
            StreamError(
                f"{len(held)} outbox rows were published to a Redis Cluster but no "
                "replica confirmed their entries yet (WAIT); they stay until one does",
                pool=held[0],
                connection_lost=True,
            )
        )
    if any(b.redis_pool in down for b in batches):
        # A pool found down while reading its records: its rows stay untouched.
        result.waiting = True
        result.errors += [e for n, e in down.items() if n not in known_down]
        up = [i for i, b in enumerate(batches) if b.redis_pool not in down]
        batches = [batches[i] for i in up]
        ids = [ids[i] for i in up]
    outcome = PublishOutcome()
    done, errors = publish(
        Publication(
            redis_pools,
            encoder,
            batches,
            outcome=outcome,
            record=[True] * len(batches),
            trim_records=True,
        ),
        observer=observer,
    )
    finished = [ids[i] for i in sorted(done)]
    delete_rows(conn, finished, packets)
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


def _unrecorded(
    batches: list[EventBatch],
    ids: list[int],
    redis_pools: Mapping[str, RedisPool],
    down: dict[str, StreamError],
) -> tuple[list[EventBatch], list[int], list[int], list[str]]:
    """Drop what Redis already recorded as published, one round trip per Redis pool.

    On a Redis Cluster that waits for replicas, a row recorded on a node no
    replica has confirmed is held: neither published again nor deleted now.

    Returns:
        The batches still to publish (narrowed to their unrecorded streams), their
        row ids, the ids of rows every stream of which has them already, and the
        Redis pool of each row held.
    """
    by_pool: dict[str, list[int]] = {}
    for i, batch in enumerate(batches):
        by_pool.setdefault(batch.redis_pool, []).append(i)
    seen: dict[int, set[str]] = {}
    hold: set[int] = set()
    for name, indexes in by_pool.items():
        pool = redis_pools.get(name)
        if pool is None or name in down:
            continue  # publish() reports it
        try:
            found, held = confirmed_records(pool, [batches[i] for i in indexes])
        except StreamError as exc:
            if exc.connection_lost or exc.permanent:
                down[name] = exc
            continue
        hold.update(indexes[n] for n in held)
        for i, got in zip(indexes, found):
            if got:
                seen[i] = got
    keep_batches: list[EventBatch] = []
    keep_ids: list[int] = []
    already: list[int] = []
    for i, batch in enumerate(batches):
        if i in hold:
            continue
        recorded_streams = seen.get(i)
        if recorded_streams is None:
            keep_batches.append(batch)
            keep_ids.append(ids[i])
            continue
        rest = without_streams(batch, recorded_streams)
        if rest.entries:
            keep_batches.append(rest)
            keep_ids.append(ids[i])
        else:
            already.append(ids[i])
    return keep_batches, keep_ids, already, [batches[i].redis_pool for i in hold]


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
        % (
            _Q.encode(),
            binary_literal(reason[:ERROR_LIMIT].encode(), conn.raw_binary),
            ident,
        )
    )


# -- statistics --------------------------------------------------------------------------


def backlog(
    pool: MySQLPool, redis_pools: Mapping[str, RedisPool] | None = None
) -> tuple[int, int, float, int]:
    """Return ``(rows, entries, oldest age in seconds, quarantined rows)`` of an outbox.

    Only rows still to be published count: a row a flush published (recorded in
    Redis) that waits for its cleanup is left out. The newest
    :data:`_BACKLOG_CHECKED` rows are checked against the records (published rows
    waiting for cleanup are always among the newest); older rows count as
    unpublished. The age is that of the oldest row still to be relayed
    (quarantined rows are counted apart), measured in UTC, never negative.
    """
    try:
        with pool.connection() as conn:
            row = conn.query(
                "SELECT COUNT(*), COALESCE(SUM(`entries`),0), "
                f"COALESCE(SUM(`quarantined_at` IS NOT NULL),0) FROM {_Q}"
            )[0]
            newest_rows = conn.query(
                "SELECT `id`,`redis_pool`,`payload`,`entries`,GREATEST(0, "
                "TIMESTAMPDIFF(MICROSECOND, `created_at`, UTC_TIMESTAMP(6))) "
                f"FROM {_Q} WHERE `quarantined_at` IS NULL ORDER BY `id` DESC "
                f"LIMIT {_BACKLOG_CHECKED}"
            )
            oldest = conn.query(
                "SELECT COALESCE(GREATEST(0, TIMESTAMPDIFF(MICROSECOND, "
                f"MIN(`created_at`), UTC_TIMESTAMP(6))),0) FROM {_Q} "
                "WHERE `quarantined_at` IS NULL"
                + (f" AND `id` < {int(newest_rows[-1][0])}" if newest_rows else "")
            )[0][0]
    except DatabaseError as exc:
        if error_code(exc) == 1146:
            return 0, 0, 0.0, 0
        _raise_hinted(exc, pool.name)
    rows, entries, quarantined = int(row[0]), int(row[1]), int(row[2])
    ages = [float(oldest)] if len(newest_rows) == _BACKLOG_CHECKED else []
    for published, left, age in _published_parts(newest_rows, redis_pools or {}):
        if published:
            rows -= 1
        entries -= left
        if not published:
            ages.append(age)
    age = max(ages) if ages else 0.0
    return rows, entries, age / 1_000_000, quarantined


def _published_parts(
    rows: Sequence[tuple[Any, ...]], redis_pools: Mapping[str, RedisPool]
) -> list[tuple[bool, int, float]]:
    """Per row: whether every stream recorded it, its recorded entries, its age."""
    batches: dict[str, list[tuple[int, EventBatch]]] = {}
    out: list[tuple[bool, int, float]] = []
    for n, (_, redis_pool, payload, _, age) in enumerate(rows):
        out.append((False, 0, float(age)))
        try:
            batch = EventBatch.loads(bytes(payload))
        except Exception:  # the relay quarantines it; count it as waiting
            continue
        batches.setdefault(str(redis_pool), []).append((n, batch))
    for name, items in batches.items():
        redis = redis_pools.get(name)
        if redis is None:
            continue
        try:
            found = recorded(redis, [b for _, b in items])
        except StreamError:
            continue  # unknown: count them as waiting
        for (n, batch), streams in zip(items, found):
            if not streams:
                continue
            done = sum(
                len([s for s in r.streams if s in streams]) for r in batch.records
            )
            out[n] = (done == batch.entries, done, out[n][2])
    return out
