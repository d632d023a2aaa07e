"""Schema sync (fluxaorm/ddl.py): CREATE from nothing, idempotence, and every ALTER.

Each test builds engines on the test database with ``make_engine`` (which starts
from an empty database) and checks ``information_schema`` itself, not only what
``get_alters()`` says. Entity versions ``V1``/``V2`` share a table through
``@fluxaorm.entity(table=...)`` to play "the entity changed since the last sync".
"""

from __future__ import annotations

import datetime
import enum
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest

import fluxaorm
from tests.conftest import MYSQL_URL, REDIS_URL
from tests.models import AllTypes, CategoryEntity, ProductEntity, UserEntity
from tests.servers import ThrowawayMariaDB

COLLATION = "utf8mb4_unicode_520_ci"


# -- reading information_schema ------------------------------------------------


def _query(conn: Any, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    cursor = conn.cursor()
    cursor.execute(sql, args)
    return list(cursor.fetchall())


def _type(column_type: str) -> str:
    """Drop integer display widths (MariaDB shows them, MySQL 8 does not)."""
    if column_type.startswith("tinyint(1)"):
        return column_type
    return re.sub(
        r"^(tinyint|smallint|mediumint|int|bigint)\(\d+\)", r"\1", column_type
    )


def columns(conn: Any, table: str) -> dict[str, tuple[str, bool, str | None]]:
    """Column name -> (type without display width, nullable, collation), in order."""
    rows = _query(
        conn,
        "SELECT COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, COLLATION_NAME "
        "FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
        "AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION",
        table,
    )
    return {r[0]: (_type(r[1]), r[2] == "YES", r[3]) for r in rows}


def indexes(conn: Any, table: str) -> dict[str, tuple[bool, tuple[str, ...]]]:
    """Index name -> (unique, columns in order)."""
    found: dict[str, tuple[bool, list[str]]] = {}
    for name, non_unique, column in _query(
        conn,
        "SELECT INDEX_NAME, NON_UNIQUE, COLUMN_NAME FROM information_schema.STATISTICS "
        "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = %s "
        "ORDER BY INDEX_NAME, SEQ_IN_INDEX",
        table,
    ):
        found.setdefault(name, (int(non_unique) == 0, []))[1].append(column)
    return {name: (unique, tuple(cols)) for name, (unique, cols) in found.items()}


def tables(conn: Any) -> dict[str, str]:
    """Table name -> table collation."""
    rows = _query(
        conn,
        "SELECT TABLE_NAME, TABLE_COLLATION FROM information_schema.TABLES "
        "WHERE TABLE_SCHEMA = DATABASE()",
    )
    return {r[0]: r[1] for r in rows}


def rows(conn: Any, sql: str) -> list[tuple[Any, ...]]:
    return _query(conn, sql)


def sqls(alters: list[fluxaorm.Alter]) -> list[tuple[str, bool]]:
    return [(a.sql, a.destructive) for a in alters]


# -- entities ------------------------------------------------------------------


class Odd(enum.Enum):
    QUOTE = "it's"
    UNICODE = "zażółć"
    CASE = "Upper Case"
    COMMA = "a,b"


class Small(enum.IntEnum):
    ONE = 1
    BIG = 200


@fluxaorm.entity(table="unusual")
@dataclass
class Unusual:
    """Types whose information_schema spelling differs from the declared one."""

    id: int = 0
    odd: Odd = Odd.QUOTE
    small: Small = fluxaorm.column(default=Small.ONE, size=8, unsigned=True)
    s8: int = fluxaorm.column(default=0, size=8)
    s16: int = fluxaorm.column(default=0, size=16)
    s24: int = fluxaorm.column(default=0, size=24, unsigned=True)
    u64: int = fluxaorm.column(default=0, unsigned=True)
    long: str = fluxaorm.column(default="", length=2000)
    big: bytes = fluxaorm.column(default=b"", length="max")
    whole: Decimal = fluxaorm.column(default=Decimal(0), precision=65, scale=0)
    fine: Decimal = fluxaorm.column(default=Decimal(0), precision=65, scale=30)
    code: str = fluxaorm.column(default="", length=10, unique=True)
    a: int = fluxaorm.column(default=0, index="Pair_IDX:2")
    b: int = fluxaorm.column(default=0, index="Pair_IDX:1")
    opt_odd: Odd | None = None
    opt_small: Small | None = None


class Slashed(enum.Enum):
    PLAIN = "plain"
    SLASH = "back\\slash"


@fluxaorm.entity(table="slashed")
@dataclass
class SlashedEntity:
    id: int = 0
    kind: Slashed = Slashed.PLAIN


@fluxaorm.entity(table="evolving")
@dataclass
class V1:
    id: int = 0
    name: str = fluxaorm.column(default="", length=20)
    count: int = fluxaorm.column(default=0, size=32)
    note: str = fluxaorm.column(default="", length=50)


@fluxaorm.entity(table="evolving")
@dataclass
class V1Added:
    """V1 plus a field in the middle and one at the end."""

    id: int = 0
    name: str = fluxaorm.column(default="", length=20)
    added: int = 7
    count: int = fluxaorm.column(default=0, size=32)
    note: str = fluxaorm.column(default="", length=50)
    tail: datetime.date | None = None


@fluxaorm.entity(table="evolving")
@dataclass
class V1Widened:
    """V1 with a longer name, a 64-bit count and a MEDIUMTEXT note."""

    id: int = 0
    name: str = fluxaorm.column(default="", length=200)
    count: int = 0
    note: str = fluxaorm.column(default="", length="max")


@fluxaorm.entity(table="evolving")
@dataclass
class V1Narrowed:
    """V1 with a shorter name."""

    id: int = 0
    name: str = fluxaorm.column(default="", length=5)
    count: int = fluxaorm.column(default=0, size=32)
    note: str = fluxaorm.column(default="", length=50)


@fluxaorm.entity(table="evolving")
@dataclass
class V1Retyped:
    """V1 with note turned into a number."""

    id: int = 0
    name: str = fluxaorm.column(default="", length=20)
    count: int = fluxaorm.column(default=0, size=32)
    note: int = 0


@fluxaorm.entity(table="evolving")
@dataclass
class V1Removed:
    """V1 without note."""

    id: int = 0
    name: str = fluxaorm.column(default="", length=20)
    count: int = fluxaorm.column(default=0, size=32)


@fluxaorm.entity(table="evolving")
@dataclass
class V1Nullable:
    """V1 with an optional count."""

    id: int = 0
    name: str = fluxaorm.column(default="", length=20)
    count: int | None = fluxaorm.column(default=None, size=32)
    note: str = fluxaorm.column(default="", length=50)


@fluxaorm.entity(table="evolving")
@dataclass
class V1Unsigned:
    """V1 with an unsigned count."""

    id: int = 0
    name: str = fluxaorm.column(default="", length=20)
    count: int = fluxaorm.column(default=0, size=32, unsigned=True)
    note: str = fluxaorm.column(default="", length=50)


@fluxaorm.entity(table="indexed")
@dataclass
class I1:
    id: int = 0
    a: int = fluxaorm.column(default=0, index="ab")
    b: int = fluxaorm.column(default=0, index="ab")
    c: int = fluxaorm.column(default=0, index="c_idx")
    d: int = fluxaorm.column(default=0, index="d_idx")


@fluxaorm.entity(table="indexed")
@dataclass
class I2:
    """I1 with ab reordered to (b, a), c_idx removed, d_idx unique, e_idx added."""

    id: int = 0
    a: int = fluxaorm.column(default=0, index="ab:2")
    b: int = fluxaorm.column(default=0, index="ab:1")
    c: int = 0
    d: int = fluxaorm.column(default=0, unique="d_idx")
    e: str = fluxaorm.column(default="", length=10, index="e_idx")


class Color1(enum.Enum):
    RED = "red"
    GREEN = "green"


class Color2(enum.Enum):
    RED = "red"
    GREEN = "green"
    BLUE = "blue"


class Color3(enum.Enum):
    RED = "red"
    GREENS = "green's"


@fluxaorm.entity(table="painted")
@dataclass
class Painted1:
    id: int = 0
    color: Color1 = Color1.RED


@fluxaorm.entity(table="painted")
@dataclass
class Painted2:
    id: int = 0
    color: Color2 = Color2.RED


@fluxaorm.entity(table="painted")
@dataclass
class Painted3:
    id: int = 0
    color: Color3 = Color3.RED


@fluxaorm.entity(table="numbers")
@dataclass
class Numbers1:
    id: int = 0
    small: int = fluxaorm.column(default=0, size=8, unsigned=True)
    money: Decimal = fluxaorm.column(default=Decimal(0), precision=6, scale=2)


@fluxaorm.entity(table="numbers")
@dataclass
class Numbers2:
    """Every value of Numbers1 still fits: signed 16 bits, 5 integer digits, scale 4."""

    id: int = 0
    small: int = fluxaorm.column(default=0, size=16)
    money: Decimal = fluxaorm.column(default=Decimal(0), precision=9, scale=4)


@fluxaorm.entity(table="numbers")
@dataclass
class Numbers3:
    """Values of Numbers1 may not fit: signed 8 bits, scale 1."""

    id: int = 0
    small: int = fluxaorm.column(default=0, size=8)
    money: Decimal = fluxaorm.column(default=Decimal(0), precision=6, scale=1)


@fluxaorm.entity(table="texts")
@dataclass
class Texts1:
    id: int = 0
    body: str = fluxaorm.column(default="", length="max")


@fluxaorm.entity(table="texts")
@dataclass
class Texts2:
    """body shrinks to a VARCHAR and gets an index (possible only after the shrink)."""

    id: int = 0
    body: str = fluxaorm.column(default="", length=40, index="body_idx")


@fluxaorm.entity(table="other_pool", mysql_pool="second")
@dataclass
class OtherPoolEntity:
    id: int = 0
    label: str = ""


# -- creating from nothing -------------------------------------------------------


def test_sync_from_nothing_creates_every_table(make_engine, mysql_conn) -> None:
    """sync_schema() on an empty database creates each entity table and the outbox."""
    engine = make_engine(AllTypes, ProductEntity, UserEntity, CategoryEntity)
    assert tables(mysql_conn) == {
        "all_types": COLLATION,
        "products": COLLATION,
        "UserEntity": COLLATION,
        "CategoryEntity": COLLATION,
        "_fluxaorm_outbox": "utf8mb4_general_ci",
    }
    assert engine.get_alters() == []


def test_created_columns_have_the_declared_types(make_engine, mysql_conn) -> None:
    """CREATE TABLE gives every field type its column type, nullability and utf8mb4."""
    make_engine(AllTypes, outbox=False)
    text = COLLATION
    assert columns(mysql_conn, "all_types") == {
        "id": ("bigint unsigned", False, None),
        "i64": ("bigint", False, None),
        "i32": ("int", False, None),
        "u8": ("tinyint unsigned", False, None),
        "flag": ("tinyint(1)", False, None),
        "ratio": ("double", False, None),
        "name": ("varchar(50)", False, text),
        "text": ("mediumtext", False, text),
        "blob": ("varbinary(255)", False, None),
        "amount": ("decimal(12,4)", False, None),
        "at": ("datetime(6)", False, None),
        "day": ("date", False, None),
        "color": ("enum('red','green')", False, text),
        "level": ("int", False, None),
        "opt_int": ("bigint", True, None),
        "opt_str": ("varchar(255)", True, text),
        "opt_amount": ("decimal(10,2)", True, None),
        "opt_at": ("datetime(6)", True, None),
        "opt_day": ("date", True, None),
        "opt_color": ("enum('red','green')", True, text),
        "opt_blob": ("varbinary(255)", True, None),
        "opt_flag": ("tinyint(1)", True, None),
        "opt_ratio": ("double", True, None),
    }
    extra = rows(
        mysql_conn,
        "SELECT EXTRA FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
        "AND TABLE_NAME = 'all_types' AND COLUMN_NAME = 'id'",
    )
    assert extra == [("auto_increment",)]
    assert indexes(mysql_conn, "all_types") == {"PRIMARY": (True, ("id",))}


def test_created_indexes_are_named_unique_and_multi_column(
    make_engine, mysql_conn
) -> None:
    """CREATE TABLE declares the primary key and the named, multi-column indexes."""
    make_engine(ProductEntity, outbox=False)
    assert indexes(mysql_conn, "products") == {
        "PRIMARY": (True, ("id",)),
        "sku_idx": (True, ("sku", "fake_delete")),
        "shop_price": (False, ("shop", "price")),
    }
    assert columns(mysql_conn, "products")["sku"] == ("varchar(32)", False, COLLATION)


def test_outbox_table_is_created_only_when_the_outbox_is_on(
    make_engine, mysql_conn
) -> None:
    """The outbox table `_fluxaorm_outbox` is created with the outbox on, not off."""
    make_engine(UserEntity, outbox=False)
    assert "_fluxaorm_outbox" not in tables(mysql_conn)
    engine = make_engine(UserEntity, sync=False)
    assert sqls(engine.get_alters())[0][0].startswith("CREATE TABLE `_fluxaorm_outbox`")
    engine.sync_schema()
    assert "_fluxaorm_outbox" in tables(mysql_conn)
    assert columns(mysql_conn, "_fluxaorm_outbox")["redis_pool"][2].startswith(
        "utf8mb4_"
    )


# -- idempotence -------------------------------------------------------------------


def test_second_sync_finds_nothing_to_do(make_engine) -> None:
    """After a sync, get_alters() is empty for entities of every type and index kind."""
    engine = make_engine(AllTypes, ProductEntity, UserEntity, CategoryEntity)
    assert engine.get_alters() == []
    assert engine.sync_schema(destructive=True) == []
    again = make_engine(AllTypes, ProductEntity, UserEntity, CategoryEntity, sync=False)
    assert again.get_alters() == []


def test_sync_is_idempotent_for_types_information_schema_spells_differently(
    make_engine,
) -> None:
    """Display widths, quoted/unicode enum members and int enums cause no alter."""
    engine = make_engine(Unusual, outbox=False)
    assert engine.get_alters() == []
    orm = engine.new_orm()
    row = orm.new_entity(
        Unusual, odd=Odd.QUOTE, small=Small.BIG, s8=-128, s24=16_777_215, u64=2**64 - 1
    )
    orm.flush()
    loaded = engine.new_orm().get_by_id(Unusual, row.id)
    assert loaded == row


def test_enum_member_with_a_backslash_is_stored_and_synced_once(make_engine) -> None:
    """An enum member holding a backslash is declared as is: no endless MODIFY."""
    engine = make_engine(SlashedEntity, outbox=False)
    assert engine.get_alters() == []
    orm = engine.new_orm()
    row = orm.new_entity(SlashedEntity, kind=Slashed.SLASH)
    orm.flush()
    assert engine.new_orm().get_by_id(SlashedEntity, row.id).kind is Slashed.SLASH


# -- alters after an entity changed -------------------------------------------------


def _v1_with_rows(make_engine) -> None:
    engine = make_engine(V1, outbox=False)
    orm = engine.new_orm()
    orm.new_entity(V1, name="alpha", count=1, note="first")
    orm.new_entity(V1, name="beta", count=-2, note="second")
    orm.flush()


def test_added_field_is_a_safe_add_column(make_engine, mysql_conn) -> None:
    """A new field becomes ADD COLUMN at its place, run by sync; rows keep values."""
    _v1_with_rows(make_engine)
    engine = make_engine(V1Added, outbox=False, sync=False)
    assert sqls(engine.get_alters()) == [
        (
            "ALTER TABLE `evolving` ADD COLUMN `added` bigint NOT NULL AFTER `name`, "
            "ADD COLUMN `tail` date NULL AFTER `note`",
            False,
        )
    ]
    engine.sync_schema()
    assert list(columns(mysql_conn, "evolving")) == [
        "id",
        "name",
        "added",
        "count",
        "note",
        "tail",
    ]
    assert rows(
        mysql_conn, "SELECT name, added, count, note, tail FROM evolving ORDER BY id"
    ) == [("alpha", 0, 1, "first", None), ("beta", 0, -2, "second", None)]
    assert engine.get_alters() == []


def test_widened_columns_are_a_safe_modify(make_engine, mysql_conn) -> None:
    """A longer varchar, a wider int and varchar -> MEDIUMTEXT are safe MODIFYs."""
    _v1_with_rows(make_engine)
    engine = make_engine(V1Widened, outbox=False, sync=False)
    alters = engine.get_alters()
    assert [a.destructive for a in alters] == [False]
    assert alters[0].sql.startswith("ALTER TABLE `evolving` MODIFY COLUMN `name`")
    assert engine.sync_schema() == alters
    assert columns(mysql_conn, "evolving") == {
        "id": ("bigint unsigned", False, None),
        "name": ("varchar(200)", False, COLLATION),
        "count": ("bigint", False, None),
        "note": ("mediumtext", False, COLLATION),
    }
    assert rows(mysql_conn, "SELECT name, count, note FROM evolving ORDER BY id") == [
        ("alpha", 1, "first"),
        ("beta", -2, "second"),
    ]
    assert engine.get_alters() == []


def test_narrowed_varchar_is_destructive(make_engine, mysql_conn) -> None:
    """A shorter varchar is a destructive MODIFY: skipped by default, run on request."""
    _v1_with_rows(make_engine)
    engine = make_engine(V1Narrowed, outbox=False, sync=False)
    expected = [
        (
            "ALTER TABLE `evolving` MODIFY COLUMN `name` varchar(5) CHARACTER SET "
            f"utf8mb4 COLLATE {COLLATION} NOT NULL",
            True,
        )
    ]
    assert sqls(engine.get_alters()) == expected
    assert engine.sync_schema() == []
    assert columns(mysql_conn, "evolving")["name"][0] == "varchar(20)"
    assert sqls(engine.get_alters()) == expected
    assert sqls(engine.sync_schema(destructive=True)) == expected
    assert columns(mysql_conn, "evolving")["name"][0] == "varchar(5)"
    assert rows(mysql_conn, "SELECT name FROM evolving ORDER BY id") == [
        ("alpha",),
        ("beta",),
    ]
    assert engine.get_alters() == []


def test_changed_type_is_destructive(make_engine, mysql_conn) -> None:
    """str -> int is a destructive MODIFY that sync_schema() leaves alone."""
    _v1_with_rows(make_engine)
    mysql_conn.cursor().execute("UPDATE evolving SET note = '12'")
    engine = make_engine(V1Retyped, outbox=False, sync=False)
    expected = [("ALTER TABLE `evolving` MODIFY COLUMN `note` bigint NOT NULL", True)]
    assert sqls(engine.get_alters()) == expected
    assert engine.sync_schema() == []
    assert columns(mysql_conn, "evolving")["note"][0] == "varchar(50)"
    engine.sync_schema(destructive=True)
    assert rows(mysql_conn, "SELECT note FROM evolving") == [(12,), (12,)]
    assert engine.get_alters() == []


def test_removed_field_is_a_destructive_drop_column(make_engine, mysql_conn) -> None:
    """A removed field is DROP COLUMN, run only by sync_schema(destructive=True)."""
    _v1_with_rows(make_engine)
    engine = make_engine(V1Removed, outbox=False, sync=False)
    alters = engine.get_alters()
    assert sqls(alters)[-1] == ("ALTER TABLE `evolving` DROP COLUMN `note`", True)
    engine.sync_schema()
    assert "note" in columns(mysql_conn, "evolving")
    assert rows(mysql_conn, "SELECT note FROM evolving ORDER BY id") == [
        ("first",),
        ("second",),
    ]
    assert sqls(engine.get_alters()) == [
        ("ALTER TABLE `evolving` DROP COLUMN `note`", True)
    ]
    engine.sync_schema(destructive=True)
    assert list(columns(mysql_conn, "evolving")) == ["id", "name", "count"]
    assert engine.get_alters() == []


def test_declined_drop_column_leaves_the_table_writable(
    make_engine, mysql_conn
) -> None:
    """While a removed NOT NULL field's column stays, inserts without it still work."""
    _v1_with_rows(make_engine)
    engine = make_engine(V1Removed, outbox=False, sync=False)
    assert sqls(engine.get_alters()) == [
        (
            "ALTER TABLE `evolving` MODIFY COLUMN `note` varchar(50) "
            f"COLLATE {COLLATION} NULL",
            False,
        ),
        ("ALTER TABLE `evolving` DROP COLUMN `note`", True),
    ]
    engine.sync_schema()
    orm = engine.new_orm()
    row = orm.new_entity(V1Removed, name="gamma", count=3)
    orm.flush()
    assert rows(mysql_conn, f"SELECT name, note FROM evolving WHERE id = {row.id}") == [
        ("gamma", None)
    ]
    assert columns(mysql_conn, "evolving")["note"] == ("varchar(50)", True, COLLATION)


def test_nullable_change(make_engine, mysql_conn) -> None:
    """NOT NULL -> NULL is a safe MODIFY; NULL -> NOT NULL is destructive."""
    _v1_with_rows(make_engine)
    loose = make_engine(V1Nullable, outbox=False, sync=False)
    assert sqls(loose.get_alters()) == [
        ("ALTER TABLE `evolving` MODIFY COLUMN `count` int NULL", False)
    ]
    loose.sync_schema()
    assert columns(mysql_conn, "evolving")["count"] == ("int", True, None)
    assert loose.get_alters() == []
    strict = make_engine(V1, outbox=False, sync=False)
    assert sqls(strict.get_alters()) == [
        ("ALTER TABLE `evolving` MODIFY COLUMN `count` int NOT NULL", True)
    ]
    strict.sync_schema(destructive=True)
    assert columns(mysql_conn, "evolving")["count"] == ("int", False, None)
    assert rows(mysql_conn, "SELECT count FROM evolving ORDER BY id") == [(1,), (-2,)]


def test_signed_to_unsigned_is_destructive(make_engine) -> None:
    """int -> int unsigned can lose negative values, so it is destructive."""
    _v1_with_rows(make_engine)
    engine = make_engine(V1Unsigned, outbox=False, sync=False)
    assert sqls(engine.get_alters()) == [
        ("ALTER TABLE `evolving` MODIFY COLUMN `count` int unsigned NOT NULL", True)
    ]


def test_number_changes_are_safe_only_when_every_value_fits(
    make_engine, mysql_conn
) -> None:
    """tinyint unsigned -> smallint and decimal(6,2) -> (9,4) are safe; narrowing is not."""
    engine = make_engine(Numbers1, outbox=False)
    orm = engine.new_orm()
    orm.new_entity(Numbers1, small=255, money=Decimal("9999.99"))
    orm.flush()
    wider = make_engine(Numbers2, outbox=False, sync=False)
    assert [a.destructive for a in wider.get_alters()] == [False]
    wider.sync_schema()
    assert rows(mysql_conn, "SELECT small, money FROM numbers") == [
        (255, Decimal("9999.9900"))
    ]
    assert wider.get_alters() == []
    narrower = make_engine(Numbers3, outbox=False, sync=False)
    assert [a.destructive for a in narrower.get_alters()] == [True]


def test_enum_members_may_be_appended_but_not_renamed(make_engine) -> None:
    """Appending an enum member is safe; renaming one is destructive."""
    make_engine(Painted1, outbox=False)
    appended = make_engine(Painted2, outbox=False, sync=False)
    assert [a.destructive for a in appended.get_alters()] == [False]
    renamed = make_engine(Painted3, outbox=False, sync=False)
    assert [a.destructive for a in renamed.get_alters()] == [True]
    appended.sync_schema()
    assert appended.get_alters() == []


def test_index_changes(make_engine, mysql_conn) -> None:
    """Indexes added, removed, reordered and made unique change in one safe ALTER."""
    make_engine(I1, outbox=False)
    engine = make_engine(I2, outbox=False, sync=False)
    assert sqls(engine.get_alters()) == [
        (
            "ALTER TABLE `indexed` DROP INDEX `ab`, DROP INDEX `c_idx`, "
            "DROP INDEX `d_idx`, ADD COLUMN `e` varchar(10) CHARACTER SET utf8mb4 "
            f"COLLATE {COLLATION} NOT NULL AFTER `d`, ADD KEY `ab` (`b`,`a`), "
            "ADD UNIQUE KEY `d_idx` (`d`), ADD KEY `e_idx` (`e`)",
            False,
        )
    ]
    engine.sync_schema()
    assert indexes(mysql_conn, "indexed") == {
        "PRIMARY": (True, ("id",)),
        "ab": (False, ("b", "a")),
        "d_idx": (True, ("d",)),
        "e_idx": (False, ("e",)),
    }
    assert engine.get_alters() == []


def test_index_on_a_destructively_changed_column_waits_for_that_change(
    make_engine, mysql_conn
) -> None:
    """An index that needs a destructive MODIFY is added after it, not before."""
    make_engine(Texts1, outbox=False)
    engine = make_engine(Texts2, outbox=False, sync=False)
    assert sqls(engine.get_alters()) == [
        (
            "ALTER TABLE `texts` MODIFY COLUMN `body` varchar(40) CHARACTER SET "
            f"utf8mb4 COLLATE {COLLATION} NOT NULL, ADD KEY `body_idx` (`body`)",
            True,
        )
    ]
    assert engine.sync_schema() == []
    engine.sync_schema(destructive=True)
    assert indexes(mysql_conn, "texts")["body_idx"] == (False, ("body",))
    assert engine.get_alters() == []


def test_unused_table_is_never_listed_nor_dropped_by_default(
    make_engine, mysql_conn
) -> None:
    """A table no entity uses is left alone by get_alters() and sync_schema(destructive=True)."""
    make_engine(UserEntity, CategoryEntity, outbox=False)
    engine = make_engine(UserEntity, outbox=False, sync=False)
    assert engine.get_alters() == []
    assert engine.sync_schema(destructive=True) == []
    assert set(tables(mysql_conn)) == {"UserEntity", "CategoryEntity"}


def test_unused_table_is_dropped_only_with_drop_unknown_tables(
    make_engine, mysql_conn
) -> None:
    """drop_unknown_tables=True lists the DROP TABLE (marked unknown_table) and runs it."""
    make_engine(UserEntity, CategoryEntity, outbox=False)
    engine = make_engine(UserEntity, outbox=False, sync=False)
    alters = engine.get_alters(drop_unknown_tables=True)
    assert sqls(alters) == [("DROP TABLE `CategoryEntity`", True)]
    assert alters[0].unknown_table and alters[0].table == "CategoryEntity"
    assert engine.sync_schema(drop_unknown_tables=True) == alters
    assert set(tables(mysql_conn)) == {"UserEntity"}


def test_drop_unknown_tables_alone_runs_no_destructive_alter(
    make_engine, mysql_conn
) -> None:
    """drop_unknown_tables=True without destructive=True drops tables, not columns."""
    make_engine(V1, CategoryEntity, outbox=False)
    engine = make_engine(V1Removed, outbox=False, sync=False)
    ran = engine.sync_schema(drop_unknown_tables=True)
    assert [(a.table, a.unknown_table) for a in ran if a.destructive] == [
        ("CategoryEntity", True)
    ]
    left = engine.get_alters()
    assert left and all(a.destructive and not a.unknown_table for a in left)


def test_outbox_table_is_never_dropped(make_engine, mysql_conn) -> None:
    """Even with the outbox off, a destructive sync keeps `_fluxaorm_outbox`."""
    make_engine(UserEntity)
    engine = make_engine(UserEntity, outbox=False, sync=False)
    assert engine.get_alters() == []
    engine.sync_schema(destructive=True)
    assert set(tables(mysql_conn)) == {"UserEntity", "_fluxaorm_outbox"}


def test_table_in_a_foreign_charset_is_converted(make_engine, mysql_conn) -> None:
    """A latin1 table made by hand gets utf8mb4 columns and default, keeping its rows."""
    mysql_conn.cursor().execute(
        "CREATE TABLE `CategoryEntity` (`id` bigint unsigned NOT NULL AUTO_INCREMENT, "
        "`code` varchar(255) NOT NULL, PRIMARY KEY (`id`)) DEFAULT CHARSET=latin1"
    )
    mysql_conn.cursor().execute("INSERT INTO CategoryEntity (code) VALUES ('café')")
    engine = make_engine(CategoryEntity, outbox=False, sync=False)
    assert [a.destructive for a in engine.get_alters()] == [False]
    engine.sync_schema()
    assert tables(mysql_conn) == {"CategoryEntity": COLLATION}
    assert columns(mysql_conn, "CategoryEntity")["code"][2] == COLLATION
    assert rows(mysql_conn, "SELECT code FROM CategoryEntity") == [("café",)]
    assert engine.get_alters() == []


def test_table_without_primary_key_gets_one(make_engine, mysql_conn) -> None:
    """A hand-made table without primary key or auto-increment gets both, safely."""
    mysql_conn.cursor().execute(
        "CREATE TABLE `CategoryEntity` (`id` bigint unsigned NOT NULL, "
        f"`code` varchar(255) COLLATE {COLLATION} NOT NULL) "
        f"DEFAULT CHARSET=utf8mb4 COLLATE={COLLATION}"
    )
    mysql_conn.cursor().execute("INSERT INTO CategoryEntity VALUES (5, 'x')")
    engine = make_engine(CategoryEntity, outbox=False, sync=False)
    assert [a.destructive for a in engine.get_alters()] == [False]
    engine.sync_schema()
    assert indexes(mysql_conn, "CategoryEntity") == {"PRIMARY": (True, ("id",))}
    orm = engine.new_orm()
    row = orm.new_entity(CategoryEntity, code="y")
    orm.flush()
    assert row.id == 6
    assert engine.get_alters() == []


def test_column_spelled_in_another_case_is_renamed(make_engine, mysql_conn) -> None:
    """A live column `Code` for the field `code` is renamed, not added twice."""
    mysql_conn.cursor().execute(
        "CREATE TABLE `CategoryEntity` (`id` bigint unsigned NOT NULL AUTO_INCREMENT, "
        f"`Code` varchar(255) COLLATE {COLLATION} NOT NULL, PRIMARY KEY (`id`)) "
        f"DEFAULT CHARSET=utf8mb4 COLLATE={COLLATION}"
    )
    engine = make_engine(CategoryEntity, outbox=False, sync=False)
    assert [a.destructive for a in engine.get_alters()] == [False]
    engine.sync_schema()
    assert list(columns(mysql_conn, "CategoryEntity")) == ["id", "code"]
    assert engine.get_alters() == []


def test_pools_sharing_a_database_keep_each_others_tables(clean, mysql_conn) -> None:
    """Two pools on one database: one outbox CREATE and no DROP of the other's tables."""
    registry = fluxaorm.Registry()
    registry.register_mysql(MYSQL_URL)
    registry.register_mysql(MYSQL_URL, pool="second")
    registry.register_redis(REDIS_URL)
    registry.register_entity(UserEntity, OtherPoolEntity)
    with registry.validate() as engine:
        alters = engine.get_alters()
        assert sorted((a.pool, a.table, a.destructive) for a in alters) == [
            ("default", "UserEntity", False),
            ("default", "_fluxaorm_outbox", False),
            ("second", "other_pool", False),
        ]
        engine.sync_schema(destructive=True)
        assert set(tables(mysql_conn)) == {
            "UserEntity",
            "other_pool",
            "_fluxaorm_outbox",
        }
        assert engine.get_alters() == []


def test_statements_come_in_a_stable_order(make_engine, mysql_conn) -> None:
    """Per pool: tables by name (safe before destructive), then the outbox, then drops."""
    make_engine(V1, Texts1, I1, outbox=False)
    mysql_conn.cursor().execute("CREATE TABLE zz_unused (x int)")
    mysql_conn.cursor().execute("CREATE TABLE aa_unused (x int)")
    engine = make_engine(V1Removed, Texts2, I2, UserEntity, sync=False)
    alters = engine.get_alters(drop_unknown_tables=True)
    assert [(a.table, a.destructive) for a in alters] == [
        ("UserEntity", False),
        ("evolving", False),
        ("evolving", True),
        ("indexed", False),
        ("texts", True),
        ("_fluxaorm_outbox", False),
        ("aa_unused", True),
        ("zz_unused", True),
    ]


@pytest.mark.parametrize("destructive", [False, True])
def test_after_sync_only_declined_alters_remain(make_engine, destructive) -> None:
    """After sync_schema(destructive=...), get_alters() lists only what it declined."""
    make_engine(V1, Texts1, I1, outbox=False)
    engine = make_engine(V1Removed, Texts2, I2, UserEntity, sync=False)
    before = engine.get_alters()
    engine.sync_schema(destructive=destructive)
    left = engine.get_alters()
    if destructive:
        assert left == []
    else:
        assert left and all(a.destructive for a in left)
        assert {a.sql for a in left} <= {a.sql for a in before}


def test_lowercased_table_names_are_recognised(redis_client) -> None:
    """With lower_case_table_names=1, a mixed-case table is found again, not re-created."""
    with ThrowawayMariaDB(1, ["--lower-case-table-names=1"]) as server:
        registry = fluxaorm.Registry()
        registry.register_mysql(server.url)
        registry.register_redis(REDIS_URL)
        registry.register_entity(UserEntity, CategoryEntity)
        with registry.validate() as engine:
            engine.sync_schema()
            assert engine.get_alters() == []
            engine.sync_schema(destructive=True)
            conn = server.connect()
            try:
                assert set(tables(conn)) == {
                    "userentity",
                    "categoryentity",
                    "_fluxaorm_outbox",
                }
            finally:
                conn.close()


def test_apply_alters_runs_exactly_the_statements_given(
    make_engine, mysql_conn
) -> None:
    """apply_alters() runs the chosen statements only; an unknown pool runs none."""
    make_engine(UserEntity, CategoryEntity, outbox=False)
    mysql_conn.cursor().execute("CREATE TABLE other_app (id int PRIMARY KEY)")
    engine = make_engine(UserEntity, outbox=False, sync=False)
    (category, other) = engine.get_alters(drop_unknown_tables=True)
    assert (category.table, other.table) == ("CategoryEntity", "other_app")
    mysql_conn.cursor().execute("CREATE TABLE created_meanwhile (id int PRIMARY KEY)")

    assert engine.apply_alters([other]) == [other]
    assert set(tables(mysql_conn)) == {
        "UserEntity",
        "CategoryEntity",
        "created_meanwhile",
    }
    elsewhere = fluxaorm.Alter("DROP TABLE `UserEntity`", "nowhere", "UserEntity", True)
    with pytest.raises(
        fluxaorm.ConfigurationError, match="'nowhere' is not registered"
    ):
        engine.apply_alters([category, elsewhere])
    assert "CategoryEntity" in tables(mysql_conn)
