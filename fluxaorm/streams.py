"""The Redis driver boundary: pools, pipelined round trips and stream commands.

This module and ``cluster.py`` (Redis Cluster pools, built on these classes) are
the only ones that import redis. Every exchange with one server goes through
:meth:`RedisPool.round_trip`, which logs it at DEBUG on ``fluxaorm.redis``, tells
the engine's round-trip listeners (``fluxaorm.testing.count_round_trips``) and
turns redis-py exceptions into :class:`~fluxaorm.StreamError`. Replies come back
raw (bytes, lists); the helpers below parse the stream commands' replies.
"""

from __future__ import annotations

import logging
import os
import select
import ssl
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import redis
import redis.exceptions

from . import forks
from .config import RedisConfig
from .errors import ConfigurationError, StreamError

__all__ = [
    "RawEntry",
    "RedisPool",
    "RoundTripListener",
    "Session",
    "bulk",
    "pack_ack",
    "pack_command",
    "parse_entries",
    "permanent_hint",
    "tls_files_hint",
]

_log = logging.getLogger("fluxaorm.redis")
RoundTripListener = Callable[[str, str, int], None]
RawEntry = tuple[str, dict[bytes, bytes] | None]
# Default timeouts (seconds) of every Redis call; register_redis options (or the
# URL's ?socket_timeout= and ?socket_connect_timeout=) change them.
DEFAULT_SOCKET_TIMEOUT = 5.0
DEFAULT_CONNECT_TIMEOUT = 5.0
_MULTI = b"*1\r\n$5\r\nMULTI\r\n"
_EXEC = b"*1\r\n$4\r\nEXEC\r\n"


class _Commands:
    """``execute`` and ``pipeline`` on top of a class's ``round_trip`` and ``error``."""

    def round_trip(
        self, payload: bytes, replies: int, what: str, commands: int | None = None
    ) -> list[Any]:
        raise NotImplementedError

    def error(self, exc: BaseException, what: str) -> StreamError:
        raise NotImplementedError

    def execute(self, *args: Any) -> Any:
        """Run one command and return its raw reply.

        Raises:
            StreamError: on a connection failure or an error reply.
        """
        reply = self.round_trip(_pack(args), 1, _name(args))[0]
        if isinstance(reply, redis.exceptions.ResponseError):
            raise self.error(reply, _name(args))
        return reply

    def pipeline(
        self, commands: Sequence[Sequence[Any]], what: str | None = None
    ) -> list[Any]:
        """Run several commands in one round trip; error replies are returned, not raised."""
        payload = b"".join(_pack(c) for c in commands)
        label = what or ",".join(dict.fromkeys(_name(c) for c in commands))
        return self.round_trip(payload, len(commands), label)


class RedisPool(_Commands):
    """A thread-safe pool of connections to one Redis server (redis-py underneath).

    Args:
        config: the pool's URL and options.
        listeners: called as ``listener(pool, what, commands)`` for each round trip.

    Attributes:
        cluster: False here; True for ``cluster.ClusterPool``, which publishes
            with a publisher of its own.
    """

    cluster = False

    def __init__(self, config: RedisConfig, listeners: list[RoundTripListener]):
        self.config = config
        self.name = config.pool
        self._listeners = listeners
        options = dict(config.options)
        # Replies are parsed here as RESP2 arrays, whatever the client's default.
        options["protocol"] = 2
        # No call waits forever on a server that accepts and never answers; the
        # read timeout is known without I/O, so blocking reads can stay under it.
        options.setdefault("socket_timeout", DEFAULT_SOCKET_TIMEOUT)
        options.setdefault("socket_connect_timeout", DEFAULT_CONNECT_TIMEOUT)
        try:
            self._pool = redis.ConnectionPool.from_url(config.secret_url, **options)
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(
                f"Redis pool {self.name!r} ({config.url}): {exc}"
            ) from None
        # Connections given back, ready for the next call (see connect()).
        self._idle: list[Any] = []
        self._pid = forks.pid
        timeout = self._pool.connection_kwargs.get("socket_timeout")
        self.socket_timeout: float | None = float(timeout) if timeout else None

    def __repr__(self) -> str:
        return f"<RedisPool {self.name!r} {self.config.url}>"

    def round_trip(
        self, payload: bytes, replies: int, what: str, commands: int | None = None
    ) -> list[Any]:
        """Send pre-packed commands and read ``replies`` replies: one round trip.

        Error replies are returned as :class:`redis.exceptions.ResponseError`
        instances in the list, not raised, so every reply is always read.

        Raises:
            StreamError: the server cannot be reached or the connection dropped.
        """
        self.heard(what, commands if commands is not None else replies, len(payload))
        conn = self.connect(what)
        try:
            conn.send_packed_command([payload], check_health=False)
            return read_replies(conn, replies)
        except redis.exceptions.RedisError as exc:
            conn.disconnect()
            raise self._wrap(exc, what) from exc
        except BaseException:
            conn.disconnect()
            raise
        finally:
            self.release(conn)

    def session(self, key: str) -> Session:
        """Return a :class:`Session` for one consumer of the stream ``key``."""
        return Session(self)

    def connect(self, what: str) -> Any:
        """Take a connection out of the pool (give it back with :meth:`release`).

        Connections given back wait in a stack of this pool's own, which costs a
        few operations; redis-py's pool (with its bookkeeping) only opens them.
        A waiting connection the server closed meanwhile (or one with unread
        data) is reconnected before it is handed out, as redis-py's pool does.
        """
        idle = self._idle
        if idle and self._pid == forks.pid:
            try:
                conn = idle.pop()
            except IndexError:  # another thread took the last one
                pass
            else:
                if _readable(conn):
                    conn.disconnect()
                    try:
                        conn.connect()
                    except redis.exceptions.RedisError as exc:
                        self._pool.release(conn)
                        raise self._wrap(exc, what) from exc
                return conn
        try:
            return self._pool.get_connection()
        except redis.exceptions.RedisError as exc:
            raise self._wrap(exc, what) from exc

    def release(self, conn: Any) -> None:
        """Give back a connection taken with :meth:`connect`."""
        pid = forks.pid
        if pid != self._pid:  # a forked child: the parent's sockets stay its own
            self._idle, self._pid = [], pid
        self._idle.append(conn)

    def heard(self, what: str, commands: int, size: int) -> None:
        """Tell the round-trip listeners (and the DEBUG log) of one round trip."""
        for listener in self._listeners:
            listener(self.name, what, commands)
        if _log.isEnabledFor(logging.DEBUG):
            _log.debug(
                "[%s] %s (%d commands, %d bytes)", self.name, what, commands, size
            )

    def _wrap(self, exc: BaseException, what: str) -> StreamError:
        return self.error(exc, what)

    def connection_options(self) -> Mapping[str, Any]:
        """The options each connection is made with (TLS files included)."""
        return self._pool.connection_kwargs

    def hint(self, exc: BaseException) -> str | None:
        """What to fix when retrying cannot help with ``exc``, else None.

        :func:`permanent_hint`, and for a connection that failed on a TLS pool,
        :func:`tls_files_hint`: a CA, certificate or key file it cannot use.
        """
        found = permanent_hint(exc, self.config.db, cluster=self.cluster)
        if found is None and self.config.tls and _connect_failure(exc):
            found = tls_files_hint(self.connection_options())
        return found

    def error(self, exc: BaseException, what: str) -> StreamError:
        """Turn a redis-py exception (raised or an error reply) into a StreamError.

        Errors that retrying cannot fix (bad credentials, a missing ACL
        permission, a DB index the server does not have, a TLS file that cannot
        be read) come back with ``permanent=True`` and ``connection_lost=False``
        and a message saying what to fix; the password is never part of it.
        """
        hint = self.hint(exc)
        lost = hint is None and isinstance(
            exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
        )
        message = (
            f"Redis pool {self.name!r} at {self.config.address}: {what} failed: "
            f"{type(exc).__name__}: {exc}"
        )
        if hint is not None:
            message = f"{message.rstrip('.')}. {hint}"
        return StreamError(
            message,
            pool=self.name,
            orig=exc,
            connection_lost=lost,
            permanent=hint is not None,
        )

    def transaction(self, payload: bytes, commands: int, what: str) -> list[Any]:
        """Run pre-packed commands inside MULTI/EXEC in one round trip.

        Returns:
            The EXEC reply: one reply per command.

        Raises:
            StreamError: the transaction was refused (e.g. OOM, no connection),
                and then no command ran; or a command failed inside EXEC (e.g.
                WRONGTYPE), and then the others did run (Redis has no rollback).
        """
        replies = self.round_trip(
            _MULTI + payload + _EXEC, commands + 2, what, commands
        )
        result = replies[-1]
        if isinstance(result, Exception) or result is None:
            first = next((r for r in replies if isinstance(r, Exception)), result)
            raise self._wrap(
                first if first is not None else RuntimeError("EXEC aborted"), what
            )
        failed = [r for r in result if isinstance(r, Exception)]
        if failed:
            raise self._wrap(
                RuntimeError(
                    f"{len(failed)} of {commands} commands failed: {failed[0]}"
                ),
                what,
            )
        return list(result)

    def blocking_timeout(self, seconds: float) -> float:
        """Return the longest block (s) one read may use without tripping the socket timeout."""
        timeout = self.socket_timeout
        if timeout is None:
            return seconds
        margin = min(1.0, timeout / 2)
        return max(0.001, min(seconds, timeout - margin))

    def close(self) -> None:
        """Close every connection of the pool."""
        idle, self._idle = self._idle, []
        for conn in idle:
            self._pool.release(conn)
        self._pool.disconnect()


_AUTH_HINT = (
    "Retrying cannot help: check the user name and password of the pool's URL "
    "(register_redis) against the server's requirepass/ACL users"
)
_CLUSTER_AUTH = (
    " on every node of the cluster (ACL SETUSER and requirepass are per node, "
    "not replicated)"
)
_PERMANENT: tuple[tuple[str, str], ...] = (
    ("WRONGPASS", _AUTH_HINT),
    ("NOAUTH", _AUTH_HINT),
    ("invalid username-password pair", _AUTH_HINT),
    ("invalid password", _AUTH_HINT),
    ("Authentication required", _AUTH_HINT),
    ("called without any password configured", _AUTH_HINT),
    (
        "NOPERM",
        "Retrying cannot help: the pool's ACL user lacks a permission fluxaorm "
        "needs; grant it +@stream, +@transaction and +time on the keys dirty_*",
    ),
    (
        "DB index is out of range",
        "Retrying cannot help: the server has no database {db}; use a database "
        "number below its `databases` setting in the pool's URL",
    ),
)


def permanent_hint(
    exc: BaseException, db: int = 0, cluster: bool = False
) -> str | None:
    """Say what to fix when ``exc`` is an error that retrying cannot fix, else None.

    Bad credentials (WRONGPASS, NOAUTH; redis-py's AuthenticationError, which is
    also a ConnectionError), a missing ACL permission (NOPERM) and a DB index the
    server does not have are permanent; anything else may pass. On a
    ``cluster``, the credentials hint says to check every node.
    """
    if isinstance(exc, StreamError):
        exc = exc.orig if exc.orig is not None else exc
    found: str | None = None
    if isinstance(exc, redis.exceptions.AuthenticationError):
        found = _AUTH_HINT
    elif isinstance(exc, redis.exceptions.NoPermissionError):
        found = _PERMANENT[-2][1]
    elif isinstance(exc, redis.exceptions.ResponseError):
        reply = str(exc)
        found = next((h for m, h in _PERMANENT if m in reply), None)
    if found is _AUTH_HINT and cluster:
        return _AUTH_HINT + _CLUSTER_AUTH
    return None if found is None else found.format(db=db)


def _connect_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a connection that could not be made (or was lost)."""
    if isinstance(exc, StreamError):
        exc = exc.orig if exc.orig is not None else exc
    return isinstance(exc, redis.exceptions.ConnectionError)


# redis-py's TLS files: the CA (a file or a folder), the client certificate and key.
_TLS_FILES = ("ssl_ca_certs", "ssl_ca_path", "ssl_certfile", "ssl_keyfile")


def tls_files_hint(options: Mapping[str, Any]) -> str | None:
    """Say what to fix when a TLS file of a pool's ``options`` cannot be used, else None.

    redis-py reads ``ssl_ca_certs``, ``ssl_ca_path``, ``ssl_certfile`` and
    ``ssl_keyfile`` when it connects, and reports a file it cannot read (or
    that holds no certificate) as a failed connection, like an outage. These
    files are loaded here the same way, in a context of our own: one that
    fails is named, with why, and retrying cannot help. Reads files only when
    called (on a failed connection), never the network.
    """
    given = {k: options[k] for k in _TLS_FILES if options.get(k)}
    if not given:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    attempts: list[tuple[str, Callable[[], object]]] = []
    if "ssl_ca_certs" in given:
        ca = given["ssl_ca_certs"]
        attempts.append(("ssl_ca_certs", lambda: context.load_verify_locations(ca)))
    if "ssl_ca_path" in given:
        folder = given["ssl_ca_path"]
        attempts.append(("ssl_ca_path", lambda: _folder(folder)))
    if "ssl_certfile" in given:
        attempts.append(
            (
                "ssl_certfile",
                lambda: context.load_cert_chain(
                    given["ssl_certfile"],
                    given.get("ssl_keyfile"),
                    options.get("ssl_password"),
                ),
            )
        )
    for key, attempt in attempts:
        try:
            attempt()
        except (OSError, ValueError) as exc:
            why = getattr(exc, "strerror", None) or str(exc)
            files = (
                f"ssl_certfile {given['ssl_certfile']!r} and ssl_keyfile "
                f"{given['ssl_keyfile']!r}"
                if key == "ssl_certfile" and "ssl_keyfile" in given
                else f"{key} {given[key]!r}"
            )
            return (
                f"Retrying cannot help: the pool's {files} cannot be used ({why}); "
                f"point {key} (a query option of the pool's URL or an option of "
                f"register_redis) at {_TLS_WANTED[key]}"
            )
    return None


_TLS_WANTED = {
    "ssl_ca_certs": "a readable PEM file of the CA that signed the servers' certificates",
    "ssl_ca_path": "a readable folder of CA certificates",
    "ssl_certfile": "a readable PEM client certificate (and its key in ssl_keyfile)",
}


def _folder(path: str) -> None:
    """Raise NotADirectoryError (or FileNotFoundError) unless ``path`` is a readable folder."""
    os.listdir(path)


def _readable(conn: Any) -> bool:
    """Whether an idle connection has something to read: the server closed it, or
    a reply was left unread. Either way it must not be used as it is.

    One ``select`` on the socket: redis-py's ``can_read()`` costs several system
    calls and an exception. Replies are never left half-read in the parser (a
    failed exchange disconnects), so the socket tells all.
    """
    sock = getattr(conn, "_sock", None)
    if sock is None:
        return True
    try:
        pending = getattr(sock, "pending", None)  # TLS: bytes already decrypted
        if pending is not None and pending():
            return True
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


def bulk(value: bytes) -> bytes:
    """One RESP bulk string (the one place commands are framed: see :func:`_pack`)."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


def read_replies(conn: Any, replies: int) -> list[Any]:
    """Read ``replies`` replies; error replies come back as exceptions, not raised.

    The replies are read from the connection's parser, which returns an error
    reply as an exception instance: ``Connection.read_response`` wraps each
    read in bookkeeping that costs more than parsing a short reply, and raises
    error replies only to have them caught here. A socket error becomes
    :class:`redis.exceptions.ConnectionError` (the connection is dropped), as
    ``read_response`` does.
    """
    parser = getattr(conn, "_parser", None)
    read = getattr(parser, "read_response", None)
    if read is None:  # not a redis-py Connection as this module knows it
        return _read_replies_slowly(conn, replies)
    out: list[Any] = []
    try:
        for _ in range(replies):
            out.append(read(disable_decoding=True))
    except (OSError, redis.exceptions.TimeoutError) as exc:
        conn.disconnect()
        if isinstance(exc, (TimeoutError, redis.exceptions.TimeoutError)):
            raise redis.exceptions.TimeoutError(f"reading a reply: {exc}") from exc
        raise redis.exceptions.ConnectionError(f"reading a reply: {exc}") from exc
    except redis.exceptions.ConnectionError:
        conn.disconnect()
        raise
    return out


def _read_replies_slowly(conn: Any, replies: int) -> list[Any]:
    out: list[Any] = []
    for _ in range(replies):
        try:
            out.append(conn.read_response(disable_decoding=True))
        except redis.exceptions.ResponseError as exc:
            out.append(exc)
    return out


class Session(_Commands):
    """One connection of a pool kept by one consumer, whose writes may run ahead.

    :meth:`send` writes commands at once and reads their replies with the next
    exchange on the connection (:meth:`round_trip`, :meth:`execute`,
    :meth:`pipeline`) or with :meth:`settle`: an acknowledgement leaves as soon
    as a handler returns and costs no round trip of its own. Not thread-safe.

    Attributes:
        failed: error replies of sent commands, read since the last look (the
            caller empties the list).
        lost: sent commands whose replies were lost with the connection (they
            may or may not have run).
    """

    def __init__(self, pool: RedisPool):
        self.pool = pool
        self.name = pool.name
        self._conn: Any = None
        self._owed = 0
        self.failed: list[Exception] = []
        self.lost = 0

    @contextmanager
    def _using(self, what: str) -> Iterator[Any]:
        """Lend the connection; a failure drops it (replies owed on it are lost)."""
        if self._conn is None:
            self._conn = self._connect(what)
        try:
            yield self._conn
        except redis.exceptions.RedisError as exc:
            self._drop()
            raise self.pool.error(exc, what) from exc
        except BaseException:
            self._drop()
            raise

    def _connect(self, what: str) -> Any:
        return self.pool.connect(what)

    def _release(self, conn: Any) -> None:
        self.pool.release(conn)

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.disconnect()
            self._release(conn)
        self.lost += self._owed
        self._owed = 0

    def send(self, payload: bytes, replies: int, what: str) -> None:
        """Write commands now; their replies are read with the next exchange.

        Raises:
            StreamError: the connection could not be made or written to (the
                commands may not have left).
        """
        with self._using(what) as conn:
            conn.send_packed_command([payload], check_health=False)
        self._owed += replies

    def round_trip(
        self, payload: bytes, replies: int, what: str, commands: int | None = None
    ) -> list[Any]:
        """Like :meth:`RedisPool.round_trip`, reading the replies owed first."""
        owed = self._owed
        self.pool.heard(
            what, (commands if commands is not None else replies) + owed, len(payload)
        )
        with self._using(what) as conn:
            if payload:
                conn.send_packed_command([payload], check_health=False)
            earlier = read_replies(conn, owed)
            self._owed = 0
            self.failed += [r for r in earlier if isinstance(r, Exception)]
            return read_replies(conn, replies)

    def settle(self, what: str = "XACK") -> None:
        """Read the replies still owed (a round trip's second half), if any."""
        if self._owed:
            self.round_trip(b"", 0, what, 0)

    def blocking_timeout(self, seconds: float) -> float:
        """See :meth:`RedisPool.blocking_timeout`."""
        return self.pool.blocking_timeout(seconds)

    def error(self, exc: BaseException, what: str) -> StreamError:
        """See :meth:`RedisPool.error`."""
        return self.pool.error(exc, what)

    def close(self) -> None:
        """Read what is owed and give the connection back to the pool."""
        try:
            self.settle()
        finally:
            conn, self._conn = self._conn, None
            if conn is not None:
                self._release(conn)


def _name(args: Sequence[Any]) -> str:
    first = args[0] if args else b"?"
    return first.decode() if isinstance(first, bytes) else str(first)


def _encode(arg: Any) -> bytes:
    if isinstance(arg, bytes):
        return arg
    if isinstance(arg, str):
        return arg.encode()
    if isinstance(arg, (int, float)) and not isinstance(arg, bool):
        return repr(arg).encode()
    raise TypeError(f"cannot send {type(arg).__name__} to Redis")


def pack_ack(
    key: str, group: str, ids: Sequence[str], delete: bool
) -> tuple[bytes, int]:
    """Pack ``XACK key group ids...`` (and ``XDEL key ids...``) for one round trip.

    The ids are packed once and shared by both commands.

    Returns:
        The RESP bytes and the number of commands (replies to read).
    """
    # Stream ids are ASCII: formatted as text and encoded once, a third cheaper
    # than a bulk() each (anything else is framed byte by byte).
    framed = "".join([f"${len(i)}\r\n{i}\r\n" for i in ids])
    block = framed.encode()
    if len(block) != len(framed):
        block = b"".join([bulk(i.encode()) for i in ids])
    k = key.encode()
    g = group.encode()
    key_arg = bulk(k)
    out = [
        b"*%d\r\n$4\r\nXACK\r\n" % (3 + len(ids)),
        key_arg,
        bulk(g),
        block,
    ]
    if delete:
        out += [b"*%d\r\n$4\r\nXDEL\r\n" % (2 + len(ids)), key_arg, block]
    return b"".join(out), 2 if delete else 1


def pack_command(*args: Any) -> bytes:
    """Pack one command as RESP bytes."""
    return _pack(args)


def _pack(args: Sequence[Any]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    append = out.append
    for a in args:
        # str first: stream ids (XACK, XDEL) make up most arguments.
        p = (
            a.encode()
            if a.__class__ is str
            else a
            if a.__class__ is bytes
            else _encode(a)
        )
        append(b"$%d\r\n%b\r\n" % (len(p), p))  # bulk(), inlined: the hot path
    return b"".join(out)


def parse_entries(raw: Any) -> list[RawEntry]:
    """Parse a list of stream entries (``[[id, [f, v, ...]], ...]``).

    An entry deleted while pending comes back with ``None`` fields.
    """
    out: list[RawEntry] = []
    for item in raw or ():
        ident = item[0].decode()
        values = item[1]
        if values is None:
            out.append((ident, None))
            continue
        it = iter(values)
        out.append((ident, dict(zip(it, it))))
    return out


def pairs(raw: Sequence[Any]) -> dict[str, Any]:
    """Turn a flat ``[key, value, ...]`` reply into a dict with str keys."""
    it = iter(raw)
    return {(k.decode() if isinstance(k, bytes) else str(k)): v for k, v in zip(it, it)}


def text(value: Any) -> str:
    """Decode a bytes reply to str (``None`` stays ``""``)."""
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)
