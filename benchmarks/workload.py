"""The benchmark's workload: the entity, its rows, its streams and what a competitor is.

Every competitor module (``baseline.py``, ``fluxa.py``, ``sqla.py``) implements
:class:`Competitor` (flushing) and, where it reads the streams, :class:`Consumer`
for the same job; ``harness.py`` drives them and ``verify.py`` checks what they
wrote and read against the values made here.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from decimal import Decimal
from typing import Any, NamedTuple, Protocol
from urllib.parse import unquote, urlsplit

__all__ = [
    "ALL_STREAM",
    "EMAIL_STREAM",
    "ENTITY_NAME",
    "FIELDS",
    "STREAMS",
    "Competitor",
    "Config",
    "Consumer",
    "Counts",
    "Event",
    "Values",
    "chunks",
    "make_values",
    "updated_email",
]

# The one entity: `id` feeds `dirty_BenchAll` (insert, update, delete) and `email`
# feeds `dirty_BenchEmail` (updates that change the email).
ALL_STREAM = "dirty_BenchAll"
EMAIL_STREAM = "dirty_BenchEmail"
STREAMS = (ALL_STREAM, EMAIL_STREAM)
# fluxaorm names an entity after its module and class; the hand-written competitors
# write the same name so every stream entry looks alike (``fluxa.py`` checks it).
ENTITY_NAME = "benchmarks.fluxa.BenchEntity"
FIELDS = ("id", "name", "email", "age", "balance", "created_at", "active")
DATA_FIELDS = FIELDS[1:]

_EPOCH = dt.datetime(2024, 1, 1)


class Values(NamedTuple):
    """The values of one new row (everything but ``id``)."""

    name: str
    email: str
    age: int
    balance: Decimal
    created_at: dt.datetime
    active: bool


def make_values(n: int) -> list[Values]:
    """Return ``n`` distinct rows; row ``i`` is the same in every run and competitor."""
    return [
        Values(
            name=f"User {i:06d}",
            email=f"user{i:06d}@example.com",
            age=18 + i % 70,
            balance=Decimal(i * 12_347 % 10**9).scaleb(-2),
            created_at=_EPOCH
            + dt.timedelta(seconds=i * 7, microseconds=i * 37 % 1_000_000),
            active=i % 3 != 0,
        )
        for i in range(n)
    ]


def updated_email(email: str) -> str:
    """Return the email the update step gives an entity that holds ``email``."""
    return email.replace("@", ".v2@", 1)


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """Yield consecutive slices of ``items`` holding at most ``size`` items."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Event(NamedTuple):
    """A consumed event as the checks see it, whoever decoded it.

    ``bind`` holds Python values (``Decimal``, ``datetime``, ``bool``...).
    """

    action: str
    id: int
    bind: dict[str, Any]


class Counts(NamedTuple):
    """What one step sent over the wire.

    Attributes:
        statements: SQL statements sent (COMMIT included).
        mysql: MySQL round trips (equal to ``statements`` unless several
            statements travel in one packet).
        redis: Redis round trips (a pipeline or MULTI/EXEC being one).
    """

    statements: int
    mysql: int
    redis: int


class Competitor(Protocol):
    """One way of flushing the workload; every step handles ``batch`` rows at a time.

    Attributes:
        key: short identifier used in results (``baseline``, ``fluxaorm``...).
        label: the name shown in tables and charts.
        table: the MySQL table the competitor writes.
    """

    key: str
    label: str
    table: str

    def insert(self, rows: Sequence[Values], batch: int) -> list[int]:
        """Insert the rows (one flush per batch) and return their ids in order."""
        ...

    def update(self, ids: Sequence[int], batch: int) -> None:
        """Load the entities by id, give each :func:`updated_email`, flush per batch."""
        ...

    def delete(self, ids: Sequence[int], batch: int) -> None:
        """Load the entities by id and delete them, one flush per batch."""
        ...

    def counting(self) -> AbstractContextManager[list[Counts]]:
        """Count statements and round trips in the block; the list gets one item."""
        ...

    def close(self) -> None:
        """Close connections."""
        ...


class Consumer(Protocol):
    """One way of reading ``dirty_BenchAll``: every event handled, acknowledged, deleted.

    Attributes:
        key: short identifier used in results (``baseline-consumer``...).
        label: the name shown in tables and charts.
    """

    key: str
    label: str

    def consume(self, count: int, batch: int) -> list[Any]:
        """Consume ``count`` events of ``dirty_BenchAll``, ``batch`` per read."""
        ...

    def events(self, consumed: list[Any]) -> list[Event]:
        """Turn what :meth:`consume` returned into :class:`Event` (untimed)."""
        ...

    def counting(self) -> AbstractContextManager[list[Counts]]:
        """Count statements and round trips in the block; the list gets one item."""
        ...

    def close(self) -> None:
        """Close connections."""
        ...


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if not parts.password:
        return url
    return parts._replace(
        netloc=parts.netloc.replace(f":{parts.password}@", ":***@")
    ).geturl()


class Config(NamedTuple):
    """Where the benchmark runs: its own database and its own Redis DB."""

    mysql_url: str
    redis_url: str

    @classmethod
    def from_env(
        cls, mysql_url: str | None = None, redis_url: str | None = None
    ) -> Config:
        """Take the URLs given, else ``FLUXAORM_BENCH_MYSQL_URL`` / ``FLUXAORM_BENCH_REDIS_URL``.

        The defaults are the database ``bench`` and the Redis DB 8 of the local
        servers.
        """
        return cls(
            mysql_url
            or os.environ.get(
                "FLUXAORM_BENCH_MYSQL_URL", "mysql://root@127.0.0.1:3306/bench"
            ),
            redis_url
            or os.environ.get("FLUXAORM_BENCH_REDIS_URL", "redis://127.0.0.1:6379/8"),
        )

    def __repr__(self) -> str:
        return (
            f"Config(mysql={_redact(self.mysql_url)}, redis={_redact(self.redis_url)})"
        )

    @property
    def database(self) -> str:
        """The database name of the MySQL URL."""
        return urlsplit(self.mysql_url).path.lstrip("/") or "bench"

    def pymysql_kwargs(self, *, database: bool = True) -> dict[str, Any]:
        """Return ``pymysql.connect`` keyword arguments for the MySQL URL."""
        parts = urlsplit(self.mysql_url)
        kwargs: dict[str, Any] = {
            "host": parts.hostname or "127.0.0.1",
            "port": parts.port or 3306,
            "user": unquote(parts.username or "root"),
            "password": unquote(parts.password or ""),
            "charset": "utf8mb4",
        }
        if database:
            kwargs["database"] = self.database
        return kwargs
