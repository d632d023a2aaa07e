"""Wire-level counters for the competitors that talk to pymysql and redis-py directly.

``baseline.py`` and ``sqla.py`` open their connections through :class:`WireCounter`,
which counts every statement a pymysql connection sends (COMMIT included; each
is one MySQL round trip) and every request redis-py writes to a socket (a
pipeline is one). fluxaorm is counted by ``fluxaorm.testing`` instead
(``fluxa.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pymysql
import pymysql.connections
import redis

from .workload import Counts

__all__ = ["WireCounter"]


class WireCounter:
    """Counts MySQL statements and Redis round trips of the connections it opened."""

    def __init__(self) -> None:
        self.statements = 0
        self.round_trips = 0

    def mysql_connection(self, **kwargs: Any) -> pymysql.connections.Connection[Any]:
        """Open a pymysql connection whose statements are counted."""
        counter = self

        class _Counted(pymysql.connections.Connection):
            def query(self, sql: Any, unbuffered: bool = False) -> int:
                counter.statements += 1
                return super().query(sql, unbuffered)

            def begin(self) -> None:
                counter.statements += 1
                super().begin()

            def commit(self) -> None:
                counter.statements += 1
                super().commit()

            def rollback(self) -> None:
                counter.statements += 1
                super().rollback()

        return _Counted(**kwargs)

    def redis_client(self, url: str) -> redis.Redis:
        """Open a redis-py client (binary replies) whose round trips are counted."""
        counter = self

        class _Counted(redis.Connection):
            def send_packed_command(
                self, command: Any, check_health: bool = True
            ) -> None:
                counter.round_trips += 1
                super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]

        return redis.Redis.from_url(url, connection_class=_Counted)

    @contextmanager
    def measure(self) -> Iterator[list[Counts]]:
        """Count what the block sends; the yielded list gets one :class:`Counts`."""
        out: list[Counts] = []
        statements, trips = self.statements, self.round_trips
        try:
            yield out
        finally:
            sent = self.statements - statements
            # pymysql sends every statement in a packet of its own: one round trip.
            out.append(Counts(sent, sent, self.round_trips - trips))
