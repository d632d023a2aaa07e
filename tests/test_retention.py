"""Bounded streams and dead letters: retention never drops unhandled entries unless asked."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
import redis

import fluxaorm
from fluxaorm.testing import count_round_trips
from tests.conftest import MYSQL_URL, REDIS_URL
from tests.servers import ThrowawayRedis

# Every test here runs on one Redis server and on a Redis Cluster (conftest).
pytestmark = pytest.mark.also_on_cluster


@dataclass
class RetainedEntity:
    id: int = field(default=0, metadata={"orm": "dirty=Retained"})
    name: str = ""


def engine_with(
    make_engine: Callable[..., fluxaorm.Engine], **retention: Any
) -> fluxaorm.Engine:
    return make_engine(RetainedEntity, stream_retention={"Retained": retention})


def insert(engine: fluxaorm.Engine, n: int) -> None:
    orm = engine.new_orm()
    for i in range(n):
        orm.new_entity(RetainedEntity, name=f"n{i}")
    orm.flush()


def test_retention_keeps_entries_no_group_has_read(make_engine: Any) -> None:
    """Without consumer groups, max_len trims nothing: the first consumer gets it all."""
    engine = engine_with(make_engine, max_len=10)
    insert(engine, 30)
    broker = engine.get_event_broker()
    assert broker.trim_streams() == {"dirty_Retained": 0}
    stats = broker.get_stream_statistics("Retained")
    assert stats.len == 30 and stats.max_len == 10
    assert stats.retention_fill == pytest.approx(3.0)
    engine.close()


def test_retention_trims_only_handled_entries(
    make_engine: Any, redis_client: redis.Redis
) -> None:
    """With a group, max_len removes handled entries and keeps pending and unread ones."""
    engine = engine_with(make_engine, max_len=5)
    insert(engine, 30)
    orm = engine.new_orm()
    seen: list[int] = []

    def fail_on_third(events: list[fluxaorm.DirtyStreamEvent]) -> None:
        seen.extend(e.id for e in events)
        raise RuntimeError("keep these pending")

    consumer = fluxaorm.new_dirty_stream_consumer_many(
        orm, "Retained", fail_on_third, delete_acknowledged=False
    )
    with pytest.raises(RuntimeError):
        consumer.consume(10, 0)
    # Entries 1-10 are pending, 11-30 unread: none of them has been handled.
    broker = engine.get_event_broker()
    assert broker.trim_streams("Retained") == {"dirty_Retained": 0}
    assert redis_client.xlen("dirty_Retained") == 30

    handled = fluxaorm.new_dirty_stream_consumer_many(
        orm, "Retained", lambda events: None, delete_acknowledged=False
    )
    assert handled.auto_claim(100, 0) == 10
    assert handled.consume(15, 0) == 15
    # 25 entries handled (acked, kept in the stream); 5 unread remain.
    removed = broker.trim_streams("Retained")["dirty_Retained"]
    assert removed == 25
    left = [int(f[b"id"]) for _, f in redis_client.xrange("dirty_Retained")]
    assert left == list(range(26, 31))
    engine.close()


def test_retention_by_age_waits_for_consumers(
    make_engine: Any, redis_client: redis.Redis
) -> None:
    """max_age removes old handled entries; old unhandled ones stay."""
    engine = engine_with(make_engine, max_age=timedelta(milliseconds=200))
    insert(engine, 6)
    orm = engine.new_orm()
    consumer = fluxaorm.new_dirty_stream_consumer_single(
        orm, "Retained", lambda events: None, delete_acknowledged=False
    )
    assert consumer.consume(3, 0) == 3
    time.sleep(0.3)
    broker = engine.get_event_broker()
    assert broker.trim_streams("Retained") == {"dirty_Retained": 3}
    assert redis_client.xlen("dirty_Retained") == 3
    stats = broker.get_stream_statistics("Retained")
    assert stats.max_age_seconds == pytest.approx(0.2)
    assert stats.retention_fill is not None and stats.retention_fill > 1
    engine.close()


def test_drop_unhandled_trims_on_every_xadd(
    make_engine: Any, redis_client: redis.Redis
) -> None:
    """drop_unhandled=True caps the stream near max_len even with no consumer at all."""
    engine = engine_with(make_engine, max_len=100, drop_unhandled=True)
    for _ in range(10):
        insert(engine, 100)
    # XADD MAXLEN ~ trims whole macro nodes: near the cap, never the full 1,000.
    assert 100 <= redis_client.xlen("dirty_Retained") < 300
    engine.get_event_broker().trim_streams("Retained")
    assert redis_client.xlen("dirty_Retained") == 100
    engine.close()


def test_retention_of_an_undeclared_stream_is_refused(make_engine: Any) -> None:
    """set_stream_retention on a stream no entity declares fails at validate()."""
    registry = fluxaorm.Registry()
    registry.register_mysql(MYSQL_URL)
    registry.register_redis(REDIS_URL)
    registry.register_entity(RetainedEntity)
    registry.set_stream_retention("Nope", max_len=5)
    with pytest.raises(fluxaorm.ConfigurationError, match=r"Nope.*declared: Retained"):
        registry.validate()
    with pytest.raises(fluxaorm.ConfigurationError, match="max_len"):
        registry.set_stream_retention("Retained", max_len=0)
    with pytest.raises(fluxaorm.ConfigurationError, match="give max_len"):
        registry.set_stream_retention("Retained")


def test_dead_letters_can_be_listed_requeued_and_purged(
    make_engine: Any, redis_client: redis.Redis
) -> None:
    """Poison events land in dirty_<Name>:dead; the broker lists, requeues and purges them."""
    engine = make_engine(RetainedEntity)
    insert(engine, 3)
    orm = engine.new_orm()

    def poison(events: list[fluxaorm.DirtyStreamEvent]) -> None:
        failed = None
        for event in events:
            if event.id == 2:
                failed = ValueError("cannot handle #2")
                continue
            event.ack()
        if failed is not None:
            raise failed

    consumer = fluxaorm.new_dirty_stream_consumer_single(
        orm, "Retained", poison, max_deliveries=2
    )
    for _ in range(3):
        with contextlib.suppress(ValueError):
            consumer.consume(10, 0)
    broker = engine.get_event_broker()
    letters = broker.get_dead_letters("Retained")
    assert len(letters) == 1
    letter = letters[0]
    assert letter.event is not None and letter.event.id == 2
    assert letter.error == "ValueError: cannot handle #2"
    assert letter.deliveries == 2 and letter.group == "default"
    assert broker.get_stream_statistics("Retained").dead_letters == 1
    assert redis_client.xlen("dirty_Retained") == 0

    assert broker.requeue_dead_letters("Retained") == 1
    assert redis_client.xlen("dirty_Retained:dead") == 0
    got: list[int] = []
    fixed = fluxaorm.new_dirty_stream_consumer_single(
        orm, "Retained", lambda events: got.extend(e.id for e in events)
    )
    assert fixed.consume(10, 0) == 1 and got == [2]

    redis_client.xadd("dirty_Retained:dead", {"action": "add", "error": "x"})
    redis_client.xadd("dirty_Retained:dead", {"action": "add", "error": "y"})
    first = broker.get_dead_letters("Retained")[0]
    assert first.event is None  # not a valid event: listed anyway
    assert broker.purge_dead_letters("Retained", [first.message_id]) == 1
    assert broker.purge_dead_letters("Retained") == 1
    assert redis_client.exists("dirty_Retained:dead") == 0


# -- dead letters that must not be lost, retention that must not read the backlog --------


def _dead_letters(client: redis.Redis, n: int) -> list[str]:
    """Add ``n`` dead letters of genuine-looking events; return their ids."""
    ids = []
    for i in range(n):
        ids.append(
            client.xadd(
                "dirty_Retained:dead",
                {
                    "action": "add",
                    "entity": "tests.test_retention.RetainedEntity",
                    "id": str(i + 1),
                    "s": b"\x82\xa2id\x01\xa4name\xa1x",
                    "error": "boom",
                    "deliveries": "3",
                    "original_id": f"1-{i}",
                    "group": "default",
                },
            ).decode()
        )
    return ids


def _starve(client: redis.Redis) -> None:
    """Push a throwaway Redis (noeviction) into OOM: it refuses every XADD."""
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", used - 262_144)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        client.xadd("probe", {"a": "b"})


def _engine_on(redis_url: str, **retention: Any) -> fluxaorm.Engine:
    registry = fluxaorm.Registry()
    registry.register_mysql(MYSQL_URL)
    registry.register_redis(redis_url)
    registry.register_entity(RetainedEntity)
    if retention:
        registry.set_stream_retention("Retained", **retention)
    return registry.validate()


@pytest.mark.single_redis  # on a Redis server (or address) of its own
def test_requeue_under_oom_keeps_every_dead_letter(make_engine: Any) -> None:
    """Redis out of memory: requeue_dead_letters raises, adds nothing and keeps all 5 dead letters."""
    with ThrowawayRedis(["--maxmemory-policy", "noeviction"]) as server:
        client = server.client()
        letters = _dead_letters(client, 5)
        engine = _engine_on(server.url)
        _starve(client)

        with pytest.raises(fluxaorm.StreamError, match="5 dead letters could not"):
            engine.get_event_broker().requeue_dead_letters("Retained")

        assert [i.decode() for i, _ in client.xrange("dirty_Retained:dead")] == letters
        assert client.xlen("dirty_Retained") == 0
        client.config_set("maxmemory", 0)
        assert engine.get_event_broker().requeue_dead_letters("Retained") == 5
        assert client.xlen("dirty_Retained:dead") == 0
        assert client.xlen("dirty_Retained") == 5
        engine.close()
        client.close()


def test_requeue_onto_a_key_of_another_type_keeps_the_dead_letters(
    make_engine: Any, redis_client: redis.Redis
) -> None:
    """WRONGTYPE on the stream key: nothing requeued, nothing deleted, the error says so."""
    engine = make_engine(RetainedEntity, sync=False)
    letters = _dead_letters(redis_client, 3)
    redis_client.set("dirty_Retained", "not a stream")

    with pytest.raises(fluxaorm.StreamError, match="WRONGTYPE") as info:
        engine.get_event_broker().requeue_dead_letters("Retained")

    assert "0 were requeued" in str(info.value)
    assert [
        i.decode() for i, _ in redis_client.xrange("dirty_Retained:dead")
    ] == letters


def test_dead_letters_with_odd_fields_are_listed_never_raise(
    make_engine: Any, redis_client: redis.Redis
) -> None:
    """get_dead_letters lists entries with a 5,000-digit id, non-UTF-8 text or a bad count without raising."""
    engine = make_engine(RetainedEntity, sync=False)
    odd = [
        {"action": "add", "entity": "x", "id": "7" * 5000, "s": b"\x80", "error": "e"},
        {"original_id": b"\xff\xfe", "group": b"\xff", "error": b"\xff", "a": "b"},
        {"deliveries": "many", "error": "e"},
        {"deliveries": "9" * 5000, "error": "e"},
    ]
    for fields in odd:
        redis_client.xadd("dirty_Retained:dead", fields)

    letters = engine.get_event_broker().get_dead_letters("Retained")

    assert len(letters) == len(odd)
    assert all(letter.event is None for letter in letters)
    assert [letter.deliveries for letter in letters] == [0, 0, 0, 0]
    assert letters[1].original_id == "\ufffd\ufffd"


@pytest.mark.single_redis  # on a Redis server (or address) of its own
def test_trimming_a_lagging_group_never_reads_its_backlog(
    make_engine: Any, other_redis: ThrowawayRedis
) -> None:
    """max_len trim with 20,000 unread entries reads none of them: its replies stay a few hundred bytes."""
    server = other_redis
    client = server.client()
    pipe = client.pipeline(transaction=False)
    for i in range(20_000):
        pipe.xadd("dirty_Retained", {"action": "add", "pad": "x" * 100, "n": i})
    pipe.execute()
    client.xgroup_create("dirty_Retained", "default", "0")
    read = client.xreadgroup("default", "c", {"dirty_Retained": ">"}, count=10)
    client.xack("dirty_Retained", "default", *[i for i, _ in read[0][1]])
    engine = _engine_on(server.url, max_len=100)
    broker = engine.get_event_broker()
    before = int(client.info("stats")["total_net_output_bytes"])

    with count_round_trips(engine) as trips:
        removed = broker.trim_streams("Retained")

    sent = int(client.info("stats")["total_net_output_bytes"]) - before
    assert removed == {"dirty_Retained": 10}  # the handled ones, not the backlog
    assert client.xlen("dirty_Retained") == 19_990
    assert sent < 5_000, f"{sent} bytes of replies for one trim"
    assert trips.count <= 4
    engine.close()
    client.close()


def test_trim_by_max_len_still_removes_exactly_the_handled_excess(
    make_engine: Any, redis_client: redis.Redis
) -> None:
    """With every entry handled and kept, max_len removes exactly the oldest excess entries."""
    engine = engine_with(make_engine, max_len=10)
    insert(engine, 25)
    orm = engine.new_orm()
    consumer = fluxaorm.new_dirty_stream_consumer_single(
        orm, "Retained", lambda events: None, delete_acknowledged=False
    )
    assert consumer.consume(100, 0) == 25
    newest = [i for i, _ in redis_client.xrange("dirty_Retained")][-10:]

    assert engine.get_event_broker().trim_streams("Retained") == {"dirty_Retained": 15}

    assert [i for i, _ in redis_client.xrange("dirty_Retained")] == newest
    engine.close()
