"""The race: runs every competitor through the workload, times it, checks it, counts it.

``run.py`` builds the competitors and calls :func:`race`; ``report.py`` turns the
returned results into JSON, tables and a chart. Two kinds of steps run:

- a *lifecycle* of a flushing competitor: insert N, update N, delete N at one
  size (rows per flush), each step checked by ``verify.Checker`` before its
  figure counts;
- a *consume* step of a consumer: ``dirty_BenchAll`` is put back as one
  fluxaorm insert step left it (N ``add`` entries, ``DUMP``/``RESTORE``), then
  the consumer reads every entry, ``batch`` per call; its events are checked
  against the rows and the stream must be left empty, nothing pending.
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import attrs

from .verify import Checker, Row
from .workload import ALL_STREAM, Competitor, Consumer, Values, make_values

__all__ = ["CONSUME", "FLUSH_OPERATIONS", "Plan", "race"]

FLUSH_OPERATIONS = ("insert", "update", "delete")
CONSUME = "consume"
Step = Callable[[str], AbstractContextManager[None]]
_WARMUP = ((200, 100), (20, 1))  # (rows, rows per flush) of the untimed warm-up
_SOURCE_BATCH = 1000  # rows per flush of the insert that fills the consumed stream


@attrs.frozen
class Plan:
    """What to run.

    Attributes:
        sizes: ``(rows per flush, N)`` pairs of the flushing steps.
        consume_sizes: events per consume call of the consume steps.
        consume_rows: N of the consume steps (events in the stream).
        runs: timed repetitions of every competitor at every size.
        profile: also run an untimed pass that counts and traces memory.
        profile_flushes: how many flushes the untimed pass makes at each size
            (``min(N, profile_flushes x rows per flush)`` rows): counts per
            flush do not depend on N, and tracing memory slows Python down.
        pyinstrument: keys of competitors (or consumers) to profile with
            pyinstrument at the largest size, written to ``pyinstrument_dir``.
        pyinstrument_dir: where the pyinstrument reports go.
    """

    sizes: tuple[tuple[int, int], ...]
    consume_sizes: tuple[int, ...]
    consume_rows: int
    runs: int
    profile: bool = True
    profile_flushes: int = 10
    pyinstrument: tuple[str, ...] = ()
    pyinstrument_dir: Path = Path(".")


def lifecycle(
    competitor: Competitor,
    checker: Checker,
    values: Sequence[Values],
    batch: int,
    step: Step,
) -> float:
    """Run insert, update and delete once, checking each step.

    Returns:
        Redis bytes per entry of ``dirty_BenchAll`` after the insert step.
    """
    who = f"{competitor.key} ({batch} per flush)"
    checker.reset(competitor.table)
    with step("insert"):
        ids = competitor.insert(values, batch)
    rows = checker.after_insert(who, competitor.table, ids, values)
    per_entry = checker.bytes_per_entry(ALL_STREAM)
    checker.clear_streams()
    with step("update"):
        competitor.update(ids, batch)
    rows = checker.after_update(who, competitor.table, rows)
    checker.clear_streams()
    with step("delete"):
        competitor.delete(ids, batch)
    checker.after_delete(who, competitor.table, rows)
    checker.clear_streams()
    return per_entry


@attrs.frozen
class Stream:
    """The entries every consumer reads: a ``DUMP`` of ``dirty_BenchAll`` and its rows."""

    dumped: bytes
    rows: list[Row]


def fill_stream(
    source: Competitor, checker: Checker, values: Sequence[Values]
) -> Stream:
    """Insert ``values`` with ``source`` (checked) and keep what ``dirty_BenchAll`` got."""
    checker.reset(source.table)
    ids = source.insert(values, _SOURCE_BATCH)
    rows = checker.after_insert(
        f"{source.key} (filling the consumed stream)", source.table, ids, values
    )
    dumped = checker.dump_stream(ALL_STREAM)
    checker.reset(source.table)
    return Stream(dumped, rows)


def consume_step(
    consumer: Consumer, checker: Checker, stream: Stream, batch: int, step: Step
) -> None:
    """Put the stream back, consume every entry ``batch`` per call, check the events."""
    checker.restore_stream(ALL_STREAM, stream.dumped)
    with step(CONSUME):
        consumed = consumer.consume(len(stream.rows), batch)
    checker.after_consume(
        f"{consumer.key} ({batch} per call)", consumer.events(consumed), stream.rows
    )
    del consumed
    checker.clear_streams()


def _timer(out: dict[str, float], settle: Callable[[], None] = lambda: None) -> Step:
    @contextmanager
    def step(operation: str) -> Iterator[None]:
        settle()
        gc.collect()
        start = time.perf_counter()
        yield
        out[operation] = time.perf_counter() - start

    return step


def _profiler(
    competitor: Competitor | Consumer, out: dict[str, dict[str, Any]]
) -> Step:
    """Count statements/round trips and trace the Python heap's peak per step."""

    def executes() -> int | None:
        # SQLAlchemy only: how often it called cursor.execute/executemany.
        found: int | None = getattr(competitor, "cursor_executes", None)
        return found

    @contextmanager
    def step(operation: str) -> Iterator[None]:
        gc.collect()
        before = executes()
        with competitor.counting() as counts:
            tracemalloc.reset_peak()
            start = tracemalloc.get_traced_memory()[0]
            yield
            peak = tracemalloc.get_traced_memory()[1] - start
        out[operation] = {
            "statements": counts[0].statements,
            "mysql": counts[0].mysql,
            "redis": counts[0].redis,
            "peak_bytes": peak,
        }
        after = executes()
        if before is not None and after is not None:
            out[operation]["cursor_executes"] = after - before

    return step


def _pyinstrument_step(sections: list[str]) -> Step:
    from pyinstrument import Profiler

    @contextmanager
    def step(operation: str) -> Iterator[None]:
        profiler = Profiler(interval=0.0005)
        profiler.start()
        yield
        profiler.stop()
        sections.append(f"### {operation}\n\n{profiler.output_text(unicode=True)}")

    return step


# Each consume step of a run is timed this many times, interleaved (see race()).
_CONSUME_REPEATS = 3
# Each flush step of a run is timed in up to this many interleaved slices, each
# of at least _SLICE_FLUSHES flushes (see race()).
_SLICES = 5
_SLICE_FLUSHES = 20


def _slices(values: Sequence[Values], batch: int) -> list[Sequence[Values]]:
    """Cut ``values`` into up to :data:`_SLICES` parts of whole flushes."""
    flushes = -(-len(values) // batch)
    count = max(1, min(_SLICES, flushes // _SLICE_FLUSHES))
    size = -(-flushes // count) * batch
    return [values[i : i + size] for i in range(0, len(values), size)]


def _rotated(items: Sequence[Any], run: int) -> list[Any]:
    shift = run % len(items) if items else 0
    return [*items[shift:], *items[:shift]]


def race(
    competitors: Sequence[Competitor],
    consumers: Sequence[Consumer],
    source: Competitor | None,
    checker: Checker,
    plan: Plan,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Warm up, profile (untimed), then time ``plan.runs`` interleaved rounds.

    Each round runs every flush size and, within it, every competitor once, then
    every consume size and, within it, every consumer once; the order of the
    competitors (and of the consumers) rotates from round to round so none
    always goes first. A flush size's N rows go in up to five slices, every
    competitor taking its turn at each slice (its times summed over the slices),
    so the competitors share the machine's slow spells instead of one of them
    getting a whole spell; each consume step is taken three times in turn and
    its mean kept, for the same reason.

    Args:
        competitors: the flushing competitors.
        consumers: the consumers.
        source: the competitor whose insert step fills the consumed stream
            (fluxaorm, so every consumer reads what fluxaorm writes); needed
            when ``consumers`` is not empty.
        checker: checks every step.
        plan: what to run.
        log: where progress lines go.

    Returns:
        ``{"runs": [...], "profile": {"flush": ..., "consume": ...},
        "pyinstrument": [...]}`` (see report.py).
    """
    started = time.perf_counter()

    def note(message: str) -> None:
        log(f"[{time.perf_counter() - started:6.1f}s] {message}")

    values_of: dict[int, list[Values]] = {}

    def values(n: int) -> list[Values]:
        if n not in values_of:
            values_of[n] = make_values(n)
        return values_of[n]

    for competitor in competitors:
        for rows, batch in _WARMUP:
            lifecycle(competitor, checker, values(rows), batch, _timer({}))
    stream: Stream | None = None
    if consumers:
        if source is None:
            raise ValueError("consumers need a source competitor to fill the stream")
        stream = fill_stream(source, checker, values(plan.consume_rows))
        for consumer in consumers:
            consume_step(consumer, checker, stream, max(plan.consume_sizes), _timer({}))
    note(f"warmed up {len(competitors)} competitors and {len(consumers)} consumers")

    reports: list[str] = []

    def keep(key: str, batch: int, sections: list[str]) -> None:
        path = plan.pyinstrument_dir / f"pyinstrument-{key}-batch{batch}.txt"
        path.write_text("\n".join(sections))
        reports.append(str(path))
        note(f"pyinstrument report: {path}")

    for competitor in competitors:
        if competitor.key in plan.pyinstrument:
            sections: list[str] = []
            batch, n = max(plan.sizes)
            step = _pyinstrument_step(sections)
            lifecycle(competitor, checker, values(n), batch, step)
            keep(competitor.key, batch, sections)
    for consumer in consumers:
        if consumer.key in plan.pyinstrument and stream is not None:
            sections = []
            batch = max(plan.consume_sizes)
            consume_step(consumer, checker, stream, batch, _pyinstrument_step(sections))
            keep(consumer.key, batch, sections)

    profile: dict[str, dict[str, dict[str, dict[str, Any]]]] = {
        "flush": {},
        "consume": {},
    }
    if plan.profile:
        tracemalloc.start()
        try:
            for batch, n in plan.sizes:
                by_competitor = profile["flush"].setdefault(str(batch), {})
                for competitor in competitors:
                    steps: dict[str, dict[str, Any]] = {}
                    lifecycle(
                        competitor,
                        checker,
                        values(min(n, batch * plan.profile_flushes)),
                        batch,
                        _profiler(competitor, steps),
                    )
                    by_competitor[competitor.key] = steps
            if stream is not None:
                for batch in plan.consume_sizes:
                    by_consumer = profile["consume"].setdefault(str(batch), {})
                    for consumer in consumers:
                        steps = {}
                        consume_step(
                            consumer, checker, stream, batch, _profiler(consumer, steps)
                        )
                        by_consumer[consumer.key] = steps
            note("profiled every size: counts and peak memory")
        finally:
            tracemalloc.stop()

    runs: list[dict[str, Any]] = []
    for run in range(plan.runs):
        for batch, n in plan.sizes:
            order = _rotated(competitors, run)
            seconds: dict[str, dict[str, float]] = {c.key: {} for c in order}
            per_entry: dict[str, float] = {}
            # The N rows go in slices, every competitor taking its turn at each
            # slice: each one's time is then summed over the same few seconds
            # as the others', and a slow spell of the machine (a noisy
            # neighbour, a frequency change) weighs on all alike.
            for part in _slices(values(n), batch):
                for competitor in order:
                    times: dict[str, float] = {}
                    entry = lifecycle(
                        competitor, checker, part, batch, _timer(times, checker.settle)
                    )
                    per_entry.setdefault(competitor.key, entry)
                    total = seconds[competitor.key]
                    for operation, took in times.items():
                        total[operation] = total.get(operation, 0.0) + took
            runs.append(
                {
                    "run": run,
                    "kind": "flush",
                    "batch": batch,
                    "rows": n,
                    "order": [c.key for c in order],
                    "seconds": seconds,
                    "redis_bytes_per_entry": per_entry,
                }
            )
            shown = "  ".join(
                f"{key} {sum(t.values()):.2f}s" for key, t in seconds.items()
            )
            note(f"run {run + 1}/{plan.runs}, {batch} per flush: {shown}")
        if stream is None:
            continue
        for batch in plan.consume_sizes:
            order = _rotated(consumers, run)
            seconds = {c.key: {CONSUME: 0.0} for c in order}
            # A consume step is short (about 0.1 s): one spell of this machine's
            # noise can double it. Each consumer takes it _CONSUME_REPEATS times,
            # in turn with the others, and the run keeps the mean.
            for _ in range(_CONSUME_REPEATS):
                for consumer in order:
                    times = {}
                    consume_step(
                        consumer, checker, stream, batch, _timer(times, checker.settle)
                    )
                    seconds[consumer.key][CONSUME] += times[CONSUME] / _CONSUME_REPEATS
            runs.append(
                {
                    "run": run,
                    "kind": CONSUME,
                    "batch": batch,
                    "rows": len(stream.rows),
                    "order": [c.key for c in order],
                    "seconds": seconds,
                }
            )
            shown = "  ".join(f"{key} {t[CONSUME]:.3f}s" for key, t in seconds.items())
            note(f"run {run + 1}/{plan.runs}, consume {batch} per call: {shown}")
    return {"runs": runs, "profile": profile, "pyinstrument": reports}
