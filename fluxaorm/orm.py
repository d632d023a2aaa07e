"""The ORM: one unit of work that loads entities and collects changes for ``flush()``.

Users get it from ``Engine.new_orm()``. It records changes (no I/O) and reads
through the engine's MySQL pools; ``flush.py`` writes what it recorded.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, overload

from . import flush as _flush
from .errors import ValidationError
from .events import EventBatch, EventRecord, pack_bind
from .outbox import publish
from .query import Pager, Where, render_search
from .sql import chunk_rows

if TYPE_CHECKING:
    from .broker import EventBroker
    from .engine import Engine
    from .schema import EntitySchema

__all__ = ["ORM"]

E = TypeVar("E")


class ORM:
    """One unit of work: load entities, record inserts, edits and deletes, flush them.

    Not thread-safe: use one ORM per thread or task (``engine.new_orm()`` is cheap).
    """

    def __init__(self, engine: Engine):
        self._engine = engine
        self._pending = _flush.Pending()
        # id(loaded entity) -> (that entity, its tracked copy), while the copy is
        # pending: editing the same object twice yields one copy, so one row never
        # gets two competing updates in a flush.
        self._copies: dict[int, tuple[Any, Any]] = {}

    def __repr__(self) -> str:
        p = self._pending
        return f"<ORM inserts={len(p.inserts)} updates={len(p.updates)} deletes={len(p.deletes)}>"

    @property
    def engine(self) -> Engine:
        """The engine this ORM belongs to."""
        return self._engine

    @property
    def has_changes(self) -> bool:
        """Whether anything waits for ``flush()`` (edits may still turn out clean)."""
        return bool(self._pending)

    # -- recording changes -------------------------------------------------------

    @overload
    def new_entity(self, entity: type[E], /, **values: Any) -> E: ...

    @overload
    def new_entity(self, entity: E, /) -> E: ...

    def new_entity(self, entity: Any, /, **values: Any) -> Any:
        """Create an entity (or adopt an instance you built) to insert at the next flush.

        Args:
            entity: an entity class, or an instance of one.
            **values: field values for a new instance; unset fields keep their
                defaults. Values are checked at ``flush()``.

        Returns:
            The entity; its ``id`` is set by ``flush()`` (leave it 0 for an
            auto-increment id, or set your own).

        Raises:
            ConfigurationError: the class is not registered.
            ValidationError: a keyword names no field of the entity.
        """
        if isinstance(entity, type):
            schema = self._engine.schema(entity)
            try:
                instance = entity(**values)
            except TypeError as exc:
                # Only now look for the cause: the constructor checks names itself.
                unknown = [k for k in values if k not in schema.init_names]
                if unknown:
                    raise _unknown_field(schema, unknown[0]) from None
                raise ValidationError(
                    f"cannot create the entity: {exc}", schema.label
                ) from None
        else:
            if values:
                raise ValidationError(
                    "pass field values either to the class or to the instance, not both",
                    type(entity).__qualname__,
                )
            schema = self._engine.schema(type(entity))
            instance = entity
        self._pending.inserts[id(instance)] = (schema, instance)
        return instance

    def edit_entity(self, entity: E) -> E:
        """Return a tracked copy of a loaded entity; change its fields, then flush.

        The copy remembers the values the entity has now; ``flush()`` writes and
        streams only the fields that differ (``Decimal('1.0')`` and
        ``Decimal('1.00')`` are the same value). Call it on an entity as loaded;
        calling it again on the same object before the flush returns the same copy.

        Raises:
            ConfigurationError: the class is not registered.
            ValidationError: the entity was never saved.
        """
        schema = self._engine.schema(type(entity))
        key = id(entity)
        if key in self._pending.inserts or key in self._pending.updates:
            return entity
        known = self._copies.get(key)
        if known is not None and id(known[1]) in self._pending.updates:
            tracked_before: E = known[1]
            return tracked_before
        _flush._saved_id(schema, entity, "edit")
        tracked = copy.copy(entity)
        self._pending.updates[id(tracked)] = (
            schema,
            tracked,
            schema.get_values(entity),
        )
        self._copies[key] = (entity, tracked)
        return tracked

    def delete_entity(self, entity: Any, *, force: bool = False) -> None:
        """Delete an entity at the next flush.

        An entity with a ``fake_delete`` field is only marked deleted (its row
        keeps living, hidden from reads) unless ``force=True``. Deleting an entity
        that was never flushed just forgets it.

        Raises:
            ConfigurationError: the class is not registered.
            ValidationError: the entity was never saved.
        """
        schema = self._engine.schema(type(entity))
        key = id(entity)
        if self._pending.inserts.pop(key, None) is not None:
            return
        self._pending.updates.pop(key, None)
        _flush._saved_id(schema, entity, "delete")
        self._pending.deletes[key] = (schema, entity)
        if force:
            self._pending.forced.add(key)

    def flush(self) -> None:
        """Write every pending change and stream it.

        Values are validated first; nothing is sent if one is wrong. Each MySQL
        pool's inserts, updates and deletes run in one transaction (multi-row
        statements, only changed columns); after COMMIT the stream entries of the
        flush go to each Redis pool in one round trip. With the outbox on
        (default) the entries are also written in the transaction, so a Redis
        outage or a crash after COMMIT delays them but never loses them.

        Raises:
            ValidationError: a value does not fit its column; nothing was written.
            DuplicateKeyError: a unique index refused a row; the pool rolled back.
            DatabaseError: MySQL failed; the pool rolled back.
            StreamError: outbox off only: committed changes whose entries Redis
                refused.

        On any error, the changes that were not committed stay pending: fix them
        and flush again, or call :meth:`clear_flush`.
        """
        if not self._pending:
            return
        try:
            _flush.execute(self._engine, self._pending)
        finally:
            if self._copies:
                updates = self._pending.updates
                self._copies = {
                    k: v for k, v in self._copies.items() if id(v[1]) in updates
                }

    def clear_flush(self) -> None:
        """Forget every pending change."""
        self._pending.clear()
        self._copies.clear()

    def push_dirty(self, *entities: Any) -> int:
        """Publish an Update event with every field of each entity, now (no SQL).

        The events go to every stream that receives updates of the entity (id
        streams with ``edit`` and every column stream), one round trip per Redis
        pool. Use it to backfill consumers.

        Returns:
            The number of stream entries written.

        Raises:
            ValidationError: an entity has an invalid value or was never saved.
            StreamError: Redis refused the entries.
        """
        batches: dict[str, EventBatch] = {}
        for entity in entities:
            schema = self._engine.schema(type(entity))
            ident = _flush._saved_id(schema, entity, "push")
            if not schema.push_streams:
                continue
            values = schema.get_values(entity)
            for column, value in zip(schema.columns, values):
                if column.kind != "fake_delete":  # True is valid here: a deleted row
                    column.literal(value)
            bind = schema.wire_values(values)
            record = EventRecord(
                schema.push_streams, "edit", schema.name, ident, pack_bind(bind), None
            )
            batch = batches.get(schema.redis_pool)
            if batch is None:
                batch = batches[schema.redis_pool] = EventBatch(schema.redis_pool)
            batch.records.append(record)
        ordered = list(batches.values())
        done, errors = publish(self._engine.redis_pools, self._engine.encoder, ordered)
        if errors:
            raise errors[0]
        return sum(ordered[i].entries for i in done)

    # -- reading -------------------------------------------------------------------

    def get_by_id(
        self, entity: type[E], ident: int, *, include_deleted: bool = False
    ) -> E | None:
        """Load one entity by id; ``None`` when there is no such row.

        Fake-deleted rows count as missing unless ``include_deleted=True``.
        """
        schema = self._engine.schema(entity)
        if type(ident) is not int:
            ident = _as_id(schema, ident)
        sql = f"{schema.select_sql} WHERE `id`={ident}"
        if schema.alive_sql and not include_deleted:
            sql += " AND " + schema.alive_sql
        with self._engine.mysql_pool(schema.mysql_pool).connection() as conn:
            rows = conn.query(sql)
        return schema.load(rows[0]) if rows else None

    def get_by_ids(
        self, entity: type[E], ids: Iterable[int], *, include_deleted: bool = False
    ) -> list[E | None]:
        """Load entities by id, in the order asked, with ``None`` for missing ones."""
        schema = self._engine.schema(entity)
        wanted = [i if type(i) is int else _as_id(schema, i) for i in ids]
        if not wanted:
            return []
        distinct = [str(i) for i in dict.fromkeys(wanted)]
        head = f"{schema.select_sql} WHERE `id` IN ("
        alive = (
            f" AND {schema.alive_sql}"
            if schema.alive_sql and not include_deleted
            else ""
        )
        found: dict[int, Any] = {}
        pool = self._engine.mysql_pool(schema.mysql_pool)
        with pool.connection() as conn:
            for chunk in chunk_rows(
                distinct, pool.info.max_allowed_packet, len(head) + len(alive)
            ):
                for row in conn.query(head + ",".join(chunk) + ")" + alive):
                    found[row[0]] = row
        load = schema.load
        return [load(found[i]) if i in found else None for i in wanted]

    def search(
        self,
        entity: type[E],
        where: Where | None = None,
        pager: Pager | None = None,
        *,
        include_deleted: bool = False,
    ) -> list[E]:
        """Load the entities matching ``where``, one page when ``pager`` is given."""
        schema = self._engine.schema(entity)
        rows = self._select(schema, schema.select_sql, where, pager, include_deleted)
        load = schema.load
        return [load(row) for row in rows]

    def search_one(
        self,
        entity: type[E],
        where: Where | None = None,
        *,
        include_deleted: bool = False,
    ) -> E | None:
        """Load the first entity matching ``where``, or ``None``."""
        found = self.search(entity, where, Pager(1, 1), include_deleted=include_deleted)
        return found[0] if found else None

    def search_ids(
        self,
        entity: type[Any],
        where: Where | None = None,
        pager: Pager | None = None,
        *,
        include_deleted: bool = False,
    ) -> list[int]:
        """Return the ids of the entities matching ``where``."""
        schema = self._engine.schema(entity)
        head = f"SELECT `id` FROM {schema.quoted_table}"
        return [
            int(r[0]) for r in self._select(schema, head, where, pager, include_deleted)
        ]

    def count(
        self,
        entity: type[Any],
        where: Where | None = None,
        *,
        include_deleted: bool = False,
    ) -> int:
        """Count the entities matching ``where``: as many as ``search`` would return.

        A ``where`` ending in ORDER BY, GROUP BY or LIMIT (whose parameters may sit
        in that tail) is counted as a derived table, so the count always matches
        the rows ``search`` loads without a pager.
        """
        schema = self._engine.schema(entity)
        if where is not None and where.split()[1]:
            alive = "" if include_deleted else schema.alive_sql
            inner, params = render_search(
                f"SELECT 1 FROM {schema.quoted_table}", alive, where, None
            )
            sql = f"SELECT COUNT(*) FROM ({inner}) AS `_fluxaorm_count`"
            with self._engine.mysql_pool(schema.mysql_pool).connection() as conn:
                return int(conn.query(sql, params)[0][0])
        head = f"SELECT COUNT(*) FROM {schema.quoted_table}"
        rows = self._select(schema, head, where, None, include_deleted)
        return int(rows[0][0])

    def search_with_count(
        self,
        entity: type[E],
        where: Where | None = None,
        pager: Pager | None = None,
        *,
        include_deleted: bool = False,
    ) -> tuple[list[E], int]:
        """Return one page of matching entities and the total number of matches."""
        rows = self.search(entity, where, pager, include_deleted=include_deleted)
        if pager is not None and (len(rows) == pager.page_size or pager.page > 1):
            total = self.count(entity, where, include_deleted=include_deleted)
        else:
            total = len(rows)
        return rows, total

    def _select(
        self,
        schema: EntitySchema,
        head: str,
        where: Where | None,
        pager: Pager | None,
        include_deleted: bool,
    ) -> Sequence[tuple[Any, ...]]:
        alive = "" if include_deleted else schema.alive_sql
        sql, params = render_search(head, alive, where, pager)
        with self._engine.mysql_pool(schema.mysql_pool).connection() as conn:
            return conn.query(sql, params)

    # -- streams ---------------------------------------------------------------------

    def get_event_broker(self) -> EventBroker:
        """Return the broker that reports stream statistics (SPEC §6)."""
        return self._engine.get_event_broker()


def _as_id(schema: EntitySchema, value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    raise ValidationError(
        f"an id must be an int, not {type(value).__name__} {value!r}",
        schema.label,
        "id",
    )


def _unknown_field(schema: EntitySchema, name: str) -> ValidationError:
    close = difflib.get_close_matches(name, schema.init_names, n=1)
    hint = (
        f"; did you mean {close[0]!r}?"
        if close
        else f" (fields: {', '.join(schema.init_names)})"
    )
    return ValidationError(f"no such field{hint}", schema.label, name)
