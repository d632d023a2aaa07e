"""Field and entity options: the ``"orm"`` metadata grammar, ``column()`` and ``entity()``.

Users write options; ``schema.py`` calls :func:`parse_field_options` and
:func:`entity_options` once, at ``Registry.validate()``, and never again.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import attrs

from .errors import SchemaError

__all__ = [
    "DIRTY_SOURCES",
    "EntityOptions",
    "FieldOptions",
    "column",
    "entity",
    "entity_options",
    "parse_field_options",
]

METADATA_KEY = "orm"
DIRTY_SOURCES = frozenset({"add", "edit", "delete"})
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_INDEX_NAME_RE = re.compile(r"^[A-Za-z0-9_]{1,64}$")
_KEYS = (
    "dirty",
    "ignore",
    "index",
    "length",
    "precision",
    "scale",
    "size",
    "unique",
    "unsigned",
    "version",
)
_INT_SIZES = (8, 16, 24, 32, 64)
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}
_ENTITY_ATTR = "__fluxaorm_entity__"
_STREAM_PREFIX = "dirty_"
# What dataclasses.field itself accepts; column() keeps any other keyword as an
# "orm" option, so validate() reports a misspelt one at its entity and field.
_FIELD_PARAMS = frozenset(inspect.signature(dataclasses.field).parameters)

T = TypeVar("T")


@attrs.frozen
class FieldOptions:
    """The parsed ``"orm"`` options of one field."""

    dirty: tuple[tuple[str, frozenset[str]], ...] = ()
    length: int | None = None  # 0 means "max": a TEXT/BLOB column
    precision: int | None = None
    scale: int | None = None
    unsigned: bool | None = None
    size: int | None = None
    unique: tuple[tuple[str, int], ...] = ()
    index: tuple[tuple[str, int], ...] = ()
    ignore: bool = False
    version: bool = False


@attrs.frozen
class EntityOptions:
    """The options of ``@fluxaorm.entity(...)``."""

    table: str | None = None
    mysql_pool: str = "default"
    redis_pool: str = "default"
    name: str | None = None


def column(
    *,
    default: Any = dataclasses.MISSING,
    default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
    length: int | str | None = None,
    precision: int | None = None,
    scale: int | None = None,
    unsigned: bool | None = None,
    size: int | None = None,
    unique: bool | str | Iterable[str] | None = None,
    index: bool | str | Iterable[str] | None = None,
    dirty: str | Iterable[str] | None = None,
    ignore: bool = False,
    version: bool = False,
    metadata: Mapping[str, Any] | None = None,
    **field_kwargs: Any,
) -> Any:
    """Declare a dataclass field with fluxaorm options.

    ``name: str = fluxaorm.column(length=100, default="")`` is the same as
    ``field(default="", metadata={"orm": {"length": 100}})``. Options are checked
    by ``Registry.validate()``, not here.

    Args:
        default: the field default, as for ``dataclasses.field``.
        default_factory: the field default factory, as for ``dataclasses.field``.
        length: maximum characters (``str``) or bytes (``bytes``); ``"max"`` for
            a MEDIUMTEXT/MEDIUMBLOB column.
        precision: total digits of a ``Decimal`` column.
        scale: digits after the point of a ``Decimal`` column.
        unsigned: make an ``int`` column unsigned.
        size: bits of an ``int`` column: 8, 16, 24, 32 or 64 (the default).
        unique: a unique index name (``True``: named after the field); share a
            name between fields for a multi-column index, ``"name:2"`` sets the
            position.
        index: a non-unique index, named like ``unique``.
        dirty: dirty stream names (see docs/entities.md, "Dirty streams").
        ignore: keep the field out of the table and the streams.
        version: make this ``int`` field the entity's version (optimistic
            locking, see docs/crud.md): one per entity, not ``id``, not ``Optional``.
        metadata: other metadata to keep on the field.
        **field_kwargs: passed on to ``dataclasses.field`` (``init``, ``repr``,
            ``compare``...). Any other keyword is kept as an option, so that
            ``Registry.validate()`` reports a misspelt one (``dirtty=``) at its
            entity and field, with the option it resembles.

    Returns:
        A ``dataclasses.field``.
    """
    options: dict[str, Any] = {}
    for key, value in (
        ("length", length),
        ("precision", precision),
        ("scale", scale),
        ("unsigned", unsigned),
        ("size", size),
        ("unique", unique),
        ("index", index),
        ("dirty", dirty),
    ):
        if value is not None:
            options[key] = value
    if ignore:
        options["ignore"] = True
    if version:
        options["version"] = True
    kwargs: dict[str, Any] = {}
    for key, value in field_kwargs.items():
        if key in _FIELD_PARAMS:
            kwargs[key] = value
        else:
            options[key] = value
    merged = dict(metadata or {})
    merged[METADATA_KEY] = options
    if default is not dataclasses.MISSING:
        kwargs["default"] = default
    if default_factory is not dataclasses.MISSING:
        kwargs["default_factory"] = default_factory
    return dataclasses.field(metadata=merged, **kwargs)


def entity(
    *,
    table: str | None = None,
    mysql_pool: str = "default",
    redis_pool: str = "default",
    name: str | None = None,
) -> Callable[[type[T]], type[T]]:
    """Set the table, pools and name of an entity; place it above ``@dataclass``.

    Args:
        table: the MySQL table name (default: the class name).
        mysql_pool: the MySQL pool the table lives in.
        redis_pool: the Redis pool of the entity's dirty streams.
        name: the entity name written into stream entries and matched by
            consumers (default: ``"<module>.<QualName>"``). Give one to an
            entity defined in a script's ``__main__``, or to keep events
            readable when the class moves to another module. Printable, without
            whitespace, unique among the registered entities (checked by
            ``Registry.validate()``).
    """
    options = EntityOptions(
        table=table, mysql_pool=mysql_pool, redis_pool=redis_pool, name=name
    )

    def decorate(cls: type[T]) -> type[T]:
        setattr(cls, _ENTITY_ATTR, options)
        return cls

    return decorate


def entity_options(cls: type) -> EntityOptions:
    """Return the ``@entity`` options declared on ``cls`` itself (not inherited)."""
    found = cls.__dict__.get(_ENTITY_ATTR)
    return found if isinstance(found, EntityOptions) else EntityOptions()


def parse_field_options(raw: object, entity_name: str, field_name: str) -> FieldOptions:
    """Parse a field's ``"orm"`` metadata (a tag string or a dict).

    Raises:
        SchemaError: naming the entity and field, for any unknown key or bad value.
    """
    if raw is None:
        return FieldOptions()
    if isinstance(raw, str):
        items = _split_tag(raw, entity_name, field_name)
    elif isinstance(raw, Mapping):
        items = dict(raw)
    else:
        raise SchemaError(
            f'metadata["orm"] must be a tag string or a dict, not {type(raw).__name__}',
            entity_name,
            field_name,
        )
    parser = _OptionParser(entity_name, field_name)
    values: dict[str, Any] = {}
    for key, value in items.items():
        if not isinstance(key, str) or key not in _KEYS:
            raise parser.error(f"unknown option {key!r}{_suggest(str(key), _KEYS)}")
        values[key] = getattr(parser, f"_{key}")(value)
    if values.get("ignore"):
        others = sorted(
            k for k, v in values.items() if k != "ignore" and v not in (None, ())
        )
        if others:
            raise parser.error(
                f"ignore=true keeps the field out of the table and the streams, so "
                f"{', '.join(others)} would do nothing; remove "
                f"{'them' if len(others) > 1 else 'it'} or the ignore option"
            )
    return FieldOptions(**values)


def _split_tag(tag: str, entity_name: str, field_name: str) -> dict[str, object]:
    items: dict[str, object] = {}
    for part in tag.split(";"):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        key = key.strip()
        if not key:
            raise SchemaError(
                f"tag item {part!r} has no key; write key=value",
                entity_name,
                field_name,
            )
        if key in items:
            raise SchemaError(
                f"option {key!r} is given twice in the tag", entity_name, field_name
            )
        items[key] = value.strip() if sep else True
    return items


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{hint} (options: {', '.join(sorted(choices))})"


class _OptionParser:
    """Converts one option value; every method raises a located SchemaError."""

    def __init__(self, entity_name: str, field_name: str):
        self.entity = entity_name
        self.field = field_name

    def error(self, message: str) -> SchemaError:
        return SchemaError(message, self.entity, self.field)

    def _int(self, key: str, value: object, low: int, high: int) -> int:
        if isinstance(value, bool):
            raise self.error(f"{key} must be a number, not {value!r}")
        # isdecimal() alone accepts non-ASCII digits, some of which int() refuses.
        if (
            isinstance(value, str)
            and value.strip().isascii()
            and value.strip().isdecimal()
        ):
            value = int(value)
        if not isinstance(value, int) or not low <= value <= high:
            raise self.error(
                f"{key} must be a whole number from {low} to {high}, not {value!r}"
            )
        return value

    def _bool(self, key: str, value: object) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise self.error(f"{key} must be true or false, not {value!r}")

    def _length(self, value: object) -> int:
        if isinstance(value, str) and value.strip().lower() == "max":
            return 0
        return self._int("length", value, 1, 65535)

    def _precision(self, value: object) -> int:
        return self._int("precision", value, 1, 65)

    def _scale(self, value: object) -> int:
        return self._int("scale", value, 0, 30)

    def _size(self, value: object) -> int:
        size = self._int("size", value, 1, 64)
        if size not in _INT_SIZES:
            raise self.error(
                f"size must be one of {', '.join(map(str, _INT_SIZES))} bits, not {size}"
            )
        return size

    def _unsigned(self, value: object) -> bool:
        return self._bool("unsigned", value)

    def _ignore(self, value: object) -> bool:
        return self._bool("ignore", value)

    def _version(self, value: object) -> bool:
        return self._bool("version", value)

    def _unique(self, value: object) -> tuple[tuple[str, int], ...]:
        return self._indexes("unique", value)

    def _index(self, value: object) -> tuple[tuple[str, int], ...]:
        return self._indexes("index", value)

    def _indexes(self, key: str, value: object) -> tuple[tuple[str, int], ...]:
        if value is True:
            return ((self.field, 1),)
        if value is False:
            return ()
        names = self._names(key, value)
        result: list[tuple[str, int]] = []
        for item in names:
            name, _, position = item.partition(":")
            name = name.strip()
            if not _INDEX_NAME_RE.match(name):
                raise self.error(
                    f"{key} index name {name!r} must be 1-64 characters of A-Z, a-z, 0-9 and _"
                )
            pos = (
                self._int(f"{key} position of {name!r}", position.strip(), 1, 64)
                if position
                else 0
            )
            result.append((name, pos))
        return tuple(result)

    def _names(self, key: str, value: object) -> list[str]:
        if isinstance(value, str):
            parts = value.split(",")
        elif isinstance(value, Iterable) and not isinstance(value, (bytes, Mapping)):
            parts = []
            for item in value:
                if not isinstance(item, str):
                    raise self.error(f"{key} must list names as strings, not {item!r}")
                parts.extend(item.split(","))
        else:
            raise self.error(
                f"{key} must be a name, a comma-separated list or a list, not {value!r}"
            )
        names = [p.strip() for p in parts]
        if not names or any(not n for n in names):
            raise self.error(
                f"{key} has an empty name in {value!r}; write one name between "
                "commas (e.g. A,B) and no comma at either end"
            )
        return names

    def _dirty(self, value: object) -> tuple[tuple[str, frozenset[str]], ...]:
        result: list[tuple[str, frozenset[str]]] = []
        seen: set[str] = set()
        previous: str | None = None
        for item in self._names("dirty", value):
            name, sep, sources_text = item.partition(":")
            name = name.strip()
            self._check_stream_name(name, item, previous)
            previous = item
            if name in seen:
                raise self.error(f"dirty stream {name!r} is listed twice")
            seen.add(name)
            if not sep:
                result.append((name, DIRTY_SOURCES))
                continue
            if self.field != "id":
                raise self.error(
                    f"dirty={item}: sources (:add, :edit, :delete) are allowed only on the "
                    f"id field; on {self.field!r} write the bare name dirty={name} "
                    "(it means 'an update that changes this field')"
                )
            sources = frozenset(s.strip() for s in sources_text.split("|"))
            unknown = sorted(sources - DIRTY_SOURCES)
            if unknown or not sources:
                shown = ", ".join(map(repr, unknown)) or "''"
                raise self.error(
                    f"dirty={item}: unknown source {shown}; "
                    "use add, edit or delete, joined by | (e.g. Name:add|delete)"
                )
            result.append((name, sources))
        return tuple(result)

    def _check_stream_name(self, name: str, item: str, previous: str | None) -> None:
        """Refuse the names that are slips (SPEC §1.1), saying what to write."""
        if not name:
            raise self.error(
                f"dirty stream name is empty in {item!r}; write the name first, "
                "e.g. dirty=Orders:add"
            )
        if name in DIRTY_SOURCES:
            if self.field != "id":
                hint = "here dirty= takes stream names only, e.g. dirty=OrderChanges"
            elif previous is not None and ":" in previous:
                hint = (
                    f"to add it to the sources before it, write dirty={previous}|{name}"
                )
            else:
                hint = f"name the stream first, e.g. dirty=Orders:{name}"
            raise self.error(
                f"dirty stream name {name!r} is a source, not a stream name: sources "
                f"follow a stream name and are joined by |; {hint}"
            )
        if not _NAME_RE.match(name):
            raise self.error(
                f"dirty stream name {name!r} must be letters, digits, '_' or '-' only "
                "(e.g. dirty=OrderChanges)"
            )
        if name.startswith(_STREAM_PREFIX):
            bare = name[len(_STREAM_PREFIX) :] or "Name"
            raise self.error(
                f"dirty stream name {name!r} starts with {_STREAM_PREFIX!r}, which "
                f"fluxaorm adds itself (the Redis key would be "
                f"{_STREAM_PREFIX}{name}); write dirty={bare}"
            )
