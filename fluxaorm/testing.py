"""Helpers for tests (yours and ours): count SQL statements and Redis round trips,
and age pending events without waiting.

The counters hook into the engine's single choke points (``db.Connection.execute``
and ``streams.RedisPool.round_trip``), so what they count is what went over the
wire; :func:`age_pending` sends its commands through the same Redis pool.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING

import attrs

from .consumer import DEFAULT_GROUP
from .errors import ConfigurationError
from .streams import text

if TYPE_CHECKING:
    from .engine import Engine

__all__ = [
    "QueryLog",
    "RoundTripLog",
    "age_pending",
    "count_queries",
    "count_round_trips",
]

# Pending entries read and re-stamped per round trip by age_pending().
_AGE_CHUNK = 1000


@attrs.define
class QueryLog:
    """The SQL statements sent while a :func:`count_queries` block ran.

    Attributes:
        entries: ``(pool, sql)`` pairs in the order they were sent.
        trips: ``(pool, statements)`` per MySQL round trip, in order.
    """

    entries: list[tuple[str, str]] = attrs.field(factory=list)
    trips: list[tuple[str, int]] = attrs.field(factory=list)

    @property
    def count(self) -> int:
        """How many statements were sent (a flush sends several per round trip)."""
        return len(self.entries)

    @property
    def round_trips(self) -> int:
        """How many MySQL round trips were made (one per packet of statements;
        a flush's two queries sent back to back without waiting count as one)."""
        return len(self.trips)

    @property
    def statements(self) -> list[str]:
        """The statements' SQL, in order."""
        return [sql for _, sql in self.entries]

    def kinds(self) -> list[str]:
        """The first word of each statement (``INSERT``, ``COMMIT``...), in order."""
        return [sql.split(None, 1)[0].upper() for _, sql in self.entries]

    def _add(self, pool: str, sql: str) -> None:
        self.entries.append((pool, sql))

    def _trip(self, pool: str, statements: int) -> None:
        self.trips.append((pool, statements))


@attrs.define
class RoundTripLog:
    """The Redis round trips made while a :func:`count_round_trips` block ran.

    Attributes:
        entries: ``(pool, what, commands)`` per round trip, in order.
    """

    entries: list[tuple[str, str, int]] = attrs.field(factory=list)

    @property
    def count(self) -> int:
        """How many round trips were made."""
        return len(self.entries)

    @property
    def commands(self) -> int:
        """How many commands those round trips carried."""
        return sum(n for _, _, n in self.entries)

    def _add(self, pool: str, what: str, commands: int) -> None:
        self.entries.append((pool, what, commands))


@contextmanager
def count_queries(engine: Engine) -> Iterator[QueryLog]:
    """Record every SQL statement and MySQL round trip of the engine inside the block.

    ``log.count`` is the number of statements (one entry each, in order, in
    ``log.statements``) and ``log.round_trips`` the number of round trips: a
    flush sends its whole transaction as one packet of several statements.
    Counts any thread.
    """
    log = QueryLog()
    engine.add_statement_listener(log._add)
    engine.add_mysql_round_trip_listener(log._trip)
    try:
        yield log
    finally:
        engine.remove_statement_listener(log._add)
        engine.remove_mysql_round_trip_listener(log._trip)


@contextmanager
def count_round_trips(engine: Engine) -> Iterator[RoundTripLog]:
    """Record every Redis round trip the engine makes inside the block (any thread)."""
    log = RoundTripLog()
    engine.add_round_trip_listener(log._add)
    try:
        yield log
    finally:
        engine.remove_round_trip_listener(log._add)


def age_pending(
    engine: Engine,
    stream: str,
    idle: float | timedelta,
    *,
    group: str = DEFAULT_GROUP,
    consumer: str | None = None,
) -> int:
    """Make a group's pending events look idle for ``idle`` seconds, without waiting.

    A test of ``auto_claim(count, min_idle)`` or of pending-age statistics would
    otherwise sleep for ``min_idle``; after ``age_pending(engine, "AllChanges",
    60)``, ``auto_claim(100, 60.0)`` takes over every pending event at once. Each
    pending entry keeps its consumer and its delivery count (``max_deliveries``
    counts as before); only its idle time is set, with ``XCLAIM <key> <group>
    <its consumer> 0 <ids> IDLE <ms> JUSTID``
    (https://redis.io/docs/latest/commands/xclaim/), one pipelined round trip per
    1,000 entries. As any XCLAIM does, it drops pending entries whose stream entry
    was deleted, and counts as activity of the consumers that own the entries
    (their ``idle_seconds`` restarts from 0).

    Args:
        engine: the engine whose Redis pool holds the stream.
        stream: the dirty stream (``AllChanges`` or ``dirty_AllChanges``).
        idle: the idle time to give, in seconds or as a ``timedelta``.
        group: the consumer group (default: the one every consumer shares).
        consumer: age only this consumer's pending events (default: all).

    Returns:
        How many pending entries were aged (deleted ones not counted).

    Raises:
        ConfigurationError: no entity declares the stream, or ``idle`` is negative.
        StreamError: Redis cannot be reached, or the stream or group does not exist.
    """
    seconds = idle.total_seconds() if isinstance(idle, timedelta) else float(idle)
    if seconds < 0:
        raise ConfigurationError(f"idle must be 0 or more seconds, not {idle!r}")
    info = engine.stream(stream)
    pool = engine.redis_pool(info.redis_pool)
    filter_: tuple[str, ...] = (consumer,) if consumer is not None else ()
    start, aged = "-", 0
    while True:
        rows = pool.execute(
            "XPENDING", info.key, group, start, "+", _AGE_CHUNK, *filter_
        )
        if not rows:
            return aged
        owners: dict[str, list[str]] = {}
        for row in rows:
            owners.setdefault(text(row[1]), []).append(text(row[0]))
        ms = int(seconds * 1000)
        commands = [
            ("XCLAIM", info.key, group, owner, 0, *ids, "IDLE", ms, "JUSTID")
            for owner, ids in owners.items()
        ]
        for reply in pool.pipeline(commands, "XCLAIM"):
            if isinstance(reply, Exception):
                raise pool.error(reply, "XCLAIM")
            aged += len(reply)  # the ids re-stamped (deleted entries are not)
        if len(rows) < _AGE_CHUNK:
            return aged
        start = "(" + text(rows[-1][0])
