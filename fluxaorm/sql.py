"""Pure SQL rendering: identifier quoting, value literals and statement chunking.

Called by ``fields.py`` (literals), ``schema.py`` (quoted names), ``ddl.py``,
``query.py`` and ``flush.py``. Nothing here touches a connection. Literal escaping
follows MySQL's string syntax with backslash escapes, which every fluxaorm
connection guarantees by setting its own ``sql_mode`` (see ``db.py``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Sequence

from .errors import SchemaError

__all__ = [
    "ESCAPE_TABLE",
    "QUOTED_RE",
    "bytes_literal",
    "chunk_rows",
    "packet_budget",
    "quote",
    "row_budget",
    "string_literal",
    "where_to_format",
]

# The characters MySQL needs escaped inside a quoted string (same set as the C API's
# mysql_real_escape_string).
ESCAPE_TABLE: dict[int, str] = {
    0: "\\0",
    ord("\\"): "\\\\",
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    0x1A: "\\Z",
    ord("'"): "\\'",
    ord('"'): '\\"',
}
_IDENTIFIER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
# A quoted string ('...' or "...", with backslash or doubled-quote escapes) or a
# backtick-quoted identifier: text in which ``?`` is not a placeholder.
QUOTED_RE = re.compile(r"'(?:[^'\\]|\\.|'')*'|\"(?:[^\"\\]|\\.|\"\")*\"|`[^`]*`", re.S)
# Room kept in every packet for the protocol header and the statement's own text:
# the one margin every limit under max_allowed_packet derives from (packet_budget).
_PACKET_MARGIN = 4096


@functools.lru_cache(maxsize=64)
def packet_budget(max_packet: int) -> int:
    """The bytes of SQL one packet may carry under ``max_allowed_packet``."""
    return max(1024, max_packet - _PACKET_MARGIN)


def quote(
    name: str,
    entity: str | None = None,
    what: str = "identifier",
    field: str | None = None,
) -> str:
    """Return ``name`` quoted with backticks after checking it is a plain identifier.

    Raises:
        SchemaError: when ``name`` is not 1-64 characters of ``[A-Za-z0-9_]``
            starting with a letter or ``_``.
    """
    # fullmatch: "$" would also accept a trailing newline.
    if not isinstance(name, str) or not _IDENTIFIER_RE.fullmatch(name):
        raise SchemaError(
            f"{what} {name!r} must be 1-64 characters of A-Z, a-z, 0-9 and _, "
            "starting with a letter or _",
            entity,
            field,
        )
    return f"`{name}`"


# Finds a character that needs escaping; most values have none, and a search is
# several times cheaper than str.translate with a dict.
NEEDS_ESCAPE = re.compile("[\x00\n\r\x1a'\"\\\\]").search


def string_literal(value: str) -> str:
    """Render a ``str`` as a quoted MySQL string literal."""
    if NEEDS_ESCAPE(value) is None:
        return "'" + value + "'"
    return "'" + value.translate(ESCAPE_TABLE) + "'"


def bytes_literal(value: bytes) -> str:
    """Render ``bytes`` as a hexadecimal ``_binary`` literal (safe in any encoding)."""
    return "_binary X'" + value.hex() + "'"


def binary_literal(value: bytes, raw: bool = True) -> bytes:
    """Render ``bytes`` as a raw ``_binary'...'`` literal for a bytes statement.

    Only the seven bytes MySQL's string syntax needs are escaped (as the C API's
    mysql_real_escape_string does), so the literal is barely longer than the
    value, where a hexadecimal one is twice as long. With ``raw=False`` (a
    connection charset such as gbk, in which a byte before a backslash can make
    one character with it) the literal is hexadecimal.
    """
    if not raw:
        return b"_binary X'" + value.hex().encode() + b"'"
    escaped = (
        value.replace(b"\\", b"\\\\")
        .replace(b"\0", b"\\0")
        .replace(b"'", b"\\'")
        .replace(b'"', b'\\"')
        .replace(b"\n", b"\\n")
        .replace(b"\r", b"\\r")
        .replace(b"\x1a", b"\\Z")
    )
    return b"_binary'" + escaped + b"'"


def row_budget(max_packet: int, fixed: int) -> int:
    """The characters of rows (each counted with its comma) one statement of
    :func:`chunk_rows` holds: rows adding up to at most this make one group."""
    return max(1, (packet_budget(max_packet) - fixed * 4) // 4)


def chunk_rows(
    rows: Sequence[str], max_packet: int, fixed: int
) -> Iterator[Sequence[str]]:
    """Split rendered rows into groups whose statement fits in ``max_packet`` bytes.

    Sizes are counted in characters times four (the most UTF-8 bytes a character
    takes), so a group always fits whatever the text holds; a group holds at least
    one row.

    Args:
        rows: rendered row literals (``(...)``) or list items.
        max_packet: the server's ``max_allowed_packet``.
        fixed: length of the statement text around the rows.
    """
    budget = row_budget(max_packet, fixed)
    if sum(map(len, rows)) + len(rows) <= budget:
        yield rows
        return
    start = 0
    size = 0
    for i, row in enumerate(rows):
        grow = len(row) + 1
        if size + grow > budget and i > start:
            yield rows[start:i]
            start = i
            size = 0
        size += grow
    if start < len(rows):
        yield rows[start:]


_PLACEHOLDER_RE = re.compile(QUOTED_RE.pattern + r"|\?|%", re.S)


def _to_format(match: re.Match[str]) -> str:
    text = match.group()
    if text == "?":
        return "%s"
    # pymysql applies ``%`` formatting to the whole statement, quotes included.
    return text.replace("%", "%%")


def where_to_format(sql: str) -> str:
    """Turn a ``Where`` clause with ``?`` placeholders into pymysql ``%s`` format.

    A ``?`` inside a quoted string or a backtick-quoted name is kept as is, the
    same rule ``Where`` uses to count placeholders; every ``%`` is doubled.
    """
    return _PLACEHOLDER_RE.sub(_to_format, sql)
