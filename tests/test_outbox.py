"""Nothing phantom, nothing lost (SPEC §7): failed flushes publish nothing, now or
later; committed changes reach Redis through the outbox when Redis is down or the
process dies after COMMIT; concurrent relays publish each entry once; and
``outbox=False`` trades that guarantee for fewer writes."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgpack
import pytest

import fluxaorm
from fluxaorm import Insert, Update
from fluxaorm.testing import count_queries, count_round_trips
from tests.conftest import MYSQL_URL, REDIS_URL
from tests.models import AllTypes, CategoryEntity, ProductEntity, UserEntity
from tests.servers import ThrowawayRedis, free_port
from tests.stream_reading import (
    eid_counts,
    outbox_rows,
    raw_entries,
    read_events,
    stream_contents,
    stream_keys,
    summarize,
)

ROOT = Path(__file__).resolve().parent.parent
SPEC_STREAMS = (
    "AllChanges",
    "NewUsers",
    "DeletedUsers",
    "EmailAddedOrChanged",
    "CategoryAddedDeleted",
)


@fluxaorm.entity(table="outbox_elsewhere", redis_pool="other")
@dataclass
class Elsewhere:
    id: int = field(default=0, metadata={"orm": "dirty=ElsewhereStream"})
    name: str = ""


def _table(mysql_conn: Any, sql: str) -> list[tuple[Any, ...]]:
    cursor = mysql_conn.cursor()
    cursor.execute(sql)
    return list(cursor.fetchall())


def _child(*args: str) -> list[str]:
    return [sys.executable, "-m", "tests.outbox_child", *args]


# -- 5. nothing phantom -----------------------------------------------------------------


def test_flush_failing_on_duplicate_key_publishes_nothing_now_or_later(
    make_engine, redis_client, mysql_conn
):
    """A DuplicateKeyError flush leaves no entry and no outbox row; a retry publishes once."""
    engine = make_engine(ProductEntity, outbox_relay_delay=0)
    orm = engine.new_orm()
    first = orm.new_entity(ProductEntity, sku="A", shop=1)
    orm.flush()
    before = raw_entries(redis_client, "Products")
    assert len(before) == 1

    edited = orm.edit_entity(first)
    edited.shop = 2
    fresh = orm.new_entity(ProductEntity, sku="B", price=Decimal("1.50"))
    clash = orm.new_entity(ProductEntity, sku="A")
    with (
        count_round_trips(engine) as trips,
        pytest.raises(fluxaorm.DuplicateKeyError) as failure,
    ):
        orm.flush()
    assert failure.value.index == "sku_idx"
    assert trips.count == 0
    assert raw_entries(redis_client, "Products") == before
    assert outbox_rows(mysql_conn, redis_client) == (0, 0)
    assert engine.relay_outbox() == 0
    assert raw_entries(redis_client, "Products") == before
    assert _table(mysql_conn, "SELECT `id`, `sku`, `shop` FROM `products`") == [
        (first.id, "A", 1)
    ]

    clash.sku = "C"
    orm.flush()
    assert engine.relay_outbox() == 0
    events = read_events(redis_client, engine, "Products")
    assert len(events) == 4
    assert summarize(events[:2]) == [
        (
            "ProductEntity",
            Insert,
            first.id,
            {
                "id": first.id,
                "sku": "A",
                "shop": 1,
                "price": Decimal("0"),
                "fake_delete": False,
            },
        ),
        ("ProductEntity", Update, first.id, {"shop": 2}),
    ]
    later = sorted((e.operation, e.bind["sku"]) for e in events[2:])
    assert later == [(Insert, "B"), (Insert, "C")]
    assert {e.id for e in events[2:]} == {fresh.id, clash.id}
    assert set(eid_counts(redis_client, ["Products"]).values()) == {1}
    assert outbox_rows(mysql_conn) == (0, 0)


def test_flush_failing_validation_sends_nothing_and_publishes_nothing(
    make_engine, redis_client, mysql_conn
):
    """A ValidationError flush sends no SQL and no XADD; later flushes publish only theirs."""
    engine = make_engine(ProductEntity, UserEntity, outbox_relay_delay=0)
    orm = engine.new_orm()
    orm.new_entity(UserEntity, name="fine")
    orm.new_entity(ProductEntity, sku="x" * 33)
    with (
        count_queries(engine) as queries,
        count_round_trips(engine) as trips,
        pytest.raises(fluxaorm.ValidationError),
    ):
        orm.flush()
    assert queries.count == 0
    assert trips.count == 0
    assert stream_keys(redis_client) == []
    assert outbox_rows(mysql_conn) == (0, 0)

    orm.clear_flush()
    later = orm.new_entity(ProductEntity, sku="ok")
    orm.flush()
    assert engine.relay_outbox() == 0
    assert stream_contents(redis_client, engine) == {
        "Products": [
            (
                "ProductEntity",
                Insert,
                later.id,
                {
                    "id": later.id,
                    "sku": "ok",
                    "shop": 0,
                    "price": Decimal("0"),
                    "fake_delete": False,
                },
            )
        ]
    }


# -- 6a. Redis down at flush time -------------------------------------------------------


def test_redis_down_at_flush_keeps_entries_in_outbox_until_relayed(
    make_engine, mysql_conn
):
    """Redis down: flush returns, rows commit, entries wait; relay_outbox publishes them."""
    with ThrowawayRedis() as server:
        engine = make_engine(UserEntity, CategoryEntity, redis_url=server.url)
        orm = engine.new_orm()
        users = [
            orm.new_entity(UserEntity, name=f"u{n}", email=f"u{n}@example.com")
            for n in range(3)
        ]
        server.stop()
        orm.flush()
        assert not orm.has_changes
        assert all(u.id > 0 for u in users)
        assert _table(mysql_conn, "SELECT `id` FROM `UserEntity` ORDER BY `id`") == [
            (u.id,) for u in users
        ]
        assert outbox_rows(mysql_conn) == (1, 9)
        with pytest.raises(fluxaorm.StreamError):
            engine.relay_outbox()
        assert outbox_rows(mysql_conn) == (1, 9)

        server.start()
        assert engine.relay_outbox() == 9
        assert outbox_rows(mysql_conn) == (0, 0)
        assert engine.relay_outbox() == 0
        client = server.client()
        try:
            assert stream_contents(client, engine) == {
                name: [
                    (
                        "UserEntity",
                        Insert,
                        u.id,
                        {"id": u.id, "name": u.name, "email": u.email},
                    )
                    for u in users
                ]
                for name in ("AllChanges", "EmailAddedOrChanged", "NewUsers")
            }
            assert set(eid_counts(client, SPEC_STREAMS).values()) == {1}
        finally:
            client.close()


def test_relay_with_nothing_due_costs_one_statement(make_engine, mysql_conn):
    """run() relays every second: with nothing due that is one unlocked SELECT
    (one round trip), not a locking pass in a transaction; a row that is due
    is still found and relayed by the next call."""
    engine = make_engine(UserEntity)
    with count_queries(engine) as queries:
        assert engine.relay_outbox() == 0
    assert queries.round_trips == 1
    assert queries.kinds() == ["SELECT"] and "FOR UPDATE" not in queries.statements[0]

    # A committed row whose publish failed is due at once (this process's own).
    orm = engine.new_orm()
    orm.new_entity(UserEntity, name="late", email="late@example.com")
    pool = engine.redis_pools["default"]
    real = pool.round_trip

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise fluxaorm.StreamError("down for this test", pool="default")

    pool.round_trip = refuse  # type: ignore[method-assign]
    try:
        orm.flush()
    finally:
        pool.round_trip = real  # type: ignore[method-assign]
    assert outbox_rows(mysql_conn) == (1, 3)
    assert engine.relay_outbox() == 3
    assert outbox_rows(mysql_conn) == (0, 0)


def test_one_redis_pool_down_delays_only_its_own_entries(
    clean, redis_client, mysql_conn
):
    """Pool "other" down: "default" gets its entries at once, "other" after the relay, once."""
    with ThrowawayRedis() as server:
        registry = fluxaorm.Registry()
        registry.register_mysql(MYSQL_URL)
        registry.register_redis(REDIS_URL)
        registry.register_redis(server.url, pool="other")
        registry.register_entity(UserEntity, Elsewhere)
        with registry.validate() as engine:
            engine.sync_schema()
            orm = engine.new_orm()
            users = [orm.new_entity(UserEntity, name=f"u{n}") for n in range(2)]
            there = [orm.new_entity(Elsewhere, name=f"e{n}") for n in range(3)]
            server.stop()
            orm.flush()
            assert redis_client.xlen("dirty_AllChanges") == 2
            assert outbox_rows(mysql_conn, redis_client) == (1, 3)
            with pytest.raises(fluxaorm.StreamError):
                engine.relay_outbox()
            server.start()
            assert engine.relay_outbox() == 3
            assert outbox_rows(mysql_conn, redis_client) == (0, 0)
            client = server.client()
            try:
                assert [
                    e.id for e in read_events(client, engine, "ElsewhereStream")
                ] == [e.id for e in there]
            finally:
                client.close()
            assert [e.id for e in read_events(redis_client, engine, "AllChanges")] == [
                u.id for u in users
            ]
            assert set(eid_counts(redis_client, SPEC_STREAMS).values()) == {1}


def test_xadd_refused_inside_the_transaction_is_not_lost(
    make_engine, redis_client, mysql_conn
):
    """An XADD that Redis refuses inside MULTI/EXEC (WRONGTYPE) still reaches its stream later."""
    engine = make_engine(UserEntity, outbox_relay_delay=0)
    redis_client.set("dirty_NewUsers", "not a stream")
    orm = engine.new_orm()
    user = orm.new_entity(UserEntity, name="Tom", email="tom@example.com")
    orm.flush()
    assert [e.id for e in read_events(redis_client, engine, "AllChanges")] == [user.id]
    assert redis_client.type("dirty_NewUsers") == b"string"
    redis_client.delete("dirty_NewUsers")
    # The refused entry backs off (5 s first); age it instead of sleeping.
    mysql_conn.cursor().execute(
        "UPDATE `_fluxaorm_outbox` SET `retry_at` = UTC_TIMESTAMP(6)"
    )
    assert engine.relay_outbox() == 1  # only the refused entry, not all three
    assert [e.id for e in read_events(redis_client, engine, "NewUsers")] == [user.id]


def test_flush_whose_events_outgrow_max_allowed_packet_still_commits(
    make_engine, mysql_conn
):
    """With the outbox on, a flush MySQL accepts without it (9 x 1 MB rows) still commits."""
    cursor = mysql_conn.cursor()
    cursor.execute("SELECT @@max_allowed_packet")
    (packet,) = cursor.fetchone()
    engine = make_engine(AllTypes)
    orm = engine.new_orm()
    size = 1_000_000
    count = packet // (2 * size) + 1  # the events then outgrow half a packet
    rows = [orm.new_entity(AllTypes, text="x" * size) for _ in range(count)]
    orm.flush()
    assert all(r.id > 0 for r in rows)
    assert _table(mysql_conn, "SELECT COUNT(*) FROM `all_types`") == [(count,)]


def test_flush_of_one_value_over_half_max_allowed_packet_still_commits(
    make_engine, mysql_conn
):
    """With the outbox on, one value MySQL stores without it (packet/2 + 0.5 MB) commits."""
    cursor = mysql_conn.cursor()
    cursor.execute("SELECT @@max_allowed_packet")
    (packet,) = cursor.fetchone()
    size = min(packet // 2 + 500_000, 16_000_000)  # a MEDIUMTEXT holds 16 MiB
    engine = make_engine(AllTypes)
    orm = engine.new_orm()
    row = orm.new_entity(AllTypes, text="x" * size)
    orm.flush()
    assert row.id > 0
    assert _table(mysql_conn, "SELECT LENGTH(`text`) FROM `all_types`") == [(size,)]


def test_relay_gets_past_rows_it_cannot_read(make_engine, redis_client, mysql_conn):
    """110 unreadable outbox rows (a newer payload version) never stall the relay: quarantined."""
    engine = make_engine(UserEntity, CategoryEntity)
    future = msgpack.packb((99, "default", "feedbeef", 0, [], [], []))
    cursor = mysql_conn.cursor()
    cursor.executemany(
        "INSERT INTO `_fluxaorm_outbox` (`created_at`, `redis_pool`, `entries`, "
        "`payload`) VALUES (UTC_TIMESTAMP(6), 'default', 1, %s)",
        [(future,)] * 110,
    )
    down = make_engine(
        UserEntity,
        CategoryEntity,
        sync=False,
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
    )
    orm = down.new_orm()
    user = orm.new_entity(UserEntity, name="late")
    orm.flush()
    assert outbox_rows(mysql_conn) == (111, 113)
    try:
        child = subprocess.run(
            _child("relay", MYSQL_URL, REDIS_URL, "0"),
            cwd=ROOT,
            capture_output=True,
            timeout=8,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("relay_outbox() was still running after 8 s")
    assert child.returncode == 0, child.stderr.decode()[-2000:]
    assert int(child.stdout) == 3
    assert outbox_rows(mysql_conn) == (110, 110)
    assert [e.id for e in read_events(redis_client, engine, "NewUsers")] == [user.id]
    (stats,) = engine.get_event_broker().get_outbox_statistics()
    assert stats.quarantined == 110


# -- 6b/6d. the process dies between COMMIT and the publish ------------------------------


def test_process_killed_after_commit_is_relayed_exactly_once(
    make_engine, redis_client, mysql_conn
):
    """A flusher SIGKILLed after COMMIT: rows stay, no entries; a relay publishes them once."""
    make_engine(UserEntity, CategoryEntity)
    child = subprocess.run(
        _child("die", MYSQL_URL, REDIS_URL, "4"),
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    assert _table(mysql_conn, "SELECT `name` FROM `UserEntity` ORDER BY `id`") == [
        (f"child{n}",) for n in range(4)
    ]
    assert stream_keys(redis_client) == []
    assert outbox_rows(mysql_conn) == (1, 12)

    # Another process's relay leaves rows younger than its outbox_relay_delay alone...
    patient = make_engine(UserEntity, CategoryEntity, sync=False, outbox_relay_delay=60)
    assert patient.relay_outbox() == 0
    assert outbox_rows(mysql_conn) == (1, 12)
    assert stream_keys(redis_client) == []

    # ...and takes them once they are old enough.
    cursor = mysql_conn.cursor()
    cursor.execute(
        "UPDATE `_fluxaorm_outbox` SET `created_at` = UTC_TIMESTAMP(6) - INTERVAL 61 SECOND"
    )
    assert patient.relay_outbox() == 12
    eager = make_engine(UserEntity, CategoryEntity, sync=False, outbox_relay_delay=0)
    assert eager.relay_outbox() == 0
    assert outbox_rows(mysql_conn) == (0, 0)
    counts = eid_counts(redis_client, SPEC_STREAMS)
    assert len(counts) == 12
    assert set(counts.values()) == {1}
    for name in ("AllChanges", "NewUsers", "EmailAddedOrChanged"):
        names = [e.bind["name"] for e in read_events(redis_client, patient, name)]
        assert names == [f"child{n}" for n in range(4)]


def test_relay_with_no_delay_takes_a_dead_process_rows_at_once(
    make_engine, redis_client, mysql_conn
):
    """With outbox_relay_delay=0 another process's relay publishes the rows right away."""
    make_engine(UserEntity, CategoryEntity)
    child = subprocess.run(
        _child("die", MYSQL_URL, REDIS_URL, "2"),
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    eager = make_engine(UserEntity, CategoryEntity, sync=False, outbox_relay_delay=0)
    assert eager.relay_outbox() == 6
    assert eager.relay_outbox() == 0
    assert outbox_rows(mysql_conn) == (0, 0)
    assert set(eid_counts(redis_client, SPEC_STREAMS).values()) == {1}


# -- 6c. concurrent relays --------------------------------------------------------------


def test_concurrent_relays_in_threads_and_processes_publish_each_entry_once(
    make_engine, redis_client, mysql_conn, caplog
):
    """Eight relay threads and four relay processes share 800 outbox rows: no duplicate."""
    rows, thread_count, process_count = 800, 8, 4
    caplog.set_level(logging.ERROR, logger="fluxaorm.flush")  # 800 "Redis down" lines
    down = make_engine(
        UserEntity, CategoryEntity, redis_url=f"redis://127.0.0.1:{free_port()}/0"
    )
    orm = down.new_orm()
    for n in range(rows):
        orm.new_entity(UserEntity, name=f"u{n}", email=f"u{n}@example.com")
        orm.new_entity(CategoryEntity, code=f"c{n}")
        orm.flush()
    assert outbox_rows(mysql_conn) == (rows, rows * 5)

    start_at = time.time() + 2.0
    processes = [
        subprocess.Popen(
            _child("relay", MYSQL_URL, REDIS_URL, repr(start_at)),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(process_count)
    ]
    try:
        engines = [
            make_engine(UserEntity, CategoryEntity, sync=False, outbox_relay_delay=0)
            for _ in range(thread_count)
        ]
        results: list[int] = []
        errors: list[BaseException] = []

        def relay(engine: fluxaorm.Engine) -> None:
            assert engine.mysql_pool("default").info.version  # connect before start
            while time.time() < start_at:
                time.sleep(0.002)
            try:
                results.append(engine.relay_outbox())
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=relay, args=(e,)) for e in engines]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        outputs = [p.communicate(timeout=60) for p in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    failures = [f"thread: {exc}" for exc in errors] + [
        f"process: {err.decode().strip().splitlines()[-1]}"
        for process, (_, err) in zip(processes, outputs)
        if process.returncode != 0
    ]
    # Whatever a failed relay left in the outbox, any later relay publishes.
    leftover = make_engine(
        UserEntity, CategoryEntity, sync=False, outbox_relay_delay=0
    ).relay_outbox()
    counts = eid_counts(redis_client, SPEC_STREAMS)
    assert len(counts) == rows * 5
    assert sorted(key for key, n in counts.items() if n > 1) == []
    assert failures == []
    assert leftover == 0
    published = results + [int(out) for out, _ in outputs]
    assert sum(published) == rows * 5
    assert outbox_rows(mysql_conn) == (0, 0)
    assert redis_client.xlen("dirty_AllChanges") == rows * 2


# -- 6e. outbox off -----------------------------------------------------------------------


def test_outbox_off_writes_no_outbox_rows(make_engine, redis_client, mysql_conn):
    """Registry(outbox=False): the flush sends no outbox statement and no table exists."""
    engine = make_engine(UserEntity, outbox=False)
    orm = engine.new_orm()
    for n in range(2):
        orm.new_entity(UserEntity, name=f"u{n}")
    with count_queries(engine) as queries, count_round_trips(engine) as trips:
        orm.flush()
    assert not [s for s in queries.statements if "_fluxaorm_outbox" in s]
    assert trips.entries == [("default", "XADD", 6)]
    assert redis_client.xlen("dirty_AllChanges") == 2
    assert _table(mysql_conn, "SHOW TABLES LIKE '\\_fluxaorm\\_outbox'") == []
    assert engine.relay_outbox() == 0


def test_outbox_off_loses_the_events_when_redis_is_down(make_engine, mysql_conn):
    """outbox=False and Redis down: StreamError after COMMIT, and the events are lost for good."""
    with ThrowawayRedis() as server:
        engine = make_engine(UserEntity, outbox=False, redis_url=server.url)
        orm = engine.new_orm()
        user = orm.new_entity(UserEntity, name="lost", email="lost@example.com")
        server.stop()
        with pytest.raises(fluxaorm.StreamError, match="committed"):
            orm.flush()
        assert user.id > 0
        assert _table(mysql_conn, "SELECT `id`, `name` FROM `UserEntity`") == [
            (user.id, "lost")
        ]
        assert not orm.has_changes

        server.start()
        assert engine.relay_outbox() == 0
        orm.flush()
        client = server.client()
        try:
            assert stream_keys(client) == []
        finally:
            client.close()


def test_relay_deletes_rows_an_idle_process_left_published_in_one_round_trip(
    make_engine, redis_client, mysql_conn
):
    """Rows a process published and had not cleaned up yet (it went idle) are
    deleted by another process's relay without publishing them again: a DELETE
    by primary key per row (concurrent relays never wait on each other), all in
    one packet: one round trip, not one per row."""
    idle = make_engine(UserEntity)
    orm = idle.new_orm()
    for n in range(15):  # fewer than a cleanup batch: all 15 stay published
        orm.new_entity(UserEntity, name=f"idle{n}")
        orm.flush()
    assert outbox_rows(mysql_conn)[0] == 15
    relay = make_engine(UserEntity, sync=False, outbox_relay_delay=0)
    with count_queries(relay) as log:
        assert relay.relay_outbox() == 0  # nothing published again
    deletes = [s for s in log.statements if s.startswith("DELETE")]
    assert len(deletes) == 15
    assert all(
        s.startswith("DELETE FROM `_fluxaorm_outbox` WHERE `id`=") for s in deletes
    )
    assert ("default", 15) in log.trips  # the 15 travelled in one packet
    assert outbox_rows(mysql_conn) == (0, 0)
    assert set(eid_counts(redis_client, ["AllChanges"]).values()) == {1}
    assert len(eid_counts(redis_client, ["AllChanges"])) == 15
