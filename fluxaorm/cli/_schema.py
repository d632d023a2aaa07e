"""``fluxaorm check``, ``schema diff`` and ``schema apply``.

Thin over ``Engine.check()``, ``Engine.get_alters()`` and
``Engine.apply_alters()``: what differs is shown as SQL, destructive statements
marked, and nothing destructive runs without ``--destructive`` and a yes.
"""

from __future__ import annotations

from collections.abc import Sequence

import click

from ..ddl import Alter
from ..errors import DatabaseError, StreamError
from . import cli, engine
from ._output import confirm, counted, emit_json

__all__: list[str] = []

_DESTRUCTIVE = (
    "-- DESTRUCTIVE: can lose data; `fluxaorm schema apply --destructive` runs it"
)
_UNKNOWN = "-- DESTRUCTIVE: drops a table no registered entity uses"


@cli.command(short_help="Check every pool and the tables; exit 1 on a problem.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def check(as_json: bool) -> None:
    """Connect to every pool and report the first problem (exit 1), or ok.

    Checks what `engine.check()` checks: each MySQL pool is reachable, accepts
    the credentials and has the database, the tables match the entities, and
    each Redis pool is reachable and allows every stream command fluxaorm sends.
    Changes nothing.
    """
    eng = engine()
    try:
        eng.check()
    except (DatabaseError, StreamError) as exc:
        if as_json:
            emit_json(
                {
                    "ok": False,
                    "error": str(exc),
                    "pool": exc.pool,
                    "permanent": exc.permanent,
                }
            )
            click.get_current_context().exit(1)
        raise
    mysql, redis = sorted(eng.mysql_pools), sorted(eng.redis_pools)
    if as_json:
        emit_json(
            {
                "ok": True,
                "mysql_pools": mysql,
                "redis_pools": redis,
                "entities": len(eng.entities),
                "streams": len(eng.streams),
            }
        )
        return
    click.echo(
        f"ok: MySQL pools {', '.join(mysql) or 'none'}; Redis pools "
        f"{', '.join(redis) or 'none'}; {len(eng.entities)} entities, "
        f"{len(eng.streams)} dirty streams"
    )


@cli.group(short_help="Compare the tables with the entities, or apply the SQL.")
def schema() -> None:
    """Compare the database with the entities, and apply the difference."""


def _split(
    alters: Sequence[Alter], destructive: bool, drop_unknown: bool
) -> tuple[list[Alter], list[Alter], list[Alter]]:
    """(statements to run, destructive ones declined, unknown tables kept)."""
    run: list[Alter] = []
    declined: list[Alter] = []
    kept: list[Alter] = []
    for alter in alters:
        if alter.unknown_table:
            (run if drop_unknown else kept).append(alter)
        elif alter.destructive and not destructive:
            declined.append(alter)
        else:
            run.append(alter)
    return run, declined, kept


def _as_sql(alters: Sequence[Alter], pools: int) -> list[str]:
    """The statements as a SQL script, destructive ones under a marking comment."""
    lines: list[str] = []
    pool = None
    for alter in alters:
        if pools > 1 and alter.pool != pool:
            pool = alter.pool
            lines.append(f"-- MySQL pool {pool!r}")
        if alter.unknown_table:
            lines.append(_UNKNOWN)
        elif alter.destructive:
            lines.append(_DESTRUCTIVE)
        lines.append(alter.sql + ";")
    return lines


def _short(sql: str) -> str:
    """A statement on one line; a CREATE TABLE by its first line (the name says it)."""
    head = sql.splitlines()[0]
    return f"{head}...)" if head.startswith("CREATE TABLE") else " ".join(sql.split())


def _alter_json(alter: Alter) -> dict[str, object]:
    return {
        "pool": alter.pool,
        "table": alter.table,
        "sql": alter.sql,
        "destructive": alter.destructive,
        "unknown_table": alter.unknown_table,
    }


_DROP_UNKNOWN_HELP = (
    "Also drop tables of the database that no registered entity uses (they may "
    "belong to another application)."
)


@schema.command(short_help="Print the SQL that differs; exit 1 if any.")
@click.option("--drop-unknown-tables", is_flag=True, help=_DROP_UNKNOWN_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def diff(drop_unknown_tables: bool, as_json: bool) -> None:
    """Print the SQL that would make the database match the entities.

    Destructive statements (dropping or narrowing a column) are marked with a
    comment. Tables no registered entity uses are only listed, as comments,
    unless --drop-unknown-tables is given. Exit status 1 when the database
    differs, 0 when it matches.
    """
    eng = engine()
    alters = eng.get_alters(drop_unknown_tables=True)
    shown, _, kept = _split(alters, True, drop_unknown_tables)
    if as_json:
        emit_json(
            {
                "in_sync": not shown,
                "alters": [_alter_json(a) for a in shown],
                "unknown_tables": [{"pool": a.pool, "table": a.table} for a in kept],
            }
        )
    else:
        for line in _as_sql(shown, len(eng.mysql_pools)):
            click.echo(line)
        for alter in kept:
            click.echo(
                f"-- table {alter.table!r} (pool {alter.pool!r}) is used by no "
                "registered entity: kept (--drop-unknown-tables would drop it)"
            )
        destructive = sum(a.destructive for a in shown)
        summary = (
            "-- in sync"
            if not shown
            else f"-- {counted(len(shown), 'statement')} to run ({destructive} destructive)"
        )
        click.echo(summary)
    if shown:
        click.get_current_context().exit(1)


@schema.command(short_help="Create and alter tables (asks before destructive SQL).")
@click.option(
    "--destructive",
    is_flag=True,
    help="Also run statements that can lose data (dropping or narrowing a column).",
)
@click.option("--drop-unknown-tables", is_flag=True, help=_DROP_UNKNOWN_HELP)
@click.option(
    "-y", "--yes", is_flag=True, help="Do not ask before destructive statements."
)
@click.option("--json", "as_json", is_flag=True, help="Print what ran as JSON.")
def apply(
    destructive: bool, drop_unknown_tables: bool, yes: bool, as_json: bool
) -> None:
    """Create and alter tables to match the entities.

    Runs the safe statements; with --destructive also those that drop or narrow
    columns, and with --drop-unknown-tables the DROP TABLE of tables no
    registered entity uses. Before anything destructive it shows the statements
    and asks, unless --yes; a "no" (or no terminal to ask on) runs nothing and
    exits 1. Exactly the statements shown are run.
    """
    eng = engine()
    run, declined, kept = _split(
        eng.get_alters(drop_unknown_tables=True), destructive, drop_unknown_tables
    )
    risky = [a for a in run if a.destructive]
    if risky and not yes:
        for line in _as_sql(risky, len(eng.mysql_pools)):
            click.echo(line, err=True)
        tables = sorted({a.table for a in risky if a.unknown_table})
        question = f"Run {counted(len(risky), 'destructive statement')}"
        if tables:
            question += f", dropping the tables {', '.join(tables)}"
        confirm(question + "?", "nothing was run")
    ran = eng.apply_alters(run)
    if as_json:
        emit_json(
            {
                "applied": [_alter_json(a) for a in ran],
                "declined": [_alter_json(a) for a in declined],
                "unknown_tables": [{"pool": a.pool, "table": a.table} for a in kept],
            }
        )
        return
    for alter in ran:
        click.echo(f"ran: {_short(alter.sql)}")
    click.echo(f"applied {counted(len(ran), 'statement')}")
    if declined:
        click.echo(
            f"not run: {counted(len(declined), 'destructive statement')} "
            "(`fluxaorm schema diff` shows them; --destructive runs them)",
            err=True,
        )
    if kept:
        names = ", ".join(sorted({a.table for a in kept}))
        click.echo(f"tables used by no registered entity were kept: {names}", err=True)
