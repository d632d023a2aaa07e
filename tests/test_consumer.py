"""Dirty-stream consumers (SPEC §5 and the poison-event guarantee of §7) in one process.

Every test reads real entries from the test Redis DB that real flushes wrote through
MariaDB; tests that break connections use a ThrowawayRedis of their own. The tests
that need separate consumer processes live in test_consumer_processes.py.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pytest
import redis

import fluxaorm
from fluxaorm.testing import age_pending, count_round_trips
from tests.models import CategoryEntity, UserEntity
from tests.servers import ThrowawayRedis

# Every test here runs on one Redis server and on a Redis Cluster (conftest).
pytestmark = pytest.mark.also_on_cluster

STREAM = "AllChanges"
KEY = "dirty_AllChanges"
DEAD_KEY = "dirty_AllChanges:dead"
USER = "tests.models.UserEntity"


# -- helpers ---------------------------------------------------------------------------


class Recorder:
    """A handler that keeps every batch it gets; ``fail`` may raise after recording."""

    def __init__(
        self, fail: Callable[[list[fluxaorm.DirtyStreamEvent]], None] | None = None
    ):
        self.batches: list[list[fluxaorm.DirtyStreamEvent]] = []
        self.fail = fail
        self.lock = threading.Lock()

    def __call__(self, events: list[fluxaorm.DirtyStreamEvent]) -> None:
        with self.lock:
            self.batches.append(list(events))
        if self.fail is not None:
            self.fail(events)

    @property
    def events(self) -> list[fluxaorm.DirtyStreamEvent]:
        with self.lock:
            return [e for batch in self.batches for e in batch]

    @property
    def ids(self) -> list[int]:
        return [e.id for e in self.events]


def _boom(events: list[fluxaorm.DirtyStreamEvent]) -> None:
    raise RuntimeError("boom: the handler failed")


def _publish(orm: fluxaorm.ORM, n: int, prefix: str = "user") -> list[int]:
    """Insert ``n`` users in one flush; return their ids (one AllChanges entry each)."""
    users = [
        orm.new_entity(UserEntity, name=f"{prefix}{i}", email=f"{prefix}{i}@x.org")
        for i in range(n)
    ]
    orm.flush()
    return [u.id for u in users]


def _left_pending(orm: fluxaorm.ORM, count: int) -> fluxaorm.DirtyStreamConsumer:
    """A "many" consumer whose handler failed on ``count`` new events: they stay
    pending with it."""
    failing = fluxaorm.new_dirty_stream_consumer_many(orm, STREAM, Recorder(fail=_boom))
    with pytest.raises(RuntimeError):
        failing.consume(count, 0)
    return failing


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _group(client: redis.Redis, key: str = KEY) -> str:
    groups = client.xinfo_groups(key)
    assert len(groups) == 1, groups
    return _text(groups[0]["name"])


def _pending(client: redis.Redis, key: str = KEY) -> dict[str, str]:
    """Pending entry id -> consumer name, for the stream's one group."""
    rows = client.xpending_range(key, _group(client, key), "-", "+", 100_000)
    return {_text(r["message_id"]): _text(r["consumer"]) for r in rows}


def _consumers(client: redis.Redis, key: str = KEY) -> dict[str, int]:
    """Consumer name -> pending count, for the stream's one group."""
    return {
        _text(c["name"]): int(c["pending"])
        for c in client.xinfo_consumers(key, _group(client, key))
    }


def _message_ids(client: redis.Redis, key: str = KEY) -> list[str]:
    return [_text(ident) for ident, _ in client.xrange(key)]


def _wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


_LOOPS: list[tuple[threading.Event, threading.Thread]] = []


class InThread:
    """Run ``target()`` in a thread, keeping its result or exception.

    With ``stop``, the thread is a loop that the ``_stop_loops`` fixture stops and
    joins when the test ends, even when the test failed.
    """

    def __init__(self, target: Callable[[], Any], stop: threading.Event | None = None):
        self.result: Any = None
        self.error: BaseException | None = None

        def body() -> None:
            try:
                self.result = target()
            except BaseException as exc:  # handed to the test by join()
                self.error = exc

        self.thread = threading.Thread(target=body, daemon=True)
        self.thread.start()
        if stop is not None:
            _LOOPS.append((stop, self.thread))

    def join(self, timeout: float) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"still running after {timeout}s"
        if self.error is not None:
            raise self.error
        return self.result


def _retry_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "fluxaorm.consumer" and r.levelno >= logging.WARNING
    ]


@pytest.fixture(autouse=True)
def _stop_loops() -> Iterator[None]:
    """Stop and join every run() loop a test started, whatever its outcome."""
    yield
    while _LOOPS:
        stop, thread = _LOOPS.pop()
        stop.set()
        thread.join(15)


@pytest.fixture
def throwaway() -> Iterator[ThrowawayRedis]:
    server = ThrowawayRedis()
    try:
        yield server
    finally:
        server.close()


# -- 1. the API and the event ----------------------------------------------------------


def test_events_carry_entity_name_id_operation_bind_and_old(orm):
    """Insert, update and delete reach the handler as DirtyStreamEvents shaped as SPEC §4/§5 say."""
    user = orm.new_entity(UserEntity, name="Tom", email="tom@example.com")
    category = orm.new_entity(CategoryEntity, code="c1")
    orm.flush()
    edited = orm.edit_entity(orm.get_by_id(UserEntity, user.id))
    edited.email = "new@example.com"
    orm.flush()
    orm.delete_entity(edited)
    orm.flush()
    got = Recorder()
    consumer = fluxaorm.new_dirty_stream_consumer_single(orm, STREAM, got)

    assert consumer.consume(10, 0) == 4

    events = got.events
    assert all(isinstance(e, fluxaorm.DirtyStreamEvent) for e in events)
    shapes = [(e.entity_name, e.id, e.operation, e.bind, e.old) for e in events]
    assert sorted(shapes[:2], key=lambda s: s[0], reverse=True) == [
        (
            USER,
            user.id,
            fluxaorm.Insert,
            {"id": user.id, "name": "Tom", "email": "tom@example.com"},
            {},
        ),
        (
            "tests.models.CategoryEntity",
            category.id,
            fluxaorm.Insert,
            {"id": category.id, "code": "c1"},
            {},
        ),
    ]
    assert shapes[2:] == [
        (
            USER,
            user.id,
            fluxaorm.Update,
            {"email": "new@example.com"},
            {"email": "tom@example.com"},
        ),
        (
            USER,
            user.id,
            fluxaorm.Delete,
            {"id": user.id, "name": "Tom", "email": "new@example.com"},
            {},
        ),
    ]
    assert all(callable(e.ack) for e in events)


def test_events_published_before_any_consumer_existed_are_delivered(orm, redis_client):
    """A consumer created after the flushes still gets them: the group reads from the start."""
    ids = _publish(orm, 5)
    assert redis_client.exists(KEY) and not redis_client.xinfo_groups(KEY)
    got = Recorder()

    handed = fluxaorm.new_dirty_stream_consumer_many(orm, STREAM, got).consume(10, 0)

    assert handed == 5
    assert got.ids == ids


def test_handler_gets_at_most_count_events_per_call_and_consume_returns_how_many(orm):
    """consume(count, …) hands at most count events per handler call and returns the number handed."""
    ids = _publish(orm, 7)
    got = Recorder()
    consumer = fluxaorm.new_dirty_stream_consumer_single(orm, STREAM, got)

    assert [consumer.consume(3, 0) for _ in range(4)] == [3, 3, 1, 0]

    assert [len(b) for b in got.batches] == [3, 3, 1]
    assert got.ids == ids


def test_many_consumer_consumes_with_count_and_block(orm):
    """A "many" consumer's consume(count, block) hands at most count events and returns how many."""
    ids = _publish(orm, 5)
    got = Recorder()
    consumer = fluxaorm.new_dirty_stream_consumer_many(orm, STREAM, got)

    assert consumer.consume(2, 0.1) == 2
    assert consumer.consume(10, 0.1) == 3
    assert consumer.consume(10, 0.1) == 0

    assert [len(b) for b in got.batches] == [2, 3]
    assert got.ids == ids


def test_stream_name_is_accepted_with_or_without_the_dirty_prefix(orm, redis_client):
    """The names "AllChanges" and "dirty_AllChanges" reach the same stream and group."""
    first = Recorder()
    second = Recorder()
    bare = fluxaorm.new_dirty_stream_consumer_many(orm, "AllChanges", first)
    prefixed = fluxaorm.new_dirty_stream_consumer_many(orm, "dirty_AllChanges", second)
    ids = _publish(orm, 2)

    assert bare.consume(10, 0) == 2
    more = _publish(orm, 2, prefix="more")
    assert prefixed.consume(10, 0) == 2

    assert first.ids == ids
    assert second.ids == more
    assert bare.stream == prefixed.stream == KEY
    assert set(_consumers(redis_client)) == {bare.name, prefixed.name}


def test_unknown_stream_is_a_configuration_error(orm):
    """A stream no entity declares is refused when the consumer is created."""
    with pytest.raises(fluxaorm.ConfigurationError, match="Nope"):
        fluxaorm.new_dirty_stream_consumer_single(orm, "Nope", Recorder())


def test_block_and_min_idle_accept_float_seconds_and_timedelta(orm):
    """block and min_idle take float seconds or datetime.timedelta alike."""
    got = Recorder(fail=_boom)
    consumer = fluxaorm.new_dirty_stream_consumer_many(orm, STREAM, got)
    assert consumer.consume(10, datetime.timedelta(milliseconds=100)) == 0
    ids = _publish(orm, 2)

    with pytest.raises(RuntimeError, match="boom"):
        consumer.consume(10, datetime.timedelta(seconds=1))
    age_pending(orm.engine, STREAM, 60)
    got.fail = None
    assert consumer.auto_claim(10, datetime.timedelta(minutes=1)) == 2

    assert got.ids == ids + ids
    with pytest.raises(fluxaorm.ConfigurationError):
        consumer.consume(10, datetime.timedelta(seconds=-1))


# -- 2. pending first ----------------------------------------------------------------


def test_single_consumer_hands_its_own_pending_events_before_new_ones(orm):
    """A single consumer's next consume hands the events it failed on before newer ones."""
    first = _publish(orm, 3)
    got = Recorder(fail=_boom)
    consumer = fluxaorm.new_dirty_stream_consumer_single(orm, STREAM, got)
    with pytest.raises(RuntimeError):
        consumer.consume(10, 0)
    newer = _publish(orm, 2, prefix="newer")
    got.fail = None
    got.batches.clear()

    assert consumer.consume(10, 0) == 5

    assert [[e.id for e in b] for b in got.batches] == [first, newer]


def test_pending_events_are_handed_at_most_count_per_handler_call(orm):
    """Handing over pending events also respects count: the handler never gets more than count at once."""
    ids = _publish(orm, 5)
    got = Recorder(fail=_boom)
    consumer = fluxaorm.new_dirty_stream_consumer_single(orm, STREAM, got)
    with pytest.raises(RuntimeError):
        consumer.consume(10, 0)
    got.fail = None
    got.batches.clear()

    assert consumer.consume(2, 0) == 5

    assert [len(b) for b in got.batches] == [2, 2, 1]
    assert got.ids == ids


def test_new_single_consumer_resumes_events_the_previous_one_never_acknowledged(
    orm, redis_client
):
    """A new single consumer object (a restarted process) gets the events its predecessor read and never acked."""
    ids = _publish(orm, 3)
    crashed = Recorder(fail=_boom)
    old = fluxaorm.new_dirty_stream_consumer_single(orm, STREAM, crashed)
    with pytest.raises(RuntimeError):
        old.consume(10, 0)
    read = [e.message_id for e in crashed.events]
    assert sorted(_pending(redis_client)) == sorted(read)
    got = Recorder()
    restarted = fluxaorm.new_dirty_stream_consumer_single(orm, "dirty_AllChanges", got)

    assert restarted.consume(10, 0) == 3

    assert got.ids == ids
    assert [e.message_id for e in got.events] == read
    assert _pending(redis_client) == {}


# -- 3. acknowledging ----------------------------------------------------------------


def test_batch_is_acknowledged_and_removed_from_the_stream_in_one_round_trip(
    engine, orm, redis_client
):
    """After the handler returns, its batch is XACKed and XDELed (written at once,
    the replies read with the next command: no round trip of their own) and XLEN drops."""
    got = Recorder()
    consumer = fluxaorm.new_dirty_stream_consumer_single(orm, STREAM, got)
    consumer.consume(10, 0)  # the group exists and nothing is pending
    _publish(orm, 5)
    assert redis_client.xlen(KEY) == 5
    lengths_in_handler: list[int] = []
    got.fail = lambda events: lengths_in_handler.append(redis_client.xlen(KEY))

    with count_round_trips(engine) as log:
        assert consumer.consume(10, 0) == 5
        assert consumer.consume(10, 0) == 0  # its read carries the ack's replies

    assert lengths_in_handler == [5]
    assert log.count == 2, log.entries  # the two reads
    assert [e[1] for e in log.entries] == ["XREADGROUP", "XREADGROUP"]
    assert log.entries[1][2] == 1 + 2  # the read, and the XACK and XDEL replies
    assert redis_client.xlen(KEY) == 0
    assert _pending(redis_client) == {}


def test_event_ack_in_the_handler_acknowledges_at_once_and_only_once(
    engine, orm, redis_client
):
    """event.ack() acknowledges and removes that entry at once; it is not acknowledged again later."""
    consumer_seen: list[tuple[int, int]] = []

    def handle(events: list[fluxaorm.DirtyStreamEvent]) -> None:
        for event in events[:2]:
            event.ack()
            event.ack()  # a second call is a no-op
            consumer_seen.append((len(_pending(redis_client)), redis_client.xlen(KEY)))

    consumer = fluxaorm.new_dirty_stream_consumer_single(orm, STREAM, handle)
    consumer.consume(10, 0)
    _publish(orm, 5)

    with count_round_trips(engine) as log:
        assert consumer.consume(10, 0) == 5

    assert consumer_seen == [(4, 4), (3, 3)]
    # the read, and one round trip per event.ack() (done before it returns); the
    # other three are acknowledged as the handler returns, their replies owed
    assert [e[1] for e in log.entries] == ["XREADGROUP", "XACK", "XACK"]
    consumer.cleanup()  # reads the replies still owed
    assert redis_client.xlen(KEY) == 0
    assert _pending(redis_client) == {}


def test_all_events_acked_in_the_handler_cost_no_extra_acknowledgement(engine, orm):
    """When the handler acks every event itself, consume sends no further XACK."""

    def handle(events: list[fluxaorm.DirtyStreamEvent]) -> None:
        for event in events:
            event.ack()

    consumer = fluxaorm.new_dirty_stream_consumer_single(orm, STREAM, handle)
    consumer.consume(10, 0)
    _publish(orm, 4)

    with count_round_trips(engine) as log:
        assert consumer.consume(10, 0) == 4

    # the read, and one round trip per event.ack(); nothing more when it returns
    assert [e[1] for e in log.entries] == ["XREADGROUP"] + ["XACK"] * 4
    assert consumer._io._owed == 0


def test_handler_error_reaches_the_caller_and_unacked_events_stay_pending(
    orm, redis_client
):
    """When the handler raises, the caller gets the exception and the events it did not ack stay pending."""
    _publish(orm, 4)

    def handle(events: list[fluxaorm.DirtyStreamEvent]) -> None:
        events[0].ack()
        raise ValueError("cannot handle these")

    consumer = fluxaorm.new_dirty_stream_consumer_single(orm, STREAM, handle)
    all_ids = _message_ids(redis_client)

    with pytest.raises(ValueError, match="cannot handle these"):
        consumer.consume(10, 0)

    assert sorted(_pending(redis_client)) == all_ids[1:]
    assert _message_ids(redis_client) == all_ids[1:]


def test_single_consumer_gets_failed_events_again_on_its_next_consume(
    orm, redis_client
):
    """A single consumer hands the events its handler failed on again on the next consume, then acks them."""
    ids = _publish(orm, 3)
    got = Recorder(fail=_boom)
    consumer = fluxaorm.new_dirty_stream_consumer_single(orm, STREAM, got)
    with pytest.raises(RuntimeError):
        consumer.consume(10, 0)
    got.fail = None

    assert consumer.consume(10, 0) == 3

    assert got.ids == ids + ids
    assert _pending(redis_client) == {}
    assert redis_client.xlen(KEY) == 0


def test_many_consumer_failed_events_are_claimed_by_any_consumer_once_idle(
    orm, redis_client
):
    """Events a "many" handler failed on go to another consumer's auto_claim once idle ≥ min_idle."""
    ids = _publish(orm, 3)
    failing = _left_pending(orm, 10)
    assert set(_pending(redis_client).values()) == {failing.name}
    got = Recorder()
    other = fluxaorm.new_dirty_stream_consumer_many(orm, STREAM, got)
    assert other.consume(10, 0) == 0  # not new any more
    assert other.auto_claim(10, 60.0) == 0  # not idle long enough

    age_pending(orm.engine, STREAM, 60)
    assert other.auto_claim(10, 60.0) == 3

    assert got.ids == ids
    assert _pending(redis_client) == {}
    assert redis_client.xlen(KEY) == 0


# -- 4. claiming -----------------------------------------------------------------------


def test_auto_claim_walks_the_whole_pending_list_count_at_a_time(orm, redis_client):
    """auto_claim follows XAUTOCLAIM's cursor: all 250 pending entries, at most 20 per handler call."""
    ids = _publish(orm, 250)
    _left_pending(orm, 250)
    assert len(_pending(redis_client)) == 250
    age_pending(orm.engine, STREAM, 60)
    got = Recorder()
    claimer = fluxaorm.new_dirty_stream_consumer_many(orm, STREAM, got)

    assert claimer.auto_claim(20, 60.0) == 250

    assert max(len(b) for b in got.batches) <= 20
    assert len(got.batches) >= 13
    assert sorted(got.ids) == sorted(ids)
    assert _pending(redis_client) == {}
    assert redis_client.xlen(KEY) == 0


def test_auto_claim_reaches_every_entry_past_one_whose_handler_keeps_failing(
    orm, redis_client
):
    """A failing entry never stops the walk: the others are handled, then the error is raised."""
    ids = _publish(orm, 60)
    poison = ids[0]
    _left_pending(orm, 60)

    def handle(events: list[fluxaorm.DirtyStreamEvent]) -> None:
        for event in events:
            if event.id != poison:
                event.ack()
        if any(e.id == poison for e in events):
            raise LookupError(f"user {poison} is poison")

    got = Recorder(fail=handle)
    claimer = fluxaorm.new_dirty_stream_consumer_many(orm, STREAM, got)
    for _ in range(2):
        age_pending(orm.engine, STREAM, 60)
        with pytest.raises(LookupError, match="poison"):
            claimer.auto_claim(20, 60.0)

    assert sorted(got.ids) == sorted([*ids, poison])
    assert max(len(b) for b in got.batches) <= 20
    assert len(_pending(redis_client)) == 1
    assert redis_client.xlen(KEY) == 1


def test_auto_claim_skips_entries_deleted_from_the_stream_while_pending(
    orm, redis_client
):
    """Pending entries XDELed meanwhile never reach auto_claim's handler and stop being pending."""
    ids = _publish(orm, 10)
    _left_pending(orm, 10)
    age_pending(orm.engine, STREAM, 60)  # before the XDEL: XCLAIM drops deleted ids
    message_ids = _message_ids(redis_client)
    redis_client.xdel(KEY, message_ids[1], message_ids[4], message_ids[9])
    got = Recorder()
    claimer = fluxaorm.new_dirty_stream_consumer_many(orm, STREAM, got)

    claimer.auto_claim(4, 60.0)

    assert got.ids == [i for n, i in enumerate(ids) if n not in (1, 4, 9)]
    assert _pending(redis_client) == {}


def test_single_consumer_skips_its_pending_entries_deleted_from_the_stream(
    orm, redis_client
):
    """A single consumer's own pending entries that were XDELed never reach its handler."""
    ids = _publish(orm, 5)
    got = Recorder(fail=_boom)
    consumer = fluxaorm.new_dirty_stream_consumer_single(orm, STREAM, got)
    with pytest.raises(RuntimeError):
        consumer.consume(10, 0)
    message_ids = _message_ids(redis_client)
    redis_client.xdel(KEY, message_ids[0], message_ids[3])
    got.fail = None
    got.batches.clear()

    assert consumer.consume(10, 0) == 3

    assert got.ids == [ids[1], ids[2], ids[4]]
    assert _pending(redis_client) == {}


# -- 5. malformed entries --------------------------------------------------------------


def _add_malformed(client: redis.Redis) -> dict[str, str]:
    """XADD one entry of each malformed kind; return entry id -> what is wrong."""
    good_bind = msgpack.packb({"id": 1, "name": "x", "email": "y"})
    bad: dict[str, dict[str, Any]] = {
        "missing s": {"action": "add", "entity": USER, "id": "1"},
        "missing entity": {"action": "add", "id": "1", "s": good_bind},
        "bad msgpack": {"action": "add", "entity": USER, "id": "1", "s": b"\xc1\xc1"},
        "not a map": {
            "action": "add",
            "entity": USER,
            "id": "1",
            "s": msgpack.packb([1, 2]),
        },
        "unknown entity": {
            "action": "add",
            "entity": "nowhere.Ghost",
            "id": "1",
            "s": good_bind,
        },
        "bad id": {"action": "add", "entity": USER, "id": "abc", "s": good_bind},
        "unknown action": {
            "action": "upsert",
            "entity": USER,
            "id": "1",
            "s": good_bind,
        },
    }
    return {_text(client.xadd(KEY, fields)): what for what, fields in bad.items()}


def test_malformed_entries_never_reach_the_handler_and_are_logged_and_acked(
    orm, redis_client, caplog
):
    """Foreign or corrupt entries are moved to :dead, logged with their id and acknowledged; valid ones still flow."""
    caplog.set_level(logging.INFO, logger="fluxaorm.consumer")
    before = _publish(orm, 1, prefix="before")
    malformed = _add_malformed(redis_client)
    after = _publish(orm, 1, prefix="after")
    got = Recorder()
    consumer = fluxaorm.new_dirty_stream_consumer_single(orm, STREAM, got)

    handed = sum(consumer.consume(3, 0) for _ in range(4))

    assert handed == 2
    assert got.ids == before + after
    logged = "\n".join(
        r.getMessage() for r in caplog.records if r.name == "fluxaorm.consumer"
    )
    for ident, what in malformed.items():
        assert ident in logged, what
    assert _pending(redis_client) == {}
    assert redis_client.xlen(KEY) == 0
    dead = {
        _text(d["original_id"]): _text(d["error"]) for d in _dead_entries(redis_client)
    }
    assert set(dead) == set(malformed)


def test_malformed_entry_alone_in_a_batch_does_not_block_the_stream(orm, redis_client):
    """A batch made only of malformed entries is acked, so later valid events are delivered."""
    malformed = _add_malformed(redis_client)
    ids = _publish(orm, 2)
    got = Recorder()
    consumer = fluxaorm.new_dirty_stream_consumer_many(orm, STREAM, got)

    for _ in range(len(malformed) + 2):
        consumer.consume(1, 0)

    assert got.ids == ids
    assert _pending(redis_client) == {}


def test_malformed_pending_entries_met_by_auto_claim_are_logged_and_acked(
    orm, redis_client, caplog
):
    """auto_claim moves malformed entries left pending by a foreign reader to :dead and acknowledges them."""
    caplog.set_level(logging.INFO, logger="fluxaorm.consumer")
    got = Recorder()
    claimer = fluxaorm.new_dirty_stream_consumer_many(orm, STREAM, got)
    claimer.consume(1, 0)  # creates the group
    malformed = _add_malformed(redis_client)
    redis_client.xreadgroup(_group(redis_client), "foreign", {KEY: ">"}, count=100)
    assert set(_pending(redis_client)) == set(malformed)
    age_pending(orm.engine, STREAM, 60)

    assert claimer.auto_claim(100, 60.0) == 0

    assert got.batches == []
    logged = "\n".join(
        r.getMessage() for r in caplog.records if r.name == "fluxaorm.consumer"
    )
    assert all(ident in logged for ident in malformed)
    assert _pending(redis_client) == {}
    moved = [_text(d["original_id"]) for d in _dead_entries(redis_client)]
    assert sorted(moved) == sorted(malformed)


# -- 6. cleanup ----------------------------------------------------------------------


def test_cleanup_of_many_consumer_leaves_its_pending_events_claimable(
    orm, redis_client, caplog
):
    """A "many" consumer that cleans up with pending events leaves the group, and auto_claim still gets them."""
    ids = _publish(orm, 3)
    leaving = _left_pending(orm, 10)

    leaving.cleanup()

    assert leaving.name not in _consumers(redis_client)
    assert len(_pending(redis_client)) == 3
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    age_pending(orm.engine, STREAM, 60)
    got = Recorder()
    assert (
        fluxaorm.new_dirty_stream_consumer_many(orm, STREAM, got).auto_claim(10, 60.0)
        == 3
    )
    assert got.ids == ids
    assert _pending(redis_client) == {}


def test_cleanup_of_single_consumer_with_pending_keeps_it_for_the_next_one(
    orm, redis_client
):
    """A single consumer with pending events stays in the group on cleanup; a new single consumer resumes them."""
    ids = _publish(orm, 3)
    leaving = fluxaorm.new_dirty_stream_consumer_single(
        orm, STREAM, Recorder(fail=_boom)
    )
    with pytest.raises(RuntimeError):
        leaving.consume(10, 0)

    leaving.cleanup()

    assert _consumers(redis_client) == {leaving.name: 3}
    got = Recorder()
    assert (
        fluxaorm.new_dirty_stream_consumer_single(orm, STREAM, got).consume(10, 0) == 3
    )
    assert got.ids == ids


@pytest.mark.parametrize(
    "factory",
    [
        fluxaorm.new_dirty_stream_consumer_single,
        fluxaorm.new_dirty_stream_consumer_many,
    ],
)
def test_cleanup_of_consumer_without_pending_removes_it_from_the_group(
    orm, redis_client, factory
):
    """A consumer with nothing pending disappears from XINFO CONSUMERS on cleanup."""
    _publish(orm, 2)
    consumer = factory(orm, STREAM, Recorder())
    consumer.consume(10, 0)
    assert consumer.name in _consumers(redis_client)

    consumer.cleanup()

    assert _consumers(redis_client) == {}


def test_cleanup_of_many_consumer_whose_pending_entry_was_deleted_finishes(
    orm, redis_client
):
    """cleanup() returns and removes the consumer even when a pending entry was XDELed."""
    _publish(orm, 2)
    leaving = _left_pending(orm, 10)
    redis_client.xdel(KEY, _message_ids(redis_client)[0])

    InThread(leaving.cleanup).join(10)

    assert leaving.name not in _consumers(redis_client)


def test_many_consumer_as_context_manager_cleans_up_on_exit(orm, redis_client):
    """`with new_dirty_stream_consumer_many(...) as c:` leaves the group on exit, even on an error."""
    _publish(orm, 2)
    with fluxaorm.new_dirty_stream_consumer_many(orm, STREAM, Recorder()) as quiet:
        assert quiet.consume(10, 0) == 2
        assert quiet.name in _consumers(redis_client)
    assert quiet.name not in _consumers(redis_client)

    ids = _publish(orm, 2, prefix="later")
    with (
        pytest.raises(RuntimeError),
        fluxaorm.new_dirty_stream_consumer_many(
            orm, STREAM, Recorder(fail=_boom)
        ) as failing,
    ):
        failing.consume(10, 0)
    assert failing.name not in _consumers(redis_client)
    age_pending(orm.engine, STREAM, 60)
    got = Recorder()
    with fluxaorm.new_dirty_stream_consumer_many(orm, STREAM, got) as claimer:
        assert claimer.auto_claim(10, 60.0) == 2
    assert got.ids == ids


# -- 7. blocking ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "factory",
    [
        fluxaorm.new_dirty_stream_consumer_single,
        fluxaorm.new_dirty_stream_consumer_many,
    ],
)
def test_block_zero_returns_at_once_on_an_empty_stream(orm, factory):
    """consume(count, 0) on an empty stream returns 0 without waiting."""
    consumer = factory(orm, STREAM, Recorder())
    consumer.consume(10, 0)

    started = time.monotonic()
    assert consumer.consume(10, 0) == 0
    assert time.monotonic() - started < 1.0


def test_block_longer_than_the_socket_timeout_never_trips_it(make_engine, caplog):
    """With socket_timeout=1.0, consume(10, 3.0) on an empty stream waits and returns 0 with no retry."""
    caplog.set_level(logging.DEBUG, logger="fluxaorm.consumer")
    engine = make_engine(
        UserEntity, CategoryEntity, redis_options={"socket_timeout": 1.0}
    )
    consumer = fluxaorm.new_dirty_stream_consumer_many(
        engine.new_orm(), STREAM, Recorder()
    )

    started = time.monotonic()
    assert consumer.consume(10, 3.0) == 0

    assert time.monotonic() - started >= 2.5  # it did block
    assert _retry_warnings(caplog) == []


def test_event_published_during_a_long_block_is_returned_promptly(make_engine):
    """An event flushed from another thread during consume(10, 7.0) is handed without waiting out the block."""
    engine = make_engine(
        UserEntity, CategoryEntity, redis_options={"socket_timeout": 1.0}
    )
    got = Recorder()
    consumer = fluxaorm.new_dirty_stream_consumer_single(engine.new_orm(), STREAM, got)
    consumer.consume(10, 0)
    published: list[int] = []

    def publish_later() -> None:
        time.sleep(1.5)
        published.extend(_publish(engine.new_orm(), 1))

    publisher = InThread(publish_later)
    started = time.monotonic()
    handed = consumer.consume(10, 7.0)
    elapsed = time.monotonic() - started
    publisher.join(10)

    assert handed == 1
    assert got.ids == published
    assert elapsed < 6.0


def _blocking_consume(
    consumer: fluxaorm.DirtyStreamConsumer, server: ThrowawayRedis, block: float
) -> InThread:
    """Start consume(10, block) in a thread; return once Redis shows it blocked."""
    waiting = InThread(lambda: consumer.consume(10, block))
    admin = server.client()
    _wait_until(
        lambda: any(c.get("cmd") == "xreadgroup" for c in admin.client_list()),
        5,
        "the consumer's blocking XREADGROUP",
    )
    admin.close()
    return waiting


@pytest.mark.single_redis  # on a Redis server (or address) of its own
def test_killed_connection_during_a_block_is_retried_not_raised(
    make_engine, throwaway, caplog
):
    """CLIENT KILL of the waiting connection is retried; the consume still returns the later event."""
    caplog.set_level(logging.DEBUG, logger="fluxaorm.consumer")
    throwaway.start()
    engine = make_engine(UserEntity, CategoryEntity, redis_url=throwaway.url)
    orm = engine.new_orm()
    got = Recorder()
    consumer = fluxaorm.new_dirty_stream_consumer_single(orm, STREAM, got)
    consumer.consume(10, 0)
    waiting = _blocking_consume(consumer, throwaway, 8.0)

    admin = throwaway.client()
    assert admin.client_kill_filter(_type="normal") >= 1
    _wait_until(lambda: _retry_warnings(caplog) != [], 5, "a retry warning")
    ids = _publish(orm, 1)

    assert waiting.join(15) == 1
    assert got.ids == ids


@pytest.mark.single_redis  # on a Redis server (or address) of its own
def test_redis_restart_during_a_block_is_retried_and_later_events_delivered(
    make_engine, throwaway, caplog
):
    """Redis stopped and restarted while consume blocks: no error, and events published after it arrive."""
    caplog.set_level(logging.DEBUG, logger="fluxaorm.consumer")
    throwaway.start()
    engine = make_engine(UserEntity, CategoryEntity, redis_url=throwaway.url)
    orm = engine.new_orm()
    got = Recorder()
    consumer = fluxaorm.new_dirty_stream_consumer_single(orm, STREAM, got)
    consumer.consume(10, 0)
    waiting = _blocking_consume(consumer, throwaway, 10.0)

    throwaway.stop()
    time.sleep(0.5)
    throwaway.start()
    ids = _publish(orm, 1)

    assert waiting.join(20) == 1
    assert got.ids == ids
    assert _retry_warnings(caplog) != []
    ids2 = _publish(orm, 1, prefix="later")
    assert consumer.consume(10, 1.0) == 1
    assert got.ids == ids + ids2


@pytest.mark.single_redis  # on a Redis server (or address) of its own
def test_redis_down_longer_than_the_retry_window_raises_stream_error_naming_it(
    make_engine, throwaway, caplog
):
    """When Redis stays down past the retry window, consume raises StreamError naming host:port."""
    caplog.set_level(logging.DEBUG, logger="fluxaorm.consumer")
    throwaway.start()
    engine = make_engine(UserEntity, CategoryEntity, redis_url=throwaway.url)
    consumer = fluxaorm.new_dirty_stream_consumer_many(
        engine.new_orm(), STREAM, Recorder()
    )
    consumer.consume(10, 0)
    throwaway.stop()

    with pytest.raises(fluxaorm.StreamError) as info:
        consumer.consume(10, 0)

    assert f"127.0.0.1:{throwaway.port}" in str(info.value)
    assert len(_retry_warnings(caplog)) >= 3  # retried with backoff before giving up


@pytest.mark.single_redis  # on a Redis server (or address) of its own
def test_first_blocking_consume_during_a_short_outage_is_retried_not_raised(
    make_engine, throwaway
):
    """A consumer whose first blocking wait starts while Redis is briefly down retries and then delivers."""
    throwaway.start()
    engine = make_engine(UserEntity, CategoryEntity, redis_url=throwaway.url)
    orm = engine.new_orm()
    got = Recorder()
    consumer = fluxaorm.new_dirty_stream_consumer_single(orm, STREAM, got)
    consumer.consume(10, 0)  # the group exists; no blocking read yet
    throwaway.stop()

    def come_back() -> list[int]:
        time.sleep(1.0)
        throwaway.start()
        time.sleep(0.3)
        return _publish(engine.new_orm(), 1)

    restarter = InThread(come_back)
    handed = consumer.consume(10, 6.0)
    ids = restarter.join(15)

    assert handed == 1
    assert got.ids == ids


# -- 8. the run loop ---------------------------------------------------------------------


def test_run_consumes_claims_idle_events_and_stops_when_stop_is_set(orm, redis_client):
    """run() hands new events and claims idle pending ones until stop is set, then cleans up."""
    abandoned = _publish(orm, 3)
    _left_pending(orm, 10)
    age_pending(orm.engine, STREAM, 60)
    fresh = _publish(orm, 4, prefix="fresh")
    stop = threading.Event()
    seen: set[int] = set()

    def handle(events: list[fluxaorm.DirtyStreamEvent]) -> None:
        seen.update(e.id for e in events)
        if seen >= set(abandoned + fresh):
            stop.set()

    consumer = fluxaorm.new_dirty_stream_consumer_many(orm, STREAM, handle)
    running = InThread(
        lambda: consumer.run(10, 0.5, stop, min_idle=60.0, claim_every=0.1), stop
    )

    handed = running.join(20)

    assert handed == 7
    assert seen == set(abandoned + fresh)
    assert _pending(redis_client) == {}
    assert consumer.name not in _consumers(redis_client)


@pytest.mark.single_redis  # on a Redis server (or address) of its own
def test_run_relays_the_outbox_written_while_redis_was_down(make_engine, throwaway):
    """A flush committed while Redis was down reaches the handler once Redis is back and run() relays."""
    engine = make_engine(UserEntity, CategoryEntity, redis_url=throwaway.url)
    orm = engine.new_orm()
    ids = _publish(orm, 3)  # Redis is not running: the rows commit, the events wait
    throwaway.start()
    assert throwaway.client().exists(KEY) == 0
    stop = threading.Event()
    got = Recorder()
    got.fail = lambda events: stop.set() if len(got.ids) >= 3 else None
    consumer = fluxaorm.new_dirty_stream_consumer_many(orm, STREAM, got)

    InThread(lambda: consumer.run(10, 0.5, stop, relay_every=0.1), stop).join(20)

    assert sorted(got.ids) == sorted(ids)


def test_run_keeps_going_after_a_handler_error_and_redelivers_by_claim(
    orm, redis_client, caplog
):
    """A handler error inside run() is logged, not raised; the events come back through the claim."""
    ids = _publish(orm, 2)
    stop = threading.Event()
    calls: list[list[int]] = []

    def handle(events: list[fluxaorm.DirtyStreamEvent]) -> None:
        calls.append([e.id for e in events])
        if len(calls) == 1:
            raise RuntimeError("first call fails")
        if sum(len(c) for c in calls[1:]) >= 2:
            stop.set()

    consumer = fluxaorm.new_dirty_stream_consumer_many(orm, STREAM, handle)
    InThread(
        lambda: consumer.run(10, 0.2, stop, min_idle=0.05, claim_every=0.1), stop
    ).join(20)

    assert calls[0] == ids
    assert sorted(i for c in calls[1:] for i in c) == ids
    assert _pending(redis_client) == {}
    assert any(
        r.name == "fluxaorm.consumer"
        and r.exc_info
        and "first call fails" in str(r.exc_info[1])
        for r in caplog.records
    )


# -- 9. sharing the work (threads; processes are in test_consumer_processes.py) -------


def test_many_consumers_in_threads_share_events_none_lost_none_twice(
    engine, redis_client
):
    """Four "many" consumers in threads split 2,000 events: the union is every id, no id twice."""
    stop = threading.Event()
    handled: list[list[int]] = [[] for _ in range(4)]

    def worker(n: int) -> int:
        def handle(events: list[fluxaorm.DirtyStreamEvent]) -> None:
            handled[n].extend(e.id for e in events)

        consumer = fluxaorm.new_dirty_stream_consumer_many(
            engine.new_orm(), STREAM, handle
        )
        return consumer.run(50, 0.2, stop)

    threads = [InThread(lambda n=n: worker(n), stop) for n in range(4)]
    orm = engine.new_orm()
    ids = [i for _ in range(4) for i in _publish(orm, 500)]
    _wait_until(
        lambda: sum(len(h) for h in handled) >= 2000 and redis_client.xlen(KEY) == 0,
        60,
        "2,000 handled events",
    )
    stop.set()
    for thread in threads:
        thread.join(10)

    assert sorted(i for h in handled for i in h) == sorted(ids)
    for a in range(4):
        assert len(set(handled[a])) == len(handled[a])
        for b in range(a + 1, 4):
            assert not set(handled[a]) & set(handled[b])
    assert sum(1 for h in handled if h) >= 2
    assert _pending(redis_client) == {}


# -- §7 poison events ------------------------------------------------------------------


def _fails_on(poison: int) -> Callable[[list[fluxaorm.DirtyStreamEvent]], None]:
    def handle(events: list[fluxaorm.DirtyStreamEvent]) -> None:
        for event in events:
            if event.id != poison:
                event.ack()
        if any(e.id == poison for e in events):
            raise ValueError(f"user {poison} cannot be handled")

    return handle


def _dead_entries(client: redis.Redis) -> list[dict[str, bytes]]:
    return [
        {_text(k): v for k, v in fields.items()}
        for _, fields in client.xrange(DEAD_KEY)
    ]


def test_single_consumer_moves_an_event_delivered_max_deliveries_times_to_dead(
    orm, redis_client
):
    """max_deliveries=2: after two failed deliveries the single consumer moves the event to dirty_<Name>:dead."""
    ids = _publish(orm, 2)
    poison = ids[0]
    original = {_text(k): v for k, v in redis_client.xrange(KEY)[0][1].items()}
    got = Recorder(fail=_fails_on(poison))
    consumer = fluxaorm.new_dirty_stream_consumer_single(
        orm, STREAM, got, max_deliveries=2
    )
    for _ in range(2):
        with pytest.raises(ValueError):
            consumer.consume(10, 0)

    assert consumer.consume(10, 0) == 0

    assert got.ids == [poison, ids[1], poison]
    dead = _dead_entries(redis_client)
    assert len(dead) == 1
    assert {k: dead[0][k] for k in original} == original
    assert f"user {poison} cannot be handled" in _text(dead[0]["error"])
    assert int(dead[0]["deliveries"]) == 2
    assert _pending(redis_client) == {}
    assert redis_client.xlen(KEY) == 0
    later = _publish(orm, 1, prefix="later")
    assert consumer.consume(10, 0) == 1
    assert got.ids[-1:] == later


def test_many_consumer_moves_an_event_claimed_max_deliveries_times_to_dead(
    orm, redis_client
):
    """max_deliveries=2 on a "many" consumer: the third hand-over through auto_claim goes to :dead instead."""
    ids = _publish(orm, 1)
    original = {_text(k): v for k, v in redis_client.xrange(KEY)[0][1].items()}
    got = Recorder(fail=_fails_on(ids[0]))
    consumer = fluxaorm.new_dirty_stream_consumer_many(
        orm, STREAM, got, max_deliveries=2
    )
    with pytest.raises(ValueError):
        consumer.consume(10, 0)
    age_pending(orm.engine, STREAM, 60)
    with pytest.raises(ValueError):
        consumer.auto_claim(10, 60.0)
    age_pending(orm.engine, STREAM, 60)

    assert consumer.auto_claim(10, 60.0) == 0

    assert got.ids == ids * 2
    dead = _dead_entries(redis_client)
    assert len(dead) == 1
    assert {k: dead[0][k] for k in original} == original
    assert "cannot be handled" in _text(dead[0]["error"])
    assert int(dead[0]["deliveries"]) == 2
    assert _pending(redis_client) == {}
    assert redis_client.xlen(KEY) == 0


def test_max_deliveries_is_counted_for_claimed_entries_far_apart_in_the_pending_list(
    orm, redis_client
):
    """Poison detection works when other consumers' busy pending entries lie between the claimed ones."""
    ids = _publish(orm, 40)
    first = fluxaorm.new_dirty_stream_consumer_many(orm, STREAM, Recorder(fail=_boom))
    busy = fluxaorm.new_dirty_stream_consumer_many(orm, STREAM, Recorder(fail=_boom))
    for consumer, count in ((first, 1), (busy, 38), (first, 1)):
        with pytest.raises(RuntimeError):
            consumer.consume(count, 0)
    # `busy` is still working on its 38 entries: only first's two are idle.
    assert age_pending(orm.engine, STREAM, 60, consumer=first.name) == 2
    got = Recorder()
    claimer = fluxaorm.new_dirty_stream_consumer_many(
        orm, STREAM, got, max_deliveries=1
    )

    claimer.auto_claim(10, 60.0)

    assert got.ids == []  # both idle entries were already delivered once
    dead = _dead_entries(redis_client)
    assert sorted(int(d["id"]) for d in dead) == [ids[0], ids[39]]


# -- 10. hostile entries, deleted streams, reserved names --------------------------------


def _valid_fields(client: redis.Redis) -> dict[bytes, bytes]:
    """The fields of the stream's first entry (a genuine event) as a template."""
    return dict(client.xrange(KEY, count=1)[0][1])


def test_entry_with_a_5000_digit_id_goes_to_dead_and_its_batch_mates_are_delivered(
    orm, redis_client
):
    """A 5,000-digit id never reaches the handler: it moves to :dead, its six batch-mates are handled and acked."""
    before = _publish(orm, 3, prefix="before")
    bad = _text(
        redis_client.xadd(KEY, {**_valid_fields(redis_client), b"id": b"7" * 5000})
    )
    after = _publish(orm, 3, prefix="after")
    got = Recorder()
    consumer = fluxaorm.new_dirty_stream_consumer_single(
        orm, STREAM, got, max_deliveries=2
    )

    assert consumer.consume(100, 0) == 6

    assert got.batches and len(got.batches) == 1
    assert got.ids == before + after
    assert _pending(redis_client) == {} and redis_client.xlen(KEY) == 0
    (dead,) = _dead_entries(redis_client)
    assert dead["original_id"] == bad.encode()
    assert int(dead["deliveries"]) == 0
    assert "is not a decimal number from 1 to" in _text(dead["error"])
    (letter,) = orm.get_event_broker().get_dead_letters(STREAM)
    assert (letter.original_id, letter.event) == (bad, None)


@pytest.mark.parametrize(
    ("what", "change"),
    [
        ("missing s", {b"s": None}),
        ("bad msgpack", {b"s": b"\xc1\xc1"}),
        ("id past BIGINT UNSIGNED", {b"id": b"18446744073709551616"}),
        ("entity not UTF-8", {b"entity": b"\xff\xfe"}),
        ("unknown action", {b"action": b"upsert"}),
    ],
)
def test_every_invalid_entry_moves_to_dead_with_its_reason_and_original_fields(
    orm, redis_client, what, change
):
    """An invalid entry is moved to dirty_<Name>:dead with its fields, the reason in `error`, and acknowledged."""
    ids = _publish(orm, 1)
    fields = {**_valid_fields(redis_client), **change}
    fields = {k: v for k, v in fields.items() if v is not None}
    bad = _text(redis_client.xadd(KEY, fields))
    got = Recorder()
    consumer = fluxaorm.new_dirty_stream_consumer_many(orm, STREAM, got)

    assert consumer.consume(10, 0) == 1

    assert got.ids == ids
    (dead,) = _dead_entries(redis_client)
    assert {k: dead[_text(k)] for k in fields} == fields, what
    assert _text(dead["error"]).startswith("not a valid event: "), what
    assert (dead["original_id"], dead["group"]) == (bad.encode(), b"default")
    assert _pending(redis_client) == {} and redis_client.xlen(KEY) == 0


def test_events_of_an_entity_this_process_does_not_know_wait_in_dead_for_a_requeue(
    make_engine, redis_client
):
    """Events of an entity the reading process lacks go to :dead naming it; requeued, a process knowing it gets them."""
    writer = make_engine(UserEntity, CategoryEntity)
    orm = writer.new_orm()
    category = orm.new_entity(CategoryEntity, code="c1")
    user = orm.new_entity(UserEntity, name="u", email="u@x.org")
    orm.flush()
    reader = make_engine(UserEntity, sync=False)  # CategoryEntity not registered
    got = Recorder()
    consumer = fluxaorm.new_dirty_stream_consumer_single(reader.new_orm(), STREAM, got)

    assert consumer.consume(10, 0) == 1

    assert got.ids == [user.id]
    (dead,) = _dead_entries(redis_client)
    assert "unknown entity 'tests.models.CategoryEntity'" in _text(dead["error"])
    assert redis_client.xlen(KEY) == 0
    assert writer.get_event_broker().requeue_dead_letters(STREAM) == 1
    fixed = Recorder()
    knowing = fluxaorm.new_dirty_stream_consumer_single(orm, STREAM, fixed)
    assert knowing.consume(10, 0) == 1
    assert [(e.entity_name, e.id) for e in fixed.events] == [
        ("tests.models.CategoryEntity", category.id)
    ]


def test_refused_move_to_dead_keeps_the_entry_and_still_delivers_its_batch_mates(
    orm, redis_client
):
    """When Redis refuses the move to :dead (WRONGTYPE), the valid events are handled, the bad entry stays pending, and it moves later."""
    ids = _publish(orm, 2)
    bad = _text(
        redis_client.xadd(KEY, {**_valid_fields(redis_client), b"action": b"upsert"})
    )
    redis_client.set(DEAD_KEY, "not a stream")
    got = Recorder()
    consumer = fluxaorm.new_dirty_stream_consumer_single(orm, STREAM, got)

    with pytest.raises(fluxaorm.StreamError, match="WRONGTYPE") as info:
        consumer.consume(10, 0)

    assert bad in str(info.value) and DEAD_KEY in str(info.value)
    assert got.ids == ids
    assert _pending(redis_client) == {bad: "single"}
    redis_client.delete(DEAD_KEY)
    assert consumer.consume(10, 0) == 0
    assert _pending(redis_client) == {} and redis_client.xlen(KEY) == 0
    assert [d["original_id"] for d in _dead_entries(redis_client)] == [bad.encode()]


@pytest.mark.parametrize("reserved", ["parked", "single"])
def test_many_consumer_may_not_take_a_reserved_name(orm, reserved):
    """A "many" consumer named like the parking or the single consumer is a ConfigurationError."""
    with pytest.raises(fluxaorm.ConfigurationError, match=f"{reserved!r} is reserved"):
        fluxaorm.new_dirty_stream_consumer_many(orm, STREAM, Recorder(), name=reserved)


def test_cleanup_that_cannot_hand_entries_over_ends_and_keeps_the_consumer(
    orm, redis_client, caplog
):
    """cleanup() never loops forever: when no pending entry moves, it stops and keeps the consumer."""
    _publish(orm, 2)
    consumer = fluxaorm.new_dirty_stream_consumer_many(
        orm, STREAM, Recorder(fail=_boom)
    )
    consumer._name = "parked"  # as older versions allowed: its claims go to itself
    with pytest.raises(RuntimeError):
        consumer.consume(10, 0)

    done = InThread(consumer.cleanup)

    done.join(10)
    assert _consumers(redis_client) == {"parked": 2}
    assert "could not be handed over" in caplog.text


@pytest.mark.single_redis  # on a Redis server (or address) of its own
@pytest.mark.parametrize("how", ["stream deleted", "group destroyed"])
def test_stream_or_group_deleted_while_consume_waits_is_created_again(
    make_engine, throwaway, how
):
    """A stream or group deleted during consume(..., 3.0) is recreated; the wait goes on and gets later events."""
    throwaway.start()
    engine = make_engine(UserEntity, CategoryEntity, redis_url=throwaway.url)
    orm = engine.new_orm()
    got = Recorder()
    consumer = fluxaorm.new_dirty_stream_consumer_single(orm, STREAM, got)
    consumer.consume(10, 0)
    waiting = _blocking_consume(consumer, throwaway, 3.0)
    admin = throwaway.client()

    if how == "stream deleted":
        assert admin.delete(KEY) == 1
    else:
        assert admin.xgroup_destroy(KEY, "default") == 1

    def group_is_back() -> bool:
        try:
            return any(g["name"] == b"default" for g in admin.xinfo_groups(KEY))
        except redis.ResponseError:  # "no such key": not created again yet
            return False

    _wait_until(group_is_back, 5, "the group to be created again")
    ids = _publish(orm, 1)

    assert waiting.join(10) == 1
    assert got.ids == ids
    admin.close()


# -- 11. errors that retrying cannot fix -------------------------------------------------


@pytest.mark.single_redis  # on a Redis server (or address) of its own
def test_consumer_never_retries_a_wrong_password(make_engine, caplog):
    """A wrong Redis password raises a permanent StreamError at once: no retry, no password in the message."""
    caplog.set_level(logging.DEBUG, logger="fluxaorm.consumer")
    with ThrowawayRedis(password="right-secret") as server:
        url = f"redis://:wrong-secret@127.0.0.1:{server.port}/0"
        engine = make_engine(UserEntity, CategoryEntity, redis_url=url)
        consumer = fluxaorm.new_dirty_stream_consumer_single(
            engine.new_orm(), STREAM, Recorder()
        )

        with pytest.raises(fluxaorm.StreamError) as info:
            consumer.consume(10, 0)

    assert info.value.permanent and not info.value.connection_lost
    assert "password" in str(info.value) and "secret" not in str(info.value)
    assert _retry_warnings(caplog) == []


@pytest.mark.single_redis  # on a Redis server (or address) of its own
def test_run_stops_on_a_permanent_error_instead_of_looping(make_engine):
    """run() raises a permanent StreamError (missing ACL permission) instead of retrying it forever."""
    users = ["--user", "reader", "on", ">pw", "~*", "+@all", "-xreadgroup"]
    with ThrowawayRedis(users) as server:
        url = f"redis://reader:pw@127.0.0.1:{server.port}/0"
        engine = make_engine(UserEntity, CategoryEntity, redis_url=url)
        consumer = fluxaorm.new_dirty_stream_consumer_single(
            engine.new_orm(), STREAM, Recorder()
        )
        stop = threading.Event()
        loop = InThread(lambda: consumer.run(10, 0.2, stop, claim_every=60), stop)

        with pytest.raises(fluxaorm.StreamError, match="'xreadgroup'") as info:
            loop.join(10)

    assert info.value.permanent


@fluxaorm.entity(table="elsewhere_rows", redis_pool="elsewhere")
@dataclass
class ElsewhereRow:
    id: int = field(default=0, metadata={"orm": "dirty=Elsewhere"})
    note: str = ""


def test_run_keeps_consuming_while_the_relay_fails_for_another_pool(
    clean: None, caplog: pytest.LogCaptureFixture
) -> None:
    """A relay failing for another Redis pool (down, or refusing a wrong password)
    is logged and backed off; run() goes on consuming its own stream."""
    from tests.conftest import MYSQL_URL, REDIS_URL

    caplog.set_level(logging.WARNING)
    registry = fluxaorm.Registry(outbox_relay_delay=0)
    registry.register_mysql(MYSQL_URL)
    registry.register_redis(REDIS_URL)
    registry.register_redis("redis://127.0.0.1:1/0", pool="elsewhere")
    registry.register_entity(UserEntity, CategoryEntity, ElsewhereRow)
    engine = registry.validate()
    engine.sync_schema()
    orm = engine.new_orm()
    orm.new_entity(ElsewhereRow, note="waits in the outbox")
    orm.flush()  # its Redis is down: the row stays for the relay
    recorder = Recorder()
    consumer = fluxaorm.new_dirty_stream_consumer_single(
        engine.new_orm(), STREAM, recorder
    )
    stop = threading.Event()
    loop = InThread(lambda: consumer.run(10, 0.1, stop, relay_every=0.05), stop)
    writer = engine.new_orm()
    for n in range(3):
        writer.new_entity(UserEntity, name=f"u{n}", email=f"u{n}@example.com")
        writer.flush()
    deadline = time.monotonic() + 10
    while len(recorder.events) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    stop.set()
    loop.join(10)
    assert [e.bind["name"] for e in recorder.events] == ["u0", "u1", "u2"]
    relay_logs = [
        r for r in caplog.records if "relaying the outbox failed" in r.getMessage()
    ]
    assert relay_logs, "the failing relay is logged"
    assert len(relay_logs) < 40  # backed off, not retried every 50 ms
    engine.close()


# -- acknowledgements ride with the next read ---------------------------------------------


def test_steady_consume_costs_one_round_trip_per_batch(orm, redis_client):
    """The acknowledgement is written when the handler returns and its reply read
    with the next XREADGROUP: a consume loop makes one round trip per batch."""
    engine = orm.engine
    consumer = fluxaorm.new_dirty_stream_consumer_single(orm, STREAM, Recorder())
    consumer.consume(10, 0)  # group created, nothing pending
    _publish(orm, 30)
    with count_round_trips(engine) as trips:
        handed = [consumer.consume(10, 0) for _ in range(3)]
    assert handed == [10, 10, 10]
    assert trips.count == 3
    assert [what for _, what, _ in trips.entries] == ["XREADGROUP"] * 3
    consumer.cleanup()
    assert redis_client.xlen(KEY) == 0


def test_acknowledgement_is_sent_when_the_handler_returns(orm, redis_client):
    """After consume() returns, the batch is acknowledged in Redis without any
    further call on the consumer (the reply waits, the command does not)."""
    consumer = fluxaorm.new_dirty_stream_consumer_single(orm, STREAM, Recorder())
    consumer.consume(10, 0)
    _publish(orm, 5)
    assert consumer.consume(10, 0) == 5
    _wait_until(lambda: redis_client.xlen(KEY) == 0, 5, "the acknowledged entries gone")
    assert redis_client.xpending(KEY, "default")["pending"] == 0
    consumer.cleanup()


def test_cleanup_reads_every_outstanding_acknowledgement(orm, redis_client):
    """Leaving the with block (cleanup) reads the replies still owed and gives the
    connection back to the pool."""
    with fluxaorm.new_dirty_stream_consumer_single(orm, STREAM, Recorder()) as consumer:
        consumer.consume(10, 0)
        _publish(orm, 3)
        assert consumer.consume(10, 0) == 3
        assert consumer._io._owed > 0  # written, reply not read yet
    assert consumer._io._owed == 0 and consumer._io._conn is None
    assert redis_client.xlen(KEY) == 0


def test_a_crash_before_the_acknowledgement_replies_loses_nothing(orm, redis_client):
    """A consumer whose connection dies with acknowledgements written but their
    replies unread: whatever Redis did not apply is handed over again; no event
    is lost, and every one ends acknowledged."""
    got = Recorder()
    consumer = fluxaorm.new_dirty_stream_consumer_single(orm, STREAM, got)
    consumer.consume(10, 0)
    ids = _publish(orm, 12)
    assert consumer.consume(12, 0) == 12
    consumer._io._conn.disconnect()  # the process "dies" before reading replies
    restarted = fluxaorm.new_dirty_stream_consumer_single(orm, STREAM, got)
    restarted.consume(100, 0)
    restarted.cleanup()
    assert set(got.ids) == set(ids)
    _wait_until(lambda: redis_client.xlen(KEY) == 0, 5, "every entry acknowledged")
