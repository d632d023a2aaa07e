"""Search conditions and paging: :class:`Where` and :class:`Pager`.

Users build these; ``orm.py`` turns them into SELECT statements with
:func:`render_search`. Values always travel as driver parameters, never as text.
"""

from __future__ import annotations

import enum
import re
from typing import Any

import attrs

from .errors import ConfigurationError
from .sql import QUOTED_RE, where_to_format

__all__ = ["Pager", "Where", "render_search"]

_LIMIT_RE = re.compile(r"\bLIMIT\b", re.IGNORECASE)
_TAIL_RE = re.compile(r"\b(ORDER\s+BY|GROUP\s+BY|LIMIT)\b|[()]", re.IGNORECASE)


def _masked(sql: str) -> str:
    """Return ``sql`` with quoted strings and names blanked out, same length."""
    return QUOTED_RE.sub(lambda m: " " * len(m.group()), sql)


def _tail_start(sql: str) -> int:
    """Return where ORDER BY/GROUP BY/LIMIT starts outside parentheses, or -1."""
    depth = 0
    for match in _TAIL_RE.finditer(_masked(sql)):
        text = match.group()
        if text == "(":
            depth += 1
        elif text == ")":
            depth -= 1
        elif depth <= 0:
            return match.start()
    return -1


def _param(value: Any, position: int, sql: str) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple, set, frozenset, range)):
        if not value:
            raise ConfigurationError(
                f"Where({sql!r}): parameter {position} is an empty list, and "
                "`IN ()` is not valid SQL; skip the query when there is nothing to match"
            )
        return tuple(_param(v, position, sql) for v in value)
    return value


@attrs.frozen(init=False)
class Where:
    """An SQL condition with ``?`` placeholders, e.g. ``Where("`age` > ?", 18)``.

    The condition may end with ``ORDER BY ...``. A list or tuple parameter expands to
    a parenthesised list (``Where("`id` IN ?", [1, 2])``). Enum members are sent as
    their values. Write ``%`` as is: only ``?`` is a placeholder. The text may not
    contain ``;`` (not even in a quoted literal): pass such values as parameters.
    """

    sql: str
    params: tuple[Any, ...]

    def __init__(self, sql: str = "1", *params: Any):
        if not isinstance(sql, str) or not sql.strip():
            raise ConfigurationError(
                "Where needs an SQL condition such as Where('`id` > ?', 0)"
            )
        if ";" in sql:
            # Flushes send several statements per packet, so the connections
            # accept them: a condition must never be able to end its statement.
            raise ConfigurationError(
                f"Where({sql!r}): ';' is not allowed in a condition (it would end "
                "the statement); pass text that contains ';' as a ? parameter"
            )
        placeholders = _masked(sql).count("?")
        if placeholders != len(params):
            raise ConfigurationError(
                f"Where({sql!r}) has {placeholders} ? placeholders but {len(params)} parameters"
            )
        object.__setattr__(self, "sql", sql)
        object.__setattr__(
            self, "params", tuple(_param(p, i, sql) for i, p in enumerate(params, 1))
        )

    def and_(self, sql: str, *params: Any) -> Where:
        """Return a new condition: this one AND ``sql`` (this one's ORDER BY stays last).

        Raises:
            ConfigurationError: ``sql`` does not have one ``?`` per parameter.
        """
        added = Where(sql, *params)
        cond, tail = self.split()
        in_tail = _masked(tail).count("?")
        head_params = self.params[: len(self.params) - in_tail]
        tail_params = self.params[len(self.params) - in_tail :]
        return Where(
            f"({cond}) AND ({added.sql}){tail}",
            *head_params,
            *added.params,
            *tail_params,
        )

    def condition(self) -> Where:
        """Return this condition without its ORDER BY/GROUP BY/LIMIT tail (for COUNT)."""
        cond, tail = self.split()
        if not tail:
            return self
        in_tail = _masked(tail).count("?")
        return Where(cond, *self.params[: len(self.params) - in_tail])

    def split(self) -> tuple[str, str]:
        """Return ``(condition, tail)`` where ``tail`` starts at ORDER BY/GROUP BY/LIMIT.

        Only a clause outside parentheses and quotes starts the tail, so a
        subquery's own ``ORDER BY ... LIMIT`` stays in the condition.
        """
        start = _tail_start(self.sql)
        if start < 0:
            return self.sql, ""
        cond = self.sql[:start].strip() or "1"
        return cond, " " + self.sql[start:].strip()


@attrs.frozen
class Pager:
    """A page of results: ``Pager(1, 100)`` is the first 100 rows."""

    page: int = 1
    page_size: int = 100

    def __attrs_post_init__(self) -> None:
        if not _whole(self.page) or self.page < 1:
            raise ConfigurationError(f"Pager page must be 1 or more, not {self.page!r}")
        if not _whole(self.page_size) or self.page_size < 1:
            raise ConfigurationError(
                f"Pager page_size must be 1 or more, not {self.page_size!r}"
            )

    @property
    def offset(self) -> int:
        """Rows skipped before this page."""
        return (self.page - 1) * self.page_size


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def render_search(
    head: str, alive: str, where: Where | None, pager: Pager | None
) -> tuple[str, tuple[Any, ...]]:
    """Render ``head WHERE ...`` with the fake-delete filter and paging.

    Returns:
        The statement in pymysql format (``%s`` placeholders) and its parameters.

    Raises:
        ConfigurationError: ``where`` ends in its own LIMIT and ``pager`` is given.
    """
    conditions = [alive] if alive else []
    tail = ""
    params: tuple[Any, ...] = ()
    if where is not None:
        cond, tail = where.split()
        if pager is not None and _LIMIT_RE.search(_masked(tail)):
            raise ConfigurationError(
                f"Where({where.sql!r}) has its own LIMIT and a Pager was given too; "
                "use one of them"
            )
        conditions.append(f"({where_to_format(cond)})")
        tail = where_to_format(tail)
        params = where.params
    sql = head
    if conditions:
        sql += " WHERE " + " AND ".join(conditions)
    sql += tail
    if pager is not None:
        sql += f" LIMIT {pager.offset},{pager.page_size}"
    return sql, params
