"""Column types: for each entity field, its SQL type and its value converters.

``schema.py`` builds one :class:`Column` per field at ``Registry.validate()``; the
flush, the loaders and the event codec then only call the converters stored here:
``literal`` (validate a value and render it as SQL), ``wire``/``unwire`` (the
msgpack bind encoding of SPEC §4) and ``from_db`` (pymysql value -> field value).
"""

from __future__ import annotations

import datetime as _dt
import enum
import math
import types
import typing
from collections.abc import Callable
from decimal import Context, Decimal, InvalidOperation
from typing import Any

import attrs

from .errors import SchemaError, ValidationError
from .sql import bytes_literal, string_literal
from .tags import FieldOptions

__all__ = ["COLLATION", "Column", "build_column", "unwrap_optional"]

COLLATION = "utf8mb4_unicode_520_ci"
_STRING_COLLATE = f" CHARACTER SET utf8mb4 COLLATE {COLLATION}"
_INT_TYPES = {8: "tinyint", 16: "smallint", 24: "mediumint", 32: "int", 64: "bigint"}
_MEDIUM_MAX = 16_777_215  # bytes in a MEDIUMTEXT / MEDIUMBLOB
_VARCHAR_MAX = 16_383  # utf8mb4 characters that fit a VARCHAR row
DECIMAL_CONTEXT = Context(prec=200, traps=[InvalidOperation])
_DEFAULT_PRECISION = 10
_DEFAULT_SCALE = 2

Literal = Callable[[Any], str]
Converter = Callable[[Any], Any]


class Column:
    """One field of an entity as stored in MySQL and in stream binds.

    Attributes:
        name: the field name, also the column name and the bind key.
        kind: ``int``, ``bool``, ``float``, ``str``, ``bytes``, ``decimal``,
            ``datetime``, ``date`` or ``enum``.
        nullable: whether ``None`` is allowed (``Optional[...]``).
        sql_type: the MySQL column type, as ``information_schema`` shows it once
            integer display widths are removed.
        definition: the column definition used by CREATE/ALTER TABLE.
        literal: validates a value and renders it as an SQL literal.
        to_wire: field value -> msgpack value, or ``None`` when they are the same.
        from_wire: msgpack value -> field value, or ``None`` when they are the same.
        from_db: pymysql value -> field value, or ``None`` when they are the same.
        version: whether this is the entity's version field (optimistic locking):
            an ``int`` stored as ``BIGINT UNSIGNED NOT NULL DEFAULT 0``.
    """

    __slots__ = (
        "definition",
        "fast",
        "from_db",
        "from_wire",
        "kind",
        "literal",
        "name",
        "nullable",
        "python_type",
        "quoted",
        "sql_type",
        "to_wire",
        "version",
    )

    def __init__(
        self,
        name: str,
        kind: str,
        python_type: Any,
        nullable: bool,
        sql_type: str,
        literal: Literal,
        to_wire: Converter | None = None,
        from_wire: Converter | None = None,
        from_db: Converter | None = None,
        extra: str = "",
    ):
        self.name = name
        self.quoted = f"`{name}`"
        self.kind = kind
        self.python_type = python_type
        self.nullable = nullable
        self.sql_type = sql_type
        collate = (
            _STRING_COLLATE
            if sql_type.startswith(("varchar", "mediumtext", "enum"))
            else ""
        )
        null = " NULL" if nullable else " NOT NULL"
        self.definition = f"{self.quoted} {sql_type}{collate}{null}{extra}"
        self.literal = literal
        self.to_wire = to_wire
        self.from_wire = from_wire
        self.from_db = from_db
        # Facts the compiled row renderer (render.py) inlines as its fast path.
        self.fast: dict[str, Any] = {}
        self.version = False

    def __repr__(self) -> str:
        return f"<Column {self.name} {self.sql_type}{' NULL' if self.nullable else ''}>"

    def wire(self, value: Any) -> Any:
        """Return the msgpack form of a valid value of this column."""
        if value is None or self.to_wire is None:
            return value
        return self.to_wire(value)

    def unwire(self, value: Any) -> Any:
        """Return the field value of a msgpack value.

        Raises:
            ValueError: the value is no wire form of this column (say a Decimal
                that is not a number, or an enum value that is no member), so the
                entry holding it is not a valid event.
        """
        if value is None or self.from_wire is None:
            return value
        try:
            return self.from_wire(value)
        except (ValueError, TypeError, ArithmeticError, LookupError):
            raise ValueError(
                f"{self.name}: {_short(value)} is not a valid {self.kind} value"
            ) from None


def unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    """Return ``(inner type, nullable)`` for ``X``, ``Optional[X]`` and ``X | None``."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(annotation)) == 2:
            return args[0], True
    return annotation, False


class _Builder:
    """Builds the converters of one field; errors name the entity and field."""

    def __init__(self, entity: str, name: str, options: FieldOptions, nullable: bool):
        self.entity = entity
        self.name = name
        self.options = options
        self.nullable = nullable

    def schema_error(self, message: str) -> SchemaError:
        return SchemaError(message, self.entity, self.name)

    def bad(self, message: str) -> ValidationError:
        return ValidationError(message, self.entity, self.name)

    def type_error(self, value: Any, expected: str) -> ValidationError:
        if value is None:
            return self.bad(
                "None is not allowed: the field is not Optional "
                f"(declare it as Optional[...] to store NULL, or give it {expected})"
            )
        return self.bad(
            f"expected {expected}, got {type(value).__name__} {_short(value)}"
        )

    def reject_options(self, *names: str) -> None:
        for option in names:
            if getattr(self.options, option) not in (None, ()):
                raise self.schema_error(
                    f"option {option}= does not apply to a {self.kind_label} field"
                )

    kind_label = ""

    def none_or(self, value: Any, expected: str) -> str:
        """Slow path shared by every literal: ``None`` or a type error."""
        if value is None and self.nullable:
            return "NULL"
        raise self.type_error(value, expected)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def build_column(
    entity: str,
    name: str,
    annotation: Any,
    options: FieldOptions,
    *,
    primary: bool = False,
) -> Column:
    """Build the :class:`Column` of one field.

    Args:
        entity: the entity class name (for messages).
        name: the field name.
        annotation: the resolved type hint.
        options: the parsed ``"orm"`` options.
        primary: whether this is the ``id`` field.

    Raises:
        SchemaError: for an unsupported type or an option that does not fit it.
    """
    inner, nullable = unwrap_optional(annotation)
    b = _Builder(entity, name, options, nullable)
    if options.version:
        return _version_column(b, inner, primary)
    if primary:
        if nullable or inner is not int:
            raise b.schema_error("the primary key field id must be declared as int")
        return _int_column(b, primary=True)
    if name == "fake_delete":
        if nullable or inner is not bool:
            raise b.schema_error(
                "fake_delete must be declared as bool (it turns on fake delete)"
            )
        return _fake_delete_column(b)
    if inner is bool:
        return _bool_column(b)
    if inner is int:
        return _int_column(b)
    if inner is float:
        return _float_column(b)
    if inner is str:
        return _str_column(b)
    if inner is bytes:
        return _bytes_column(b)
    if inner is Decimal:
        return _decimal_column(b)
    if inner is _dt.datetime:
        return _datetime_column(b)
    if inner is _dt.date:
        return _date_column(b)
    if isinstance(inner, type) and issubclass(inner, enum.Flag):
        raise b.schema_error(
            f"{inner.__name__} is an enum.Flag, whose combined members (A | B) are "
            "no single stored value; use a plain Enum, or an int field holding "
            f"{inner.__name__}(...).value"
        )
    if isinstance(inner, type) and issubclass(inner, enum.Enum):
        return _enum_column(b, inner)
    if annotation is None:
        raise b.schema_error(
            "has no type annotation; declare its type (e.g. `name: str = ''`)"
        )
    shown = getattr(inner, "__name__", None) or repr(inner)
    raise b.schema_error(
        f"type {shown} is not supported; use int, bool, float, str, bytes, Decimal, "
        "datetime, date or an Enum subclass, optionally as Optional[...]"
    )


def _int_column(b: _Builder, primary: bool = False) -> Column:
    b.kind_label = "int"
    b.reject_options("length", "precision", "scale")
    size = b.options.size or 64
    unsigned = b.options.unsigned if b.options.unsigned is not None else primary
    low, high = (
        (0, 2**size - 1) if unsigned else (-(2 ** (size - 1)), 2 ** (size - 1) - 1)
    )
    if primary:
        low = 0
    sql_type = _INT_TYPES[size] + (" unsigned" if unsigned else "")
    expected = f"an int from {low} to {high}"

    def slow(value: Any) -> str:
        if isinstance(value, int) and not isinstance(value, bool):
            if low <= value <= high:
                return str(int(value))
            raise b.bad(
                f"{value} is out of range: the column ({sql_type}) holds {low} to {high}"
            )
        return b.none_or(value, expected)

    def literal(value: Any) -> str:
        if type(value) is int and low <= value <= high:
            return str(value)
        return slow(value)

    extra = " AUTO_INCREMENT" if primary else ""
    column = Column(b.name, "int", int, b.nullable, sql_type, literal, extra=extra)
    column.fast = {"low": low, "high": high}
    return column


def _version_column(b: _Builder, inner: Any, primary: bool) -> Column:
    """The version field: a non-negative int that the flush sets and checks."""
    if primary or b.name == "fake_delete":
        raise b.schema_error(
            f"{b.name} cannot be the version field; add a field of its own, "
            "e.g. `version: int = fluxaorm.column(version=True, default=0)`"
        )
    if inner is not int or b.nullable:
        raise b.schema_error(
            "the version field must be declared as int (not Optional, not bool), "
            "e.g. `version: int = fluxaorm.column(version=True, default=0)`"
        )
    b.kind_label = "version"
    b.reject_options("length", "precision", "scale", "size", "unsigned")
    b.options = attrs.evolve(b.options, size=64, unsigned=True)
    column = _int_column(b)
    column.definition += " DEFAULT 0"
    column.version = True
    return column


def _fake_delete_column(b: _Builder) -> Column:
    b.kind_label = "fake_delete"
    b.reject_options("length", "precision", "scale", "size", "unsigned")

    def literal(value: Any) -> str:
        if value is False:
            return "0"
        if value is True:
            raise b.bad(
                "set fake_delete only through orm.delete_entity(); "
                "to restore a deleted entity, set it back to False"
            )
        raise b.type_error(value, "a bool")

    return Column(
        b.name, "fake_delete", bool, False, "bigint unsigned", literal, from_db=bool
    )


def _bool_column(b: _Builder) -> Column:
    b.kind_label = "bool"
    b.reject_options("length", "precision", "scale", "size", "unsigned")

    def literal(value: Any) -> str:
        if value is True:
            return "1"
        if value is False:
            return "0"
        return b.none_or(value, "a bool (True or False)")

    return Column(b.name, "bool", bool, b.nullable, "tinyint(1)", literal, from_db=bool)


def _float_column(b: _Builder) -> Column:
    b.kind_label = "float"
    b.reject_options("length", "precision", "scale", "size", "unsigned")

    def slow(value: Any) -> str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:
                raise b.bad(
                    f"{_short(value)} is too large for a float column (double)"
                ) from None
            if math.isfinite(number):
                return repr(number)
            raise b.bad(f"{value!r} cannot be stored: MySQL has no NaN or infinity")
        return b.none_or(value, "a float")

    def literal(value: Any) -> str:
        if type(value) is float and value - value == 0.0:
            return repr(value)
        return slow(value)

    return Column(b.name, "float", float, b.nullable, "double", literal)


def _text_limits(b: _Builder, default: int, noun: str) -> tuple[int, bool]:
    length = b.options.length
    if length is None:
        length = default
    if length == 0:
        return _MEDIUM_MAX, True
    if noun == "characters" and length > _VARCHAR_MAX:
        raise b.schema_error(
            f"length={length} is too long for a VARCHAR ({_VARCHAR_MAX} characters at most "
            "in utf8mb4); write length=max for a MEDIUMTEXT column"
        )
    return length, False


def _str_column(b: _Builder) -> Column:
    b.kind_label = "str"
    b.reject_options("precision", "scale", "size", "unsigned")
    length, text = _text_limits(b, 255, "characters")
    sql_type = "mediumtext" if text else f"varchar({length})"

    def slow(value: Any) -> str:
        if not isinstance(value, str):
            return b.none_or(value, "a str")
        if text:
            if (
                len(value) * 4 > length
                and len(value.encode("utf-8", "surrogatepass")) > length
            ):
                raise b.bad(
                    f"{len(value.encode('utf-8', 'surrogatepass'))} bytes, the column allows {length}"
                )
        elif len(value) > length:
            raise b.bad(f"{len(value)} characters, the column allows {length}")
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise b.bad(
                    f"{_short(value)} contains a lone surrogate, which MySQL cannot store"
                ) from None
        # str.__str__: a str subclass (a str-valued Enum member) stores its value.
        return string_literal(str.__str__(value))

    if text:

        def literal(value: Any) -> str:
            return slow(value)

    else:

        def literal(value: Any) -> str:
            if type(value) is str and len(value) <= length and value.isascii():
                return string_literal(value)
            return slow(value)

    column = Column(b.name, "str", str, b.nullable, sql_type, literal)
    if not text:
        column.fast = {"length": length}
    return column


def _bytes_column(b: _Builder) -> Column:
    b.kind_label = "bytes"
    b.reject_options("precision", "scale", "size", "unsigned")
    length, blob = _text_limits(b, 255, "bytes")
    sql_type = "mediumblob" if blob else f"varbinary({length})"

    def literal(value: Any) -> str:
        if isinstance(value, (bytes, bytearray, memoryview)):
            data = bytes(value)
            if len(data) > length:
                raise b.bad(f"{len(data)} bytes, the column allows {length}")
            return bytes_literal(data)
        return b.none_or(value, "bytes")

    return Column(b.name, "bytes", bytes, b.nullable, sql_type, literal)


def _decimal_column(b: _Builder) -> Column:
    b.kind_label = "Decimal"
    b.reject_options("length", "size", "unsigned")
    precision = b.options.precision or _DEFAULT_PRECISION
    scale = b.options.scale if b.options.scale is not None else _DEFAULT_SCALE
    if (
        b.options.precision is None
        and b.options.scale is not None
        and scale > precision
    ):
        precision = max(precision, scale + 1)
    if scale > precision:
        raise b.schema_error(f"scale={scale} is larger than precision={precision}")
    quantum = Decimal(1).scaleb(-scale)
    limit = Decimal(10) ** (precision - scale)
    sql_type = f"decimal({precision},{scale})"
    expected = f"a Decimal with at most {precision - scale} digits before the point and {scale} after"

    def canonical(value: Any) -> Decimal:
        if isinstance(value, Decimal):
            number = value
        elif isinstance(value, int) and not isinstance(value, bool):
            number = Decimal(value)
        elif isinstance(value, float):
            raise b.bad(
                f"got float {value!r}; pass a Decimal (Decimal(str(x))) so no digit is lost"
            )
        else:
            raise b.type_error(value, expected)
        if not number.is_finite():
            raise b.bad(f"{value} cannot be stored: MySQL decimals are finite")
        try:
            quantized = number.quantize(quantum, context=DECIMAL_CONTEXT)
        except InvalidOperation:
            raise b.bad(f"{value} is out of range for {sql_type}") from None
        if quantized != number:
            raise b.bad(
                f"{value} has more than {scale} decimal places, the column keeps {scale}"
            )
        if abs(quantized) >= limit:
            raise b.bad(
                f"{value} is out of range for {sql_type}: at most {precision - scale} digits before the point"
            )
        return quantized

    def literal(value: Any) -> str:
        if value is None:
            return b.none_or(value, expected)
        return format(canonical(value), "f")

    def to_wire(value: Any) -> str:
        return format(canonical(value), "f")

    column = Column(
        b.name,
        "decimal",
        Decimal,
        b.nullable,
        sql_type,
        literal,
        to_wire=to_wire,
        from_wire=_decimal_from_wire,
    )
    column.fast = {"canon": to_wire, "quantum": quantum, "limit": limit, "scale": scale}
    return column


def _decimal_from_wire(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise TypeError("a Decimal travels as a str")
    # A float comes from producers that keep decimals as floats (Go's float64):
    # its shortest repr is the number they meant.
    number = Decimal(repr(value) if isinstance(value, float) else value)
    if not number.is_finite():
        raise ValueError("MySQL decimals are finite")
    return number


def _datetime_column(b: _Builder) -> Column:
    b.kind_label = "datetime"
    b.reject_options("length", "precision", "scale", "size", "unsigned")

    def slow(value: Any) -> str:
        if isinstance(value, _dt.datetime):
            if value.tzinfo is not None:
                raise b.bad(
                    f"{value.isoformat()} is timezone-aware; store naive datetimes "
                    "(e.g. value.astimezone(timezone.utc).replace(tzinfo=None))"
                )
            return "'" + value.isoformat(" ", "microseconds") + "'"
        return b.none_or(value, "a datetime")

    def literal(value: Any) -> str:
        if type(value) is _dt.datetime and value.tzinfo is None:
            return "'" + value.isoformat(" ", "microseconds") + "'"
        return slow(value)

    def to_wire(value: Any) -> str:
        return str(value.isoformat(" ", "microseconds"))

    return Column(
        b.name,
        "datetime",
        _dt.datetime,
        b.nullable,
        "datetime(6)",
        literal,
        to_wire=to_wire,
        from_wire=_dt.datetime.fromisoformat,
    )


def _date_column(b: _Builder) -> Column:
    b.kind_label = "date"
    b.reject_options("length", "precision", "scale", "size", "unsigned")

    def literal(value: Any) -> str:
        if isinstance(value, _dt.date) and not isinstance(value, _dt.datetime):
            return "'" + value.isoformat() + "'"
        if isinstance(value, _dt.datetime):
            raise b.bad(f"got datetime {value!r}; pass value.date() for a date field")
        return b.none_or(value, "a date")

    def to_wire(value: Any) -> str:
        return str(value.isoformat())

    return Column(
        b.name,
        "date",
        _dt.date,
        b.nullable,
        "date",
        literal,
        to_wire=to_wire,
        from_wire=_dt.date.fromisoformat,
    )


def _enum_column(b: _Builder, enum_type: type[enum.Enum]) -> Column:
    b.kind_label = "Enum"
    b.reject_options("length", "precision", "scale")
    members = list(enum_type)
    if not members:
        raise b.schema_error(f"enum {enum_type.__name__} has no members")
    values = [m.value for m in members]
    by_value: dict[Any, enum.Enum] = {m.value: m for m in members}
    if all(isinstance(v, str) for v in values):
        for v in values:
            if not v or len(v) > 255:
                raise b.schema_error(
                    f"enum {enum_type.__name__} value {v!r} must be 1-255 characters long"
                )
        b.reject_options("size", "unsigned")
        # Escaped the way information_schema shows COLUMN_TYPE (and the DDL reads
        # it back): a backslash doubled, a quote doubled.
        sql_type = (
            "enum("
            + ",".join(
                "'" + v.replace("\\", "\\\\").replace("'", "''") + "'" for v in values
            )
            + ")"
        )
        render: Callable[[Any], str] = string_literal
    elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        size = b.options.size or 32
        unsigned = bool(b.options.unsigned)
        sql_type = _INT_TYPES[size] + (" unsigned" if unsigned else "")
        low, high = (
            (0, 2**size - 1) if unsigned else (-(2 ** (size - 1)), 2 ** (size - 1) - 1)
        )
        for v in values:
            if not low <= v <= high:
                raise b.schema_error(
                    f"enum {enum_type.__name__} value {v} does not fit the column "
                    f"({sql_type} holds {low} to {high}); set a larger size= or unsigned="
                )
        render = str
    else:
        raise b.schema_error(
            f"enum {enum_type.__name__} must have all-str or all-int values to be stored"
        )
    literals: dict[Any, str] = {m: render(m.value) for m in members}
    allowed = ", ".join(repr(v) for v in values)

    def literal(value: Any) -> str:
        found = literals.get(value) if isinstance(value, enum_type) else None
        if found is not None:
            return found
        if value is None:
            return b.none_or(value, f"a {enum_type.__name__} member")
        member = None
        # bool is an int (True == 1) but never a member value; unhashable values
        # are no member value either.
        if not isinstance(value, (enum.Enum, bool)):
            try:
                member = by_value.get(value)
            except TypeError:
                member = None
        if member is None:
            raise b.bad(
                f"{_short(value)} is not a {enum_type.__name__} member or value ({allowed})"
            )
        return literals[member]

    def to_wire(value: Any) -> Any:
        return value.value if isinstance(value, enum_type) else value

    def from_value(value: Any) -> Any:
        return by_value.get(value, value)

    value_type = str if isinstance(values[0], str) else int

    def from_wire(value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, value_type):
            raise TypeError(f"an {enum_type.__name__} value is a {value_type.__name__}")
        # A value this process does not know yet (a newer producer) stays a plain
        # value: SPEC §4 allows "the enum member or its value".
        return by_value.get(value, value)

    return Column(
        b.name,
        "enum",
        enum_type,
        b.nullable,
        sql_type,
        literal,
        to_wire=to_wire,
        from_wire=from_wire,
        from_db=from_value,
    )
