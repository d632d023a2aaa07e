"""The race: runs every competitor through the workload, times it, checks it, counts it.

``run.py`` builds the competitors and calls :func:`race`; ``report.py`` turns the
returned results into JSON, a table and a chart. One *lifecycle* is insert N,
consume N (when the competitor has a consumer), update N, delete N, each step
checked by ``verify.Checker`` before its figure counts.
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

from .verify import Checker
from .workload import ALL_STREAM, Competitor, Values, make_values

__all__ = ["OPERATIONS", "Plan", "race"]

OPERATIONS = ("insert", "update", "delete", "consume")
Step = Callable[[str], AbstractContextManager[None]]
_WARMUP_ROWS = 200


@attrs.frozen
class Plan:
    """What to run.

    Attributes:
        rows: N, the rows each step handles.
        batches: rows per flush (and events per consume call), largest first.
        runs: timed repetitions of every competitor at every batch size.
        profile: also run an untimed pass that counts and traces memory.
        pyinstrument: keys of competitors to profile with pyinstrument (largest
            batch, one untimed lifecycle), written to ``pyinstrument_dir``.
        pyinstrument_dir: where the pyinstrument reports go.
    """

    rows: int
    batches: tuple[int, ...]
    runs: int
    profile: bool = True
    pyinstrument: tuple[str, ...] = ()
    pyinstrument_dir: Path = Path(".")


def lifecycle(
    competitor: Competitor,
    checker: Checker,
    values: Sequence[Values],
    batch: int,
    step: Step,
) -> float:
    """Run insert, consume, update and delete once, checking each step.

    Returns:
        Redis bytes per entry of ``dirty_BenchAll`` after the insert step.
    """
    who = f"{competitor.key} (batch {batch})"
    checker.reset(competitor.table)
    with step("insert"):
        ids = competitor.insert(values, batch)
    rows = checker.after_insert(who, competitor.table, ids, values)
    per_entry = checker.bytes_per_entry(ALL_STREAM)
    if competitor.consumes:
        with step("consume"):
            consumed = competitor.consume(len(values), batch)
        checker.after_consume(who, competitor.events(consumed), rows)
        del consumed
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


def _timer(out: dict[str, float], settle: Callable[[], None] = lambda: None) -> Step:
    @contextmanager
    def step(operation: str) -> Iterator[None]:
        settle()
        gc.collect()
        start = time.perf_counter()
        yield
        out[operation] = time.perf_counter() - start

    return step


def _profiler(competitor: Competitor, out: dict[str, dict[str, Any]]) -> Step:
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
            "sql": counts[0].sql,
            "redis": counts[0].redis,
            "peak_bytes": peak,
        }
        after = executes()
        if before is not None and after is not None:
            out[operation]["cursor_executes"] = after - before

    return step


def _pyinstrument(
    competitor: Competitor, checker: Checker, values: list[Values], plan: Plan
) -> Path:
    from pyinstrument import Profiler

    batch = plan.batches[0]
    sections: list[str] = []

    @contextmanager
    def step(operation: str) -> Iterator[None]:
        profiler = Profiler(interval=0.0005)
        profiler.start()
        yield
        profiler.stop()
        sections.append(f"### {operation}\n\n{profiler.output_text(unicode=True)}")

    lifecycle(competitor, checker, values, batch, step)
    path = plan.pyinstrument_dir / f"pyinstrument-{competitor.key}-batch{batch}.txt"
    path.write_text("\n".join(sections))
    return path


def race(
    competitors: Sequence[Competitor],
    checker: Checker,
    plan: Plan,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Warm up, profile (untimed), then time ``plan.runs`` interleaved rounds.

    Each round runs every batch size and, within it, every competitor once; the
    competitors' order rotates from round to round so none always goes first.

    Returns:
        ``{"runs": [...], "profile": {...}, "pyinstrument": [...]}`` (see report.py).
    """
    started = time.perf_counter()

    def note(message: str) -> None:
        log(f"[{time.perf_counter() - started:6.1f}s] {message}")

    values = make_values(plan.rows)
    warm = make_values(_WARMUP_ROWS)
    for competitor in competitors:
        lifecycle(competitor, checker, warm, _WARMUP_ROWS // 2, _timer({}))
    note(f"warmed up {len(competitors)} competitors")

    reports = []
    for competitor in competitors:
        if competitor.key in plan.pyinstrument:
            path = _pyinstrument(competitor, checker, values, plan)
            reports.append(str(path))
            note(f"pyinstrument report: {path}")

    profile: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    if plan.profile:
        tracemalloc.start()
        try:
            for batch in plan.batches:
                by_competitor = profile.setdefault(str(batch), {})
                for competitor in competitors:
                    steps: dict[str, dict[str, Any]] = {}
                    lifecycle(
                        competitor, checker, values, batch, _profiler(competitor, steps)
                    )
                    by_competitor[competitor.key] = steps
                note(f"profiled batch {batch}: counts and peak memory")
        finally:
            tracemalloc.stop()

    runs: list[dict[str, Any]] = []
    for run in range(plan.runs):
        shift = run % len(competitors)
        order = [*competitors[shift:], *competitors[:shift]]
        for batch in plan.batches:
            seconds: dict[str, dict[str, float]] = {}
            per_entry: dict[str, float] = {}
            for competitor in order:
                times: dict[str, float] = {}
                per_entry[competitor.key] = lifecycle(
                    competitor, checker, values, batch, _timer(times, checker.settle)
                )
                seconds[competitor.key] = times
            runs.append(
                {
                    "run": run,
                    "batch": batch,
                    "order": [c.key for c in order],
                    "seconds": seconds,
                    "redis_bytes_per_entry": per_entry,
                }
            )
            shown = "  ".join(
                f"{key} {sum(t.values()):.2f}s" for key, t in seconds.items()
            )
            note(f"run {run + 1}/{plan.runs} batch {batch}: {shown}")
    return {"runs": runs, "profile": profile, "pyinstrument": reports}
