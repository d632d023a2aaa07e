"""Faults of a Redis Cluster, each with a journal of what committed and what handlers got.

As in the crash matrix (tests/test_crash_matrix.py), flushes run while something
breaks for real on the throwaway cluster of ``tests/cluster.py``: a master is
SIGKILLed (its replica takes over), a slot is migrated (SETSLOT MIGRATING/
IMPORTING, MIGRATE, SETSLOT NODE) under flushes and consumers, or every node is
frozen (SIGSTOP). Afterwards the rows MySQL committed are compared with the
events the consumers' handlers were handed, on every stream: nothing committed
may be missing, nothing else may show up, and duplicates (the same event id
handed twice, allowed by at-least-once) are counted. The cluster is healed
after each test.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

import fluxaorm
from tests.cluster import ClusterNode, ThrowawayCluster
from tests.conftest import RedisTarget
from tests.stream_reading import outbox_rows
from tests.test_cluster import entity_feeding, no_failover, paused, streams_on


@pytest.fixture
def redis_target(redis_cluster: ThrowawayCluster) -> Iterator[RedisTarget]:
    """Every test here runs on the throwaway cluster, and heals it afterwards."""
    redis_cluster.heal()
    yield RedisTarget("cluster", redis_cluster.url, redis_cluster)
    redis_cluster.broken = True
    redis_cluster.heal()


class Handed:
    """A handler per stream recording ``(id, event_id)`` of every event it is handed."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: dict[str, list[tuple[int, str]]] = {}

    def handler(self, stream: str) -> Callable[[list[fluxaorm.DirtyStreamEvent]], None]:
        def handle(events: list[fluxaorm.DirtyStreamEvent]) -> None:
            with self.lock:
                self.items.setdefault(stream, []).extend(
                    (e.id, e.event_id) for e in events
                )

        return handle

    def ids(self, stream: str) -> set[int]:
        with self.lock:
            return {i for i, _ in self.items.get(stream, ())}

    def duplicates(self) -> int:
        with self.lock:
            counts = Counter(
                (stream, eid) for stream, got in self.items.items() for _, eid in got
            )
        return sum(n - 1 for n in counts.values())


class Scenario:
    """Flushers and consumers in threads; the journal is the rows MySQL committed."""

    def __init__(self, engine: fluxaorm.Engine, cls: type, streams: list[str]):
        self.engine = engine
        self.cls = cls
        self.streams = streams
        self.handed = Handed()
        self.committed: list[int] = []
        self.errors: list[BaseException] = []
        self.stop_flushing = threading.Event()
        self.stop_consuming = threading.Event()
        self.threads: list[threading.Thread] = []
        self.flushes = 0

    def _thread(self, target: Callable[[], Any]) -> None:
        def body() -> None:
            try:
                target()
            except BaseException as exc:  # reported by the test
                self.errors.append(exc)

        thread = threading.Thread(target=body, daemon=True)
        thread.start()
        self.threads.append(thread)

    def flush_in_background(self, per_flush: int = 5, pause: float = 0.01) -> None:
        def loop() -> None:
            orm = self.engine.new_orm()
            while not self.stop_flushing.is_set():
                rows = [orm.new_entity(self.cls, name="r") for _ in range(per_flush)]
                orm.flush()  # with the outbox, a Redis fault never fails a flush
                self.committed.extend(r.id for r in rows)
                self.flushes += 1
                time.sleep(pause)

        self._thread(loop)

    def consume_in_background(self) -> None:
        for stream in self.streams:
            consumer = fluxaorm.new_dirty_stream_consumer_single(
                self.engine.new_orm(), stream, self.handed.handler(stream)
            )
            self._thread(
                lambda c=consumer: c.run(
                    500, 0.2, self.stop_consuming, claim_every=1.0, relay_every=0.5
                )
            )

    def wait_flushes(self, n: int, timeout: float = 30.0) -> None:
        target = self.flushes + n
        deadline = time.monotonic() + timeout
        while self.flushes < target:
            assert not self.errors, self.errors
            assert time.monotonic() < deadline, f"only {self.flushes} flushes"
            time.sleep(0.01)

    def stop(self) -> None:
        self.stop_flushing.set()
        self.stop_consuming.set()
        for thread in self.threads:
            thread.join(30)

    def deliver_everything(self, mysql_conn: Any, timeout: float = 60.0) -> None:
        """Stop flushing, relay the outbox dry, and let the consumers catch up."""
        self.stop_flushing.set()
        deadline = time.monotonic() + timeout
        while outbox_rows(mysql_conn) != (0, 0):
            assert time.monotonic() < deadline, f"outbox: {outbox_rows(mysql_conn)}"
            with contextlib.suppress(fluxaorm.StreamError):
                self.engine.relay_outbox()
            time.sleep(0.1)
        want = set(self.committed)
        while any(self.handed.ids(s) != want for s in self.streams):
            assert not [e for e in self.errors if not isinstance(e, Exception)]
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.stop()

    def assert_journal(self, mysql_conn: Any, table: str) -> int:
        """Every committed row reached every stream's handler; nothing else did."""
        assert self.errors == []
        cursor = mysql_conn.cursor()
        cursor.execute(f"SELECT `id` FROM `{table}`")
        in_mysql = {int(i) for (i,) in cursor.fetchall()}
        assert set(self.committed) == in_mysql and in_mysql
        for stream in self.streams:
            got = self.handed.ids(stream)
            assert (in_mysql - got, got - in_mysql) == (set(), set()), stream
        return self.handed.duplicates()


def three_streams(cluster: ThrowawayCluster) -> list[str]:
    """One stream on each master."""
    return [streams_on(cluster, m, 1)[0] for m in cluster.masters()]


def test_master_killed_during_flushes_loses_nothing_committed(
    make_engine: Any, redis_cluster: ThrowawayCluster, mysql_conn: Any, caplog: Any
) -> None:
    """SIGKILL a master mid-flushes: its replica takes over, every committed change
    reaches every stream's handler (rows wait in the outbox until a replica
    confirms them), duplicates counted."""
    streams = three_streams(redis_cluster)
    cls = entity_feeding(*streams, table="killed_rows")
    engine = make_engine(
        cls,
        redis_options={"socket_timeout": 1, "wait_timeout": 0.2},
        outbox_relay_delay=0.5,
    )
    victim = redis_cluster.master_of_key(f"dirty_{streams[0]}")
    caplog.set_level(logging.WARNING, logger="fluxaorm.flush")
    scenario = Scenario(engine, cls, streams)
    try:
        scenario.consume_in_background()
        scenario.flush_in_background()
        scenario.wait_flushes(20)
        victim.kill()
        promoted = _wait_new_master(redis_cluster, f"dirty_{streams[0]}", victim)
        scenario.wait_flushes(20)  # flushes go on against the promoted replica
        redis_cluster.heal()  # the killed node comes back as the new replica
        assert redis_cluster.master_of_key(f"dirty_{streams[0]}").port == promoted
        scenario.wait_flushes(10)
        scenario.deliver_everything(mysql_conn)
    finally:
        scenario.stop()
    duplicates = scenario.assert_journal(mysql_conn, "killed_rows")
    # Flushes did meet the dead master: their entries waited in the outbox.
    left = [r for r in caplog.records if "wait in the outbox" in r.getMessage()]
    assert left
    print(
        f"\n[cluster faults] master killed: committed={len(scenario.committed)} "
        f"flushes={scenario.flushes} left to the relay={len(left)} "
        f"duplicates={duplicates}"
    )


def _wait_new_master(cluster: ThrowawayCluster, key: str, old: ClusterNode) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError, LookupError):
            port = cluster.master_of_key(key).port
            if port != old.port:
                return port
        time.sleep(0.1)
    raise AssertionError(f"no replica took over {key} from {old.address}")


def test_slot_migrated_while_flushing_and_consuming_loses_nothing(
    make_engine: Any, redis_cluster: ThrowawayCluster, mysql_conn: Any, caplog: Any
) -> None:
    """A stream's slot moves to another master (MIGRATING/IMPORTING, MIGRATE,
    SETSLOT NODE) under flushes and consumers: nothing lost, nothing stuck."""
    streams = three_streams(redis_cluster)
    cls = entity_feeding(*streams, table="migrated_rows")
    engine = make_engine(cls, outbox_relay_delay=0.5)
    key = f"dirty_{streams[0]}"
    slot = redis.crc.key_slot(key.encode())
    source = redis_cluster.master_of_slot(slot)
    target = next(m for m in redis_cluster.masters() if m.port != source.port)
    caplog.set_level(logging.DEBUG, logger="fluxaorm.redis")
    scenario = Scenario(engine, cls, streams)
    try:
        scenario.consume_in_background()
        scenario.flush_in_background()
        scenario.wait_flushes(10)
        redis_cluster.migrate_slot(
            slot, target, between=lambda step: scenario.wait_flushes(10)
        )
        assert redis_cluster.master_of_slot(slot).port == target.port
        scenario.wait_flushes(10)
        scenario.deliver_everything(mysql_conn)
    finally:
        scenario.stop()
    duplicates = scenario.assert_journal(mysql_conn, "migrated_rows")
    followed = Counter(
        r.getMessage().split(": ", 1)[1].split()[0]
        for r in caplog.records
        if r.name == "fluxaorm.redis" and f"] slot {slot}: " in r.getMessage()
    )
    # Commands met the slot while it moved (ASK) and after (MOVED), and went on.
    assert followed["AskError"] and followed["MovedError"], followed
    with redis_cluster.client() as client:
        pending = sum(int(g["pending"]) for g in client.xinfo_groups(key))
        assert (client.xlen(key), pending) == (0, 0)  # nothing stuck
    print(
        f"\n[cluster faults] slot migrated: committed={len(scenario.committed)} "
        f"flushes={scenario.flushes} redirections={dict(followed)} "
        f"duplicates={duplicates}"
    )


def test_whole_cluster_unreachable_keeps_everything_in_the_outbox(
    make_engine: Any, redis_cluster: ThrowawayCluster, mysql_conn: Any
) -> None:
    """Every node frozen: flushes still commit and return, the outbox keeps their
    entries, and the relay delivers all of them once the cluster answers again."""
    streams = three_streams(redis_cluster)
    cls = entity_feeding(*streams, table="unreachable_rows")
    engine = make_engine(
        cls, redis_options={"socket_timeout": 0.3, "socket_connect_timeout": 0.3}
    )
    orm = engine.new_orm()
    committed: list[int] = []

    def flush(n: int) -> None:
        rows = [orm.new_entity(cls, name="r") for _ in range(n)]
        orm.flush()
        committed.extend(r.id for r in rows)

    flush(5)
    with no_failover(redis_cluster), paused(*redis_cluster.nodes):
        for _ in range(4):
            started = time.monotonic()
            flush(5)
            assert time.monotonic() - started < 5
        assert outbox_rows(mysql_conn) == (4, 4 * 5 * 3)
        with pytest.raises(fluxaorm.StreamError) as info:
            engine.relay_outbox()
        assert info.value.connection_lost
        assert outbox_rows(mysql_conn) == (4, 4 * 5 * 3)
    redis_cluster.heal()
    # A write that timed out may still run when the node wakes up (its commands
    # sat in the socket): its records say so, and the relay skips those rows.
    assert 0 < engine.relay_outbox() <= 4 * 5 * 3
    assert outbox_rows(mysql_conn) == (0, 0)
    with redis_cluster.client() as client:
        assert [client.xlen(f"dirty_{s}") for s in streams] == [25, 25, 25]
    handed = Handed()
    for stream in streams:
        consumer = fluxaorm.new_dirty_stream_consumer_single(
            orm, stream, handed.handler(stream)
        )
        while consumer.consume(500, 0):
            pass
        consumer.cleanup()
        assert handed.ids(stream) == set(committed)
    assert handed.duplicates() == 0
