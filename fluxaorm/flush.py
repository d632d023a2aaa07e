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
from .errors import DatabaseError, DuplicateKeyError, StreamError, ValidationError
from .events import EventBatch, EventRecord, pack_bind
from .outbox import delete_rows, insert_statements, payload_limit, publish
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


class Pending:
    """What an ORM holds between flushes (owned by ``ORM``, read here).

    ``inserts`` / ``deletes`` map ``id(entity)`` to ``(schema, entity)``;
    ``updates`` maps ``id(copy)`` to ``(schema, copy, snapshot values)``.
    """

    __slots__ = ("deletes", "forced", "inserts", "updates")

    def __init__(self) -> None:
        self.inserts: dict[int, tuple[EntitySchema, Any]] = {}
        self.updates: dict[int, tuple[EntitySchema, Any, tuple[Any, ...]]] = {}
        self.deletes: dict[int, tuple[EntitySchema, Any]] = {}
        self.forced: set[int] = set()

    def __bool__(self) -> bool:
        return bool(self.inserts or self.updates or self.deletes)

    def clear(self) -> None:
        self.inserts.clear()
        self.updates.clear()
        self.deletes.clear()
        self.forced.clear()


class _Update:
    __slots__ = ("entity", "id", "literals", "new", "old")

    def __init__(
        self,
        entity: Any,
        ident: int,
        literals: list[str],
        new: list[Any],
        old: list[Any],
    ):
        self.entity = entity
        self.id = ident
        self.literals = literals
        self.new = new
        self.old = old


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
        self.deletes: dict[EntitySchema, list[tuple[int, Any, int]]] = {}
        self.fake_deletes: dict[EntitySchema, list[tuple[int, Any, int]]] = {}
        self.updates: dict[tuple[EntitySchema, tuple[int, ...]], list[_Update]] = {}
        self.update_keys: list[int] = []
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

    __slots__ = ("batches", "keys", "new_ids", "outbox_ids", "pool")

    def __init__(self, pool: str):
        self.pool = pool
        self.batches: list[EventBatch] = []
        self.outbox_ids: list[int] = []
        self.new_ids: list[tuple[EntitySchema, Any, int]] = []
        self.keys: list[tuple[str, int]] = []


def plan(pending: Pending) -> tuple[dict[str, _PoolPlan], list[int]]:
    """Validate every pending value and group the work by MySQL pool.

    Returns:
        The work of each MySQL pool, and the keys of tracked entities that did not
        change (they need nothing).

    Raises:
        ValidationError: a value does not fit its column; nothing was sent.
    """
    plans: dict[str, _PoolPlan] = {}
    clean: list[int] = []

    def pool_plan(schema: EntitySchema) -> _PoolPlan:
        found = plans.get(schema.mysql_pool)
        if found is None:
            found = plans[schema.mysql_pool] = _PoolPlan(schema.mysql_pool)
        return found

    for key, (schema, entity) in pending.deletes.items():
        ident = _saved_id(schema, entity, "delete")
        target = pool_plan(schema)
        fake = schema.has_fake_delete and key not in pending.forced
        (target.fake_deletes if fake else target.deletes).setdefault(schema, []).append(
            (key, entity, ident)
        )

    for key, (schema, entity, snapshot) in pending.updates.items():
        update = _diff(schema, entity, snapshot)
        if update is None:
            clean.append(key)
            continue
        changed, change = update
        target = pool_plan(schema)
        target.updates.setdefault((schema, changed), []).append(change)
        target.update_keys.append(key)

    for key, (schema, entity) in pending.inserts.items():
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
    return tuple(changed), _Update(entity, current[0], literals, new, old)


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
        self, engine: Engine, conn: Connection, pool: MySQLPool, strategy: str
    ):
        self.engine = engine
        self.conn = conn
        self.pool = pool
        self.strategy = strategy
        self.max_packet = pool.info.max_allowed_packet
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
        self, schema: EntitySchema, rows: list[tuple[int, Any, int]], fake: bool
    ) -> None:
        ids = [str(ident) for _, _, ident in rows]
        head = (
            f"UPDATE {schema.quoted_table} SET `fake_delete` = `id` WHERE `id` IN ("
            if fake
            else f"DELETE FROM {schema.quoted_table} WHERE `id` IN ("
        )
        for chunk in chunk_rows(ids, self.max_packet, len(head)):
            self.run(head + ",".join(chunk) + ")", schema)
        streams = schema.delete_streams
        if not streams:
            return
        if fake:
            for _, _, ident in rows:
                self.event(
                    schema, streams, "delete", ident, pack_bind({"fake_delete": ident})
                )
            return
        for _, entity, ident in rows:
            self.event(
                schema,
                streams,
                "delete",
                ident,
                pack_bind(schema.wire_values(schema.get_values(entity))),
            )

    def updates(
        self, schema: EntitySchema, changed: tuple[int, ...], rows: list[_Update]
    ) -> None:
        columns = [schema.columns[i] for i in changed]
        table = schema.quoted_table
        if len(rows) == 1:
            row = rows[0]
            sets = ",".join(
                f"{c.quoted}={lit}" for c, lit in zip(columns, row.literals)
            )
            self.run(f"UPDATE {table} SET {sets} WHERE `id`={row.id}", schema)
        else:
            # One multi-table UPDATE joined to a derived table of the new values:
            # several times faster on the server than CASE id WHEN ... per column.
            selects = [f"SELECT {r.id}," + ",".join(r.literals) for r in rows]
            aliases = "".join(f" AS {c.quoted}" for c in columns)
            sets = ",".join(f"t.{c.quoted}=v.{c.quoted}" for c in columns)
            fixed = len(table) + len(sets) + len(aliases) + 64
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
                ]
                values.extend(chunk[1:])
                self.run(
                    f"UPDATE {table} t JOIN ({' UNION ALL '.join(values)}) v "
                    f"ON t.`id`=v.`id` SET {sets}",
                    schema,
                )
        streams = schema.update_streams(tuple(c.name for c in columns))
        if not streams:
            return
        for row in rows:
            bind = {c.name: c.wire(v) for c, v in zip(columns, row.new)}
            old = {c.name: _wire_or_raw(c, v) for c, v in zip(columns, row.old)}
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


def _wire_or_raw(column: Any, value: Any) -> Any:
    try:
        return column.wire(value)
    except (ValidationError, AttributeError, TypeError, ValueError):
        return value


def _run_pool(engine: Engine, work: _PoolPlan) -> FlushResult:
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
            steps = _Statements(engine, conn, pool, strategy)
            for schema, rows in work.deletes.items():
                steps.deletes(schema, rows, fake=False)
            for schema, rows in work.fake_deletes.items():
                steps.deletes(schema, rows, fake=True)
            for (schema, changed), updates in work.updates.items():
                steps.updates(schema, changed, updates)
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
        * no stream entry is published for a pool whose transaction failed;
        * with the outbox on, a committed pool's entries reach Redis at least once,
          even if Redis is down now (they wait in the outbox for the relay);
        * on failure, the changes of the failed pool stay pending and the error is
          raised after the pools that did commit were cleared and published.

    Raises:
        ValidationError: a value does not fit; nothing was sent.
        DuplicateKeyError: a unique index refused a row; that pool rolled back.
        DatabaseError: MySQL failed; that pool rolled back.
        StreamError: only with the outbox off, when Redis refused the entries of
            committed changes.
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
    _publish_results(engine, results)
    if failure is not None:
        raise failure


def _committed(pending: Pending, work: _PoolPlan, result: FlushResult) -> None:
    """Reflect a committed pool in the entities and drop its changes from ``pending``."""
    for schema, entity, ident in result.new_ids:
        schema.set_id(entity, ident)
    for rows in work.fake_deletes.values():
        for _, entity, _ in rows:
            object.__setattr__(entity, "fake_delete", True)
    for rows in (*work.deletes.values(), *work.fake_deletes.values()):
        for key, _, _ in rows:
            pending.deletes.pop(key, None)
            pending.forced.discard(key)
    for key in work.update_keys:
        pending.updates.pop(key, None)
    for key in work.insert_keys:
        pending.inserts.pop(key, None)


def _publish_results(engine: Engine, results: list[FlushResult]) -> None:
    batches: list[EventBatch] = []
    owners: list[tuple[str, int | None]] = []
    for result in results:
        for i, batch in enumerate(result.batches):
            batches.append(batch)
            owners.append(
                (result.pool, result.outbox_ids[i] if result.outbox_ids else None)
            )
    if not batches:
        return
    done, errors = publish(engine.redis_pools, engine.encoder, batches)
    if not engine.outbox:
        if errors:
            raise StreamError(
                f"the changes were committed but their stream entries were lost: {errors[0]} "
                "(turn the outbox on to keep them)",
                pool=errors[0].pool,
                orig=errors[0].orig,
            )
        return
    published: dict[str, list[int]] = {}
    for i, (pool, outbox_id) in enumerate(owners):
        if outbox_id is None:
            continue
        if i in done:
            published.setdefault(pool, []).append(outbox_id)
        else:
            engine.remember_unpublished(pool, outbox_id)
    for error in errors:
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
