"""``fluxaorm streams``, ``tail``, ``replay`` and ``dead list|requeue|purge``.

Thin over the event broker (``engine.get_event_broker()``): statistics, the
outbox backlog, reading a stream without a group, moving a group, and the
dead-letter helpers, whose guarantees (a letter leaves ``:dead`` only once the
stream took it again) are the broker's.
"""

from __future__ import annotations

import datetime
import re
import time
from collections.abc import Sequence
from typing import Any

import click

from ..broker import DeadLetter, StreamEntry, StreamStatistics
from ..errors import DatabaseError
from . import cli, engine, stopping
from ._output import (
    Table,
    age,
    confirm,
    counted,
    emit_json,
    jsonable,
    live,
    print_tables,
)

__all__ = ["parse_position"]

_ENTRY_ID = re.compile(r"^[0-9]+(-[0-9]+)?$")
_DURATION = re.compile(r"^(?:[0-9]+(?:\.[0-9]+)?[smhdw])+$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_ERROR_SHOWN = 100
_POSITION_HELP = (
    "an entry id (1700000000000-0), 0 for the start of the stream, a time "
    "(2024-05-01T10:00:00, local time unless it has an offset), or a duration "
    "ago (90s, 10m, 2h, 1d)"
)


def parse_position(value: str) -> str:
    """Turn ``--from`` into what the broker takes: an entry id, ``0`` or ``$``.

    Raises:
        click.BadParameter: the value is none of the forms the help lists.
    """
    value = value.strip()
    if value in ("$", "-", "0") or _ENTRY_ID.match(value):
        return value
    if _DURATION.match(value):
        seconds = sum(
            float(n) * _UNIT[u] for n, u in re.findall(r"([0-9.]+)([smhdw])", value)
        )
        return f"{int((time.time() - seconds) * 1000)}-0"
    text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not {_POSITION_HELP}", param_hint="'--from'"
        ) from None
    return f"{int(when.astimezone().timestamp() * 1000)}-0"


def _shown(start: str) -> str:
    """``--from`` as said back to the user (``now``, ``10m ago``, the id or time)."""
    start = start.strip()
    if start == "$":
        return "now"
    return f"{start} ago" if _DURATION.match(start) else start


# -- streams ---------------------------------------------------------------------------


def _snapshot(names: Sequence[str]) -> dict[str, Any]:
    broker = engine().get_event_broker()
    streams = broker.get_streams_statistics(*names)
    snapshot: dict[str, Any] = {
        "time": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "streams": streams,
        "outbox": [],
    }
    try:
        snapshot["outbox"] = broker.get_outbox_statistics()
    except DatabaseError as exc:  # the streams are still worth showing
        snapshot["outbox_error"] = str(exc).splitlines()[0]
    return snapshot


def _stream_rows(streams: Sequence[StreamStatistics]) -> list[Table]:
    rows = []
    groups = []
    for s in streams:
        retention = "-" if s.retention_fill is None else f"{s.retention_fill:.0%}"
        rows.append(
            (
                s.stream,
                s.redis_pool,
                f"{s.len:,}",
                age(s.oldest_event_seconds),
                str(len(s.groups)),
                f"{s.dead_letters:,}",
                retention,
            )
        )
        for g in s.groups:
            idle = min((c.idle_seconds for c in g.consumers), default=None)
            consumers = str(len(g.consumers))
            if idle is not None:
                consumers += f" (last seen {age(idle)} ago)"
            groups.append(
                (
                    s.stream,
                    g.name,
                    f"{g.lag:,}",
                    f"{g.pending:,}",
                    age(g.last_delivered_seconds),
                    age(g.oldest_pending_seconds),
                    consumers,
                )
            )
    return [
        Table(
            "Dirty streams",
            (
                "stream",
                "pool",
                "length",
                "oldest",
                "groups",
                "dead letters",
                "retention",
            ),
            rows,
            frozenset({2, 3, 4, 5, 6}),
        ),
        Table(
            "Consumer groups",
            (
                "stream",
                "group",
                "lag",
                "pending",
                "last delivered",
                "oldest pending",
                "consumers",
            ),
            groups,
            frozenset({2, 3, 4, 5}),
        ),
    ]


def _tables(snapshot: dict[str, Any]) -> list[Table]:
    tables = _stream_rows(snapshot["streams"])
    outbox = [
        (
            o.mysql_pool,
            f"{o.rows:,}",
            f"{o.entries:,}",
            age(o.oldest_seconds),
            f"{o.quarantined:,}",
        )
        for o in snapshot["outbox"]
    ]
    title = "Outbox (committed, not yet in Redis)"
    if "outbox_error" in snapshot:
        title += f": {snapshot['outbox_error']}"
    tables.append(
        Table(
            title,
            ("MySQL pool", "rows", "entries", "oldest", "quarantined"),
            outbox,
            frozenset({1, 2, 3, 4}),
        )
    )
    return tables


@cli.command(short_help="Streams, groups, lag, dead letters and outbox backlog.")
@click.argument("names", nargs=-1, metavar="[NAME]...")
@click.option(
    "--watch", is_flag=True, help="Refresh until interrupted (Ctrl-C or SIGTERM)."
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.1),
    default=2.0,
    show_default=True,
    help="Seconds between refreshes with --watch.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print JSON (one document per refresh with --watch).",
)
def streams(
    names: tuple[str, ...], watch: bool, interval: float, as_json: bool
) -> None:
    """Show every dirty stream (or the NAMEd ones): length, groups, lag, pending, ages,
    dead letters, and the outbox backlog of every MySQL pool.
    """
    if not watch:
        snapshot = _snapshot(names)
        if as_json:
            emit_json(snapshot)
        else:
            print_tables(_tables(snapshot))
        return
    with stopping() as stop, live(not as_json) as paint:
        while not stop.is_set():
            snapshot = _snapshot(names)
            if as_json:
                emit_json(snapshot)
            else:
                header = f"{snapshot['time']}: every {interval:g}s, Ctrl-C stops"
                paint(header, _tables(snapshot))
            stop.wait(interval)


# -- tail ------------------------------------------------------------------------------


def _entry_line(entry: StreamEntry) -> str:
    event = entry.event
    if event is None:
        return f"{entry.message_id}  invalid  {entry.error}"
    line = (
        f"{entry.message_id}  {event.operation.name}  {event.entity_name}  "
        f"id={event.id}  {_compact(event.bind)}"
    )
    if event.old:
        line += f"  old={_compact(event.old)}"
    return line


def _compact(values: dict[str, Any]) -> str:
    import json

    return json.dumps(jsonable(values), ensure_ascii=False, separators=(", ", ": "))


def _entry_json(stream: str, entry: StreamEntry) -> dict[str, Any]:
    event = entry.event
    if event is None:
        return {
            "stream": stream,
            "message_id": entry.message_id,
            "error": entry.error,
            "fields": entry.fields,
        }
    return {
        "stream": stream,
        "message_id": entry.message_id,
        "operation": event.operation.name,
        "entity": event.entity_name,
        "id": event.id,
        "bind": event.bind,
        "old": event.old,
        "event_id": event.event_id,
    }


@cli.command(short_help="Print a stream's events as they arrive.")
@click.argument("name")
@click.option(
    "--from",
    "start",
    default="$",
    show_default=True,
    help=f"Start at {_POSITION_HELP}; $ is only what arrives from now on.",
)
@click.option("--count", type=click.IntRange(min=1), help="Stop after COUNT entries.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per line.")
def tail(name: str, start: str, count: int | None, as_json: bool) -> None:
    """Print the events of stream NAME as they arrive, until interrupted.

    Reads without joining a consumer group: nothing is acknowledged or
    deleted. Only what the stream still holds can be read (consumers delete
    the entries they acknowledge, by default).
    """
    eng = engine()
    info = eng.stream(name)
    position = parse_position(start)
    broker = eng.get_event_broker()
    shown = 0
    entries = broker.tail(info.name, position, block=0.5)
    click.echo(f"following {info.key} from {_shown(start)} (Ctrl-C stops)", err=True)
    with stopping() as stop:
        for batch in entries:
            for entry in batch:
                if as_json:
                    emit_json(_entry_json(info.key, entry))
                else:
                    click.echo(_entry_line(entry))
                shown += 1
                if count is not None and shown >= count:
                    return
            if stop.is_set():
                return


# -- replay ----------------------------------------------------------------------------


def _id(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


@cli.command(short_help="Start or move a consumer group to a point in a stream.")
@click.argument("name")
@click.option("--group", required=True, help="The consumer group to move (or create).")
@click.option(
    "--from",
    "start",
    required=True,
    help=f"Deliver next the first entry at or after this point: {_POSITION_HELP}; "
    "$ for only new entries.",
)
@click.option("-y", "--yes", is_flag=True, help="Do not ask before skipping entries.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def replay(name: str, group: str, start: str, yes: bool, as_json: bool) -> None:
    """Start consumer group GROUP of stream NAME at a point, or move it there.

    Moving a group back makes its consumers receive again the entries the
    stream still holds from that point; moving it forward skips entries it has
    not read (asked first, unless --yes). Pending entries stay pending.
    """
    eng = engine()
    info = eng.stream(name)
    position = parse_position(start)
    broker = eng.get_event_broker()
    before = next(
        (g for g in broker.get_stream_statistics(info.name).groups if g.name == group),
        None,
    )
    if before is not None and before.lag > 0 and not yes:
        last = _id(before.last_delivered_id)
        forward = position == "$" or (
            position not in ("0", "-") and _id(position) > (last[0], last[1] + 1)
        )
        if forward:
            question = (
                f"Group {group!r} has {counted(before.lag, 'entry')} not yet delivered; "
                f"moving it to {start} skips those before it. Move it"
            )
            confirm(question + "?", "the group was not moved")
    created = broker.move_group(info.name, group, position)
    after = next(
        g for g in broker.get_stream_statistics(info.name).groups if g.name == group
    )
    if as_json:
        emit_json(
            {
                "stream": info.key,
                "group": group,
                "created": created,
                "from": position,
                "lag": after.lag,
                "pending": after.pending,
            }
        )
        return
    where = (
        "only new entries"
        if position == "$"
        else f"the first entry at or after {start}"
    )
    click.echo(
        f"group {group!r} of {info.key} {'created' if created else 'moved'}: it "
        f"delivers {where} next; {counted(after.lag, 'entry')} to deliver, "
        f"{after.pending:,} pending"
    )


# -- dead letters ----------------------------------------------------------------------


@cli.group(short_help="List, requeue or purge dead letters.")
def dead() -> None:
    """List, requeue or purge the dead letters of a stream (dirty_<NAME>:dead)."""


def _letter_json(letter: DeadLetter) -> dict[str, Any]:
    event = letter.event
    return {
        "message_id": letter.message_id,
        "original_id": letter.original_id,
        "group": letter.group,
        "deliveries": letter.deliveries,
        "error": letter.error,
        "event": None
        if event is None
        else {
            "operation": event.operation.name,
            "entity": event.entity_name,
            "id": event.id,
            "bind": event.bind,
            "old": event.old,
            "event_id": event.event_id,
        },
        "fields": letter.fields,
    }


@dead.command("list", short_help="List a stream's dead letters.")
@click.argument("name")
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="The most letters to show.",
)
@click.option(
    "--start",
    default="-",
    show_default=True,
    help="Show letters from this dead-letter id on.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per line.")
def dead_list(name: str, count: int, start: str, as_json: bool) -> None:
    """List the dead letters of stream NAME, oldest first."""
    letters = engine().get_event_broker().get_dead_letters(name, count, start)
    if as_json:
        for letter in letters:
            emit_json(_letter_json(letter))
        return
    rows = []
    for letter in letters:
        event = letter.event
        what = (
            "not a valid event"
            if event is None
            else f"{event.operation.name} {event.entity_name} id={event.id}"
        )
        error = " ".join(letter.error.split())
        if len(error) > _ERROR_SHOWN:
            error = error[: _ERROR_SHOWN - 3] + "..."
        rows.append(
            (
                letter.message_id,
                letter.original_id,
                letter.group,
                str(letter.deliveries),
                what,
                error,
            )
        )
    info = engine().stream(name)
    print_tables(
        [
            Table(
                f"Dead letters of {info.key} ({info.dead_key})",
                ("id", "original id", "group", "deliveries", "event", "error"),
                rows,
                frozenset({3}),
            )
        ]
    )


@dead.command("requeue", short_help="Put dead letters back on their stream.")
@click.argument("name")
@click.argument("ids", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def dead_requeue(name: str, ids: tuple[str, ...], as_json: bool) -> None:
    """Put dead letters of stream NAME back on the stream (all, or the IDS given).

    A letter leaves the dead-letter stream only once the stream accepted it
    again: if Redis refuses some, they stay, and the command exits 1 saying
    how many were requeued.
    """
    eng = engine()
    info = eng.stream(name)
    moved = eng.get_event_broker().requeue_dead_letters(name, list(ids) or None)
    left = eng.get_event_broker().get_stream_statistics(info.name).dead_letters
    if as_json:
        emit_json({"stream": info.key, "requeued": moved, "dead_letters_left": left})
        return
    click.echo(
        f"requeued {counted(moved, 'dead letter')} to {info.key}; {left:,} left in "
        f"{info.dead_key}"
    )


@dead.command("purge", short_help="Delete dead letters for good (asks first).")
@click.argument("name")
@click.argument("ids", nargs=-1)
@click.option("-y", "--yes", is_flag=True, help="Do not ask first.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def dead_purge(name: str, ids: tuple[str, ...], yes: bool, as_json: bool) -> None:
    """Delete dead letters of stream NAME for good (all, or the IDS given).

    Asks first, unless --yes.
    """
    eng = engine()
    info = eng.stream(name)
    broker = eng.get_event_broker()
    letters = broker.get_stream_statistics(info.name).dead_letters
    if (ids or letters) and not yes:
        many = (
            counted(len(ids), "dead letter")
            if ids
            else "all " + counted(letters, "dead letter")
        )
        confirm(f"Delete {many} of {info.key} for good?", "nothing was deleted")
    deleted = (
        broker.purge_dead_letters(name, list(ids) or None) if ids or letters else 0
    )
    if as_json:
        emit_json({"stream": info.key, "purged": deleted})
        return
    click.echo(f"deleted {counted(deleted, 'dead letter')} from {info.dead_key}")
