"""The engine: the validated, immutable product of ``Registry.validate()``.

It owns the MySQL and Redis pools, the entity schemas, the stream routes and the
outbox settings. ORMs, consumers and the broker read from it; nothing changes it
after construction except its pools' connections and the statement listeners.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

import attrs

from . import ddl
from . import outbox as _outbox
from . import relay as _relay
from .cluster import ClusterPool
from .config import MySQLConfig, RedisConfig
from .db import MySQLPool, StatementListener
from .db import RoundTripListener as MySQLRoundTripListener
from .errors import ConfigurationError, DatabaseError, FluxaORMError
from .events import STREAM_PREFIX, EventBatch, StreamEncoder, dead_key
from .orm import ORM
from .render import Unwirer, compile_unwire
from .replicas import ReplicaSet, ReplicaStatus
from .schema import EntitySchema
from .streams import RedisPool, RoundTripListener

if TYPE_CHECKING:
    from .broker import EventBroker
    from .observe import Observer

__all__ = ["Engine", "StreamInfo"]

_log = logging.getLogger("fluxaorm")


@attrs.frozen
class StreamInfo:
    """A dirty stream as declared by the entities.

    Attributes:
        name: the declared name (``AllChanges``).
        key: the Redis key (``dirty_AllChanges``).
        redis_pool: the Redis pool holding it.
        sources: ``(entity name, operations)`` pairs; operations are ``add``,
            ``edit``, ``delete`` or ``field:<name>`` (an update changing that field).
        max_len: keep at most this many entries (``None``: no limit).
        max_age: keep entries at most this many seconds (``None``: no limit).
        drop_unhandled: let retention drop entries a consumer group has not
            handled yet (off: only handled entries are ever trimmed).
    """

    name: str
    key: str
    redis_pool: str
    sources: tuple[tuple[str, tuple[str, ...]], ...]
    max_len: int | None = None
    max_age: float | None = None
    drop_unhandled: bool = False

    @property
    def dead_key(self) -> str:
        """The Redis key of the stream's dead letters (``dirty_<Name>:dead``)."""
        return dead_key(self.key)


class Engine:
    """Holds the pools and schemas; thread-safe. Create it with ``Registry.validate()``.

    Use it as a context manager (or call :meth:`close`) to close its connections.
    """

    def __init__(
        self,
        schemas: Iterable[EntitySchema],
        mysql: Mapping[str, MySQLConfig],
        redis: Mapping[str, RedisConfig],
        streams: Mapping[str, StreamInfo],
        *,
        outbox: bool,
        relay_delay: float,
    ):
        self._sql_listeners: list[StatementListener] = []
        self._sql_trips: list[MySQLRoundTripListener] = []
        self._redis_listeners: list[RoundTripListener] = []
        self._mysql = {
            name: MySQLPool(cfg, self._sql_listeners, self._sql_trips)
            for name, cfg in mysql.items()
        }
        self._replicas = {
            name: ReplicaSet(
                self._mysql[name],
                [
                    MySQLPool(r, self._sql_listeners, self._sql_trips, read_only=True)
                    for r in cfg.replicas
                ],
                cfg.max_replica_lag,
                cfg.replica_check_interval,
            )
            for name, cfg in mysql.items()
            if cfg.replicas
        }
        # A cluster gets its own pool class (and publisher), chosen here once.
        self._redis = {
            name: (ClusterPool if cfg.cluster else RedisPool)(
                cfg, self._redis_listeners
            )
            for name, cfg in redis.items()
        }
        self._schemas: dict[type, EntitySchema] = {s.cls: s for s in schemas}
        self._by_name = {s.name: s for s in self._schemas.values()}
        self._streams = dict(streams)
        self.outbox = outbox
        self.relay_delay = relay_delay
        self.encoder = StreamEncoder(trim=self._xadd_trim)
        # Tests force the id-assignment strategy of the flush; None picks per server.
        self.id_strategy: str | None = None
        self._unpublished: dict[str, set[int]] = {}
        # MySQL pool -> outbox id -> (Redis pool, streams, batch event id) of rows
        # this process published and has not deleted yet: the next flush on that
        # pool deletes them in its packet, then forgets their Redis records.
        self._published: dict[str, dict[int, _Published]] = {}
        self._cleaning: dict[str, dict[int, _Published]] = {}
        self._lock = threading.Lock()
        self._unwire: dict[str, Unwirer] = {}
        # Metrics and tracing (fluxaorm.metrics / fluxaorm.tracing); None: off.
        self.observer: Observer | None = None
        for schema in self._schemas.values():
            self._unwire[schema.name] = compile_unwire(schema.columns, schema.label)

    def __repr__(self) -> str:
        return (
            f"<Engine entities={len(self._schemas)} mysql={sorted(self._mysql)} "
            f"redis={sorted(self._redis)} streams={len(self._streams)}>"
        )

    def __enter__(self) -> Engine:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close every pooled connection (the engine reconnects if used again)."""
        for pool in self._mysql.values():
            pool.close()
        for replicas in self._replicas.values():
            replicas.close()
        for rpool in self._redis.values():
            rpool.close()

    # -- units of work -----------------------------------------------------------

    def new_orm(self) -> ORM:
        """Return a new unit of work (cheap; one per thread or request)."""
        return ORM(self)

    def get_event_broker(self) -> EventBroker:
        """Return the broker that reports stream statistics (see docs/statistics.md)."""
        from .broker import EventBroker

        return EventBroker(self)

    # -- lookups -------------------------------------------------------------------

    @property
    def entities(self) -> tuple[type, ...]:
        """The registered entity classes."""
        return tuple(self._schemas)

    def schema(self, cls: type) -> EntitySchema:
        """Return the schema of a registered entity class.

        Raises:
            ConfigurationError: the class was not registered.
        """
        try:
            return self._schemas[cls]
        except (KeyError, TypeError):
            name = getattr(cls, "__qualname__", repr(cls))
            raise ConfigurationError(
                f"{name} is not a registered entity; call registry.register_entity({name}) "
                "before registry.validate()"
            ) from None

    def schema_by_name(self, name: str) -> EntitySchema | None:
        """Return the schema whose entity name (module + class) is ``name``."""
        return self._by_name.get(name)

    def unwirer(self, entity_name: str) -> Unwirer | None:
        """Return the bind decoder of an entity name, ``None`` when unknown."""
        return self._unwire.get(entity_name)

    @property
    def streams(self) -> tuple[str, ...]:
        """The declared dirty stream names (without ``dirty_``)."""
        return tuple(self._streams)

    def stream(self, name: str) -> StreamInfo:
        """Return a declared stream by name (``AllChanges`` or ``dirty_AllChanges``).

        Raises:
            ConfigurationError: no entity declares that stream.
        """
        found = self._streams.get(name)
        if found is None and name.startswith(STREAM_PREFIX):
            found = self._streams.get(name[len(STREAM_PREFIX) :])
        if found is None:
            known = ", ".join(sorted(self._streams)) or "none"
            raise ConfigurationError(
                f"no entity declares the dirty stream {name!r} (declared: {known})"
            )
        return found

    def mysql_pool(self, name: str) -> MySQLPool:
        """Return a MySQL pool by name.

        Raises:
            ConfigurationError: no such pool was registered.
        """
        return _pool("MySQL", self._mysql, name)

    def redis_pool(self, name: str) -> RedisPool:
        """Return a Redis pool by name.

        Raises:
            ConfigurationError: no such pool was registered.
        """
        return _pool("Redis", self._redis, name)

    @property
    def redis_pools(self) -> Mapping[str, RedisPool]:
        """Every Redis pool by name."""
        return self._redis

    @property
    def mysql_pools(self) -> Mapping[str, MySQLPool]:
        """Every MySQL pool (its primary) by name."""
        return self._mysql

    @property
    def replica_sets(self) -> Mapping[str, ReplicaSet]:
        """The read replicas of each MySQL pool that has some (internal)."""
        return self._replicas

    def replica_status(self, pool: str = "default") -> list[ReplicaStatus]:
        """Read the replication status of a MySQL pool's read replicas now.

        One round trip per replica (a connection to one that cannot be
        reached). What is found also decides where the next reads go, so this
        is how to bring a replica back before its next scheduled check.

        Returns:
            One :class:`ReplicaStatus` per replica, in the order registered;
            an empty list for a pool without replicas.

        Raises:
            ConfigurationError: no such MySQL pool was registered.
        """
        self.mysql_pool(pool)
        replicas = self._replicas.get(pool)
        return replicas.status() if replicas is not None else []

    # -- schema ----------------------------------------------------------------------

    def check(self) -> None:
        """Connect to every pool and raise a clear error for what is wrong.

        Call it at start-up: it returns None when every pool answers and allows
        what fluxaorm does. It checks, in order, each MySQL pool (by name): that
        it can be reached, accepts the user and password and has the database;
        then each read replica: that it accepts its user and password, has the
        database, lets its user read its replication status and replicates (a
        replica that is down or lagging is only logged: reads skip it until it
        is back); then that the tables match the entities (an extra table or an
        extra nullable column is fine); then each Redis pool: that it can be reached,
        accepts the credentials and the DB index, holds no declared stream key
        of another type, and that its ACL user may run every command fluxaorm
        sends on each declared stream and its ``:dead`` stream (XADD, XREADGROUP,
        XACK, XDEL, XAUTOCLAIM, XCLAIM, XPENDING, XINFO, XGROUP, XLEN, XRANGE,
        XTRIM, MULTI/EXEC, TIME). The probes change nothing. The first problem
        found is raised.

        Either error has ``permanent=True`` when retrying cannot help (bad
        credentials, unknown database, missing permission, tables out of sync):
        fix the configuration. Otherwise (a server that cannot be reached)
        waiting and calling ``check()`` again may.

        Raises:
            DatabaseError: a MySQL pool's problem (``.pool`` names it). A table
                that differs from its entity comes with the statements that
                ``sync_schema()`` would run.
            StreamError: a Redis pool's problem (``.pool`` names it).
        """
        from .check import check_engine

        check_engine(self)

    def get_alters(self, *, drop_unknown_tables: bool = False) -> list[ddl.Alter]:
        """Return the statements that would make the databases match the entities.

        Each :class:`~fluxaorm.ddl.Alter` says whether it is destructive (drops a
        table or column, or narrows a column). Reads ``information_schema`` only.

        Args:
            drop_unknown_tables: also list a ``DROP TABLE`` (marked
                ``unknown_table`` and ``destructive``) for every table of the
                database that no registered entity uses. Off by default: such a
                table may belong to another application, or to entities this
                registry does not list.
        """
        return ddl.get_alters(
            self._mysql, self._schemas.values(), self.outbox, drop_unknown_tables
        )

    def sync_schema(
        self, *, destructive: bool = False, drop_unknown_tables: bool = False
    ) -> list[ddl.Alter]:
        """Create and alter tables to match the entities; return what ran.

        Args:
            destructive: also run the statements on the entities' own tables that
                can lose data (DROP COLUMN, narrowing a column). Off by default.
                It never drops a table.
            drop_unknown_tables: drop every table of the database that no
                registered entity uses (the outbox table excepted). Off by
                default; it is the only way a table is ever dropped, and it
                drops the tables of any entity left out of this registry:
                read ``get_alters(drop_unknown_tables=True)`` first.
        """
        alters = [
            a
            for a in self.get_alters(drop_unknown_tables=drop_unknown_tables)
            if (drop_unknown_tables if a.unknown_table else destructive)
            or not a.destructive
        ]
        return self.apply_alters(alters)

    def apply_alters(self, alters: Iterable[ddl.Alter]) -> list[ddl.Alter]:
        """Run statements chosen from :meth:`get_alters`, in order; return them.

        For a caller that showed the statements and had them confirmed: exactly
        those run, even if the database changed meanwhile (``sync_schema()``
        would compute them again). Each is logged at INFO on ``fluxaorm``.

        Raises:
            ConfigurationError: a statement names a pool this engine lacks.
            DatabaseError: a statement failed; the ones before it stay applied
                (MySQL commits DDL at once).
        """
        chosen = list(alters)
        for alter in chosen:
            self.mysql_pool(alter.pool)  # an unknown pool fails before any runs
        for alter in chosen:
            _log.info("sync_schema [%s]: %s", alter.pool, alter.sql.replace("\n", " "))
        return ddl.run_alters(self._mysql, chosen)

    # -- outbox ------------------------------------------------------------------------

    def relay_outbox(self) -> int:
        """Publish committed changes that have not reached Redis yet.

        Safe to run in many processes at once: rows are locked with
        ``FOR UPDATE SKIP LOCKED`` while published, so two relays never publish
        the same row. Rows younger than ``outbox_relay_delay`` seconds (in UTC,
        whatever the time zones) are left to the process that wrote them, except
        this process's own failed ones.

        Every MySQL pool is relayed, whatever happens to another one, and within
        a pool one unreadable row (quarantined: kept, logged once, counted in
        ``get_outbox_statistics()``), one refusing stream (its entries retried
        with a backoff) or one Redis pool that is down delays only its own
        entries. The first error is raised once every pool has been tried.

        Returns:
            The number of stream entries published.

        Raises:
            StreamError: Redis refused entries or could not be reached (they stay
                in the outbox); the other pools were relayed.
            DatabaseError: a MySQL pool failed; the other pools were relayed.
        """
        if not self.outbox:
            return 0
        total = 0
        first: FluxaORMError | None = None
        for name in sorted({s.mysql_pool for s in self._schemas.values() if s.streams}):
            with self._lock:
                mine = set(self._unpublished.get(name, ()))
            try:
                result = _relay.relay(
                    self._mysql[name],
                    self._redis,
                    self.encoder,
                    self.relay_delay,
                    mine,
                    self.observer,
                )
            except DatabaseError as exc:
                _log.warning(
                    "outbox relay of MySQL pool %r failed: %s; the other pools are "
                    "still relayed",
                    name,
                    exc,
                )
                first = first or exc
                continue
            total += result.published
            if self.observer is not None:
                self.observer.relayed(name, result.published)
            # Without a Redis outage every row of `mine` was seen: published,
            # quarantined, backed off, gone, or held by a concurrent relay.
            with self._lock:
                left = self._unpublished.get(name)
                if left is not None:
                    left.difference_update(result.handled if result.waiting else mine)
            if result.errors and first is None:
                first = result.errors[0]
        if first is not None:
            raise first
        return total

    def backfill(
        self,
        entity: type,
        stream: str,
        *,
        chunk: int = 1000,
        restart: bool = False,
        progress: Callable[[int, int, int], None] | None = None,
    ) -> int:
        """Publish every existing row of ``entity`` to ``stream`` as an Update event.

        Rows go in id order, each as an ``Update`` event holding every field
        (as ``orm.push_dirty`` publishes them), to ``dirty_<stream>`` only; rows
        deleted with fake delete are left out. The table is read ``chunk`` rows
        at a time (by id, never all at once), so memory stays bounded whatever
        its size. Each chunk's entries and a checkpoint (the last id published,
        kept in ``dirty_{dirty_<stream>}:backfill:<entity name>``) are written in one
        MULTI/EXEC: after an interruption, even a SIGKILL, calling it again
        resumes after the last chunk Redis took, publishing no row twice. A
        completed backfill empties its checkpoint, so the next call starts over.
        Run one backfill of an entity and stream at a time.

        Args:
            entity: a registered entity class that feeds ``stream``.
            stream: the stream name (``AllChanges`` or ``dirty_AllChanges``).
            chunk: rows per read and per MULTI/EXEC.
            restart: ignore the checkpoint of an interrupted run and start from
                the first row.
            progress: called as ``progress(rows published, rows in all, last
                id)`` before the first chunk (with the counts of an interrupted
                run when resuming) and after each one.

        Returns:
            The number of rows this call published.

        Raises:
            ConfigurationError: the entity is not registered, does not feed the
                stream, or ``chunk`` is not 1 or more.
            StreamError: Redis refused a chunk or could not be reached; the
                checkpoint stays before that chunk: call again to resume.
            DatabaseError: reading the table failed; call again to resume.
        """
        from .backfill import backfill

        return backfill(
            self, entity, stream, chunk=chunk, restart=restart, progress=progress
        )

    def remember_unpublished(self, pool: str, outbox_id: int) -> None:
        """Note an outbox row this process failed to publish (the relay takes it at once).

        Only the newest rows are remembered (a bounded number, however long an
        outage lasts); older ones are relayed once ``outbox_relay_delay`` has passed.
        """
        with self._lock:
            ids = self._unpublished.setdefault(pool, set())
            ids.add(outbox_id)
            if len(ids) > 2 * _outbox.MINE_LIMIT:
                self._unpublished[pool] = _relay.newest(ids, _outbox.MINE_LIMIT)

    def published(self, pool: str, outbox_id: int, batch: EventBatch) -> None:
        """Note an outbox row this process published; a later flush deletes it."""
        streams = batch.streams()
        with self._lock:
            rows = self._published.setdefault(pool, {})
            rows[outbox_id] = (
                batch.redis_pool,
                streams,
                batch.event_id,
                time.monotonic(),
            )
            if len(rows) > _CLEANUP_LIMIT:
                # An outage of the cleanup: the oldest are left to the relay, which
                # finds them recorded as published and deletes them.
                for ident in sorted(rows)[: len(rows) - _CLEANUP_LIMIT]:
                    del rows[ident]

    def awaiting_cleanup(self, pool: str) -> list[int]:
        """The outbox rows of MySQL pool ``pool`` this process published and has
        not deleted yet (Redis records them as published; see docs/streams.md)."""
        with self._lock:
            return sorted(
                [*self._published.get(pool, ()), *self._cleaning.get(pool, ())]
            )

    def cleanup_due(self, pool: str) -> bool:
        """Whether a flush on MySQL pool ``pool`` would get published rows to
        delete from :meth:`take_cleanup` (told without the lock: a wrong guess
        only moves the rows to another flush; ``True`` when unsure)."""
        try:
            return _cleanup_due(self._published.get(pool))
        except (RuntimeError, StopIteration):  # changed meanwhile
            return True

    def take_cleanup(self, pool: str) -> list[int]:
        """Hand a flush the published rows of ``pool`` to delete (at most 500).

        Rows are deleted in batches: once 64 wait, or the oldest was published
        a second ago. A DELETE costs the transaction carrying it about as much
        as a one-row flush whatever its size (about 5 µs more per row), so the
        fewer the better: at 64 a one-row flush pays about 9 µs for its row's
        cleanup, at 16 about 19. Each row goes to one flush at a time (two
        transactions deleting the same rows would wait on each other);
        :meth:`forget_records` drops them once that flush committed,
        :meth:`return_cleanup` gives them back if not.
        """
        # Most flushes take nothing: tell without the lock (taking them is
        # decided under it).
        if not self.cleanup_due(pool):
            return []
        with self._lock:
            rows = self._published.get(pool)
            if not rows or not _cleanup_due(rows):
                return []
            taken = sorted(rows)[:_CLEANUP_PER_FLUSH]
            cleaning = self._cleaning.setdefault(pool, {})
            for ident in taken:
                cleaning[ident] = rows.pop(ident)
            return taken

    def return_cleanup(self, pool: str, ids: list[int]) -> None:
        """Give back rows a flush took for cleanup but did not delete."""
        if not ids:
            return
        with self._lock:
            cleaning = self._cleaning.get(pool, {})
            back = {i: cleaning.pop(i) for i in ids if i in cleaning}
            if back:  # older than the rows noted since: first, as take_cleanup expects
                self._published[pool] = {**back, **self._published.get(pool, {})}

    def forget_records(
        self, cleaned: list[tuple[str, int]]
    ) -> dict[str, list[tuple[str, str]]]:
        """Forget rows whose cleanup committed; return their Redis records to remove.

        Returns:
            Redis pool -> ``(stream, batch event id)`` pairs.
        """
        out: dict[str, list[tuple[str, str]]] = {}
        if not cleaned:
            return out
        with self._lock:
            for pool, ident in cleaned:
                found = self._cleaning.get(pool, {}).pop(ident, None)
                if found is None:
                    continue
                redis_pool, streams, event_id, _ = found
                out.setdefault(redis_pool, []).extend((s, event_id) for s in streams)
        return out

    def _xadd_trim(self, name: str) -> tuple[bytes, ...]:
        """XADD options of a stream: MAXLEN ~ N only when it may drop unhandled entries."""
        info = self._streams.get(name)
        if info is None or not info.drop_unhandled or info.max_len is None:
            return ()
        return (b"MAXLEN", b"~", str(info.max_len).encode())

    # -- listeners -----------------------------------------------------------------------

    def add_statement_listener(self, listener: StatementListener) -> None:
        """Call ``listener(pool, sql)`` for every SQL statement sent from now on."""
        self._sql_listeners.append(listener)

    def remove_statement_listener(self, listener: StatementListener) -> None:
        """Stop calling ``listener`` for SQL statements."""
        self._sql_listeners.remove(listener)

    def add_mysql_round_trip_listener(self, listener: MySQLRoundTripListener) -> None:
        """Call ``listener(pool, statements)`` for every MySQL round trip from now on."""
        self._sql_trips.append(listener)

    def remove_mysql_round_trip_listener(
        self, listener: MySQLRoundTripListener
    ) -> None:
        """Stop calling ``listener`` for MySQL round trips."""
        self._sql_trips.remove(listener)

    def add_round_trip_listener(self, listener: RoundTripListener) -> None:
        """Call ``listener(pool, what, commands)`` for every Redis round trip from now on."""
        self._redis_listeners.append(listener)

    def remove_round_trip_listener(self, listener: RoundTripListener) -> None:
        """Stop calling ``listener`` for Redis round trips."""
        self._redis_listeners.remove(listener)


P = TypeVar("P")
# Published outbox rows a process remembers for cleanup, and deletes per flush.
_CLEANUP_LIMIT = 10_000
_CLEANUP_PER_FLUSH = 500
_CLEANUP_BATCH = 64
_CLEANUP_AFTER = 1.0
# A published outbox row awaiting cleanup: Redis pool, streams, batch event id,
# when it was published (time.monotonic()).
_Published = tuple[str, tuple[str, ...], str, float]


def _cleanup_due(rows: Mapping[int, _Published] | None) -> bool:
    """Whether published rows waiting for cleanup are due: 64 of them, or the
    oldest a second old (rows are noted in publish order: the first is about
    the oldest)."""
    if not rows:
        return False
    if len(rows) >= _CLEANUP_BATCH:
        return True
    return time.monotonic() - next(iter(rows.values()))[3] >= _CLEANUP_AFTER


def _pool(kind: str, pools: Mapping[str, P], name: str) -> P:
    try:
        return pools[name]
    except KeyError:
        known = ", ".join(sorted(pools)) or "none"
        raise ConfigurationError(
            f"{kind} pool {name!r} is not registered (registered: {known})"
        ) from None
