"""Schema sync: compare live tables with the entities and render CREATE/ALTER/DROP.

``Engine.get_alters()`` and ``Engine.sync_schema()`` call :func:`get_alters` and
:func:`run_alters`. The live side is read from ``information_schema`` (four queries
per MySQL pool); the desired side comes from each
:class:`~fluxaorm.schema.EntitySchema`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import attrs

from .db import MySQLPool
from .fields import COLLATION, Column
from .outbox import CREATE_SQL as OUTBOX_CREATE_SQL
from .outbox import OUTBOX_TABLE, upgrade_statements
from .schema import EntitySchema, Index

__all__ = ["Alter", "create_table_sql", "get_alters", "normalize_type", "run_alters"]

_INT_WIDTH_RE = re.compile(r"^(tinyint|smallint|mediumint|int|bigint)\(\d+\)")
_INT_BITS = {"tinyint": 8, "smallint": 16, "mediumint": 24, "int": 32, "bigint": 64}
_COLLATED = ("varchar", "mediumtext", "enum")
_PRIMARY = Index("PRIMARY", True, ("id",))


@attrs.frozen
class Alter:
    """One statement that brings a table in line with its entity.

    Attributes:
        sql: the statement.
        pool: the MySQL pool it runs on.
        table: the table it changes.
        destructive: whether it can lose data (dropping a table or a column, or
            narrowing a column); ``sync_schema()`` runs those only when asked.
        unknown_table: whether it drops a table that no registered entity uses
            (listed only by ``get_alters(drop_unknown_tables=True)``; such a
            table may belong to another application sharing the database).
    """

    sql: str
    pool: str
    table: str
    destructive: bool = False
    unknown_table: bool = False

    def __str__(self) -> str:
        return self.sql


@attrs.frozen
class _LiveColumn:
    name: str
    type: str  # normalised, comparable with Column.sql_type
    raw_type: str  # as the server shows it, for re-declaring the column
    nullable: bool
    has_default: bool
    extra: str
    collation: str | None


@attrs.frozen
class _LiveDatabase:
    """What ``information_schema`` says about one pool's database."""

    location: tuple[str, ...]  # identifies the database across pools
    fold_case: bool  # lower_case_table_names != 0: table names compare lowercased
    tables: dict[str, tuple[str, str | None]]  # folded name -> (name, collation)
    columns: dict[str, list[_LiveColumn]]
    indexes: dict[str, dict[str, Index]]

    def key(self, table: str) -> str:
        return table.lower() if self.fold_case else table


def normalize_type(column_type: str) -> str:
    """Drop integer display widths (except ``tinyint(1)``) so MySQL and MariaDB agree.

    Keywords are lowercased; enum members keep their case (``'Red'`` is not ``'red'``).
    """
    text = column_type.strip()
    name, paren, rest = text.partition("(")
    if name.lower() in ("enum", "set"):
        return name.lower() + paren + rest
    text = text.lower()
    if text.startswith("tinyint(1)"):
        return text
    return _INT_WIDTH_RE.sub(r"\1", text)


def _index_sql(index: Index) -> str:
    cols = ",".join(f"`{c}`" for c in index.columns)
    return f"{'UNIQUE ' if index.unique else ''}KEY `{index.name}` ({cols})"


def create_table_sql(schema: EntitySchema) -> str:
    """Render the CREATE TABLE statement of an entity."""
    lines = [c.definition for c in schema.columns]
    lines.append("PRIMARY KEY (`id`)")
    lines.extend(_index_sql(i) for i in schema.indexes)
    body = ",\n  ".join(lines)
    return (
        f"CREATE TABLE {schema.quoted_table} (\n  {body}\n) ENGINE=InnoDB "
        f"DEFAULT CHARSET=utf8mb4 COLLATE={COLLATION}"
    )


def _read_live(pool: MySQLPool) -> _LiveDatabase:
    with pool.connection() as conn:
        where = conn.query(
            "SELECT @@hostname, @@datadir, @@port, DATABASE(), @@lower_case_table_names"
        )[0]
        location = tuple(str(part) for part in where[:4])
        fold = int(where[4]) != 0

        def key(table: object) -> str:
            return str(table).lower() if fold else str(table)

        tables = {
            key(r[0]): (str(r[0]), str(r[1]) if r[1] is not None else None)
            for r in conn.query(
                "SELECT TABLE_NAME, TABLE_COLLATION FROM information_schema.TABLES "
                "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_TYPE = 'BASE TABLE'"
            )
        }
        columns: dict[str, list[_LiveColumn]] = {}
        for r in conn.query(
            "SELECT TABLE_NAME, COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, COLUMN_DEFAULT, "
            "EXTRA, COLLATION_NAME FROM information_schema.COLUMNS "
            "WHERE TABLE_SCHEMA = DATABASE() ORDER BY TABLE_NAME, ORDINAL_POSITION"
        ):
            columns.setdefault(key(r[0]), []).append(
                _LiveColumn(
                    name=str(r[1]),
                    type=normalize_type(str(r[2])),
                    raw_type=str(r[2]),
                    nullable=r[3] == "YES",
                    # A NOT NULL column without a default shows NULL on both
                    # servers; MariaDB's 'NULL' string only appears on nullable ones.
                    has_default=r[4] is not None,
                    extra=str(r[5] or "").lower(),
                    collation=str(r[6]) if r[6] is not None else None,
                )
            )
        parts: dict[str, dict[str, tuple[bool, list[str]]]] = {}
        for r in conn.query(
            "SELECT TABLE_NAME, INDEX_NAME, NON_UNIQUE, COLUMN_NAME "
            "FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() "
            "ORDER BY TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX"
        ):
            table_indexes = parts.setdefault(key(r[0]), {})
            _, cols = table_indexes.setdefault(str(r[1]), (int(r[2]) == 0, []))
            cols.append(str(r[3]))
    indexes = {
        table: {
            name: Index(name, unique, tuple(cols))
            for name, (unique, cols) in found.items()
        }
        for table, found in parts.items()
    }
    return _LiveDatabase(location, fold, tables, columns, indexes)


def _family(sql_type: str) -> tuple[str, tuple[int, ...], bool]:
    """Split a type into (family, numbers, unsigned) for the widening check."""
    unsigned = sql_type.endswith(" unsigned")
    base = sql_type.removesuffix(" unsigned")
    name, _, rest = base.partition("(")
    numbers = (
        tuple(int(n) for n in re.findall(r"\d+", rest))
        if rest and not name.startswith("enum")
        else ()
    )
    return name, numbers, unsigned


def _int_range(family: str, unsigned: bool) -> tuple[int, int]:
    bits = _INT_BITS[family]
    if unsigned:
        return 0, 2**bits - 1
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def _is_widening(live: _LiveColumn, column: Column) -> bool:
    """Whether changing ``live`` into ``column`` keeps every value a row can hold."""
    if live.nullable and not column.nullable:
        return False
    if live.type == column.sql_type:
        return True
    old, old_n, old_u = _family(live.type)
    new, new_n, new_u = _family(column.sql_type)
    if old in _INT_BITS and new in _INT_BITS:
        low, high = _int_range(old, old_u)
        new_low, new_high = _int_range(new, new_u)
        return new_low <= low and high <= new_high
    if old == new and old in ("varchar", "varbinary"):
        return new_n >= old_n
    if old in ("varchar", "mediumtext") and new == "mediumtext":
        return True
    if old in ("varbinary", "mediumblob") and new == "mediumblob":
        return True
    if old == new == "decimal" and len(old_n) == len(new_n) == 2:
        (precision, scale), (new_precision, new_scale) = old_n, new_n
        return (
            (new_u == old_u or not new_u)
            and new_scale >= scale
            and new_precision - new_scale >= precision - scale
        )
    if old == new == "enum":
        # Members may only be appended: the stored value is the member's position.
        return column.sql_type.startswith(live.type[:-1] + ",")
    return False


def _relax(live: _LiveColumn) -> str | None:
    """Make a column no entity writes nullable, so INSERTs that omit it still work."""
    if live.nullable or live.has_default or "auto_increment" in live.extra:
        return None
    if "generated" in live.extra:
        return None
    collate = f" COLLATE {live.collation}" if live.collation else ""
    return f"MODIFY COLUMN `{live.name}` {live.raw_type}{collate} NULL"


def _table_alters(
    schema: EntitySchema,
    live_columns: list[_LiveColumn],
    live_indexes: dict[str, Index],
    collation: str | None,
) -> list[Alter]:
    """Return at most two ALTERs: one safe, one destructive (run only when asked).

    Index changes come first in the safe statement's DROP part and last in its ADD
    part; an index over a column whose change is destructive is replaced in the
    destructive statement, after that change.
    """
    drop_indexes: list[str] = []
    safe: list[str] = []
    destructive: list[str] = []
    by_name = {c.name.lower(): c for c in live_columns}
    risky: set[str] = set()
    previous: str | None = None
    for column in schema.columns:
        position = f" AFTER `{previous}`" if previous else " FIRST"
        live = by_name.get(column.name.lower())
        if live is None:
            safe.append(f"ADD COLUMN {column.definition}{position}")
        else:
            collation_ok = live.collation in (
                None,
                COLLATION,
            ) or not column.sql_type.startswith(_COLLATED)
            auto_ok = ("auto_increment" in live.extra) == column.definition.endswith(
                "AUTO_INCREMENT"
            )
            if (
                live.type != column.sql_type
                or live.nullable != column.nullable
                or live.name != column.name
                or not collation_ok
                or not auto_ok
            ):
                statement = (
                    f"MODIFY COLUMN {column.definition}"
                    if live.name == column.name
                    else f"CHANGE COLUMN `{live.name}` {column.definition}"
                )
                if _is_widening(live, column):
                    safe.append(statement)
                else:
                    destructive.append(statement)
                    risky.add(column.name)
        previous = column.name
    wanted = {c.name.lower() for c in schema.columns}
    for live in live_columns:
        if live.name.lower() not in wanted:
            relaxed = _relax(live)
            if relaxed is not None:
                safe.append(relaxed)
            destructive.append(f"DROP COLUMN `{live.name}`")

    live_primary = live_indexes.get("PRIMARY")
    if live_primary != _PRIMARY:
        key = "PRIMARY KEY (`id`)"
        safe.append(f"DROP PRIMARY KEY, ADD {key}" if live_primary else f"ADD {key}")
    desired = {i.name: i for i in schema.indexes}
    add_indexes: list[str] = []
    late_indexes: list[str] = []
    for name, index in live_indexes.items():
        if name == "PRIMARY" or desired.get(name) == index:
            continue
        replacement = desired.get(name)
        if replacement is not None and risky.intersection(replacement.columns):
            late_indexes.append(f"DROP INDEX `{name}`")
        else:
            drop_indexes.append(f"DROP INDEX `{name}`")
    for name, index in desired.items():
        if live_indexes.get(name) != index:
            target = late_indexes if risky.intersection(index.columns) else add_indexes
            target.append(f"ADD {_index_sql(index)}")
    safe = drop_indexes + safe + add_indexes
    destructive += late_indexes
    if collation is not None and collation != COLLATION:
        safe.append(f"DEFAULT CHARSET=utf8mb4 COLLATE={COLLATION}")
    alters = []
    head = f"ALTER TABLE {schema.quoted_table} "
    if safe:
        alters.append(Alter(head + ", ".join(safe), schema.mysql_pool, schema.table))
    if destructive:
        alters.append(
            Alter(head + ", ".join(destructive), schema.mysql_pool, schema.table, True)
        )
    return alters


def get_alters(
    pools: dict[str, MySQLPool],
    schemas: Iterable[EntitySchema],
    outbox: bool,
    drop_unknown_tables: bool = False,
) -> list[Alter]:
    """Return the statements that make every pool's tables match the entities.

    Per pool, in order: CREATE or ALTER of each entity table (by table name), the
    outbox table, then, only with ``drop_unknown_tables``, DROP TABLE of tables no
    entity uses (marked ``unknown_table``): a registry that lists only some
    entities must never drop the others' tables by accident. Destructive
    statements (DROP TABLE, DROP COLUMN, a change that can lose values) are
    marked. Pools that
    share a database are read separately but share its tables: a table of one is
    never dropped for the other, and the outbox table is created once. The outbox
    table is never dropped; an outbox table of an older release gets the columns
    it lacks (and its times converted to UTC, see ``outbox.upgrade_statements``).
    """
    by_pool: dict[str, list[EntitySchema]] = {}
    for schema in schemas:
        by_pool.setdefault(schema.mysql_pool, []).append(schema)
    lives = {name: _read_live(pools[name]) for name in by_pool}
    known: dict[tuple[str, ...], set[str]] = {}
    for name, live in lives.items():
        used = known.setdefault(live.location, {live.key(OUTBOX_TABLE)})
        used.update(live.key(s.table) for s in by_pool[name])
    done: set[tuple[str, ...]] = set()
    alters: list[Alter] = []
    for pool_name, pool_schemas in by_pool.items():
        live = lives[pool_name]
        for schema in sorted(pool_schemas, key=lambda s: s.table):
            found = live.tables.get(live.key(schema.table))
            if found is None:
                alters.append(Alter(create_table_sql(schema), pool_name, schema.table))
                continue
            alters.extend(
                _table_alters(
                    schema,
                    live.columns.get(live.key(schema.table), []),
                    live.indexes.get(live.key(schema.table), {}),
                    found[1],
                )
            )
        if live.location in done:
            continue
        done.add(live.location)
        if outbox and live.key(OUTBOX_TABLE) not in live.tables:
            alters.append(Alter(OUTBOX_CREATE_SQL, pool_name, OUTBOX_TABLE))
        elif outbox:
            have = live.columns.get(live.key(OUTBOX_TABLE), [])
            alters.extend(
                Alter(sql, pool_name, OUTBOX_TABLE)
                for sql in upgrade_statements(c.name for c in have)
            )
        if not drop_unknown_tables:
            continue
        for key, (table, _) in sorted(live.tables.items()):
            if key not in known[live.location]:
                quoted = table.replace("`", "``")
                alters.append(
                    Alter(f"DROP TABLE `{quoted}`", pool_name, table, True, True)
                )
    return alters


def run_alters(pools: dict[str, MySQLPool], alters: Sequence[Alter]) -> list[Alter]:
    """Run ``alters`` in order, each on its pool; return them.

    Raises:
        DatabaseError: a statement failed; the ones before it stay applied (MySQL
            commits DDL at once).
    """
    for alter in alters:
        with pools[alter.pool].connection() as conn:
            conn.execute(alter.sql)
    return list(alters)
