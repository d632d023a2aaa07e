"""Column types (fields.py): SQL types, value validation, literals and the wire codec."""

import datetime
import enum
import math
import re
from decimal import Decimal
from typing import Any, Optional

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fluxaorm
from fluxaorm.fields import Column, build_column, unwrap_optional
from fluxaorm.tags import parse_field_options
from tests.models import AllTypes, Color, Level

SUPPORTED = "int, bool, float, str, bytes, Decimal, datetime, date or an Enum"


class Size(enum.Enum):
    SMALL = "s"
    QUOTED = "it's"


class Path(enum.Enum):
    WINDOWS = "C:\\temp"


class Big(enum.Enum):
    HUGE = 1000


class Mixed(enum.Enum):
    A = 1
    B = "b"


class Empty(enum.Enum):
    pass


class Blank(enum.Enum):
    NOTHING = ""


class Shade(str, enum.Enum):
    DARK = "dark"


class Plain:
    pass


def col(annotation: Any, tag: str = "", name: str = "f") -> Column:
    options = parse_field_options(tag, "UserEntity", name)
    return build_column("UserEntity", name, annotation, options, primary=name == "id")


def schema_error(annotation: Any, tag: str = "", name: str = "f") -> str:
    with pytest.raises(fluxaorm.SchemaError) as info:
        col(annotation, tag, name)
    assert info.value.entity == "UserEntity"
    assert info.value.field == name
    assert str(info.value).startswith(f"UserEntity.{name}: ")
    return str(info.value)


def invalid(column: Column, value: Any) -> str:
    with pytest.raises(fluxaorm.ValidationError) as info:
        column.literal(value)
    err = info.value
    assert isinstance(err, ValueError)
    assert (err.entity, err.field) == ("UserEntity", column.name)
    assert str(err).startswith(f"UserEntity.{column.name}: ")
    return str(err)


def wire_round_trip(column: Column, value: Any) -> Any:
    packed = msgpack.packb(column.wire(value), use_bin_type=True)
    return column.unwire(msgpack.unpackb(packed, raw=False))


_UNESCAPE = {"0": "\0", "n": "\n", "r": "\r", "Z": "\x1a"}


def unquote_mysql(literal: str) -> str:
    """Read back a MySQL string literal rendered with backslash escapes."""
    assert literal[0] == "'" and literal[-1] == "'"
    body = literal[1:-1]
    out: list[str] = []
    i = 0
    while i < len(body):
        char = body[i]
        if char == "\\":
            nxt = body[i + 1]
            out.append(_UNESCAPE.get(nxt, nxt))
            i += 2
            continue
        assert char != "'", "an unescaped quote would end the literal"
        out.append(char)
        i += 1
    return "".join(out)


# -- SQL types -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("annotation", "tag", "sql_type", "nullable"),
    [
        (int, "", "bigint", False),
        (int, "size=8", "tinyint", False),
        (int, "size=16", "smallint", False),
        (int, "size=24", "mediumint", False),
        (int, "size=32", "int", False),
        (int, "size=64", "bigint", False),
        (int, "unsigned", "bigint unsigned", False),
        (int, "size=8;unsigned", "tinyint unsigned", False),
        (int, "unsigned=false", "bigint", False),
        (bool, "", "tinyint(1)", False),
        (float, "", "double", False),
        (str, "", "varchar(255)", False),
        (str, "length=100", "varchar(100)", False),
        (str, "length=16383", "varchar(16383)", False),
        (str, "length=max", "mediumtext", False),
        (bytes, "", "varbinary(255)", False),
        (bytes, "length=16", "varbinary(16)", False),
        (bytes, "length=max", "mediumblob", False),
        (Decimal, "", "decimal(10,2)", False),
        (Decimal, "precision=12;scale=4", "decimal(12,4)", False),
        (Decimal, "precision=5", "decimal(5,2)", False),
        (Decimal, "scale=0", "decimal(10,0)", False),
        (Decimal, "scale=12", "decimal(13,12)", False),
        (datetime.datetime, "", "datetime(6)", False),
        (datetime.date, "", "date", False),
        (Color, "", "enum('red','green')", False),
        (Size, "", "enum('s','it''s')", False),
        (Shade, "", "enum('dark')", False),
        (Path, "", "enum('C:\\\\temp')", False),
        (Level, "", "int", False),
        (Level, "size=8;unsigned", "tinyint unsigned", False),
        (Optional[int], "", "bigint", True),  # noqa: UP045 - the Optional spelling
        (int | None, "", "bigint", True),
        (str | None, "length=10", "varchar(10)", True),
        (Decimal | None, "", "decimal(10,2)", True),
        (datetime.datetime | None, "", "datetime(6)", True),
        (Color | None, "", "enum('red','green')", True),
        (None | bytes, "", "varbinary(255)", True),
    ],
)
def test_sql_types(annotation: Any, tag: str, sql_type: str, nullable: bool) -> None:
    """Each supported type and its options map to one MySQL column type."""
    column = col(annotation, tag)
    assert column.sql_type == sql_type
    assert column.nullable is nullable
    null = " NULL" if nullable else " NOT NULL"
    assert column.definition.startswith(f"`f` {sql_type}")
    assert column.definition.endswith(null)


def test_string_columns_carry_the_collation() -> None:
    """Text and enum columns declare utf8mb4 and the collation; others do not."""
    for annotation, tag in [(str, ""), (str, "length=max"), (Color, "")]:
        assert "CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_520_ci" in (
            col(annotation, tag).definition
        )
    for annotation in (int, bytes, Decimal, Level):
        assert "COLLATE" not in col(annotation).definition


def test_id_column() -> None:
    """id is an unsigned auto-increment bigint that refuses negatives."""
    column = col(int, name="id")
    assert column.definition == "`id` bigint unsigned NOT NULL AUTO_INCREMENT"
    assert column.literal(0) == "0"
    assert column.literal(2**64 - 1) == str(2**64 - 1)
    assert "out of range" in invalid(column, -1)


@pytest.mark.parametrize("annotation", [str, int | None, Optional[int], float])  # noqa: UP045
def test_id_must_be_int(annotation: Any) -> None:
    """An id declared as anything but a plain int is a SchemaError."""
    assert "the primary key field id must be declared as int" in schema_error(
        annotation, name="id"
    )


def test_fake_delete_column() -> None:
    """fake_delete must be a bool; it is stored as the entity id (bigint unsigned)."""
    column = col(bool, name="fake_delete")
    assert column.sql_type == "bigint unsigned"
    assert column.literal(False) == "0"
    assert "orm.delete_entity()" in invalid(column, True)
    assert "fake_delete must be declared as bool" in schema_error(
        int, name="fake_delete"
    )
    assert "declared as bool" in schema_error(bool | None, name="fake_delete")


def test_columns_built_by_validate() -> None:
    """Registry.validate() builds the same columns for an entity of every type."""
    registry = fluxaorm.Registry()
    registry.register_mysql("mysql://root@127.0.0.1:3306/test")
    registry.register_redis("redis://127.0.0.1:6379/15")
    registry.register_entity(AllTypes)
    schema = registry.validate().schema(AllTypes)
    types = {c.name: (c.sql_type, c.nullable) for c in schema.columns}
    assert types == {
        "id": ("bigint unsigned", False),
        "i64": ("bigint", False),
        "i32": ("int", False),
        "u8": ("tinyint unsigned", False),
        "flag": ("tinyint(1)", False),
        "ratio": ("double", False),
        "name": ("varchar(50)", False),
        "text": ("mediumtext", False),
        "blob": ("varbinary(255)", False),
        "amount": ("decimal(12,4)", False),
        "at": ("datetime(6)", False),
        "day": ("date", False),
        "color": ("enum('red','green')", False),
        "level": ("int", False),
        "opt_int": ("bigint", True),
        "opt_str": ("varchar(255)", True),
        "opt_amount": ("decimal(10,2)", True),
        "opt_at": ("datetime(6)", True),
        "opt_day": ("date", True),
        "opt_color": ("enum('red','green')", True),
        "opt_blob": ("varbinary(255)", True),
        "opt_flag": ("tinyint(1)", True),
        "opt_ratio": ("double", True),
    }
    assert schema.by_name["name"].literal("x" * 50) == "'" + "x" * 50 + "'"


def test_unwrap_optional() -> None:
    """unwrap_optional returns the inner type and whether None is allowed."""
    assert unwrap_optional(int) == (int, False)
    assert unwrap_optional(Optional[str]) == (str, True)  # noqa: UP045
    assert unwrap_optional(bytes | None) == (bytes, True)
    assert unwrap_optional(int | str) == (int | str, False)


# -- schema errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "annotation",
    [list, dict, list[int], dict[str, int], Plain, int | str, tuple, set, complex],
)
def test_unsupported_types(annotation: Any) -> None:
    """An unsupported type is a SchemaError that lists the supported ones."""
    message = schema_error(annotation)
    assert "is not supported" in message
    assert SUPPORTED in message
    assert "Optional[...]" in message


def test_missing_annotation() -> None:
    """A field without a type annotation is a SchemaError asking for one."""
    assert "has no type annotation" in schema_error(None)


@pytest.mark.parametrize(
    ("annotation", "tag", "fragment"),
    [
        (int, "length=5", "option length= does not apply to a int field"),
        (int, "precision=5", "precision= does not apply"),
        (bool, "size=8", "size= does not apply to a bool field"),
        (bool, "unsigned", "unsigned= does not apply"),
        (float, "length=5", "does not apply to a float field"),
        (str, "precision=5", "does not apply to a str field"),
        (str, "unsigned", "does not apply to a str field"),
        (bytes, "scale=1", "does not apply to a bytes field"),
        (Decimal, "length=5", "does not apply to a Decimal field"),
        (Decimal, "size=8", "does not apply to a Decimal field"),
        (datetime.datetime, "length=5", "does not apply to a datetime field"),
        (datetime.date, "precision=2", "does not apply to a date field"),
        (Color, "length=5", "does not apply to a Enum field"),
        (Color, "size=8", "does not apply to a Enum field"),
        (str, "length=16384", "length=16384 is too long for a VARCHAR"),
        (str, "length=16384", "write length=max"),
        (Decimal, "precision=3;scale=5", "scale=5 is larger than precision=3"),
        (Empty, "", "enum Empty has no members"),
        (Mixed, "", "must have all-str or all-int values"),
        (Blank, "", "value '' must be 1-255 characters long"),
        (
            Big,
            "size=8",
            "value 1000 does not fit the column (tinyint holds -128 to 127)",
        ),
    ],
)
def test_option_errors(annotation: Any, tag: str, fragment: str) -> None:
    """Options that do not fit the type are SchemaErrors naming entity and field."""
    assert fragment in schema_error(annotation, tag)


# -- literals: accepted values ------------------------------------------------------------


@pytest.mark.parametrize(
    ("annotation", "tag", "value", "literal"),
    [
        (int, "", 5, "5"),
        (int, "", -(2**63), str(-(2**63))),
        (int, "", 2**63 - 1, str(2**63 - 1)),
        (int, "unsigned", 2**64 - 1, str(2**64 - 1)),
        (int, "size=8", -128, "-128"),
        (int, "size=8", 127, "127"),
        (int, "size=8;unsigned", 255, "255"),
        (int, "size=24", 8388607, "8388607"),
        (int, "", Level.HIGH, "2"),
        (bool, "", True, "1"),
        (bool, "", False, "0"),
        (float, "", 1.5, "1.5"),
        (float, "", -0.0, "-0.0"),
        (float, "", 3, "3.0"),
        (float, "", 1e300, "1e+300"),
        (str, "", "Tom", "'Tom'"),
        (str, "", "", "''"),
        (str, "", "it's", "'it\\'s'"),
        (str, "", 'a"b', "'a\\\"b'"),
        (str, "", "a\\b", "'a\\\\b'"),
        (str, "", "a\nb\r\0\x1a", "'a\\nb\\r\\0\\Z'"),
        (str, "", "żółw", "'żółw'"),
        (str, "length=3", "😀😀😀", "'😀😀😀'"),
        (str, "", Shade.DARK, "'dark'"),
        (str, "length=max", "x" * 70000, "'" + "x" * 70000 + "'"),
        (bytes, "", b"\x00\xff'", "_binary X'00ff27'"),
        (bytes, "", bytearray(b"ab"), "_binary X'6162'"),
        (bytes, "", memoryview(b"ab"), "_binary X'6162'"),
        (bytes, "", b"", "_binary X''"),
        (bytes, "length=2", b"ab", "_binary X'6162'"),
        (Decimal, "", Decimal("1.5"), "1.50"),
        (Decimal, "", Decimal("-0.01"), "-0.01"),
        (Decimal, "", Decimal("99999999.99"), "99999999.99"),
        (Decimal, "", Decimal("1.500000"), "1.50"),
        (Decimal, "", Decimal("1E+2"), "100.00"),
        (Decimal, "", 7, "7.00"),
        (Decimal, "scale=0", Decimal("12"), "12"),
        (
            datetime.datetime,
            "",
            datetime.datetime(2024, 1, 2, 3, 4, 5, 6),
            "'2024-01-02 03:04:05.000006'",
        ),
        (
            datetime.datetime,
            "",
            datetime.datetime(2024, 1, 2),
            "'2024-01-02 00:00:00.000000'",
        ),
        (datetime.date, "", datetime.date(2024, 1, 2), "'2024-01-02'"),
        (Color, "", Color.RED, "'red'"),
        (Color, "", "green", "'green'"),
        (Size, "", Size.QUOTED, "'it\\'s'"),
        (Path, "", Path.WINDOWS, "'C:\\\\temp'"),
        (Level, "", Level.HIGH, "2"),
        (Level, "", 1, "1"),
        (Shade, "", "dark", "'dark'"),
    ],
)
def test_accepted_values(annotation: Any, tag: str, value: Any, literal: str) -> None:
    """Valid values render as the right SQL literal."""
    assert col(annotation, tag).literal(value) == literal


@pytest.mark.parametrize(
    "annotation",
    [
        int | None,
        bool | None,
        float | None,
        str | None,
        bytes | None,
        Decimal | None,
        datetime.datetime | None,
        datetime.date | None,
        Color | None,
        Level | None,
    ],
)
def test_none_in_nullable_column(annotation: Any) -> None:
    """None renders as NULL in every Optional column."""
    assert col(annotation).literal(None) == "NULL"


# -- literals: rejected values ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("annotation", "tag", "value", "fragment"),
    [
        # wrong types
        (
            int,
            "",
            "5",
            "expected an int from -9223372036854775808 to 9223372036854775807, got str '5'",
        ),
        (int, "", 1.0, "got float 1.0"),
        (int, "", True, "got bool True"),
        (int, "", Decimal("1"), "got Decimal"),
        (bool, "", 1, "expected a bool (True or False), got int 1"),
        (bool, "", "true", "got str"),
        (float, "", "1.0", "expected a float, got str"),
        (float, "", True, "got bool"),
        (float, "", Decimal("1.5"), "got Decimal"),
        (str, "", 5, "expected a str, got int 5"),
        (str, "", b"abc", "got bytes"),
        (bytes, "", "abc", "expected bytes, got str 'abc'"),
        (
            Decimal,
            "",
            "1.5",
            "expected a Decimal with at most 8 digits before the point and 2 after",
        ),
        (Decimal, "", True, "got bool"),
        (
            datetime.datetime,
            "",
            datetime.date(2024, 1, 1),
            "expected a datetime, got date",
        ),
        (datetime.datetime, "", "2024-01-01 00:00:00", "got str"),
        (datetime.date, "", "2024-01-01", "expected a date, got str"),
        # None in a non-nullable column
        (int, "", None, "None is not allowed: the field is not Optional"),
        (str, "", None, "declare it as Optional[...] to store NULL, or give it a str"),
        (bool, "", None, "None is not allowed"),
        (float, "", None, "None is not allowed"),
        (bytes, "", None, "None is not allowed"),
        (Decimal, "", None, "None is not allowed"),
        (datetime.datetime, "", None, "None is not allowed"),
        (datetime.date, "", None, "None is not allowed"),
        (Color, "", None, "None is not allowed"),
        # too long
        (str, "length=100", "x" * 120, "120 characters, the column allows 100"),
        (str, "length=3", "😀😀😀😀", "4 characters, the column allows 3"),
        (str, "", "x" * 256, "256 characters, the column allows 255"),
        (bytes, "", b"x" * 300, "300 bytes, the column allows 255"),
        (bytes, "length=2", bytearray(b"abc"), "3 bytes, the column allows 2"),
        # out of range
        (int, "", 2**63, "is out of range: the column (bigint) holds"),
        (int, "", -(2**63) - 1, "out of range"),
        (
            int,
            "unsigned",
            -1,
            "the column (bigint unsigned) holds 0 to 18446744073709551615",
        ),
        (int, "size=8", 128, "the column (tinyint) holds -128 to 127"),
        (int, "size=8;unsigned", 256, "holds 0 to 255"),
        (int, "size=16", -32769, "holds -32768 to 32767"),
        (int, "size=32", 2**31, "holds -2147483648 to 2147483647"),
        # floats MySQL can't hold
        (float, "", math.nan, "nan cannot be stored: MySQL has no NaN or infinity"),
        (float, "", math.inf, "inf cannot be stored"),
        (float, "", -math.inf, "-inf cannot be stored"),
        (float, "", 10**400, "is too large for a float column"),
        # decimals
        (
            Decimal,
            "",
            Decimal("1.005"),
            "1.005 has more than 2 decimal places, the column keeps 2",
        ),
        (Decimal, "", Decimal("1E-30"), "more than 2 decimal places"),
        (
            Decimal,
            "",
            Decimal("100000000"),
            "out of range for decimal(10,2): at most 8 digits before the point",
        ),
        (
            Decimal,
            "precision=3;scale=3",
            Decimal("1"),
            "at most 0 digits before the point",
        ),
        (Decimal, "", Decimal("1E+300"), "out of range for decimal(10,2)"),
        (Decimal, "", 10**20, "out of range"),
        (
            Decimal,
            "",
            1.5,
            "got float 1.5; pass a Decimal (Decimal(str(x))) so no digit is lost",
        ),
        (Decimal, "", Decimal("NaN"), "cannot be stored: MySQL decimals are finite"),
        (Decimal, "", Decimal("sNaN"), "finite"),
        (Decimal, "", Decimal("-Infinity"), "finite"),
        # datetimes
        (
            datetime.datetime,
            "",
            datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc),
            "is timezone-aware; store naive datetimes",
        ),
        (
            datetime.datetime,
            "",
            datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc),
            "astimezone(timezone.utc).replace(tzinfo=None)",
        ),
        (
            datetime.date,
            "",
            datetime.datetime(2024, 1, 1, 12),
            "got datetime datetime.datetime(2024, 1, 1, 12, 0); pass value.date() for a date field",
        ),
        # strings MySQL can't store
        (str, "", "a\ud800b", "contains a lone surrogate, which MySQL cannot store"),
        (str, "length=max", "\udfff", "lone surrogate"),
        # enums
        (Color, "", "blue", "'blue' is not a Color member or value ('red', 'green')"),
        (Color, "", Size.SMALL, "is not a Color member"),
        (Color, "", Shade.DARK, "is not a Color member"),
        (Level, "", 3, "3 is not a Level member or value (1, 2)"),
        (Level, "", True, "True is not a Level member"),
        (Level, "", [1], "[1] is not a Level member"),
        (Level, "", {"a": 1}, "is not a Level member"),
        (Color, "", ["red"], "is not a Color member"),
    ],
)
def test_rejected_values(annotation: Any, tag: str, value: Any, fragment: str) -> None:
    """Invalid values raise ValidationError naming entity, field and what to do."""
    assert fragment in invalid(col(annotation, tag), value)


def test_long_messages_are_shortened() -> None:
    """A rejected long value is shown shortened, not in full."""
    message = invalid(col(int), "y" * 1000)
    assert "..." in message
    assert len(message) < 200


def test_mediumtext_limit_is_in_bytes() -> None:
    """A MEDIUMTEXT holds 16 MiB of UTF-8: the limit counts bytes, not characters."""
    column = col(str, "length=max")
    fits = "😀" * (16_777_215 // 4)
    assert column.literal(fits).startswith("'😀")
    message = invalid(column, fits + "😀")
    assert "16777216 bytes, the column allows 16777215" in message


def test_text_blob_limit() -> None:
    """A MEDIUMBLOB holds 16 MiB."""
    column = col(bytes, "length=max")
    assert column.literal(b"x" * 16_777_215).startswith("_binary X'78")
    assert "16777216 bytes" in invalid(column, b"x" * 16_777_216)


# -- property tests --------------------------------------------------------------------------

_NO_SURROGATES = st.characters(blacklist_categories=("Cs",))

VALID: dict[str, tuple[Any, str, st.SearchStrategy[Any]]] = {
    "int": (int, "", st.integers(-(2**63), 2**63 - 1)),
    "u8": (int, "size=8;unsigned", st.integers(0, 255)),
    "i16": (int, "size=16", st.integers(-(2**15), 2**15 - 1)),
    "bool": (bool, "", st.booleans()),
    "float": (float, "", st.floats(allow_nan=False, allow_infinity=False)),
    "str": (str, "length=20", st.text(_NO_SURROGATES, max_size=20)),
    "text": (str, "length=max", st.text(_NO_SURROGATES, max_size=200)),
    "bytes": (bytes, "length=20", st.binary(max_size=20)),
    "blob": (bytes, "length=max", st.binary(max_size=200)),
    "decimal": (
        Decimal,
        "precision=12;scale=4",
        st.decimals(
            min_value=Decimal("-99999999.9999"),
            max_value=Decimal("99999999.9999"),
            places=4,
            allow_nan=False,
            allow_infinity=False,
        ),
    ),
    "decimal0": (
        Decimal,
        "precision=5;scale=0",
        st.integers(-99999, 99999).map(Decimal),
    ),
    "datetime": (datetime.datetime, "", st.datetimes()),
    "date": (datetime.date, "", st.dates()),
    "color": (Color, "", st.sampled_from(Color)),
    "level": (Level, "", st.sampled_from(Level)),
    "optional": (int | None, "", st.none() | st.integers(-5, 5)),
    "optional_dt": (datetime.datetime | None, "", st.none() | st.datetimes()),
}

INVALID: dict[str, tuple[Any, str, st.SearchStrategy[Any]]] = {
    "int": (int, "", st.integers(2**63, 2**70) | st.integers(-(2**70), -(2**63) - 1)),
    "u8": (int, "size=8;unsigned", st.integers(256, 10**6) | st.integers(max_value=-1)),
    "str": (str, "length=20", st.text(min_size=21, max_size=40)),
    "surrogate": (str, "", st.text(max_size=5).map(lambda s: s + "\ud83d")),
    "bytes": (bytes, "length=20", st.binary(min_size=21, max_size=40)),
    "decimal_places": (
        Decimal,
        "precision=12;scale=4",
        st.decimals(min_value=Decimal("-1"), max_value=Decimal("1"), places=6).filter(
            lambda d: d != d.quantize(Decimal("0.0001"))
        ),
    ),
    "decimal_digits": (
        Decimal,
        "precision=6;scale=2",
        st.integers(10_000, 10**30).map(Decimal),
    ),
    "float_for_decimal": (Decimal, "", st.floats()),
    "float": (float, "", st.sampled_from([math.nan, math.inf, -math.inf])),
    "aware": (
        datetime.datetime,
        "",
        st.datetimes(timezones=st.just(datetime.timezone.utc)),
    ),
    "datetime_for_date": (datetime.date, "", st.datetimes()),
    "color": (Color, "", st.text().filter(lambda s: s not in ("red", "green"))),
    "level": (Level, "", st.integers().filter(lambda i: i not in (1, 2))),
}

_ANYTHING = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(),
    st.binary(),
    st.decimals(),
    st.datetimes(timezones=st.none() | st.just(datetime.timezone.utc)),
    st.dates(),
    st.sampled_from([Color.RED, Level.LOW, Size.SMALL, Shade.DARK, object()]),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)
_ALL_COLUMNS = [(a, t) for a, t, _ in VALID.values()] + [
    (Size, ""),
    (Shade, ""),
    (int, "size=24"),
]


@given(st.data())
def test_valid_values_always_render(data: st.DataObject) -> None:
    """For random valid values of every type, literal() returns a string and never raises."""
    name = data.draw(st.sampled_from(sorted(VALID)))
    annotation, tag, strategy = VALID[name]
    value = data.draw(strategy)
    literal = col(annotation, tag).literal(value)
    assert isinstance(literal, str) and literal


@given(st.text(_NO_SURROGATES, max_size=50))
def test_string_literals_read_back_exactly(text: str) -> None:
    """A str literal, read back with MySQL's escape rules, is the original text."""
    assert unquote_mysql(col(str, "length=max").literal(text)) == text
    assert unquote_mysql(col(str, "length=50").literal(text)) == text


@given(st.binary(max_size=50))
def test_bytes_literals_read_back_exactly(data: bytes) -> None:
    """A bytes literal is the hex of the bytes."""
    literal = col(bytes).literal(data)
    match = re.fullmatch(r"_binary X'([0-9a-f]*)'", literal)
    assert match is not None
    assert bytes.fromhex(match.group(1)) == data


@given(st.data())
def test_invalid_values_raise_validation_error(data: st.DataObject) -> None:
    """For random invalid values of every type, literal() raises ValidationError."""
    name = data.draw(st.sampled_from(sorted(INVALID)))
    annotation, tag, strategy = INVALID[name]
    invalid(col(annotation, tag), data.draw(strategy))


@given(st.sampled_from(_ALL_COLUMNS), _ANYTHING)
def test_any_value_renders_or_raises_validation_error(
    column_spec: tuple[Any, str], value: Any
) -> None:
    """Whatever the value, literal() returns a string or raises ValidationError, nothing else."""
    column = col(*column_spec)
    try:
        literal = column.literal(value)
    except fluxaorm.ValidationError as err:
        assert str(err).startswith("UserEntity.f: ")
    else:
        assert isinstance(literal, str) and literal


@given(st.data())
def test_wire_round_trip(data: st.DataObject) -> None:
    """to_wire -> msgpack -> from_wire gives back an equal value of the same type."""
    name = data.draw(st.sampled_from(sorted(VALID)))
    annotation, tag, strategy = VALID[name]
    value = data.draw(strategy)
    column = col(annotation, tag)
    back = wire_round_trip(column, value)
    assert back == value
    assert type(back) is type(value)


@pytest.mark.parametrize(
    ("annotation", "tag", "value", "wire"),
    [
        (int, "", 5, 5),
        (bool, "", True, True),
        (float, "", 1.5, 1.5),
        (str, "", "żółw", "żółw"),
        (bytes, "", b"\x00", b"\x00"),
        (Decimal, "precision=12;scale=4", Decimal("1.5"), "1.5000"),
        (Decimal, "", 3, "3.00"),
        (
            datetime.datetime,
            "",
            datetime.datetime(2024, 1, 2, 3, 4, 5),
            "2024-01-02 03:04:05.000000",
        ),
        (datetime.date, "", datetime.date(2024, 1, 2), "2024-01-02"),
        (Color, "", Color.GREEN, "green"),
        (Level, "", Level.HIGH, 2),
        (Color | None, "", None, None),
    ],
)
def test_wire_values(annotation: Any, tag: str, value: Any, wire: Any) -> None:
    """Each type has one documented msgpack form, and reads back to the field value."""
    column = col(annotation, tag)
    assert column.wire(value) == wire
    assert type(column.wire(value)) is type(wire)
    assert column.unwire(wire) == value


@pytest.mark.parametrize(
    ("annotation", "wire"),
    [
        (Decimal, "lots"),
        (Decimal, "NaN"),
        (Decimal, "Infinity"),
        (Decimal, math.nan),
        (Decimal, True),
        (Decimal, b"1.5"),
        (datetime.datetime, "yesterday"),
        (datetime.datetime, 1700000000),
        (datetime.date, "2024-13-45"),
        (datetime.date, b"2024-01-01"),
        (Color, ["red"]),
        (Color, 3),
        (Level, True),
        (Level, "1"),
    ],
)
def test_unwire_rejects_what_does_not_decode(annotation: Any, wire: Any) -> None:
    """A wire value that is no valid form of the column raises ValueError naming the field."""
    with pytest.raises(ValueError, match=r"^f: .* is not a valid \w+ value$"):
        col(annotation).unwire(wire)


def test_unwire_keeps_enum_values_it_does_not_know() -> None:
    """An enum value unknown here (a newer producer) arrives as the plain value."""
    assert col(Color).unwire("purple") == "purple"
    assert col(Color).unwire("green") is Color.GREEN
    assert col(Level).unwire(3) == 3
    assert col(Level).unwire(2) is Level.HIGH


def test_unwire_passes_none_and_undecoded_kinds() -> None:
    """None stays None; kinds without a wire form (int, str...) are not converted."""
    assert col(Decimal | None).unwire(None) is None
    assert col(int).unwire("anything") == "anything"
    assert col(Decimal).unwire(5) == Decimal(5)


def test_unwire_decimal_from_a_float() -> None:
    """A float bind (a producer keeping decimals as floats) decodes to the Decimal it shows."""
    back = col(Decimal).unwire(0.1)
    assert back == Decimal("0.1")
    assert type(back) is Decimal


def test_from_db_converters() -> None:
    """Values read from MySQL become the field's type: 0/1 -> bool, enum values -> members."""
    assert col(bool).from_db is bool
    assert col(bool).from_db(1) is True  # type: ignore[misc]
    color = col(Color).from_db
    assert color is not None and color("green") is Color.GREEN
    level = col(Level).from_db
    assert level is not None and level(2) is Level.HIGH
    assert col(int).from_db is None
    assert col(str).from_db is None


class Perm(enum.Flag):
    READ = 1
    WRITE = 2


class Bits(enum.IntFlag):
    ONE = 1
    TWO = 2


@pytest.mark.parametrize("flag", [Perm, Bits, Perm | None])
def test_flag_enums_are_refused(flag: Any) -> None:
    """enum.Flag and IntFlag fields are a SchemaError (combined members are no stored value)."""
    with pytest.raises(fluxaorm.SchemaError) as info:
        col(flag)
    message = str(info.value)
    assert message.startswith("UserEntity.f: ")
    assert "is an enum.Flag" in message
    assert "use a plain Enum, or an int field" in message


def test_version_column() -> None:
    """A version field is an int stored as BIGINT UNSIGNED NOT NULL DEFAULT 0."""
    column = col(int, "version", name="version")
    assert column.version is True
    assert (column.kind, column.sql_type, column.nullable) == (
        "int",
        "bigint unsigned",
        False,
    )
    assert column.definition == "`version` bigint unsigned NOT NULL DEFAULT 0"
    assert column.literal(1) == "1"
    assert column.literal(2**64 - 1) == str(2**64 - 1)
    with pytest.raises(fluxaorm.ValidationError):
        column.literal(-1)
    assert col(int, name="n").version is False


@pytest.mark.parametrize(
    ("annotation", "tag", "name", "fragment"),
    [
        (int, "version", "id", "id cannot be the version field"),
        (bool, "version", "fake_delete", "fake_delete cannot be the version field"),
        (int | None, "version", "v", "must be declared as int (not Optional"),
        (bool, "version", "v", "must be declared as int (not Optional, not bool)"),
        (str, "version", "v", "must be declared as int"),
        (int, "version;size=32", "v", "option size= does not apply to a version"),
        (int, "version;unsigned=false", "v", "option unsigned= does not apply"),
    ],
)
def test_bad_version_fields(
    annotation: Any, tag: str, name: str, fragment: str
) -> None:
    """The version option on id, a non-int, an Optional or with a size is a located SchemaError."""
    with pytest.raises(fluxaorm.SchemaError) as info:
        col(annotation, tag, name=name)
    assert str(info.value).startswith(f"UserEntity.{name}: ")
    assert fragment in str(info.value)
