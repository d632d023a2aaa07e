"""Entry point of ``make bench``: race fluxaorm against a baseline and SQLAlchemy.

Builds the flushing competitors (``baseline.py``, ``fluxa.py`` twice, ``sqla.py``)
and the consumers (the hand-written pipelined one of ``baseline.py``, fluxaorm's
``consume()`` and ``run()`` of ``fluxa.py``), runs ``harness.race`` and hands the
results to ``report.py``, which writes ``benchmarks/results/latest.json``,
``table.md``, ``bench.png`` and a copy of the chart at
``docs/img/benchmarks.png``. ``--only cluster`` runs the Redis Cluster scenario
of ``cluster.py`` instead (not part of the default run). ``--help`` lists the
options.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import NamedTuple

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pymysql

from benchmarks import cluster, report
from benchmarks.baseline import Baseline, PipelinedConsumer
from benchmarks.fluxa import Fluxa, FluxaConsumer
from benchmarks.harness import Plan, race
from benchmarks.sqla import SQLAlchemyORM
from benchmarks.verify import Checker
from benchmarks.workload import Competitor, Config, Consumer

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOCS_CHART = ROOT / "docs" / "img" / "benchmarks.png"
FLUSHERS = ("baseline", "fluxaorm", "fluxaorm-no-outbox", "sqlalchemy")
CONSUMERS = ("baseline-consumer", "fluxaorm-consume", "fluxaorm-run")
KEYS = FLUSHERS + CONSUMERS
# (rows per flush, N): the sizes applications flush, and bulk.
SIZES = "1:1000,10:1000,100:10000,1000:10000"
QUICK_SIZES = "1:50,10:100,100:200"


def _sizes(text: str) -> tuple[tuple[int, int], ...]:
    """Parse ``ROWS_PER_FLUSH:N,...`` into ``(rows per flush, N)`` pairs, smallest first."""
    sizes = []
    for item in text.split(","):
        batch_text, _, rows_text = item.strip().partition(":")
        try:
            batch, rows = int(batch_text), int(rows_text)
        except ValueError:
            raise SystemExit(
                f"--sizes: {item!r} is not ROWS_PER_FLUSH:N (e.g. 10:1000)"
            ) from None
        if batch < 1 or rows < 1:
            raise SystemExit(f"--sizes: {item!r} needs positive numbers")
        sizes.append((batch, rows))
    return tuple(sorted(sizes))


def _numbers(option: str, text: str) -> tuple[int, ...]:
    try:
        found = tuple(sorted(int(x) for x in text.split(",") if x.strip()))
    except ValueError:
        raise SystemExit(f"{option}: {text!r} is not comma-separated numbers") from None
    if any(n < 1 for n in found):
        raise SystemExit(f"{option}: {text!r} needs positive numbers")
    return found


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
        help=f"smoke test: sizes {QUICK_SIZES}, consume 20,100 of 200 events; "
        "leaves docs/img alone",
    )
    parser.add_argument(
        "--sizes",
        default=None,
        help=f"comma-separated ROWS_PER_FLUSH:N of the flush steps (default {SIZES})",
    )
    parser.add_argument(
        "--consume-sizes",
        default=None,
        help="comma-separated events per consume call (default 100,1000)",
    )
    parser.add_argument(
        "--consume-rows",
        type=int,
        default=None,
        help="events in the consumed stream (default 10000)",
    )
    parser.add_argument(
        "--only",
        default=",".join(KEYS),
        help=f"comma-separated competitors and consumers (default all: {','.join(KEYS)}); "
        "or cluster: a flush across 100 streams on a Redis Cluster against one server",
    )
    parser.add_argument(
        "--mysql-url",
        default=None,
        help="MySQL URL of the benchmark's own database (default "
        "$FLUXAORM_BENCH_MYSQL_URL, else mysql://root@127.0.0.1:3306/bench)",
    )
    parser.add_argument(
        "--redis-url",
        default=None,
        help="Redis URL of the benchmark's own DB (default $FLUXAORM_BENCH_REDIS_URL, "
        "else redis://127.0.0.1:6379/8)",
    )
    parser.add_argument(
        "--cluster-url",
        default=None,
        help="with --only cluster: a redis+cluster:// URL to use (default: start a "
        "throwaway cluster of three masters with a replica each on loopback ports)",
    )
    parser.add_argument(
        "--cluster-rows",
        default=None,
        help="with --only cluster: comma-separated rows per flush (default 1,10,100; "
        "each row feeds 100 streams)",
    )
    parser.add_argument(
        "--no-profile",
        action="store_true",
        help="skip the untimed pass that counts round trips and traces memory",
    )
    parser.add_argument(
        "--pyinstrument",
        default="",
        help="comma-separated competitors or consumers to profile with pyinstrument "
        "(largest size)",
    )
    return parser.parse_args(argv)


class _Built(NamedTuple):
    competitors: list[Competitor]
    consumers: list[Consumer]
    source: Fluxa
    owned: list[Competitor | Consumer]


def _build(keys: list[str], config: Config, checker: Checker) -> _Built:
    """Build what ``keys`` names; fluxaorm's schema sync comes first.

    fluxaorm with its outbox on is always built: its table (and outbox) is the
    model every other table copies, and its insert step fills the stream every
    consumer reads.
    """
    unknown = [k for k in keys if k not in KEYS]
    if unknown:
        raise SystemExit(
            f"unknown competitor {unknown[0]!r}; choose from {', '.join(KEYS)}"
        )
    checker.clear_outbox()
    source = Fluxa(config, outbox=True)
    checker.unpublished = source.unpublished
    built: dict[str, Competitor] = {"fluxaorm": source}
    if "fluxaorm-no-outbox" in keys:
        built["fluxaorm-no-outbox"] = Fluxa(config, outbox=False)
    if "baseline" in keys:
        built["baseline"] = Baseline(config)
    if "sqlalchemy" in keys:
        built["sqlalchemy"] = SQLAlchemyORM(config)
    for competitor in built.values():
        if competitor.table != Fluxa.table:
            checker.create_like(competitor.table, Fluxa.table)
    consumers: dict[str, Consumer] = {}
    if "baseline-consumer" in keys:
        consumers["baseline-consumer"] = PipelinedConsumer(config)
    for mode in ("consume", "run"):
        if f"fluxaorm-{mode}" in keys:
            consumers[f"fluxaorm-{mode}"] = FluxaConsumer(source.engine, mode=mode)
    return _Built(
        competitors=[built[k] for k in FLUSHERS if k in keys],
        consumers=[consumers[k] for k in CONSUMERS if k in keys],
        source=source,
        owned=[*consumers.values(), *built.values()],
    )


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
    began = time.perf_counter()
    sizes = _sizes(args.sizes or (QUICK_SIZES if args.quick else SIZES))
    consume_sizes = _numbers(
        "--consume-sizes",
        args.consume_sizes or ("20,100" if args.quick else "100,1000"),
    )
    consume_rows = args.consume_rows or (200 if args.quick else 10_000)
    runs = args.runs if args.runs is not None else (2 if args.quick else 5)
    keys = [k for k in args.only.split(",") if k]
    if keys == ["cluster"]:
        config = Config.from_env(args.mysql_url, args.redis_url)
        _create_database(config)
        cluster.run(
            config,
            cluster_url=args.cluster_url,
            rows=_numbers(
                "--cluster-rows",
                args.cluster_rows or ("1,10" if args.quick else "1,10,100"),
            ),
            flushes=5 if args.quick else 20,
            runs=runs,
            results=RESULTS,
        )
        print(f"wrote {RESULTS / 'cluster.json'}, {RESULTS / 'cluster.md'}")
        return 0
    plan = Plan(
        sizes=sizes,
        consume_sizes=consume_sizes,
        consume_rows=consume_rows,
        runs=runs,
        profile=not args.no_profile,
        pyinstrument=tuple(k for k in args.pyinstrument.split(",") if k),
        pyinstrument_dir=RESULTS,
    )
    config = Config.from_env(args.mysql_url, args.redis_url)
    _create_database(config)
    checker = Checker(config)
    RESULTS.mkdir(parents=True, exist_ok=True)
    machine = report.machine_info(checker.server_versions())
    built = _build(keys, config, checker)
    print(
        "sizes (rows per flush: N) "
        + ", ".join(f"{b}: {n:,}" for b, n in plan.sizes)
        + f"; consume {', '.join(map(str, plan.consume_sizes))} per call of "
        f"{plan.consume_rows:,}; runs={plan.runs}; "
        f"competitors={', '.join(c.key for c in built.competitors)}; "
        f"consumers={', '.join(c.key for c in built.consumers)}; {config!r}"
    )
    try:
        results = race(built.competitors, built.consumers, built.source, checker, plan)
    finally:
        for owned in built.owned:
            owned.close()
        checker.close()
    seconds = time.perf_counter() - began
    data = {
        "plan": {
            "sizes": [list(size) for size in plan.sizes],
            "consume_sizes": list(plan.consume_sizes),
            "consume_rows": plan.consume_rows,
            "runs": plan.runs,
            "profile_flushes": plan.profile_flushes,
            "quick": args.quick,
            "wall_seconds": round(seconds, 1),
        },
        "machine": machine,
        "competitors": {c.key: c.label for c in built.competitors},
        "consumers": {c.key: c.label for c in built.consumers},
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
        + f" in {seconds / 60:.1f} minutes"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
