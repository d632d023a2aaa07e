"""The flush: turn an ORM's pending changes into SQL and stream entries.

Called only by ``ORM.flush()`` (``orm.py``). ``changes.plan`` validates every
value before any I/O; :func:`execute` then runs one transaction per MySQL pool
and publishes each Redis pool's entries in one MULTI/EXEC round trip.

A pool's transaction travels as **one packet** of statements (one round trip):
start, data statements each followed by a guard that fails the packet when the
statement matched fewer rows than it named, the outbox row, the cleanup of
outbox rows this process published earlier, and COMMIT. Inserts whose ids MySQL assigns need their ids before the outbox row is
written: their transaction takes two packets (the data, then outbox and COMMIT).
A shortfall, a connection charset that makes packets unsafe, or the careful pass
after a short delete run the same statements one round trip each. The commonest
flushes, new rows of one entity and one statement's updates or deletes of one
entity, build the same packet a short way (:func:`_run_inserts`,
:func:`_run_changes`).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .changes import (
    Delete,
    InsertRow,
    Pending,
    PoolPlan,
    RowKey,
    Update,
    plan,
    plan_insert,
)
from .db import Connection, MySQLPool, PacketError, Result, error_code
from .errors import (
    DatabaseError,
    DuplicateKeyError,
    StaleEntityError,
    StreamError,
    ValidationError,
)
from .events import EventBatch, EventRecord, pack_bind, placeholder_id, with_id
from .outbox import (
    OUTBOX_Q,
    Publication,
    PublishOutcome,
    delete_sql,
    insert_statements,
    keep_refused,
    payload_limit,
    publish,
)
from .schema import EntitySchema
from .sql import chunk_rows, packet_budget, row_budget

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["GUARD", "FlushResult", "execute"]

_log = logging.getLogger("fluxaorm.flush")

# id strategies (see _Statements.auto_ids)
_CONSECUTIVE = "consecutive"
_RETURNING = "returning"
_SNAPSHOT = "snapshot"
# Fails with "BIGINT UNSIGNED value is out of range" (1690) unless the statement
# before it matched {n} rows: the packet stops there, before COMMIT. A SET
# returns no result set, so the check costs the server next to nothing.
GUARD = "SET @fluxaorm_guard=IF(ROW_COUNT()="
_GUARD = GUARD + "{n},0,~0+1)"
_GUARD_FAILED = 1690


class FlushResult:
    """What one pool's transaction did, for the steps after COMMIT."""

    __slots__ = (
        "assign",
        "batches",
        "cleaned",
        "new_ids",
        "outbox_ids",
        "pool",
        "publication",
    )

    def __init__(self, pool: str):
        self.pool = pool
        self.batches: list[EventBatch] = []
        self.outbox_ids: list[int] = []
        self.new_ids: list[tuple[EntitySchema, Any, int]] = []
        # (entity, attribute, value) to set once committed: fake_delete, version.
        self.assign: list[tuple[Any, str, Any]] = []
        # Published outbox rows whose cleanup committed with this transaction.
        self.cleaned: list[int] = []
        # The publish of ``batches``, packed while COMMIT was written (see _run_packets).
        self.publication: Publication | None = None


class _Step:
    """One statement of a pool's transaction.

    Attributes:
        sql: the statement.
        schema: the entity it writes (for error messages), if any.
        expect: how many rows it must match, or ``None`` when not counted.
        short: what a shortfall means: ``"update"``/``"delete"`` (stale) or
            ``"gone"`` (a delete whose rows may be gone: rerun carefully).
        ids: the ids it names, for the stale error.
        then: called with its result once it ran (ids of new rows, outbox ids).
        checks: the counted step just before, whose row count this statement
            checks itself (an outbox INSERT standing in for that step's guard).
        outbox: it writes outbox rows (its ``then`` notes their ids, which the
            publish does not need).
    """

    __slots__ = (
        "checks",
        "expect",
        "ids",
        "outbox",
        "schema",
        "short",
        "sql",
        "then",
    )

    def __init__(
        self,
        sql: str | bytes,
        schema: EntitySchema | None,
        expect: int | None = None,
        short: str = "",
        ids: Sequence[int] = (),
        then: Callable[[Result], None] | None = None,
    ):
        self.sql = sql
        self.schema = schema
        self.expect = expect
        self.short = short
        self.ids = ids
        self.then = then
        self.checks: _Step | None = None
        self.outbox = False


class _Short(Exception):  # noqa: N818 - internal control flow, never raised to users
    """A counted statement matched fewer rows than it named."""

    def __init__(self, step: _Step):
        super().__init__(step.short)
        self.step = step


def _assign_strategy(pool: MySQLPool) -> str:
    info = pool.info
    if info.autoinc_lock_mode in (0, 1):
        return _CONSECUTIVE
    if info.returning:
        return _RETURNING
    return _SNAPSHOT


class _Statements:
    """Renders one pool's statements and collects its events.

    In packet mode the statements are collected and sent by :func:`_run_packets`;
    otherwise (``conn`` given) each runs at once, one round trip each.
    """

    def __init__(
        self,
        pool: MySQLPool,
        strategy: str,
        result: FlushResult,
        conn: Connection | None = None,
        careful: bool = False,
        placeholders: bool = False,
    ):
        self.pool = pool
        self.strategy = strategy
        self.result = result
        self.conn = conn
        self.max_packet = pool.info.max_allowed_packet
        # Careful pass: lock rows before deleting them (after a shortfall).
        self.careful = careful
        self.steps: list[_Step] = []
        # Steps whose results the events need (ids MySQL assigns).
        self.waits_for_ids = False
        self.records: dict[str, list[EventRecord]] = {}
        # Set (to a list) by a short way sending its statement before its events:
        # the events of deletes and updates are then made by make_events().
        self.later: list[Callable[[], None]] | None = None
        # Rough outbox payload size per Redis pool, so most flushes skip split().
        self.sizes: dict[str, int] = {}
        # One packet for auto-id inserts with events (consecutive ids only): the
        # outbox row is written with placeholder ids and the first id of each
        # INSERT, kept in ``@fluxaorm_id<k>``; ``resolved`` maps each placeholder
        # to its event once the packet's results give the ids.
        self.placeholders = placeholders
        self.id_vars = 0
        self.last_set: _Step | None = None  # the latest SET @fluxaorm_id<k>
        # outbox() made the last SET needless: the caller leaves it out.
        self.set_dropped = False
        self.resolved: dict[int, EventRecord] = {}

    # -- statements ----------------------------------------------------------------------

    def add(self, step: _Step) -> None:
        """Queue a statement (packet mode) or run it now and check it."""
        if self.conn is None:
            self.steps.append(step)
            return
        cursor = _run(self.conn, step.sql, step.schema)
        rows = cursor.fetchall() if cursor.description is not None else None
        done = Result(cursor.rowcount, cursor.lastrowid or 0, rows)
        if step.expect is not None and done.rowcount < step.expect:
            raise _Short(step)
        if step.then is not None:
            step.then(done)

    def event(
        self,
        schema: EntitySchema,
        streams: tuple[str, ...],
        action: str,
        ident: int,
        bind: bytes,
        old: bytes | None = None,
    ) -> None:
        if streams:
            pool = schema.redis_pool
            self.records.setdefault(pool, []).append(
                EventRecord(streams, action, schema.name, ident, bind, old)
            )
            self.sizes[pool] = (
                self.sizes.get(pool, 0) + len(bind) + 48 + (len(old) if old else 0)
            )

    def make_events(self) -> None:
        """Make the events whose making :attr:`later` put off."""
        later, self.later = self.later or [], None
        for make in later:
            make()

    def deletes(self, schema: EntitySchema, rows: list[Delete], fake: bool) -> None:
        """Delete (or fake-delete) rows; stream only the rows a statement matched.

        A shortfall in the matched-row count of an entity without a version field
        means some rows were already gone: the fast pass gives up and the careful
        pass locks the rows first and deletes only those that exist. With a
        version field it is stale.
        """
        vi = schema.version_index
        # Rows in id order: concurrent flushes lock them in one order, which
        # keeps deadlocks between them rare.
        rows = sorted(rows, key=_row_id)
        if self.careful and vi is None:
            rows = self.existing(schema, rows, fake)
            if not rows:
                return
        table = schema.quoted_table
        alive = "`fake_delete` = 0 AND " if fake else ""
        vq = schema.columns[vi].quoted if vi is not None else ""
        if vi is None:
            keys = [str(r[2]) for r in rows]
            where = f"{alive}`id` IN ("
        else:
            keys = [f"({r[2]},{int(r[3][vi])})" for r in rows]
            where = f"{alive}(`id`,{vq}) IN ("
        head = (
            f"UPDATE {table} SET `fake_delete` = `id`"
            + (f",{vq}={vq}+1" if vi is not None else "")
            + f" WHERE {where}"
            if fake
            else f"DELETE FROM {table} WHERE {where}"
        )
        start = 0
        for chunk in chunk_rows(keys, self.max_packet, len(head)):
            ids = [r[2] for r in rows[start : start + len(chunk)]]
            start += len(chunk)
            self.add(
                _Step(
                    head + ",".join(chunk) + ")",
                    schema,
                    len(chunk),
                    "gone" if vi is None else "delete",
                    ids,
                )
            )
        assign = self.result.assign
        if fake or vi is not None:
            for _, entity, _, values in rows:
                if fake:
                    assign.append((entity, "fake_delete", True))
                if vi is not None:
                    assign.append((entity, schema.names[vi], values[vi] + 1))
        if not schema.delete_streams:
            return
        if self.later is not None:
            self.later.append(functools.partial(self.delete_events, schema, rows, fake))
        else:
            self.delete_events(schema, rows, fake)

    def delete_events(
        self, schema: EntitySchema, rows: list[Delete], fake: bool
    ) -> None:
        """The Delete events of ``rows`` (see :meth:`deletes`)."""
        vi = schema.version_index
        streams = schema.delete_streams
        for _, _, ident, values in rows:
            if fake:
                bind: dict[str, Any] = {"fake_delete": ident}
                if vi is not None:
                    bind[schema.names[vi]] = values[vi] + 1
            else:
                if vi is not None:
                    values = (*values[:vi], values[vi] + 1, *values[vi + 1 :])
                bind = schema.wire_values(values)
            self.event(schema, streams, "delete", ident, pack_bind(bind))

    def existing(
        self, schema: EntitySchema, rows: list[Delete], fake: bool
    ) -> list[Delete]:
        """Lock the rows of ``rows`` that still exist (alive, for a fake delete)."""
        assert self.conn is not None  # the careful pass runs statement by statement
        tail = (" AND `fake_delete` = 0" if fake else "") + " FOR UPDATE"
        found = _present(self.conn, schema, [r[2] for r in rows], self.max_packet, tail)
        return [r for r in rows if r[2] in found]

    def updates(
        self, schema: EntitySchema, changed: tuple[int, ...], rows: list[Update]
    ) -> None:
        columns = [schema.columns[i] for i in changed]
        table = schema.quoted_table
        vi = schema.version_index
        vq = schema.columns[vi].quoted if vi is not None else ""
        rows = sorted(rows, key=_update_id)  # one lock order, as for deletes
        if len(rows) == 1:
            row = rows[0]
            sets = ",".join(
                f"{c.quoted}={lit}" for c, lit in zip(columns, row.literals)
            )
            where = f"`id`={row.id}"
            if vi is not None:
                sets += f",{vq}={vq}+1"
                where += f" AND {vq}={int(row.version or 0)}"
            self.add(
                _Step(
                    f"UPDATE {table} SET {sets} WHERE {where}",
                    schema,
                    1,
                    "update",
                    [row.id],
                )
            )
        else:
            self._joined_updates(schema, columns, rows)
        if vi is not None:
            vname = schema.names[vi]
            for row in rows:
                for entity in row.entities:
                    self.result.assign.append((entity, vname, (row.version or 0) + 1))
        streams = schema.update_streams(tuple(c.name for c in columns))
        if not streams:
            return
        if self.later is not None:
            self.later.append(
                functools.partial(self.update_events, schema, columns, rows, streams)
            )
        else:
            self.update_events(schema, columns, rows, streams)

    def update_events(
        self,
        schema: EntitySchema,
        columns: list[Any],
        rows: list[Update],
        streams: tuple[str, ...],
    ) -> None:
        """The Update events of ``rows`` (see :meth:`updates`)."""
        vi = schema.version_index
        vname = schema.names[vi] if vi is not None else ""
        for row in rows:
            bind = {c.name: c.wire(v) for c, v in zip(columns, row.new)}
            old = {c.name: _wire_or_raw(c, v) for c, v in zip(columns, row.old)}
            if vi is not None:
                bind[vname] = (row.version or 0) + 1
                old[vname] = row.version
            self.event(schema, streams, "edit", row.id, pack_bind(bind), pack_bind(old))

    def _joined_updates(
        self, schema: EntitySchema, columns: list[Any], rows: list[Update]
    ) -> None:
        """One multi-table UPDATE joined to a derived table of the new values.

        Several times faster on the server than CASE id WHEN ... per column.
        """
        table = schema.quoted_table
        vi = schema.version_index
        vq = schema.columns[vi].quoted if vi is not None else ""
        selects = [
            f"SELECT {r.id},"
            + ",".join(r.literals)
            + (f",{int(r.version or 0)}" if vi is not None else "")
            for r in rows
        ]
        aliases = "".join(f" AS {c.quoted}" for c in columns)
        sets = ",".join(f"t.{c.quoted}=v.{c.quoted}" for c in columns)
        on = "t.`id`=v.`id`"
        if vi is not None:
            sets += f",t.{vq}=t.{vq}+1"
            on += f" AND t.{vq}=v.`_fluxaorm_version`"
        fixed = len(table) + len(sets) + len(aliases) + len(on) + 96
        start = 0
        for chunk in chunk_rows(selects, self.max_packet, fixed):
            group = rows[start : start + len(chunk)]
            start += len(chunk)
            first = group[0]
            values = [
                f"SELECT {first.id} AS `id`,"
                + ",".join(
                    f"{lit} AS {c.quoted}" for lit, c in zip(first.literals, columns)
                )
                + (
                    f",{int(first.version or 0)} AS `_fluxaorm_version`"
                    if vi is not None
                    else ""
                )
            ]
            values.extend(chunk[1:])
            self.add(
                _Step(
                    f"UPDATE {table} t JOIN ({' UNION ALL '.join(values)}) v "
                    f"ON {on} SET {sets}",
                    schema,
                    len(group),
                    "update",
                    [r.id for r in group],
                )
            )

    def inserts(
        self,
        schema: EntitySchema,
        rows: list[InsertRow],
        explicit: bool,
    ) -> None:
        prefix = schema.insert_prefix_with_id if explicit else schema.insert_prefix
        literals = [r[3] for r in rows]
        start = 0
        for chunk in chunk_rows(literals, self.max_packet, len(prefix) + 16):
            part = rows[start : start + len(chunk)]
            start += len(chunk)
            sql = prefix + ",".join(chunk)
            if explicit:
                self.add(_Step(sql, schema))
                self.inserted(schema, part, [r[2]["id"] for r in part])
            elif self.placeholders and schema.insert_streams:
                k = self.id_vars
                self.id_vars += 1
                first = self.placeholder_events(schema, part, k)
                self.auto_ids(
                    sql,
                    schema.quoted_table,
                    len(part),
                    schema,
                    functools.partial(self.resolve, schema, part, k, first),
                )
                self.last_set = _Step(f"SET @fluxaorm_id{k}=LAST_INSERT_ID()", None)
                self.add(self.last_set)
            else:
                self.auto_ids(
                    sql,
                    schema.quoted_table,
                    len(part),
                    schema,
                    functools.partial(self.inserted, schema, part),
                    events=bool(schema.insert_streams),
                )

    def inserted(
        self,
        schema: EntitySchema,
        rows: list[InsertRow],
        ids: list[int],
    ) -> None:
        """Note the ids of inserted rows and their Insert events."""
        new_ids = self.result.new_ids
        for (_, entity, _, _), ident in zip(rows, ids):
            new_ids.append((schema, entity, ident))
        streams = schema.insert_streams
        if not streams:
            return
        # The per-event work, inlined: this loop runs once per inserted entity.
        pool = schema.redis_pool
        records = self.records.setdefault(pool, [])
        pack = pack_bind
        name = schema.name
        size = 0
        for (_, _, bind, _), ident in zip(rows, ids):
            bind["id"] = ident
            packed = pack(bind)
            size += len(packed)
            records.append(EventRecord(streams, "add", name, ident, packed, None))
        self.sizes[pool] = self.sizes.get(pool, 0) + size + 48 * len(rows)

    def placeholder_events(
        self,
        schema: EntitySchema,
        rows: list[InsertRow],
        k: int,
    ) -> int:
        """Queue the Insert events of auto-id INSERT ``k`` before its ids are known.

        Row ``j`` gets the placeholder id ``placeholder_id(k, j)`` and its bind
        ``id`` 0; the outbox row stores them with the INSERT's first id and the
        relay computes the ids (consecutive: first + j * auto_increment_increment).
        Returns where the events start in their Redis pool's records.
        """
        pool = schema.redis_pool
        records = self.records.setdefault(pool, [])
        first = len(records)
        stand_ins = _stand_ins(schema, rows, k)
        records.extend(stand_ins)
        self.sizes[pool] = self.sizes.get(pool, 0) + _payload_size(stand_ins)
        return first

    def resolve(
        self,
        schema: EntitySchema,
        rows: list[InsertRow],
        k: int,
        first: int,
        ids: list[int],
    ) -> None:
        """The ids of auto-id INSERT ``k`` are known: note them and its real events.

        Each event's bind is its stand-in's with the id put in (the map is not
        packed again); ``first``: where the stand-ins start in the pool's records.
        """
        stand_ins = self.records[schema.redis_pool][first : first + len(rows)]
        events = _with_ids(schema, rows, stand_ins, ids, self.result.new_ids)
        for j, event in enumerate(events):
            self.resolved[placeholder_id(k, j)] = event

    def auto_ids(
        self,
        sql: str | bytes,
        table: str,
        count: int,
        schema: EntitySchema | None,
        then: Callable[[list[int]], None],
        events: bool = False,
    ) -> None:
        """Queue a multi-row INSERT of ``count`` auto-id rows; ``then(ids)`` in order.

        The ids never depend on guessing: with ``innodb_autoinc_lock_mode`` 0 or 1 a
        multi-row INSERT gets consecutive ids (stepped by
        ``auto_increment_increment``); with 2, MariaDB returns them (``RETURNING``)
        and MySQL reads them back inside a snapshot older than the INSERT.
        ``events``: the ids go into events, so the outbox row waits for them.
        """
        # Events carry the new ids: the outbox row must wait for them.
        self.waits_for_ids = self.waits_for_ids or events
        if self.strategy == _RETURNING:
            if isinstance(sql, bytes):
                sql += b" RETURNING `id`"
            else:
                sql += " RETURNING `id`"
            self.add(
                _Step(
                    sql, schema, then=lambda r: then([int(x[0]) for x in r.rows or ()])
                )
            )
        elif self.strategy == _CONSECUTIVE:
            step = self.pool.info.autoinc_increment
            self.add(
                _Step(
                    sql, schema, then=functools.partial(_consecutive, then, count, step)
                )
            )
        else:
            # The transaction's snapshot predates this INSERT, so the only rows it
            # sees at or past its first id are the ones this statement wrote.
            self.add(_Step(sql, schema))
            self.add(
                _Step(
                    f"SELECT `id` FROM {table} WHERE `id` >= LAST_INSERT_ID() "
                    f"ORDER BY `id` LIMIT {count}",
                    None,
                    then=lambda r: then([int(x[0]) for x in r.rows or ()]),
                )
            )

    # -- the outbox ----------------------------------------------------------------------

    def outbox(self, engine: Engine, after: _Step | None = None) -> None:
        """Split the events into batches and queue their outbox rows.

        ``after``: the statement the outbox rows follow in the packet; when it is
        counted, the first outbox INSERT checks its row count (no guard of its own).
        """
        limit = payload_limit(self.max_packet)
        batches = self.result.batches
        for name, records in self.records.items():
            batch = EventBatch(name, records)
            fits = self.sizes[name] <= limit
            batches.extend([batch] if fits else batch.split(limit))
        if engine.observer is not None:  # tracing: the flush span's context
            engine.observer.stamp(batches)
        if not batches or not engine.outbox:
            return
        ids = self.result.outbox_ids
        id_step = self.pool.info.autoinc_increment if self.id_vars else 0
        checks = after if after is not None and after.expect is not None else None
        render = functools.partial(
            insert_statements,
            batches,
            self.max_packet,
            self.pool.packets,
            self.id_vars,
            id_step,
            checks.expect if checks is not None else None,
        )
        statements = None
        if self.id_vars == 1 and after is not None and after is self.last_set:
            # One auto-id INSERT, then its SET last: one outbox INSERT reads the
            # first id from LAST_INSERT_ID() itself, and the caller drops the SET
            # (one statement less per packet).
            statements = render(direct=True)
            if len(statements) == 1:
                self.set_dropped = True
            else:
                statements = None
        for sql, count in statements or render():
            first = len(self.steps)
            self.auto_ids(sql, OUTBOX_Q, count, None, ids.extend)
            for step in self.steps[first:]:
                step.outbox = True
            if checks is not None:
                self.steps[first].checks = checks
                checks = None


def _stand_ins(
    schema: EntitySchema, rows: list[InsertRow], k: int
) -> list[EventRecord]:
    """The Insert events of auto-id INSERT ``k`` before its ids are known: row
    ``j`` has the placeholder id ``placeholder_id(k, j)`` and bind ``id`` 0."""
    streams = schema.insert_streams
    name = schema.name
    return [
        EventRecord(streams, "add", name, placeholder_id(k, j), pack_bind(r[2]), None)
        for j, r in enumerate(rows)
    ]


def _with_ids(
    schema: EntitySchema,
    rows: list[InsertRow],
    stand_ins: list[EventRecord],
    ids: Iterable[int],
    new_ids: list[tuple[EntitySchema, Any, int]],
) -> list[EventRecord]:
    """The real events of ``rows`` once their ``ids`` are known (noted in ``new_ids``).

    Each event's bind is its stand-in's with the id put in (the map is not
    packed again).
    """
    streams = schema.insert_streams
    name = schema.name
    events = []
    for (_, entity, bind, _), stand_in, ident in zip(rows, stand_ins, ids):
        new_ids.append((schema, entity, ident))
        bind["id"] = ident
        packed = with_id(stand_in.bind, ident) or pack_bind(bind)
        events.append(EventRecord(streams, "add", name, ident, packed, None))
    return events


def _payload_size(records: list[EventRecord]) -> int:
    """About what ``records`` add to an outbox payload (see ``_Statements.sizes``)."""
    return sum([len(r.bind) for r in records]) + 48 * len(records)


def _consecutive(
    then: Callable[[list[int]], None], count: int, step: int, result: Result
) -> None:
    """``then(ids)`` of a multi-row INSERT whose ids are consecutive from its first."""
    first = int(result.lastrowid)
    then(list(range(first, first + step * count, step)))


def _run(conn: Connection, sql: str | bytes, schema: EntitySchema | None) -> Any:
    try:
        return conn.execute(sql)
    except DuplicateKeyError as exc:
        raise _located(exc, schema) from exc.orig


def _located(exc: DatabaseError, schema: EntitySchema | None) -> DatabaseError:
    """Name the entity in a duplicate-key error."""
    if schema is None or not isinstance(exc, DuplicateKeyError):
        return exc
    return DuplicateKeyError(
        f"{schema.label}: {exc}",
        index=exc.index,
        table=schema.table,
        pool=exc.pool,
        orig=exc.orig,
    )


def _row_id(row: Delete) -> int:
    return row[2]


def _update_id(row: Update) -> int:
    return row.id


def _wire_or_raw(column: Any, value: Any) -> Any:
    try:
        return column.wire(value)
    except (ValidationError, AttributeError, TypeError, ValueError):
        return value


def _present(
    conn: Connection,
    schema: EntitySchema,
    ids: Sequence[int],
    max_packet: int,
    tail: str = "",
) -> set[int]:
    """Which of ``ids`` have a row (``tail`` adds a condition or ``FOR UPDATE``)."""
    head = f"SELECT `id` FROM {schema.quoted_table} WHERE `id` IN ("
    found: set[int] = set()
    for chunk in chunk_rows(
        [str(i) for i in ids], max_packet, len(head) + len(tail) + 1
    ):
        found.update(int(r[0]) for r in conn.query(f"{head}{','.join(chunk)}){tail}"))
    return found


def _stale(
    conn: Connection, pool: str, step: _Step, max_packet: int
) -> StaleEntityError:
    """The error for a statement that matched fewer rows than it named."""
    schema = step.schema
    assert schema is not None
    ids = list(step.ids)
    if step.short == "update" and schema.version_index is None:
        present = _present(conn, schema, ids, max_packet)
        gone = [i for i in ids if i not in present] or ids
        reason = "the rows were deleted by another flush first"
    else:
        gone = ids
        reason = "another flush changed or deleted the rows first"
    shown = ", ".join(str(i) for i in gone[:20]) + (", ..." if len(gone) > 20 else "")
    return StaleEntityError(
        f"{schema.label}: cannot {step.short} id {shown}: {reason}; nothing of MySQL "
        f"pool {pool!r} was written. Reload the entities and edit them again, or "
        "orm.clear_flush() to drop the changes",
        schema.label,
        gone,
        pool=pool,
    )


# -- running a pool's transaction --------------------------------------------------------


def _build(steps: _Statements, work: PoolPlan) -> None:
    """Queue (or run) the data statements of one pool, in the flush's order."""
    for schema, rows in work.deletes.items():
        steps.deletes(schema, rows, False)
    for schema, rows in work.fake_deletes.items():
        steps.deletes(schema, rows, True)
    for (schema, changed), updates in work.updates.items():
        steps.updates(schema, changed, updates)
    for schema, (auto_rows, explicit_rows) in work.inserts.items():
        if auto_rows:
            steps.inserts(schema, auto_rows, False)
        if explicit_rows:
            steps.inserts(schema, explicit_rows, True)


def _run_pool(
    engine: Engine, work: PoolPlan, alone: bool = False, short: bool = True
) -> FlushResult:
    """Run one pool's transaction; rerun it carefully if a delete fell short.

    ``alone``: the flush's only MySQL pool (see :func:`_run_packets`).
    ``short``: the short ways may be tried (see :func:`_short_way`).
    """
    pool = engine.mysql_pool(work.name)
    strategy = engine.id_strategy or _assign_strategy(pool)
    cleanup = engine.take_cleanup(work.name) if engine.outbox else []
    try:
        try:
            if not pool.packets:
                result = _run_statements(engine, pool, work, strategy, False, cleanup)
            else:
                done = None
                if short and _short_way(engine, strategy, bool(cleanup), alone):
                    done = _run_inserts(engine, pool, work) or _run_changes(
                        engine, pool, work, strategy
                    )
                result = done or _run_packets(
                    engine, pool, work, strategy, cleanup, alone
                )
        except _Short:
            # Nothing was committed: some rows to delete were already gone, so
            # run the transaction again, locking the rows before deleting them.
            result = _run_statements(engine, pool, work, strategy, True, cleanup)
    except BaseException:
        engine.return_cleanup(work.name, cleanup)
        raise
    if not result.cleaned:
        engine.return_cleanup(work.name, cleanup)
    return result


def _start(strategy: str) -> list[str]:
    """How a flush transaction starts (connections are READ COMMITTED)."""
    if strategy == _SNAPSHOT:
        # The id read-back needs a snapshot older than the INSERT.
        return [
            "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
            "START TRANSACTION WITH CONSISTENT SNAPSHOT",
        ]
    return ["BEGIN"]


# The steps that start and end a packet's transaction (never changed once made).
_BEGINS = tuple(_Step(sql, None) for sql in _start(_CONSECUTIVE))
_SNAPSHOT_BEGINS = tuple(_Step(sql, None) for sql in _start(_SNAPSHOT))
_COMMIT = _Step("COMMIT", None)


def _cleanup(cleanup: Sequence[int]) -> list[str]:
    """Delete published outbox rows in one statement, by primary key (delete_sql)."""
    return [delete_sql(cleanup)] if cleanup else []


def _run_packets(
    engine: Engine,
    pool: MySQLPool,
    work: PoolPlan,
    strategy: str,
    cleanup: list[int],
    alone: bool = False,
) -> FlushResult:
    """The fast path: the whole transaction in one packet (two with auto ids).

    ``alone``: the flush's only MySQL pool. Its publish is then packed while the
    server runs the packet (and writes the COMMIT to disk), and after COMMIT only
    the sending is left.
    """
    result = FlushResult(work.name)
    steps = _Statements(
        pool,
        strategy,
        result,
        placeholders=engine.outbox and strategy == _CONSECUTIVE,
    )
    _build(steps, work)

    def prepare() -> None:
        """Ready the publish once the data statements ran, while COMMIT is written."""
        if not engine.outbox:  # the batches, once the new ids are known
            steps.outbox(engine)
        elif steps.resolved:  # the events get the ids the packet gave
            resolved = steps.resolved
            for batch in result.batches:
                batch.records = [
                    resolved[r.id] if r.id < 0 else r for r in batch.records
                ]
        if alone and not cleanup:  # what _publish_results would send, after COMMIT
            _pack_ahead(engine, result)

    conn = pool.acquire()
    try:
        if steps.waits_for_ids and engine.outbox:
            # The new ids are needed for the events: the data first, then the
            # outbox row and COMMIT.
            data = [
                *(_SNAPSHOT_BEGINS if strategy == _SNAPSHOT else _BEGINS),
                *steps.steps,
            ]
            results = _send(conn, pool, data, commits=False)
            for step, done in zip(data, results):
                if step.expect is not None and done.rowcount < step.expect:
                    _abandon(conn)
                    raise _short_error(conn, pool, step)
            for step, done in zip(data, results):
                if step.then is not None:
                    step.then(done)
            steps.steps = []
            steps.outbox(engine)
            _finish(
                conn,
                pool,
                steps.steps,
                cleanup,
                result,
                strategy == _SNAPSHOT,
                prepare,
            )
        else:
            queued, steps.steps = steps.steps, []
            if engine.outbox:  # every event is known: no id is waited for
                steps.outbox(engine, queued[-1] if queued else None)
                if steps.set_dropped:
                    queued.pop()
            _finish(
                conn,
                pool,
                [
                    *(_SNAPSHOT_BEGINS if strategy == _SNAPSHOT else _BEGINS),
                    *queued,
                    *steps.steps,
                ],
                cleanup,
                result,
                strategy == _SNAPSHOT,
                prepare,
            )
    finally:
        pool.release(conn)
    return result


def _pack_ahead(engine: Engine, result: FlushResult) -> None:
    """Pack the publish of a flush's only pool while its COMMIT is in flight.

    What :func:`_publish_results` would send after COMMIT; a packing that fails
    is left to ``publish()``, which packs again (a transaction in flight is
    never failed for it).
    """
    result.publication = Publication(
        engine.redis_pools,
        engine.encoder,
        result.batches,
        outcome=PublishOutcome(),
        record=[engine.outbox] * len(result.batches),
    )
    try:
        result.publication.pack()
    except Exception:  # never fail a transaction in flight: publish() packs
        _log.debug("packing the publish ahead failed", exc_info=True)


def _short_way(engine: Engine, strategy: str, cleanup: bool, alone: bool) -> bool:
    """Whether the flush may take a short way: one MySQL pool (``alone``), the
    outbox on, consecutive ids, no cleanup to carry, no tracing (which stamps
    the batches)."""
    return (
        not cleanup
        and alone
        and engine.outbox
        and strategy == _CONSECUTIVE
        and engine.observer is None
    )


def _run_inserts(engine: Engine, pool: MySQLPool, work: PoolPlan) -> FlushResult | None:
    """:func:`_insert_rows` for a pool's work of new rows of one entity with
    events and AUTO_INCREMENT ids, or ``None`` where it does not apply."""
    if work.deletes or work.fake_deletes or work.updates or len(work.inserts) != 1:
        return None
    ((schema, (rows, explicit)),) = work.inserts.items()
    if explicit or not schema.insert_streams:
        return None
    return _insert_rows(engine, pool, schema, rows)


def _insert_rows(
    engine: Engine,
    pool: MySQLPool,
    schema: EntitySchema,
    rows: list[InsertRow],
) -> FlushResult | None:
    """:func:`_run_packets` for the commonest flush, or ``None`` when the rows
    need more than one INSERT or one outbox row.

    The flush a request makes most: new rows of one entity with events, ids from
    AUTO_INCREMENT (see :func:`_short_way`); ``rows`` as :func:`plan` renders
    them. Its statements are what
    :func:`_run_packets` sends for it (``BEGIN``, the INSERT, the outbox row
    reading the first id from ``LAST_INSERT_ID()``, ``COMMIT``), built without
    :class:`_Statements` (chunks, id strategies, several entities, the outbox's
    splitting), which costs such a flush more client time than the work itself;
    its events are made by the same helpers (:func:`_stand_ins`,
    :func:`_with_ids`).

    ``BEGIN`` and the INSERT leave first; the events and the outbox row are made
    while the server runs them and follow as a second query (see
    ``Connection.packet``'s ``rest``), the outbox row checking that the INSERT
    added every row, so that it fails, and nothing commits, when the INSERT did
    not run. Anything larger than one statement or one outbox row goes the
    general way: before anything is sent when :func:`_payload_bound` says the
    payload might not fit one row, else (never seen) by rolling back the
    transaction just begun.
    """
    info = pool.info
    max_packet = info.max_allowed_packet
    prefix = schema.insert_prefix
    literals = [r[3] for r in rows]
    size = sum(map(len, literals))
    limit = payload_limit(max_packet)
    if (
        size + len(literals) > row_budget(max_packet, len(prefix) + 16)
        or _payload_bound(schema, size, len(literals)) > limit
    ):
        return None  # more than one INSERT (chunk_rows), or perhaps more than one outbox row
    step = info.autoinc_increment
    result = FlushResult(schema.mysql_pool)
    made: list[EventBatch] = []  # the batch, once made

    def outbox() -> EventBatch | None:
        """The events, made while the INSERT runs (``None``: not one outbox row)."""
        batch = EventBatch(schema.redis_pool, _stand_ins(schema, rows, 0))
        made.append(batch)
        return None if _payload_size(batch.records) > limit else batch

    def resolve(done: Result) -> None:
        """The ids are in: the events get them."""
        first = int(done.lastrowid)
        ids = range(first, first + step * len(rows), step)
        batch = made[0]
        batch.records = _with_ids(schema, rows, batch.records, ids, result.new_ids)

    data = _Step(prefix + ",".join(literals), schema, then=resolve)
    committed = _send_short(engine, pool, result, data, outbox, len(rows), step)
    return result if committed else None


def _payload_bound(schema: EntitySchema, size: int, rows: int) -> int:
    """At least the outbox payload of inserting ``rows`` rows whose SQL literals
    take ``size`` characters in all.

    A value's packed form takes at most four bytes per character of its SQL
    literal (UTF-8) plus a header; each row's bind repeats the field names.
    """
    return size * 4 + rows * (schema.bind_names_size + 64) + 4096


def _run_changes(
    engine: Engine, pool: MySQLPool, work: PoolPlan, strategy: str
) -> FlushResult | None:
    """:func:`_run_packets` for a flush of one statement's updates or deletes of
    one entity (see :func:`_short_way`), or ``None`` where it does not apply.

    The statement and its events are rendered as the general way renders them;
    its one outbox row is rendered directly (not through
    :meth:`_Statements.outbox`, which splits and groups batches). ``BEGIN`` and
    the statement leave first; the events and the outbox row (checking the rows
    the statement matched) are made while the server runs them and follow with
    ``COMMIT`` as a second query (see :func:`_run_inserts`): a payload too large
    for one row, never seen in a flush of one statement, rolls back and goes the
    general way.
    """
    if (
        work.inserts
        or len(work.deletes) + len(work.fake_deletes) + len(work.updates) != 1
    ):
        return None
    result = FlushResult(work.name)
    steps = _Statements(pool, strategy, result)
    steps.later = []
    _build(steps, work)
    if len(steps.steps) != 1 or len(steps.later) != 1:
        return None  # several statements, or no events
    data = steps.steps[0]

    def outbox() -> EventBatch | None:
        """The events, made while the statement runs (``None``: not one outbox row)."""
        steps.make_events()
        ((redis_pool, records),) = steps.records.items()
        if steps.sizes[redis_pool] > payload_limit(steps.max_packet):
            return None
        return EventBatch(redis_pool, records)

    checks = data.expect
    assert checks is not None  # updates and deletes count the rows they match
    committed = _send_short(engine, pool, result, data, outbox, checks)
    return result if committed else None


def _send_short(
    engine: Engine,
    pool: MySQLPool,
    result: FlushResult,
    data: _Step,
    events: Callable[[], EventBatch | None],
    checks: int,
    id_step: int = 0,
) -> bool:
    """Send a short way's transaction: BEGIN, ``data``, its outbox row, COMMIT.

    What :func:`_finish` does for such a packet, without its loops over guards,
    cleanup and callbacks (about 2 µs of a one-row flush's client time before
    the send, measured). ``BEGIN`` and ``data`` leave first; ``events()`` makes
    the batch while the server runs them, and its outbox row and ``COMMIT``
    follow as a second query (``Connection.packet``'s ``rest``). The outbox row
    checks that ``data`` added or matched ``checks`` rows (``ROW_COUNT()``, see
    :func:`insert_statements`), so that it fails, and nothing commits, when
    ``data`` failed; with ``id_step`` (an auto-id INSERT) it reads the first id
    from ``LAST_INSERT_ID()``. ``data.then`` (new ids) runs once its result is
    in, then the publish is packed while the server writes the COMMIT (at once
    when there is nothing to wait for).

    Returns:
        Whether it committed: ``False`` when the batch would not fit one outbox
        row (``events()`` returned ``None`` or the row had to be split), which
        sends ``ROLLBACK`` instead (the caller goes the general way).
    """
    max_packet = pool.info.max_allowed_packet

    def rest() -> list[str | bytes]:
        batch = events()
        if batch is not None:
            statements = insert_statements(
                [batch],
                max_packet,
                True,
                1 if id_step else 0,
                id_step,
                checks,
                direct=bool(id_step),
            )
            if len(statements) == 1:
                result.batches.append(batch)
                return [statements[0][0], _COMMIT.sql]
        return ["ROLLBACK"]

    guards = {2: data} if data.expect is not None else None
    prepared = False

    def ready(done: list[Result]) -> None:
        nonlocal prepared
        if prepared or not result.batches:
            return  # not made yet, or declined (rolled back): nothing to publish
        prepared = True
        if data.then is not None:
            data.then(done[1])
        _pack_ahead(engine, result)

    conn = pool.acquire()
    try:
        results = _send(
            conn,
            pool,
            [*_BEGINS, data],
            commits=True,
            guards=guards,
            commit=3,
            ready=(0 if data.then is None else 2, ready),
            rest=rest,
        )
    finally:
        pool.release(conn)
    if not result.batches:
        return False  # rolled back
    ready(results)
    result.outbox_ids.append(int(results[2].lastrowid))
    return True


def _finish(
    conn: Connection,
    pool: MySQLPool,
    queued: list[_Step],
    cleanup: list[int],
    result: FlushResult,
    snapshot: bool,
    prepare: Callable[[], None],
) -> None:
    """Send the last packet: statements with their guards, the cleanup, COMMIT.

    The cleanup of published outbox rows rides in the transaction (READ
    COMMITTED: no gap lock), except under the snapshot id strategy (REPEATABLE
    READ), where it runs autocommitted right after COMMIT in the same packet.

    ``prepare`` (the publish's work) runs once the results it needs are in
    (the new ids of data statements; not the outbox rows' ids), while the server
    runs the rest and writes the COMMIT to disk: as soon as the packet is sent
    when it needs none (updates, deletes, explicit ids). Either way the
    transaction is known to have committed only once COMMIT's answer is read,
    after that.
    """
    packet: list[_Step] = []
    guards: dict[int, _Step] = {}
    for i, step in enumerate(queued):
        packet.append(step)
        if step.checks is not None:  # an outbox INSERT checking the step before
            guards[len(packet) - 1] = step.checks
        elif step.expect is not None:
            following = queued[i + 1] if i + 1 < len(queued) else None
            if following is None or following.checks is not step:
                guards[len(packet)] = step
                packet.append(_Step(_GUARD.format(n=step.expect), None))
    inside = bool(cleanup) and not snapshot
    if inside:
        packet.extend(_Step(sql, None) for sql in _cleanup(cleanup))
    commit = len(packet)
    # prepare waits for the last data statement with a callback (new ids).
    needed = 0
    for i, step in enumerate(packet):
        if step.then is not None and not step.outbox:
            needed = i + 1
    packet.append(_COMMIT)
    if cleanup and not inside:
        packet.extend(_Step(sql, None) for sql in _cleanup(cleanup))
    ran = 0  # results whose callbacks ran
    prepared = False

    def ready(done: list[Result]) -> None:
        nonlocal ran, prepared
        for step, one in zip(packet[ran:], done[ran:]):
            if step.then is not None:
                step.then(one)
        ran = len(done)
        if not prepared:
            prepared = True
            prepare()

    try:
        results = _send(
            conn,
            pool,
            packet,
            commits=True,
            guards=guards,
            commit=commit,
            ready=(needed, ready),
        )
    except PacketError as exc:
        if exc.index <= commit:
            raise
        # Committed; only the cleanup after it failed: the rows stay for later.
        _log.warning("published outbox rows could not be deleted: %s", exc.error)
        results = exc.results
    ready(results)  # the callbacks not run yet (prepare, if the packet did not)
    if cleanup and (inside or len(results) == len(packet)):
        result.cleaned = list(cleanup)


def _send(
    conn: Connection,
    pool: MySQLPool,
    packet: list[_Step],
    *,
    commits: bool,
    guards: dict[int, _Step] | None = None,
    commit: int = -1,
    ready: tuple[int, Callable[[list[Result]], None]] | None = None,
    rest: Callable[[], list[str | bytes]] | None = None,
) -> list[Result]:
    """Send one packet; turn a failure into the error the flush raises.

    ``rest``: the packet's later statements, made once ``packet`` is sent (see
    ``Connection.packet``; ``packet`` then fits one query).

    A guard that fails means its statement fell short (the transaction is rolled
    back and :class:`_Short` or a stale error raised); an error before COMMIT
    rolls back; a connection lost while a packet holding COMMIT was in flight
    leaves the outcome unknown (``during_commit``) and is never sent again.
    """
    try:
        if rest is not None:
            return conn.packet([s.sql for s in packet], ready, rest)
        return _packets(
            conn, [s.sql for s in packet], pool.info.max_allowed_packet, ready
        )
    except PacketError as exc:
        error = exc.error
        if commits and exc.index > commit >= 0:
            raise  # after COMMIT: the caller knows the transaction committed
        if conn.broken:
            # Lost with COMMIT sent: the outcome is unknown, never sent again.
            error.during_commit = commits and exc.sent > commit
            raise error from exc.orig
        failed = packet[exc.index] if exc.index < len(packet) else None
        step = (guards or {}).get(exc.index)
        _abandon(conn)
        if step is not None and error_code(error) == _GUARD_FAILED:
            raise _short_error(conn, pool, step) from None
        raise _located(error, failed.schema if failed else None) from exc.orig


def _packets(
    conn: Connection,
    statements: list[str | bytes],
    max_packet: int,
    ready: tuple[int, Callable[[list[Result]], None]] | None = None,
) -> list[Result]:
    """Send ``statements`` in as few packets as ``max_allowed_packet`` allows.

    Almost always one. A failure in a packet stops the rest; its index counts
    from the first statement. ``ready`` as for ``Connection.packet``, counted
    from the first statement; it is left out when a packet ends exactly there.
    """
    budget = packet_budget(max_packet)
    if sum(map(len, statements)) + len(statements) <= budget:
        return conn.packet(statements, ready)  # the usual case: one packet
    results: list[Result] = []
    group: list[str | bytes] = []
    size = 0
    for statement in statements:
        grow = len(statement) + 1
        if group and size + grow > budget:
            _send_group(conn, group, results, ready)
            group, size = [], 0
        group.append(statement)
        size += grow
    _send_group(conn, group, results, ready)
    return results


def _send_group(
    conn: Connection,
    group: list[str | bytes],
    results: list[Result],
    ready: tuple[int, Callable[[list[Result]], None]] | None,
) -> None:
    at = ready[0] - len(results) if ready is not None else 0
    hook = None
    if ready is not None and 0 <= at < len(group):
        call = ready[1]
        hook = (at, lambda done: call(results + done))
    try:
        results.extend(conn.packet(group, hook))
    except PacketError as exc:
        raise PacketError(
            exc.error,
            len(results) + exc.index,
            results + exc.results,
            len(results) + len(group),
        ) from exc.orig


def _short_error(conn: Connection, pool: MySQLPool, step: _Step) -> Exception:
    """A stale error, or :class:`_Short` for a delete whose rows may be gone."""
    if step.short == "gone":
        return _Short(step)
    return _stale(conn, pool.name, step, pool.info.max_allowed_packet)


def _abandon(conn: Connection) -> None:
    """Roll back the transaction a failed packet left open."""
    conn.rollback()


def _run_statements(
    engine: Engine,
    pool: MySQLPool,
    work: PoolPlan,
    strategy: str,
    careful: bool,
    cleanup: list[int],
) -> FlushResult:
    """The slow path: one round trip per statement (careful pass, unsafe charset)."""
    result = FlushResult(work.name)
    conn = pool.acquire()
    try:
        for statement in _start(strategy):
            conn.execute(statement)
        try:
            steps = _Statements(pool, strategy, result, conn, careful)
            try:
                _build(steps, work)
            except _Short as short:
                if short.step.short != "gone":
                    raise _stale(
                        conn, pool.name, short.step, steps.max_packet
                    ) from None
                if careful:  # the rows were locked: this cannot fall short
                    raise DatabaseError(
                        f"MySQL pool {pool.name!r}: a delete matched fewer rows than "
                        "it had locked",
                        pool=pool.name,
                    ) from None
                raise
            steps.outbox(engine)
            inside = bool(cleanup) and strategy != _SNAPSHOT
            if inside:  # READ COMMITTED: no gap lock (see _finish)
                for sql in _cleanup(cleanup):
                    conn.execute(sql)
            try:
                conn.commit()
            except DatabaseError as exc:
                exc.during_commit = conn.broken  # lost mid-COMMIT: outcome unknown
                raise
        except BaseException:
            conn.rollback()
            raise
        if inside:
            result.cleaned = list(cleanup)
        elif cleanup:
            try:
                for sql in _cleanup(cleanup):
                    conn.execute(sql)
                result.cleaned = list(cleanup)
            except DatabaseError as exc:
                _log.warning("published outbox rows could not be deleted: %s", exc)
    finally:
        pool.release(conn)
    return result


def execute(engine: Engine, pending: Pending) -> None:
    """Flush ``pending``: validate, write each MySQL pool in one transaction, publish.

    Guarantees:
        * every value is validated before any SQL is sent;
        * each MySQL pool's changes commit or roll back as one transaction;
        * an event is published only for a row a statement matched (MySQL's
          matched-row counts; a shortfall is stale for updates and versioned
          rows, and for other deletes reruns the transaction locking rows first);
        * no stream entry is published for a pool whose transaction failed;
        * with the outbox on, a committed pool's entries reach Redis at least once,
          even if Redis is down now (they wait in the outbox for the relay);
        * on failure, the changes of the failed pool stay pending and the error is
          raised after the pools that did commit were cleared and published.

    Raises:
        ValidationError: a value does not fit; nothing was sent.
        StaleEntityError: another flush changed or deleted a row first; that
            pool rolled back.
        DuplicateKeyError: a unique index refused a row; that pool rolled back.
        DatabaseError: MySQL failed; that pool rolled back.
        StreamError: with the outbox off, when Redis refused the entries of
            committed changes; with it on, only when Redis refused them for a
            reason retrying cannot fix (``permanent``: wrong password, missing
            permission), after the changes were committed to the outbox.
    """
    short = True  # whether the short ways may be tried
    if len(pending.inserts) == 1 and not pending.updates and not pending.deletes:
        if _insert_one(engine, pending):
            return
        short = False  # they do not apply, or the one tried rolled back
    plans, clean = plan(pending)
    for key in clean:
        pending.updates.pop(key, None)
    results: list[FlushResult] = []
    failure: BaseException | None = None
    for work in plans.values():
        try:
            results.append(_run_pool(engine, work, len(plans) == 1, short))
        except (DatabaseError, ValidationError) as exc:
            failure = exc
            break
        _committed(pending, work, results[-1])
    permanent = _publish_results(engine, results)
    if failure is not None:
        raise failure
    if permanent is not None:
        raise permanent


def _insert_one(engine: Engine, pending: Pending) -> bool:
    """Flush ``pending``'s one new entity the short way; ``False`` (nothing sent,
    or only a transaction rolled back) where it does not apply.

    What :func:`execute` does for it through :func:`plan`, :func:`_run_pool`
    and :func:`_committed`, without their loops and per-pool grouping, which
    cost a one-row flush more client time, before its first byte is sent, than
    building the INSERT: the same checks (packets on the pool, :func:`_short_way`
    and :func:`_run_inserts`' own: insert events, an id to assign), the same
    plan of the insert (:func:`plan_insert`, which :func:`plan` makes for each:
    it validates and renders the row, raising ``ValidationError`` before
    anything is sent), the same statements (:func:`_insert_rows`) and the same
    values set once committed (:func:`_reflect`).
    """
    ((key, (schema, entity)),) = pending.inserts.items()
    if not schema.insert_streams or entity.id != 0:
        return False  # no insert events, or an id of its own (plan() checks it)
    name = schema.mysql_pool
    pool = engine.mysql_pool(name)
    strategy = engine.id_strategy or _assign_strategy(pool)
    if not pool.packets or not _short_way(
        engine, strategy, engine.cleanup_due(name), True
    ):
        return False
    _, row = plan_insert(key, schema, entity)  # validated and rendered as plan() does
    result = _insert_rows(engine, pool, schema, [row])
    if result is None:
        return False
    _reflect(result)
    del pending.inserts[key]
    permanent = _publish_results(engine, [result])
    if permanent is not None:
        raise permanent
    return True


def _committed(pending: Pending, work: PoolPlan, result: FlushResult) -> None:
    """Reflect a committed pool in the entities and drop its changes from ``pending``."""
    _reflect(result)
    for rows in (*work.deletes.values(), *work.fake_deletes.values()):
        for row_key, _, _, _ in rows:
            pending.deletes.pop(row_key, None)
            pending.forced.discard(row_key)
    row: RowKey
    for row in work.update_keys:
        pending.updates.pop(row, None)
    for key in work.insert_keys:
        pending.inserts.pop(key, None)


def _reflect(result: FlushResult) -> None:
    """Set what a committed transaction gave its entities: new ids, then
    fake_delete flags and versions."""
    for schema, entity, ident in result.new_ids:
        schema.set_id(entity, ident)
    for entity, name, value in result.assign:
        object.__setattr__(entity, name, value)


def _publish_results(engine: Engine, results: list[FlushResult]) -> StreamError | None:
    """Publish committed pools' batches; return a permanent Redis error, if any.

    With the outbox on, each batch records in its own MULTI/EXEC that its row was
    published, so no relay publishes it again; the row itself is deleted by this
    process's next flush on that MySQL pool (or by a relay), not now.
    """
    batches: list[EventBatch] = []
    owners: list[tuple[str, int | None]] = []
    for result in results:
        for i, batch in enumerate(result.batches):
            batches.append(batch)
            owners.append(
                (result.pool, result.outbox_ids[i] if result.outbox_ids else None)
            )
    forget = engine.forget_records(
        [(result.pool, ident) for result in results for ident in result.cleaned]
    )
    if not batches:
        return None
    # Packed while COMMIT was written when the flush had one MySQL pool and no
    # cleanup (so nothing to forget).
    publication = results[0].publication if len(results) == 1 and not forget else None
    outcome = PublishOutcome()
    if publication is None:
        publication = Publication(
            engine.redis_pools,
            engine.encoder,
            batches,
            outcome=outcome,
            record=[owner[1] is not None for owner in owners],
            forget=forget,
        )
    else:
        outcome = publication.outcome or outcome  # the prepared one has its own
    done, errors = publish(publication, observer=engine.observer)
    if not engine.outbox:
        if errors:
            raise StreamError(
                f"the changes were committed but their stream entries were lost: "
                f"{errors[0]} (turn the outbox on to keep them)",
                pool=errors[0].pool,
                orig=errors[0].orig,
                permanent=errors[0].permanent,
            )
        return None
    refused: dict[str, list[tuple[int, int]]] = {}
    for i, (pool, outbox_id) in enumerate(owners):
        if outbox_id is None:
            continue
        if i in done:
            engine.published(pool, outbox_id, batches[i])
        elif i in outcome.refused:
            refused.setdefault(pool, []).append((i, outbox_id))
        else:
            engine.remember_unpublished(pool, outbox_id)
    for pool, rows in refused.items():
        # Some streams refused entries inside EXEC: keep only those in the row,
        # so the relay never publishes the accepted ones again.
        reason = str(errors[0]) if errors else "refused inside EXEC"
        try:
            with engine.mysql_pool(pool).connection() as conn:
                for i, outbox_id in rows:
                    keep_refused(
                        conn, outbox_id, batches[i], outcome.refused[i], reason
                    )
        except DatabaseError as exc:
            _log.warning("outbox rows %s could not be narrowed: %s", rows, exc)
    return _report(errors)


def _report(errors: list[StreamError]) -> StreamError | None:
    """Log refused publishes; return the error to raise for a permanent one."""
    permanent: StreamError | None = None
    for error in errors:
        if not error.permanent:
            _log.warning(
                "%s; the entries wait in the outbox for engine.relay_outbox()", error
            )
            continue
        _log.error(
            "%s; the changes are committed and their entries wait in the "
            "outbox: fix the Redis configuration, then engine.relay_outbox()",
            error,
        )
        if permanent is None:
            permanent = StreamError(
                f"the changes were committed, but Redis refused their stream "
                f"entries for a reason retrying cannot fix: {error}. They wait "
                "in the outbox: fix the Redis configuration (engine.check() "
                "tells what is wrong), then engine.relay_outbox() publishes them",
                pool=error.pool,
                orig=error.orig,
                permanent=True,
            )
    return permanent
