"""What the ``fluxaorm`` command prints: tables, JSON, progress and ages.

Every command module prints through here. With ``rich`` installed (the extra
``fluxaorm[cli]``) tables and progress bars are drawn by it; without it the same
information comes as aligned plain text and click's progress bar. Values from the
database (names, errors) are never read as markup.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import enum
import json
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import attrs
import click

__all__ = [
    "Table",
    "age",
    "confirm",
    "counted",
    "emit_json",
    "jsonable",
    "live",
    "print_tables",
    "progress",
]

# Tables are drawn this wide when the output is not a terminal (a pipe, a log).
_PIPE_WIDTH = 200


def _has_rich() -> bool:
    """Whether rich (the ``fluxaorm[cli]`` extra) can be imported."""
    try:
        import rich.console  # noqa: F401
    except ImportError:
        return False
    return True


@attrs.frozen
class Table:
    """A titled table: ``rows`` of cells (str), ``right`` the right-aligned columns."""

    title: str
    headers: tuple[str, ...]
    rows: Sequence[tuple[str, ...]]
    right: frozenset[int] = frozenset()


def print_tables(tables: Sequence[Table]) -> None:
    """Print tables to stdout (rich when installed, else plain aligned text)."""
    if _has_rich():
        console = _console()
        for table in tables:
            console.print(_rich_table(table))
        return
    for table in tables:
        click.echo(_plain(table))
        click.echo()


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    tty = (sys.stderr if stderr else sys.stdout).isatty()
    return Console(stderr=stderr, width=None if tty else _PIPE_WIDTH, highlight=False)


def _rich_table(table: Table) -> Any:
    from rich.table import Table as RichTable
    from rich.text import Text

    out = RichTable(title=Text(table.title), title_justify="left", show_edge=False)
    for i, header in enumerate(table.headers):
        out.add_column(
            Text(header),
            justify="right" if i in table.right else "left",
            overflow="fold",
        )
    for row in table.rows:
        out.add_row(*(Text(cell) for cell in row))
    if not table.rows:
        out.add_row(*(Text("-") for _ in table.headers))
    return out


def _plain(table: Table) -> str:
    rows = table.rows or [tuple("-" for _ in table.headers)]
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(table.headers)
    ]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in table.right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    out = [table.title, line(table.headers), line(["-" * w for w in widths])]
    out.extend(line(r) for r in rows)
    return "\n".join(out)


@contextmanager
def live(enabled: bool) -> Iterator[Callable[[str, Sequence[Table]], None]]:
    """Yield ``paint(header, tables)`` that repaints in place (``streams --watch``).

    On a terminal with rich, a live display; on a terminal without it, the screen
    is cleared before each paint; elsewhere (a pipe) each paint is printed after
    the previous one.
    """
    tty = sys.stdout.isatty()
    if enabled and tty and _has_rich():
        from rich.console import Group
        from rich.live import Live
        from rich.text import Text

        with Live(console=_console(), auto_refresh=False) as display:

            def paint(header: str, tables: Sequence[Table]) -> None:
                display.update(
                    Group(Text(header), *(_rich_table(t) for t in tables)),
                    refresh=True,
                )

            yield paint
        return

    def paint_plain(header: str, tables: Sequence[Table]) -> None:
        if tty:
            click.clear()
        click.echo(header)
        print_tables(tables)
        sys.stdout.flush()

    yield paint_plain


def counted(n: int, noun: str) -> str:
    """``1 row``, ``2 rows``, ``1 entry``, ``1,000 entries``."""
    if n == 1:
        return f"1 {noun}"
    plural = noun[:-1] + "ies" if noun.endswith("y") else noun + "s"
    return f"{n:,} {plural}"


def confirm(question: str, refused: str) -> None:
    """Ask ``question`` on stderr; unless answered yes, stop with exit status 1.

    No terminal to ask on (stdin closed) counts as no.

    Raises:
        click.ClickException: not confirmed; the message says ``refused``.
    """
    try:
        confirmed = click.confirm(question, default=False, err=True)
    except click.Abort:
        click.echo(err=True)
        confirmed = False
    if not confirmed:
        raise click.ClickException(
            f"not confirmed: {refused} (pass --yes to skip the question)"
        )


def age(seconds: float) -> str:
    """A short human age: ``0s``, ``4.2s``, ``5m02s``, ``3h10m``, ``2d04h``."""
    if seconds <= 0:
        return "0s"
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{int(seconds)}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def jsonable(value: Any) -> Any:
    """Turn a value (an event's bind, statistics) into something ``json`` can write.

    Decimals become strings (exact), datetimes and dates ISO 8601 strings, enums
    their value, bytes their UTF-8 text or ``"base64:..."``, attrs objects dicts.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        try:
            return bytes(value).decode()
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(bytes(value)).decode()
    if isinstance(value, Mapping):
        return {str(jsonable(k)): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if attrs.has(type(value)):
        return {
            f.name: jsonable(getattr(value, f.name)) for f in attrs.fields(type(value))
        }
    return str(value)


def emit_json(value: Any) -> None:
    """Write one JSON document on one line to stdout, and flush (for pipes)."""
    click.echo(json.dumps(jsonable(value), ensure_ascii=False, sort_keys=False))
    sys.stdout.flush()


@contextmanager
def progress(label: str) -> Iterator[Callable[[int, int], None]]:
    """Yield ``update(done, total)`` drawing a progress bar on stderr.

    On a terminal: rich's bar (or click's without rich). Elsewhere (a log, a
    pipe) a plain line at each tenth of the way and at the end, so a job's log
    shows how far it got without thousands of lines.
    """
    if sys.stderr.isatty() and _has_rich():
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        with Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=_console(stderr=True),
        ) as bar:
            task = bar.add_task(label, total=None)

            def update_rich(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            yield update_rich
        return
    if sys.stderr.isatty():
        with click.progressbar(length=1, label=label, file=sys.stderr) as plain:
            shown = [0]

            def update_click(done: int, total: int) -> None:
                plain.length = max(total, 1)
                plain.update(done - shown[0])
                shown[0] = done

            yield update_click
        return
    state = {"tenth": -1, "started": time.monotonic()}

    def update_lines(done: int, total: int) -> None:
        tenth = 10 if total <= 0 else min(10, done * 10 // total)
        if tenth == state["tenth"]:
            return
        state["tenth"] = tenth
        percent = 100 if total <= 0 else done * 100 // total
        elapsed = time.monotonic() - state["started"]
        click.echo(
            f"{label}: {done:,}/{total:,} rows ({percent}%, {age(elapsed)})",
            err=True,
        )

    yield update_lines
