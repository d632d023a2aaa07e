"""Stream and outbox statistics (SPEC §6) read through ``orm.get_event_broker()``.

Ages are checked against entries written with explicit ids (their time is the id),
so no assertion depends on how fast the test runs; group state is built with raw
redis commands and with fluxaorm's own consumers."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis

import fluxaorm
from fluxaorm import OutboxStatistics
from tests.conftest import MYSQL_URL
from tests.models import CategoryEntity, UserEntity
from tests.servers import free_port

# Every test here runs on one Redis server and on a Redis Cluster (conftest).
pytestmark = pytest.mark.also_on_cluster

SPEC_STREAMS = (
    "AllChanges",
    "NewUsers",
    "DeletedUsers",
    "EmailAddedOrChanged",
    "CategoryAddedDeleted",
)
KEY = "dirty_AllChanges"


@fluxaorm.entity(table="elsewhere", redis_pool="other")
@dataclass
class Elsewhere:
    id: int = field(default=0, metadata={"orm": "dirty=ElsewhereStream"})
    name: str = ""


def _now_ms(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def _add_aged(client: redis.Redis, seconds_ago: float, now_ms: int) -> str:
    """Append an entry whose id says it was written ``seconds_ago`` before ``now_ms``."""
    ident = f"{now_ms - int(seconds_ago * 1000)}-0"
    client.xadd(KEY, {"action": "add"}, id=ident)
    return ident


@pytest.fixture
def broker(orm: fluxaorm.ORM) -> Any:
    """The event broker of an engine with the example's entities."""
    return orm.get_event_broker()


def _group(stats: fluxaorm.StreamStatistics, name: str) -> fluxaorm.GroupStatistics:
    (found,) = [g for g in stats.groups if g.name == name]
    return found


def test_empty_stream_has_zero_statistics(broker):
    """A declared stream with no entries: len 0, oldest age 0, no groups."""
    for name in ("AllChanges", "dirty_AllChanges"):
        stats = broker.get_stream_statistics(name)
        assert stats.stream == KEY
        assert stats.redis_pool == "default"
        assert stats.len == 0
        assert stats.oldest_event_seconds == 0
        assert stats.groups == []


def test_unknown_stream_is_a_configuration_error(broker):
    """Asking for a stream no entity declares raises ConfigurationError."""
    with pytest.raises(fluxaorm.ConfigurationError):
        broker.get_stream_statistics("Nope")


def test_len_and_oldest_event_age_follow_the_entries(broker, redis_client):
    """len counts entries; oldest_event_seconds is the first entry's age by its id."""
    now = _now_ms(redis_client)
    oldest = _add_aged(redis_client, 90, now)
    _add_aged(redis_client, 30, now)
    redis_client.xadd(KEY, {"action": "add"})
    stats = broker.get_stream_statistics("AllChanges")
    assert stats.len == 3
    assert 90 <= stats.oldest_event_seconds < 100
    redis_client.xdel(KEY, oldest)
    stats = broker.get_stream_statistics("AllChanges")
    assert stats.len == 2
    assert 30 <= stats.oldest_event_seconds < 40
    redis_client.xtrim(KEY, maxlen=0)
    stats = broker.get_stream_statistics("AllChanges")
    assert (stats.len, stats.oldest_event_seconds) == (0, 0)


def test_oldest_event_age_grows_while_it_waits(orm):
    """A flushed event's age is about 0 at first and grows while nobody consumes it."""
    orm.new_entity(UserEntity, name="Tom")
    orm.flush()
    broker = orm.get_event_broker()
    first = broker.get_stream_statistics("NewUsers").oldest_event_seconds
    time.sleep(0.3)
    later = broker.get_stream_statistics("NewUsers").oldest_event_seconds
    assert 0 <= first < 5
    assert later >= first + 0.25


def test_group_statistics_report_pending_lag_and_ages(broker, redis_client):
    """Groups report pending, lag, last delivered id and age, oldest pending age, consumers."""
    now = _now_ms(redis_client)
    ids = [_add_aged(redis_client, age, now) for age in (100, 80, 60, 40, 20)]
    redis_client.xgroup_create(KEY, "g", id="0")
    redis_client.xgroup_create(KEY, "idle-group", id="0")
    redis_client.xreadgroup("g", "c1", {KEY: ">"}, count=2)
    redis_client.xreadgroup("g", "c2", {KEY: ">"}, count=1)
    redis_client.xack(KEY, "g", ids[0])

    stats = broker.get_stream_statistics("AllChanges")
    assert stats.len == 5
    assert 100 <= stats.oldest_event_seconds < 110
    group = _group(stats, "g")
    assert group.pending == 2
    assert group.lag == 2
    assert group.last_delivered_id == ids[2]
    assert 60 <= group.last_delivered_seconds < 70
    assert 80 <= group.oldest_pending_seconds < 90
    consumers = {c.name: c for c in group.consumers}
    assert set(consumers) == {"c1", "c2"}
    assert consumers["c1"].pending == 1
    assert consumers["c2"].pending == 1
    assert all(0 <= c.idle_seconds < 5 for c in consumers.values())

    untouched = _group(stats, "idle-group")
    assert (untouched.pending, untouched.lag) == (0, 5)
    assert untouched.last_delivered_id == "0-0"
    assert untouched.last_delivered_seconds == 0
    assert untouched.oldest_pending_seconds == 0
    assert untouched.consumers == []


def test_consumer_idle_time_grows(broker, redis_client):
    """A consumer's idle_seconds grows while it does not read."""
    redis_client.xadd(KEY, {"action": "add"})
    redis_client.xgroup_create(KEY, "g", id="0")
    redis_client.xreadgroup("g", "sleepy", {KEY: ">"}, count=1)
    time.sleep(0.3)
    (consumer,) = _group(broker.get_stream_statistics(KEY), "g").consumers
    assert consumer.name == "sleepy"
    assert consumer.idle_seconds >= 0.25


def test_statistics_follow_a_fluxaorm_consumer(orm, redis_client):
    """A failing handler leaves events pending; a successful consume clears the backlog."""
    for n in range(5):
        orm.new_entity(UserEntity, name=f"u{n}")
    orm.flush()
    broker = orm.get_event_broker()
    entry_ids = [i.decode() for i, _ in redis_client.xrange(KEY)]

    def fail(events: list[fluxaorm.DirtyStreamEvent]) -> None:
        raise RuntimeError("not now")

    failing = fluxaorm.new_dirty_stream_consumer_single(orm, "AllChanges", fail)
    with pytest.raises(RuntimeError):
        failing.consume(3, 0)
    stats = broker.get_stream_statistics("AllChanges")
    group = _group(stats, "default")
    assert stats.len == 5
    assert (group.pending, group.lag) == (3, 2)
    assert group.last_delivered_id == entry_ids[2]
    assert [(c.name, c.pending) for c in group.consumers] == [("single", 3)]
    assert 0 <= group.oldest_pending_seconds < 5

    handled: list[int] = []
    working = fluxaorm.new_dirty_stream_consumer_single(
        orm, "AllChanges", lambda events: handled.extend(e.id for e in events)
    )
    assert working.consume(100, 0) == 5
    stats = broker.get_stream_statistics("AllChanges")
    group = _group(stats, "default")
    assert stats.len == 0
    assert stats.oldest_event_seconds == 0
    assert (group.pending, group.lag) == (0, 0)
    assert group.last_delivered_id == entry_ids[4]
    assert group.oldest_pending_seconds == 0


def test_lag_is_counted_when_redis_reports_it_unknown(broker, redis_client):
    """After an XDEL past the group's position Redis says lag=null; the broker counts it."""
    ids = [redis_client.xadd(KEY, {"n": n}) for n in range(10)]
    redis_client.xgroup_create(KEY, "g", id="0")
    redis_client.xreadgroup("g", "c", {KEY: ">"}, count=3)
    redis_client.xdel(KEY, ids[5])
    assert redis_client.xinfo_groups(KEY)[0]["lag"] is None
    group = _group(broker.get_stream_statistics(KEY), "g")
    assert group.lag == 6
    assert group.pending == 3


def test_lag_is_counted_exactly_in_a_long_stream(broker, redis_client):
    """lag=null, 15,050 entries, 5,000 delivered and acked: lag is the true 10,049."""
    pipe = redis_client.pipeline(transaction=False)
    for n in range(15_050):
        pipe.xadd(KEY, {"n": n})
    ids = pipe.execute()
    redis_client.xgroup_create(KEY, "g", id="0")
    redis_client.xreadgroup("g", "c", {KEY: ">"}, count=5000)
    # Acknowledged without XDEL: what delete_acknowledged=False does when several
    # groups read one stream.
    redis_client.xack(KEY, "g", *ids[:5000])
    redis_client.xdel(KEY, ids[6000])
    assert redis_client.xinfo_groups(KEY)[0]["lag"] is None
    undelivered = len(redis_client.xrange(KEY, min=f"({ids[4999].decode()}", max="+"))
    assert undelivered == 10_049
    group = _group(broker.get_stream_statistics(KEY), "g")
    assert group.pending == 0
    assert group.lag == undelivered


def test_streams_statistics_default_to_every_registered_stream(orm):
    """get_streams_statistics() covers every declared stream; with names, those in order."""
    orm.new_entity(UserEntity, name="Tom")
    orm.flush()
    broker = orm.get_event_broker()
    every = broker.get_streams_statistics()
    assert sorted(s.stream for s in every) == sorted(f"dirty_{n}" for n in SPEC_STREAMS)
    assert {s.stream: s.len for s in every} == {
        "dirty_AllChanges": 1,
        "dirty_NewUsers": 1,
        "dirty_EmailAddedOrChanged": 1,
        "dirty_DeletedUsers": 0,
        "dirty_CategoryAddedDeleted": 0,
    }
    named = broker.get_streams_statistics("NewUsers", "dirty_DeletedUsers")
    assert [(s.stream, s.len) for s in named] == [
        ("dirty_NewUsers", 1),
        ("dirty_DeletedUsers", 0),
    ]


@pytest.mark.single_redis  # on a Redis server (or address) of its own
def test_statistics_of_a_stream_on_another_redis_pool(clean, other_redis):
    """A stream on the pool "other" is read from that server and reports that pool."""
    registry = fluxaorm.Registry()
    registry.register_mysql(MYSQL_URL)
    registry.register_redis(other_redis.url, pool="other")
    registry.register_entity(Elsewhere)
    with registry.validate() as engine:
        engine.sync_schema()
        orm = engine.new_orm()
        orm.new_entity(Elsewhere, name="x")
        orm.new_entity(Elsewhere, name="y")
        orm.flush()
        stats = orm.get_event_broker().get_stream_statistics("ElsewhereStream")
    assert (stats.stream, stats.redis_pool, stats.len) == (
        "dirty_ElsewhereStream",
        "other",
        2,
    )


@pytest.mark.single_redis  # on a Redis server (or address) of its own
def test_outbox_statistics_count_rows_entries_and_age(make_engine, mysql_conn):
    """get_outbox_statistics(): rows and entries waiting per MySQL pool, oldest row's age."""
    engine = make_engine(
        UserEntity, CategoryEntity, redis_url=f"redis://127.0.0.1:{free_port()}/0"
    )
    orm = engine.new_orm()
    broker = orm.get_event_broker()
    assert broker.get_outbox_statistics() == [OutboxStatistics("default", 0, 0, 0.0)]
    for n in range(3):
        orm.new_entity(UserEntity, name=f"u{n}")
    orm.flush()
    orm.new_entity(CategoryEntity, code="c")
    orm.flush()
    (stats,) = broker.get_outbox_statistics()
    assert (stats.mysql_pool, stats.rows, stats.entries) == ("default", 2, 11)
    assert 0 <= stats.oldest_seconds < 5
    cursor = mysql_conn.cursor()
    cursor.execute(
        "UPDATE `_fluxaorm_outbox` SET `created_at` = UTC_TIMESTAMP(6) - INTERVAL 90 SECOND "
        "ORDER BY `id` LIMIT 1"
    )
    (stats,) = broker.get_outbox_statistics()
    assert 90 <= stats.oldest_seconds < 100


def test_outbox_statistics_are_empty_with_the_outbox_off(make_engine):
    """With Registry(outbox=False) there is no outbox to report."""
    engine = make_engine(UserEntity, outbox=False)
    assert engine.new_orm().get_event_broker().get_outbox_statistics() == []


# -- reading without a group, moving a group ------------------------------------------


def _insert_users(engine: fluxaorm.Engine, *names: str) -> None:
    orm = engine.new_orm()
    for name in names:
        orm.new_entity(UserEntity, name=name, email=f"{name}@example.com")
    orm.flush()


def test_tail_from_now_reads_only_later_entries_and_touches_no_group(
    make_engine, redis_client
):
    """tail("$") skips what was there when called, yields what comes, and leaves no trace."""
    engine = make_engine(UserEntity, CategoryEntity)
    _insert_users(engine, "before")
    entries = engine.get_event_broker().tail("AllChanges", block=0)
    _insert_users(engine, "after")
    redis_client.xadd(KEY, {"foreign": "producer"})

    batch = next(entries)

    assert [e.event.bind["name"] for e in batch if e.event] == ["after"]
    assert [e.error for e in batch] == ["", "missing field 'action'"]
    assert batch[1].fields == {b"foreign": b"producer"}
    assert next(entries) == []
    assert redis_client.xlen(KEY) == 3
    assert redis_client.xinfo_groups(KEY) == []


def test_tail_from_an_entry_id_starts_at_that_entry(make_engine, redis_client):
    """An entry id is inclusive, milliseconds alone mean that time, 0 is the start."""
    engine = make_engine(UserEntity, CategoryEntity)
    _insert_users(engine, "a", "b", "c")
    ids = [i.decode() for i, _ in redis_client.xrange(KEY)]
    broker = engine.get_event_broker()

    def read(start: str) -> list[str]:
        return [e.message_id for e in next(broker.tail("AllChanges", start, block=0))]

    assert read("0") == read("-") == ids
    assert read(ids[1]) == ids[1:]
    assert read(ids[0].split("-")[0]) == ids
    with pytest.raises(fluxaorm.ConfigurationError, match="is not a stream entry id"):
        broker.tail("AllChanges", "yesterday")


def test_move_group_creates_then_moves_a_group(make_engine, redis_client):
    """move_group creates a group at a point (True), then moves it back or forward (False)."""
    engine = make_engine(UserEntity, CategoryEntity)
    _insert_users(engine, "a", "b", "c")
    ids = [i.decode() for i, _ in redis_client.xrange(KEY)]
    broker = engine.get_event_broker()

    assert broker.move_group("AllChanges", "replayed", ids[1]) is True
    assert _group(broker.get_stream_statistics("AllChanges"), "replayed").lag == 2
    assert broker.move_group("AllChanges", "replayed", "0") is False
    assert _group(broker.get_stream_statistics("AllChanges"), "replayed").lag == 3
    assert broker.move_group("AllChanges", "replayed", "$") is False
    assert _group(broker.get_stream_statistics("AllChanges"), "replayed").lag == 0
    got: list[str] = []
    broker.move_group("AllChanges", "replayed", ids[2])
    consumer = fluxaorm.new_dirty_stream_consumer_many(
        engine.new_orm(),
        "AllChanges",
        lambda events: got.extend(e.bind["name"] for e in events),
        group="replayed",
        delete_acknowledged=False,
    )
    with consumer:
        consumer.consume(10, 0)
    assert got == ["c"]
