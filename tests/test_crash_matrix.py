"""The crash matrix (SPEC §7): N changes committed -> N events delivered to handlers.

Each test breaks one thing for real — stops or starves a throwaway Redis, SIGKILLs
a flusher, a relay or a consumer process (tests/crash_child.py), KILLs the flush's
own MySQL connection — and then compares the changes MySQL committed (the
``crash_journal`` rows each flush writes in its own transaction) with the events
consumer handlers were handed. Nothing committed may be missing, nothing rolled
back may show up, and a duplicate (the same ``event_id`` handed twice) is allowed
only where SPEC §7 documents at-least-once redelivery; every test counts them.
Every child process, thread and throwaway server is stopped when a test ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pymysql
import pytest
import redis

import fluxaorm
from tests.conftest import MYSQL_URL, REDIS_URL
from tests.crash_child import STREAM, Flusher, Journal, Key, Ledger, event_key
from tests.servers import ThrowawayMariaDB, ThrowawayRedis, free_port, stop_process
from tests.stream_reading import outbox_rows, stream_keys

ROOT = Path(__file__).resolve().parent.parent
KEY = f"dirty_{STREAM}"
RELAY_BATCH = 100  # outbox rows one relay pass locks and publishes (outbox.py)


# -- counting -----------------------------------------------------------------------


class Delivered:
    """A handler that records ``(event_id, key)`` for every event it is handed."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[tuple[str, Key]] = []

    def __call__(self, events: list[fluxaorm.DirtyStreamEvent]) -> None:
        with self.lock:
            self.items.extend((e.event_id, event_key(e)) for e in events)

    def snapshot(self) -> list[tuple[str, Key]]:
        with self.lock:
            return list(self.items)


class Tally:
    """What the handlers got: total, distinct events, and duplicates by event_id."""

    def __init__(self, items: Sequence[tuple[str, Key]]):
        self.handed = len(items)
        self.by_event: dict[str, Key] = {}
        self.conflicts: list[str] = []
        for eid, key in items:
            if self.by_event.setdefault(eid, key) != key:
                self.conflicts.append(eid)
        self.per_event = Counter(eid for eid, _ in items)
        self.duplicates = self.handed - len(self.by_event)
        self.keys = Counter(self.by_event.values())
        # One change published under two event ids would be a duplicate that no
        # handler could recognise: never allowed.
        self.twins = {k: n for k, n in self.keys.items() if n > 1}

    def __repr__(self) -> str:
        return (
            f"handed={self.handed} distinct={len(self.by_event)} "
            f"duplicates={self.duplicates}"
        )


def journal(conn: Any) -> Counter[Key]:
    """The changes MySQL committed, one key per change."""
    cursor = conn.cursor()
    cursor.execute("SELECT `ledger_id`, `action`, `version` FROM `crash_journal`")
    return Counter((int(i), str(a), int(v)) for i, a, v in cursor.fetchall())


def ledger_rows(conn: Any) -> dict[int, int]:
    """``id -> version`` of every Ledger row in MySQL."""
    cursor = conn.cursor()
    cursor.execute("SELECT `id`, `version` FROM `crash_ledger`")
    return {int(i): int(v) for i, v in cursor.fetchall()}


def rows_from_journal(changes: Counter[Key]) -> dict[int, int]:
    """The Ledger table the committed changes add up to."""
    rows: dict[int, int] = {}
    for ident, action, version in sorted(
        changes, key=lambda k: (k[0], k[2], k[1] == "delete")
    ):
        if action == "delete":
            rows.pop(ident, None)
        else:
            rows[ident] = version
    return rows


def assert_delivered(
    items: Sequence[tuple[str, Key]], conn: Any, rolled_back: Sequence[Key] = ()
) -> Tally:
    """Assert every committed change reached a handler and nothing else did.

    ``rolled_back`` are the changes of flushes that failed: the inserts among them
    (of ids never used again) must be neither in MySQL nor delivered.
    """
    committed = journal(conn)
    assert committed, "the test committed nothing"
    assert set(committed.values()) == {1}
    tally = Tally(items)
    never = {k for k in rolled_back if k[1] == "add"}
    assert never & set(committed) == set()
    assert never & set(tally.keys) == set()
    assert tally.conflicts == []
    assert tally.twins == {}
    missing = committed - tally.keys
    phantom = tally.keys - committed
    assert (dict(missing), dict(phantom)) == ({}, {})
    assert len(tally.by_event) == sum(committed.values())
    return tally


def report(what: str, committed: int, tally: Tally, **extra: Any) -> None:
    """Print the scenario's numbers (seen with ``pytest -s``)."""
    more = "".join(f" {k}={v}" for k, v in extra.items())
    print(f"\n[crash matrix] {what}: committed={committed} {tally!r}{more}")


def drain(consumer: fluxaorm.DirtyStreamConsumer) -> int:
    """Consume until the stream has nothing more for this consumer."""
    total = 0
    while True:
        handed = consumer.consume(500, 0)
        if not handed:
            return total
        total += handed


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def relay_until_empty(engine: fluxaorm.Engine, conn: Any, timeout: float) -> int:
    """Relay until the outbox is empty (rows a killed process held are skipped
    until MySQL has rolled its transaction back)."""
    published = 0
    deadline = time.monotonic() + timeout
    while outbox_rows(conn) != (0, 0):
        assert time.monotonic() < deadline, f"outbox not empty: {outbox_rows(conn)}"
        published += engine.relay_outbox()
        time.sleep(0.02)
    return published


def stream_pending(client: redis.Redis) -> int:
    return sum(int(g["pending"]) for g in client.xinfo_groups(KEY))


# -- processes ----------------------------------------------------------------------


class Child:
    """One ``python -m tests.crash_child`` process and the lines it printed."""

    def __init__(self, log: Path, *args: str):
        self.log = log
        with open(log, "wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.crash_child", *args],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._seen = 0

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def _pull_all(self) -> None:
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return
            if line is not None:
                self.lines.append(line)

    def expect(self, word: str, timeout: float = 30.0) -> str:
        """Return the rest of the next unseen line starting with ``word``."""
        deadline = time.monotonic() + timeout
        while True:
            self._pull_all()
            while self._seen < len(self.lines):
                head, _, rest = self.lines[self._seen].partition(" ")
                self._seen += 1
                if head == word:
                    return rest
            if time.monotonic() > deadline or (
                self.proc.poll() is not None and not self._reader.is_alive()
            ):
                self._pull_all()
                if self._seen < len(self.lines):
                    continue
                raise AssertionError(self.describe(f"no {word!r} line"))
            time.sleep(0.01)

    def said(self, word: str) -> list[str]:
        """The rest of every line starting with ``word`` printed so far."""
        self._pull_all()
        return [
            line.partition(" ")[2]
            for line in self.lines
            if line.partition(" ")[0] == word
        ]

    def events(self) -> list[tuple[str, Key]]:
        """Every ``(event_id, key)`` its handler reported, in order."""
        return [
            (eid, (int(i), str(a), int(v)))
            for batch in self.said("batch")
            for eid, i, a, v in json.loads(batch)
        ]

    def keys(self, word: str) -> list[Key]:
        return [
            (int(i), str(a), int(v))
            for line in self.said(word)
            for i, a, v in json.loads(line)
        ]

    def finish(self, timeout: float = 30.0) -> int:
        """Wait for the process to exit and for all of its output."""
        code = self.proc.wait(timeout)
        self._reader.join(timeout)
        self._pull_all()
        return code

    def describe(self, what: str) -> str:
        tail = self.log.read_text(errors="replace")[-3000:]
        return f"child {self.proc.pid}: {what}; stdout {self.lines[-20:]!r}; stderr:\n{tail}"


@pytest.fixture
def children(tmp_path: Path) -> Iterator[Callable[..., Child]]:
    """Start crash_child processes; every one still running is killed at the end."""
    started: list[Child] = []

    def start(*args: str) -> Child:
        child = Child(tmp_path / f"child-{len(started)}.log", *args)
        started.append(child)
        return child

    yield start
    for child in started:
        if child.proc.poll() is None:
            child.proc.kill()
        child.proc.wait(10)
        if child.proc.stdout is not None:
            child.proc.stdout.close()


@pytest.fixture
def redis_server() -> Iterator[Callable[..., ThrowawayRedis]]:
    """Start throwaway redis-servers; each is stopped and removed at the end."""
    servers: list[ThrowawayRedis] = []

    def start(*extra_args: str) -> ThrowawayRedis:
        server = ThrowawayRedis(extra_args)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.close()


class Loops:
    """Background threads of one test; stopped and joined when it ends."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def start(self, target: Callable[[], Any]) -> threading.Thread:
        def body() -> None:
            try:
                target()
            except BaseException as exc:  # reported by the test
                self.errors.append(exc)

        thread = threading.Thread(target=body, daemon=True)
        thread.start()
        self.threads.append(thread)
        return thread

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(20)


@pytest.fixture
def loops() -> Iterator[Loops]:
    found = Loops()
    yield found
    found.close()


def _child_args(command: str, *args: Any, redis_url: str = REDIS_URL) -> list[str]:
    return [command, MYSQL_URL, redis_url, *(str(a) for a in args)]


def _mysql_connect() -> pymysql.connections.Connection[Any]:
    parts = urlsplit(MYSQL_URL)
    return pymysql.connect(
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 3306,
        user=parts.username or "root",
        password=parts.password or "",
        database=parts.path.lstrip("/") or "test",
    )


# -- (1) Redis stopped during a flush and restarted -----------------------------------


def test_redis_stopped_and_restarted_under_flushes_delivers_every_committed_change(
    make_engine, mysql_conn, redis_server, loops
):
    """Redis (AOF, appendfsync always, so it keeps its data) stopped and restarted under continuous flushes: every commit delivered, no rolled-back one."""
    server = redis_server("--appendonly", "yes", "--appendfsync", "always")
    engine = make_engine(Ledger, Journal, redis_url=server.url)
    reader = make_engine(Ledger, Journal, sync=False, redis_url=server.url)
    got = Delivered()
    consumer = fluxaorm.new_dirty_stream_consumer_many(reader.new_orm(), STREAM, got)
    count = 50
    loops.start(
        lambda: consumer.run(count, 0.2, loops.stop, min_idle=1.0, claim_every=0.5)
    )
    flusher = Flusher(engine.new_orm(), 1)
    stop_flushing = threading.Event()
    flushes: list[float] = []
    biggest = 6

    def flush_forever() -> None:
        rng = random.Random(1)
        step = 0
        while not stop_flushing.is_set() and not loops.stop.is_set():
            step += 1
            size = rng.randint(1, biggest)
            if step % 7 == 0 and flusher.doomed_step(rng, size) is not None:
                try:
                    flusher.flush()
                except fluxaorm.DuplicateKeyError:
                    flusher.abandon()
                else:
                    raise AssertionError("a flush inserting an existing id committed")
            else:
                flusher.random_step(rng, size)
                flusher.flush()
                flushes.append(time.monotonic())
            time.sleep(0.01)

    loops.start(flush_forever)
    wait_until(lambda: len(got.snapshot()) >= 100, 20, "100 events before the stop")

    server.stop()
    stopped = time.monotonic()
    wait_until(
        lambda: sum(1 for t in flushes if t > stopped) >= 10 or bool(loops.errors),
        20,
        "10 flushes committed while Redis is down",
    )
    waiting = outbox_rows(mysql_conn)
    server.start()
    time.sleep(1.0)
    stop_flushing.set()
    loops.threads[1].join(20)
    assert loops.errors == []

    relay_until_empty(engine, mysql_conn, 20)
    committed = sum(journal(mysql_conn).values())
    assert committed == len(flusher.committed)
    client = server.client()
    try:
        wait_until(
            lambda: (
                len(Tally(got.snapshot()).by_event) >= committed
                and client.xlen(KEY) == 0
            ),
            30,
            f"{committed} events delivered and acknowledged",
        )
    finally:
        client.close()
    loops.close()
    assert loops.errors == []

    assert flusher.rolled_back
    tally = assert_delivered(got.snapshot(), mysql_conn, flusher.rolled_back)
    # At-least-once: a consumer batch whose XACK died with the server, and a flush
    # whose EXEC was applied while its reply was lost, may come again.
    assert tally.duplicates <= count + biggest
    assert max(tally.per_event.values()) <= 2
    assert ledger_rows(mysql_conn) == rows_from_journal(journal(mysql_conn))
    assert outbox_rows(mysql_conn, server.client()) == (0, 0)
    client = server.client()
    try:
        assert client.xlen(KEY) == 0
        assert stream_pending(client) == 0
    finally:
        client.close()
    report(
        "(1) Redis stopped+restarted",
        committed,
        tally,
        outbox_rows_while_down=waiting[0],
        entries_while_down=waiting[1],
        rolled_back=len(flusher.rolled_back),
    )


def test_redis_frozen_during_a_flush_publish_redelivers_at_most_that_flush(
    make_engine, mysql_conn, redis_server
):
    """Redis SIGSTOPped while a flush publishes: the flush returns after its socket timeout, the relay republishes; duplicates = that flush at most."""
    server = redis_server()
    engine = make_engine(
        Ledger, Journal, redis_url=server.url, redis_options={"socket_timeout": 0.5}
    )
    reader = make_engine(Ledger, Journal, sync=False, redis_url=server.url)
    flusher = Flusher(engine.new_orm(), 7)
    rng = random.Random(7)
    flusher.random_step(rng, 12)
    flusher.flush()
    got = Delivered()
    consumer = fluxaorm.new_dirty_stream_consumer_single(reader.new_orm(), STREAM, got)
    assert drain(consumer) == 12

    assert server.process is not None
    pid = server.process.pid
    rows_before, entries_before = outbox_rows(mysql_conn)  # published, not cleaned
    os.kill(pid, signal.SIGSTOP)
    try:
        frozen = flusher.random_step(rng, 9)
        began = time.monotonic()
        flusher.flush()  # returns: committed, its entries wait in the outbox
        took = time.monotonic() - began
    finally:
        os.kill(pid, signal.SIGCONT)
    assert took < 5
    assert outbox_rows(mysql_conn) == (rows_before + 1, entries_before + len(frozen))
    client = server.client()
    try:
        # Redis reads the MULTI/EXEC the flush gave up on once it runs again
        # (the socket was closed, not reset): the whole batch lands, or none.
        deadline = time.monotonic() + 2.0
        while client.xlen(KEY) < len(frozen) and time.monotonic() < deadline:
            time.sleep(0.02)
        applied = client.xlen(KEY)
        assert applied in (0, len(frozen))
        # The transaction that landed also recorded the row as published: the
        # relay deletes it without publishing it again.
        assert engine.relay_outbox() == (0 if applied else len(frozen))
        assert outbox_rows(mysql_conn, client) == (0, 0)
        drain(consumer)
        assert client.xlen(KEY) == 0
    finally:
        client.close()
    tally = assert_delivered(got.snapshot(), mysql_conn)
    assert tally.duplicates == 0
    report(
        "(1b) Redis frozen mid-publish",
        12 + len(frozen),
        tally,
        exec_applied_after_timeout=applied,
    )


# -- (2) the flushing process SIGKILLed after COMMIT, before the publish --------------


def test_flusher_killed_between_commit_and_publish_loses_nothing(
    make_engine, mysql_conn, redis_client, children
):
    """A flusher SIGKILLed after its 8th COMMIT, before the publish: the relay delivers that flush; no duplicate."""
    engine = make_engine(Ledger, Journal, outbox_relay_delay=0)
    child = children(
        *_child_args("flush", "--owner", 2, "--changes", 500, "--max-step", 8),
        "--die-at",
        "8",
        "--seed",
        "2",
    )
    assert child.finish(60) == -signal.SIGKILL, child.describe("not SIGKILLed")
    published = child.keys("committed")
    in_the_air = child.keys("flushing")
    assert len(child.said("committed")) == 7
    assert in_the_air
    assert journal(mysql_conn) == Counter(published + in_the_air)
    assert outbox_rows(mysql_conn, redis_client) == (1, len(in_the_air))

    got = Delivered()
    consumer = fluxaorm.new_dirty_stream_consumer_single(engine.new_orm(), STREAM, got)
    drain(consumer)
    before = Tally(got.snapshot())
    assert before.keys == Counter(published)  # the dead flush published nothing

    assert engine.relay_outbox() == len(in_the_air)
    drain(consumer)
    tally = assert_delivered(got.snapshot(), mysql_conn)
    assert tally.duplicates == 0
    assert outbox_rows(mysql_conn) == (0, 0)
    report(
        "(2) flusher killed after COMMIT",
        len(published) + len(in_the_air),
        tally,
        relayed=len(in_the_air),
    )


def test_flusher_killed_after_publishing_before_its_cleanup_duplicates_nothing(
    make_engine, mysql_conn, redis_client, children
):
    """A flusher SIGKILLed right after its 8th publish, before any later flush
    deletes that outbox row: the relay finds the row recorded as published and
    deletes it without publishing it again; no duplicate, nothing lost."""
    engine = make_engine(Ledger, Journal, outbox_relay_delay=0)
    child = children(
        *_child_args("flush", "--owner", 4, "--changes", 500, "--max-step", 8),
        "--die-at",
        "8",
        "--die-how",
        "after-publish",
        "--seed",
        "4",
    )
    assert child.finish(60) == -signal.SIGKILL, child.describe("not SIGKILLed")
    published = child.keys("committed")
    in_the_air = child.keys("flushing")
    assert len(child.said("committed")) == 7 and in_the_air
    # The rows of its last flushes stay, published: their cleanup never came.
    assert outbox_rows(mysql_conn)[0] >= 1
    assert outbox_rows(mysql_conn, redis_client) == (0, 0)
    (stats,) = engine.get_event_broker().get_outbox_statistics()
    assert (stats.rows, stats.entries) == (0, 0)

    assert engine.relay_outbox() == 0  # recorded as published: deleted, not sent
    assert outbox_rows(mysql_conn) == (0, 0)
    got = Delivered()
    consumer = fluxaorm.new_dirty_stream_consumer_single(engine.new_orm(), STREAM, got)
    drain(consumer)
    tally = assert_delivered(got.snapshot(), mysql_conn)
    assert tally.duplicates == 0
    report(
        "(2b) flusher killed after publish, before cleanup",
        len(published) + len(in_the_air),
        tally,
        lingering=1,
    )


def test_flusher_killed_between_the_two_packets_of_an_insert_leaves_nothing(
    make_engine, mysql_conn, redis_client, children
):
    """Inserts whose ids MySQL assigns take two packets under lock mode 2 (the
    RETURNING strategy, forced); a flusher SIGKILLed between them leaves no row,
    no outbox row and no event (MySQL rolls back)."""
    engine = make_engine(Ledger, Journal)
    child = children(*_child_args("between-packets", "--changes", 5))
    assert child.finish(60) == -signal.SIGKILL, child.describe("not SIGKILLed")
    assert child.said("between")

    def rolled_back() -> bool:
        return ledger_rows(mysql_conn) == {} and sum(journal(mysql_conn).values()) == 0

    wait_until(rolled_back, 10, "MySQL to roll the dead connection back")
    assert outbox_rows(mysql_conn) == (0, 0)
    assert stream_keys(redis_client) == []
    assert engine.relay_outbox() == 0


# -- (3) the relay SIGKILLed mid-publish -----------------------------------------------


@pytest.mark.parametrize("moment", ["before", "after"])
def test_relay_killed_mid_publish_loses_nothing(
    make_engine, mysql_conn, children, caplog, moment
):
    """A relay SIGKILLed before/after its first EXEC: a later relay delivers every row, none twice."""
    caplog.set_level("ERROR", logger="fluxaorm.flush")  # 150 "Redis down" warnings
    engine = make_engine(Ledger, Journal, outbox_relay_delay=0)
    down = make_engine(
        Ledger, Journal, sync=False, redis_url=f"redis://127.0.0.1:{free_port()}/0"
    )
    flusher = Flusher(down.new_orm(), 3)
    rng = random.Random(3)
    flushes, per_flush = 150, 2
    for _ in range(flushes):
        flusher.random_step(rng, per_flush)
        flusher.flush()
    committed = flushes * per_flush
    assert outbox_rows(mysql_conn) == (flushes, committed)

    child = children(*_child_args("relay", "--die", moment))
    word = "publishing" if moment == "before" else "published"
    entries, rows = (int(n) for n in child.expect(word).split())
    child.proc.send_signal(signal.SIGKILL)
    assert child.finish() == -signal.SIGKILL
    assert rows == RELAY_BATCH
    assert entries == rows * per_flush
    assert outbox_rows(mysql_conn) == (
        flushes,
        committed,
    )  # its DELETEs never committed

    relayed = relay_until_empty(engine, mysql_conn, 20)
    # After EXEC, the dead relay's pass reached Redis with its record: the next
    # relay publishes only the rest.
    assert relayed == committed - (entries if moment == "after" else 0)
    got = Delivered()
    consumer = fluxaorm.new_dirty_stream_consumer_single(engine.new_orm(), STREAM, got)
    drain(consumer)
    tally = assert_delivered(got.snapshot(), mysql_conn)
    # The pass in flight when the relay died: before EXEC nothing reached Redis;
    # after it, the same transaction recorded the rows as published, so the next
    # relay deletes them without publishing them again. No duplicate either way.
    assert tally.duplicates == 0
    report(
        f"(3) relay killed {moment} EXEC",
        committed,
        tally,
        pass_in_flight=entries,
    )


# -- (4) a consumer SIGKILLed mid-batch -------------------------------------------------


@pytest.mark.parametrize("kind", ["many", "single"])
def test_consumer_killed_mid_batch_has_that_batch_redelivered(
    make_engine, mysql_conn, redis_client, children, kind
):
    """A consumer SIGKILLed in its 3rd batch: a new one gets every event; duplicates = exactly that batch."""
    engine = make_engine(Ledger, Journal)
    flusher = Flusher(engine.new_orm(), 4)
    rng = random.Random(4)
    while len(flusher.committed) < 300:
        flusher.random_step(rng, 10)
        flusher.flush()
    committed = len(flusher.committed)
    assert redis_client.xlen(KEY) == committed
    count = 40
    first = children(
        *_child_args("consume", "--kind", kind, "--count", count), "--hang-at", "3"
    )
    first.expect("ready")
    first.expect("hang")
    first.proc.send_signal(signal.SIGKILL)
    assert first.finish() == -signal.SIGKILL
    batches = [json.loads(b) for b in first.said("batch")]
    assert [len(b) for b in batches] == [count] * 3
    killed = {eid for eid, *_ in batches[-1]}
    assert stream_pending(redis_client) == count
    assert redis_client.xlen(KEY) == committed - 2 * count

    second = children(
        *_child_args("consume", "--kind", kind, "--count", count),
        "--min-idle",
        "0.5",
        "--claim-every",
        "0.3",
    )
    second.expect("ready")
    wait_until(
        lambda: (
            len(Tally(first.events() + second.events()).by_event) >= committed
            and redis_client.xlen(KEY) == 0
        ),
        30,
        f"{committed} events delivered and acknowledged",
    )
    second.proc.send_signal(signal.SIGTERM)
    assert second.finish() == 0, second.describe("non-zero exit")

    tally = assert_delivered(first.events() + second.events(), mysql_conn)
    twice = {eid for eid, n in tally.per_event.items() if n > 1}
    assert twice == killed
    assert tally.duplicates == count
    assert max(tally.per_event.values()) == 2
    assert redis_client.xlen(KEY) == 0
    assert stream_pending(redis_client) == 0
    report(f"(4) {kind} consumer killed mid-batch", committed, tally, batch=count)


# -- (5) the flush's MySQL connection KILLed mid-flush ---------------------------------


def test_flush_whose_connection_is_killed_mid_flush_publishes_nothing_and_retries_once(
    make_engine, mysql_conn, redis_client, loops
):
    """KILL CONNECTION of a flush blocked mid-transaction: DatabaseError, all rolled back, nothing published; the retry is delivered once."""
    engine = make_engine(
        Ledger, Journal, outbox_relay_delay=0, mysql_options={"pool_size": 1}
    )
    orm = engine.new_orm()
    flusher = Flusher(orm, 5)
    seeded = [flusher.add()[0] for _ in range(6)]
    flusher.flush()
    got = Delivered()
    consumer = fluxaorm.new_dirty_stream_consumer_single(orm, STREAM, got)
    assert drain(consumer) == 6
    with engine.mysql_pool("default").connection() as conn:
        victim = int(conn.query("SELECT CONNECTION_ID()")[0][0])

    held, gone = seeded[0], seeded[1]
    locker = _mysql_connect()
    peek = _mysql_connect()
    try:
        locker.begin()
        locker.cursor().execute(
            "SELECT `id` FROM `crash_ledger` WHERE `id` = %s FOR UPDATE", (held,)
        )
        flusher.remove(gone)
        flusher.edit(held)
        fresh = [flusher.add()[0] for _ in range(3)]
        outcome: list[BaseException] = []

        def flush() -> None:
            try:
                flusher.flush()
            except BaseException as exc:  # checked below
                outcome.append(exc)

        thread = threading.Thread(target=flush, daemon=True)
        thread.start()
        cursor = mysql_conn.cursor()

        def blocked_on_update() -> bool:
            cursor.execute(
                "SELECT `INFO` FROM information_schema.PROCESSLIST WHERE `ID` = %s",
                (victim,),
            )
            row = cursor.fetchone()
            return bool(row and row[0] and row[0].startswith("UPDATE `crash_ledger`"))

        wait_until(blocked_on_update, 10, "the flush to wait for the row lock")
        dirty = peek.cursor()
        dirty.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ UNCOMMITTED")
        dirty.execute("SELECT COUNT(*) FROM `crash_ledger` WHERE `id` = %s", (gone,))
        assert dirty.fetchone()[0] == 0  # the flush's DELETE already ran
        cursor.execute(f"KILL CONNECTION {victim}")
        thread.join(20)
        assert not thread.is_alive()
        locker.rollback()
    finally:
        locker.close()
        peek.close()

    assert len(outcome) == 1
    assert isinstance(outcome[0], fluxaorm.DatabaseError)
    assert not isinstance(outcome[0], fluxaorm.DuplicateKeyError)
    assert orm.has_changes
    assert sum(journal(mysql_conn).values()) == 6
    assert ledger_rows(mysql_conn) == dict.fromkeys(seeded, 0)
    assert outbox_rows(mysql_conn, redis_client) == (0, 0)
    assert redis_client.xlen(KEY) == 0
    assert engine.relay_outbox() == 0
    assert drain(consumer) == 0

    retried = flusher.flush()
    assert len(retried) == 5
    assert engine.relay_outbox() == 0
    assert drain(consumer) == 5
    tally = assert_delivered(got.snapshot(), mysql_conn)
    assert tally.duplicates == 0
    expected = {**dict.fromkeys(seeded, 0), held: 1, **dict.fromkeys(fresh, 0)}
    del expected[gone]
    assert ledger_rows(mysql_conn) == expected
    report("(5) KILL CONNECTION mid-flush", 11, tally, rolled_back=5)


# -- (6) Redis at maxmemory during a flush ---------------------------------------------


def starve(client: redis.Redis) -> None:
    """Fill a throwaway Redis started with a small maxmemory until it refuses writes."""
    refused = None
    for n in range(200):
        try:
            client.set(f"filler:{n}", b"x" * 65536)
        except redis.ResponseError as exc:
            refused = exc
            break
    assert isinstance(refused, redis.exceptions.OutOfMemoryError)
    # Freed query buffers (the refused 64 KB SET's, idle clients') bring used
    # memory back just under the limit, where small XADDs would fit again: pin the
    # server in OOM with a limit 256 KB under what it uses now.
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", used - 262_144)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        client.xadd("probe", {"a": "b"})


def test_redis_out_of_memory_keeps_entries_in_the_outbox_until_memory_returns(
    make_engine, mysql_conn, redis_server
):
    """Redis at maxmemory (noeviction): flushes commit, relay raises StreamError, no partial batch; with memory back all delivered once."""
    server = redis_server("--maxmemory", "2mb", "--maxmemory-policy", "noeviction")
    engine = make_engine(Ledger, Journal, redis_url=server.url)
    orm = engine.new_orm()
    flusher = Flusher(orm, 6)
    rng = random.Random(6)
    flusher.random_step(rng, 10)
    flusher.flush()
    got = Delivered()
    consumer = fluxaorm.new_dirty_stream_consumer_single(orm, STREAM, got)
    assert drain(consumer) == 10

    client = server.client()
    try:
        starve(client)

        starved = 0
        for size in (5, 8, 3, 7):
            flusher.random_step(rng, size)
            starved += len(flusher.flush())  # returns: the rows are committed
        assert outbox_rows(mysql_conn, client) == (4, starved)
        assert drain(consumer) == 0
        with pytest.raises(fluxaorm.StreamError, match="maxmemory"):
            engine.relay_outbox()
        assert outbox_rows(mysql_conn, client) == (4, starved)
        assert client.xlen(KEY) == 0  # MULTI/EXEC refused whole: no partial batch
        assert drain(consumer) == 0

        client.config_set("maxmemory", 0)
        assert engine.relay_outbox() == starved
        assert drain(consumer) == starved
        assert outbox_rows(mysql_conn, client) == (0, 0)
        assert client.xlen(KEY) == 0
    finally:
        client.close()
    tally = assert_delivered(got.snapshot(), mysql_conn)
    assert tally.duplicates == 0
    report("(6) Redis OOM", 10 + starved, tally, held_in_outbox=starved)


# -- (7) load: several flushers and consumers ------------------------------------------


def test_load_three_flushers_three_consumers_lose_nothing_and_duplicate_nothing(
    make_engine, mysql_conn, redis_client, children
):
    """3 flusher processes x 1,000 mixed changes (plus failing flushes) and 3 consumer processes: all delivered once, none rolled back, within 60 s."""
    make_engine(Ledger, Journal)
    began = time.monotonic()
    consumers = [
        children(*_child_args("consume", "--kind", "many", "--count", 100))
        for _ in range(3)
    ]
    for consumer in consumers:
        consumer.expect("ready")
    start_at = time.time() + 1.0
    changes = 1000
    flushers = [
        children(
            *_child_args("flush", "--owner", 10 + n, "--changes", changes),
            "--max-step",
            "12",
            "--seed",
            str(n),
            "--start-at",
            repr(start_at),
            "--doom-every",
            "7",
        )
        for n in range(3)
    ]
    for flusher in flushers:
        assert flusher.finish(60) == 0, flusher.describe("non-zero exit")
        assert flusher.said("finished") == [str(changes)]
    reported = Counter(k for f in flushers for k in f.keys("committed"))
    committed = journal(mysql_conn)
    assert committed == reported
    assert sum(committed.values()) == 3 * changes

    def everything() -> list[tuple[str, Key]]:
        return [item for c in consumers for item in c.events()]

    wait_until(
        lambda: (
            len(Tally(everything()).by_event) >= 3 * changes
            and redis_client.xlen(KEY) == 0
        ),
        60 - (time.monotonic() - began),
        f"{3 * changes} events delivered and acknowledged",
    )
    for consumer in consumers:
        consumer.proc.send_signal(signal.SIGTERM)
    for consumer in consumers:
        assert consumer.finish() == 0, consumer.describe("non-zero exit")
    elapsed = time.monotonic() - began

    rolled_back = [k for f in flushers for k in f.keys("rolledback")]
    assert rolled_back
    tally = assert_delivered(everything(), mysql_conn, rolled_back)
    assert tally.duplicates == 0
    assert sum(1 for c in consumers if c.events()) >= 2
    assert ledger_rows(mysql_conn) == rows_from_journal(committed)
    assert outbox_rows(mysql_conn, redis_client) == (0, 0)
    assert redis_client.xlen(KEY) == 0
    assert stream_pending(redis_client) == 0
    assert elapsed < 60
    retries = sum(len(f.said("retry")) for f in flushers)
    report(
        "(7) load 3x3",
        3 * changes,
        tally,
        seconds=round(elapsed, 1),
        per_consumer=[len(c.events()) for c in consumers],
        flush_retries=retries,
        rolled_back_changes=len(rolled_back),
    )


def test_poison_event_whose_move_to_dead_is_refused_by_oom_is_not_lost(
    make_engine, redis_server
):
    """A poison event whose XADD to :dead Redis refuses (OOM) stays in its stream; with memory back it reaches :dead."""
    server = redis_server("--maxmemory", "2mb", "--maxmemory-policy", "noeviction")
    engine = make_engine(Ledger, Journal, redis_url=server.url)
    flusher = Flusher(engine.new_orm(), 9)
    change = flusher.add()
    flusher.flush()
    got = Delivered()

    def poisoned(events: list[fluxaorm.DirtyStreamEvent]) -> None:
        got(events)
        raise RuntimeError("cannot handle it")

    consumer = fluxaorm.new_dirty_stream_consumer_many(
        engine.new_orm(), STREAM, poisoned, max_deliveries=1
    )
    with pytest.raises(RuntimeError):
        consumer.consume(10, 0)
    client = server.client()
    try:
        ((_, fields),) = client.xrange(KEY)
        starve(client)
        with contextlib.suppress(fluxaorm.StreamError):
            consumer.auto_claim(10, 0)  # its XADD to :dead is refused
        kept = client.xlen(KEY)

        client.config_set("maxmemory", 0)
        assert consumer.auto_claim(10, 0) == 0  # buried now, not handed over
        dead = client.xrange(KEY + ":dead")
        left = client.xlen(KEY)
    finally:
        client.close()
    assert [t[1] for t in got.snapshot()] == [change]
    assert (kept, left, len(dead)) == (1, 0, 1), (
        f"the event was in the stream {kept} time(s) under OOM, {left} after, "
        f"and {len(dead)} time(s) in :dead"
    )
    assert dead[0][1][b"eid"] == fields[b"eid"]


@pytest.fixture(scope="module")
def freezable_mariadb() -> Iterator[ThrowawayMariaDB]:
    """A MariaDB of our own that tests may SIGSTOP (and SIGCONT) meanwhile."""
    with ThrowawayMariaDB() as server:
        yield server


@pytest.mark.parametrize(
    ("frozen_at", "during_commit"), [("COMMIT", True), ("INSERT", False)]
)
def test_a_connection_lost_while_commit_is_in_flight_is_flagged(
    frozen_at: str,
    during_commit: bool,
    clean: None,
    freezable_mariadb: ThrowawayMariaDB,
) -> None:
    """A server that stops answering during COMMIT gives DatabaseError.during_commit=True."""
    from tests.models import UserEntity

    server = freezable_mariadb
    registry = fluxaorm.Registry()
    registry.register_mysql(server.url, read_timeout=1)
    registry.register_redis(REDIS_URL)
    registry.register_entity(UserEntity)
    engine = registry.validate()
    engine.sync_schema()
    # Lost in a packet without COMMIT: the first of RETURNING's two packets.
    engine.id_strategy = "returning"
    assert server.process is not None
    pid = server.process.pid
    frozen: list[str] = []

    def freeze(pool: str, sql: str) -> None:
        # Called just before the statement is sent: the server then hangs on it.
        if not frozen and sql.split(None, 1)[0].upper() == frozen_at:
            frozen.append(sql)
            stop_process(pid)

    engine.add_statement_listener(freeze)
    orm = engine.new_orm()
    orm.new_entity(UserEntity, name="Tom", email="tom@example.com")
    try:
        with pytest.raises(fluxaorm.DatabaseError) as caught:
            orm.flush()
    finally:
        os.kill(pid, signal.SIGCONT)
    engine.remove_statement_listener(freeze)
    assert frozen, "the freeze never happened"
    assert caught.value.during_commit is during_commit
    assert orm.has_changes  # the changes stay pending either way
    engine.close()
