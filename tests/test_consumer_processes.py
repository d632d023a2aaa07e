"""Dirty-stream consumers across processes (SPEC §5 run loop, sharing, crashes; §7 poison).

Each worker is ``python -m tests.worker_script`` (tests/worker_script.py) on the same
test MariaDB and Redis DB; it reports what its handler does on stdout. Every worker a
test starts is killed and reaped when the test ends.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import fluxaorm
from fluxaorm.testing import age_pending
from tests.conftest import MYSQL_URL, REDIS_URL
from tests.test_consumer import (
    KEY,
    STREAM,
    InThread,
    Recorder,
    _consumers,
    _dead_entries,
    _pending,
    _publish,
    _stop_loops,  # noqa: F401 - the fixture stops run() loops of failed tests
    _text,
    _wait_until,
)

ROOT = Path(__file__).resolve().parent.parent


class Worker:
    """One ``tests.worker_script`` process and the lines it printed."""

    def __init__(self, log: Path, *args: str):
        self.log = log
        env = {
            **os.environ,
            "FLUXAORM_TEST_MYSQL_URL": MYSQL_URL,
            "FLUXAORM_TEST_REDIS_URL": REDIS_URL,
        }
        with open(log, "wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.worker_script", *args],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def _pull(self, timeout: float) -> str | None:
        line = self._queue.get(timeout=timeout)
        if line is not None:
            self.lines.append(line)
        return line

    def expect(self, word: str, timeout: float = 20.0) -> str:
        """Return the rest of the next line starting with ``word``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._pull(max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(self._report(f"no {word!r} line")) from None
            if line is None:
                raise AssertionError(self._report(f"exited before a {word!r} line"))
            if line.split(" ", 1)[0] == word:
                return line.partition(" ")[2]

    def finish(self, timeout: float = 20.0) -> int:
        """Wait for the process to exit and for all of its output."""
        code = self.proc.wait(timeout)
        self._reader.join(timeout)
        while True:
            try:
                if self._pull(0) is None:
                    break
            except queue.Empty:
                break
        return code

    def ids(self, word: str = "done") -> list[int]:
        """Every entity id listed on the ``word`` lines read so far."""
        while True:
            try:
                if self._pull(0) is None:
                    break
            except queue.Empty:
                break
        out: list[int] = []
        for line in self.lines:
            head, _, rest = line.partition(" ")
            if head == word and rest:
                out.extend(int(i) for i in rest.split(","))
        return out

    def _report(self, what: str) -> str:
        return f"worker {self.proc.pid}: {what}; stdout {self.lines!r}; stderr:\n{self.log.read_text()}"


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def start(*args: str) -> Worker:
        worker = Worker(tmp_path / f"worker-{len(started)}.log", *args)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if worker.proc.poll() is None:
            worker.proc.kill()
        worker.proc.wait(10)
        if worker.proc.stdout is not None:
            worker.proc.stdout.close()


def _ints(text: str) -> list[int]:
    return [int(i) for i in text.split(",")] if text else []


# -- 8. the run loop under SIGTERM ------------------------------------------------------


def test_sigterm_mid_batch_finishes_the_batch_cleans_up_and_exits_zero(
    orm, redis_client, workers
):
    """A worker in run() that gets SIGTERM mid-batch finishes and acks that batch, leaves the group, exits 0."""
    ids = _publish(orm, 5)
    worker = workers("--kind", "many", "--sleep", "1.5", "--block", "0.5")
    name = worker.expect("ready")
    assert _ints(worker.expect("batch")) == ids

    worker.proc.send_signal(signal.SIGTERM)

    assert worker.finish() == 0, worker._report("non-zero exit")
    assert worker.ids("done") == ids
    assert worker.ids("exit") == [5]
    assert _pending(redis_client) == {}
    assert redis_client.xlen(KEY) == 0
    assert name not in _consumers(redis_client)
    later = Recorder()
    assert (
        fluxaorm.new_dirty_stream_consumer_single(orm, STREAM, later).consume(10, 0)
        == 0
    )


def test_sigint_stops_the_run_loop_of_a_single_consumer_too(orm, redis_client, workers):
    """SIGINT stops a single consumer's run() like SIGTERM: the batch is finished and the exit code is 0."""
    ids = _publish(orm, 3)
    worker = workers("--kind", "single", "--sleep", "1.0", "--block", "0.5")
    worker.expect("ready")
    assert _ints(worker.expect("batch")) == ids

    worker.proc.send_signal(signal.SIGINT)

    assert worker.finish() == 0, worker._report("non-zero exit")
    assert worker.ids("done") == ids
    assert _pending(redis_client) == {}
    assert _consumers(redis_client) == {}


# -- 9. sharing and crashes ------------------------------------------------------------


def test_many_consumers_in_processes_and_threads_share_events_none_lost_none_twice(
    orm, redis_client, workers
):
    """Two worker processes and two threads split 2,000 events: every id handled once, by one consumer."""
    procs = [
        workers("--kind", "many", "--count", "50", "--block", "0.2") for _ in range(2)
    ]
    for worker in procs:
        worker.expect("ready")
    stop = threading.Event()
    in_threads: list[list[int]] = [[], []]
    engine = orm.engine

    def run_thread(n: int) -> int:
        def handle(events: list[fluxaorm.DirtyStreamEvent]) -> None:
            in_threads[n].extend(e.id for e in events)

        consumer = fluxaorm.new_dirty_stream_consumer_many(
            engine.new_orm(), STREAM, handle
        )
        return consumer.run(50, 0.2, stop)

    threads = [InThread(lambda n=n: run_thread(n), stop) for n in range(2)]
    ids = [i for _ in range(4) for i in _publish(orm, 500)]

    def all_handled() -> bool:
        total = sum(len(h) for h in in_threads) + sum(len(w.ids()) for w in procs)
        return total >= 2000 and redis_client.xlen(KEY) == 0

    _wait_until(all_handled, 60, "2,000 handled events")
    stop.set()
    for thread in threads:
        thread.join(15)
    for worker in procs:
        worker.proc.send_signal(signal.SIGTERM)
        assert worker.finish() == 0, worker._report("non-zero exit")

    handled = [*in_threads, *(w.ids() for w in procs)]
    assert sorted(i for h in handled for i in h) == sorted(ids)
    for a, mine in enumerate(handled):
        assert len(set(mine)) == len(mine)
        for theirs in handled[a + 1 :]:
            assert not set(mine) & set(theirs)
    assert sum(1 for h in handled if h) >= 2
    assert _pending(redis_client) == {}


def test_events_of_a_consumer_killed_mid_batch_are_claimed_by_a_live_one(
    orm, redis_client, workers
):
    """SIGKILL during a batch leaves its events pending; a live consumer's auto_claim hands them over."""
    ids = _publish(orm, 6)
    worker = workers("--kind", "many", "--sleep", "30")
    name = worker.expect("ready")
    assert _ints(worker.expect("batch")) == ids

    worker.proc.kill()
    worker.finish()

    assert set(_pending(redis_client).values()) == {name}
    assert len(_pending(redis_client)) == 6
    got = Recorder()
    live = fluxaorm.new_dirty_stream_consumer_many(orm, STREAM, got)
    age_pending(orm.engine, STREAM, 60)
    assert live.auto_claim(100, 60.0) == 6
    assert got.ids == ids
    assert worker.ids("done") == []
    assert _pending(redis_client) == {}
    assert redis_client.xlen(KEY) == 0


# -- §7 poison events: a crash counts as a delivery ------------------------------------


def test_a_handler_that_crashes_its_process_counts_toward_max_deliveries(
    orm, redis_client, workers
):
    """A delivery whose process was SIGKILLed counts: with max_deliveries=2 one more failure sends it to :dead."""
    ids = _publish(orm, 1)
    original = {_text(k): v for k, v in redis_client.xrange(KEY)[0][1].items()}
    worker = workers("--kind", "many", "--sleep", "30")
    worker.expect("ready")
    assert _ints(worker.expect("batch")) == ids
    worker.proc.kill()
    worker.finish()

    def fail(events: list[fluxaorm.DirtyStreamEvent]) -> None:
        raise ValueError("still cannot handle it")

    got = Recorder(fail=fail)
    live = fluxaorm.new_dirty_stream_consumer_many(orm, STREAM, got, max_deliveries=2)
    age_pending(orm.engine, STREAM, 60)
    with pytest.raises(ValueError):
        live.auto_claim(10, 60.0)
    age_pending(orm.engine, STREAM, 60)
    assert live.auto_claim(10, 60.0) == 0

    assert got.ids == ids  # handed once here, once in the crashed process
    dead = _dead_entries(redis_client)
    assert len(dead) == 1
    assert {k: dead[0][k] for k in original} == original
    assert int(dead[0]["deliveries"]) == 2
    assert "still cannot handle it" in _text(dead[0]["error"])
    assert _pending(redis_client) == {}
    assert redis_client.xlen(KEY) == 0
