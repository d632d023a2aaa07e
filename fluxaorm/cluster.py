"""Redis Cluster pools: one pool over a whole cluster, each command sent to its slot.

``Engine`` builds a :class:`ClusterPool` instead of a ``streams.RedisPool`` for a
``redis+cluster://`` URL, once, when ``Registry.validate()`` builds it. The pool
keeps ``RedisPool``'s interface (``execute``, ``pipeline``, ``round_trip``,
``error``), so the broker, the relay and the checks run on it unchanged: commands
are grouped by the master serving their key's hash slot, written to every node
before any reply is read (one round trip per node), and MOVED, ASK, TRYAGAIN and
CLUSTERDOWN replies are followed, with WAIT after a node's commands on request.
A flush's publishing and the relay's reading of records on a cluster are
``cluster_outbox.py``'s; consumers talk through :class:`ClusterSession`. With
``streams.py``, the only module that imports redis.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import redis.connection
import redis.exceptions
from redis.cluster import REDIS_ALLOWED_KEYS, ClusterNode, NodesManager, cleanup_kwargs
from redis.crc import key_slot

from .config import RedisConfig
from .errors import ConfigurationError, StreamError
from .events import stream_key
from .streams import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_SOCKET_TIMEOUT,
    RedisPool,
    RoundTripListener,
    Session,
    pack_command,
    read_replies,
)

if TYPE_CHECKING:
    pass

__all__ = [
    "ClusterPool",
    "ClusterSession",
    "Unit",
    "block_unit",
    "slot_of",
    "split_commands",
]

_log = logging.getLogger("fluxaorm.redis")
_MULTI = pack_command("MULTI")
_EXEC = pack_command("EXEC")
_ASKING = pack_command("ASKING")
# Commands whose key is not their first argument, or that have none.
_KEY_AT_2 = frozenset({b"XINFO", b"XGROUP", b"OBJECT", b"MEMORY"})
_KEYLESS = frozenset(
    {
        b"TIME", b"PING", b"WAIT", b"INFO", b"ACL", b"CLUSTER", b"COMMAND",
        b"ECHO", b"READONLY", b"READWRITE", b"ASKING", b"HELLO", b"CLIENT",
        b"DISCARD", b"DBSIZE", b"CONFIG", b"FLUSHALL", b"FLUSHDB",
    }
)  # fmt: skip
# Redirections followed for one exchange before giving up (each MOVED or ASK
# costs a round trip; a resharding moves a slot once).
_MAX_REDIRECTS = 16
# Seconds an exchange keeps retrying a slot being moved (TRYAGAIN), a cluster
# that is down (CLUSTERDOWN) or a master it cannot connect to (a replica may be
# taking over). Short: a flush's entries wait in the outbox instead, and a
# consumer retries on its own.
_RETRY_BUDGET = 1.0
# The topology is read again at most this often (seconds).
_REFRESH_EVERY = 0.1
# After a WAIT that no replica answered in time, flushes skip WAIT on that node
# for this many seconds (their rows wait for the relay, which waits itself).
_SHORT_PAUSE = 5.0


# -- splitting pre-packed commands -------------------------------------------------------


def split_commands(payload: bytes) -> list[tuple[bytes, bytes | None, int, int]]:
    """Split packed RESP commands: ``(name, key, start, end)`` per command."""
    out: list[tuple[bytes, bytes | None, int, int]] = []
    pos = 0
    size = len(payload)
    index = payload.index
    while pos < size:
        begin = pos
        end = index(b"\r\n", pos)
        count = int(payload[pos + 1 : end])
        pos = end + 2
        args: list[bytes] = []
        keep = 3  # the name and the key come first (XREADGROUP: after STREAMS)
        for n in range(count):
            end = index(b"\r\n", pos)
            length = int(payload[pos + 1 : end])
            start = end + 2
            if n < keep:
                args.append(payload[start : start + length])
                if n == 0 and args[0].upper() in (b"XREADGROUP", b"XREAD"):
                    keep = count
            pos = start + length + 2
        out.append((args[0].upper(), _key_of(args), begin, pos))
    return out


def slot_of(key: bytes) -> int:
    """The hash slot of a key (its ``{hash tag}`` when it has one)."""
    return int(key_slot(key))


def _key_of(args: Sequence[bytes]) -> bytes | None:
    """The key a command works on (the first one), or None for a keyless command."""
    name = args[0].upper()
    if name in _KEYLESS or len(args) < 2:
        return None
    if name in _KEY_AT_2:
        return args[2] if len(args) > 2 else None
    if name in (b"XREADGROUP", b"XREAD"):
        upper = [a.upper() for a in args]
        if b"STREAMS" in upper:
            at = upper.index(b"STREAMS") + 1
            return args[at] if at < len(args) else None
        return None
    return args[1]


class Unit:
    """Commands sent to one node together: one command, or a MULTI ... EXEC block."""

    __slots__ = ("asking", "block", "node", "payload", "replies", "slot")

    def __init__(
        self, payload: bytes, replies: int, slot: int | None, block: bool = False
    ):
        self.payload = payload
        self.replies = replies
        self.slot = slot
        self.block = block  # MULTI ... EXEC: its first reply is MULTI's
        self.node: str | None = None  # pinned: an ASK target
        self.asking = False


def _units(payload: bytes) -> list[Unit]:
    """Cut a pre-packed payload into units; a MULTI ... EXEC block stays whole."""
    units: list[Unit] = []
    block: list[Any] | None = None  # [start, slot, commands]
    for name, key, start, end in split_commands(payload):
        slot = key_slot(key) if key is not None else None
        if block is not None:
            if name in (b"EXEC", b"DISCARD"):
                units.append(
                    Unit(payload[block[0] : end], block[2] + 2, block[1], True)
                )
                block = None
            else:
                block[2] += 1
                if block[1] is None:
                    block[1] = slot
            continue
        if name == b"MULTI":
            block = [start, None, 0]
            continue
        units.append(Unit(payload[start:end], 1, slot))
    if block is not None:  # a MULTI never closed: its replies all the same
        units.append(Unit(payload[block[0] :], block[2] + 1, block[1], True))
    return units


def block_unit(parts: Sequence[bytes], slot: int) -> Unit:
    """A MULTI/EXEC block of packed commands, all of one slot."""
    return Unit(_MULTI + b"".join(parts) + _EXEC, len(parts) + 2, slot, True)


# -- the pool ----------------------------------------------------------------------------


class ClusterPool(RedisPool):
    """A Redis Cluster seen as one pool (redis-py's ``NodesManager`` keeps the map).

    Nothing connects before the first command: the slot map is read then (one
    ``CLUSTER SLOTS``) and again after a redirection or a node that cannot be
    reached. Thread-safe; each node keeps its own connection pool.

    Args:
        config: a ``redis+cluster://`` pool's settings.
        listeners: called as ``listener(pool, what, commands)`` for each round
            trip (one per node an exchange touches).
    """

    cluster = True

    def __init__(self, config: RedisConfig, listeners: list[RoundTripListener]):
        self.config = config
        self.name = config.pool
        self._listeners = listeners
        self.wait_replicas = config.wait_replicas
        self.wait_timeout = config.wait_timeout
        try:
            # redis-py reads the options of one server's URL; the seeds differ
            # only in host and port.
            parse = redis.connection.parse_url
            kwargs = parse(config.seed_url)  # type: ignore[no-untyped-call]
        except ValueError as exc:
            raise ConfigurationError(
                f"Redis pool {self.name!r} ({config.url}): {exc}"
            ) from None
        for key in ("host", "port", "db"):
            kwargs.pop(key, None)
        kwargs.update(config.options)
        kwargs.pop("db", None)
        unknown = sorted(k for k in kwargs if k not in REDIS_ALLOWED_KEYS)
        if unknown:
            raise ConfigurationError(
                f"Redis pool {self.name!r} ({config.url}): option(s) "
                f"{', '.join(unknown)} cannot be used with a Redis Cluster"
            )
        # Replies are parsed as RESP2 arrays, and no call waits forever.
        kwargs["protocol"] = 2
        kwargs.setdefault("socket_timeout", DEFAULT_SOCKET_TIMEOUT)
        kwargs.setdefault("socket_connect_timeout", DEFAULT_CONNECT_TIMEOUT)
        self._kwargs: dict[str, Any] = kwargs
        timeout = kwargs.get("socket_timeout")
        self.socket_timeout: float | None = float(timeout) if timeout else None
        self._map: NodesManager | None = None
        self._lock = threading.Lock()
        self._stale = False
        self._refreshed = 0.0
        self._short: dict[str, float] = {}
        self._slots: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"<ClusterPool {self.name!r} {self.config.url}>"

    def connection_options(self) -> Mapping[str, Any]:
        """The options each node's connections are made with (TLS files included)."""
        return self._kwargs

    def session(self, key: str) -> Session:
        """Return a :class:`ClusterSession` kept on the master of ``key``'s slot."""
        return ClusterSession(self, key)

    # -- topology ------------------------------------------------------------------------

    def nodes(self, what: str, force: bool = False) -> Any:
        """The slot map, read (again) when needed; StreamError when unreachable.

        Read at first use and, once :meth:`stale`, at most every 0.1 s (or at
        once with ``force``): ``CLUSTER SLOTS`` from a seed or known node.
        """
        found = self._map
        if found is not None and not self._stale and not force:
            return found
        with self._lock:
            found = self._map
            try:
                if found is None:
                    self.heard("CLUSTER SLOTS", 1, 0)
                    seeds = [
                        ClusterNode(h, p)  # type: ignore[no-untyped-call]
                        for h, p in self.config.nodes
                    ]
                    # The map alone: redis-py's RedisCluster client would also
                    # fetch COMMAND (a large reply, and one more ACL permission).
                    found = self._map = NodesManager(
                        startup_nodes=seeds,
                        require_full_coverage=False,
                        **cleanup_kwargs(**self._kwargs),  # type: ignore[no-untyped-call]
                    )
                    self._stale = False
                elif force or (
                    self._stale and time.monotonic() - self._refreshed >= _REFRESH_EVERY
                ):
                    self._refreshed = time.monotonic()
                    self.heard("CLUSTER SLOTS", 1, 0)
                    found.initialize()
                    self._stale = False
            except (
                redis.exceptions.RedisError,
                redis.exceptions.RedisClusterException,
            ) as exc:
                raise self.error(exc, f"{what}: reading the cluster's slots") from exc
        return found

    def stale(self) -> None:
        """Read the slot map again before the next exchange (a node failed)."""
        self._stale = True

    def slot(self, stream: str) -> int:
        """The hash slot of a dirty stream (and of its outbox record)."""
        found = self._slots.get(stream)
        if found is None:
            found = self._slots[stream] = key_slot(stream_key(stream).encode())
        return found

    def _node(self, manager: Any, unit: Unit, fallback: int | None) -> Any:
        if unit.node is not None:
            host, _, port = unit.node.rpartition(":")
            node = manager.get_node(host=host, port=int(port))
            if node is None:  # a node the map does not know yet
                manager = self.nodes("following a redirection", force=True)
                node = manager.get_node(host=host, port=int(port))
            if node is not None:
                return node
            unit.node = None
            unit.asking = False
        slot = unit.slot if unit.slot is not None else fallback
        if slot is None:
            node = manager.default_node
            if node is None:
                raise redis.exceptions.SlotNotCoveredError("no node is known")
            return node
        return manager.get_node_from_slot(slot)

    def connect_slot(self, slot: int, what: str) -> tuple[Any, Any]:
        """Take a connection to the master of ``slot``: ``(connection, its pool)``."""
        manager = self.nodes(what)
        node = None
        try:
            node = manager.get_node_from_slot(slot)
            pool = node.redis_connection.connection_pool
            return pool.get_connection(), pool
        except (
            redis.exceptions.RedisError,
            redis.exceptions.RedisClusterException,
        ) as exc:
            self.stale()
            where = f"{what} on {node.name}" if node is not None else what
            raise self.error(exc, where) from exc

    def connect(self, what: str) -> Any:
        """Not for a cluster: connections are to one node (see :meth:`connect_slot`)."""
        raise TypeError("a ClusterPool has no single connection; use connect_slot()")

    def release(self, conn: Any) -> None:
        """Not for a cluster (connections go back to their node's pool)."""
        raise TypeError("a ClusterPool has no single connection pool")

    def close(self) -> None:
        """Close every connection to every node (reconnects on next use)."""
        with self._lock:
            found, self._map = self._map, None
        if found is not None:
            for node in list(found.nodes_cache.values()):
                if node.redis_connection is not None:
                    node.redis_connection.close()

    # -- errors --------------------------------------------------------------------------

    def error(self, exc: BaseException, what: str) -> StreamError:
        """Like :meth:`RedisPool.error`; cluster states that pass count as outages.

        A cluster that is down (CLUSTERDOWN), a slot being moved (TRYAGAIN), a
        redirection still unfollowed after the limit, or a slot no node serves
        come back with ``connection_lost=True``: retrying later helps. No node
        reachable because of what :meth:`hint` finds (credentials, a TLS file)
        is permanent, and told with the node's own error.
        """
        if isinstance(exc, redis.exceptions.RedisClusterException):
            cause = exc.__cause__
            if cause is not None and self.hint(cause) is not None:
                return super().error(cause, what)
        error = super().error(exc, what)
        if error.permanent:
            return error
        if isinstance(
            exc,
            (
                redis.exceptions.ClusterDownError,
                redis.exceptions.TryAgainError,
                redis.exceptions.AskError,
                redis.exceptions.RedisClusterException,
            ),
        ):
            error.connection_lost = True
        return error

    # -- exchanges -----------------------------------------------------------------------

    def round_trip(
        self, payload: bytes, replies: int, what: str, commands: int | None = None
    ) -> list[Any]:
        """Send pre-packed commands, each to its slot's master: one round trip per node.

        Error replies come back in the list as on one server; MOVED, ASK,
        TRYAGAIN and CLUSTERDOWN are followed first.

        Raises:
            StreamError: a node could not be reached (its commands may or may
                not have run), or the cluster stayed down.
        """
        units = _units(payload)
        results, failed, _ = self.exchange(units, what)
        if failed:
            raise next(iter(failed.values()))
        out: list[Any] = []
        for result in results:
            out.extend(result or ())
        return out

    def exchange(
        self, units: list[Unit], what: str, wait: bool = False, flush: bool = False
    ) -> tuple[list[list[Any] | None], dict[int, StreamError], list[int | None]]:
        """Send units to their nodes, following redirections; one write per node.

        Args:
            units: what to send.
            what: for logs and errors.
            wait: end each node's write with ``WAIT wait_replicas wait_timeout``.
            flush: skip WAIT on nodes that lately had no replica answer (their
                units come back with no count).

        Returns:
            Per unit its replies (``None`` when it failed), the failures by unit
            index, and per unit the replicas WAIT counted on its node (``None``
            without WAIT).
        """
        results: list[list[Any] | None] = [None] * len(units)
        acks: list[int | None] = [None] * len(units)
        failed: dict[int, StreamError] = {}
        todo = list(range(len(units)))
        deadline = time.monotonic() + _RETRY_BUDGET
        redirects = 0
        pause = 0.02
        while todo:
            again, retry = self._attempt(
                units, todo, what, results, failed, acks, wait, flush
            )
            redirects += len(again) > 0
            retry_left = time.monotonic() + pause < deadline
            if retry and not retry_left:
                for i, exc in retry.items():
                    failed[i] = self.error(exc, what)
                retry = {}
            if again and redirects > _MAX_REDIRECTS:
                for i in again:
                    failed[i] = StreamError(
                        f"Redis pool {self.name!r}: {what}: still redirected after "
                        f"{_MAX_REDIRECTS} redirections",
                        pool=self.name,
                        connection_lost=True,
                    )
                again = []
            if retry:
                time.sleep(pause)
                pause = min(pause * 2, 0.25)
            todo = sorted({*again, *retry})
        for i in failed:
            results[i] = None
        return results, failed, acks

    def _attempt(
        self,
        units: list[Unit],
        todo: list[int],
        what: str,
        results: list[list[Any] | None],
        failed: dict[int, StreamError],
        acks: list[int | None],
        wait: bool,
        flush: bool,
    ) -> tuple[list[int], dict[int, BaseException]]:
        """One write per node and its replies.

        Returns:
            The units redirected (resend at once) and those to retry after a
            pause (the cluster is down, a slot is being moved, or a master
            could not be reached before anything was sent), with why.
        """
        retry: dict[int, BaseException] = {}
        try:
            manager = self.nodes(what)
        except StreamError as exc:
            # No seed or known node answers: nothing to wait for here.
            for i in todo:
                failed[i] = exc
            return [], {}
        groups: dict[str, tuple[Any, list[int]]] = {}
        fallback = next(
            (units[i].slot for i in todo if units[i].slot is not None), None
        )
        for i in todo:
            try:
                node = self._node(manager, units[i], fallback)
            except (
                redis.exceptions.RedisError,
                redis.exceptions.RedisClusterException,
            ) as exc:
                self.stale()
                retry[i] = exc
                continue
            groups.setdefault(node.name, (node, []))[1].append(i)
        sent: list[tuple[Any, Any, Any, list[int], bool]] = []
        now = time.monotonic()
        for name, (node, members) in groups.items():
            waits = wait and not (flush and self._short.get(name, 0.0) > now)
            parts = [
                (_ASKING if units[i].asking else b"") + units[i].payload
                for i in members
            ]
            if waits:
                parts.append(self._wait_command())
            payload = b"".join(parts)
            # Commands as a user counts them: no MULTI, EXEC or ASKING.
            count = sum(units[i].replies - 2 * units[i].block for i in members)
            count += waits
            self.heard(what, count, len(payload))
            pool = node.redis_connection.connection_pool
            try:
                conn = pool.get_connection()
            except redis.exceptions.RedisError as exc:
                if self.hint(exc) is not None:
                    # This node refuses the credentials (or TLS cannot be set
                    # up): no new map or pause mends that.
                    for i in members:
                        failed[i] = self.error(exc, f"{what} on {name}")
                    continue
                # Nothing was sent: safe to try again once the map is read anew.
                self.stale()
                retry.update(dict.fromkeys(members, exc))
                continue
            try:
                conn.send_packed_command([payload], check_health=False)
            except redis.exceptions.RedisError as exc:
                conn.disconnect()
                pool.release(conn)
                self.stale()
                for i in members:
                    failed[i] = self.error(exc, f"{what} on {name}")
                continue
            sent.append((name, pool, conn, members, waits))
        again: list[int] = []
        for name, pool, conn, members, waits in sent:
            read = self._read(
                name, pool, conn, members, units, results, failed, what, waits
            )
            if read:
                count = read[0]
                for i in members:
                    acks[i] = count if isinstance(count, int) else 0
                if not isinstance(count, int) or count < self.wait_replicas:
                    self._short[name] = time.monotonic() + _SHORT_PAUSE
                else:
                    self._short.pop(name, None)
            for i in members:
                if i in failed:
                    continue
                verdict = self.follow(manager, units[i], results[i])
                if verdict is _RESEND:
                    again.append(i)
                elif verdict is not None:
                    retry[i] = verdict
        return again, retry

    def _read(
        self,
        name: str,
        pool: Any,
        conn: Any,
        members: list[int],
        units: list[Unit],
        results: list[list[Any] | None],
        failed: dict[int, StreamError],
        what: str,
        waits: bool,
    ) -> list[Any]:
        """Read one node's replies; return WAIT's reply in a list (empty without)."""
        done = 0
        try:
            for i in members:
                unit = units[i]
                replies = read_replies(conn, unit.replies + unit.asking)
                results[i] = replies[1:] if unit.asking else replies
                done += 1
            return read_replies(conn, 1) if waits else []
        except redis.exceptions.RedisError as exc:
            conn.disconnect()
            self.stale()
            for i in members[done:]:
                failed[i] = self.error(exc, f"{what} on {name}")
            return []
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)

    def _wait_command(self) -> bytes:
        return pack_command(
            "WAIT", self.wait_replicas, max(1, int(self.wait_timeout * 1000))
        )

    def follow(self, manager: Any, unit: Unit, replies: list[Any] | None) -> Any:
        """Look at a unit's replies: follow a MOVED or ASK; say what to do.

        Returns:
            None when the replies stand, ``_RESEND`` to send the unit again at
            once (redirected), or the exception to retry after a pause
            (CLUSTERDOWN, TRYAGAIN).
        """
        if not replies:
            return None
        seen = replies[1:] if unit.block else replies
        for reply in seen:
            if not isinstance(reply, _FOLLOWED):
                continue
            _log.debug(
                "[%s] slot %s: %s %s", self.name, unit.slot, type(reply).__name__, reply
            )
            if isinstance(reply, redis.exceptions.MovedError):
                # Sent again to the node named; the whole map is read again
                # before long (a resharding or failover moves more slots).
                self.stale()
                unit.node, unit.asking = f"{reply.host}:{reply.port}", False
                return _RESEND
            unit.node, unit.asking = None, False
            if isinstance(reply, redis.exceptions.AskError):
                unit.node, unit.asking = f"{reply.host}:{reply.port}", True
                return _RESEND
            if isinstance(reply, redis.exceptions.ClusterDownError):
                self.stale()
            return reply
        return None


_RESEND = object()


# Replies a session hands to the pool to follow.
_FOLLOWED = (
    redis.exceptions.AskError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
)


# -- consumers ---------------------------------------------------------------------------


class ClusterSession(Session):
    """A consumer's session on a cluster: one connection to its stream's master.

    Everything a consumer sends is about its stream, so it goes on one kept
    connection to the master of the stream's slot, acknowledgements included
    (written at once, replies read with the next exchange, as on one server).
    A command for another slot (a dead letter's ``:dead`` stream) is routed
    through the pool. A MOVED or ASK reply, for the exchange in hand or for an
    acknowledgement still owed, sends those commands again where the slot now
    lives, and the connection follows the slot from the next exchange on.
    """

    def __init__(self, pool: ClusterPool, key: str):
        super().__init__(pool)
        self._cluster = pool
        self._slot = key_slot(key.encode())
        self._home: Any = None
        self._sent: list[bytes] = []

    def _connect(self, what: str) -> Any:
        conn, self._home = self._cluster.connect_slot(self._slot, what)
        return conn

    def _release(self, conn: Any) -> None:
        if self._home is not None:
            self._home.release(conn)

    def _drop(self) -> None:
        super()._drop()
        self._sent.clear()
        self._cluster.stale()

    def send(self, payload: bytes, replies: int, what: str) -> None:
        """Write commands now on the stream's connection; replies come later."""
        super().send(payload, replies, what)
        self._sent.append(payload)

    def round_trip(
        self, payload: bytes, replies: int, what: str, commands: int | None = None
    ) -> list[Any]:
        """Like :meth:`Session.round_trip`, following redirections."""
        units = _units(payload) if payload else []
        if any(u.slot is not None and u.slot != self._slot for u in units):
            self.settle(what)
            return self._cluster.round_trip(payload, replies, what, commands)
        owed, sent = self._owed, self._sent
        self._sent = []
        self.pool.heard(
            what, (commands if commands is not None else replies) + owed, len(payload)
        )
        with self._using(what) as conn:
            if payload:
                conn.send_packed_command([payload], check_health=False)
            earlier = read_replies(conn, owed)
            self._owed = 0
            out = read_replies(conn, replies)
        self._settle_owed(sent, earlier, what)
        return self._follow(units, out, what)

    def _settle_owed(self, sent: list[bytes], replies: list[Any], what: str) -> None:
        """Note the owed replies: resend redirected commands, keep other errors."""
        units = [u for payload in sent for u in _units(payload)]
        if len(units) != len(replies):  # not one reply per command: keep as is
            self.failed += [r for r in replies if isinstance(r, Exception)]
            return
        follow = self._follow(units, replies, what, owed=True)
        self.failed += [r for r in follow if isinstance(r, Exception)]

    def _follow(
        self, units: list[Unit], replies: list[Any], what: str, owed: bool = False
    ) -> list[Any]:
        """Resend the units whose replies redirect; return the replies in order.

        For owed replies (``owed``), a resend that fails counts in :attr:`lost`
        instead of raising.
        """
        if not any(isinstance(r, _FOLLOWED) for r in replies):
            return replies
        per_unit: list[list[Any]] = []
        at = 0
        for unit in units:
            per_unit.append(replies[at : at + unit.replies])
            at += unit.replies
        # The slot left this connection's node (or is moving): follow it.
        self._detach()
        try:
            manager = self._cluster.nodes(what)
        except StreamError:
            if not owed:
                raise
            self.lost += len(units)
            return [r for r in replies if not isinstance(r, _FOLLOWED)]
        redo = [
            i
            for i, unit in enumerate(units)
            if self._cluster.follow(manager, unit, per_unit[i]) is not None
        ]
        results, failed, _ = self._cluster.exchange([units[i] for i in redo], what)
        if failed and not owed:
            raise next(iter(failed.values()))
        self.lost += len(failed)
        for n, i in enumerate(redo):
            per_unit[i] = results[n] or []
        return [reply for each in per_unit for reply in each]

    def _detach(self) -> None:
        """Give the connection back (no replies are owed on it now)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._release(conn)
