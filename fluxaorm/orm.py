"""The ORM: one unit of work that loads entities and collects changes for ``flush()``.

Users get it from ``Engine.new_orm()``. It records changes (no I/O) and reads
through the engine's MySQL pools; ``flush.py`` writes what it recorded.
"""

from __future__ import annotations

import difflib
import functools
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, cast, overload

from . import changes as _changes
from . import flush as _flush
from .errors import ConcurrentUseError, StreamError, ValidationError
from .events import EventBatch, EventRecord, pack_bind
from .outbox import Publication, PublishOutcome, publish
from .query import Pager, Where, render_search
from .sql import chunk_rows

if TYPE_CHECKING:
    from .broker import EventBroker
    from .db import Connection, MySQLPool
    from .engine import Engine
    from .replicas import ReplicaSet
    from .schema import EntitySchema

__all__ = ["ORM"]

E = TypeVar("E")
P = ParamSpec("P")
F = TypeVar("F", bound=Callable[..., Any])
# Loaded entities are tracked weakly; entries of collected ones are swept when
# the table has grown past this many since the last sweep.
_SWEEP_EVERY = 4096


def _exclusive(method: F) -> F:
    """Refuse a call while another thread is inside a method of the same ORM."""

    @functools.wraps(method)
    def guarded(self: ORM, *args: Any, **kwargs: Any) -> Any:
        guard = self._guard
        if not guard.acquire(False):
            raise ConcurrentUseError(
                f"this ORM is in use by another thread ({method.__name__} was "
                "called while another call runs); an ORM is not thread-safe: "
                "use one ORM per thread or task (engine.new_orm() is cheap)"
            )
        try:
            return method(self, *args, **kwargs)
        finally:
            guard.release()

    return cast(F, guarded)


class ORM:
    """One unit of work: load entities, record inserts, edits and deletes, flush them.

    Not thread-safe: use one ORM per thread or task (``engine.new_orm()`` is cheap).

    On a MySQL pool registered with read replicas, the read methods read a
    replica, unless called with ``primary=True`` or once this ORM has flushed
    to that pool: from then on it reads its own writes from the primary.
    """

    def __init__(self, engine: Engine):
        self._engine = engine
        # MySQL pool -> its read replicas (empty when no pool has any), and the
        # pools this ORM has flushed to, which it reads from the primary.
        self._replicas = engine.replica_sets
        self._wrote_to: set[str] = set()
        self._pending = _changes.Pending()
        # id(object) -> (that object, its tracked copy, row) while the copy is
        # pending: editing the same object twice yields one copy. The object is
        # held so that its id() cannot be reused by another one meanwhile.
        self._copies: dict[int, tuple[Any, Any, _changes.RowKey]] = {}
        # id(entity) -> (weak or strong reference, schema, values as loaded or
        # last flushed): flush() refuses changes made without edit_entity().
        self._loaded: dict[
            int, tuple[Callable[[], Any], EntitySchema, tuple[Any, ...]]
        ] = {}
        # id(tracked copy) -> (reference, values when edited): what a delete of the
        # copy streams, even after clear_flush() dropped its edit.
        self._edited_from: dict[int, tuple[Callable[[], Any], tuple[Any, ...]]] = {}
        self._sweep_at = _SWEEP_EVERY
        # Whether _loaded or _edited_from holds a strong reference (_Strong).
        self._strong = False
        self._guard = threading.RLock()

    def __repr__(self) -> str:
        p = self._pending
        return f"<ORM inserts={len(p.inserts)} updates={len(p.updates)} deletes={len(p.deletes)}>"

    def _track(
        self, schema: EntitySchema, entity: Any, values: tuple[Any, ...]
    ) -> None:
        """Remember an entity's values, to catch changes made without edit_entity()."""
        loaded = self._loaded
        loaded[id(entity)] = (self._reference(entity), schema, values)
        if len(loaded) >= self._sweep_at:
            self._sweep()

    def _loaded_changes(self) -> None:
        """Raise for a tracked entity changed in place instead of through edit_entity()."""
        pending = self._pending
        dead: list[int] = []
        for key, (ref, schema, values) in self._loaded.items():
            entity = ref()
            if entity is None:
                dead.append(key)
                continue
            current = schema.get_values(entity)
            if current == values:
                continue
            row = (schema, values[0])
            if row in pending.deletes:
                continue  # deleted: its changes are superseded
            changed = [
                n
                for n, a, b in zip(schema.names, current, values)
                if not (a is b or (type(a) is type(b) and a == b))
            ]
            if not changed:
                continue
            raise ValidationError(
                f"id={values[0]} was changed ({', '.join(changed)}) without "
                "orm.edit_entity(): flush() would not write it. Call "
                "edited = orm.edit_entity(entity) and change the copy it returns "
                "(or reload the entity)",
                schema.label,
                changed[0],
            )
        for key in dead:
            del self._loaded[key]

    @property
    def engine(self) -> Engine:
        """The engine this ORM belongs to."""
        return self._engine

    @property
    def has_changes(self) -> bool:
        """Whether anything waits for ``flush()`` (edits may still turn out clean)."""
        return bool(self._pending)

    # -- recording changes -------------------------------------------------------

    # The class overload takes the constructor's parameters (ParamSpec), so a type
    # checker reports a keyword that names no field, or a value of the wrong type.
    @overload
    def new_entity(
        self, entity: Callable[P, E], /, *args: P.args, **values: P.kwargs
    ) -> E: ...

    @overload
    def new_entity(self, entity: E, /) -> E: ...

    @_exclusive
    def new_entity(self, entity: Any, /, *args: Any, **values: Any) -> Any:
        """Create an entity (or adopt an instance you built) to insert at the next flush.

        ``orm.new_entity(UserEntity, name="Tom")`` has the signature of
        ``UserEntity(...)`` for a type checker, which reports a keyword that
        names no field, or a value of the wrong type, before the code runs.

        Args:
            entity: an entity class, or an instance of one.
            *args: positional field values, passed to the class as they are.
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
                instance = entity(*args, **values)
            except TypeError as exc:
                # Only now look for the cause: the constructor checks names itself.
                unknown = [k for k in values if k not in schema.init_names]
                if unknown:
                    raise _unknown_field(schema, unknown[0]) from None
                raise ValidationError(
                    f"cannot create the entity: {exc}", schema.label
                ) from None
        else:
            if args or values:
                raise ValidationError(
                    "pass field values either to the class or to the instance, not both",
                    type(entity).__qualname__,
                )
            schema = self._schema_of(entity, "new_entity")
            instance = entity
        self._pending.inserts[id(instance)] = (schema, instance)
        return instance

    @_exclusive
    def edit_entity(self, entity: E) -> E:
        """Return a tracked copy of a loaded entity; change its fields, then flush.

        The copy remembers the values the entity has now; ``flush()`` writes and
        streams only the fields that differ (``Decimal('1.0')`` and
        ``Decimal('1.00')`` are the same value). Call it on an entity as loaded;
        calling it again on the same object before the flush returns the same copy.
        A row has at most one pending change: objects of the same row edited
        separately are merged into one update (two objects setting one field to
        different values is an error at ``flush()``).

        Raises:
            ConfigurationError: the class is not registered.
            ValidationError: the entity was never saved, or its row is pending
                deletion.
        """
        schema = self._schema_of(entity, "edit_entity")
        key = id(entity)
        pending = self._pending
        if key in pending.inserts:
            return entity
        known = self._copies.get(key)
        if known is not None and known[0] is entity:
            tracked_before: E = known[1]
            return tracked_before
        ident = _changes.saved_id(schema, entity, "edit")
        row = (schema, ident)
        if row in pending.deletes:
            raise ValidationError(
                f"id={ident} is pending deletion in this ORM; flush (or "
                "clear_flush()) before editing it",
                schema.label,
            )
        copies = pending.updates.get(row)
        if copies is not None and any(c is entity for c, _ in copies):
            return entity  # already a tracked copy
        tracked: E = schema.copy(entity)
        snapshot = self._loaded_values(schema, entity)
        pending.updates.setdefault(row, []).append((tracked, snapshot))
        self._copies[key] = (entity, tracked, row)
        self._edited_from[id(tracked)] = (self._reference(tracked), snapshot)
        self._copies[id(tracked)] = (tracked, tracked, row)
        return tracked

    @_exclusive
    def delete_entity(self, entity: Any, *, force: bool = False) -> None:
        """Delete an entity at the next flush.

        An entity with a ``fake_delete`` field is only marked deleted (its row
        keeps living, hidden from reads) unless ``force=True``. Deleting an entity
        that was never flushed just forgets it. The delete supersedes any pending
        edit of the same row (whichever object holds it), and the Delete event
        carries the values as loaded.

        Raises:
            ConfigurationError: the class is not registered.
            ValidationError: the entity was never saved.
        """
        schema = self._schema_of(entity, "delete_entity")
        key = id(entity)
        pending = self._pending
        if pending.inserts.pop(key, None) is not None:
            return
        ident = _changes.saved_id(schema, entity, "delete")
        row = (schema, ident)
        values: tuple[Any, ...] | None = None
        for tracked, snapshot in pending.updates.pop(row, ()):
            self._copies.pop(id(tracked), None)
            if tracked is entity:
                values = snapshot
        if values is None:
            values = self._loaded_values(schema, entity)
        self._copies = {k: v for k, v in self._copies.items() if v[2] != row}
        pending.deletes[row] = (schema, entity, values)
        if force:
            pending.forced.add(row)
        else:
            pending.forced.discard(row)

    def _loaded_values(self, schema: EntitySchema, entity: Any) -> tuple[Any, ...]:
        """The values ``entity`` had when loaded (or last flushed), else its current ones."""
        known = self._loaded.get(id(entity))
        if known is not None and known[0]() is entity:
            return known[2]
        edited = self._edited_from.get(id(entity))
        if edited is not None and edited[0]() is entity:
            return edited[1]
        return schema.get_values(entity)

    def _schema_of(self, entity: Any, what: str) -> EntitySchema:
        if entity is None or isinstance(entity, type):
            raise ValidationError(
                f"{what}() takes an entity loaded or created by this ORM, not "
                f"{entity!r}"
                + (
                    " (get_by_id returns None when the row is missing)"
                    if entity is None
                    else ""
                )
            )
        return self._engine.schema(type(entity))

    @_exclusive
    def flush(self) -> None:
        """Write every pending change and stream it.

        Values are validated first; nothing is sent if one is wrong. Each MySQL
        pool's inserts, updates and deletes run in one transaction (multi-row
        statements, only changed columns); after COMMIT the stream entries of the
        flush go to each Redis pool in one round trip. With the outbox on
        (default) the entries are also written in the transaction, so a Redis
        outage or a crash after COMMIT delays them but never loses them.

        Only what MySQL did is streamed: an event is published only for a row a
        statement matched. An update whose row is gone, or a change to a
        versioned row that another flush changed first, raises
        :class:`~fluxaorm.StaleEntityError`; a delete whose row is already gone
        (no version field) publishes nothing.

        Raises:
            ValidationError: a value does not fit its column, or a loaded entity
                was changed without :meth:`edit_entity`; nothing was written.
            StaleEntityError: another flush changed or deleted a row first; that
                MySQL pool rolled back.
            DuplicateKeyError: a unique index refused a row; the pool rolled back.
            DatabaseError: MySQL failed; the pool rolled back.
            StreamError: outbox off: committed changes whose entries Redis
                refused; outbox on: only when Redis refused them for a reason
                retrying cannot fix (they wait in the outbox).

        On any error, the changes that were not committed stay pending: fix them
        and flush again, or call :meth:`clear_flush`.
        """
        if self._loaded:
            self._loaded_changes()
        if not self._pending:
            return
        pending = self._pending
        inserts = list(pending.inserts.values())
        updates = (
            [
                (row, tracked)
                for row, copies in pending.updates.items()
                for tracked, _ in copies
            ]
            if pending.updates
            else []
        )
        deletes = (
            [(row, entity) for row, (_, entity, _) in pending.deletes.items()]
            if pending.deletes
            else []
        )
        if self._replicas:
            # Before the flush: a failing one may still have committed a pool.
            self._wrote_to.update(schema.mysql_pool for schema, _ in inserts)
            self._wrote_to.update(row[0].mysql_pool for row, _ in updates)
            self._wrote_to.update(row[0].mysql_pool for row, _ in deletes)
        observer = self._engine.observer
        try:
            if observer is None:
                _flush.execute(self._engine, pending)
            else:
                observer.flush(functools.partial(_flush.execute, self._engine, pending))
        finally:
            # What committed is tracked from now on with its new values.
            for schema, entity in inserts:
                if id(entity) not in pending.inserts:
                    self._track(schema, entity, schema.get_values(entity))
            for row, tracked in updates:
                if row not in pending.updates:
                    self._track(row[0], tracked, row[0].get_values(tracked))
                    self._edited_from.pop(id(tracked), None)
            for row, entity in deletes:
                if row not in pending.deletes:
                    self._loaded.pop(id(entity), None)
            if self._copies:
                self._copies = {
                    k: v for k, v in self._copies.items() if v[2] in pending.updates
                }
            self._drop_strong()

    def _drop_strong(self) -> None:
        if not self._strong:  # most entities take weak references: nothing to scan
            return
        self._strong = False
        for table in (self._loaded, self._edited_from):
            for key in [k for k, v in table.items() if type(v[0]) is _Strong]:
                del table[key]

    def _reference(self, entity: Any) -> Callable[[], Any]:
        """A weak reference to ``entity``, or, when it has no weakref slot, a
        strong one, dropped when the next flush ends."""
        try:
            return weakref.ref(entity)
        except TypeError:
            self._strong = True
            return _Strong(entity)

    @_exclusive
    def clear_flush(self) -> None:
        """Forget every pending change.

        Entities loaded or flushed before stay known: changing one of them without
        :meth:`edit_entity` is still refused at the next flush, and deleting one
        still streams its values as loaded.
        """
        self._pending.clear()
        self._copies.clear()

    @_exclusive
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
            schema = self._schema_of(entity, "push_dirty")
            ident = _changes.saved_id(schema, entity, "push")
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
        outcome = PublishOutcome()
        done, errors = publish(
            Publication(
                self._engine.redis_pools, self._engine.encoder, ordered, outcome=outcome
            ),
            observer=self._engine.observer,
        )
        published = sum(ordered[i].entries for i in done)
        published += sum(
            ordered[i].entries - len(refused) for i, refused in outcome.refused.items()
        )
        if errors:
            total = sum(b.entries for b in ordered)
            first = errors[0]
            raise StreamError(
                f"push_dirty: {published} of {total} stream entries were published; "
                f"Redis refused the rest: {first}. Pushing again is safe (handlers "
                "are idempotent)",
                pool=first.pool,
                orig=first.orig,
                connection_lost=first.connection_lost,
                permanent=first.permanent,
            )
        return published

    # -- reading -------------------------------------------------------------------

    @_exclusive
    def get_by_id(
        self,
        entity: type[E],
        ident: int,
        *,
        include_deleted: bool = False,
        primary: bool = False,
    ) -> E | None:
        """Load one entity by id; ``None`` when there is no such row.

        Fake-deleted rows count as missing unless ``include_deleted=True``.
        ``primary=True`` reads the pool's primary even when it has read
        replicas (which may lag behind it); so do all reads of an ORM that
        has flushed to that pool.
        """
        schema = self._engine.schema(entity)
        if type(ident) is not int:
            ident = _as_id(schema, ident)
        sql = f"{schema.select_sql} WHERE `id`={ident}"
        if schema.alive_sql and not include_deleted:
            sql += " AND " + schema.alive_sql
        rows = self._query(schema, sql, None, primary)
        if not rows:
            return None
        found: E = self._load_rows(schema, rows)[0]
        return found

    @_exclusive
    def get_by_ids(
        self,
        entity: type[E],
        ids: Iterable[int],
        *,
        include_deleted: bool = False,
        primary: bool = False,
    ) -> list[E | None]:
        """Load entities by id, in the order asked, with ``None`` for missing ones.

        ``primary=True``: read the primary, as :meth:`get_by_id` says.
        """
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

        def fetch(pool: MySQLPool, conn: Connection) -> dict[int, Any]:
            found: dict[int, Any] = {}
            for chunk in chunk_rows(
                distinct, pool.info.max_allowed_packet, len(head) + len(alive)
            ):
                for row in conn.query(head + ",".join(chunk) + ")" + alive):
                    found[row[0]] = row
            return found

        replicas = self._replicas_of(schema, primary) if self._replicas else None
        if replicas is not None:
            found = replicas.read(fetch)
        else:
            pool = self._engine.mysql_pool(schema.mysql_pool)
            conn = pool.acquire()  # not pool.connection(): a hot path
            try:
                found = fetch(pool, conn)
            finally:
                pool.release(conn)
        present = [found[i] for i in wanted if i in found]
        loaded = iter(self._load_rows(schema, present))
        return [next(loaded) if i in found else None for i in wanted]

    @_exclusive
    def search(
        self,
        entity: type[E],
        where: Where | None = None,
        pager: Pager | None = None,
        *,
        include_deleted: bool = False,
        primary: bool = False,
    ) -> list[E]:
        """Load the entities matching ``where``, one page when ``pager`` is given.

        ``primary=True``: read the primary, as :meth:`get_by_id` says.
        """
        schema = self._engine.schema(entity)
        rows = self._select(
            schema, schema.select_sql, where, pager, include_deleted, primary
        )
        return self._load_rows(schema, rows)

    def _load_rows(
        self, schema: EntitySchema, rows: Iterable[tuple[Any, ...]]
    ) -> list[Any]:
        """Build entities from SELECT rows and track them (see :meth:`flush`)."""
        load = schema.load
        values = schema.get_values
        loaded = self._loaded
        ref = weakref.ref
        out = []
        for row in rows:
            entity = load(row)
            try:
                loaded[id(entity)] = (ref(entity), schema, values(entity))
            except TypeError:
                self._track(schema, entity, values(entity))
            out.append(entity)
        if len(loaded) >= self._sweep_at:
            self._sweep()
        return out

    def _sweep(self) -> None:
        """Forget the entries of collected entities."""
        for table in (self._loaded, self._edited_from):
            for key in [k for k, v in table.items() if v[0]() is None]:
                del table[key]
        self._sweep_at = len(self._loaded) + len(self._edited_from) + _SWEEP_EVERY

    @_exclusive
    def search_one(
        self,
        entity: type[E],
        where: Where | None = None,
        *,
        include_deleted: bool = False,
        primary: bool = False,
    ) -> E | None:
        """Load the first entity matching ``where``, or ``None``.

        ``primary=True``: read the primary, as :meth:`get_by_id` says.
        """
        found = self.search(
            entity,
            where,
            Pager(1, 1),
            include_deleted=include_deleted,
            primary=primary,
        )
        return found[0] if found else None

    @_exclusive
    def search_ids(
        self,
        entity: type[Any],
        where: Where | None = None,
        pager: Pager | None = None,
        *,
        include_deleted: bool = False,
        primary: bool = False,
    ) -> list[int]:
        """Return the ids of the entities matching ``where``.

        ``primary=True``: read the primary, as :meth:`get_by_id` says.
        """
        schema = self._engine.schema(entity)
        head = f"SELECT `id` FROM {schema.quoted_table}"
        rows = self._select(schema, head, where, pager, include_deleted, primary)
        return [int(r[0]) for r in rows]

    @_exclusive
    def count(
        self,
        entity: type[Any],
        where: Where | None = None,
        *,
        include_deleted: bool = False,
        primary: bool = False,
    ) -> int:
        """Count the entities matching ``where``: as many as ``search`` would return.

        A ``where`` ending in ORDER BY, GROUP BY or LIMIT (whose parameters may sit
        in that tail) is counted as a derived table, so the count always matches
        the rows ``search`` loads without a pager. ``primary=True``: read the
        primary, as :meth:`get_by_id` says.
        """
        schema = self._engine.schema(entity)
        if where is not None and where.split()[1]:
            alive = "" if include_deleted else schema.alive_sql
            inner, params = render_search(
                f"SELECT 1 FROM {schema.quoted_table}", alive, where, None
            )
            sql = f"SELECT COUNT(*) FROM ({inner}) AS `_fluxaorm_count`"
            return int(self._query(schema, sql, params, primary)[0][0])
        head = f"SELECT COUNT(*) FROM {schema.quoted_table}"
        rows = self._select(schema, head, where, None, include_deleted, primary)
        return int(rows[0][0])

    @_exclusive
    def search_with_count(
        self,
        entity: type[E],
        where: Where | None = None,
        pager: Pager | None = None,
        *,
        include_deleted: bool = False,
        primary: bool = False,
    ) -> tuple[list[E], int]:
        """Return one page of matching entities and the total number of matches.

        ``primary=True``: read the primary, as :meth:`get_by_id` says.
        """
        rows = self.search(
            entity, where, pager, include_deleted=include_deleted, primary=primary
        )
        if pager is not None and (len(rows) == pager.page_size or pager.page > 1):
            total = self.count(
                entity, where, include_deleted=include_deleted, primary=primary
            )
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
        primary: bool,
    ) -> Sequence[tuple[Any, ...]]:
        alive = "" if include_deleted else schema.alive_sql
        sql, params = render_search(head, alive, where, pager)
        return self._query(schema, sql, params, primary)

    def _query(
        self,
        schema: EntitySchema,
        sql: str,
        params: Sequence[Any] | None,
        primary: bool,
    ) -> Sequence[tuple[Any, ...]]:
        """Send one read to a replica of the schema's pool, or to its primary."""
        if self._replicas and not primary:
            replicas = self._replicas_of(schema, primary)
            if replicas is not None:
                return replicas.read(lambda _, conn: conn.query(sql, params))
        with self._engine.mysql_pool(schema.mysql_pool).connection() as conn:
            return conn.query(sql, params)

    def _replicas_of(self, schema: EntitySchema, primary: bool) -> ReplicaSet | None:
        """The replicas a read of ``schema`` may use (None: read the primary)."""
        if primary or schema.mysql_pool in self._wrote_to:
            return None
        return self._replicas.get(schema.mysql_pool)

    # -- streams ---------------------------------------------------------------------

    def get_event_broker(self) -> EventBroker:
        """Return the broker that reports stream statistics (see docs/statistics.md)."""
        return self._engine.get_event_broker()


class _Strong:
    """A strong reference with the call interface of ``weakref.ref``."""

    __slots__ = ("entity",)

    def __init__(self, entity: Any):
        self.entity = entity

    def __call__(self) -> Any:
        return self.entity


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
