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
from .sql import where_to_format

__all__ = ["Pager", "Where", "render_search"]

_ORDER_RE = re.compile(r"\b(ORDER\s+BY|GROUP\s+BY|LIMIT)\b", re.IGNORECASE)
_QUOTED_RE = re.compile(r"'(?:[^'\\]|\\.|'')*'|\"(?:[^\"\\]|\\.|\"\")*\"|`[^`]*`", re.S)


def _param(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, set, frozenset, range)):
        return tuple(_param(v) for v in value)
    if isinstance(value, tuple):
        return tuple(_param(v) for v in value)
    return value


@attrs.frozen(init=False)
class Where:
    """An SQL condition with ``?`` placeholders, e.g. ``Where("`age` > ?", 18)``.

    The condition may end with ``ORDER BY ...``. A list or tuple parameter expands to
    a parenthesised list (``Where("`id` IN ?", [1, 2])``). Enum members are sent as
    their values. Write ``%`` as is: only ``?`` is a placeholder.
    """

    sql: str
    params: tuple[Any, ...]

    def __init__(self, sql: str = "1", *params: Any):
        if not isinstance(sql, str) or not sql.strip():
            raise ConfigurationError(
                "Where needs an SQL condition such as Where('`id` > ?', 0)"
            )
        placeholders = _QUOTED_RE.sub("", sql).count("?")
        if placeholders != len(params):
            raise ConfigurationError(
                f"Where({sql!r}) has {placeholders} ? placeholders but {len(params)} parameters"
            )
        object.__setattr__(self, "sql", sql)
        object.__setattr__(self, "params", tuple(_param(p) for p in params))

    def and_(self, sql: str, *params: Any) -> Where:
        """Return a new condition: this one AND ``sql``."""
        cond, tail = self.split()
        return Where(f"({cond}) AND ({sql}){tail}", *self.params, *params)

    def split(self) -> tuple[str, str]:
        """Return ``(condition, tail)`` where ``tail`` starts at ORDER BY/GROUP BY/LIMIT."""
        masked = _QUOTED_RE.sub(lambda m: " " * len(m.group()), self.sql)
        match = _ORDER_RE.search(masked)
        if match is None:
            return self.sql, ""
        cond = self.sql[: match.start()].strip() or "1"
        return cond, " " + self.sql[match.start() :].strip()


@attrs.frozen
class Pager:
    """A page of results: ``Pager(1, 100)`` is the first 100 rows."""

    page: int = 1
    page_size: int = 100

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.page, int) or self.page < 1:
            raise ConfigurationError(f"Pager page must be 1 or more, not {self.page!r}")
        if not isinstance(self.page_size, int) or self.page_size < 1:
            raise ConfigurationError(
                f"Pager page_size must be 1 or more, not {self.page_size!r}"
            )

    @property
    def offset(self) -> int:
        """Rows skipped before this page."""
        return (self.page - 1) * self.page_size


def render_search(
    head: str, alive: str, where: Where | None, pager: Pager | None
) -> tuple[str, tuple[Any, ...]]:
    """Render ``head WHERE ...`` with the fake-delete filter and paging.

    Returns:
        The statement in pymysql format (``%s`` placeholders) and its parameters.
    """
    conditions = [alive] if alive else []
    tail = ""
    params: tuple[Any, ...] = ()
    if where is not None:
        cond, tail = where.split()
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
