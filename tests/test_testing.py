"""fluxaorm.testing.age_pending against the real Redis: pending events look idle at
once, keep their consumer and delivery count, and auto_claim takes them over."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
import redis

import fluxaorm
from fluxaorm.testing import age_pending, count_round_trips
from tests.models import UserEntity

KEY = "dirty_AllChanges"


def _boom(events: list[fluxaorm.DirtyStreamEvent]) -> None:
    raise RuntimeError("boom: the handler failed")


def _leave_pending(orm: fluxaorm.ORM, n: int) -> fluxaorm.DirtyStreamConsumer:
    """Publish ``n`` users; a many consumer fails on them, so they stay pending."""
    for i in range(n):
        orm.new_entity(UserEntity, name=f"u{i}")
    orm.flush()
    failing = fluxaorm.new_dirty_stream_consumer_many(orm, "AllChanges", _boom)
    with pytest.raises(RuntimeError):
        failing.consume(n, 0)
    return failing


def _pending(client: redis.Redis) -> list[dict[str, Any]]:
    return client.xpending_range(KEY, "default", "-", "+", 100_000)


def test_age_pending_makes_events_idle_keeping_consumer_and_deliveries(
    orm: fluxaorm.ORM, redis_client: redis.Redis
) -> None:
    """Every pending event gets the idle time asked; owner and delivery count stay."""
    failing = _leave_pending(orm, 3)
    before = _pending(redis_client)
    assert all(row["time_since_delivered"] < 60_000 for row in before)

    assert age_pending(orm.engine, "AllChanges", 90) == 3

    after = _pending(redis_client)
    assert [r["message_id"] for r in after] == [r["message_id"] for r in before]
    assert {r["consumer"].decode() for r in after} == {failing.name}
    assert [r["times_delivered"] for r in after] == [1, 1, 1]
    assert all(90_000 <= r["time_since_delivered"] < 100_000 for r in after)


def test_auto_claim_takes_over_aged_events_without_waiting(
    orm: fluxaorm.ORM, redis_client: redis.Redis
) -> None:
    """auto_claim(min_idle=60 s) claims nothing before age_pending and all after."""
    _leave_pending(orm, 4)
    got: list[int] = []
    claimer = fluxaorm.new_dirty_stream_consumer_many(
        orm, "AllChanges", lambda events: got.extend(e.id for e in events)
    )
    assert claimer.auto_claim(10, 60.0) == 0

    age_pending(orm.engine, "dirty_AllChanges", datetime.timedelta(minutes=1))

    assert claimer.auto_claim(10, 60.0) == 4
    assert len(got) == 4
    assert _pending(redis_client) == []


def test_age_pending_of_one_consumer_leaves_the_others_busy(
    orm: fluxaorm.ORM, redis_client: redis.Redis
) -> None:
    """consumer= ages only that consumer's pending events."""
    first = _leave_pending(orm, 2)
    second = _leave_pending(orm, 3)

    assert age_pending(orm.engine, "AllChanges", 60, consumer=second.name) == 3

    idle = {
        r["message_id"]: (r["consumer"].decode(), r["time_since_delivered"])
        for r in _pending(redis_client)
    }
    assert sorted(name for name, _ in idle.values()) == sorted(
        [first.name] * 2 + [second.name] * 3
    )
    for name, ms in idle.values():
        assert (ms >= 60_000) == (name == second.name)


def test_age_pending_walks_a_long_pending_list_in_chunks(
    orm: fluxaorm.ORM, redis_client: redis.Redis
) -> None:
    """2,500 pending entries of two consumers: all aged, three XPENDING pages."""
    _leave_pending(orm, 1)  # creates the group
    pipe = redis_client.pipeline(transaction=False)
    for i in range(2_499):
        pipe.xadd(KEY, {"action": "add", "n": i})
    pipe.execute()
    redis_client.xreadgroup("default", "foreign", {KEY: ">"}, count=10_000)

    with count_round_trips(orm.engine) as trips:
        assert age_pending(orm.engine, "AllChanges", 120) == 2_500

    assert [what for _, what, _ in trips.entries] == ["XPENDING", "XCLAIM"] * 3
    rows = _pending(redis_client)
    assert len(rows) == 2_500
    assert min(r["time_since_delivered"] for r in rows) >= 120_000


def test_age_pending_drops_entries_deleted_from_the_stream(
    orm: fluxaorm.ORM, redis_client: redis.Redis
) -> None:
    """A pending entry XDELed meanwhile is not counted and leaves the pending list."""
    _leave_pending(orm, 3)
    deleted = _pending(redis_client)[1]["message_id"]
    redis_client.xdel(KEY, deleted)

    assert age_pending(orm.engine, "AllChanges", 60) == 2

    assert deleted not in [r["message_id"] for r in _pending(redis_client)]


def test_age_pending_with_nothing_pending_returns_zero(orm: fluxaorm.ORM) -> None:
    """A group with no pending event: nothing to age, one XPENDING."""
    fluxaorm.new_dirty_stream_consumer_many(orm, "AllChanges", _boom).consume(10, 0)
    with count_round_trips(orm.engine) as trips:
        assert age_pending(orm.engine, "AllChanges", 60) == 0
    assert trips.count == 1


def test_age_pending_refuses_unknown_streams_groups_and_negative_ages(
    orm: fluxaorm.ORM,
) -> None:
    """Mistakes are errors that say what is wrong, not a silent 0."""
    with pytest.raises(fluxaorm.ConfigurationError, match="NoSuchStream"):
        age_pending(orm.engine, "NoSuchStream", 60)
    with pytest.raises(fluxaorm.ConfigurationError, match="0 or more"):
        age_pending(orm.engine, "AllChanges", -1)
    _leave_pending(orm, 1)
    with pytest.raises(fluxaorm.StreamError, match="NOGROUP"):
        age_pending(orm.engine, "AllChanges", 60, group="nobody")
