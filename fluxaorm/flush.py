"""The flush: turn an ORM's pending changes into SQL and stream entries.

Called only by ``ORM.flush()`` (``orm.py``). :func:`plan` validates every value and
renders every data statement before any I/O; :func:`execute` then runs one
transaction per MySQL pool (data statements, then the outbox row), commits, and
publishes each Redis pool's entries in one MULTI/EXEC round trip.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .db import Connection, MySQLPool
from .errors import (
    DatabaseError,
    DuplicateKeyError,
    StaleEntityError,
    StreamError,
    ValidationError,
)
from .events import EventBatch, EventRecord, pack_bind
from .outbox import (
    PublishOutcome,
    delete_rows,
    insert_statements,
    keep_refused,
    payload_limit,
    publish,
)
from .schema import EntitySchema
from .sql import chunk_rows

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["FlushResult", "Pending", "execute", "plan"]

_log = logging.getLogger("fluxaorm.flush")

# id strategies (see _assign_ids)
_CONSECUTIVE = "consecutive"
_RETURNING = "returning"
_SNAPSHOT = "snapshot"


RowKey = tuple[EntitySchema, int]


class Pending:
    """What an ORM holds between flushes (owned by ``ORM``, read here).

    ``inserts`` maps ``id(entity)`` to ``(schema, entity)``. Updates and deletes
    are keyed by row, ``(schema, id)``, so a row has at most one pending change
    whatever number of objects hold it: ``updates`` maps a row to the tracked
    copies edited for it, each with the values it had when edited; ``deletes``
    maps a row to ``(schema, entity, values as loaded)``; ``forced`` holds the
    rows deleted with ``force=True``.
    """

    __slots__ = ("deletes", "forced", "inserts", "updates")

    def __init__(self) -> None:
        self.inserts: dict[int, tuple[EntitySchema, Any]] = {}
        self.updates: dict[RowKey, list[tuple[Any, tuple[Any, ...]]]] = {}
        self.deletes: dict[RowKey, tuple[EntitySchema, Any, tuple[Any, ...]]] = {}
        self.forced: set[RowKey] = set()

    def __bool__(self) -> bool:
        return bool(self.inserts or self.updates or self.deletes)

    def clear(self) -> None:
        self.inserts.clear()
        self.updates.clear()
        self.deletes.clear()
        self.forced.clear()


class _Update:
    """One row's update: the merged change of every object edited for it."""

    __slots__ = ("entities", "id", "literals", "new", "old", "version")

    def __init__(
        self,
        entities: list[Any],
        ident: int,
        literals: list[str],
        new: list[Any],
        old: list[Any],
        version: int | None,
    ):
        self.entities = entities
        self.id = ident
        self.literals = literals
        self.new = new
        self.old = old
        # The version the row was loaded with (versioned entities only).
        self.version = version


# A pending delete as planned: (row key, entity, id, values as loaded).
_Delete = tuple[RowKey, Any, int, tuple[Any, ...]]


class _PoolPlan:
    """The validated, rendered work of one MySQL pool."""

    __slots__ = (
        "deletes",
        "fake_deletes",
        "insert_keys",
        "inserts",
        "name",
        "update_keys",
        "updates",
    )

    def __init__(self, name: str):
        self.name = name
        self.deletes: dict[EntitySchema, list[_Delete]] = {}
        self.fake_deletes: dict[EntitySchema, list[_Delete]] = {}
        self.updates: dict[tuple[EntitySchema, tuple[int, ...]], list[_Update]] = {}
        self.update_keys: list[RowKey] = []
        # schema -> (auto-id rows, explicit-id rows); each row is (key, entity, values, literal)
        self.inserts: dict[
            EntitySchema,
            tuple[
                list[tuple[int, Any, dict[str, Any], str]],
                list[tuple[int, Any, dict[str, Any], str]],
            ],
        ] = {}
        self.insert_keys: list[int] = []


class FlushResult:
    """What one pool's transaction did, for the steps after COMMIT."""

    __slots__ = ("assign", "batches", "keys", "new_ids", "outbox_ids", "pool")

    def __init__(self, pool: str):
        self.pool = pool
        self.batches: list[EventBatch] = []
        self.outbox_ids: list[int] = []
        self.new_ids: list[tuple[EntitySchema, Any, int]] = []
        self.keys: list[tuple[str, int]] = []
        # (entity, attribute, value) to set once committed: fake_delete, version.
        self.assign: list[tuple[Any, str, Any]] = []


def plan(pending: Pending) -> tuple[dict[str, _PoolPlan], list[RowKey]]:
    """Validate every pending value and group the work by MySQL pool.

    Returns:
        The work of each MySQL pool, and the rows whose tracked copies did not
        change (they need nothing).

    Raises:
        ValidationError: a value does not fit its column, or two objects of one
            row change a field to different values; nothing was sent.
        StaleEntityError: objects of one versioned row were loaded at different
            versions; nothing was sent.
    """
    plans: dict[str, _PoolPlan] = {}
    clean: list[RowKey] = []

    def pool_plan(schema: EntitySchema) -> _PoolPlan:
        found = plans.get(schema.mysql_pool)
        if found is None:
            found = plans[schema.mysql_pool] = _PoolPlan(schema.mysql_pool)
        return found

    for row_key, (schema, entity, values) in pending.deletes.items():
        target = pool_plan(schema)
        fake = schema.has_fake_delete and row_key not in pending.forced
        (target.fake_deletes if fake else target.deletes).setdefault(schema, []).append(
            (row_key, entity, row_key[1], values)
        )

    for row_key, copies in pending.updates.items():
        schema = row_key[0]
        update = _merge(schema, row_key[1], copies)
        if update is None:
            clean.append(row_key)
            continue
        changed, change = update
        target = pool_plan(schema)
        target.updates.setdefault((schema, changed), []).append(change)
        target.update_keys.append(row_key)

    for key, (schema, entity) in pending.inserts.items():
        if schema.version_index is not None:
            object.__setattr__(entity, schema.names[schema.version_index], 1)
        values = schema.get_values(entity)
        explicit = values[0] != 0
        if explicit:
            schema.id_column.literal(values[0])
            if values[0] < 1:
                raise ValidationError(
                    f"{values[0]} is not a valid id (ids start at 1)",
                    schema.label,
                    "id",
                )
            row, wires = schema.render_row_with_id(values)
        else:
            row, wires = schema.render_row(values)
        target = pool_plan(schema)
        auto_rows, explicit_rows = target.inserts.setdefault(schema, ([], []))
        (explicit_rows if explicit else auto_rows).append((key, entity, wires, row))
        target.insert_keys.append(key)
    return plans, clean


def _saved_id(schema: EntitySchema, entity: Any, what: str) -> int:
    ident = entity.id
    if type(ident) is not int or ident < 1:
        raise ValidationError(
            f"cannot {what} an entity that was never saved (id={ident!r}); flush it first",
            schema.label,
            "id",
        )
    return ident


def _merge(
    schema: EntitySchema, ident: int, copies: list[tuple[Any, tuple[Any, ...]]]
) -> tuple[tuple[int, ...], _Update] | None:
    """Merge the changes of every object edited for one row into one update."""
    if len(copies) == 1:
        entity, snapshot = copies[0]
        return _diff(schema, entity, snapshot)
    merged: dict[int, tuple[str, Any, Any]] = {}
    version: int | None = None
    for n, (entity, snapshot) in enumerate(copies):
        found = _diff(schema, entity, snapshot)
        vi = schema.version_index
        if vi is not None:
            if n and snapshot[vi] != version:
                raise StaleEntityError(
                    f"{schema.label} id={ident}: edited through objects loaded at "
                    f"versions {version} and {snapshot[vi]}; reload it and edit once",
                    schema.label,
                    [ident],
                    pool=schema.mysql_pool,
                )
            version = snapshot[vi]
        if found is None:
            continue
        changed, change = found
        for i, literal, new, old in zip(
            changed, change.literals, change.new, change.old
        ):
            known = merged.get(i)
            if known is not None and known[0] != literal:
                raise ValidationError(
                    f"two objects of row id={ident} set it to different values "
                    f"({known[1]!r} and {new!r}); edit one object per row",
                    schema.label,
                    schema.names[i],
                )
            if known is None:
                merged[i] = (literal, new, old)
    if not merged:
        return None
    changed = tuple(sorted(merged))
    return changed, _Update(
        [entity for entity, _ in copies],
        ident,
        [merged[i][0] for i in changed],
        [merged[i][1] for i in changed],
        [merged[i][2] for i in changed],
        version,
    )


def _diff(
    schema: EntitySchema, entity: Any, snapshot: tuple[Any, ...]
) -> tuple[tuple[int, ...], _Update] | None:
    current = schema.get_values(entity)
    if current[0] != snapshot[0]:
        raise ValidationError(
            f"the id changed from {snapshot[0]} to {current[0]}; ids cannot be edited",
            schema.label,
            "id",
        )
    vi = schema.version_index
    if vi is not None and current[vi] != snapshot[vi]:
        raise ValidationError(
            f"the version changed from {snapshot[vi]} to {current[vi]}; fluxaorm "
            "manages the version field, leave it as loaded",
            schema.label,
            schema.names[vi],
        )
    changed: list[int] = []
    literals: list[str] = []
    new: list[Any] = []
    old: list[Any] = []
    columns = schema.columns
    for i in range(1, len(current)):
        value = current[i]
        before = snapshot[i]
        if value is before or (type(value) is type(before) and value == before):
            continue
        literal = columns[i].literal(value)
        if type(value) is not type(before):
            # 1 and 1.0, an enum member and its value: equal when stored the same.
            try:
                if columns[i].literal(before) == literal:
                    continue
            except ValidationError:
                pass
        changed.append(i)
        literals.append(literal)
        new.append(value)
        old.append(before)
    if not changed:
        return None
    return tuple(changed), _Update(
        [entity],
        current[0],
        literals,
        new,
        old,
        snapshot[vi] if vi is not None else None,
    )


def _assign_strategy(pool: MySQLPool) -> str:
    info = pool.info
    if info.autoinc_lock_mode in (0, 1):
        return _CONSECUTIVE
    if info.returning:
        return _RETURNING
    return _SNAPSHOT


class _Statements:
    """Runs one pool's statements and collects its events, inside its transaction."""

    def __init__(
        self,
        engine: Engine,
        conn: Connection,
        pool: MySQLPool,
        strategy: str,
        careful: bool = False,
    ):
        self.engine = engine
        self.conn = conn
        self.pool = pool
        self.strategy = strategy
        self.max_packet = pool.info.max_allowed_packet
        # Careful pass: lock rows before deleting them (after a shortfall).
        self.careful = careful
        self.records: dict[str, list[EventRecord]] = {}
        # Rough outbox payload size per Redis pool, so most flushes skip split().
        self.sizes: dict[str, int] = {}

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

    def run(self, sql: str | bytes, schema: EntitySchema | None) -> Any:
        try:
            return self.conn.execute(sql)
        except DuplicateKeyError as exc:
            if schema is None:
                raise
            raise DuplicateKeyError(
                f"{schema.label}: {exc}",
                index=exc.index,
                table=schema.table,
                pool=exc.pool,
                orig=exc.orig,
            ) from exc.orig

    def deletes(
        self,
        schema: EntitySchema,
        rows: list[_Delete],
        fake: bool,
        result: FlushResult,
    ) -> None:
        """Delete (or fake-delete) rows; stream only the rows a statement matched.

        A shortfall in the matched-row count of an entity without a version field
        means some rows were already gone: the fast pass gives up
        (:class:`_ShortCountError`) and the careful pass locks the rows first and
        deletes only those that exist. With a version field it is stale.
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
        if vi is None:
            keys = [str(r[2]) for r in rows]
            where = f"{alive}`id` IN ("
        else:
            vq = schema.columns[vi].quoted
            keys = [f"({r[2]},{int(r[3][vi])})" for r in rows]
            where = f"{alive}(`id`,{vq}) IN ("
        head = (
            f"UPDATE {table} SET `fake_delete` = `id`"
            + (f",{vq}={vq}+1" if vi is not None else "")
            + f" WHERE {where}"
            if fake
            else f"DELETE FROM {table} WHERE {where}"
        )
        matched = 0
        for chunk in chunk_rows(keys, self.max_packet, len(head)):
            matched += self.run(head + ",".join(chunk) + ")", schema).rowcount
        if matched < len(rows):
            if vi is None:
                raise _ShortCountError()
            raise self.stale(schema, [r[2] for r in rows], "delete")
        if fake or vi is not None:
            for _, entity, _, values in rows:
                if fake:
                    result.assign.append((entity, "fake_delete", True))
                if vi is not None:
                    result.assign.append((entity, schema.names[vi], values[vi] + 1))
        streams = schema.delete_streams
        if not streams:
            return
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
        self, schema: EntitySchema, rows: list[_Delete], fake: bool
    ) -> list[_Delete]:
        """Lock the rows of ``rows`` that still exist (alive, for a fake delete)."""
        head = f"SELECT `id` FROM {schema.quoted_table} WHERE `id` IN ("
        tail = ")" + (" AND `fake_delete` = 0" if fake else "") + " FOR UPDATE"
        found: set[int] = set()
        ids = [str(r[2]) for r in rows]
        for chunk in chunk_rows(ids, self.max_packet, len(head) + len(tail)):
            found.update(
                int(r[0]) for r in self.conn.query(head + ",".join(chunk) + tail)
            )
        return [r for r in rows if r[2] in found]

    def stale(
        self, schema: EntitySchema, ids: list[int], what: str
    ) -> StaleEntityError:
        """The error for a statement that matched fewer rows than it was sent for."""
        vi = schema.version_index
        head = f"SELECT `id` FROM {schema.quoted_table} WHERE `id` IN ("
        present: set[int] = set()
        for chunk in chunk_rows([str(i) for i in ids], self.max_packet, len(head)):
            present.update(
                int(r[0]) for r in self.conn.query(head + ",".join(chunk) + ")")
            )
        if what == "update" and vi is None:
            gone = [i for i in ids if i not in present]
            reason = "the rows were deleted by another flush first"
        else:
            gone = ids
            reason = "another flush changed or deleted the rows first"
        shown = ", ".join(str(i) for i in gone[:20]) + (
            ", ..." if len(gone) > 20 else ""
        )
        return StaleEntityError(
            f"{schema.label}: cannot {what} id {shown}: {reason}; nothing of MySQL "
            f"pool {self.pool.name!r} was written. Reload the entities and edit them "
            "again, or orm.clear_flush() to drop the changes",
            schema.label,
            gone,
            pool=self.pool.name,
        )

    def updates(
        self,
        schema: EntitySchema,
        changed: tuple[int, ...],
        rows: list[_Update],
        result: FlushResult,
    ) -> None:
        columns = [schema.columns[i] for i in changed]
        table = schema.quoted_table
        vi = schema.version_index
        vq = schema.columns[vi].quoted if vi is not None else ""
        rows = sorted(rows, key=_update_id)  # one lock order, as for deletes
        matched = 0
        if len(rows) == 1:
            row = rows[0]
            sets = ",".join(
                f"{c.quoted}={lit}" for c, lit in zip(columns, row.literals)
            )
            where = f"`id`={row.id}"
            if vi is not None:
                sets += f",{vq}={vq}+1"
                where += f" AND {vq}={int(row.version or 0)}"
            matched = self.run(
                f"UPDATE {table} SET {sets} WHERE {where}", schema
            ).rowcount
        else:
            # One multi-table UPDATE joined to a derived table of the new values:
            # several times faster on the server than CASE id WHEN ... per column.
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
                        f"{lit} AS {c.quoted}"
                        for lit, c in zip(first.literals, columns)
                    )
                    + (
                        f",{int(first.version or 0)} AS `_fluxaorm_version`"
                        if vi is not None
                        else ""
                    )
                ]
                values.extend(chunk[1:])
                matched += self.run(
                    f"UPDATE {table} t JOIN ({' UNION ALL '.join(values)}) v "
                    f"ON {on} SET {sets}",
                    schema,
                ).rowcount
        if matched < len(rows):
            raise self.stale(schema, [r.id for r in rows], "update")
        if vi is not None:
            vname = schema.names[vi]
            for row in rows:
                for entity in row.entities:
                    result.assign.append((entity, vname, (row.version or 0) + 1))
        streams = schema.update_streams(tuple(c.name for c in columns))
        if not streams:
            return
        for row in rows:
            bind = {c.name: c.wire(v) for c, v in zip(columns, row.new)}
            old = {c.name: _wire_or_raw(c, v) for c, v in zip(columns, row.old)}
            if vi is not None:
                bind[vname] = (row.version or 0) + 1
                old[vname] = row.version
            self.event(schema, streams, "edit", row.id, pack_bind(bind), pack_bind(old))

    def inserts(
        self,
        schema: EntitySchema,
        rows: list[tuple[int, Any, dict[str, Any], str]],
        explicit: bool,
        result: FlushResult,
    ) -> None:
        prefix = schema.insert_prefix_with_id if explicit else schema.insert_prefix
        literals = [r[3] for r in rows]
        ids: list[int] = []
        for chunk in chunk_rows(literals, self.max_packet, len(prefix) + 16):
            sql = prefix + ",".join(chunk)
            if explicit:
                self.run(sql, schema)
            else:
                ids.extend(
                    self.insert_ids(sql, schema.quoted_table, len(chunk), schema)
                )
        if explicit:
            ids = [r[2]["id"] for r in rows]
        new_ids = result.new_ids
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

    def insert_ids(
        self,
        sql: str | bytes,
        table: str,
        count: int,
        schema: EntitySchema | None = None,
    ) -> list[int]:
        """Run a multi-row INSERT of ``count`` auto-id rows and return their ids in order.

        The ids never depend on guessing: with ``innodb_autoinc_lock_mode`` 0 or 1 a
        multi-row INSERT gets consecutive ids (stepped by
        ``auto_increment_increment``); with 2, MariaDB returns them (``RETURNING``)
        and MySQL reads them back inside a snapshot older than the INSERT.
        """
        if self.strategy == _RETURNING:
            if isinstance(sql, bytes):
                sql += b" RETURNING `id`"
            else:
                sql += " RETURNING `id`"
        cursor = self.run(sql, schema)
        if self.strategy == _RETURNING:
            return [int(r[0]) for r in cursor.fetchall()]
        first = int(cursor.lastrowid)
        if self.strategy == _CONSECUTIVE:
            step = self.pool.info.autoinc_increment
            return list(range(first, first + step * count, step))
        # The transaction's snapshot predates this INSERT, so the only rows it sees
        # at or past `first` are the ones this statement wrote.
        rows = self.conn.query(
            f"SELECT `id` FROM {table} WHERE `id` >= {first} ORDER BY `id` LIMIT {count}"
        )
        return [int(r[0]) for r in rows]


def _row_id(row: _Delete) -> int:
    return row[2]


def _update_id(row: _Update) -> int:
    return row.id


class _ShortCountError(Exception):
    """A delete matched fewer rows than it named: rerun the pool carefully."""


def _wire_or_raw(column: Any, value: Any) -> Any:
    try:
        return column.wire(value)
    except (ValidationError, AttributeError, TypeError, ValueError):
        return value


def _run_pool(engine: Engine, work: _PoolPlan) -> FlushResult:
    """Run one pool's transaction; rerun it carefully if a delete fell short."""
    try:
        return _run_pool_once(engine, work, careful=False)
    except _ShortCountError:
        # Nothing was committed: some rows to delete were already gone, so run
        # the transaction again, locking the rows before deleting them.
        return _run_pool_once(engine, work, careful=True)


def _run_pool_once(engine: Engine, work: _PoolPlan, careful: bool) -> FlushResult:
    pool = engine.mysql_pool(work.name)
    strategy = _assign_strategy(pool)
    if engine.id_strategy is not None:
        strategy = engine.id_strategy
    result = FlushResult(work.name)
    conn = pool.acquire()
    try:
        if strategy == _SNAPSHOT:
            conn.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
        else:
            conn.begin()
        try:
            steps = _Statements(engine, conn, pool, strategy, careful)
            for schema, rows in work.deletes.items():
                steps.deletes(schema, rows, False, result)
            for schema, rows in work.fake_deletes.items():
                steps.deletes(schema, rows, True, result)
            for (schema, changed), updates in work.updates.items():
                steps.updates(schema, changed, updates, result)
            for schema, (auto_rows, explicit_rows) in work.inserts.items():
                if auto_rows:
                    steps.inserts(schema, auto_rows, False, result)
                if explicit_rows:
                    steps.inserts(schema, explicit_rows, True, result)
            limit = payload_limit(steps.max_packet)
            result.batches = []
            for name, records in steps.records.items():
                batch = EventBatch(name, records)
                fits = steps.sizes[name] <= limit
                result.batches.extend([batch] if fits else batch.split(limit))
            if result.batches and engine.outbox:
                for sql, count in insert_statements(result.batches, steps.max_packet):
                    result.outbox_ids += steps.insert_ids(
                        sql, "`_fluxaorm_outbox`", count
                    )
            try:
                conn.commit()
            except DatabaseError as exc:
                exc.during_commit = conn.broken  # lost mid-COMMIT: outcome unknown
                raise
        except BaseException:
            conn.rollback()
            raise
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
    plans, clean = plan(pending)
    for key in clean:
        pending.updates.pop(key, None)
    results: list[FlushResult] = []
    failure: BaseException | None = None
    for work in plans.values():
        try:
            results.append(_run_pool(engine, work))
        except (DatabaseError, ValidationError) as exc:
            failure = exc
            break
        _committed(pending, work, results[-1])
    permanent = _publish_results(engine, results)
    if failure is not None:
        raise failure
    if permanent is not None:
        raise permanent


def _committed(pending: Pending, work: _PoolPlan, result: FlushResult) -> None:
    """Reflect a committed pool in the entities and drop its changes from ``pending``."""
    for schema, entity, ident in result.new_ids:
        schema.set_id(entity, ident)
    for entity, name, value in result.assign:
        object.__setattr__(entity, name, value)
    for rows in (*work.deletes.values(), *work.fake_deletes.values()):
        for row_key, _, _, _ in rows:
            pending.deletes.pop(row_key, None)
            pending.forced.discard(row_key)
    for row_key in work.update_keys:
        pending.updates.pop(row_key, None)
    for key in work.insert_keys:
        pending.inserts.pop(key, None)


def _publish_results(engine: Engine, results: list[FlushResult]) -> StreamError | None:
    """Publish committed pools' batches; return a permanent Redis error, if any."""
    batches: list[EventBatch] = []
    owners: list[tuple[str, int | None]] = []
    for result in results:
        for i, batch in enumerate(result.batches):
            batches.append(batch)
            owners.append(
                (result.pool, result.outbox_ids[i] if result.outbox_ids else None)
            )
    if not batches:
        return None
    outcome = PublishOutcome()
    done, errors = publish(engine.redis_pools, engine.encoder, batches, outcome=outcome)
    if not engine.outbox:
        if errors:
            raise StreamError(
                f"the changes were committed but their stream entries were lost: {errors[0]} "
                "(turn the outbox on to keep them)",
                pool=errors[0].pool,
                orig=errors[0].orig,
                permanent=errors[0].permanent,
            )
        return None
    published: dict[str, list[int]] = {}
    refused: dict[str, list[tuple[int, int]]] = {}
    for i, (pool, outbox_id) in enumerate(owners):
        if outbox_id is None:
            continue
        if i in done:
            published.setdefault(pool, []).append(outbox_id)
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
    permanent: StreamError | None = None
    for error in errors:
        if error.permanent:
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
            continue
        _log.warning(
            "%s; the entries wait in the outbox for engine.relay_outbox()", error
        )
    for pool, ids in published.items():
        try:
            with engine.mysql_pool(pool).connection() as conn:
                delete_rows(conn, ids)
        except DatabaseError as exc:
            # Redis has the entries; a leftover row means at most a duplicate later.
            _log.warning("published outbox rows %s could not be deleted: %s", ids, exc)
    return permanent
