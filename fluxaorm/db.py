"""The MySQL driver boundary: connection pools, transactions and the statement log.

This is the only module that imports pymysql. Every statement fluxaorm sends goes
through :meth:`Connection.execute`, which logs it at DEBUG on ``fluxaorm.sql``,
tells the engine's statement listeners (``fluxaorm.testing.count_queries``) and
turns pymysql exceptions into :class:`~fluxaorm.DatabaseError`.
"""

from __future__ import annotations

import datetime as _dt
import errno
import logging
import re
import select
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, NamedTuple, TypeVar

import attrs
import pymysql
import pymysql.connections
import pymysql.converters
import pymysql.cursors
from pymysql.constants import CLIENT, COMMAND, CR, ER, FIELD_TYPE, SERVER_STATUS

from . import forks
from .config import MySQLConfig
from .errors import DatabaseError, DuplicateKeyError

__all__ = [
    "Connection",
    "MySQLPool",
    "PacketError",
    "Result",
    "RoundTripListener",
    "ServerInfo",
    "StatementListener",
    "error_code",
    "missing_schema",
]

_log = logging.getLogger("fluxaorm.sql")
# Backslash escapes on, strict values: what fluxaorm's literal rendering relies on.
_SQL_MODE = "STRICT_ALL_TABLES,NO_ZERO_IN_DATE,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION"
_DUPLICATE_RE = re.compile(
    r"Duplicate entry '(?P<value>.*)' for key '(?P<key>[^']*)'", re.S
)
# Client "server gone"/"lost connection" codes, plus the server's own goodbyes:
# 1053 shutdown in progress, 1927 (MariaDB) connection killed, 4031 (MySQL 8)
# disconnected for inactivity.
_CONNECTION_ERRORS = {1053, 1927, 2003, 2005, 2006, 2013, 2055, 4031}
# Statements that change nothing, so they can be sent again on a new connection
# when the pooled one turns out to be dead before they ran.
_REPLAYABLE = ("SELECT", "SHOW", "BEGIN", "START TRANSACTION")
_LOG_LIMIT = 2000

StatementListener = Callable[[str, str], None]
# Called as listener(pool, statements) once per MySQL round trip.
RoundTripListener = Callable[[str, int], None]
# Connection character sets in which no multi-byte character can end in a
# backslash or a quote byte: with them, backslash escaping cannot be bypassed,
# so several statements may travel in one packet (utf8mb4 is the default).
_PACKET_SAFE_CHARSETS = frozenset(
    {"utf8mb4", "utf8", "utf8mb3", "latin1", "ascii", "binary"}
)


class Result(NamedTuple):
    """What one statement of a packet returned (a tuple: made once per statement)."""

    rowcount: int
    lastrowid: int
    rows: tuple[tuple[Any, ...], ...] | None


_COM_QUERY = COMMAND.COM_QUERY
_T = TypeVar("_T")
_MORE_RESULTS = SERVER_STATUS.SERVER_MORE_RESULTS_EXISTS


class _Packets:
    """The packets of one response, read from a pymysql connection's socket file.

    pymysql reads each packet with two reads of its buffered socket file and
    builds an object for it; here each read takes every byte that has arrived
    (``read1``: what is buffered, else one ``recv``), so the results of a
    multi-statement packet that came together are parsed from one buffer. The
    same checks as pymysql's: packet sequence numbers, a connection lost (or a
    read timeout) is ``OperationalError`` 2013 and closes the socket, an error
    packet raises the error it carries. Results end with the response: a reader
    holds no byte beyond it.
    """

    __slots__ = ("_buf", "_pos", "_raw")

    def __init__(self, raw: Any):
        self._raw = raw
        self._buf = b""
        self._pos = 0
        if raw._current_timeout != raw._read_timeout:  # as pymysql's _read_packet
            raw._sock.settimeout(raw._read_timeout)
            raw._current_timeout = raw._read_timeout

    def next(self) -> bytes:
        """The payload of the next packet (a payload over 16 MiB joined up)."""
        raw = self._raw
        buf, pos = self._buf, self._pos
        parts: list[bytes] = []
        while True:
            if len(buf) - pos < 4:
                buf, pos = self._fill(buf, pos, 4)
            length = buf[pos] | buf[pos + 1] << 8 | buf[pos + 2] << 16
            number = buf[pos + 3]
            if number != raw._next_seq_id:
                raw._force_close()
                if number == 0:  # MariaDB's error packet when it shuts down
                    raise pymysql.err.OperationalError(
                        CR.CR_SERVER_LOST,
                        "Lost connection to MySQL server during query",
                    )
                raise pymysql.err.InternalError(
                    f"Packet sequence number wrong - got {number} expected "
                    f"{raw._next_seq_id}"
                )
            raw._next_seq_id = (number + 1) % 256
            if len(buf) - pos < 4 + length:
                buf, pos = self._fill(buf, pos, 4 + length)
            data = buf[pos + 4 : pos + 4 + length]
            pos += 4 + length
            if length < _MAX_PAYLOAD:
                break
            parts.append(data)
        self._buf, self._pos = buf, pos
        if parts:
            parts.append(data)
            data = b"".join(parts)
        if data and data[0] == 0xFF:
            pymysql.err.raise_mysql_exception(data)
        return data

    def _fill(self, buf: bytes, pos: int, need: int) -> tuple[bytes, int]:
        """Read until ``buf[pos:]`` holds ``need`` bytes; return it and 0."""
        raw = self._raw
        chunks = [buf[pos:]]
        have = len(chunks[0])
        while have < need:
            try:
                data = raw._rfile.read1(max(need - have, _READ_SIZE))
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raw._force_close()
                raise pymysql.err.OperationalError(
                    CR.CR_SERVER_LOST,
                    f"Lost connection to MySQL server during query ({exc})",
                ) from exc
            except BaseException:
                raw._force_close()
                raise
            if not data:
                raw._force_close()
                raise pymysql.err.OperationalError(
                    CR.CR_SERVER_LOST, "Lost connection to MySQL server during query"
                )
            chunks.append(data)
            have += len(data)
        return b"".join(chunks), 0


# A packet of this payload length continues in the next one.
_MAX_PAYLOAD = 0xFFFFFF
# At most what the socket file buffers (8 KiB): a larger read1() would allocate
# a buffer of that size for each read.
_READ_SIZE = 8192


def _read_results(
    packets: _Packets,
    decoders: dict[tuple[bytes, ...], Decoders],
    results: list[Result],
    upto: int = 0,
) -> bool:
    """Read the result of each statement of a multi-statement packet, in turn.

    With ``upto``, stop once ``results`` holds that many; return whether more
    results follow (the packet's last one read: False). An OK packet (what
    every statement but a SELECT or RETURNING sends) becomes its row count and
    insert id; a result set its rows (see :func:`_read_rows`). An error packet
    raises, as pymysql does.
    """
    while True:
        data = packets.next()
        if data[0] == 0 and len(data) >= 7:  # OK packet
            affected, pos = _lenenc(data, 1)
            insert_id, pos = _lenenc(data, pos)
            more = (data[pos] | data[pos + 1] << 8) & _MORE_RESULTS
            results.append(Result(affected, insert_id, None))
        else:
            rows, more = _result_set(packets, decoders, data)
            results.append(Result(len(rows), 0, rows))
        if not more:
            return False
        if len(results) == upto:
            return True


# Column types whose text pymysql decodes with the connection's charset (unless
# the column is binary); every other type is ASCII text (numbers, dates).
_TEXT_TYPES = frozenset(
    {
        FIELD_TYPE.BIT,
        FIELD_TYPE.BLOB,
        FIELD_TYPE.LONG_BLOB,
        FIELD_TYPE.MEDIUM_BLOB,
        FIELD_TYPE.STRING,
        FIELD_TYPE.TINY_BLOB,
        FIELD_TYPE.VAR_STRING,
        FIELD_TYPE.VARCHAR,
        FIELD_TYPE.GEOMETRY,
    }
)
_BINARY_CHARSET = 63
_NULL = 0xFB
Decoders = list[tuple[str | None, Callable[[Any], Any] | None]]


def _read_rows(
    packets: _Packets, decoders: dict[tuple[bytes, ...], Decoders]
) -> tuple[tuple[Any, ...], ...]:
    """Read the result of one statement sent with COM_QUERY: its rows, typed.

    What pymysql's cursor returns, read in place: pymysql builds an object per
    column definition and per row, which costs a one-row SELECT more client time
    than the round trip. Results that follow (a multi-statement text) are read
    and dropped.
    """
    data = packets.next()
    if data[0] == 0:  # OK: a statement without rows
        more = _ok_status(data) & _MORE_RESULTS
        rows: tuple[tuple[Any, ...], ...] = ()
    else:
        rows, more = _result_set(packets, decoders, data)
    if more:
        _read_results(packets, decoders, [])
    return rows


def _result_set(
    packets: _Packets, decoders: dict[tuple[bytes, ...], Decoders], first: bytes
) -> tuple[tuple[tuple[Any, ...], ...], int]:
    """Read a result set whose first packet (the column count) is ``first``.

    Column definitions are matched against ``decoders`` (the connection's cache,
    keyed by the definitions' bytes) and parsed only the first time. Returns the
    rows and the "more results" flag of the EOF packet ending them.
    """
    raw = packets._raw
    columns, _ = _lenenc(first, 0)
    key = tuple(packets.next() for _ in range(columns))
    found = decoders.get(key)
    if found is None:
        found = _decoders(raw, key)
        if len(decoders) >= 256:
            decoders.clear()
        decoders[key] = found
    packets.next()  # EOF after the column definitions
    out: list[tuple[Any, ...]] = []
    while True:
        data = packets.next()
        if data[0] == 0xFE and len(data) < 9:  # EOF: the last row was read
            return tuple(out), (data[3] | data[4] << 8) & _MORE_RESULTS
        row: list[Any] = []
        pos = 0
        for encoding, convert in found:
            size = data[pos]
            if size < 0xFB:  # a length under 251: one byte (_lenenc, inlined)
                pos += 1
            elif size == _NULL:
                row.append(None)
                pos += 1
                continue
            else:
                size, pos = _lenenc(data, pos)
            value: Any = data[pos : pos + size]
            pos += size
            if encoding is not None:
                value = value.decode(encoding)
            if convert is not None:
                value = convert(value)
            row.append(value)
        out.append(tuple(row))


def _decoders(raw: Any, definitions: tuple[bytes, ...]) -> Decoders:
    """How each column's text becomes a value, as pymysql's text protocol does it."""
    out: Decoders = []
    for data in definitions:
        pos = 0
        for _ in range(6):  # catalog, schema, table, org_table, name, org_name
            size, pos = _lenenc(data, pos)
            pos += size
        pos += 1  # the length of the fixed fields
        charset = data[pos] | data[pos + 1] << 8
        kind = data[pos + 6]
        encoding: str | None
        if not raw.use_unicode:
            encoding = None
        elif kind == FIELD_TYPE.JSON:
            encoding = raw.encoding
        elif kind in _TEXT_TYPES:
            encoding = None if charset == _BINARY_CHARSET else raw.encoding
        else:
            encoding = "ascii"
        convert = raw.decoders.get(kind)
        if convert is pymysql.converters.through:
            convert = None
        out.append((encoding, convert))
    return out


def _ok_status(data: bytes) -> int:
    """The server status flags of an OK packet."""
    _, pos = _lenenc(data, 1)
    _, pos = _lenenc(data, pos)
    return data[pos] | data[pos + 1] << 8


def _lenenc(data: bytes, pos: int) -> tuple[int, int]:
    """A length-encoded integer of the MySQL protocol at ``pos``, and what follows."""
    first = data[pos]
    if first < 0xFB:
        return first, pos + 1
    if first == 0xFC:
        return data[pos + 1] | data[pos + 2] << 8, pos + 3
    if first == 0xFD:
        return int.from_bytes(data[pos + 1 : pos + 4], "little"), pos + 4
    return int.from_bytes(data[pos + 1 : pos + 9], "little"), pos + 9


def error_code(error: BaseException | None) -> int:
    """The MySQL error number of a pymysql error, or of the one a DatabaseError
    wraps; 0 when there is none."""
    if isinstance(error, DatabaseError):
        error = error.orig
    args = getattr(error, "args", ())
    return args[0] if args and isinstance(args[0], int) else 0


def missing_schema(error: BaseException | None) -> bool:
    """Whether a MySQL error says that a table or a column does not exist."""
    return error_code(error) in (ER.NO_SUCH_TABLE, ER.BAD_FIELD_ERROR)


def _joined(statements: Sequence[str | bytes]) -> bytes:
    """Statements as one multi-statement query."""
    return b";".join(
        [s if s.__class__ is bytes else s.encode() for s in statements]  # type: ignore[union-attr]
    )


class PacketError(DatabaseError):
    """Internal: statement ``index`` of a packet failed; the later ones did not run."""

    def __init__(
        self,
        error: DatabaseError,
        index: int,
        results: list[Result],
        sent: int | None = None,
    ):
        super().__init__(str(error), pool=error.pool, orig=error.orig)
        self.error = error
        self.index = index
        self.results = results
        # How many statements had been sent (the failing packet's included).
        self.sent = sent if sent is not None else index + 1


def _datetime(value: Any) -> Any:
    # MySQL sends DATETIME as ISO text, which the C parser reads ten times faster
    # than pymysql's regex; anything it refuses (zero dates) goes the old way.
    try:
        return _dt.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return pymysql.converters.convert_datetime(value)


def _date(value: Any) -> Any:
    try:
        return _dt.date.fromisoformat(value)
    except (TypeError, ValueError):
        return pymysql.converters.convert_date(value)


_CONVERSIONS: dict[Any, Any] = dict(pymysql.converters.conversions)
_CONVERSIONS[FIELD_TYPE.DATETIME] = _datetime
_CONVERSIONS[FIELD_TYPE.TIMESTAMP] = _datetime
_CONVERSIONS[FIELD_TYPE.DATE] = _date
Reconnect = Callable[[], "pymysql.connections.Connection[Any]"]


@attrs.frozen
class ServerInfo:
    """What fluxaorm needs to know about a MySQL server, read once per pool."""

    version: str
    mariadb: bool
    autoinc_lock_mode: int
    autoinc_increment: int
    max_allowed_packet: int

    @property
    def returning(self) -> bool:
        """Whether ``INSERT ... RETURNING`` is available (MariaDB 10.5+)."""
        if not self.mariadb:
            return False
        numbers = re.findall(r"\d+", self.version)[:2]
        major, minor = (int(n) for n in numbers) if len(numbers) == 2 else (0, 0)
        return (major, minor) >= (10, 5)


class Connection:
    """One pooled pymysql connection; every statement goes through :meth:`execute`.

    Attributes:
        reused: set by the pool when it lends an idle connection; until its first
            statement, a connection the server has dropped meanwhile (killed,
            timed out, restarted) is replaced and a replayable statement (a read,
            BEGIN) is sent again, so the caller never sees the stale socket.
    """

    __slots__ = (
        "_cursor",
        "_decoders",
        "_listeners",
        "_reconnect",
        "_trips",
        "broken",
        "last_used",
        "pool",
        "raw",
        "raw_binary",
        "reused",
    )

    def __init__(
        self,
        raw: pymysql.connections.Connection[Any],
        pool: str,
        listeners: list[StatementListener],
        reconnect: Reconnect | None = None,
        trips: list[RoundTripListener] | None = None,
    ):
        self.raw = raw
        self.pool = pool
        self._cursor: pymysql.cursors.Cursor = raw.cursor()
        self._listeners = listeners
        self._trips: list[RoundTripListener] = trips if trips is not None else []
        self._reconnect = reconnect
        # Whether raw bytes may travel in a literal: not in charsets (gbk, sjis)
        # where a byte before a backslash can make one character with it.
        self.raw_binary = True
        self.broken = False
        self.reused = False
        self.last_used = time.monotonic()
        # Column definitions seen -> how to type their values (see _read_rows).
        self._decoders: dict[tuple[bytes, ...], Decoders] = {}

    def execute(
        self, sql: str | bytes, args: Sequence[Any] | None = None
    ) -> pymysql.cursors.Cursor:
        """Send one statement (one round trip) and return the cursor holding its result.

        ``sql`` may be ``bytes`` (a statement carrying raw binary literals, without
        ``args``); logs and listeners then get its first characters as text.

        The one exception to "one round trip": the first statement on a reused
        connection that the server has dropped meanwhile is logged and sent again on
        a new connection when it is a read or BEGIN (see :attr:`reused`).

        Raises:
            DuplicateKeyError: a unique index refused a row.
            DatabaseError: any other failure; the connection is dropped when it is
                no longer usable.
        """
        self._once(sql, lambda: self._send(sql, args))
        return self._cursor

    def _once(self, sql: str | bytes, send: Callable[[], _T]) -> _T:
        """Announce ``sql`` and run ``send`` (one round trip), wrapping its errors.

        A read or BEGIN that fails on a reused connection the server dropped
        meanwhile is logged and run again once on a new connection.
        """
        reused, self.reused = self.reused, False
        self._announce(sql)
        self._trip(1)
        try:
            return send()
        except pymysql.err.Error as exc:
            error = self._wrap(exc)
            if not (reused and self.broken and _replayable(sql)):
                raise error from exc
            _log.info("[%s] %s; reconnecting", self.pool, error)
            self._replace()
            self._announce(sql)
            self._trip(1)
            try:
                return send()
            except pymysql.err.Error as again:
                raise self._wrap(again) from again

    def packet(
        self,
        statements: Sequence[str | bytes],
        ready: tuple[int, Callable[[list[Result]], None]] | None = None,
        rest: Callable[[], Sequence[str | bytes]] | None = None,
    ) -> list[Result]:
        """Send several statements in one packet (one round trip); return each result.

        The server runs them in order and stops at the first that fails. Listeners
        hear of every statement and of one round trip. A packet is never sent
        again on another connection (it may hold a COMMIT): instead, a reused
        connection whose socket the server has already closed (the socket is
        readable before anything was sent) is replaced first.

        ``ready=(n, call)``: once the results of the first ``n`` statements are
        read (``n=0``: once the packet is sent) and more follow, ``call(results)``
        runs before the rest are read: client work done there overlaps the
        server's (a flush packs its publish while the server runs its statements
        and writes the COMMIT to disk), and results that arrived meanwhile are
        read in one go. If ``call`` raises, the connection (its last results
        unread) is marked broken.

        ``rest``: more statements, made once ``statements`` are on their way and
        sent right behind them as a second query, without waiting for an answer
        (still one round trip, counted as one): the server starts on the first
        part while the client builds the rest. The server runs the second query
        even when the first failed, so the first statement of ``rest`` must fail
        unless the last of ``statements`` succeeded (an outbox row checking
        ``ROW_COUNT()``, see ``outbox.insert_statements``): a failure is then
        reported for the statement that failed first, after both answers were
        read. If ``rest`` raises, the connection is closed (the server rolls back
        what the first part began) and marked broken. ``ready`` counts across
        both parts.

        Raises:
            PacketError: statement ``index`` failed (``.error`` is the wrapped
                error, a ``DuplicateKeyError`` for a duplicate); the statements
                before it ran, the later ones did not.
        """
        if self.reused:
            self.reused = False
            if self._closed_by_server():
                _log.info(
                    "[%s] the server closed this idle connection; reconnecting",
                    self.pool,
                )
                self._replace()
        self._announce_all(statements)
        raw: Any = self.raw
        results: list[Result] = []
        sent = len(statements)
        try:
            raw._execute_command(_COM_QUERY, _joined(statements))
            if rest is not None:
                sent += len(self._send_rest(rest))
            if self._trips:
                self._trip(sent)
            packets = _Packets(raw)
            if rest is not None:
                return self._read_both(packets, results, sent, ready)
            self._read_rest(packets, results, ready)
        except pymysql.err.Error as exc:
            raise PacketError(self._wrap(exc), len(results), results, sent) from exc
        return results

    def _read_rest(
        self,
        packets: _Packets,
        results: list[Result],
        ready: tuple[int, Callable[[list[Result]], None]] | None,
    ) -> None:
        """Read an answer's remaining results into ``results``; ``ready`` runs
        once it has its first ``n`` (at once if they are in already) and more
        follow (see :meth:`_call`)."""
        if ready is None:
            _read_results(packets, self._decoders, results)
        elif ready[0] <= len(results) or _read_results(
            packets, self._decoders, results, ready[0]
        ):
            self._call(ready[1], results)
            _read_results(packets, self._decoders, results)

    def _call(
        self, call: Callable[[list[Result]], None], results: list[Result]
    ) -> None:
        """Run a ``ready`` callback; if it raises, the results after these stay unread."""
        try:
            call(results)
        except BaseException:
            self.broken = True
            raise

    def _send_rest(
        self, rest: Callable[[], Sequence[str | bytes]]
    ) -> Sequence[str | bytes]:
        """Make and send the second query of a packet (see :meth:`packet`)."""
        raw: Any = self.raw
        try:
            more = rest()
        except BaseException:
            # The first part's transaction is open on the server: closing the
            # connection rolls it back (nothing holding COMMIT was sent).
            self.broken = True
            raw._force_close()
            raise
        self._announce_all(more)
        raw._execute_command(_COM_QUERY, _joined(more))
        return more

    def _announce_all(self, statements: Sequence[str | bytes]) -> None:
        """:meth:`_announce` each statement (nothing to do without listeners or DEBUG)."""
        if self._listeners or _log.isEnabledFor(logging.DEBUG):
            for statement in statements:
                self._announce(statement)

    def _read_both(
        self,
        packets: _Packets,
        results: list[Result],
        sent: int,
        ready: tuple[int, Callable[[list[Result]], None]] | None,
    ) -> list[Result]:
        """Read the answers of a packet sent in two queries (see :meth:`packet`).

        Each answer's packets are numbered from 1. A failure in the first query
        is raised once the second's answer (its check failing) is read too, so
        the connection stays usable for the ROLLBACK.
        """
        raw: Any = self.raw
        failure: pymysql.err.Error | None = None
        at = 0
        if ready is not None and ready[0] == 0:  # at once, as for one query
            self._call(ready[1], results)
            ready = None
        try:
            _read_results(packets, self._decoders, results)
        except pymysql.err.Error as exc:
            if raw._sock is None:
                raise
            failure, at = exc, len(results)
        raw._next_seq_id = 1  # the second query's answer
        if failure is not None:
            try:
                _read_results(packets, self._decoders, [])
            except pymysql.err.Error:
                if raw._sock is None:
                    raise
            raise PacketError(self._wrap(failure), at, results, sent) from failure
        self._read_rest(packets, results, ready)  # ready: not before the first answer
        return results

    def _closed_by_server(self) -> bool:
        """Whether the idle socket is readable: the server closed or killed it."""
        sock = getattr(self.raw, "_sock", None)
        if sock is None:
            return True
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def _trip(self, statements: int) -> None:
        for listener in self._trips:
            listener(self.pool, statements)

    def _send(self, sql: str | bytes, args: Sequence[Any] | None) -> None:
        # pymysql sends a bytes statement as is (its stubs say str only).
        cursor: Any = self._cursor
        cursor.execute(sql, args)

    def _announce(self, statement: str | bytes) -> None:
        if not self._listeners and not _log.isEnabledFor(logging.DEBUG):
            return
        if isinstance(statement, bytes):
            head = statement[:_LOG_LIMIT].decode("utf-8", "replace")
            sql = head + "..." if len(statement) > _LOG_LIMIT else head
        else:
            sql = statement
        if _log.isEnabledFor(logging.DEBUG):
            _log.debug(
                "[%s] %s",
                self.pool,
                sql if len(sql) <= _LOG_LIMIT else sql[:_LOG_LIMIT] + "...",
            )
        for listener in self._listeners:
            listener(self.pool, sql)

    def _replace(self) -> None:
        """Swap the dead socket for a new connection (raises if none can be made)."""
        if self._reconnect is None:
            return
        self.close()
        self.raw = self._reconnect()
        self._cursor = self.raw.cursor()
        self.broken = False

    def query(
        self, sql: str, args: Sequence[Any] | None = None
    ) -> tuple[tuple[Any, ...], ...]:
        """Send a statement (one round trip) and return all its rows.

        The rows are read in place (see :func:`_read_rows`), typed as pymysql's
        cursor types them. Errors, logging, listeners and the replay of a read on
        a reused connection the server dropped are as for :meth:`execute`.
        """
        return self._once(sql, lambda: self._rows(sql, args))

    def _rows(
        self, sql: str, args: Sequence[Any] | None
    ) -> tuple[tuple[Any, ...], ...]:
        raw: Any = self.raw
        if args is not None:
            sql = self._cursor.mogrify(sql, args)
        raw._execute_command(_COM_QUERY, sql.encode(raw.encoding, "surrogateescape"))
        return _read_rows(_Packets(raw), self._decoders)

    def begin(self) -> None:
        """Start a transaction."""
        self.execute("BEGIN")

    def commit(self) -> None:
        """Commit the transaction."""
        self.execute("COMMIT")

    def rollback(self) -> None:
        """Roll the transaction back; a connection that cannot is marked broken."""
        try:
            self.execute("ROLLBACK")
        except DatabaseError:
            self.broken = True

    def _wrap(self, exc: pymysql.err.Error) -> DatabaseError:
        code = error_code(exc)
        message = str(exc.args[1]) if len(exc.args) > 1 else str(exc)
        if code == ER.DUP_ENTRY:
            match = _DUPLICATE_RE.search(message)
            key = match.group("key").rsplit(".", 1)[-1] if match else "?"
            return DuplicateKeyError(
                f"{message} (MySQL pool {self.pool!r})",
                index=key,
                pool=self.pool,
                orig=exc,
            )
        if code in _CONNECTION_ERRORS or isinstance(exc, pymysql.err.InterfaceError):
            self.broken = True
            return DatabaseError(
                f"MySQL pool {self.pool!r}: connection lost ({code}: {message})",
                pool=self.pool,
                orig=exc,
            )
        hint = _PERMANENT_HINTS.get(code)
        error = DatabaseError(
            f"MySQL pool {self.pool!r}: {message} ({code}){hint or ''}",
            pool=self.pool,
            orig=exc,
        )
        if hint is not None:
            _mark_permanent(error)
        return error

    def close(self) -> None:
        """Close the socket, ignoring errors."""
        with suppress(Exception):  # closing a dead socket must never raise
            self.raw.close()


_SYNC_HINT = "run engine.sync_schema() (or `fluxaorm schema apply`)"
# Errors that retrying cannot fix (SPEC §2), with what to do instead. They are
# reported with ``permanent`` set, so callers do not retry them as outages.
_PERMANENT_HINTS: dict[int, str] = {
    ER.ACCESS_DENIED_ERROR: (
        "; check the user and password in the pool's URL "
        "(mysql://user:password@host:3306/database)"
    ),
    ER.DBACCESS_DENIED_ERROR: (
        "; grant the user access to the database, or fix the database name "
        "in the pool's URL"
    ),
    ER.BAD_DB_ERROR: (
        "; create the database (CREATE DATABASE ... CHARACTER SET utf8mb4) or "
        "fix its name in the pool's URL"
    ),
    ER.NO_SUCH_TABLE: f"; {_SYNC_HINT} to create it",
    ER.BAD_FIELD_ERROR: (
        f"; if an entity has this field, its table is older than the entity: {_SYNC_HINT}"
    ),
    ER.TABLEACCESS_DENIED_ERROR: "; grant the MySQL user the privilege it names",
    ER.COLUMNACCESS_DENIED_ERROR: "; grant the MySQL user the privilege it names",
    ER.SPECIFIC_ACCESS_DENIED_ERROR: "; grant the MySQL user the privilege it names",
}


def _mark_permanent(error: DatabaseError) -> None:
    # DatabaseError.permanent, like StreamError.permanent: retrying cannot help.
    error.permanent = True


class MySQLPool:
    """A thread-safe LIFO pool of connections to one MySQL server.

    At most ``config.pool_size`` connections are open at once; a caller waits up to
    ``config.pool_timeout`` seconds for one. An idle connection older than
    ``config.pool_recycle`` seconds is pinged before reuse. After ``os.fork()`` the
    child never touches the parent's sockets. A ``read_only`` pool (a read
    replica's) opens its sessions with ``READ ONLY`` transactions.
    """

    def __init__(
        self,
        config: MySQLConfig,
        listeners: list[StatementListener],
        trips: list[RoundTripListener] | None = None,
        *,
        read_only: bool = False,
    ):
        self.config = config
        self.name = config.pool
        self.read_only = read_only
        self._listeners = listeners
        self._trips: list[RoundTripListener] = trips if trips is not None else []
        # Several statements per packet (one round trip per flush) only where
        # backslash escaping cannot be bypassed by the connection's charset.
        self.packets = config.charset.lower() in _PACKET_SAFE_CHARSETS
        self._idle: list[Connection] = []
        self._open = 0
        # _lock guards _idle, _open and _waiting; _cond (on the same lock) wakes
        # threads waiting for a connection. Entered directly, the lock skips
        # Condition's Python-level __enter__ on the hot path.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._waiting = 0  # threads waiting in acquire() for a connection
        self._pid = forks.pid
        self._info: ServerInfo | None = None

    def __repr__(self) -> str:
        return f"<MySQLPool {self.name!r} {self.config.address} open={self._open}>"

    @property
    def info(self) -> ServerInfo:
        """Server facts (version, auto-increment mode, packet size), read on first use."""
        if self._info is None:
            with self.connection():
                pass
        assert self._info is not None
        return self._info

    def _open_raw(self) -> pymysql.connections.Connection[Any]:
        kwargs = self.config.connect_kwargs()
        read_timeout = kwargs["read_timeout"]
        # pymysql waits for the server's greeting under read_timeout: wait no
        # longer than connect_timeout for it, so a port that accepts and never
        # answers fails as fast as one that refuses.
        kwargs["read_timeout"] = min(read_timeout, kwargs["connect_timeout"])
        try:
            raw = pymysql.connect(
                init_command=f"SET SESSION sql_mode='{_SQL_MODE}'",
                conv=_CONVERSIONS,
                # UPDATE reports the rows it matched, not only those it changed:
                # the flush streams an event only for a row a statement matched.
                client_flag=CLIENT.FOUND_ROWS
                | (CLIENT.MULTI_STATEMENTS if self.packets else 0),
                **kwargs,
            )
            # pymysql applies _read_timeout again before each read.
            raw._read_timeout = read_timeout  # type: ignore[attr-defined]
            # Flush transactions only write, by primary key: READ COMMITTED takes
            # no gap locks, so a transaction deleting outbox rows that are
            # already gone never blocks other flushes' outbox inserts.
            raw.query(
                "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED"
                + (", READ ONLY" if self.read_only else "")
            )
            return raw
        except pymysql.err.Error as exc:
            code = error_code(exc)
            detail = exc.args[1] if len(exc.args) > 1 else exc
            hint = _PERMANENT_HINTS.get(code)
            if hint is None and "timed out" in str(detail):
                hint = (
                    f"; no answer within {kwargs['read_timeout']}s (connect_timeout, "
                    f"or read_timeout if lower): is "
                    f"{self.config.address} a MySQL server? Check the host and port "
                    "of the pool's URL, or raise the timeouts"
                )
            error = DatabaseError(
                f"MySQL pool {self.name!r}: cannot connect to {self.config.address} "
                f"as {self.config.user!r}: {detail} ({code}){hint or ''}",
                pool=self.name,
                orig=exc,
            )
            if code in _PERMANENT_HINTS:
                _mark_permanent(error)
            raise error from None
        except OSError as exc:
            # pymysql wraps socket errors; what escapes is its TLS set-up
            # reading ssl_ca/ssl_cert/ssl_key (a missing file, a bad PEM).
            error = DatabaseError(
                f"MySQL pool {self.name!r}: cannot set up TLS for "
                f"{self.config.address}: {exc}; check the pool's ssl_ca, ssl_cert "
                "and ssl_key files",
                pool=self.name,
                orig=exc,
            )
            _mark_permanent(error)
            raise error from None

    def _connect(self) -> Connection:
        conn = Connection(
            self._open_raw(), self.name, self._listeners, self._open_raw, self._trips
        )
        conn.raw_binary = self.packets
        if self._info is None:
            try:
                row = conn.query(
                    "SELECT VERSION(), @@innodb_autoinc_lock_mode, "
                    "@@auto_increment_increment, @@max_allowed_packet"
                )[0]
            except DatabaseError:
                conn.close()
                raise
            version = str(row[0])
            packet = int(row[3])
            if self.config.max_allowed_packet:
                # A smaller setting splits statements sooner; a larger one cannot
                # raise what the server accepts.
                packet = min(packet, self.config.max_allowed_packet)
            self._info = ServerInfo(
                version=version,
                mariadb="mariadb" in version.lower(),
                autoinc_lock_mode=int(row[1]),
                autoinc_increment=int(row[2]),
                max_allowed_packet=packet,
            )
        return conn

    def _check_fork(self) -> None:
        pid = forks.pid
        if pid != self._pid:
            with self._lock:
                if pid != self._pid:
                    self._idle = []  # the parent owns those sockets
                    self._open = 0
                    self._pid = pid

    def acquire(self) -> Connection:
        """Take a connection out of the pool (open one when none is idle)."""
        if forks.pid != self._pid:
            self._check_fork()
        with self._lock:
            if not self._idle and self._open >= self.config.pool_size:
                self._wait_for_idle()
            if self._idle:
                conn = self._idle.pop()
                conn.reused = True
            else:
                self._open += 1
                conn = None
        if conn is None:
            try:
                return self._connect()
            except BaseException:
                self._forget()
                raise
        if time.monotonic() - conn.last_used > self.config.pool_recycle:
            try:
                conn.raw.ping(reconnect=False)
            except pymysql.err.Error:
                conn.close()
                self._forget()
                return self.acquire()
        return conn

    def _wait_for_idle(self) -> None:
        """Wait (holding ``_cond``) until a connection is idle or may be opened."""
        deadline = time.monotonic() + self.config.pool_timeout
        self._waiting += 1
        try:
            while not self._idle and self._open >= self.config.pool_size:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DatabaseError(
                        f"MySQL pool {self.name!r} is exhausted: all {self.config.pool_size} "
                        f"connections are still in use after {self.config.pool_timeout}s; "
                        "raise pool_size or release connections sooner",
                        pool=self.name,
                    )
                self._cond.wait(left)
        finally:
            self._waiting -= 1

    def _forget(self) -> None:
        with self._lock:
            self._open -= 1
            self._cond.notify()

    def release(self, conn: Connection) -> None:
        """Give a connection back; a broken one is closed instead."""
        if forks.pid != self._pid:
            return
        if conn.broken:
            conn.close()
            self._forget()
            return
        conn.last_used = time.monotonic()
        with self._lock:
            self._idle.append(conn)
            if self._waiting:  # notify() costs more than the rest of release()
                self._cond.notify()

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """Lend a connection for the duration of a ``with`` block."""
        conn = self.acquire()
        try:
            yield conn
        finally:
            self.release(conn)

    @contextmanager
    def transaction(self, isolation: str | None = None) -> Iterator[Connection]:
        """Run the block in one transaction: COMMIT on success, ROLLBACK on error.

        Args:
            isolation: an isolation level for this transaction only, such as
                ``"REPEATABLE READ"`` (default: the session's, READ COMMITTED).
        """
        with self.connection() as conn:
            if isolation is not None:
                conn.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
            conn.begin()
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            conn.commit()

    def close(self) -> None:
        """Close every idle connection (connections in use close on release)."""
        with self._lock:
            idle, self._idle = self._idle, []
            self._open -= len(idle)
        for conn in idle:
            conn.close()


def _replayable(sql: str | bytes) -> bool:
    head = sql[:32].decode("ascii", "replace") if isinstance(sql, bytes) else sql
    return head.lstrip()[:17].upper().startswith(_REPLAYABLE)
