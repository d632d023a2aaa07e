"""engine.backfill(): existing rows as Update events, chunked, resumable.

The command ``fluxaorm backfill`` (tests/test_cli.py) kills one with SIGKILL;
here the library call itself: what it publishes, its progress reports, its
checkpoint, and a chunk Redis refuses half-way.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
import redis

import fluxaorm
from fluxaorm.backfill import checkpoint_key
from fluxaorm.testing import count_round_trips
from tests.models import CategoryEntity, ProductEntity, UserEntity

CHECKPOINT = checkpoint_key("dirty_Products", "tests.models.ProductEntity")


def _products(engine: fluxaorm.Engine, n: int) -> list[ProductEntity]:
    orm = engine.new_orm()
    made = [
        orm.new_entity(ProductEntity, sku=f"sku{i}", shop=1, price=Decimal(i))
        for i in range(1, n + 1)
    ]
    orm.flush()
    return made


def _published(client: redis.Redis, key: str = "dirty_Products") -> list[int]:
    return [int(fields[b"id"]) for _, fields in client.xrange(key)]


def test_backfill_publishes_alive_rows_as_updates_in_chunks(
    make_engine: Any, redis_client: redis.Redis
) -> None:
    """Every row not fake-deleted, once, in id order: one MULTI/EXEC round trip per chunk."""
    engine = make_engine(ProductEntity)
    made = _products(engine, 7)
    orm = engine.new_orm()
    orm.delete_entity(orm.get_by_id(ProductEntity, made[2].id))
    orm.flush()
    redis_client.delete("dirty_Products")
    reports: list[tuple[int, int, int]] = []

    with count_round_trips(engine) as trips:
        published = engine.backfill(
            ProductEntity,
            "Products",
            chunk=2,
            progress=lambda *report: reports.append(report),
        )

    alive = [p.id for p in made if p.id != made[2].id]
    assert published == 6
    assert _published(redis_client) == alive
    assert reports == [(0, 6, 0), (2, 6, alive[1]), (4, 6, alive[3]), (6, 6, alive[5])]
    # One MULTI/EXEC per chunk, each with its chunk's XADDs and the checkpoint.
    assert [(w, n) for _, w, n in trips.entries if w == "backfill"] == [
        ("backfill", 3),
        ("backfill", 3),
        ("backfill", 3),
    ]
    batch = next(engine.get_event_broker().tail("Products", "0", block=0))
    first = batch[0].event
    assert first is not None and first.operation == fluxaorm.Update
    assert first.bind == {
        "id": made[0].id,
        "sku": "sku1",
        "shop": 1,
        "price": Decimal("1.00"),
        "fake_delete": False,
    }
    assert redis_client.xlen(CHECKPOINT) == 0


def test_backfill_goes_to_the_one_stream_asked_for(
    make_engine: Any, redis_client: redis.Redis
) -> None:
    """A backfill of AllChanges writes nothing to the user's other streams."""
    engine = make_engine(UserEntity, CategoryEntity)
    orm = engine.new_orm()
    orm.new_entity(UserEntity, name="a", email="a@x")
    orm.flush()
    redis_client.flushdb()
    assert engine.backfill(UserEntity, "dirty_AllChanges") == 1
    assert redis_client.keys("dirty_*") == [b"dirty_AllChanges"]


def test_backfill_refuses_bad_arguments(make_engine: Any) -> None:
    """A stream the entity does not feed, an unregistered class, a chunk below 1."""
    engine = make_engine(UserEntity, CategoryEntity)
    with pytest.raises(fluxaorm.ConfigurationError, match="does not feed"):
        engine.backfill(CategoryEntity, "NewUsers")
    with pytest.raises(fluxaorm.ConfigurationError, match="not a registered entity"):
        engine.backfill(ProductEntity, "AllChanges")
    with pytest.raises(fluxaorm.ConfigurationError, match="chunk must be 1 or more"):
        engine.backfill(UserEntity, "AllChanges", chunk=0)


def test_a_chunk_redis_refuses_keeps_the_checkpoint_before_it(
    make_engine: Any, redis_client: redis.Redis
) -> None:
    """WRONGTYPE inside EXEC: the checkpoint stays at the last chunk Redis took; a rerun resumes there."""
    engine = make_engine(ProductEntity)
    made = _products(engine, 6)
    redis_client.delete("dirty_Products")

    def sabotage(done: int, total: int, last: int) -> None:
        if done == 2:  # after the first chunk: the stream key becomes a string
            redis_client.delete("dirty_Products")
            redis_client.set("dirty_Products", "not a stream")

    with pytest.raises(fluxaorm.StreamError, match="stopped after id") as info:
        engine.backfill(ProductEntity, "Products", chunk=2, progress=sabotage)

    assert f"stopped after id {made[1].id} (2 rows published)" in str(info.value)
    (entry,) = redis_client.xrange(CHECKPOINT)
    assert entry[1][b"last_id"] == str(made[1].id).encode()
    redis_client.delete("dirty_Products")
    reports: list[tuple[int, int, int]] = []
    assert (
        engine.backfill(
            ProductEntity, "Products", chunk=2, progress=lambda *r: reports.append(r)
        )
        == 4
    )
    assert reports[0] == (2, 6, made[1].id)
    assert _published(redis_client) == [p.id for p in made[2:]]


def test_restart_ignores_an_interrupted_runs_checkpoint(
    make_engine: Any, redis_client: redis.Redis
) -> None:
    """restart=True starts from the first row again."""
    engine = make_engine(ProductEntity)
    made = _products(engine, 3)
    redis_client.delete("dirty_Products")
    redis_client.xadd(
        CHECKPOINT,
        {"entity": "tests.models.ProductEntity", "last_id": made[1].id, "published": 2},
    )
    assert engine.backfill(ProductEntity, "Products") == 1
    redis_client.xadd(
        CHECKPOINT,
        {"entity": "tests.models.ProductEntity", "last_id": made[1].id, "published": 2},
    )
    assert engine.backfill(ProductEntity, "Products", restart=True) == 3
    assert _published(redis_client) == [made[2].id, *(p.id for p in made)]
