"""Security without a server (docs/security.md): identifiers that are not plain are
refused at validate(), and a Where condition can never end its statement.

The tests against the servers (values, secrets, ACL users, TLS) are in
tests/test_security.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

import fluxaorm
from tests.servers import free_port


def _entity_with_table(table: str) -> type:
    @fluxaorm.entity(table=table)
    @dataclass
    class Named:
        id: int = 0

    return Named


def _entity_with_field(name: str) -> type:
    namespace: dict[str, Any] = {
        "__annotations__": {"id": int, name: str},
        "id": 0,
        name: "",
    }
    return dataclass(type("Fielded", (), namespace))


def _entity_with_option(key: str, value: str) -> type:
    @dataclass
    class Optioned:
        id: int = 0
        name: str = field(default="", metadata={"orm": {key: value}})

    return Optioned


BAD_NAMES = {
    "table-semicolon": (_entity_with_table, "users; DROP TABLE users; --"),
    "table-backtick": (_entity_with_table, "users`; DROP TABLE users; --"),
    "table-newline": (_entity_with_table, "users\n"),
    "table-space": (_entity_with_table, "us ers"),
    "table-quote": (_entity_with_table, "users'"),
    "table-empty": (_entity_with_table, ""),
    "table-too-long": (_entity_with_table, "t" * 65),
    "table-non-ascii": (_entity_with_table, "na\u00efve"),
    "table-digit-first": (_entity_with_table, "1users"),
    "field-non-ascii": (_entity_with_field, "na\u00efve"),
    "field-too-long": (_entity_with_field, "f" * 65),
    "unique-index": (lambda n: _entity_with_option("unique", n), "idx`; DROP x; --"),
    "index": (lambda n: _entity_with_option("index", n), "idx) ; DROP"),
    "stream": (lambda n: _entity_with_option("dirty", n), "Stream;DEL x"),
    "stream-nul": (lambda n: _entity_with_option("dirty", n), "Stream\x00"),
}


@pytest.mark.parametrize("case", list(BAD_NAMES.values()), ids=list(BAD_NAMES))
def test_identifiers_that_are_not_plain_are_a_schema_error(
    case: tuple[Callable[[str], type], str],
) -> None:
    """A table, field, index or stream name that is not a plain identifier is a
    SchemaError naming it at validate(), before any connection is opened."""
    build, name = case
    registry = fluxaorm.Registry()
    # Nobody listens there: validate() must refuse before trying to connect.
    registry.register_mysql(f"mysql://root@127.0.0.1:{free_port()}/test")
    registry.register_redis(f"redis://127.0.0.1:{free_port()}/0")
    registry.register_entity(build(name))
    with pytest.raises(fluxaorm.SchemaError) as caught:
        registry.validate()
    assert f"name {name!r} must be" in str(caught.value)


@pytest.mark.parametrize(
    "sql",
    [
        "`name` = 'x'; DROP TABLE victims",
        "`name` = ?; DELETE FROM users",
        "`name` = ';'",
    ],
)
def test_a_where_condition_can_never_end_its_statement(sql):
    """Connections accept several statements per packet (for flushes), so a Where
    holding ';' anywhere, even quoted, is refused before any SQL is sent."""
    params = ("x",) if "?" in sql else ()
    with pytest.raises(fluxaorm.ConfigurationError, match="';' is not allowed"):
        fluxaorm.Where(sql, *params)
