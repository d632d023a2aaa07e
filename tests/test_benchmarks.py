"""The benchmark harness (``benchmarks/``): what ``make bench`` measures and counts.

The harness checks every step it times against MySQL and the streams itself; these
tests pin what its tables claim: the hand-written consumer's one round trip per
batch, fluxaorm's ``run()`` stopping once every event was handled, the per-flush
counts and the per-run ratios. They use the test servers (``conftest.py``) and
none of the ``bench`` extras (SQLAlchemy, matplotlib, pyinstrument).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import pytest

from benchmarks import report
from benchmarks.baseline import Baseline, PipelinedConsumer
from benchmarks.fluxa import Fluxa, FluxaConsumer
from benchmarks.harness import Plan, Stream, _slices, consume_step, fill_stream, race
from benchmarks.verify import Checker
from benchmarks.workload import Config, Consumer, make_values
from tests.conftest import MYSQL_URL, REDIS_URL


@pytest.fixture
def config(clean: None) -> Config:
    """The benchmark's configuration on the test servers (emptied first)."""
    return Config.from_env(MYSQL_URL, REDIS_URL)


@pytest.fixture
def checker(config: Config) -> Iterator[Checker]:
    """The benchmark's own checker of rows and streams."""
    found = Checker(config)
    yield found
    found.close()


@pytest.fixture
def source(config: Config, checker: Checker) -> Iterator[Fluxa]:
    """fluxaorm with its outbox on: the table model and the stream's writer."""
    fluxa = Fluxa(config, outbox=True)
    checker.unpublished = fluxa.unpublished
    yield fluxa
    fluxa.close()


@pytest.fixture
def stream(source: Fluxa, checker: Checker) -> Stream:
    """250 ``add`` entries written by fluxaorm's flush, kept to be put back."""
    return fill_stream(source, checker, make_values(250))


def test_hand_written_consumer_takes_one_round_trip_per_batch(
    config: Config, checker: Checker, stream: Stream
) -> None:
    """The baseline consumer sends each batch's XACK + XDEL with the next XREADGROUP."""
    consumer = PipelinedConsumer(config)
    try:
        # The first consume opens the connection (its handshake is not counted).
        consume_step(consumer, checker, stream, 100, lambda _: nullcontext())
        checker.restore_stream("dirty_BenchAll", stream.dumped)
        with consumer.counting() as counts:
            consumed = consumer.consume(250, 100)
        # XGROUP CREATE, the first XREADGROUP, then one pipeline per batch of 100.
        assert counts[0].redis == 2 + math.ceil(250 / 100)
        assert counts[0].statements == counts[0].mysql == 0
        # Every event typed, nothing left in the stream or pending.
        checker.after_consume(
            "baseline-consumer", consumer.events(consumed), stream.rows
        )
    finally:
        consumer.close()


@pytest.mark.parametrize("mode", ["consume", "run"])
def test_fluxaorm_consumers_hand_over_every_event_once(
    source: Fluxa, checker: Checker, stream: Stream, mode: str
) -> None:
    """consume() calls and run() (stopped by its handler) read all N events, typed."""
    consumer = FluxaConsumer(source.engine, mode=mode)
    steps: list[str] = []

    def step(operation: str) -> AbstractContextManager[None]:
        steps.append(operation)
        return nullcontext()

    consume_step(consumer, checker, stream, 100, step)
    assert steps == ["consume"]


_MACHINE = {
    "cpu": "test",
    "cores": 1,
    "platform": "test",
    "python": "test",
    "mysql": "test",
    "redis": "test",
    "packages": {},
    "load_average": [0.0],
    "date": "today",
}


def test_race_reports_ratios_and_counts_per_flush(
    config: Config, checker: Checker, source: Fluxa
) -> None:
    """A tiny race gives per-run ratios and the baseline's 2 MySQL + 1 Redis trips per insert."""
    baseline = Baseline(config)
    consumers: list[Consumer] = [
        PipelinedConsumer(config),
        FluxaConsumer(source.engine, mode="consume"),
        FluxaConsumer(source.engine, mode="run"),
    ]
    checker.create_like(baseline.table, Fluxa.table)
    plan = Plan(
        sizes=((1, 6), (10, 40)),
        consume_sizes=(5,),
        consume_rows=12,
        runs=2,
        profile_flushes=3,
    )
    try:
        results = race(
            [baseline, source], consumers, source, checker, plan, log=lambda _: None
        )
    finally:
        baseline.close()
        for consumer in consumers:
            consumer.close()
    data: dict[str, Any] = {
        "plan": {
            "sizes": [list(size) for size in plan.sizes],
            "consume_sizes": list(plan.consume_sizes),
            "consume_rows": plan.consume_rows,
            "runs": plan.runs,
            "profile_flushes": plan.profile_flushes,
        },
        "competitors": {"baseline": "baseline", "fluxaorm": "fluxaorm"},
        "consumers": {c.key: c.label for c in consumers},
        **results,
    }
    summary = report.summarize(data)
    insert = summary["flush"]["1"]["insert"]
    # INSERT + COMMIT, then one pipeline of XADDs: per flush, over 3 profiled flushes.
    assert insert["baseline"]["per"] == {"statements": 2, "mysql": 2, "redis": 1}
    assert insert["baseline"]["counts"]["statements"] == 2 * 3
    assert insert["fluxaorm"]["per"]["redis"] == 1
    # Each ratio is the median of this run's fluxaorm time over this run's baseline.
    ratios = sorted(
        r["seconds"]["fluxaorm"]["insert"] / r["seconds"]["baseline"]["insert"]
        for r in results["runs"]
        if r["kind"] == "flush" and r["batch"] == 1
    )
    assert insert["fluxaorm"]["vs_baseline"]["median"] == pytest.approx(
        (ratios[0] + ratios[1]) / 2
    )
    consume = summary["consume"]["5"]
    assert set(consume) == {"baseline-consumer", "fluxaorm-consume", "fluxaorm-run"}
    assert consume["baseline-consumer"]["counts"]["redis"] == 2 + math.ceil(12 / 5)
    assert "vs_baseline" in consume["fluxaorm-run"]
    table = report.markdown_table({**data, "summary": summary, "machine": _MACHINE})
    assert "| 1 | insert | 2 (2) / 1 |" in table


def test_cluster_scenario_counts_one_round_trip_per_master(
    config: Config, redis_cluster: Any, tmp_path: Any
) -> None:
    """--only cluster: the 100-stream flush makes 1 round trip on one server and 3
    on the three masters, with the same entries; its table is written."""
    from benchmarks import cluster

    data = cluster.run(
        config,
        cluster_url=redis_cluster.url,
        rows=(2,),
        flushes=2,
        runs=1,
        results=tmp_path,
    )
    sizes = data["sizes"]["2"]
    assert sizes["single"]["redis_round_trips"] == 1
    assert sizes["cluster"]["redis_round_trips"] == 3
    assert sizes["cluster-no-wait"]["redis_round_trips"] == 3
    # 200 XADDs and 100 records (and maybe a cleanup's ZREMs); and with the
    # default a WAIT per master, unless one timed out on this loaded machine
    assert sizes["single"]["redis_commands"] >= 300
    assert sizes["cluster-no-wait"]["redis_commands"] >= 300
    assert sizes["cluster"]["redis_commands"] >= 300
    assert "Redis Cluster, wait_replicas=1" in (tmp_path / "cluster.md").read_text()


@pytest.mark.parametrize(
    ("rows", "batch", "sizes"),
    [
        (1000, 1, [200] * 5),  # five slices of 200 one-row flushes
        (1000, 10, [200] * 5),
        (10000, 100, [2000] * 5),
        (10000, 1000, [10000]),  # 10 flushes: too few to slice
        (95, 1, [24, 24, 24, 23]),  # 95 flushes: four slices of at least 20
        (1001, 1, [201, 201, 201, 201, 197]),  # a short last slice
        (205, 10, [205]),  # 21 flushes (the last of 5 rows): one slice
    ],
)
def test_a_flush_step_is_timed_in_interleaved_slices_of_whole_flushes(
    rows: int, batch: int, sizes: list[int]
) -> None:
    """The harness cuts a step's rows into up to five slices that every
    competitor takes in turn: each slice holds whole flushes and, together, the
    slices hold every row once, in order."""
    values = make_values(rows)
    parts = _slices(values, batch)
    assert [len(p) for p in parts] == sizes
    assert [v for p in parts for v in p] == values
    assert all(len(p) % batch == 0 for p in parts[:-1])
