"""fluxaorm doing the workload, with its outbox on (the default) or off.

Everything goes through the public API as a user would write it: one ORM and one
``flush()`` per batch, ``get_by_ids`` to load, ``new_dirty_stream_consumer_single``
to consume, either through repeated ``consume(batch, 0)`` calls or through
``run()``. Statements and round trips are counted with ``fluxaorm.testing``.
Run by ``harness.py``.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import fluxaorm
from fluxaorm.testing import count_queries, count_round_trips

from .workload import ENTITY_NAME, Config, Counts, Event, Values, chunks, updated_email

__all__ = ["BenchEntity", "Fluxa", "FluxaConsumer"]

# How long run() may take to hand over every event before the benchmark gives up.
_RUN_TIMEOUT = 120.0


@contextmanager
def _counting(engine: fluxaorm.Engine) -> Iterator[list[Counts]]:
    """Count statements, MySQL round trips and Redis round trips of ``engine``."""
    out: list[Counts] = []
    with ExitStack() as stack:
        queries = stack.enter_context(count_queries(engine))
        trips = stack.enter_context(count_round_trips(engine))
        try:
            yield out
        finally:
            # ``round_trips`` counts packets where several statements share one;
            # a fluxaorm without it sends one statement per round trip.
            mysql = int(getattr(queries, "round_trips", queries.count))
            out.append(Counts(queries.count, mysql, trips.count))


@fluxaorm.entity(table="bench_flux")
@dataclass
class BenchEntity:
    """The benchmark's entity: every change to BenchAll, email changes to BenchEmail."""

    id: int = field(default=0, metadata={"orm": "dirty=BenchAll"})
    name: str = fluxaorm.column(length=100, default="")
    email: str = fluxaorm.column(length=100, default="", dirty="BenchEmail")
    age: int = fluxaorm.column(size=32, default=0)
    balance: Decimal = fluxaorm.column(precision=12, scale=2, default=Decimal(0))
    created_at: dt.datetime = dt.datetime(2000, 1, 1)
    active: bool = False


class Fluxa:
    """fluxaorm through its public API (see the module docstring)."""

    table = "bench_flux"

    def __init__(self, config: Config, *, outbox: bool):
        self.key = "fluxaorm" if outbox else "fluxaorm-no-outbox"
        self.label = "fluxaorm" if outbox else "fluxaorm (outbox off)"
        registry = fluxaorm.Registry(outbox=outbox)
        registry.register_mysql(config.mysql_url)
        registry.register_redis(config.redis_url)
        registry.register_entity(BenchEntity)
        self.engine = registry.validate()
        self.engine.sync_schema()
        name = self.engine.schema(BenchEntity).name
        if name != ENTITY_NAME:
            raise RuntimeError(
                f"the entity is named {name}, workload.py says {ENTITY_NAME}"
            )

    def insert(self, rows: Sequence[Values], batch: int) -> list[int]:
        """``new_entity`` per row and one ``flush()`` per batch."""
        ids: list[int] = []
        for chunk in chunks(rows, batch):
            orm = self.engine.new_orm()
            entities = [
                orm.new_entity(
                    BenchEntity,
                    name=row.name,
                    email=row.email,
                    age=row.age,
                    balance=row.balance,
                    created_at=row.created_at,
                    active=row.active,
                )
                for row in chunk
            ]
            orm.flush()
            ids.extend(entity.id for entity in entities)
        return ids

    def update(self, ids: Sequence[int], batch: int) -> None:
        """``get_by_ids``, ``edit_entity`` and a new email per entity, one flush per batch."""
        for chunk in chunks(ids, batch):
            orm = self.engine.new_orm()
            for entity in orm.get_by_ids(BenchEntity, chunk):
                assert entity is not None
                edited = orm.edit_entity(entity)
                edited.email = updated_email(edited.email)
            orm.flush()

    def delete(self, ids: Sequence[int], batch: int) -> None:
        """``get_by_ids`` and ``delete_entity`` per entity, one flush per batch."""
        for chunk in chunks(ids, batch):
            orm = self.engine.new_orm()
            for entity in orm.get_by_ids(BenchEntity, chunk):
                assert entity is not None
                orm.delete_entity(entity)
            orm.flush()

    def counting(self) -> AbstractContextManager[list[Counts]]:
        """Count with ``fluxaorm.testing.count_queries`` / ``count_round_trips``."""
        return _counting(self.engine)

    def unpublished(self) -> int:
        """Return the outbox rows still to be published (the outbox statistics)."""
        broker = self.engine.get_event_broker()
        return sum(found.rows for found in broker.get_outbox_statistics())

    def close(self) -> None:
        """Close the engine's connections."""
        self.engine.close()


class FluxaConsumer:
    """fluxaorm's single consumer of ``dirty_BenchAll``, by ``consume()`` or by ``run()``.

    ``mode="consume"`` calls ``consume(batch, 0)`` until every event came;
    ``mode="run"`` calls ``run(batch)`` with a handler that sets the stop event
    once every event came (run() also relays the outbox, claims idle events and
    cleans up, as it does in an application).
    """

    def __init__(self, engine: fluxaorm.Engine, *, mode: str):
        if mode not in ("consume", "run"):
            raise ValueError(f"mode must be 'consume' or 'run', not {mode!r}")
        self.engine = engine
        self._mode = mode
        self.key = f"fluxaorm-{mode}"
        self.label = f"fluxaorm {mode}()"

    def consume(self, count: int, batch: int) -> list[Any]:
        """Hand over ``count`` events, ``batch`` per handler call; return them.

        No ``cleanup()`` after ``consume()`` calls: the harness deletes the stream
        (and its group) next. ``run()`` cleans up on its way out.
        """
        received: list[fluxaorm.DirtyStreamEvent] = []
        orm = self.engine.new_orm()
        if self._mode == "consume":
            consumer = fluxaorm.new_dirty_stream_consumer_single(
                orm, "BenchAll", received.extend
            )
            total = 0
            while total < count:
                handed = consumer.consume(batch, 0)
                if not handed:
                    raise RuntimeError(
                        f"dirty_BenchAll ran dry after {total} of {count} events"
                    )
                total += handed
            return received
        stop = threading.Event()

        def handle(events: list[fluxaorm.DirtyStreamEvent]) -> None:
            received.extend(events)
            if len(received) >= count:
                stop.set()

        consumer = fluxaorm.new_dirty_stream_consumer_single(orm, "BenchAll", handle)
        timer = threading.Timer(_RUN_TIMEOUT, stop.set)
        timer.start()
        try:
            consumer.run(batch, stop=stop)
        finally:
            timer.cancel()
        if len(received) < count:
            raise RuntimeError(
                f"run() handed over {len(received)} of {count} events of "
                f"dirty_BenchAll in {_RUN_TIMEOUT:.0f} s"
            )
        return received

    def events(self, consumed: list[Any]) -> list[Event]:
        """Return the consumed events for the checks."""
        return [Event(e.operation.value, e.id, e.bind) for e in consumed]

    def counting(self) -> AbstractContextManager[list[Counts]]:
        """Count with ``fluxaorm.testing.count_queries`` / ``count_round_trips``."""
        return _counting(self.engine)

    def close(self) -> None:
        """Nothing: the engine belongs to the flushing competitor (``Fluxa``)."""
