"""The results: statistics, JSON, the Markdown table, the chart and the stdout summary.

``run.py`` passes the output of ``harness.race`` here. Every ratio is computed per
run (competitor time / baseline time of the same run and batch size) and then
summarised by its median, so slow phases of a noisy machine hit both sides.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from .harness import OPERATIONS

__all__ = [
    "chart",
    "machine_info",
    "markdown_table",
    "summarize",
    "summary_text",
    "write_json",
]

BASELINE = "baseline"
SQLALCHEMY = "sqlalchemy"
FLUXA = ("fluxaorm", "fluxaorm-no-outbox")
# Typographic signs of the table and chart (escaped: ruff flags them as look-alikes).
X = "\u00d7"
DASH = "\u2013"
_PACKAGES = ("fluxaorm", "sqlalchemy", "pymysql", "redis", "hiredis", "msgpack")


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


def summarize(data: dict[str, Any]) -> dict[str, Any]:
    """Return ``{batch: {operation: {competitor: figures}}}`` from the raw runs.

    Figures: ``ms`` (median/min/max), ``vs_baseline`` and, for fluxaorm,
    ``vs_sqlalchemy`` (median/min/max of per-run ratios), the profile pass's
    ``sql``, ``redis`` and ``peak_mb``, and ``redis_bytes_per_entry``.
    """
    out: dict[str, Any] = {}
    for batch in data["plan"]["batches"]:
        runs = [r for r in data["runs"] if r["batch"] == batch]
        profile = data["profile"].get(str(batch), {})
        by_op: dict[str, Any] = {}
        for operation in OPERATIONS:
            by_comp: dict[str, Any] = {}
            for key in data["competitors"]:
                times = [
                    r["seconds"][key][operation]
                    for r in runs
                    if operation in r["seconds"].get(key, {})
                ]
                if not times:
                    continue
                figures: dict[str, Any] = {
                    "ms": _spread([t * 1000 for t in times]),
                    "runs": len(times),
                }
                for name, other in (
                    ("vs_baseline", BASELINE),
                    ("vs_sqlalchemy", SQLALCHEMY),
                ):
                    if key == other or (other == SQLALCHEMY and key not in FLUXA):
                        continue
                    ratios = [
                        r["seconds"][key][operation] / r["seconds"][other][operation]
                        for r in runs
                        if operation in r["seconds"].get(other, {})
                    ]
                    if ratios:
                        figures[name] = _spread(ratios)
                counted = profile.get(key, {}).get(operation)
                if counted:
                    figures["sql"] = counted["sql"]
                    figures["redis"] = counted["redis"]
                    figures["peak_mb"] = counted["peak_bytes"] / 1_000_000
                    if "cursor_executes" in counted:
                        figures["cursor_executes"] = counted["cursor_executes"]
                if operation == "insert":
                    figures["redis_bytes_per_entry"] = statistics.median(
                        r["redis_bytes_per_entry"][key] for r in runs
                    )
                by_comp[key] = figures
            by_op[operation] = by_comp
        out[str(batch)] = by_op
    return out


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write the raw results and their summary."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")


def _ratio(figures: dict[str, Any] | None) -> str:
    if not figures:
        return "-"
    return (
        f"{figures['median']:.2f}{X} ({figures['min']:.2f}{DASH}{figures['max']:.2f})"
    )


def _table_row(
    operation: str, batch: int, key: str, label: str, f: dict[str, Any]
) -> str:
    ms = f["ms"]
    ratio = "1" if key == BASELINE else _ratio(f.get("vs_baseline"))
    peak = f"{f['peak_mb']:.1f}" if "peak_mb" in f else "-"
    return (
        f"| {operation} | {batch:,} | {label} | {ms['median']:,.1f} "
        f"| {ms['min']:,.1f}{DASH}{ms['max']:,.1f} | {ratio} "
        f"| {f.get('sql', '-')} | {f.get('redis', '-')} | {peak} |"
    )


def markdown_table(data: dict[str, Any]) -> str:
    """Render the results table and the machine description as Markdown."""
    plan = data["plan"]
    labels = data["competitors"]
    lines = [
        f"N = {plan['rows']:,} rows per operation, batch = rows per flush (events per "
        f"consume call), {plan['runs']} interleaved runs; median time, spread "
        f"min{DASH}max; the ratio is taken per run against the baseline of the same run, "
        f"then its median (min{DASH}max) is shown.",
        "",
        f"| operation | batch | competitor | median ms | spread ms | {X} baseline "
        "| MySQL statements | Redis round trips | peak MB |",
        "|---|---:|---|---:|---:|---|---:|---:|---:|",
    ]
    summary = data["summary"]
    for operation in OPERATIONS:
        for batch in plan["batches"]:
            for key, label in labels.items():
                f = summary[str(batch)][operation].get(key)
                if f is None:
                    lines.append(
                        f"| {operation} | {batch:,} | {label} | n/a | | | | | |"
                    )
                    continue
                lines.append(_table_row(operation, batch, key, label, f))
    lines += [
        "",
        "Redis memory per stream entry (`MEMORY USAGE dirty_BenchAll SAMPLES 0` / "
        "`XLEN`, after the insert step; median over runs):",
        "",
        "| batch | " + " | ".join(labels.values()) + " |",
        "|---:|" + "---:|" * len(labels),
    ]
    for batch in plan["batches"]:
        cells = []
        for key in labels:
            f = summary[str(batch)]["insert"].get(key)
            cells.append(f"{f['redis_bytes_per_entry']:.0f} B" if f else "-")
        lines.append(f"| {batch:,} | " + " | ".join(cells) + " |")
    m = data["machine"]
    packages = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    lines += [
        "",
        "Counts come from one extra, untimed pass: fluxaorm's through "
        "`fluxaorm.testing.count_queries` / `count_round_trips`, the others' at the "
        "wire (every statement a pymysql connection sends, COMMIT included; every "
        "request redis-py writes, a pipeline being one; SQLAlchemy's "
        "`before_cursor_execute` sees one call per `executemany()`, while pymysql "
        "sends an UPDATE or DELETE per row: latest.json keeps both). The update and "
        "delete steps load each batch with one SELECT first. Peak MB is the peak of "
        "Python allocations traced by `tracemalloc` during the step, above the "
        "step's starting point (same untimed pass).",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['platform']}; {m['python']}; "
        f"MariaDB/MySQL {m['mysql']}; Redis {m['redis']}; {packages}; "
        f"load average at start {m['load_average']}; {m['date']}.",
        "",
    ]
    return "\n".join(lines)


def chart(data: dict[str, Any], paths: Sequence[Path]) -> None:
    """Draw median time per operation and competitor, one panel per batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plan = data["plan"]
    labels = data["competitors"]
    summary = data["summary"]
    colors = ["#7f7f7f", "#1f77b4", "#6baed6", "#ff7f0e", "#2ca02c"]
    batches = plan["batches"]
    fig, axes = plt.subplots(
        1, len(batches), figsize=(6.5 * len(batches), 5.2), squeeze=False
    )
    width = 0.8 / len(labels)
    for ax, batch in zip(axes[0], batches):
        for k, (key, label) in enumerate(labels.items()):
            xs, heights, lows, highs, notes = [], [], [], [], []
            for i, operation in enumerate(OPERATIONS):
                f = summary[str(batch)][operation].get(key)
                x = i + (k - (len(labels) - 1) / 2) * width
                if f is None:
                    ax.text(
                        x,
                        0.02,
                        "n/a",
                        transform=ax.get_xaxis_transform(),
                        ha="center",
                        va="bottom",
                        fontsize=7,
                        rotation=90,
                    )
                    continue
                ms = f["ms"]
                xs.append(x)
                heights.append(ms["median"])
                lows.append(ms["median"] - ms["min"])
                highs.append(ms["max"] - ms["median"])
                ratio = f.get("vs_baseline")
                notes.append(f"{ratio['median']:.2f}{X}" if ratio else "")
            bars = ax.bar(
                xs,
                heights,
                width,
                label=label,
                color=colors[k % len(colors)],
                yerr=[lows, highs],
                capsize=2,
                error_kw={"elinewidth": 0.8},
            )
            ax.bar_label(bars, labels=notes, fontsize=7, rotation=90, padding=3)
        ax.set_xticks(range(len(OPERATIONS)), OPERATIONS)
        ax.set_yscale("log")
        ax.set_ylabel("median ms per operation (log scale)")
        ax.set_title(f"N = {plan['rows']:,}, batch {batch:,}")
        ax.margins(y=0.25)
    axes[0][0].legend(fontsize=8, loc="upper left")
    fig.suptitle(
        "fluxaorm vs a hand-written baseline and SQLAlchemy\n"
        f"labels: time {X} baseline (median of {plan['runs']} per-run ratios); "
        f"error bars: min{DASH}max",
        fontsize=10,
    )
    fig.tight_layout()
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    plt.close(fig)


def summary_text(data: dict[str, Any]) -> str:
    """Return the compact stdout summary: headline ratios at the largest batch."""
    batch = data["plan"]["batches"][0]
    by_op = data["summary"][str(batch)]
    present = [k for k in FLUXA if k in data["competitors"]]
    head = "outbox on", "outbox off"
    names = dict(zip(FLUXA, head))
    out = [
        f"fluxaorm / baseline at batch {batch:,} (N={data['plan']['rows']:,}, "
        f"median of {data['plan']['runs']} per-run ratios, min{DASH}max):",
        "  " + "operation".ljust(10) + "".join(names[k].ljust(24) for k in present),
    ]
    for operation in OPERATIONS:
        cells = [
            _ratio(by_op[operation].get(k, {}).get("vs_baseline")) for k in present
        ]
        out.append("  " + operation.ljust(10) + "".join(c.ljust(24) for c in cells))
    if SQLALCHEMY in data["competitors"]:
        out.append(f"fluxaorm / SQLAlchemy at batch {batch:,}:")
        for operation in ("insert", "update", "delete"):
            cells = [
                _ratio(by_op[operation].get(k, {}).get("vs_sqlalchemy"))
                for k in present
            ]
            out.append("  " + operation.ljust(10) + "".join(c.ljust(24) for c in cells))
    return "\n".join(out)
