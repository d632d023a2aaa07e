"""Helpers for tests (yours and ours): count the SQL statements and Redis round trips.

Both hook into the engine's single choke points (``db.Connection.execute`` and
``streams.RedisPool.round_trip``), so what they count is what went over the wire.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["QueryLog", "RoundTripLog", "count_queries", "count_round_trips"]


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
        """How many MySQL round trips were made (one per packet of statements)."""
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
