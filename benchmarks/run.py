"""Entry point of ``make bench``: race fluxaorm against a baseline and SQLAlchemy.

Builds the competitors (``baseline.py``, ``fluxa.py`` twice, ``sqla.py``), runs
``harness.race`` and hands the results to ``report.py``, which writes
``benchmarks/results/latest.json``, ``table.md``, ``bench.png`` and a copy of the
chart at ``docs/img/benchmarks.png``. ``--help`` lists the options.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pymysql

from benchmarks import report
from benchmarks.baseline import Baseline
from benchmarks.fluxa import Fluxa
from benchmarks.harness import Plan, race
from benchmarks.sqla import SQLAlchemyORM
from benchmarks.verify import Checker
from benchmarks.workload import Competitor, Config

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOCS_CHART = ROOT / "docs" / "img" / "benchmarks.png"
KEYS = ("baseline", "fluxaorm", "fluxaorm-no-outbox", "sqlalchemy")


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Race fluxaorm against a pymysql + redis-py baseline and SQLAlchemy."
    )
    parser.add_argument(
        "--runs", type=int, default=None, help="timed rounds (default 5, --quick: 2)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: N=200, batches 100 and 20; leaves docs/img alone",
    )
    parser.add_argument("--rows", type=int, default=None, help="N (default 10000)")
    parser.add_argument(
        "--batches",
        default=None,
        help="comma-separated rows per flush / events per consume (default 1000,100)",
    )
    parser.add_argument(
        "--only",
        default=",".join(KEYS),
        help=f"comma-separated competitors (default all: {','.join(KEYS)})",
    )
    parser.add_argument(
        "--no-profile",
        action="store_true",
        help="skip the untimed pass that counts round trips and traces memory",
    )
    parser.add_argument(
        "--pyinstrument",
        default="",
        help="comma-separated competitors to profile with pyinstrument (largest batch)",
    )
    return parser.parse_args(argv)


def _competitors(keys: list[str], config: Config, checker: Checker) -> list[Competitor]:
    """Build the competitors in ``keys`` order; fluxaorm's schema sync comes first."""
    unknown = [k for k in keys if k not in KEYS]
    if unknown:
        raise SystemExit(
            f"unknown competitor {unknown[0]!r}; choose from {', '.join(KEYS)}"
        )
    built: dict[str, Competitor] = {}
    if "fluxaorm" in keys or "fluxaorm-no-outbox" not in keys:
        # fluxaorm's table (and outbox) is the model every other table copies.
        built["fluxaorm"] = Fluxa(config, outbox=True)
    if "fluxaorm-no-outbox" in keys:
        built["fluxaorm-no-outbox"] = Fluxa(config, outbox=False)
    if "baseline" in keys:
        built["baseline"] = Baseline(config)
    if "sqlalchemy" in keys:
        built["sqlalchemy"] = SQLAlchemyORM(config)
    for key, competitor in built.items():
        if key not in keys:
            competitor.close()
        elif competitor.table != Fluxa.table:
            checker.create_like(competitor.table, Fluxa.table)
    return [built[k] for k in KEYS if k in keys]


def _create_database(config: Config) -> None:
    conn = pymysql.connect(**config.pymysql_kwargs(database=False), autocommit=True)
    try:
        with conn.cursor() as cursor:
            cursor.execute(
                f"CREATE DATABASE IF NOT EXISTS `{config.database}` CHARACTER SET utf8mb4"
            )
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the exit status."""
    args = _arguments(argv)
    rows = args.rows or (200 if args.quick else 10_000)
    batches = (
        tuple(int(b) for b in args.batches.split(","))
        if args.batches
        else ((100, 20) if args.quick else (1000, 100))
    )
    runs = args.runs if args.runs is not None else (2 if args.quick else 5)
    keys = [k for k in args.only.split(",") if k]
    plan = Plan(
        rows=rows,
        batches=tuple(sorted(batches, reverse=True)),
        runs=runs,
        profile=not args.no_profile,
        pyinstrument=tuple(k for k in args.pyinstrument.split(",") if k),
        pyinstrument_dir=RESULTS,
    )
    config = Config.from_env()
    _create_database(config)
    checker = Checker(config)
    RESULTS.mkdir(parents=True, exist_ok=True)
    machine = report.machine_info(checker.server_versions())
    competitors = _competitors(keys, config, checker)
    print(
        f"N={plan.rows:,} batches={plan.batches} runs={plan.runs} "
        f"competitors={', '.join(c.key for c in competitors)}; "
        f"{config!r}"
    )
    try:
        results = race(competitors, checker, plan)
    finally:
        for competitor in competitors:
            competitor.close()
        checker.close()
    data = {
        "plan": {
            "rows": plan.rows,
            "batches": list(plan.batches),
            "runs": plan.runs,
            "quick": args.quick,
        },
        "machine": machine,
        "competitors": {c.key: c.label for c in competitors},
        **results,
    }
    data["summary"] = report.summarize(data)
    report.write_json(RESULTS / "latest.json", data)
    (RESULTS / "table.md").write_text(report.markdown_table(data))
    charts = [RESULTS / "bench.png"]
    if not args.quick:
        charts.append(DOCS_CHART)
    report.chart(data, charts)
    print(report.summary_text(data))
    print(
        f"wrote {RESULTS / 'latest.json'}, {RESULTS / 'table.md'}, "
        + ", ".join(map(str, charts))
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
