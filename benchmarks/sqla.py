"""SQLAlchemy 2 ORM doing the workload, publishing its changes as its users do today.

A declarative mapping of the same table, one ``Session`` per batch, and session
events: ``before_flush`` records updates (attribute history) and deletes,
``after_flush`` records inserts (their ids are known by then), and
``after_commit`` sends everything in one redis-py pipeline in fluxaorm's entry
layout. SQLAlchemy users consume with redis-py directly (the hand-written
consumer of ``baseline.py``), so it has no consumer of its own. Run by
``harness.py``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from contextlib import AbstractContextManager
from decimal import Decimal
from typing import Any

import redis
from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Integer,
    Numeric,
    String,
    create_engine,
    event,
    inspect,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from . import wire
from .counting import WireCounter
from .workload import (
    ALL_STREAM,
    FIELDS,
    Config,
    Counts,
    Values,
    chunks,
    updated_email,
)

__all__ = ["BenchRow", "SQLAlchemyORM", "StreamPublisher"]

_PENDING = "dirty_stream_entries"
Entry = tuple[tuple[str, ...], dict[bytes, bytes]]


class _Base(DeclarativeBase):
    pass


class BenchRow(_Base):
    """The benchmark's table, mapped declaratively (same DDL as fluxaorm's table)."""

    __tablename__ = "bench_sqla"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    email: Mapped[str] = mapped_column(String(100))
    age: Mapped[int] = mapped_column(Integer)
    balance: Mapped[Decimal] = mapped_column(Numeric(12, 2))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime)
    active: Mapped[bool] = mapped_column(Boolean)


def _values(row: BenchRow) -> tuple[Any, ...]:
    return tuple(getattr(row, name) for name in FIELDS)


class StreamPublisher:
    """Session events that turn a committed flush into dirty-stream entries.

    Entries are built while the objects are still loaded (flush time) and sent
    after COMMIT in one pipeline; a rollback drops them.
    """

    def __init__(self, client: redis.Redis):
        self._redis = client

    def install(self, factory: sessionmaker[Session]) -> None:
        """Listen to the sessions made by ``factory``."""
        event.listen(factory, "before_flush", self._before_flush)
        event.listen(factory, "after_flush", self._after_flush)
        event.listen(factory, "after_commit", self._after_commit)
        event.listen(factory, "after_soft_rollback", self._after_rollback)

    @staticmethod
    def _pending(session: Session) -> list[Entry]:
        entries: list[Entry] = session.info.setdefault(_PENDING, [])
        return entries

    def _before_flush(self, session: Session, context: Any, instances: Any) -> None:
        pending = self._pending(session)
        for obj in session.dirty:
            if not isinstance(obj, BenchRow):
                continue
            state = inspect(obj)
            new: dict[str, Any] = {}
            old: dict[str, Any] = {}
            for attr in state.mapper.column_attrs:
                history = state.attrs[attr.key].history
                if history.added and history.deleted:
                    new[attr.key] = history.added[0]
                    old[attr.key] = history.deleted[0]
            if new:
                pending.append(
                    (
                        wire.update_streams(new),
                        wire.entry(
                            "edit",
                            obj.id,
                            wire.partial_bind(new),
                            wire.partial_bind(old),
                        ),
                    )
                )
        for obj in session.deleted:
            if isinstance(obj, BenchRow):
                pending.append(
                    (
                        (ALL_STREAM,),
                        wire.entry("delete", obj.id, wire.full_bind(_values(obj))),
                    )
                )

    def _after_flush(self, session: Session, context: Any) -> None:
        pending = self._pending(session)
        for obj in session.new:
            if isinstance(obj, BenchRow):
                pending.append(
                    (
                        (ALL_STREAM,),
                        wire.entry("add", obj.id, wire.full_bind(_values(obj))),
                    )
                )

    def _after_commit(self, session: Session) -> None:
        entries: list[Entry] | None = session.info.pop(_PENDING, None)
        if not entries:
            return
        pipe = self._redis.pipeline()
        for streams, fields in entries:
            for stream in streams:
                pipe.xadd(stream, fields)  # type: ignore[arg-type]
        pipe.execute()

    def _after_rollback(self, session: Session, previous: Any) -> None:
        if previous.parent is None:
            session.info.pop(_PENDING, None)


class SQLAlchemyORM:
    """SQLAlchemy 2 ORM + session events + redis-py (see the module docstring)."""

    key = "sqlalchemy"
    label = "SQLAlchemy 2 ORM"
    table = "bench_sqla"

    def __init__(self, config: Config):
        self._counter = WireCounter()
        kwargs = config.pymysql_kwargs()
        self._executes = 0
        self.engine = create_engine(
            "mysql+pymysql://",
            creator=lambda: self._counter.mysql_connection(**kwargs),
        )
        event.listen(self.engine, "before_cursor_execute", self._count_execute)
        self._redis = self._counter.redis_client(config.redis_url)
        self._sessions = sessionmaker(self.engine)
        StreamPublisher(self._redis).install(self._sessions)

    def _count_execute(self, *args: Any) -> None:
        self._executes += 1

    @property
    def cursor_executes(self) -> int:
        """How many times SQLAlchemy called ``cursor.execute``/``executemany``."""
        return self._executes

    def insert(self, rows: Sequence[Values], batch: int) -> list[int]:
        """``add_all`` and ``commit`` per batch (one INSERT ... RETURNING per batch)."""
        ids: list[int] = []
        for chunk in chunks(rows, batch):
            with self._sessions() as session:
                objects = [
                    BenchRow(
                        name=row.name,
                        email=row.email,
                        age=row.age,
                        balance=row.balance,
                        created_at=row.created_at,
                        active=row.active,
                    )
                    for row in chunk
                ]
                session.add_all(objects)
                session.flush()
                ids.extend(obj.id for obj in objects)
                session.commit()
        return ids

    def _load(self, session: Session, ids: Sequence[int]) -> Sequence[BenchRow]:
        return session.scalars(select(BenchRow).where(BenchRow.id.in_(ids))).all()

    def update(self, ids: Sequence[int], batch: int) -> None:
        """Load the batch, set each email, ``commit``."""
        for chunk in chunks(ids, batch):
            with self._sessions() as session:
                for row in self._load(session, chunk):
                    row.email = updated_email(row.email)
                session.commit()

    def delete(self, ids: Sequence[int], batch: int) -> None:
        """Load the batch, ``session.delete`` each row, ``commit``."""
        for chunk in chunks(ids, batch):
            with self._sessions() as session:
                for row in self._load(session, chunk):
                    session.delete(row)
                session.commit()

    def counting(self) -> AbstractContextManager[list[Counts]]:
        """Count statements and round trips at the wire (``counting.py``)."""
        return self._counter.measure()

    def close(self) -> None:
        """Dispose of the engine's pool and close Redis."""
        self.engine.dispose()
        self._redis.close()
