"""Entity schemas: everything the engine knows about one entity class, computed once.

``registry.py`` builds one :class:`EntitySchema` per registered class at
``Registry.validate()``. The ORM, the flush, the loaders, the DDL diff and the event
codec read the precomputed columns, SQL fragments and stream routes from it.
"""

from __future__ import annotations

import copy
import dataclasses
import operator
import typing
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from .errors import SchemaError
from .fields import Column, build_column
from .render import compile_load, compile_row, compile_wire
from .sql import quote
from .tags import EntityOptions, entity_options, parse_field_options

__all__ = ["EntitySchema", "Index", "build_schema", "entity_name"]

_MISSING = object()
_FACTORY: Any = type(attrs.Factory(list))


@attrs.frozen
class Index:
    """A named index over one or more columns."""

    name: str
    unique: bool
    columns: tuple[str, ...]


@attrs.frozen
class _FieldInfo:
    name: str
    metadata: Any
    default: Any
    default_factory: Callable[[], Any] | None
    init: bool


def entity_name(cls: type) -> str:
    """Return the name events carry for ``cls``: its ``name=`` or module + qualified name."""
    given = entity_options(cls).name
    return given if given is not None else f"{cls.__module__}.{cls.__qualname__}"


def _check_entity_name(name: object, label: str) -> None:
    if (
        not isinstance(name, str)
        or not name
        or not name.isprintable()
        or any(c.isspace() for c in name)
    ):
        raise SchemaError(
            f"entity name={name!r} must be a non-empty printable str without "
            'whitespace, e.g. name="shop.User"',
            label,
        )


class EntitySchema:
    """One entity class as stored in MySQL and streamed to Redis.

    Attributes:
        cls: the entity class.
        name: the ``entity`` of stream events: ``@fluxaorm.entity(name=...)``,
            else module + qualified class name.
        label: the class name, used in messages.
        table: the MySQL table name.
        mysql_pool / redis_pool: pool names.
        columns: every stored column, ``id`` first.
        data_columns: ``columns`` without ``id``.
        indexes: named indexes.
        has_fake_delete: whether the entity has a ``fake_delete`` field.
        version_index: the position of the version field (optimistic locking)
            in ``columns``, which is also its position in the tuple
            ``get_values()`` returns; ``None`` when the entity has none.
        version_name: the version field's name, or ``None``.
        insert_streams / edit_streams / delete_streams: stream names fed by inserts,
            by any update, and by deletes.
        field_streams: field name -> streams fed by an update that changes it.
    """

    def __init__(
        self,
        cls: type,
        options: EntityOptions,
        columns: Sequence[Column],
        indexes: Sequence[Index],
        dirty: dict[str, tuple[tuple[str, frozenset[str]], ...]],
        ignored: Sequence[_FieldInfo],
        init_names: Sequence[str] = (),
    ):
        self.cls = cls
        self.name = options.name if options.name is not None else entity_name(cls)
        self.label = cls.__qualname__
        self.table = options.table if options.table is not None else cls.__name__
        self.quoted_table = quote(self.table, self.label, "table name")
        self.mysql_pool = options.mysql_pool
        self.redis_pool = options.redis_pool
        self.columns = tuple(columns)
        self.by_name = {c.name: c for c in self.columns}
        self.id_column = self.columns[0]
        self.data_columns = self.columns[1:]
        self.names = tuple(c.name for c in self.columns)
        self.data_names = self.names[1:]
        self.indexes = tuple(indexes)
        self.has_fake_delete = "fake_delete" in self.by_name
        self.version_index: int | None = next(
            (i for i, c in enumerate(self.columns) if c.version), None
        )
        self.version_name: str | None = (
            None if self.version_index is None else self.names[self.version_index]
        )
        self.get_values: Callable[[Any], tuple[Any, ...]] = _tuple_getter(self.names)
        self.get_data_values: Callable[[Any], tuple[Any, ...]] = _tuple_getter(
            self.data_names
        )
        self._ignored = tuple(ignored)
        self.init_names: tuple[str, ...] = tuple(init_names)
        self._slots = any("__slots__" in k.__dict__ for k in cls.__mro__[:-1])
        self.render_row = compile_row(self.columns, False, self.label)
        self.render_row_with_id = compile_row(self.columns, True, self.label)
        # An entity from a row in columns order, without calling __init__.
        self.load = compile_load(
            cls, self.columns, self._slots, self._set_ignored if self._ignored else None
        )
        # The bind (msgpack-ready values) of a full columns-ordered row.
        self.wire_values = compile_wire(self.columns, self.label)
        # A shallow copy of an entity, as copy.copy makes it (edit_entity).
        self.copy: Callable[[Any], Any] = _copier(cls, self._slots)

        cols = ",".join(c.quoted for c in self.columns)
        data_cols = ",".join(c.quoted for c in self.data_columns)
        self.select_sql = f"SELECT {cols} FROM {self.quoted_table}"
        self.alive_sql = "`fake_delete` = 0" if self.has_fake_delete else ""
        self.insert_prefix = f"INSERT INTO {self.quoted_table} ({data_cols}) VALUES "
        self.insert_prefix_with_id = f"INSERT INTO {self.quoted_table} ({cols}) VALUES "
        # What the field names add to each event of an outbox payload, at most
        # (a bound the flush's short way checks before it sends anything).
        self.bind_names_size = sum(len(name) + 16 for name in self.names)

        self.insert_streams: tuple[str, ...] = ()
        self.edit_streams: tuple[str, ...] = ()
        self.delete_streams: tuple[str, ...] = ()
        self.field_streams: dict[str, tuple[str, ...]] = {}
        for name, sources in dirty.pop("id", ()):
            if "add" in sources:
                self.insert_streams += (name,)
            if "edit" in sources:
                self.edit_streams += (name,)
            if "delete" in sources:
                self.delete_streams += (name,)
        for field_name, names in dirty.items():
            self.field_streams[field_name] = tuple(n for n, _ in names)
        every_update = list(self.edit_streams)
        for names_of_field in self.field_streams.values():
            every_update.extend(n for n in names_of_field if n not in every_update)
        self.push_streams: tuple[str, ...] = tuple(every_update)
        self.streams: tuple[str, ...] = tuple(
            dict.fromkeys(self.insert_streams + self.delete_streams + self.push_streams)
        )
        self._update_routes: dict[tuple[str, ...], tuple[str, ...]] = {}

    def __repr__(self) -> str:
        return f"<EntitySchema {self.label} table={self.table!r}>"

    def update_streams(self, changed: tuple[str, ...]) -> tuple[str, ...]:
        """Return the streams fed by an update that changed the fields ``changed``."""
        found = self._update_routes.get(changed)
        if found is None:
            streams = list(self.edit_streams)
            for field_name in changed:
                for stream in self.field_streams.get(field_name, ()):
                    if stream not in streams:
                        streams.append(stream)
            found = tuple(streams)
            if len(self._update_routes) < 4096:
                self._update_routes[changed] = found
        return found

    def _set_ignored(self, obj: Any) -> None:
        for info in self._ignored:
            value = info.default_factory() if info.default_factory else info.default
            object.__setattr__(obj, info.name, value)

    def set_id(self, obj: Any, value: int) -> None:
        """Set the ``id`` of an entity, bypassing ``__setattr__`` hooks."""
        object.__setattr__(obj, "id", value)


def _copier(cls: type, slots: bool) -> Callable[[Any], Any]:
    """``copy.copy`` for instances of ``cls``, made cheap where it can be.

    A plain class (no ``__slots__``, no ``__copy__``, ``__reduce__``,
    ``__getstate__`` or ``__new__`` of its own) is copied as ``copy.copy`` would
    copy it: a new instance whose ``__dict__`` is the original's, in a few
    operations instead of the copy protocol's dozens. Anything else (a subclass
    too) goes through ``copy.copy`` itself.
    """
    plain = (
        not slots
        and getattr(cls, "__copy__", None) is None
        and all(
            getattr(cls, name, None) is getattr(object, name, None)
            for name in ("__reduce_ex__", "__reduce__", "__getstate__", "__new__")
        )
    )
    if not plain:
        return copy.copy
    new = object.__new__

    def shallow(obj: Any) -> Any:
        if type(obj) is not cls:
            return copy.copy(obj)
        dup = new(cls)
        dup.__dict__.update(obj.__dict__)
        return dup

    return shallow


def _tuple_getter(names: Sequence[str]) -> Callable[[Any], tuple[Any, ...]]:
    if not names:
        # An entity holding only its id has no data columns.
        return lambda obj: ()
    getter = operator.attrgetter(*names)
    if len(names) == 1:
        return lambda obj: (getter(obj),)
    return getter


def _fields_of(cls: type, label: str) -> list[_FieldInfo]:
    if dataclasses.is_dataclass(cls):
        if cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
            raise SchemaError("entities must be mutable; remove frozen=True", label)
        result = []
        default: Any
        for f in dataclasses.fields(cls):
            factory = (
                None if f.default_factory is dataclasses.MISSING else f.default_factory
            )
            default = _MISSING if f.default is dataclasses.MISSING else f.default
            result.append(
                _FieldInfo(f.name, f.metadata.get("orm"), default, factory, f.init)
            )
        return result
    if attrs.has(cls):
        if getattr(cls.__setattr__, "__name__", "") == "_frozen_setattrs":
            raise SchemaError(
                "entities must be mutable; use @attrs.define, not frozen", label
            )
        result = []
        for a in attrs.fields(cls):
            default = _MISSING
            factory = None
            spec: Any = a.default
            if isinstance(spec, _FACTORY):
                if spec.takes_self:
                    raise SchemaError(
                        "attrs Factory(takes_self=True) defaults are not supported",
                        label,
                        a.name,
                    )
                factory = spec.factory
            elif a.default is not attrs.NOTHING:
                default = a.default
            result.append(
                _FieldInfo(a.name, a.metadata.get("orm"), default, factory, a.init)
            )
        return result
    raise SchemaError(
        "is not a dataclass or an attrs class; decorate it with @dataclass or @attrs.define",
        label,
    )


def build_schema(cls: type) -> EntitySchema:
    """Build the schema of one entity class.

    Raises:
        SchemaError: naming the entity and field for anything invalid.
    """
    label = getattr(cls, "__qualname__", repr(cls))
    if not isinstance(cls, type):
        raise SchemaError("is not a class; register the entity class itself", label)
    options = entity_options(cls)
    if options.name is not None:
        _check_entity_name(options.name, label)
    infos = _fields_of(cls, label)
    try:
        hints = typing.get_type_hints(cls)
    except Exception as exc:
        raise SchemaError(f"type hints cannot be resolved: {exc}", label) from exc

    columns: list[Column] = []
    ignored: list[_FieldInfo] = []
    dirty: dict[str, tuple[tuple[str, frozenset[str]], ...]] = {}
    index_parts: dict[str, tuple[bool, list[tuple[int, int, str]]]] = {}
    index_spelling: dict[str, str] = {}
    for order, info in enumerate(infos):
        field_options = parse_field_options(info.metadata, label, info.name)
        if field_options.ignore:
            if info.default is _MISSING and info.default_factory is None:
                raise SchemaError(
                    "an ignored field needs a default (it is not loaded from MySQL)",
                    label,
                    info.name,
                )
            ignored.append(info)
            continue
        quote(info.name, label, "field name", field=info.name)
        column = build_column(
            label,
            info.name,
            hints.get(info.name),
            field_options,
            primary=info.name == "id",
        )
        columns.append(column)
        if field_options.dirty:
            dirty[info.name] = field_options.dirty
        for unique, parts in (
            (True, field_options.unique),
            (False, field_options.index),
        ):
            for index_name, position in parts:
                if index_name.upper() == "PRIMARY":
                    raise SchemaError(
                        "PRIMARY is reserved for the primary key; pick another index name",
                        label,
                        info.name,
                    )
                spelled = index_spelling.setdefault(index_name.lower(), index_name)
                if spelled != index_name:
                    raise SchemaError(
                        f"index {index_name!r} clashes with index {spelled!r}: MySQL "
                        "index names ignore case; spell the name the same way everywhere",
                        label,
                        info.name,
                    )
                kind, members = index_parts.setdefault(index_name, (unique, []))
                if kind != unique:
                    raise SchemaError(
                        f"index {index_name!r} is declared both as unique= and index=; "
                        "use one kind per name",
                        label,
                        info.name,
                    )
                members.append((position or 10_000 + order, order, info.name))

    id_columns = [c for c in columns if c.name == "id"]
    if not id_columns:
        raise SchemaError("has no id field; add `id: int = 0` (the primary key)", label)
    columns.remove(id_columns[0])
    columns.insert(0, id_columns[0])
    versions = [c.name for c in columns if c.version]
    if len(versions) > 1:
        raise SchemaError(
            f"has {len(versions)} version fields ({', '.join(versions)}); "
            "an entity has at most one: keep version=True on one of them",
            label,
            versions[1],
        )

    fake_delete = any(c.name == "fake_delete" for c in columns)
    indexes: list[Index] = []
    for index_name, (unique, members) in index_parts.items():
        positions = [p for p, _, _ in members if p < 10_000]
        if len(positions) != len(set(positions)):
            raise SchemaError(
                f"index {index_name!r} has two fields at the same position", label
            )
        names = tuple(name for _, _, name in sorted(members))
        if len(names) != len(set(names)):
            raise SchemaError(f"index {index_name!r} lists a field twice", label)
        if unique and fake_delete and "fake_delete" not in names:
            # A fake-deleted row holds its id in fake_delete, so it never blocks a
            # live row with the same values.
            names += ("fake_delete",)
        indexes.append(Index(index_name, unique, names))
    init_names = [info.name for info in infos if info.init]
    return EntitySchema(cls, options, columns, indexes, dirty, ignored, init_names)
