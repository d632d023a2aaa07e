"""Schema sync: compare live tables with the entities and render CREATE/ALTER/DROP.

``Engine.get_alters()`` and ``Engine.sync_schema()`` call :func:`get_alters`. The
live side is read from ``information_schema`` (three queries per MySQL pool); the
desired side comes from each :class:`~fluxaorm.schema.EntitySchema`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import attrs

from .db import MySQLPool
from .fields import COLLATION, Column
from .outbox import CREATE_SQL as OUTBOX_CREATE_SQL
from .outbox import OUTBOX_TABLE
from .schema import EntitySchema, Index

__all__ = ["Alter", "create_table_sql", "get_alters"]

_INT_WIDTH_RE = re.compile(r"^(tinyint|smallint|mediumint|int|bigint)\(\d+\)")
_INT_ORDER = ["tinyint", "smallint", "mediumint", "int", "bigint"]


@attrs.frozen
class Alter:
    """One statement that brings a table in line with its entity.

    Attributes:
        sql: the statement.
        pool: the MySQL pool it runs on.
        table: the table it changes.
        destructive: whether it can lose data (dropping a table or a column, or
            narrowing a column); ``sync_schema()`` runs those only when asked.
    """

    sql: str
    pool: str
    table: str
    destructive: bool = False

    def __str__(self) -> str:
        return self.sql


@attrs.frozen
class _LiveColumn:
    name: str
    type: str
    nullable: bool
    extra: str
    collation: str | None


def normalize_type(column_type: str) -> str:
    """Drop integer display widths (except ``tinyint(1)``) so MySQL and MariaDB agree."""
    text = column_type.lower().strip()
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


def _read_live(
    pool: MySQLPool,
) -> tuple[
    dict[str, str | None], dict[str, list[_LiveColumn]], dict[str, dict[str, Index]]
]:
    with pool.connection() as conn:
        tables = {
            str(r[0]): (str(r[1]) if r[1] is not None else None)
            for r in conn.query(
                "SELECT TABLE_NAME, TABLE_COLLATION FROM information_schema.TABLES "
                "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_TYPE = 'BASE TABLE'"
            )
        }
        columns: dict[str, list[_LiveColumn]] = {}
        for r in conn.query(
            "SELECT TABLE_NAME, COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, EXTRA, COLLATION_NAME "
            "FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
            "ORDER BY TABLE_NAME, ORDINAL_POSITION"
        ):
            columns.setdefault(str(r[0]), []).append(
                _LiveColumn(
                    str(r[1]),
                    normalize_type(str(r[2])),
                    r[3] == "YES",
                    str(r[4] or "").lower(),
                    r[5],
                )
            )
        parts: dict[str, dict[str, tuple[bool, list[str]]]] = {}
        for r in conn.query(
            "SELECT TABLE_NAME, INDEX_NAME, NON_UNIQUE, COLUMN_NAME FROM information_schema.STATISTICS "
            "WHERE TABLE_SCHEMA = DATABASE() ORDER BY TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX"
        ):
            table_indexes = parts.setdefault(str(r[0]), {})
            _, cols = table_indexes.setdefault(str(r[1]), (int(r[2]) == 0, []))
            cols.append(str(r[3]))
    indexes = {
        table: {
            name: Index(name, unique, tuple(cols))
            for name, (unique, cols) in found.items()
        }
        for table, found in parts.items()
    }
    return tables, columns, indexes


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


def _is_widening(live: _LiveColumn, column: Column) -> bool:
    if live.nullable and not column.nullable:
        return False
    if live.type == column.sql_type:
        return True
    old, old_n, old_u = _family(live.type)
    new, new_n, new_u = _family(column.sql_type)
    if old in _INT_ORDER and new in _INT_ORDER and old != "tinyint(1)":
        return old_u == new_u and _INT_ORDER.index(new) >= _INT_ORDER.index(old)
    if old == new and old in ("varchar", "varbinary"):
        return new_n >= old_n
    if old == "varchar" and new == "mediumtext":
        return True
    if old == "varbinary" and new == "mediumblob":
        return True
    if old == new == "decimal":
        return new_n[1] == old_n[1] and new_n[0] >= old_n[0]
    if old == new == "enum":
        return column.sql_type.startswith(live.type[:-1])
    return False


def _table_alters(
    schema: EntitySchema,
    live_columns: list[_LiveColumn],
    live_indexes: dict[str, Index],
    collation: str | None,
) -> list[Alter]:
    safe: list[str] = []
    destructive: list[str] = []
    by_name = {c.name: c for c in live_columns}
    previous: str | None = None
    for column in schema.columns:
        position = f" AFTER `{previous}`" if previous else " FIRST"
        live = by_name.get(column.name)
        if live is None:
            safe.append(f"ADD COLUMN {column.definition}{position}")
        else:
            collation_ok = live.collation in (
                None,
                COLLATION,
            ) or not column.sql_type.startswith(("varchar", "mediumtext", "enum"))
            auto_ok = ("auto_increment" in live.extra) == column.definition.endswith(
                "AUTO_INCREMENT"
            )
            if (
                live.type != column.sql_type
                or live.nullable != column.nullable
                or not collation_ok
                or not auto_ok
            ):
                statement = f"MODIFY COLUMN {column.definition}"
                (safe if _is_widening(live, column) else destructive).append(statement)
        previous = column.name
    wanted = {c.name for c in schema.columns}
    for live in live_columns:
        if live.name not in wanted:
            destructive.append(f"DROP COLUMN `{live.name}`")
    desired = {i.name: i for i in schema.indexes}
    for name, index in live_indexes.items():
        if name == "PRIMARY":
            continue
        if desired.get(name) != index:
            safe.insert(0, f"DROP INDEX `{name}`")
    for name, index in desired.items():
        if live_indexes.get(name) != index:
            safe.append(f"ADD {_index_sql(index)}")
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
    pools: dict[str, MySQLPool], schemas: Iterable[EntitySchema], outbox: bool
) -> list[Alter]:
    """Return the statements that make every pool's tables match the entities.

    Destructive statements (DROP TABLE, DROP COLUMN, narrowing MODIFY) are marked;
    tables of the database that no entity uses are dropped only by those.
    """
    by_pool: dict[str, list[EntitySchema]] = {}
    for schema in schemas:
        by_pool.setdefault(schema.mysql_pool, []).append(schema)
    alters: list[Alter] = []
    for pool_name, pool_schemas in by_pool.items():
        tables, columns, indexes = _read_live(pools[pool_name])
        for schema in sorted(pool_schemas, key=lambda s: s.table):
            if schema.table not in tables:
                alters.append(Alter(create_table_sql(schema), pool_name, schema.table))
                continue
            alters.extend(
                _table_alters(
                    schema,
                    columns.get(schema.table, []),
                    indexes.get(schema.table, {}),
                    tables[schema.table],
                )
            )
        if outbox and OUTBOX_TABLE not in tables:
            alters.append(Alter(OUTBOX_CREATE_SQL, pool_name, OUTBOX_TABLE))
        known = {s.table for s in pool_schemas} | {OUTBOX_TABLE}
        for table in sorted(tables):
            if table not in known:
                quoted = table.replace("`", "``")
                alters.append(Alter(f"DROP TABLE `{quoted}`", pool_name, table, True))
    return alters


def run_alters(pools: dict[str, MySQLPool], alters: Sequence[Alter]) -> list[Alter]:
    """Run ``alters`` in order; return them."""
    for alter in alters:
        with pools[alter.pool].connection() as conn:
            conn.execute(alter.sql)
    return list(alters)
