"""The Redis Cluster scenario of ``benchmarks/run.py --only cluster``.

One flush feeds 100 dirty streams; on a Redis Cluster the streams' hash slots
spread over the masters (about a third each on three), so the flush publishes
in one round trip per master, one MULTI/EXEC per slot, then WAITs for a replica.
The same flushes run, interleaved and on the same MySQL database, against one
Redis server, the cluster with ``wait_replicas=1`` (the default) and the
cluster with ``wait_replicas=0``; each flush is timed whole (MySQL transaction
and publish), and the Redis round trips are counted. Without ``--cluster-url``
a throwaway cluster (three masters, one replica each, ``tests/cluster.py``) is
started on loopback ports and removed afterwards. Writes
``benchmarks/results/cluster.json`` and ``cluster.md``.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import field, make_dataclass
from pathlib import Path
from typing import Any

import redis
import redis.cluster

import fluxaorm
from fluxaorm.testing import count_round_trips

from .report import DASH, X
from .workload import Config

__all__ = ["STREAMS", "run"]

STREAMS = 100
TABLE = "bench_cluster"
_MODES = ("single", "cluster", "cluster-no-wait")
_LABELS = {
    "single": "one Redis server",
    "cluster": "Redis Cluster, wait_replicas=1 (default)",
    "cluster-no-wait": "Redis Cluster, wait_replicas=0",
}


def _entity() -> type:
    """An entity whose every insert goes to the 100 streams ``C0`` ... ``C99``."""
    names = ",".join(f"C{i}" for i in range(STREAMS))
    cls = make_dataclass(
        "ClusterBench",
        [
            ("id", int, field(default=0, metadata={"orm": f"dirty={names}"})),
            ("name", str, field(default="", metadata={"orm": "length=100"})),
        ],
    )
    cls.__module__ = __name__
    return fluxaorm.entity(table=TABLE, name="bench.ClusterBench")(cls)


@contextmanager
def _cluster(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    from tests.cluster import ThrowawayCluster  # the repository's test helper

    with ThrowawayCluster() as cluster:
        yield cluster.url


def _engines(config: Config, cluster_url: str, cls: type) -> dict[str, fluxaorm.Engine]:
    urls = {
        "single": (config.redis_url, {}),
        "cluster": (cluster_url, {}),
        "cluster-no-wait": (cluster_url, {"wait_replicas": 0}),
    }
    engines = {}
    for mode, (url, options) in urls.items():
        registry = fluxaorm.Registry()
        registry.register_mysql(config.mysql_url)
        registry.register_redis(url, **options)
        registry.register_entity(cls)
        engines[mode] = engine = registry.validate()
        engine.sync_schema()
    return engines


def _empty(config: Config, cluster_url: str, engine: fluxaorm.Engine) -> None:
    """Empty the benchmark's streams (between runs, so streams never grow long)."""
    keys = [f"dirty_C{i}" for i in range(STREAMS)]
    with redis.Redis.from_url(config.redis_url) as client:
        client.delete(*keys)
    seed = cluster_url.split("://", 1)[1].split(",", 1)[0].split("/", 1)[0]
    host, _, port = seed.rpartition(":")
    with redis.cluster.RedisCluster(host=host, port=int(port)) as client:
        for key in keys:
            client.delete(key)
    with engine.mysql_pool("default").connection() as conn:
        conn.execute(f"DELETE FROM `{TABLE}`")


def _step(
    engine: fluxaorm.Engine, cls: type, rows: int, flushes: int
) -> dict[str, Any]:
    orm = engine.new_orm()
    times: list[float] = []
    with count_round_trips(engine) as trips:
        for _ in range(flushes):
            for n in range(rows):
                orm.new_entity(cls, name=f"r{n}")
            started = time.perf_counter()
            orm.flush()
            times.append(time.perf_counter() - started)
    xadd = [c for _, what, c in trips.entries if what == "XADD"]
    return {
        "ms": statistics.median(times) * 1000,
        "trips": len(xadd) / flushes,
        "commands": sum(xadd) / flushes,
    }


def run(
    config: Config,
    *,
    cluster_url: str | None,
    rows: tuple[int, ...],
    flushes: int,
    runs: int,
    results: Path,
) -> dict[str, Any]:
    """Run the scenario; print and write its table; return the data."""
    cls = _entity()
    began = time.perf_counter()
    with _cluster(cluster_url) as url:
        engines = _engines(config, url, cls)
        try:
            # Warm up every engine (connections, slot map) before timing.
            for engine in engines.values():
                _step(engine, cls, 1, 3)
            measured: dict[int, dict[str, list[dict[str, Any]]]] = {
                r: {m: [] for m in _MODES} for r in rows
            }
            for run_index in range(runs):
                order = _MODES[run_index % 3 :] + _MODES[: run_index % 3]
                for size in rows:
                    for mode in order:
                        _empty(config, url, engines[mode])
                        found = _step(engines[mode], cls, size, flushes)
                        measured[size][mode].append(found)
        finally:
            for engine in engines.values():
                engine.close()
    data = _summary(measured, rows, flushes, runs, time.perf_counter() - began)
    results.mkdir(parents=True, exist_ok=True)
    (results / "cluster.json").write_text(json.dumps(data, indent=2) + "\n")
    table = markdown(data)
    (results / "cluster.md").write_text(table)
    print(table)
    return data


def _summary(
    measured: dict[int, dict[str, list[dict[str, Any]]]],
    rows: tuple[int, ...],
    flushes: int,
    runs: int,
    seconds: float,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "plan": {
            "streams": STREAMS,
            "rows_per_flush": list(rows),
            "flushes": flushes,
            "runs": runs,
            "wall_seconds": round(seconds, 1),
        },
        "labels": _LABELS,
        "sizes": {},
    }
    for size in rows:
        per_mode: dict[str, Any] = {}
        for mode in _MODES:
            got = measured[size][mode]
            ratios = [g["ms"] / s["ms"] for g, s in zip(got, measured[size]["single"])]
            per_mode[mode] = {
                "median_ms": round(statistics.median(g["ms"] for g in got), 3),
                "ratio": round(statistics.median(ratios), 3),
                "ratio_min": round(min(ratios), 3),
                "ratio_max": round(max(ratios), 3),
                "redis_round_trips": got[0]["trips"],
                "redis_commands": got[0]["commands"],
            }
        out["sizes"][str(size)] = per_mode
    return out


def markdown(data: dict[str, Any]) -> str:
    """The scenario's table (Markdown)."""
    plan = data["plan"]
    lines = [
        f"A flush of N rows, each feeding {plan['streams']} streams; median of "
        f"{plan['flushes']} flushes per run, {plan['runs']} interleaved runs; the "
        "ratio is taken per run against one Redis server, then its median "
        f"(min{DASH}max).",
        "",
        "| rows per flush | stream entries | Redis | median ms per flush | "
        f"{X} one server | Redis round trips | Redis commands |",
        "|---:|---:|---|---:|---:|---:|---:|",
    ]
    for size, per_mode in data["sizes"].items():
        for mode, row in per_mode.items():
            lines.append(
                f"| {size} | {int(size) * plan['streams']:,} | {data['labels'][mode]} "
                f"| {row['median_ms']:.1f} | {row['ratio']:.2f}{X} "
                f"({row['ratio_min']:.2f}{DASH}{row['ratio_max']:.2f}) "
                f"| {row['redis_round_trips']:g} | {row['redis_commands']:,.0f} |"
            )
    return "\n".join(lines) + "\n"
