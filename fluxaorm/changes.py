"""Changes: what an ORM records between flushes, and the plan that validates them.

``orm.py`` fills a :class:`Pending`; ``flush.py`` calls :func:`plan`, which
validates every value, merges the changes of each row and groups the work by
MySQL pool, before any I/O. Nothing here talks to a server.
"""

from __future__ import annotations

from typing import Any

from .errors import StaleEntityError, ValidationError
from .schema import EntitySchema

__all__ = [
    "Delete",
    "InsertRow",
    "Pending",
    "PoolPlan",
    "RowKey",
    "Update",
    "plan",
    "plan_insert",
    "saved_id",
]

RowKey = tuple[EntitySchema, int]
# A planned insert: (key in Pending.inserts, entity, bind, SQL row literal).
InsertRow = tuple[int, Any, dict[str, Any], str]


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


class Update:
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
Delete = tuple[RowKey, Any, int, tuple[Any, ...]]


class PoolPlan:
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
        self.deletes: dict[EntitySchema, list[Delete]] = {}
        self.fake_deletes: dict[EntitySchema, list[Delete]] = {}
        self.updates: dict[tuple[EntitySchema, tuple[int, ...]], list[Update]] = {}
        self.update_keys: list[RowKey] = []
        # schema -> (auto-id rows, explicit-id rows)
        self.inserts: dict[EntitySchema, tuple[list[InsertRow], list[InsertRow]]] = {}
        self.insert_keys: list[int] = []


def plan(pending: Pending) -> tuple[dict[str, PoolPlan], list[RowKey]]:
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
    plans: dict[str, PoolPlan] = {}
    clean: list[RowKey] = []

    def pool_plan(schema: EntitySchema) -> PoolPlan:
        found = plans.get(schema.mysql_pool)
        if found is None:
            found = plans[schema.mysql_pool] = PoolPlan(schema.mysql_pool)
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
        explicit, row = plan_insert(key, schema, entity)
        target = pool_plan(schema)
        auto_rows, explicit_rows = target.inserts.setdefault(schema, ([], []))
        (explicit_rows if explicit else auto_rows).append(row)
        target.insert_keys.append(key)
    return plans, clean


def plan_insert(key: int, schema: EntitySchema, entity: Any) -> tuple[bool, InsertRow]:
    """Validate and render one pending insert (``key`` as in ``Pending.inserts``).

    Sets a versioned entity's version to 1.

    Returns:
        Whether the entity has an id of its own, and the planned row.

    Raises:
        ValidationError: a value does not fit its column, or the id is not valid.
    """
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
    return explicit, (key, entity, wires, row)


def saved_id(schema: EntitySchema, entity: Any, what: str) -> int:
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
) -> tuple[tuple[int, ...], Update] | None:
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
    return changed, Update(
        [entity for entity, _ in copies],
        ident,
        [merged[i][0] for i in changed],
        [merged[i][1] for i in changed],
        [merged[i][2] for i in changed],
        version,
    )


def _diff(
    schema: EntitySchema, entity: Any, snapshot: tuple[Any, ...]
) -> tuple[tuple[int, ...], Update] | None:
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
    return tuple(changed), Update(
        [entity],
        current[0],
        literals,
        new,
        old,
        snapshot[vi] if vi is not None else None,
    )
