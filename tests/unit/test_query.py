"""Search conditions and paging (query.py): Where, Pager and render_search."""

import datetime
import enum
from decimal import Decimal
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymysql.converters import escape_item

import fluxaorm
from fluxaorm.query import render_search
from tests.models import Color, Level

HEAD = "SELECT `id` FROM `t`"


def escape(value: Any) -> str:
    """Escape a parameter as pymysql's Connection.escape does (sequences in parentheses)."""
    if type(value) in (tuple, list, set, frozenset):
        return "(" + ",".join(escape(v) for v in value) + ")"
    return str(escape_item(value, "utf8mb4"))


def final_sql(sql: str, params: tuple[Any, ...]) -> str:
    """The statement as pymysql sends it: %s replaced by escaped parameters."""
    return sql % tuple(escape(p) for p in params)


def rendered(
    where: fluxaorm.Where | None, pager: fluxaorm.Pager | None = None, alive: str = ""
) -> str:
    return final_sql(*render_search(HEAD, alive, where, pager))


# -- Where --------------------------------------------------------------------------------------


def test_where_holds_sql_and_params() -> None:
    """Where keeps the SQL as written and its parameters as a tuple."""
    where = fluxaorm.Where("`name` = ? AND `age` > ?", "Tom", 18)
    assert where.sql == "`name` = ? AND `age` > ?"
    assert where.params == ("Tom", 18)
    assert rendered(where) == f"{HEAD} WHERE (`name` = 'Tom' AND `age` > 18)"


def test_where_default_matches_everything() -> None:
    """Where() is the condition 1, with no parameters."""
    assert fluxaorm.Where().sql == "1"
    assert fluxaorm.Where().params == ()


@pytest.mark.parametrize("sql", ["", "   ", None, 5])
def test_where_needs_sql(sql: Any) -> None:
    """An empty or non-text condition is a ConfigurationError."""
    with pytest.raises(
        fluxaorm.ConfigurationError, match="Where needs an SQL condition"
    ):
        fluxaorm.Where(sql)


@pytest.mark.parametrize(
    ("sql", "params", "fragment"),
    [
        ("`a` = ?", (), "has 1 ? placeholders but 0 parameters"),
        ("`a` = ? AND `b` = ?", (1,), "has 2 ? placeholders but 1 parameters"),
        ("`a` = 1", (1,), "has 0 ? placeholders but 1 parameters"),
        ("`a` = '?'", (1,), "has 0 ? placeholders"),
    ],
)
def test_parameter_count_mismatch(
    sql: str, params: tuple[Any, ...], fragment: str
) -> None:
    """A ? count that does not match the parameters is a ConfigurationError quoting the SQL."""
    with pytest.raises(fluxaorm.ConfigurationError) as info:
        fluxaorm.Where(sql, *params)
    assert fragment in str(info.value)
    assert repr(sql) in str(info.value)


def test_question_marks_in_quotes_are_not_placeholders() -> None:
    """A ? inside quotes or backticks is text, both when counted and when rendered."""
    where = fluxaorm.Where("`what?` = '?' AND `b` = \"?\" AND `c` = ?", 5)
    assert (
        rendered(where) == f"{HEAD} WHERE (`what?` = '?' AND `b` = \"?\" AND `c` = 5)"
    )


def test_escaped_quotes_inside_strings() -> None:
    """Escaped quotes ('' and \\') keep the string open: the ? inside stays text."""
    where = fluxaorm.Where("`a` = 'it''s ?' AND `b` = 'x\\'?' AND `c` = ?", 1)
    assert rendered(where).endswith("AND `c` = 1)")
    assert "'it''s ?'" in rendered(where)


@pytest.mark.parametrize("values", [[1, 2, 3], (1, 2, 3), range(1, 4)])
def test_sequence_expands_to_a_list(values: Any) -> None:
    """A list, tuple or range parameter expands to a parenthesised list."""
    where = fluxaorm.Where("`id` IN ?", values)
    assert where.params == ((1, 2, 3),)
    assert rendered(where) == f"{HEAD} WHERE (`id` IN (1,2,3))"


def test_set_expands_to_a_list() -> None:
    """A set parameter expands to a parenthesised list too."""
    where = fluxaorm.Where("`id` IN ?", {7})
    assert rendered(where) == f"{HEAD} WHERE (`id` IN (7))"


def test_strings_in_a_list_are_escaped() -> None:
    """Each member of a list parameter is escaped on its own."""
    where = fluxaorm.Where("`name` IN ?", ["a", "it's"])
    assert rendered(where) == f"{HEAD} WHERE (`name` IN ('a','it\\'s'))"


@pytest.mark.parametrize("empty", [[], (), set(), range(0)])
def test_empty_list_is_rejected(empty: Any) -> None:
    """An empty list parameter is a ConfigurationError (IN () is not valid SQL)."""
    with pytest.raises(
        fluxaorm.ConfigurationError, match="parameter 1 is an empty list"
    ):
        fluxaorm.Where("`id` IN ?", empty)


def test_enum_params_are_sent_as_values() -> None:
    """Enum members, alone or in lists, are sent as their values."""
    where = fluxaorm.Where(
        "`color` = ? AND `level` IN ?", Color.GREEN, [Level.LOW, Level.HIGH]
    )
    assert where.params == ("green", (1, 2))
    assert type(where.params[1][0]) is int
    assert rendered(where) == f"{HEAD} WHERE (`color` = 'green' AND `level` IN (1,2))"


def test_other_values_pass_through() -> None:
    """Strings, numbers, decimals, datetimes, bytes and None are left to the driver."""
    at = datetime.datetime(2024, 1, 2, 3, 4, 5)
    params = ("x", 1, 1.5, Decimal("2.50"), at, b"\x00", None)
    where = fluxaorm.Where("? ? ? ? ? ? ?", *params)
    assert where.params == params


def test_percent_is_literal() -> None:
    """A % in the condition is kept as text, with or without parameters."""
    assert (
        rendered(fluxaorm.Where("`name` LIKE 'a%'"))
        == f"{HEAD} WHERE (`name` LIKE 'a%')"
    )
    assert rendered(fluxaorm.Where("`name` LIKE ?", "b%")) == (
        f"{HEAD} WHERE (`name` LIKE 'b%')"
    )
    assert rendered(fluxaorm.Where("`a` % 2 = ? AND `b` LIKE '%?%'", 1)) == (
        f"{HEAD} WHERE (`a` % 2 = 1 AND `b` LIKE '%?%')"
    )


def test_where_is_a_frozen_value() -> None:
    """Where is immutable, comparable and hashable."""
    where = fluxaorm.Where("`id` IN ?", [1, 2])
    assert where == fluxaorm.Where("`id` IN ?", (1, 2))
    assert hash(where) == hash(fluxaorm.Where("`id` IN ?", [1, 2]))
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        where.sql = "1"  # type: ignore[misc]


# -- ORDER BY / GROUP BY / LIMIT ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "condition", "tail"),
    [
        ("`age` > ?", "`age` > ?", ""),
        ("`age` > ? ORDER BY `name`", "`age` > ?", " ORDER BY `name`"),
        (
            "`age` > ? order   by `name` DESC LIMIT 5",
            "`age` > ?",
            " order   by `name` DESC LIMIT 5",
        ),
        ("`age` > ? LIMIT 5", "`age` > ?", " LIMIT 5"),
        ("1 GROUP BY `city`", "1", " GROUP BY `city`"),
        ("ORDER BY `id` DESC", "1", " ORDER BY `id` DESC"),
        ("`note` = 'ORDER BY x'", "`note` = 'ORDER BY x'", ""),
        ('`note` = "LIMIT 1" ORDER BY `id`', '`note` = "LIMIT 1"', " ORDER BY `id`"),
        ("`limit` = ?", "`limit` = ?", ""),
        ("`order by` = ?", "`order by` = ?", ""),
        ("`ordered_by` = ?", "`ordered_by` = ?", ""),
        (
            "`id` IN (SELECT `id` FROM `u` ORDER BY `id` LIMIT 5)",
            "`id` IN (SELECT `id` FROM `u` ORDER BY `id` LIMIT 5)",
            "",
        ),
        (
            "`id` IN (SELECT `id` FROM `u` LIMIT 5) ORDER BY `id`",
            "`id` IN (SELECT `id` FROM `u` LIMIT 5)",
            " ORDER BY `id`",
        ),
    ],
)
def test_split(sql: str, condition: str, tail: str) -> None:
    """split() cuts at the first ORDER BY/GROUP BY/LIMIT outside quotes and parentheses."""
    params = (1,) * sql.count("?")
    assert fluxaorm.Where(sql, *params).split() == (condition, tail)


def test_order_by_renders_after_the_filters() -> None:
    """ORDER BY stays after the WHERE clause, the fake-delete filter and before the page."""
    where = fluxaorm.Where("`age` > ? ORDER BY `name`", 18)
    assert rendered(where, fluxaorm.Pager(2, 10), alive="`fake_delete` = 0") == (
        f"{HEAD} WHERE `fake_delete` = 0 AND (`age` > 18) ORDER BY `name` LIMIT 10,10"
    )


def test_placeholders_in_the_tail() -> None:
    """? placeholders after ORDER BY get their parameters in order."""
    where = fluxaorm.Where("`a` = ? ORDER BY FIELD(`id`, ?, ?)", 1, 3, 2)
    assert rendered(where) == f"{HEAD} WHERE (`a` = 1) ORDER BY FIELD(`id`, 3, 2)"


def test_and() -> None:
    """and_() joins two conditions, keeping the first one's ORDER BY last."""
    where = fluxaorm.Where("`a` = ? ORDER BY `a`", 1).and_("`b` IN ?", [2, 3])
    assert where.sql == "(`a` = ?) AND (`b` IN ?) ORDER BY `a`"
    assert where.params == (1, (2, 3))
    assert (
        rendered(where) == f"{HEAD} WHERE ((`a` = 1) AND (`b` IN (2,3))) ORDER BY `a`"
    )


def test_and_with_placeholders_in_the_tail() -> None:
    """and_() keeps the parameters of an ORDER BY tail after the new condition's."""
    where = fluxaorm.Where("`a` = ? ORDER BY FIELD(`id`, ?)", 1, 9).and_("`b` = ?", 2)
    assert where.params == (1, 2, 9)
    assert rendered(where) == (
        f"{HEAD} WHERE ((`a` = 1) AND (`b` = 2)) ORDER BY FIELD(`id`, 9)"
    )


def test_and_converts_and_checks_parameters() -> None:
    """and_() converts enums and checks the placeholder count of the added condition."""
    where = fluxaorm.Where().and_("`color` = ?", Color.RED)
    assert where.params == ("red",)
    with pytest.raises(fluxaorm.ConfigurationError, match="placeholders"):
        fluxaorm.Where().and_("`b` = ?")


def test_condition_drops_the_tail() -> None:
    """condition() is the condition without ORDER BY/LIMIT and their parameters (for COUNT)."""
    where = fluxaorm.Where("`a` = ? ORDER BY FIELD(`id`, ?) LIMIT 3", 1, 9)
    assert where.condition() == fluxaorm.Where("`a` = ?", 1)
    plain = fluxaorm.Where("`a` = ?", 1)
    assert plain.condition() is plain


# -- Pager --------------------------------------------------------------------------------------------


def test_pager_defaults_and_offset() -> None:
    """Pager(page, size) skips (page-1)*size rows; the default is the first 100."""
    assert (fluxaorm.Pager().page, fluxaorm.Pager().page_size) == (1, 100)
    assert fluxaorm.Pager().offset == 0
    assert fluxaorm.Pager(3, 20).offset == 40
    assert fluxaorm.Pager(1, 1).offset == 0


@pytest.mark.parametrize(
    ("page", "size", "fragment"),
    [
        (0, 10, "page must be 1 or more, not 0"),
        (-1, 10, "page must be 1 or more"),
        ("1", 10, "page must be 1 or more, not '1'"),
        (1.5, 10, "page must be 1 or more"),
        (True, 10, "page must be 1 or more, not True"),
        (1, 0, "page_size must be 1 or more, not 0"),
        (1, None, "page_size must be 1 or more"),
        (1, False, "page_size must be 1 or more"),
    ],
)
def test_pager_validation(page: Any, size: Any, fragment: str) -> None:
    """A page or page size below 1 or not an int is a ConfigurationError."""
    with pytest.raises(fluxaorm.ConfigurationError) as info:
        fluxaorm.Pager(page, size)
    assert fragment in str(info.value)


@given(st.integers(1, 10**6), st.integers(1, 10**4))
def test_pager_offset_property(page: int, size: int) -> None:
    """The offset is always the number of rows on the earlier pages."""
    pager = fluxaorm.Pager(page, size)
    assert pager.offset == (page - 1) * size
    sql, _ = render_search(HEAD, "", None, pager)
    assert sql == f"{HEAD} LIMIT {pager.offset},{size}"


# -- render_search -------------------------------------------------------------------------------------


def test_render_search_variants() -> None:
    """render_search adds the fake-delete filter, the condition and the page as needed."""
    assert render_search(HEAD, "", None, None) == (HEAD, ())
    assert render_search(HEAD, "`fake_delete` = 0", None, None) == (
        f"{HEAD} WHERE `fake_delete` = 0",
        (),
    )
    assert render_search(HEAD, "", None, fluxaorm.Pager(1, 5)) == (
        f"{HEAD} LIMIT 0,5",
        (),
    )
    assert render_search(
        HEAD, "`fake_delete` = 0", fluxaorm.Where("`a` = ?", 1), fluxaorm.Pager(2, 5)
    ) == (
        f"{HEAD} WHERE `fake_delete` = 0 AND (`a` = %s) LIMIT 5,5",
        (1,),
    )


def test_limit_and_pager_together_are_rejected() -> None:
    """A Where ending in LIMIT can't be paged too: that would be two LIMIT clauses."""
    where = fluxaorm.Where("`a` = ? ORDER BY `a` LIMIT 5", 1)
    with pytest.raises(fluxaorm.ConfigurationError, match="has its own LIMIT"):
        render_search(HEAD, "", where, fluxaorm.Pager(1, 10))
    assert render_search(HEAD, "", where, None)[0].endswith("ORDER BY `a` LIMIT 5")
    quoted = fluxaorm.Where("`a` = ? ORDER BY `limit`", 1)
    assert render_search(HEAD, "", quoted, fluxaorm.Pager(1, 10))[0].endswith(
        "ORDER BY `limit` LIMIT 0,10"
    )


def test_render_search_with_an_or_condition() -> None:
    """The condition is parenthesised, so an OR can't escape the fake-delete filter."""
    sql, _ = render_search(
        HEAD, "`fake_delete` = 0", fluxaorm.Where("`a` = 1 OR `b` = 2"), None
    )
    assert sql == f"{HEAD} WHERE `fake_delete` = 0 AND (`a` = 1 OR `b` = 2)"


class Mood(enum.Enum):
    HAPPY = "happy"


@given(st.lists(st.one_of(st.integers(), st.text(), st.sampled_from(Mood)), max_size=5))
def test_any_parameters_render(values: list[Any]) -> None:
    """Any mix of parameters renders: one %s per ?, one parameter per %s."""
    sql = " AND ".join("`c` = ?" for _ in values) or "1"
    where = fluxaorm.Where(sql, *values)
    statement, params = render_search(HEAD, "", where, None)
    assert statement.count("%s") == len(params) == len(values)
    final_sql(statement, params)
