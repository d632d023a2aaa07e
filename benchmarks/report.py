"""The results: statistics, JSON, the Markdown tables, the chart and the stdout summary.

``run.py`` passes the output of ``harness.race`` here. Every ratio is computed per
run (competitor time / baseline time of the same run and size) and then
summarised by its median, so slow phases of a noisy machine hit both sides.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import statistics
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from .harness import CONSUME, FLUSH_OPERATIONS

__all__ = [
    "chart",
    "machine_info",
    "markdown_table",
    "summarize",
    "summary_text",
    "write_json",
]

BASELINE = "baseline"
BASELINE_CONSUMER = "baseline-consumer"
SQLALCHEMY = "sqlalchemy"
FLUXA = ("fluxaorm", "fluxaorm-no-outbox")
# Typographic signs of the tables and chart (escaped: ruff flags them as look-alikes).
X = "\u00d7"
DASH = "\u2013"
_PACKAGES = ("fluxaorm", "sqlalchemy", "pymysql", "redis", "hiredis", "msgpack")
_COUNTS = ("statements", "mysql", "redis")
_RATIO_TICKS = (
    0.25,
    0.35,
    0.5,
    0.6,
    0.7,
    0.8,
    0.9,
    1,
    1.25,
    1.5,
    2,
    3,
    4,
    5,
    7,
    10,
    15,
    20,
)


def machine_info(servers: dict[str, str]) -> dict[str, Any]:
    """Describe the machine, the servers and the library versions."""
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor() or "?"
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "-"
    return {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "platform": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "mysql": servers.get("mysql", "?"),
        "redis": servers.get("redis", "?"),
        "packages": versions,
    }


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def _figures(
    runs: list[dict[str, Any]],
    operation: str,
    key: str,
    references: Sequence[tuple[str, str]],
    counted: dict[str, Any] | None,
    per: int,
) -> dict[str, Any] | None:
    """Times, per-run ratios against ``references`` and counts per flush (or call)."""
    times = [
        r["seconds"][key][operation]
        for r in runs
        if operation in r["seconds"].get(key, {})
    ]
    if not times:
        return None
    figures: dict[str, Any] = {
        "ms": _spread([t * 1000 for t in times]),
        "runs": len(times),
    }
    for name, other in references:
        if key == other:
            continue
        ratios = [
            r["seconds"][key][operation] / r["seconds"][other][operation]
            for r in runs
            if operation in r["seconds"].get(other, {})
            and operation in r["seconds"].get(key, {})
        ]
        if ratios:
            figures[name] = _spread(ratios)
    if counted:
        figures["counts"] = {name: counted[name] for name in _COUNTS}
        figures["per"] = {name: counted[name] / per for name in _COUNTS}
        figures["peak_mb"] = counted["peak_bytes"] / 1_000_000
        if "cursor_executes" in counted:
            figures["cursor_executes"] = counted["cursor_executes"]
    return figures


def summarize(data: dict[str, Any]) -> dict[str, Any]:
    """Return ``{"flush": {batch: {op: {key: ...}}}, "consume": {batch: {key: ...}}}``.

    Figures: ``ms`` (median/min/max), ``vs_baseline`` (and, for fluxaorm,
    ``vs_sqlalchemy``): median/min/max of per-run ratios; from the profile pass
    ``counts`` (``statements``, ``mysql`` and ``redis`` round trips of the
    step), ``per`` (the same per flush, or per consume call) and ``peak_mb``;
    for inserts ``redis_bytes_per_entry``.
    """
    flush: dict[str, Any] = {}
    for batch, rows in data["plan"]["sizes"]:
        runs = [
            r for r in data["runs"] if r.get("kind") == "flush" and r["batch"] == batch
        ]
        profile = data["profile"]["flush"].get(str(batch), {})
        profiled = min(rows, batch * data["plan"]["profile_flushes"])
        flushes = math.ceil(profiled / batch)
        by_op: dict[str, Any] = {}
        for operation in FLUSH_OPERATIONS:
            by_comp: dict[str, Any] = {}
            for key in data["competitors"]:
                references = [("vs_baseline", BASELINE)]
                if key in FLUXA:
                    references.append(("vs_sqlalchemy", SQLALCHEMY))
                counted = profile.get(key, {}).get(operation)
                figures = _figures(runs, operation, key, references, counted, flushes)
                if figures is None:
                    continue
                if operation == "insert":
                    figures["redis_bytes_per_entry"] = statistics.median(
                        r["redis_bytes_per_entry"][key] for r in runs
                    )
                by_comp[key] = figures
            by_op[operation] = by_comp
        flush[str(batch)] = by_op
    consume: dict[str, Any] = {}
    rows = data["plan"]["consume_rows"]
    for batch in data["plan"]["consume_sizes"]:
        runs = [
            r for r in data["runs"] if r.get("kind") == CONSUME and r["batch"] == batch
        ]
        profile = data["profile"]["consume"].get(str(batch), {})
        calls = math.ceil(rows / batch)
        by_consumer: dict[str, Any] = {}
        for key in data["consumers"]:
            counted = profile.get(key, {}).get(CONSUME)
            figures = _figures(
                runs,
                CONSUME,
                key,
                [("vs_baseline", BASELINE_CONSUMER)],
                counted,
                calls,
            )
            if figures is not None:
                by_consumer[key] = figures
        consume[str(batch)] = by_consumer
    return {"flush": flush, "consume": consume}


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write the raw results and their summary."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")


def _ratio(figures: dict[str, Any] | None, *, spread: bool = True) -> str:
    if not figures:
        return "-"
    median = f"{figures['median']:.2f}{X}"
    if not spread:
        return median
    return f"{median} ({figures['min']:.2f}{DASH}{figures['max']:.2f})"


def _number(value: float) -> str:
    """``3``, ``2.5`` or ``1.02``: counts per flush, exact where they are whole."""
    return f"{value:,.0f}" if abs(value - round(value)) < 0.005 else f"{value:,.2f}"


def _trips(figures: dict[str, Any] | None) -> str:
    """``MySQL round trips (statements) / Redis round trips`` per flush or call."""
    if not figures or "per" not in figures:
        return "-"
    per = figures["per"]
    return (
        f"{_number(per['mysql'])} ({_number(per['statements'])}) / "
        f"{_number(per['redis'])}"
    )


def _flush_ratio_columns(data: dict[str, Any]) -> list[tuple[str, str]]:
    """The competitors compared with the baseline: fluxaorm first, then SQLAlchemy."""
    labels = data["competitors"]
    return [(k, labels[k]) for k in (*FLUXA, SQLALCHEMY) if k in labels]


def ratio_table(data: dict[str, Any], *, spread: bool = True) -> list[str]:
    """Time / hand-written baseline, per size and operation (the headline table)."""
    columns = _flush_ratio_columns(data)
    summary = data["summary"]["flush"]
    lines = [
        "| rows per flush | N | operation | "
        + " | ".join(f"{label} / baseline" for _, label in columns)
        + " |",
        "|---:|---:|---|" + "---:|" * len(columns),
    ]
    for batch, rows in data["plan"]["sizes"]:
        for operation in FLUSH_OPERATIONS:
            by_comp = summary[str(batch)][operation]
            cells = [
                _ratio(by_comp.get(k, {}).get("vs_baseline"), spread=spread)
                for k, _ in columns
            ]
            lines.append(
                f"| {batch:,} | {rows:,} | {operation} | " + " | ".join(cells) + " |"
            )
    return lines


def trips_table(data: dict[str, Any]) -> list[str]:
    """Round trips and statements per flush, per size, operation and competitor."""
    labels = data["competitors"]
    summary = data["summary"]["flush"]
    lines = [
        "| rows per flush | operation | " + " | ".join(labels.values()) + " |",
        "|---:|---|" + "---:|" * len(labels),
    ]
    for batch, _ in data["plan"]["sizes"]:
        for operation in FLUSH_OPERATIONS:
            by_comp = summary[str(batch)][operation]
            cells = [_trips(by_comp.get(k)) for k in labels]
            lines.append(f"| {batch:,} | {operation} | " + " | ".join(cells) + " |")
    return lines


def consume_table(data: dict[str, Any], *, spread: bool = True) -> list[str]:
    """Consuming: time, ratio to the hand-written consumer, round trips per call."""
    labels = data["consumers"]
    summary = data["summary"]["consume"]
    lines = [
        "| events per call | consumer | median ms | "
        f"{X} hand-written | Redis round trips per call | MySQL round trips in all |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for batch in data["plan"]["consume_sizes"]:
        for key, label in labels.items():
            f = summary[str(batch)].get(key)
            if f is None:
                lines.append(f"| {batch:,} | {label} | n/a | | | |")
                continue
            ratio = "1" if key == BASELINE_CONSUMER else _ratio(f.get("vs_baseline"))
            if not spread and key != BASELINE_CONSUMER:
                ratio = _ratio(f.get("vs_baseline"), spread=False)
            redis = _number(f["per"]["redis"]) if "per" in f else "-"
            mysql = str(f["counts"]["mysql"]) if "counts" in f else "-"
            lines.append(
                f"| {batch:,} | {label} | {f['ms']['median']:,.1f} | {ratio} "
                f"| {redis} | {mysql} |"
            )
    return lines


def _detail_row(
    operation: str, batch: int, key: str, label: str, f: dict[str, Any], base: str
) -> str:
    ms = f["ms"]
    ratio = "1" if key == base else _ratio(f.get("vs_baseline"))
    peak = f"{f['peak_mb']:.1f}" if "peak_mb" in f else "-"
    return (
        f"| {operation} | {batch:,} | {label} | {ms['median']:,.1f} "
        f"| {ms['min']:,.1f}{DASH}{ms['max']:,.1f} | {ratio} "
        f"| {_trips(f)} | {peak} |"
    )


def markdown_table(data: dict[str, Any]) -> str:
    """Render the results tables and the machine description as Markdown."""
    plan = data["plan"]
    sizes = ", ".join(f"{b:,} per flush: N = {n:,}" for b, n in plan["sizes"])
    lines = [
        f"Sizes: {sizes}; consuming: {plan['consume_rows']:,} events, "
        f"{', '.join(f'{b:,}' for b in plan['consume_sizes'])} per call. "
        f"{plan['runs']} interleaved runs, the order rotating from run to run; each "
        f"ratio is taken per run against the hand-written baseline of the same run "
        f"and size, then its median (min{DASH}max) is shown. Below 1{X} is faster "
        "than the hand-written code.",
        "",
        "### Time against the hand-written baseline",
        "",
        *ratio_table(data),
        "",
        "### Round trips per flush",
        "",
        "MySQL round trips (SQL statements) / Redis round trips, per flush; the "
        "update and delete steps load each batch with one SELECT first.",
        "",
        *trips_table(data),
        "",
    ]
    if data["consumers"]:
        lines += [
            "### Consuming",
            "",
            f"{plan['consume_rows']:,} `add` events written by fluxaorm's flush, "
            "read, decoded to typed values, handed to a handler, acknowledged and "
            "deleted.",
            "",
            *consume_table(data),
            "",
        ]
    lines += [
        "### Every figure",
        "",
        f"| operation | batch | competitor | median ms | spread ms | {X} baseline "
        "| MySQL round trips (statements) / Redis round trips per flush or call "
        "| peak MB |",
        "|---|---:|---|---:|---:|---|---:|---:|",
    ]
    flush = data["summary"]["flush"]
    for operation in FLUSH_OPERATIONS:
        for batch, _ in plan["sizes"]:
            for key, label in data["competitors"].items():
                f = flush[str(batch)][operation].get(key)
                if f is not None:
                    lines.append(_detail_row(operation, batch, key, label, f, BASELINE))
    consume = data["summary"]["consume"]
    for batch in plan["consume_sizes"]:
        for key, label in data["consumers"].items():
            f = consume[str(batch)].get(key)
            if f is not None:
                lines.append(
                    _detail_row(CONSUME, batch, key, label, f, BASELINE_CONSUMER)
                )
    labels = data["competitors"]
    lines += [
        "",
        "Redis memory per stream entry (`MEMORY USAGE dirty_BenchAll SAMPLES 0` / "
        "`XLEN`, after the insert step; median over runs):",
        "",
        "| rows per flush | " + " | ".join(labels.values()) + " |",
        "|---:|" + "---:|" * len(labels),
    ]
    for batch, _ in plan["sizes"]:
        cells = []
        for key in labels:
            f = flush[str(batch)]["insert"].get(key)
            cells.append(f"{f['redis_bytes_per_entry']:.0f} B" if f else "-")
        lines.append(f"| {batch:,} | " + " | ".join(cells) + " |")
    m = data["machine"]
    packages = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    wall = plan.get("wall_seconds")
    lines += [
        "",
        "Counts come from one extra, untimed pass of "
        f"{plan['profile_flushes']} flushes at each size (all of the consumed "
        "events): fluxaorm's through "
        "`fluxaorm.testing.count_queries` (statements, and MySQL round trips) and "
        "`count_round_trips` (Redis), the others' at the wire (every statement a "
        "pymysql connection sends, COMMIT and SQLAlchemy's ROLLBACK on returning a "
        "connection included, each one round trip; every request redis-py writes, "
        "a pipeline being one; SQLAlchemy's `before_cursor_execute` sees one call "
        "per `executemany()`, while pymysql sends an UPDATE or DELETE per row: "
        "latest.json keeps both). Consumers' MySQL round trips are `run()`'s outbox "
        "relay. Peak MB is the peak of Python allocations traced by `tracemalloc` "
        "during the step, above the step's starting point (same untimed pass, so "
        "for those flushes only).",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['platform']}; {m['python']}; "
        f"MariaDB/MySQL {m['mysql']}; Redis {m['redis']}; {packages}; "
        f"load average at start {m['load_average']}; {m['date']}"
        + (f"; the whole run took {wall / 60:.1f} minutes." if wall else ".")
        + "",
        "",
    ]
    return "\n".join(lines)


def chart(data: dict[str, Any], paths: Sequence[Path]) -> None:
    """Draw the ratio to the hand-written baseline against the size, one panel per step.

    Insert, update and delete put rows per flush on the x axis, consume puts
    events per call; each competitor is a line of median per-run ratios with
    min-max error bars, and the baseline is the line at 1.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plan = data["plan"]
    colors = {
        "fluxaorm": "#1f77b4",
        "fluxaorm-no-outbox": "#6baed6",
        SQLALCHEMY: "#ff7f0e",
        "fluxaorm-consume": "#1f77b4",
        "fluxaorm-run": "#2ca02c",
    }
    panels: list[tuple[str, str, list[int], dict[str, str]]] = [
        (
            operation,
            "rows per flush",
            [b for b, _ in plan["sizes"]],
            dict(_flush_ratio_columns(data)),
        )
        for operation in FLUSH_OPERATIONS
    ]
    consumers = {k: v for k, v in data["consumers"].items() if k != BASELINE_CONSUMER}
    if consumers:
        panels.append((CONSUME, "events per call", plan["consume_sizes"], consumers))
    columns = 2 if len(panels) > 2 else len(panels)
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(
        rows,
        columns,
        figsize=(5.4 * columns, 4.2 * rows),
        squeeze=False,
        sharey=True,
    )
    flat = [ax for row in axes for ax in row]
    for ax in flat[len(panels) :]:
        ax.set_visible(False)
    shown: list[float] = [1.0]
    for ax, (operation, xlabel, sizes, lines) in zip(flat, panels):
        for k, (key, label) in enumerate(lines.items()):
            xs, ys, lows, highs = [], [], [], []
            for size in sizes:
                if operation == CONSUME:
                    f = data["summary"]["consume"][str(size)].get(key)
                else:
                    f = data["summary"]["flush"][str(size)][operation].get(key)
                ratio = (f or {}).get("vs_baseline")
                if not ratio:
                    continue
                xs.append(size)
                ys.append(ratio["median"])
                lows.append(ratio["median"] - ratio["min"])
                highs.append(ratio["max"] - ratio["median"])
            if not xs:
                continue
            ax.errorbar(
                xs,
                ys,
                yerr=[lows, highs],
                label=label,
                color=colors.get(key),
                marker="o",
                capsize=3,
                elinewidth=0.8,
            )
            shown += [y - low for y, low in zip(ys, lows)]
            shown += [y + high for y, high in zip(ys, highs)]
            for x, y in zip(xs, ys):
                ax.annotate(
                    f"{y:.2f}",
                    (x, y),
                    textcoords="offset points",
                    # Alternate above and below so close lines keep readable labels.
                    xytext=(4, 4) if k % 2 == 0 else (4, -11),
                    fontsize=7,
                )
        ax.axhline(1.0, color="#555555", linewidth=1, linestyle="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(sizes, [f"{s:,}" for s in sizes])
        ax.minorticks_off()
        ax.set_xlabel(xlabel)
        ax.set_title(operation)
        ax.legend(fontsize=7, loc="best")
    low, high = min(shown) / 1.15, max(shown) * 1.15
    ticks = [t for t in _RATIO_TICKS if low <= t <= high]
    for ax in flat[: len(panels)]:
        ax.set_ylim(low, high)
        ax.set_yticks(ticks, [f"{t:g}{X}" for t in ticks])
        ax.minorticks_off()
    for row in axes:
        row[0].set_ylabel(f"time {X} hand-written (log scale)")
    fig.suptitle(
        "fluxaorm and SQLAlchemy against hand-written pymysql + redis-py "
        f"(dashed line = 1{X})\nmedian of {plan['runs']} per-run ratios; "
        f"error bars: min{DASH}max",
        fontsize=10,
    )
    fig.tight_layout()
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    plt.close(fig)


def summary_text(data: dict[str, Any]) -> str:
    """Return the compact stdout summary: every ratio's median."""
    lines = [
        f"time / hand-written baseline (median of {data['plan']['runs']} per-run "
        "ratios):",
        *ratio_table(data, spread=False),
        "",
        "MySQL round trips (statements) / Redis round trips per flush:",
        *trips_table(data),
    ]
    if data["consumers"]:
        lines += ["", "consuming:", *consume_table(data, spread=False)]
    return "\n".join(lines)
